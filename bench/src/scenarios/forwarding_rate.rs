//! `forwarding-rate`: packets per second the datapath alone forwards on one core, the way load
//! balancers are judged (Katran, Cilium): no connection is completed, nothing answers, only
//! minimum-size frames (60 bytes) arrive at a node and are counted where they end up.
//!
//! Generator: [`crate::packets::blast`], an AF_PACKET sender on the external client x1's `eth0`,
//! pinned to CPU 0, sending for a fixed time as fast as that core can: UDP datagrams or TCP SYNs
//! with (a) a new flow in every frame (64,512 source ports × 64 source addresses
//! 10.77.0.128-191, continued from one run to the next so no 5-tuple comes back within 4 million
//! frames) or (b) one fixed 5-tuple, an established flow once its first frame passed.
//!
//! The forwarding core: every frame x1 sends is a veth transmit, which queues the frame to a
//! CPU's backlog; by default the sender's own CPU, so generator and datapath would share it.
//! RPS (receive packet steering) works on veth: x1's port on the underlay bridge gets
//! `rps_cpus = 2`, so every frame from x1 is queued to CPU 1, and everything after that — the
//! underlay bridge, the node's `eth0`, netbee's tc programs or netfilter, the delivery into the
//! container, a second node for the routing mesh (further veth transmits stay on the CPU that
//! runs them) — runs in CPU 1's softirq. CPU 0 only runs the generator and the first veth
//! transmit. The machine has 2 vCPUs shared with other work, so CPU 1 is not isolated from other
//! processes; what is measured:
//!
//! - `delivered pps`: frames counted at the receiver per second of sending;
//! - `pps per forwarding core`: delivered pps ÷ the share of CPU 1's time spent in (soft)irq over
//!   the run (from `/proc/stat`), i.e. frames per second of forwarding-core time. When CPU 1 is
//!   saturated both agree; when other work takes CPU 1's time, or the generator cannot fill it,
//!   the second stays comparable.
//!
//! The receiver ([`crate::sink::Sink`]): a counting drop on the TCX ingress of the receiving
//! `eth0` (the container's, the backend's, or the bare node's), the same fifteen instructions behind
//! every system. Nothing answers, so no RST or ICMP travels back.
//!
//! Systems, all in one lab on one underlay, all entered from x1:
//! - netbee: a 2-node swarm (`--mesh-routing native`): (a) a container on n1 published with
//!   `-p 8080:80 -p 8080:80/udp`, frames to n1:8080; (b) a service of 2 replicas constrained to
//!   n2, published with the routing mesh on 8081 (tcp and udp), frames to n1:8081, so every frame
//!   crosses n1 and the underlay to a task on n2;
//! - iptables-dnat (docker's model) on b1: DNAT tcp+udp 8080 to a container behind a Linux bridge;
//! - iptables-nth (kube-proxy's NodePort model) on b2: `statistic --mode nth` over 2 pods on b3
//!   (routed pod subnets), KUBE-MARK-MASQ + MASQUERADE;
//! - bare-veth (the ceiling): frames to b4's own address, counted on b4's `eth0` — the lab's wire
//!   (veth, underlay bridge, veth) with nothing forwarding.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use netbee_lab::{Node, Ns, wait_until};
use serde_json::Value;

use super::{Ctx, nb, scratch};
use crate::baselines::{
    container_behind_bridge, iptables_dnat_protos, iptables_statistic_nth_protos, routed_pod_network,
};
use crate::packets::{Flows, Proto, Stream, blast, parse_mac};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sink::{Sink, XdpPass};
use crate::sys::{cpu_ticks, ip};

const GENERATOR_CPU: usize = 0;
const FORWARDING_CPU: usize = 1;
const PUBLISHED_PORT: u16 = 8080;
const MESH_PORT: u16 = 8081;
const TARGET_PORT: u16 = 80;
const MESH_REPLICAS: usize = 2;
const DNAT: &str = "iptables-dnat";
const NTH: &str = "iptables-nth";
const CEILING: &str = "bare-veth";
const XDP_PROBE: &str = "netbee+xdp-pass";

/// Where frames go for one system: the next hop on the wire, the address and port, and the
/// counters at the receiving end.
struct Target {
    system: &'static str,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    dport: u16,
    sinks: Vec<Sink>,
}

/// One packet kind: protocol and flow pattern.
#[derive(Clone, Copy)]
struct Kind {
    key: &'static str,
    proto: Proto,
    new_flows: bool,
}

const KINDS: [Kind; 3] = [
    Kind { key: "udp", proto: Proto::Udp, new_flows: true },
    Kind { key: "syn", proto: Proto::Syn, new_flows: true },
    Kind { key: "est", proto: Proto::Udp, new_flows: false },
];

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames counted at the receiver per second of sending.
    pub delivered_pps: f64,
    /// Frames the first hop accepted per second (what the generator offered).
    pub offered_pps: f64,
    /// Share of the forwarding CPU's time in (soft)irq during the run.
    pub forwarding_busy: f64,
}

impl Sample {
    pub fn of(delivered: u64, accepted: u64, seconds: f64, forwarding_busy: f64) -> Sample {
        let per_s = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
        Sample { delivered_pps: per_s(delivered), offered_pps: per_s(accepted), forwarding_busy }
    }

    /// Delivered frames per second of forwarding-core time (0 when the core did no work).
    pub fn per_core_pps(&self) -> f64 {
        if self.forwarding_busy > 0.0 { self.delivered_pps / self.forwarding_busy } else { 0.0 }
    }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    ensure!(
        cpus > FORWARDING_CPU,
        "forwarding-rate needs 2 CPUs (generator and forwarding core), this machine has {cpus}"
    );
    let mut lab =
        netbee_lab::swarm_lab_with("bench-forwarding-rate", &["n1", "n2"], &["x1"], &["--mesh-routing", "native"])?;
    for b in ["b1", "b2", "b3", "b4"] {
        lab.add_node(b)?;
    }
    let dir = scratch(&lab, "forwarding-rate")?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let x1 = lab.external("x1");

    // netbee (a): a container published on n1, tcp and udp.
    nb(n1, &["network", "create", "bench"])?;
    let tcp = format!("{PUBLISHED_PORT}:{TARGET_PORT}");
    let udp = format!("{PUBLISHED_PORT}:{TARGET_PORT}/udp");
    nb(n1, &["run", "-d", "--name", "sink", "--network", "bench", "-p", &tcp, "-p", &udp, "host", "sleep", "1000000"])?;
    let published = Target {
        system: NETBEE,
        dst_mac: mac_of(n1.name())?,
        dst: n1.addr(),
        dport: PUBLISHED_PORT,
        sinks: vec![Sink::attach(&container_netns(n1, "sink")?, "eth0")?],
    };

    // netbee (b): the routing mesh, entered at n1, tasks on n2. A task joins the balancers once
    // it listens on its tcp target port: socat listens (and is never reached: the sink drops).
    let replicas = MESH_REPLICAS.to_string();
    let tcp = format!("{MESH_PORT}:{TARGET_PORT}");
    let udp = format!("{MESH_PORT}:{TARGET_PORT}/udp");
    nb(
        n1,
        &[
            "service",
            "create",
            "--name",
            "mesh",
            "--replicas",
            &replicas,
            "--constraint",
            "node.hostname==n2",
            "--publish",
            &tcp,
            "--publish",
            &udp,
            "--",
            "host",
            "socat",
            &format!("TCP-LISTEN:{TARGET_PORT},fork,reuseaddr"),
            "SYSTEM:true",
        ],
    )?;
    let want = format!("{MESH_REPLICAS}/{MESH_REPLICAS}");
    wait_until(Duration::from_secs(60), &format!("service mesh at {want}"), || n1.service_replicas("mesh") == want)?;
    let tasks = n1.service_running_tasks("mesh")?;
    ensure!(tasks.iter().all(|(_, node)| node == "n2"), "mesh tasks not all on n2: {tasks:?}");
    // the tasks' containers on n2 are named `<task>.<id>`
    let mut mesh_sinks = Vec::new();
    for line in nb(n2, &["ps", "--format", "json"])?.lines() {
        let v: Value = serde_json::from_str(line).context("ps --format json")?;
        let name = v["Names"].as_str().unwrap_or_default();
        if name.starts_with("mesh.") {
            mesh_sinks.push(Sink::attach(&container_netns(n2, name)?, "eth0")?);
        }
    }
    ensure!(mesh_sinks.len() == MESH_REPLICAS, "found {} task containers of mesh on n2", mesh_sinks.len());
    let mesh =
        Target { system: NETBEE, dst_mac: published.dst_mac, dst: n1.addr(), dport: MESH_PORT, sinks: mesh_sinks };

    // iptables-dnat on b1: docker's published port, tcp and udp, to a bridged container.
    let b1 = lab.node("b1");
    let (c1, c1_ip) = container_behind_bridge(&lab, b1, "b1c", 1)?;
    iptables_dnat_protos(b1, &["tcp", "udp"], PUBLISHED_PORT, &c1_ip, TARGET_PORT, "10.88.1.0/24")?;
    let dnat = Target {
        system: DNAT,
        dst_mac: mac_of(b1.name())?,
        dst: b1.addr(),
        dport: PUBLISHED_PORT,
        sinks: vec![Sink::attach(&netns_path(&c1.name), "eth0")?],
    };

    // iptables-nth on b2: kube-proxy's NodePort over the 2 pods of b3 (b2's own pods unused).
    let (b2, b3) = (lab.node("b2"), lab.node("b3"));
    let pods = routed_pod_network(&lab, &[b2, b3], MESH_REPLICAS)?;
    let remote: Vec<_> = pods.into_iter().filter(|p| p.addr.starts_with("10.88.2.")).collect();
    ensure!(remote.len() == MESH_REPLICAS, "expected {MESH_REPLICAS} pods on b3");
    iptables_statistic_nth_protos(b2, &["tcp", "udp"], MESH_PORT, &remote, TARGET_PORT, &dir)?;
    // MASQUERADE gives every new flow its own source port toward its pod: 2 pods × 64k ports.
    // With the default timeouts of unanswered flows (SYN_SENT 120 s, UDP 30 s) a flood of new
    // flows uses them up within seconds, and from then on b2 forwards nothing (seen in the first
    // full run: 0 pps in round 2). At 1 s (this namespace only) the live flows stay far below
    // that, so what is measured is kube-proxy's cost per packet, not its port exhaustion.
    b2.sh("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_syn_sent=1 net.netfilter.nf_conntrack_udp_timeout=1")?;
    let nth = Target {
        system: NTH,
        dst_mac: mac_of(b2.name())?,
        dst: b2.addr(),
        dport: MESH_PORT,
        sinks: remote.iter().map(|p| Sink::attach(&netns_path(&p.ns.name), "eth0")).collect::<Result<_>>()?,
    };

    // bare-veth on b4: the wire alone.
    let b4 = lab.node("b4");
    let ceiling = Target {
        system: CEILING,
        dst_mac: mac_of(b4.name())?,
        dst: b4.addr(),
        dport: TARGET_PORT,
        sinks: vec![Sink::attach(&netns_path(b4.name()), "eth0")?],
    };

    // The underlay bridge must not flood: nodes that only receive would age out of its table.
    let underlay = lab.underlay().name().to_string();
    for node in ["n1", "n2", "b1", "b2", "b3", "b4"] {
        let mac = ip(&["-n", lab.node(node).name(), "-j", "link", "show", "eth0"])?;
        let mac = json_mac(&mac)?;
        check_ok("bridge", &["-n", &underlay, "fdb", "replace", &mac, "dev", node, "master", "static"])?;
    }
    // The forwarding core: frames from x1 are queued to CPU 1's backlog (RPS on x1's bridge port).
    let rps_mask = format!("{:x}", 1u32 << FORWARDING_CPU);
    check_ok(
        "ip",
        &["netns", "exec", &underlay, "sh", "-c", &format!("echo {rps_mask} > /sys/class/net/x1/queues/rx-0/rps_cpus")],
    )?;
    let x1_mac = mac_of(x1.name())?;

    let secs = if ctx.quick { Duration::from_millis(500) } else { Duration::from_secs(4) };
    let mut next_flow = [0u64; 5];
    let sample = |t: &Target, kind: Kind, first: &mut u64| -> Result<Sample> {
        let stream = Stream {
            proto: kind.proto,
            src_mac: x1_mac,
            dst_mac: t.dst_mac,
            dst: t.dst,
            dport: t.dport,
            flows: if kind.new_flows {
                Flows::New { first_source: Ipv4Addr::new(10, 77, 0, 128), sources: 64 }
            } else {
                Flows::Fixed { source: x1.addr(), sport: 40000 }
            },
        };
        let s = measure(x1, stream, first, &t.sinks, secs)?;
        // a path that delivers nothing is broken, not slow
        ensure!(
            s.delivered_pps > 0.0,
            "{} (port {}): nothing arrived of {:.0} {} frames/s",
            t.system,
            t.dport,
            s.offered_pps,
            kind.key
        );
        Ok(s)
    };

    let defs = vec![
        def("pub-udp", "published port, UDP, a new flow per packet", &[DNAT, CEILING]),
        def("pub-syn", "published port, TCP SYN, a new flow per packet", &[DNAT, CEILING]),
        def("mesh-udp", "routing mesh to another node, UDP, a new flow per packet", &[NTH, CEILING]),
        def("mesh-syn", "routing mesh to another node, TCP SYN, a new flow per packet", &[NTH, CEILING]),
        def("est-udp", "published port, one established UDP flow", &[DNAT, CEILING]),
    ];
    let mut defs_all = defs.clone();
    for d in &defs {
        defs_all.push(raw_def(d));
    }
    // NETBEE_BENCH_XDP_PROBE=1: also netbee's published port with an XDP_PASS program on the
    // uplinks (what enabling XDP costs before it does anything; issue 18 item 2)
    let xdp_probe = std::env::var_os("NETBEE_BENCH_XDP_PROBE").is_some();
    if xdp_probe {
        for d in defs_all.iter_mut().filter(|d| d.key.starts_with("pub-") || d.key.starts_with("est-")) {
            *d = d.clone().vs(XDP_PROBE, "— (XDP entry fee)");
        }
    }
    let mut col = Collector::new("forwarding-rate", defs_all);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("    forwarding-rate: load before the rounds: {}", load.trim());
    for round in 0..ctx.rounds {
        ctx.round_banner("forwarding-rate", round);
        for kind in KINDS {
            // alternated within the round: netbee, its baselines, the ceiling, per packet kind
            let (pub_key, mesh_key) = match kind.key {
                "udp" => ("pub-udp", Some("mesh-udp")),
                "syn" => ("pub-syn", Some("mesh-syn")),
                _ => ("est-udp", None),
            };
            let mut record = |key: &str, system: &str, s: Sample| {
                println!(
                    "    forwarding-rate {:<13} {key:<8}: offered {:>9.0} pps, delivered {:>9.0} pps, forwarding core {:>3.0} % busy",
                    system,
                    s.offered_pps,
                    s.delivered_pps,
                    100.0 * s.forwarding_busy
                );
                col.add(key, system, s.per_core_pps());
                col.add(&format!("{key}-raw"), system, s.delivered_pps);
            };
            let s = sample(&published, kind, &mut next_flow[0])?;
            record(pub_key, published.system, s);
            if xdp_probe {
                // the same, with an XDP_PASS program on n1's uplink for this sample only
                let probe = XdpPass::attach(&netns_path(n1.name()), "eth0")?;
                let s = sample(&published, kind, &mut next_flow[0])?;
                drop(probe);
                record(pub_key, XDP_PROBE, s);
            }
            let s = sample(&dnat, kind, &mut next_flow[2])?;
            record(pub_key, dnat.system, s);
            if let Some(mesh_key) = mesh_key {
                let s = sample(&mesh, kind, &mut next_flow[1])?;
                record(mesh_key, mesh.system, s);
                let s = sample(&nth, kind, &mut next_flow[3])?;
                record(mesh_key, nth.system, s);
            }
            let s = sample(&ceiling, kind, &mut next_flow[4])?;
            record(pub_key, ceiling.system, s);
            if let Some(mesh_key) = mesh_key {
                record(mesh_key, ceiling.system, s);
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("    forwarding-rate: load after the rounds: {}", load.trim());
    drop((published, mesh, dnat, nth, ceiling));
    Ok(col.finish())
}

fn def(key: &'static str, what: &str, baselines: &[&'static str]) -> MetricDef {
    let mut d = MetricDef::new(key, format!("{what}: pps per forwarding core"), "pps", Better::Higher);
    for b in baselines {
        d = d.vs(b, if *b == CEILING { "< 1 (ceiling)" } else { "> 1" });
    }
    d
}

fn raw_def(d: &MetricDef) -> MetricDef {
    let mut r = MetricDef::new(
        format!("{}-raw", d.key),
        d.name.replace("pps per forwarding core", "delivered pps"),
        "pps",
        Better::Higher,
    );
    for (b, t) in &d.baselines {
        r = r.vs(b, t.clone());
    }
    r
}

/// Sends `stream` from x1 for `secs` (flows continuing at `*first`), and counts what `sinks`
/// received and how busy the forwarding CPU was.
fn measure(x1: &Ns, stream: Stream, first: &mut u64, sinks: &[Sink], secs: Duration) -> Result<Sample> {
    let count = || -> Result<u64> { sinks.iter().map(Sink::count).sum() };
    let c0 = count()?;
    let t0 = cpu_ticks(FORWARDING_CPU)?;
    let start = *first;
    let sent = x1.run(move || blast("eth0", &stream, start, secs, GENERATOR_CPU))?;
    let t1 = cpu_ticks(FORWARDING_CPU)?;
    *first = sent.next_index;
    // what is still in the forwarding CPU's backlog (at most netdev_max_backlog frames) lands
    std::thread::sleep(Duration::from_millis(100));
    let c1 = count()?;
    if sent.attempted > sent.accepted {
        println!("      ({} frames refused at the first hop)", sent.attempted - sent.accepted);
    }
    Ok(Sample::of(c1 - c0, sent.accepted, sent.seconds, t0.irq_share(&t1)))
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// The network namespace of a netbee container (its init process's).
fn container_netns(node: &Node, container: &str) -> Result<PathBuf> {
    let v = node.inspect(container)?;
    let pid = v["State"]["Pid"].as_u64().filter(|p| *p > 0).with_context(|| format!("{container} has no pid"))?;
    Ok(PathBuf::from(format!("/proc/{pid}/ns/net")))
}

fn mac_of(netns: &str) -> Result<[u8; 6]> {
    parse_mac(&json_mac(&ip(&["-n", netns, "-j", "link", "show", "eth0"])?)?)
}

/// The `address` of the first link in `ip -j link show` output.
fn json_mac(out: &str) -> Result<String> {
    let v: Value = serde_json::from_str(out).context("ip -j output is not JSON")?;
    v[0]["address"].as_str().map(str::to_string).with_context(|| format!("no address in {out}"))
}

fn check_ok(program: &str, args: &[&str]) -> Result<()> {
    let mut c = std::process::Command::new(program);
    c.args(args);
    crate::sys::check(c, Duration::from_secs(30))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let s = Sample::of(600_000, 900_000, 2.0, 0.75);
        assert!((s.delivered_pps - 300_000.0).abs() < 1e-6);
        assert!((s.offered_pps - 450_000.0).abs() < 1e-6);
        assert!((s.per_core_pps() - 400_000.0).abs() < 1e-6);
        assert_eq!(Sample::of(10, 10, 1.0, 0.0).per_core_pps(), 0.0);
        assert_eq!(Sample::of(10, 10, 0.0, 0.5).delivered_pps, 0.0);
    }

    #[test]
    fn mac_from_ip_json() {
        let out = r#"[{"ifindex":2,"ifname":"eth0","address":"02:42:ac:11:00:02","broadcast":"ff:ff:ff:ff:ff:ff"}]"#;
        assert_eq!(json_mac(out).unwrap(), "02:42:ac:11:00:02");
        assert!(json_mac("[]").is_err());
    }
}
