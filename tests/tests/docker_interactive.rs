//! The real docker CLI (28.2.2) on netbee's hijacked streams: `run -it`, `attach`, `exec` with
//! and without a terminal, `-i`, `-d`, resizes, detaching with ctrl-p ctrl-q. The interactive
//! commands run under a pseudo-terminal this test holds the master of, as a user's terminal: it
//! types and reads what the CLI prints.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netbee_lab::{Docker, Lab, single_node_lab, test_image, wait_until};

const IMAGE: &str = "netbee-test/busybox:1";
/// busybox sh as root in the image's working directory, /www.
const PROMPT: &str = "/www # ";

/// `docker ARGS` for the node `d` points at (stdin left to the caller).
fn docker_cmd(d: &Docker, args: &[&str]) -> Command {
    let mut c = d.command("docker");
    c.args(args);
    c
}

/// With `input` as its stdin (closed after it).
fn with_input(d: &Docker, args: &[&str], input: &[u8]) -> Result<Output> {
    let mut c = docker_cmd(d, args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    c.stdin.take().expect("piped").write_all(input)?;
    Ok(c.wait_with_output()?)
}

/// Under a pseudo-terminal of 40 rows and 120 columns.
fn terminal(d: &Docker, args: &[&str]) -> Result<Terminal> {
    Terminal::spawn(docker_cmd(d, args))
}

fn running(d: &Docker, name: &str) -> Result<bool> {
    Ok(d.ok(&["inspect", "--format", "{{.State.Running}}", name])?.trim() == "true")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A program on a pseudo-terminal: what it printed so far, keys typed to it.
struct Terminal {
    master: File,
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Where the next `expect` starts looking.
    from: usize,
}

impl Terminal {
    fn spawn(mut cmd: Command) -> Result<Terminal> {
        let size = nix::pty::Winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(&size, None).context("openpty")?;
        let slave = File::from(pty.slave);
        cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave.try_clone()?);
        // SAFETY: setsid and an ioctl between fork and exec (async-signal-safe)
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().context("spawning under a terminal")?;
        drop(cmd);
        drop(slave);
        let master = File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut r, s) = (master.try_clone()?, seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program and its children closed the terminal
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(Terminal { master, child, seen, from: 0 })
    }

    fn screen(&self) -> String {
        text(&self.seen.lock().unwrap())
    }

    /// Waits until `needle` appears after what earlier expects matched.
    fn expect(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let hay = &seen[self.from.min(seen.len())..];
                if let Some(i) = hay.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                    self.from += i + needle.len();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{needle:?} never appeared; the terminal shows:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The user resizes the window: the CLI is told (SIGWINCH) and resizes the container's or
    /// exec's terminal.
    fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Types `line` until `needle` appears after it (what the program shows may lag behind).
    fn retype_until(&mut self, line: &str, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.line(line)?;
            std::thread::sleep(Duration::from_millis(300));
            let seen = self.seen.lock().unwrap();
            let hay = &seen[self.from.min(seen.len())..];
            if let Some(i) = hay.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                self.from += i + needle.len();
                return Ok(());
            }
            drop(seen);
            if Instant::now() > deadline {
                bail!("{needle:?} never appeared; the terminal shows:\n{}", self.screen());
            }
        }
    }

    fn send(&mut self, keys: &[u8]) -> Result<()> {
        self.master.write_all(keys)?;
        Ok(())
    }

    /// A command line typed at the shell.
    fn line(&mut self, l: &str) -> Result<()> {
        self.send(format!("{l}\r").as_bytes())
    }

    /// The program's exit code.
    fn wait(mut self) -> Result<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("still running; the terminal shows:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hijacked connection to the daemon as docker's clients make it: the answer's head, then the
/// raw stream.
fn hijack(socket: &std::path::Path, path: &str) -> Result<(std::os::unix::net::UnixStream, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            bail!("the daemon hung up: {}", text(&head));
        }
        head.push(b[0]);
    }
    Ok((s, text(&head)))
}

/// Reads until `done` says so, or to the end of the stream (which must come within 10 s).
fn read_until(s: &mut std::os::unix::net::UnixStream, done: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&seen) {
        match s.read(&mut buf) {
            Ok(0) => return Ok(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => bail!("{e} after {:?}", text(&seen)),
        }
    }
    Ok(seen)
}

fn lab_with_busybox(name: &str) -> Result<(Lab, Docker)> {
    let lab = single_node_lab(name, &[])?;
    let docker = Docker::new(&lab, lab.node("n1"))?;
    docker.ok(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    Ok((lab, docker))
}

/// `docker run -it --rm IMAGE sh`: the shell's prompt, a command's output, the window's size and
/// its changes, `exit 3` is docker's exit code and the container is gone. Attached runs without a terminal: output framed per
/// stream, the exit code, `-i` input with `StdinOnce`.
#[test]
fn run_interactive_and_attached() -> Result<()> {
    let (_lab, docker) = lab_with_busybox("dk-run-it")?;

    let mut t = terminal(&docker, &["run", "-it", "--rm", "--name", "it1", IMAGE, "sh"])?;
    t.expect(PROMPT)?;
    // the shell computes the marker: the echo of the typed line does not contain it
    t.line("echo hi-$((6*7))-marker")?;
    t.expect("hi-42-marker")?;
    // a terminal of the container's own devpts, of the size docker's CLI sent
    t.line("busybox tty; busybox stty size")?;
    t.expect("/dev/pts/0")?;
    t.expect("40 120")?;
    t.resize(30, 100)?;
    t.retype_until("busybox stty size", "30 100")?;
    t.line("exit 3")?;
    assert_eq!(t.wait()?, 3, "docker run exits with the shell's code");
    assert_eq!(docker.ok(&["ps", "-aq", "--filter", "name=it1"])?.trim(), "", "--rm removed it");

    // attached without a terminal: stdout and stderr apart, the exit code
    let o = docker.output(&["run", "--rm", IMAGE, "sh", "-c", "echo to-out; echo to-err >&2; exit 2"]);
    assert_eq!((text(&o.stdout), text(&o.stderr), o.status.code()), ("to-out\n".into(), "to-err\n".into(), Some(2)));
    // -i: the input, then its end (StdinOnce closes the container's stdin)
    let o = with_input(&docker, &["run", "-i", "--rm", IMAGE, "cat"], b"hello\nworld\n")?;
    assert_eq!((text(&o.stdout), o.status.code()), ("hello\nworld\n".into(), Some(0)), "{}", text(&o.stderr));
    // -it without --rm: inspect shows the streams settings; logs has the terminal's output raw
    let mut t = terminal(&docker, &["run", "-it", "--name", "kept", IMAGE, "sh"])?;
    t.expect(PROMPT)?;
    t.line("echo kept-$((1+1))")?;
    t.expect("kept-2")?;
    t.line("exit")?;
    assert_eq!(t.wait()?, 0);
    let cfg = docker.ok(&[
        "inspect",
        "--format",
        "{{.Config.Tty}} {{.Config.OpenStdin}} {{.Config.StdinOnce}} {{.Config.AttachStdin}} {{.State.Status}}",
        "kept",
    ])?;
    assert_eq!(cfg.trim(), "true true true true exited");
    let logs = docker.ok(&["logs", "kept"])?;
    assert!(logs.contains("kept-2\r\n"), "a terminal's output, raw: {logs:?}");
    // start -ai: attached while exited, connected at the start
    let mut t = terminal(&docker, &["start", "-ai", "kept"])?;
    t.expect(PROMPT)?;
    t.line("echo restarted-$((3+4))")?;
    t.expect("restarted-7")?;
    t.line("exit 6")?;
    assert_eq!(t.wait()?, 6);
    Ok(())
}

/// `docker exec` with a terminal (typed commands, resizes, the exit code), without one (stdout and stderr
/// framed apart, the exit code), with piped input (`-i`), detached (`-d`), with `-e`, `-w`, `-u`;
/// and the errors: a stopped container (409), an unknown one (404), nothing changed.
#[test]
fn exec_with_the_docker_cli() -> Result<()> {
    let (lab, docker) = lab_with_busybox("dk-exec")?;
    let n = lab.node("n1");
    docker.ok(&["run", "-d", "--name", "web", IMAGE, "sleep", "600"])?;

    let mut t = terminal(&docker, &["exec", "-it", "web", "sh"])?;
    t.expect(PROMPT)?;
    t.line("echo exec-$((2+3)); busybox tty; busybox stty size")?;
    t.expect("exec-5")?;
    t.expect("/dev/pts/")?;
    t.expect("40 120")?;
    t.resize(25, 90)?;
    t.retype_until("busybox stty size", "25 90")?;
    t.line("exit 4")?;
    assert_eq!(t.wait()?, 4, "docker exec -it exits with the shell's code");

    let hosts = docker.ok(&["exec", "web", "cat", "/etc/hosts"])?;
    assert!(hosts.contains("localhost") && hosts.contains("web"), "{hosts}");
    assert_eq!(docker.output(&["exec", "web", "sh", "-c", "exit 7"]).status.code(), Some(7));
    let o = docker.output(&["exec", "web", "sh", "-c", "echo to-out; echo to-err >&2"]);
    assert_eq!((text(&o.stdout), text(&o.stderr)), ("to-out\n".into(), "to-err\n".into()));
    let o = with_input(&docker, &["exec", "-i", "web", "cat"], b"hello\n")?;
    assert_eq!((text(&o.stdout), o.status.code()), ("hello\n".into(), Some(0)), "{}", text(&o.stderr));
    let o = docker.output(&[
        "exec",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "web",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -un)",
    ]);
    assert_eq!(text(&o.stdout), "hi /tmp nobody\n", "{}", text(&o.stderr));
    let o = docker.output(&["exec", "web", "nosuchprogram"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));

    // -d: returns at once; the command runs on
    docker.ok(&["exec", "-d", "web", "sh", "-c", "sleep 0.3; touch /x"])?;
    wait_until(Duration::from_secs(10), "/x made by the detached exec", || {
        docker.output(&["exec", "web", "test", "-e", "/x"]).status.success()
    })?;

    // errors: docker's messages and statuses, nothing changed
    docker.ok(&["run", "-d", "--name", "stopped", IMAGE, "true"])?;
    docker.ok(&["wait", "stopped"])?;
    let before = docker.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])?;
    let o = docker.output(&["exec", "stopped", "true"]);
    assert!(!o.status.success() && text(&o.stderr).contains("is not running"), "{}", text(&o.stderr));
    let o = docker.output(&["exec", "nosuch", "true"]);
    assert!(!o.status.success() && text(&o.stderr).contains("No such container: nosuch"), "{}", text(&o.stderr));
    // the daemon's own answers, beneath the CLI's checks
    let api = |method: &str, path: &str, body: &str| -> Result<String> {
        let out = n.sh(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} -X {method} -H 'Content-Type: application/json' \
             -H 'Connection: Upgrade' -H 'Upgrade: tcp' -d '{body}' http://docker/v1.50{path}",
            n.socket().display()
        ))?;
        Ok(out.trim().to_string())
    };
    // an exec instance as docker's API shows it, while it runs and once it exited
    let api_json = |method: &str, path: &str, body: &str| -> Result<serde_json::Value> {
        let out = n.sh(&format!(
            "curl -s --unix-socket {} -X {method} -H 'Content-Type: application/json' -d '{body}' http://docker/v1.50{path}",
            n.socket().display()
        ))?;
        Ok(serde_json::from_str(&out)?)
    };
    let id = api_json("POST", "/containers/web/exec", r#"{"Cmd":["sleep","1"],"User":"nobody"}"#)?["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(api("POST", &format!("/exec/{id}/start"), r#"{"Detach":true}"#)?, "200");
    let v = api_json("GET", &format!("/exec/{id}/json"), "")?;
    assert_eq!((v["Running"].as_bool(), v["ExitCode"].is_null()), (Some(true), true), "{v}");
    assert!(v["Pid"].as_i64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["ContainerID"], docker.ok(&["inspect", "--format", "{{.Id}}", "web"])?.trim());
    assert_eq!((&v["ProcessConfig"]["entrypoint"], &v["ProcessConfig"]["user"]), (&"sleep".into(), &"nobody".into()));
    wait_until(Duration::from_secs(10), "the exec's exit", || {
        api_json("GET", &format!("/exec/{id}/json"), "").is_ok_and(|v| v["Running"] == false && v["ExitCode"] == 0)
    })?;
    assert_eq!(api("POST", &format!("/exec/{id}/start"), r#"{"Detach":true}"#)?, "409", "an exec runs once");

    assert_eq!(api("POST", "/containers/nosuch/exec", r#"{"Cmd":["true"]}"#)?, "404");
    assert_eq!(api("POST", "/containers/stopped/exec", r#"{"Cmd":["true"]}"#)?, "409");
    assert_eq!(api("POST", "/containers/web/exec", r#"{"Cmd":[]}"#)?, "400");
    assert_eq!(api("POST", "/containers/nosuch/attach?stream=1&stdout=1", "")?, "404");
    assert_eq!(api("POST", "/exec/nosuch/start", "{}")?, "404");
    assert_eq!(api("GET", "/exec/nosuch/json", "")?, "404");
    assert_eq!(docker.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])?, before);
    Ok(())
}

/// `docker attach` to a `run -dit` container: a typed command's output, `logs -f` showing it as
/// it comes, ctrl-p ctrl-q detaching with the container still running, attaching again after the
/// daemon restarted (the shim and its attach point outlive it), and the exit code of the shell.
#[test]
fn attach_detach_and_reattach() -> Result<()> {
    let (lab, docker) = lab_with_busybox("dk-attach")?;
    let n = lab.node("n1");
    docker.ok(&["run", "-dit", "--name", "tty1", IMAGE, "sh"])?;
    let follow = docker_cmd(&docker, &["logs", "-f", "tty1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;

    let mut t = terminal(&docker, &["attach", "tty1"])?;
    // the shell printed its prompt before anyone attached: an empty line shows a new one
    t.line("")?;
    t.expect(PROMPT)?;
    t.line("echo att-$((3*3))")?;
    t.expect("att-9")?;
    // docker's CLI watches for the detach keys itself, and hangs up
    t.send(&[16, 17])?;
    t.expect("read escape sequence")?;
    t.wait()?;
    assert!(running(&docker, "tty1")?, "detached: the container runs on");

    // a client that sends the keys: the daemon detaches it (moby's server-side detach)
    let (mut s, head) = hijack(&n.socket(), "/v1.50/containers/tty1/attach?stream=1&stdin=1&stdout=1&stderr=1")?;
    assert!(head.starts_with("HTTP/1.1 101") && head.contains("application/vnd.docker.raw-stream"), "{head}");
    s.write_all(b"echo raw-$((5*5))\r")?;
    read_until(&mut s, |seen| text(seen).contains("raw-25"))?;
    s.write_all(&[16, 17])?;
    read_until(&mut s, |_| false)?;
    assert!(running(&docker, "tty1")?, "detached by the daemon: the container runs on");

    // logs -f saw the line as it was written, and follows on
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut follow = follow;
    let mut out = follow.stdout.take().unwrap();
    let l = logs.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            l.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    wait_until(Duration::from_secs(10), "logs -f shows the attached session's output", || {
        text(&logs.lock().unwrap()).contains("att-9")
    })?;

    // without a terminal: docker's frames, from the moment it attached
    docker.ok(&["run", "-d", "--name", "ticker", IMAGE, "sh", "-c", "while true; do echo tick; sleep 0.1; done"])?;
    let mut a = docker_cmd(&docker, &["attach", "--no-stdin", "ticker"]).stdout(Stdio::piped()).spawn()?;
    let mut out = a.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !text(&got).contains("tick\ntick\n") {
        let n = out.read(&mut buf)?;
        assert!(n > 0, "the attach ended: {}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let _ = a.kill();
    let _ = a.wait();
    assert!(running(&docker, "ticker")?, "a client going away does not stop the container");

    n.restart_daemon()?;
    assert!(running(&docker, "tty1")?, "re-adopted");
    let mut t = terminal(&docker, &["attach", "tty1"])?;
    t.line("")?;
    t.expect(PROMPT)?;
    t.line("echo again-$((4*4))")?;
    t.expect("again-16")?;
    t.line("exit 5")?;
    assert_eq!(t.wait()?, 5, "docker attach exits with the container's code");
    assert_eq!(docker.ok(&["inspect", "--format", "{{.State.ExitCode}}", "tty1"])?.trim(), "5");
    let _ = follow.kill();
    let _ = follow.wait();
    Ok(())
}
