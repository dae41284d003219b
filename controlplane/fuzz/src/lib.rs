//! Property checks shared by the fuzz targets. Each `check_*` runs one parser the way the
//! daemon or the CLI does and, when it accepts the input, asserts what must then hold: values in
//! range, canonical re-rendering that parses back to the same value, agreement between parsers
//! that accept the same syntax. A failed assertion is a crash libFuzzer records, like a panic.
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netbee_controlplane::{
    cluster,
    daemon::services::{self, Constraint},
    ipam::{self, Allocator, DefaultPool, IpamError, PoolConfig},
    model::{NodeRecord, ServicePort},
    names,
    portspec::{self, PortBinding, PortSpec, Proto},
};

fn range_str(lo: u16, hi: u16) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
}

/// The canonical `-p` text of what one `-p` value expanded to.
fn render_publish(v: &[PortSpec]) -> String {
    let (first, last) = (v[0], v[v.len() - 1]);
    let host = match (first.host_ports, last.host_ports) {
        (Some((lo, hi)), _) if v.len() == 1 => Some(range_str(lo, hi)),
        (Some((lo, _)), Some((_, hi))) => Some(range_str(lo, hi)),
        _ => None,
    };
    let container = range_str(first.container_port, last.container_port);
    let body = match (first.host_ip, host) {
        (Some(ip), h) => format!("{ip}:{}:{container}", h.unwrap_or_default()),
        (None, Some(h)) => format!("{h}:{container}"),
        (None, None) => container,
    };
    format!("{body}/{}", first.proto)
}

/// `-p` values: the specs of one value form one consecutive container range with one proto and
/// host IP; a host range goes with a single container port, else host ports pair up one to one.
pub fn check_publish(s: &str) -> Option<Vec<PortSpec>> {
    let v = match portspec::parse_publish(s) {
        Ok(v) => v,
        Err(e) => {
            assert!(e.to_string().starts_with("invalid port specification"), "{s:?}: {e}");
            return None;
        }
    };
    assert!(!v.is_empty(), "{s:?} parsed to no spec");
    let (first, last) = (v[0], v[v.len() - 1]);
    assert_eq!(usize::from(last.container_port - first.container_port) + 1, v.len(), "{s:?}: {v:?}");
    for (i, sp) in v.iter().enumerate() {
        assert_ne!(sp.container_port, 0, "{s:?}");
        assert_eq!(usize::from(sp.container_port - first.container_port), i, "{s:?}");
        assert_eq!((sp.proto, sp.host_ip), (first.proto, first.host_ip), "{s:?}");
        match sp.host_ports {
            None => assert!(first.host_ports.is_none(), "{s:?}"),
            Some((lo, hi)) => {
                assert!(lo >= 1 && lo <= hi, "{s:?}: host range {lo}-{hi}");
                if v.len() > 1 {
                    assert_eq!(lo, hi, "{s:?}: a container range maps to single host ports");
                    let (flo, _) = first.host_ports.expect("all or none have host ports");
                    assert_eq!(usize::from(lo - flo), i, "{s:?}: host ports pair up in order");
                }
            }
        }
    }
    let canon = render_publish(&v);
    assert_eq!(portspec::parse_publish(&canon).as_ref(), Ok(&v), "{s:?} re-rendered as {canon:?}");
    Some(v)
}

/// `--expose` values: a consecutive range with one proto, parsed the way `-p` parses a bare
/// container port (same syntax, so both must agree).
pub fn check_expose(s: &str) -> Option<Vec<(u16, Proto)>> {
    let r = portspec::parse_expose(s);
    if !s.contains(':') {
        let p = portspec::parse_publish(s);
        assert_eq!(r.is_ok(), p.is_ok(), "{s:?}: --expose {r:?} vs -p {p:?}");
        if let (Ok(e), Ok(p)) = (&r, &p) {
            let from_p: Vec<(u16, Proto)> = p.iter().map(|sp| (sp.container_port, sp.proto)).collect();
            assert_eq!(e, &from_p, "{s:?}");
        }
    }
    let v = r.ok()?;
    assert!(!v.is_empty(), "{s:?}");
    let (lo, proto) = v[0];
    for (i, &(p, pr)) in v.iter().enumerate() {
        assert!(p >= 1 && usize::from(p - lo) == i && pr == proto, "{s:?}: {v:?}");
    }
    let canon = format!("{}/{proto}", range_str(lo, v[v.len() - 1].0));
    assert_eq!(portspec::parse_expose(&canon).as_ref(), Ok(&v), "{s:?} re-rendered as {canon:?}");
    Some(v)
}

/// Host port selection for a parsed spec, with `busy` deciding which ports are taken: the port
/// returned is free and inside the spec's host range (or the ephemeral range).
pub fn check_choose(spec: &PortSpec, busy: &dyn Fn(u16) -> bool) -> Option<u16> {
    let in_use = |_: Ipv4Addr, p: u16, _: Proto| busy(p);
    let r = portspec::choose_host_port(spec, &in_use, portspec::DEFAULT_EPHEMERAL);
    let (lo, hi) = spec.host_ports.unwrap_or(portspec::DEFAULT_EPHEMERAL);
    match r {
        Ok(p) => {
            assert!((lo..=hi).contains(&p) && !busy(p), "{spec:?} got {p}");
            Some(p)
        }
        Err(e) => {
            // Only a range without a free port may fail.
            assert!((lo..=hi).all(busy), "{spec:?}: {e}");
            None
        }
    }
}

/// One entry of the PORTS column: `IP:A[-B]->A[-B]/proto` (same ports), `IP:H->C/proto`
/// (remapped) or `A[-B]/proto` (exposed only: no IP, public (0, 0)).
struct PortsEntry<'a> {
    ip: Option<&'a str>,
    public: (u16, u16),
    private: (u16, u16),
    proto: Proto,
}

fn ports_entry(e: &str) -> Option<PortsEntry<'_>> {
    let (body, proto) = e.rsplit_once('/')?;
    let range = |r: &str| -> Option<(u16, u16)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|p| (p, p)),
        }
    };
    let proto = proto.parse().ok()?;
    match body.split_once("->") {
        None => Some(PortsEntry { ip: None, public: (0, 0), private: range(body)?, proto }),
        Some((public, private)) => {
            let (ip, public) = public.rsplit_once(':')?;
            Some(PortsEntry { ip: Some(ip), public: range(public)?, private: range(private)?, proto })
        }
    }
}

/// The `docker ps` PORTS column lists every binding and every exposed-only port exactly where
/// docker would: same-port bindings in runs, remapped ones as `IP:H->C/proto`.
pub fn check_format_ports(bindings: &[PortBinding], exposed: &[(u16, Proto)]) {
    let col = portspec::format_ports(bindings, exposed);
    let entries: Vec<_> = if col.is_empty() { Vec::new() } else { col.split(", ").map(ports_entry).collect() };
    assert!(entries.iter().all(Option::is_some), "unparsable column {col:?}");
    let entries: Vec<_> = entries.into_iter().flatten().collect();
    let inside = |r: (u16, u16), p: u16| r.0 <= p && p <= r.1;
    for b in bindings {
        let ip = b.host_ip.to_string();
        let listed = entries.iter().any(|e| {
            e.ip == Some(ip.as_str())
                && e.proto == b.proto
                && if b.host_port == b.container_port {
                    e.public == e.private && inside(e.private, b.container_port)
                } else {
                    e.public == (b.host_port, b.host_port) && e.private == (b.container_port, b.container_port)
                }
        });
        assert!(listed, "{b} missing from {col:?}");
    }
    for &(port, proto) in exposed {
        let published = bindings.iter().any(|b| b.container_port == port && b.proto == proto);
        let listed = entries.iter().any(|e| e.ip.is_none() && e.proto == proto && inside(e.private, port));
        assert_eq!(listed, !published, "exposed {port}/{proto} in {col:?}");
    }
}

/// `docker service create --publish P:T[/proto]`: both ports 1-65535, canonical text parses back.
pub fn check_service_port(s: &str) -> Option<ServicePort> {
    let p = services::parse_service_port(s).ok()?;
    assert!(p.published >= 1 && p.target >= 1, "{s:?}: {p:?}");
    let canon = format!("{}:{}/{}", p.published, p.target, p.proto);
    assert_eq!(services::parse_service_port(&canon).as_ref(), Ok(&p), "{s:?} re-rendered as {canon:?}");
    Some(p)
}

fn contains_net(outer: Ipv4Network, inner: Ipv4Network) -> bool {
    outer.network() <= inner.network() && inner.broadcast() <= outer.broadcast()
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.network() <= b.broadcast() && b.network() <= a.broadcast()
}

/// A network's address pool as the daemon builds it (`network create --subnet --gateway
/// --ip-range`, or a default subnet): what it accepts is a usable, non-overlapping pool, and the
/// canonical text of an explicit pool is accepted again as the same pool.
pub fn check_pool(
    subnet: Option<&str>,
    gateway: Option<&str>,
    ip_range: Option<&str>,
    existing: &[(String, Ipv4Network)],
    pools: &[DefaultPool],
) -> Option<PoolConfig> {
    let cfg = match ipam::pool_config(subnet, gateway, ip_range, existing, pools) {
        Ok(c) => c,
        Err(IpamError::PoolsExhausted) => {
            // Exhausted means every candidate of every pool overlaps something (checked where
            // a pool has few candidates: the local pools, not the overlay /8 carved into /24s).
            for p in pools.iter().filter(|p| p.size - p.base.prefix() <= 8) {
                let mut sub = p.base.network();
                loop {
                    let cand = Ipv4Network::new(sub, p.size).expect("valid size");
                    assert!(existing.iter().any(|(_, n)| overlaps(cand, *n)), "{cand} was free");
                    match u32::from(cand.broadcast()).checked_add(1) {
                        Some(next) if p.base.contains(Ipv4Addr::from(next)) => sub = Ipv4Addr::from(next),
                        _ => break,
                    }
                }
            }
            return None;
        }
        Err(_) => return None,
    };
    let s = cfg.subnet;
    assert!((ipam::MIN_PREFIX..=ipam::MAX_PREFIX).contains(&s.prefix()) || subnet.is_none(), "{cfg:?}");
    assert!(s.contains(cfg.gateway), "{cfg:?}: gateway outside the subnet");
    assert!(cfg.gateway != s.network() && cfg.gateway != s.broadcast(), "{cfg:?}: gateway is not a host");
    if let Some(r) = cfg.ip_range {
        assert!(contains_net(s, r), "{cfg:?}: ip-range outside the subnet");
    }
    for (name, n) in existing {
        assert!(!overlaps(s, *n), "{cfg:?} overlaps {name} ({n})");
    }
    match subnet {
        Some(_) => {
            let (sub, gw) = (s.to_string(), cfg.gateway.to_string());
            let range = cfg.ip_range.map(|r| r.to_string());
            let again = ipam::pool_config(Some(&sub), Some(&gw), range.as_deref(), existing, pools);
            assert_eq!(again.as_ref(), Ok(&cfg), "canonical form of {subnet:?} {gateway:?} {ip_range:?}");
        }
        None => {
            // A default subnet: one aligned piece of a default pool, the first one free, gateway
            // at its first host.
            let pool = pools.iter().find(|p| contains_net(p.base, s) && p.size == s.prefix());
            assert!(pool.is_some(), "{s} is not carved from a default pool");
            assert_eq!(u32::from(cfg.gateway), u32::from(s.network()) + 1, "{cfg:?}");
            assert!(cfg.ip_range.is_none());
        }
    }
    Some(cfg)
}

/// Endpoint allocation in a pool: addresses handed out are distinct hosts of the pool (never
/// the gateway), explicit reservations obey the same rules, and released addresses come back.
pub fn check_allocator(cfg: &PoolConfig, reserve: &[Ipv4Addr], allocations: usize) {
    let mut a = Allocator::new(cfg.clone());
    let s = cfg.subnet;
    let special = |ip: Ipv4Addr| ip == s.network() || ip == s.broadcast() || ip == cfg.gateway;
    let mut held = Vec::new();
    for &ip in reserve {
        let was = a.is_allocated(ip);
        match a.reserve(ip) {
            Ok(()) => {
                assert!(s.contains(ip) && !special(ip) && !was, "{cfg:?} reserved {ip}");
                held.push(ip);
            }
            Err(_) => assert!(!s.contains(ip) || special(ip) || was, "{cfg:?} refused {ip}"),
        }
    }
    let pool = cfg.ip_range.unwrap_or(s);
    for _ in 0..allocations {
        match a.allocate() {
            Ok(ip) => {
                assert!(pool.contains(ip) && !special(ip) && !held.contains(&ip), "{cfg:?} allocated {ip}");
                held.push(ip);
            }
            Err(IpamError::Exhausted { .. }) => {
                let free = (u32::from(pool.network())..=u32::from(pool.broadcast()))
                    .map(Ipv4Addr::from)
                    .take(1 << 16)
                    .find(|ip| !special(*ip) && !held.contains(ip));
                assert_eq!(free, None, "{cfg:?}: exhausted with {free:?} free");
                break;
            }
            Err(e) => panic!("{cfg:?}: allocate failed: {e}"),
        }
    }
    if let Some(&ip) = held.first() {
        assert!(a.release(ip) && !a.release(ip), "{cfg:?}: release {ip}");
        a.reserve(ip).expect("a released address can be reserved again");
    }
    let mut listed: Vec<Ipv4Addr> = a.allocated().collect();
    held.sort();
    listed.sort();
    assert_eq!(listed, held, "{cfg:?}");
}

/// `--constraint`: a valid field, operator and value, and the canonical text parses back.
pub fn check_constraint(s: &str) -> Option<Constraint> {
    let c = services::parse_constraint(s).ok()?;
    let known = ["node.hostname", "node.role", "node.id"].contains(&c.field.as_str())
        || c.field.strip_prefix("node.labels.").is_some_and(|k| !k.is_empty());
    assert!(known, "{s:?}: field {:?}", c.field);
    assert!(!c.value.is_empty() && c.value.trim() == c.value, "{s:?}: value {:?}", c.value);
    if c.field == "node.role" {
        assert!(c.value == "manager" || c.value == "worker", "{s:?}");
    }
    let canon = format!("{}{}{}", c.field, if c.equal { "==" } else { "!=" }, c.value);
    assert!(!c.field.contains('=') && !c.value.contains('='), "{s:?}: '=' outside the operator");
    assert_eq!(services::parse_constraint(&canon).as_ref(), Ok(&c), "{s:?} re-rendered as {canon:?}");
    Some(c)
}

/// A constraint and its negation never agree on a node, and a node matches a set of constraints
/// exactly when it matches each one.
pub fn check_node_matches(n: &NodeRecord, cs: &[Constraint]) {
    let all = services::node_matches(n, cs);
    assert_eq!(all, cs.iter().all(|c| services::node_matches(n, std::slice::from_ref(c))));
    for c in cs {
        let neg = Constraint { equal: !c.equal, ..c.clone() };
        let (one, negated) = (services::node_matches(n, std::slice::from_ref(c)), services::node_matches(n, &[neg]));
        assert_ne!(one, negated, "{c:?} on {n:?}");
    }
}

/// Docker's name rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, written independently of `names`.
fn docker_name(s: &str, min: usize, max: usize) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) && (min..=max).contains(&s.len())
}

/// Container, network and service names, and short ids.
pub fn check_names(s: &str) {
    let c = names::validate_name(s);
    assert_eq!(c.is_ok(), docker_name(s, 2, usize::MAX), "container name {s:?}: {c:?}");
    let n = names::validate_network_name(s);
    assert_eq!(n.is_ok(), docker_name(s, 1, 128), "network name {s:?}: {n:?}");
    if let Err(e) = c.and(n) {
        assert!(e.contains(&format!("{s:?}")), "{e}");
    }
    let short = names::short_id(s);
    assert!(s.starts_with(short) && short.chars().count() == s.chars().count().min(12), "{s:?}: {short:?}");
}

/// `swarm join ... HOST[:PORT]`: an IPv4 address and a usable port.
pub fn check_manager_addr(s: &str) -> Option<(Ipv4Addr, u16)> {
    let (ip, port) = cluster::parse_manager_addr(s).ok()?;
    assert_ne!(port, 0, "{s:?}: port 0");
    assert_eq!(cluster::parse_manager_addr(&format!("{ip}:{port}")), Ok((ip, port)), "{s:?}");
    Some((ip, port))
}

/// `--cluster-store etcd://A:P[,B:P]`: at least one endpoint, each one address.
pub fn check_store(s: &str) -> Option<Vec<String>> {
    let eps = cluster::parse_store(s).ok()?;
    assert!(!eps.is_empty(), "{s:?}");
    for e in &eps {
        let addr = e.strip_prefix("http://").expect("http endpoint");
        assert!(!addr.is_empty() && !addr.contains(','), "{s:?}: {e:?}");
    }
    Some(eps)
}
