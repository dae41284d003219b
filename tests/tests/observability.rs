//! Observability: Prometheus metrics scraped by a real Prometheus server, and the load-balancer,
//! conntrack and endpoint listings of `netbee datapath`.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use netbee_lab::{Lab, Node, Ns, http_hostname, netbee_bin, wait_until, whoami_field};
use serde_json::Value;

const METRICS_PORT: u16 = 9464;
const PROMETHEUS_PORT: u16 = 9090;

fn create_service(n: &Node, name: &str, extra: &[&str]) -> Result<()> {
    let bin = netbee_bin();
    let mut args = vec!["service", "create", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["host", bin.to_str().unwrap(), "whoami", "--port", "8080"]);
    n.netbee(&args)?;
    Ok(())
}

fn lb_ls(n: &Node) -> Result<Vec<Value>> {
    let out = n.netbee(&["datapath", "lb", "ls", "--format", "json"])?;
    let v: Value = serde_json::from_str(&out).context("lb ls output is not JSON")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Addresses (without port) of the active backends of `service`'s frontend of `kind` (and
/// `proto` in its frontend), as `lb ls` on `n` lists them.
fn active_backends(n: &Node, service: &str, kind: &str, proto: &str) -> Result<BTreeSet<String>> {
    let fronts = lb_ls(n)?;
    let f = fronts
        .iter()
        .find(|f| f["Service"] == service && f["Kind"] == kind && f["Frontend"].as_str().unwrap_or("").ends_with(proto))
        .ok_or_else(|| anyhow!("no {kind} frontend of {service} on {}: {fronts:?}", n.short_name()))?;
    Ok(f["Backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["State"] == "active")
        .map(|b| b["Address"].as_str().unwrap_or("").split(':').next().unwrap_or("").to_string())
        .collect())
}

/// The addresses on `network` of the running containers of `service`'s tasks, on every node.
fn task_addresses(lab: &Lab, service: &str, network: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for n in lab.nodes() {
        for id in n.netbee(&["ps", "-q"])?.lines().filter(|l| !l.is_empty()) {
            let v = n.inspect(id)?;
            if v["Name"].as_str().unwrap_or("").trim_start_matches('/').starts_with(&format!("{service}.")) {
                out.insert(n.container_ip(id, network)?);
            }
        }
    }
    Ok(out)
}

/// One HTTP GET to a `netbee whoami` from local port `port`: the hostname that answered.
fn http_hostname_from(port: u16, addr: SocketAddr) -> Result<String> {
    use std::{
        io::{Read as _, Write as _},
        os::fd::AsRawFd as _,
    };

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt};
    let SocketAddr::V4(v4) = addr else { bail!("IPv4 only") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::SendTimeout, &nix::sys::time::TimeVal::new(3, 0))?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).with_context(|| format!("connecting to {addr} from port {port}"))?;
    let mut s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    whoami_field(&body, "Hostname").ok_or_else(|| anyhow!("no whoami answer in {body:?}"))
}

/// A Prometheus server of the lab, killed (and waited for) when dropped, also when the test
/// fails; everything it writes is under the lab's directory.
struct Prometheus {
    child: Option<Child>,
    url: String,
    ns_name: String,
}

impl Prometheus {
    fn start(ns: &Ns, dir: &Path, targets: &[String]) -> Result<Prometheus> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: netbee\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let listen = format!("{}:{PROMETHEUS_PORT}", ns.addr());
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = ns
            .cmd("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/bin/prometheus (Debian package prometheus; cargo xtask setup installs it)")?;
        let p = Prometheus { child: Some(child), url: format!("http://{listen}"), ns_name: ns.name().to_string() };
        wait_until(Duration::from_secs(30), "prometheus ready", || {
            ns.sh(&format!("curl -sf -m 1 {}/-/ready", p.url)).is_ok()
        })?;
        Ok(p)
    }

    /// An instant PromQL query through the HTTP API: (labels, value) of each series.
    fn query(&self, ns: &Ns, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        assert_eq!(ns.name(), self.ns_name);
        let q = promql.replace('\'', "'\\''");
        let out = ns.sh(&format!("curl -sf -m 5 {}/api/v1/query --data-urlencode 'query={q}'", self.url))?;
        let v: Value = serde_json::from_str(&out).with_context(|| format!("prometheus answered {out:?}"))?;
        if v["status"] != "success" {
            bail!("query {promql:?} failed: {v}");
        }
        let mut series = Vec::new();
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let labels = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            let value: f64 = r["value"][1].as_str().unwrap_or("nan").parse()?;
            series.push((labels, value));
        }
        Ok(series)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Acceptance (a): a real Prometheus scrapes three nodes; after 600 connections through the
/// routing mesh to three tasks, PromQL gives 200 new connections per backend, and the nodes'
/// mesh connections received sum to 600.
#[test]
fn prometheus_counts_mesh_connections_per_backend_and_node() -> Result<()> {
    let metrics_addr = format!("0.0.0.0:{METRICS_PORT}");
    let lab =
        netbee_lab::swarm_lab_with("obsprom", &["n1", "n2", "n3"], &["x1", "x2"], &["--metrics-addr", &metrics_addr])?;
    let n1 = lab.node("n1");
    create_service(n1, "web", &["--replicas", "3", "--publish", "80:8080"])?;
    // every node balances over the three tasks (each programs its load balancer on its own pass)
    for n in lab.nodes() {
        wait_until(Duration::from_secs(20), &format!("{} balances over 3 tasks", n.short_name()), || {
            active_backends(n, "web", "mesh", "tcp").map(|b| b.len() == 3).unwrap_or(false)
        })?;
    }
    let targets: Vec<String> = lab.nodes().iter().map(|n| format!("{}:{METRICS_PORT}", n.addr())).collect();
    let x2 = lab.external("x2");
    let prom = Prometheus::start(x2, lab.dir(), &targets)?;
    wait_until(Duration::from_secs(20), "prometheus scrapes the three nodes", || {
        prom.query(x2, "up == 1").map(|s| s.len() == 3).unwrap_or(false)
    })?;

    // 600 new connections in blocks of three, the blocks rotating over the nodes: each node
    // receives a multiple of three, which its round robin spreads evenly over the three tasks.
    // Each from its own source port: the tasks see the client's own address, so two connections
    // through different nodes from one port reach a task with one 4-tuple, and the second can
    // meet the first's TIME_WAIT there; the client then resets and retries it, which the
    // datapath rightly counts as a second new flow (and balances anew).
    let addrs: Vec<SocketAddr> = lab.nodes().iter().map(|n| SocketAddr::from((n.addr(), 80))).collect();
    let (answers, failed) = lab.external("x1").run(move || {
        let (mut answers, mut failed) = (BTreeMap::<String, u64>::new(), Vec::new());
        for i in 0..600 {
            match http_hostname_from(20000 + i as u16, addrs[(i / 3) % 3]) {
                Ok(h) => *answers.entry(h).or_default() += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        (answers, failed)
    });
    assert!(failed.is_empty(), "failed connections: {failed:?}");
    if answers.values().any(|a| *a != 200) {
        for n in lab.nodes() {
            eprintln!("lb ls on {}:\n{}", n.short_name(), n.netbee(&["datapath", "lb", "ls"]).unwrap_or_default());
            eprintln!("stats on {}:\n{}", n.short_name(), n.netbee(&["datapath", "stats"]).unwrap_or_default());
        }
    }
    assert_eq!(answers.values().copied().collect::<Vec<_>>(), [200, 200, 200], "answers by task: {answers:?}");

    let per_backend = r#"sum by (backend) (netbee_service_backend_connections_total{service="web",kind="mesh"})"#;
    let received = "sum(netbee_mesh_connections_received_total)";
    let settled = wait_until(Duration::from_secs(20), "prometheus sees the 600 connections", || {
        prom.query(x2, received).map(|s| s.len() == 1 && s[0].1 == 600.0).unwrap_or(false)
            && prom.query(x2, per_backend).map(|s| s.iter().map(|x| x.1).sum::<f64>() == 600.0).unwrap_or(false)
    });
    let backends = prom.query(x2, per_backend)?;
    let by_node = prom.query(x2, "netbee_mesh_connections_received_total")?;
    settled.map_err(|e| anyhow!("{e}: per backend {backends:?}, received by node {by_node:?}"))?;
    assert_eq!(backends.len(), 3, "{backends:?}");
    for (labels, v) in &backends {
        assert_eq!(*v, 200.0, "backend {labels:?}: {backends:?}");
    }
    let sum: f64 = by_node.iter().map(|s| s.1).sum();
    assert_eq!((by_node.len(), sum), (3, 600.0), "mesh connections received by node: {by_node:?}");
    let by_instance: BTreeMap<String, f64> =
        by_node.iter().map(|(l, v)| (l.get("instance").cloned().unwrap_or_default(), *v)).collect();
    assert_eq!(by_instance.values().copied().collect::<Vec<_>>(), [201.0, 201.0, 198.0], "{by_instance:?}");

    // the other families a scrape carries, seen through Prometheus
    for q in [
        "netbee_conntrack_capacity",
        "netbee_conntrack_entries",
        r#"netbee_datapath_packets_total{counter="dnat_new"}"#,
        "netbee_datapath_drops_total",
        r#"netbee_tasks{state="running"}"#,
        r#"netbee_containers{state="running"}"#,
        "netbee_services",
        r#"netbee_networks{driver="overlay"}"#,
        "netbee_service_reconcile_duration_seconds_count",
        "netbee_etcd_request_duration_seconds_count",
        r#"netbee_operation_duration_seconds_count{operation="service_create"}"#,
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        let s = prom.query(x2, q)?;
        assert!(!s.is_empty(), "no series for {q}");
    }
    let tasks = prom.query(x2, r#"sum(netbee_tasks{state="running"})"#)?;
    assert_eq!(tasks.first().map(|t| t.1), Some(3.0), "running tasks over the nodes: {tasks:?}");
    let dnat = prom.query(x2, r#"sum(netbee_datapath_packets_total{counter="dnat_new"})"#)?;
    assert!(dnat.first().is_some_and(|d| d.1 >= 600.0), "{dnat:?}");
    drop(prom);
    assert!(lab.dir().join("prometheus/data").is_dir(), "prometheus keeps its data in the lab directory");
    Ok(())
}

/// Acceptance (d): `lb ls` after `service scale web=7` lists exactly the seven task addresses for
/// the mesh port and for the VIP; `ct ls` shows an open connection's entry with its backend.
#[test]
fn lb_ct_and_endpoint_listings_follow_the_service() -> Result<()> {
    use std::io::{Read as _, Write as _};
    let lab = netbee_lab::swarm_lab("obslb", &["n1", "n2", "n3"], &["x1"])?;
    let n1 = lab.node("n1");
    n1.netbee(&["network", "create", "--driver", "overlay", "app"])?;
    create_service(n1, "web", &["--replicas", "3", "--publish", "80:8080", "--network", "app"])?;
    n1.netbee(&["service", "scale", "web=7"])?;
    let tasks = task_addresses(&lab, "web", "app")?;
    assert_eq!(tasks.len(), 7, "{tasks:?}");
    for n in lab.nodes() {
        wait_until(Duration::from_secs(20), &format!("{} balances over the 7 tasks", n.short_name()), || {
            active_backends(n, "web", "mesh", "tcp").is_ok_and(|b| b == tasks)
                && active_backends(n, "web", "vip", "tcp").is_ok_and(|b| b == tasks)
                && active_backends(n, "web", "vip", "udp").is_ok_and(|b| b == tasks)
        })
        .map_err(|e| {
            anyhow!(
                "{e}: tasks {tasks:?}, mesh {:?}, vip {:?}",
                active_backends(n, "web", "mesh", "tcp"),
                active_backends(n, "web", "vip", "tcp")
            )
        })?;
    }
    // exactly: no other backend of any state, the mesh's with the target port, the VIP's any port
    let fronts = lb_ls(n1)?;
    let mesh = fronts.iter().find(|f| f["Service"] == "web" && f["Kind"] == "mesh").unwrap();
    assert_eq!(mesh["Frontend"], "*:80/tcp");
    let listed: BTreeSet<String> =
        mesh["Backends"].as_array().unwrap().iter().map(|b| b["Address"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, tasks.iter().map(|t| format!("{t}:8080")).collect::<BTreeSet<_>>());
    let vip = fronts.iter().find(|f| f["Service"] == "web" && f["Kind"] == "vip").unwrap();
    assert_eq!(vip["Network"], "app");
    assert_eq!(vip["Backends"].as_array().unwrap().len(), 7, "{vip}");
    for b in mesh["Backends"].as_array().unwrap() {
        assert!(b["Task"].as_str().unwrap().starts_with("web."), "{b}");
        assert!(["n1", "n2", "n3"].contains(&b["Node"].as_str().unwrap()), "{b}");
    }
    let table = n1.netbee(&["datapath", "lb", "ls"])?;
    assert!(table.starts_with("SERVICE") && table.contains("*:80/tcp") && table.contains("web.7"), "{table}");

    // a connection held open from outside: its flow, with the backend that answered
    let addr = SocketAddr::from((n1.addr(), 80));
    wait_until(Duration::from_secs(10), "mesh answers", || {
        lab.external("x1").run(move || http_hostname(addr)).is_ok()
    })?;
    let mut conn =
        lab.external("x1").run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
    let local = conn.local_addr()?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf)?;
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let answered_ips: Vec<String> =
        answer.lines().filter_map(|l| l.strip_prefix("IP: ")).map(|ip| ip.to_string()).collect();
    assert!(whoami_field(&answer, "Hostname").is_some(), "{answer}");
    let out = n1.netbee(&["datapath", "ct", "ls", "--service", "web", "--format", "json"])?;
    let flows: Value = serde_json::from_str(&out)?;
    let flow = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Source"] == local.to_string().as_str())
        .ok_or_else(|| anyhow!("no flow from {local} in {flows}"))?;
    assert_eq!(flow["Destination"], format!("{addr}").as_str(), "{flow}");
    assert_eq!(flow["Kind"], "dnat", "{flow}");
    assert_eq!(flow["Service"], "web", "{flow}");
    assert_eq!(flow["State"], "established", "{flow}");
    let backend = flow["Translated"].as_str().unwrap();
    let (backend_ip, backend_port) = backend.split_once(':').unwrap();
    assert_eq!(backend_port, "8080", "{flow}");
    assert!(tasks.contains(backend_ip), "{backend} is not a task: {tasks:?}");
    assert!(answered_ips.iter().any(|ip| ip == backend_ip), "the answer came from {answered_ips:?}, ct says {backend}");
    // --limit, and a service with no flows
    let one: Value = serde_json::from_str(&n1.netbee(&["datapath", "ct", "ls", "--limit", "1", "--format", "json"])?)?;
    assert_eq!(one.as_array().unwrap().len(), 1);
    let none: Value =
        serde_json::from_str(&n1.netbee(&["datapath", "ct", "ls", "--service", "nosuch", "--format", "json"])?)?;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let table = n1.netbee(&["datapath", "ct", "ls", "--service", "web"])?;
    assert!(table.contains(&local.to_string()) && table.contains(backend), "{table}");
    // lb ls counts the open connection against its backend
    let fronts = lb_ls(n1)?;
    let mesh = fronts.iter().find(|f| f["Service"] == "web" && f["Kind"] == "mesh").unwrap();
    let b = mesh["Backends"].as_array().unwrap().iter().find(|b| b["Address"] == backend).unwrap();
    assert!(b["Connections"].as_u64().unwrap() >= 1 && b["Established"].as_u64().unwrap() >= 1, "{b}");
    drop(conn);

    // endpoints: every task's interface, local on its node and remote on the others
    for n in lab.nodes() {
        let v: Value = serde_json::from_str(&n.netbee(&["datapath", "endpoints", "ls", "--format", "json"])?)?;
        let on_app: Vec<&Value> = v.as_array().unwrap().iter().filter(|e| e["Network"] == "app").collect();
        let addrs: BTreeSet<String> = on_app.iter().map(|e| e["Address"].as_str().unwrap().to_string()).collect();
        assert!(tasks.is_subset(&addrs), "{}: {addrs:?} lacks tasks {tasks:?}", n.short_name());
        for e in on_app.iter().filter(|e| tasks.contains(e["Address"].as_str().unwrap())) {
            if e["Scope"] == "local" {
                assert_eq!(e["Node"], n.short_name(), "{e}");
                assert!(e["Interface"].as_str().unwrap().starts_with("nbe"), "{e}");
                assert!(e["Container"].as_str().unwrap().starts_with("web."), "{e}");
            } else {
                assert_eq!(e["Scope"], "remote", "{e}");
                assert_ne!(e["Node"], n.short_name(), "{e}");
                assert!(["n1", "n2", "n3"].contains(&e["Node"].as_str().unwrap()), "{e}");
            }
        }
    }
    let table = n1.netbee(&["datapath", "endpoints", "ls"])?;
    assert!(table.starts_with("ADDRESS") && table.contains("app"), "{table}");
    Ok(())
}
