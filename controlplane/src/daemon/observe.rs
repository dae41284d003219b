//! What an operator asks of a node beyond `datapath stats`: what the load balancers hold and
//! how busy each backend is (`datapath lb ls`), the flows (`datapath ct ls`), the container
//! interfaces the datapath knows (`datapath endpoints ls`), and the Prometheus metrics server
//! (`--metrics-addr`).
//!
//! New connections per frontend and backend are counted by the datapath (`LB_CONNS`, per CPU,
//! when a backend is chosen); established flows per backend are counted here, by walking the
//! conntrack table, as are the states of the flows `ct ls` shows.
use crate::cluster::etcd::Reads;
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use anyhow::{Context as _, Result};
use netbee_abi::{
    Backend, BackendKey, CtEntry, CtKey, Endpoint, FrontendKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, LbCountKey,
    Service, ct_flags, svc_flags,
};
use tracing::{info, warn};

use super::{Daemon, reconcile, services::SERVICE_ID_BASE};
use crate::{
    api::{CtFlow, EndpointEntry, LbBackend, LbFrontend},
    datapath::{self, ip_from_be},
    metrics::{self, BackendSample, Snapshot},
    model::{ContainerRecord, NetworkRecord, NodeRecord, RemoteEndpoint, ServiceRecord, TaskRecord},
};

/// The datapath's maps as one consistent read (taken under the datapath lock).
struct MapsView {
    frontends: HashMap<FrontendKey, Service>,
    backends: HashMap<BackendKey, Backend>,
    counts: HashMap<LbCountKey, u64>,
    ct: HashMap<CtKey, CtEntry>,
    endpoints: HashMap<u32, Endpoint>,
    vips: HashSet<u32>,
    node_addrs: HashSet<u32>,
}

/// The records the listings name things from.
struct Records {
    services: Vec<ServiceRecord>,
    tasks: Vec<TaskRecord>,
    containers: Vec<ContainerRecord>,
    nodes: Vec<NodeRecord>,
    networks: Vec<NetworkRecord>,
    remote: Vec<RemoteEndpoint>,
    /// This node's name.
    me: String,
}

pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        p => p.to_string(),
    }
}

/// `ADDR:PORT/PROTO` of a frontend, `*` for any address or any port.
pub fn frontend_label(k: &FrontendKey) -> String {
    let addr = if k.addr == 0 { "*".to_string() } else { ip_from_be(k.addr).to_string() };
    let port = if k.port == 0 { "*".to_string() } else { u16::from_be(k.port).to_string() };
    format!("{addr}:{port}/{}", proto_name(k.proto))
}

fn frontend_kind(k: &FrontendKey, s: &Service) -> &'static str {
    if s.id < SERVICE_ID_BASE {
        "published"
    } else if s.flags & svc_flags::VIP != 0 || (k.addr != 0 && k.port == 0) {
        "vip"
    } else {
        "mesh"
    }
}

fn endpoint_str(addr: u32, port: u16) -> String {
    format!("{}:{}", ip_from_be(addr), u16::from_be(port))
}

/// The state of a flow from the flags of its entries (both directions when paired), as the
/// garbage collector reads them.
pub fn flow_state(proto: u8, flags: u16, pair: Option<u16>) -> &'static str {
    if proto != IPPROTO_TCP {
        return "active";
    }
    let all = flags | pair.unwrap_or(0);
    if all & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0 {
        "closing"
    } else if flags & pair.unwrap_or(flags) & ct_flags::SYN_ONLY != 0 {
        "syn-sent"
    } else {
        "established"
    }
}

/// Names of the conntrack flags set in `f`.
pub fn flag_names(f: u16) -> Vec<String> {
    const NAMES: [(u16, &str); 9] = [
        (ct_flags::DNAT, "dnat"),
        (ct_flags::REVNAT, "revnat"),
        (ct_flags::SNAT, "snat"),
        (ct_flags::SNAT_REV, "snat-rev"),
        (ct_flags::TUNNEL_RETURN, "tunnel-return"),
        (ct_flags::DIRECT, "direct"),
        (ct_flags::SYN_ONLY, "syn"),
        (ct_flags::SEEN_FIN, "fin"),
        (ct_flags::SEEN_RST, "rst"),
    ];
    NAMES.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| n.to_string()).collect()
}

impl MapsView {
    /// The frontend a forward packet to (daddr, dport) opened its flow through, found as the
    /// datapath finds it (`lb::frontend`): exact, then a VIP's any-port, then every node address.
    fn frontend_of(&self, daddr: u32, dport: u16, proto: u8) -> Option<(FrontendKey, Service)> {
        let exact = FrontendKey { addr: daddr, port: dport, proto, _pad: 0 };
        if let Some(s) = self.frontends.get(&exact) {
            return Some((exact, *s));
        }
        let key = if self.vips.contains(&daddr) {
            FrontendKey { addr: daddr, port: 0, proto, _pad: 0 }
        } else if self.node_addrs.contains(&daddr) || u32::from_be(daddr) >> 24 == 127 {
            FrontendKey { addr: 0, port: dport, proto, _pad: 0 }
        } else {
            return None;
        };
        self.frontends.get(&key).map(|s| (key, *s))
    }

    /// (the frontend id, the backend as BACKENDS holds it, the flow's state) of every load
    /// balanced flow: its forward (DNAT) entry.
    fn balanced_flows(&self) -> Vec<(u32, Backend, &'static str)> {
        let mut out = Vec::new();
        for (k, e) in &self.ct {
            if e.flags & ct_flags::DNAT == 0 {
                continue;
            }
            let Some((fk, svc)) = self.frontend_of(k.daddr, k.dport, k.proto) else { continue };
            let port = if fk.port == 0 && fk.addr != 0 { 0 } else { e.nat_port };
            let pair = reconcile::paired_key(k, e).and_then(|pk| self.ct.get(&pk)).map(|p| p.flags);
            out.push((svc.id, Backend { addr: e.nat_addr, port, _pad: 0 }, flow_state(k.proto, e.flags, pair)));
        }
        out
    }
}

impl Records {
    fn node_name_by_addr(&self, host_order: u32) -> String {
        let ip = Ipv4Addr::from(host_order);
        self.nodes.iter().find(|n| n.addr == ip).map(|n| n.hostname.clone()).unwrap_or_else(|| ip.to_string())
    }

    fn node_name_by_id(&self, id: &str) -> String {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.hostname.clone()).unwrap_or_else(|| self.me.clone())
    }

    fn network_name(&self, net_id: u32) -> String {
        self.networks.iter().find(|n| n.net_id == net_id).map(|n| n.name.clone()).unwrap_or_else(|| net_id.to_string())
    }

    fn task_with(&self, ip: Ipv4Addr) -> Option<&TaskRecord> {
        self.tasks.iter().filter(|t| t.addrs.iter().any(|(_, a)| *a == ip)).max_by_key(|t| t.desired_running)
    }

    fn container_with(&self, ip: Ipv4Addr) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.endpoints.iter().any(|e| e.ip == ip))
    }

    /// The service (or, for a published port, the container) and network of a frontend.
    fn owner(&self, k: &FrontendKey, s: &Service) -> (String, String) {
        match frontend_kind(k, s) {
            "published" => {
                let c = self.containers.iter().find(|c| c.ports.iter().any(|p| p.service_id == s.id));
                (c.map(|c| c.name.clone()).unwrap_or_default(), String::new())
            }
            "vip" => {
                let ip = ip_from_be(k.addr);
                let found = self
                    .services
                    .iter()
                    .find_map(|svc| svc.vips.iter().chain(&svc.retained_vips).find(|v| v.ip == ip).map(|v| (svc, v)));
                match found {
                    Some((svc, v)) => {
                        let net = self.networks.iter().find(|n| n.id == v.network_id).map(|n| n.name.clone());
                        (svc.spec.name.clone(), net.unwrap_or_default())
                    }
                    None => (String::new(), self.network_name(s.net_id)),
                }
            }
            _ => {
                let port = u16::from_be(k.port);
                let svc = self.services.iter().find(|svc| {
                    svc.spec.ports.iter().any(|p| p.published == port && super::ports::proto_num(p.proto) == k.proto)
                });
                (svc.map(|s| s.spec.name.clone()).unwrap_or_default(), String::new())
            }
        }
    }

    /// (task or container name, node) of a backend address.
    fn backend_identity(&self, addr: u32, eps: &HashMap<u32, Endpoint>) -> (String, String) {
        let ip = ip_from_be(addr);
        let task = self.task_with(ip);
        let name = match (task, self.container_with(ip)) {
            (Some(t), _) => format!("{}.{}", t.service_name, t.slot),
            (None, Some(c)) => c.name.clone(),
            (None, None) => String::new(),
        };
        let node = match eps.get(&addr) {
            Some(ep) if datapath::is_remote(ep) => self.node_name_by_addr(ep.node_ip),
            Some(_) => self.me.clone(),
            None => task.map(|t| self.node_name_by_id(&t.node_id)).unwrap_or_default(),
        };
        (name, node)
    }
}

/// Every frontend with its backends, counts and flows.
fn lb_listing(m: &MapsView, r: &Records) -> Vec<LbFrontend> {
    let mut flows: HashMap<(u32, u32, u16), (u64, u64)> = HashMap::new();
    for (id, be, state) in m.balanced_flows() {
        let e = flows.entry((id, be.addr, be.port)).or_default();
        e.0 += 1;
        if state == "established" || state == "active" {
            e.1 += 1;
        }
    }
    let mut out = Vec::new();
    for (k, s) in &m.frontends {
        let kind = frontend_kind(k, s);
        let (service, network) = r.owner(k, s);
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        let mut add = |b: Backend, state: &str, backends: &mut Vec<LbBackend>| {
            if !seen.insert((b.addr, b.port)) {
                return;
            }
            let (task, node) = r.backend_identity(b.addr, &m.endpoints);
            let connections =
                m.counts.get(&LbCountKey { service: s.id, addr: b.addr, port: b.port, _pad: 0 }).copied().unwrap_or(0);
            let established = flows.get(&(s.id, b.addr, b.port)).map(|f| f.1).unwrap_or(0);
            let port = if b.port == 0 { "*".to_string() } else { u16::from_be(b.port).to_string() };
            backends.push(LbBackend {
                address: format!("{}:{port}", ip_from_be(b.addr)),
                node,
                task,
                state: state.into(),
                connections,
                established,
            });
        };
        for slot in 1..=s.count {
            if let Some(b) = m.backends.get(&BackendKey { service: s.id, slot }) {
                add(*b, "active", &mut backends);
            }
        }
        let mut gone: Vec<Backend> = m
            .counts
            .keys()
            .filter(|c| c.service == s.id)
            .map(|c| Backend { addr: c.addr, port: c.port, _pad: 0 })
            .chain(flows.keys().filter(|f| f.0 == s.id).map(|f| Backend { addr: f.1, port: f.2, _pad: 0 }))
            .collect();
        gone.sort_by_key(|b| (u32::from_be(b.addr), b.port));
        for b in gone {
            add(b, "removed", &mut backends);
        }
        out.push(LbFrontend { kind: kind.into(), frontend: frontend_label(k), service, network, id: s.id, backends });
    }
    let order = |k: &str| ["mesh", "vip", "published"].iter().position(|x| *x == k).unwrap_or(3);
    out.sort_by(|a, b| (&a.service, order(&a.kind), &a.frontend).cmp(&(&b.service, order(&b.kind), &b.frontend)));
    out
}

fn ct_listing(m: &MapsView, r: &Records, service: Option<&str>, limit: Option<usize>) -> Vec<CtFlow> {
    let now = reconcile::monotonic_ns();
    let secs = |ns: u64| now.saturating_sub(ns) / 1_000_000_000;
    let mut out = Vec::new();
    for (k, e) in &m.ct {
        let pair = reconcile::paired_key(k, e).and_then(|pk| m.ct.get(&pk));
        let flags = e.flags | pair.map(|p| p.flags).unwrap_or(0);
        let last = e.last_seen.max(pair.map(|p| p.last_seen).unwrap_or(0));
        let (kind, source, destination, translated, owner) = if e.flags & ct_flags::DNAT != 0 {
            let owner = m.frontend_of(k.daddr, k.dport, k.proto).map(|(fk, s)| r.owner(&fk, &s).0).unwrap_or_default();
            (
                "dnat",
                endpoint_str(k.saddr, k.sport),
                endpoint_str(k.daddr, k.dport),
                endpoint_str(e.nat_addr, e.nat_port),
                owner,
            )
        } else if e.flags & ct_flags::SNAT != 0 {
            (
                "snat",
                endpoint_str(k.saddr, k.sport),
                endpoint_str(k.daddr, k.dport),
                endpoint_str(e.nat_addr, e.nat_port),
                String::new(),
            )
        } else if e.flags & ct_flags::TUNNEL_RETURN != 0 && e.flags & (ct_flags::REVNAT | ct_flags::SNAT_REV) == 0 {
            // keyed by the reply direction: task -> client
            let owner = r.task_with(ip_from_be(k.saddr)).map(|t| t.service_name.clone()).unwrap_or_default();
            let via = r.node_name_by_addr(e.tunnel_node);
            ("tunnel-return", endpoint_str(k.daddr, k.dport), endpoint_str(k.saddr, k.sport), via, owner)
        } else {
            // the reply direction of a flow listed through its forward entry
            continue;
        };
        if service.is_some_and(|s| s != owner) {
            continue;
        }
        out.push(CtFlow {
            proto: proto_name(k.proto),
            source,
            destination,
            kind: kind.into(),
            translated,
            service: owner,
            state: flow_state(k.proto, e.flags, pair.map(|p| p.flags)).into(),
            flags: flag_names(flags),
            age_seconds: secs(e.created.min(pair.map(|p| p.created).unwrap_or(u64::MAX))),
            idle_seconds: secs(last),
        });
    }
    out.sort_by(|a, b| (&a.service, &a.destination, &a.source).cmp(&(&b.service, &b.destination, &b.source)));
    if let Some(n) = limit {
        out.truncate(n);
    }
    out
}

fn endpoint_listing(m: &MapsView, r: &Records) -> Vec<EndpointEntry> {
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut out: Vec<EndpointEntry> = m
        .endpoints
        .iter()
        .map(|(addr, ep)| {
            let ip = ip_from_be(*addr);
            let remote = datapath::is_remote(ep);
            let container = if remote {
                r.remote.iter().find(|e| e.ip == ip).map(|e| e.container_name.clone())
            } else {
                r.container_with(ip).map(|c| c.name.clone())
            };
            EndpointEntry {
                address: ip.to_string(),
                scope: if remote { "remote" } else { "local" }.into(),
                network: r.network_name(ep.net_id),
                node: if remote { r.node_name_by_addr(ep.node_ip) } else { r.me.clone() },
                interface: if remote { String::new() } else { ifname(ep.ifindex) },
                container: container.unwrap_or_default(),
                mac: mac(ep.mac),
            }
        })
        .collect();
    out.sort_by_key(|e| (e.network.clone(), e.address.parse::<Ipv4Addr>().ok()));
    out
}

fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

impl Daemon {
    fn maps_view(&self) -> MapsView {
        let dp = self.dp.lock().unwrap();
        MapsView {
            frontends: dp.frontends.iter().filter_map(|r| r.ok()).collect(),
            backends: dp.backends.iter().filter_map(|r| r.ok()).collect(),
            counts: dp.lb_counts(),
            ct: dp.ct.iter().filter_map(|r| r.ok()).collect(),
            endpoints: dp.endpoints_in_kernel(),
            vips: dp.vips.keys().filter_map(|r| r.ok()).collect(),
            node_addrs: dp.node_addrs.keys().filter_map(|r| r.ok()).collect(),
        }
    }

    fn my_hostname(&self) -> String {
        match &self.cluster {
            Some(c) => c.hostname.clone(),
            None => self.cfg.hostname.clone().unwrap_or_else(|| {
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
            }),
        }
    }

    /// The records listings name things from. The shared store may be unreachable (etcd down):
    /// the listings then show what the datapath holds, with fewer names.
    async fn records(&self) -> Records {
        let services = self.shared().list::<ServiceRecord>().await.unwrap_or_default();
        let tasks = self.shared().list::<TaskRecord>().await.unwrap_or_default();
        let nodes = self.cluster_nodes(Reads::Linearizable).await.map(|(n, _)| n).unwrap_or_default();
        Records {
            services,
            tasks,
            containers: self.containers().unwrap_or_default(),
            nodes,
            networks: self.networks().unwrap_or_default(),
            remote: if self.in_swarm() { self.remote_endpoints() } else { Vec::new() },
            me: self.my_hostname(),
        }
    }

    pub async fn datapath_lb(&self) -> Vec<LbFrontend> {
        let r = self.records().await;
        lb_listing(&self.maps_view(), &r)
    }

    pub async fn datapath_ct(&self, service: Option<&str>, limit: Option<usize>) -> Vec<CtFlow> {
        let r = self.records().await;
        ct_listing(&self.maps_view(), &r, service, limit)
    }

    pub async fn datapath_endpoints(&self) -> Vec<EndpointEntry> {
        let r = self.records().await;
        endpoint_listing(&self.maps_view(), &r)
    }

    /// Everything a scrape reports, read now.
    async fn metrics_snapshot(&self) -> Result<Snapshot> {
        let services = self.shared().list::<ServiceRecord>().await;
        let tasks = self.shared().list::<TaskRecord>().await;
        let me = self.my_node_id();
        let mut task_states: Option<Vec<(String, u64)>> = None;
        if let Ok(tasks) = &tasks {
            let mut by: HashMap<String, u64> = HashMap::new();
            for t in tasks.iter().filter(|t| t.node_id == me) {
                *by.entry(serde_json::to_value(t.state)?.as_str().unwrap_or("").to_string()).or_default() += 1;
            }
            task_states = Some(by.into_iter().collect());
        }
        let nodes = self.cluster_nodes(Reads::Linearizable).await.map(|(n, _)| n).unwrap_or_default();
        let containers = self.containers()?;
        let networks = self.networks()?;
        let records = Records {
            services: services.as_ref().cloned().unwrap_or_default(),
            tasks: tasks.unwrap_or_default(),
            containers,
            nodes,
            networks,
            remote: Vec::new(),
            me: self.my_hostname(),
        };
        let maps = self.maps_view();
        let (packets, drops, ct_entries, capacity) = {
            let dp = self.dp.lock().unwrap();
            let (s, d) = dp.counters()?;
            (s, d, maps.ct.len() as u64, dp.ct_capacity())
        };
        let conntrack = self.conntrack_stats(&packets, ct_entries, capacity);
        let mesh_received = packets.iter().find(|(n, _)| n == "mesh_received").map(|(_, v)| *v).unwrap_or(0);
        let mut backends = Vec::new();
        for f in lb_listing(&maps, &records) {
            for b in &f.backends {
                backends.push(BackendSample {
                    kind: f.kind.clone(),
                    service: f.service.clone(),
                    frontend: f.frontend.clone(),
                    backend: b.address.split(':').next().unwrap_or("").to_string(),
                    task: if f.kind == "published" { String::new() } else { b.task.clone() },
                    node: b.node.clone(),
                    connections: b.connections,
                    established: b.established,
                });
            }
        }
        let mut containers: HashMap<String, u64> = HashMap::new();
        for c in &records.containers {
            *containers
                .entry(serde_json::to_value(&c.state.status)?.as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        let mut networks: HashMap<String, u64> = HashMap::new();
        for n in &records.networks {
            *networks.entry(n.driver.clone()).or_default() += 1;
        }
        let sorted = |m: HashMap<String, u64>| {
            let mut v: Vec<(String, u64)> = m.into_iter().collect();
            v.sort();
            v
        };
        Ok(Snapshot {
            packets,
            drops,
            conntrack,
            mesh_received,
            backends,
            containers: sorted(containers),
            networks: sorted(networks),
            services: services.ok().map(|s| s.len() as u64),
            tasks: task_states.map(|t| sorted(t.into_iter().collect())),
            process: metrics::process::read_self(),
        })
    }

    /// Conntrack occupancy as `datapath stats` and the metrics report it.
    pub(super) fn conntrack_stats(
        &self,
        counters: &[(String, u64)],
        entries: u64,
        capacity: u32,
    ) -> crate::api::ConntrackStats {
        let created = counters.iter().find(|(n, _)| n == "ct_created").map(|(_, v)| *v).unwrap_or(0);
        let removed = self.ct_gc_removed.load(std::sync::atomic::Ordering::Relaxed);
        crate::api::ConntrackStats {
            entries,
            capacity: capacity.into(),
            entries_created: created,
            entries_collected: removed,
            // LRU evictions are silent in the kernel: whatever was created and neither collected
            // nor still present was evicted to make room
            evicted: created.saturating_sub(removed).saturating_sub(entries),
        }
    }
}

/// Serves `GET /metrics` on `addr` (TCP) until the daemon stops. Only metrics: the control API
/// stays on its root-only unix socket.
pub async fn serve_metrics(d: Arc<Daemon>, listener: tokio::net::TcpListener) -> Result<()> {
    use axum::{http::header, response::IntoResponse, routing::get};
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(d): axum::extract::State<Arc<Daemon>>| async move {
                let text = async { metrics::render(d.metrics_snapshot().await?).map_err(anyhow::Error::from) }.await;
                match text {
                    Ok(t) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], t).into_response(),
                    Err(e) => {
                        warn!("metrics: {e:#}");
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
                    }
                }
            }),
        )
        .with_state(d);
    axum::serve(listener, app).await.context("metrics server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_states_from_both_directions() {
        use ct_flags::*;
        assert_eq!(flow_state(IPPROTO_TCP, DNAT | SYN_ONLY, Some(REVNAT | SYN_ONLY)), "syn-sent");
        assert_eq!(flow_state(IPPROTO_TCP, DNAT, Some(REVNAT | SYN_ONLY)), "established");
        assert_eq!(flow_state(IPPROTO_TCP, DNAT, Some(REVNAT | SEEN_FIN)), "closing");
        assert_eq!(flow_state(IPPROTO_TCP, TUNNEL_RETURN | SYN_ONLY, None), "syn-sent");
        assert_eq!(flow_state(IPPROTO_UDP, DNAT, None), "active");
        assert_eq!(flag_names(DNAT | SEEN_RST), ["dnat", "rst"]);
    }

    #[test]
    fn frontend_labels() {
        let k = |addr: [u8; 4], port: u16, proto| FrontendKey {
            addr: datapath::ip_be(Ipv4Addr::from(addr)),
            port: port.to_be(),
            proto,
            _pad: 0,
        };
        assert_eq!(frontend_label(&k([0, 0, 0, 0], 80, IPPROTO_TCP)), "*:80/tcp");
        assert_eq!(frontend_label(&k([10, 0, 1, 2], 0, IPPROTO_UDP)), "10.0.1.2:*/udp");
        let svc = |id, flags| Service { id, count: 1, net_id: 0, flags };
        assert_eq!(frontend_kind(&k([0, 0, 0, 0], 80, IPPROTO_TCP), &svc(5, 0)), "published");
        assert_eq!(frontend_kind(&k([0, 0, 0, 0], 80, IPPROTO_TCP), &svc(SERVICE_ID_BASE, svc_flags::MESH)), "mesh");
        assert_eq!(frontend_kind(&k([10, 0, 1, 2], 0, IPPROTO_TCP), &svc(SERVICE_ID_BASE + 1, svc_flags::VIP)), "vip");
    }
}
