//! Parsing of docker's `-p/--publish` and `--expose` port specifications, host port
//! selection, and rendering of the `docker ps` PORTS column.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Docker's (and Linux's) default ephemeral range, used when no host port is given.
pub const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = PortSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(PortSpecError::UnknownProto { proto: s.to_string() }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("invalid port specification {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("unknown protocol {proto:?}: expected \"tcp\" or \"udp\"")]
    UnknownProto { proto: String },
    #[error("host port {} is already in use", host_addr(*.host_ip, *.port, *.proto))]
    InUse { host_ip: Option<Ipv4Addr>, port: u16, proto: Proto },
    #[error("no free host port in range {}", host_range(*.host_ip, *.lo, *.hi, *.proto))]
    RangeExhausted { host_ip: Option<Ipv4Addr>, lo: u16, hi: u16, proto: Proto },
    #[error("no free host port in the ephemeral range {}", host_range(*.host_ip, *.lo, *.hi, *.proto))]
    EphemeralExhausted { host_ip: Option<Ipv4Addr>, lo: u16, hi: u16, proto: Proto },
    #[error("invalid ephemeral port range {lo}-{hi}: {reason}")]
    InvalidEphemeral { lo: u16, hi: u16, reason: String },
}

// A wildcard address is left out so the common message reads "host port 8080/tcp".
fn host_prefix(ip: Option<Ipv4Addr>) -> String {
    match ip {
        Some(ip) if !ip.is_unspecified() => format!("{ip}:"),
        _ => String::new(),
    }
}

fn host_addr(ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> String {
    format!("{}{port}/{proto}", host_prefix(ip))
}

fn host_range(ip: Option<Ipv4Addr>, lo: u16, hi: u16, proto: Proto) -> String {
    format!("{}{lo}-{hi}/{proto}", host_prefix(ip))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Option<Ipv4Addr>,
    /// None = any free port; (a, a) = exactly a; (lo, hi) = any free port in the range.
    pub host_ports: Option<(u16, u16)>,
    pub container_port: u16,
    pub proto: Proto,
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    // Digits only, so a parse failure can only mean overflow.
    let n: u64 = s.parse().unwrap_or(u64::MAX);
    match n {
        0 => Err(format!("{what} 0 is not allowed (valid ports are 1-65535)")),
        1..=65535 => Ok(n as u16),
        _ => Err(format!("{what} {s} is out of range (valid ports are 1-65535)")),
    }
}

fn parse_range(s: &str, what: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        None => parse_port(s, what).map(|p| (p, p)),
        Some((lo, hi)) => {
            let lo = parse_port(lo, &format!("{what} range start"))?;
            let hi = parse_port(hi, &format!("{what} range end"))?;
            if lo > hi {
                return Err(format!("{what} range {s} is reversed ({lo} > {hi})"));
            }
            Ok((lo, hi))
        }
    }
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    if s.is_empty() {
        return Err("empty protocol after '/' (expected tcp or udp)".to_string());
    }
    s.parse::<Proto>().map_err(|e| e.to_string())
}

/// Splits off an optional "/proto" suffix; the suffix applies to the whole spec.
fn split_proto(s: &str) -> Result<(&str, Proto), String> {
    match s.split_once('/') {
        None => Ok((s, Proto::Tcp)),
        Some((body, proto)) => {
            if proto.contains('/') {
                return Err("more than one '/' (expected PORT/PROTO)".to_string());
            }
            Ok((body, parse_proto(proto)?))
        }
    }
}

const IPV6_UNSUPPORTED: &str = "IPv6 host addresses are not supported";

fn parse_host_ip(s: &str) -> Result<Ipv4Addr, String> {
    if s.is_empty() {
        return Err("empty host IP (omit it, or use 0.0.0.0 for all addresses)".to_string());
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let unbracketed = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    if unbracketed.parse::<Ipv6Addr>().is_ok() {
        return Err(IPV6_UNSUPPORTED.to_string());
    }
    Err(format!("host IP {s:?} is not a valid IPv4 address"))
}

/// Parses one `-p` value. A container port range yields one spec per port.
pub fn parse_publish(s: &str) -> Result<Vec<PortSpec>, PortSpecError> {
    parse_publish_inner(s).map_err(|reason| PortSpecError::Invalid { spec: s.to_string(), reason })
}

fn parse_publish_inner(s: &str) -> Result<Vec<PortSpec>, String> {
    if s.is_empty() {
        return Err("empty specification".to_string());
    }
    let (body, proto) = split_proto(s)?;

    // Recognise IPv6 hosts first so they get a precise message instead of "too many colons".
    if let Some(rest) = body.strip_prefix('[') {
        let Some((inside, _)) = rest.split_once(']') else {
            return Err("unterminated '[' in host IP".to_string());
        };
        parse_host_ip(&format!("[{inside}]"))?;
    }
    let parts: Vec<&str> = body.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => {
            if h.is_empty() {
                return Err("empty host port before ':' (omit it to pick a free port)".to_string());
            }
            (None, Some(*h), *c)
        }
        [ip, h, c] => (Some(*ip), (!h.is_empty()).then_some(*h), *c),
        _ => {
            let mut it = body.rsplitn(3, ':');
            let (_, _, host) = (it.next(), it.next(), it.next().unwrap_or(""));
            if host.parse::<Ipv6Addr>().is_ok() {
                return Err(IPV6_UNSUPPORTED.to_string());
            }
            return Err(format!(
                "too many ':' separators (expected [IP:][HOST_PORT:]CONTAINER_PORT, found {} parts)",
                parts.len()
            ));
        }
    };
    let host_ip = ip.map(parse_host_ip).transpose()?;
    let (clo, chi) = parse_range(container, "container port")?;
    let host = host.map(|h| parse_range(h, "host port")).transpose()?;

    let container_len = u32::from(chi - clo);
    let spec = |host_ports, container_port| PortSpec { host_ip, host_ports, container_port, proto };
    match host {
        // Host range with a single container port: pick any free port from the range.
        Some((hlo, hhi)) if clo == chi => Ok(vec![spec(Some((hlo, hhi)), clo)]),
        Some((hlo, hhi)) => {
            if u32::from(hhi - hlo) != container_len {
                return Err(format!(
                    "host ports {} and container ports {clo}-{chi} differ in length ({} vs {})",
                    if hlo == hhi { hlo.to_string() } else { format!("{hlo}-{hhi}") },
                    u32::from(hhi - hlo) + 1,
                    container_len + 1
                ));
            }
            Ok((clo..=chi).zip(hlo..=hhi).map(|(c, h)| spec(Some((h, h)), c)).collect())
        }
        None => Ok((clo..=chi).map(|c| spec(None, c)).collect()),
    }
}

/// Parses one `--expose` value: `80`, `80/udp`, `8000-8010/tcp`.
pub fn parse_expose(s: &str) -> Result<Vec<(u16, Proto)>, PortSpecError> {
    let inner = || -> Result<Vec<(u16, Proto)>, String> {
        if s.is_empty() {
            return Err("empty specification".to_string());
        }
        let (body, proto) = split_proto(s)?;
        if body.contains(':') {
            return Err("--expose takes PORT[-PORT][/PROTO], without host part".to_string());
        }
        let (lo, hi) = parse_range(body, "port")?;
        Ok((lo..=hi).map(|p| (p, proto)).collect())
    };
    inner().map_err(|reason| PortSpecError::Invalid { spec: s.to_string(), reason })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    /// 0.0.0.0 means all addresses.
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}->{}/{}", self.host_ip, self.host_port, self.container_port, self.proto)
    }
}

/// The PORTS column of `docker ps`, reproducing docker's `DisplayablePorts`: entries
/// sorted by container port, consecutive runs collapsed into ranges
/// (`0.0.0.0:8000-8001->8000-8001/tcp`, `53-54/udp`), and bindings whose host port
/// differs from the container port listed last.
pub fn format_ports(bindings: &[PortBinding], exposed_unpublished: &[(u16, Proto)]) -> String {
    struct Entry {
        ip: String,
        public: u16,
        private: u16,
        proto: Proto,
    }
    let mut entries: Vec<Entry> = bindings
        .iter()
        .map(|b| Entry { ip: b.host_ip.to_string(), public: b.host_port, private: b.container_port, proto: b.proto })
        .collect();
    for &(port, proto) in exposed_unpublished {
        // Docker never lists a published port a second time as merely exposed.
        let published = bindings.iter().any(|b| b.container_port == port && b.proto == proto);
        let duplicate = entries.iter().any(|e| e.ip.is_empty() && e.private == port && e.proto == proto);
        if !published && !duplicate {
            entries.push(Entry { ip: String::new(), public: 0, private: port, proto });
        }
    }
    // Docker compares IPs as strings; do the same so the order matches byte for byte.
    entries.sort_by(|a, b| {
        (a.private, &a.ip, a.public, a.proto.as_str()).cmp(&(b.private, &b.ip, b.public, b.proto.as_str()))
    });

    let form_group = |ip: &str, proto: Proto, first: u16, last: u16| {
        let ports = if first == last { first.to_string() } else { format!("{first}-{last}") };
        if ip.is_empty() { format!("{ports}/{proto}") } else { format!("{ip}:{ports}->{ports}/{proto}") }
    };

    let mut result = Vec::new();
    let mut host_mappings = Vec::new();
    let mut groups: HashMap<(String, Proto), (u16, u16)> = HashMap::new();
    let mut group_order: Vec<(String, Proto)> = Vec::new();
    for e in &entries {
        if !e.ip.is_empty() && e.public != e.private {
            host_mappings.push(format!("{}:{}->{}/{}", e.ip, e.public, e.private, e.proto));
            continue;
        }
        let key = (e.ip.clone(), e.proto);
        match groups.get_mut(&key) {
            None => {
                groups.insert(key.clone(), (e.private, e.private));
                group_order.push(key);
            }
            Some(g) if u32::from(e.private) == u32::from(g.1) + 1 => g.1 = e.private,
            Some(g) => {
                // A gap closes the run immediately, as in docker; open runs are flushed
                // at the end in first-seen order.
                result.push(form_group(&key.0, key.1, g.0, g.1));
                *g = (e.private, e.private);
            }
        }
    }
    for key in &group_order {
        if let Some(&(first, last)) = groups.get(key) {
            result.push(form_group(&key.0, key.1, first, last));
        }
    }
    result.extend(host_mappings);
    result.join(", ")
}

/// Picks the host port for `spec`. `in_use(ip, port, proto)` reports conflicts; the
/// wildcard 0.0.0.0 is passed when the spec names no host IP.
pub fn choose_host_port(
    spec: &PortSpec,
    in_use: &dyn Fn(Ipv4Addr, u16, Proto) -> bool,
    ephemeral: (u16, u16),
) -> Result<u16, PortSpecError> {
    let offset = rand::random::<u32>();
    choose_host_port_with_offset(spec, in_use, ephemeral, offset)
}

fn choose_host_port_with_offset(
    spec: &PortSpec,
    in_use: &dyn Fn(Ipv4Addr, u16, Proto) -> bool,
    ephemeral: (u16, u16),
    offset: u32,
) -> Result<u16, PortSpecError> {
    let ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let proto = spec.proto;
    let free = |p: u16| !in_use(ip, p, proto);
    match spec.host_ports {
        Some((lo, hi)) if lo == 0 || lo > hi => Err(PortSpecError::Invalid {
            spec: host_range(spec.host_ip, lo, hi, proto),
            reason: "host port range must be within 1-65535 with start <= end".to_string(),
        }),
        Some((p, q)) if p == q => {
            if free(p) {
                Ok(p)
            } else {
                Err(PortSpecError::InUse { host_ip: spec.host_ip, port: p, proto })
            }
        }
        Some((lo, hi)) => {
            (lo..=hi).find(|&p| free(p)).ok_or(PortSpecError::RangeExhausted { host_ip: spec.host_ip, lo, hi, proto })
        }
        None => {
            let (lo, hi) = ephemeral;
            if lo == 0 || lo > hi {
                return Err(PortSpecError::InvalidEphemeral {
                    lo,
                    hi,
                    reason: "must be within 1-65535 with start <= end".to_string(),
                });
            }
            // Starting at a random point spreads containers over the range and makes
            // immediate reuse of a just-released port (and stale conntrack) unlikely.
            let len = u32::from(hi - lo) + 1;
            let start = offset % len;
            (0..len)
                .map(|i| lo + ((start + i) % len) as u16)
                .find(|&p| free(p))
                .ok_or(PortSpecError::EphemeralExhausted { host_ip: spec.host_ip, lo, hi, proto })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    fn spec(host_ip: Option<&str>, host_ports: Option<(u16, u16)>, container_port: u16, proto: Proto) -> PortSpec {
        PortSpec { host_ip: host_ip.map(|s| s.parse().unwrap()), host_ports, container_port, proto }
    }

    fn one(s: &str) -> PortSpec {
        let v = parse_publish(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(v.len(), 1, "{s}");
        v[0]
    }

    fn err(s: &str) -> String {
        match parse_publish(s) {
            Ok(v) => panic!("{s:?} unexpectedly parsed: {v:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("invalid port specification {s:?}: ")), "{msg}");
                msg
            }
        }
    }

    #[test]
    fn proto_text_forms() {
        assert_eq!("tcp".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("udp".parse::<Proto>().unwrap(), Proto::Udp);
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert_eq!(serde_json::to_string(&Proto::Tcp).unwrap(), "\"tcp\"");
        assert_eq!(serde_json::from_str::<Proto>("\"udp\"").unwrap(), Proto::Udp);
        let e = "sctp".parse::<Proto>().unwrap_err();
        assert_eq!(e.to_string(), "unknown protocol \"sctp\": expected \"tcp\" or \"udp\"");
        assert!("TCP".parse::<Proto>().is_err());
    }

    #[test]
    fn publish_forms() {
        assert_eq!(one("80"), spec(None, None, 80, Proto::Tcp));
        assert_eq!(one("8080:80"), spec(None, Some((8080, 8080)), 80, Proto::Tcp));
        assert_eq!(one("8000-8010:80"), spec(None, Some((8000, 8010)), 80, Proto::Tcp));
        assert_eq!(one("127.0.0.1:8080:80"), spec(Some("127.0.0.1"), Some((8080, 8080)), 80, Proto::Tcp));
        assert_eq!(one("127.0.0.1::80"), spec(Some("127.0.0.1"), None, 80, Proto::Tcp));
        assert_eq!(one("0.0.0.0:9000-9100:80"), spec(Some("0.0.0.0"), Some((9000, 9100)), 80, Proto::Tcp));
        assert_eq!(one("53/udp"), spec(None, None, 53, Proto::Udp));
        assert_eq!(one("5353:53/udp"), spec(None, Some((5353, 5353)), 53, Proto::Udp));
        assert_eq!(one("10.0.0.1::53/udp"), spec(Some("10.0.0.1"), None, 53, Proto::Udp));
        assert_eq!(one("8080:80/tcp"), spec(None, Some((8080, 8080)), 80, Proto::Tcp));
        assert_eq!(one("65535:1"), spec(None, Some((65535, 65535)), 1, Proto::Tcp));
        assert_eq!(one("080"), spec(None, None, 80, Proto::Tcp));
        // A one-port "range" is just that port.
        assert_eq!(one("80-80"), spec(None, None, 80, Proto::Tcp));
    }

    #[test]
    fn publish_container_ranges() {
        let v = parse_publish("8000-8002:80-82/udp").unwrap();
        assert_eq!(
            v,
            vec![
                spec(None, Some((8000, 8000)), 80, Proto::Udp),
                spec(None, Some((8001, 8001)), 81, Proto::Udp),
                spec(None, Some((8002, 8002)), 82, Proto::Udp),
            ]
        );
        let v = parse_publish("7000-7001").unwrap();
        assert_eq!(v, vec![spec(None, None, 7000, Proto::Tcp), spec(None, None, 7001, Proto::Tcp)]);
        let v = parse_publish("127.0.0.1::5000-5001").unwrap();
        assert_eq!(
            v,
            vec![spec(Some("127.0.0.1"), None, 5000, Proto::Tcp), spec(Some("127.0.0.1"), None, 5001, Proto::Tcp)]
        );
        let v = parse_publish("1.2.3.4:100-101:200-201").unwrap();
        assert_eq!(v[1], spec(Some("1.2.3.4"), Some((101, 101)), 201, Proto::Tcp));
        assert_eq!(parse_publish("1-65535").unwrap().len(), 65535);
    }

    #[test]
    fn publish_port_number_errors() {
        assert!(err("0").contains("container port 0 is not allowed"));
        assert!(err("0:80").contains("host port 0 is not allowed"));
        assert!(err("65536").contains("container port 65536 is out of range"));
        assert!(err("8080:99999999999999999999999").contains("out of range"));
        assert!(err("70000:80").contains("host port 70000 is out of range"));
        assert!(err("http").contains("container port \"http\" is not a number"));
        assert!(err("80a:80").contains("host port \"80a\" is not a number"));
        assert!(err("+80").contains("is not a number"));
        assert!(err(" 80").contains("is not a number"));
        assert!(err("-80").contains("empty container port range start"));
        assert!(err("80-").contains("empty container port range end"));
        assert!(err("1-2-3").contains("container port range end \"2-3\" is not a number"));
    }

    #[test]
    fn publish_empty_parts() {
        assert!(err("").contains("empty specification"));
        assert!(err("8080:").contains("empty container port"));
        assert!(err(":80").contains("empty host port"));
        assert!(err("/tcp").contains("empty container port"));
        assert!(err("127.0.0.1:80:").contains("empty container port"));
        assert!(err(":8080:80").contains("empty host IP"));
        assert!(err("80/").contains("empty protocol"));
    }

    #[test]
    fn publish_reversed_ranges() {
        let m = err("90-80");
        assert!(m.contains("container port range 90-80 is reversed (90 > 80)"), "{m}");
        assert!(err("9000-8000:80").contains("host port range 9000-8000 is reversed"));
    }

    #[test]
    fn publish_ip_errors() {
        assert!(err("300.1.1.1:80:80").contains("host IP \"300.1.1.1\" is not a valid IPv4 address"));
        assert!(err("localhost:80:80").contains("host IP \"localhost\" is not a valid IPv4 address"));
        for v6 in ["[::1]:80:80", "[::]::80", "::1:8080:80", "fe80::1:80:80/udp", "[fe80::1]:80:80"] {
            assert!(err(v6).contains("IPv6 host addresses are not supported"), "{v6}");
        }
        assert!(err("[::1:80:80").contains("unterminated '['"));
        assert!(err("[nope]:80:80").contains("is not a valid IPv4 address"));
    }

    #[test]
    fn publish_protocol_errors() {
        assert!(err("80/sctp").contains("unknown protocol \"sctp\""));
        assert!(err("80/TCP").contains("unknown protocol \"TCP\""));
        assert!(err("80/tcp/udp").contains("more than one '/'"));
    }

    #[test]
    fn publish_range_length_mismatch() {
        let m = err("8000-8001:80-82");
        assert!(m.contains("host ports 8000-8001 and container ports 80-82 differ in length (2 vs 3)"), "{m}");
        let m = err("8000:80-82");
        assert!(m.contains("host ports 8000 and container ports 80-82 differ in length (1 vs 3)"), "{m}");
    }

    #[test]
    fn publish_too_many_colons() {
        let m = err("1.2.3.4:1:2:3");
        assert!(m.contains("too many ':' separators"), "{m}");
        assert!(err("a:b:c:d:e").contains("too many ':'"));
    }

    #[test]
    fn expose_forms_and_errors() {
        assert_eq!(parse_expose("80").unwrap(), vec![(80, Proto::Tcp)]);
        assert_eq!(parse_expose("80/udp").unwrap(), vec![(80, Proto::Udp)]);
        assert_eq!(
            parse_expose("8000-8002/tcp").unwrap(),
            vec![(8000, Proto::Tcp), (8001, Proto::Tcp), (8002, Proto::Tcp)]
        );
        for (bad, why) in [
            ("", "empty specification"),
            ("0", "port 0 is not allowed"),
            ("65536", "out of range"),
            ("x", "is not a number"),
            ("80/icmp", "unknown protocol"),
            ("90-80", "reversed"),
            ("8080:80", "without host part"),
            ("80/", "empty protocol"),
        ] {
            let e = parse_expose(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid port specification {bad:?}: ")) && e.contains(why), "{bad}: {e}");
        }
    }

    fn b(ip: &str, host: u16, container: u16, proto: Proto) -> PortBinding {
        PortBinding { host_ip: ip.parse().unwrap(), host_port: host, container_port: container, proto }
    }

    #[test]
    fn binding_display() {
        assert_eq!(b("0.0.0.0", 8080, 80, Proto::Tcp).to_string(), "0.0.0.0:8080->80/tcp");
        assert_eq!(b("127.0.0.1", 5353, 53, Proto::Udp).to_string(), "127.0.0.1:5353->53/udp");
    }

    #[test]
    fn ports_column() {
        assert_eq!(format_ports(&[], &[]), "");
        assert_eq!(format_ports(&[b("0.0.0.0", 8080, 80, Proto::Tcp)], &[]), "0.0.0.0:8080->80/tcp");
        // Docker lists same-port groups before remapped host ports.
        assert_eq!(
            format_ports(&[b("0.0.0.0", 8080, 80, Proto::Tcp)], &[(53, Proto::Udp)]),
            "53/udp, 0.0.0.0:8080->80/tcp"
        );
        assert_eq!(format_ports(&[b("0.0.0.0", 80, 80, Proto::Tcp)], &[]), "0.0.0.0:80->80/tcp");
        assert_eq!(format_ports(&[], &[(80, Proto::Tcp), (443, Proto::Tcp)]), "80/tcp, 443/tcp");
        assert_eq!(format_ports(&[], &[(80, Proto::Tcp), (80, Proto::Udp)]), "80/tcp, 80/udp");
    }

    #[test]
    fn ports_column_groups_runs_like_docker() {
        let binds: Vec<_> = (8000..=8002).map(|p| b("0.0.0.0", p, p, Proto::Tcp)).collect();
        assert_eq!(format_ports(&binds, &[]), "0.0.0.0:8000-8002->8000-8002/tcp");
        let exposed = [(53, Proto::Udp), (54, Proto::Udp), (56, Proto::Udp)];
        // A gap flushes the earlier run at once; the open run comes at the end.
        assert_eq!(format_ports(&[], &exposed), "53-54/udp, 56/udp");
        let binds = [
            b("0.0.0.0", 9000, 80, Proto::Tcp),
            b("0.0.0.0", 9001, 81, Proto::Tcp),
            b("127.0.0.1", 443, 443, Proto::Tcp),
        ];
        assert_eq!(
            format_ports(&binds, &[(22, Proto::Tcp)]),
            "22/tcp, 127.0.0.1:443->443/tcp, 0.0.0.0:9000->80/tcp, 0.0.0.0:9001->81/tcp"
        );
    }

    #[test]
    fn ports_column_skips_published_and_duplicate_exposed() {
        let binds = [b("0.0.0.0", 8080, 80, Proto::Tcp)];
        assert_eq!(
            format_ports(&binds, &[(80, Proto::Tcp), (81, Proto::Tcp), (81, Proto::Tcp)]),
            "81/tcp, 0.0.0.0:8080->80/tcp"
        );
    }

    fn taken(list: &[(u16, Proto)]) -> impl Fn(Ipv4Addr, u16, Proto) -> bool + '_ {
        move |_, p, pr| list.contains(&(p, pr))
    }

    #[test]
    fn choose_single_port() {
        let s = spec(None, Some((8080, 8080)), 80, Proto::Tcp);
        assert_eq!(choose_host_port(&s, &taken(&[(8080, Proto::Udp)]), DEFAULT_EPHEMERAL), Ok(8080));
        let e = choose_host_port(&s, &taken(&[(8080, Proto::Tcp)]), DEFAULT_EPHEMERAL).unwrap_err();
        assert_eq!(e.to_string(), "host port 8080/tcp is already in use");
        let s = spec(Some("127.0.0.1"), Some((8080, 8080)), 80, Proto::Udp);
        let e = choose_host_port(&s, &taken(&[(8080, Proto::Udp)]), DEFAULT_EPHEMERAL).unwrap_err();
        assert_eq!(e.to_string(), "host port 127.0.0.1:8080/udp is already in use");
    }

    #[test]
    fn choose_passes_ip_to_checker() {
        let seen = RefCell::new(Vec::new());
        let check = |ip: Ipv4Addr, p: u16, pr: Proto| {
            seen.borrow_mut().push((ip, p, pr));
            false
        };
        choose_host_port(&spec(None, Some((1, 1)), 1, Proto::Tcp), &check, DEFAULT_EPHEMERAL).unwrap();
        choose_host_port(&spec(Some("10.0.0.1"), Some((2, 2)), 1, Proto::Udp), &check, DEFAULT_EPHEMERAL).unwrap();
        assert_eq!(
            *seen.borrow(),
            vec![(Ipv4Addr::UNSPECIFIED, 1, Proto::Tcp), ("10.0.0.1".parse().unwrap(), 2, Proto::Udp)]
        );
    }

    #[test]
    fn choose_from_range() {
        let s = spec(None, Some((8000, 8002)), 80, Proto::Tcp);
        assert_eq!(choose_host_port(&s, &taken(&[]), DEFAULT_EPHEMERAL), Ok(8000));
        assert_eq!(
            choose_host_port(&s, &taken(&[(8000, Proto::Tcp), (8001, Proto::Tcp)]), DEFAULT_EPHEMERAL),
            Ok(8002)
        );
        let all = [(8000, Proto::Tcp), (8001, Proto::Tcp), (8002, Proto::Tcp)];
        let e = choose_host_port(&s, &taken(&all), DEFAULT_EPHEMERAL).unwrap_err();
        assert_eq!(e.to_string(), "no free host port in range 8000-8002/tcp");
    }

    #[test]
    fn choose_rejects_hand_built_bad_ranges() {
        for hp in [(0, 0), (10, 5), (0, 10)] {
            let s = spec(None, Some(hp), 80, Proto::Tcp);
            assert!(matches!(choose_host_port(&s, &taken(&[]), DEFAULT_EPHEMERAL), Err(PortSpecError::Invalid { .. })));
        }
    }

    #[test]
    fn choose_ephemeral_wraps_and_exhausts() {
        let s = spec(None, None, 80, Proto::Tcp);
        let eph = (100, 104);
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[]), eph, 3), Ok(103));
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[(103, Proto::Tcp), (104, Proto::Tcp)]), eph, 3), Ok(100));
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[]), eph, 7), Ok(102));
        let all: Vec<_> = (100..=104).map(|p| (p, Proto::Tcp)).collect();
        let e = choose_host_port_with_offset(&s, &taken(&all), eph, 0).unwrap_err();
        assert_eq!(e.to_string(), "no free host port in the ephemeral range 100-104/tcp");
        // Full 1-65535 range must not overflow.
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[]), (1, 65535), u32::MAX), Ok(1));
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[]), (1, 65535), 65534), Ok(65535));
        assert_eq!(choose_host_port_with_offset(&s, &taken(&[]), (65535, 65535), 12345), Ok(65535));
    }

    #[test]
    fn choose_ephemeral_is_spread_and_in_range() {
        let s = spec(None, None, 80, Proto::Udp);
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let p = choose_host_port(&s, &taken(&[]), DEFAULT_EPHEMERAL).unwrap();
            assert!((32768..=60999).contains(&p));
            seen.insert(p);
        }
        assert!(seen.len() > 1, "random offset should vary");
    }

    #[test]
    fn choose_invalid_ephemeral() {
        let s = spec(None, None, 80, Proto::Tcp);
        for eph in [(0, 10), (20, 10)] {
            let e = choose_host_port(&s, &taken(&[]), eph).unwrap_err();
            assert!(matches!(e, PortSpecError::InvalidEphemeral { .. }));
            assert!(e.to_string().starts_with(&format!("invalid ephemeral port range {}-{}", eph.0, eph.1)));
        }
    }

    #[test]
    fn spec_serde_roundtrip() {
        let s = spec(Some("127.0.0.1"), Some((1, 2)), 3, Proto::Udp);
        let back: PortSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
