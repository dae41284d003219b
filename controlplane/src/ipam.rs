//! IPv4 address management with docker semantics: choosing and validating a network's
//! subnet/gateway/ip-range, and handing out endpoint addresses inside it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Narrowest and widest prefixes accepted for a user subnet. /30 is the smallest
/// subnet that still has a gateway plus one endpoint address.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {value:?}: {reason}")]
    InvalidSubnet { value: String, reason: String },
    #[error("invalid gateway {value:?}: {reason}")]
    InvalidGateway { value: String, reason: String },
    #[error("invalid ip-range {value:?}: {reason}")]
    InvalidIpRange { value: String, reason: String },
    #[error("gateway {gateway:?} was given without a subnet: a gateway can only be set together with --subnet")]
    GatewayWithoutSubnet { gateway: String },
    #[error("ip-range {ip_range:?} was given without a subnet: an ip-range can only be set together with --subnet")]
    IpRangeWithoutSubnet { ip_range: String },
    #[error("subnet {subnet} overlaps with network {network:?} ({existing})")]
    Overlap { subnet: Ipv4Network, network: String, existing: Ipv4Network },
    #[error("invalid default address pool {base}/{size}: {reason}")]
    InvalidDefaultPool { base: Ipv4Network, size: u8, reason: String },
    #[error("all predefined address pools have been fully subnetted: no free subnet left for a new network")]
    PoolsExhausted,
    #[error("address {ip} is not in subnet {subnet}")]
    OutOfSubnet { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("address {ip} cannot be assigned: it is the {role} of subnet {subnet}")]
    Reserved { ip: Ipv4Addr, role: ReservedRole, subnet: Ipv4Network },
    #[error("address {ip} is already in use in subnet {subnet}")]
    InUse { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("no free address left in {}", describe_pool(*.subnet, *.ip_range))]
    Exhausted { subnet: Ipv4Network, ip_range: Option<Ipv4Network> },
}

fn describe_pool(subnet: Ipv4Network, ip_range: Option<Ipv4Network>) -> String {
    match ip_range {
        Some(r) => format!("ip-range {r} of subnet {subnet}"),
        None => format!("subnet {subnet}"),
    }
}

/// Which special address of a subnet an explicit request collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedRole {
    NetworkAddress,
    BroadcastAddress,
    Gateway,
}

impl fmt::Display for ReservedRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReservedRole::NetworkAddress => "network address",
            ReservedRole::BroadcastAddress => "broadcast address",
            ReservedRole::Gateway => "gateway",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Network>,
}

/// A block of address space that is carved into equally sized subnets on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    pub base: Ipv4Network,
    /// Prefix length of each subnet handed out from `base`.
    pub size: u8,
}

fn net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Network {
    // Only called with literal prefixes <= 32, so construction cannot fail.
    Ipv4Network::new_checked(Ipv4Addr::new(a, b, c, d), prefix).expect("static prefix <= 32")
}

/// Docker's local-scope defaults: 172.17-31.0.0/16, then 192.168.0.0/16 as /20s.
pub fn local_default_pools() -> Vec<DefaultPool> {
    vec![
        DefaultPool { base: net(172, 17, 0, 0, 16), size: 16 },
        DefaultPool { base: net(172, 18, 0, 0, 16), size: 16 },
        DefaultPool { base: net(172, 19, 0, 0, 16), size: 16 },
        DefaultPool { base: net(172, 20, 0, 0, 14), size: 16 },
        DefaultPool { base: net(172, 24, 0, 0, 14), size: 16 },
        DefaultPool { base: net(172, 28, 0, 0, 14), size: 16 },
        DefaultPool { base: net(192, 168, 0, 0, 16), size: 20 },
    ]
}

/// Docker's global-scope (overlay) defaults: 10.0.0.0/8 as /24s.
pub fn overlay_default_pools() -> Vec<DefaultPool> {
    vec![DefaultPool { base: net(10, 0, 0, 0, 8), size: 24 }]
}

fn first_u32(n: Ipv4Network) -> u32 {
    u32::from(n.network())
}

fn last_u32(n: Ipv4Network) -> u32 {
    u32::from(n.broadcast())
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    first_u32(a) <= last_u32(b) && first_u32(b) <= last_u32(a)
}

/// Parses `a.b.c.d/len` strictly: a prefix is required and the address must be the
/// network address, because silently masking "172.20.0.1/16" hides typos.
fn parse_cidr(value: &str) -> Result<Ipv4Network, String> {
    let (addr, prefix) = value
        .split_once('/')
        .ok_or_else(|| "expected CIDR notation such as 172.20.0.0/16 (missing /prefix)".to_string())?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 2 {
        return Err(format!("prefix length {prefix:?} is not a number between 0 and 32"));
    }
    let prefix: u8 =
        prefix.parse().map_err(|_| format!("prefix length {prefix:?} is not a number between 0 and 32"))?;
    let n = Ipv4Network::new(addr, prefix).map_err(|_| format!("prefix length {prefix} is not between 0 and 32"))?;
    if n.network() != addr {
        return Err(format!(
            "{addr} is not the network address of a /{prefix} (did you mean {}/{prefix}?)",
            n.network()
        ));
    }
    Ok(n)
}

fn parse_addr(value: &str) -> Result<Ipv4Addr, String> {
    if value.contains('/') {
        return Err("expected a plain IPv4 address, not CIDR notation".to_string());
    }
    value.parse().map_err(|_| "not an IPv4 address".to_string())
}

/// Builds the address pool of a new network.
///
/// `existing` lists the subnets of every other network (by name) so overlaps are
/// refused up front rather than producing ambiguous routes later.
pub fn pool_config(
    subnet: Option<&str>,
    gateway: Option<&str>,
    ip_range: Option<&str>,
    existing: &[(String, Ipv4Network)],
    default_pools: &[DefaultPool],
) -> Result<PoolConfig, IpamError> {
    let Some(subnet_str) = subnet else {
        if let Some(g) = gateway {
            return Err(IpamError::GatewayWithoutSubnet { gateway: g.to_string() });
        }
        if let Some(r) = ip_range {
            return Err(IpamError::IpRangeWithoutSubnet { ip_range: r.to_string() });
        }
        let subnet = pick_default_subnet(existing, default_pools)?;
        return Ok(PoolConfig { subnet, gateway: first_host(subnet), ip_range: None });
    };

    let subnet =
        parse_cidr(subnet_str).map_err(|reason| IpamError::InvalidSubnet { value: subnet_str.to_string(), reason })?;
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&subnet.prefix()) {
        return Err(IpamError::InvalidSubnet {
            value: subnet_str.to_string(),
            reason: format!(
                "prefix length /{} is outside the supported range /{MIN_PREFIX} to /{MAX_PREFIX}",
                subnet.prefix()
            ),
        });
    }

    let gateway = match gateway {
        None => first_host(subnet),
        Some(g) => {
            let invalid = |reason: String| IpamError::InvalidGateway { value: g.to_string(), reason };
            let ip = parse_addr(g).map_err(invalid)?;
            if !subnet.contains(ip) {
                return Err(invalid(format!("not inside subnet {subnet}")));
            }
            if ip == subnet.network() {
                return Err(invalid(format!("it is the network address of subnet {subnet}")));
            }
            if ip == subnet.broadcast() {
                return Err(invalid(format!("it is the broadcast address of subnet {subnet}")));
            }
            ip
        }
    };

    let ip_range = match ip_range {
        None => None,
        Some(r) => {
            let invalid = |reason: String| IpamError::InvalidIpRange { value: r.to_string(), reason };
            let range = parse_cidr(r).map_err(invalid)?;
            if range.prefix() < subnet.prefix() || !subnet.contains(range.network()) {
                return Err(invalid(format!("not inside subnet {subnet}")));
            }
            Some(range)
        }
    };

    if let Some((name, other)) = existing.iter().find(|(_, other)| overlaps(subnet, *other)) {
        return Err(IpamError::Overlap { subnet, network: name.clone(), existing: *other });
    }

    Ok(PoolConfig { subnet, gateway, ip_range })
}

fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(first_u32(subnet).saturating_add(1))
}

fn pick_default_subnet(existing: &[(String, Ipv4Network)], pools: &[DefaultPool]) -> Result<Ipv4Network, IpamError> {
    for pool in pools {
        if pool.size < pool.base.prefix() || pool.size > 32 {
            return Err(IpamError::InvalidDefaultPool {
                base: pool.base,
                size: pool.size,
                reason: format!(
                    "subnet size /{} must be between the base prefix /{} and /32",
                    pool.size,
                    pool.base.prefix()
                ),
            });
        }
        let step: u64 = 1u64 << (32 - pool.size);
        let start = u64::from(first_u32(pool.base));
        let end = u64::from(last_u32(pool.base));
        let mut cur = start;
        while cur <= end {
            // `cur` stays within the u32 range because end <= u32::MAX; the size was
            // validated above, so construction cannot fail.
            let Some(candidate) = Ipv4Network::new_checked(Ipv4Addr::from(cur as u32), pool.size) else {
                break;
            };
            match existing.iter().map(|(_, n)| *n).filter(|n| overlaps(candidate, *n)).max_by_key(|n| last_u32(*n)) {
                None => return Ok(candidate),
                // Skip every candidate covered by the blocking network in one jump;
                // this keeps /24 carving of a /8 fast even next to large networks.
                Some(blocker) => {
                    let past = u64::from(last_u32(blocker)) + 1;
                    let aligned = past.div_ceil(step) * step;
                    cur = aligned.max(cur + step);
                }
            }
        }
    }
    Err(IpamError::PoolsExhausted)
}

/// Endpoint address allocator for one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocator {
    config: PoolConfig,
    allocated: BTreeSet<Ipv4Addr>,
}

impl Allocator {
    pub fn new(config: PoolConfig) -> Self {
        Allocator { config, allocated: BTreeSet::new() }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn reserved_role(&self, ip: Ipv4Addr) -> Option<ReservedRole> {
        let s = self.config.subnet;
        if ip == s.network() {
            Some(ReservedRole::NetworkAddress)
        } else if ip == s.broadcast() {
            Some(ReservedRole::BroadcastAddress)
        } else if ip == self.config.gateway {
            Some(ReservedRole::Gateway)
        } else {
            None
        }
    }

    /// Returns the lowest free address, so addresses are predictable like docker's.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let pool = self.config.ip_range.unwrap_or(self.config.subnet);
        let (lo, hi) = (first_u32(pool), last_u32(pool));
        let mut cur = lo;
        loop {
            let ip = Ipv4Addr::from(cur);
            if self.reserved_role(ip).is_none() && !self.allocated.contains(&ip) {
                self.allocated.insert(ip);
                return Ok(ip);
            }
            if cur == hi {
                return Err(IpamError::Exhausted { subnet: self.config.subnet, ip_range: self.config.ip_range });
            }
            cur += 1;
        }
    }

    /// Claims a specific address (`--ip`). It may lie outside ip_range, matching
    /// docker, where ip-range only limits dynamic allocation.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let subnet = self.config.subnet;
        if !subnet.contains(ip) {
            return Err(IpamError::OutOfSubnet { ip, subnet });
        }
        if let Some(role) = self.reserved_role(ip) {
            return Err(IpamError::Reserved { ip, role, subnet });
        }
        if !self.allocated.insert(ip) {
            return Err(IpamError::InUse { ip, subnet });
        }
        Ok(())
    }

    /// Returns whether the address was allocated; releasing a free address is harmless
    /// so that cleanup paths can be idempotent.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.allocated.remove(&ip)
    }

    /// Endpoint addresses only; the gateway is not counted as allocated.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.allocated.contains(&ip)
    }

    pub fn allocated(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.allocated.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Network {
        s.parse().expect("test network")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn existing(list: &[(&str, &str)]) -> Vec<(String, Ipv4Network)> {
        list.iter().map(|(name, net)| (name.to_string(), n(net))).collect()
    }

    fn cfg(subnet: &str, gateway: Option<&str>, range: Option<&str>) -> PoolConfig {
        pool_config(Some(subnet), gateway, range, &[], &local_default_pools()).expect("valid config")
    }

    #[test]
    fn explicit_subnet_defaults_gateway_to_first_host() {
        let c = cfg("172.20.0.0/16", None, None);
        assert_eq!(c, PoolConfig { subnet: n("172.20.0.0/16"), gateway: ip("172.20.0.1"), ip_range: None });
    }

    #[test]
    fn explicit_gateway_and_range() {
        let c = cfg("10.1.0.0/16", Some("10.1.255.254"), Some("10.1.5.0/24"));
        assert_eq!(c.gateway, ip("10.1.255.254"));
        assert_eq!(c.ip_range, Some(n("10.1.5.0/24")));
        // A range equal to the whole subnet is allowed.
        let c = cfg("10.1.0.0/16", None, Some("10.1.0.0/16"));
        assert_eq!(c.ip_range, Some(n("10.1.0.0/16")));
    }

    #[test]
    fn prefix_bounds() {
        assert!(pool_config(Some("10.0.0.0/8"), None, None, &[], &[]).is_ok());
        assert!(pool_config(Some("10.0.0.0/30"), None, None, &[], &[]).is_ok());
        for bad in ["8.0.0.0/7", "10.0.0.0/31", "10.0.0.0/32", "0.0.0.0/0"] {
            let e = pool_config(Some(bad), None, None, &[], &[]).unwrap_err();
            assert!(matches!(e, IpamError::InvalidSubnet { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("outside the supported range /8 to /30"), "{e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn subnet_not_network_address_is_refused() {
        let e = pool_config(Some("172.20.0.1/16"), None, None, &[], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subnet \"172.20.0.1/16\": 172.20.0.1 is not the network address of a /16 (did you mean 172.20.0.0/16?)"
        );
    }

    #[test]
    fn malformed_subnets() {
        for (bad, why) in [
            ("172.20.0.0", "missing /prefix"),
            ("172.20.0/16", "is not an IPv4 address"),
            ("fd00::/64", "is not an IPv4 address"),
            ("172.20.0.0/", "is not a number"),
            ("172.20.0.0/x", "is not a number"),
            ("172.20.0.0/255.255.0.0", "is not a number"),
            ("172.20.0.0/33", "not between 0 and 32"),
            ("172.20.0.0/16/1", "is not a number"),
            ("", "missing /prefix"),
        ] {
            let e = pool_config(Some(bad), None, None, &[], &[]).unwrap_err();
            assert!(matches!(e, IpamError::InvalidSubnet { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn gateway_errors() {
        for (g, why) in [
            ("172.21.0.1", "not inside subnet 172.20.0.0/16"),
            ("172.20.0.0", "network address"),
            ("172.20.255.255", "broadcast address"),
            ("nope", "not an IPv4 address"),
            ("172.20.0.1/16", "not CIDR notation"),
        ] {
            let e = pool_config(Some("172.20.0.0/16"), Some(g), None, &[], &[]).unwrap_err();
            assert!(matches!(e, IpamError::InvalidGateway { .. }), "{g}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(g), "{g}: {msg}");
        }
    }

    #[test]
    fn ip_range_errors() {
        for (r, why) in [
            ("172.21.0.0/24", "not inside subnet"),
            ("172.0.0.0/8", "not inside subnet"),
            ("172.20.0.1/24", "not the network address"),
            ("bogus", "missing /prefix"),
        ] {
            let e = pool_config(Some("172.20.0.0/16"), None, Some(r), &[], &[]).unwrap_err();
            assert!(matches!(e, IpamError::InvalidIpRange { .. }), "{r}: {e}");
            assert!(e.to_string().contains(why) && e.to_string().contains(r), "{r}: {e}");
        }
    }

    #[test]
    fn gateway_or_range_without_subnet() {
        let e = pool_config(None, Some("10.0.0.1"), None, &[], &local_default_pools()).unwrap_err();
        assert_eq!(e, IpamError::GatewayWithoutSubnet { gateway: "10.0.0.1".into() });
        assert!(e.to_string().contains("\"10.0.0.1\" was given without a subnet"));
        let e = pool_config(None, None, Some("10.0.0.0/24"), &[], &local_default_pools()).unwrap_err();
        assert!(matches!(e, IpamError::IpRangeWithoutSubnet { .. }));
        assert!(e.to_string().contains("10.0.0.0/24"));
    }

    #[test]
    fn overlap_names_the_network() {
        let ex = existing(&[("bridge", "172.17.0.0/16"), ("frontend", "172.18.0.0/16")]);
        let e = pool_config(Some("172.18.0.0/16"), None, None, &ex, &[]).unwrap_err();
        assert_eq!(e.to_string(), "subnet 172.18.0.0/16 overlaps with network \"frontend\" (172.18.0.0/16)");
        // Partial overlaps in both directions.
        let e = pool_config(Some("172.18.5.0/24"), None, None, &ex, &[]).unwrap_err();
        assert!(matches!(e, IpamError::Overlap { ref network, .. } if network == "frontend"));
        let e = pool_config(Some("172.16.0.0/12"), None, None, &ex, &[]).unwrap_err();
        assert!(matches!(e, IpamError::Overlap { ref network, .. } if network == "bridge"));
        // Adjacent is fine.
        assert!(pool_config(Some("172.19.0.0/16"), None, None, &ex, &[]).is_ok());
    }

    #[test]
    fn default_sequence_matches_docker() {
        let pools = local_default_pools();
        let mut ex: Vec<(String, Ipv4Network)> = Vec::new();
        let bridge = pool_config(Some("172.17.0.0/16"), None, None, &ex, &pools).unwrap();
        assert_eq!(bridge.gateway, ip("172.17.0.1"));
        ex.push(("bridge".into(), bridge.subnet));
        let first = pool_config(None, None, None, &ex, &pools).unwrap();
        assert_eq!(first, PoolConfig { subnet: n("172.18.0.0/16"), gateway: ip("172.18.0.1"), ip_range: None });
        ex.push(("net1".into(), first.subnet));
        let second = pool_config(None, None, None, &ex, &pools).unwrap();
        assert_eq!(second.subnet, n("172.19.0.0/16"));
        assert_eq!(second.gateway, ip("172.19.0.1"));
    }

    #[test]
    fn default_pools_cover_docker_ranges() {
        let pools = local_default_pools();
        let mut ex = Vec::new();
        let mut got = Vec::new();
        loop {
            match pool_config(None, None, None, &ex, &pools) {
                Ok(c) => {
                    got.push(c.subnet);
                    ex.push((format!("n{}", got.len()), c.subnet));
                }
                Err(e) => {
                    assert_eq!(e, IpamError::PoolsExhausted);
                    assert!(e.to_string().contains("fully subnetted"));
                    break;
                }
            }
        }
        // 15 /16s in 172.17-31 plus 16 /20s in 192.168/16.
        assert_eq!(got.len(), 15 + 16);
        assert_eq!(got[0], n("172.17.0.0/16"));
        assert_eq!(got[14], n("172.31.0.0/16"));
        assert_eq!(got[15], n("192.168.0.0/20"));
        assert_eq!(got[16], n("192.168.16.0/20"));
        assert_eq!(got[30], n("192.168.240.0/20"));
    }

    #[test]
    fn default_pick_skips_partial_overlaps() {
        let pools = local_default_pools();
        // A small user network inside 172.17/16 still blocks that whole /16.
        let ex = existing(&[("a", "172.17.3.0/24"), ("b", "172.16.0.0/15")]);
        let c = pool_config(None, None, None, &ex, &pools).unwrap();
        assert_eq!(c.subnet, n("172.18.0.0/16"));
        // A big blocker is jumped over in one go.
        let ex = existing(&[("big", "172.16.0.0/12")]);
        let c = pool_config(None, None, None, &ex, &pools).unwrap();
        assert_eq!(c.subnet, n("192.168.0.0/20"));
    }

    #[test]
    fn overlay_pools() {
        let pools = overlay_default_pools();
        let c = pool_config(None, None, None, &[], &pools).unwrap();
        assert_eq!(c.subnet, n("10.0.0.0/24"));
        assert_eq!(c.gateway, ip("10.0.0.1"));
        let ex = existing(&[("x", "10.0.0.0/24"), ("y", "10.0.1.0/25")]);
        assert_eq!(pool_config(None, None, None, &ex, &pools).unwrap().subnet, n("10.0.2.0/24"));
        // Near-full /8 is still found quickly thanks to blocker jumps.
        let ex = existing(&[("huge", "10.0.0.0/9"), ("h2", "10.128.0.0/10"), ("h3", "10.192.0.0/11")]);
        assert_eq!(pool_config(None, None, None, &ex, &pools).unwrap().subnet, n("10.224.0.0/24"));
        let ex = existing(&[("all", "10.0.0.0/8")]);
        assert_eq!(pool_config(None, None, None, &ex, &pools).unwrap_err(), IpamError::PoolsExhausted);
    }

    #[test]
    fn invalid_default_pool() {
        let bad = [DefaultPool { base: n("10.0.0.0/16"), size: 8 }];
        let e = pool_config(None, None, None, &[], &bad).unwrap_err();
        assert!(matches!(e, IpamError::InvalidDefaultPool { .. }));
        assert!(e.to_string().contains("10.0.0.0/16"), "{e}");
        let bad = [DefaultPool { base: n("10.0.0.0/16"), size: 33 }];
        assert!(matches!(pool_config(None, None, None, &[], &bad), Err(IpamError::InvalidDefaultPool { .. })));
        assert_eq!(pool_config(None, None, None, &[], &[]).unwrap_err(), IpamError::PoolsExhausted);
    }

    #[test]
    fn pool_config_serde_roundtrip() {
        let c = cfg("10.1.0.0/16", None, Some("10.1.2.0/24"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"subnet":"10.1.0.0/16","gateway":"10.1.0.1","ip_range":"10.1.2.0/24"}"#);
        assert_eq!(serde_json::from_str::<PoolConfig>(&json).unwrap(), c);
    }

    #[test]
    fn allocate_lowest_free_skipping_gateway() {
        let mut a = Allocator::new(cfg("172.18.0.0/16", None, None));
        assert_eq!(a.allocate().unwrap(), ip("172.18.0.2"));
        assert_eq!(a.allocate().unwrap(), ip("172.18.0.3"));
        assert!(a.release(ip("172.18.0.2")));
        assert!(!a.release(ip("172.18.0.2")));
        assert_eq!(a.allocate().unwrap(), ip("172.18.0.2"));
        assert_eq!(a.allocate().unwrap(), ip("172.18.0.4"));
        assert!(!a.is_allocated(ip("172.18.0.1")));
        assert_eq!(a.allocated().collect::<Vec<_>>(), vec![ip("172.18.0.2"), ip("172.18.0.3"), ip("172.18.0.4")]);
    }

    #[test]
    fn allocate_with_custom_gateway_uses_first_host() {
        let mut a = Allocator::new(cfg("10.0.0.0/29", Some("10.0.0.6"), None));
        let got: Vec<_> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"].map(ip));
        let e = a.allocate().unwrap_err();
        assert_eq!(e.to_string(), "no free address left in subnet 10.0.0.0/29");
    }

    #[test]
    fn allocate_inside_ip_range() {
        let mut a = Allocator::new(cfg("10.0.0.0/24", None, Some("10.0.0.8/30")));
        let got: Vec<_> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got, ["10.0.0.8", "10.0.0.9", "10.0.0.10", "10.0.0.11"].map(ip));
        let e = a.allocate().unwrap_err();
        assert_eq!(e, IpamError::Exhausted { subnet: n("10.0.0.0/24"), ip_range: Some(n("10.0.0.8/30")) });
        assert_eq!(e.to_string(), "no free address left in ip-range 10.0.0.8/30 of subnet 10.0.0.0/24");
        // Static addresses may still be taken outside the range.
        a.reserve(ip("10.0.0.100")).unwrap();
    }

    #[test]
    fn ip_range_at_subnet_edges_skips_network_and_broadcast() {
        let mut a = Allocator::new(cfg("10.0.0.0/30", Some("10.0.0.2"), Some("10.0.0.0/30")));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.1"));
        assert!(matches!(a.allocate(), Err(IpamError::Exhausted { .. })));
    }

    #[test]
    fn smallest_subnet_has_one_endpoint() {
        let mut a = Allocator::new(cfg("192.168.1.0/30", None, None));
        assert_eq!(a.allocate().unwrap(), ip("192.168.1.2"));
        assert!(matches!(a.allocate(), Err(IpamError::Exhausted { .. })));
    }

    #[test]
    fn allocation_at_top_of_address_space() {
        // The last subnet of the space ends at 255.255.255.255; the scan must not overflow.
        let mut a = Allocator::new(cfg("255.255.255.252/30", None, None));
        assert_eq!(a.allocate().unwrap(), ip("255.255.255.254"));
        assert!(matches!(a.allocate(), Err(IpamError::Exhausted { .. })));
    }

    #[test]
    fn reserve_errors_say_why() {
        let mut a = Allocator::new(cfg("172.18.0.0/16", None, None));
        a.reserve(ip("172.18.0.10")).unwrap();
        assert!(a.is_allocated(ip("172.18.0.10")));
        let cases = [
            ("172.19.0.5", "address 172.19.0.5 is not in subnet 172.18.0.0/16"),
            ("172.18.0.0", "address 172.18.0.0 cannot be assigned: it is the network address of subnet 172.18.0.0/16"),
            (
                "172.18.255.255",
                "address 172.18.255.255 cannot be assigned: it is the broadcast address of subnet 172.18.0.0/16",
            ),
            ("172.18.0.1", "address 172.18.0.1 cannot be assigned: it is the gateway of subnet 172.18.0.0/16"),
            ("172.18.0.10", "address 172.18.0.10 is already in use in subnet 172.18.0.0/16"),
        ];
        for (addr, msg) in cases {
            assert_eq!(a.reserve(ip(addr)).unwrap_err().to_string(), msg);
        }
        // Allocation steps around reserved addresses.
        a.reserve(ip("172.18.0.2")).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("172.18.0.3"));
    }

    #[test]
    fn allocator_serde_roundtrip() {
        let mut a = Allocator::new(cfg("10.9.0.0/24", None, None));
        a.allocate().unwrap();
        a.reserve(ip("10.9.0.77")).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        let back: Allocator = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert!(back.is_allocated(ip("10.9.0.77")));
        assert_eq!(back.config().subnet, n("10.9.0.0/24"));
    }
}
