//! `control-plane`: what operators feel of the daemon itself — how fast it creates containers,
//! how fast it is back after a crash with a full node, and what it costs in memory.
//!
//! Measures, on one node: the wall time to create 100 containers one after the other
//! (`netbee run -d --network bench sleep 600`, CLI spawn to exit each; quick mode: 20); the time
//! from starting a SIGKILLed daemon to `netbee ps` answering, with those containers running
//! (readiness is polled every 50 ms by the lab, so ±50 ms); the daemon's VmRSS idle with them;
//! and the time of `netbee network create`. On a 3-node swarm: the time from `service scale
//! web=40` (from 1) until all 40 tasks answer through one node's routing-mesh port (40
//! consecutive new connections reach 40 distinct tasks; quick mode: 1 → 8). No baseline:
//! absolute values, targets from the project brief "100 containers ≤ 10 s, scale 1 → 40 ≤ 10 s".
//!
//! Image containers (the images issue, acceptance g), on the same node with the test image
//! `netbee-test/busybox:1` loaded: the wall time to create 100 of them one after the other
//! (`netbee run -d --network bench netbee-test/busybox:1 sleep 600`; quick mode: 20; target
//! ≤ 10 s), and the time of one such `run -d` (CLI spawn to exit) beside the host-binary
//! `run -d --network bench host sleep 600` of today, the two alternated (image first in even
//! pairs, host first in odd ones) so drift hits both alike: 20 pairs over the run (⌈20/rounds⌉
//! per round; quick mode: 5). The ratio is host/image (> 1 would mean the image container starts
//! faster); the gap is what an image root costs (overlayfs mount, pivot_root, /dev, /sys).
//!
//! Through the Engine API (the Docker Engine API issue, acceptance g), where the docker CLI is on
//! PATH: `docker run -d --network bench host sleep 600` beside `netbee run -d` of the same (CLI
//! spawn to exit, both from the machine's own namespace, alternated as above; the same pairs per
//! round), and on the swarm `docker service create -d --replicas 3 host sleep 600` beside `netbee
//! service create -d` of the same, each timed from the CLI's spawn until `service ls` shows 3/3
//! (polled the same way for both; 2 pairs per round, quick mode 1). Both CLIs speak the same API
//! on the same socket: the figures are what docker's client adds (its `/_ping`, the
//! `/distribution` lookup of `service create`) and that the Engine-API path is the fast path.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, nb, netbee_lab};
use crate::report::{Better, Collector, Metric, MetricDef, NETBEE};
use crate::sys::{netbee_cmd, time_cmd};

/// The image of the image-container measurements (loaded from `target/test-images/`).
const IMAGE: &str = "netbee-test/busybox:1";
/// The comparison system of the image `run -d`: today's host-binary container.
const HOST_BINARY: &str = "`run -d host` (host binary)";

/// The comparison system of the Engine-API metrics: the same operation through netbee's own CLI.
const NETBEE_CLI: &str = "netbee CLI";

/// `run -d` pairs (image, host binary) per round: 20 over a full run, 5 in quick mode.
fn run_pairs(ctx: &Ctx) -> usize {
    if ctx.quick { 5 } else { 20usize.div_ceil(ctx.rounds.max(1)) }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Metric>> {
    let count: usize = if ctx.quick { 20 } else { 100 };
    let lab = netbee_lab("bench-control-plane", false)?;
    let n1 = lab.node("n1");
    nb(n1, &["network", "create", "bench"])?;
    let archive = netbee_lab::test_image("busybox-1.tar");
    if !archive.is_file() {
        bail!("{} is missing: run `cargo xtask setup`", archive.display());
    }
    nb(n1, &["load", "-i", &archive.to_string_lossy()])?;

    let create_target = if count == 100 {
        "≤ 10 s".to_string()
    } else {
        format!("≤ {:.0} s (10 s per 100)", 10.0 * count as f64 / 100.0)
    };
    let pairs = run_pairs(ctx);
    let defs = vec![
        MetricDef::new("create", format!("create {count} containers, sequential"), "s", Better::Lower)
            .target(create_target.clone()),
        MetricDef::new(
            "createimg",
            format!("create {count} image containers ({IMAGE}), sequential"),
            "s",
            Better::Lower,
        )
        .target(create_target),
        MetricDef::new(
            "runimage",
            format!("`run -d` of an image container ({IMAGE}), {} runs", pairs * ctx.rounds),
            "ms",
            Better::Lower,
        )
        .vs(HOST_BINARY, "—"),
        MetricDef::new("restart", format!("daemon restart to ready, {count} containers"), "s", Better::Lower)
            .target("—"),
        MetricDef::new("rss", format!("daemon RSS idle, {count} containers"), "MiB", Better::Lower).target("—"),
        MetricDef::new("netcreate", "network create", "ms", Better::Lower).target("—"),
        MetricDef::new(
            "scale",
            format!("scale a service 1 → {} over 3 nodes until all answer", scale_to(ctx)),
            "s",
            Better::Lower,
        )
        .target(if ctx.quick { "—".to_string() } else { "≤ 10 s".to_string() }),
    ];
    let docker = if netbee_lab::docker_cli_present() {
        Some(netbee_lab::Docker::new(&lab, n1)?)
    } else {
        eprintln!("control-plane: the docker CLI is not on PATH: no Engine-API figures");
        None
    };
    let mut defs = defs;
    if docker.is_some() {
        defs.push(
            MetricDef::new(
                "dockerrun",
                format!("`docker run -d` (docker CLI, Engine API), {} runs", pairs * ctx.rounds),
                "ms",
                Better::Lower,
            )
            .vs(NETBEE_CLI, "—"),
        );
        defs.push(
            MetricDef::new(
                "dockersvc",
                format!("`docker service create -d --replicas 3` until 3/3, {} runs", svc_pairs(ctx) * ctx.rounds),
                "s",
                Better::Lower,
            )
            .vs(NETBEE_CLI, "—"),
        );
    }
    let mut col = Collector::new("control-plane", defs);
    for round in 0..ctx.rounds {
        ctx.round_banner("control-plane", round);
        let t0 = Instant::now();
        for i in 0..count {
            let mut c = netbee_cmd(n1);
            c.args(["run", "-d", "--name", &format!("c{i}"), "--network", "bench", "host", "sleep", "600"]);
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
        remove(n1, &names)?;

        // image containers: `count` in a row, then `run -d` alternated with the host binary
        let t0 = Instant::now();
        for i in 0..count {
            let mut c = netbee_cmd(n1);
            c.args(["run", "-d", "--name", &format!("i{i}"), "--network", "bench", IMAGE, "sleep", "600"]);
            time_cmd(c).with_context(|| format!("creating image container {i}"))?;
        }
        col.add("createimg", NETBEE, t0.elapsed().as_secs_f64());
        let names: Vec<String> = (0..count).map(|i| format!("i{i}")).collect();
        remove(n1, &names)?;

        let mut names = Vec::new();
        for k in 0..pairs {
            let order = if k % 2 == 0 { [NETBEE, HOST_BINARY] } else { [HOST_BINARY, NETBEE] };
            for system in order {
                let (name, image) =
                    if system == NETBEE { (format!("r{k}i"), IMAGE) } else { (format!("r{k}h"), "host") };
                let mut c = netbee_cmd(n1);
                c.args(["run", "-d", "--name", &name, "--network", "bench", image, "sleep", "600"]);
                col.add("runimage", system, 1e3 * time_cmd(c).with_context(|| format!("run -d {image}"))?);
                names.push(name);
            }
        }
        remove(n1, &names)?;

        if let Some(d) = &docker {
            let mut names = Vec::new();
            for k in 0..pairs {
                let order = if k % 2 == 0 { [NETBEE, NETBEE_CLI] } else { [NETBEE_CLI, NETBEE] };
                for system in order {
                    let name = format!("e{round}x{k}{}", if system == NETBEE { "d" } else { "n" });
                    let args = ["run", "-d", "--name", &name, "--network", "bench", "host", "sleep", "600"];
                    let c = if system == NETBEE { docker_cli(d, &args) } else { netbee_cli(n1, &args) };
                    col.add("dockerrun", system, 1e3 * time_cmd(c).with_context(|| format!("{system}: run -d"))?);
                    names.push(name);
                }
            }
            remove(n1, &names)?;
        }
    }
    drop(lab);
    scale_rounds(ctx, &mut col)?;
    Ok(col.finish())
}

fn scale_to(ctx: &Ctx) -> usize {
    if ctx.quick { 8 } else { 40 }
}

/// `service scale web=N` from 1, timed until N consecutive new connections through n1's
/// routing-mesh port are answered by N distinct tasks (round robin visits each once).
fn scale_rounds(ctx: &Ctx, col: &mut Collector) -> Result<()> {
    let n = scale_to(ctx);
    let lab = netbee_lab::swarm_lab("bench-scale", &["n1", "n2", "n3"], &["x1"])?;
    let n1 = lab.node("n1");
    let bin = std::env::var("NETBEE_BIN").unwrap_or_else(|_| netbee_lab::netbee_bin().to_string_lossy().into_owned());
    nb(
        n1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "1",
            "--publish",
            "80:8080",
            "host",
            &bin,
            "whoami",
            "--port",
            "8080",
        ],
    )?;
    let addr: std::net::SocketAddr = format!("{}:80", n1.addr()).parse()?;
    let x = lab.external("x1");
    let distinct = move |count: usize| -> usize {
        let hosts: std::collections::HashSet<String> =
            (0..count).filter_map(|_| netbee_lab::http_hostname(addr).ok()).collect();
        hosts.len()
    };
    netbee_lab::wait_until(Duration::from_secs(60), "web answers", || x.run(move || distinct(1)) == 1)?;
    for round in 0..ctx.rounds {
        ctx.round_banner("control-plane (scale)", round);
        let t0 = Instant::now();
        // -d: timed by the answers below, not by the CLI's convergence display (it polls)
        nb(n1, &["service", "scale", "-d", &format!("web={n}")])?;
        loop {
            if x.run(move || distinct(n)) == n {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("scale 1 → {n}: not all tasks answered within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        col.add("scale", NETBEE, t0.elapsed().as_secs_f64());
        if netbee_lab::docker_cli_present() {
            service_create_pairs(ctx, col, &lab, round)?;
        }
        nb(n1, &["service", "scale", "-d", "web=1"])?;
        netbee_lab::wait_until(Duration::from_secs(120), "scaled back to 1", || {
            n1.service_running_tasks("web").map(|t| t.len() == 1).unwrap_or(false)
                && lab.nodes().iter().all(|node| {
                    !node
                        .netbee(&["ps", "-a"])
                        .unwrap_or_default()
                        .lines()
                        .skip(1)
                        .any(|l| l.contains("web.") && !l.contains("web.1."))
                })
        })?;
    }
    Ok(())
}

fn svc_pairs(ctx: &Ctx) -> usize {
    if ctx.quick { 1 } else { 2 }
}

/// `netbee ARGS` from the machine's own namespace, as the docker CLI runs (the two compared
/// alike: neither pays for entering the node's namespace).
fn netbee_cli(n: &netbee_lab::Node, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(netbee_lab::netbee_bin());
    c.args(args).env("NETBEE_HOST", format!("unix://{}", n.socket().display())).stdin(std::process::Stdio::null());
    c
}

/// `docker ARGS` for the node `d` points at.
fn docker_cli(d: &netbee_lab::Docker, args: &[&str]) -> std::process::Command {
    let mut c = d.command("docker");
    c.args(args);
    c
}

/// `service create -d --replicas 3 host sleep 600` through the docker CLI and through netbee's,
/// alternated, each timed from the spawn until `service ls` shows 3/3; removed afterwards.
fn service_create_pairs(ctx: &Ctx, col: &mut Collector, lab: &netbee_lab::Lab, round: usize) -> Result<()> {
    let n1 = lab.node("n1");
    let d = netbee_lab::Docker::new(lab, n1)?;
    let mut names = Vec::new();
    for k in 0..svc_pairs(ctx) {
        let order = if k % 2 == 0 { [NETBEE, NETBEE_CLI] } else { [NETBEE_CLI, NETBEE] };
        for system in order {
            let name = format!("s{round}x{k}{}", if system == NETBEE { "d" } else { "n" });
            let args = ["service", "create", "-d", "--name", &name, "--replicas", "3", "host", "sleep", "600"];
            let c = if system == NETBEE { docker_cli(&d, &args) } else { netbee_cli(n1, &args) };
            let t0 = Instant::now();
            time_cmd(c).with_context(|| format!("{system}: service create"))?;
            while n1.service_replicas(&name) != "3/3" {
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!("{system}: service {name} not 3/3 within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            col.add("dockersvc", system, t0.elapsed().as_secs_f64());
            names.push(name);
        }
    }
    let mut args = vec!["service", "rm"];
    args.extend(names.iter().map(String::as_str));
    nb(n1, &args)?;
    Ok(())
}

/// `netbee rm -f NAMES...`.
fn remove(n: &netbee_lab::Node, names: &[String]) -> Result<()> {
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    nb(n, &args)?;
    Ok(())
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
