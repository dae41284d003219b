//! The cluster: a swarm on etcd, overlay networks over VXLAN in eBPF, node management. Each test
//! builds a lab of 3 nodes plus etcd on the underlay.
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use netbee_lab::{Lab, Node, wait_until, whoami_field};
use serde_json::Value;

/// Three nodes with daemons on one etcd; n1 initialises the swarm, n2 joins as a worker and n3
/// as a manager.
fn cluster(name: &str) -> Result<Lab> {
    let mut lab = Lab::new(name)?;
    let store = lab.start_etcd(1)?;
    for n in ["n1", "n2", "n3"] {
        lab.add_node(n)?;
        lab.node(n).set_daemon_args(&["--cluster-store", &store]);
        lab.node(n).start_daemon()?;
    }
    let n1 = lab.node("n1");
    n1.netbee(&["swarm", "init", "--advertise-addr", &n1.addr().to_string()])?;
    let worker = n1.netbee(&["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    let manager = n1.netbee(&["swarm", "join-token", "-q", "manager"])?.trim().to_string();
    let mgr = format!("{}:2377", n1.addr());
    lab.node("n2").netbee(&["swarm", "join", "--token", &worker, &mgr])?;
    lab.node("n3").netbee(&["swarm", "join", "--token", &manager, &mgr])?;
    Ok(lab)
}

fn nodes(n: &Node) -> Result<Vec<Value>> {
    n.netbee(&["node", "ls", "--format", "json"])?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("{e}: {l}")))
        .collect()
}

fn node_field(n: &Node, host: &str, field: &str) -> String {
    nodes(n)
        .ok()
        .and_then(|v| v.into_iter().find(|x| x["Hostname"] == host))
        .map(|x| x[field].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn swarm_and_node_management() -> Result<()> {
    let lab = cluster("swarm")?;
    let (n1, n2, n3) = (lab.node("n1"), lab.node("n2"), lab.node("n3"));
    wait_until(Duration::from_secs(10), "all Ready", || {
        nodes(n1).map(|v| v.len() == 3 && v.iter().all(|x| x["Status"] == "Ready")).unwrap_or(false)
    })?;
    wait_until(Duration::from_secs(10), "a leader", || node_field(n1, "n1", "ManagerStatus") == "Leader")?;
    let table = n1.netbee(&["node", "ls"])?;
    let header: Vec<&str> =
        table.lines().next().unwrap().split("   ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"]);
    assert!(table.lines().any(|l| l.contains(" * ") && l.contains("n1")), "{table}");
    assert_eq!(node_field(n1, "n3", "ManagerStatus"), "Reachable");
    assert_eq!(node_field(n1, "n2", "ManagerStatus"), "");
    assert!(n2.netbee_refused(&["node", "ls"]).contains("not a swarm manager"));
    assert!(n3.netbee(&["node", "ls"])?.contains("n2"), "a joined manager sees the cluster");

    let join = n1.netbee(&["swarm", "join-token", "worker"])?;
    assert!(
        join.contains("netbee swarm join --token SWMTKN-1-") && join.contains(&format!("{}:2377", n1.addr())),
        "{join}"
    );

    n1.netbee(&["node", "update", "--availability", "drain", "--label-add", "zone=a", "n2"])?;
    let v: Value = serde_json::from_str(&n1.netbee(&["node", "inspect", "n2"])?)?;
    assert_eq!(v[0]["Spec"]["Availability"], "drain");
    assert_eq!(v[0]["Spec"]["Labels"]["zone"], "a");
    assert!(n1.netbee_refused(&["node", "update", "--availability", "sleepy", "n2"]).contains("invalid availability"));

    n1.netbee(&["node", "promote", "n2"])?;
    assert_eq!(node_field(n1, "n2", "ManagerStatus"), "Reachable");
    n1.netbee(&["node", "demote", "n2", "n3"])?;
    assert!(n1.netbee_refused(&["node", "demote", "n1"]).contains("last manager"));
    assert!(n1.netbee_refused(&["node", "rm", "n2"]).contains("not down"));

    // a killed node is Down within 10 s, Ready again after restart
    n2.kill_daemon()?;
    let t = Instant::now();
    wait_until(Duration::from_secs(10), "n2 Down", || node_field(n1, "n2", "Status") == "Down")?;
    eprintln!("n2 shown Down {:?} after SIGKILL", t.elapsed());
    n2.start_daemon()?;
    wait_until(Duration::from_secs(10), "n2 Ready", || node_field(n1, "n2", "Status") == "Ready")?;

    // rm: refused while up, accepted once down
    n3.kill_daemon()?;
    wait_until(Duration::from_secs(10), "n3 Down", || node_field(n1, "n3", "Status") == "Down")?;
    n1.netbee(&["node", "rm", "n3"])?;
    assert!(!n1.netbee(&["node", "ls"])?.contains("n3"));

    // leave: the last manager is warned, a worker leaves
    assert!(n1.netbee_refused(&["swarm", "leave"]).contains("last manager"));
    n2.netbee(&["swarm", "leave"])?;
    assert!(!n1.netbee(&["node", "ls"])?.contains("n2"));
    assert!(n2.netbee_refused(&["node", "ls"]).contains("not a swarm manager"));
    Ok(())
}

#[test]
fn overlay_across_nodes_isolated_and_fast() -> Result<()> {
    let lab = cluster("overlay")?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    n1.netbee(&["network", "create", "--driver", "overlay", "ov1"])?;
    n1.netbee(&["network", "create", "--driver", "overlay", "ov2"])?;
    wait_until(Duration::from_secs(10), "ov1 on n2", || {
        n2.netbee(&["network", "ls"]).map(|s| s.contains("ov1")).unwrap_or(false)
    })?;
    let ls = n2.netbee(&["network", "ls"])?;
    assert!(ls.lines().any(|l| l.contains("ov1") && l.contains("overlay") && l.contains("swarm")), "{ls}");
    let vni = n2.network_inspect("ov1")?["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap()
        .to_string();

    n2.run_whoami("srv", &["--network", "ov1"], 8080)?;
    n1.netbee(&["run", "-d", "--name", "cli", "--network", "ov1", "host", "sleep", "600"])?;
    let srv = n2.container_ip("srv", "ov1")?;
    let cli = n1.container_ip("cli", "ov1")?;
    assert_eq!(n2.inspect("srv")?["Node"]["Name"], "n2", "inspect shows the node");
    assert_eq!(n1.exec("cli", &["cat", "/sys/class/net/eth0/mtu"])?.trim(), "1450");

    // capture on the underlay while the containers talk
    let cap = lab
        .underlay()
        .cmd("tcpdump")
        .args(["-nn", "-c", "6", "-i", "br0", "udp", "port", "4789"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let mut answer = String::new();
    wait_until(Duration::from_secs(10), "cli reaches srv over the overlay", || {
        answer = n1.exec("cli", &["curl", "-s", "-m", "2", &format!("http://{srv}:8080/")]).unwrap_or_default();
        answer.contains("Hostname")
    })?;
    assert!(whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{cli}:")), "{answer}");
    assert!(n1.exec("cli", &["ping", "-c", "3", "-W", "2", &srv])?.contains(" 0% packet loss"));
    let dump = String::from_utf8_lossy(&cap.wait_with_output()?.stdout).into_owned();
    assert!(dump.contains(&format!("vni {vni}")), "VXLAN with the network's VNI on the underlay:\n{dump}");
    assert!(n1.counter("encap")? > 0 && n2.counter("decap")? > 0);

    // overlays are isolated from each other and from bridge networks
    n2.run_whoami("other", &["--network", "ov2"], 8080)?;
    let other = n2.container_ip("other", "ov2")?;
    assert!(!n1.exec_ok("cli", &["curl", "-s", "-m", "2", &format!("http://{other}:8080/")]));
    n1.run_whoami("local", &[], 8080)?;
    let local = n1.container_ip("local", "bridge")?;
    assert!(!n1.exec_ok("cli", &["curl", "-s", "-m", "2", &format!("http://{local}:8080/")]));
    assert!(!n1.exec_ok("cli", &["ping", "-c", "1", "-W", "1", &local]));
    assert!(!n2.netbee(&["logs", "other"])?.contains("from"), "nothing crossed between overlays");

    // 100 MB at full speed, no retransmission storm
    n2.netbee(&["run", "-d", "--name", "sink", "--network", "ov1", "host", "iperf3", "-s", "-1"])?;
    let sink = n2.container_ip("sink", "ov1")?;
    std::thread::sleep(Duration::from_millis(500));
    let out = n1.exec("cli", &["iperf3", "-c", &sink, "-n", "100M", "-J"])?;
    let v: Value = serde_json::from_str(&out)?;
    let sent = &v["end"]["sum_sent"];
    let bps = sent["bits_per_second"].as_f64().unwrap_or(0.0);
    let retr = sent["retransmits"].as_u64().unwrap_or(u64::MAX);
    eprintln!("overlay 100 MB: {:.2} Gbit/s, {retr} retransmits", bps / 1e9);
    assert!(sent["bytes"].as_u64().unwrap_or(0) >= 100 * 1024 * 1024);
    assert!(bps > 1e9, "full speed: {bps} bit/s");
    // an MTU mismatch shows as tens of thousands of retransmissions; a busy 2-core VM gives a few
    // hundred (about 72,000 segments are sent)
    assert!(retr < 2000, "no retransmission storm: {retr}");
    Ok(())
}

#[test]
fn overlay_survives_daemon_and_etcd_restarts() -> Result<()> {
    let mut lab = cluster("resilient")?;
    {
        let (n1, n2) = (lab.node("n1"), lab.node("n2"));
        n1.netbee(&["network", "create", "--driver", "overlay", "ov"])?;
        wait_until(Duration::from_secs(10), "ov on n2", || {
            n2.netbee(&["network", "ls"]).map(|s| s.contains("ov")).unwrap_or(false)
        })?;
        n2.run_whoami("srv", &["--network", "ov"], 8080)?;
        n1.netbee(&["run", "-d", "--name", "cli", "--network", "ov", "host", "sleep", "600"])?;
        let srv = n2.container_ip("srv", "ov")?;
        wait_until(Duration::from_secs(10), "overlay up", || {
            n1.exec_ok("cli", &["curl", "-s", "-m", "2", &format!("http://{srv}:8080/")])
        })?;
        // requests every 100 ms from the client's namespace while n2's daemon restarts
        let pid = n1.inspect("cli")?["State"]["Pid"].to_string();
        let load = n1
            .cmd("nsenter")
            .args(["-t", &pid, "-n", "sh", "-c", &format!(
                "ok=0; fail=0; for i in $(seq 60); do if curl -s -m 1 http://{srv}:8080/ | grep -q Hostname; then ok=$((ok+1)); else fail=$((fail+1)); fi; sleep 0.1; done; echo $ok $fail"
            )])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        n2.kill_daemon()?;
        std::thread::sleep(Duration::from_secs(1));
        n2.start_daemon()?;
        let out = String::from_utf8_lossy(&load.wait_with_output()?.stdout).into_owned();
        let counts: Vec<u32> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert_eq!(counts.get(1), Some(&0), "no request failed across the daemon restart (ok, failed = {out})");
    }
    // while etcd is down, cluster commands fail within seconds with a message, not gRPC text
    lab.kill_etcd(0)?;
    let t = Instant::now();
    let e = lab.node("n1").netbee_refused(&["node", "ls"]);
    eprintln!("node ls with etcd down: {:?}: {}", t.elapsed(), e.trim());
    assert!(e.contains("the cluster store (etcd at"), "{e}");
    assert!(!e.contains("grpc") && !e.contains("status:"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // etcd restarts: nodes reconnect, nothing is lost
    lab.restart_etcd(0)?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    wait_until(Duration::from_secs(20), "cluster answers after etcd restart", || {
        nodes(n1).map(|v| v.len() == 3 && v.iter().all(|x| x["Status"] == "Ready")).unwrap_or(false)
    })?;
    assert!(n2.netbee(&["network", "ls"])?.contains("ov"));
    n2.run_whoami("late", &["--network", "ov"], 8080)?;
    let late = n2.container_ip("late", "ov")?;
    wait_until(Duration::from_secs(10), "a container started after the etcd restart is reachable", || {
        n1.exec_ok("cli", &["curl", "-s", "-m", "2", &format!("http://{late}:8080/")])
    })?;
    Ok(())
}

#[test]
fn cluster_bad_input() -> Result<()> {
    let mut lab = Lab::new("clusterbad")?;
    let store = lab.start_etcd(1)?;
    for n in ["n1", "n2"] {
        lab.add_node(n)?;
        lab.node(n).set_daemon_args(&["--cluster-store", &store]);
        lab.node(n).start_daemon()?;
    }
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    assert!(n1.netbee_refused(&["network", "create", "--driver", "overlay", "ov"]).contains("swarm"));
    assert!(n2.netbee_refused(&["swarm", "join-token", "worker"]).contains("not a swarm manager"));
    n1.netbee(&["swarm", "init"])?;
    assert!(n1.netbee_refused(&["swarm", "init"]).contains("already part of a swarm"));
    let mgr = format!("{}:2377", n1.addr());
    wait_until(Duration::from_secs(5), "join listener", || n1.sh(&format!("nc -z {} 2377", n1.addr())).is_ok())?;
    let err = n2.netbee_refused(&["swarm", "join", "--token", "SWMTKN-1-bogus-bogus", &mgr]);
    assert!(err.contains("invalid join token"), "{err}");
    let err = n2.netbee_refused(&["swarm", "join", "--token", "SWMTKN-1-x-y", "10.77.0.250:2377"]);
    assert!(err.contains("could not reach the manager at 10.77.0.250:2377"), "{err}");
    assert!(n2.netbee_refused(&["node", "ls"]).contains("swarm"), "a refused join changes nothing");

    n1.netbee(&["network", "create", "--driver", "overlay", "--subnet", "10.20.0.0/24", "ov"])?;
    let err = n1.netbee_refused(&["network", "create", "--driver", "overlay", "--subnet", "10.20.0.128/25", "ov2"]);
    assert!(err.contains("overlaps") && err.contains("ov"), "{err}");
    n1.netbee(&["run", "-d", "--name", "user", "--network", "ov", "host", "sleep", "600"])?;
    let err = n1.netbee_refused(&["network", "rm", "ov"]);
    assert!(err.contains("active endpoints") && err.contains("user"), "{err}");
    assert!(n1.netbee(&["network", "ls"])?.contains("ov"));
    n1.netbee(&["rm", "-f", "user"])?;
    n1.netbee(&["network", "rm", "ov"])?;
    assert!(!n1.netbee(&["network", "ls"])?.contains(" ov "));
    Ok(())
}

/// `a.b.c.d/len` as the first and last address.
fn cidr_range(cidr: &str) -> Result<(u32, u32)> {
    let (ip, len) = cidr.split_once('/').ok_or_else(|| anyhow!("not a CIDR: {cidr}"))?;
    let (ip, len): (std::net::Ipv4Addr, u32) = (ip.parse()?, len.parse()?);
    let size = if len == 0 { u32::MAX } else { (1u32 << (32 - len)) - 1 };
    Ok((u32::from(ip), u32::from(ip) + size))
}

/// Trials of concurrent overlay creations on three managers (more with NETBEE_RACE_TRIALS, as
/// `cargo xtask soak` runs it): ten distinct names spread over the managers plus one name asked
/// for on all three at once. Every created network must have its own subnet and VNI, and the
/// shared name exactly one owner.
///
/// ```text
///   n1 n2 n3 (managers) --10 x network create --driver overlay, at once--> etcd
///   n1 n2 n3            --network create --driver overlay same, at once--> one wins, two 409
/// ```
#[test]
fn concurrent_overlay_creates_on_three_managers_never_collide() -> Result<()> {
    let lab = cluster("races")?;
    let n1 = lab.node("n1");
    n1.netbee(&["node", "promote", "n2"])?;
    let managers = [lab.node("n1"), lab.node("n2"), lab.node("n3")];
    let trials: usize = std::env::var("NETBEE_RACE_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(3);
    for trial in 0..trials {
        let results: Vec<(String, Result<String>)> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for i in 0..10 {
                let (m, name) = (managers[i % 3], format!("r{trial}n{i}"));
                handles.push(s.spawn(move || {
                    let r = m.netbee(&["network", "create", "--driver", "overlay", &name]);
                    (name, r)
                }));
            }
            for m in managers {
                let name = format!("r{trial}same");
                handles.push(s.spawn(move || (name.clone(), m.netbee(&["network", "create", "-d", "overlay", &name]))));
            }
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (name, r) in results.iter().filter(|(n, _)| !n.ends_with("same")) {
            assert!(r.is_ok(), "trial {trial}: creating {name}: {r:?}");
        }
        let same: Vec<&Result<String>> = results.iter().filter(|(n, _)| n.ends_with("same")).map(|(_, r)| r).collect();
        assert_eq!(
            same.iter().filter(|r| r.is_ok()).count(),
            1,
            "trial {trial}: one owner of the shared name: {same:?}"
        );
        // what the cluster holds, as any manager sees it once its sync caught up
        wait_until(Duration::from_secs(10), "n1 knows every new overlay", || {
            n1.netbee(&["network", "ls", "--format", "json"]).is_ok_and(|ls| {
                let names: Vec<String> = ls
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| v["Name"].as_str().map(str::to_string))
                    .collect();
                results.iter().all(|(n, _)| names.contains(n))
            })
        })?;
        let mut nets = Vec::new();
        for (name, _) in &results {
            if !nets.iter().any(|(n, _, _)| n == name) {
                let v = n1.network_inspect(name)?;
                let subnet = cidr_range(v["IPAM"]["Config"][0]["Subnet"].as_str().unwrap_or_default())?;
                let vni =
                    v["Options"]["com.docker.network.driver.overlay.vxlanid_list"].as_str().unwrap_or("").to_string();
                nets.push((name.clone(), subnet, vni));
            }
        }
        assert_eq!(nets.len(), 11, "trial {trial}: {nets:?}");
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                assert!(
                    a.1.1 < b.1.0 || b.1.1 < a.1.0,
                    "trial {trial}: subnets of {} and {} overlap: {nets:?}",
                    a.0,
                    b.0
                );
                assert_ne!(a.2, b.2, "trial {trial}: {} and {} share VNI {}", a.0, b.0, a.2);
            }
        }
        for (name, _, _) in &nets {
            n1.netbee(&["network", "rm", name])?;
        }
    }
    Ok(())
}
