//! Project tasks. `cargo xtask <task>`:
//!   setup   install everything the project needs (idempotent; seconds when already done)
//!   build   setup, then build netbee (release)
//!   demo    setup, build, and run the demo lab: networks, containers, published ports, counters
//!   test    setup, build, and run every test (unit, lab, integration, `bench --quick`)
//!   bench   setup, build, and run the benchmarks (`-- --quick`, `-- --only SCENARIO`)
//!   soak    setup, build, and run the long resilience variants (50 crash trials, ...)
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
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let r = match task {
        "setup" => setup(),
        "build" => setup().and_then(|_| build()),
        "demo" => setup().and_then(|_| build()).and_then(|_| demo(rest)),
        "test" => setup().and_then(|_| build()).and_then(|_| test(rest)),
        "bench" => setup().and_then(|_| build()).and_then(|_| bench(rest)),
        "soak" => setup().and_then(|_| build()).and_then(|_| soak()),
        "clean-lab" => build_lab_tool().and_then(|_| run(Command::new(lab_tool()).arg("clean"))),
        _ => {
            eprintln!("usage: cargo xtask <setup|build|demo|test|bench|soak|clean-lab>");
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
    for svc in ["etcd", "nginx", "haproxy"] {
        let _ = Command::new("systemctl").args(["disable", "--now", svc]).output();
    }
    // nightly rust-src: only the eBPF crate is built with nightly (-Z build-std=core)
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        log(t0, "rustup toolchain install nightly");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]))?;
    }
    let comps = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        log(t0, "rustup component add rust-src --toolchain nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
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
    log(t0, "done");
    Ok(())
}

/// Commands run by xtask see ~/.cargo/bin (bpf-linker) even when the caller's PATH lacks it.
fn path_env() -> String {
    let p = std::env::var("PATH").unwrap_or_default();
    format!("{}:{p}", cargo_bin_dir().display())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env("PATH", path_env());
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

/// Long variants of the resilience tests: many more randomized crash points.
fn soak() -> Result<()> {
    run(cargo()
        .args(["test", "--release", "-p", "netbee-tests", "--test", "resilience", "--", "--test-threads=1", "--nocapture"])
        .env("NETBEE_BIN", netbee_bin())
        .env("NETBEE_CRASH_TRIALS", "60"))
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
    run(cargo()
        .args(["test", "--release", "-p", "netbee-tests", "--test", "*"])
        .args(args)
        .args(["--", "--test-threads=3"])
        .env("NETBEE_BIN", netbee_bin()))?;
    // the benchmark harness, briefly, so it cannot rot
    run(cargo().args(["test", "--release", "-p", "netbee-bench"]))?;
    bench(&["--quick".to_string()])?;
    eprintln!("xtask test: all suites passed in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}
