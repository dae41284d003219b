//! `overlay`: two containers on different nodes talking over an overlay network — the path of
//! every call between services of a cluster whose tasks landed on different machines.
//!
//! Measures TCP throughput (iperf3, 1 stream, receiver side) and request/response latency
//! (sockperf TCP ping-pong, p50 and p99) from a client container on one node to a server
//! container on the other. netbee: a 2-node swarm (`netbee_lab::swarm_lab`), `netbee network
//! create --driver overlay ov`, the containers started with `netbee run -d --network ov` and
//! driven with `netbee exec` (eBPF VXLAN encap/decap). Baseline: docker's overlay model, built on
//! two more lab nodes of the same underlay — a Linux bridge with a kernel VXLAN device (VNI 42,
//! port 4789, unicast to the other node) on each, and a container namespace with MTU 1450
//! plugged into each bridge (brief: throughput ≥ it).

use std::time::Duration;

use anyhow::{Context, Result};
use netbee_lab::wait_until;

use super::{Ctx, nb, scratch};
use crate::baselines::{Pair, vxlan_bridge_pair};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{Place, Server, check, iperf3_client};
use crate::tools::{iperf3_gbps, sockperf_p50_p99};

const SOCKPERF_PORT: u16 = 11111;
const IPERF_PORT: u16 = 5201;

struct Target<'a> {
    system: &'static str,
    client: Place<'a>,
    server_ip: String,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let mut lab = netbee_lab::swarm_lab("bench-overlay", &["n1", "n2"], &[])?;
    lab.add_node("v1")?;
    lab.add_node("v2")?;
    let logs = scratch(&lab, "overlay")?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));

    // netbee: server container on n2, client container on n1, both on overlay `ov`.
    nb(n1, &["network", "create", "--driver", "overlay", "ov"])?;
    wait_until(Duration::from_secs(15), "ov known on n2", || {
        n2.netbee(&["network", "ls"]).map(|s| s.contains("ov")).unwrap_or(false)
    })?;
    let server_cmd = format!("iperf3 -s -p {IPERF_PORT} & exec sockperf sr --tcp -i 0.0.0.0 -p {SOCKPERF_PORT}");
    nb(n2, &["run", "-d", "--name", "srv", "--network", "ov", "host", "bash", "-c", &server_cmd])?;
    nb(n1, &["run", "-d", "--name", "cli", "--network", "ov", "host", "sleep", "infinity"])?;
    let srv = Place::Container { node: n2, name: "srv".into() };
    srv.wait_listening(IPERF_PORT, Duration::from_secs(10))?;
    srv.wait_listening(SOCKPERF_PORT, Duration::from_secs(10))?;
    let srv_ip = n2.container_ip("srv", "ov")?;
    wait_until(Duration::from_secs(15), "cli reaches srv over the overlay", || {
        n1.exec_ok("cli", &["ping", "-c", "1", "-W", "1", &srv_ip])
    })?;
    let mut targets =
        vec![Target { system: NETBEE, client: Place::Container { node: n1, name: "cli".into() }, server_ip: srv_ip }];

    // Baseline: kernel VXLAN + bridge on v1/v2, same servers in the server namespace.
    let mut servers: Vec<Server> = Vec::new();
    let Pair { client, server, server_ip } = vxlan_bridge_pair(&lab, lab.node("v1"), lab.node("v2"))?;
    let mut iperf = server.cmd("iperf3");
    iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
    servers.push(Server::spawn(iperf, &logs.join("vxlan-iperf3.log"))?);
    let mut sp = server.cmd("sockperf");
    sp.args(["sr", "--tcp", "-i", &server_ip, "-p", &SOCKPERF_PORT.to_string()]);
    servers.push(Server::spawn(sp, &logs.join("vxlan-sockperf.log"))?);
    let place = Place::Ns(server);
    place.wait_listening(IPERF_PORT, Duration::from_secs(10))?;
    place.wait_listening(SOCKPERF_PORT, Duration::from_secs(10))?;
    targets.push(Target { system: "vxlan", client: Place::Ns(client), server_ip });

    let defs = vec![
        MetricDef::new("tput1", "throughput across nodes, 1 stream", "Gbit/s", Better::Higher).vs("vxlan", "≥ 1"),
        MetricDef::new("p50", "TCP ping-pong latency p50", "µs", Better::Lower).vs("vxlan", "≥ 1"),
        MetricDef::new("p99", "TCP ping-pong latency p99", "µs", Better::Lower).vs("vxlan", "≥ 1"),
        MetricDef::new("retr", "iperf3 retransmits per run", "count", Better::Lower).vs("vxlan", "—"),
    ];
    let mut col = Collector::new("overlay", defs);
    let t = ctx.duration().as_secs().to_string();
    let deadline = ctx.duration() + Duration::from_secs(30);
    // A short unrecorded warm-up per system (neighbour/FDB entries, first-flow setup).
    for tg in &targets {
        let mut c = tg.client.cmd("iperf3");
        c.args(["-c", &tg.server_ip, "-p", &IPERF_PORT.to_string(), "-t", "1", "-J"]);
        check(c, deadline).with_context(|| format!("{}: iperf3 warm-up", tg.system))?;
    }
    for round in 0..ctx.rounds {
        ctx.round_banner("overlay", round);
        for s in &mut servers {
            s.check_alive()?;
        }
        for tg in &targets {
            let iperf = || {
                let mut c = tg.client.cmd("iperf3");
                c.args(["-c", &tg.server_ip, "-p", &IPERF_PORT.to_string(), "-t", &t, "-J"]);
                c
            };
            let out = iperf3_client(iperf, deadline).with_context(|| format!("{}: iperf3", tg.system))?;
            col.add("tput1", tg.system, iperf3_gbps(&out)?);
            col.add("retr", tg.system, crate::tools::iperf3_retransmits(&out)?);
            let mut c = tg.client.cmd("sockperf");
            c.args(["pp", "--tcp", "-i", &tg.server_ip, "-p", &SOCKPERF_PORT.to_string(), "-t", &t]);
            let out = check(c, deadline).with_context(|| format!("{}: sockperf pp", tg.system))?;
            let (p50, p99) = sockperf_p50_p99(&out)?;
            col.add("p50", tg.system, p50);
            col.add("p99", tg.system, p99);
        }
    }
    drop(servers);
    Ok(col.finish())
}
