//! `scale`: whether the cost of an operation stays flat as a node and a cluster fill up
//! (issue 18, item 3). Every figure is the same operation measured early (the baseline) and late
//! in one run; the ratio late/early is what must stay ≤ 1.5.
//!
//! **One node** (`n1`, a bridge network with a /20): N containers created one after the other
//! (`run -d --network bench --network-alias ×9 -p A-B:A-B host sleep`, full: N = 1,000, quick: 40),
//! each with 10 published ports and 11 DNS names (its name, hostname and 9 aliases), so the node
//! ends with 10,000 published ports and ≈ 11,000 names. Per `run -d`: wall time (CLI spawn to exit)
//! and the daemon's CPU (utime+stime from `/proc/PID/stat`, 10 ms ticks, so the mean over the
//! window, not the median) for the first K and the last K containers (K = 50, quick: 10). After
//! the first container and after the last, alternately, a probe set: `run -d` without ports,
//! `run -d -p P:80` (one more port), `ps -a` latency, and DNS answer latency (a real UDP query
//! to the network's gateway from inside a container's network namespace, answer checked).
//!
//! **Cluster** (full: 10 daemons on one etcd, S = 100 services × R = 10 replicas on an overlay
//! with a /20; quick: 2 nodes, 3 × 2): the first 10 services and the last 10 are each created
//! from a cluster at rest (every task before it running, then 1 s for every node's names and
//! load balancers to follow; quick: 0.2 s), and for each: the `service create -d`
//! time, the time until it reports R/R, and what it cost the whole cluster until then (CPU of
//! the 10 daemons and etcd: the record, its tasks started on their nodes, every node's load
//! balancers and names); the services between are created back to back (and the bench reports
//! how long until all their tasks ran); `service ls` latency at 1 service and at S; the time
//! from `service scale -d s0=R+1` until every node's `datapath lb ls` (polled every 100 ms) lists
//! the new task as an active backend of s0's VIP (at 1 service and at S); daemon RSS and idle
//! CPU per node; etcd
//! keys and database size; and what one such scale update costs in watch traffic (events and
//! key+value bytes seen by one `etcdctl watch --prefix /netbee` — every daemon holds one such
//! watch, so the cluster-wide cost is that × nodes).

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use netbee_lab::{Lab, Node};
use serde_json::Value;

use super::{Ctx, nb};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE, Stats};
use crate::sys::{netbee_cmd, time_cmd};

/// First host port of the fill containers' ranges.
const FILL_BASE: usize = 10000;
/// Ports per fill container (one range).
const PORTS_PER_CONTAINER: usize = 10;
/// Aliases per fill container; with its name and hostname, 11 names each.
const ALIASES_PER_CONTAINER: usize = 9;
/// Host ports of the probe containers (above the fill's 10,000).
const PROBE_BASE: u16 = 30000;

struct Sizes {
    containers: usize,
    window: usize,
    probes: usize,
    nodes: usize,
    services: usize,
    replicas: usize,
}

fn sizes(ctx: &Ctx) -> Sizes {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    if ctx.quick {
        // small enough for `bench --quick` (CI): about 20 s with the swarm's start
        Sizes { containers: 20, window: 5, probes: 2, nodes: 2, services: 3, replicas: 2 }
    } else {
        // NETBEE_BENCH_SCALE_* override the full sizes (e.g. to find what the machine carries)
        Sizes {
            containers: env("NETBEE_BENCH_SCALE_CONTAINERS", 1000),
            window: 50,
            probes: 7,
            nodes: env("NETBEE_BENCH_SCALE_NODES", 10),
            services: env("NETBEE_BENCH_SCALE_SERVICES", 100),
            replicas: env("NETBEE_BENCH_SCALE_REPLICAS", 10),
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let z = sizes(ctx);
    let (n, k) = (z.containers, z.window);
    let ports = n * PORTS_PER_CONTAINER;
    let (early, late_from) = windows(z.services);
    let ratio = |key: &str, what: String| MetricDef::new(key, what, "×", Better::Lower).target("≤ 1.5 (flat)");
    let defs = vec![
        MetricDef::new(
            "run_first",
            format!("`run -d` (10 ports, 11 names), containers 1–{k}, median"),
            "ms",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "run_last",
            format!("`run -d` (10 ports, 11 names), containers {}–{n}, median", n - k + 1),
            "ms",
            Better::Lower,
        )
        .target("—"),
        ratio("run_ratio", format!("`run -d` cost, last {k} / first {k}")),
        MetricDef::new("cpu_first", format!("daemon CPU per `run -d`, containers 1–{k}, mean"), "ms", Better::Lower)
            .target("—"),
        MetricDef::new(
            "cpu_last",
            format!("daemon CPU per `run -d`, containers {}–{n}, mean", n - k + 1),
            "ms",
            Better::Lower,
        )
        .target("—"),
        ratio("cpu_ratio", format!("daemon CPU per `run -d`, last {k} / first {k}")),
        MetricDef::new("noport_first", "probe `run -d` without ports, 1 container on the node", "ms", Better::Lower)
            .target("—"),
        MetricDef::new("noport_last", format!("probe `run -d` without ports, {n} containers"), "ms", Better::Lower)
            .target("—"),
        ratio("noport_ratio", format!("container create, {n} containers / 1")),
        MetricDef::new(
            "publish_first",
            format!("probe `run -d -p P:80`, {PORTS_PER_CONTAINER} ports published"),
            "ms",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new("publish_last", format!("probe `run -d -p P:80`, {ports} ports published"), "ms", Better::Lower)
            .target("—"),
        ratio("publish_ratio", format!("port publish, {ports} ports / {PORTS_PER_CONTAINER}")),
        MetricDef::new("ps_first", "`ps -a` latency, 1 container", "ms", Better::Lower).target("—"),
        MetricDef::new("ps_last", format!("`ps -a` latency, {n} containers"), "ms", Better::Lower).target("—"),
        MetricDef::new("dns_first", "DNS answer latency from a container, 11 names", "µs", Better::Lower).target("—"),
        MetricDef::new(
            "dns_last",
            format!("DNS answer latency from a container, {} names", n * 11),
            "µs",
            Better::Lower,
        )
        .target("—"),
        ratio("dns_ratio", format!("DNS answer, {} names / 11", n * 11)),
        MetricDef::new("rss_node", format!("daemon RSS, {n} containers, {ports} ports"), "MiB", Better::Lower)
            .target("—"),
        MetricDef::new(
            "svc_first",
            format!("`service create -d`, services 1–{early}, each from a cluster at rest"),
            "ms",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "svc_last",
            format!("`service create -d`, services {}–{}, each from a cluster at rest", late_from + 1, z.services),
            "ms",
            Better::Lower,
        )
        .target("—"),
        ratio("svc_ratio", format!("service create, last {early} / first {early}")),
        MetricDef::new(
            "svc_srv_first",
            format!("`service create` inside the daemon (its own timing), services 1–{early}"),
            "ms",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "svc_srv_last",
            format!("`service create` inside the daemon (its own timing), services {}–{}", late_from + 1, z.services),
            "ms",
            Better::Lower,
        )
        .target("—"),
        ratio("svc_srv_ratio", format!("service create inside the daemon, last {early} / first {early}")),
        MetricDef::new(
            "svc_cpu_first",
            format!(
                "cluster CPU per service create until {r}/{r} (daemons + etcd), services 1–{early}",
                r = z.replicas
            ),
            "ms",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "svc_cpu_last",
            format!(
                "cluster CPU per service create until {r}/{r} (daemons + etcd), services {}–{}",
                late_from + 1,
                z.services,
                r = z.replicas
            ),
            "ms",
            Better::Lower,
        )
        .target("—"),
        ratio("svc_cpu_ratio", format!("cluster CPU per service create, last {early} / first {early}")),
        MetricDef::new(
            "svc_run_first",
            format!("service create until {r}/{r} running, services 1–{early}", r = z.replicas),
            "s",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "svc_run_last",
            format!("service create until {r}/{r} running, services {}–{}", late_from + 1, z.services, r = z.replicas),
            "s",
            Better::Lower,
        )
        .target("—"),
        ratio("svc_run_ratio", format!("service create until running, last {early} / first {early}")),
        MetricDef::new(
            "converge_bulk",
            format!(
                "services {}–{} created back to back: all their {} tasks running, from the last create",
                early + 1,
                late_from,
                (late_from - early) * z.replicas
            ),
            "s",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "lb_first",
            format!("`service scale` +1 until every node's LB has the task, 1 service, {} nodes", z.nodes),
            "s",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "lb_last",
            format!("`service scale` +1 until every node's LB has the task, {} services", z.services),
            "s",
            Better::Lower,
        )
        .target("—"),
        ratio("lb_ratio", format!("scale-to-converged, {} services / 1", z.services)),
        MetricDef::new("svcls_first", "`service ls` latency, 1 service", "ms", Better::Lower).target("—"),
        MetricDef::new("svcls_last", format!("`service ls` latency, {} services", z.services), "ms", Better::Lower)
            .target("—"),
        MetricDef::new(
            "rss_swarm",
            format!("daemon RSS per node, {} tasks over {} nodes (median)", z.services * z.replicas, z.nodes),
            "MiB",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new("rss_swarm_max", "daemon RSS, largest node", "MiB", Better::Lower).target("—"),
        MetricDef::new("idle_cpu", "daemon CPU idle per node, all tasks running (median)", "%", Better::Lower)
            .target("—"),
        MetricDef::new("etcd_idle_cpu", "etcd CPU, cluster at rest, all tasks running", "%", Better::Lower).target("—"),
        MetricDef::new("etcd_keys", "etcd keys under /netbee", "keys", Better::Lower).target("—"),
        MetricDef::new("etcd_db", "etcd database size", "MiB", Better::Lower).target("—"),
        MetricDef::new(
            "watch_events",
            "watch events one watcher receives per `service scale` +1",
            "events",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "watch_bytes",
            "key+value bytes one watcher receives per `service scale` +1",
            "KiB",
            Better::Lower,
        )
        .target("—"),
        MetricDef::new(
            "watch_idle",
            "watch events while the cluster rests 10 s (quick: 3 s), one watcher",
            "events",
            Better::Lower,
        )
        .target("—"),
    ];
    // services created back to back only when there are more than the two windows
    let bulk = late_from > early;
    let defs: Vec<MetricDef> = defs.into_iter().filter(|d| d.key != "converge_bulk" || bulk).collect();
    let mut col = Collector::new("scale", defs);
    one_node(&z, &mut col)?;
    cluster(ctx, &z, &mut col)?;
    Ok(col.finish())
}

/// The cluster's measured windows of `services`: the first `early` and the last from `late_from`
/// (up to 10 each; at least one service between them, created back to back).
fn windows(services: usize) -> (usize, usize) {
    let early = (services / 2).clamp(1, 10);
    (early, services - early)
}

fn median(v: &[f64]) -> f64 {
    Stats::of(v).map(|s| s.median).unwrap_or(f64::NAN)
}

/// The daemon's user+system CPU time so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the parenthesized command name: state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .context("no VmRSS in /proc/PID/status")
}

fn fill_container(n1: &Node, i: usize) -> std::process::Command {
    let lo = FILL_BASE + i * PORTS_PER_CONTAINER;
    let hi = lo + PORTS_PER_CONTAINER - 1;
    let mut c = netbee_cmd(n1);
    c.args(["run", "-d", "--name", &format!("c{i}"), "--network", "bench"]);
    for a in 0..ALIASES_PER_CONTAINER {
        c.args(["--network-alias", &format!("c{i}-a{a}")]);
    }
    c.args(["-p", &format!("{lo}-{hi}:{lo}-{hi}"), "host", "sleep", "100000"]);
    c
}

fn one_node(z: &Sizes, col: &mut Collector) -> Result<()> {
    let mut lab = Lab::new("bench-scale-node")?;
    lab.add_node("n1")?;
    let n1 = lab.node("n1");
    // every container holds a shim, a sleep and its veth: more descriptors than the default
    n1.set_open_file_limit(65536);
    n1.start_daemon()?;
    nb(n1, &["network", "create", "--subnet", "10.199.0.0/20", "bench"])?;
    let gateway = Ipv4Addr::new(10, 199, 0, 1);
    let pid = n1.daemon_pid().context("daemon not running")?;

    let (n, k) = (z.containers, z.window);
    let mut probe = 0usize;
    let mut client_ns = PathBuf::new();
    let (mut cpu_first, mut cpu_last) = (Vec::new(), Vec::new());
    for i in 0..n {
        let cpu0 = cpu_seconds(pid)?;
        let mut c = fill_container(n1, i);
        c.stdout(Stdio::piped());
        let t0 = Instant::now();
        let out = c.output().with_context(|| format!("creating container {i}"))?;
        let wall = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("creating container c{i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let cpu = cpu_seconds(pid)? - cpu0;
        if i == 0 {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            client_ns = n1.dir().join("state").join("netns").join(&id);
        }
        if i < k {
            col.add("run_first", NETBEE, 1e3 * wall);
            cpu_first.push(1e3 * cpu);
        }
        if i >= n - k {
            col.add("run_last", NETBEE, 1e3 * wall);
            cpu_last.push(1e3 * cpu);
        }
        if i == 0 || i == n - 1 {
            let stage = if i == 0 { "first" } else { "last" };
            println!("  scale: probes with {} containers", i + 1);
            for _ in 0..z.probes {
                probe += 1;
                probes(n1, stage, probe, &client_ns, gateway, i, col)?;
            }
        }
        if (i + 1) % 100 == 0 {
            println!("  scale: {} containers", i + 1);
        }
    }
    col.add("rss_node", NETBEE, rss_mib(pid)?);
    // the CPU windows are means (10 ms ticks), the wall-time windows medians
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (cf, cl) = (mean(&cpu_first), mean(&cpu_last));
    col.add("cpu_first", NETBEE, cf);
    col.add("cpu_last", NETBEE, cl);
    col.add("cpu_ratio", NETBEE, cl / cf);
    for key in ["run", "noport", "publish", "dns"] {
        let r = median(col.get(&format!("{key}_last"), NETBEE)) / median(col.get(&format!("{key}_first"), NETBEE));
        col.add(&format!("{key}_ratio"), NETBEE, r);
    }
    drop(lab);
    Ok(())
}

/// One probe set, the operations alternated: `run -d` without ports, `run -d -p`, `ps -a`, and
/// 20 DNS queries (their median) for a name of the last container created.
fn probes(
    n1: &Node,
    stage: &str,
    probe: usize,
    client_ns: &Path,
    gateway: Ipv4Addr,
    last: usize,
    col: &mut Collector,
) -> Result<()> {
    let mut c = netbee_cmd(n1);
    c.args(["run", "-d", "--name", "probe0", "--network", "bench", "host", "sleep", "600"]);
    col.add(&format!("noport_{stage}"), NETBEE, 1e3 * time_cmd(c).context("probe run -d")?);
    let mut c = netbee_cmd(n1);
    let spec = format!("{}:80", PROBE_BASE + probe as u16);
    c.args(["run", "-d", "--name", "probe1", "--network", "bench", "-p", &spec, "host", "sleep", "600"]);
    col.add(&format!("publish_{stage}"), NETBEE, 1e3 * time_cmd(c).context("probe run -d -p")?);
    nb(n1, &["rm", "-f", "probe0", "probe1"])?;
    let mut c = netbee_cmd(n1);
    c.args(["ps", "-a"]);
    col.add(&format!("ps_{stage}"), NETBEE, 1e3 * time_cmd(c).context("ps -a")?);
    let name = format!("c{last}-a{}", probe % ALIASES_PER_CONTAINER);
    let lat = dns_latencies(client_ns, gateway, &name, 20)?;
    col.add(&format!("dns_{stage}"), NETBEE, 1e6 * median(&lat));
    Ok(())
}

/// Seconds per answer of `count` A queries for `name` sent one after the other to `server`:53
/// from inside the network namespace at `netns`; each answer must be NOERROR with an address.
fn dns_latencies(netns: &Path, server: Ipv4Addr, name: &str, count: usize) -> Result<Vec<f64>> {
    let netns = netns.to_path_buf();
    let name = name.to_string();
    std::thread::spawn(move || -> Result<Vec<f64>> {
        let f = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        // SAFETY: setns on a descriptor we own, for this thread only
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", netns.display(), std::io::Error::last_os_error());
        }
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        sock.connect(SocketAddrV4::new(server, 53))?;
        let mut out = Vec::with_capacity(count);
        let mut buf = [0u8; 1500];
        for q in 0..count {
            let id = (q as u16).wrapping_add(0x5a00);
            let query = dns_query(id, &name);
            let t0 = Instant::now();
            sock.send(&query)?;
            let len = sock.recv(&mut buf).with_context(|| format!("no DNS answer for {name}"))?;
            out.push(t0.elapsed().as_secs_f64());
            let a = &buf[..len];
            let (rid, rcode, ancount) =
                (u16::from_be_bytes([a[0], a[1]]), a[3] & 0x0f, u16::from_be_bytes([a[6], a[7]]));
            if len < 12 || rid != id || rcode != 0 || ancount == 0 {
                bail!("DNS answer for {name}: id {rid} (sent {id}), rcode {rcode}, {ancount} answers");
            }
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow!("DNS probe thread panicked"))?
}

/// (seconds, count) of the API operation `op` as node `n`'s daemon timed it so far (its
/// `netbee_operation_duration_seconds` histogram, served with `--metrics-addr 127.0.0.1:9323`).
fn operation_seconds(n: &Node, op: &str) -> Result<(f64, u64)> {
    let text = n.sh("curl -sf http://127.0.0.1:9323/metrics")?;
    let label = format!("{{operation=\"{op}\"}}");
    let value = |metric: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(metric)?.strip_prefix(label.as_str())?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (sum, count) =
        (value("netbee_operation_duration_seconds_sum"), value("netbee_operation_duration_seconds_count"));
    Ok((sum, count as u64))
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    q
}

fn cluster(ctx: &Ctx, z: &Sizes, col: &mut Collector) -> Result<()> {
    let names: Vec<String> = (1..=z.nodes).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    println!("  scale: {}-node swarm", z.nodes);
    // metrics on each node's loopback: the daemon's own timing of each create
    let lab = netbee_lab::swarm_lab_with("bench-scale-swarm", &refs, &[], &["--metrics-addr", "127.0.0.1:9323"])?;
    let n1 = lab.node("n1");
    nb(n1, &["network", "create", "--driver", "overlay", "--subnet", "10.200.0.0/20", "app"])?;
    let bin = std::env::var("NETBEE_BIN").unwrap_or_else(|_| netbee_lab::netbee_bin().to_string_lossy().into_owned());
    let (s, r) = (z.services, z.replicas);
    let create = |i: usize| -> Result<f64> {
        let mut c = netbee_cmd(n1);
        let reps = r.to_string();
        c.args(["service", "create", "-d", "--name", &format!("s{i}"), "--replicas", &reps, "--network", "app"]);
        c.args(["host", &bin, "whoami", "--port", "8080"]);
        time_cmd(c).with_context(|| format!("service create s{i}"))
    };
    let pids: Vec<u32> =
        lab.nodes().iter().map(|n| n.daemon_pid().context("daemon not running")).collect::<Result<_>>()?;
    let etcd_pid = etcd_pid(&lab)?;
    let cluster_cpu = || -> Result<f64> {
        let mut sum = cpu_seconds(etcd_pid)?;
        for p in &pids {
            sum += cpu_seconds(*p)?;
        }
        Ok(sum)
    };
    // one service created from a cluster at rest: its create time, what the cluster spent until
    // its tasks ran, and how long that took. At rest: R/R reported is not the end of the work
    // (every node's names and load balancers follow), so a settling pause comes first
    let settle_before = Duration::from_millis(if ctx.quick { 200 } else { 1000 });
    let measured = |i: usize, col: &mut Collector, window: &str| -> Result<()> {
        std::thread::sleep(settle_before);
        let (cpu0, t0, srv0) = (cluster_cpu()?, Instant::now(), operation_seconds(n1, "service_create")?);
        col.add(&format!("svc_{window}"), NETBEE, 1e3 * create(i)?);
        let srv = operation_seconds(n1, "service_create")?;
        if srv.1 != srv0.1 + 1 {
            bail!("the daemon counted {} service creates for one", srv.1 - srv0.1);
        }
        col.add(&format!("svc_srv_{window}"), NETBEE, 1e3 * (srv.0 - srv0.0));
        wait_replicas(n1, &[format!("s{i}")], r, Duration::from_secs(120))?;
        col.add(&format!("svc_run_{window}"), NETBEE, t0.elapsed().as_secs_f64());
        col.add(&format!("svc_cpu_{window}"), NETBEE, 1e3 * (cluster_cpu()? - cpu0));
        Ok(())
    };
    let (early, late_from) = windows(s);
    measured(0, col, "first")?;
    // the baseline: one service in the cluster
    for _ in 0..z.probes {
        let mut c = netbee_cmd(n1);
        c.args(["service", "ls"]);
        col.add("svcls_first", NETBEE, 1e3 * time_cmd(c)?);
    }
    let mut replicas = r;
    replicas += 1;
    col.add("lb_first", NETBEE, scale_until_every_lb(&lab, "s0", replicas)?);
    for i in 1..early {
        measured(i, col, "first")?;
    }
    println!("  scale: {early} services");
    if late_from > early {
        for i in early..late_from {
            create(i)?;
            if (i + 1) % 10 == 0 {
                println!("  scale: {} services", i + 1);
            }
        }
        let t0 = Instant::now();
        let bulk: Vec<String> = (early..late_from).map(|j| format!("s{j}")).collect();
        wait_replicas(n1, &bulk, r, Duration::from_secs(60 + 2 * (s * r) as u64))?;
        col.add("converge_bulk", NETBEE, t0.elapsed().as_secs_f64());
    }
    for i in late_from.max(early)..s {
        measured(i, col, "last")?;
    }
    println!("  scale: {s} services");
    for (k, of) in
        [("svc_ratio", "svc"), ("svc_srv_ratio", "svc_srv"), ("svc_cpu_ratio", "svc_cpu"), ("svc_run_ratio", "svc_run")]
    {
        let (last, first) =
            (median(col.get(&format!("{of}_last"), NETBEE)), median(col.get(&format!("{of}_first"), NETBEE)));
        col.add(k, NETBEE, last / first);
    }

    // settle, then idle CPU and RSS of every daemon
    let settle = Duration::from_secs(if ctx.quick { 1 } else { 3 });
    std::thread::sleep(settle);
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect::<Result<_>>()?;
    let etcd_cpu0 = cpu_seconds(etcd_pid)?;
    let (watch, events0) = EtcdWatch::start(&lab)?;
    let idle = Duration::from_secs(if ctx.quick { 3 } else { 10 });
    std::thread::sleep(idle);
    let idle_events = watch.count()? - events0;
    col.add("watch_idle", NETBEE, idle_events.0 as f64);
    println!("  scale: idle watch events by key prefix: {}", watch.by_prefix()?);
    let mut idle_cpu = Vec::new();
    let mut rss = Vec::new();
    for (p, c0) in pids.iter().zip(&cpu0) {
        idle_cpu.push(100.0 * (cpu_seconds(*p)? - c0) / idle.as_secs_f64());
        rss.push(rss_mib(*p)?);
    }
    col.add("idle_cpu", NETBEE, median(&idle_cpu));
    // etcd's own CPU over the same window (the watcher started inside it costs it little)
    col.add("etcd_idle_cpu", NETBEE, 100.0 * (cpu_seconds(etcd_pid)? - etcd_cpu0) / (idle.as_secs_f64() + 0.5));
    col.add("rss_swarm", NETBEE, median(&rss));
    col.add("rss_swarm_max", NETBEE, rss.iter().cloned().fold(0.0, f64::max));
    println!("  scale: idle CPU per node {idle_cpu:.1?} %, RSS {rss:.1?} MiB");

    for _ in 0..z.probes {
        let mut c = netbee_cmd(n1);
        c.args(["service", "ls"]);
        col.add("svcls_last", NETBEE, 1e3 * time_cmd(c)?);
    }
    // one update: its watch traffic, and the time until every load balancer has the new task
    let before = watch.count()?;
    replicas += 1;
    let t = scale_until_every_lb(&lab, "s0", replicas)?;
    col.add("lb_last", NETBEE, t);
    // the tasks' own state writes (assigned, running) follow the LB by little; let them land
    std::thread::sleep(2 * settle / 3);
    let d = watch.count()? - before;
    // subtract the idle rate over the same time so only the update's traffic remains
    let idle_share = (t + (2 * settle / 3).as_secs_f64()) / idle.as_secs_f64();
    col.add("watch_events", NETBEE, (d.0 as f64 - idle_share * idle_events.0 as f64).max(0.0));
    col.add("watch_bytes", NETBEE, (d.1 as f64 - idle_share * idle_events.1 as f64).max(0.0) / 1024.0);
    drop(watch);
    col.add("lb_ratio", NETBEE, median(col.get("lb_last", NETBEE)) / median(col.get("lb_first", NETBEE)));

    let (keys, db) = etcd_size(&lab)?;
    col.add("etcd_keys", NETBEE, keys as f64);
    col.add("etcd_db", NETBEE, db / (1024.0 * 1024.0));
    drop(lab);
    Ok(())
}

/// Waits until `service ls` on `n` reports `want/want` for every service of `names`.
fn wait_replicas(n: &Node, names: &[String], want: usize, timeout: Duration) -> Result<()> {
    let goal = format!("{want}/{want}");
    let t0 = Instant::now();
    loop {
        let out = n.netbee(&["service", "ls", "--format", "json"]).unwrap_or_default();
        let got: HashMap<String, String> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|v| match v {
                Value::Array(a) => a,
                v => vec![v],
            })
            .filter_map(|v| Some((v["Name"].as_str()?.to_string(), v["Replicas"].as_str()?.to_string())))
            .collect();
        let missing = names.iter().filter(|s| got.get(*s) != Some(&goal)).count();
        if missing == 0 {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{missing} of {} services not at {goal} within {timeout:?}", names.len());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `service scale -d SERVICE=want`, then seconds until `datapath lb ls` on every node lists
/// `want` active backends on the service's VIP frontend (TCP); each node polled by its own
/// thread, so the figure is the slowest node's.
fn scale_until_every_lb(lab: &Lab, service: &str, want: usize) -> Result<f64> {
    let n1 = lab.node("n1");
    let t0 = Instant::now();
    nb(n1, &["service", "scale", "-d", &format!("{service}={want}")])?;
    let results: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lab
            .nodes()
            .iter()
            .map(|node| {
                scope.spawn(move || -> Result<f64> {
                    loop {
                        if vip_backends(node, service).unwrap_or(0) >= want {
                            return Ok(t0.elapsed().as_secs_f64());
                        }
                        if t0.elapsed() > Duration::from_secs(120) {
                            bail!("{}: {service} has not {want} backends after 120 s", node.short_name());
                        }
                        // every 100 ms: each `lb ls` reads all of the node's datapath maps under
                        // the lock the load balancer's programming takes, so ten pollers at 50 Hz
                        // slowed down what they measured, the more the more services
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("poller panicked")))).collect()
    });
    let mut worst = 0.0f64;
    for r in results {
        worst = worst.max(r?);
    }
    Ok(worst)
}

/// Active backends of `service`'s TCP VIP frontend, as `datapath lb ls` on `node` lists them.
fn vip_backends(node: &Node, service: &str) -> Result<usize> {
    let out = node.netbee(&["datapath", "lb", "ls", "--format", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    let f = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["Service"] == service && f["Kind"] == "vip" && f["Frontend"].as_str().unwrap_or("").ends_with("tcp")
        })
        .context("no VIP frontend")?;
    Ok(f["Backends"].as_array().into_iter().flatten().filter(|b| b["State"] == "active").count())
}

/// `etcdctl` against the lab's etcd, from inside its namespace.
fn etcdctl(lab: &Lab) -> std::process::Command {
    let mut c = lab.etcd_ns(0).cmd("etcdctl");
    c.env("ETCDCTL_API", "3").args(["--endpoints", "10.77.0.2:2379"]);
    c
}

/// The lab's etcd process: the one whose command line names the lab's data directory.
fn etcd_pid(lab: &Lab) -> Result<u32> {
    let data = format!("--data-dir={}", lab.dir().join("e1").display());
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == data.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!("no etcd process with {data}")
}

/// Keys under /netbee and the database size in bytes.
fn etcd_size(lab: &Lab) -> Result<(usize, f64)> {
    let out = etcdctl(lab).args(["get", "--prefix", "/netbee", "--keys-only"]).output()?;
    let keys = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count();
    let out = etcdctl(lab).args(["endpoint", "status", "-w", "json"]).output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("etcdctl endpoint status")?;
    let db = v[0]["Status"]["dbSize"].as_f64().context("no dbSize")?;
    Ok((keys, db))
}

/// An `etcdctl watch --prefix /netbee -w json` in the background: what one daemon's watch sees.
struct EtcdWatch {
    child: Child,
    out: PathBuf,
}

#[derive(Clone, Copy)]
struct WatchCount(u64, u64);

impl std::ops::Sub for WatchCount {
    type Output = WatchCount;
    fn sub(self, o: WatchCount) -> WatchCount {
        WatchCount(self.0.saturating_sub(o.0), self.1.saturating_sub(o.1))
    }
}

impl EtcdWatch {
    fn start(lab: &Lab) -> Result<(EtcdWatch, WatchCount)> {
        let out = lab.dir().join("scale-watch.json");
        let file = std::fs::File::create(&out)?;
        let child = etcdctl(lab)
            .args(["watch", "--prefix", "/netbee", "-w", "json"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("etcdctl watch")?;
        std::thread::sleep(Duration::from_millis(500));
        let w = EtcdWatch { child, out };
        let c = w.count()?;
        Ok((w, c))
    }

    /// Events so far, and the bytes of their keys and values.
    fn count(&self) -> Result<WatchCount> {
        let mut s = String::new();
        std::fs::File::open(&self.out)?.read_to_string(&mut s)?;
        let (mut events, mut bytes) = (0u64, 0u64);
        // one JSON object per watch response; a partly written last line is skipped
        for v in s.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            for e in v["Events"].as_array().into_iter().flatten() {
                events += 1;
                let kv = &e["kv"];
                bytes += b64_len(kv["key"].as_str().unwrap_or("")) + b64_len(kv["value"].as_str().unwrap_or(""));
            }
        }
        Ok(WatchCount(events, bytes))
    }
}

impl EtcdWatch {
    /// Events so far per key prefix (`/netbee/KIND/`), most first: who writes at rest.
    fn by_prefix(&self) -> Result<String> {
        let mut s = String::new();
        std::fs::File::open(&self.out)?.read_to_string(&mut s)?;
        let mut n: HashMap<String, u64> = HashMap::new();
        for v in s.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            for e in v["Events"].as_array().into_iter().flatten() {
                let key = b64_decode(e["kv"]["key"].as_str().unwrap_or(""));
                let prefix: String = key.split_inclusive('/').take(3).collect();
                *n.entry(prefix).or_default() += 1;
            }
        }
        let mut v: Vec<(String, u64)> = n.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Ok(v.iter().map(|(k, c)| format!("{k} {c}")).collect::<Vec<_>>().join(", "))
    }
}

/// A base64 string decoded as text (keys are text).
fn b64_decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().take_while(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else { continue };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decoded length of a base64 string (etcdctl's JSON carries keys and values in base64).
fn b64_len(s: &str) -> u64 {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(pad) as u64
}
