//! The benchmark scenarios, one module each, listed in [`ALL`]. A scenario builds its own lab,
//! measures netbee and its baselines alternately for `ctx.rounds` rounds and returns its metrics;
//! the lab (namespaces, daemons, servers) is dropped when it returns, also on error.
//!
//! Adding a scenario: write a module with `pub fn run(ctx: &Ctx) -> Result<Vec<Metric>>`, then
//! give its entry in [`ALL`] `run: Some(module::run)`. Entries with `run: None` are reported as
//! "not yet available" (never with numbers).

pub mod control_plane;
pub mod forwarding_rate;
pub mod overlay;
pub mod publish_cost;
pub mod published_port;
pub mod routing_mesh;
pub mod same_node;
pub mod scale;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use netbee_lab::{Lab, Node};

use crate::report::Metric;

pub struct Ctx {
    pub quick: bool,
    pub rounds: usize,
}

impl Ctx {
    /// Length of one throughput/latency/load measurement.
    pub fn duration(&self) -> Duration {
        if self.quick { Duration::from_secs(1) } else { Duration::from_secs(6) }
    }

    pub fn round_banner(&self, scenario: &str, round: usize) {
        println!("  {scenario}: round {}/{}", round + 1, self.rounds);
    }
}

pub type RunScenario = fn(&Ctx) -> Result<Vec<Metric>>;

pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub run: Option<RunScenario>,
    /// Why `run` is None.
    pub pending: &'static str,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "same-node",
        description: "container↔container on one node: iperf3 throughput (1 and 2 streams) and sockperf \
                      TCP ping-pong latency; netbee vs a Linux bridge with iptables loaded (docker's model \
                      minus NAT) and vs a bare veth pair (the physical limit)",
        run: Some(same_node::run),
        pending: "",
    },
    Scenario {
        name: "published-port",
        description: "new connections per second and latency from an external client to a published port \
                      (wrk, 2 threads, 50 connections, `Connection: close`, nginx answering 200); netbee vs \
                      iptables DNAT+MASQUERADE behind a Linux bridge and vs a socat userland proxy; and \
                      netbee again with a `netbee monitor` attached (the monitor's cost) and while its \
                      /metrics is scraped every second (the scrape's cost)",
        run: Some(published_port::run),
        pending: "",
    },
    Scenario {
        name: "publish-cost",
        description: "wall time to publish port N when N-1 are published (N up to 10,000): `netbee run -d -p` \
                      vs appending one DNAT rule with iptables (nf_tables backend), iptables-legacy, and nft",
        run: Some(publish_cost::run),
        pending: "",
    },
    Scenario {
        name: "routing-mesh",
        description: "ingress round robin from an external client through one node to 6 nginx backends on 3 \
                      nodes: wrk new conn/s and p99 (`Connection: close`), fairness max/min share over sequential \
                      connections; netbee's routing mesh vs iptables `statistic --mode nth` DNAT+MASQUERADE \
                      (kube-proxy's model) and haproxy `mode tcp` round robin",
        run: Some(routing_mesh::run),
        pending: "",
    },
    Scenario {
        name: "overlay",
        description: "container↔container across two nodes over an overlay network: iperf3 throughput (1 stream) \
                      and sockperf TCP ping-pong p50/p99; netbee's eBPF VXLAN overlay vs a Linux bridge + kernel \
                      VXLAN device per node (docker overlay's model)",
        run: Some(overlay::run),
        pending: "",
    },
    Scenario {
        name: "control-plane",
        description: "time to create 100 containers, daemon restart-to-ready with 100 containers, daemon RSS \
                      idle with 100 containers, time to create a network, scale a service 1 → 40 (absolute \
                      values); time to create 100 image containers, and `run -d` of an image container beside \
                      the host-binary `run -d host` measured alternately; through the Engine API (docker \
                      CLI), `docker run -d` and `docker service create` until all tasks run, each beside \
                      the same through netbee's CLI, alternately",
        run: Some(control_plane::run),
        pending: "",
    },
    Scenario {
        name: "forwarding-rate",
        description: "packets per second the datapath alone forwards on one core: 60-byte UDP and TCP SYN \
                      frames (a new flow each, or one established flow) from an AF_PACKET generator pinned \
                      to CPU 0, forwarded on CPU 1 (RPS), counted and dropped by a tc counter at the \
                      receiver; netbee's published port and routing mesh (tasks on another node) vs \
                      iptables DNAT (docker), iptables statistic nth (kube-proxy) and the bare lab wire",
        run: Some(forwarding_rate::run),
        pending: "",
    },
    Scenario {
        name: "scale",
        description: "cost per operation early vs late as a node and a cluster fill up: 1,000 containers with \
                      10 published ports and 11 DNS names each on one node (`run -d` time and daemon CPU, \
                      port publish, `ps`, DNS answer latency at ~11,000 names), and services on a 10-node \
                      swarm (create time, every node's load balancer after `service scale`, RSS, idle CPU, \
                      etcd keys and size, watch events and bytes per update, `service ls`)",
        run: Some(scale::run),
        pending: "",
    },
];

/// A lab with one node `n1` running a netbee daemon and, if `external`, a client `x1`.
pub fn netbee_lab(name: &str, external: bool) -> Result<Lab> {
    let mut lab = Lab::new(name)?;
    lab.add_node("n1")?;
    if external {
        lab.add_external("x1")?;
    }
    lab.node("n1").start_daemon()?;
    Ok(lab)
}

/// A scratch directory inside the lab's own directory (removed with the lab).
pub fn scratch(lab: &Lab, name: &str) -> Result<PathBuf> {
    let d = lab.dir().join("bench").join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// `netbee ARGS` on `node`, trimmed stdout.
pub fn nb(node: &Node, args: &[&str]) -> Result<String> {
    Ok(node.netbee(args)?.trim().to_string())
}
