//! Containers from images, end to end: an imported root filesystem served through a published
//! port, the image config (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts) honoured as
//! docker does, the writable layer's lifetime, `rmi` of an image in use, a third-party tool's OCI
//! layout, and image containers surviving a daemon restart.
//!
//! ```text
//!   x1 (external) ── curl NODE:PORT ──> n1: eBPF DNAT ──> container (overlayfs root of the image)
//! ```
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, bail};
use netbee_lab::{Node, Ns, single_node_lab, test_image, wait_until};

/// What the external client gets from `url`, retried until something answers.
fn fetch(x: &Ns, url: &str) -> Result<String> {
    let mut body = String::new();
    wait_until(Duration::from_secs(10), &format!("{url} answers"), || {
        body = x.sh(&format!("curl -s -m 3 {url}")).unwrap_or_default();
        !body.is_empty()
    })?;
    Ok(body)
}

/// Runs a container to its end and returns its output (`logs`).
fn output_of(n: &Node, name: &str, run: &[&str]) -> Result<String> {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(run);
    n.netbee(&args)?;
    let code = n.netbee(&["wait", name])?;
    let logs = n.netbee(&["logs", name])?;
    n.netbee(&["rm", name])?;
    if code.trim() != "0" {
        bail!("{name} exited {}: {logs}", code.trim());
    }
    Ok(logs.trim().to_string())
}

fn container_dir(n: &Node, name: &str) -> Result<std::path::PathBuf> {
    let v: serde_json::Value = serde_json::from_str(&n.netbee(&["inspect", name])?)?;
    let id = v[0]["Id"].as_str().unwrap_or_default().to_string();
    Ok(n.dir().join("state/containers").join(id))
}

fn tar_dir(dir: &Path, out: &Path) -> Result<()> {
    let o = Command::new("tar").arg("-C").arg(dir).arg("-cf").arg(out).arg(".").output()?;
    if !o.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// A busybox root filesystem with a page only it has.
fn make_rootfs(dir: &Path, page: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    for applet in ["sh", "httpd", "cat", "ls", "echo", "sleep", "id", "pwd", "hostname"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("www/index.html"), page)?;
    Ok(())
}

/// `import` of a root-filesystem tarball, `run -d -p 8080:80 IMAGE httpd ...`: the external
/// client gets a page that exists only inside the image, and `exec` sees the image's files, not
/// the node's.
#[test]
fn an_imported_rootfs_serves_its_own_files_through_a_published_port() -> Result<()> {
    let lab = single_node_lab("img-import", &[])?;
    let (n, x1) = (lab.node("n1"), lab.external("x1"));
    let rootfs = lab.dir().join("rootfs");
    make_rootfs(&rootfs, "only-in-the-imported-image\n")?;
    let tarball = lab.dir().join("rootfs.tar");
    tar_dir(&rootfs, &tarball)?;
    let id = n.netbee(&["import", tarball.to_str().unwrap(), "imported:1"])?;
    assert!(id.trim().starts_with("sha256:"), "import prints the image ID: {id}");
    // `import -` reads the tarball from standard input: the same content, the same layer
    let bin = netbee_lab::netbee_bin();
    let from_stdin = n.sh(&format!(
        "{} -H unix://{} import - imported:stdin < {}",
        bin.display(),
        n.socket().display(),
        tarball.display()
    ))?;
    assert!(from_stdin.trim().starts_with("sha256:"), "import - prints the image ID: {from_stdin}");
    let layers = std::fs::read_dir(n.dir().join("state/images/layers"))?.count();
    assert_eq!(layers, 1, "the same tarball twice is one layer");
    n.netbee(&["rmi", "imported:stdin"])?;
    n.netbee(&["run", "-d", "--name", "web", "-p", "8080:80", "imported:1", "httpd", "-f", "-p", "80", "-h", "/www"])?;
    let page = fetch(x1, &format!("http://{}:8080/", n.addr()))?;
    assert_eq!(page, "only-in-the-imported-image\n", "page served from the image");
    let ls = n.netbee(&["exec", "web", "ls", "/"])?;
    let mut entries: Vec<&str> = ls.split_whitespace().collect();
    entries.sort();
    for want in ["bin", "dev", "etc", "proc", "sys", "www"] {
        assert!(entries.contains(&want), "/ in the container lacks {want}: {entries:?}");
    }
    assert!(!entries.contains(&"usr") && !entries.contains(&"home"), "the node's root shows through: {entries:?}");
    let o = n.netbee_output(&["exec", "web", "cat", "/etc/os-release"]);
    assert!(!o.status.success(), "the node's /etc/os-release is visible in the container");
    // netbee's files are inside the image's root
    let hosts = n.netbee(&["exec", "web", "cat", "/etc/hosts"])?;
    assert!(hosts.contains("web"), "/etc/hosts: {hosts}");
    n.netbee(&["rm", "-f", "web"])?;
    n.netbee(&["rmi", "imported:1"])?;
    Ok(())
}

/// The image config as docker applies it, one field at a time: ExposedPorts (`-P`), Cmd,
/// Entrypoint (and `--entrypoint`), Env (and `-e`), WorkingDir (and `-w`), User (and `-u`).
#[test]
fn the_image_config_is_honoured_as_docker_does() -> Result<()> {
    let lab = single_node_lab("img-config", &[])?;
    let (n, x1) = (lab.node("n1"), lab.external("x1"));
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    n.netbee(&["load", "-i", test_image("busybox-entrypoint.tar").to_str().unwrap()])?;
    let img = "netbee-test/busybox:1";

    // ExposedPorts + Cmd: -P publishes 80/tcp, and the image's Cmd (httpd) serves on it
    n.netbee(&["run", "-d", "--name", "exposed", "-P", img])?;
    let port = n.netbee(&["port", "exposed"])?;
    let host_port = port
        .lines()
        .find(|l| l.starts_with("80/tcp"))
        .and_then(|l| l.rsplit(':').next())
        .unwrap_or_else(|| panic!("-P did not publish 80/tcp: {port}"))
        .trim()
        .to_string();
    let page = fetch(x1, &format!("http://{}:{host_port}/", n.addr()))?;
    assert!(!page.is_empty() && !page.contains("404"), "image's Cmd serves the image's page: {page}");
    n.netbee(&["rm", "-f", "exposed"])?;

    // Cmd replaced by the command given
    assert_eq!(output_of(n, "cmd", &[img, "echo", "replaced"])?, "replaced");
    // Entrypoint: the image's (sh -c) runs the command given as its argument
    let ep_image = n
        .netbee(&["images", "--format", "json"])?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| format!("{}:{}", v["Repository"].as_str().unwrap_or(""), v["Tag"].as_str().unwrap_or("")))
        .find(|r| r.contains("entrypoint"))
        .expect("the entrypoint test image is loaded");
    assert_eq!(output_of(n, "ep", &[&ep_image, "echo via-entrypoint"])?, "via-entrypoint");
    // --entrypoint replaces it and drops the image's Cmd
    assert_eq!(output_of(n, "ep2", &["--entrypoint", "/bin/echo", &ep_image, "a", "b"])?, "a b");
    // Env: the image's PATH, -e adds and overrides by key
    assert_eq!(output_of(n, "env", &["-e", "GREETING=hi", img, "sh", "-c", "echo $GREETING $PATH"])?, "hi /bin");
    assert_eq!(output_of(n, "env2", &["-e", "PATH=/bin:/x", img, "sh", "-c", "echo $PATH"])?, "/bin:/x");
    // WorkingDir: the image's, or -w (created when missing, as docker does)
    assert_eq!(output_of(n, "wd", &[img, "pwd"])?, "/www");
    assert_eq!(output_of(n, "wd2", &["-w", "/made/here", img, "pwd"])?, "/made/here");
    // User: root by default, -u uid:gid
    assert_eq!(output_of(n, "user", &[img, "id", "-u"])?, "0");
    assert_eq!(output_of(n, "user2", &["-u", "1000:1001", img, "sh", "-c", "echo $(id -u):$(id -g)"])?, "1000:1001");
    Ok(())
}

/// The writable layer lives as long as the container; `rmi` of an image in use is refused until
/// the container is gone; the last image using a layer frees it on disk. A layout made by a
/// third-party tool (umoci) loads and runs.
#[test]
fn writable_layers_and_images_in_use_and_a_umoci_layout() -> Result<()> {
    let lab = single_node_lab("img-life", &[])?;
    let n = lab.node("n1");
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    let img = "netbee-test/busybox:1";
    n.netbee(&["run", "-d", "--name", "writer", img, "sh", "-c", "echo written > /written && sleep 600"])?;
    let dir = container_dir(n, "writer")?;
    wait_until(Duration::from_secs(5), "the write lands in the writable layer", || {
        dir.join("rootfs/upper/written").is_file()
    })?;
    assert!(!lab.dir().join("written").exists() && !Path::new("/written").exists(), "the write escaped");
    let e = n.netbee_refused(&["rmi", img]);
    assert!(e.contains("must force") && e.contains("is using its referenced image"), "{e}");
    n.netbee(&["stop", "-t", "1", "writer"])?;
    assert!(dir.join("rootfs/upper/written").is_file(), "the writable layer is kept while the container exists");
    n.netbee(&["rm", "writer"])?;
    assert!(!dir.exists(), "the container's directory (with its writable layer) is gone after rm");
    n.netbee(&["rmi", img])?;
    let layers = std::fs::read_dir(n.dir().join("state/images/layers"))?.count();
    assert_eq!(layers, 0, "layers freed with the last image that used them");

    // umoci (Debian's) builds an OCI layout; netbee loads and runs it
    let layout = lab.dir().join("umoci-layout");
    let bundle = lab.dir().join("umoci-bundle");
    let umoci = |args: &[&str]| -> Result<()> {
        let o = Command::new("umoci").args(args).output()?;
        if !o.status.success() {
            bail!("umoci {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    let l = layout.to_str().unwrap();
    umoci(&["init", "--layout", l])?;
    umoci(&["new", "--image", &format!("{l}:made")])?;
    umoci(&["unpack", "--image", &format!("{l}:made"), bundle.to_str().unwrap()])?;
    make_rootfs(&bundle.join("rootfs"), "made-by-umoci\n")?;
    umoci(&["repack", "--image", &format!("{l}:made"), bundle.to_str().unwrap()])?;
    umoci(&[
        "config",
        "--image",
        &format!("{l}:made"),
        "--config.cmd",
        "cat",
        "--config.cmd",
        "/www/index.html",
        "--config.label",
        "org.example.made-by=umoci",
    ])?;
    let archive = lab.dir().join("umoci.tar");
    tar_dir(&layout, &archive)?;
    let out = n.netbee(&["load", "-i", archive.to_str().unwrap()])?;
    assert!(out.contains("Loaded image"), "{out}");
    // the layout's ref.name ("made") is a tag without a repository: loaded by ID, as docker does
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: ").or_else(|| l.strip_prefix("Loaded image ID: ")))
        .unwrap_or_else(|| panic!("load names no image: {out}"))
        .trim()
        .to_string();
    assert_eq!(output_of(n, "umoci", &[&name])?, "made-by-umoci");
    // the image's labels are the container's, under its own
    n.netbee(&["create", "--name", "labelled", "--label", "org.example.own=yes", &name])?;
    let v: serde_json::Value = serde_json::from_str(&n.netbee(&["inspect", "labelled"])?)?;
    let labels = &v[0]["Config"]["Labels"];
    assert_eq!(labels["org.example.made-by"], "umoci", "image label: {labels}");
    assert_eq!(labels["org.example.own"], "yes", "container label: {labels}");
    n.netbee(&["rm", "labelled"])?;
    Ok(())
}

/// Image containers keep running across a daemon restart and are re-adopted: same process, the
/// published port still served, `exec` still inside the image's root.
#[test]
fn image_containers_survive_a_daemon_restart() -> Result<()> {
    let lab = single_node_lab("img-restart", &[])?;
    let (n, x1) = (lab.node("n1"), lab.external("x1"));
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    n.netbee(&["run", "-d", "--name", "web", "-p", "8080:80", "netbee-test/busybox:1"])?;
    let url = format!("http://{}:8080/", n.addr());
    let before = fetch(x1, &url)?;
    let pid = |n: &Node| -> Result<i64> {
        let v: serde_json::Value = serde_json::from_str(&n.netbee(&["inspect", "web"])?)?;
        Ok(v[0]["State"]["Pid"].as_i64().unwrap_or(0))
    };
    let pid_before = pid(n)?;
    n.restart_daemon()?;
    assert_eq!(pid(n)?, pid_before, "the container was re-adopted, not restarted");
    assert_eq!(fetch(x1, &url)?, before, "the published port serves the same page after the restart");
    let ls = n.netbee(&["exec", "web", "ls", "/www"])?;
    assert!(ls.contains("index.html"), "exec after the restart sees the image: {ls}");
    n.netbee(&["rm", "-f", "web"])?;
    Ok(())
}
