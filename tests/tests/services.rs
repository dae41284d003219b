//! Issue 5: replicated services with virtual IPs, embedded DNS and the ingress routing mesh, load
//! balanced round robin by the eBPF datapath.
use std::{collections::HashMap, time::Duration};

use anyhow::{Result, anyhow};
use netbee_lab::{Lab, Node, Ns, netbee_bin, wait_until, whoami_field};
use serde_json::Value;

fn whoami_cmd() -> Vec<String> {
    vec![netbee_bin().to_string_lossy().into_owned(), "whoami".into(), "--port".into(), "8080".into()]
}

fn create_service(n: &Node, name: &str, extra: &[&str]) -> Result<()> {
    let mut args: Vec<String> = vec!["service".into(), "create".into(), "--name".into(), name.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(whoami_cmd());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    n.netbee(&refs)?;
    Ok(())
}

fn replicas(n: &Node, name: &str) -> String {
    n.netbee(&["service", "ls", "--format", "json"])
        .ok()
        .and_then(|o| o.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["Name"] == name))
        .map(|v| v["Replicas"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn wait_replicas(n: &Node, name: &str, want: &str) -> Result<()> {
    wait_until(Duration::from_secs(30), &format!("{name} {want}"), || replicas(n, name) == want)
}

/// Hostnames answering `count` sequential new connections from `ns` to url.
fn hosts(ns: &Ns, url: &str, count: usize) -> Result<Vec<String>> {
    let out = ns.sh(&format!("for i in $(seq {count}); do curl -s -m 3 {url} | grep '^Hostname' || echo FAIL; done"))?;
    Ok(out.lines().map(|l| l.trim_start_matches("Hostname: ").to_string()).collect())
}

fn assert_round_robin(seen: &[String], backends: usize, label: &str) {
    assert!(!seen.iter().any(|h| h == "FAIL"), "{label}: failed requests in {seen:?}");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for h in seen {
        *counts.entry(h).or_default() += 1;
    }
    assert_eq!(counts.len(), backends, "{label}: distinct backends in {seen:?}");
    assert!(counts.values().all(|c| *c == seen.len() / backends), "{label}: uneven {counts:?}");
    // a repeating order: the second round visits backends in the first round's order
    assert_eq!(seen[..backends], seen[backends..2 * backends], "{label}: order does not repeat: {seen:?}");
}

#[test]
fn single_node_services_vip_dns_and_published_port() -> Result<()> {
    let mut lab = Lab::new("svc1")?;
    lab.add_node("n1")?;
    lab.add_external("x1")?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    n.start_daemon()?;
    n.netbee(&["network", "create", "app"])?;
    n.netbee(&["network", "create", "elsewhere"])?;
    create_service(n, "web", &["--replicas", "3", "--publish", "8080:8080", "--network", "app"])?;
    wait_replicas(n, "web", "3/3")?;
    let ls = n.netbee(&["service", "ls"])?;
    let header: Vec<&str> = ls.lines().next().unwrap().split("   ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"]);
    assert!(ls.contains("*:8080->8080/tcp"), "{ls}");

    // routing-mesh port from outside: round robin, the task sees the client's address
    let url = format!("http://{}:8080/", n.addr());
    let seen = hosts(x, &url, 6)?;
    assert_round_robin(&seen, 3, "published port");
    let a = x.sh(&format!("curl -s -m 3 {url}"))?;
    assert!(whoami_field(&a, "RemoteAddr").unwrap().starts_with(&format!("{}:", x.addr())), "{a}");

    // VIP and DNS inside the network
    n.netbee(&["run", "-d", "--name", "client", "--network", "app", "sleep", "600"])?;
    let vip: String = {
        let v: Value = serde_json::from_str(&n.netbee(&["service", "inspect", "web"])?)?;
        v[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().split('/').next().unwrap().to_string()
    };
    let resolved = n.exec("client", &["getent", "hosts", "web"])?;
    assert!(resolved.starts_with(&vip), "web resolves to the VIP {vip}: {resolved}");
    let tasks = n.exec("client", &["getent", "ahostsv4", "tasks.web"])?;
    let task_ips: std::collections::BTreeSet<&str> = tasks.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(task_ips.len(), 3, "tasks.web lists the three tasks: {tasks}");
    let out = n.exec("client", &["sh", "-c", "for i in $(seq 30); do curl -s -m 3 http://web:8080/ | grep '^Hostname'; done"])?;
    let seen: Vec<String> = out.lines().map(|l| l.trim_start_matches("Hostname: ").to_string()).collect();
    assert_eq!(seen.len(), 30);
    assert_round_robin(&seen, 3, "VIP from a container");

    // another network can neither resolve nor reach it
    n.netbee(&["run", "-d", "--name", "outsider", "--network", "elsewhere", "sleep", "600"])?;
    assert!(!n.exec_ok("outsider", &["getent", "hosts", "web"]), "web must not resolve from another network");
    assert!(!n.exec_ok("outsider", &["curl", "-s", "-m", "2", &format!("http://{vip}:8080/")]));

    // scale, ps history, rm
    n.netbee(&["service", "scale", "web=1"])?;
    wait_replicas(n, "web", "1/1")?;
    let ps = n.netbee(&["service", "ps", "web"])?;
    assert!(ps.contains("web.1") && ps.contains("Running"), "{ps}");
    wait_until(Duration::from_secs(30), "scaled-down tasks shut down", || {
        n.netbee(&["service", "ps", "web"]).map(|p| p.contains("Shutdown")).unwrap_or(false)
    })?;
    let seen = hosts(x, &url, 3)?;
    assert!(seen.iter().all(|h| h == &seen[0] && h != "FAIL"), "{seen:?}");
    n.netbee(&["service", "rm", "web"])?;
    wait_until(Duration::from_secs(30), "tasks removed", || {
        !n.netbee(&["ps", "-a"]).unwrap_or_default().contains("web.")
    })?;
    assert!(x.sh(&format!("curl -s -m 2 {url}")).is_err(), "the published port is withdrawn");
    Ok(())
}

#[test]
fn service_bad_input_changes_nothing() -> Result<()> {
    let mut lab = Lab::new("svcbad")?;
    lab.add_node("n1")?;
    let n = lab.node("n1");
    n.start_daemon()?;
    create_service(n, "first", &["--publish", "9000:8080"])?;
    for (args, needle) in [
        (vec!["--replicas", "-1"], "invalid replicas"),
        (vec!["--publish", "9000:8080"], "already published by service first"),
        (vec!["--network", "nosuch"], "not found"),
        (vec!["--constraint", "node.labels.zone=a"], "invalid constraint"),
        (vec!["--constraint", "node.color==red"], "invalid constraint"),
        (vec!["--publish", "99999:80"], "invalid port"),
    ] {
        let mut full: Vec<String> = vec!["service".into(), "create".into(), "--name".into(), "second".into()];
        full.extend(args.iter().map(|s| s.to_string()));
        full.extend(whoami_cmd());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let o = n.netbee_output(&refs);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = n.netbee_output(&["service", "scale", "first=-3"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("invalid replicas"));
    let ls = n.netbee(&["service", "ls", "-q"])?;
    assert_eq!(ls.lines().count(), 1, "only the first service exists: {ls}");
    Ok(())
}
