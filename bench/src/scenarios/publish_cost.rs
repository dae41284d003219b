//! `publish-cost`: how long publishing one more port takes when N-1 are already published, for
//! N = 1, 10, 100, 1000, 10000 (quick: 1, 10, 100) — whether the cost of `-p` stays flat as a
//! node serves thousands of ports (the brief: "flat as the number of published ports grows to
//! 10,000").
//!
//! netbee: the N-1 ports are held by `sleep` containers published with port ranges
//! (`-p A-B:A-B`, up to 1000 ports each); the timed operation is the whole
//! `netbee run -d -p P:80 sleep 600` (CLI spawn to exit, so it includes creating and starting
//! the container; "run without -p" at the smallest and largest N is reported alongside as the
//! reference for that part), then
//! the probe container is removed, untimed. Baselines (one lab node each, rules bulk-loaded with
//! `*-restore`/`nft -f`, untimed): `iptables -t nat -A PREROUTING ... -j DNAT` with the
//! nf_tables backend (this machine's `iptables`, what docker uses), the same with
//! `iptables-legacy`, and `nft add rule`. The timed add is followed by an untimed delete.
//! The `growth` rows compare cost(N max)/cost(1): the target is netbee ≤ 2.

use std::time::Duration;

use anyhow::{Context, Result};
use netbee_lab::{Lab, Node};

use super::{Ctx, nb, scratch};
use crate::baselines::{iptables_fill, iptables_rule_cmd, nft_add_rule_cmd, nft_delete_port, nft_fill};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{check, netbee_cmd, time_cmd};

const FILL_BASE: u16 = 10000;
const PROBE_BASE: u16 = 30000;
const RANGE_MAX: usize = 1000;
const BASELINES: [&str; 3] = ["iptables", "iptables-legacy", "nft"];

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let levels: &[usize] = if ctx.quick { &[1, 10, 100] } else { &[1, 10, 100, 1000, 10000] };
    let reps = if ctx.quick { 2 } else { 3 };
    let mut lab = Lab::new("bench-publish-cost")?;
    lab.add_node("n1")?;
    lab.add_node("pi")?;
    lab.add_node("pl")?;
    lab.add_node("pf")?;
    let dir = scratch(&lab, "publish-cost")?;
    let n1 = lab.node("n1");
    n1.start_daemon()?;
    let (pi, pl, pf) = (lab.node("pi"), lab.node("pl"), lab.node("pf"));

    let mut defs: Vec<MetricDef> = levels
        .iter()
        .map(|n| {
            let mut d = MetricDef::new(format!("n{n}"), format!("publish port N={n}"), "ms", Better::Lower);
            for b in BASELINES {
                d = d.vs(b, "— (see growth)");
            }
            d
        })
        .collect();
    let max = *levels.last().expect("levels");
    let mut growth = MetricDef::new("growth", format!("growth cost(N={max})/cost(N=1)"), "×", Better::Lower);
    for b in BASELINES {
        growth = growth.vs(b, "netbee ≤ 2 (flat)");
    }
    defs.push(growth);
    // The container create+start part of the netbee figures, at the smallest and largest N.
    for n in [levels[0], max] {
        defs.push(
            MetricDef::new(
                format!("noport{n}"),
                format!("netbee run -d without -p, N={n} (reference)"),
                "ms",
                Better::Lower,
            )
            .target("— (part of the netbee figure that is not publishing)"),
        );
    }
    let mut col = Collector::new("publish-cost", defs);

    let mut published = 0usize; // netbee ports held by fill containers
    let mut probe = PROBE_BASE;
    let mut fill_containers = 0usize;
    for &n in levels {
        println!("  publish-cost: filling to N-1 = {} published ports", n - 1);
        while published < n - 1 {
            let count = (n - 1 - published).min(RANGE_MAX);
            let lo = FILL_BASE as usize + published;
            let hi = lo + count - 1;
            let spec = if count == 1 { format!("{lo}:{lo}") } else { format!("{lo}-{hi}:{lo}-{hi}") };
            fill_containers += 1;
            nb(n1, &["run", "-d", "--name", &format!("fill{fill_containers}"), "-p", &spec, "host", "sleep", "100000"])
                .with_context(|| format!("publishing {spec}"))?;
            published += count;
        }
        let fill_ports = || FILL_BASE..FILL_BASE + (n as u16 - 1);
        iptables_fill(pi, "iptables", fill_ports(), &dir)?;
        iptables_fill(pl, "iptables-legacy", fill_ports(), &dir)?;
        nft_fill(pf, fill_ports(), &dir)?;

        let key = format!("n{n}");
        for round in 0..ctx.rounds {
            ctx.round_banner(&format!("publish-cost N={n}"), round);
            for _ in 0..reps {
                probe += 1;
                col.add(&key, NETBEE, 1e3 * netbee_publish(n1, probe)?);
                col.add(&format!("noport{n}"), NETBEE, 1e3 * netbee_noport(n1)?);
                for (system, node) in [("iptables", pi), ("iptables-legacy", pl)] {
                    let t = time_cmd(iptables_rule_cmd(node, system, "-A", probe))
                        .with_context(|| format!("{system} -A"))?;
                    col.add(&key, system, 1e3 * t);
                    check(iptables_rule_cmd(node, system, "-D", probe), Duration::from_secs(60))?;
                }
                let t = time_cmd(nft_add_rule_cmd(pf, probe)).context("nft add rule")?;
                col.add(&key, "nft", 1e3 * t);
                nft_delete_port(pf, probe)?;
            }
        }
    }
    let first = format!("n{}", levels[0]);
    let last = format!("n{max}");
    for system in std::iter::once(NETBEE).chain(BASELINES) {
        let med = |k: &str| crate::report::Stats::of(col.get(k, system)).map(|s| s.median);
        if let (Some(a), Some(b)) = (med(&first), med(&last)) {
            col.add("growth", system, b / a);
        }
    }
    Ok(col.finish())
}

/// Seconds for `netbee run -d -p <port>:80 sleep 600`; the probe is then removed (untimed).
fn netbee_publish(node: &Node, port: u16) -> Result<f64> {
    let mut c = netbee_cmd(node);
    let spec = format!("{port}:80");
    c.args(["run", "-d", "--name", "probe", "-p", &spec, "host", "sleep", "600"]);
    let t = time_cmd(c).context("netbee run -p")?;
    nb(node, &["rm", "-f", "probe"])?;
    Ok(t)
}

/// Seconds for `netbee run -d sleep 600` (the same minus publishing); removed afterwards.
fn netbee_noport(node: &Node) -> Result<f64> {
    let mut c = netbee_cmd(node);
    c.args(["run", "-d", "--name", "probe0", "host", "sleep", "600"]);
    let t = time_cmd(c).context("netbee run")?;
    nb(node, &["rm", "-f", "probe0"])?;
    Ok(t)
}
