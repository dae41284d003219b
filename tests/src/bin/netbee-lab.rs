//! `netbee-lab demo [--keep]`: netbee's main job on a fresh machine, in a lab of one node and one
//! external client. Every step runs the real CLI against a real daemon and checks what arrived;
//! the demo fails (non-zero exit) if anything does not work.
//! `netbee-lab clean`: removes what interrupted labs left behind.
use std::{process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use netbee_lab::{Lab, Node, netbee_bin, sweep_stale, wait_until, whoami_field};

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
    let mut lab = Lab::new("demo")?;
    lab.add_node("n1")?;
    lab.add_external("x1")?;
    let node = lab.node("n1");
    let ext = lab.external("x1");
    say(&format!(
        "lab: node {} ({}) and external client {} ({}) on an underlay bridge",
        node.name(),
        node.addr(),
        ext.name(),
        ext.addr()
    ));
    node.start_daemon()?;
    say(&format!("netbee daemon running in the node, state in {}", node.dir().join("state").display()));
    step(node, &["version"])?;

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
