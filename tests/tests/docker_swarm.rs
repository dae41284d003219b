//! The real docker CLI (28.2.2, client only) drives netbee's swarm through the daemon's socket:
//! `docker swarm`, `docker node` and `docker service` are docker's own binary, and the tests check
//! what changed in the cluster and on the wire (which tasks answer through the routing mesh, which
//! image they serve), not only exit codes.
//!
//! ```text
//!   x1 ── curl ──> n1/n2/n3:8000 (routing mesh) ──> web.1..4 (netbee whoami)
//!             └──> n1:8001 ──> pages.1..2 (busybox httpd, image :1 -> :2 -> rollback :1)
//! ```
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use anyhow::Result;
use netbee_lab::{Docker, Lab, assert_round_robin, hosts, netbee_bin, swarm_lab, test_image, unix_now, wait_until};

/// `docker node ls` as hostname → (status, availability, manager status).
fn node_table(d: &Docker) -> Result<HashMap<String, (String, String, String)>> {
    let out = d.ok(&["node", "ls", "--format", "{{.Hostname}}|{{.Status}}|{{.Availability}}|{{.ManagerStatus}}"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 4).then(|| (f[0].to_string(), (f[1].to_string(), f[2].to_string(), f[3].to_string())))
        })
        .collect())
}

fn service_ids(d: &Docker) -> Result<Vec<String>> {
    Ok(d.ok(&["service", "ls", "-q"])?.lines().map(str::to_string).collect())
}

#[test]
fn docker_swarm_init_join_nodes_and_leave() -> Result<()> {
    // two daemons on one cluster store, in no swarm yet
    let mut lab = Lab::new("dkswarm")?;
    let store = lab.start_etcd(1)?;
    for n in ["n1", "n2"] {
        lab.add_node(n)?;
        lab.node(n).set_daemon_args(&["--cluster-store", store.as_str()]);
        lab.node(n).start_daemon()?;
    }
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let (d1, d2) = (Docker::new(&lab, n1)?, Docker::new(&lab, n2)?);
    assert_eq!(d1.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?.trim(), "inactive");

    // init prints docker's join command with the worker token and the manager's address
    let out = d1.all(&["swarm", "init", "--advertise-addr", &n1.addr().to_string()])?;
    let mgr = format!("{}:2377", n1.addr());
    assert!(out.contains("Swarm initialized: current node (") && out.contains("is now a manager"), "{out}");
    let token = d1.ok(&["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    assert!(token.starts_with("SWMTKN-1-"), "{token}");
    assert!(out.contains(&format!("docker swarm join --token {token} {mgr}")), "{out}");
    let manager_cmd = d1.ok(&["swarm", "join-token", "manager"])?;
    let manager_token = d1.ok(&["swarm", "join-token", "-q", "manager"])?.trim().to_string();
    assert_ne!(manager_token, token);
    assert!(manager_cmd.contains(&format!("docker swarm join --token {manager_token} {mgr}")), "{manager_cmd}");
    let cluster = d1.ok(&["info", "--format", "{{.Swarm.Cluster.ID}}"])?;
    assert!(!cluster.trim().is_empty(), "a manager's info names the swarm");
    // init again is docker's conflict
    let again = d1.refused(&["swarm", "init"]);
    assert!(again.contains("already part of a swarm"), "{again}");

    wait_until(Duration::from_secs(10), "join listener", || n1.sh(&format!("nc -z {} 2377", n1.addr())).is_ok())?;
    let bad = d2.refused(&["swarm", "join", "--token", "SWMTKN-1-wrong", &mgr]);
    assert!(bad.contains("invalid join token"), "{bad}");
    // rotation: the old worker token stops working, the new one is printed and joins
    let out = d1.all(&["swarm", "join-token", "--rotate", "worker"])?;
    assert!(out.contains("Successfully rotated worker join token."), "{out}");
    let old_token = token;
    let token = d1.ok(&["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    assert!(token.starts_with("SWMTKN-1-") && token != old_token, "{token}");
    let bad = d2.refused(&["swarm", "join", "--token", &old_token, &mgr]);
    assert!(bad.contains("invalid join token"), "the rotated-out token: {bad}");
    let e = d1.refused(&["swarm", "update", "--task-history-limit", "2"]);
    assert!(e.contains("TaskHistoryRetentionLimit"), "{e}");
    assert_eq!(d1.ok(&["swarm", "join-token", "-q", "worker"])?.trim(), token, "a refused update changes nothing");
    let out = d2.all(&["swarm", "join", "--token", &token, &mgr])?;
    assert!(out.contains("This node joined a swarm as a worker."), "{out}");

    // node ls: both Ready and Active, the manager the leader, the current node starred
    wait_until(Duration::from_secs(10), "both nodes ready", || {
        node_table(&d1).is_ok_and(|m| m.len() == 2 && m.values().all(|(s, a, _)| s == "Ready" && a == "Active"))
    })?;
    let nodes = node_table(&d1)?;
    assert_eq!(nodes["n1"].2, "Leader", "{nodes:?}");
    assert_eq!(nodes["n2"].2, "", "{nodes:?}");
    let table = d1.ok(&["node", "ls"])?;
    assert!(table.lines().any(|l| l.contains(" * ") && l.contains("n1")), "{table}");

    // docker info: the swarm as each node sees it
    let info = d1.ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}}",
    ])?;
    assert_eq!(info.trim(), "active true 2 1");
    let text = d1.ok(&["info"])?;
    assert!(text.contains("Swarm: active") && text.contains("Is Manager: true"), "{text}");
    assert_eq!(
        d2.ok(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"])?.trim(),
        "active false"
    );
    // a worker cannot list nodes: docker's 503 message
    let e = d2.refused(&["node", "ls"]);
    assert!(e.contains("This node is not a swarm manager"), "{e}");

    // node update: labels, availability; promote and demote
    d1.all(&["node", "update", "--label-add", "zone=a", "--availability", "pause", "n2"])?;
    let v = d1.inspect(&["node", "inspect", "n2"])?;
    assert_eq!((v["Spec"]["Labels"]["zone"].as_str(), v["Spec"]["Availability"].as_str()), (Some("a"), Some("pause")));
    d1.all(&["node", "update", "--availability", "active", "n2"])?;
    assert_eq!(node_table(&d1)?["n2"].1, "Active");
    assert_eq!(d1.inspect(&["node", "inspect", "n2"])?["Spec"]["Labels"]["zone"], "a", "labels kept");
    d1.all(&["node", "promote", "n2"])?;
    wait_until(Duration::from_secs(10), "n2 a reachable manager", || {
        node_table(&d1).is_ok_and(|m| m["n2"].2 == "Reachable")
    })?;
    assert_eq!(d2.ok(&["info", "--format", "{{.Swarm.ControlAvailable}}"])?.trim(), "true");
    d1.all(&["node", "demote", "n2"])?;
    assert_eq!(node_table(&d1)?["n2"].2, "");
    let e = d1.refused(&["node", "demote", "n1"]);
    assert!(e.contains("last manager"), "{e}");
    let e = d1.refused(&["node", "update", "--availability", "drain", "nosuch"]);
    assert!(e.contains("node nosuch not found"), "{e}");
    let e = d1.refused(&["node", "rm", "n2"]);
    assert!(e.contains("not down"), "{e}");
    assert_eq!(node_table(&d1)?.len(), 2, "a refused rm changes nothing");

    // the worker leaves; the manager sees it down and removes it
    let out = d2.all(&["swarm", "leave"])?;
    assert!(out.contains("Node left the swarm."), "{out}");
    assert_eq!(d2.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?.trim(), "inactive");
    wait_until(Duration::from_secs(15), "n2 gone or down", || {
        node_table(&d1).is_ok_and(|m| m.get("n2").is_none_or(|(s, _, _)| s == "Down"))
    })?;
    if node_table(&d1)?.contains_key("n2") {
        d1.all(&["node", "rm", "n2"])?;
    }
    assert_eq!(node_table(&d1)?.keys().collect::<Vec<_>>(), ["n1"]);
    d1.all(&["swarm", "leave", "--force"])?;
    assert_eq!(d1.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?.trim(), "inactive");
    Ok(())
}

#[test]
fn docker_services_through_the_routing_mesh() -> Result<()> {
    let lab = swarm_lab("dksvc", &["n1", "n2", "n3"], &["x1"])?;
    let (n1, n2, n3) = (lab.node("n1"), lab.node("n2"), lab.node("n3"));
    let x1 = lab.external("x1");
    let d = Docker::new(&lab, n1)?;
    let bin = netbee_bin();
    let bin = bin.to_str().unwrap();
    let web_url = format!("http://{}:8000/", n1.addr());
    let since = unix_now();

    // create: the CLI's progress display runs until every replica runs and it verified them
    let out = d.all(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "-p",
        "8000:8080",
        "--env",
        "GREETING=hi",
        "--update-monitor",
        "1s",
        "host",
        bin,
        "whoami",
        "--port",
        "8080",
    ])?;
    assert!(out.contains("overall progress: 4 out of 4 tasks") && out.contains("converged"), "{out}");
    let ls = d.ok(&["service", "ls"])?;
    let line = ls.lines().find(|l| l.contains(" web ")).unwrap_or_default();
    assert!(line.contains("replicated") && line.contains("4/4") && line.contains("*:8000->8080/tcp"), "{ls}");
    let v = d.inspect(&["service", "inspect", "web"])?;
    assert_eq!(v["Spec"]["Mode"]["Replicated"]["Replicas"], 4, "{v}");
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"][0], "GREETING=hi", "{v}");
    assert!(v["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().is_some_and(|a| a.contains('/')), "{v}");

    // the routing mesh: new connections from outside the swarm reach all 4 tasks, round robin,
    // through any node
    let seen = hosts(x1, &web_url, 8)?;
    assert_round_robin(&seen, 4, "web on n1");
    let via_n3 = hosts(x1, &format!("http://{}:8000/", n3.addr()), 8)?;
    assert_round_robin(&via_n3, 4, "web on n3");
    // service ps: one running task per slot, on the swarm's nodes (by hostname)
    let ps = d.ok(&["service", "ps", "--format", "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}}", "web"])?;
    let running: Vec<&str> = ps.lines().filter(|l| l.contains(" Running Running")).collect();
    assert_eq!(running.len(), 4, "{ps}");
    assert!(running.iter().all(|l| ["n1", "n2", "n3"].iter().any(|n| l.contains(&format!(" {n} ")))), "{ps}");

    // logs: the lines of the tasks on the answering node (4 tasks on 3 nodes: n1 has one),
    // each prefixed with its task, which the CLI resolves from docker's log context
    let logs = d.all(&["service", "logs", "web"])?;
    assert!(logs.lines().any(|l| l.starts_with("web.") && l.contains("@n1") && l.contains("| ")), "{logs}");

    // bad input: docker's errors, and nothing changes
    let before = service_ids(&d)?;
    for (args, want) in [
        (vec!["service", "scale", "nosuch=2"], "service nosuch not found"),
        (vec!["service", "rm", "nosuch"], "service nosuch not found"),
        (vec!["service", "update", "--image", "host", "nosuch"], "service nosuch not found"),
        (vec!["service", "create", "--name", "web", "host", "sleep", "60"], "service web already exists"),
        (vec!["service", "create", "--name", "web2", "-p", "8000:80", "host", "sleep", "60"], "already published"),
        (vec!["service", "create", "--name", "big", "--replicas", "100000", "host", "sleep", "60"], "at most 10000"),
        (vec!["service", "create", "--name", "glob", "--mode", "global", "host", "sleep", "60"], "only replicated"),
        (
            vec!["service", "create", "--name", "bad", "--constraint", "node.colour==red", "host", "sleep", "60"],
            "constraint",
        ),
    ] {
        let e = d.refused(&args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(service_ids(&d)?, before, "refused commands change nothing");
    assert_eq!(d.inspect(&["service", "inspect", "web"])?["Spec"]["Mode"]["Replicated"]["Replicas"], 4);
    assert_eq!(d.refused(&["service", "ps", "nosuch"]).trim(), "no such service: nosuch");

    // scale: the progress display completes, the mesh balances over the 2 left
    let out = d.all(&["service", "scale", "web=2"])?;
    assert!(out.contains("web scaled to 2") && out.contains("overall progress: 2 out of 2 tasks"), "{out}");
    wait_until(Duration::from_secs(15), "web 2/2", || {
        d.ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]).is_ok_and(|o| o.contains("web 2/2"))
    })?;
    wait_until(Duration::from_secs(15), "the mesh serves 2 tasks", || {
        hosts(x1, &web_url, 4).is_ok_and(|s| s.iter().collect::<std::collections::HashSet<_>>().len() == 2)
    })?;
    assert_round_robin(&hosts(x1, &web_url, 6)?, 2, "web scaled to 2");

    // drain: a node's tasks move to the others, the mesh keeps serving 2
    d.all(&["node", "update", "--availability", "drain", "n2"])?;
    let running_nodes = || -> Result<Vec<String>> {
        let out = d.ok(&[
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
            "web",
        ])?;
        Ok(out
            .lines()
            .filter(|l| l.contains("Running"))
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect())
    };
    wait_until(Duration::from_secs(30), "web's tasks off the drained n2", || {
        running_nodes().is_ok_and(|n| n.len() == 2 && !n.iter().any(|x| x == "n2"))
    })?;
    assert_eq!(node_table(&d)?["n2"].1, "Drain");
    wait_until(Duration::from_secs(15), "the mesh serves the moved tasks evenly", || {
        hosts(x1, &web_url, 4).is_ok_and(|s| {
            let distinct: std::collections::HashSet<_> = s.iter().collect();
            distinct.len() == 2 && !s.iter().any(|h| h == "FAIL") && s[..2] == s[2..]
        })
    })?;
    assert_round_robin(&hosts(x1, &web_url, 6)?, 2, "web after drain");
    d.all(&["node", "update", "--availability", "active", "n2"])?;

    // --force: the CLI sends ForceUpdate + 1; every task is replaced although the spec is the same
    let old: std::collections::HashSet<String> = hosts(x1, &web_url, 4)?.into_iter().collect();
    let out = d.all(&["service", "update", "--force", "web"])?;
    assert!(out.contains("converged"), "{out}");
    assert_eq!(d.inspect(&["service", "inspect", "web"])?["Spec"]["TaskTemplate"]["ForceUpdate"], 1);
    wait_until(Duration::from_secs(20), "the mesh serves 2 new tasks", || {
        hosts(x1, &web_url, 4).is_ok_and(|s| {
            let now: std::collections::HashSet<_> = s.iter().cloned().collect();
            now.len() == 2 && now.is_disjoint(&old) && !now.contains("FAIL")
        })
    })?;

    // an image update and its rollback, each with the progress display completing; the page
    // served through the mesh says which image runs
    for n in [n1, n2, n3] {
        let dn = Docker::new(&lab, n)?;
        for f in ["busybox-1.tar", "busybox-2.tar"] {
            dn.all(&["load", "-i", test_image(f).to_str().unwrap()])?;
        }
    }
    let pages_url = format!("http://{}:8001/", n1.addr());
    let page = || x1.sh(&format!("curl -s -m 3 {pages_url}")).map(|p| p.trim().to_string()).unwrap_or_default();
    let out = d.all(&[
        "service",
        "create",
        "--name",
        "pages",
        "--replicas",
        "2",
        "-p",
        "8001:80",
        "--update-monitor",
        "1s",
        "--rollback-monitor",
        "1s",
        "netbee-test/busybox:1",
    ])?;
    assert!(out.contains("overall progress: 2 out of 2 tasks") && out.contains("converged"), "{out}");
    wait_until(Duration::from_secs(15), "image 1 served", || page() == "netbee test image one")?;
    let out =
        d.all(&["service", "update", "--image", "netbee-test/busybox:2", "--update-parallelism", "1", "pages"])?;
    assert!(out.contains("overall progress: 2 out of 2 tasks") && out.contains("converged"), "{out}");
    wait_until(Duration::from_secs(15), "image 2 served", || page() == "netbee test image two")?;
    assert!((0..4).all(|_| page() == "netbee test image two"), "only image 2 after the update");
    let v = d.inspect(&["service", "inspect", "pages"])?;
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:2", "{v}");
    assert_eq!(v["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:1", "{v}");
    let state = || d.inspect(&["service", "inspect", "pages"]).map(|v| v["UpdateStatus"]["State"].clone());
    // the CLI stops once the tasks ran for the monitor period; the daemon records the end on
    // its next pass
    wait_until(Duration::from_secs(10), "update completed", || state().is_ok_and(|s| s == "completed"))?;
    let out = d.all(&["service", "update", "--rollback", "pages"])?;
    assert!(out.contains("rollback: manually requested rollback") && out.contains("converged"), "{out}");
    wait_until(Duration::from_secs(15), "image 1 served again", || page() == "netbee test image one")?;
    assert!((0..4).all(|_| page() == "netbee test image one"), "only image 1 after the rollback");
    wait_until(Duration::from_secs(10), "rollback completed", || state().is_ok_and(|s| s == "rollback_completed"))?;
    // service ps shows each slot's history: the running task, then the shut-down ones under it
    let ps = d.ok(&["service", "ps", "--format", "{{.Name}}|{{.Image}}|{{.DesiredState}}", "pages"])?;
    let rows: Vec<Vec<&str>> = ps.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.iter().filter(|r| r[2] == "Running").count(), 2, "{ps}");
    assert!(rows.iter().filter(|r| r[2] == "Running").all(|r| r[1] == "netbee-test/busybox:1"), "{ps}");
    assert!(rows.iter().any(|r| r[2] == "Shutdown" && r[1] == "netbee-test/busybox:2"), "{ps}");
    assert_eq!(rows.len(), 6, "2 slots with 3 tasks each: {ps}");
    let table = d.ok(&["service", "ps", "pages"])?;
    assert_eq!(table.lines().filter(|l| l.contains(" \\_ pages.")).count(), 4, "{table}");

    // the captured tutorial's flags: an overlay, a node-label constraint, env; then --publish-add
    // and --replicas in one update
    d.ok(&["network", "create", "-d", "overlay", "ov"])?;
    d.all(&["node", "update", "--label-add", "zone=a", "n2"])?;
    d.all(&[
        "service",
        "create",
        "--name",
        "zoned",
        "--replicas",
        "2",
        "--network",
        "ov",
        "--constraint",
        "node.labels.zone==a",
        "--env",
        "A=1",
        "-p",
        "8002:8080",
        "host",
        bin,
        "whoami",
        "--port",
        "8080",
    ])?;
    let nodes_of = |svc: &str| -> Result<Vec<String>> {
        let out = d.ok(&["service", "ps", "--filter", "desired-state=running", "--format", "{{.Node}}", svc])?;
        Ok(out.lines().map(str::to_string).collect())
    };
    assert_eq!(nodes_of("zoned")?, ["n2", "n2"], "the constraint places both tasks on n2");
    let a = x1.sh(&format!("curl -s -m 3 http://{}:8002/", n3.addr()))?;
    assert!(a.contains("IP: 10.") || a.contains("IP: 172."), "zoned answers through n3's mesh: {a}");
    d.all(&["service", "update", "--replicas", "1", "--publish-add", "8003:8080", "zoned"])?;
    wait_until(Duration::from_secs(15), "zoned on the added port", || {
        x1.sh(&format!("curl -s -m 2 http://{}:8003/", n1.addr())).is_ok_and(|a| a.contains("Hostname"))
    })?;
    assert_eq!(nodes_of("zoned")?.len(), 1, "scaled to 1 in the same update");
    d.all(&["service", "rm", "zoned"])?;

    // rm: the published port is gone from every node
    d.all(&["service", "rm", "web", "pages"])?;
    assert!(service_ids(&d)?.is_empty());
    for n in [n1, n2, n3] {
        wait_until(Duration::from_secs(15), &format!("port 8000 closed on {}", n.short_name()), || {
            x1.sh(&format!("curl -s -m 2 http://{}:8000/", n.addr())).is_err()
        })?;
    }

    // events: what happened to the services, in order, and nothing else under type=service
    let ev = d.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &unix_now(),
        "--filter",
        "type=service",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ])?;
    let ev: Vec<&str> = ev.lines().collect();
    for want in ["service create web", "service update web", "service update pages", "service remove web"] {
        assert!(ev.contains(&want), "{want} in {ev:?}");
    }
    let pos = |w: &str| ev.iter().position(|l| *l == w);
    assert!(
        pos("service create web") < pos("service update web") && pos("service update web") < pos("service remove web"),
        "{ev:?}"
    );
    assert!(ev.iter().all(|l| l.starts_with("service ")), "{ev:?}");
    Ok(())
}

/// A compose v3 stack: `web` (netbee whoami, 3 replicas, published, alias `www` on overlay
/// `front`) and `db` (no networks: the stack's `default`).
fn stack_compose(bin: &str) -> String {
    format!(
        r#"version: "3.8"
services:
  web:
    image: host
    command: ["{bin}", "whoami", "--port", "8080"]
    ports:
      - "8000:8080"
    networks:
      front:
        aliases: [www]
    deploy:
      replicas: 3
  db:
    image: host
    command: ["sleep", "600"]
networks:
  front: {{}}
"#
    )
}

#[test]
fn docker_stack_deploy_ls_ps_rm_beside_netbee_stacks() -> Result<()> {
    let lab = swarm_lab("dkstack", &["n1", "n2", "n3"], &["x1"])?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let x1 = lab.external("x1");
    let d = Docker::new(&lab, n1)?;
    let bin = netbee_bin();
    let file = lab.dir().join("st.yml");
    std::fs::write(&file, stack_compose(bin.to_str().unwrap()))?;

    // the CLI turns the file into networks and services labelled with the stack
    let out = d.all(&["stack", "deploy", "-c", file.to_str().unwrap(), "st"])?;
    assert!(out.contains("Creating network st_front") && out.contains("Creating service st_web"), "{out}");
    let replicas = || -> Result<BTreeMap<String, String>> {
        let out = d.ok(&["stack", "services", "--format", "{{.Name}} {{.Replicas}}", "st"])?;
        Ok(out.lines().filter_map(|l| l.split_once(' ')).map(|(a, b)| (a.to_string(), b.to_string())).collect())
    };
    wait_until(Duration::from_secs(30), "st_web 3/3 and st_db 1/1", || {
        replicas().is_ok_and(|r| {
            r.get("st_web").map(String::as_str) == Some("3/3") && r.get("st_db").map(String::as_str) == Some("1/1")
        })
    })?;
    let nets = d.ok(&[
        "network",
        "ls",
        "--filter",
        "label=com.docker.stack.namespace=st",
        "--format",
        "{{.Name}} {{.Driver}}",
    ])?;
    let mut nets: Vec<&str> = nets.lines().collect();
    nets.sort();
    assert_eq!(nets, ["st_default overlay", "st_front overlay"]);

    // the published port balances round robin over the 3 tasks from every node
    for n in [n1, n2] {
        let url = format!("http://{}:8000/", n.addr());
        wait_until(Duration::from_secs(15), "the mesh serves 3 tasks", || {
            hosts(x1, &url, 6).is_ok_and(|s| s.iter().collect::<std::collections::HashSet<_>>().len() == 3)
        })?;
        assert_round_robin(&hosts(x1, &url, 9)?, 3, &format!("st_web via {}", n.short_name()));
    }
    // stack ps: the 4 tasks, each named by its service and slot
    let ps = d.ok(&["stack", "ps", "--format", "{{.Name}} {{.DesiredState}}", "st"])?;
    let mut names: Vec<&str> =
        ps.lines().filter(|l| l.ends_with(" Running")).map(|l| l.split(' ').next().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["st_db.1", "st_web.1", "st_web.2", "st_web.3"], "{ps}");

    // a stack deployed by netbee's own CLI and one by docker's list each other
    let nb_file = lab.dir().join("nb.yml");
    std::fs::write(
        &nb_file,
        "version: \"3.8\"\nservices:\n  idle:\n    image: host\n    command: [\"sleep\", \"600\"]\n",
    )?;
    n1.netbee(&["stack", "deploy", "-c", nb_file.to_str().unwrap(), "nb"])?;
    let ls = d.ok(&["stack", "ls", "--format", "{{.Name}} {{.Services}}"])?;
    assert_eq!(ls.lines().collect::<Vec<_>>(), ["nb 1", "st 2"], "{ls}");
    let nb_ls = n1.netbee(&["stack", "ls"])?;
    assert!(nb_ls.lines().any(|l| l.starts_with("st ") && l.contains('2')), "{nb_ls}");

    // stack rm: services and networks go, the port closes
    let out = d.all(&["stack", "rm", "st"])?;
    assert!(out.contains("Removing service st_web") && out.contains("Removing network st_front"), "{out}");
    wait_until(Duration::from_secs(20), "st's networks gone", || {
        d.ok(&["network", "ls", "--filter", "label=com.docker.stack.namespace=st", "-q"])
            .is_ok_and(|o| o.trim().is_empty())
    })?;
    assert_eq!(d.ok(&["stack", "ls", "--format", "{{.Name}}"])?.trim(), "nb");
    wait_until(Duration::from_secs(15), "port 8000 closed", || {
        x1.sh(&format!("curl -s -m 2 http://{}:8000/", n1.addr())).is_err()
    })?;
    Ok(())
}
