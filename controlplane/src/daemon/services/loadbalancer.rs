//! Load-balancer programming: every service gets a VIP frontend per network and a routing-mesh
//! frontend (its published ports, on every node address), with its running tasks as backends.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use anyhow::Result;
use netbee_abi::{Backend, BackendKey, Endpoint, FrontendKey, Service, svc_flags};

use super::ServiceSnapshot;
use crate::{
    daemon::{Daemon, ports::proto_num},
    datapath::{self, ignore_missing, ip_be},
    model::{NodeRecord, ServiceRecord, TaskRecord, TaskState},
    portspec::Proto,
};

/// Datapath service ids of published container ports stay below this; services use the rest.
pub const SERVICE_ID_BASE: u32 = 32768;

/// How long an unchanged wanted state may go without being written again.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// A frontend `program_services` wants: its key, network id, backends and flags.
type Wanted = (FrontendKey, u32, Vec<Backend>, u32);

/// What the last pass computed for each service, and from what. Every node runs a pass on every
/// change in the swarm, and one change (a task started) concerns one service: recomputing every
/// service's frontends from every task was most of a pass with 100 services (issue 18).
#[derive(Default)]
pub(in crate::daemon) struct WantedCache {
    /// The networks' datapath ids and the nodes' addresses the entries were computed with: when
    /// either changes, everything is computed again.
    nets: Vec<(String, u32)>,
    nodes: Vec<(String, Ipv4Addr)>,
    services: HashMap<String, WantedOfService>,
}

struct WantedOfService {
    /// The record and live tasks it was computed from.
    inputs: ServiceSnapshot,
    /// The ENDPOINTS entry of each live task address then (whether this node delivers to it).
    delivery: Vec<Option<Endpoint>>,
    frontends: Vec<Wanted>,
}

impl Daemon {
    /// Programs every service's VIP frontends (one per network) and routing-mesh frontends
    /// (published ports on every node address) with the running tasks as backends, ordered by
    /// slot so the rotation is the same on every pass.
    pub(in crate::daemon) fn program_services(
        &self,
        services: &[Arc<ServiceRecord>],
        tasks: &[Arc<TaskRecord>],
        alive: &HashSet<String>,
        nodes: &[NodeRecord],
    ) -> Result<()> {
        let nets = self.networks()?;
        let me = self.my_node_id();
        let mut dp = self.dp.lock().unwrap();
        let mut cache = self.services.wanted.lock().unwrap();
        let env_nets: Vec<(String, u32)> = nets.iter().map(|n| (n.id.clone(), n.net_id)).collect();
        let env_nodes: Vec<(String, Ipv4Addr)> = nodes.iter().map(|n| (n.id.clone(), n.addr)).collect();
        if cache.nets != env_nets || cache.nodes != env_nodes {
            *cache = WantedCache { nets: env_nets, nodes: env_nodes, services: HashMap::new() };
        }
        // A task's address takes part only once this node delivers it to the task's node: the
        // lowest free address goes to the next task, so a replacement can get the address of a
        // lost node's task before the endpoint sync moves it, and would send its connections to
        // the old owner meanwhile.
        let delivered = |t: &TaskRecord, ip: Ipv4Addr| -> bool {
            let Some(ep) = dp.endpoint(ip_be(ip)) else { return false };
            if t.node_id == me || t.node_id == "local" {
                !datapath::is_remote(ep)
            } else {
                datapath::is_remote(ep) && nodes.iter().any(|n| n.id == t.node_id && u32::from(n.addr) == ep.node_ip)
            }
        };
        let mut want: Vec<Wanted> = Vec::new();
        // the live tasks grouped once: filtering all tasks for each service made every pass cost
        // services × tasks (a fast hash: this runs over every task on every pass)
        let mut live_by_service: foldhash::HashMap<&str, Vec<&Arc<TaskRecord>>> = Default::default();
        for t in tasks
            .iter()
            .filter(|t| t.desired_running && t.state == TaskState::Running)
            .filter(|t| alive.contains(&t.node_id) || t.node_id == "local")
        {
            live_by_service.entry(t.service_id.as_str()).or_default().push(t);
        }
        let mut seen: foldhash::HashSet<&str> = Default::default();
        for s in services {
            let mut live = live_by_service.remove(s.id.as_str()).unwrap_or_default();
            live.sort_by_key(|t| t.slot);
            seen.insert(&s.id);
            let delivery: Vec<Option<Endpoint>> =
                live.iter().flat_map(|t| t.addrs.iter().map(|(_, ip)| dp.endpoint(ip_be(*ip)).copied())).collect();
            if let Some(c) = cache.services.get(&s.id)
                && c.inputs.same(s, &live)
                && c.delivery == delivery
            {
                want.extend(c.frontends.iter().cloned());
                continue;
            }
            let first = want.len();
            let mesh_net = s.spec.networks.first();
            for p in &s.spec.ports {
                let backends: Vec<Backend> = live
                    .iter()
                    .filter_map(|t| t.addrs.iter().find(|(n, _)| Some(n) == mesh_net).map(|(_, ip)| (*t, *ip)))
                    .filter(|(t, ip)| delivered(t, *ip))
                    .map(|(_, ip)| Backend { addr: ip_be(ip), port: p.target.to_be(), _pad: 0 })
                    .collect();
                let key = FrontendKey { addr: 0, port: p.published.to_be(), proto: proto_num(p.proto), _pad: 0 };
                want.push((key, 0, backends, svc_flags::MESH));
            }
            // a VIP balances every port (port 0 = keep the client's port), TCP and UDP, inside
            // its own network only
            for v in &s.vips {
                let net_id = nets.iter().find(|n| n.id == v.network_id).map(|n| n.net_id).unwrap_or(0);
                let backends: Vec<Backend> = live
                    .iter()
                    .filter_map(|t| t.addrs.iter().find(|(n, _)| *n == v.network_id).map(|(_, ip)| (*t, *ip)))
                    .filter(|(t, ip)| delivered(t, *ip))
                    .map(|(_, ip)| Backend { addr: ip_be(ip), port: 0, _pad: 0 })
                    .collect();
                for proto in [Proto::Tcp, Proto::Udp] {
                    let key = FrontendKey { addr: ip_be(v.ip), port: 0, proto: proto_num(proto), _pad: 0 };
                    want.push((key, net_id, backends.clone(), svc_flags::VIP));
                }
            }
            let entry =
                WantedOfService { inputs: ServiceSnapshot::new(s, &live), delivery, frontends: want[first..].to_vec() };
            cache.services.insert(s.id.clone(), entry);
        }
        cache.services.retain(|id, _| seen.contains(id.as_str()));
        let want_vips: Vec<(u32, u32)> = services
            .iter()
            .flat_map(|s| s.vips.iter())
            .filter_map(|v| nets.iter().find(|n| n.id == v.network_id).map(|n| (ip_be(v.ip), n.net_id)))
            .collect();
        // Only what differs from the last pass is written. Every node runs this on every change
        // in the cluster (and twice a second), and writing everything walked all of FRONTENDS
        // (also the published container ports: 10,000 entries on a full node) and rewrote every
        // backend, one system call each: at rest 7.8 % of a CPU per node with 1,000 tasks, and
        // while tasks started, the more the more tasks (issue 18). The maps have no other writer
        // for these ids; everything is written again every RESYNC, which repairs anything that
        // changed them, and after a pass that failed.
        let last = dp.services_programmed.take().filter(|p| p.written_all.elapsed() < RESYNC);
        if last.as_ref().is_none_or(|p| p.vips != want_vips) {
            datapath::sync(&mut dp.vips, &want_vips, |_, _| true)?;
        }
        // ids: keep the one a frontend already has (its round-robin cursor), else a free one
        let existing: HashMap<FrontendKey, Service> = match &last {
            Some(p) => p
                .frontends
                .iter()
                .map(|(k, f)| {
                    let svc = Service { id: f.id, count: f.backends.len() as u32, net_id: f.net_id, flags: f.flags };
                    (*k, svc)
                })
                .collect(),
            None => dp.frontends.iter().filter_map(|r| r.ok()).filter(|(_, v)| v.id >= SERVICE_ID_BASE).collect(),
        };
        let mut used: HashSet<u32> = HashSet::new();
        let mut ids: Vec<u32> = Vec::new();
        for (k, ..) in want.iter() {
            let id = existing.get(k).map(|s| s.id).filter(|id| !used.contains(id));
            ids.push(id.unwrap_or(0));
            if let Some(id) = id {
                used.insert(id);
            }
        }
        let taken: HashSet<u32> = existing.values().map(|s| s.id).collect();
        let mut next = SERVICE_ID_BASE;
        for id in ids.iter_mut().filter(|id| **id == 0) {
            while used.contains(&next) || taken.contains(&next) {
                next += 1;
            }
            *id = next;
            used.insert(next);
            // a fresh frontend starts its counts at zero, whatever an earlier one of this id left
            let fresh = next;
            dp.prune_lb_counts(|k| k.service != fresh)?;
        }
        let mut programmed = HashMap::with_capacity(want.len());
        for ((key, net_id, backends, flags), id) in want.into_iter().zip(ids) {
            let f = datapath::ServiceFrontend { id, net_id, backends, flags };
            if last.as_ref().and_then(|p| p.frontends.get(&key)) != Some(&f) {
                let old_count = existing.get(&key).map(|s| s.count).unwrap_or(0);
                let count = f.backends.len() as u32;
                // grow: slots first, then the count; shrink: the count first, then the slots
                for (i, b) in f.backends.iter().enumerate() {
                    dp.backends.insert(BackendKey { service: id, slot: i as u32 + 1 }, *b, 0)?;
                }
                let svc = Service { id, count, net_id, flags };
                if existing.get(&key) != Some(&svc) {
                    dp.frontends.insert(key, svc, 0)?;
                }
                for slot in count + 1..=old_count.max(count) {
                    ignore_missing(dp.backends.remove(&BackendKey { service: id, slot }))?;
                }
            }
            programmed.insert(key, f);
        }
        for (k, s) in &existing {
            if !programmed.contains_key(k) {
                ignore_missing(dp.frontends.remove(k))?;
                for slot in 1..=s.count.max(1) {
                    ignore_missing(dp.backends.remove(&BackendKey { service: s.id, slot }))?;
                }
            }
        }
        // only a pass that wrote everything it had to may let the next ones skip (an error
        // above returns with it unset)
        let written_all = last.map(|p| p.written_all).unwrap_or_else(std::time::Instant::now);
        dp.services_programmed =
            Some(datapath::ServicesProgrammed { frontends: programmed, vips: want_vips, written_all });
        Ok(())
    }
}
