//! docker's exec instances: `POST /containers/{id}/exec` records one, `POST /exec/{id}/start`
//! runs it and relays its terminal or pipes over the hijacked connection, `GET /exec/{id}/json`
//! tells its exit code. The process is run by `netbee exec-in` (a single-threaded helper: joining
//! a mount namespace needs it), spawned by the daemon with the terminal's slave or the pipes as
//! its stdio; the daemon keeps the other ends. Instances live in memory, as docker's: a daemon
//! restart forgets them (and closes their terminals).
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::debug;

use super::{
    Daemon,
    attach::{Input, Session},
};
use crate::{
    api::{
        ApiError, ApiResult, ExecCreateRequest, ExecInspectResponse, ExecProcessConfig, ExecStartRequest, console_size,
        parse_detach_keys,
    },
    model::{ContainerRecord, Status},
    runtime::{
        attach::{STDERR, STDOUT},
        exec::ExecSpec,
        process,
        pty::{self, FdIo},
    },
};

/// Exec instances kept at most; the oldest finished ones go first.
const MAX_EXECS: usize = 1024;
/// How long output may still come after the process exited (from a child it left behind that
/// holds its stdout), before the session ends anyway.
const DRAIN: Duration = Duration::from_secs(2);

pub struct ExecInstance {
    id: String,
    container_id: String,
    req: ExecCreateRequest,
    console: Option<(u16, u16)>,
    detach_keys: Vec<u8>,
    created: std::time::Instant,
    state: Mutex<ExecState>,
}

#[derive(Default)]
struct ExecState {
    started: bool,
    running: bool,
    exit_code: Option<i32>,
    /// The helper's PID (its child is the process).
    helper: u32,
    master: Option<Arc<FdIo>>,
}

#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, Arc<ExecInstance>>>);

impl Execs {
    /// A removed container's execs go with it.
    pub fn forget_container(&self, container_id: &str) {
        self.0.lock().unwrap().retain(|_, e| e.container_id != container_id);
    }
}

/// A started exec: nothing more to do (`Detach`), or a session to serve.
pub enum ExecStarted {
    Detached,
    Attached { tty: bool, session: Session },
}

fn not_running(id: &str) -> ApiError {
    ApiError::conflict(format!("container {id} is not running"))
}

impl Daemon {
    pub fn exec_create(&self, key: &str, req: ExecCreateRequest) -> ApiResult<String> {
        let console = req.validate()?;
        let detach_keys = parse_detach_keys(&req.detach_keys).map_err(ApiError::bad_request)?;
        let c = self.find_container(key)?;
        if c.state.status != Status::Running {
            return Err(not_running(&c.id));
        }
        let id = crate::names::new_id();
        let e = ExecInstance {
            id: id.clone(),
            container_id: c.id,
            req,
            console,
            detach_keys,
            created: std::time::Instant::now(),
            state: Default::default(),
        };
        let mut all = self.execs.0.lock().unwrap();
        if all.len() >= MAX_EXECS {
            let mut done: Vec<(std::time::Instant, String)> =
                all.values().filter(|e| !e.state.lock().unwrap().running).map(|e| (e.created, e.id.clone())).collect();
            done.sort();
            for (_, id) in done.into_iter().take(all.len() + 1 - MAX_EXECS) {
                all.remove(&id);
            }
        }
        all.insert(id.clone(), Arc::new(e));
        Ok(id)
    }

    fn exec_find(&self, id: &str) -> ApiResult<Arc<ExecInstance>> {
        let all = self.execs.0.lock().unwrap();
        all.get(id).cloned().ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }

    pub fn exec_inspect(&self, id: &str) -> ApiResult<ExecInspectResponse> {
        let e = self.exec_find(id)?;
        let st = e.state.lock().unwrap();
        let pid = if st.running { first_child(st.helper).unwrap_or(0) } else { 0 };
        Ok(ExecInspectResponse {
            id: e.id.clone(),
            running: st.running,
            exit_code: st.exit_code,
            process_config: ExecProcessConfig {
                tty: e.req.tty,
                entrypoint: e.req.cmd[0].clone(),
                arguments: e.req.cmd[1..].to_vec(),
                privileged: e.req.privileged,
                user: e.req.user.clone(),
            },
            open_stdin: e.req.attach_stdin,
            open_stderr: e.req.attach_stderr,
            open_stdout: e.req.attach_stdout,
            can_remove: false,
            container_id: e.container_id.clone(),
            detach_keys: e.req.detach_keys.clone(),
            pid,
        })
    }

    pub fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> ApiResult<()> {
        let e = self.exec_find(id)?;
        let st = e.state.lock().unwrap();
        if let Some(m) = &st.master {
            pty::set_size(m.fd(), rows, cols)?;
        }
        Ok(())
    }

    /// Runs the exec; a failure to start it is the request's answer (nothing is hijacked yet).
    pub async fn exec_start(&self, id: &str, start: ExecStartRequest) -> ApiResult<ExecStarted> {
        let e = self.exec_find(id)?;
        let size = console_size(start.console_size.as_deref())?.or(e.console);
        {
            let mut st = e.state.lock().unwrap();
            if st.started {
                return Err(ApiError::conflict(if st.running {
                    format!("Error: Exec command {id} is already running")
                } else {
                    format!("Error: Exec command {id} has already run")
                }));
            }
            st.started = true;
        }
        let r = self.exec_run(&e, start.detach, size).await;
        if r.is_err() {
            // it never ran: it may be started again
            e.state.lock().unwrap().started = false;
        }
        r
    }

    async fn exec_run(&self, e: &Arc<ExecInstance>, detach: bool, size: Option<(u16, u16)>) -> ApiResult<ExecStarted> {
        let c = match self.store.get::<ContainerRecord>(&e.container_id)? {
            Some(c) if c.state.status == Status::Running => c,
            _ => return Err(not_running(&e.container_id)),
        };
        let r = &e.req;
        // as the container's main process sees it: the default PATH unless the image has one,
        // TERM for a terminal, then the container's variables, then the exec's
        let mut base = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("HOSTNAME={}", c.config.hostname),
        ];
        if r.tty {
            base.push("TERM=xterm".into());
        }
        let spec = ExecSpec {
            pid: c.state.pid,
            cmd: r.cmd.clone(),
            env: process::merge_env(&process::merge_env(&base, &c.config.env), &r.env),
            workdir: Some(r.working_dir.clone()).filter(|w| !w.is_empty()).or(c.config.workdir.clone()),
            user: if r.user.is_empty() { c.config.user.clone() } else { r.user.clone() },
            tty: r.tty,
        };
        let io = ExecIo::new(c.state.pid, r, detach, size).map_err(|e| e.context("preparing the exec's streams"))?;
        let exe = std::env::current_exe().context("locating the netbee binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        // the spec (with the container's variables) in the helper's environment, which only
        // root reads, not in its command line, which anyone does
        cmd.arg("exec-in").env("NETBEE_EXEC_SPEC", serde_json::to_string(&spec).map_err(anyhow::Error::from)?);
        let (parent, [stdin, stdout, stderr]) = io.split();
        cmd.stdin(Stdio::from(stdin)).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().context("starting the exec")?;
        // the process's ends are the helper's now
        drop(cmd);
        {
            let mut st = e.state.lock().unwrap();
            st.running = true;
            st.helper = child.id().unwrap_or(0);
            st.master = parent.master.clone();
        }

        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(16);
        let mut readers = JoinSet::new();
        for (stream, from) in parent.outputs {
            readers.spawn(pump(from, stream, out_tx.clone()));
        }
        tokio::spawn(write_input(in_rx, parent.input, r.tty));
        let inst = e.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(s) => {
                    s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9))
                }
                Err(err) => {
                    debug!("waiting for exec {}: {err}", inst.id);
                    126
                }
            };
            let _ = tokio::time::timeout(DRAIN, async { while readers.join_next().await.is_some() {} }).await;
            readers.abort_all();
            {
                let mut st = inst.state.lock().unwrap();
                st.running = false;
                st.exit_code = Some(code);
                st.master = None;
            }
            // recorded before the output's end: the client asks for the exit code once it sees it
            drop(out_tx);
        });
        if detach {
            drop(in_tx);
            tokio::spawn(drain(out_rx));
            return Ok(ExecStarted::Detached);
        }
        let session = Session {
            tty: r.tty,
            stdin: r.attach_stdin,
            close_stdin: true,
            detach_keys: e.detach_keys.clone(),
            output: out_rx,
            input: in_tx,
        };
        Ok(ExecStarted::Attached { tty: r.tty, session })
    }
}

/// The output of a session nobody reads (a detached exec): read, so the process never blocks.
pub async fn drain(mut rx: mpsc::Receiver<(u8, Vec<u8>)>) {
    while rx.recv().await.is_some() {}
}

/// The exec's streams: the daemon's ends and the process's.
struct ExecIo {
    parent: ParentIo,
    child: [OwnedFd; 3],
}

struct ParentIo {
    master: Option<Arc<FdIo>>,
    outputs: Vec<(u8, Arc<FdIo>)>,
    input: Option<Arc<FdIo>>,
}

impl ExecIo {
    fn new(pid: i32, r: &ExecCreateRequest, detach: bool, size: Option<(u16, u16)>) -> anyhow::Result<ExecIo> {
        if r.tty {
            // a terminal of the container's devpts, reached through its init's root
            let (master, slave) = pty::open_in(Path::new(&format!("/proc/{pid}/root")))?;
            if let Some((rows, cols)) = size {
                pty::set_size(&slave, rows, cols)?;
            }
            let m = Arc::new(FdIo::new(master)?);
            let child = [slave.try_clone()?, slave.try_clone()?, slave];
            let input = (r.attach_stdin && !detach).then(|| m.clone());
            return Ok(ExecIo {
                parent: ParentIo { master: Some(m.clone()), outputs: vec![(STDOUT, m)], input },
                child,
            });
        }
        let null = || -> anyhow::Result<OwnedFd> { Ok(std::fs::File::open("/dev/null")?.into()) };
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe");
        let mut outputs = Vec::new();
        let (stdin, input) = if r.attach_stdin && !detach {
            let (rd, wr) = pipe()?;
            (rd, Some(Arc::new(FdIo::new(wr)?)))
        } else {
            (null()?, None)
        };
        let mut out = |want: bool, stream: u8| -> anyhow::Result<OwnedFd> {
            if !want || detach {
                return null();
            }
            let (rd, wr) = pipe()?;
            outputs.push((stream, Arc::new(FdIo::new(rd)?)));
            Ok(wr)
        };
        let stdout = out(r.attach_stdout, STDOUT)?;
        let stderr = out(r.attach_stderr, STDERR)?;
        Ok(ExecIo { parent: ParentIo { master: None, outputs, input }, child: [stdin, stdout, stderr] })
    }

    fn split(self) -> (ParentIo, [OwnedFd; 3]) {
        (self.parent, self.child)
    }
}

/// One output stream to the session until it ends; read on (and dropped) once nobody listens,
/// so the process never blocks on a full pipe.
async fn pump(from: Arc<FdIo>, stream: u8, to: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut listening = true;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if listening => listening = to.send((stream, buf[..n].to_vec())).await.is_ok(),
            Ok(_) => {}
        }
    }
}

async fn write_input(mut rx: mpsc::Receiver<Input>, mut to: Option<Arc<FdIo>>, tty: bool) {
    while let Some(i) = rx.recv().await {
        match i {
            Input::Data(d) => {
                if let Some(t) = &to
                    && t.write_all(&d).await.is_err()
                {
                    to = None;
                }
            }
            // a pipe's end is the process's end of input; a terminal's stays open
            Input::Close if !tty => to = None,
            Input::Close => {}
        }
    }
}

/// The first child of process `pid` (the exec's process, child of its helper).
fn first_child(pid: u32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}
