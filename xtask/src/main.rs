//! Project tasks. `cargo xtask <task>`:
//!   setup   install everything the project needs (idempotent; seconds when already done)
//!   build   setup, then build netbee (release)
//!   demo    setup, build, and run the demo lab: networks, containers, published ports, counters
//!   lint    formatting and clippy (warnings denied) for the host crates, the fuzz crate and
//!           datapath-ebpf built for the BPF target
//!   test    setup, lint, build, and run every test (unit, lab, integration, `bench --quick`);
//!           its builds are clippy runs too (warnings denied)
//!   bench   setup, build, and run the benchmarks (`-- --quick`, `-- --only SCENARIO`)
//!   soak    setup, build, and run the long resilience variants (60 crash trials, 20 trials of
//!           concurrent creations on three managers, the leader lost three times), then
//!           fuzz every parser for 120 s
//!   fuzz [SECONDS]  setup, then fuzz every parser target in controlplane/fuzz/ for SECONDS each
//!           (default 60); prints executions and crashes per target, fails on a crash
//!   clean-lab  remove leftovers of interrupted test labs
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

/// Debian packages: the eBPF linker's LLVM, the lab's tools, and the software the benchmarks
/// compare against.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "iputils-ping",
    "util-linux",
    "curl",
    "netcat-openbsd",
    "socat",
    "iperf3",
    "tcpdump",
    "ethtool",
    "bpftool",
    "iptables",
    "nftables",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    "haproxy",
    "nginx-light",
    "wrk",
    "sockperf",
    // bench/profile.py
    "linux-perf",
    "python3",
    // images: a real registry, third-party image tools, and the test images' busybox
    "docker-registry",
    "skopeo",
    "umoci",
    "busybox-static",
    // the observability test's scraper
    "prometheus",
    // certificates for the API-over-TLS test
    "openssl",
    // tests/tests/docker_compose.rs: docker-compose 1.29.2, Python with docker-py (installed
    // without Recommends, which would bring Debian's docker engine)
    "docker-compose",
];
mod test_images;
mod test_runner;

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_MAJOR: &str = "22";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let mut rest = &args[args.len().min(1)..];
    // `cargo xtask bench -- --quick`: the separator is for the reader, not the tool
    if rest.first().is_some_and(|a| a == "--") {
        rest = &rest[1..];
    }
    let r = match task {
        "setup" => setup(),
        "build" => setup().and_then(|_| build()),
        "demo" => setup().and_then(|_| build()).and_then(|_| demo(rest)),
        "lint" => setup().and_then(|_| lint()),
        "test" => setup().and_then(|_| lint_for_test()).and_then(|_| build()).and_then(|_| test(rest)),
        "bench" => setup().and_then(|_| build()).and_then(|_| bench(rest)),
        "soak" => setup().and_then(|_| build()).and_then(|_| soak()),
        "fuzz" => setup().and_then(|_| fuzz(rest)),
        "clean-lab" => build_lab_tool().and_then(|_| run(Command::new(lab_tool()).arg("clean"))),
        _ => {
            eprintln!("usage: cargo xtask <setup|build|demo|lint|test|bench|soak|fuzz [SECONDS]|clean-lab>");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"))
        .join("bin")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn log(t0: Instant, msg: &str) {
    eprintln!("[setup +{:.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn setup() -> Result<()> {
    let t0 = Instant::now();
    // apt: install only what is missing; refresh the lists only then
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        log(t0, "apt packages present");
    } else {
        log(t0, &format!("apt-get install {}", missing.join(" ")));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Debian starts services on install; the lab runs its own instances
    for svc in ["etcd", "nginx", "haproxy", "prometheus"] {
        let _ = Command::new("systemctl").args(["disable", "--now", svc]).output();
    }
    // nightly rust-src: only the eBPF crate is built with nightly (-Z build-std=core)
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        log(t0, "rustup toolchain install nightly");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let comps = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .unwrap_or_default();
    // rust-src: -Z build-std; clippy: `xtask lint` checks the eBPF crate for the BPF target
    for comp in ["rust-src", "clippy"] {
        if !comps.lines().any(|l| l.starts_with(comp)) {
            log(t0, &format!("rustup component add {comp} --toolchain nightly"));
            run(Command::new("rustup").args(["component", "add", comp, "--toolchain", "nightly"]))?;
        }
    }
    // the stable toolchain's formatter and linter (`xtask lint`)
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"])).unwrap_or_default();
    for comp in ["rustfmt", "clippy"] {
        if !stable.lines().any(|l| l.starts_with(comp)) {
            log(t0, &format!("rustup component add {comp}"));
            run(Command::new("rustup").args(["component", "add", comp]))?;
        }
    }
    let linker = cargo_bin_dir().join("bpf-linker");
    let have = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        log(t0, &format!("bpf-linker {BPF_LINKER_VERSION} present"));
    } else {
        log(t0, &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}; about 90 s)"));
        // LLVM_PREFIX: Debian's default llvm-config is LLVM 14, which bpf-linker cannot link with
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--no-default-features"])
            .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))?;
    }
    // cargo-fuzz: runs the parser fuzz targets (with nightly, which is installed above)
    let have = output(Command::new(cargo_bin_dir().join("cargo-fuzz")).arg("--version")).unwrap_or_default();
    if have.contains(CARGO_FUZZ_VERSION) {
        log(t0, &format!("cargo-fuzz {CARGO_FUZZ_VERSION} present"));
    } else {
        log(t0, &format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION} (about 100 s)"));
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"]))?;
    }
    test_images::build(&root().join("target/test-images"))?;
    log(t0, "test images present");
    log(t0, "done");
    Ok(())
}

/// Commands run by xtask see ~/.cargo/bin (bpf-linker) even when the caller's PATH lacks it.
fn path_env() -> String {
    let p = std::env::var("PATH").unwrap_or_default();
    format!("{}:{p}", cargo_bin_dir().display())
}

/// Set by `test`: every build of a workspace crate is also its clippy run (see `lint_for_test`).
static LINTING_BUILDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env("PATH", path_env());
    if LINTING_BUILDS.load(std::sync::atomic::Ordering::Relaxed) {
        // what `cargo clippy -- -D warnings` sets, for a build instead of a check: clippy-driver
        // is rustc with the lints added, for the workspace's own crates only
        c.env("RUSTC_WORKSPACE_WRAPPER", cargo_bin_dir().join("clippy-driver"))
            .env("CLIPPY_ARGS", "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__");
    }
    c
}

fn netbee_bin() -> PathBuf {
    root().join("target/release/netbee")
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "netbee"]))
}

fn lab_tool() -> PathBuf {
    root().join("target/release/netbee-lab")
}

fn build_lab_tool() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "netbee-tests", "--bin", "netbee-lab"]))
}

fn demo(args: &[String]) -> Result<()> {
    build_lab_tool()?;
    run(Command::new(lab_tool()).arg("demo").args(args).env("NETBEE_BIN", netbee_bin()))
}

/// The benchmarks run against a private copy of the binary: a rebuild during a long run must not
/// swap the program under the daemons.
fn bench(args: &[String]) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "netbee-bench"]))?;
    let copy = std::env::temp_dir().join(format!("netbee-bench-bin-{}", std::process::id()));
    std::fs::copy(netbee_bin(), &copy).map_err(|e| format!("copying the netbee binary: {e}"))?;
    let r = run(Command::new(root().join("target/release/netbee-bench"))
        .args(args)
        .current_dir(root())
        .env("NETBEE_BIN", &copy)
        .env("PATH", path_env()));
    let _ = std::fs::remove_file(&copy);
    r
}

/// Long variants of the resilience tests: many more randomized crash points; then the fuzzers.
fn soak() -> Result<()> {
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "netbee-tests",
            "--test",
            "resilience",
            "--",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("NETBEE_BIN", netbee_bin())
        .env("NETBEE_CRASH_TRIALS", "60"))?;
    // cluster races: concurrent creations on three managers, many more trials
    run(cargo()
        .args(["test", "--release", "-p", "netbee-tests", "--test", "cluster", "--test", "services", "concurrent"])
        .args(["--", "--nocapture", "--test-threads=1"])
        .env("NETBEE_BIN", netbee_bin())
        .env("NETBEE_RACE_TRIALS", "20"))?;
    // names resolvable when the command returns, overlays usable on every node at once: 50 trials
    run(cargo()
        .args(["test", "--release", "-p", "netbee-tests", "--test", "names", "--", "--nocapture", "--test-threads=1"])
        .env("NETBEE_BIN", netbee_bin())
        .env("NETBEE_RACE_TRIALS", "50"))?;
    // the leader's node lost under load, three times
    for _ in 0..3 {
        run(cargo()
            .args(["test", "--release", "-p", "netbee-tests", "--test", "services", "leader_lost", "--", "--nocapture"])
            .env("NETBEE_BIN", netbee_bin()))?;
    }
    run_fuzzers(120)
}

fn fuzz(args: &[String]) -> Result<()> {
    let secs = match args.first() {
        None => 60,
        Some(s) => s.parse().map_err(|_| format!("SECONDS per target: {s:?} is not a number"))?,
    };
    run_fuzzers(secs)
}

/// `cargo +nightly fuzz ...` in controlplane/ (where cargo-fuzz finds fuzz/), with the flags every
/// build and run shares: no sanitizer (the parsers are safe Rust; AddressSanitizer would only
/// slow them down), debug assertions on (integer overflow is a crash).
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new(cargo_bin_dir().join("cargo"));
    c.args(["+nightly", "fuzz", sub]);
    if sub != "list" {
        c.args(["--sanitizer", "none", "--debug-assertions"]);
    }
    // the toolchain chosen for xtask itself must not leak into the nightly build
    c.current_dir(root().join("controlplane")).env("PATH", path_env()).env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Fuzzes every target of controlplane/fuzz/ for `secs` seconds, one after the other (libFuzzer
/// uses one core). Each grows its corpus in fuzz/corpus/TARGET from the committed seeds in
/// fuzz/seeds/TARGET; crashes land in fuzz/artifacts/TARGET, full logs in target/fuzz-logs/.
fn run_fuzzers(secs: u64) -> Result<()> {
    let t0 = Instant::now();
    let fuzz_dir = root().join("controlplane/fuzz");
    let targets: Vec<String> =
        output(&mut cargo_fuzz("list")).ok_or("cargo fuzz list failed")?.lines().map(str::to_string).collect();
    run(&mut cargo_fuzz("build"))?;
    eprintln!("[fuzz +{:.0}s] built {} targets", t0.elapsed().as_secs_f64(), targets.len());
    let logs = root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let mut rows = Vec::new();
    for t in &targets {
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let artifacts = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let artifact_dir = fuzz_dir.join("artifacts").join(t);
        let before = artifacts(&artifact_dir);
        let log = logs.join(format!("{t}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        eprintln!("[fuzz +{:.0}s] {t}: {secs} s", t0.elapsed().as_secs_f64());
        let status = cargo_fuzz("run")
            .arg(t)
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .args(["-print_final_stats=1", "-max_len=4096", "-timeout=20", "-rss_limit_mb=2048"])
            .stdout(log_file)
            .stderr(err_file)
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let execs: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum();
        let crashes = artifacts(&artifact_dir).saturating_sub(before).max(usize::from(!status.success()));
        if crashes > 0 {
            eprintln!("--- {t} ({status}), last lines of {}:", log.display());
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        rows.push((t.clone(), execs, crashes));
    }
    eprintln!("{:<18} {:>14} {:>8}", "fuzz target", "executions", "crashes");
    for (t, execs, crashes) in &rows {
        eprintln!("{t:<18} {execs:>14} {crashes:>8}");
    }
    let crashed: Vec<&str> = rows.iter().filter(|r| r.2 > 0).map(|r| r.0.as_str()).collect();
    if crashed.is_empty() {
        eprintln!("xtask fuzz: no crash in {} targets × {secs} s ({:.0}s)", rows.len(), t0.elapsed().as_secs_f64());
        Ok(())
    } else {
        Err(format!(
            "crashes in {}: inputs in controlplane/fuzz/artifacts/; reproduce with `cargo +nightly fuzz run -s none -a TARGET ARTIFACT` in controlplane/",
            crashed.join(", ")
        ))
    }
}

/// Formatting and lints, warnings denied: the host crates, the fuzz crate (its own workspace), and
/// the eBPF crate for the BPF target, where its programs are compiled (host clippy sees only the
/// parts that also build for the host).
fn lint() -> Result<()> {
    let t0 = Instant::now();
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["fmt", "--check"]).current_dir(root().join("controlplane/fuzz")))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"]))?;
    clippy_ebpf()?;
    eprintln!("xtask lint: formatting and clippy clean ({:.0}s)", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The eBPF crate for the BPF target, where its programs are compiled.
fn clippy_ebpf() -> Result<()> {
    run(Command::new(cargo_bin_dir().join("cargo"))
        .args(["+nightly", "clippy", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(root().join("datapath-ebpf"))
        .env("PATH", path_env())
        .env_remove("RUSTUP_TOOLCHAIN"))
}

/// `lint` for `test`, without the host clippy run: `cargo clippy` checks every dependency once
/// more (type-checked metadata cannot serve the release build, nor its artifacts the check), two
/// of CI's twenty minutes. Instead every build `test` makes runs clippy-driver as the workspace's
/// compiler with warnings denied, so the release build, the unit-test build (cfg(test) code), the
/// lab, the integration tests and the bench are linted while they compile; only what `test` does
/// not build for the host is checked here (xtask, already built to run this, and the eBPF crate's
/// host side). A build outside `test` (demo, bench) has no wrapper, so its first run after a test
/// run compiles the workspace's crates again (not the dependencies).
fn lint_for_test() -> Result<()> {
    let t0 = Instant::now();
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["fmt", "--check"]).current_dir(root().join("controlplane/fuzz")))?;
    run(cargo()
        .args(["clippy", "--release", "--all-targets", "-p", "xtask", "-p", "netbee-ebpf"])
        .args(["--", "-D", "warnings"]))?;
    clippy_ebpf()?;
    LINTING_BUILDS.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "xtask lint: formatting and clippy clean; the builds below are linted as they compile ({:.0}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    // unit tests of the control plane (IPAM, port specs, parsers, ...)
    run(cargo().args(["test", "--release", "-p", "netbee", "-p", "netbee-abi"]))?;
    // the lab's own tests change process-wide env vars: one at a time
    run(cargo()
        .args(["test", "--release", "-p", "netbee-tests", "--lib", "--", "--test-threads=1"])
        .env("NETBEE_BIN", netbee_bin()))?;
    // integration tests: real namespaces, daemons and packets; each test has its own lab
    test_runner::run_integration_tests(
        cargo().args(["test", "--release", "-p", "netbee-tests", "--test", "*"]).args(args),
        &root().join("tests"),
        &root().join("target/xtask/test-logs"),
        &[("NETBEE_BIN", netbee_bin())],
    )?;
    // the benchmark harness, briefly, so it cannot rot
    run(cargo().args(["test", "--release", "-p", "netbee-bench"]))?;
    bench(&["--quick".to_string()])?;
    eprintln!("xtask test: all suites passed in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}
