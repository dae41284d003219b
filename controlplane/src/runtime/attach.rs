//! The attach point of a container: a unix socket (`attach.sock` in the container's directory)
//! the shim listens on for as long as the container runs, so the daemon (also one restarted
//! since) relays clients' input to the container and its live output to them.
//!
//! Both directions carry docker's frames, an 8-byte header `[kind, 0, 0, 0, len (u32 BE)]`
//! and the payload. The shim sends kind 1 (stdout) and 2 (stderr; a terminal has only stdout),
//! each of what the client asked for, from the moment it connected, and closes the connection
//! once the container's output has ended (it exited). The client's first frame is [`HELLO`];
//! then [`STDIN`] data, [`CLOSE_STDIN`] and [`RESIZE`]. A client that goes away does not close
//! the container's stdin: only [`CLOSE_STDIN`] does (docker's `StdinOnce`, decided by the daemon).
use std::{
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The client's first frame: a JSON [`Hello`].
pub const HELLO: u8 = 10;
pub const STDIN: u8 = 11;
pub const CLOSE_STDIN: u8 = 12;
/// Rows then columns, each a u16 BE.
pub const RESIZE: u8 = 13;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

pub const SOCKET: &str = "attach.sock";

/// Which of the container's streams a client takes part in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// One frame: docker's multiplexed-stream header and the payload.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn hello_frame(h: Hello) -> Vec<u8> {
    frame(HELLO, &serde_json::to_vec(&h).expect("a plain struct serializes"))
}

pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    frame(RESIZE, &p)
}

pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    match p {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

/// The next frame, None at a clean end of the stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("the stream ended inside a frame header");
        }
        got += n;
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        bail!("a frame of {len} bytes is over the limit");
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.context("the stream ended inside a frame")?;
    Ok(Some((header[0], payload)))
}

/// A path to `dir/name` short enough for a unix socket's address (108 bytes), whatever the
/// length of `dir`: through `/proc/self/fd` and a descriptor of `dir`, which the caller keeps
/// open while it binds or connects.
pub fn short_path(dir: &Path, name: &str) -> Result<(OwnedFd, PathBuf)> {
    let fd: OwnedFd = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?.into();
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_fd().as_raw_fd()));
    Ok((fd, p))
}

/// Connects to the attach point of the container whose directory is `dir` and says hello.
pub fn connect(dir: &Path, hello: Hello) -> Result<std::os::unix::net::UnixStream> {
    use std::io::Write as _;
    let (_dirfd, path) = short_path(dir, SOCKET)?;
    let mut s = std::os::unix::net::UnixStream::connect(&path).context("connecting to the container's attach point")?;
    s.write_all(&hello_frame(hello))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut bytes = frame(STDOUT, b"hi\n");
        bytes.extend(resize_frame(40, 120));
        bytes.extend(hello_frame(Hello { stdin: true, stdout: true, stderr: false }));
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap(), Some((STDOUT, b"hi\n".to_vec())));
        let (k, p) = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((k, parse_resize(&p)), (RESIZE, Some((40, 120))));
        let (k, p) = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(k, HELLO);
        assert_eq!(serde_json::from_slice::<Hello>(&p).unwrap(), Hello { stdin: true, stdout: true, stderr: false });
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        let mut cut = &frame(STDERR, b"abc")[..9];
        assert!(read_frame(&mut cut).await.is_err());
        let mut huge = &[1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..];
        assert!(read_frame(&mut huge).await.is_err());
    }

    #[test]
    fn short_paths_fit_a_socket_address() {
        let long = std::env::temp_dir().join("x".repeat(150));
        std::fs::create_dir_all(&long).unwrap();
        let (_fd, p) = short_path(&long, SOCKET).unwrap();
        assert!(p.as_os_str().len() < 108, "{}", p.display());
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        drop(l);
        assert!(long.join(SOCKET).exists());
        std::fs::remove_dir_all(&long).unwrap();
    }
}
