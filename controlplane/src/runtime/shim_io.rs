//! The shim's event loop while its container runs (a single-threaded runtime): the container's
//! output goes to its log files and to the clients attached at that moment, attached clients'
//! input goes to its stdin, resizes to its terminal; it ends when the container's init has
//! exited and its output is drained.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::{fd::OwnedFd, unix::net::UnixListener},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    sys::wait::{WaitStatus, waitpid},
    unistd::Pid,
};
use tokio::{
    io::AsyncWriteExt as _,
    sync::{broadcast, mpsc},
    task::JoinSet,
};

use super::{
    ShimSpec,
    attach::{self, CLOSE_STDIN, HELLO, Hello, RESIZE, STDERR, STDIN, STDOUT},
    pty::{self, FdIo},
    shim::Outputs,
};

/// A chunk of output: its stream and its frame.
type Chunk = (u8, Arc<Vec<u8>>);

/// Chunks kept for a client that has not sent the previous ones yet; one further behind is
/// dropped (its connection closed) rather than holding the container's output back.
const CLIENT_BACKLOG: usize = 256;
/// How long output may still come once the init has exited (from a process outside the
/// container holding a copy of its stdout), and how long clients get to take what remains.
const DRAIN: Duration = Duration::from_secs(2);

enum StdinMsg {
    Data(Vec<u8>),
    Close,
}

/// What every client task shares.
#[derive(Clone)]
struct Shared {
    /// None once the output has ended: later clients get nothing and are closed at once.
    output: Arc<Mutex<Option<broadcast::Sender<Chunk>>>>,
    stdin: mpsc::Sender<StdinMsg>,
    /// The terminal's master, for resizes.
    master: Option<Arc<FdIo>>,
    open_stdin: bool,
}

/// Runs until the container's init has exited and its output is drained; returns the init's
/// exit code (128 + signal when killed).
pub(super) async fn relay(spec: &ShimSpec, init: Pid, listener: Option<UnixListener>, io: Outputs) -> Result<i32> {
    let (out_tx, _) = broadcast::channel::<Chunk>(CLIENT_BACKLOG);
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let log = |p: &Path| OpenOptions::new().create(true).append(true).open(p).context("opening a log");
    let (stdout_log, stderr_log) = (log(&spec.stdout)?, log(&spec.stderr)?);
    let mut readers = JoinSet::new();
    let (master, stdin_target) = match io {
        Outputs::Tty { master } => {
            let m = Arc::new(FdIo::new(master)?);
            readers.spawn(pump(m.clone(), STDOUT, stdout_log, out_tx.clone()));
            (Some(m.clone()), spec.open_stdin.then_some(m))
        }
        Outputs::Pipes { stdin, stdout, stderr } => {
            readers.spawn(pump(Arc::new(FdIo::new(stdout)?), STDOUT, stdout_log, out_tx.clone()));
            readers.spawn(pump(Arc::new(FdIo::new(stderr)?), STDERR, stderr_log, out_tx.clone()));
            (None, stdin.map(FdIo::new).transpose()?.map(Arc::new))
        }
    };
    tokio::spawn(write_stdin(stdin_rx, stdin_target, spec.tty));
    let shared =
        Shared { output: Arc::new(Mutex::new(Some(out_tx))), stdin: stdin_tx, master, open_stdin: spec.open_stdin };
    let mut clients = JoinSet::new();
    if let Some(l) = listener {
        // clients the daemon connected before the start (`docker run` attaches first) are in
        // the backlog: they subscribe before the first output is read (it waits in the pipes)
        l.set_nonblocking(true)?;
        while let Ok((s, _)) = l.accept() {
            s.set_nonblocking(true)?;
            let s = tokio::net::UnixStream::from_std(s)?;
            clients.spawn(client(s, shared.clone(), shared.subscribe()));
        }
        let l = tokio::net::UnixListener::from_std(l)?;
        let sh = shared.clone();
        tokio::spawn(async move {
            let mut later = JoinSet::new();
            while let Ok((s, _)) = l.accept().await {
                later.spawn(client(s, sh.clone(), sh.subscribe()));
                while later.try_join_next().is_some() {}
            }
        });
    }
    // (the pumps run once this task first waits: the queued clients are subscribed by then)
    let code = wait_exit(init).await?;
    let _ = tokio::time::timeout(DRAIN, async { while readers.join_next().await.is_some() {} }).await;
    // the pumps' senders are dropped with them; this one too: the clients' streams end
    shared.output.lock().unwrap().take();
    readers.abort_all();
    let _ = tokio::time::timeout(DRAIN, async { while clients.join_next().await.is_some() {} }).await;
    Ok(code)
}

/// Copies one output stream to its log and the attached clients until it ends.
async fn pump(from: Arc<FdIo>, stream: u8, mut log: File, to: broadcast::Sender<Chunk>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let _ = log.write_all(&buf[..n]);
                // no client attached: nobody to send it to
                let _ = to.send((stream, Arc::new(attach::frame(stream, &buf[..n]))));
            }
        }
    }
}

/// Writes clients' input to the container's stdin; [`StdinMsg::Close`] closes a pipe (a
/// terminal stays: docker closes a terminal's stdin only with the container).
async fn write_stdin(mut rx: mpsc::Receiver<StdinMsg>, mut target: Option<Arc<FdIo>>, tty: bool) {
    while let Some(m) = rx.recv().await {
        match m {
            StdinMsg::Data(d) => {
                if let Some(t) = &target
                    && t.write_all(&d).await.is_err()
                {
                    target = None;
                }
            }
            StdinMsg::Close if !tty => target = None,
            StdinMsg::Close => {}
        }
    }
}

async fn wait_exit(init: Pid) -> Result<i32> {
    // SAFETY: a plain syscall; its result is checked
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init.as_raw(), 0) };
    if fd >= 0 {
        // SAFETY: pidfd_open returned a new descriptor
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the pidfd for as long as it is registered
        let afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        let _ = afd.readable().await?;
    }
    loop {
        match waitpid(init, None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow!("waiting for the container's init: {e}")),
        }
    }
}

impl Shared {
    /// The output from now on; None once it has ended.
    fn subscribe(&self) -> Option<broadcast::Receiver<Chunk>> {
        self.output.lock().unwrap().as_ref().map(|o| o.subscribe())
    }
}

/// One attached client (subscribed to the output when it was accepted): the output it asked
/// for, its input to the container. Ends when the output ends (the container exited) or the
/// client goes away.
async fn client(s: tokio::net::UnixStream, sh: Shared, rx: Option<broadcast::Receiver<Chunk>>) {
    let (mut r, mut w) = s.into_split();
    let hello: Hello = match attach::read_frame(&mut r).await {
        Ok(Some((HELLO, p))) => match serde_json::from_slice(&p) {
            Ok(h) => h,
            Err(_) => return,
        },
        _ => return,
    };
    let output = async move {
        if let Some(mut rx) = rx {
            loop {
                match rx.recv().await {
                    Ok((stream, f)) => {
                        let wanted = if stream == STDERR { hello.stderr } else { hello.stdout };
                        if wanted && w.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                    // too far behind: closed rather than holding the output back
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                }
            }
        }
        let _ = w.shutdown().await;
    };
    let input = async move {
        loop {
            match attach::read_frame(&mut r).await {
                Ok(Some((STDIN, p))) if hello.stdin && sh.open_stdin => {
                    if sh.stdin.send(StdinMsg::Data(p)).await.is_err() {
                        return;
                    }
                }
                Ok(Some((CLOSE_STDIN, _))) => {
                    let _ = sh.stdin.send(StdinMsg::Close).await;
                }
                Ok(Some((RESIZE, p))) => {
                    if let (Some(m), Some((rows, cols))) = (&sh.master, attach::parse_resize(&p)) {
                        let _ = pty::set_size(m.fd(), rows, cols);
                    }
                }
                Ok(Some(_)) => {}
                // the daemon never half-closes: the end of its input is the end of the client
                Ok(None) | Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
    }
}
