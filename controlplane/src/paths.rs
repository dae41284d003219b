//! Directories the daemon keeps its state in, created with errors that name the path.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Creates `path` and its parents. When a component exists as something other than a directory,
/// the error says which one: `create_dir_all` reports only "File exists" or "Not a directory".
pub fn make_dir(path: &Path) -> Result<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTDIR) => {
            match path.ancestors().collect::<Vec<_>>().into_iter().rev().find(|p| p.exists() && !p.is_dir()) {
                Some(p) => {
                    bail!("cannot create directory {}: {} exists and is not a directory", path.display(), p.display())
                }
                None => Err(e).with_context(|| format!("creating directory {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("creating directory {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_way_is_named() {
        let dir = std::env::temp_dir().join(format!("netbee-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        for target in [file.clone(), file.join("below")] {
            let e = format!("{:#}", make_dir(&target).unwrap_err());
            assert!(e.contains(&format!("{} exists and is not a directory", file.display())), "{e}");
        }
        make_dir(&dir.join("a/b")).unwrap();
        assert!(dir.join("a/b").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
