//! `routing-mesh`: an external client opening new connections to a port published cluster-wide
//! (`netbee service create --replicas 6 --publish 80:80`), entering through one node (n1) and
//! balanced over 6 backends spread over 3 nodes — the ingress of a replicated web service.
//!
//! Measures, from an external client on the underlay: new connections per second and request
//! latency p99 with wrk (2 threads, 50 connections, `Connection: close`: every request is a new
//! connection through the balancer, as in `published-port`), and fairness, the largest over the
//! smallest number of requests the 6 backends answered out of N sequential new connections
//! (N = 3,000; 600 with `--quick`) made by a small client in this binary. Every backend is nginx
//! answering `$hostname $server_addr $remote_addr`, so the answers name the backend (netbee tasks
//! have their own hostnames, baseline backends their own addresses) and show whether it saw the
//! client's address (printed, not a metric).
//!
//! netbee: a 3-node swarm (`netbee_lab::swarm_lab_with`, daemons with `--mesh-routing native`:
//! the nodes share the underlay's L2 segment, as the baseline's routed pod subnets assume), the
//! service's 6 tasks spread by the scheduler (checked: all 3 nodes run some), entered through
//! n1's address. `netbee-tunnel`: the same in a second swarm with the default `--mesh-routing
//! tunnel` (VXLAN between nodes), on its own underlay with its own external client. Baselines, in the
//! same topology (3 more lab nodes b1-b3 on the same underlay, no netbee, 2 backends per node
//! behind a Linux bridge, pod subnets routed between nodes), entered through b1: iptables
//! `statistic --mode nth` DNAT round robin with MASQUERADE (kube-proxy's NodePort model) on port
//! 80, and haproxy `mode tcp` `balance roundrobin` on port 8080.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use netbee_lab::{Node, Ns, wait_until};

use super::{Ctx, nb, scratch};
use crate::baselines::{haproxy_roundrobin, iptables_statistic_nth, routed_pod_network};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{Place, Server, check};
use crate::tools::{BACKEND_ID_BODY, WRK_LUA, http_get_line, max_min_share, parse_wrk, write_nginx_conf_body};

const REPLICAS: usize = 6;
const PORT: u16 = 80;
const HAPROXY_PORT: u16 = 8080;

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let mut lab =
        netbee_lab::swarm_lab_with("bench-routing-mesh", &["n1", "n2", "n3"], &["x1"], &["--mesh-routing", "native"])?;
    for b in ["b1", "b2", "b3"] {
        lab.add_node(b)?;
    }
    // the default mode (VXLAN between nodes) in a second swarm on its own underlay
    let tunnel_lab = netbee_lab::swarm_lab("bench-mesh-tunnel", &["n1", "n2", "n3"], &["x1"])?;
    let dir = scratch(&lab, "routing-mesh")?;
    let n1 = lab.node("n1");
    for (lab, what) in [(&lab, "native"), (&tunnel_lab, "tunnel")] {
        mesh_service(lab.node("n1"), &dir.join(format!("nginx-netbee-{what}")))?;
    }

    // Baselines: the same 6 nginx backends as namespaces on b1-b3 (2 each), entered through b1.
    let (b1, b2, b3) = (lab.node("b1"), lab.node("b2"), lab.node("b3"));
    let backends = routed_pod_network(&lab, &[b1, b2, b3], REPLICAS / 3)?;
    let mut servers: Vec<Server> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let d = dir.join(format!("nginx-backend{i}"));
        let conf = write_nginx_conf_body(&d, PORT, BACKEND_ID_BODY)?;
        let mut c = b.ns.cmd("nginx");
        c.arg("-c").arg(&conf).args(["-g", "daemon off;"]);
        servers.push(Server::spawn(c, &d.join("nginx.log"))?);
        Place::Ns(b.ns.clone()).wait_listening(PORT, Duration::from_secs(10))?;
    }
    iptables_statistic_nth(b1, PORT, &backends, PORT, &dir)?;
    servers.push(haproxy_roundrobin(b1, HAPROXY_PORT, &backends, PORT, &dir)?);
    wait_node_listening(b1, HAPROXY_PORT)?;

    let lua = dir.join("close.lua");
    std::fs::write(&lua, WRK_LUA)?;
    let (x1, tx1) = (lab.external("x1"), tunnel_lab.external("x1"));
    let targets: [(&str, SocketAddr, &Ns); 4] = [
        (NETBEE, SocketAddr::new(n1.addr().into(), PORT), x1),
        ("netbee-tunnel", SocketAddr::new(tunnel_lab.node("n1").addr().into(), PORT), tx1),
        ("iptables-nth", SocketAddr::new(b1.addr().into(), PORT), x1),
        ("haproxy", SocketAddr::new(b1.addr().into(), HAPROXY_PORT), x1),
    ];
    let wrk = |client: &Ns, addr: SocketAddr, secs: u64| -> Result<crate::tools::WrkResult> {
        let mut c = client.cmd("wrk");
        c.args(["-t2", "-c50", &format!("-d{secs}s"), "-s"]).arg(&lua).arg(format!("http://{addr}/"));
        parse_wrk(&check(c, Duration::from_secs(secs + 30))?)
    };
    let fairness_n: usize = if ctx.quick { 600 } else { 3000 };
    let spread = |client: &Ns, addr: SocketAddr, n: usize| -> Result<Spread> {
        let client_ip = client.addr().to_string();
        client.run(move || sequential_spread(addr, n, &client_ip))
    };
    // Every path answers with all 6 backends before anything is timed; one short warm-up each.
    for (system, addr, client) in &targets {
        let mut last = String::new();
        wait_until(Duration::from_secs(20), &format!("{system} answering on {addr}"), || {
            let r = client.run({
                let addr = *addr;
                move || http_get_line(addr, Duration::from_secs(2)).map_err(|e| format!("{e:#}"))
            });
            r.map_err(|e| last = e).is_ok()
        })
        .with_context(|| {
            let ps = nb(n1, &["service", "ps", "web"]).unwrap_or_default();
            let local = nb(n1, &["ps", "-a"]).unwrap_or_default();
            format!("last error: {last}\nservice ps web:\n{ps}\nps -a on n1:\n{local}")
        })?;
        let s = spread(client, *addr, 4 * REPLICAS).with_context(|| format!("{system}: first requests"))?;
        ensure!(
            s.counts.len() == REPLICAS,
            "{system}: {} backends answered 24 requests, expected {REPLICAS}: {:?}",
            s.counts.len(),
            s.counts
        );
        wrk(client, *addr, 1).with_context(|| format!("{system}: wrk warm-up"))?;
    }

    let defs = vec![
        MetricDef::new("cps", "new connections/s through one node", "conn/s", Better::Higher)
            .vs("netbee-tunnel", "— (native vs tunnel)")
            .vs("iptables-nth", "> 1")
            .vs("haproxy", "> 1"),
        MetricDef::new("p99", "request latency p99", "ms", Better::Lower)
            .vs("netbee-tunnel", "—")
            .vs("iptables-nth", "≥ 1")
            .vs("haproxy", "≥ 1"),
        MetricDef::new("fair", format!("fairness max/min share of 6 backends, {fairness_n} conns"), "×", Better::Lower)
            .vs("netbee-tunnel", "netbee ≤ 1.05")
            .vs("iptables-nth", "netbee ≤ 1.05")
            .vs("haproxy", "netbee ≤ 1.05"),
        MetricDef::new("errors", "wrk socket errors per run", "count", Better::Lower)
            .vs("netbee-tunnel", "—")
            .vs("iptables-nth", "—")
            .vs("haproxy", "—"),
    ];
    let mut col = Collector::new("routing-mesh", defs);
    let secs = ctx.duration().as_secs();
    for round in 0..ctx.rounds {
        ctx.round_banner("routing-mesh", round);
        for s in &mut servers {
            s.check_alive()?;
        }
        for (system, addr, client) in &targets {
            let r = wrk(client, *addr, secs).with_context(|| format!("{system}: wrk"))?;
            col.add("cps", system, r.per_second());
            col.add("p99", system, r.p99_ms);
            col.add("errors", system, r.errors as f64);
            let s = spread(client, *addr, fairness_n).with_context(|| format!("{system}: fairness"))?;
            if s.failed > 0 || s.counts.len() != REPLICAS {
                bail!(
                    "{system}: {} of {fairness_n} sequential connections failed, backends answering: {:?}",
                    s.failed,
                    s.counts
                );
            }
            let preserved = s.client_seen as f64 / fairness_n as f64;
            println!(
                "    routing-mesh   {system:<12} shares {:?}; backends saw the client address in {:.0} %",
                sorted(&s.counts),
                100.0 * preserved
            );
            col.add("fair", system, max_min_share(&s.counts, REPLICAS));
        }
    }
    drop(servers);
    Ok(col.finish())
}

/// A 6-replica nginx service published on 80 through the routing mesh of the swarm led by `n1`,
/// its tasks spread over all 3 nodes (checked).
fn mesh_service(n1: &Node, conf_dir: &std::path::Path) -> Result<()> {
    let conf = write_nginx_conf_body(conf_dir, PORT, BACKEND_ID_BODY)?;
    let conf_s = conf.to_string_lossy().to_string();
    let replicas = REPLICAS.to_string();
    let publish = format!("{PORT}:{PORT}");
    nb(
        n1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            &replicas,
            "--publish",
            &publish,
            "--",
            "host",
            "nginx",
            "-c",
            &conf_s,
            "-g",
            "daemon off;",
        ],
    )?;
    let want = format!("{REPLICAS}/{REPLICAS}");
    wait_until(Duration::from_secs(60), &format!("service web at {want}"), || n1.service_replicas("web") == want)?;
    let placed = n1.service_running_tasks("web")?;
    println!("  netbee tasks: {}", placed.iter().map(|(t, n)| format!("{t}@{n}")).collect::<Vec<_>>().join(", "));
    for node in ["n1", "n2", "n3"] {
        ensure!(placed.iter().any(|(_, n)| n == node), "no task of web on {node}: {placed:?}");
    }
    Ok(())
}

struct Spread {
    /// Requests answered per backend ("hostname address").
    counts: HashMap<String, usize>,
    failed: usize,
    /// Answers whose backend saw the external client's own address as the peer (printed only).
    client_seen: usize,
}

/// `n` sequential new connections to `addr`, each one GET; which backend answered each. Runs on
/// a thread inside the client's namespace.
fn sequential_spread(addr: SocketAddr, n: usize, client_ip: &str) -> Result<Spread> {
    let mut s = Spread { counts: HashMap::new(), failed: 0, client_seen: 0 };
    for _ in 0..n {
        match http_get_line(addr, Duration::from_secs(3)) {
            Ok(line) => {
                // "$hostname $server_addr $remote_addr": the backend is hostname + address.
                let mut f = line.split_whitespace();
                let id = format!("{} {}", f.next().unwrap_or(""), f.next().unwrap_or(""));
                if f.next() == Some(client_ip) {
                    s.client_seen += 1;
                }
                *s.counts.entry(id).or_default() += 1;
            }
            Err(_) => s.failed += 1,
        }
    }
    Ok(s)
}

fn sorted(counts: &HashMap<String, usize>) -> Vec<usize> {
    let mut v: Vec<usize> = counts.values().copied().collect();
    v.sort_unstable();
    v
}

fn wait_node_listening(node: &Node, port: u16) -> Result<()> {
    wait_until(Duration::from_secs(10), &format!("a listener on {port} in {}", node.name()), || {
        node.sh(&format!("ss -Hltn 'sport = :{port}' | grep -q .")).is_ok()
    })
}
