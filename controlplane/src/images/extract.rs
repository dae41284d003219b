//! Unpacking one layer (a tar stream, plain or gzip) into a directory in overlayfs lower-layer
//! form, without ever writing outside that directory.
//!
//! A layer comes from whoever made the archive or runs the registry, so every entry is hostile
//! until shown otherwise:
//! - absolute paths and `..` components are refused (a legitimate layer never needs them);
//! - nothing is ever created through a symlink: every parent is opened component by component
//!   with `O_NOFOLLOW | O_DIRECTORY` relative to the layer's root, and the entry itself is made
//!   with the `*at` calls relative to that parent, which never follow the last component. A
//!   symlink may point anywhere *as a link* (that is what the container sees); it only becomes an
//!   escape when extraction follows it, which it never does;
//! - hard links must name an earlier non-directory entry of the same layer;
//! - device nodes are dropped (a container must not get a device the image chose); the only
//!   devices in a layer directory are the 0:0 whiteouts made here;
//! - docker whiteouts `.wh.NAME` become overlayfs whiteouts (a 0:0 character device `NAME`) and
//!   `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`).
//!
//! Permissions, ownership, mtimes, symlinks and hard links are kept (the daemon runs as root).
use std::{
    collections::HashSet,
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{self, BufRead as _, BufReader, Read},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
};

use super::digest::{Digest, HashingReader};

/// What unpacking a layer found: the digest of its uncompressed tar (its diff_id) and the bytes
/// of file content it holds.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub diff_id: Digest,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that would write outside the layer, or that no layer may contain.
    #[error("entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    /// Writing an entry failed.
    #[error("entry {entry:?}: {source}")]
    Io { entry: String, source: io::Error },
    /// The stream itself is broken (truncated, not a tar, bad gzip).
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

fn refused(entry: &str, reason: impl Into<String>) -> ExtractError {
    ExtractError::Refused { entry: entry.to_string(), reason: reason.into() }
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Wraps a stream that may be gzip-compressed (detected by its magic bytes) in a decoder.
pub fn maybe_gunzip<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(64 * 1024, r);
    let gz = br.fill_buf()?.starts_with(&GZIP_MAGIC);
    Ok(if gz { Box::new(flate2::read::MultiGzDecoder::new(br)) } else { Box::new(br) })
}

/// Unpacks the layer tar `r` (plain or gzip) into `dest`, an existing empty directory.
pub fn unpack_layer(r: impl Read, dest: &Path) -> Result<Unpacked, ExtractError> {
    let mut hashed = HashingReader::new(maybe_gunzip(r).map_err(ExtractError::Read)?);
    let root = open_dir(None, dest.as_os_str()).map_err(|e| ExtractError::Io { entry: ".".into(), source: e })?;
    let mut u = Unpacker { root, dest: dest.to_path_buf(), files: HashSet::new(), dirs: Vec::new(), size: 0 };
    {
        let mut ar = tar::Archive::new(&mut hashed);
        for entry in ar.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            u.entry(&mut entry)?;
        }
    }
    u.finish_dirs()?;
    let (diff_id, _) = hashed.finish().map_err(ExtractError::Read)?;
    Ok(Unpacked { diff_id, size: u.size })
}

/// Ownership, mode and mtime of an entry, applied after its content.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

struct Unpacker {
    root: OwnedFd,
    dest: PathBuf,
    /// Non-directory entries made so far: what a hard link may point at.
    files: HashSet<Vec<OsString>>,
    /// Directories and their metadata, applied last (their children change their mtime).
    dirs: Vec<(Vec<OsString>, Meta)>,
    size: u64,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>) -> Result<(), ExtractError> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_path(&raw, &name)?;
        let h = e.header();
        let meta = Meta {
            mode: h.mode().map_err(|err| refused(&name, format!("bad mode: {err}")))? & 0o7777,
            // an empty owner field is root, as GNU tar and Go's archive/tar read it
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            mtime: h.mtime().unwrap_or(0) as i64,
        };
        let kind = h.entry_type();
        let io_err = |source: io::Error| ExtractError::Io { entry: name.clone(), source };
        let Some((last, parents)) = comps.split_last() else {
            // the layer's root itself (`./`): its metadata only
            if kind.is_dir() {
                self.dirs.push((Vec::new(), meta));
            }
            return Ok(());
        };
        let parent = self.open_parent(parents, &name)?;
        let last_str = last.to_string_lossy();
        if let Some(hidden) = last_str.strip_prefix(WHITEOUT_PREFIX) {
            if last_str == OPAQUE_MARKER {
                return set_opaque(&parent).map_err(io_err);
            }
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // other `.wh..wh.` names are aufs bookkeeping with no meaning here
                return Ok(());
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(refused(&name, "whiteout of an invalid name"));
            }
            let target = OsStr::new(hidden);
            remove_existing(&parent, target, &self.dest.join(join(parents)).join(target)).map_err(io_err)?;
            return mknod(&parent, target, libc::S_IFCHR, 0).map_err(io_err);
        }
        let full = self.dest.join(join(&comps));
        match kind {
            tar::EntryType::Directory => {
                match fstatat(&parent, last) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => {
                        remove_existing(&parent, last, &full).map_err(io_err)?;
                        mkdir(&parent, last).map_err(io_err)?;
                    }
                    Err(_) => mkdir(&parent, last).map_err(io_err)?,
                }
                self.dirs.push((comps.clone(), meta));
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&parent, last, &full).map_err(io_err)?;
                let fd = openat(
                    &parent,
                    last,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o600,
                )
                .map_err(io_err)?;
                let mut f = File::from(fd);
                self.size += io::copy(e, &mut f).map_err(ExtractError::Read)?;
                fchown(&f, meta.uid, meta.gid).map_err(io_err)?;
                // after chown, which clears the set-id bits
                fchmod(&f, meta.mode).map_err(io_err)?;
                futimens(&f, meta.mtime).map_err(io_err)?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name_bytes().ok_or_else(|| refused(&name, "symlink without a target"))?;
                remove_existing(&parent, last, &full).map_err(io_err)?;
                symlink(&target, &parent, last).map_err(io_err)?;
                lchown_at(&parent, last, meta.uid, meta.gid).map_err(io_err)?;
                lutimes_at(&parent, last, meta.mtime).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let raw_target = e.link_name_bytes().ok_or_else(|| refused(&name, "hard link without a target"))?;
                let target_name = String::from_utf8_lossy(&raw_target).into_owned();
                let target = clean_path(&raw_target, &name)
                    .map_err(|_| refused(&name, format!("hard link to {target_name:?} outside the layer")))?;
                if !self.files.contains(&target) {
                    return Err(refused(
                        &name,
                        format!("hard link to {target_name:?}, which is not an earlier file of this layer"),
                    ));
                }
                let (tlast, tparents) = target.split_last().expect("a file entry has a name");
                let tparent = self.open_parent(tparents, &name)?;
                if target != comps {
                    remove_existing(&parent, last, &full).map_err(io_err)?;
                    link(&tparent, tlast, &parent, last).map_err(io_err)?;
                }
            }
            tar::EntryType::Fifo => {
                remove_existing(&parent, last, &full).map_err(io_err)?;
                mknod(&parent, last, libc::S_IFIFO, 0).map_err(io_err)?;
                lchown_at(&parent, last, meta.uid, meta.gid).map_err(io_err)?;
                let fd = openat(&parent, last, libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0).map_err(io_err)?;
                chmod_path_fd(&fd, meta.mode).map_err(io_err)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // dropped, not refused: rootfs tarballs of real systems carry /dev nodes
                tracing::warn!(entry = %name, "device node in a layer: skipped");
                return Ok(());
            }
            other => return Err(refused(&name, format!("unsupported tar entry type {other:?}"))),
        }
        self.files.insert(comps);
        Ok(())
    }

    /// The directory holding an entry, each component a real directory inside the layer
    /// (missing ones are created 0755, as tars often list files before their directories).
    fn open_parent(&self, parents: &[OsString], entry: &str) -> Result<OwnedFd, ExtractError> {
        let mut cur = dup(&self.root).map_err(|source| ExtractError::Io { entry: entry.into(), source })?;
        for (i, c) in parents.iter().enumerate() {
            let next = match open_dir(Some(&cur), c) {
                Ok(fd) => fd,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => mkdir(&cur, c)
                    .and_then(|_| open_dir(Some(&cur), c))
                    .map_err(|source| ExtractError::Io { entry: entry.into(), source })?,
                Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    let p = join(&parents[..=i]);
                    return Err(refused(
                        entry,
                        format!("its parent {} is a symlink or a file, which extraction does not follow", p.display()),
                    ));
                }
                Err(source) => return Err(ExtractError::Io { entry: entry.into(), source }),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        for (comps, meta) in std::mem::take(&mut self.dirs) {
            let name = join(&comps).display().to_string();
            let fd = match comps.split_last() {
                None => dup(&self.root),
                Some((last, parents)) => {
                    let parent = self.open_parent(parents, &name)?;
                    open_dir(Some(&parent), last)
                }
            };
            // a later entry may have replaced the directory (with a file or a whiteout)
            let Ok(fd) = fd else { continue };
            let f = File::from(fd);
            let io_err = |source| ExtractError::Io { entry: name.clone(), source };
            fchown(&f, meta.uid, meta.gid).map_err(io_err)?;
            fchmod(&f, meta.mode).map_err(io_err)?;
            futimens(&f, meta.mtime).map_err(io_err)?;
        }
        Ok(())
    }
}

/// The components of an entry's path, refusing absolute paths and `..`.
fn clean_path(raw: &[u8], entry: &str) -> Result<Vec<OsString>, ExtractError> {
    if raw.starts_with(b"/") {
        return Err(refused(entry, "absolute path (a layer's paths are relative to its root)"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refused(entry, "path leaves the layer (`..` component)")),
            c if c.contains(&0) => return Err(refused(entry, "NUL byte in path")),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in name"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn openat(dir: &OwnedFd, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let n = cstr(name)?;
    // SAFETY: a valid fd and NUL-terminated name; the returned fd is owned from here on
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), n.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: fd was just opened and is not owned elsewhere
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory without following a symlink in its last component (`dir` None: `name` is
/// an absolute or cwd-relative path, which is trusted: the layer's own root).
fn open_dir(dir: Option<&OwnedFd>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match dir {
        Some(d) => openat(d, name, flags, 0),
        None => {
            let n = cstr(name)?;
            // SAFETY: NUL-terminated path; the fd is owned from here on
            let fd = cvt(unsafe { libc::open(n.as_ptr(), flags) })?;
            // SAFETY: just opened
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    }
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

fn mkdir(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid fd and name
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) }).map(drop)
}

fn mknod(dir: &OwnedFd, name: &OsStr, kind: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid fd and name
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), kind | 0o600, dev) }).map(drop)
}

fn symlink(target: &[u8], dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(OsStr::from_bytes(target))?;
    let n = cstr(name)?;
    // SAFETY: valid fd and names
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) }).map(drop)
}

fn link(from_dir: &OwnedFd, from: &OsStr, to_dir: &OwnedFd, to: &OsStr) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: valid fds and names; flags 0: a symlink is linked itself, never followed
    cvt(unsafe { libc::linkat(from_dir.as_raw_fd(), f.as_ptr(), to_dir.as_raw_fd(), t.as_ptr(), 0) }).map(drop)
}

fn fstatat(dir: &OwnedFd, name: &OsStr) -> io::Result<libc::stat> {
    let n = cstr(name)?;
    // SAFETY: zeroed stat is a valid out-buffer
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, name and buffer
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), n.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// Removes whatever an earlier entry (or an earlier duplicate) left at `name`, so the new entry
/// replaces it. `full` is its path for a directory tree, whose removal never follows symlinks.
fn remove_existing(dir: &OwnedFd, name: &OsStr, full: &Path) -> io::Result<()> {
    match fstatat(dir, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => std::fs::remove_dir_all(full),
        Ok(_) => {
            let n = cstr(name)?;
            // SAFETY: valid fd and name
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) }).map(drop)
        }
    }
}

fn fchown(f: &File, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd
    cvt(unsafe { libc::fchown(f.as_raw_fd(), uid, gid) }).map(drop)
}

fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd
    cvt(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// chmod of an `O_PATH` descriptor (a FIFO must not be opened for real: that would block).
fn chmod_path_fd(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    let p = cstr(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))?;
    // SAFETY: NUL-terminated path
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
}

fn lchown_at(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid fd and name
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), n.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

fn times(mtime: i64) -> [libc::timespec; 2] {
    let t = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
    [t, t]
}

fn futimens(f: &File, mtime: i64) -> io::Result<()> {
    let ts = times(mtime);
    // SAFETY: valid fd and two timespecs
    cvt(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

fn lutimes_at(dir: &OwnedFd, name: &OsStr, mtime: i64) -> io::Result<()> {
    let n = cstr(name)?;
    let ts = times(mtime);
    // SAFETY: valid fd, name and two timespecs
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), n.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

fn set_opaque(dir: &OwnedFd) -> io::Result<()> {
    let key = c"trusted.overlay.opaque";
    // SAFETY: valid fd, NUL-terminated key and a one-byte value
    cvt(unsafe { libc::fsetxattr(dir.as_raw_fd(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) }).map(drop)
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
