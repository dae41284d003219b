//! The project's test images, built from Debian's busybox-static with the system's `tar` and
//! `sha256sum`: `netbee-test/busybox:1` and `:2` (two layers: busybox with its applet links and
//! a minimal /etc; then /www/index.html, whose text differs between the tags), and
//! `netbee-test/busybox-entrypoint:1` (same layers, an Entrypoint). Each is written as
//! `<dir>/busybox-<tag>.tar`, an archive that is both a `docker save` archive and an OCI
//! layout. Rebuilt only when missing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::Result;

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "httpd", "nc", "wget", "cat", "ls", "echo", "sleep", "env", "pwd", "id", "hostname", "ps", "kill", "mkdir",
    "rm", "touch", "test", "true", "false", "grep", "head", "ip", "ifconfig", "netstat", "whoami", "vi", "mount",
];

/// (file name, tag, index.html text, entrypoint)
const IMAGES: &[(&str, &str, &str, Option<&str>)] = &[
    ("busybox-1.tar", "netbee-test/busybox:1", "netbee test image one", None),
    ("busybox-2.tar", "netbee-test/busybox:2", "netbee test image two", None),
    ("busybox-entrypoint.tar", "netbee-test/busybox-entrypoint:1", "netbee test image one", Some("/bin/sh")),
];

fn sh(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn sha256(p: &Path) -> Result<String> {
    Ok(sh(Command::new("sha256sum").arg(p))?.split_whitespace().next().unwrap_or_default().to_string())
}

fn io<T>(r: std::io::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// A reproducible tar of `dir`'s contents (root-owned, fixed mtime, sorted).
fn tar_dir(dir: &Path, out: &Path) -> Result<()> {
    sh(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "--mtime=@1700000000", "--sort=name", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."))
    .map(drop)
}

/// Copies `p` into `blobs` under its digest; returns (hex, size).
fn add_blob(blobs: &Path, p: &Path) -> Result<(String, u64)> {
    let hex = sha256(p)?;
    let size = io(fs::metadata(p), "blob")?.len();
    io(fs::copy(p, blobs.join(&hex)), "copying a blob")?;
    Ok((hex, size))
}

pub fn build(dir: &Path) -> Result<()> {
    if IMAGES.iter().all(|(f, ..)| dir.join(f).is_file()) {
        return Ok(());
    }
    let work = dir.join("build");
    let _ = fs::remove_dir_all(&work);
    let l1 = work.join("layer1");
    io(fs::create_dir_all(l1.join("bin")), "creating the layer")?;
    io(fs::create_dir_all(l1.join("etc")), "creating the layer")?;
    io(fs::create_dir_all(l1.join("tmp")), "creating the layer")?;
    io(fs::copy(BUSYBOX, l1.join("bin/busybox")), "copying /bin/busybox (is busybox-static installed?)")?;
    for a in APPLETS {
        io(std::os::unix::fs::symlink("busybox", l1.join("bin").join(a)), "linking an applet")?;
    }
    io(
        fs::write(l1.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
        "passwd",
    )?;
    io(fs::write(l1.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n"), "group")?;
    let layer1 = work.join("layer1.tar");
    tar_dir(&l1, &layer1)?;
    for (file, tag, text, entrypoint) in IMAGES {
        let img = work.join(file.trim_end_matches(".tar"));
        let blobs = img.join("blobs/sha256");
        io(fs::create_dir_all(&blobs), "creating blobs")?;
        let l2 = img.join("layer2");
        io(fs::create_dir_all(l2.join("www")), "creating the layer")?;
        io(fs::write(l2.join("www/index.html"), format!("{text}\n")), "index.html")?;
        let layer2 = img.join("layer2.tar");
        tar_dir(&l2, &layer2)?;
        io(fs::remove_dir_all(&l2), "cleaning up")?;
        let (h1, s1) = add_blob(&blobs, &layer1)?;
        let (h2, s2) = add_blob(&blobs, &layer2)?;
        let (ep, cmd) = match entrypoint {
            Some(e) => (format!("[\"{e}\",\"-c\"]"), "[\"httpd -f -p 80 -h /www\"]".to_string()),
            None => ("null".to_string(), "[\"httpd\",\"-f\",\"-p\",\"80\",\"-h\",\"/www\"]".to_string()),
        };
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2023-11-14T22:13:20Z\",\
             \"config\":{{\"Env\":[\"PATH=/bin\"],\"Entrypoint\":{ep},\"Cmd\":{cmd},\"WorkingDir\":\"/www\",\
             \"ExposedPorts\":{{\"80/tcp\":{{}}}},\"Labels\":{{\"org.netbee.test\":\"busybox\"}}}},\
             \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{h1}\",\"sha256:{h2}\"]}},\
             \"history\":[{{\"created_by\":\"busybox and /etc\"}},{{\"created_by\":\"/www/index.html\"}}]}}"
        );
        let cfg_path = img.join("config.json");
        io(fs::write(&cfg_path, &config), "config")?;
        let (hc, sc) = add_blob(&blobs, &cfg_path)?;
        let manifest = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:{hc}\",\"size\":{sc}}},\
             \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:{h1}\",\"size\":{s1}}},\
             {{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:{h2}\",\"size\":{s2}}}]}}"
        );
        let m_path = img.join("manifest.oci.json");
        io(fs::write(&m_path, &manifest), "manifest")?;
        let (hm, sm) = add_blob(&blobs, &m_path)?;
        for f in ["config.json", "manifest.oci.json", "layer2.tar"] {
            io(fs::remove_file(img.join(f)), "cleaning up")?;
        }
        let (repo, t) = tag.rsplit_once(':').expect("tagged");
        io(fs::write(img.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}"), "oci-layout")?;
        io(
            fs::write(
                img.join("index.json"),
                format!(
                    "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[\
                     {{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:{hm}\",\"size\":{sm},\
                     \"annotations\":{{\"io.containerd.image.name\":\"docker.io/{tag}\",\"org.opencontainers.image.ref.name\":\"{t}\"}}}}]}}"
                ),
            ),
            "index.json",
        )?;
        io(
            fs::write(
                img.join("manifest.json"),
                format!(
                    "[{{\"Config\":\"blobs/sha256/{hc}\",\"RepoTags\":[\"{tag}\"],\
                     \"Layers\":[\"blobs/sha256/{h1}\",\"blobs/sha256/{h2}\"]}}]"
                ),
            ),
            "manifest.json",
        )?;
        io(fs::write(img.join("repositories"), format!("{{\"{repo}\":{{\"{t}\":\"{h2}\"}}}}")), "repositories")?;
        let part: PathBuf = dir.join(format!("{file}.part"));
        tar_dir(&img, &part)?;
        io(fs::rename(&part, dir.join(file)), "writing the image archive")?;
    }
    io(fs::remove_dir_all(&work), "cleaning up")?;
    Ok(())
}
