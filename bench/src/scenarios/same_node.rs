//! `same-node`: two containers on one node talking to each other — the path every
//! microservice call between co-located containers takes.
//!
//! Measures TCP throughput (iperf3, 1 and 2 parallel streams, receiver side) and request/response
//! latency (sockperf TCP ping-pong, p50 and p99). netbee's path is `tc_from_container` redirecting
//! straight into the peer veth (`bpf_redirect_peer`); the baselines are a Linux bridge with
//! iptables loaded in the bridge's namespace (docker's model minus NAT: the brief asks for
//! throughput ≥ it and latency clearly below it) and a bare veth pair (the physical limit, which
//! netbee can only approach: ratios ≤ 1 are expected there and it carries no target).

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Ctx, nb, netbee_lab, scratch};
use crate::baselines::{Pair, linux_bridge_pair, veth_pair};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{Place, Server, check, iperf3_client};
use crate::tools::{iperf3_gbps, sockperf_p50_p99};

const SOCKPERF_PORT: u16 = 11111;
const IPERF_PORT: u16 = 5201;
/// The ping-pong client and server share one fixed CPU for every system: whether the scheduler
/// happens to place two processes that wake each other on one vCPU or on two (a cross-vCPU wakeup
/// goes through the hypervisor, 40-300 µs here) costs more than any datapath difference and would
/// otherwise decide the p50.
const CLIENT_CPU: &str = "1";
const SERVER_CPU: &str = "1";

struct Target<'a> {
    system: &'static str,
    client: Place<'a>,
    server_ip: String,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let lab = netbee_lab("bench-same-node", false)?;
    let node = lab.node("n1");
    let logs = scratch(&lab, "same-node")?;

    // netbee: a user network with a server container (iperf3 + sockperf) and a client container.
    nb(node, &["network", "create", "bench"])?;
    let server_cmd = format!(
        "iperf3 -s -p {IPERF_PORT} & exec taskset -c {SERVER_CPU} sockperf sr --tcp -i 0.0.0.0 -p {SOCKPERF_PORT}"
    );
    nb(node, &["run", "-d", "--name", "srv", "--network", "bench", "host", "bash", "-c", &server_cmd])?;
    nb(node, &["run", "-d", "--name", "cli", "--network", "bench", "host", "sleep", "infinity"])?;
    let srv = Place::Container { node, name: "srv".into() };
    srv.wait_listening(IPERF_PORT, Duration::from_secs(10))?;
    srv.wait_listening(SOCKPERF_PORT, Duration::from_secs(10))?;
    let mut targets = vec![Target {
        system: NETBEE,
        client: Place::Container { node, name: "cli".into() },
        server_ip: node.container_ip("srv", "bench")?,
    }];

    // Baselines: same servers in plain namespaces.
    let mut servers: Vec<Server> = Vec::new();
    for (system, pair) in [("bridge", linux_bridge_pair(&lab)?), ("veth", veth_pair(&lab)?)] {
        let Pair { client, server, server_ip } = pair;
        let mut iperf = server.cmd("iperf3");
        iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
        servers.push(Server::spawn(iperf, &logs.join(format!("{system}-iperf3.log")))?);
        let mut sp = server.cmd("taskset");
        sp.args(["-c", SERVER_CPU, "sockperf", "sr", "--tcp", "-i", &server_ip, "-p", &SOCKPERF_PORT.to_string()]);
        servers.push(Server::spawn(sp, &logs.join(format!("{system}-sockperf.log")))?);
        let place = Place::Ns(server);
        place.wait_listening(IPERF_PORT, Duration::from_secs(10))?;
        place.wait_listening(SOCKPERF_PORT, Duration::from_secs(10))?;
        targets.push(Target { system, client: Place::Ns(client), server_ip });
    }

    let defs = vec![
        MetricDef::new("tput1", "throughput, 1 stream", "Gbit/s", Better::Higher)
            .vs("bridge", "≥ 1 (≥ bridge)")
            .vs("veth", "— (physical limit)"),
        MetricDef::new("tput2", "throughput, 2 streams", "Gbit/s", Better::Higher)
            .vs("bridge", "≥ 1 (≥ bridge)")
            .vs("veth", "— (physical limit)"),
        MetricDef::new("p50", "TCP ping-pong latency p50", "µs", Better::Lower)
            .vs("bridge", "> 1 (clearly below bridge)")
            .vs("veth", "— (physical limit)"),
        MetricDef::new("p99", "TCP ping-pong latency p99", "µs", Better::Lower)
            .vs("bridge", "> 1 (clearly below bridge)")
            .vs("veth", "— (physical limit)"),
    ];
    let mut col = Collector::new("same-node", defs);
    let t = ctx.duration().as_secs().to_string();
    let deadline = ctx.duration() + Duration::from_secs(30);
    for round in 0..ctx.rounds {
        ctx.round_banner("same-node", round);
        for s in &mut servers {
            s.check_alive()?;
        }
        // One system at a time, each measurement in turn, so noise hits all systems alike.
        for tg in &targets {
            for (key, streams) in [("tput1", "1"), ("tput2", "2")] {
                let iperf = || {
                    let mut c = tg.client.cmd("iperf3");
                    c.args(["-c", &tg.server_ip, "-p", &IPERF_PORT.to_string(), "-t", &t, "-P", streams, "-J"]);
                    c
                };
                let out =
                    iperf3_client(iperf, deadline).with_context(|| format!("{}: iperf3 -P {streams}", tg.system))?;
                col.add(key, tg.system, iperf3_gbps(&out)?);
            }
            let mut c = tg.client.cmd("taskset");
            c.args([
                "-c",
                CLIENT_CPU,
                "sockperf",
                "pp",
                "--tcp",
                "-i",
                &tg.server_ip,
                "-p",
                &SOCKPERF_PORT.to_string(),
                "-t",
                &t,
            ]);
            let out = check(c, deadline).with_context(|| format!("{}: sockperf pp", tg.system))?;
            let (p50, p99) = sockperf_p50_p99(&out)?;
            col.add("p50", tg.system, p50);
            col.add("p99", tg.system, p99);
        }
    }
    drop(servers);
    Ok(col.finish())
}
