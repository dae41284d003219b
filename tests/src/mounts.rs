//! Reading the mount table to find what daemons mounted under a lab dir.

use std::path::{Path, PathBuf};

/// Mount points at or below `dir` in this mount namespace, deepest first.
/// The daemons run in our mount namespace (they only setns the network), so
/// their bpffs and netns bind mounts show up here.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// The kernel octal-escapes space, tab, newline and backslash in mount paths.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detach-unmounts everything below `dir`, repeating because mounts can be
/// stacked on the same point. Returns what is still mounted afterwards.
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..8 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return ms;
        }
        for m in &ms {
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("netbee-lab: umount {}: {e}", m.display());
            }
        }
    }
    mounts_under(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape_octal() {
        assert_eq!(super::unescape(r"/tmp/a\040b\\"), "/tmp/a b\\\\");
        assert_eq!(super::unescape(r"/x\134y"), "/x\\y");
    }
}
