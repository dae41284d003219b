//! `published-port`: an external client opening new connections to a port published on a node
//! (`docker run -p 8080:80`), each carrying one short HTTP request — the load a web service
//! behind a published port sees.
//!
//! Measures connections per second and request latency (p50, p99) with wrk (2 threads, 50
//! connections, `Connection: close`, so every request is a new connection through the
//! publishing machinery) against nginx answering 200 "ok". netbee translates on the uplink with
//! tc programs; the baselines are iptables DNAT + MASQUERADE to a container behind a Linux bridge
//! (docker's model; brief: netbee "well above") and a socat userland proxy (docker-proxy's model;
//! brief: "far above"). Each system runs on its own lab node, all reached from the same external
//! client over the lab's underlay.
//!
//! The flow monitor's cost: each round also measures netbee with a `netbee monitor` attached
//! (drops and load-balancing decisions, every new connection one rate-limited event), right
//! after netbee alone; the ratio netbee / `netbee+monitor` is what listening costs. Likewise
//! `netbee+scraped`: netbee while its `/metrics` (`--metrics-addr`) is fetched every second, as
//! Prometheus would (each scrape walks the conntrack table and reads every counter map).

use std::time::Duration;

use anyhow::{Context, Result};
use netbee_lab::Lab;

use super::{Ctx, nb, scratch};
use crate::baselines::{container_behind_bridge, iptables_dnat, socat_proxy};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{Place, Server, check};
use crate::tools::{WRK_LUA, parse_wrk, write_nginx_conf};

const HOST_PORT: u16 = 8080;
/// netbee measured while a `netbee monitor` is attached.
const MONITORED: &str = "netbee+monitor";
/// netbee measured while its metrics are scraped every second.
const SCRAPED: &str = "netbee+scraped";
/// Where n1's daemon serves /metrics (inside its namespace).
const METRICS_ADDR: &str = "127.0.0.1:9464";
const NGINX_PORT: u16 = 80;

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let mut lab = Lab::new("bench-published-port")?;
    lab.add_node("n1")?;
    lab.add_node("b1")?;
    lab.add_node("b2")?;
    lab.add_external("x1")?;
    let dir = scratch(&lab, "published-port")?;
    let n1 = lab.node("n1");
    n1.set_daemon_args(&["--metrics-addr", METRICS_ADDR]);
    n1.start_daemon()?;

    // netbee: nginx in a container on a user network, published on 8080.
    let conf = write_nginx_conf(&dir.join("nginx-netbee"), NGINX_PORT)?;
    let conf_s = conf.to_string_lossy().to_string();
    nb(n1, &["network", "create", "bench"])?;
    let port_spec = format!("{HOST_PORT}:{NGINX_PORT}");
    nb(
        n1,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "bench",
            "-p",
            &port_spec,
            "host",
            "nginx",
            "-c",
            &conf_s,
            "-g",
            "daemon off;",
        ],
    )?;
    Place::Container { node: n1, name: "web".into() }.wait_listening(NGINX_PORT, Duration::from_secs(10))?;

    let mut servers: Vec<Server> = Vec::new();
    // Baseline (a): iptables DNAT on node b1 to nginx in a bridged container.
    let b1 = lab.node("b1");
    let (c1, c1_ip) = container_behind_bridge(&lab, b1, "b1c", 1)?;
    servers.push(nginx_in(&c1, &dir.join("nginx-iptables"))?);
    iptables_dnat(b1, HOST_PORT, &c1_ip, NGINX_PORT, "10.88.1.0/24")?;
    // Baseline (b): socat on node b2 to nginx in a bridged container.
    let b2 = lab.node("b2");
    let (c2, c2_ip) = container_behind_bridge(&lab, b2, "b2c", 2)?;
    servers.push(nginx_in(&c2, &dir.join("nginx-socat"))?);
    servers.push(socat_proxy(b2, HOST_PORT, &c2_ip, NGINX_PORT, &dir.join("socat.log"))?);
    wait_node_listening(b2, HOST_PORT)?;

    let x1 = lab.external("x1");
    let lua = dir.join("close.lua");
    std::fs::write(&lua, WRK_LUA)?;
    let targets = [(NETBEE, n1.addr()), ("iptables", b1.addr()), ("socat", b2.addr())];
    let wrk = |addr: std::net::Ipv4Addr, secs: u64| -> Result<crate::tools::WrkResult> {
        let mut c = x1.cmd("wrk");
        c.args(["-t2", "-c50", &format!("-d{secs}s"), "-s"]).arg(&lua).arg(format!("http://{addr}:{HOST_PORT}/"));
        let out = check(c, Duration::from_secs(secs + 30))?;
        parse_wrk(&out)
    };
    // Every path answers before anything is timed; one short warm-up each.
    for (system, addr) in &targets {
        let ok = x1
            .sh(&format!("curl -s -m 5 http://{addr}:{HOST_PORT}/"))
            .with_context(|| format!("{system}: first request"))?;
        anyhow::ensure!(ok.trim() == "ok", "{system}: unexpected answer {ok:?}");
        wrk(*addr, 1).with_context(|| format!("{system}: wrk warm-up"))?;
    }

    let defs = vec![
        MetricDef::new("cps", "new connections/s", "conn/s", Better::Higher)
            .vs("iptables", "> 1 (well above)")
            .vs("socat", "≫ 1 (far above)")
            .vs(MONITORED, "≈ 1 (monitor cost)")
            .vs(SCRAPED, "≈ 1 (scrape cost)"),
        MetricDef::new("p50", "request latency p50", "ms", Better::Lower)
            .vs("iptables", "≥ 1")
            .vs("socat", "> 1")
            .vs(MONITORED, "≈ 1")
            .vs(SCRAPED, "≈ 1"),
        MetricDef::new("p99", "request latency p99", "ms", Better::Lower)
            .vs("iptables", "≥ 1")
            .vs("socat", "> 1")
            .vs(MONITORED, "≈ 1")
            .vs(SCRAPED, "≈ 1"),
        MetricDef::new("errors", "wrk socket errors per run", "count", Better::Lower)
            .vs("iptables", "—")
            .vs("socat", "—")
            .vs(MONITORED, "—")
            .vs(SCRAPED, "—"),
    ];
    let mut col = Collector::new("published-port", defs);
    let secs = ctx.duration().as_secs();
    for round in 0..ctx.rounds {
        ctx.round_banner("published-port", round);
        for s in &mut servers {
            s.check_alive()?;
        }
        for (system, addr) in &targets {
            let r = wrk(*addr, secs).with_context(|| format!("{system}: wrk"))?;
            col.add("cps", system, r.per_second());
            col.add("p50", system, r.p50_ms);
            col.add("p99", system, r.p99_ms);
            col.add("errors", system, r.errors as f64);
        }
        for (system, watcher) in [(MONITORED, Watcher::monitor(n1)?), (SCRAPED, Watcher::scraper(n1)?)] {
            let r = wrk(n1.addr(), secs).with_context(|| format!("{system}: wrk"))?;
            drop(watcher);
            col.add("cps", system, r.per_second());
            col.add("p50", system, r.p50_ms);
            col.add("p99", system, r.p99_ms);
            col.add("errors", system, r.errors as f64);
        }
    }
    drop(servers);
    Ok(col.finish())
}

/// What watches n1 while it is measured; stopped when dropped.
struct Watcher(std::process::Child);

impl Watcher {
    /// A `netbee monitor` (every kind, JSON) reading as an operator's would.
    fn monitor(n: &netbee_lab::Node) -> Result<Watcher> {
        let child = n
            .cmd(&netbee_lab::netbee_bin().to_string_lossy())
            .args(["monitor", "--json"])
            .env("NETBEE_HOST", format!("unix://{}", n.socket().display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting netbee monitor")?;
        // the monitor is attached once its request is answered: well within this
        std::thread::sleep(Duration::from_millis(500));
        Ok(Watcher(child))
    }

    /// A scrape of the daemon's /metrics every second, as Prometheus's would; the first one
    /// must answer.
    fn scraper(n: &netbee_lab::Node) -> Result<Watcher> {
        let url = format!("http://{METRICS_ADDR}/metrics");
        let first = n.sh(&format!("curl -sf -m 5 {url}")).context("scraping netbee's metrics")?;
        anyhow::ensure!(first.contains("netbee_conntrack_entries"), "no netbee metrics at {url}");
        let child = n
            .cmd("sh")
            .args(["-c", &format!("while :; do curl -sf -m 2 -o /dev/null {url}; sleep 1; done")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the metrics scraper")?;
        Ok(Watcher(child))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_in(ns: &crate::sys::PlainNs, dir: &std::path::Path) -> Result<Server> {
    let conf = write_nginx_conf(dir, NGINX_PORT)?;
    let mut c = ns.cmd("nginx");
    c.arg("-c").arg(&conf).args(["-g", "daemon off;"]);
    let s = Server::spawn(c, &dir.join("nginx.log"))?;
    Place::Ns(ns.clone()).wait_listening(NGINX_PORT, Duration::from_secs(10))?;
    Ok(s)
}

fn wait_node_listening(node: &netbee_lab::Node, port: u16) -> Result<()> {
    netbee_lab::wait_until(Duration::from_secs(10), &format!("a listener on {port} in {}", node.name()), || {
        node.sh(&format!("ss -Hltn 'sport = :{port}' | grep -q .")).is_ok()
    })
}
