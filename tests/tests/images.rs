//! Images at the image level: load/save round trips, third-party tools' archives, hostile
//! archives refused with the store unchanged, layer garbage collection, and pull/push against
//! Debian's docker-registry running in the lab.
use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Result;
use netbee_lab::{Docker, single_node_lab, test_image, wait_until};

fn image_ids(n: &netbee_lab::Node) -> Result<Vec<String>> {
    Ok(n.netbee(&["images", "-q"])?.lines().map(str::to_string).collect())
}

fn layer_count(n: &netbee_lab::Node) -> usize {
    std::fs::read_dir(n.dir().join("state/images/layers")).map(|d| d.count()).unwrap_or(0)
}

fn id_of(n: &netbee_lab::Node, image: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&n.netbee(&["image", "inspect", image])?)?;
    Ok(v[0]["Id"].as_str().unwrap_or_default().to_string())
}

#[test]
fn load_save_round_trip_and_layer_gc() -> Result<()> {
    let lab = single_node_lab("img-roundtrip", &[])?;
    let n = lab.node("n1");
    let out = n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    assert!(out.contains("Loaded image: netbee-test/busybox:1"), "{out}");
    n.netbee(&["load", "-i", test_image("busybox-2.tar").to_str().unwrap()])?;
    let table = n.netbee(&["images"])?;
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains("netbee-test/busybox") && table.contains(" 2 "), "{table}");
    let id1 = id_of(n, "netbee-test/busybox:1")?;
    assert_eq!(layer_count(n), 3, "busybox layer shared, two www layers");

    let saved = lab.dir().join("saved.tar");
    n.netbee(&["save", "-o", saved.to_str().unwrap(), "netbee-test/busybox:1"])?;
    let rm = n.netbee(&["rmi", "netbee-test/busybox:1"])?;
    assert!(rm.contains("Untagged: netbee-test/busybox:1") && rm.contains(&format!("Deleted: {id1}")), "{rm}");
    assert_eq!(layer_count(n), 2, "the shared layer stays for :2");
    n.netbee(&["load", "-i", saved.to_str().unwrap()])?;
    assert_eq!(id_of(n, "netbee-test/busybox:1")?, id1, "same image ID after save, rmi, load");

    // a third-party tool reads what save wrote, and netbee loads what it made
    let layout = lab.dir().join("skopeo-layout");
    let o = std::process::Command::new("skopeo")
        .args(["copy", &format!("docker-archive:{}", saved.display()), &format!("oci:{}:copied", layout.display())])
        .output()?;
    assert!(o.status.success(), "skopeo: {}", String::from_utf8_lossy(&o.stderr));
    let o =
        std::process::Command::new("skopeo").args(["inspect", &format!("oci-archive:{}", saved.display())]).output()?;
    assert!(o.status.success(), "skopeo reads the OCI side: {}", String::from_utf8_lossy(&o.stderr));
    n.netbee(&["rmi", "netbee-test/busybox:1"])?;
    let out = n.netbee(&["load", "-i", layout.to_str().unwrap()])?;
    assert!(out.contains("Loaded image"), "{out}");

    n.netbee(&["rmi", "netbee-test/busybox:2"])?;
    for id in image_ids(n)? {
        n.netbee(&["rmi", "-f", &id])?;
    }
    assert_eq!(layer_count(n), 0, "every layer freed with the last image");
    Ok(())
}

/// A layer entry: kind, name, link target.
type Entry<'a> = (tar::EntryType, &'a str, &'a str);

/// Writes a tar whose only layer entry has the hostile `name` (and `link`), as a docker save
/// archive whose config names the layer's real digest, so only the extraction rules refuse it.
fn hostile_archive(dir: &Path, entries: &[Entry<'_>]) -> Result<std::path::PathBuf> {
    use sha2::Digest as _;
    let mut layer = tar::Builder::new(Vec::new());
    for (kind, name, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(if *kind == tar::EntryType::Regular { 5 } else { 0 });
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular { b"pwned" } else { b"" };
        layer.append(&h, data)?;
    }
    let layer = layer.into_inner()?;
    let diff = hex::encode(sha2::Sha256::digest(&layer));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff}"]}}}}"#
    );
    let chex = hex::encode(sha2::Sha256::digest(config.as_bytes()));
    let manifest = format!(r#"[{{"Config":"{chex}.json","RepoTags":["evil:1"],"Layers":["l/layer.tar"]}}]"#);
    let mut ar = tar::Builder::new(Vec::new());
    for (name, data) in [
        (format!("{chex}.json"), config.into_bytes()),
        ("l/layer.tar".into(), layer),
        ("manifest.json".into(), manifest.into_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        ar.append_data(&mut h, name, &data[..])?;
    }
    let p = dir.join(format!("hostile-{}.tar", rand::random::<u32>()));
    std::fs::write(&p, ar.into_inner()?)?;
    Ok(p)
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() -> Result<()> {
    let lab = single_node_lab("img-hostile", &[])?;
    let n = lab.node("n1");
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    let before = n.netbee(&["images"])?;
    let sentinel = lab.dir().join("sentinel");
    std::fs::create_dir_all(&sentinel)?;
    let abs = format!("{}/abs", sentinel.display());
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![(tar::EntryType::Regular, "../../../../../../../../tmp/netbee-escape", "")], "`..`"),
        (vec![(tar::EntryType::Regular, &abs, "")], "absolute path"),
        (
            vec![
                (tar::EntryType::Symlink, "esc", sentinel.to_str().unwrap()),
                (tar::EntryType::Regular, "esc/pwned", ""),
            ],
            "symlink",
        ),
    ];
    for (entries, why) in cases {
        let p = hostile_archive(lab.dir(), &entries)?;
        let err = n.netbee_refused(&["load", "-i", p.to_str().unwrap()]);
        assert!(err.contains("Error response from daemon") && err.contains(why), "{why}: {err}");
        assert_eq!(n.netbee(&["images"])?, before, "images unchanged after {why}");
        assert_eq!(std::fs::read_dir(&sentinel)?.count(), 0, "nothing written outside by {why}");
        assert!(!Path::new("/tmp/netbee-escape").exists());
    }
    // a truncated archive and a layer whose content does not match its digest
    let good = std::fs::read(test_image("busybox-1.tar"))?;
    let cut = lab.dir().join("cut.tar");
    std::fs::write(&cut, &good[..good.len() / 2])?;
    let err = n.netbee_refused(&["load", "-i", cut.to_str().unwrap()]);
    assert!(err.contains("Error response from daemon"), "{err}");
    let tampered = lab.dir().join("tampered.tar");
    let mut bytes = good.clone();
    let at = bytes.windows(21).position(|w| w == b"netbee test image one").expect("index.html in the archive");
    bytes[at] = b'N';
    std::fs::write(&tampered, &bytes)?;
    let err = n.netbee_refused(&["load", "-i", tampered.to_str().unwrap()]);
    assert!(err.contains("digest mismatch") && err.contains("netbee-test/busybox:1"), "{err}");
    assert_eq!(n.netbee(&["images"])?, before);
    assert_eq!(std::fs::read_dir(n.dir().join("state/images/tmp"))?.count(), 0, "no staging left");
    Ok(())
}

/// Debian's docker-registry serving plain HTTP on external `x`'s address, port 5000, storing under
/// the lab's directory; stopped on drop (declare it after the lab, so it goes first).
struct Registry(std::process::Child);

impl Registry {
    fn start(lab: &netbee_lab::Lab, x: &str) -> Result<Registry> {
        let ns = lab.external(x);
        let addr = format!("{}:5000", ns.addr());
        let storage = lab.dir().join(format!("registry-{x}"));
        std::fs::create_dir_all(&storage)?;
        let cfg = lab.dir().join(format!("registry-{x}.yml"));
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )?;
        let log = std::fs::File::create(lab.dir().join(format!("registry-{x}.log")))?;
        let child = ns
            .cmd("/usr/bin/docker-registry")
            .args(["serve", cfg.to_str().unwrap()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let reg = Registry(child);
        wait_until(Duration::from_secs(10), "registry listening", || {
            ns.sh(&format!("curl -sf http://{addr}/v2/ >/dev/null")).is_ok()
        })?;
        Ok(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pull_and_push_against_a_registry_in_the_lab() -> Result<()> {
    let lab = single_node_lab("img-registry", &["--insecure-registry", "10.77.0.101:5000"])?;
    let _registry = Registry::start(&lab, "x1")?;
    let n = lab.node("n1");
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    let id = id_of(n, "netbee-test/busybox:1")?;
    n.netbee(&["tag", "netbee-test/busybox:1", "10.77.0.101:5000/web:1.1"])?;
    let out = n.netbee(&["push", "10.77.0.101:5000/web:1.1"])?;
    assert!(out.contains("digest: sha256:"), "{out}");
    n.netbee(&["rmi", "10.77.0.101:5000/web:1.1"])?;
    n.netbee(&["rmi", "netbee-test/busybox:1"])?;
    assert!(image_ids(n)?.is_empty());
    let out = n.netbee(&["pull", "10.77.0.101:5000/web:1.1"])?;
    assert!(out.contains("Digest: sha256:"), "{out}");
    assert_eq!(id_of(n, "10.77.0.101:5000/web:1.1")?, id, "pulled image has the pushed ID");
    let err = n.netbee_refused(&["pull", "10.77.0.101:5000/web:nope"]);
    assert!(err.contains("10.77.0.101:5000/web:nope") && err.contains("not found"), "{err}");

    // the same through docker's own CLI (its push and pull requests, its progress output)
    let d = Docker::new(&lab, n)?;
    d.ok(&["tag", "10.77.0.101:5000/web:1.1", "10.77.0.101:5000/web:docker"])?;
    let out = d.ok(&["push", "10.77.0.101:5000/web:docker"])?;
    assert!(out.contains("docker: digest: sha256:"), "docker push: {out}");
    d.ok(&["rmi", "10.77.0.101:5000/web:docker", "10.77.0.101:5000/web:1.1"])?;
    assert!(image_ids(n)?.is_empty(), "docker rmi left images");
    let out = d.ok(&["pull", "10.77.0.101:5000/web:docker"])?;
    assert!(out.contains("Digest: sha256:") && out.contains("10.77.0.101:5000/web:docker"), "docker pull: {out}");
    assert_eq!(id_of(n, "10.77.0.101:5000/web:docker")?, id, "docker pull brought the pushed image");
    let err = d.refused(&["pull", "10.77.0.101:5000/web:nope"]);
    assert!(err.contains("Error response from daemon") && err.contains("not found"), "{err}");
    let err = d.refused(&["push", "10.77.0.101:5000/web:absent"]);
    assert!(err.contains("No such image") || err.contains("not found"), "docker push of a missing image: {err}");
    Ok(())
}

/// `(task hostname, node)` for every running task of the service, after each task wrote its
/// hostname into `/www/host` (which its httpd then serves): `netbee exec` into every container of
/// every node. Container hostnames are their short ids, distinct per task.
fn mark_tasks(lab: &netbee_lab::Lab) -> Result<HashMap<String, String>> {
    let mut by_host = HashMap::new();
    for node in lab.nodes() {
        for id in node.netbee(&["ps", "-q"])?.split_whitespace() {
            let h = node.exec(id, &["sh", "-c", "hostname > /www/host && cat /www/host"])?.trim().to_string();
            by_host.insert(h, node.short_name().to_string());
        }
    }
    Ok(by_host)
}

/// Acceptance (d) of the images issue: an image pushed from one node to a registry on the
/// underlay is pulled by the other nodes when the scheduler places a service's tasks there, and
/// every node serves the image's own content through the routing mesh from tasks on several nodes;
/// a tag the registry lacks gives failed tasks whose error in `service ps` is the pull's own.
#[test]
fn service_tasks_pull_their_image_from_a_registry_and_serve_it_through_the_mesh() -> Result<()> {
    const REG: &str = "10.77.0.101:5000";
    let lab =
        netbee_lab::swarm_lab_with("img-svc-pull", &["n1", "n2", "n3"], &["x1", "x2"], &["--insecure-registry", REG])?;
    let _registry = Registry::start(&lab, "x1")?;
    let (n1, client) = (lab.node("n1"), lab.external("x2"));
    let image = format!("{REG}/netbee-test/web:1");

    n1.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    n1.netbee(&["tag", "netbee-test/busybox:1", &image])?;
    let out = n1.netbee(&["push", &image])?;
    assert!(out.contains("digest: sha256:"), "{out}");
    for n in ["n2", "n3"] {
        assert!(image_ids(lab.node(n))?.is_empty(), "{n} starts without images");
    }

    // no CMD: the image's own Cmd (httpd -f -p 80 -h /www) runs in every task; -d: the wait below
    // is bounded, the CLI's would not be if a pull failed
    n1.netbee(&["service", "create", "-d", "--name", "web", "--replicas", "6", "-p", "8080:80", &image])?;
    wait_until(Duration::from_secs(60), "web 6/6", || n1.service_replicas("web") == "6/6")?;
    let placed = n1.service_running_tasks("web")?;
    for n in ["n1", "n2", "n3"] {
        assert!(placed.iter().any(|(_, node)| node == n), "a task on {n}: {placed:?}");
    }
    let ps = n1.netbee(&["service", "ps", "web"])?;
    assert!(!ps.contains("pulling image"), "{ps}");
    for n in ["n2", "n3"] {
        let node = lab.node(n);
        let images = node.netbee(&["images"])?;
        assert!(
            images.lines().any(|l| l.starts_with(&format!("{REG}/netbee-test/web ")) && l.contains(" 1 ")),
            "{n} pulled {image}: {images}"
        );
        assert_eq!(id_of(node, &image)?, id_of(n1, &image)?, "{n} has the pushed image");
    }

    let tasks = mark_tasks(&lab)?;
    assert_eq!(tasks.len(), 6, "six task containers: {tasks:?}");
    for n in ["n1", "n2", "n3"] {
        let url = format!("http://{}:8080", lab.node(n).addr());
        let index = client.sh(&format!("curl -sf -m 3 {url}/"))?;
        assert_eq!(index.trim(), "netbee test image one", "the image's index.html through {n}");
        // every node programs its load balancer on its own pass: wait until all six answer
        let mut seen: Vec<String> = Vec::new();
        wait_until(Duration::from_secs(20), &format!("{n} balances over the six tasks"), || {
            seen = client
                .sh(&format!("for i in $(seq 12); do curl -sf -m 3 {url}/host || echo FAIL; done"))
                .map(|o| o.lines().map(str::to_string).collect())
                .unwrap_or_default();
            seen.iter().collect::<std::collections::HashSet<_>>().len() == 6
        })?;
        assert!(!seen.iter().any(|h| h == "FAIL"), "through {n}: {seen:?}");
        let nodes: std::collections::BTreeSet<&str> =
            seen.iter().filter_map(|h| tasks.get(h)).map(String::as_str).collect();
        assert!(nodes.len() >= 2, "through {n}, answers from tasks on {nodes:?}: {seen:?}");
    }

    // a tag the registry does not have: failed tasks with the pull's own error, also once the
    // scheduler has shut them down and replaced them (their history keeps the reason)
    let ghost = format!("{REG}/netbee-test/web:nope");
    // -d: its tasks cannot start, so the service never converges (the CLI would wait for ever)
    n1.netbee(&["service", "create", "-d", "--name", "ghost", "--replicas", "2", &ghost])?;
    let mut ps = String::new();
    wait_until(Duration::from_secs(30), "ghost's failed tasks shut down and replaced", || {
        ps = n1.netbee(&["service", "ps", "--format", "json", "ghost"]).unwrap_or_default();
        ps.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|t| t["CurrentState"] == "Failed" && t["DesiredState"] == "Shutdown")
            .count()
            >= 2
    })?;
    let failed: Vec<serde_json::Value> = ps
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|t| t["CurrentState"] == "Failed")
        .collect();
    for t in &failed {
        let err = t["Error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with(&format!("pulling image {ghost}: "))
                && (err.contains("not found") || err.contains("manifest unknown")),
            "the pull error, not a generic one: {t}"
        );
    }
    let table = n1.netbee(&["service", "ps", "ghost"])?;
    assert!(table.contains("pulling image") && !table.contains("task failed"), "{table}");
    assert!(n1.service_running_tasks("ghost")?.is_empty());

    // everything removed
    n1.netbee(&["service", "rm", "web", "ghost"])?;
    for node in lab.nodes() {
        wait_until(Duration::from_secs(40), &format!("{}'s tasks removed", node.short_name()), || {
            node.netbee(&["ps", "-a", "-q"]).is_ok_and(|o| o.trim().is_empty())
        })?;
        for id in image_ids(node)? {
            node.netbee(&["rmi", "-f", &id])?;
        }
        assert!(image_ids(node)?.is_empty());
        assert_eq!(layer_count(node), 0, "{} freed its layers", node.short_name());
    }
    assert!(n1.netbee(&["service", "ls", "-q"])?.trim().is_empty());
    assert!(client.sh(&format!("curl -s -m 2 http://{}:8080/", n1.addr())).is_err(), "the port is withdrawn");
    Ok(())
}
