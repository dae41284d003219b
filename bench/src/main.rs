//! `netbee-bench`: runs netbee side by side with the real-world machinery it replaces, inside
//! lab network namespaces, and writes the results as ratios (the design brief's "what better
//! means").
//!
//! ```text
//! netbee-bench [--quick] [--only SCENARIO] [--rounds N] [--out DIR] [--list]
//! ```
//!
//! Every scenario builds its own lab (dropped when it ends, also on failure), measures netbee and
//! its baselines alternately (netbee, baseline, netbee, baseline, ...) for `rounds` rounds (5 by
//! default, 1 with `--quick`, which also shortens every measurement and shrinks every N), and
//! prints the command that reruns it alone. Results go to `bench/results/` (or `--out`):
//! `<date>.json`, `<date>.md`, `<date>.svg`, plus `latest.md`/`latest.svg` for a full run of
//! every scenario; a `--quick` run writes `<date>-quick.*` and a `--only X` run `<date>-X.*`, so
//! neither overwrites the full results.
//!
//! Exit status: 0 only if every implemented (and selected) scenario produced numbers for netbee
//! and every baseline; scenarios that are not available yet do not count. No timed assertion is
//! made: slow numbers are reported, not failed.

mod baselines;
mod packets;
mod report;
mod scenarios;
mod sink;
mod sys;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use report::{RATIO_CONVENTION, Report, ScenarioResult, Status};
use scenarios::{ALL, Ctx};

const USAGE: &str = "usage: netbee-bench [--quick] [--only SCENARIO] [--rounds N] [--out DIR] [--list]";
const FULL_ROUNDS: usize = 5;

struct Args {
    quick: bool,
    only: Option<String>,
    rounds: Option<usize>,
    out: Option<PathBuf>,
    list: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { quick: false, only: None, rounds: None, out: None, list: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--list" => a.list = true,
            "--only" => a.only = Some(it.next().context("--only needs a scenario name")?),
            "--rounds" => a.rounds = Some(it.next().context("--rounds needs a number")?.parse().context("--rounds")?),
            "--out" => a.out = Some(it.next().context("--out needs a directory")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if let Some(only) = &a.only
        && !ALL.iter().any(|s| s.name == only)
    {
        let names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        bail!("no scenario {only:?}; scenarios: {}", names.join(", "));
    }
    Ok(a)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("netbee-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn rerun_command(args: &Args, name: &str) -> String {
    let mut s = format!("target/release/netbee-bench --only {name}");
    if args.quick {
        s.push_str(" --quick");
    }
    if let Some(r) = args.rounds {
        s.push_str(&format!(" --rounds {r}"));
    }
    s
}

fn real_main() -> Result<bool> {
    let args = parse_args()?;
    if args.list {
        for s in ALL {
            let state = if s.run.is_some() { "" } else { " (not yet available)" };
            println!("{}{state}: {}", s.name, s.description);
        }
        return Ok(true);
    }
    let missing = tools::missing();
    if !missing.is_empty() {
        bail!("missing tools: {} (run `cargo xtask setup`)", missing.join(", "));
    }
    let bin = netbee_lab::netbee_bin();
    if !bin.is_file() {
        bail!("{} not found: build it with `cargo build --release -p netbee` or set NETBEE_BIN", bin.display());
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { FULL_ROUNDS }).max(1);
    let ctx = Ctx { quick: args.quick, rounds };
    let mode = if args.quick { "quick" } else { "full" };
    let now = chrono::Local::now();
    let date = now.format("%Y-%m-%d").to_string();
    println!("netbee-bench: {mode} mode, {rounds} round(s), netbee binary {}", bin.display());

    // the machine is shared: how loaded it was is part of every figure
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let mut results = Vec::new();
    for s in ALL {
        let selected = args.only.as_deref().is_none_or(|o| o == s.name);
        let rerun = rerun_command(&args, s.name);
        let mut r = ScenarioResult {
            name: s.name.into(),
            description: s.description.into(),
            rerun: rerun.clone(),
            status: Status::Skipped,
            seconds: 0.0,
            metrics: Vec::new(),
        };
        if !selected {
            results.push(r);
            continue;
        }
        let Some(run) = s.run else {
            println!("\n== {}: not yet available ({})", s.name, s.pending);
            r.status = Status::NotYetAvailable(s.pending.into());
            results.push(r);
            continue;
        };
        println!("\n== {} — rerun alone: {rerun}", s.name);
        let t0 = Instant::now();
        // A panic inside a scenario still drops its lab (unwinding) and is reported as a failure.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx)));
        r.seconds = t0.elapsed().as_secs_f64();
        r.status = match outcome {
            Ok(Ok(metrics)) => {
                let incomplete: Vec<String> =
                    metrics.iter().filter(|m| !m.complete()).map(|m| m.name.clone()).collect();
                r.metrics = metrics;
                if r.metrics.is_empty() {
                    Status::Failed("no metric".into())
                } else if incomplete.is_empty() {
                    Status::Ok
                } else {
                    Status::Failed(format!("metrics without numbers: {}", incomplete.join(", ")))
                }
            }
            Ok(Err(e)) => Status::Failed(format!("{e:#}")),
            Err(p) => Status::Failed(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        match &r.status {
            Status::Ok => println!("== {}: ok ({:.0} s)", s.name, r.seconds),
            Status::Failed(e) => println!("== {}: FAILED ({:.0} s): {e}", s.name, r.seconds),
            _ => {}
        }
        results.push(r);
    }

    let mut host = BTreeMap::new();
    host.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
    );
    host.insert("cpus".into(), std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default());
    host.insert("netbee".into(), bin.display().to_string());
    host.insert("loadavg at start".into(), load_at_start);
    host.insert(
        "loadavg at end".into(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
    );
    if let Ok(o) = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
        .output()
        && o.status.success()
    {
        host.insert("commit".into(), String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    let report = Report {
        date: date.clone(),
        started: now.to_rfc3339(),
        finished: chrono::Local::now().to_rfc3339(),
        mode: mode.into(),
        rounds,
        host,
        ratio_convention: RATIO_CONVENTION.into(),
        scenarios: results,
    };

    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let stem = match (&args.only, args.quick) {
        (_, true) => format!("{date}-quick"),
        (Some(o), false) => format!("{date}-{o}"),
        (None, false) => date.clone(),
    };
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = dir.join(format!("{stem}.md"));
    let markdown = report.markdown();
    std::fs::write(&md, &markdown)?;
    let svg = dir.join(format!("{stem}.svg"));
    report.svg(&svg)?;
    if args.only.is_none() && !args.quick {
        std::fs::copy(&md, dir.join("latest.md"))?;
        std::fs::copy(&svg, dir.join("latest.svg"))?;
    }
    println!("\n{markdown}");
    println!("wrote {}, {}, {}", json.display(), md.display(), svg.display());

    let ok =
        report.scenarios.iter().all(|s| matches!(s.status, Status::Ok | Status::NotYetAvailable(_) | Status::Skipped));
    if !ok {
        println!("netbee-bench: some scenarios failed or produced no numbers");
    }
    Ok(ok)
}
