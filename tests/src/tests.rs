//! Tests of the lab itself, each on a real lab. They need root and run
//! serially (`--test-threads=1`) because one of them sets `NETBEE_BIN`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn netns_names() -> Vec<String> {
    let out = util::ip(&["netns", "list"]).expect("ip netns list");
    out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// What a lab leaves behind, checked after it is gone.
struct Footprint {
    prefix: String,
    dir: PathBuf,
    cgroup: PathBuf,
}

impl Footprint {
    fn of(lab: &Lab) -> Footprint {
        Footprint { prefix: lab.prefix().to_string(), dir: lab.dir().to_path_buf(), cgroup: lab.cgroup_base.clone() }
    }

    fn assert_gone(&self) {
        let left: Vec<String> = netns_names().into_iter().filter(|n| n.starts_with(&self.prefix)).collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        assert!(!self.dir.exists(), "{} left behind", self.dir.display());
        assert!(!self.cgroup.exists(), "{} left behind", self.cgroup.display());
        let m = mounts::mounts_under(&self.dir);
        assert!(m.is_empty(), "mounts left behind: {m:?}");
    }
}

fn ping(from: &Ns, to: Ipv4Addr) {
    from.sh(&format!("ping -c1 -W1 {to}")).unwrap_or_else(|e| panic!("ping {to} from {}: {e:#}", from.name()));
}

#[test]
fn topology_addresses_and_ping() {
    let mut lab = Lab::new("topology_addresses_and_ping").unwrap();
    let p = lab.prefix().to_string();
    assert!(cleanup::is_prefix(&p), "{p}");
    assert_eq!(std::fs::read_to_string(lab.dir().join("owner.pid")).unwrap().trim(), std::process::id().to_string());
    lab.add_node("n1").unwrap();
    lab.add_node("n2").unwrap();
    lab.add_external("x1").unwrap();
    let (n1, n2, x1) = (lab.node("n1"), lab.node("n2"), lab.external("x1"));

    assert_eq!(n1.name(), format!("{p}n1"));
    assert_eq!(x1.name(), format!("{p}x1"));
    assert_eq!(lab.underlay().name(), format!("{p}u"));
    assert_eq!(n1.addr(), Ipv4Addr::new(10, 77, 0, 11));
    assert_eq!(n2.addr(), Ipv4Addr::new(10, 77, 0, 12));
    assert_eq!(x1.addr(), Ipv4Addr::new(10, 77, 0, 101));
    assert_eq!(n1.dir(), lab.dir().join("n1"));
    assert_eq!(n1.socket(), lab.dir().join("n1/netbee.sock"));
    assert!(n1.sh("ip -o -4 addr show dev eth0").unwrap().contains("10.77.0.11/24"));
    assert_eq!(n1.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");
    assert!(lab.underlay().sh("ip -o link show master br0").unwrap().contains("n1@"));

    for (a, b) in [(&**n1, n2.addr()), (&**n2, n1.addr()), (&**n1, x1.addr()), (x1, n1.addr()), (x1, n2.addr())] {
        ping(a, b);
    }
    let fp = Footprint::of(&lab);
    drop(lab);
    fp.assert_gone();
}

#[test]
fn run_sockets_live_in_the_namespace() {
    let mut lab = Lab::new("run_sockets_live_in_the_namespace").unwrap();
    lab.add_node("n1").unwrap();
    lab.add_external("x1").unwrap();
    let server_addr = lab.node("n1").addr();
    let listener = lab.node("n1").run(move || TcpListener::bind((server_addr, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        (peer, buf)
    });
    let target = SocketAddr::from((server_addr, port));
    lab.external("x1").run(move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        s.write_all(b"hello from x1").unwrap();
    });
    let (peer, msg) = server.join().unwrap();
    assert_eq!(msg, "hello from x1");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.external("x1").addr()));
    // The same address is not bound in the machine's own namespace.
    assert!(TcpListener::bind((server_addr, 0)).is_err());
}

#[test]
fn drop_removes_namespaces_dir_cgroups_and_mounts() {
    let mut lab = Lab::new("drop_removes_everything").unwrap();
    lab.add_node("n1").unwrap();
    lab.add_node("n2").unwrap();
    lab.add_external("x1").unwrap();
    let n1 = lab.node("n1");
    assert!(n1.cgroup().join("cgroup.procs").exists());
    assert!(n1.cgroup().starts_with(cgroup2_root().unwrap().join("netbee-lab").join(lab.prefix())));

    // What a daemon does: a bpffs, a netns pinned by a bind mount, and a
    // sub-cgroup for a container.
    let bpf = n1.dir().join("bpf");
    std::fs::create_dir_all(&bpf).unwrap();
    nix::mount::mount(Some("bpf"), &bpf, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let pin = n1.dir().join("netns/c1");
    std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
    std::fs::write(&pin, "").unwrap();
    let container_ns = lab.external("x1").name().to_string();
    nix::mount::mount(
        Some(&ns::netns_path(&container_ns)),
        &pin,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir_all(n1.cgroup().join("containers/c1")).unwrap();
    assert_eq!(mounts::mounts_under(lab.dir()).len(), 2);

    let fp = Footprint::of(&lab);
    drop(lab);
    fp.assert_gone();
}

#[test]
fn drop_kills_processes_in_the_node_cgroup() {
    let mut lab = Lab::new("drop_kills_processes").unwrap();
    lab.add_node("n1").unwrap();
    lab.add_external("x1").unwrap();
    let node = lab.node("n1");
    let mut sleeper = node.cmd("sleep").arg("1000").spawn().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", sleeper.id())).unwrap();
    let rel = node.cgroup().strip_prefix(cgroup2_root().unwrap()).unwrap();
    assert!(cg.contains(&format!("0::/{}\n", rel.display())), "{cg}");
    // Something started in an external namespace, outside any cgroup, is
    // found through `ip netns pids`.
    let mut outsider = lab.external("x1").cmd("sleep").arg("1000").spawn().unwrap();
    let fp = Footprint::of(&lab);
    drop(lab);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(sleeper.try_wait().unwrap().and_then(|s| s.signal()), Some(libc::SIGKILL));
    let status = outsider.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    fp.assert_gone();
}

#[test]
fn panicking_test_still_cleans_up() {
    let seen: std::sync::Mutex<Option<Footprint>> = std::sync::Mutex::new(None);
    let sleeper_pid = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new("panicking_test_still_cleans_up").unwrap();
        lab.add_node("n1").unwrap();
        std::fs::write(lab.node("n1").dir().join("daemon.log"), "daemon says hi\n").unwrap();
        let child = lab.node("n1").cmd("sleep").arg("1000").spawn().unwrap();
        *sleeper_pid.lock().unwrap() = Some(child);
        *seen.lock().unwrap() = Some(Footprint::of(&lab));
        panic!("deliberate panic with a live lab");
    }));
    assert!(r.is_err());
    seen.lock().unwrap().take().unwrap().assert_gone();
    let mut child = sleeper_pid.lock().unwrap().take().unwrap();
    assert!(child.try_wait().unwrap().is_some(), "sleeper survived");
}

#[test]
fn start_daemon_reports_early_exit_with_log() {
    let mut lab = Lab::new("start_daemon_reports_early_exit").unwrap();
    lab.add_node("n1").unwrap();
    let fake = lab.dir().join("fake-netbee");
    std::fs::write(&fake, "#!/bin/sh\necho \"fake netbee: refusing to start ($*)\" >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    // SAFETY: lab tests run with --test-threads=1, so no other thread reads
    // the environment concurrently.
    unsafe { std::env::set_var("NETBEE_BIN", &fake) };
    let r = lab.node("n1").start_daemon();
    unsafe { std::env::remove_var("NETBEE_BIN") };

    let err = format!("{:#}", r.expect_err("fake daemon must fail"));
    assert!(err.contains("daemon.log"), "{err}");
    assert!(err.contains("fake netbee: refusing to start (daemon --node-dir"), "{err}");
    assert!(err.contains("--uplink eth0 --cgroup"), "{err}");
    assert_eq!(lab.node("n1").daemon_pid(), None);
}

#[test]
fn sweep_removes_labs_of_dead_owners() {
    let mut lab = Lab::new("sweep_removes_labs_of_dead_owners").unwrap();
    lab.add_node("n1").unwrap();
    let fp = Footprint::of(&lab);
    // Pretend the owner died: a pid that cannot exist right now.
    std::fs::write(lab.dir().join("owner.pid"), format!("{}\n", i32::MAX)).unwrap();
    sweep_stale().unwrap();
    fp.assert_gone();
    drop(lab); // Dropping an already-swept lab must be quiet and harmless.
    fp.assert_gone();
}

#[test]
fn node_names_are_validated() {
    let mut lab = Lab::new("node_names_are_validated").unwrap();
    for bad in ["", "u", "br0", "N1", "toolongname", "a-b"] {
        assert!(lab.add_node(bad).is_err(), "{bad:?} accepted");
    }
    lab.add_node("n1").unwrap();
    assert!(lab.add_external("n1").is_err());
    assert!(Path::new(&ns::netns_path(&format!("{}n1", lab.prefix()))).exists());
}

#[test]
fn wait_until_names_what_it_waited_for() {
    let e = wait_until(Duration::from_millis(120), "the moon", || false).unwrap_err();
    assert!(e.to_string().contains("the moon"));
    let mut n = 0;
    wait_until(Duration::from_secs(2), "three polls", || {
        n += 1;
        n >= 3
    })
    .unwrap();
}

/// A stand-in for `netbee`: the daemon leaves a "container" child behind and
/// creates the socket; the CLI only checks the socket and reports its netns.
const FAKE_NETBEE: &str = r#"#!/bin/bash
if [ "$1" = daemon ]; then
  shift
  while [ $# -gt 0 ]; do case "$1" in --node-dir) dir=$2; shift 2;; *) shift;; esac; done
  echo "fake daemon starting in $dir"
  sleep 1000 &
  echo $! > "$dir/container.pid"
  trap 'echo "fake daemon: SIGTERM"; rm -f "$dir/netbee.sock"; exit 0' TERM
  sleep 0.2
  touch "$dir/netbee.sock"
  while true; do sleep 0.05; done
fi
host=$NETBEE_HOST
if [ "$1" = -H ]; then host=$2; shift 2; fi
sock=${host#unix://}
[ -e "$sock" ] || { echo "cannot connect to $sock" >&2; exit 1; }
case "$1" in
  version) echo "fake 0.0";;
  netns) readlink /proc/self/ns/net;;
  *) echo "unknown command $1" >&2; exit 2;;
esac
"#;

#[test]
fn daemon_lifecycle_with_a_fake_netbee() {
    let mut lab = Lab::new("daemon_lifecycle_with_a_fake_netbee").unwrap();
    lab.add_node("n1").unwrap();
    let fake = lab.dir().join("fake-netbee");
    std::fs::write(&fake, FAKE_NETBEE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: lab tests run with --test-threads=1 (see module docs).
    unsafe { std::env::set_var("NETBEE_BIN", &fake) };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let n1 = lab.node("n1");
        n1.start_daemon().unwrap();
        let pid = n1.daemon_pid().unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains(&format!("/netbee-lab/{}/n1\n", lab.prefix())), "{cg}");
        assert!(n1.start_daemon().is_err(), "second start must be refused");

        assert_eq!(n1.netbee(&["version"]).unwrap().trim(), "fake 0.0");
        assert_eq!(n1.netbee(&["netns"]).unwrap(), n1.sh("readlink /proc/self/ns/net").unwrap());
        let out = n1.netbee_output(&["bogus"]);
        assert_eq!(out.status.code(), Some(2));
        let err = format!("{:#}", n1.netbee(&["bogus"]).unwrap_err());
        assert!(err.contains("unknown command bogus") && err.contains("bogus"), "{err}");

        n1.restart_daemon().unwrap();
        assert_ne!(n1.daemon_pid(), Some(pid));
        assert!(n1.daemon_log().contains("fake daemon: SIGTERM"), "{}", n1.daemon_log());
        n1.kill_daemon().unwrap();
        assert_eq!(n1.daemon_pid(), None);
        n1.stop_daemon().unwrap();
        n1.start_daemon().unwrap();
        // the fake daemon writes its container's pid after it answers `version`
        let pid_file = n1.dir().join("container.pid");
        let read = || std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        wait_until(Duration::from_secs(5), "container.pid", || read().is_some()).unwrap();
        read().unwrap()
    }));
    unsafe { std::env::remove_var("NETBEE_BIN") };
    let container = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(cleanup::process_start_time(container).is_some());
    let fp = Footprint::of(&lab);
    drop(lab);
    wait_until(Duration::from_secs(2), "the daemon's container to be reaped", || {
        cleanup::process_start_time(container).is_none()
    })
    .unwrap();
    fp.assert_gone();
}
