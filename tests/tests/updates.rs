//! Rolling updates and rollbacks of services, as swarm users run them: an image update through
//! the routing mesh under continuous new connections fails no request and replaces the tasks
//! batch by batch; an update whose tasks exit at once rolls itself back; `--rollback` restores the
//! previous image; bad input changes nothing.
//!
//! ```text
//!   x1 ── new connection every 20 ms ──> n1/n2/n3:8000 (routing mesh) ──> web.1..6 (busybox httpd)
//!                       service update --image :2 --update-parallelism 2 --update-delay 2s
//! ```
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use netbee_lab::{Node, test_image, wait_until};
use serde_json::Value;

const ONE: &str = "netbee test image one";
const TWO: &str = "netbee test image two";

/// One GET on a fresh connection: the page's text.
fn get_page(addr: SocketAddr) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.") || !body.contains(" 200 ") {
        return Err(anyhow!("bad answer {body:?}"));
    }
    Ok(body.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

/// Requests from namespace `ns`, round robin over `addrs`, every `pause` until `stop`: each
/// answer's time and page, and the failures.
type Load = std::thread::JoinHandle<(Vec<(Instant, String)>, Vec<String>)>;

fn start_page_load(ns: &str, addrs: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> Load {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let addr = addrs[i % addrs.len()];
            i += 1;
            match get_page(addr) {
                Ok(p) => ok.push((Instant::now(), p)),
                Err(e) => failed.push(format!("{addr}: {e:#}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

fn inspect(n: &Node, service: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&n.netbee(&["service", "inspect", service])?)?;
    Ok(v[0].clone())
}

fn tasks(n: &Node, service: &str) -> Result<Vec<Value>> {
    Ok(n.netbee(&["service", "ps", "--format", "json", service])?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

/// The images of the tasks meant to run.
fn running_images(n: &Node, service: &str) -> Result<Vec<String>> {
    Ok(tasks(n, service)?
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
        .map(|t| t["Image"].as_str().unwrap_or("").to_string())
        .collect())
}

fn created(t: &Value) -> DateTime<Utc> {
    t["CreatedAt"].as_str().and_then(|s| s.parse().ok()).expect("CreatedAt")
}

/// Both test images on every node (as if pulled from a registry).
fn load_images(nodes: &[&Node]) -> Result<()> {
    for n in nodes {
        for f in ["busybox-1.tar", "busybox-2.tar"] {
            n.netbee(&["load", "-i", test_image(f).to_str().unwrap()])?;
        }
    }
    Ok(())
}

#[test]
fn rolling_update_through_the_mesh_fails_nothing_and_rolls_back() -> Result<()> {
    let lab = netbee_lab::swarm_lab("upd", &["n1", "n2", "n3"], &["x1"])?;
    let (n1, n2, n3) = (lab.node("n1"), lab.node("n2"), lab.node("n3"));
    load_images(&[n1, n2, n3])?;
    // create waits until every replica runs, as docker's does
    let out = n1.netbee(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "-p",
        "8000:80",
        "netbee-test/busybox:1",
    ])?;
    assert!(
        out.contains("overall progress: 6 out of 6 tasks") && out.contains("verify: Service web converged"),
        "{out}"
    );
    assert!(out.contains("6/6: running   [==================================================>]"), "{out}");
    let addrs: Vec<SocketAddr> = [n1, n2, n3].iter().map(|n| format!("{}:8000", n.addr()).parse().unwrap()).collect();
    let x1 = lab.external("x1");
    wait_until(Duration::from_secs(20), "the mesh serves tag 1 on every node", || {
        addrs.iter().all(|a| x1.sh(&format!("curl -s -m 2 http://{a}/")).is_ok_and(|p| p.trim() == ONE))
    })?;

    // (a) a rolling update under continuous new connections
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_page_load(x1.name(), addrs.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let update_started = Instant::now();
    let out = n1.netbee(&[
        "service",
        "update",
        "--image",
        "netbee-test/busybox:2",
        "--update-parallelism",
        "2",
        "--update-delay",
        "2s",
        "web",
    ])?;
    let update_done = Instant::now();
    assert!(out.contains("verify: Service web converged"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    eprintln!("update took {:?}; {} answers, {} failures", update_done - update_started, ok.len(), failed.len());
    assert!(failed.is_empty(), "failed requests during the update: {failed:?}");
    assert!(ok.len() > 200, "too little load: {}", ok.len());
    assert!(ok.iter().any(|(_, p)| p == ONE) && ok.iter().any(|(_, p)| p == TWO));
    let late: Vec<&String> = ok.iter().filter(|(t, _)| *t > update_done).map(|(_, p)| p).collect();
    assert!(!late.is_empty() && late.iter().all(|p| *p == TWO), "after the update only tag 2 answers: {late:?}");
    let v = inspect(n1, "web")?;
    assert_eq!(v["UpdateStatus"]["State"], "completed", "{v}");
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:2");
    assert_eq!(v["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:1");
    // two at a time, batches at least the delay apart
    let mut new: Vec<Value> = tasks(n1, "web")?
        .into_iter()
        .filter(|t| t["DesiredState"] == "Running" && t["Image"] == "netbee-test/busybox:2")
        .collect();
    assert_eq!(new.len(), 6, "{new:?}");
    new.sort_by_key(created);
    let c: Vec<DateTime<Utc>> = new.iter().map(created).collect();
    eprintln!("new tasks created at {c:?}");
    for b in 0..3 {
        assert!(c[2 * b + 1] - c[2 * b] < chrono::Duration::milliseconds(1500), "batch {b} is one batch: {c:?}");
    }
    for b in 1..3 {
        assert!(c[2 * b] - c[2 * b - 1] >= chrono::Duration::seconds(2), "batches {b} and {} 2 s apart: {c:?}", b + 1);
    }
    let ps = n1.netbee(&["service", "ps", "web"])?;
    assert!(ps.lines().next().unwrap().contains("IMAGE"), "{ps}");
    assert!(ps.contains(" \\_ web.1") && ps.contains("netbee-test/busybox:1"), "history is kept: {ps}");

    // (b) an update whose tasks exit at once rolls back on its own; the load sees nothing of it
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_page_load(x1.name(), addrs.clone(), stop.clone());
    let o = n1.netbee_output(&[
        "service",
        "update",
        "--image",
        "netbee-test/busybox:1",
        "--args",
        "sh -c 'exit 3'",
        "--update-failure-action",
        "rollback",
        "web",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{stdout}");
    assert!(stdout.contains("rollback: update rolled back due to failure or early termination of task"), "{stdout}");
    assert!(stderr.contains("service rolled back"), "{stderr}");
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "failed requests during the failed update: {failed:?}");
    assert!(ok.iter().all(|(_, p)| p == TWO), "the failed tasks never answered");
    let v = inspect(n1, "web")?;
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed", "{v}");
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:2");
    // docker's Args: the command after the entrypoint
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"], Value::Array(vec![]));
    assert_eq!(running_images(n1, "web")?, vec!["netbee-test/busybox:2"; 6]);
    let ps = n1.netbee(&["service", "ps", "web"])?;
    assert!(ps.contains("task exited with code 3"), "the real cause is the error: {ps}");

    // `--rollback` after a good update restores the previous image
    n1.netbee(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "0",
        "--update-monitor",
        "1s",
        "--image",
        "netbee-test/busybox:1",
        "web",
    ])?;
    wait_until(Duration::from_secs(60), "the update to tag 1 completes", || {
        inspect(n1, "web").is_ok_and(|v| v["UpdateStatus"]["State"] == "completed")
    })?;
    let out = n1.netbee(&["service", "update", "--rollback", "web"])?;
    assert!(out.contains("verify: Service web converged"), "{out}");
    let v = inspect(n1, "web")?;
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed", "{v}");
    assert_eq!(v["UpdateStatus"]["Message"], "rollback completed", "{v}");
    assert_eq!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "netbee-test/busybox:2");
    assert_eq!(running_images(n1, "web")?, vec!["netbee-test/busybox:2"; 6]);
    wait_until(Duration::from_secs(10), "every node serves tag 2", || {
        addrs.iter().all(|a| x1.sh(&format!("curl -s -m 2 http://{a}/")).is_ok_and(|p| p.trim() == TWO))
    })?;

    // logs: the local tasks' lines with docker's prefix
    let logs = n1.netbee(&["service", "logs", "web"]);
    assert!(logs.is_ok(), "{logs:?}");
    Ok(())
}

/// Bad input is refused with a clear error and nothing changes.
#[test]
fn update_bad_input_changes_nothing() -> Result<()> {
    let lab = netbee_lab::single_node_lab("updbad", &[])?;
    let n = lab.node("n1");
    load_images(&[n])?;
    n.netbee(&["service", "create", "--name", "web", "--replicas", "2", "-p", "8000:80", "netbee-test/busybox:1"])?;
    let before = inspect(n, "web")?;
    let tasks_before: Vec<String> = tasks(n, "web")?.iter().map(|t| t["ID"].to_string()).collect();
    let e = n.netbee_refused(&["service", "update", "--rollback", "web"]);
    assert!(e.contains("service web does not have a previous spec"), "{e}");
    for (args, needle) in [
        (vec!["--network-add", "nosuch"], "nosuch not found"),
        (vec!["--network-rm", "nosuch"], "not attached to network nosuch"),
        (vec!["--update-delay", "2x"], "invalid duration"),
        (vec!["--update-delay", "10"], "invalid duration"),
        (vec!["--update-monitor", "-1s"], "invalid duration"),
        (vec!["--update-max-failure-ratio", "1.5"], "between 0 and 1"),
        (vec!["--rollback-max-failure-ratio", "x"], "--rollback-max-failure-ratio"),
        (vec!["--update-parallelism", "-1"], "--update-parallelism"),
        (vec!["--update-order", "sideways"], "start-first"),
        (vec!["--update-failure-action", "explode"], "pause"),
        (vec!["--rollback-failure-action", "rollback"], "--rollback-failure-action"),
        (vec!["--constraint-add", "node.color==red"], "invalid constraint"),
        // a valid change beside a bad one is not made either
        (vec!["--image", "netbee-test/busybox:2", "--update-delay", "nope"], "invalid duration"),
    ] {
        let mut full = vec!["service", "update"];
        full.extend_from_slice(&args);
        full.push("web");
        let e = n.netbee_refused(&full);
        assert!(e.contains(needle), "{args:?}: expected {needle:?} in {e}");
    }
    let e = n.netbee_refused(&["service", "create", "--name", "other", "--update-delay", "x", "netbee-test/busybox:1"]);
    assert!(e.contains("invalid duration"), "{e}");
    assert_eq!(inspect(n, "web")?, before, "the service is unchanged");
    let tasks_after: Vec<String> = tasks(n, "web")?.iter().map(|t| t["ID"].to_string()).collect();
    assert_eq!(tasks_after, tasks_before, "no task was replaced");
    assert_eq!(n.netbee(&["service", "ls", "-q"])?.lines().count(), 1);
    Ok(())
}

/// The other `service update` changes, each seen where it acts: `--publish-add` makes a port
/// answer from outside and `--publish-rm` stops it; `--env-add/--env-rm` reach the tasks'
/// environment (read back from a task's process); `--replicas` scales; `service logs` merges the
/// tasks' lines, each after its task's name.
#[test]
fn update_ports_env_and_replicas_and_service_logs() -> Result<()> {
    let lab = netbee_lab::single_node_lab("updmore", &[])?;
    let n = lab.node("n1");
    let x1 = lab.external("x1");
    let bin = netbee_lab::netbee_bin();
    let whoami = ["host", bin.to_str().unwrap(), "whoami", "--port", "8080"];
    let mut args = vec!["service", "create", "--name", "web", "--replicas", "2", "-p", "8080:8080"];
    args.extend_from_slice(&whoami);
    n.netbee(&args)?;
    let answers = |port: u16| x1.sh(&format!("curl -s -m 2 http://{}:{port}/", n.addr())).unwrap_or_default();
    assert!(answers(8080).contains("Hostname: "), "8080 answers before the update");
    n.netbee(&["service", "update", "--publish-add", "9090:8080", "web"])?;
    assert!(answers(9090).contains("Hostname: "), "9090 answers once --publish-add returns");
    n.netbee(&["service", "update", "--publish-rm", "8080", "web"])?;
    assert!(!answers(8080).contains("Hostname: "), "8080 still answers after --publish-rm");
    assert!(answers(9090).contains("Hostname: "), "9090 stopped answering after removing 8080");

    n.netbee(&["service", "update", "--env-add", "GREETING=hello", "web"])?;
    // GREETING as a process in each running task container sees it
    let env_of_tasks = |n: &Node| -> Result<Vec<String>> {
        n.netbee(&["ps", "--format", "json"])?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["Names"].as_str().map(str::to_string))
            .filter(|c| c.starts_with("web."))
            .map(|c| Ok(n.exec(&c, &["sh", "-c", "echo \"[$GREETING]\""])?.trim().to_string()))
            .collect()
    };
    assert_eq!(env_of_tasks(n)?, vec!["[hello]"; 2]);
    n.netbee(&["service", "update", "--env-rm", "GREETING", "web"])?;
    assert_eq!(env_of_tasks(n)?, vec!["[]"; 2]);

    n.netbee(&["service", "update", "--replicas", "3", "web"])?;
    assert_eq!(n.service_replicas("web"), "3/3");
    assert_eq!(inspect(n, "web")?["Spec"]["Mode"]["Replicated"]["Replicas"], 3);

    // every running task's name heads its own lines (whoami logs each request it answers)
    for _ in 0..6 {
        answers(9090);
    }
    let logs = n.netbee(&["service", "logs", "web"])?;
    let running: Vec<(String, String)> = n.service_running_tasks("web")?;
    assert_eq!(running.len(), 3, "{running:?}");
    for (task, _) in &running {
        assert!(
            logs.lines().any(|l| l.starts_with(&format!("{task}.")) && l.contains("| http from ")),
            "no line of {task} in the service's logs:\n{logs}"
        );
    }
    Ok(())
}
