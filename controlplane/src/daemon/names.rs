//! Service discovery: the embedded DNS server on every user network's gateway, answering for
//! the containers, aliases, services (their VIP) and `tasks.<service>` of the asking client's own
//! network only, and forwarding everything else to the node's resolvers.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{Arc, RwLock},
};

use tracing::warn;

use super::Daemon;
use crate::{
    cluster,
    dns::{self, Lookup, Names},
    model::Status,
    model::{RemoteEndpoint, ServiceRecord, TaskRecord, TaskState},
};

/// The embedded DNS of the node: the names it answers and a server per user network's gateway.
#[derive(Default)]
pub(super) struct DnsState {
    pub names: Arc<NameTable>,
    pub servers: std::sync::Mutex<HashMap<Ipv4Addr, dns::DnsServer>>,
}

/// Names per network, keyed by the network's gateway (where its containers send queries).
#[derive(Default)]
pub struct NameTable {
    by_gateway: RwLock<HashMap<Ipv4Addr, HashMap<String, Vec<Ipv4Addr>>>>,
    everywhere: RwLock<HashSet<String>>,
}

impl Names for NameTable {
    fn lookup(&self, _client: Ipv4Addr, local: Ipv4Addr, name: &str) -> Lookup {
        if let Some(ips) = self.by_gateway.read().unwrap().get(&local).and_then(|m| m.get(name)) {
            return Lookup::Found(ips.clone());
        }
        if self.everywhere.read().unwrap().contains(name) {
            // a name of another network: not visible from here, and never sent upstream
            return Lookup::NotFound;
        }
        Lookup::Forward
    }
}

impl Daemon {
    /// Rebuilds the name table and makes sure a DNS server listens on every user network's
    /// gateway (the default `bridge` network has no embedded DNS, as in docker).
    pub(super) async fn update_dns(&self, services: &[ServiceRecord], tasks: &[TaskRecord]) {
        let Ok(nets) = self.networks() else { return };
        let mut table: HashMap<String, HashMap<String, Vec<Ipv4Addr>>> = HashMap::new();
        let mut add = |net: &str, name: &str, ip: Ipv4Addr| {
            let e = table.entry(net.to_string()).or_default().entry(name.to_lowercase()).or_default();
            if !e.contains(&ip) {
                e.push(ip);
            }
        };
        for c in self.containers().unwrap_or_default().iter().filter(|c| c.state.status == Status::Running) {
            for e in &c.endpoints {
                add(&e.network_id, &c.name, e.ip);
                add(&e.network_id, &c.config.hostname, e.ip);
                if let Some(a) = c.attachments.iter().find(|a| a.network_id == e.network_id) {
                    for alias in &a.aliases {
                        add(&e.network_id, alias, e.ip);
                    }
                }
            }
        }
        if let Some(c) = self.cluster.as_ref().filter(|c| c.member().is_some())
            && let Ok(remote) = c.etcd.list::<RemoteEndpoint>(cluster::ENDPOINTS).await
        {
            for (_, e) in remote {
                add(&e.network_id, &e.container_name, e.ip);
                for alias in &e.aliases {
                    add(&e.network_id, alias, e.ip);
                }
            }
        }
        for s in services {
            for v in &s.vips {
                add(&v.network_id, &s.spec.name, v.ip);
                // a service's aliases are names of its VIP on their network only
                for alias in s.spec.aliases.get(&v.network_id).into_iter().flatten() {
                    add(&v.network_id, alias, v.ip);
                }
            }
            let mut live: Vec<&TaskRecord> = tasks
                .iter()
                .filter(|t| t.service_id == s.id && t.desired_running && t.state == TaskState::Running)
                .collect();
            live.sort_by_key(|t| t.slot);
            for t in live {
                for (net, ip) in &t.addrs {
                    add(net, &format!("tasks.{}", s.spec.name), *ip);
                }
            }
        }
        let everywhere: HashSet<String> = table.values().flat_map(|m| m.keys().cloned()).collect();
        let mut by_gateway = HashMap::new();
        for n in nets.iter().filter(|n| n.carries_containers() && n.name != "bridge") {
            let Some(gw) = n.ipam.as_ref().map(|i| i.config().gateway) else { continue };
            by_gateway.insert(gw, table.remove(&n.id).unwrap_or_default());
        }
        let gateways: HashSet<Ipv4Addr> = by_gateway.keys().copied().collect();
        *self.dns.names.by_gateway.write().unwrap() = by_gateway;
        *self.dns.names.everywhere.write().unwrap() = everywhere;

        let missing: Vec<Ipv4Addr> = {
            let mut servers = self.dns.servers.lock().unwrap();
            servers.retain(|gw, _| gateways.contains(gw));
            gateways.iter().filter(|g| !servers.contains_key(g)).copied().collect()
        };
        for gw in missing {
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let skip: Vec<IpAddr> = gateways.iter().map(|g| IpAddr::V4(*g)).collect();
            let upstreams = dns::upstreams_from_resolv_conf(&resolv, &skip);
            let names: Arc<dyn Names> = self.dns.names.clone();
            match dns::serve(SocketAddrV4::new(gw, 53), names, upstreams).await {
                Ok(server) => {
                    self.dns.servers.lock().unwrap().insert(gw, server);
                }
                Err(e) => warn!(gateway = %gw, "starting the embedded DNS server: {e:#}"),
            }
        }
    }
}
