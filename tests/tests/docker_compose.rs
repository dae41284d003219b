//! docker-compose 1.29.2 (Debian's, Python/docker-py: its own HTTP client, list-encoded filters,
//! its own API version choice) drives netbee through the daemon's socket. The project's services
//! talk to each other by service name, alias and container name with real HTTP requests (busybox
//! httpd with a CGI script that reports the host that answered and the client address it saw).
//!
//! ```text
//!   x1 ── curl ──> n1:8080 ──> gate (httpd :80) ── nc web|www|proj_web_N ──> web.1..3 (httpd :80)
//!                                 network proj_appnet (user-defined, embedded DNS)
//! ```
//! `docker-compose exec` needs the hijacked exec stream, which is not part of this file.
use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, ensure};
use netbee_lab::{Docker, Node, single_node_lab, test_image, wait_until};

/// The CGI script both services serve at /cgi-bin/who, written at start by the container's own
/// shell (the image has no such file). `$$` is compose's escape for a literal `$`.
const SERVE: &str = r#"mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "host=$$(hostname) remote=$$REMOTE_ADDR greeting=$$GREETING"\n' > /www/cgi-bin/who && chmod +x /www/cgi-bin/who && echo "$$GREETING listening" && exec httpd -f -p 80 -h /www"#;

fn compose_file() -> String {
    format!(
        r#"version: "3.8"
services:
  web:
    image: netbee-test/busybox:1
    command: ["sh", "-c", '{SERVE}']
    environment:
      GREETING: hello-web
    labels:
      tier: backend
    networks:
      appnet:
        aliases: [www]
  gate:
    image: netbee-test/busybox:1
    command: ["sh", "-c", '{SERVE}']
    environment:
      - GREETING=hello-gate
    labels:
      tier: front
    ports:
      - "8080:80"
    depends_on:
      - web
    networks:
      - appnet
networks:
  appnet:
    labels:
      purpose: compose-test
"#,
        SERVE = SERVE.replace('\'', "''")
    )
}

/// An HTTP GET of /cgi-bin/who sent from inside `from` to `host`:80 with busybox nc.
fn who(n: &Node, from: &str, host: &str) -> Result<String> {
    n.exec(from, &["sh", "-c", &format!("printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80")])
}

/// A container's address on the project's network.
fn ip_on_appnet(docker: &Docker, container: &str) -> Result<String> {
    let ip = docker.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.proj_appnet.IPAddress}}", container])?;
    let ip = ip.trim().to_string();
    ensure!(!ip.is_empty(), "{container} has no address on proj_appnet");
    Ok(ip)
}

/// How busybox httpd (listening on IPv6, dual-stack) reports an IPv4 client in REMOTE_ADDR.
fn v4mapped(ip: impl std::fmt::Display) -> String {
    format!("[::ffff:{ip}]")
}

fn hostname(docker: &Docker, container: &str) -> Result<String> {
    Ok(docker.ok(&["inspect", "--format", "{{.Config.Hostname}}", container])?.trim().to_string())
}

#[test]
fn compose_up_ps_logs_scale_down() -> Result<()> {
    let lab = single_node_lab("dkcompose", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let docker = Docker::new(&lab, n)?;
    docker.ok(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    let kernel_before = n.kernel_objects()?;
    let dir = lab.dir().join("compose-proj");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("docker-compose.yml"), compose_file())?;

    // up -d: the network first, then web before gate (depends_on)
    let up = docker.compose(&dir, "proj", &["up", "-d"])?;
    assert!(up.contains("Creating network \"proj_appnet\""), "{up}");
    let (w, g) = (up.find("Creating proj_web_1"), up.find("Creating proj_gate_1"));
    assert!(w.is_some() && g.is_some() && w < g, "web is created before gate: {up}");
    // logs: the line each service wrote when it started
    let mut last = String::new();
    wait_until(Duration::from_secs(15), "both services listening", || {
        last = docker.compose(&dir, "proj", &["logs"]).unwrap_or_else(|e| e.to_string());
        last.contains("hello-web listening") && last.contains("hello-gate listening")
    })
    .map_err(|e| anyhow::anyhow!("{e}: {last}\n{}", docker.ok(&["ps", "-a"]).unwrap_or_default()))?;
    let logs = docker.compose(&dir, "proj", &["logs", "web"])?;
    assert!(logs.contains("web_1") && logs.contains("hello-web listening") && !logs.contains("hello-gate"), "{logs}");

    // ps: both up, the published port as compose prints it
    let ps = docker.compose(&dir, "proj", &["ps"])?;
    let row = |name: &str| ps.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(row("proj_web_1").contains(" Up"), "{ps}");
    assert!(row("proj_gate_1").contains(" Up") && row("proj_gate_1").contains("0.0.0.0:8080->80/tcp"), "{ps}");
    // compose pinned to an older API version (COMPOSE_API_VERSION, as users set it for older
    // engines; 1.38 is what compose 1.29 names for its file format) is served the same
    let old = docker.compose_env(&dir, "proj", &["ps"], &[("COMPOSE_API_VERSION", "1.38")])?;
    assert_eq!(old, ps, "the same table at API 1.38");
    // what compose asked for is what the containers have: labels, environment, network, alias
    let v = docker.inspect(&["inspect", "proj_web_1"])?;
    assert_eq!(v["Config"]["Labels"]["com.docker.compose.project"], "proj");
    assert_eq!(v["Config"]["Labels"]["com.docker.compose.service"], "web");
    assert_eq!(v["Config"]["Labels"]["tier"], "backend");
    assert!(v["Config"]["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hello-web"), "{v}");
    let aliases = &v["NetworkSettings"]["Networks"]["proj_appnet"]["Aliases"];
    assert!(aliases.as_array().is_some_and(|a| a.iter().any(|x| x == "www") && a.iter().any(|x| x == "web")), "{v}");
    let net = docker.inspect(&["network", "inspect", "proj_appnet"])?;
    assert_eq!(net["Labels"]["purpose"], "compose-test");
    assert_eq!(net["Labels"]["com.docker.compose.project"], "proj");

    // the published port from outside: gate answers, and sees the client's own address
    let gate_host = hostname(&docker, "proj_gate_1")?;
    let web_host = hostname(&docker, "proj_web_1")?;
    let a = x.sh(&format!("curl -s -m 3 http://{}:8080/cgi-bin/who", n.addr()))?;
    assert_eq!(a.trim(), format!("host={gate_host} remote={} greeting=hello-gate", v4mapped(x.addr())));

    // gate reaches web by service name, by alias and by container name; web sees gate's address
    let gate_ip = ip_on_appnet(&docker, "proj_gate_1")?;
    for name in ["web", "www", "proj_web_1"] {
        let a = who(n, "proj_gate_1", name)?;
        let want = format!("host={web_host} remote={} greeting=hello-web", v4mapped(&gate_ip));
        assert!(a.contains(&want), "gate -> {name}: {a}");
    }
    // and web reaches gate by its service name
    let web_ip = ip_on_appnet(&docker, "proj_web_1")?;
    let a = who(n, "proj_web_1", "gate")?;
    let want = format!("host={gate_host} remote={} greeting=hello-gate", v4mapped(&web_ip));
    assert!(a.contains(&want), "web -> gate: {a}");

    // exec: compose's own exec (docker-py's exec create/start) runs in the service's container,
    // which reaches the other service by name from there
    let out = docker.compose(&dir, "proj", &["exec", "-T", "web", "hostname"])?;
    assert_eq!(out.trim(), web_host, "compose exec runs in proj_web_1");
    let out = docker.compose(
        &dir,
        "proj",
        &["exec", "-T", "gate", "sh", "-c", "nslookup web >/dev/null && echo resolved"],
    )?;
    assert!(out.contains("resolved"), "compose exec: gate resolves web: {out}");

    // scale web to 3: the new containers join the same network under the same names
    docker.compose(&dir, "proj", &["up", "-d", "--scale", "web=3"])?;
    let ps = docker.compose(&dir, "proj", &["ps"])?;
    for i in 1..=3 {
        assert!(ps.lines().any(|l| l.starts_with(&format!("proj_web_{i} ")) && l.contains(" Up")), "{ps}");
    }
    wait_until(Duration::from_secs(15), "three web replicas listening", || {
        docker.compose(&dir, "proj", &["logs", "web"]).is_ok_and(|l| l.matches("hello-web listening").count() >= 3)
    })?;
    let mut ips = BTreeSet::new();
    for i in 1..=3 {
        let c = format!("proj_web_{i}");
        let (ip, host) = (ip_on_appnet(&docker, &c)?, hostname(&docker, &c)?);
        let a = who(n, "proj_gate_1", &c)?;
        assert!(a.contains(&format!("host={host} remote={}", v4mapped(&gate_ip))), "gate -> {c}: {a}");
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 3, "three distinct addresses: {ips:?}");
    // the service name and the alias resolve to all three replicas
    for name in ["web", "www"] {
        let out = n.exec("proj_gate_1", &["busybox", "nslookup", name])?;
        let answered: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Address:"))
            .map(str::trim)
            .filter(|a| !a.contains(':'))
            .map(str::to_string)
            .collect();
        assert_eq!(answered, ips, "{name} resolves to every replica: {out}");
    }
    // a request by the service name is answered by one of the replicas (busybox's resolver takes
    // the first address of the answer)
    let a = who(n, "proj_gate_1", "web")?;
    let host = a.lines().find_map(|l| l.split_whitespace().next()?.strip_prefix("host=")).unwrap_or_default();
    let mut hosts = BTreeSet::new();
    for i in 1..=3 {
        hosts.insert(hostname(&docker, &format!("proj_web_{i}"))?);
    }
    assert!(hosts.contains(host), "web answered by a replica: {a}");

    // down: containers, then the network; nothing of them is left on the node
    let down = docker.compose(&dir, "proj", &["down"])?;
    assert!(down.contains("Removing network proj_appnet"), "{down}");
    assert_eq!(docker.ok(&["ps", "-aq"])?.trim(), "", "no container left");
    assert!(!docker.ok(&["network", "ls", "--format", "{{.Name}}"])?.contains("proj_"), "no network left");
    wait_until(Duration::from_secs(5), "kernel objects back to before", || {
        n.kernel_objects().is_ok_and(|k| k == kernel_before)
    })
    .map_err(|e| anyhow::anyhow!("{e}: before {kernel_before:?}, now {:?}", n.kernel_objects()))?;
    assert!(x.sh(&format!("curl -s -m 2 http://{}:8080/cgi-bin/who", n.addr())).is_err(), "the port is closed");
    Ok(())
}
