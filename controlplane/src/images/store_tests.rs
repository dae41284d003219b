//! The store end to end on a scratch directory: import, load, save, tags, removal and garbage
//! collection, and that failed imports leave it unchanged.
use std::{path::PathBuf, sync::Arc};

use tar::EntryType;

use super::*;
use crate::images::RemoveOutcome;

struct Scratch(PathBuf, ImageStore);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("netbee-images-{}", crate::names::new_id()));
        std::fs::create_dir_all(&p).unwrap();
        let db = Arc::new(Store::open(&p.join("db.redb")).unwrap());
        let s = ImageStore::open(&p, db, RegistryConfig::default()).unwrap();
        Scratch(p, s)
    }
    /// Everything under images/ except tmp/, as relative paths.
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["blobs/sha256", "layers"] {
            for e in std::fs::read_dir(self.0.join("images").join(sub)).unwrap() {
                out.push(format!("{sub}/{}", e.unwrap().file_name().to_string_lossy()));
            }
        }
        out.sort();
        out
    }
    fn tmp_empty(&self) -> bool {
        std::fs::read_dir(self.0.join("images/tmp")).unwrap().count() == 0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rootfs(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn import_tag_remove_and_collect_layers() {
    let s = Scratch::new();
    let tar = rootfs(&[("etc/hello", b"hi")]);
    let a = s.1.import(&tar[..], Some("a:1")).unwrap();
    assert_eq!(a.repo_tags, ["a:1"]);
    assert_eq!(a.layers.len(), 1);
    let dirs = s.1.layer_dirs(&s.1.resolve("a:1").unwrap()).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("etc/hello")).unwrap(), b"hi");
    assert_eq!(s.1.resolve(&a.id[7..19]).unwrap().id, a.id, "by ID prefix");
    // the same content imported again is another image (new created time) sharing the layer
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = s.1.import(&tar[..], Some("b")).unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.layers, b.layers);
    assert_eq!(s.1.resolve("b:latest").unwrap().id, b.id);
    s.1.tag("a:1", "a:2").unwrap();
    assert_eq!(s.1.remove("a:2", false, &[]).unwrap(), [RemoveOutcome::Untagged("a:2".into())]);
    let users = [("c0ffee".to_string(), a.id.clone())];
    let err = s.1.remove("a:1", false, &users).unwrap_err();
    assert!(err.message.contains("must force") && err.message.contains("container c0ffee"), "{}", err.message);
    let out = s.1.remove("a:1", false, &[]).unwrap();
    assert_eq!(out, [RemoveOutcome::Untagged("a:1".into()), RemoveOutcome::Deleted(a.id.clone())]);
    assert!(dirs[0].is_dir(), "a layer b still uses stays");
    s.1.remove("b", false, &[]).unwrap();
    assert!(!dirs[0].exists(), "the last image's layer is freed");
    assert_eq!(s.files(), Vec::<String>::new(), "no blob left");
    assert!(s.1.resolve("b").unwrap_err().to_string().contains("No such image: b"));
}

#[test]
fn failed_import_leaves_the_store_unchanged() {
    let s = Scratch::new();
    s.1.import(&rootfs(&[("ok", b"1")])[..], Some("ok")).unwrap();
    let before = s.files();
    let err = s.1.import(&rootfs(&[("fine", b"x"), ("../evil", b"x")])[..], Some("bad")).unwrap_err();
    assert!(format!("{err:#}").contains("../evil"), "{err:#}");
    assert_eq!(s.files(), before);
    assert!(s.tmp_empty());
    assert_eq!(s.1.list().unwrap().len(), 1);
    assert!(!s.0.join("evil").exists());
}

#[test]
fn save_remove_load_round_trip_keeps_the_id() {
    let s = Scratch::new();
    let a = s.1.import(&rootfs(&[("a", b"1")])[..], Some("x/app:1")).unwrap();
    let out = s.0.join("saved.tar");
    s.1.save(&["x/app:1".to_string()], &out).unwrap();
    s.1.remove("x/app:1", false, &[]).unwrap();
    assert!(s.files().is_empty());
    let loaded = s.1.load(&out).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, a.id);
    assert_eq!(loaded[0].repo_tags, ["x/app:1"]);
    assert!(s.tmp_empty());
}

#[test]
fn load_refuses_a_layer_whose_digest_does_not_match() {
    let s = Scratch::new();
    let a = s.1.import(&rootfs(&[("a", b"1")])[..], Some("app:1")).unwrap();
    let out = s.0.join("saved.tar");
    s.1.save(&["app:1".to_string()], &out).unwrap();
    s.1.remove("app:1", false, &[]).unwrap();
    // rewrite the archive with one byte of the layer changed (and the OCI side removed, so the
    // docker manifest's diff_id check is what catches it)
    let mut ar = tar::Archive::new(File::open(&out).unwrap());
    let mut b = tar::Builder::new(Vec::new());
    let layer_hex = &a.blobs[2][7..];
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path == "index.json" {
            continue;
        }
        if path.ends_with(layer_hex) {
            // the first entry's content (after its 512-byte header)
            assert_eq!(data[512], b'1');
            data[512] = b'2';
        }
        let mut h = e.header().clone();
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    std::fs::write(&out, b.into_inner().unwrap()).unwrap();
    let err = format!("{:#}", s.1.load(&out).unwrap_err());
    assert!(err.contains("digest mismatch") && err.contains("of app:1"), "{err}");
    assert!(s.files().is_empty() && s.tmp_empty() && s.1.list().unwrap().is_empty());
}
