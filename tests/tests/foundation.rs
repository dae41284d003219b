//! One node: networks, containers and the eBPF bridge datapath. Every test builds its
//! own lab (namespaces, a real daemon) and asserts on real packets.
use std::time::Duration;

use anyhow::Result;
use netbee_lab::{netbee_bin, single_node_lab, wait_until, whoami_field};

#[test]
fn demo_runs_end_to_end() -> Result<()> {
    let lab_bin = netbee_bin().with_file_name("netbee-lab");
    let out = std::process::Command::new(&lab_bin).arg("demo").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("datapath redirected"), "{text}");
    assert!(text.contains("demo passed"), "{text}");
    Ok(())
}

#[test]
fn network_ipam_defaults_overlap_and_docker_fields() -> Result<()> {
    let lab = single_node_lab("ipam", &[])?;
    let n = lab.node("n1");
    let ls = n.netbee(&["network", "ls"])?;
    let header: Vec<&str> = ls.lines().next().unwrap().split("   ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    for net in ["bridge", "host", "none"] {
        assert!(ls.lines().any(|l| l.split_whitespace().nth(1) == Some(net)), "{net} missing in\n{ls}");
    }
    let bridge = n.network_inspect("bridge")?;
    assert_eq!(bridge["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
    assert_eq!(bridge["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");

    n.netbee(&["network", "create", "a"])?;
    n.netbee(&["network", "create", "b"])?;
    assert_eq!(n.network_inspect("a")?["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
    assert_eq!(n.network_inspect("b")?["IPAM"]["Config"][0]["Subnet"], "172.19.0.0/16");
    assert_eq!(n.network_inspect("a")?["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");

    let err = n.netbee_refused(&["network", "create", "--subnet", "172.19.128.0/24", "netc"]);
    assert!(err.contains("overlaps") && err.contains("\"b\""), "{err}");
    let err = n.netbee_refused(&["network", "create", "--subnet", "10.9.0.0/16", "a"]);
    assert!(err.contains("already exists"), "{err}");
    assert!(n.network_inspect("netc").is_err(), "a refused network must not exist");

    n.netbee(&[
        "network",
        "create",
        "--subnet",
        "10.50.0.0/24",
        "--gateway",
        "10.50.0.254",
        "--ip-range",
        "10.50.0.128/25",
        "fixed",
    ])?;
    n.run_whoami("web", &["--network", "fixed"], 8080)?;
    let ip = n.container_ip("web", "fixed")?;
    assert_eq!(ip, "10.50.0.128", "first address of the ip-range");
    n.netbee(&["run", "-d", "--name", "pinned", "--network", "fixed", "--ip", "10.50.0.7", "host", "sleep", "600"])?;
    assert_eq!(n.container_ip("pinned", "fixed")?, "10.50.0.7");

    let v = n.network_inspect("fixed")?;
    for field in ["Name", "Id", "Created", "Scope", "Driver", "IPAM", "Containers", "Internal"] {
        assert!(v.get(field).is_some(), "network inspect lacks {field}: {v}");
    }
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Driver"], "bridge");
    let cid = n.inspect("web")?["Id"].as_str().unwrap().to_string();
    let c = &v["Containers"][&cid];
    assert_eq!(c["IPv4Address"], "10.50.0.128/24");
    assert_eq!(c["MacAddress"], "02:42:0a:32:00:80");
    assert_eq!(c["EndpointID"].as_str().unwrap().len(), 64);
    assert_eq!(v["Containers"].as_object().unwrap().len(), 2);

    let err = n.netbee_refused(&["network", "rm", "fixed"]);
    assert!(err.contains("active endpoints"), "{err}");
    let err = n.netbee_refused(&["network", "rm", "bridge"]);
    assert!(err.contains("pre-defined"), "{err}");
    n.netbee(&["rm", "-f", "web", "pinned"])?;
    n.netbee(&["network", "rm", "fixed"])?;
    assert!(!n.netbee(&["network", "ls"])?.contains("fixed"));
    Ok(())
}

#[test]
fn same_network_tcp_udp_icmp_with_real_source_address() -> Result<()> {
    let lab = single_node_lab("samenet", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "app"])?;
    n.run_whoami("srv", &["--network", "app"], 8080)?;
    n.netbee(&["run", "-d", "--name", "cli", "--network", "app", "host", "sleep", "600"])?;
    let srv = n.container_ip("srv", "app")?;
    let cli = n.container_ip("cli", "app")?;
    // the receiver verifies checksums: no offload on the sender's side
    n.exec("cli", &["ethtool", "-K", "eth0", "tx", "off"])?;

    let before = n.counter("redirect_local")?;
    let http = n.exec("cli", &["curl", "-s", "-m", "5", &format!("http://{srv}:8080/")])?;
    assert!(whoami_field(&http, "RemoteAddr").unwrap().starts_with(&format!("{cli}:")), "{http}");
    assert!(n.counter("redirect_local")? > before, "packets went through the eBPF redirect");

    let udp = n.exec("cli", &["sh", "-c", &format!("echo hi | nc -u -w2 {srv} 8080")])?;
    assert!(whoami_field(&udp, "RemoteAddr").unwrap().starts_with(&format!("{cli}:")), "udp answer: {udp}");

    let ping = n.exec("cli", &["ping", "-c", "2", "-W", "2", &srv])?;
    assert!(ping.contains(" 0% packet loss"), "{ping}");
    // the neighbour the container learned is the peer's real MAC, answered by the datapath
    let neigh = n.exec("cli", &["ip", "neigh", "show", &srv])?;
    let mac = n.inspect("srv")?["NetworkSettings"]["Networks"]["app"]["MacAddress"].as_str().unwrap().to_string();
    assert!(neigh.contains(&mac), "neighbour {neigh} should carry {mac}");
    assert!(n.counter("arp_reply")? > 0);

    // the node's bridge device carries no ports: forwarding is not the Linux bridge's
    let dev = n.network_inspect("app")?["NetbeeDevice"].as_str().unwrap().to_string();
    let ports = n.sh(&format!("ls /sys/class/net/{dev}/brif | wc -l"))?;
    assert_eq!(ports.trim(), "0", "no interface is enslaved to {dev}");
    Ok(())
}

#[test]
fn networks_are_isolated_until_connected() -> Result<()> {
    let lab = single_node_lab("isolation", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "red"])?;
    n.netbee(&["network", "create", "blue"])?;
    n.run_whoami("target", &["--network", "blue"], 8080)?;
    n.netbee(&["run", "-d", "--name", "prober", "--network", "red", "host", "sleep", "600"])?;
    let target = n.container_ip("target", "blue")?;

    let drops = n.drops("cross_network")?;
    assert!(!n.exec_ok("prober", &["curl", "-s", "-m", "2", &format!("http://{target}:8080/")]));
    assert!(!n.exec_ok("prober", &["sh", "-c", &format!("echo x | nc -u -w1 {target} 8080 | grep -q Hostname")]));
    assert!(!n.exec_ok("prober", &["ping", "-c", "1", "-W", "1", &target]));
    assert!(n.drops("cross_network")? > drops, "cross-network packets are dropped and counted");
    let log = n.netbee(&["logs", "target"])?;
    assert!(!log.contains("from"), "the listener received nothing: {log}");

    n.netbee(&["network", "connect", "blue", "prober"])?;
    let second = n.container_ip("prober", "blue")?;
    let answer = n.exec("prober", &["curl", "-s", "-m", "5", &format!("http://{target}:8080/")])?;
    assert!(whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{second}:")), "{answer}");
    assert!(n.exec("prober", &["ip", "-br", "addr"])?.contains("eth1"));

    n.netbee(&["network", "disconnect", "blue", "prober"])?;
    assert!(!n.exec_ok("prober", &["curl", "-s", "-m", "2", &format!("http://{target}:8080/")]));
    assert!(!n.exec("prober", &["ip", "-br", "addr"])?.contains("eth1"));
    assert!(n.inspect("prober")?["NetworkSettings"]["Networks"].get("blue").is_none());
    Ok(())
}

#[test]
fn forged_source_ip_or_mac_reaches_nothing_and_is_counted() -> Result<()> {
    let lab = single_node_lab("spoof", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "net"])?;
    n.run_whoami("victim", &["--network", "net"], 8080)?;
    n.netbee(&["run", "-d", "--name", "evil", "--network", "net", "host", "sleep", "600"])?;
    let victim = n.container_ip("victim", "net")?;
    assert!(n.exec_ok("evil", &["ping", "-c", "1", "-W", "2", &victim]), "honest traffic works");

    // a forged source address (a second address the container gives itself)
    let ip_drops = n.drops("spoofed_ip")?;
    n.exec("evil", &["ip", "addr", "add", "172.18.0.250/16", "dev", "eth0"])?;
    assert!(
        !n.exec_ok(
            "evil",
            &["curl", "-s", "-m", "2", "--interface", "172.18.0.250", &format!("http://{victim}:8080/")]
        )
    );
    assert!(!n.exec_ok("evil", &["ping", "-c", "1", "-W", "1", "-I", "172.18.0.250", &victim]));
    assert!(n.drops("spoofed_ip")? > ip_drops, "forged source IP dropped and counted");
    n.exec("evil", &["ip", "addr", "del", "172.18.0.250/16", "dev", "eth0"])?;

    // a forged source MAC
    let mac_drops = n.drops("spoofed_mac")?;
    n.exec("evil", &["ip", "link", "set", "eth0", "address", "02:42:de:ad:be:ef"])?;
    assert!(!n.exec_ok("evil", &["ping", "-c", "1", "-W", "1", &victim]));
    assert!(n.drops("spoofed_mac")? > mac_drops, "forged source MAC dropped and counted");
    let log = n.netbee(&["logs", "victim"])?;
    assert!(!log.contains("from"), "the victim received nothing forged: {log}");
    Ok(())
}

#[test]
fn gateway_masquerade_and_internal_networks() -> Result<()> {
    let lab = single_node_lab("egress", &[])?;
    let n = lab.node("n1");
    let ext = lab.external("x1");
    // a server outside the node, in the external namespace
    let mut server = ext
        .cmd(netbee_bin().to_str().unwrap())
        .args(["whoami", "--port", "9000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_until(Duration::from_secs(5), "external whoami", || ext.sh("curl -s -m 1 http://127.0.0.1:9000/").is_ok())?;
    n.netbee(&["network", "create", "open"])?;
    n.netbee(&["network", "create", "--internal", "closed"])?;
    n.netbee(&["run", "-d", "--name", "out", "--network", "open", "host", "sleep", "600"])?;
    n.netbee(&["run", "-d", "--name", "in", "--network", "closed", "host", "sleep", "600"])?;

    assert!(n.exec_ok("out", &["ping", "-c", "1", "-W", "2", "172.18.0.1"]), "gateway answers");
    let answer = n.exec("out", &["curl", "-s", "-m", "5", &format!("http://{}:9000/", ext.addr())])?;
    assert!(
        whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{}:", n.addr())),
        "masqueraded to the node's address: {answer}"
    );
    assert!(n.exec_ok("out", &["ping", "-c", "1", "-W", "2", &ext.addr().to_string()]), "ICMP is masqueraded too");
    assert!(n.counter("snat_new")? > 0);

    assert!(n.exec_ok("in", &["ping", "-c", "1", "-W", "2", "172.19.0.1"]), "internal network reaches its gateway");
    let routes = n.exec("in", &["ip", "route"])?;
    assert!(!routes.contains("default"), "no default route on an internal network: {routes}");
    // a container that adds its own way out is still stopped by the datapath
    n.exec("in", &["ip", "route", "add", "default", "via", "172.19.0.1"])?;
    let drops = n.drops("internal_network")?;
    assert!(!n.exec_ok("in", &["curl", "-s", "-m", "2", &format!("http://{}:9000/", ext.addr())]));
    assert!(n.drops("internal_network")? > drops);
    assert!(n.inspect("in")?["NetworkSettings"]["Gateway"] == "172.19.0.1");
    server.kill()?;
    let log = String::from_utf8_lossy(&server.wait_with_output()?.stdout).into_owned();
    let from_node = log.lines().filter(|l| l.contains(&format!("from {}:", n.addr()))).count();
    assert_eq!(from_node, 1, "only the open network's request arrived: {log}");
    Ok(())
}

#[test]
fn container_lifecycle_logs_exec_env_hostname() -> Result<()> {
    let lab = single_node_lab("lifecycle", &[])?;
    let n = lab.node("n1");
    // attached run: output and exit code come back; --rm removes it
    let o = n.netbee_output(&["run", "--rm", "--name", "once", "host", "sh", "-c", "echo hello; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello"));
    wait_until(Duration::from_secs(5), "--rm container removed", || {
        !n.netbee(&["ps", "-a"]).unwrap_or_default().contains("once")
    })?;

    n.netbee(&["run", "-d", "--name", "job", "host", "sh", "-c", "echo out; echo err >&2; exit 4"])?;
    wait_until(Duration::from_secs(5), "job exited", || {
        n.netbee(&["ps", "-a"]).unwrap_or_default().lines().any(|l| l.contains("job") && l.contains("Exited (4)"))
    })?;
    let o = n.netbee_output(&["logs", "job"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert!(!n.netbee(&["ps"])?.contains("job"), "ps without -a lists running containers only");

    n.netbee(&[
        "run",
        "-d",
        "--name",
        "box",
        "--hostname",
        "boxhost",
        "-e",
        "GREETING=hi there",
        "host",
        "sleep",
        "600",
    ])?;
    assert_eq!(n.exec("box", &["hostname"])?.trim(), "boxhost");
    assert_eq!(n.exec("box", &["printenv", "GREETING"])?.trim(), "hi there");
    let hosts = n.exec("box", &["cat", "/etc/hosts"])?;
    let ip = n.container_ip("box", "bridge")?;
    assert!(hosts.lines().any(|l| l.starts_with(&ip) && l.contains("boxhost") && l.contains("box")), "{hosts}");
    assert!(n.exec("box", &["cat", "/etc/resolv.conf"])?.contains("nameserver"));
    // its own PID namespace: the command is PID 2 under netbee's init
    let pid2 = n.exec("box", &["cat", "/proc/2/cmdline"])?;
    assert!(pid2.starts_with("sleep"), "PID 2 is the command: {pid2:?}");
    let pid1 = n.exec("box", &["cat", "/proc/1/cmdline"])?;
    assert!(pid1.contains("shim"), "PID 1 is netbee's init: {pid1:?}");
    let o = n.netbee_output(&["exec", "box", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "exec returns the command's exit code");

    let id = n.inspect("box")?["Id"].as_str().unwrap().to_string();
    assert!(n.exec("box", &["hostname"]).is_ok());
    let default_host = n.netbee(&["run", "-d", "host", "sleep", "600"])?.trim().to_string();
    assert_eq!(
        n.exec(&default_host[..12], &["hostname"])?.trim(),
        &default_host[..12],
        "hostname defaults to the short id"
    );

    let err = n.netbee_refused(&["rm", "box"]);
    assert!(err.contains("cannot remove a running container"), "{err}");
    n.netbee(&["stop", "-t", "5", "box"])?;
    let st = n.inspect("box")?;
    assert_eq!(st["State"]["Status"], "exited");
    assert_eq!(st["State"]["ExitCode"], 143, "sleep ended by the forwarded SIGTERM");
    n.netbee(&["start", "box"])?;
    assert_eq!(n.inspect("box")?["State"]["Status"], "running");
    n.netbee(&["kill", "box"])?;
    assert_eq!(n.inspect("box")?["State"]["ExitCode"], 137);
    n.netbee(&["rm", &id])?;
    assert!(n.netbee(&["inspect", "box"]).is_err());

    // host and none network modes
    n.netbee(&["run", "-d", "--name", "hostnet", "--network", "host", "host", "sleep", "600"])?;
    assert!(n.exec("hostnet", &["ip", "-br", "addr"])?.contains(&n.addr().to_string()));
    n.netbee(&["run", "-d", "--name", "nonet", "--network", "none", "host", "sleep", "600"])?;
    let addrs = n.exec("nonet", &["ip", "-br", "link"])?;
    assert_eq!(addrs.lines().count(), 1, "only lo: {addrs}");
    Ok(())
}

#[test]
fn containers_survive_daemon_restart_and_are_readopted() -> Result<()> {
    let lab = single_node_lab("restart", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "app"])?;
    n.run_whoami("srv", &["--network", "app"], 8080)?;
    n.netbee(&["run", "-d", "--name", "cli", "--network", "app", "host", "sleep", "600"])?;
    let srv = n.container_ip("srv", "app")?;
    let pid = n.inspect("srv")?["State"]["Pid"].as_i64().unwrap();
    // the client's namespace is entered directly while the daemon is down (exec needs it); by
    // its pid, not by its command line, which other tests' containers share
    let cli_pid = n.inspect("cli")?["State"]["Pid"].as_i64().unwrap();

    n.kill_daemon()?;
    // forwarding continues with no daemon: pinned programs and maps
    let direct = n.sh(&format!("nsenter -t {cli_pid} -n curl -s -m 5 http://{srv}:8080/"))?;
    assert!(whoami_field(&direct, "Hostname").is_some(), "forwarding works while the daemon is down");

    n.start_daemon()?;
    let after = n.inspect("srv")?;
    assert_eq!(after["State"]["Status"], "running");
    assert_eq!(after["State"]["Pid"].as_i64().unwrap(), pid, "the same process, re-adopted");
    assert!(n.exec("cli", &["curl", "-s", "-m", "5", &format!("http://{srv}:8080/")])?.contains("Hostname"));
    // an exit while the daemon is away is noticed on restart
    n.stop_daemon()?;
    n.sh(&format!("kill -TERM {pid}"))?;
    n.start_daemon()?;
    wait_until(Duration::from_secs(5), "srv recorded as exited", || {
        n.inspect("srv").map(|v| v["State"]["Status"] == "exited").unwrap_or(false)
    })?;
    // and its interface is gone
    let links = n.sh("ip -br link")?;
    let ep = after["NetworkSettings"]["Networks"]["app"]["EndpointID"].as_str().unwrap();
    assert!(!links.contains(&format!("nbe{}", &ep[..12])), "{links}");
    Ok(())
}

#[test]
fn reconcile_removes_what_the_store_does_not_know() -> Result<()> {
    let lab = single_node_lab("orphans", &[])?;
    let n = lab.node("n1");
    n.netbee(&["run", "-d", "--name", "keep", "host", "sleep", "600"])?;
    n.stop_daemon()?;
    // leftovers of a crash: a veth pair and a namespace file that no container owns
    n.sh("ip link add nbe0123456789ab type veth peer name nbp0123456789ab")?;
    let ns_file = n.dir().join("state/netns/deadbeef");
    std::fs::write(&ns_file, b"")?;
    n.start_daemon()?;
    let links = n.sh("ip -br link")?;
    assert!(!links.contains("nbe0123456789ab") && !links.contains("nbp0123456789ab"), "{links}");
    assert!(!ns_file.exists());
    assert_eq!(n.inspect("keep")?["State"]["Status"], "running", "known containers are untouched");
    Ok(())
}

#[test]
fn bad_input_is_refused_and_changes_nothing() -> Result<()> {
    let lab = single_node_lab("badinput", &[])?;
    let n = lab.node("n1");
    let nets_before = n.netbee(&["network", "ls"])?;
    let links_before = n.sh("ip -br link | wc -l")?;
    for (args, needle) in [
        (vec!["network", "create", "--subnet", "300.1.0.0/16", "x"], "invalid subnet"),
        (vec!["network", "create", "--subnet", "10.1.0.1/16", "x"], "10.1.0.0/16"),
        (vec!["network", "create", "--gateway", "10.1.0.1", "x"], "without a subnet"),
        (vec!["network", "create", "--subnet", "10.1.0.0/16", "--gateway", "10.2.0.1", "x"], "gateway"),
        (vec!["network", "create", "--driver", "macvlan", "x"], "unknown network driver"),
        // the node's own LAN (10.77.0.0/24 in the lab) and loopback
        (vec!["network", "create", "--subnet", "10.77.0.0/24", "x"], "the node's own network on eth0"),
        (vec!["network", "create", "--subnet", "10.77.0.0/16", "x"], "the node's own network on eth0"),
        (vec!["network", "create", "--subnet", "127.0.0.0/16", "x"], "loopback"),
        (vec!["network", "create", "bad name"], "invalid"),
        (vec!["network", "rm", "nosuch"], "not found"),
        (vec!["run", "-d", "--network", "nosuch", "host", "sleep", "1"], "not found"),
        // docker keeps fixed addresses to user networks
        (vec!["run", "-d", "--ip", "172.17.0.5", "host", "sleep", "1"], "user defined networks only"),
        (vec!["run", "-d", "-p", "99999:80", "host", "sleep", "1"], "99999"),
        (vec!["run", "-d", "--name", "-bad", "host", "sleep", "1"], "invalid container name"),
        (vec!["start", "nosuch"], "No such container"),
    ] {
        let err = n.netbee_refused(&args);
        assert!(err.contains(needle), "`netbee {}`: expected {needle:?} in {err:?}", args.join(" "));
    }
    assert_eq!(n.netbee(&["network", "ls"])?, nets_before);
    assert_eq!(n.netbee(&["ps", "-a", "-q"])?.trim(), "", "no container was created");
    assert_eq!(n.sh("ip -br link | wc -l")?, links_before, "no interface was created");
    Ok(())
}

/// A container whose program cannot start fails `run` with the reason, as docker's does, rather
/// than `run` succeeding and the container exiting 127 at once with the reason only in its logs;
/// nothing of it keeps running and no interface is left behind.
#[test]
fn start_failures_are_reported_by_run() -> Result<()> {
    let lab = single_node_lab("startfail", &[])?;
    let n = lab.node("n1");
    let links_before = n.sh("ip -br link | wc -l")?;
    let long = "h".repeat(300);
    for (args, needle) in [
        (vec!["run", "-d", "host", "/no/such/program"], "executable file not found"),
        (vec!["run", "-d", "-w", "/no/such/dir", "host", "sleep", "5"], "working directory \"/no/such/dir\""),
        (vec!["run", "-d", "--hostname", long.as_str(), "host", "sleep", "5"], "hostname"),
    ] {
        let err = n.netbee_refused(&args);
        assert!(err.contains(needle), "`netbee {}`: expected {needle:?} in {err:?}", args.join(" "));
    }
    assert_eq!(n.netbee(&["ps", "-q"])?.trim(), "", "nothing runs");
    // a reader that closes the pipe early ends the CLI quietly, not with a panic
    let bin = netbee_bin();
    let sock = n.socket();
    let out = n.sh(&format!("{{ {} -H unix://{} version 2>&3 | head -c0; }} 3>&1", bin.display(), sock.display()))?;
    assert!(!out.contains("panicked"), "{out}");
    assert_eq!(n.sh("ip -br link | wc -l")?, links_before, "no interface was left behind");
    Ok(())
}

/// A state directory whose path has a space: namespaces are recognised as mounted (mountinfo
/// escapes the space), so a restart re-adopts the container and `rm` leaves no mount behind.
#[test]
fn a_state_directory_with_a_space_works_and_leaks_no_mount() -> Result<()> {
    // inside the node's directory, so the lab's teardown removes it (and any mount) if this fails
    let mut lab = netbee_lab::Lab::new("space")?;
    lab.add_node("n1")?;
    let n = lab.node("n1");
    let root_arg = n.dir().join("state dir").to_string_lossy().into_owned();
    n.set_daemon_args(&["--root", &root_arg]);
    n.start_daemon()?;
    n.netbee(&["run", "-d", "--name", "spacey", "host", "sleep", "600"])?;
    let escaped = root_arg.replace(' ', "\\040");
    let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&escaped);
    assert!(mounted(), "the container's namespace is mounted under {root_arg}");
    n.restart_daemon()?;
    assert!(n.netbee(&["ps"])?.contains("spacey"), "re-adopted after a restart");
    n.netbee(&["rm", "-f", "spacey"])?;
    assert!(!mounted(), "no mount left under {root_arg}");
    Ok(())
}

/// State paths the daemon cannot use are refused before it touches anything, and the error names
/// the path: a regular file where the state directory should be ("File exists" alone before), a
/// read-only file system ("Read-only file system" alone before).
#[test]
fn unusable_state_paths_are_refused_with_the_path() -> Result<()> {
    let mut lab = netbee_lab::Lab::new("statepath")?;
    lab.add_node("n1")?;
    let n1 = lab.node("n1");
    let dir = n1.dir().join("paths");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory")?;
    let bin = netbee_bin();
    let daemon = |root: &str, extra: &str| {
        format!(
            "timeout 20 {} daemon --root {root} --socket {d}/s.sock --bpffs {d}/bpf --uplink eth0 {extra} 2>&1; echo \"exit=$?\"",
            bin.display(),
            d = dir.display()
        )
    };
    let cases = [
        (n1.sh(&daemon(&file.to_string_lossy(), ""))?, format!("{} exists and is not a directory", file.display())),
        (
            n1.sh(&daemon(&file.join("state").to_string_lossy(), ""))?,
            format!("{} exists and is not a directory", file.display()),
        ),
        (
            // a read-only mount seen only by this daemon (its own mount namespace)
            n1.sh(&format!(
                "unshare -m bash -c 'mkdir -p {d}/ro && mount -t tmpfs -o ro tmpfs {d}/ro && {}'",
                daemon(&format!("{}/ro/state", dir.display()), "").replace('\'', "'\\''"),
                d = dir.display()
            ))?,
            format!("creating directory {}/ro/state: Read-only file system", dir.display()),
        ),
    ];
    for (out, want) in &cases {
        assert!(out.contains(want), "wanted {want:?} in:\n{out}");
        assert!(!out.contains("exit=0") && !out.contains("exit=124"), "the daemon did not refuse at once:\n{out}");
    }
    assert_eq!(std::fs::read_to_string(&file)?, "not a directory", "the file in the way was changed");
    assert!(!dir.join("s.sock").exists(), "a socket was created");
    Ok(())
}
