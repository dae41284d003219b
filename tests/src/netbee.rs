//! netbee-specific conveniences on top of the lab: inspect output, addresses, datapath counters.
use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;

use crate::Node;

impl Node {
    /// `netbee inspect NAME` (first element).
    pub fn inspect(&self, container: &str) -> Result<Value> {
        let out = self.netbee(&["inspect", container])?;
        let v: Value = serde_json::from_str(&out).context("inspect output is not JSON")?;
        v.get(0).cloned().ok_or_else(|| anyhow!("empty inspect output"))
    }

    pub fn network_inspect(&self, network: &str) -> Result<Value> {
        let out = self.netbee(&["network", "inspect", network])?;
        let v: Value = serde_json::from_str(&out).context("network inspect output is not JSON")?;
        v.get(0).cloned().ok_or_else(|| anyhow!("empty network inspect output"))
    }

    /// The container's IPv4 address on `network`.
    pub fn container_ip(&self, container: &str, network: &str) -> Result<String> {
        let v = self.inspect(container)?;
        v["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("container {container} has no address on {network}"))
    }

    pub fn datapath_stats(&self) -> Result<Value> {
        let out = self.netbee(&["datapath", "stats", "--format", "json"])?;
        serde_json::from_str(&out).context("datapath stats output is not JSON")
    }

    pub fn counter(&self, name: &str) -> Result<u64> {
        self.datapath_stats()?["Counters"][name].as_u64().ok_or_else(|| anyhow!("no counter {name}"))
    }

    pub fn drops(&self, reason: &str) -> Result<u64> {
        self.datapath_stats()?["Drops"][reason].as_u64().ok_or_else(|| anyhow!("no drop reason {reason}"))
    }

    /// Runs a command in a container with `netbee exec`, returning stdout (Err on non-zero exit).
    pub fn exec(&self, container: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.netbee(&args)
    }

    /// True when the command inside the container exits 0.
    pub fn exec_ok(&self, container: &str, cmd: &[&str]) -> bool {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.netbee_output(&args).status.success()
    }

    /// Starts a `netbee whoami` container and waits until it answers on `port`.
    pub fn run_whoami(&self, name: &str, extra: &[&str], port: u16) -> Result<String> {
        let bin = crate::netbee_bin();
        let port_s = port.to_string();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["host", bin.to_str().unwrap(), "whoami", "--port", &port_s]);
        let id = self.netbee(&args)?.trim().to_string();
        crate::wait_until(std::time::Duration::from_secs(10), &format!("{name} listening"), || {
            self.netbee(&["logs", name]).map(|l| l.contains("listening")).unwrap_or(false)
                || self.netbee_output(&["logs", name]).stderr.windows(9).any(|w| w == b"listening")
        })?;
        Ok(id)
    }
}

impl Node {
    /// The REPLICAS column (running/desired) of `service ls` for `name`, or "" if unknown.
    pub fn service_replicas(&self, name: &str) -> String {
        self.netbee(&["service", "ls", "--format", "json"])
            .ok()
            .and_then(|o| o.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["Name"] == name))
            .map(|v| v["Replicas"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// (task name, node) of the running tasks of `service`.
    pub fn service_running_tasks(&self, service: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .netbee(&["service", "ps", "--format", "json", service])?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["DesiredState"] == "Running" && v["CurrentState"] == "Running")
            .map(|v| (v["Name"].as_str().unwrap_or("").to_string(), v["Node"].as_str().unwrap_or("").to_string()))
            .collect())
    }
}

impl Node {
    /// Runs a CLI command that must fail; returns its stderr (the error the user sees).
    pub fn netbee_refused(&self, args: &[&str]) -> String {
        let o = self.netbee_output(args);
        assert!(
            !o.status.success(),
            "netbee {args:?} should have failed but succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// One node "n1" with a daemon (given extra daemon arguments) and one external client "x1".
pub fn single_node_lab(test: &str, daemon_args: &[&str]) -> Result<crate::Lab> {
    let mut lab = crate::Lab::new(test)?;
    lab.add_node("n1")?;
    lab.add_external("x1")?;
    lab.node("n1").set_daemon_args(daemon_args);
    lab.node("n1").start_daemon()?;
    Ok(lab)
}

/// One HTTP GET on a fresh connection (from the calling thread's namespace); the hostname a
/// `netbee whoami` answered with.
pub fn http_hostname(addr: std::net::SocketAddr) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    whoami_field(&body, "Hostname").ok_or_else(|| anyhow!("no whoami answer in {body:?}"))
}

/// Continuous load from namespace `ns`: new connections back to back (every `pause`) until
/// `stop`; returns the answering hostnames and the failures.
pub fn start_load(
    ns: &str,
    addr: std::net::SocketAddr,
    pause: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match http_hostname(addr) {
                Ok(h) => ok.push(h),
                Err(e) => failed.push(format!("{e:#}")),
            }
            std::thread::sleep(pause);
        }
        (ok, failed)
    })
}

/// Value of `Key: value` in a whoami answer.
pub fn whoami_field(answer: &str, key: &str) -> Option<String> {
    answer.lines().find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_string))
}

/// A lab of `nodes` nodes on one etcd, all daemons started with `--cluster-store`; the first
/// node initialises the swarm, the others join as workers. `externals` external clients.
pub fn swarm_lab(test: &str, nodes: &[&str], externals: &[&str]) -> Result<crate::Lab> {
    swarm_lab_with(test, nodes, externals, &[])
}

/// [`swarm_lab`] with further arguments for every daemon (e.g. `--mesh-routing native`).
pub fn swarm_lab_with(test: &str, nodes: &[&str], externals: &[&str], daemon_args: &[&str]) -> Result<crate::Lab> {
    let mut lab = crate::Lab::new(test)?;
    let store = lab.start_etcd(1)?;
    for n in nodes {
        lab.add_node(n)?;
        let mut args = vec!["--cluster-store", store.as_str()];
        args.extend_from_slice(daemon_args);
        lab.node(n).set_daemon_args(&args);
        lab.node(n).start_daemon()?;
    }
    for x in externals {
        lab.add_external(x)?;
    }
    let first = lab.node(nodes[0]);
    first.netbee(&["swarm", "init", "--advertise-addr", &first.addr().to_string()])?;
    let token = first.netbee(&["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    let mgr = format!("{}:2377", first.addr());
    crate::wait_until(std::time::Duration::from_secs(10), "join listener", || {
        first.sh(&format!("nc -z {} 2377", first.addr())).is_ok()
    })?;
    for n in &nodes[1..] {
        lab.node(n).netbee(&["swarm", "join", "--token", &token, &mgr])?;
    }
    Ok(lab)
}

/// The `Hostname:` of `count` sequential new connections from `ns` to `url` (FAIL for a failed one).
pub fn hosts(ns: &crate::Ns, url: &str, count: usize) -> Result<Vec<String>> {
    let out =
        ns.sh(&format!("for i in $(seq {count}); do curl -s -m 3 {url} | grep '^Hostname' || echo FAIL; done"))?;
    Ok(out.lines().map(|l| l.trim_start_matches("Hostname: ").to_string()).collect())
}

/// `seen` visits `backends` distinct backends, each equally often, in a repeating order (strict
/// round robin: the second round visits them in the first round's order).
pub fn assert_round_robin(seen: &[String], backends: usize, label: &str) {
    assert!(!seen.iter().any(|h| h == "FAIL"), "{label}: failed requests in {seen:?}");
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for h in seen {
        *counts.entry(h).or_default() += 1;
    }
    assert_eq!(counts.len(), backends, "{label}: distinct backends in {seen:?}");
    assert!(counts.values().all(|c| *c == seen.len() / backends), "{label}: uneven {counts:?}");
    assert_eq!(seen[..backends], seen[backends..2 * backends], "{label}: order does not repeat: {seen:?}");
}
