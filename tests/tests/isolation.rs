//! Isolation and spoofing with real traffic, and what the daemon listens on.
//!
//! `isolation_and_spoofing_matrix` builds one 2-node swarm with an external client and probes
//! every (source, destination) pair with TCP (an HTTP request), UDP and, towards container
//! addresses, ICMP, against the answer docker would give. Must-not-reach probes run first, all at
//! once, and every target's log is read afterwards: anything that arrived there fails its cell even
//! when no answer made it back (a reply lost to NAT must not hide a packet that got in). Then the
//! must-reach probes, each checked for who answered and which source address the server saw. The
//! whole matrix is printed and every mismatch reported in one failure.
//!
//! `daemon_listeners_authenticate` checks that the daemon's only TCP listeners are the join port
//! on a manager's advertise address and DNS on network gateways, and that the join port refuses
//! anything but a valid token.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use netbee_lab::{Node, Ns, netbee_bin, swarm_lab, wait_until, whoami_field};
use serde_json::Value;

/// The port every whoami container listens on (TCP and UDP).
const PORT: u16 = 80;
/// `-p 8080:80` and `-p 8080:80/udp` on n1.
const PUBLISHED: u16 = 8080;
/// `-p 127.0.0.1:8081:80` and its /udp twin on n1.
const LOCAL_ONLY: u16 = 8081;
/// A plain process (not a container) listening on the node n1 and on the external client.
const HOST_SVC: u16 = 9000;
/// Source ports of the probes start here, one per probe, below the ephemeral range so nothing
/// else holds them; an arrival in a target's log names its probe by this port.
const FIRST_SOURCE_PORT: u16 = 20000;

/// Expected reachability, docker's answer with its default settings (docker 28+: remote hosts may
/// not route to container addresses at all, a 127.0.0.1 publish is for the node alone, other
/// bridge networks reach a container only through a port published on a node address, the host
/// reaches its bridge networks but not overlay containers). R = must reach, . = must not reach,
/// `-` = not probed. Rows: a1 on bridge A, b1 on bridge B, o1/o2 on overlay O on n1/n2 (all on n1
/// but o2), processes on n1 and n2, the external client x1 (which routes container addresses via
/// their nodes). Columns: a2, b1, o1, o2, pubc (A, published), expc (A, exposed, unpublished) at
/// their own addresses, port 80; n1:H = n1:8080 (pubc's -p 8080:80), n1:H2 = n1:8081 and lo:H2 =
/// 127.0.0.1:8081 (locc's -p 127.0.0.1:8081:80; from x1 a hand-made frame to 127.0.0.1 sent to
/// n1's MAC), n1:80 (nothing published), n1:svc and x1:svc (plain processes), gwA:53 (A's DNS).
const COLUMNS: [&str; 13] =
    ["a2", "b1", "o1", "o2", "pubc", "expc", "n1:H", "n1:H2", "lo:H2", "n1:80", "n1:svc", "x1:svc", "gwA:53"];
const ROWS: [(&str, &str); 7] = [
    //          a2 b1 o1 o2 pubc expc n1:H n1:H2 lo:H2 n1:80 n1:svc x1:svc gwA:53
    ("a1", "     R  .  .  .  R    R    R    .     -     .     R      R      R"),
    ("b1", "     .  -  .  .  .    .    R    .     -     .     R      R      ."),
    ("o1", "     .  .  -  R  .    .    R    .     -     .     R      R      ."),
    ("o2", "     .  .  R  -  .    .    R    .     -     .     R      R      ."),
    ("n1", "     R  R  .  .  R    R    R    .     R     .     -      R      -"),
    ("n2", "     .  .  .  .  .    .    R    .     .     .     R      R      ."),
    ("x1", "     .  .  .  .  .    .    R    .     .     .     R      -      ."),
];

/// Where netbee knowingly answers differently from docker, with the reason. Each such cell is
/// still probed and printed (as `R≠` / `.≠`); it fails the test only if netbee stops differing,
/// so that a fixed difference gets removed from this list.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] =
    &[("n1", "o1", NODE_TO_OWN_OVERLAY), ("n2", "o2", NODE_TO_OWN_OVERLAY)];
const NODE_TO_OWN_OVERLAY: &str = "a node reaches its own overlay containers by address (a /32 route to their veth, as for \
    bridge networks); docker's overlays live in a namespace the host has no route into. Not a boundary: the node is root over its containers";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    /// An HTTP GET over TCP (curl).
    Tcp,
    /// One datagram, whoami answers it (socat).
    Udp,
    /// One echo request (ping).
    Icmp,
    /// A DNS query over UDP, judged by whether any answer comes back.
    Dns,
    /// The same query over TCP.
    DnsTcp,
    /// One UDP datagram in a hand-made Ethernet frame sent straight to n1's MAC: reaches
    /// addresses the sender's kernel would never route out (moby/moby#45610). Judged by arrival.
    RawUdp,
}

impl Proto {
    fn short(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Dns => "dns",
            Proto::DnsTcp => "dns/tcp",
            Proto::RawUdp => "raw",
        }
    }
}

/// Where a probe runs: a container's network namespace, or a lab namespace (a node's probes also
/// join its cgroup, so its socket hooks apply as to any process on the node).
#[derive(Clone, Copy)]
enum Ctx<'a> {
    Container(u32),
    Ns(&'a Ns),
}

impl Ctx<'_> {
    fn cmd(&self, program: &str) -> Command {
        match self {
            Ctx::Container(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-n", program]);
                c
            }
            Ctx::Ns(ns) => ns.cmd(program),
        }
    }
}

/// A row of the matrix.
struct Source<'a> {
    name: &'static str,
    ctx: Ctx<'a>,
    /// The address the source's own packets carry.
    addr: Ipv4Addr,
    /// The node it lives on (None for the external client).
    node: Option<&'a Node>,
}

/// What answers at a destination: a whoami container or process.
#[derive(Clone)]
struct Target {
    name: String,
    /// An address of the answering namespace, which whoami lists in its answer.
    ip: Ipv4Addr,
    /// The hostname it answers with (containers only; processes share the machine's).
    hostname: Option<String>,
}

/// A column of the matrix.
struct Dest {
    name: &'static str,
    addr: Ipv4Addr,
    port: u16,
    target: Target,
    /// Container addresses are also pinged.
    container_ip: bool,
}

/// Reads a target's whole log (its stdout: one line per request received).
type LogReader<'a> = Box<dyn Fn() -> String + Sync + 'a>;

#[derive(Clone, Debug)]
enum Outcome {
    Reached(String),
    Blocked(String),
    /// The probe itself could not run (a bind failure, a missing tool): never a pass.
    Error(String),
}

struct Probe {
    row: usize,
    col: usize,
    proto: Proto,
    sport: u16,
    reach: bool,
    outcome: Outcome,
}

#[test]
fn isolation_and_spoofing_matrix() -> Result<()> {
    let t0 = Instant::now();
    // n1: bridge networks A and B, overlay O over n1 and n2
    let lab = two_nodes("isolation", &["neta", "netb"])?;
    let (n1, n2, x1) = (lab.node("n1"), lab.node("n2"), lab.external("x1"));
    let mut whoamis: Vec<(&Node, &str, Vec<&str>)> = vec![
        (n1, "a1", vec!["--network", "neta"]),
        (n1, "a2", vec!["--network", "neta"]),
        (n1, "b1", vec!["--network", "netb"]),
        (n1, "o1", vec!["--network", "ovl"]),
        (n2, "o2", vec!["--network", "ovl"]),
        (n1, "pubc", vec!["--network", "neta", "-p", "8080:80", "-p", "8080:80/udp"]),
        (n1, "locc", vec!["--network", "neta", "-p", "127.0.0.1:8081:80", "-p", "127.0.0.1:8081:80/udp"]),
        (n1, "expc", vec!["--network", "neta", "--expose", "80"]),
    ];
    for (node, name, args) in &mut whoamis {
        args.extend_from_slice(&["--hostname", *name]);
        node.run_whoami(name, args, PORT)?;
    }
    let net_of = |c: &str| match c {
        "b1" => "netb",
        "o1" | "o2" => "ovl",
        _ => "neta",
    };
    let mut ips = BTreeMap::new();
    let mut pids = BTreeMap::new();
    for (node, name, _) in &whoamis {
        ips.insert(name.to_string(), node.container_ip(name, net_of(name))?.parse::<Ipv4Addr>()?);
        pids.insert(name.to_string(), container_pid(node, name)?);
    }
    let ip = |c: &str| -> Result<Ipv4Addr> { ips.get(c).copied().ok_or_else(|| anyhow!("no container {c}")) };
    let pid = |c: &str| -> Result<u32> { pids.get(c).copied().ok_or_else(|| anyhow!("no container {c}")) };
    let gateway = |n: &Node, net: &str| -> Result<Ipv4Addr> { Ok(ipam(n, net, "Gateway")?.parse()?) };

    // plain processes: one on n1 (in its cgroup, like any service of the node), one outside
    let svc_n1 = spawn_whoami(n1, &lab.dir().join("svc-n1.log"))?;
    let svc_x1 = spawn_whoami(x1, &lab.dir().join("svc-x1.log"))?;
    let _guards = (svc_n1, svc_x1);

    // The external client plays an attacker next to the nodes: it routes the container networks
    // through them (direct routing), A and B via n1, each overlay container via its node.
    for (dst, via) in [
        (ipam(n1, "neta", "Subnet")?, n1.addr()),
        (ipam(n1, "netb", "Subnet")?, n1.addr()),
        (format!("{}/32", ip("o1")?), n1.addr()),
        (format!("{}/32", ip("o2")?), n2.addr()),
    ] {
        x1.sh(&format!("ip route add {dst} via {via}"))?;
    }

    let sources = [
        Source { name: "a1", ctx: Ctx::Container(pid("a1")?), addr: ip("a1")?, node: Some(n1) },
        Source { name: "b1", ctx: Ctx::Container(pid("b1")?), addr: ip("b1")?, node: Some(n1) },
        Source { name: "o1", ctx: Ctx::Container(pid("o1")?), addr: ip("o1")?, node: Some(n1) },
        Source { name: "o2", ctx: Ctx::Container(pid("o2")?), addr: ip("o2")?, node: Some(n2) },
        Source { name: "n1", ctx: Ctx::Ns(n1), addr: n1.addr(), node: Some(n1) },
        Source { name: "n2", ctx: Ctx::Ns(n2), addr: n2.addr(), node: Some(n2) },
        Source { name: "x1", ctx: Ctx::Ns(x1), addr: x1.addr(), node: None },
    ];
    let container = |c: &str| -> Result<Target> { Ok(Target { name: c.into(), ip: ip(c)?, hostname: Some(c.into()) }) };
    let to_container = |name: &'static str, c: &str| -> Result<Dest> {
        Ok(Dest { name, addr: ip(c)?, port: PORT, target: container(c)?, container_ip: true })
    };
    let on_n1 = |name: &'static str, addr: Ipv4Addr, port: u16, target: Target| Dest {
        name,
        addr,
        port,
        target,
        container_ip: false,
    };
    let n1_svc = Target { name: "svc@n1".into(), ip: n1.addr(), hostname: None };
    let x1_svc = Target { name: "svc@x1".into(), ip: x1.addr(), hostname: None };
    let gw_a = gateway(n1, "neta")?;
    let dests = vec![
        to_container("a2", "a2")?,
        to_container("b1", "b1")?,
        to_container("o1", "o1")?,
        to_container("o2", "o2")?,
        to_container("pubc", "pubc")?,
        to_container("expc", "expc")?,
        on_n1("n1:H", n1.addr(), PUBLISHED, container("pubc")?),
        on_n1("n1:H2", n1.addr(), LOCAL_ONLY, container("locc")?),
        on_n1("lo:H2", Ipv4Addr::LOCALHOST, LOCAL_ONLY, container("locc")?),
        // nothing is published on port 80 of the node: whatever answers there is a leak of expc/pubc
        on_n1("n1:80", n1.addr(), PORT, container("expc")?),
        on_n1("n1:svc", n1.addr(), HOST_SVC, n1_svc.clone()),
        Dest { name: "x1:svc", addr: x1.addr(), port: HOST_SVC, target: x1_svc.clone(), container_ip: false },
        // the embedded DNS server of A, which docker keeps inside each container (127.0.0.11)
        on_n1("gwA:53", gw_a, 53, Target { name: "dns@gwA".into(), ip: gw_a, hostname: None }),
    ];
    assert_eq!(dests.iter().map(|d| d.name).collect::<Vec<_>>(), COLUMNS);
    let logs: Vec<(Target, LogReader)> = {
        let mut v: Vec<(Target, LogReader)> = Vec::new();
        for (node, name, _) in &whoamis {
            let (node, name) = (*node, name.to_string());
            v.push((container(&name)?, Box::new(move || node.netbee(&["logs", &name]).unwrap_or_default())));
        }
        for (t, f) in [(n1_svc, lab.dir().join("svc-n1.log")), (x1_svc, lab.dir().join("svc-x1.log"))] {
            v.push((t, Box::new(move || std::fs::read_to_string(&f).unwrap_or_default())));
        }
        v
    };

    // The source address each reach cell's server must see. Unlike docker, netbee keeps a
    // container's own address on hairpin connections to a published port (docker's proxy or
    // masquerade shows the gateway): kept as netbee's documented behaviour.
    let seen = |s: &Source, d: &Dest| -> Option<Ipv4Addr> {
        let node_addr = s.node.map(|n| n.addr());
        match (s.name, d.name) {
            // a node talks to its containers from the network's gateway (the route's source)
            ("n1" | "n2", _) if d.container_ip => gateway(s.node?, net_of(&d.target.name)).ok(),
            // ... and to a port published on itself straight to the backend (socket hook)
            ("n1", "n1:H" | "lo:H2") => Some(gw_a),
            // containers leave their node masqueraded; they reach their own node's addresses and
            // its published ports with their own address; published ports keep the client's
            (_, "x1:svc") if s.node.is_some() => node_addr,
            ("o2", "n1:H" | "n1:svc") => node_addr,
            _ => Some(s.addr),
        }
    };

    // the expectation table
    let expect: Vec<Vec<Option<bool>>> = ROWS
        .iter()
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|c| match c {
                    "R" => Some(true),
                    "." => Some(false),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(expect.iter().all(|r| r.len() == COLUMNS.len()));
    assert_eq!(ROWS.iter().map(|r| r.0).collect::<Vec<_>>(), sources.iter().map(|s| s.name).collect::<Vec<_>>());

    // the overlay answers both ways before anything is judged
    wait_until(Duration::from_secs(15), "o2 and o1 reach each other", || {
        let (a, b) = (ip("o1").unwrap(), ip("o2").unwrap());
        matches!(probe(sources[3].ctx, Proto::Tcp, a, PORT, 0, true), Outcome::Reached(_))
            && matches!(probe(sources[2].ctx, Proto::Tcp, b, PORT, 0, true), Outcome::Reached(_))
    })?;

    let mut probes = Vec::new();
    for (row, s) in sources.iter().enumerate() {
        for (col, d) in dests.iter().enumerate() {
            let Some(reach) = expect[row][col] else { continue };
            let mut protos = vec![Proto::Tcp, Proto::Udp];
            if d.container_ip {
                protos.push(Proto::Icmp);
            }
            if d.port == 53 {
                protos = vec![Proto::Dns, Proto::DnsTcp];
            }
            // the neighbour's hand-made frame to 127.0.0.1 (its kernel would not send one), and the
            // same frame to the node's address as the proof that such frames get through at all
            if s.name == "x1" && d.name == "lo:H2" {
                protos = vec![Proto::RawUdp];
            }
            if s.name == "x1" && d.name == "n1:H" {
                protos.push(Proto::RawUdp);
            }
            for proto in protos {
                let sport = FIRST_SOURCE_PORT + probes.len() as u16;
                probes.push(Probe { row, col, proto, sport, reach, outcome: Outcome::Error("not run".into()) });
            }
        }
    }
    let raw_macs = (mac_of(x1)?, mac_of(n1)?);
    let run_probe = |p: &Probe| -> Outcome {
        let (s, d) = (&sources[p.row], &dests[p.col]);
        if p.proto == Proto::RawUdp {
            let (src, dst, (sp, dp)) = (s.addr, d.addr, (p.sport, d.port));
            return match x1.run(move || send_raw_udp(raw_macs.0, raw_macs.1, src, dst, sp, dp)) {
                Ok(()) => Outcome::Blocked("sent; judged by arrival".into()),
                Err(e) => Outcome::Error(format!("{e:#}")),
            };
        }
        probe(s.ctx, p.proto, d.addr, d.port, p.sport, p.reach)
    };

    // phase 1: everything that must not arrive, all at once; then what arrived anyway
    let drops_before = (n1.drops("cross_network")?, n2.drops("cross_network")?);
    let before: Vec<usize> = logs.iter().map(|(_, f)| f().lines().count()).collect();
    run_all(&mut probes, |p| !p.reach, &run_probe);
    std::thread::sleep(Duration::from_millis(500));
    let mut stray = Vec::new();
    attribute_arrivals(&logs, &before, &mut probes, &mut stray);
    let cross_drops = (n1.drops("cross_network")? - drops_before.0, n2.drops("cross_network")? - drops_before.1);

    // phase 2: everything that must arrive
    let before: Vec<usize> = logs.iter().map(|(_, f)| f().lines().count()).collect();
    run_all(&mut probes, |p| p.reach, &run_probe);
    std::thread::sleep(Duration::from_millis(300));
    let mut ignored = Vec::new();
    attribute_arrivals(&logs, &before, &mut probes, &mut ignored);

    // judge every cell
    let mut failures = Vec::new();
    let mut answers = String::new();
    let width = 7;
    let mut table = format!("{:<8}", "src\\dst");
    for c in COLUMNS {
        let _ = write!(table, "{c:<width$}");
    }
    table.push('\n');
    for (row, s) in sources.iter().enumerate() {
        let _ = write!(table, "{:<8}", s.name);
        for (col, d) in dests.iter().enumerate() {
            let cell: Vec<&Probe> = probes.iter().filter(|p| p.row == row && p.col == col).collect();
            let text = match expect[row][col] {
                None => "-".to_string(),
                Some(reach) => judge_cell(s, d, reach, &cell, seen(s, d), &mut failures, &mut answers),
            };
            let _ = write!(table, "{text:<width$}");
        }
        table.push('\n');
    }
    for line in &stray {
        failures.push(format!("arrived during the must-not-reach phase, from no probe: {line}"));
    }
    if cross_drops.0 == 0 {
        failures.push("n1 counted no cross_network drop while other networks probed its containers".into());
    }
    println!(
        "\nisolation matrix ({:.1}s to here): R reached, . blocked, ! differs from docker (a failure), ≠ known difference",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "columns: container addresses port {PORT} (tcp+udp+icmp), n1:H = n1:{PUBLISHED} (-p {PUBLISHED}:{PORT}), n1:H2 = n1:{LOCAL_ONLY} and \
         lo:H2 = 127.0.0.1:{LOCAL_ONLY} (-p 127.0.0.1:{LOCAL_ONLY}:{PORT}), n1:80 unpublished, svc = a process on n1/x1, gwA:53 = A's DNS"
    );
    print!("{table}");
    println!("cross_network drops during the must-not-reach phase: n1 {}, n2 {}", cross_drops.0, cross_drops.1);
    println!("answers (tcp):\n{answers}");
    let mut reasons: Vec<&str> = KNOWN_DIFFERENCES.iter().map(|k| k.2).collect();
    reasons.dedup();
    for why in reasons {
        let cells: Vec<String> =
            KNOWN_DIFFERENCES.iter().filter(|k| k.2 == why).map(|(r, c, _)| format!("{r}->{c}")).collect();
        println!("KNOWN DIFFERENCE FROM DOCKER (not failing) {}: {why}", cells.join(" "));
    }

    failures.extend(spoofing(n1, n2, x1.addr(), &logs)?);
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("{} isolation failures:\n{}\n\n{table}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// Judges one cell from its probes: its text in the table (R, ., R/. for mixed results, then !
/// when it differs from docker, ≠ when that is a known difference); failures and the answers of
/// reach cells are appended.
fn judge_cell(
    s: &Source,
    d: &Dest,
    reach: bool,
    cell: &[&Probe],
    seen: Option<Ipv4Addr>,
    failures: &mut Vec<String>,
    answers: &mut String,
) -> String {
    let here = format!("{} -> {} ({}:{})", s.name, d.name, d.addr, d.port);
    let mut problems = Vec::new();
    for p in cell {
        let proto = p.proto.short();
        match (&p.outcome, reach) {
            // a probe that could not run proves nothing, known difference or not
            (Outcome::Error(e), _) => failures.push(format!("{here}: {proto}: probe error: {e}")),
            (Outcome::Reached(a), true) => match check_answer(p.proto, a, &d.target, seen) {
                Err(e) => problems.push(format!("{proto}: {e}")),
                Ok(()) if p.proto == Proto::Tcp => {
                    let who = whoami_field(a, "RemoteAddr").unwrap_or_default();
                    let _ = writeln!(
                        answers,
                        "  {:>3} -> {:<7} answered by {:<7} seeing {who}",
                        s.name, d.name, d.target.name
                    );
                }
                Ok(()) => {}
            },
            (Outcome::Reached(a), false) => problems.push(format!("{proto}: must not reach, got: {}", one_line(a))),
            (Outcome::Blocked(why), true) => problems.push(format!("{proto}: must reach, got nothing ({why})")),
            (Outcome::Blocked(_), false) => {}
        }
    }
    let reached: Vec<bool> = cell.iter().map(|p| matches!(p.outcome, Outcome::Reached(_))).collect();
    let mark = if reached.iter().all(|r| *r) {
        "R"
    } else if reached.iter().all(|r| !*r) {
        "."
    } else {
        "R/."
    };
    let known = KNOWN_DIFFERENCES.iter().find(|(r, c, _)| *r == s.name && *c == d.name);
    match (known, problems.is_empty()) {
        (None, true) => mark.to_string(),
        (Some(_), false) => format!("{mark}≠"),
        (Some((_, _, why)), true) => {
            failures.push(format!("{here}: listed as a known difference ({why}) but now answers as docker: remove it from KNOWN_DIFFERENCES"));
            format!("{mark}!")
        }
        (None, false) => {
            failures.extend(problems.into_iter().map(|pr| format!("{here}: {pr}")));
            format!("{mark}!")
        }
    }
}

/// Forged source addresses and MACs from containers, on a bridge network and on the overlay:
/// nothing may arrive at the target and the node's drop counters must grow. Returns failures.
fn spoofing(n1: &Node, n2: &Node, external: Ipv4Addr, logs: &[(Target, LogReader)]) -> Result<Vec<String>> {
    n1.netbee(&["run", "-d", "--name", "evil", "--network", "neta", "host", "sleep", "600"])?;
    n2.netbee(&["run", "-d", "--name", "evilo", "--network", "ovl", "host", "sleep", "600"])?;
    let (evil, evilo) = (Ctx::Container(container_pid(n1, "evil")?), Ctx::Container(container_pid(n2, "evilo")?));
    let cip = |n: &Node, c: &str, net: &str| -> Result<Ipv4Addr> { Ok(n.container_ip(c, net)?.parse()?) };
    let mac = |n: &Node, c: &str, net: &str| -> Result<String> {
        Ok(n.inspect(c)?["NetworkSettings"]["Networks"][net]["MacAddress"].as_str().unwrap_or_default().to_string())
    };
    let (a1, a2, b1, o1) =
        (cip(n1, "a1", "neta")?, cip(n1, "a2", "neta")?, cip(n1, "b1", "netb")?, cip(n1, "o1", "ovl")?);
    let forged_b = Ipv4Addr::from(u32::from(b1) | 0xfa); // an unused address of B
    let forged_o = Ipv4Addr::from(u32::from(o1) | 0xfa);
    let log_of = |t: &str| logs.iter().find(|(x, _)| x.name == t).map(|(_, f)| f()).unwrap_or_default();

    // honest traffic from both forgers works, so that silence below means something
    let mut failures = Vec::new();
    for (ctx, who, dst) in [(evil, "evil", a2), (evilo, "evilo", o1)] {
        let honest = wait_until(Duration::from_secs(10), &format!("{who} reaches {dst}"), || {
            matches!(probe(ctx, Proto::Udp, dst, PORT, 0, true), Outcome::Reached(_))
        });
        if honest.is_err() {
            failures
                .push(format!("honest UDP from {who} to {dst} got no answer: the spoofing checks below prove nothing"));
        }
    }

    // (what, forger, its node, drop counter, target, destination, port, shell script)
    let send = |dst: Ipv4Addr, port: u16, sport: u16, bind: &str| {
        format!("echo forged | socat -t 0.5 - UDP4:{dst}:{port},bind={bind}:{sport}")
    };
    // The next hop's neighbour entry is learnt honestly, then pinned: ARP carrying a forged
    // address is dropped too (spoofed_arp), and the forged datagram itself must leave.
    let pin_next_hop = |dst: Ipv4Addr| {
        format!(
            "nh=$(ip route get {dst} | awk '{{for (i = 1; i < NF; i++) if ($i == \"via\") print $(i+1)}}'); nh=${{nh:-{dst}}}; \
             ping -c 1 -W 2 $nh >/dev/null; mac=$(ip neigh show $nh | awk '{{print $5}}'); \
             ip neigh replace $nh lladdr $mac dev eth0 nud permanent"
        )
    };
    let forge_ip = |fake: Ipv4Addr, dst: Ipv4Addr, port: u16, sport: u16| {
        format!(
            "{} && ip addr add {fake}/32 dev eth0 && {{ {}; rc=$?; ip addr del {fake}/32 dev eth0; exit $rc; }}",
            pin_next_hop(dst),
            send(dst, port, sport, &fake.to_string())
        )
    };
    let forge_mac = |fake: &str, dst: Ipv4Addr, sport: u16| {
        format!("{} && ip link set eth0 address {fake} && {}", pin_next_hop(dst), send(dst, PORT, sport, "0.0.0.0"))
    };
    let a1_mac = mac(n1, "a1", "neta")?;
    let forgeries = [
        ("evil (A) as a1, to a2", evil, n1, "spoofed_ip", "a2", a2, PORT, forge_ip(a1, a2, PORT, 21001)),
        (
            "evil (A) as an address of B, to b1",
            evil,
            n1,
            "spoofed_ip",
            "b1",
            b1,
            PORT,
            forge_ip(forged_b, b1, PORT, 21002),
        ),
        (
            "evil (A) as the external client, to n1:H",
            evil,
            n1,
            "spoofed_ip",
            "pubc",
            n1.addr(),
            PUBLISHED,
            forge_ip(external, n1.addr(), PUBLISHED, 21003),
        ),
        (
            "evilo (O@n2) as another overlay address, to o1",
            evilo,
            n2,
            "spoofed_ip",
            "o1",
            o1,
            PORT,
            forge_ip(forged_o, o1, PORT, 21004),
        ),
        ("evil (A) with a1's MAC, to a2", evil, n1, "spoofed_mac", "a2", a2, PORT, forge_mac(&a1_mac, a2, 21005)),
        (
            "evilo (O@n2) with a made-up MAC, to o1",
            evilo,
            n2,
            "spoofed_mac",
            "o1",
            o1,
            PORT,
            forge_mac("02:42:de:ad:be:ef", o1, 21006),
        ),
    ];
    println!("forged sources:");
    for (what, ctx, node, counter, target, dst, port, script) in forgeries {
        let (log0, drops0) = (log_of(target).lines().count(), node.drops(counter)?);
        let out = ctx.cmd("sh").args(["-c", &script]).stdin(Stdio::null()).output()?;
        std::thread::sleep(Duration::from_millis(300));
        let arrived: Vec<String> = log_of(target).lines().skip(log0).map(str::to_string).collect();
        let grew = node.drops(counter)? - drops0;
        println!("  {what:<48} {dst}:{port:<5} arrived: {}  {counter} on {} +{grew}", arrived.len(), node.short_name());
        if !out.status.success() {
            failures.push(format!("{what}: could not forge: {}", one_line(&String::from_utf8_lossy(&out.stderr))));
            continue;
        }
        if String::from_utf8_lossy(&out.stdout).contains("Hostname") || !arrived.is_empty() {
            failures.push(format!("{what}: arrived at {target}: {arrived:?}"));
        }
        if grew == 0 {
            failures.push(format!("{what}: the {counter} counter on {} did not grow", node.short_name()));
        }
    }
    Ok(failures)
}

/// A swarm of n1 (manager) and n2 (worker) with the external client x1, bridge networks
/// `bridges` on n1 and the overlay "ovl", known on both nodes.
fn two_nodes(test: &str, bridges: &[&str]) -> Result<netbee_lab::Lab> {
    let lab = swarm_lab(test, &["n1", "n2"], &["x1"])?;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    for net in bridges {
        n1.netbee(&["network", "create", net])?;
    }
    n1.netbee(&["network", "create", "--driver", "overlay", "ovl"])?;
    wait_until(Duration::from_secs(10), "ovl on n2", || n2.network_inspect("ovl").is_ok())?;
    Ok(lab)
}

/// A field of a network's first IPAM config on node `n` ("Subnet", "Gateway").
fn ipam(n: &Node, net: &str, field: &str) -> Result<String> {
    let v = n.network_inspect(net)?["IPAM"]["Config"][0][field].as_str().map(str::to_string);
    v.ok_or_else(|| anyhow!("network {net} on {} has no {field}", n.short_name()))
}

/// The pid of a container's first process, whose network namespace is the container's.
fn container_pid(n: &Node, c: &str) -> Result<u32> {
    n.inspect(c)?["State"]["Pid"].as_u64().map(|p| p as u32).ok_or_else(|| anyhow!("{c} has no pid"))
}

/// Runs the selected probes, 16 at a time.
fn run_all(probes: &mut [Probe], select: impl Fn(&Probe) -> bool, run: &(dyn Fn(&Probe) -> Outcome + Sync)) {
    let todo: Vec<usize> = (0..probes.len()).filter(|i| select(&probes[*i])).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let shared: &[Probe] = probes;
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = todo.get(k) else { break };
                    let o = run(&shared[i]);
                    results.lock().unwrap().push((i, o));
                }
            });
        }
    });
    for (i, o) in results.into_inner().unwrap() {
        probes[i].outcome = o;
    }
}

/// Reads every target's log since `before` and turns each arrival into a reach of the probe whose
/// source port it carries; arrivals that name no probe go to `stray`.
fn attribute_arrivals(logs: &[(Target, LogReader)], before: &[usize], probes: &mut [Probe], stray: &mut Vec<String>) {
    for ((t, f), skip) in logs.iter().zip(before) {
        for line in f().lines().skip(*skip) {
            // "udp from 1.2.3.4:5678" / "http from 1.2.3.4:5678"
            let Some(from) = line.split_whitespace().nth(2) else { continue };
            let port: Option<u16> = from.rsplit(':').next().and_then(|p| p.parse().ok());
            let is_udp = line.starts_with("udp");
            match probes
                .iter_mut()
                .find(|p| Some(p.sport) == port && matches!(p.proto, Proto::Udp | Proto::RawUdp) == is_udp)
            {
                Some(p) => {
                    if !matches!(p.outcome, Outcome::Reached(_)) {
                        p.outcome = Outcome::Reached(format!(
                            "arrived at {} as {from}, no answer came back\nHostname: {}\nIP: {}\nRemoteAddr: {from}",
                            t.name,
                            t.hostname.clone().unwrap_or_default(),
                            t.ip
                        ));
                    }
                }
                None => stray.push(format!("{}: {line}", t.name)),
            }
        }
    }
}

/// One probe from `ctx` to addr:port. `sport` 0: any source port. Must-reach probes get longer
/// timeouts than must-not-reach ones, which only wait long enough for a packet to arrive.
fn probe(ctx: Ctx, proto: Proto, addr: Ipv4Addr, port: u16, sport: u16, reach: bool) -> Outcome {
    let t = if reach { "3" } else { "1" };
    let mut cmd = match proto {
        Proto::Tcp => {
            let mut c = ctx.cmd("curl");
            c.args(["-s", "-S", "--connect-timeout", t, "-m", t]);
            if sport != 0 {
                c.args(["--local-port", &sport.to_string()]);
            }
            c.arg(format!("http://{addr}:{port}/"));
            c
        }
        Proto::Udp => {
            let mut c = ctx.cmd("sh");
            let bind = if sport != 0 { format!(",sourceport={sport}") } else { String::new() };
            c.args(["-c", &format!("echo probe | socat -t {t} - UDP4:{addr}:{port}{bind}")]);
            c
        }
        Proto::Icmp => {
            let mut c = ctx.cmd("ping");
            c.args(["-n", "-c", "1", "-W", t, &addr.to_string()]);
            c
        }
        Proto::Dns | Proto::DnsTcp => {
            // a query for "a2", type A; any answer at all counts
            let query = r"\022\064\001\000\000\001\000\000\000\000\000\000\002a2\000\000\001\000\001";
            let (len, peer) = match proto {
                Proto::DnsTcp => (r"\000\024", format!("TCP4:{addr}:{port},connect-timeout={t}")),
                _ => ("", format!("UDP4:{addr}:{port}")),
            };
            let bind = if sport != 0 { format!(",sourceport={sport}") } else { String::new() };
            let mut c = ctx.cmd("sh");
            c.args(["-c", &format!("printf '{len}{query}' | socat -t {t} - {peer}{bind} | wc -c")]);
            c
        }
        Proto::RawUdp => unreachable!("raw frames are sent by the caller"),
    };
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => return Outcome::Error(format!("spawning: {e}")),
    };
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    if stderr.contains("bind") || stderr.contains("Address already in use") || stderr.contains("No such file") {
        return Outcome::Error(one_line(&stderr));
    }
    match proto {
        Proto::Icmp if out.status.success() => Outcome::Reached(stdout),
        Proto::Dns | Proto::DnsTcp if stdout.trim().parse::<u32>().unwrap_or(0) > 0 => {
            Outcome::Reached(format!("a DNS answer of {} bytes", stdout.trim()))
        }
        Proto::Tcp | Proto::Udp if stdout.contains("Hostname") => Outcome::Reached(stdout),
        _ => Outcome::Blocked(format!(
            "{}{}",
            out.status,
            if stderr.trim().is_empty() { String::new() } else { format!(": {}", one_line(&stderr)) }
        )),
    }
}

/// A reach answer came from the right place and the server saw the expected source address.
fn check_answer(proto: Proto, answer: &str, target: &Target, seen: Option<Ipv4Addr>) -> Result<()> {
    if matches!(proto, Proto::Icmp | Proto::Dns | Proto::DnsTcp) {
        return Ok(());
    }
    if let Some(h) = &target.hostname {
        let got = whoami_field(answer, "Hostname").unwrap_or_default();
        if &got != h {
            bail!("answered by {got:?}, not {h}");
        }
    }
    if !answer.lines().any(|l| l == format!("IP: {}", target.ip)) {
        bail!("the answer does not come from {} ({}): {}", target.name, target.ip, one_line(answer));
    }
    let remote = whoami_field(answer, "RemoteAddr").unwrap_or_default();
    if let Some(want) = seen
        && !remote.starts_with(&format!("{want}:"))
    {
        bail!("server saw {remote}, expected {want}");
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `netbee whoami` process (not a container) in `ns` on HOST_SVC, logging to `log`.
fn spawn_whoami(ns: &Ns, log: &std::path::Path) -> Result<KillOnDrop> {
    let f = std::fs::File::create(log)?;
    let child = ns
        .cmd(netbee_bin().to_str().unwrap())
        .args(["whoami", "--port", &HOST_SVC.to_string()])
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(Stdio::null())
        .spawn()?;
    let child = KillOnDrop(child);
    wait_until(Duration::from_secs(5), "whoami process listening", || {
        ns.sh(&format!("test -n \"$(ss -Hltn 'sport = :{HOST_SVC}')\"")).is_ok()
    })?;
    Ok(child)
}

/// The MAC address of `eth0` in `ns`.
fn mac_of(ns: &Ns) -> Result<[u8; 6]> {
    let out = ns.sh("ip -o link show eth0")?;
    let s =
        out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).ok_or_else(|| anyhow!("no MAC in {out}"))?;
    let mut mac = [0u8; 6];
    for (i, b) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(b, 16)?;
    }
    Ok(mac)
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one UDP datagram as a hand-made Ethernet frame out of `eth0` of the calling thread's
/// network namespace, to `dst_mac` whatever `dst` is: the sender's routing (which never sends
/// 127.0.0.1 out of an interface) is bypassed, as an attacker on the same segment would.
fn send_raw_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Result<()> {
    let payload = b"forged frame\n";
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    frame.extend_from_slice(payload);
    // SAFETY: plain socket calls on a local fd with buffers that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst_mac);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 {
            bail!("sending a raw frame: {err}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Task: TCP listeners authenticate.

/// A listening socket as `ss -Hl{t,u}np` shows it: local address, port, owning pids.
fn listeners(ns: &Ns, proto: char) -> Result<Vec<(String, u16, Vec<u32>)>> {
    let out = ns.sh(&format!("ss -Hl{proto}np"))?;
    let mut v = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = f.get(3) else { continue };
        let Some((addr, port)) = local.rsplit_once(':') else { continue };
        let pids = line
            .split("pid=")
            .skip(1)
            .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        v.push((addr.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().unwrap_or(0), pids));
    }
    Ok(v)
}

/// Status code of one POST to the join port with `body` (raw bytes, so a client can send what no
/// well-behaved one would), `content_type` and a Content-Length header.
fn join_post(
    ctx: Ctx,
    mgr: Ipv4Addr,
    body: &[u8],
    content_type: Option<&str>,
    dir: &std::path::Path,
    tag: &str,
) -> Result<u16> {
    let file = dir.join(format!("join-body-{tag}"));
    std::fs::write(&file, body)?;
    let mut cmd = ctx.cmd("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", file.display()));
    match content_type {
        Some(ct) => cmd.args(["-H", &format!("content-type: {ct}")]),
        None => cmd.args(["-H", "content-type:"]),
    };
    cmd.arg(format!("http://{mgr}:2377/join"));
    let out = cmd.stdin(Stdio::null()).output()?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    code.parse()
        .with_context(|| format!("curl gave no status code ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
}

fn node_ids(n: &Node) -> Result<Vec<(String, String)>> {
    let mut v: Vec<(String, String)> = n
        .netbee(&["node", "ls", "--format", "json"])?
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| (v["ID"].as_str().unwrap_or("").to_string(), v["Hostname"].as_str().unwrap_or("").to_string()))
        })
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn daemon_listeners_authenticate() -> Result<()> {
    let t0 = Instant::now();
    let lab = two_nodes("listeners", &["app"])?;
    let (n1, n2, x1) = (lab.node("n1"), lab.node("n2"), lab.external("x1"));
    n1.netbee(&["run", "-d", "--name", "cli", "--network", "app", "host", "sleep", "600"])?;
    n2.netbee(&["run", "-d", "--name", "cli2", "--network", "ovl", "host", "sleep", "600"])?;
    let gws1 = [ipam(n1, "app", "Gateway")?, ipam(n1, "ovl", "Gateway")?];
    let gws2 = [ipam(n2, "ovl", "Gateway")?];
    let daemon_sockets = |n: &Node, proto: char| -> Result<Vec<(String, u16)>> {
        let pid = n.daemon_pid().ok_or_else(|| anyhow!("no daemon on {}", n.short_name()))?;
        Ok(listeners(n, proto)?.into_iter().filter(|(_, _, p)| p.contains(&pid)).map(|(a, p, _)| (a, p)).collect())
    };
    // DNS servers start with the networks' first containers: wait for them
    for (n, gws) in [(n1, &gws1[..]), (n2, &gws2[..])] {
        wait_until(Duration::from_secs(10), "DNS listeners on the gateways", || {
            daemon_sockets(n, 't').map(|l| gws.iter().all(|g| l.contains(&(g.clone(), 53)))).unwrap_or(false)
        })?;
    }

    let mut failures = Vec::new();
    // the API socket is root's alone
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        for n in [n1, n2] {
            let m = std::fs::metadata(n.socket())?;
            println!(
                "{}: API socket {} mode {:o} uid {}",
                n.short_name(),
                n.socket().display(),
                m.permissions().mode() & 0o777,
                m.uid()
            );
            if m.permissions().mode() & 0o077 != 0 || m.uid() != 0 {
                failures.push(format!(
                    "{}: the API socket is not root-only: mode {:o} uid {}",
                    n.short_name(),
                    m.permissions().mode(),
                    m.uid()
                ));
            }
        }
    }
    // every socket the daemons listen on: the manager's join port on its advertise address, DNS
    // on the gateways of the networks with containers; nothing on a wildcard address
    for (n, gws, manager) in [(n1, &gws1[..], true), (n2, &gws2[..], false)] {
        for proto in ['t', 'u'] {
            let socks = daemon_sockets(n, proto)?;
            println!("{} daemon {} listeners: {socks:?}", n.short_name(), if proto == 't' { "TCP" } else { "UDP" });
            for (addr, port) in &socks {
                let join = proto == 't' && manager && *addr == n.addr().to_string() && *port == 2377;
                let dns = gws.contains(addr) && *port == 53;
                if !join && !dns {
                    failures.push(format!(
                        "{}: the daemon listens on {addr}:{port}/{proto} (neither the join port nor DNS on a gateway)",
                        n.short_name()
                    ));
                }
            }
            if manager && proto == 't' && !socks.contains(&(n.addr().to_string(), 2377)) {
                failures.push(format!("{}: the manager does not listen on its join port", n.short_name()));
            }
        }
        let any_2377 = n.sh("ss -Hltn 'sport = :2377'")?;
        if !manager && !any_2377.trim().is_empty() {
            failures.push(format!("{}: a worker listens on 2377: {any_2377}", n.short_name()));
        }
    }

    // the join port from outside and from a container: only the token opens it
    let nodes_before = node_ids(n1)?;
    let token = n1.netbee(&["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    let mut near = token.clone().into_bytes();
    *near.last_mut().unwrap() ^= 1;
    let near = String::from_utf8(near)?;
    let (cli, cli2) = (Ctx::Container(container_pid(n1, "cli")?), Ctx::Container(container_pid(n2, "cli2")?));
    let json = Some("application/json");
    let oversized = format!("{{\"Token\":\"{}\"}}", "A".repeat(64 * 1024));
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u16)> = vec![
        ("no token", b"{}".to_vec(), json, 403),
        (
            "a wrong token",
            br#"{"Token":"SWMTKN-1-aaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbbbbbbbbbbb"}"#.to_vec(),
            json,
            403,
        ),
        ("the token with its last byte changed", format!("{{\"Token\":\"{near}\"}}").into_bytes(), json, 403),
        ("the token as a number", br#"{"Token":12345}"#.to_vec(), json, 403),
        ("a truncated body", format!("{{\"Token\":\"{}", &token[..20]).into_bytes(), json, 400),
        ("garbage", b"\x00\xff\xfe garbage \x01".to_vec(), json, 400),
        ("no content type", format!("{{\"Token\":\"{token}\"}}").into_bytes(), None, 415),
        ("an oversized body", oversized.into_bytes(), json, 413),
    ];
    println!("join port {}:2377:", n1.addr());
    for (who, ctx) in [("x1", Ctx::Ns(x1)), ("container on n1", cli), ("container on n2", cli2), ("n2", Ctx::Ns(n2))] {
        for (i, (what, body, ct, want)) in cases.iter().enumerate() {
            let got = join_post(ctx, n1.addr(), body, *ct, lab.dir(), &format!("{}-{i}", who.replace(' ', "_")))?;
            println!("  {who:<16} {what:<38} -> {got}");
            if got != *want {
                failures.push(format!("join port from {who}, {what}: status {got}, expected {want}"));
            }
        }
    }
    // the right token is answered (and still registers nothing by itself)
    let ok =
        join_post(Ctx::Ns(x1), n1.addr(), format!("{{\"Token\":\"{token}\"}}").as_bytes(), json, lab.dir(), "valid")?;
    println!("  x1               the worker token                       -> {ok}");
    if ok != 200 {
        failures.push(format!("the valid token got {ok}"));
    }
    if node_ids(n1)? != nodes_before {
        failures.push(format!("node ls changed: {:?} -> {:?}", nodes_before, node_ids(n1)?));
    }

    // a promoted worker opens the join port, a demoted manager closes it
    let listening = |n: &Node| n.sh(&format!("ss -Hltn 'sport = :2377' | grep -q {}", n.addr())).is_ok();
    n1.netbee(&["node", "promote", "n2"])?;
    if let Err(e) = wait_until(Duration::from_secs(10), "n2 listening on 2377 once promoted", || listening(n2)) {
        failures.push(format!("{e:#}"));
    }
    n1.netbee(&["node", "demote", "n2"])?;
    if let Err(e) = wait_until(Duration::from_secs(10), "n2 closing 2377 once demoted", || !listening(n2)) {
        failures.push(format!("{e:#}"));
    }
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("{} listener failures:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
