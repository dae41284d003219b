//! Name resolution through the embedded DNS, right at once and on every network a container is
//! on: a name is resolvable when the command that made it returns and gone when the command that
//! removed it returns; a container on several networks resolves the names of each (and of no
//! other); an overlay is usable on every node as soon as `network create` returns.
//!
//! Every lookup is a real DNS query from a container (`getent`, glibc's resolver, to the gateway
//! its resolv.conf names) and none is retried: each trial counts a miss, and the test fails with
//! the count.
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use netbee_lab::{Node, wait_until};
use serde_json::Value;

fn trials(default: usize) -> usize {
    std::env::var("NETBEE_RACE_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(default)
}

/// The address `name` resolves to from `container`, or None (NXDOMAIN, or any failure).
fn resolve(n: &Node, container: &str, name: &str) -> Option<String> {
    let out = n.exec(container, &["getent", "ahostsv4", name]).ok()?;
    out.lines().next().and_then(|l| l.split_whitespace().next()).map(str::to_string)
}

/// Every address `name` resolves to from `container` (sorted, deduplicated).
fn resolve_all(n: &Node, container: &str, name: &str) -> Vec<String> {
    let out = n.exec(container, &["getent", "ahostsv4", name]).unwrap_or_default();
    let mut ips: Vec<String> = out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    ips.sort();
    ips.dedup();
    ips
}

fn sleeper(n: &Node, name: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["host", "sleep", "600"]);
    n.netbee(&args)?;
    Ok(())
}

/// Misses of one kind of check, with the first few for the failure message.
#[derive(Default)]
struct Misses {
    count: usize,
    examples: Vec<String>,
}

impl Misses {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.count += 1;
            if self.examples.len() < 5 {
                self.examples.push(what());
            }
        }
    }
}

/// Acceptance e: `run -d --name X`, `network connect` (the name and an `--alias`) and
/// `--network-alias` followed at once by a lookup from another container of the network resolve
/// on the first try, every trial; `rm`, `network disconnect` take the names away as promptly.
///
/// ```text
///   client (app) --getent X--> gateway of app (embedded DNS) : X just started on app
///   client (app) --getent C, ALIAS--> ... : C (on side) just connected to app with --alias
///   C (side, now also on app) --getent client--> gateway of side : client is on app
/// ```
#[test]
fn names_resolve_as_soon_as_the_command_returns() -> Result<()> {
    let lab = netbee_lab::single_node_lab("namese", &[])?;
    let n = lab.node("n1");
    n.netbee(&["network", "create", "app"])?;
    n.netbee(&["network", "create", "side"])?;
    sleeper(n, "client", &["--network", "app"])?;
    // the DNS server of app answers before the trials start (its first start is not measured)
    wait_until(Duration::from_secs(10), "client resolves itself", || resolve(n, "client", "client").is_some())?;
    let trials = trials(50);
    let (mut run, mut connect, mut alias, mut removal, mut multi) =
        (Misses::default(), Misses::default(), Misses::default(), Misses::default(), Misses::default());
    let started = Instant::now();
    for i in 0..trials {
        // run -d --name X
        let x = format!("x{i}");
        sleeper(n, &x, &["--network", "app"])?;
        let got = resolve(n, "client", &x);
        run.check(got.is_some(), || format!("trial {i}: {x} did not resolve"));
        if let Some(ip) = got {
            let want = n.container_ip(&x, "app")?;
            run.check(ip == want, || format!("trial {i}: {x} resolved to {ip}, not {want}"));
        }
        // --network-alias
        let (y, y_alias) = (format!("y{i}"), format!("yalias{i}"));
        sleeper(n, &y, &["--network", "app", "--network-alias", &y_alias])?;
        alias.check(resolve(n, "client", &y_alias).is_some(), || format!("trial {i}: alias {y_alias} did not resolve"));
        // network connect, with --alias: the name and the alias on the new network, and the
        // connected container resolves the names of both its networks
        let (c, c_alias) = (format!("c{i}"), format!("calias{i}"));
        sleeper(n, &c, &["--network", "side"])?;
        n.netbee(&["network", "connect", "--alias", &c_alias, "app", &c])?;
        let got = resolve(n, "client", &c);
        connect.check(got.is_some(), || format!("trial {i}: {c} did not resolve after connect"));
        if let Some(ip) = got {
            let want = n.container_ip(&c, "app")?;
            connect.check(ip == want, || format!("trial {i}: {c} resolved to {ip}, not its app address {want}"));
        }
        connect
            .check(resolve(n, "client", &c_alias).is_some(), || format!("trial {i}: alias {c_alias} did not resolve"));
        multi.check(resolve(n, &c, "client").is_some(), || format!("trial {i}: {c} cannot resolve client on app"));
        // removal is as prompt
        n.netbee(&["network", "disconnect", "app", &c])?;
        removal.check(resolve(n, "client", &c).is_none(), || format!("trial {i}: {c} still resolves after disconnect"));
        removal.check(resolve(n, "client", &c_alias).is_none(), || {
            format!("trial {i}: {c_alias} resolves after disconnect")
        });
        for name in [&x, &y, &c] {
            n.netbee(&["rm", "-f", name])?;
        }
        removal.check(resolve(n, "client", &x).is_none(), || format!("trial {i}: {x} still resolves after rm"));
        removal.check(resolve(n, "client", &y_alias).is_none(), || format!("trial {i}: {y_alias} resolves after rm"));
    }
    eprintln!(
        "{trials} trials in {:.1} s: misses run {} · alias {} · connect {} · connected container's lookups {} · removal {}",
        started.elapsed().as_secs_f64(),
        run.count,
        alias.count,
        connect.count,
        multi.count,
        removal.count
    );
    for (what, m) in [("run", &run), ("alias", &alias), ("connect", &connect), ("multi", &multi), ("removal", &removal)]
    {
        assert_eq!(m.count, 0, "{what}: {} misses in {trials} trials: {:?}", m.count, m.examples);
    }
    Ok(())
}

/// Acceptance c (names): a container on two networks resolves the names of both, whichever is
/// its first (the one its resolv.conf's gateway belongs to), and of no third one; the peers see
/// it on their network only.
#[test]
fn a_container_on_two_networks_resolves_names_on_both() -> Result<()> {
    let lab = netbee_lab::single_node_lab("names2", &[])?;
    let n = lab.node("n1");
    for net in ["front", "back", "third"] {
        n.netbee(&["network", "create", net])?;
    }
    sleeper(n, "pf", &["--network", "front"])?;
    sleeper(n, "pb", &["--network", "back", "--network-alias", "db"])?;
    sleeper(n, "pt", &["--network", "third"])?;
    // on two networks from its start (front first), and connected to a second one later
    sleeper(n, "both", &["--network", "front"])?;
    n.netbee(&["network", "connect", "back", "both"])?;
    sleeper(n, "later", &["--network", "back"])?;
    n.netbee(&["network", "connect", "front", "later"])?;
    for c in ["both", "later"] {
        assert_eq!(resolve(n, c, "pf"), Some(n.container_ip("pf", "front")?), "{c} resolves pf on front");
        assert_eq!(resolve(n, c, "pb"), Some(n.container_ip("pb", "back")?), "{c} resolves pb on back");
        assert_eq!(resolve(n, c, "db"), Some(n.container_ip("pb", "back")?), "{c} resolves pb's alias");
        assert_eq!(resolve(n, c, "pt"), None, "{c} must not resolve pt of a network it is not on");
    }
    // a name on both networks answers with the address on the network the query came in on
    assert_eq!(resolve(n, "both", "later"), Some(n.container_ip("later", "front")?));
    assert_eq!(resolve(n, "later", "both"), Some(n.container_ip("both", "back")?));
    // the peers see the container on their own network only, and nothing of the other one
    assert_eq!(resolve(n, "pf", "both"), Some(n.container_ip("both", "front")?));
    assert_eq!(resolve(n, "pb", "both"), Some(n.container_ip("both", "back")?));
    assert_eq!(resolve(n, "pf", "pb"), None, "pf must not resolve pb through both");
    assert_eq!(resolve(n, "pt", "both"), None);
    // and it reaches what it resolves
    for peer in ["pf", "pb"] {
        assert!(n.exec_ok("both", &["ping", "-c1", "-W2", peer]), "both reaches {peer} by name");
    }
    // leaving a network takes its names away at once
    n.netbee(&["network", "disconnect", "back", "both"])?;
    assert_eq!(resolve(n, "both", "pb"), None, "pb after both left back");
    assert_eq!(resolve(n, "both", "pf"), Some(n.container_ip("pf", "front")?));
    Ok(())
}

/// A three-node swarm whose three nodes are managers (any of them may create services).
fn managers_lab(name: &str) -> Result<netbee_lab::Lab> {
    let lab = netbee_lab::swarm_lab(name, &["n1", "n2", "n3"], &[])?;
    let n1 = lab.node("n1");
    n1.netbee(&["node", "promote", "n2"])?;
    n1.netbee(&["node", "promote", "n3"])?;
    Ok(lab)
}

/// (task name, node) of `service`'s tasks and their desired and current states.
fn task_states(n: &Node, service: &str) -> Vec<(String, String, String, String)> {
    n.netbee(&["service", "ps", "--format", "json", service])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            (s("Name"), s("Node"), s("DesiredState"), s("CurrentState") + " " + &s("Error"))
        })
        .collect()
}

/// Acceptance f: `network create --driver overlay X` on n1 followed at once by `service create
/// --network X` on n2 succeeds every time, and the tasks (spread over the three nodes, so on
/// nodes whose cluster sync may not have seen X yet) run without a failure; so do `run
/// --network X` and `network inspect X` on the third node right after the create. Trials:
/// NETBEE_RACE_TRIALS (50 in `cargo xtask soak`).
#[test]
fn an_overlay_is_usable_on_every_node_when_create_returns() -> Result<()> {
    let lab = managers_lab("namesf")?;
    let (n1, n2, n3) = (lab.node("n1"), lab.node("n2"), lab.node("n3"));
    let trials = trials(3);
    let (mut create, mut tasks, mut other) = (Misses::default(), Misses::default(), Misses::default());
    let started = Instant::now();
    for i in 0..trials {
        let (net, svc) = (format!("ov{i}"), format!("s{i}"));
        n1.netbee(&["network", "create", "--driver", "overlay", &net])?;
        // every few trials the third node is asked first, by a container or an inspect
        if i % 4 == 1 {
            let r = n3.netbee(&["run", "-d", "--name", &format!("r{i}"), "--network", &net, "host", "sleep", "600"]);
            other.check(r.is_ok(), || format!("trial {i}: run --network {net} on n3: {r:?}"));
        } else if i % 4 == 3 {
            let r = n3.netbee(&["network", "inspect", &net]);
            other.check(r.is_ok(), || format!("trial {i}: network inspect {net} on n3: {r:?}"));
        }
        let r = n2.netbee(&[
            "service",
            "create",
            "--name",
            &svc,
            "--replicas",
            "3",
            "--network",
            &net,
            "host",
            "sleep",
            "600",
        ]);
        create.check(r.is_ok(), || format!("trial {i}: service create on n2: {r:?}"));
        if r.is_err() {
            continue;
        }
        let ok =
            wait_until(Duration::from_secs(20), &format!("{svc} 3/3"), || n1.service_replicas(&svc) == "3/3").is_ok();
        let states = task_states(n1, &svc);
        let failed = states.iter().any(|(_, _, _, cur)| cur.starts_with("Failed") || cur.starts_with("Rejected"));
        tasks.check(ok && !failed, || format!("trial {i}: tasks of {svc}: {states:?}"));
        n2.netbee(&["service", "rm", &svc])?;
    }
    eprintln!(
        "{trials} trials in {:.1} s: service create failed {} times, tasks failed in {} trials, n3's run/inspect failed {} times",
        started.elapsed().as_secs_f64(),
        create.count,
        tasks.count,
        other.count
    );
    assert_eq!(create.count, 0, "service create right after network create: {:?}", create.examples);
    assert_eq!(tasks.count, 0, "tasks: {:?}", tasks.examples);
    assert_eq!(other.count, 0, "the third node: {:?}", other.examples);
    Ok(())
}

/// The container of `service`'s first running task and its node.
fn task_container<'a>(lab: &'a netbee_lab::Lab, service: &str) -> Result<(&'a Node, String)> {
    let n1 = lab.node("n1");
    let mut found = None;
    wait_until(Duration::from_secs(20), &format!("{service} running"), || {
        found = task_states(n1, service)
            .into_iter()
            .find(|(_, _, desired, cur)| desired == "Running" && cur.starts_with("Running"));
        found.is_some()
    })?;
    let (task, node, _, _) = found.unwrap();
    let node = lab.node(&node);
    // the container's name is the task's name with the task id after it
    let ps = node.netbee(&["ps", "--format", "json"])?;
    let name = ps
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["Names"].as_str().map(|n| n.trim_start_matches('/').to_string()))
        .find(|n| n.starts_with(&format!("{task}.")))
        .ok_or_else(|| anyhow!("no container of task {task} on {}: {ps}", node.short_name()))?;
    Ok((node, name))
}

/// Acceptance c (names, overlays): a service on two overlays resolves its peers on both (their
/// names, VIPs and `tasks.`), and nothing of an overlay it is not on; a container started on
/// another node is resolvable from it once `run` returns there.
#[test]
fn a_service_on_two_overlays_resolves_peers_on_both() -> Result<()> {
    let lab = managers_lab("namesc")?;
    let n1 = lab.node("n1");
    for net in ["ova", "ovb", "ovc"] {
        n1.netbee(&["network", "create", "--driver", "overlay", net])?;
    }
    let create = |name: &str, nets: &[&str], replicas: &str| -> Result<()> {
        let mut args = vec!["service", "create", "--name", name, "--replicas", replicas];
        for net in nets {
            args.extend_from_slice(&["--network", net]);
        }
        args.extend_from_slice(&["host", "sleep", "600"]);
        n1.netbee(&args)?;
        Ok(())
    };
    create("pa", &["ova"], "2")?;
    create("pb", &["ovb"], "2")?;
    create("pc", &["ovc"], "1")?;
    create("both", &["ova", "ovb"], "1")?;
    for s in ["pa", "pb", "pc", "both"] {
        wait_until(Duration::from_secs(30), &format!("{s} running"), || {
            let r = n1.service_replicas(s);
            r.split_once('/').is_some_and(|(a, b)| a == b && a != "0")
        })?;
    }
    let vip = |s: &str, i: usize| -> Result<String> {
        let v: Value = serde_json::from_str(&n1.netbee(&["service", "inspect", s])?)?;
        Ok(v[0]["Endpoint"]["VirtualIPs"][i]["Addr"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string())
    };
    let (node, ct) = task_container(&lab, "both")?;
    assert_eq!(resolve(node, &ct, "pa"), Some(vip("pa", 0)?), "both resolves pa's VIP on ova");
    assert_eq!(resolve(node, &ct, "pb"), Some(vip("pb", 0)?), "both resolves pb's VIP on ovb");
    assert_eq!(resolve_all(node, &ct, "tasks.pa").len(), 2, "tasks.pa from both");
    assert_eq!(resolve_all(node, &ct, "tasks.pb").len(), 2, "tasks.pb from both");
    assert_eq!(resolve(node, &ct, "pc"), None, "both must not resolve pc (ovc)");
    assert_eq!(resolve(node, &ct, "tasks.pc"), None);
    // the peers resolve `both` on their own network (its VIP there)
    let (pa_node, pa_ct) = task_container(&lab, "pa")?;
    assert_eq!(resolve(pa_node, &pa_ct, "both"), Some(vip("both", 0)?));
    assert_eq!(resolve(pa_node, &pa_ct, "pb"), None, "pa must not resolve pb");
    // containers run on the other nodes are resolvable from it once `run` returns there
    let mut misses = Misses::default();
    for (i, other) in ["n1", "n2", "n3"].iter().filter(|o| **o != node.short_name()).enumerate() {
        for (net, name) in [("ova", format!("ra{i}")), ("ovb", format!("rb{i}"))] {
            sleeper(lab.node(other), &name, &["--network", net])?;
            let want = lab.node(other).container_ip(&name, net)?;
            let got = resolve(node, &ct, &name);
            misses.check(got.as_deref() == Some(want.as_str()), || {
                format!("{name} on {other}/{net}: {got:?}, want {want}")
            });
            lab.node(other).netbee(&["rm", "-f", &name])?;
            wait_until(Duration::from_secs(5), &format!("{name} gone"), || resolve(node, &ct, &name).is_none())?;
        }
    }
    assert_eq!(misses.count, 0, "remote containers: {:?}", misses.examples);
    Ok(())
}

/// Acceptance c: two services on overlays of their own share no name; `service update
/// --network-add shared` on both makes each task resolve the other service by name on `shared`
/// (its VIP there) and reach it through that VIP as soon as the commands return, with no retry;
/// `--network-rm shared` takes that away when it returns.
///
/// ```text
///   sa task (ova, +shared) --getent sb--> gateway of shared --> sb's VIP on shared
///   sa task --curl http://sb:8080--> VIP (eBPF) --> an sb task on shared --> "Hostname: sb..."
/// ```
#[test]
fn network_add_makes_two_services_reach_each_other_by_name() -> Result<()> {
    let lab = managers_lab("namesadd")?;
    let n1 = lab.node("n1");
    for net in ["ova", "ovb", "shared"] {
        n1.netbee(&["network", "create", "--driver", "overlay", net])?;
    }
    let bin = netbee_lab::netbee_bin();
    let whoami = ["host", bin.to_str().unwrap(), "whoami", "--port", "8080"];
    for (svc, net) in [("sa", "ova"), ("sb", "ovb")] {
        let mut args = vec!["service", "create", "--name", svc, "--replicas", "2", "--network", net];
        args.extend_from_slice(&whoami);
        n1.netbee(&args)?;
    }
    let (node, ct) = task_container(&lab, "sa")?;
    assert_eq!(resolve(node, &ct, "sb"), None, "sa must not resolve sb before they share a network");
    // both updates wait until their tasks run again (rolled onto the new network)
    n1.netbee(&["service", "update", "--network-add", "shared", "sa"])?;
    n1.netbee(&["service", "update", "--network-add", "shared", "sb"])?;
    let v: Value = serde_json::from_str(&n1.netbee(&["service", "inspect", "sb"])?)?;
    let shared_id = n1.network_inspect("shared")?["Id"].as_str().unwrap_or("").to_string();
    let sb_vip = v[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["NetworkID"].as_str() == Some(shared_id.as_str()))
        .and_then(|x| x["Addr"].as_str())
        .map(|a| a.split('/').next().unwrap_or("").to_string())
        .ok_or_else(|| anyhow!("sb has no VIP on shared: {v}"))?;
    for (from, to) in [("sa", "sb"), ("sb", "sa")] {
        let (node, ct) = task_container(&lab, from)?;
        let got = resolve(node, &ct, to);
        if to == "sb" {
            assert_eq!(got.as_deref(), Some(sb_vip.as_str()), "{from} resolves {to} to its VIP on shared");
        } else {
            assert!(got.is_some(), "{from} does not resolve {to} after --network-add");
        }
        let answer = node.exec(&ct, &["curl", "-s", "-m", "3", &format!("http://{to}:8080/")])?;
        // the answer lists the answering task's addresses: one of them is a `tasks.{to}` address
        let task_ips = resolve_all(node, &ct, &format!("tasks.{to}"));
        assert_eq!(task_ips.len(), 2, "{from} resolves tasks.{to} to its two tasks: {task_ips:?}");
        assert!(
            answer.lines().any(|l| task_ips.iter().any(|ip| l == format!("IP: {ip}"))),
            "{from} asked for {to} by name; the answer is not from one of {task_ips:?}: {answer:?}"
        );
    }
    n1.netbee(&["service", "update", "--network-rm", "shared", "sa"])?;
    let (node, ct) = task_container(&lab, "sa")?;
    assert_eq!(resolve(node, &ct, "sb"), None, "sa still resolves sb after --network-rm shared");
    assert!(
        !node.exec_ok(&ct, &["curl", "-s", "-m", "2", &format!("http://{sb_vip}:8080/")]),
        "sa still reaches sb's VIP"
    );
    Ok(())
}
