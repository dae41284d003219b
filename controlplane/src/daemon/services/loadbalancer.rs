//! Load-balancer programming: every service gets a VIP frontend per network and a routing-mesh
//! frontend (its published ports, on every node address), with its running tasks as backends.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use netbee_abi::{Backend, BackendKey, FrontendKey, Service, svc_flags};

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

impl Daemon {
    /// Programs every service's VIP frontends (one per network) and routing-mesh frontends
    /// (published ports on every node address) with the running tasks as backends, ordered by
    /// slot so the rotation is the same on every pass.
    pub(in crate::daemon) fn program_services(
        &self,
        services: &[ServiceRecord],
        tasks: &[TaskRecord],
        alive: &HashSet<String>,
        nodes: &[NodeRecord],
    ) -> Result<()> {
        let nets = self.networks()?;
        let me = self.my_node_id();
        let mut dp = self.dp.lock().unwrap();
        // A task's address takes part only once this node delivers it to the task's node: the
        // lowest free address goes to the next task, so a replacement can get the address of a
        // lost node's task before the endpoint sync moves it, and would send its connections to
        // the old owner meanwhile.
        let delivered = |t: &TaskRecord, ip: Ipv4Addr| -> bool {
            let Ok(ep) = dp.endpoints.get(&ip_be(ip), 0) else { return false };
            if t.node_id == me || t.node_id == "local" {
                !datapath::is_remote(&ep)
            } else {
                datapath::is_remote(&ep) && nodes.iter().any(|n| n.id == t.node_id && u32::from(n.addr) == ep.node_ip)
            }
        };
        let mut want: Vec<(FrontendKey, u32, Vec<Backend>, u32)> = Vec::new();
        // the live tasks grouped once: filtering all tasks for each service made every pass cost
        // services × tasks
        let mut live_by_service: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
        for t in tasks
            .iter()
            .filter(|t| t.desired_running && t.state == TaskState::Running)
            .filter(|t| alive.contains(&t.node_id) || t.node_id == "local")
        {
            live_by_service.entry(t.service_id.as_str()).or_default().push(t);
        }
        for s in services {
            let mut live = live_by_service.remove(s.id.as_str()).unwrap_or_default();
            live.sort_by_key(|t| t.slot);
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
        }
        let want_vips: Vec<(u32, u32)> = services
            .iter()
            .flat_map(|s| s.vips.iter())
            .filter_map(|v| nets.iter().find(|n| n.id == v.network_id).map(|n| (ip_be(v.ip), n.net_id)))
            .collect();
        // The same as the last pass wrote: nothing to do. Every node runs this twice a second,
        // and the writes below walk all of FRONTENDS (also the published container ports: 10,000
        // entries on a full node) and rewrite every backend, one system call each — 7.8 % of a
        // CPU per node at rest with 1,000 tasks (issue 18). The maps have no other writer for
        // these ids; a full write every RESYNC still repairs anything that changed them.
        let wanted: datapath::ServicesWanted = (want, want_vips);
        if let Some((last, at)) = &dp.services_programmed
            && *last == wanted
            && at.elapsed() < RESYNC
        {
            return Ok(());
        }
        dp.services_programmed = None;
        let (want, want_vips) = &wanted;
        datapath::sync(&mut dp.vips, want_vips, |_, _| true)?;
        // ids: keep the one a frontend already has (its round-robin cursor), else a free one
        let existing: HashMap<FrontendKey, Service> =
            dp.frontends.iter().filter_map(|r| r.ok()).filter(|(_, v)| v.id >= SERVICE_ID_BASE).collect();
        let mut used: HashSet<u32> = HashSet::new();
        let mut ids: Vec<u32> = Vec::new();
        for (k, ..) in want.iter() {
            let id = existing.get(k).map(|s| s.id).filter(|id| !used.contains(id));
            ids.push(id.unwrap_or(0));
            if let Some(id) = id {
                used.insert(id);
            }
        }
        let mut next = SERVICE_ID_BASE;
        for id in ids.iter_mut().filter(|id| **id == 0) {
            while used.contains(&next) || existing.values().any(|s| s.id == next) {
                next += 1;
            }
            *id = next;
            used.insert(next);
            // a fresh frontend starts its counts at zero, whatever an earlier one of this id left
            let fresh = next;
            dp.prune_lb_counts(|k| k.service != fresh)?;
        }
        for ((key, net_id, backends, flags), id) in want.iter().zip(&ids) {
            let old_count = existing.get(key).map(|s| s.count).unwrap_or(0);
            let count = backends.len() as u32;
            // grow: slots first, then the count; shrink: the count first, then the slots
            for (i, b) in backends.iter().enumerate() {
                dp.backends.insert(BackendKey { service: *id, slot: i as u32 + 1 }, *b, 0)?;
            }
            let svc = Service { id: *id, count, net_id: *net_id, flags: *flags };
            if existing.get(key) != Some(&svc) {
                dp.frontends.insert(*key, svc, 0)?;
            }
            for slot in count + 1..=old_count.max(count) {
                ignore_missing(dp.backends.remove(&BackendKey { service: *id, slot }))?;
            }
        }
        let want_keys: HashSet<FrontendKey> = want.iter().map(|(k, ..)| *k).collect();
        for (k, s) in &existing {
            if !want_keys.contains(k) {
                ignore_missing(dp.frontends.remove(k))?;
                for slot in 1..=s.count.max(1) {
                    ignore_missing(dp.backends.remove(&BackendKey { service: s.id, slot }))?;
                }
            }
        }
        // only a pass that wrote everything may let the next ones skip (an error above returns
        // with it unset)
        dp.services_programmed = Some((wanted, std::time::Instant::now()));
        Ok(())
    }
}
