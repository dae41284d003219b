//! Images at the image level: load/save round trips, third-party tools' archives, hostile
//! archives refused with the store unchanged, layer garbage collection, and pull/push against
//! Debian's docker-registry running in the lab.
use std::{path::Path, time::Duration};

use anyhow::Result;
use netbee_lab::{single_node_lab, test_image, wait_until};

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

#[test]
fn pull_and_push_against_a_registry_in_the_lab() -> Result<()> {
    let lab = single_node_lab("img-registry", &["--insecure-registry", "10.77.0.101:5000"])?;
    let storage = lab.dir().join("registry");
    std::fs::create_dir_all(&storage)?;
    let cfg = lab.dir().join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 10.77.0.101:5000\n",
            storage.display()
        ),
    )?;
    let log = std::fs::File::create(lab.dir().join("registry.log"))?;
    let mut reg = lab
        .external("x1")
        .cmd("/usr/bin/docker-registry")
        .args(["serve", cfg.to_str().unwrap()])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = (|| -> Result<()> {
        let x1 = lab.external("x1");
        wait_until(Duration::from_secs(10), "registry listening", || {
            x1.sh("wget -q -O- http://10.77.0.101:5000/v2/ >/dev/null 2>&1 || curl -sf http://10.77.0.101:5000/v2/")
                .is_ok()
        })?;
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
        Ok(())
    })();
    let _ = reg.kill();
    let _ = reg.wait();
    result
}
