//! The real docker CLI (28.2.2, client only) drives netbee through the daemon's socket: every
//! command here is docker's own binary, and the tests check what it changed on the node (packets,
//! addresses), not only its exit code.
use std::time::Duration;

use anyhow::{Result, bail};
use netbee_lab::{Docker, Lab, netbee_bin, single_node_lab, swarm_lab, test_image, unix_now, wait_until, whoami_field};
use serde_json::Value;

#[test]
fn version_negotiation_ping_version_info() -> Result<()> {
    let lab = single_node_lab("dkversion", &[])?;
    let n = lab.node("n1");
    let docker = Docker::new(&lab, n)?;

    // the CLI negotiates 1.50 and prints the server's engine component
    let v = docker.ok(&["version", "--format", "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}"])?;
    assert_eq!(v.trim(), "1.50 1.24 linux");
    let full = docker.ok(&["version"])?;
    assert!(full.contains("Engine:") && full.contains("API version:      1.50 (minimum version 1.24)"), "{full}");

    // an older client version inside the range is served under its prefix; one outside is
    // docker's 400 with its message
    // (docker's minimum, 1.24: docker-py and compose files may pin old versions)
    for version in ["1.41", "1.24"] {
        let old = docker.output_env(&["network", "ls", "--format", "{{.Name}}"], &[("DOCKER_API_VERSION", version)]);
        assert!(old.status.success(), "{version}: {}", String::from_utf8_lossy(&old.stderr));
        assert!(String::from_utf8_lossy(&old.stdout).lines().any(|l| l == "bridge"));
    }
    let too_old = docker.output_env(&["network", "ls"], &[("DOCKER_API_VERSION", "1.23")]);
    assert!(!too_old.status.success());
    let err = String::from_utf8_lossy(&too_old.stderr);
    assert!(err.contains("client version 1.23 is too old. Minimum supported API version is 1.24"), "{err}");

    // info: counts of what the node has, outside a swarm
    docker.ok(&["run", "-d", "--name", "s1", "host", "sleep", "600"])?;
    docker.ok(&["create", "--name", "s2", "host", "sleep", "600"])?;
    let info = docker.ok(&[
        "info",
        "--format",
        "{{.Containers}} {{.ContainersRunning}} {{.ContainersStopped}} {{.Driver}} {{.Swarm.LocalNodeState}} {{.OSType}}",
    ])?;
    assert_eq!(info.trim(), "2 1 1 overlayfs inactive linux");
    let text = docker.ok(&["system", "info"])?;
    for line in ["Containers: 2", "Running: 1", "Stopped: 1", "Swarm: inactive", "Storage Driver: overlayfs"] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    // netbee's own CLI still calls the unprefixed paths
    assert!(n.netbee(&["ps"])?.contains("s1"));
    Ok(())
}

#[test]
fn networks_with_the_docker_cli() -> Result<()> {
    let lab = single_node_lab("dknet", &[])?;
    let n = lab.node("n1");
    let docker = Docker::new(&lab, n)?;

    let id = docker
        .ok(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "10.61.0.0/24",
            "--gateway",
            "10.61.0.254",
            "--ip-range",
            "10.61.0.128/25",
            "--label",
            "team=a",
            "app",
        ])?
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "the CLI prints the full ID: {id}");
    docker.ok(&["network", "create", "--internal", "--label", "team=b", "back"])?;

    // ls: the default table, -q, both filter encodings' keys, --format
    let ls = docker.ok(&["network", "ls"])?;
    assert!(ls.starts_with("NETWORK ID"), "{ls}");
    for name in ["bridge", "host", "none", "app", "back"] {
        assert!(ls.lines().any(|l| l.split_whitespace().nth(1) == Some(name)), "{name} in\n{ls}");
    }
    let q = docker.ok(&["network", "ls", "-q", "--filter", "name=app"])?;
    assert_eq!(q.trim(), &id[..12]);
    let by_label = docker.ok(&["network", "ls", "--filter", "label=team=b", "--format", "{{.Name}}"])?;
    assert_eq!(by_label.trim(), "back");
    let custom =
        docker.ok(&["network", "ls", "--filter", "type=custom", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"])?;
    let mut custom: Vec<&str> = custom.lines().collect();
    custom.sort();
    assert_eq!(custom, ["app bridge local", "back bridge local"]);

    // inspect: the IPAM config the flags gave, by name and by ID prefix
    let v = docker.inspect(&["network", "inspect", "app"])?;
    assert_eq!(v["Id"], id);
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.61.0.0/24");
    assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.61.0.254");
    assert_eq!(v["IPAM"]["Config"][0]["IPRange"], "10.61.0.128/25");
    assert_eq!(v["Labels"]["team"], "a");
    let internal = docker.ok(&["network", "inspect", "--format", "{{.Internal}}", &id[..10]])?;
    assert_eq!(internal.trim(), "false");
    assert_eq!(docker.ok(&["network", "inspect", "--format", "{{.Internal}}", "back"])?.trim(), "true");

    // two containers on it reach each other by name; inspect shows the addresses the
    // containers really have
    docker.run_whoami("a1", &["--network", "app"], 8080)?;
    docker.run_whoami("a2", &["--network", "app"], 8080)?;
    let ip1 = docker.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.app.IPAddress}}", "a1"])?;
    let ip1 = ip1.trim();
    assert!(ip1.starts_with("10.61.0.") && ip1.rsplit('.').next().unwrap().parse::<u8>()? >= 128, "{ip1}");
    let answer = n.exec("a2", &["curl", "-s", "-m", "3", "http://a1:8080/"])?;
    assert!(answer.contains(&format!("IP: {ip1}")), "a2 -> a1 by name: {answer}");
    let ip2 = docker.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.app.IPAddress}}", "a2"])?;
    assert!(whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{}:", ip2.trim())), "{answer}");
    let v = docker.inspect(&["network", "inspect", "app"])?;
    assert_eq!(v["Containers"].as_object().unwrap().len(), 2, "{v}");

    // connect / disconnect a running container: it gets an address on back and answers there
    docker.ok(&["network", "connect", "back", "a1"])?;
    let back_ip = docker.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.back.IPAddress}}", "a1"])?;
    let back_ip = back_ip.trim().to_string();
    assert!(!back_ip.is_empty());
    n.exec("a1", &["ip", "-4", "addr"]).map(|a| assert!(a.contains(&back_ip), "{a}"))?;
    docker.ok(&["network", "disconnect", "back", "a1"])?;
    let a = n.exec("a1", &["ip", "-4", "addr"])?;
    assert!(!a.contains(&back_ip), "disconnected: {a}");

    // errors: docker's messages and status, nothing changed
    let e = docker.refused(&["network", "rm", "nosuch"]);
    assert!(e.contains("network nosuch not found"), "{e}");
    let e = docker.refused(&["network", "create", "app"]);
    assert!(e.contains("network with name app already exists"), "{e}");
    let e = docker.refused(&["network", "create", "--subnet", "10.61.0.0/25", "overlapping"]);
    assert!(e.contains("Error response from daemon"), "{e}");
    let e = docker.refused(&["network", "create", "--ipv6", "v6"]);
    assert!(e.contains("IPv6"), "{e}");
    let e = docker.refused(&["network", "rm", "app"]);
    assert!(e.contains("active endpoints"), "{e}");
    let e = docker.refused(&["network", "ls", "--filter", "colour=red"]);
    assert!(e.contains("invalid filter 'colour'"), "{e}");
    assert!(docker.ok(&["network", "ls", "-q"])?.lines().count() == 5);

    // prune removes back (unused) and keeps app (in use) and the predefined ones
    let pruned = docker.ok(&["network", "prune", "-f"])?;
    assert!(pruned.contains("back") && !pruned.contains("app"), "{pruned}");
    let left = docker.ok(&["network", "ls", "--format", "{{.Name}}"])?;
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    assert_eq!(left, ["app", "bridge", "host", "none"]);
    docker.ok(&["rm", "-f", "a1", "a2"])?;
    docker.ok(&["network", "rm", "app"])?;
    assert!(!docker.ok(&["network", "ls"])?.contains(" app "));
    Ok(())
}

#[test]
fn containers_with_the_docker_cli() -> Result<()> {
    let lab = single_node_lab("dkrun", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let docker = Docker::new(&lab, n)?;

    // run -d -p: the external client reaches it and the container sees the client's address
    let id = docker.run_whoami("web", &["-p", "8080:8080", "-e", "GREETING=hi", "--label", "tier=web"], 8080)?;
    assert_eq!(id.len(), 64, "{id}");
    let answer = x.sh(&format!("curl -s -m 3 http://{}:8080/", n.addr()))?;
    assert!(whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{}:", x.addr())), "{answer}");
    let ip = docker.ok(&["inspect", "--format", "{{.NetworkSettings.Networks.bridge.IPAddress}}", "web"])?;
    assert!(answer.contains(&format!("IP: {}", ip.trim())), "inspect shows the address it answers on: {answer}");

    // ps, ps -q, filters, --format
    let ps = docker.ok(&["ps"])?;
    assert!(ps.contains("0.0.0.0:8080->8080/tcp") && ps.contains(" web\n"), "{ps}");
    assert_eq!(docker.ok(&["ps", "-q"])?.trim(), &id[..12]);
    assert_eq!(docker.ok(&["ps", "--filter", "label=tier=web", "--format", "{{.Names}}"])?.trim(), "web");
    assert_eq!(docker.ok(&["ps", "--filter", "name=nosuch", "-q"])?.trim(), "");

    // inspect: ports, state, env; port
    let v = docker.inspect(&["inspect", "web"])?;
    assert_eq!(v["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"], "8080");
    assert_eq!(v["State"]["Running"], true);
    assert!(v["State"]["Pid"].as_i64().unwrap() > 0);
    assert!(v["Config"]["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"), "{v}");
    assert_eq!(docker.ok(&["port", "web"])?.trim(), "8080/tcp -> 0.0.0.0:8080");

    // logs, also --tail and -t
    let logs = docker.output(&["logs", "web"]);
    let all = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    assert!(all.contains("listening"), "{all}");
    let t = docker.output(&["logs", "-t", "--tail", "1", "web"]);
    let t = format!("{}{}", String::from_utf8_lossy(&t.stdout), String::from_utf8_lossy(&t.stderr));
    let first = t.lines().next().unwrap_or_default();
    assert!(first.starts_with("20") && first.split(' ').next().unwrap().ends_with('Z'), "timestamped: {t}");

    // logs -f follows until the container exits
    docker.ok(&["run", "-d", "--name", "talker", "host", "sh", "-c", "echo one; sleep 1; echo two >&2; sleep 1"])?;
    let f = docker.output(&["logs", "-f", "talker"]);
    assert!(f.status.success());
    assert_eq!(String::from_utf8_lossy(&f.stdout), "one\n", "stdout frames to stdout");
    assert_eq!(String::from_utf8_lossy(&f.stderr), "two\n", "stderr frames to stderr, the line written later");
    docker.ok(&["rm", "talker"])?;

    // stop: ps -a shows it exited and the port no longer answers; start again answers
    docker.ok(&["stop", "web"])?;
    let st = docker.ok(&["ps", "-a", "--filter", "status=exited", "--format", "{{.Names}} {{.Status}}"])?;
    assert!(st.starts_with("web Exited ("), "{st}");
    assert!(x.sh(&format!("curl -s -m 2 http://{}:8080/", n.addr())).is_err(), "stopped: nothing answers");
    docker.ok(&["restart", "web"])?;
    wait_until(Duration::from_secs(10), "web answers again", || {
        x.sh(&format!("curl -s -m 2 http://{}:8080/", n.addr())).is_ok_and(|a| a.contains("Hostname"))
    })?;

    // wait returns the exit code once the container is killed
    let waiter = {
        let (host, config) = (docker.host.clone(), docker.config.clone());
        std::thread::spawn(move || {
            std::process::Command::new("docker")
                .args(["wait", "web"])
                .env("DOCKER_HOST", host)
                .env("DOCKER_CONFIG", config)
                .output()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    docker.ok(&["kill", "web"])?;
    let out = waiter.join().unwrap()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "137", "{}", String::from_utf8_lossy(&out.stderr));

    // rename, then rm -f by the new name
    docker.ok(&["rename", "web", "web2"])?;
    assert_eq!(docker.ok(&["ps", "-a", "--format", "{{.Names}}"])?.trim(), "web2");
    docker.ok(&["rm", "-f", "web2"])?;
    assert_eq!(docker.ok(&["ps", "-aq"])?.trim(), "");

    // errors: docker's messages; create answers 404 only for a missing image
    let e = docker.refused(&["stop", "nosuch"]);
    assert!(e.contains("No such container: nosuch"), "{e}");
    let e = docker.refused(&["run", "-d", "--network", "nosuch", "host", "sleep", "1"]);
    assert!(e.contains("network nosuch not found") && !e.contains("Unable to find image"), "{e}");
    docker.ok(&["run", "-d", "--name", "dup", "host", "sleep", "600"])?;
    let e = docker.refused(&["run", "-d", "--name", "dup", "host", "sleep", "600"]);
    assert!(e.contains("The container name \"/dup\" is already in use"), "{e}");
    let e = docker.refused(&["rm", "dup"]);
    assert!(e.contains("cannot remove a running container"), "{e}");
    let e = docker.refused(&["run", "-d", "-p", "70000:80", "host", "sleep", "1"]);
    assert!(e.contains("70000"), "{e}");
    assert_eq!(docker.ok(&["ps", "-aq"])?.lines().count(), 1, "nothing was created by the refused runs");
    Ok(())
}

#[test]
fn images_with_the_docker_cli() -> Result<()> {
    let lab = single_node_lab("dkimg", &[])?;
    let n = lab.node("n1");
    let docker = Docker::new(&lab, n)?;
    let tar = test_image("busybox-1.tar");
    let loaded = docker.ok(&["load", "-i", tar.to_str().unwrap()])?;
    assert!(loaded.contains("Loaded image"), "{loaded}");
    let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    let name = images.lines().next().unwrap_or_default().to_string();
    assert!(!name.is_empty(), "{images}");
    docker.ok(&["tag", &name, "mybox:v1"])?;
    let images = docker.ok(&["images"])?;
    assert!(images.contains("mybox") && images.contains("v1"), "{images}");
    let v = docker.inspect(&["image", "inspect", "mybox:v1"])?;
    assert!(v["Id"].as_str().unwrap().starts_with("sha256:"), "{v}");
    // a container of the image runs its command in the image's root
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "bb",
        "mybox:v1",
        "sh",
        "-c",
        "cat /etc/os-release 2>/dev/null; ls /bin | head -3; sleep 600",
    ])?;
    wait_until(Duration::from_secs(10), "bb printed", || {
        docker.ok(&["logs", "bb"]).is_ok_and(|l| !l.trim().is_empty())
    })?;
    // the image a container uses is not deleted (by ID: untagging a second name is allowed)
    let image_id = v["Id"].as_str().unwrap().trim_start_matches("sha256:")[..12].to_string();
    let e = docker.refused(&["rmi", &image_id]);
    assert!(e.contains("Error response from daemon") && e.contains("conflict"), "{e}");
    docker.ok(&["rm", "-f", "bb"])?;
    let untagged = docker.ok(&["rmi", "mybox:v1"])?;
    assert!(untagged.contains("Untagged: mybox:v1"), "{untagged}");
    assert!(!docker.ok(&["images"])?.contains("mybox"));
    let e = docker.refused(&["image", "inspect", "nosuch:1"]);
    assert!(e.contains("nosuch"), "{e}");
    Ok(())
}

#[test]
fn swarm_info_and_node_ls_with_the_docker_cli() -> Result<()> {
    let lab = swarm_lab("dkswarm", &["n1", "n2"], &[])?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let (d1, d2) = (Docker::new(&lab, n1)?, Docker::new(&lab, n2)?);
    let nodes: Vec<Value> =
        n1.netbee(&["node", "ls", "--format", "json"])?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    // the lab starts each daemon with --hostname NAME
    let id1 = nodes.iter().find(|v| v["Hostname"] == "n1").map(|v| v["ID"].as_str().unwrap().to_string());
    let id1 = id1.expect("n1 listed");

    // the manager: its node ID, the counts, the cluster section `docker info` prints
    let f =
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}} {{.Swarm.NodeID}}";
    assert_eq!(d1.ok(&["info", "--format", f])?.trim(), format!("active true 2 1 {id1}"));
    let text = d1.ok(&["system", "info"])?;
    for line in
        ["Swarm: active", &format!("NodeID: {id1}"), "Is Manager: true", "ClusterID: ", "Managers: 1", "Nodes: 2"]
    {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    // a worker: in the swarm, no control
    let w = d2.ok(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"])?;
    assert_eq!(w.trim(), "active false");

    // node ls: both nodes, this one marked, the leader named
    let ls = d1.ok(&["node", "ls"])?;
    let me = ls.lines().find(|l| l.contains(&id1)).unwrap_or_else(|| panic!("{ls}"));
    assert!(
        me.contains(&format!("{id1} *")) && me.contains("Ready") && me.contains("Active") && me.contains("Leader"),
        "{ls}"
    );
    assert_eq!(ls.lines().count(), 3, "{ls}");
    let f = d1.ok(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"])?;
    let mut f: Vec<&str> = f.lines().collect();
    f.sort();
    assert_eq!(f, ["n1 Leader", "n2 "]);
    Ok(())
}

/// `docker run -d -P --expose`, `ps --format '{{.Names}} {{.Ports}}'`, `top`, `system df`,
/// `events --since/--until`, `import` (file and stdin) and `image save`, each checked against what
/// the node has (packets from the external client, the container's processes, the images'
/// bytes, the archive's contents).
#[test]
fn top_df_events_import_save_and_publish_all_with_the_docker_cli() -> Result<()> {
    let lab = single_node_lab("dkmore", &[])?;
    let n = lab.node("n1");
    let x = lab.external("x1");
    let docker = Docker::new(&lab, n)?;
    let t0 = unix_now();

    // run -d -P --expose: the exposed port gets a free host port that the external client
    // reaches, and the container sees the client's own address
    docker.run_whoami("puball", &["-P", "--expose", "7000"], 7000)?;
    let mapped = docker.ok(&["port", "puball", "7000/tcp"])?;
    let host_port: u16 = mapped.trim().rsplit(':').next().unwrap_or_default().parse()?;
    assert!(mapped.trim().starts_with("0.0.0.0:") && host_port >= 1024, "{mapped}");
    let answer = x.sh(&format!("curl -s -m 3 http://{}:{host_port}/", n.addr()))?;
    assert!(whoami_field(&answer, "RemoteAddr").unwrap().starts_with(&format!("{}:", x.addr())), "{answer}");
    docker.ok(&["create", "--name", "idle", "host", "sleep", "600"])?;
    let ps = docker.ok(&["ps", "-a", "--format", "{{.Names}} {{.Ports}}"])?;
    let mut ps: Vec<&str> = ps.lines().collect();
    ps.sort();
    assert_eq!(ps, ["idle ".to_string(), format!("puball 0.0.0.0:{host_port}->7000/tcp")], "{ps:?}");

    // top: the container's processes and no one else's: its init (State.Pid, netbee's shim, as
    // docker's `--init` shows docker-init) and the command under it; ps options
    let pid = docker.ok(&["inspect", "--format", "{{.State.Pid}}", "puball"])?.trim().to_string();
    let top = docker.ok(&["top", "puball"])?;
    let mut lines = top.lines();
    let titles: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(titles, ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], "{top}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "the init and the command: {top}");
    assert!(rows.iter().any(|r| r[1] == pid), "{top}");
    let cmd = rows.iter().find(|r| r[7..].join(" ").ends_with("whoami --port 7000")).unwrap_or_else(|| panic!("{top}"));
    assert_eq!(cmd[2], pid, "the command runs under the init: {top}");
    let top = docker.ok(&["top", "puball", "-o", "pid,comm"])?;
    let rows: Vec<Vec<&str>> = top.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["PID", "COMMAND"], "{top}");
    assert_eq!(rows.len(), 3, "{top}");
    assert!(rows[1..].iter().any(|r| r == &[pid.as_str(), "netbee"]), "{top}");
    let e = docker.refused(&["top", "idle"]);
    assert!(e.contains("is not running"), "{e}");
    let e = docker.refused(&["top", "nosuch"]);
    assert!(e.contains("No such container: nosuch"), "{e}");
    let e = docker.refused(&["top", "puball", "--no-such-ps-option"]);
    assert!(e.contains("Error response from daemon") && e.contains("ps"), "{e}");
    assert!(docker.ok(&["ps", "--format", "{{.Names}}"])?.contains("puball"), "a refused top changes nothing");

    // import: a rootfs tarball from a file and from stdin; a container of it runs
    let root = lab.dir().join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    let tar = lab.dir().join("rootfs.tar");
    n.sh(&format!("tar -C {} -cf {} .", root.display(), tar.display()))?;
    let id = docker.ok(&["import", tar.to_str().unwrap(), "myimg:1"])?;
    assert!(id.trim().starts_with("sha256:") && id.trim().len() == 71, "{id}");
    let mut piped = docker.command("docker");
    piped.args(["import", "-", "myimg:2"]).stdin(std::fs::File::open(&tar)?);
    let o = piped.output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])?;
    assert!(images.contains(&format!("myimg:1 {}", &id.trim()[7..19])) && images.contains("myimg:2"), "{images}");
    docker.ok(&["run", "-d", "--name", "imp", "myimg:1", "/bin/sh", "-c", "echo from-imported; sleep 600"])?;
    wait_until(Duration::from_secs(10), "imp printed", || {
        docker.ok(&["logs", "imp"]).is_ok_and(|l| l.contains("from-imported"))
    })?;
    let e = docker.refused(&["import", "--change", "CMD [\"/bin/sh\"]", tar.to_str().unwrap(), "myimg:3"]);
    assert!(e.contains("--change is not supported"), "{e}");
    assert!(!docker.ok(&["images"])?.contains("myimg   3"), "nothing imported");

    // save: an archive that loads back as the same image
    let saved = lab.dir().join("saved.tar");
    docker.ok(&["image", "save", "-o", saved.to_str().unwrap(), "myimg:2"])?;
    let manifest = n.sh(&format!("tar -xOf {} manifest.json", saved.display()))?;
    assert!(manifest.contains("\"myimg:2\""), "{manifest}");
    docker.ok(&["rmi", "myimg:2"])?;
    assert!(!docker.ok(&["images"])?.contains("myimg:2"));
    let loaded = docker.ok(&["load", "-i", saved.to_str().unwrap()])?;
    assert!(loaded.contains("Loaded image: myimg:2"), "{loaded}");
    let e = docker.refused(&["image", "save", "-o", lab.dir().join("none.tar").to_str().unwrap(), "nosuch:1"]);
    assert!(e.contains("nosuch"), "{e}");
    assert!(!lab.dir().join("none.tar").exists() || std::fs::metadata(lab.dir().join("none.tar"))?.len() == 0);

    // system df: the images (myimg:1 in use by a container), the containers that exist (two
    // running); the layer both imports share is counted once
    let ids: std::collections::BTreeSet<String> = docker.ok(&["images", "-q"])?.lines().map(str::to_string).collect();
    let df = docker.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"])?;
    let df: Vec<&str> = df.lines().collect();
    assert_eq!(df[..2], [format!("Images {} 1", ids.len()), "Containers 3 2".to_string()], "{df:?}");
    let layer = std::fs::metadata("/bin/busybox")?.len();
    let v = docker.ok(&["system", "df", "-v"])?;
    assert!(v.contains("myimg") && v.contains("imp") && v.contains("puball"), "{v}");
    let total = docker.ok(&["system", "df", "--format", "{{.Type}} {{.Size}}"])?;
    let images_size = total.lines().find_map(|l| l.strip_prefix("Images ")).unwrap_or_default().to_string();
    let mb = layer as f64 / 1e6;
    assert!(
        images_size.ends_with("MB") && (images_size.trim_end_matches("MB").parse::<f64>()? - mb).abs() < 0.1,
        "the shared layer once ({mb:.2}MB): {total}"
    );

    // events: what happened since the start, up to now, by type
    let now = unix_now();
    let ev = docker.ok(&[
        "events",
        "--since",
        &t0,
        "--until",
        &now,
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ])?;
    for want in ["create puball", "start puball", "create idle", "create imp", "start imp"] {
        assert!(ev.lines().any(|l| l == want), "{want} in\n{ev}");
    }
    docker.ok(&["network", "create", "evnet"])?;
    docker.ok(&["network", "connect", "evnet", "puball"])?;
    docker.ok(&["network", "disconnect", "evnet", "puball"])?;
    docker.ok(&["network", "rm", "evnet"])?;
    docker.ok(&["rm", "-f", "imp"])?;
    let now = unix_now();
    let ev = docker.ok(&[
        "events",
        "--since",
        &t0,
        "--until",
        &now,
        "--filter",
        "type=network",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ])?;
    for want in ["create evnet", "connect evnet", "disconnect evnet", "destroy evnet"] {
        assert!(ev.lines().any(|l| l == want), "{want} in\n{ev}");
    }
    assert!(ev.lines().all(|l| !l.starts_with("start")), "only network events: {ev}");
    let ev = docker.ok(&["events", "--since", &t0, "--until", &now, "--filter", "event=destroy"])?;
    assert!(ev.contains("container destroy") && ev.contains("name=imp"), "{ev}");
    let e = docker.refused(&["events", "--since", &now, "--until", &t0]);
    assert!(e.contains("must be before"), "{e}");

    // the raw API: what the CLI does not send is refused too, with docker's shape, and changes
    // nothing
    let api = |method: &str, path: &str, body: &str| -> Result<(u16, String)> {
        let data = if body.is_empty() { String::new() } else { format!("--data-binary '{body}'") };
        let out = n.sh(&format!(
            "curl -s -w '\n%{{http_code}}' --unix-socket {} -X {method} -H 'Content-Type: text/plain' {data} \
             'http://localhost/v1.50{path}'",
            n.socket().display()
        ))?;
        let (body, code) = out.rsplit_once('\n').unwrap_or_default();
        Ok((code.parse()?, body.to_string()))
    };
    let images_before = docker.ok(&["images", "-q"])?;
    for (method, path, body, code, says) in [
        ("POST", "/images/create?fromSrc=http://example.invalid/x.tar&repo=a", "", 400, "http://example.invalid/x.tar"),
        ("POST", "/images/create?fromSrc=-&repo=Bad::name", "x", 400, "Bad::name"),
        ("POST", "/images/create?fromSrc=-&tag=1", "x", 400, "without a repository"),
        ("POST", "/images/create?fromSrc=-&repo=notatar", "not a tarball", 400, "importing the tarball"),
        ("POST", "/images/create", "", 400, "fromImage"),
        ("GET", "/images/get?names=nosuch:1", "", 404, "nosuch:1"),
        ("GET", "/images/nosuch:2/get", "", 404, "nosuch:2"),
        ("GET", "/containers/nosuch/top", "", 404, "nosuch"),
        ("GET", "/events?until=yesterday-ish", "", 400, "yesterday-ish"),
    ] {
        let (got, text) = api(method, path, body)?;
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let message = v["message"].as_str().unwrap_or_default();
        assert_eq!(got, code, "{method} {path}: {text}");
        assert!(message.contains(says), "{method} {path}: {text}");
    }
    assert_eq!(docker.ok(&["images", "-q"])?, images_before, "nothing imported");
    Ok(())
}

/// openssl's commands for a CA, and a certificate it signs for `cn` with `ext` (subjectAltName,
/// extendedKeyUsage), in `dir` as `<name>.pem` and `<name>-key.pem`.
fn openssl_ca(dir: &std::path::Path, name: &str) -> Result<()> {
    let d = dir.display();
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -subj /CN={name} -keyout {name}-key.pem -out {name}.pem 2>&1"
        ))
        .output()?;
    if !o.status.success() {
        bail!("openssl (CA {name}): {}", String::from_utf8_lossy(&o.stdout));
    }
    Ok(())
}

fn openssl_signed(dir: &std::path::Path, ca: &str, name: &str, ext: &str) -> Result<()> {
    let d = dir.display();
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "cd {d} && printf '{ext}\\n' > {name}.ext && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} \
             -keyout {name}-key.pem -out {name}.csr 2>&1 && \
             openssl x509 -req -days 2 -in {name}.csr -CA {ca}.pem -CAkey {ca}-key.pem -CAcreateserial \
             -extfile {name}.ext -out {name}.pem 2>&1"
        ))
        .output()?;
    if !o.status.success() {
        bail!("openssl ({name} signed by {ca}): {}", String::from_utf8_lossy(&o.stdout));
    }
    Ok(())
}

/// ```text
///   x1 ── docker -H tcp://n1:2376 --tlsverify (client cert) ──> n1 netbee daemon (TLS) ─ same API
///   x1 ── without a certificate / another CA's / plain HTTP ──X
/// ```
#[test]
fn the_api_on_tcp_only_with_tls_and_client_certificates() -> Result<()> {
    let mut lab = Lab::new("dktls")?;
    lab.add_node("n1")?;
    lab.add_external("x1")?;
    let (n1, x1) = (lab.node("n1"), lab.external("x1"));
    let pki = lab.dir().join("pki");
    std::fs::create_dir_all(&pki)?;
    openssl_ca(&pki, "ca")?;
    openssl_signed(&pki, "ca", "server", &format!("subjectAltName=IP:{}\\nextendedKeyUsage=serverAuth", n1.addr()))?;
    openssl_signed(&pki, "ca", "client", "extendedKeyUsage=clientAuth")?;
    openssl_ca(&pki, "rogue")?;
    openssl_signed(&pki, "rogue", "intruder", "extendedKeyUsage=clientAuth")?;
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let listen = format!("{}:2376", n1.addr());

    // a TCP listener without client certificates is refused before the daemon does anything
    for (args, want) in [
        (vec!["--api-tcp", listen.as_str()], "needs --tlsverify"),
        (vec!["--api-tcp", listen.as_str(), "--tlsverify", "--tlscacert", &p("ca.pem")], "needs --tlsverify"),
        (vec!["--tlsverify"], "--api-tcp, which is not given"),
        (
            vec![
                "--api-tcp",
                listen.as_str(),
                "--tlsverify",
                "--tlscacert",
                &p("ca.pem"),
                "--tlscert",
                &p("server.pem"),
                "--tlskey",
                &p("missing-key.pem"),
            ],
            "missing-key.pem",
        ),
    ] {
        let dir = lab.dir().join("refused");
        let mut cmd = n1.cmd(netbee_bin().to_str().unwrap());
        cmd.args(["daemon", "--node-dir", dir.to_str().unwrap()]).args(&args);
        let o = cmd.output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "daemon {args:?}: want {want:?}, got {err}");
        assert!(!dir.exists(), "daemon {args:?} refused but created {}", dir.display());
    }

    let tls_args = [
        "--api-tcp",
        listen.as_str(),
        "--tlsverify",
        "--tlscacert",
        &p("ca.pem"),
        "--tlscert",
        &p("server.pem"),
        "--tlskey",
        &p("server-key.pem"),
    ];
    n1.set_daemon_args(&tls_args);
    n1.start_daemon()?;
    let config = lab.dir().join("docker-config-x1");
    std::fs::create_dir_all(&config)?;
    let remote = |cert: Option<&str>, args: &str| -> std::process::Output {
        let creds = match cert {
            Some(c) => format!("--tlscert {} --tlskey {}", p(&format!("{c}.pem")), p(&format!("{c}-key.pem"))),
            None => String::new(),
        };
        x1.cmd("sh")
            .arg("-c")
            .arg(format!(
                "DOCKER_CONFIG={} docker -H tcp://{listen} --tlsverify --tlscacert {} {creds} {args}",
                config.display(),
                p("ca.pem")
            ))
            .output()
            .expect("running the docker CLI")
    };

    // a client with a certificate from the CA drives the node from the external namespace
    let o = remote(Some("client"), "run -d --name overtls -p 8000:8080 host sleep 600");
    assert!(o.status.success(), "docker run over TLS: {}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let local = Docker::new(&lab, n1)?;
    assert_eq!(local.ok(&["inspect", "--format", "{{.Id}}", "overtls"])?.trim(), id, "the unix socket sees it");
    let o = remote(Some("client"), "ps --format '{{.Names}} {{.Ports}}'");
    let ps = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && ps.contains("overtls 0.0.0.0:8000->8080/tcp"), "docker ps over TLS: {ps}");

    // without a certificate, with another CA's, or in plain HTTP: nothing is served or changed
    for (cert, who) in [(None, "no client certificate"), (Some("intruder"), "a certificate from another CA")] {
        let o = remote(cert, "rm -f overtls");
        assert!(!o.status.success(), "{who}: docker rm succeeded over TLS");
    }
    let plain = x1.sh(&format!("curl -s -m 3 http://{listen}/_ping || true"))?;
    assert!(!plain.contains("OK"), "plain HTTP on the TLS port answered: {plain}");
    assert!(local.ok(&["ps", "-q", "--filter", "name=overtls"])?.trim().len() >= 12, "overtls still runs");
    let log = n1.daemon_log();
    assert!(log.contains("handshake refused"), "the daemon logs refused handshakes: {log}");
    Ok(())
}
