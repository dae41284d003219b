//! `control-plane`: what operators feel of the daemon itself — how fast it creates containers,
//! how fast it is back after a crash with a full node, and what it costs in memory.
//!
//! Measures, on one node: the wall time to create 100 containers one after the other
//! (`netbee run -d --network bench sleep 600`, CLI spawn to exit each; quick mode: 20); the time
//! from starting a SIGKILLed daemon to `netbee ps` answering, with those containers running
//! (readiness is polled every 50 ms by the lab, so ±50 ms); the daemon's VmRSS idle with them;
//! and the time of `netbee network create`. No baseline: absolute values, target from the
//! project brief "100 containers ≤ 10 s".

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, nb, netbee_lab};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{netbee_cmd, time_cmd};

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let count: usize = if ctx.quick { 20 } else { 100 };
    let lab = netbee_lab("bench-control-plane", false)?;
    let n1 = lab.node("n1");
    nb(n1, &["network", "create", "bench"])?;

    let defs = vec![
        MetricDef::new("create", format!("create {count} containers, sequential"), "s", Better::Lower).target(if count == 100 {
            "≤ 10 s".to_string()
        } else {
            format!("≤ {:.0} s (10 s per 100)", 10.0 * count as f64 / 100.0)
        }),
        MetricDef::new("restart", format!("daemon restart to ready, {count} containers"), "s", Better::Lower).target("—"),
        MetricDef::new("rss", format!("daemon RSS idle, {count} containers"), "MiB", Better::Lower).target("—"),
        MetricDef::new("netcreate", "network create", "ms", Better::Lower).target("—"),
    ];
    let mut col = Collector::new("control-plane", defs);
    for round in 0..ctx.rounds {
        ctx.round_banner("control-plane", round);
        let t0 = Instant::now();
        for i in 0..count {
            let mut c = netbee_cmd(n1);
            c.args(["run", "-d", "--name", &format!("c{i}"), "--network", "bench", "sleep", "600"]);
            time_cmd(c).with_context(|| format!("creating container {i}"))?;
        }
        col.add("create", NETBEE, t0.elapsed().as_secs_f64());

        // Idle RSS: let the daemon settle after the burst.
        std::thread::sleep(Duration::from_secs(if ctx.quick { 1 } else { 3 }));
        let pid = n1.daemon_pid().context("daemon not running")?;
        col.add("rss", NETBEE, vm_rss_kib(pid)? / 1024.0);

        n1.kill_daemon()?;
        let t0 = Instant::now();
        n1.start_daemon()?;
        let ps = loop {
            if let Ok(out) = n1.netbee(&["ps", "-q"]) {
                break out;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("netbee ps did not answer within 60 s of the restart");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        col.add("restart", NETBEE, t0.elapsed().as_secs_f64());
        let running = ps.lines().filter(|l| !l.trim().is_empty()).count();
        if running != count {
            bail!("after the restart `netbee ps -q` lists {running} containers, expected {count}");
        }

        for k in 0..3 {
            let name = format!("net{round}x{k}");
            let mut c = netbee_cmd(n1);
            c.args(["network", "create", &name]);
            col.add("netcreate", NETBEE, 1e3 * time_cmd(c)?);
            nb(n1, &["network", "rm", &name])?;
        }

        let names: Vec<String> = (0..count).map(|i| format!("c{i}")).collect();
        let mut args = vec!["rm", "-f"];
        args.extend(names.iter().map(String::as_str));
        nb(n1, &args)?;
    }
    Ok(col.finish())
}

fn vm_rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
