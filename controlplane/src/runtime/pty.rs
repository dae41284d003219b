//! Pseudo-terminals of containers and execs: opened from the container's own devpts (through
//! its root's `/dev/ptmx`), so the program's `tty` names a device it can see; the master's
//! window size; the master as an async reader and writer.
use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use nix::{
    fcntl::{OFlag, open},
    pty::{PtyMaster, unlockpt},
    sys::stat::Mode,
};
use tokio::io::unix::AsyncFd;

nix::ioctl_write_int_bad!(tiocgptpeer, libc::TIOCGPTPEER);
nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// A new pseudo-terminal of the devpts `root/dev/ptmx` leads to: (master, slave). `root` is `/`
/// inside the container, or `/proc/PID/root` from outside it. Both ends are close-on-exec and
/// the slave is not made anyone's controlling terminal.
pub fn open_in(root: &Path) -> Result<(OwnedFd, OwnedFd)> {
    let ptmx = root.join("dev/ptmx");
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = open(&ptmx, flags, Mode::empty()).with_context(|| format!("opening {}", ptmx.display()))?;
    // SAFETY: the file just opened is a pseudo-terminal multiplexer's master
    let master = unsafe { PtyMaster::from_owned_fd(fd) };
    unlockpt(&master).context("unlocking the pseudo-terminal")?;
    // the peer by the master itself (TIOCGPTPEER): no path lookup in a devpts that may be
    // another mount namespace's
    // SAFETY: an ioctl on a valid fd; the result is a new fd this function then owns
    let slave = unsafe { tiocgptpeer(master.as_raw_fd(), (OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits()) }
        .context("opening the pseudo-terminal's slave")?;
    // SAFETY: TIOCGPTPEER returned a new descriptor
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master.into(), slave))
}

/// The window size (rows, columns) of the terminal `fd` is either end of. Zero sizes are
/// ignored (docker's CLI sends 0x0 when its own output is not a terminal).
pub fn set_size(fd: impl AsFd, rows: u16, cols: u16) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer
    unsafe { tiocswinsz(fd.as_fd().as_raw_fd(), &ws) }.context("setting the terminal size")?;
    Ok(())
}

/// Makes the terminal `fd` the calling process's controlling terminal (after `setsid`).
pub fn make_controlling(fd: impl AsFd) -> nix::Result<()> {
    // SAFETY: an ioctl on a valid fd with an integer argument
    unsafe { tiocsctty(fd.as_fd().as_raw_fd(), 0) }.map(drop)
}

/// A pseudo-terminal master or a pipe end on the runtime's reactor. Reading a master whose
/// slaves are all closed fails with EIO: that is its end of file here.
pub struct FdIo(AsyncFd<File>);

impl FdIo {
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns the descriptor for as long as it is registered
        Ok(FdIo(unsafe { AsyncFd::register(File::from(fd)) }?))
    }

    pub fn fd(&self) -> &File {
        self.0.get_ref()
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|f| eof_on_eio(f.get_ref().read(buf))) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn eof_on_eio(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
        r => r,
    }
}
