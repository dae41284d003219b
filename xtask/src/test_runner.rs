//! Runs the integration test binaries three at a time. Cargo runs them one after the other, so the
//! suite took the sum of every file's slowest test (a rolling update, a lost node): most of that
//! is tests waiting on timeouts and daemons, not CPU — with two files side by side (four tests at
//! once) the two vCPUs were still 55 % idle, measured over a minute of CI — so three files side
//! by side take about a third of the sum. Each
//! binary's output goes to a log of its own and is printed whole when that binary finishes, so
//! a failure reads as it would under cargo; every binary runs even after one fails, and the run
//! fails at the end naming them all.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::Result;

/// Test binaries running at once, each with `THREADS_PER_BINARY` test threads.
const PARALLEL_BINARIES: usize = 3;
const THREADS_PER_BINARY: &str = "--test-threads=2";

/// Binaries known to run longest (a rolling update, lost nodes, failovers), started first so
/// the short ones fill the gaps at the end instead of the other way round: alphabetical order
/// left `services` and `updates` (≈ 2 minutes each) for last, ≈ 30 s more for the suite.
const LONGEST_FIRST: &[&str] = &["services", "updates", "names", "cluster", "stacks", "docker_swarm", "isolation"];

/// One integration test binary, as cargo built it.
struct TestBinary {
    name: String,
    path: PathBuf,
}

/// Builds the integration tests with `cargo` (a `cargo test` command line) and runs them
/// `PARALLEL_BINARIES` at a time from `package_dir` (where cargo would run them) with `env`.
pub fn run_integration_tests(
    cargo: &mut Command,
    package_dir: &Path,
    logs: &Path,
    env: &[(&str, PathBuf)],
) -> Result<()> {
    let binaries = build(cargo)?;
    if binaries.is_empty() {
        return Err("no integration test binary was built".into());
    }
    std::fs::create_dir_all(logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let queue = Arc::new(Mutex::new(binaries.into_iter().collect::<VecDeque<_>>()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..PARALLEL_BINARIES)
        .map(|_| {
            let (queue, failed) = (queue.clone(), failed.clone());
            let (dir, logs) = (package_dir.to_path_buf(), logs.to_path_buf());
            let env: Vec<(String, PathBuf)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            std::thread::spawn(move || {
                loop {
                    let Some(b) = queue.lock().unwrap().pop_front() else { break };
                    if !run_one(&b, &dir, &logs, &env, t0) {
                        failed.lock().unwrap().push(b.name);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a test runner thread panicked".to_string())?;
    }
    let failed = failed.lock().unwrap();
    eprintln!("xtask test: integration tests finished in {:.0}s", t0.elapsed().as_secs_f64());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("integration tests failed: {} (logs in {})", failed.join(", "), logs.display()))
    }
}

/// `cargo test --no-run` with JSON messages: the test executables it built.
fn build(cargo: &mut Command) -> Result<Vec<TestBinary>> {
    let out = cargo
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cargo:?} failed: {}", out.status));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test_target = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(path), Some(name)) =
            (is_test_target, msg["executable"].as_str(), msg["target"]["name"].as_str())
        {
            binaries.push(TestBinary { name: name.to_string(), path: PathBuf::from(path) });
        }
    }
    let rank = |name: &str| LONGEST_FIRST.iter().position(|n| *n == name).unwrap_or(LONGEST_FIRST.len());
    binaries.sort_by(|a, b| (rank(&a.name), &a.name).cmp(&(rank(&b.name), &b.name)));
    Ok(binaries)
}

/// Runs one binary with its output in `logs/NAME.log`, then prints that log; true if it passed.
fn run_one(b: &TestBinary, dir: &Path, logs: &Path, env: &[(String, PathBuf)], t0: Instant) -> bool {
    let log_path = logs.join(format!("{}.log", b.name));
    eprintln!("[tests +{:.0}s] {} started", t0.elapsed().as_secs_f64(), b.name);
    let started = Instant::now();
    let status = std::fs::File::create(&log_path).and_then(|log| {
        let mut cmd = Command::new(&b.path);
        cmd.arg(THREADS_PER_BINARY).current_dir(dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.status()
    });
    let passed = matches!(&status, Ok(s) if s.success());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // one block per binary, printed whole so two binaries' lines never interleave
    let mut report = format!("\n     Running tests/{}.rs ({})\n{log}", b.name, b.path.display());
    if let Err(e) = &status {
        report.push_str(&format!("cannot run {}: {e}\n", b.path.display()));
    }
    report.push_str(&format!(
        "[tests +{:.0}s] {} {} in {:.0}s\n",
        t0.elapsed().as_secs_f64(),
        b.name,
        if passed { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    ));
    eprint!("{report}");
    passed
}
