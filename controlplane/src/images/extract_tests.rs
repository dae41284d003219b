//! Each hostile entry a layer can carry, built in memory, unpacked into a scratch root beside a
//! sentinel directory that must stay untouched.
use std::{
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tar::EntryType;

use super::*;

/// A scratch directory: `root/layer` is where the layer goes, `root/outside` the sentinel.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("netbee-extract-{}", crate::names::new_id()));
        std::fs::create_dir_all(p.join("layer")).unwrap();
        std::fs::create_dir_all(p.join("outside")).unwrap();
        Scratch(p)
    }
    fn layer(&self) -> PathBuf {
        self.0.join("layer")
    }
    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
    fn assert_outside_untouched(&self) {
        let n = std::fs::read_dir(self.outside()).unwrap().count();
        assert_eq!(n, 0, "something was written outside the layer");
        let top: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(top.len(), 2, "something was written beside the layer: {top:?}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Appends an entry with its name and link name written raw (the tar crate's setters refuse
/// the hostile names these tests need).
fn add(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, link: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

fn refused_entry(err: ExtractError, entry: &str) -> String {
    let msg = err.to_string();
    assert!(matches!(err, ExtractError::Refused { .. }), "expected a refusal, got {msg}");
    assert!(msg.contains(entry), "error does not name the entry {entry}: {msg}");
    msg
}

#[test]
fn unpacks_files_links_whiteouts_and_metadata() {
    let s = Scratch::new();
    let data = tar_of(|b| {
        add(b, EntryType::Directory, "./etc/", "", b"", 0o755);
        add(b, EntryType::Regular, "./etc/passwd", "", b"root:x:0:0::/:/bin/sh\n", 0o644);
        add(b, EntryType::Regular, "bin/busybox", "", b"binary", 0o4755);
        add(b, EntryType::Symlink, "bin/sh", "busybox", b"", 0o777);
        add(b, EntryType::Symlink, "bin/abs", "/etc/shadow", b"", 0o777);
        add(b, EntryType::Link, "bin/hard", "bin/busybox", b"", 0o755);
        add(b, EntryType::Regular, ".wh.gone", "", b"", 0o644);
        add(b, EntryType::Directory, "var/", "", b"", 0o700);
        add(b, EntryType::Regular, "var/.wh..wh..opq", "", b"", 0o644);
        add(b, EntryType::Fifo, "run.fifo", "", b"", 0o600);
    });
    let u = unpack_layer(&data[..], &s.layer()).unwrap();
    assert_eq!(u.diff_id, Digest::of(&data));
    let l = s.layer();
    assert_eq!(std::fs::read(l.join("etc/passwd")).unwrap(), b"root:x:0:0::/:/bin/sh\n");
    let bb = std::fs::metadata(l.join("bin/busybox")).unwrap();
    assert_eq!(bb.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(bb.mtime(), 1_600_000_000);
    assert_eq!(bb.nlink(), 2, "the hard link shares the inode");
    assert_eq!(std::fs::read_link(l.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(std::fs::read_link(l.join("bin/abs")).unwrap(), Path::new("/etc/shadow"));
    let wh = std::fs::symlink_metadata(l.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout is a 0:0 char device");
    assert!(!l.join(".wh.gone").exists());
    let var = std::fs::metadata(l.join("var")).unwrap();
    assert_eq!(var.permissions().mode() & 0o7777, 0o700);
    assert!(!l.join("var/.wh..wh..opq").exists());
    let mut v = [0u8; 4];
    let key = c"trusted.overlay.opaque";
    let p = CString::new(l.join("var").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path, key and buffer
    let n = unsafe { libc::getxattr(p.as_ptr(), key.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!((n, v[0]), (1, b'y'), "opaque xattr on var");
    assert!(std::fs::symlink_metadata(l.join("run.fifo")).unwrap().file_type().is_fifo());
    assert_eq!(u.size, 22 + 6);
    s.assert_outside_untouched();
}

#[test]
fn gzip_layer_has_the_uncompressed_diff_id() {
    let s = Scratch::new();
    let data = tar_of(|b| add(b, EntryType::Regular, "a", "", b"hello", 0o644));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&data).unwrap();
    let gz = gz.finish().unwrap();
    let u = unpack_layer(&gz[..], &s.layer()).unwrap();
    assert_eq!(u.diff_id, Digest::of(&data));
    assert_eq!(std::fs::read(s.layer().join("a")).unwrap(), b"hello");
}

#[test]
fn dot_dot_is_refused() {
    let s = Scratch::new();
    let data = tar_of(|b| add(b, EntryType::Regular, "../outside/evil", "", b"x", 0o644));
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "../outside/evil");
    s.assert_outside_untouched();
    let data = tar_of(|b| add(b, EntryType::Regular, "a/../../outside/evil", "", b"x", 0o644));
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "a/../../outside/evil");
    s.assert_outside_untouched();
}

#[test]
fn absolute_path_is_refused() {
    let s = Scratch::new();
    let target = format!("{}/evil", s.outside().display());
    let data = tar_of(|b| add(b, EntryType::Regular, &target, "", b"x", 0o644));
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), &target);
    s.assert_outside_untouched();
}

#[test]
fn file_through_an_escaping_symlink_is_refused() {
    let s = Scratch::new();
    for link in ["../outside", &s.outside().display().to_string()] {
        let data = tar_of(|b| {
            add(b, EntryType::Symlink, "esc", link, b"", 0o777);
            add(b, EntryType::Regular, "esc/pwned", "", b"x", 0o644);
        });
        let msg = refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "esc/pwned");
        assert!(msg.contains("symlink"), "{msg}");
        s.assert_outside_untouched();
        std::fs::remove_file(s.layer().join("esc")).unwrap();
    }
    // a symlink replacing a directory between entries is not followed either
    let data = tar_of(|b| {
        add(b, EntryType::Directory, "d/", "", b"", 0o755);
        add(b, EntryType::Symlink, "d", "../outside", b"", 0o777);
        add(b, EntryType::Regular, "d/pwned", "", b"x", 0o644);
    });
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "d/pwned");
    s.assert_outside_untouched();
}

#[test]
fn symlink_as_last_component_is_replaced_not_followed() {
    let s = Scratch::new();
    let data = tar_of(|b| {
        add(b, EntryType::Symlink, "f", "../outside/victim", b"", 0o777);
        add(b, EntryType::Regular, "f", "", b"mine", 0o644);
    });
    unpack_layer(&data[..], &s.layer()).unwrap();
    assert_eq!(std::fs::read(s.layer().join("f")).unwrap(), b"mine");
    s.assert_outside_untouched();
}

#[test]
fn hard_links_out_or_forward_are_refused() {
    let s = Scratch::new();
    let data = tar_of(|b| add(b, EntryType::Link, "pw", "../outside/x", b"", 0o644));
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "pw");
    let data = tar_of(|b| add(b, EntryType::Link, "pw", "/etc/passwd", b"", 0o644));
    refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "pw");
    let data = tar_of(|b| {
        add(b, EntryType::Link, "early", "later", b"", 0o644);
        add(b, EntryType::Regular, "later", "", b"x", 0o644);
    });
    let msg = refused_entry(unpack_layer(&data[..], &s.layer()).unwrap_err(), "early");
    assert!(msg.contains("not an earlier file"), "{msg}");
    assert!(!s.layer().join("early").exists());
    s.assert_outside_untouched();
}

#[test]
fn device_nodes_are_dropped() {
    let s = Scratch::new();
    let data = tar_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Block);
        h.set_path("sda").unwrap();
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_size(0);
        h.set_mode(0o666);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        add(b, EntryType::Char, "mem", "", b"", 0o666);
    });
    unpack_layer(&data[..], &s.layer()).unwrap();
    assert!(std::fs::symlink_metadata(s.layer().join("sda")).is_err());
    assert!(std::fs::symlink_metadata(s.layer().join("mem")).is_err());
}

#[test]
fn truncated_layer_is_an_error() {
    let s = Scratch::new();
    let data = tar_of(|b| add(b, EntryType::Regular, "big", "", &[7u8; 4096], 0o644));
    let err = unpack_layer(&data[..1024], &s.layer()).unwrap_err();
    assert!(matches!(err, ExtractError::Read(_)), "{err}");
}
