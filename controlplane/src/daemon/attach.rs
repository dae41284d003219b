//! docker's hijacked streams: `POST /containers/{id}/attach` relays a client to the container's
//! attach point (the shim's socket; `runtime/attach.rs`), `POST /exec/{id}/start` to an exec's
//! terminal or pipes (`exec.rs`). After the `101` the connection carries raw bytes: the client's
//! input one way, the output the other, raw for a terminal, docker's 8-byte frames otherwise.
use std::{collections::HashMap, os::unix::net::UnixStream, sync::Arc};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult},
    model::Status,
    runtime::attach::{self, CLOSE_STDIN, Hello, STDIN},
};

/// Clients attached to a container that is not running: they get their connection to its
/// attach point when it next starts, before its program runs (`docker run` attaches, then
/// starts).
#[derive(Default)]
pub struct PendingAttaches(tokio::sync::Mutex<HashMap<String, Vec<Pending>>>);

pub struct Pending {
    hello: Hello,
    to: oneshot::Sender<UnixStream>,
}

impl PendingAttaches {
    /// Taken by a start for as long as it runs: an attach either waits for it or sees the
    /// container running afterwards, never neither.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, HashMap<String, Vec<Pending>>> {
        self.0.lock().await
    }

    /// Those waiting for `id` are told it is gone (their connections close).
    pub async fn forget(&self, id: &str) {
        self.0.lock().await.remove(id);
    }
}

/// Connects the clients waiting for a start to the attach point bound at `path` (they queue in
/// its backlog until the shim accepts them, so they see the program's first output). Returns
/// what to hand to whom once the shim runs.
pub fn connect_pending(
    path: &std::path::Path,
    waiting: Vec<Pending>,
) -> Vec<(oneshot::Sender<UnixStream>, UnixStream)> {
    use std::io::Write as _;
    let mut out = Vec::new();
    for p in waiting {
        if p.to.is_closed() {
            continue;
        }
        let s = UnixStream::connect(path).and_then(|mut s| s.write_all(&attach::hello_frame(p.hello)).map(|_| s));
        match s {
            Ok(s) => out.push((p.to, s)),
            Err(e) => debug!("connecting a waiting attach: {e}"),
        }
    }
    out
}

/// What a client's input becomes.
pub enum Input {
    Data(Vec<u8>),
    /// The client's input ended: close the process's stdin.
    Close,
}

/// One hijacked session, whatever its other end: output chunks to send (stream, bytes; the
/// channel's end is the end of the output), input to forward.
pub struct Session {
    pub tty: bool,
    /// The client's input is read and forwarded (docker's `stdin=1` on a container or exec that
    /// has one).
    pub stdin: bool,
    /// At the end of a non-terminal client's input the process's stdin is closed (an exec's
    /// always; a container's with `StdinOnce`).
    pub close_stdin: bool,
    /// The keys that detach a terminal client (moby's `copyEscapable`; docker's CLI also
    /// watches for them itself).
    pub detach_keys: Vec<u8>,
    pub output: mpsc::Receiver<(u8, Vec<u8>)>,
    pub input: mpsc::Sender<Input>,
}

/// Watches a terminal client's input for the detach keys: bytes that may begin them are held
/// back until the next byte decides (moby's escape proxy).
struct DetachWatch {
    keys: Vec<u8>,
    held: usize,
}

impl DetachWatch {
    /// What to forward, and whether the keys were typed (what came before them is forwarded).
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for &b in data {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            // not the keys after all: what was held goes out, and this byte may start them anew
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The output ended (the process exited) or the client went away.
    Done,
    /// The client typed the detach keys.
    Detached,
}

/// Serves a hijacked connection until the output ends, the client detaches, or (a terminal's)
/// input ends.
pub async fn serve(upgraded: hyper::upgrade::Upgraded, mut s: Session) -> Ended {
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(upgraded));
    let tty = s.tty;
    let output = async {
        while let Some((stream, data)) = s.output.recv().await {
            let bytes = if tty { data } else { attach::frame(stream, &data) };
            if cw.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = cw.shutdown().await;
    };
    let input = async {
        if !s.stdin {
            return std::future::pending::<Ended>().await;
        }
        let mut watch = tty.then(|| DetachWatch { keys: s.detach_keys.clone(), held: 0 });
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                // a terminal's session ends with its input (moby); otherwise the process may
                // still answer what it read
                if tty {
                    return Ended::Done;
                }
                if s.close_stdin {
                    let _ = s.input.send(Input::Close).await;
                }
                return std::future::pending::<Ended>().await;
            }
            let (data, detached) = match &mut watch {
                Some(w) => w.feed(&buf[..n]),
                None => (buf[..n].to_vec(), false),
            };
            if !data.is_empty() && s.input.send(Input::Data(data)).await.is_err() {
                return std::future::pending::<Ended>().await;
            }
            if detached {
                return Ended::Detached;
            }
        }
    };
    tokio::select! {
        _ = output => Ended::Done,
        e = input => e,
    }
}

/// A session over a connection to a container's attach point.
fn container_session(
    shim: UnixStream,
    tty: bool,
    stdin: bool,
    close_stdin: bool,
    detach_keys: Vec<u8>,
) -> std::io::Result<Session> {
    shim.set_nonblocking(true)?;
    let shim = tokio::net::UnixStream::from_std(shim)?;
    let (mut sr, mut sw) = shim.into_split();
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(16);
    // the ends of these tasks close the shim connection: the shim forgets the client
    let reader = tokio::spawn(async move {
        while let Ok(Some((stream, data))) = attach::read_frame(&mut sr).await {
            if out_tx.send((stream, data)).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(i) = in_rx.recv().await {
            let f = match i {
                Input::Data(d) => attach::frame(STDIN, &d),
                Input::Close => attach::frame(CLOSE_STDIN, &[]),
            };
            if sw.write_all(&f).await.is_err() {
                break;
            }
        }
        // the client is gone: so is the connection, also while no output comes
        reader.abort();
    });
    Ok(Session { tty, stdin, close_stdin, detach_keys, output: out_rx, input: in_tx })
}

impl Daemon {
    /// `POST /containers/{id}/attach`: checks what can be checked before the `101` and returns
    /// what serves the connection after it. A container not running is attached at its next
    /// start.
    pub async fn container_attach(
        self: &Arc<Self>,
        key: &str,
        hello: Hello,
        detach_keys: Vec<u8>,
    ) -> ApiResult<(bool, AttachLater)> {
        let c = self.find_container(key)?;
        let st = &c.config.stdio;
        let hello = Hello { stdin: hello.stdin && st.open_stdin, ..hello };
        let (tty, close_stdin) = (st.tty, st.stdin_once && !st.tty);
        let mut pending = self.attaches.lock().await;
        let c = self.find_container(&c.id)?;
        let shim = if c.state.status == Status::Running {
            drop(pending);
            let dir = self.container_dir(&c.id);
            let s = tokio::task::spawn_blocking(move || attach::connect(&dir, hello))
                .await
                .map_err(anyhow::Error::from)?
                .map_err(|e| ApiError::conflict(format!("cannot attach to container {}: {e:#}", c.name)))?;
            Shim::Now(s)
        } else {
            let (to, from) = oneshot::channel();
            pending.entry(c.id.clone()).or_default().push(Pending { hello, to });
            Shim::AtStart(from)
        };
        Ok((tty, AttachLater { shim, tty, stdin: hello.stdin, close_stdin, detach_keys }))
    }

    /// `POST /containers/{id}/resize?h=&w=`: the terminal's new size.
    pub async fn container_resize(&self, key: &str, rows: u16, cols: u16) -> ApiResult<()> {
        let c = self.find_container(key)?;
        if c.state.status != Status::Running {
            return Err(ApiError::conflict(format!("Container {} is not running", c.id)));
        }
        if !c.config.stdio.tty {
            return Ok(());
        }
        let dir = self.container_dir(&c.id);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            use std::io::Write as _;
            let mut s = attach::connect(&dir, Hello::default())?;
            s.write_all(&attach::resize_frame(rows, cols)).context("resizing the terminal")?;
            Ok(())
        })
        .await
        .map_err(anyhow::Error::from)??;
        Ok(())
    }
}

enum Shim {
    Now(UnixStream),
    AtStart(oneshot::Receiver<UnixStream>),
}

/// An attach accepted before the `101`, served after it.
pub struct AttachLater {
    shim: Shim,
    tty: bool,
    stdin: bool,
    close_stdin: bool,
    detach_keys: Vec<u8>,
}

impl AttachLater {
    pub async fn serve(self, upgraded: hyper::upgrade::Upgraded) {
        let shim = match self.shim {
            Shim::Now(s) => s,
            Shim::AtStart(rx) => match rx.await {
                Ok(s) => s,
                // removed, or its start failed: the connection closes
                Err(_) => return,
            },
        };
        match container_session(shim, self.tty, self.stdin, self.close_stdin, self.detach_keys) {
            Ok(s) => {
                let ended = serve(upgraded, s).await;
                debug!(?ended, "attach ended");
            }
            Err(e) => debug!("attach: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_are_held_back_until_decided() {
        let mut w = DetachWatch { keys: vec![16, 17], held: 0 };
        assert_eq!(w.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // ctrl-p alone waits for the next byte
        assert_eq!(w.feed(&[16]), (vec![], false));
        assert_eq!(w.feed(b"x"), (vec![16, b'x'], false));
        // ctrl-p ctrl-p: the first goes out, the second may still begin the keys
        assert_eq!(w.feed(&[16, 16]), (vec![16], false));
        assert_eq!(w.feed(&[17]), (vec![], true));
        let mut w = DetachWatch { keys: vec![16, 17], held: 0 };
        assert_eq!(w.feed(b"a\x10\x11b"), (b"a".to_vec(), true));
    }
}
