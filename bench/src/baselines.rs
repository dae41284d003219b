//! The baselines netbee is compared with, each built from real kernel machinery and real software
//! inside the lab's namespaces, one small function per baseline. Each says which real-world setup
//! it models. Nothing here touches the machine's own namespace: every `ip`, `iptables`, `nft` and
//! server runs with `-n <ns>` / inside a lab namespace.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use netbee_lab::{Lab, Node, wait_until};

use crate::sys::{PlainNs, Server, check, ip, retry};

fn link_up(ns: &str, ifname: &str) -> Result<()> {
    wait_until(Duration::from_secs(5), &format!("{ifname} up in {ns}"), || {
        ip(&["-n", ns, "-o", "link", "show", ifname]).map(|s| s.contains("state UP")).unwrap_or(false)
    })
}

/// Plugs a new "container" namespace `<prefix><tag>` into bridge `br0` of namespace `host` (the
/// way docker plugs a container into docker0): veth `v<tag>` on the bridge, `eth0` with `cidr`
/// inside, default route via `gateway`.
fn plug_container(lab: &Lab, host: &str, tag: &str, cidr: &str, gateway: &str) -> Result<PlainNs> {
    let c = PlainNs::create(lab, tag)?;
    let host_if = format!("v{tag}");
    ip(&["-n", host, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &c.name])?;
    ip(&["-n", host, "link", "set", &host_if, "master", "br0", "up"])?;
    ip(&["-n", &c.name, "addr", "add", cidr, "dev", "eth0"])?;
    ip(&["-n", &c.name, "link", "set", "eth0", "up"])?;
    ip(&["-n", &c.name, "route", "add", "default", "via", gateway])?;
    link_up(&c.name, "eth0")?;
    Ok(c)
}

fn make_bridge(host: &str, cidr: &str) -> Result<()> {
    ip(&["-n", host, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", host, "addr", "add", cidr, "dev", "br0"])?;
    ip(&["-n", host, "link", "set", "br0", "up"])?;
    Ok(())
}

/// Pings `addr` from `from` until it answers (bridge ports and neighbours settle).
fn reachable(from: &PlainNs, addr: &str) -> Result<()> {
    retry(Duration::from_secs(10), || from.sh(&format!("ping -c1 -W1 {addr} >/dev/null")).map(|_| ()))
        .with_context(|| format!("{addr} unreachable from {}", from.name))
}

/// Two endpoints talking over some network: the client runs the load generator, the server
/// runs iperf3/sockperf/nginx at `server_ip`.
pub struct Pair {
    pub client: PlainNs,
    pub server: PlainNs,
    pub server_ip: String,
}

/// Docker's default bridge model minus NAT: two container namespaces each plugged by a veth into
/// the Linux bridge `br0` of a host namespace, which has iptables loaded (filter table with
/// ACCEPT policies, no rules) so bridged packets traverse the netfilter hooks as on a docker host
/// (br_netfilter is built into this kernel and `bridge-nf-call-iptables` is on per namespace).
pub fn linux_bridge_pair(lab: &Lab) -> Result<Pair> {
    let host = PlainNs::create(lab, "sbh")?;
    make_bridge(&host.name, "10.98.0.1/24")?;
    host.sh("iptables -P FORWARD ACCEPT && iptables -P INPUT ACCEPT && iptables -P OUTPUT ACCEPT && sysctl -qw net.ipv4.ip_forward=1")?;
    let client = plug_container(lab, &host.name, "sb1", "10.98.0.2/24", "10.98.0.1")?;
    let server = plug_container(lab, &host.name, "sb2", "10.98.0.3/24", "10.98.0.1")?;
    reachable(&client, "10.98.0.3")?;
    Ok(Pair { client, server, server_ip: "10.98.0.3".into() })
}

/// The physical limit: two namespaces joined by a bare veth pair, no bridge, no program, no
/// netfilter.
pub fn veth_pair(lab: &Lab) -> Result<Pair> {
    let client = PlainNs::create(lab, "sv1")?;
    let server = PlainNs::create(lab, "sv2")?;
    ip(&["-n", &client.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &server.name])?;
    for (ns, cidr) in [(&client, "10.97.0.1/24"), (&server, "10.97.0.2/24")] {
        ip(&["-n", &ns.name, "addr", "add", cidr, "dev", "eth0"])?;
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
    }
    // A veth end reports UP only once its peer is up too.
    link_up(&client.name, "eth0")?;
    link_up(&server.name, "eth0")?;
    reachable(&client, "10.97.0.2")?;
    Ok(Pair { client, server, server_ip: "10.97.0.2".into() })
}

/// A container behind a docker-style bridge on a lab node: `br0` with `10.88.<k>.1/24` in the
/// node's namespace, container namespace `<prefix><tag>` at `10.88.<k>.2` routed via it.
/// Returns the container namespace and its address.
pub fn container_behind_bridge(lab: &Lab, node: &Node, tag: &str, k: u8) -> Result<(PlainNs, String)> {
    make_bridge(node.name(), &format!("10.88.{k}.1/24"))?;
    let addr = format!("10.88.{k}.2");
    let c = plug_container(lab, node.name(), tag, &format!("{addr}/24"), &format!("10.88.{k}.1"))?;
    reachable(&c, &format!("10.88.{k}.1"))?;
    Ok((c, addr))
}

/// Docker's published-port model with the userland proxy off: in the node's namespace,
/// `nat PREROUTING` DNATs `<node addr>:<host_port>` to the container, `nat POSTROUTING`
/// MASQUERADEs what the bridge subnet sends out, `filter FORWARD` accepts (docker's
/// DOCKER/DOCKER-ISOLATION chains reduced to their effect). Uses the `iptables` of this machine
/// (nf_tables backend), as docker would.
pub fn iptables_dnat(node: &Node, host_port: u16, container: &str, container_port: u16, subnet: &str) -> Result<()> {
    iptables_dnat_protos(node, &["tcp"], host_port, container, container_port, subnet)
}

/// [`iptables_dnat`] for each of `protos` ("tcp", "udp"): one DNAT rule per protocol, as
/// `docker run -p H:C -p H:C/udp` makes.
pub fn iptables_dnat_protos(
    node: &Node,
    protos: &[&str],
    host_port: u16,
    container: &str,
    container_port: u16,
    subnet: &str,
) -> Result<()> {
    let node_addr = node.addr().to_string();
    let mut script = String::new();
    for proto in protos {
        script.push_str(&format!(
            "iptables -t nat -A PREROUTING -d {node_addr} -p {proto} --dport {host_port} -j DNAT --to-destination {container}:{container_port} && "
        ));
    }
    script.push_str(&format!(
        "iptables -t nat -A POSTROUTING -s {subnet} ! -o br0 -j MASQUERADE && iptables -P FORWARD ACCEPT"
    ));
    check(node_sh(node, &script), Duration::from_secs(30))?;
    Ok(())
}

/// docker-proxy's model: a userland TCP proxy process per published port, here `socat` forking
/// one process per connection, listening on the node and connecting to the container.
pub fn socat_proxy(node: &Node, host_port: u16, container: &str, container_port: u16, log: &Path) -> Result<Server> {
    let mut c = node.cmd("socat");
    c.arg(format!("TCP-LISTEN:{host_port},fork,reuseaddr,backlog=4096"))
        .arg(format!("TCP:{container}:{container_port}"));
    Server::spawn(c, log)
}

fn node_sh(node: &Node, script: &str) -> Command {
    let mut c = node.cmd("bash");
    c.arg("-c").arg(script);
    c
}

/// The rule one published port costs in each packet-filter baseline of `publish-cost`.
pub fn dnat_rule_args(port: u16) -> String {
    format!("-p tcp -m tcp --dport {port} -j DNAT --to-destination 10.88.0.2:80")
}

/// docker's model of publishing: one `nat PREROUTING` DNAT rule per published port, appended one
/// at a time by `iptables -t nat -A`. `tool` is `iptables` (nf_tables backend here) or
/// `iptables-legacy` (the x_tables backend older docker hosts run). Bulk-loads `ports` with
/// `<tool>-restore` (untimed fill).
pub fn iptables_fill(node: &Node, tool: &str, ports: impl Iterator<Item = u16>, dir: &Path) -> Result<()> {
    let mut rules = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    for p in ports {
        rules.push_str(&format!("-A PREROUTING {}\n", dnat_rule_args(p)));
    }
    rules.push_str("COMMIT\n");
    let f = dir.join(format!("{tool}.rules"));
    std::fs::write(&f, rules)?;
    let mut c = node.cmd(&format!("{tool}-restore"));
    c.arg(&f);
    check(c, Duration::from_secs(300))?;
    Ok(())
}

/// The nftables-native model (what firewalld/podman's netavark nft driver do): one `dnat` rule
/// per port in a `nat` prerouting chain, added one at a time by `nft add rule`. Bulk-loads
/// `ports` with `nft -f` (untimed fill), replacing the table.
pub fn nft_fill(node: &Node, ports: impl Iterator<Item = u16>, dir: &Path) -> Result<()> {
    let mut rules = String::from(
        "table ip nat\ndelete table ip nat\ntable ip nat {\n chain prerouting {\n  type nat hook prerouting priority -100; policy accept;\n",
    );
    for p in ports {
        rules.push_str(&format!("  tcp dport {p} dnat to 10.88.0.2:80\n"));
    }
    rules.push_str(" }\n}\n");
    let f = dir.join("nft.rules");
    std::fs::write(&f, rules)?;
    let mut c = node.cmd("nft");
    c.arg("-f").arg(&f);
    check(c, Duration::from_secs(300))?;
    Ok(())
}

pub fn nft_add_rule_cmd(node: &Node, port: u16) -> Command {
    let mut c = node.cmd("nft");
    c.args(["add", "rule", "ip", "nat", "prerouting", "tcp", "dport", &port.to_string(), "dnat", "to", "10.88.0.2:80"]);
    c
}

/// Removes the rule [`nft_add_rule_cmd`] added (untimed), by handle.
pub fn nft_delete_port(node: &Node, port: u16) -> Result<()> {
    let mut c = node.cmd("nft");
    c.args(["-a", "list", "chain", "ip", "nat", "prerouting"]);
    let listing = check(c, Duration::from_secs(60))?;
    let needle = format!("dport {port} ");
    let handle = listing
        .lines()
        .filter(|l| l.contains(&needle))
        .find_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().to_string()))
        .with_context(|| format!("no nft rule for port {port}"))?;
    let mut c = node.cmd("nft");
    c.args(["delete", "rule", "ip", "nat", "prerouting", "handle", &handle]);
    check(c, Duration::from_secs(60))?;
    Ok(())
}

pub fn iptables_rule_cmd(node: &Node, tool: &str, op: &str, port: u16) -> Command {
    let mut c = node.cmd(tool);
    c.args(["-t", "nat", op, "PREROUTING"]).args(dnat_rule_args(port).split_whitespace());
    c
}

/// One backend of a load-balancing baseline: a "container" namespace and its address.
pub struct Backend {
    pub ns: PlainNs,
    pub addr: String,
}

/// A Kubernetes-style pod network over `nodes` (lab nodes without netbee): node k (from 0) gets a
/// Linux bridge `br0` at `10.88.<k+1>.1/24` (a CNI bridge / docker0), `per_node` container
/// namespaces behind it at `10.88.<k+1>.2`, `.3`, ..., and every node routes the other nodes'
/// pod subnets over the underlay to that node's address (flannel's host-gw / a routed pod
/// network). Traffic from a load balancer on node 0 to a backend on another node thus crosses
/// the underlay, as the routing mesh does.
pub fn routed_pod_network(lab: &Lab, nodes: &[&Node], per_node: usize) -> Result<Vec<Backend>> {
    let mut backends = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let subnet = k + 1;
        make_bridge(node.name(), &format!("10.88.{subnet}.1/24"))?;
        check(
            node_sh(node, "iptables -P FORWARD ACCEPT && sysctl -qw net.ipv4.ip_forward=1"),
            Duration::from_secs(30),
        )?;
        for i in 0..per_node {
            let addr = format!("10.88.{subnet}.{}", i + 2);
            let tag = format!("{}p{i}", node.short_name());
            let ns = plug_container(lab, node.name(), &tag, &format!("{addr}/24"), &format!("10.88.{subnet}.1"))?;
            backends.push(Backend { ns, addr });
        }
        for (j, other) in nodes.iter().enumerate() {
            if j != k {
                ip(&[
                    "-n",
                    node.name(),
                    "route",
                    "add",
                    &format!("10.88.{}.0/24", j + 1),
                    "via",
                    &other.addr().to_string(),
                ])?;
            }
        }
    }
    for b in &backends {
        reachable(&backends[0].ns, &b.addr)?;
    }
    Ok(backends)
}

/// kube-proxy's iptables mode for a NodePort service (`externalTrafficPolicy: Cluster`) on
/// `node`: `PREROUTING` sends `<node addr>:<port>` to a per-service chain that marks the
/// connection for masquerading (KUBE-MARK-MASQ) and picks a backend with one `statistic --mode
/// nth` rule per endpoint (rule i: `--every n-i --packet 0`, so new connections go round robin
/// exactly), each jumping to a DNAT (KUBE-SEP-*); `POSTROUTING` MASQUERADEs marked connections,
/// so replies from backends on other nodes come back through this node. Loaded with
/// `iptables-restore --noflush` (nf_tables backend), as kube-proxy does.
pub fn iptables_statistic_nth(
    node: &Node,
    port: u16,
    backends: &[Backend],
    backend_port: u16,
    dir: &Path,
) -> Result<()> {
    iptables_statistic_nth_protos(node, &["tcp"], port, backends, backend_port, dir)
}

/// [`iptables_statistic_nth`] for each of `protos` ("tcp", "udp"): kube-proxy makes one
/// service chain (and one endpoint chain per backend) per service port and protocol.
pub fn iptables_statistic_nth_protos(
    node: &Node,
    protos: &[&str],
    port: u16,
    backends: &[Backend],
    backend_port: u16,
    dir: &Path,
) -> Result<()> {
    let n = backends.len();
    let node_addr = node.addr();
    let mut r = String::from("*nat\n:KUBE-MARK-MASQ - [0:0]\n");
    for proto in protos {
        let p = proto.to_uppercase();
        r.push_str(&format!(":KUBE-SVC-{p} - [0:0]\n"));
        for i in 0..n {
            r.push_str(&format!(":KUBE-SEP-{p}-{i} - [0:0]\n"));
        }
    }
    r.push_str("-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
    r.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for proto in protos {
        let p = proto.to_uppercase();
        r.push_str(&format!("-A PREROUTING -d {node_addr}/32 -p {proto} -m {proto} --dport {port} -j KUBE-SVC-{p}\n"));
        r.push_str(&format!("-A KUBE-SVC-{p} -j KUBE-MARK-MASQ\n"));
        for (i, b) in backends.iter().enumerate() {
            if i + 1 < n {
                r.push_str(&format!(
                    "-A KUBE-SVC-{p} -m statistic --mode nth --every {} --packet 0 -j KUBE-SEP-{p}-{i}\n",
                    n - i
                ));
            } else {
                r.push_str(&format!("-A KUBE-SVC-{p} -j KUBE-SEP-{p}-{i}\n"));
            }
            r.push_str(&format!(
                "-A KUBE-SEP-{p}-{i} -p {proto} -m {proto} -j DNAT --to-destination {}:{backend_port}\n",
                b.addr
            ));
        }
    }
    r.push_str("COMMIT\n");
    let f = dir.join("kube-proxy.rules");
    std::fs::write(&f, r)?;
    let mut c = node.cmd("iptables-restore");
    c.arg("--noflush").arg(&f);
    check(c, Duration::from_secs(60))?;
    Ok(())
}

/// An haproxy load balancer in front of a server pool (the classic L4 ingress): `mode tcp`,
/// `balance roundrobin`, listening on `<node addr>:<port>` and connecting to every backend
/// (from the node's own address, so replies come back through it). Runs in the foreground
/// (`-db`) with haproxy's default threads (one per CPU). The node's ephemeral port range is
/// widened to 1024-65535, the usual tuning of an haproxy host (its server-side connections all
/// come from the node's one address, to only 6 backends).
pub fn haproxy_roundrobin(
    node: &Node,
    port: u16,
    backends: &[Backend],
    backend_port: u16,
    dir: &Path,
) -> Result<Server> {
    check(node_sh(node, "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'"), Duration::from_secs(30))?;
    let mut cfg = format!(
        "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend fe\n  bind {}:{port}\n  default_backend be\n\nbackend be\n  balance roundrobin\n",
        node.addr()
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("  server s{i} {}:{backend_port}\n", b.addr));
    }
    let f = dir.join("haproxy.cfg");
    std::fs::write(&f, cfg)?;
    let mut c = node.cmd("haproxy");
    c.arg("-db").arg("-f").arg(&f);
    Server::spawn(c, &dir.join("haproxy.log"))
}

/// Docker's overlay network model (and flannel's vxlan backend): on each of two lab nodes, a
/// Linux bridge `br0` enslaving a kernel VXLAN device `vx0` (VNI 42, UDP 4789, unicast to the
/// other node over the underlay `eth0`, no multicast learning needed with two peers), and a
/// container namespace plugged into the bridge with MTU 1450 (1500 minus the VXLAN header).
/// The containers share the L2 segment 10.96.0.0/24: client at .2 on `a`, server at .3 on `b`.
pub fn vxlan_bridge_pair(lab: &Lab, a: &Node, b: &Node) -> Result<Pair> {
    let mut ends = Vec::new();
    for (node, peer, tag, addr) in [(a, b, "vxc", "10.96.0.2"), (b, a, "vxs", "10.96.0.3")] {
        let host = node.name();
        ip(&["-n", host, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", host, "link", "set", "br0", "up"])?;
        ip(&[
            "-n",
            host,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "remote",
            &peer.addr().to_string(),
            "local",
            &node.addr().to_string(),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", host, "link", "set", "vx0", "mtu", "1450", "master", "br0", "up"])?;
        let c = PlainNs::create(lab, tag)?;
        let host_if = format!("v{tag}");
        ip(&[
            "-n", host, "link", "add", &host_if, "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu", "1450",
            "netns", &c.name,
        ])?;
        ip(&["-n", host, "link", "set", &host_if, "master", "br0", "up"])?;
        ip(&["-n", &c.name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&["-n", &c.name, "link", "set", "eth0", "up"])?;
        link_up(&c.name, "eth0")?;
        ends.push(c);
    }
    let server = ends.pop().expect("two ends");
    let client = ends.pop().expect("two ends");
    reachable(&client, "10.96.0.3")?;
    Ok(Pair { client, server, server_ip: "10.96.0.3".into() })
}
