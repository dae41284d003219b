//! `netbee-lab demo [--keep]`: netbee's main job on a fresh machine, in a lab of one node and one
//! external client. Every step runs the real CLI against a real daemon and checks what arrived;
//! the demo fails (non-zero exit) if anything does not work.
//! `netbee-lab clean`: removes what interrupted labs left behind.
use std::{process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use netbee_lab::{
    Docker, Lab, Node, docker_cli_present, netbee_bin, swarm_lab, sweep_stale, test_image, wait_until, whoami_field,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("demo") => demo(args.iter().any(|a| a == "--keep")),
        Some("clean") => sweep_stale(),
        _ => {
            eprintln!("usage: netbee-lab demo [--keep] | clean");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(s: &str) {
    println!("\n== {s}");
}

fn step(node: &Node, args: &[&str]) -> Result<String> {
    println!("$ netbee {}", args.join(" "));
    let out = node.netbee(args)?;
    print!("{out}");
    Ok(out)
}

fn check(ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("check failed: {what}");
    }
    println!("   ok: {what}");
    Ok(())
}

fn demo(keep: bool) -> Result<()> {
    let bin = netbee_bin();
    let bin = bin.to_str().unwrap();
    // two nodes in a swarm (etcd on the underlay) and an external client
    let lab = swarm_lab("demo", &["n1", "n2"], &["x1"])?;
    let (node, node2) = (lab.node("n1"), lab.node("n2"));
    let ext = lab.external("x1");
    say(&format!(
        "lab: nodes {} ({}) and {} ({}) in a swarm, external client {} ({}), on an underlay bridge",
        node.name(),
        node.addr(),
        node2.name(),
        node2.addr(),
        ext.name(),
        ext.addr()
    ));
    say(&format!("a netbee daemon runs in each node, n1's state in {}", node.dir().join("state").display()));
    step(node, &["version"])?;
    step(node, &["node", "ls"])?;

    say("a user network, docker-style");
    step(node, &["network", "create", "demo"])?;
    step(node, &["network", "ls"])?;
    let subnet = node.network_inspect("demo")?["IPAM"]["Config"][0]["Subnet"].as_str().unwrap_or("").to_string();
    check(subnet == "172.18.0.0/16", &format!("first user network got 172.18.0.0/16 (got {subnet})"))?;

    say("two containers on it: an HTTP server and a client");
    println!("$ netbee run -d --name web --network demo host {bin} whoami --port 8080");
    node.run_whoami("web", &["--network", "demo"], 8080)?;
    step(node, &["run", "-d", "--name", "client", "--network", "demo", "host", "sleep", "600"])?;
    step(node, &["ps"])?;
    let web_ip = node.container_ip("web", "demo")?;
    let client_ip = node.container_ip("client", "demo")?;

    say("the client fetches from the server by IP; eBPF redirects every packet between their veths");
    let before = node.counter("redirect_local")?;
    let answer = step(node, &["exec", "client", "curl", "-s", "-m", "5", &format!("http://{web_ip}:8080/")])?;
    let after = node.counter("redirect_local")?;
    check(whoami_field(&answer, "Hostname").is_some(), "the server answered")?;
    check(
        whoami_field(&answer, "RemoteAddr").is_some_and(|r| r.starts_with(&format!("{client_ip}:"))),
        &format!("the server saw the client's real address {client_ip}"),
    )?;
    check(after > before, &format!("datapath redirected {} packets container-to-container", after - before))?;
    step(node, &["datapath", "stats"])?;

    say("a published port: -p 8000:8080, reached from the external client (no iptables, no proxy)");
    println!("$ netbee run -d --name pub -p 8000:8080 host {bin} whoami --port 8080");
    node.run_whoami("pub", &["-p", "8000:8080"], 8080)?;
    step(node, &["ps"])?;
    let url = format!("http://{}:8000/", node.addr());
    println!("[{}]$ curl -s {url}", ext.name());
    let answer = ext.sh(&format!("curl -s -m 5 {url}"))?;
    print!("{answer}");
    check(
        whoami_field(&answer, "RemoteAddr").is_some_and(|r| r.starts_with(&format!("{}:", ext.addr()))),
        "the container saw the external client's address",
    )?;
    let from_node = node.sh("curl -s -m 5 http://127.0.0.1:8000/")?;
    println!("[{}]$ curl -s http://127.0.0.1:8000/   (a process on the node itself)", node.name());
    print!("{from_node}");
    check(whoami_field(&from_node, "Hostname").is_some(), "127.0.0.1:8000 from the node reaches the container")?;

    say("a container from an image: load a `docker save` archive, run its own web server");
    let archive = test_image("busybox-1.tar");
    step(node, &["load", "-i", archive.to_str().unwrap()])?;
    step(node, &["images"])?;
    step(node, &["run", "-d", "--name", "site", "-p", "8001:80", "netbee-test/busybox:1"])?;
    let site = format!("http://{}:8001/", node.addr());
    println!("[{}]$ curl -s {site}", ext.name());
    let page = ext.sh(&format!("curl -s -m 5 {site}"))?;
    print!("{page}");
    check(page.trim() == "netbee test image one", "the page comes from inside the image")?;
    let root = step(node, &["exec", "site", "ls", "/"])?;
    check(!root.contains("usr"), "the container sees the image's root filesystem, not the node's")?;

    say("a replicated service: 4 tasks over both nodes, published on port 8080 of every node");
    step(node2, &["load", "-i", archive.to_str().unwrap()])?;
    step(
        node,
        &[
            "service",
            "create",
            // the demo waits for 4/4 below, for a bounded time
            "-d",
            "--name",
            "hello",
            "--replicas",
            "4",
            "-p",
            "8080:80",
            "netbee-test/busybox:1",
            "sh",
            "-c",
            "hostname > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )?;
    wait_until(Duration::from_secs(30), "hello 4/4", || node.service_replicas("hello") == "4/4")?;
    step(node, &["service", "ls"])?;
    step(node, &["service", "ps", "hello"])?;

    say("round robin through the routing mesh: 8 new connections to n1:8080 and 8 to n2:8080");
    for n in [node, node2] {
        let url = format!("http://{}:8080/", n.addr());
        // a task joins a node's load balancer once that node has its endpoint; wait for all four
        wait_until(Duration::from_secs(10), &format!("all 4 tasks behind {url}"), || {
            let seen: std::collections::BTreeSet<String> =
                (0..4).filter_map(|_| ext.sh(&format!("curl -s -m 5 {url}")).ok()).collect();
            seen.len() == 4
        })?;
        let mut answers: Vec<String> = Vec::new();
        for _ in 0..8 {
            answers.push(ext.sh(&format!("curl -s -m 5 {url}"))?.trim().to_string());
        }
        println!("[{}]$ for i in $(seq 8); do curl -s {url}; done", ext.name());
        println!("   {}", answers.join(" "));
        let mut counts = std::collections::BTreeMap::new();
        for a in &answers {
            *counts.entry(a.clone()).or_insert(0) += 1;
        }
        check(
            counts.len() == 4 && counts.values().all(|c| *c == 2),
            &format!("via {}: each of the 4 tasks answered exactly 2 of 8 ({counts:?})", n.name()),
        )?;
    }

    if docker_cli_present() {
        docker_cli_part(&lab)?;
    } else {
        say("the docker CLI is not on PATH: the part driven by docker's own CLI is left out");
    }

    say("the daemon restarts; containers and forwarding keep going");
    node.kill_daemon()?;
    let during = ext.sh(&format!("curl -s -m 5 {url}"))?;
    check(whoami_field(&during, "Hostname").is_some(), "the published port answers while the daemon is down")?;
    node.start_daemon()?;
    wait_until(Duration::from_secs(5), "ps after restart", || node.netbee(&["ps"]).is_ok())?;
    step(node, &["ps"])?;

    if keep {
        say("the lab stays up; use the CLI by hand:");
        println!("  export NETBEE_HOST=unix://{}", node.socket().display());
        println!("  export DOCKER_HOST=unix://{}   # docker's own CLI works too", node.socket().display());
        println!("  {bin} ps ; {bin} network ls ; {bin} exec client curl -s http://{web_ip}:8080/");
        println!("  ip netns exec {} curl -s {url}", ext.name());
        println!("  {bin} run -d --name more --network demo host sleep 600");
        println!("Press Enter to tear the lab down.");
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    } else {
        say("use the CLI by hand: `cargo xtask demo -- --keep` leaves this lab up and prints how to reach it");
    }
    say("demo passed; removing the lab");
    Ok(())
}

fn docker_step(d: &Docker, args: &[&str]) -> Result<String> {
    println!("$ docker {}", args.join(" "));
    let out = d.all(args)?;
    print!("{out}");
    Ok(out)
}

/// The same daemon driven by docker's own CLI (`DOCKER_HOST` set to n1's socket): the Engine API
/// is netbee's only API, so a container with a published port and a replicated service behind the
/// routing mesh behave as above.
fn docker_cli_part(lab: &Lab) -> Result<()> {
    let (node, node2) = (lab.node("n1"), lab.node("n2"));
    let ext = lab.external("x1");
    let bin = netbee_bin();
    let bin = bin.to_str().unwrap();
    let d = Docker::new(lab, node)?;
    say(&format!("docker's own CLI speaks to the same daemon: export DOCKER_HOST={}", d.host));
    docker_step(
        &d,
        &["version", "--format", "client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})"],
    )?;
    docker_step(&d, &["network", "create", "--subnet", "172.30.0.0/24", "dnet"])?;
    println!("$ docker run -d --name dweb --network dnet -p 8002:8080 host {bin} whoami --port 8080");
    d.run_whoami("dweb", &["--network", "dnet", "-p", "8002:8080"], 8080)?;
    docker_step(&d, &["ps", "--format", "table {{.Names}}\t{{.Image}}\t{{.Ports}}\t{{.Status}}"])?;
    let ip = d.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.dnet.IPAddress}}", "dweb"])?;
    check(ip.trim().starts_with("172.30.0."), &format!("docker inspect shows dweb's address on dnet ({})", ip.trim()))?;
    let url = format!("http://{}:8002/", node.addr());
    println!("[{}]$ curl -s {url}", ext.name());
    let answer = ext.sh(&format!("curl -s -m 5 {url}"))?;
    print!("{answer}");
    check(
        whoami_field(&answer, "RemoteAddr").is_some_and(|r| r.starts_with(&format!("{}:", ext.addr()))),
        "the container published by `docker run -p` saw the external client's address",
    )?;

    say("docker service create: 3 replicas behind the routing mesh, the CLI's progress display until they run");
    docker_step(
        &d,
        &[
            "service",
            "create",
            "--name",
            "who",
            "--replicas",
            "3",
            "-p",
            "8090:8080",
            "host",
            bin,
            "whoami",
            "--port",
            "8080",
        ],
    )?;
    docker_step(&d, &["service", "ls"])?;
    docker_step(&d, &["service", "ps", "who", "--format", "table {{.Name}}\t{{.Node}}\t{{.CurrentState}}"])?;
    for n in [node, node2] {
        let url = format!("http://{}:8090/", n.addr());
        wait_until(Duration::from_secs(10), &format!("all 3 tasks behind {url}"), || {
            let seen: std::collections::BTreeSet<String> = (0..3)
                .filter_map(|_| ext.sh(&format!("curl -s -m 5 {url}")).ok())
                .filter_map(|a| whoami_field(&a, "Hostname"))
                .collect();
            seen.len() == 3
        })?;
        println!("[{}]$ for i in $(seq 6); do curl -s {url}; done   (Hostname and RemoteAddr of each)", ext.name());
        let mut hosts = Vec::new();
        for _ in 0..6 {
            let a = ext.sh(&format!("curl -s -m 5 {url}"))?;
            let (h, r) =
                (whoami_field(&a, "Hostname").unwrap_or_default(), whoami_field(&a, "RemoteAddr").unwrap_or_default());
            println!("   {h}  saw {r}");
            check(r.starts_with(&format!("{}:", ext.addr())), "the task saw the external client's address")?;
            hosts.push(h);
        }
        check(
            hosts[..3] == hosts[3..] && hosts[..3].iter().collect::<std::collections::BTreeSet<_>>().len() == 3,
            &format!("via {}: strict round robin over the 3 tasks ({hosts:?})", n.name()),
        )?;
    }
    docker_step(&d, &["service", "rm", "who"])?;
    docker_step(&d, &["rm", "-f", "dweb"])?;
    docker_step(&d, &["network", "rm", "dnet"])?;
    Ok(())
}
