//! Stacks from compose files: `stack deploy` of two services on an overlay with aliases,
//! replicas and published ports on a three-node swarm; two stacks side by side, isolated from
//! each other by their networks while both publish; deploying again in place; `stack rm`
//! leaving nothing behind; bad compose files refused before anything is created.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, anyhow};
use netbee_lab::{Lab, Node, swarm_lab, test_image, wait_until};
use serde_json::Value;

const IMAGE: &str = "netbee-test/busybox:1";
/// What `netbee-test/busybox:1` serves at /.
const PAGE: &str = "netbee test image one";

/// A stack: `web` (the image's httpd) published on `port` with `replicas` tasks and the alias
/// `www` on the stack's overlay `front`; `client` (sleeps) on the same network.
fn compose(port: u16, replicas: u32) -> String {
    format!(
        r#"version: "3.8"
services:
  web:
    image: {IMAGE}
    ports:
      - "{port}:80"
    networks:
      front:
        aliases: [www]
    labels:
      tier: web
    deploy:
      replicas: {replicas}
      labels:
        owner: stacks-test
  client:
    image: {IMAGE}
    command: sleep 600
    depends_on: [web]
    networks: [front]
networks:
  front:
    driver: overlay
    attachable: true
"#
    )
}

fn write(lab: &Lab, name: &str, text: &str) -> Result<String> {
    let p = lab.dir().join(name);
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

/// `stack services` as (name, replicas) pairs.
fn stack_services(n: &Node, stack: &str) -> BTreeMap<String, String> {
    n.netbee(&["stack", "services", "--format", "json", stack])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["Name"].as_str().unwrap_or("").to_string(), v["Replicas"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn wait_stack(n: &Node, stack: &str, want: &[(&str, &str)]) -> Result<()> {
    let want: BTreeMap<String, String> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    wait_until(Duration::from_secs(60), &format!("stack {stack}: {want:?}"), || stack_services(n, stack) == want)
        .map_err(|e| anyhow!("{e:#}; last seen {:?}", stack_services(n, stack)))
}

/// The running task of `service` as (node, container name).
fn running_task<'a>(lab: &'a Lab, service: &str) -> Result<(&'a Node, String)> {
    let n1 = lab.node("n1");
    let out = n1.netbee(&["service", "ps", "--format", "json", service])?;
    let t = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["DesiredState"] == "Running" && v["CurrentState"] == "Running")
        .ok_or_else(|| anyhow!("no running task of {service}: {out}"))?;
    let node = lab.node(t["Node"].as_str().unwrap_or_default());
    let id = t["ID"].as_str().unwrap_or_default();
    Ok((node, format!("{}.{}", t["Name"].as_str().unwrap_or_default(), &id[..12])))
}

fn vip(n: &Node, service: &str) -> Result<String> {
    let v: Value = serde_json::from_str(&n.netbee(&["service", "inspect", service])?)?;
    Ok(v[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string())
}

/// Running task IDs of the stack's services (for "deploying again changes nothing").
fn task_ids(n: &Node, services: &[&str]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for s in services {
        for l in n.netbee(&["service", "ps", "--format", "json", s])?.lines() {
            let v: Value = serde_json::from_str(l)?;
            if v["DesiredState"] == "Running" {
                ids.push(v["ID"].as_str().unwrap_or("").to_string());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// An HTTP GET of http://HOST/ inside a task, by `nc`: the busybox image's `wget` (static glibc)
/// crashes when it resolves a name, where `nc` and `nslookup` do not. Fails unless a page came.
fn http_get(host: &str, timeout: u32) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout} {host} 80 | grep '{PAGE}'")
}

fn links(n: &Node) -> Result<Vec<String>> {
    let mut l: Vec<String> =
        n.sh("ip -br link")?.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_string()).collect();
    l.sort();
    Ok(l)
}

#[test]
fn stacks_deploy_isolate_update_in_place_and_remove_everything() -> Result<()> {
    let lab = swarm_lab("stk", &["n1", "n2", "n3"], &["x1"])?;
    let (n1, x) = (lab.node("n1"), lab.external("x1"));
    for n in lab.nodes() {
        n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    }
    // a node's first overlay prepares its VXLAN device, which outlives the networks: make it
    // part of the baseline, so what stays after `stack rm` is exactly what the stacks made
    n1.netbee(&["network", "create", "--driver", "overlay", "warmup"])?;
    n1.netbee(&["network", "rm", "warmup"])?;
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<Vec<String>> = lab.nodes().iter().map(links).collect::<Result<_>>()?;

    let fa = write(&lab, "a.yml", &compose(8080, 3))?;
    let fb = write(&lab, "b.yml", &compose(8081, 2))?;
    let out = n1.netbee_output(&["stack", "deploy", "-c", &fa, "sa"]);
    assert!(out.status.success(), "{out:?}");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "Creating network sa_front\nCreating service sa_web\nCreating service sa_client\n");
    assert!(stderr.contains("Ignoring unsupported options: depends_on"), "{stderr}");
    n1.netbee(&["stack", "deploy", "--compose-file", &fb, "sb"])?;
    wait_stack(n1, "sa", &[("sa_client", "1/1"), ("sa_web", "3/3")])?;
    wait_stack(n1, "sb", &[("sb_client", "1/1"), ("sb_web", "2/2")])?;

    let ls = n1.netbee(&["stack", "ls"])?;
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [vec!["NAME", "SERVICES"], vec!["sa", "2"], vec!["sb", "2"]], "{ls}");
    let table = n1.netbee(&["stack", "services", "sa"])?;
    let header: Vec<&str> =
        table.lines().next().unwrap_or("").split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    assert!(table.contains(IMAGE) && table.contains("*:8080->80/tcp"), "{table}");
    let ps = n1.netbee(&["stack", "ps", "sa"])?;
    assert_eq!(ps.lines().filter(|l| l.contains(" Running ")).count(), 4, "{ps}");

    // names and labels as docker's
    let v: Value = serde_json::from_str(&n1.netbee(&["service", "inspect", "sa_web"])?)?;
    let spec = &v[0]["Spec"];
    assert_eq!(spec["Labels"]["com.docker.stack.namespace"], "sa");
    assert_eq!(spec["Labels"]["com.docker.stack.image"], IMAGE);
    assert_eq!(spec["Labels"]["owner"], "stacks-test");
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Labels"]["tier"], "web");
    assert_eq!(spec["TaskTemplate"]["Networks"][0]["Aliases"], serde_json::json!(["www", "web"]));
    let net = n1.network_inspect("sa_front")?;
    assert_eq!(net["Driver"], "overlay");
    assert_eq!(net["Labels"]["com.docker.stack.namespace"], "sa");

    // inside a stack: by service name, short name and alias, on every node's tasks
    let (cn, client) = running_task(&lab, "sa_client")?;
    let sa_vip = vip(n1, "sa_web")?;
    for name in ["web", "www", "sa_web"] {
        let body = cn.exec(&client, &["sh", "-c", &http_get(name, 3)])?;
        assert_eq!(body.trim(), PAGE, "{name} from sa's client");
        let ns = cn.exec(&client, &["busybox", "nslookup", name])?;
        assert!(ns.contains(&sa_vip), "{name} resolves to sa_web's VIP {sa_vip}: {ns}");
    }
    // the web tasks reach the client service by its name too
    let (wn, web) = running_task(&lab, "sa_web")?;
    let ns = wn.exec(&web, &["busybox", "nslookup", "client"])?;
    assert!(ns.contains(&vip(n1, "sa_client")?), "client resolves from a web task: {ns}");

    // across stacks: neither names nor addresses
    let sb_vip = vip(n1, "sb_web")?;
    let (bn, b_client) = running_task(&lab, "sb_client")?;
    let b_task_ip = {
        let (wn, w) = running_task(&lab, "sb_web")?;
        let v = wn.inspect(&w)?;
        v["NetworkSettings"]["Networks"]["sb_front"]["IPAddress"].as_str().unwrap_or("").to_string()
    };
    for target in ["sb_web", sb_vip.as_str(), b_task_ip.as_str()] {
        assert!(!cn.exec_ok(&client, &["sh", "-c", &http_get(target, 2)]), "sa's client must not reach {target}");
    }
    assert!(!cn.exec_ok(&client, &["busybox", "nslookup", "sb_web"]), "sb_web must not resolve in sa");
    // each stack's `web` is its own
    let ns = bn.exec(&b_client, &["busybox", "nslookup", "web"])?;
    assert!(ns.contains(&sb_vip) && !ns.contains(&sa_vip), "web in sb is sb_web: {ns}");
    // both stacks' published ports answer from outside, through every node
    for node in lab.nodes() {
        for port in [8080, 8081] {
            let url = format!("http://{}:{port}/", node.addr());
            let body = x.sh(&format!("curl -s -m 3 {url}"))?;
            assert_eq!(body.trim(), PAGE, "{url}");
        }
    }

    // deploying the same file again changes nothing; a new replica count is applied in place
    let ids = n1.netbee(&["stack", "services", "-q", "sa"])?;
    let tasks = task_ids(n1, &["sa_web", "sa_client"])?;
    let again = n1.netbee(&["stack", "deploy", "-c", &fa, "sa"])?;
    assert!(again.contains("Updating service sa_web (id: ") && !again.contains("Creating"), "{again}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n1.netbee(&["stack", "services", "-q", "sa"])?, ids, "same services");
    assert_eq!(task_ids(n1, &["sa_web", "sa_client"])?, tasks, "no task was replaced");
    let fa2 = write(&lab, "a2.yml", &compose(8080, 2))?;
    n1.netbee(&["stack", "deploy", "-c", &fa2, "sa"])?;
    wait_stack(n1, "sa", &[("sa_client", "1/1"), ("sa_web", "2/2")])?;
    assert_eq!(n1.netbee(&["stack", "services", "-q", "sa"])?, ids, "updated in place");

    // rm: no service, network, container or kernel object left on any node
    let rm = n1.netbee(&["stack", "rm", "sa", "sb"])?;
    for l in ["Removing service sa_web", "Removing network sa_front", "Removing network sb_front"] {
        assert!(rm.contains(l), "{rm}");
    }
    assert_eq!(n1.netbee(&["service", "ls", "-q"])?.trim(), "");
    let nets = n1.netbee(&["network", "ls"])?;
    assert!(!nets.contains("sa_") && !nets.contains("sb_"), "{nets}");
    assert!(n1.netbee(&["stack", "ls"])?.lines().count() <= 1);
    for (node, before) in lab.nodes().iter().zip(&before) {
        wait_until(Duration::from_secs(30), &format!("{}: no container left", node.name()), || {
            node.netbee(&["ps", "-a", "-q"]).is_ok_and(|o| o.trim().is_empty())
        })?;
        wait_until(Duration::from_secs(30), &format!("{}: links as before the stacks", node.name()), || {
            links(node).is_ok_and(|l| &l == before)
        })
        .map_err(|e| anyhow!("{e:#}: before {before:?}, now {:?}", links(node)))?;
    }
    for port in [8080, 8081] {
        assert!(x.sh(&format!("curl -s -m 2 http://{}:{port}/", n1.addr())).is_err(), "{port} withdrawn");
    }
    Ok(())
}

/// Bad compose files are refused with the key and service named, before anything is created.
#[test]
fn stack_bad_input_creates_nothing() -> Result<()> {
    let lab = swarm_lab("stkbad", &["n1"], &[])?;
    let n = lab.node("n1");
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    // a service of the same name outside the stack: refused before the stack's network is made
    n.netbee(&["service", "create", "-d", "--name", "st_web", IMAGE])?;
    let services_before = n.netbee(&["service", "ls", "-q"])?;
    let nets_before = n.netbee(&["network", "ls", "-q"])?;
    let good = compose(8080, 1);
    for (name, text, needle) in [
        ("top.yml", format!("{good}bogus: 1\n"), "(root) Additional property bogus is not allowed"),
        (
            "key.yml",
            good.replace("    depends_on: [web]\n", "    colour: red\n"),
            "services.client Additional property colour is not allowed",
        ),
        (
            "type.yml",
            good.replace("replicas: 1", "replicas: \"x\""),
            "services.web.deploy.replicas: invalid type: string \"x\"",
        ),
        (
            "port.yml",
            good.replace("\"8080:80\"", "\"99999:80\""),
            "services.web.ports[0]: invalid published port \"99999\"",
        ),
        (
            "net.yml",
            good.replace("networks: [front]", "networks: [back]"),
            "service \"client\" refers to undefined network back",
        ),
        (
            "ext.yml",
            format!("{good}  shared:\n    external: true\n").replace("networks: [front]", "networks: [shared]"),
            "network \"shared\" is declared as external, but could not be found",
        ),
        ("taken.yml", good.clone(), "service st_web already exists and is not part of stack st"),
    ] {
        let f = write(&lab, name, &text)?;
        let err = n.netbee_refused(&["stack", "deploy", "-c", &f, "st"]);
        assert!(err.contains(needle), "{name}: expected {needle:?} in {err:?}");
    }
    let missing = n.netbee_refused(&["stack", "deploy", "-c", "/nonexistent.yml", "st"]);
    assert!(missing.contains("/nonexistent.yml"), "{missing}");
    assert_eq!(n.netbee(&["service", "ls", "-q"])?, services_before, "no service created");
    assert_eq!(n.netbee(&["network", "ls", "-q"])?, nets_before, "no network created");
    let none = n.netbee_output(&["stack", "services", "nosuch"]);
    assert!(none.status.success() && String::from_utf8_lossy(&none.stderr).contains("Nothing found in stack: nosuch"));
    Ok(())
}

/// A changed spec replaces the tasks (a new environment needs new containers) by a rolling update
/// with the file's `update_config`, the old spec kept for a rollback; `--prune` removes the
/// services the file no longer defines, and only with it.
#[test]
fn stack_redeploy_replaces_changed_tasks_and_prunes() -> Result<()> {
    let lab = swarm_lab("stkprune", &["n1"], &[])?;
    let n = lab.node("n1");
    n.netbee(&["load", "-i", test_image("busybox-1.tar").to_str().unwrap()])?;
    let two = compose(8090, 1);
    n.netbee(&["stack", "deploy", "-c", &write(&lab, "two.yml", &two)?, "pr"])?;
    wait_stack(n, "pr", &[("pr_client", "1/1"), ("pr_web", "1/1")])?;
    let before = task_ids(n, &["pr_web"])?;

    // web gets an environment and update settings, and client leaves the file: without --prune
    // client stays
    let only_web = (two[..two.find("  client:").unwrap()].to_string() + "networks:\n  front:\n    driver: overlay\n")
        .replace("    labels:\n      tier: web\n", "    environment: [MODE=new]\n    labels:\n      tier: web\n")
        .replace(
            "        owner: stacks-test\n",
            "        owner: stacks-test\n      update_config:\n        parallelism: 2\n        monitor: 1s\n",
        );
    let f = write(&lab, "one.yml", &only_web)?;
    n.netbee(&["stack", "deploy", "-c", &f, "pr"])?;
    wait_until(Duration::from_secs(30), "pr_web's task replaced", || {
        task_ids(n, &["pr_web"]).is_ok_and(|t| t.len() == 1 && t != before) && n.service_replicas("pr_web") == "1/1"
    })?;
    let (node, web) = running_task(&lab, "pr_web")?;
    assert_eq!(node.exec(&web, &["sh", "-c", "echo $MODE"])?.trim(), "new");
    assert!(stack_services(n, "pr").contains_key("pr_client"), "kept without --prune");
    // the redeploy was a rolling update, with the file's settings
    let inspect = || -> Result<Value> { Ok(serde_json::from_str(&n.netbee(&["service", "inspect", "pr_web"])?)?) };
    wait_until(Duration::from_secs(30), "pr_web's update completed", || {
        inspect().is_ok_and(|v| v[0]["UpdateStatus"]["State"] == "completed")
    })?;
    let v = inspect()?;
    assert_eq!(v[0]["Spec"]["UpdateConfig"]["Parallelism"], 2, "{v}");
    assert_eq!(v[0]["Spec"]["UpdateConfig"]["Monitor"], 1_000_000_000u64, "{v}");
    assert_eq!(v[0]["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"], serde_json::json!([]), "{v}");
    assert_eq!(v[0]["PreviousSpec"]["UpdateConfig"]["Parallelism"], 1, "{v}");
    let out = n.netbee(&["stack", "deploy", "--prune", "-c", &f, "pr"])?;
    assert!(out.contains("Removing service pr_client"), "{out}");
    assert_eq!(stack_services(n, "pr").keys().collect::<Vec<_>>(), ["pr_web"]);
    n.netbee(&["stack", "rm", "pr"])?;
    assert_eq!(n.netbee(&["service", "ls", "-q"])?.trim(), "");
    Ok(())
}
