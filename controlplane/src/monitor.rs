//! The flow monitor's pure side: datapath records (`MonitorEvent`, as the ring buffer holds
//! them) into API records with the names userspace knows, which records a monitor asked for,
//! and the text lines `netbee monitor` prints (cilium monitor's shape).
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Result, bail};
use netbee_abi::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MonitorEvent, drop_reason, monitor_kind, monitor_via, svc_flags,
    trace_point,
};

use crate::{
    api::{DropRecord, LbRecord, MonitorRecord, TraceRecord},
    datapath::ip_from_be,
};

/// Reads one ring-buffer record; None for a record of another size (a datapath of another
/// version).
pub fn decode(bytes: &[u8]) -> Option<MonitorEvent> {
    if bytes.len() != size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: MonitorEvent is plain old data of exactly this size; read_unaligned copes with
    // the ring buffer's 8-byte alignment or any other
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const MonitorEvent) })
}

/// Who an address belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Container name, or task name (`web.2.TASKID`) for a service's task.
    pub name: String,
    pub service: Option<String>,
    /// The node's hostname, for tasks.
    pub node: Option<String>,
}

/// What userspace knows to name the datapath's numbers with, rebuilt while monitors listen.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// ifindex → (interface, container behind it).
    pub ifaces: HashMap<u32, (String, Option<String>)>,
    pub addrs: HashMap<Ipv4Addr, Owner>,
    /// Datapath service id → the service's name (or the publishing container's).
    pub services: HashMap<u32, String>,
}

/// Which kinds a monitor asked for, as `config::MONITOR` bits. Traces are asked for by name
/// only: they report every packet of what they follow.
pub fn kinds_mask(kind: Option<&str>) -> Result<u8> {
    match kind {
        None => Ok(monitor_kind::DROP | monitor_kind::LB),
        Some("drop") => Ok(monitor_kind::DROP),
        Some("lb") => Ok(monitor_kind::LB),
        Some("trace") => Ok(monitor_kind::TRACE),
        Some(t) => bail!("invalid --type {t:?}: use drop, lb or trace"),
    }
}

/// The name of a TC verdict.
fn verdict_name(v: u32) -> String {
    match v {
        0 => "to-stack".into(),
        2 => "dropped".into(),
        7 => "redirected".into(),
        v => format!("tc-verdict-{v}"),
    }
}

/// The API record of a datapath event; `time` is its wall-clock time (RFC 3339).
pub fn record(ev: &MonitorEvent, names: &Names, time: String) -> Option<MonitorRecord> {
    let (src, dst) = (ip_from_be(ev.saddr), ip_from_be(ev.daddr));
    let (sport, dport) = (u16::from_be(ev.sport), u16::from_be(ev.dport));
    let owner = |ip: Ipv4Addr| names.addrs.get(&ip);
    match ev.kind {
        monitor_kind::DROP => {
            let ipv4 = ev.ethertype == 0x0800;
            let (interface, container) = names.ifaces.get(&ev.ifindex).cloned().unwrap_or_default();
            let (so, d_o) = if ipv4 { (owner(src), owner(dst)) } else { (None, None) };
            Some(MonitorRecord::Drop(DropRecord {
                time,
                reason: drop_reason::NAMES
                    .get(ev.reason as usize)
                    .map_or_else(|| ev.reason.to_string(), |n| n.to_string()),
                ifindex: ev.ifindex,
                interface,
                proto: if ipv4 { proto_name(ev.proto) } else { ethertype_name(ev.ethertype) },
                src: if ipv4 { endpoint(src, sport, ev.proto) } else { String::new() },
                dst: if ipv4 { endpoint(dst, dport, ev.proto) } else { String::new() },
                container,
                src_name: so.map(|o| o.name.clone()),
                dst_name: d_o.map(|o| o.name.clone()),
                service: so.and_then(|o| o.service.clone()).or_else(|| d_o.and_then(|o| o.service.clone())),
            }))
        }
        monitor_kind::LB => {
            let backend = ip_from_be(ev.backend_addr);
            let bo = owner(backend);
            let kind = if ev.svc_flags & svc_flags::VIP != 0 {
                "vip"
            } else if ev.service >= crate::daemon::services::SERVICE_ID_BASE {
                "mesh"
            } else {
                "published"
            };
            Some(MonitorRecord::Lb(LbRecord {
                time,
                service_id: ev.service,
                service: names.services.get(&ev.service).cloned().or_else(|| bo.and_then(|o| o.service.clone())),
                kind: kind.into(),
                via: match ev.via {
                    monitor_via::CONTAINER => "container",
                    monitor_via::WIRE => "wire",
                    _ => "tunnel",
                }
                .into(),
                proto: proto_name(ev.proto),
                frontend: endpoint(dst, dport, ev.proto),
                client: endpoint(src, sport, ev.proto),
                client_name: owner(src).map(|o| o.name.clone()),
                slot: ev.slot,
                backend: endpoint(backend, u16::from_be(ev.backend_port), ev.proto),
                task: bo.map(|o| o.name.clone()),
                node: bo.and_then(|o| o.node.clone()),
            }))
        }
        monitor_kind::TRACE => {
            let (interface, container) = names.ifaces.get(&ev.ifindex).cloned().unwrap_or_default();
            let (so, d_o) = (owner(src), owner(dst));
            Some(MonitorRecord::Trace(TraceRecord {
                time,
                point: trace_point::NAMES.get(ev.via as usize).map_or_else(|| ev.via.to_string(), |n| n.to_string()),
                verdict: verdict_name(ev.reason),
                ifindex: ev.ifindex,
                interface,
                container,
                proto: proto_name(ev.proto),
                src: endpoint(src, sport, ev.proto),
                dst: endpoint(dst, dport, ev.proto),
                src_name: so.map(|o| o.name.clone()),
                dst_name: d_o.map(|o| o.name.clone()),
                service: so.and_then(|o| o.service.clone()).or_else(|| d_o.and_then(|o| o.service.clone())),
            }))
        }
        _ => None,
    }
}

fn endpoint(ip: Ipv4Addr, port: u16, proto: u8) -> String {
    if matches!(proto, IPPROTO_TCP | IPPROTO_UDP) { format!("{ip}:{port}") } else { ip.to_string() }
}

pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        n => format!("proto-{n}"),
    }
}

fn ethertype_name(t: u16) -> String {
    match t {
        0x0806 => "arp".into(),
        0x86dd => "ipv6".into(),
        t => format!("ethertype-0x{t:04x}"),
    }
}

/// What one monitor asked to see (`--type`, `--container`, `--service`), by name.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kinds: u8,
    /// The container's name (resolved from what the user typed when the monitor attached).
    pub container: Option<String>,
    pub service: Option<String>,
}

impl Filter {
    /// Suppressed and lost counts concern every monitor; drops and LB decisions are matched by
    /// kind, then by any name the record carries.
    pub fn matches(&self, r: &MonitorRecord) -> bool {
        let (kind, names, service): (u8, Vec<&Option<String>>, &Option<String>) = match r {
            MonitorRecord::Drop(d) => (monitor_kind::DROP, vec![&d.container, &d.src_name, &d.dst_name], &d.service),
            MonitorRecord::Lb(l) => (monitor_kind::LB, vec![&l.task, &l.client_name], &l.service),
            MonitorRecord::Trace(t) => (monitor_kind::TRACE, vec![&t.container, &t.src_name, &t.dst_name], &t.service),
            MonitorRecord::Suppressed { .. } | MonitorRecord::Lost { .. } => return true,
        };
        if self.kinds & kind == 0 {
            return false;
        }
        if let Some(c) = &self.container
            && !names.iter().any(|n| n.as_deref() == Some(c.as_str()))
        {
            return false;
        }
        if let Some(s) = &self.service {
            // a task is named after its service: `web.2.TASKID`
            let task_of = |n: &Option<String>| n.as_deref().is_some_and(|n| n.split('.').next() == Some(s.as_str()));
            if service.as_deref() != Some(s.as_str()) && !names.iter().any(|n| task_of(n)) {
                return false;
            }
        }
        true
    }
}

/// One line of `netbee monitor`'s text output.
pub fn text_line(r: &MonitorRecord) -> String {
    match r {
        MonitorRecord::Drop(d) => {
            let reason = d.reason.replace('_', "-");
            let flow = if d.src.is_empty() {
                d.proto.clone()
            } else {
                format!("flow {}{} -> {}{} {}", d.src, paren(&d.src_name), d.dst, paren(&d.dst_name), d.proto)
            };
            let iface = if d.interface.is_empty() { format!("ifindex {}", d.ifindex) } else { d.interface.clone() };
            let ct = d.container.as_ref().map(|c| format!(" (ct {c})")).unwrap_or_default();
            format!("xx drop ({reason}) {flow} on {iface}{ct}")
        }
        MonitorRecord::Lb(l) => {
            let svc = l.service.clone().unwrap_or_else(|| format!("service {}", l.service_id));
            let kind =
                if l.kind == "mesh" && l.via == "container" { "mesh, from a container".into() } else { l.kind.clone() };
            let mut s = format!("-> lb {svc}: {}/{} ({kind}) -> {}", l.frontend, l.proto, l.backend);
            if let Some(t) = &l.task {
                s.push_str(&format!(" task {t}"));
            }
            if let Some(n) = &l.node {
                s.push_str(&format!(" node {n}"));
            }
            s.push_str(&format!(" (slot {}, client {}{})", l.slot, l.client, paren(&l.client_name)));
            s
        }
        MonitorRecord::Trace(t) => {
            let iface = if t.interface.is_empty() { format!("ifindex {}", t.ifindex) } else { t.interface.clone() };
            let ct = t.container.as_ref().map(|c| format!(" (ct {c})")).unwrap_or_default();
            format!(
                "-> trace {} on {iface}{ct}: flow {}{} -> {}{} {} {}",
                t.point,
                t.src,
                paren(&t.src_name),
                t.dst,
                paren(&t.dst_name),
                t.proto,
                t.verdict
            )
        }
        MonitorRecord::Suppressed { count } => format!("{count} events suppressed"),
        MonitorRecord::Lost { count } => format!("{count} events lost: this monitor read too slowly"),
    }
}

fn paren(n: &Option<String>) -> String {
    n.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::ip_be;

    fn ev(kind: u8) -> MonitorEvent {
        MonitorEvent {
            kind,
            proto: IPPROTO_TCP,
            ifindex: 7,
            ethertype: 0x0800,
            saddr: ip_be(Ipv4Addr::new(10, 0, 1, 2)),
            daddr: ip_be(Ipv4Addr::new(10, 0, 2, 3)),
            sport: 40000u16.to_be(),
            dport: 8080u16.to_be(),
            ..Default::default()
        }
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.ifaces.insert(7, ("nbe0123456789ab".into(), Some("web1".into())));
        n.addrs.insert(Ipv4Addr::new(10, 0, 1, 2), Owner { name: "web1".into(), ..Default::default() });
        n.addrs.insert(
            Ipv4Addr::new(10, 0, 0, 5),
            Owner { name: "web.2.abcdefabcdef".into(), service: Some("web".into()), node: Some("n2".into()) },
        );
        n.services.insert(32770, "web".into());
        n
    }

    #[test]
    fn decode_reads_exactly_one_record() {
        let e = ev(monitor_kind::DROP);
        // SAFETY: a Pod struct viewed as its bytes
        let bytes =
            unsafe { std::slice::from_raw_parts(&e as *const MonitorEvent as *const u8, size_of::<MonitorEvent>()) };
        assert_eq!(decode(bytes), Some(e));
        assert_eq!(decode(&bytes[..40]), None);
    }

    #[test]
    fn a_drop_is_named_and_printed_like_cilium_monitor() {
        let mut e = ev(monitor_kind::DROP);
        e.reason = drop_reason::CROSS_NETWORK;
        let r = record(&e, &names(), "t".into()).unwrap();
        let MonitorRecord::Drop(d) = &r else { panic!("{r:?}") };
        assert_eq!(d.reason, "cross_network");
        assert_eq!((d.src.as_str(), d.dst.as_str(), d.proto.as_str()), ("10.0.1.2:40000", "10.0.2.3:8080", "tcp"));
        assert_eq!(d.container.as_deref(), Some("web1"));
        assert_eq!(
            text_line(&r),
            "xx drop (cross-network) flow 10.0.1.2:40000 (web1) -> 10.0.2.3:8080 tcp on nbe0123456789ab (ct web1)"
        );
        // JSON carries the kind as "type"
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["type"], "drop");
        assert_eq!(serde_json::from_value::<MonitorRecord>(j).unwrap(), r);
    }

    #[test]
    fn an_arp_drop_has_no_flow() {
        let mut e = ev(monitor_kind::DROP);
        e.ethertype = 0x0806;
        e.reason = drop_reason::SPOOFED_ARP;
        e.ifindex = 99;
        let r = record(&e, &names(), "t".into()).unwrap();
        assert_eq!(text_line(&r), "xx drop (spoofed-arp) arp on ifindex 99");
    }

    #[test]
    fn an_lb_decision_names_service_task_and_node() {
        let mut e = ev(monitor_kind::LB);
        e.service = 32770;
        e.slot = 2;
        e.via = monitor_via::WIRE;
        e.daddr = ip_be(Ipv4Addr::new(10, 0, 0, 1));
        e.backend_addr = ip_be(Ipv4Addr::new(10, 0, 0, 5));
        e.backend_port = 8080u16.to_be();
        let r = record(&e, &names(), "t".into()).unwrap();
        let MonitorRecord::Lb(l) = &r else { panic!("{r:?}") };
        assert_eq!((l.kind.as_str(), l.via.as_str()), ("mesh", "wire"));
        assert_eq!(
            text_line(&r),
            "-> lb web: 10.0.0.1:8080/tcp (mesh) -> 10.0.0.5:8080 task web.2.abcdefabcdef node n2 \
             (slot 2, client 10.0.1.2:40000 (web1))"
        );
        e.svc_flags = svc_flags::VIP;
        let Some(MonitorRecord::Lb(l)) = record(&e, &names(), "t".into()) else { panic!() };
        assert_eq!(l.kind, "vip");
        e.svc_flags = 0;
        e.service = 3;
        let Some(MonitorRecord::Lb(l)) = record(&e, &Names::default(), "t".into()) else { panic!() };
        assert_eq!((l.kind.as_str(), l.service, l.task), ("published", None, None));
    }

    #[test]
    fn filters_select_by_kind_container_and_service() {
        let mut d = ev(monitor_kind::DROP);
        d.reason = drop_reason::CROSS_NETWORK;
        let drop = record(&d, &names(), "t".into()).unwrap();
        let mut l = ev(monitor_kind::LB);
        l.service = 32770;
        l.backend_addr = ip_be(Ipv4Addr::new(10, 0, 0, 5));
        let lb = record(&l, &names(), "t".into()).unwrap();
        let f = |kind: Option<&str>, c: Option<&str>, s: Option<&str>| Filter {
            kinds: kinds_mask(kind).unwrap(),
            container: c.map(str::to_string),
            service: s.map(str::to_string),
        };
        assert!(f(None, None, None).matches(&drop) && f(None, None, None).matches(&lb));
        assert!(f(Some("drop"), None, None).matches(&drop) && !f(Some("drop"), None, None).matches(&lb));
        assert!(f(None, Some("web1"), None).matches(&drop) && f(None, Some("web1"), None).matches(&lb));
        assert!(!f(None, Some("other"), None).matches(&drop));
        assert!(f(None, None, Some("web")).matches(&lb) && !f(None, None, Some("web")).matches(&drop));
        assert!(f(Some("lb"), None, None).matches(&MonitorRecord::Suppressed { count: 3 }));
        assert!(kinds_mask(Some("x")).is_err());
        // a trace is asked for by name only, and only traces match it
        let mut t = ev(monitor_kind::TRACE);
        t.via = trace_point::UPLINK_INGRESS;
        t.reason = 7;
        let trace = record(&t, &names(), "t".into()).unwrap();
        assert!(f(Some("trace"), None, None).matches(&trace) && !f(None, None, None).matches(&trace));
        assert!(!f(Some("trace"), None, None).matches(&drop) && f(Some("trace"), Some("web1"), None).matches(&trace));
    }

    #[test]
    fn a_traced_packet_names_its_program_verdict_and_ends() {
        let mut e = ev(monitor_kind::TRACE);
        e.via = trace_point::FROM_CONTAINER;
        e.reason = 7;
        let r = record(&e, &names(), "t".into()).unwrap();
        let MonitorRecord::Trace(t) = &r else { panic!("{r:?}") };
        assert_eq!((t.point.as_str(), t.verdict.as_str()), ("from-container", "redirected"));
        assert_eq!(
            text_line(&r),
            "-> trace from-container on nbe0123456789ab (ct web1): flow 10.0.1.2:40000 (web1) -> 10.0.2.3:8080 tcp \
             redirected"
        );
        e.reason = 0;
        e.via = trace_point::UPLINK_EGRESS;
        let MonitorRecord::Trace(t) = record(&e, &names(), "t".into()).unwrap() else { panic!() };
        assert_eq!((t.point.as_str(), t.verdict.as_str()), ("uplink-egress", "to-stack"));
        assert_eq!(serde_json::to_value(&t).unwrap()["verdict"], "to-stack");
    }
}
