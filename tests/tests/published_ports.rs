//! Published ports in eBPF — every docker `-p` form, from outside, from the node itself
//! and from other containers, with no firewall rule and no proxy process.
use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;
use netbee_lab::{Node, Ns, single_node_lab, wait_until, whoami_field};
use serde_json::Value;

fn get(ns: &Ns, url: &str) -> Option<String> {
    ns.sh(&format!("curl -s -m 3 {url}")).ok().filter(|s| s.contains("Hostname"))
}

fn udp(ns: &Ns, addr: &str, port: u16) -> Option<String> {
    ns.sh(&format!("echo ping | nc -u -w2 {addr} {port}")).ok().filter(|s| s.contains("Hostname"))
}

fn host_port(node: &Node, container: &str, key: &str) -> Result<u16> {
    let v = node.inspect(container)?;
    Ok(v["NetworkSettings"]["Ports"][key][0]["HostPort"].as_str().unwrap_or("").parse()?)
}

#[test]
fn publish_forms_and_paths() -> Result<()> {
    let lab = single_node_lab("pubforms", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let node_ip = n.addr().to_string();

    // -p H:C, repeated -p, /udp
    n.run_whoami("web", &["-p", "8080:8080", "-p", "8081:8080", "-p", "5353:8080/udp"], 8080)?;
    let web_ip = n.container_ip("web", "bridge")?;
    let a = get(x, &format!("http://{node_ip}:8080/")).expect("external -> node:8080");
    assert!(
        whoami_field(&a, "RemoteAddr").unwrap().starts_with(&format!("{}:", x.addr())),
        "client address preserved: {a}"
    );
    assert!(a.contains(&format!("IP: {web_ip}")));
    assert!(get(x, &format!("http://{node_ip}:8081/")).is_some(), "second -p");
    let u = udp(x, &node_ip, 5353).expect("UDP request/reply through a published UDP port");
    assert!(whoami_field(&u, "RemoteAddr").unwrap().starts_with(&format!("{}:", x.addr())), "{u}");

    // replies come from node-address:H: the client's socket is connected to it, so a reply from
    // any other address would never reach curl. Check the wire too.
    let cap = x
        .cmd("tcpdump")
        .args(["-nn", "-c", "4", "-i", "eth0", "tcp", "and", "src", "port", "8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    get(x, &format!("http://{node_ip}:8080/")).expect("again");
    let out = String::from_utf8_lossy(&cap.wait_with_output()?.stdout).into_owned();
    assert!(out.lines().count() >= 4 && out.lines().all(|l| l.contains(&format!("{node_ip}.8080 >"))), "{out}");

    // ps and inspect show the bindings
    let ps = n.netbee(&["ps"])?;
    assert!(ps.contains("0.0.0.0:8080->8080/tcp") && ps.contains("0.0.0.0:5353->8080/udp"), "{ps}");
    assert_eq!(host_port(n, "web", "8080/tcp")?, 8080);

    // -p C: a free port from 32768-60999
    n.run_whoami("anyport", &["-p", "8080"], 8080)?;
    let hp = host_port(n, "anyport", "8080/tcp")?;
    assert!((32768..=60999).contains(&hp), "{hp}");
    assert!(n.netbee(&["ps"])?.contains(&format!("0.0.0.0:{hp}->8080/tcp")));
    assert!(get(x, &format!("http://{node_ip}:{hp}/")).is_some());

    // -p LO-HI:C: the first free port of the range
    n.run_whoami("r1", &["-p", "9000-9002:8080"], 8080)?;
    n.run_whoami("r2", &["-p", "9000-9002:8080"], 8080)?;
    assert_eq!(host_port(n, "r1", "8080/tcp")?, 9000);
    assert_eq!(host_port(n, "r2", "8080/tcp")?, 9001);
    let via = get(x, &format!("http://{node_ip}:9001/")).unwrap();
    assert!(via.contains(&format!("IP: {}", n.container_ip("r2", "bridge")?)));

    // -p IP:H:C on the node's address; -p 127.0.0.1:H:C only from the node itself
    n.run_whoami("bound", &["-p", &format!("{node_ip}:7000:8080"), "-p", "127.0.0.1:7001:8080"], 8080)?;
    assert!(get(x, &format!("http://{node_ip}:7000/")).is_some());
    assert!(get(x, &format!("http://{node_ip}:7001/")).is_none(), "127.0.0.1 publish is not reachable from outside");
    assert!(get(n, "http://127.0.0.1:7001/").is_some(), "127.0.0.1 publish reachable from the node");

    // -P with --expose
    n.run_whoami("exposed", &["--expose", "8080", "-P"], 8080)?;
    let hp = host_port(n, "exposed", "8080/tcp")?;
    assert!(get(x, &format!("http://{node_ip}:{hp}/")).is_some());

    // a process on the node: 127.0.0.1:H and node-address:H (socket-level eBPF, no proxy)
    let local = get(n, "http://127.0.0.1:8080/").expect("node -> 127.0.0.1:8080");
    assert!(local.contains(&format!("IP: {web_ip}")));
    assert!(get(n, &format!("http://{node_ip}:8080/")).is_some(), "node -> node-address:8080");
    assert!(n.sh("echo x | nc -u -w2 127.0.0.1 5353")?.contains("Hostname"), "node -> 127.0.0.1 UDP");
    assert!(n.counter("sock_lb")? >= 3);

    // hairpin: another container -> node-address:H, from the same and from another network
    n.netbee(&["network", "create", "other"])?;
    n.netbee(&["run", "-d", "--name", "c1", "host", "sleep", "600"])?;
    n.netbee(&["run", "-d", "--name", "c2", "--network", "other", "host", "sleep", "600"])?;
    for c in ["c1", "c2"] {
        let ip = n.container_ip(c, if c == "c1" { "bridge" } else { "other" })?;
        let a = n.exec(c, &["curl", "-s", "-m", "3", &format!("http://{node_ip}:8080/")])?;
        assert!(whoami_field(&a, "RemoteAddr").unwrap().starts_with(&format!("{ip}:")), "hairpin from {c}: {a}");
    }
    Ok(())
}

#[test]
fn stop_withdraws_start_republishes_and_conflicts_name_the_owner() -> Result<()> {
    let lab = single_node_lab("pubcycle", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let url = format!("http://{}:8080/", n.addr());
    n.run_whoami("web", &["-p", "8080:8080"], 8080)?;
    assert!(get(x, &url).is_some());
    n.netbee(&["stop", "web"])?;
    assert!(get(x, &url).is_none(), "stop withdraws the port at once");
    // a stopped container holds no port
    n.netbee(&["run", "-d", "--name", "squat", "-p", "8080:80", "host", "sleep", "60"])?;
    n.netbee(&["rm", "-f", "squat"])?;
    n.netbee(&["start", "web"])?;
    wait_until(Duration::from_secs(5), "republished", || get(x, &url).is_some())?;

    let err = n.netbee_refused(&["run", "-d", "--name", "dup", "-p", "8080:80", "host", "sleep", "60"]);
    assert!(err.contains("8080") && err.contains("container web"), "{err}");
    // a port bound by a process on the node
    let mut squatter = n.cmd("nc").args(["-l", "-p", "6000"]).spawn()?;
    wait_until(Duration::from_secs(3), "nc listening", || n.sh("ss -ltn | grep -q ':6000 '").is_ok())?;
    let err = n.netbee_refused(&["run", "-d", "--name", "dup2", "-p", "6000:80", "host", "sleep", "60"]);
    assert!(err.contains("6000") && err.contains("nc"), "owner process named: {err}");
    squatter.kill()?;
    squatter.wait()?;
    let names = n.netbee(&["ps", "-a", "--format", "json"])?;
    assert!(!names.contains("\"dup\"") && !names.contains("\"dup2\""), "refused containers must not exist: {names}");

    n.netbee(&["rm", "-f", "web"])?;
    assert!(get(x, &url).is_none(), "rm withdraws the port");
    Ok(())
}

#[test]
fn publishing_adds_no_firewall_rule_and_no_process() -> Result<()> {
    let lab = single_node_lab("pubnofw", &[])?;
    let n = lab.node("n1");
    let snapshot = |n: &Node| -> Result<(String, String, BTreeSet<String>)> {
        let ipt = n.sh("iptables-save 2>/dev/null | grep -v '^#' || true")?;
        let nft = n.sh("nft list ruleset 2>/dev/null || true")?;
        let pids = n.sh(&format!("ip netns pids {}", n.name()))?;
        let mut procs = BTreeSet::new();
        for pid in pids.split_whitespace() {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                procs.insert(c.trim().to_string());
            }
        }
        Ok((ipt, nft, procs))
    };
    let before = snapshot(n)?;
    n.run_whoami("web", &["-p", "8080:8080", "-p", "8081:8080/udp", "-p", "127.0.0.1:8082:8080"], 8080)?;
    assert!(get(lab.external("x1"), &format!("http://{}:8080/", n.addr())).is_some());
    let after = snapshot(n)?;
    assert_eq!(before.0, after.0, "iptables rules changed");
    assert_eq!(before.1, after.1, "nft ruleset changed");
    assert_eq!(before.2, after.2, "processes in the node's namespace changed");
    assert!(!after.2.iter().any(|p| p.contains("proxy") || p == "socat"));
    Ok(())
}

#[test]
fn nat_checksums_verify_with_offload_off() -> Result<()> {
    let lab = single_node_lab("pubcsum", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let dir = lab.dir().join("www");
    std::fs::create_dir_all(&dir)?;
    let blob: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(dir.join("blob"), &blob)?;
    n.netbee(&[
        "run",
        "-d",
        "--name",
        "files",
        "-p",
        "8000:8000",
        "-w",
        dir.to_str().unwrap(),
        "host",
        "python3",
        "-m",
        "http.server",
        "8000",
    ])?;
    wait_until(Duration::from_secs(10), "http.server", || {
        x.sh(&format!("curl -s -m 1 -o /dev/null http://{}:8000/blob", n.addr())).is_ok()
    })?;
    // software checksums on both ends: every NATed segment is verified by the receiving stack
    x.disable_tx_offload("eth0")?;
    n.exec("files", &["ethtool", "-K", "eth0", "tx", "off"])?;
    let cap = n
        .cmd("nsenter")
        .args([
            "-t",
            &n.inspect("files")?["State"]["Pid"].to_string(),
            "-n",
            "tcpdump",
            "-nvv",
            "-c",
            "20",
            "-i",
            "eth0",
            "tcp",
            "port",
            "8000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let got = x.sh(&format!("curl -s -m 10 http://{}:8000/blob | sha256sum", n.addr()))?;
    let want = n.sh(&format!("sha256sum < {}", dir.join("blob").display()))?;
    assert_eq!(got.split_whitespace().next(), want.split_whitespace().next(), "2 MB arrived intact");
    let dump = String::from_utf8_lossy(&cap.wait_with_output()?.stdout).into_owned();
    assert!(dump.contains("(correct)"), "container saw verified checksums: {dump}");
    assert!(!dump.contains("incorrect"), "{dump}");
    Ok(())
}

#[test]
fn a_thousand_published_ports() -> Result<()> {
    let lab = single_node_lab("pub1000", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let specs: Vec<String> = (0..1000).map(|i| format!("{}:8080", 20000 + i)).collect();
    let mut args: Vec<&str> = vec![];
    for s in &specs {
        args.push("-p");
        args.push(s);
    }
    n.run_whoami("many", &args, 8080)?;
    let v: Value = n.inspect("many")?;
    assert_eq!(v["NetworkSettings"]["Ports"]["8080/tcp"].as_array().unwrap().len(), 1000);
    for port in [20000, 20001, 20499, 20998, 20999] {
        assert!(get(x, &format!("http://{}:{port}/", n.addr())).is_some(), "port {port}");
    }
    n.netbee(&["rm", "-f", "many"])?;
    assert!(get(x, &format!("http://{}:20500/", n.addr())).is_none());
    Ok(())
}

#[test]
fn bad_publish_specs_are_refused_and_publish_nothing() -> Result<()> {
    let lab = single_node_lab("pubbad", &[])?;
    let n = lab.node("n1");
    for (spec, needle) in [
        ("0:80", "0"),
        ("70000:80", "70000"),
        ("8080:0", "0"),
        ("80:99999", "99999"),
        ("abc:80", "abc"),
        ("1.2.3:8080:80", "1.2.3"),
        ("9010-9000:80", "9010-9000"),
        ("8080:80/sctp", "sctp"),
        ("::80:80:1", "invalid"),
        ("", "invalid"),
    ] {
        let err = n.netbee_refused(&["run", "-d", "-p", spec, "host", "sleep", "60"]);
        assert!(err.contains(needle), "-p {spec:?}: {err}");
    }
    let err = n.netbee_refused(&["run", "-d", "--expose", "x", "-P", "host", "sleep", "60"]);
    assert!(err.contains("x"), "{err}");
    // ranges are expanded: a request for more ports than exist is refused before it costs memory
    let err =
        n.netbee_refused(&["run", "-d", "-p", "1-65535", "-p", "1-65535/udp", "-p", "1-65535", "host", "sleep", "60"]);
    assert!(err.contains("too many ports"), "{err}");
    assert_eq!(n.netbee(&["ps", "-a", "-q"])?.trim(), "");
    let st = n.datapath_stats()?;
    assert_eq!(st["Counters"]["dnat_new"], 0);
    Ok(())
}

#[test]
fn conntrack_collects_closed_flows_and_keeps_idle_established_ones() -> Result<()> {
    let lab = single_node_lab("pubct", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    n.run_whoami("web", &["-p", "8080:8080"], 8080)?;
    let node_ip = n.addr();
    // an idle established connection, opened from the external client and left open
    let idle = x.run(move || std::net::TcpStream::connect((node_ip, 8080)));
    let mut idle = idle?;
    for _ in 0..5 {
        assert!(get(x, &format!("http://{node_ip}:8080/")).is_some());
    }
    let entries = |n: &Node| n.datapath_stats().map(|s| s["Conntrack"]["Entries"].as_u64().unwrap_or(0)).unwrap_or(0);
    assert!(entries(n) >= 12, "5 closed + 1 open flow, two entries each");
    // closed flows go within the closing timeout (10 s) plus a GC period
    wait_until(Duration::from_secs(30), "closed flows collected", || entries(n) == 2)?;
    let st = n.datapath_stats()?;
    assert!(st["Conntrack"]["EntriesCollected"].as_u64().unwrap() >= 10);
    assert_eq!(st["Conntrack"]["Evicted"], 0);
    // the idle connection is still translated
    use std::io::{Read as _, Write as _};
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    idle.read_to_string(&mut body)?;
    assert!(body.contains("Hostname"), "{body}");
    Ok(())
}

/// A daemon started under `ip netns exec` on a hybrid-cgroup host sees no cgroup v2 hierarchy
/// (the remounted /sys hides `/sys/fs/cgroup/unified`): it mounts one of its own for the socket
/// hooks, and processes on the node reach a published port on 127.0.0.1 and on the node's address.
///
/// ```text
///   n1: ip netns exec n1 netbee daemon (no --cgroup)   n1$ curl 127.0.0.1:8080 --> web
/// ```
#[test]
fn node_local_clients_reach_published_ports_with_the_daemon_under_ip_netns_exec() -> Result<()> {
    let mut lab = netbee_lab::Lab::new("netnsexec")?;
    lab.add_node("n1")?;
    let n1 = lab.node("n1");
    let log = std::fs::File::create(n1.dir().join("daemon.log"))?;
    let bin = netbee_lab::netbee_bin();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", n1.name()])
        .arg(&bin)
        .arg("daemon")
        .arg("--node-dir")
        .arg(n1.dir())
        .args(["--uplink", "eth0", "--hostname", "n1"])
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    // `ip netns exec` execs the daemon in place: in the node's cgroup, the lab's teardown ends it
    // and every container it starts, also if this test fails
    std::fs::write(n1.cgroup().join("cgroup.procs"), child.id().to_string())?;
    wait_until(Duration::from_secs(20), "the daemon answers", || n1.netbee(&["version"]).is_ok())?;
    let log = std::fs::read_to_string(n1.dir().join("daemon.log"))?;
    assert!(log.contains("mounted a cgroup v2 hierarchy"), "{log}");
    n1.run_whoami("web", &["-p", "8080:8080"], 8080)?;
    for addr in ["127.0.0.1".to_string(), n1.addr().to_string()] {
        let out = n1.sh(&format!("curl -s -m 3 http://{addr}:8080/"))?;
        assert!(whoami_field(&out, "Hostname").is_some(), "from the node to {addr}:8080: {out:?}");
    }
    Ok(())
}

/// `--cgroup` naming a directory that is not part of a cgroup v2 hierarchy is refused at start
/// with that reason (it used to fail later with the kernel's "Bad file descriptor").
#[test]
fn a_cgroup_option_outside_cgroup_v2_is_refused_with_the_reason() -> Result<()> {
    let mut lab = netbee_lab::Lab::new("badcgroup")?;
    lab.add_node("n1")?;
    let n1 = lab.node("n1");
    let mut cmd = n1.cmd(&netbee_lab::netbee_bin().to_string_lossy());
    cmd.args(["daemon", "--uplink", "eth0", "--cgroup", "/tmp", "--node-dir"]).arg(n1.dir());
    let o = cmd.output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a daemon started with --cgroup /tmp");
    assert!(e.contains("/tmp is not a directory of a cgroup v2 hierarchy"), "{e}");
    Ok(())
}
