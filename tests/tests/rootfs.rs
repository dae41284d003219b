//! A container's root filesystem, without an image store: `netbee shim` is given two layer
//! directories made here from Debian's static busybox (the lower one with a file the upper one
//! deletes by an overlayfs whiteout), and must run the program inside their overlayfs root with
//! the image's users, a created working directory, netbee's /etc files, /proc and a minimal
//! /dev — and leave nothing in the node's mount table. Images from the store run through the
//! daemon once the store is in; this is the runtime half.
use std::{
    io::BufRead as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netbee_lab::{netbee_bin, wait_until};
use serde_json::json;

const BUSYBOX: &str = "/bin/busybox";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bottom layer: busybox and its applets, account files, /tmp, a file to delete above, and
/// an /etc/resolv.conf symlink pointing at the node's /etc/shadow (as a hostile image could).
fn base_layer(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d.join("bin"))?;
    std::fs::create_dir_all(d.join("etc"))?;
    std::fs::create_dir_all(d.join("tmp"))?;
    std::fs::set_permissions(d.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(BUSYBOX, d.join("bin/busybox"))?;
    for applet in ["sh", "cat", "ls", "id", "pwd", "echo", "test", "readlink", "sleep", "grep", "mount", "hostname"] {
        symlink("busybox", d.join("bin").join(applet))?;
    }
    std::fs::write(d.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")?;
    std::fs::write(d.join("etc/group"), "root:x:0:\napp:x:1000:\nstaff:x:50:app\n")?;
    std::fs::write(d.join("etc/motd"), "deleted above\n")?;
    symlink("/etc/shadow", d.join("etc/resolv.conf"))?;
    Ok(())
}

/// The top layer: a file of its own and the whiteout (a 0/0 character device) of /etc/motd.
fn top_layer(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d.join("srv"))?;
    std::fs::create_dir_all(d.join("etc"))?;
    std::fs::write(d.join("srv/hello"), "from the top layer\n")?;
    nix::sys::stat::mknod(
        &d.join("etc/motd"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )?;
    Ok(())
}

fn mounts_naming(mountinfo: &str, dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy();
    mountinfo.lines().filter(|l| l.contains(d.as_ref())).map(str::to_string).collect()
}

#[test]
fn shim_runs_a_program_in_an_overlayfs_root_and_leaks_no_mount() -> Result<()> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static (cargo xtask setup installs it)");
    }
    let dir = Dir(PathBuf::from(format!("/tmp/netbee-rootfs-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let (l0, l1, c) = (dir.0.join("layers/0"), dir.0.join("layers/1"), dir.0.join("containers/c1"));
    base_layer(&l0)?;
    top_layer(&l1)?;
    std::fs::create_dir_all(&c)?;
    let rootfs = c.join("rootfs");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::write(c.join("hosts"), "127.0.0.1\tlocalhost\n10.9.9.2\tboxhost\n")?;
    std::fs::write(c.join("resolv.conf"), "nameserver 10.9.9.9\n")?;
    std::fs::write(c.join("hostname"), "boxhost\n")?;
    let shadow_before = std::fs::read("/etc/shadow").unwrap_or_default();
    let script = "cat /srv/hello; test -e /etc/motd && echo motd-present || echo motd-gone; \
                  test -e /etc/os-release && echo os-release || echo no-os-release; \
                  echo user=$(id -u):$(id -g):$(id -G) home=$HOME pwd=$(pwd); \
                  echo resolv=$(cat /etc/resolv.conf) hostname=$(hostname) hosts=$(grep boxhost /etc/hosts); \
                  echo null=$(readlink /dev/ptmx) fd=$(readlink /dev/fd); ls /dev/null /dev/urandom /dev/pts/ptmx >/dev/null && echo dev-ok; \
                  echo pid1=$(cat /proc/1/comm); echo written > /tmp/written; sleep 2";
    let spec = json!({
        "cmd": ["sh", "-c", script],
        "env": ["PATH=/bin", "HOSTNAME=boxhost"],
        "hostname": "boxhost",
        "netns": null,
        "hosts": c.join("hosts"),
        "resolv": c.join("resolv.conf"),
        "hostname_file": c.join("hostname"),
        "stdout": c.join("stdout.log"),
        "stderr": c.join("stderr.log"),
        "workdir": "/work/dir",
        "exit_file": c.join("exit.json"),
        "rootfs": {
            "lower": [l1, l0],
            "upper": rootfs.join("upper"),
            "work": rootfs.join("work"),
            "merged": rootfs.join("merged"),
        },
        "user": "app",
    });
    let spec_path = c.join("shim.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;

    let mut shim = Command::new(netbee_bin()).arg("shim").arg(&spec_path).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(shim.stdout.take().unwrap()).read_line(&mut line)?;
    shim.wait()?;
    let pids: Vec<i32> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    let [_, init] = pids[..] else {
        bail!("shim failed: {line:?}; stderr: {}", std::fs::read_to_string(c.join("stderr.log")).unwrap_or_default())
    };
    // while it runs: the overlay is in the container's mount table and nowhere in the node's
    let inside = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).context("container gone")?;
    assert!(inside.lines().any(|l| l.contains(" / / ") && l.contains("overlay")), "no overlay root in:\n{inside}");
    let host = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert_eq!(mounts_naming(&host, &dir.0), Vec::<String>::new(), "mounts leaked into the node's table");
    assert_eq!(std::fs::read_link(format!("/proc/{init}/root"))?, PathBuf::from("/"));

    wait_until(Duration::from_secs(15), "the container's exit", || c.join("exit.json").exists())?;
    let exit: serde_json::Value = serde_json::from_slice(&std::fs::read(c.join("exit.json"))?)?;
    let out = std::fs::read_to_string(c.join("stdout.log"))?;
    let err = std::fs::read_to_string(c.join("stderr.log"))?;
    assert_eq!(exit["exit_code"], 0, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "from the top layer",
        "motd-gone",
        "no-os-release",
        "user=1000:1000:1000 50 home=/home/app pwd=/work/dir",
        "resolv=nameserver 10.9.9.9 hostname=boxhost hosts=10.9.9.2 boxhost",
        "null=pts/ptmx fd=/proc/self/fd",
        "dev-ok",
        "pid1=netbee",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}\nstderr:\n{err}");
    }
    // the writes went to the container's writable layer, the layers and the node are untouched
    assert_eq!(std::fs::read_to_string(rootfs.join("upper/tmp/written"))?, "written\n");
    assert!(rootfs.join("upper/work/dir").is_dir());
    assert!(!l0.join("tmp/written").exists());
    assert_eq!(std::fs::read_link(l0.join("etc/resolv.conf"))?, PathBuf::from("/etc/shadow"));
    assert_eq!(std::fs::read("/etc/shadow").unwrap_or_default(), shadow_before);
    let host = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert_eq!(mounts_naming(&host, &dir.0), Vec::<String>::new(), "mounts left in the node's table");
    Ok(())
}
