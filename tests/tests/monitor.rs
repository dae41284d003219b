//! The flow monitor and the event stream with real traffic: `netbee monitor` and `netbee events`
//! run as child processes of the test, as an operator runs them, and what they print is checked
//! against the packets the test sent and the answers it got.
//!
//! - `drops_and_mesh_decisions_are_reported`: a TCP SYN from one network to a container of
//!   another shows as a `cross_network` drop with its addresses within a second; a request from
//!   an external client to a service's published port shows as an `lb` decision naming the task
//!   that answered.
//! - `a_drop_flood_is_rate_limited`: a UDP flood into a blocked destination with a monitor
//!   attached: the monitor reports suppressed events, the daemon's memory stays bounded, and a
//!   TCP connection held open across the flood keeps exchanging data.
//! - `a_containers_packets_are_traced_program_by_program`: a trace of one container shows an
//!   external client's request entering the uplink already translated to the container and
//!   redirected to it, and the answer leaving the container's interface; another container's
//!   packets are not traced.
//! - `events_report_containers_and_networks`: `netbee events` shows a container's create, start,
//!   die and its network connect, live and replayed with `--since`.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use netbee_lab::{Node, netbee_bin, single_node_lab, wait_until, whoami_field};
use serde_json::Value;

/// A CLI process streaming lines; killed when dropped, also when the test fails.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stream {
    fn spawn(n: &Node, args: &[&str]) -> Result<Stream> {
        let mut child = n
            .cmd(&netbee_bin().to_string_lossy())
            .args(args)
            .env("NETBEE_HOST", format!("unix://{}", n.socket().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning netbee {args:?}"))?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Stream { child, lines })
    }

    /// The first line within `timeout` that `want` accepts.
    fn find_line(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Every JSON record that `want` accepts until the stream is quiet for `quiet`.
    fn json_for(&self, quiet: Duration, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && want(&v)
            {
                out.push(v);
            }
        }
        out
    }

    /// The first JSON record within `timeout` that `want` accepts.
    fn find_json(&self, timeout: Duration, mut want: impl FnMut(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l)
                        && want(&v)
                    {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }
}

/// Runs `f` on a thread inside the network namespace of the container whose init is `pid`.
fn in_container<T: Send + 'static>(pid: u64, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("container netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn pid_of(n: &Node, container: &str) -> Result<u64> {
    n.inspect(container)?["State"]["Pid"].as_u64().filter(|p| *p > 0).ok_or_else(|| anyhow!("{container} has no pid"))
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// ```text
///   x1 --GET :8080--> [uplink-ingress: DNAT to web] --redirect--> web
///   x1 <------------- [from-container: reverse NAT] <------------ web
///   x1 --GET :8081--> other                                       (not traced)
/// ```
#[test]
fn a_containers_packets_are_traced_program_by_program() -> Result<()> {
    let lab = single_node_lab("trace", &[])?;
    let (n, x) = (lab.node("n1"), lab.external("x1"));
    n.run_whoami("web", &["-p", "8080:8080"], 8080)?;
    n.run_whoami("other", &["-p", "8081:8080"], 8080)?;
    let web = n.container_ip("web", "bridge")?;
    let trace = Stream::spawn(n, &["monitor", "--type", "trace", "--container", "web", "--json"])?;
    let text = Stream::spawn(n, &["monitor", "--type", "trace", "--container", "web"])?;
    // each request has its own source port: the traces attach while the first ones are sent
    let mut found = None;
    for attempt in 0..5u16 {
        let sport = 43000 + attempt;
        let answer = x.sh(&format!("curl -s -m 2 --local-port {sport} http://{}:8080/", n.addr()))?;
        assert!(answer.contains("Hostname"), "web answers: {answer}");
        let client = format!("{}:{sport}", x.addr());
        // every record of this request's flow within a second of its answer
        let flow =
            trace.json_for(Duration::from_secs(1), |v| v["src"] == client.as_str() || v["dst"] == client.as_str());
        let Some(inbound) = flow.iter().find(|v| v["src"] == client.as_str()).cloned() else {
            continue;
        };
        let outbound = flow.iter().find(|v| v["dst"] == client.as_str()).cloned();
        let line = text.find_line(Duration::from_secs(2), |l| l.contains(&client) && l.contains("uplink-ingress"));
        found = Some((inbound, outbound, line, client, flow));
        break;
    }
    let (inbound, outbound, line, client, flow) =
        found.ok_or_else(|| anyhow!("no trace of five requests from x1 to web's published port"))?;
    // the request: translated to the container's address by the uplink's program, then
    // redirected straight into it
    assert_eq!(inbound["type"], "trace", "{inbound}");
    assert_eq!(inbound["point"], "uplink-ingress", "point of {inbound}");
    assert_eq!(inbound["dst"], format!("{web}:8080"), "the request's dst after the uplink's DNAT: {inbound}");
    assert_eq!(inbound["dst_name"], "web", "{inbound}");
    assert_eq!(inbound["verdict"], "redirected", "verdict of {inbound}");
    // the answer: leaves web's interface with the published address restored
    let outbound = outbound.ok_or_else(|| anyhow!("no trace of web's answer to {client}: {flow:?}"))?;
    assert_eq!(outbound["point"], "from-container", "point of {outbound}");
    assert_eq!(outbound["container"], "web", "interface owner of {outbound}");
    assert_eq!(outbound["src"], format!("{}:8080", n.addr()), "the answer's src after reverse NAT: {outbound}");
    let line = line.ok_or_else(|| anyhow!("the text trace printed no uplink-ingress line for {client}"))?;
    assert!(
        line.starts_with("-> trace uplink-ingress on ")
            && line.contains(&format!("flow {client} -> {web}:8080 (web) tcp redirected")),
        "{line}"
    );

    // another container's traffic is not followed
    let sport = 43100;
    let answer = x.sh(&format!("curl -s -m 2 --local-port {sport} http://{}:8081/", n.addr()))?;
    assert!(answer.contains("Hostname"), "other answers: {answer}");
    let client = format!("{}:{sport}", x.addr());
    let stray = trace.find_json(Duration::from_secs(2), |v| v["src"] == client.as_str() || v["dst"] == client.as_str());
    assert!(stray.is_none(), "a packet of another container was traced: {stray:?}");
    Ok(())
}

#[test]
fn drops_and_mesh_decisions_are_reported() -> Result<()> {
    let lab = single_node_lab("mon", &[])?;
    let (n, x) = (lab.node("n1"), lab.external("x1"));
    n.netbee(&["network", "create", "front"])?;
    n.netbee(&["network", "create", "back"])?;
    n.netbee(&["run", "-d", "--name", "a1", "--network", "front", "host", "sleep", "600"])?;
    n.netbee(&["run", "-d", "--name", "b1", "--network", "back", "host", "sleep", "600"])?;
    let (a1, b1) = (n.container_ip("a1", "front")?, n.container_ip("b1", "back")?);

    // what the user gets wrong is refused before anything attaches
    let e = n.netbee_refused(&["monitor", "--type", "drops"]);
    assert!(e.contains("invalid --type \"drops\"") && e.contains("drop, lb or trace"), "{e}");
    let e = n.netbee_refused(&["monitor", "--container", "nosuch"]);
    assert!(e.contains("No such container: nosuch"), "{e}");

    let drops = Stream::spawn(n, &["monitor", "--type", "drop", "--json"])?;
    let text = Stream::spawn(n, &["monitor", "--container", "a1"])?;
    // the monitor attaches while its request is answered: a probe sent before that is not
    // reported, so each probe has its own source port and gets its own second
    let mut found = None;
    for attempt in 0..5u16 {
        let sport = 41000 + attempt;
        let sent = Instant::now();
        let mut probe = n
            .cmd(&netbee_bin().to_string_lossy())
            .args(["exec", "a1", "curl", "-s", "-m", "1", "--local-port", &sport.to_string()])
            .arg(format!("http://{b1}:8080/"))
            .env("NETBEE_HOST", format!("unix://{}", n.socket().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let src = format!("{a1}:{sport}");
        let ev = drops.find_json(Duration::from_secs(3), |v| v["src"] == src.as_str());
        let (received, took) = (chrono::Utc::now(), sent.elapsed());
        let _ = probe.wait();
        // the text monitor attaches on its own request: both must have seen the same probe
        let line = text.find_line(Duration::from_secs(1), |l| l.contains(&src));
        if let (Some(ev), Some(line)) = (ev, line) {
            found = Some((ev, line, received, took, src));
            break;
        }
    }
    let (ev, line, received, took, src) =
        found.ok_or_else(|| anyhow!("no drop event for five probes from a1 to b1"))?;
    // from the datapath's drop (the event's time) to the line the monitor printed
    let dropped_at = chrono::DateTime::parse_from_rfc3339(ev["time"].as_str().unwrap_or_default())?;
    let latency = (received - dropped_at.with_timezone(&chrono::Utc)).to_std().unwrap_or_default();
    eprintln!("drop printed {latency:?} after the datapath dropped it ({took:?} after starting the probe): {ev}");
    assert_eq!(ev["type"], "drop", "{ev}");
    assert_eq!(ev["reason"], "cross_network", "{ev}");
    assert_eq!((ev["src"].as_str(), ev["dst"].as_str()), (Some(src.as_str()), Some(format!("{b1}:8080").as_str())));
    assert_eq!(ev["proto"], "tcp", "{ev}");
    assert_eq!(ev["container"], "a1", "the sender's interface is named by its container: {ev}");
    assert_eq!(ev["dst_name"], "b1", "{ev}");
    assert!(latency < Duration::from_secs(1), "the drop took {latency:?} to be printed");
    let iface = ev["interface"].as_str().unwrap_or_default();
    assert_eq!(line, format!("xx drop (cross-network) flow {src} (a1) -> {b1}:8080 (b1) tcp on {iface} (ct a1)"));
    drop((drops, text));

    // the routing mesh: a published service port from an external client
    let bin = netbee_bin();
    n.netbee(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--publish",
        "8080:8080",
        "host",
        bin.to_str().unwrap(),
        "whoami",
        "--port",
        "8080",
    ])?;
    wait_until(Duration::from_secs(30), "web 2/2", || n.service_replicas("web") == "2/2")?;
    let url = format!("http://{}:8080/", n.addr());
    wait_until(Duration::from_secs(10), "web answers", || x.sh(&format!("curl -s -m 1 {url}")).is_ok())?;
    let lb = Stream::spawn(n, &["monitor", "--type", "lb", "--service", "web", "--json"])?;
    let mut seen = Vec::new();
    for attempt in 0..4u16 {
        let sport = 42000 + attempt;
        let answer = x.sh(&format!("curl -s -m 3 --local-port {sport} {url}"))?;
        let client = format!("{}:{sport}", x.addr());
        let Some(ev) = lb.find_json(Duration::from_secs(2), |v| v["client"] == client.as_str()) else {
            continue;
        };
        seen.push((ev, answer));
        if seen.len() == 2 {
            break;
        }
    }
    assert!(seen.len() == 2, "lb events for two requests from x1: got {}", seen.len());
    let mut tasks = std::collections::BTreeSet::new();
    for (ev, answer) in &seen {
        assert_eq!(
            (ev["type"].as_str(), ev["kind"].as_str(), ev["via"].as_str()),
            (Some("lb"), Some("mesh"), Some("wire"))
        );
        assert_eq!(ev["service"], "web", "{ev}");
        assert_eq!(ev["frontend"], format!("{}:8080", n.addr()), "{ev}");
        let task = ev["task"].as_str().ok_or_else(|| anyhow!("no task named in {ev}"))?;
        assert!(task.starts_with("web."), "{ev}");
        // the task named is the one that answered: its container's hostname and address
        let hostname = whoami_field(answer, "Hostname").ok_or_else(|| anyhow!("no whoami answer: {answer}"))?;
        let inspected = n.inspect(task)?;
        assert_eq!(inspected["Config"]["Hostname"], hostname.as_str(), "event {ev} vs answer {answer}");
        let backend_ip = ev["backend"].as_str().unwrap().split(':').next().unwrap().to_string();
        assert!(answer.lines().any(|l| l == format!("IP: {backend_ip}")), "event {ev} vs answer {answer}");
        assert_eq!(ev["backend"], format!("{backend_ip}:8080"));
        tasks.insert(task.to_string());
    }
    assert_eq!(tasks.len(), 2, "round robin: two requests, two tasks: {seen:?}");
    Ok(())
}

#[test]
fn a_drop_flood_is_rate_limited() -> Result<()> {
    const TARGET_PPS: u64 = 100_000;
    const FLOOD: Duration = Duration::from_secs(5);
    let lab = single_node_lab("monflood", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "front"])?;
    n.netbee(&["network", "create", "back"])?;
    n.netbee(&["run", "-d", "--name", "a1", "--network", "front", "host", "sleep", "600"])?;
    n.netbee(&[
        "run",
        "-d",
        "--name",
        "echo",
        "--network",
        "front",
        "host",
        "socat",
        "TCP-LISTEN:7000,fork,reuseaddr",
        "EXEC:cat",
    ])?;
    n.netbee(&["run", "-d", "--name", "b1", "--network", "back", "host", "sleep", "600"])?;
    let echo: SocketAddr = format!("{}:7000", n.container_ip("echo", "front")?).parse()?;
    let blocked: SocketAddr = format!("{}:9", n.container_ip("b1", "back")?).parse()?;
    let a1 = pid_of(n, "a1")?;
    let daemon = n.daemon_pid().ok_or_else(|| anyhow!("no daemon"))?;

    // the established flow: connected before the flood, one round trip every 50 ms throughout
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let stop = stop.clone();
        in_container(a1, move || -> Result<(u64, Duration)> {
            let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let (mut rounds, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("round {rounds}\n");
                let t = Instant::now();
                s.write_all(msg.as_bytes())?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).with_context(|| format!("echo of round {rounds}"))?;
                if back != msg.as_bytes() {
                    bail!("round {rounds} came back as {:?}", String::from_utf8_lossy(&back));
                }
                worst = worst.max(t.elapsed());
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok((rounds, worst))
        })
    };

    let monitor = Stream::spawn(n, &["monitor", "--type", "drop", "--json"])?;
    // attached once a probe's drop shows
    wait_until(Duration::from_secs(10), "the monitor reports a probe", || {
        let sock = in_container(a1, move || UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"probe", blocked)));
        let _ = sock.join();
        monitor.find_json(Duration::from_millis(300), |v| v["type"] == "drop").is_some()
    })?;
    let rss_before = vm_rss_kib(daemon)?;
    let drops_before = n.drops("cross_network")?;

    // the flood: paced to TARGET_PPS, as fast as one thread goes if it cannot keep up
    let sent = in_container(a1, move || -> Result<(u64, Duration)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let start = Instant::now();
        let mut sent = 0u64;
        let payload = [0u8; 18];
        while start.elapsed() < FLOOD {
            for _ in 0..64 {
                // ENOBUFS and the like under load are not the test's concern: the count is of
                // what the kernel took
                if s.send_to(&payload, blocked).is_ok() {
                    sent += 1;
                }
            }
            let due = Duration::from_nanos(sent * 1_000_000_000 / TARGET_PPS);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok((sent, start.elapsed()))
    })
    .join()
    .map_err(|_| anyhow!("the flood thread panicked"))??;
    let (sent, took) = sent;
    let pps = sent as f64 / took.as_secs_f64();

    // what the monitor printed over the flood and the second after it
    let (mut drop_events, mut suppressed) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_millis(2500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(l) = monitor.lines.recv_timeout(left) else { break };
        let Ok(v) = serde_json::from_str::<Value>(&l) else { continue };
        match v["type"].as_str() {
            Some("drop") => drop_events += 1,
            Some("suppressed") => suppressed += v["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    let rss_after = vm_rss_kib(daemon)?;
    let dropped = n.drops("cross_network")? - drops_before;
    stop.store(true, Ordering::Relaxed);
    let (rounds, worst) = flow.join().map_err(|_| anyhow!("the flow thread panicked"))??;

    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u64;
    eprintln!(
        "flood: {sent} datagrams in {took:?} = {pps:.0} pps (target {TARGET_PPS}); dropped by the datapath {dropped}; \
         monitor: {drop_events} drop events, {suppressed} suppressed; daemon RSS {rss_before} -> {rss_after} KiB; \
         established flow: {rounds} round trips, worst {worst:?}"
    );
    assert!(pps > 20_000.0, "the generator reached only {pps:.0} pps");
    assert!(dropped >= sent * 9 / 10, "the datapath dropped {dropped} of {sent}");
    assert!(suppressed > 0, "a flood is reported as suppressed events");
    // the limiter's bound: 10 windows a second, per CPU, over the flood and the reading after it
    let bound = netbee_abi::MONITOR_EVENTS_PER_WINDOW * 10 * cpus * (took.as_secs() + 3);
    assert!(drop_events <= bound, "{drop_events} drop events exceed the rate limit's {bound}");
    assert!(drop_events + suppressed >= dropped / 2, "most drops are either shown or counted");
    assert!(rss_after < rss_before + 30 * 1024, "daemon RSS grew from {rss_before} to {rss_after} KiB");
    assert!(rounds >= 50, "the established flow exchanged only {rounds} round trips");
    assert!(worst < Duration::from_secs(1), "a round trip took {worst:?} during the flood");
    Ok(())
}

#[test]
fn events_report_containers_and_networks() -> Result<()> {
    let lab = single_node_lab("events", &[])?;
    let n = lab.node("n1");
    let live = Stream::spawn(n, &["events", "--format", "json"])?;
    // attached once an event of ours shows
    wait_until(Duration::from_secs(10), "the event stream attached", || {
        let _ = n.netbee(&["network", "create", "evprobe"]);
        let _ = n.netbee(&["network", "rm", "evprobe"]);
        live.find_json(Duration::from_millis(500), |v| v["Type"] == "network" && v["Action"] == "destroy").is_some()
    })?;
    n.netbee(&["network", "create", "evnet"])?;
    let id =
        n.netbee(&["run", "-d", "--name", "ev1", "--network", "evnet", "host", "sleep", "600"])?.trim().to_string();
    n.netbee(&["kill", "ev1"])?;
    let net_id = n.network_inspect("evnet")?["Id"].as_str().unwrap_or_default().to_string();

    let expect = |typ: &str, action: &str, actor: &str, attrs: &[(&str, &str)]| -> Result<Value> {
        live.find_json(Duration::from_secs(5), |v| {
            v["Type"] == typ
                && v["Action"] == action
                && v["Actor"]["ID"] == actor
                && attrs.iter().all(|(k, want)| v["Actor"]["Attributes"][*k] == *want)
        })
        .ok_or_else(|| anyhow!("no {typ} {action} event for {actor} with {attrs:?}"))
    };
    expect("network", "create", &net_id, &[("name", "evnet"), ("type", "bridge")])?;
    expect("container", "create", &id, &[("name", "ev1"), ("image", "host")])?;
    expect("network", "connect", &net_id, &[("name", "evnet"), ("container", &id), ("containerName", "ev1")])?;
    let start = expect("container", "start", &id, &[("name", "ev1")])?;
    expect("network", "disconnect", &net_id, &[("name", "evnet"), ("container", &id)])?;
    let die = expect("container", "die", &id, &[("name", "ev1"), ("exitCode", "137")])?;
    assert!(die["timeNano"].as_i64() >= start["timeNano"].as_i64(), "{start} then {die}");
    assert_eq!(die["time"].as_i64(), die["timeNano"].as_i64().map(|t| t / 1_000_000_000));

    // replayed with --since, filtered to containers, as docker's text lines
    let past =
        Stream::spawn(n, &["events", "--since", "5m", "--filter", "type=container", "--filter", "container=ev1"])?;
    let mut lines = Vec::new();
    while let Ok(l) = past.lines.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
        if lines.len() == 3 {
            break;
        }
    }
    let actions: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    assert_eq!(actions, ["create", "start", "die"], "{lines:#?}");
    for l in &lines {
        assert!(l.split(' ').nth(1) == Some("container") && l.contains(&id) && l.contains("name=ev1"), "{l}");
    }
    Ok(())
}
