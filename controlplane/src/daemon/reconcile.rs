//! Making the kernel match the store, at start-up and after any crash: what the store says exists
//! is (re)made exactly once, what the kernel has that the store does not know is removed. Also
//! the conntrack garbage collector.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use netbee_abi::{CtEntry, CtKey, IPPROTO_TCP, config, ct_flags};
use tracing::{info, warn};

use super::{Daemon, ports};
use crate::{
    datapath::{self, ignore_missing, ip_be},
    model::{ContainerRecord, NetworkRecord, Status, host_ifname},
    netns,
    network::kernel,
    runtime,
};

impl Daemon {
    pub(super) async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let nets = self.networks()?;
        let cx = self.net_cx();
        for n in &nets {
            n.driver().setup(&cx, n).await?;
        }
        for mut c in self.containers()? {
            if c.state.status == Status::Running {
                if runtime::process_alive(c.state.shim_pid, c.state.shim_start) {
                    if let Err(e) = self.restore_running(&mut c, &nets).await {
                        warn!(container = %c.name, "restoring its network: {e:#}");
                    }
                    continue;
                }
                info!(container = %c.name, "exited while the daemon was away");
                self.record_exit(&mut c).await?;
                if c.config.auto_remove {
                    self.store.delete::<ContainerRecord>(&c.id)?;
                    let _ = std::fs::remove_dir_all(self.container_dir(&c.id));
                }
            } else if !c.endpoints.is_empty() || !c.ports.is_empty() || self.netns_path(&c.id).exists() {
                // interrupted start or stop: finish undoing it
                self.teardown(&mut c).await;
                self.put_container(&c)?;
            }
        }
        self.remove_orphans().await
    }

    async fn restore_running(&self, c: &mut ContainerRecord, nets: &[NetworkRecord]) -> Result<()> {
        for (i, ep) in c.endpoints.clone().iter().enumerate() {
            let Some(net) = nets.iter().find(|n| n.id == ep.network_id) else { continue };
            if self.nl.link(&ep.host_ifname()).await?.is_some() {
                kernel::program_endpoint(&self.nl, &self.dp, net, ep, c.is_backend()).await?;
            } else {
                let default_route = i == 0 && !net.internal;
                kernel::attach_endpoint(
                    &self.nl,
                    &self.dp,
                    &self.netns_path(&c.id),
                    net,
                    ep,
                    default_route,
                    c.is_backend(),
                )
                .await?;
            }
        }
        if let Some(ep) = c.endpoints.first() {
            let mut dp = self.dp.lock().unwrap();
            for p in &c.ports {
                ports::program_frontend(&mut dp, p, ep.ip)?;
            }
        }
        Ok(())
    }

    async fn remove_orphans(&self) -> Result<()> {
        let nets = self.networks()?;
        let containers = self.containers()?;
        let running: Vec<&ContainerRecord> = containers.iter().filter(|c| c.state.status == Status::Running).collect();
        let endpoints: Vec<&crate::model::Endpoint> = running.iter().flat_map(|c| c.endpoints.iter()).collect();

        // addresses: exactly those of running endpoints stay allocated (drivers whose leases are
        // cluster-wide keep them in etcd and do nothing here)
        let cx = self.net_cx();
        for n in &nets {
            let in_use: HashSet<_> = endpoints.iter().filter(|e| e.network_id == n.id).map(|e| e.ip).collect();
            n.driver().reconcile_addresses(&cx, n, &in_use).await?;
        }

        let want_links: HashSet<String> = endpoints
            .iter()
            .map(|e| e.host_ifname())
            .chain(nets.iter().filter(|n| n.carries_containers()).map(|n| n.device()))
            .collect();
        let links = self.nl.links().await?;
        for l in &links {
            let ours = ["nbe", "nbp", "nbn"].iter().any(|p| l.name.starts_with(p)) && l.name.len() == 15;
            if ours && !want_links.contains(&l.name) {
                info!(link = %l.name, "removing orphaned interface");
                self.nl.delete_link(l.index).await?;
            }
        }
        let want_ns: HashSet<String> =
            containers.iter().filter(|c| c.state.status == Status::Running).map(|c| c.id.clone()).collect();
        if let Ok(dir) = std::fs::read_dir(self.cfg.root.join("netns")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !want_ns.contains(&name) {
                    info!(netns = %name, "removing orphaned network namespace");
                    netns::remove(&e.path())?;
                }
            }
        }

        let mut dp = self.dp.lock().unwrap();
        let want_pins: HashSet<String> =
            endpoints.iter().map(|e| kernel::endpoint_pin(&host_ifname(&e.endpoint_id))).collect();
        for pin in dp.pinned_links()? {
            if pin.starts_with("ep-") && !want_pins.contains(&pin) {
                dp.detach(&pin)?;
            }
        }
        let want_ips: HashSet<u32> = endpoints.iter().map(|e| ip_be(e.ip)).collect();
        dp.prune_local_endpoints(&want_ips)?;
        let ifindexes: HashSet<u32> = links.iter().filter(|l| want_links.contains(&l.name)).map(|l| l.index).collect();
        datapath::prune(&mut dp.ifaces, |k, _| ifindexes.contains(k))?;
        let want_nets: HashSet<u32> = nets.iter().filter(|n| n.ipam.is_some()).map(|n| n.net_id).collect();
        datapath::prune(&mut dp.networks, |k, _| want_nets.contains(k))?;
        let want_subnets: HashSet<(u32, u32)> = nets
            .iter()
            .filter_map(|n| n.ipam.as_ref())
            .map(|i| (i.config().subnet.prefix() as u32, ip_be(i.config().subnet.network())))
            .collect();
        for (plen, addr) in dp.subnets() {
            if !want_subnets.contains(&(plen, addr)) {
                dp.remove_subnet(ipnetwork::Ipv4Network::new(datapath::ip_from_be(addr), plen as u8)?)?;
            }
        }
        let published: Vec<&crate::model::PublishedPort> = running.iter().flat_map(|c| c.ports.iter()).collect();
        let want_fe: HashSet<_> = published.iter().map(|p| ports::frontend_key(&p.binding)).collect();
        // service frontends (ids from SERVICE_ID_BASE) belong to the service loop
        let base = super::services::SERVICE_ID_BASE;
        datapath::prune(&mut dp.frontends, |k, v| v.id >= base || want_fe.contains(k))?;
        let want_be: HashSet<u32> = published.iter().map(|p| p.service_id).collect();
        datapath::prune(&mut dp.backends, |k, _| k.service >= base || want_be.contains(&k.service))?;
        Ok(())
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The key of the other direction of the flow an entry belongs to (None for single entries).
pub fn paired_key(k: &CtKey, e: &CtEntry) -> Option<CtKey> {
    let rewrites_dst = e.flags & (ct_flags::DNAT | ct_flags::SNAT_REV) != 0;
    let rewrites_src = e.flags & (ct_flags::REVNAT | ct_flags::SNAT) != 0;
    if rewrites_dst {
        Some(CtKey::new(e.nat_addr, k.saddr, e.nat_port, k.sport, k.proto))
    } else if rewrites_src {
        Some(CtKey::new(k.daddr, e.nat_addr, k.dport, e.nat_port, k.proto))
    } else {
        None
    }
}

/// Idle timeouts when the conntrack table is under pressure (three quarters full): flows that
/// never got past their SYN and closing flows 1 s, UDP 10 s, established TCP flows unchanged.
/// The kernel's LRU, once full, evicts whichever entry its per-CPU lists reach first, active or
/// not; clearing what is least likely to carry more packets keeps room for the flows that do.
const PRESSURE_TIMEOUTS_NS: [u64; 4] = [1_000_000_000, u64::MAX, 1_000_000_000, 10_000_000_000];

/// The entries to delete at `now`: those of flows idle longer than their state allows (both
/// directions of a flow go together), with the pressure timeouts when the table is under
/// pressure.
pub fn doomed_flows(entries: &HashMap<CtKey, CtEntry>, now: u64, timeouts: [u64; 4], capacity: u32) -> Vec<CtKey> {
    let timeouts = if datapath::ct_under_pressure(entries.len() as u64, u64::from(capacity)) {
        std::array::from_fn(|i| timeouts[i].min(PRESSURE_TIMEOUTS_NS[i]))
    } else {
        timeouts
    };
    let mut doomed = Vec::new();
    for (k, e) in entries {
        let pair = paired_key(k, e).and_then(|pk| entries.get(&pk).map(|pe| (pk, *pe)));
        let (flags, last) = match &pair {
            Some((_, pe)) => (e.flags | pe.flags, e.last_seen.max(pe.last_seen)),
            None => (e.flags, e.last_seen),
        };
        // SYN_ONLY counts only while neither direction has moved past it
        let flags = match &pair {
            Some((_, pe)) if e.flags & pe.flags & ct_flags::SYN_ONLY == 0 => flags & !ct_flags::SYN_ONLY,
            _ => flags,
        };
        if now.saturating_sub(last) > flow_timeout(k.proto, flags, &timeouts) {
            doomed.push(*k);
        }
    }
    doomed
}

/// Idle timeout of a flow from the flags of its entries (both directions when paired).
pub fn flow_timeout(proto: u8, flags: u16, timeouts: &[u64; 4]) -> u64 {
    let [syn, est, closing, udp] = *timeouts;
    if proto != IPPROTO_TCP {
        return udp;
    }
    if flags & (ct_flags::SEEN_RST | ct_flags::SEEN_FIN) != 0 {
        closing
    } else if flags & ct_flags::SYN_ONLY != 0 {
        syn
    } else {
        est
    }
}

/// Heals what changed under the daemon while it runs: an uplink deleted and re-created (a NIC
/// reset) gets its programs back and the datapath its new ifindex; a running container whose
/// veth was deleted gets it back from its store record. Checked every 2 s: the same check start-up
/// makes, so there is one path for both.
pub async fn heal_loop(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Err(e) = d.heal_once().await {
            warn!("healing: {e:#}");
        }
    }
}

impl Daemon {
    async fn heal_once(&self) -> Result<()> {
        if let Some(up) = self.nl.link(&self.node.uplink).await? {
            let known = self.dp.lock().unwrap().config_value(config::UPLINK_IFINDEX);
            if known != u64::from(up.index) {
                super::attach_uplink(&mut self.dp.lock().unwrap(), &self.node.uplink, up.index)?;
                info!(uplink = %self.node.uplink, ifindex = up.index, "uplink re-created: programs re-attached");
                self.refresh_node_addrs().await?;
            }
        }
        let missing = |links: &HashSet<String>, c: &ContainerRecord| {
            c.state.status == Status::Running && c.endpoints.iter().any(|e| !links.contains(&e.host_ifname()))
        };
        let links: HashSet<String> = self.nl.links().await?.into_iter().map(|l| l.name).collect();
        if !self.containers()?.iter().any(|c| missing(&links, c)) {
            return Ok(());
        }
        let _g = self.op.lock().await;
        let links: HashSet<String> = self.nl.links().await?.into_iter().map(|l| l.name).collect();
        let nets = self.networks()?;
        for mut c in self.containers()?.into_iter().filter(|c| missing(&links, c)) {
            info!(container = %c.name, "an interface of the container was deleted: re-creating it");
            if let Err(e) = self.restore_running(&mut c, &nets).await {
                warn!(container = %c.name, "re-creating its interfaces: {e:#}");
            }
        }
        Ok(())
    }
}

/// Deletes flows idle longer than their state allows; both entries of a flow go together.
/// Every 5 s, every second while the table is under pressure.
pub async fn conntrack_gc(d: Arc<Daemon>) {
    let mut pause = Duration::from_secs(5);
    loop {
        tokio::time::sleep(pause).await;
        let capacity = d.dp.lock().unwrap().ct_capacity();
        match d.gc_once() {
            Ok((removed, live)) => {
                if removed > 0 {
                    info!(removed, live, "conntrack garbage collected");
                }
                let pressed = datapath::ct_under_pressure(live + removed, u64::from(capacity));
                if pressed && pause > Duration::from_secs(1) {
                    warn!(live, capacity, "conntrack table under pressure: collecting every second");
                }
                pause = Duration::from_secs(if pressed { 1 } else { 5 });
            }
            Err(e) => warn!("conntrack gc: {e:#}"),
        }
    }
}

impl Daemon {
    /// Moves every conntrack entry's last-seen time `seconds` into the past: lets a test check
    /// what the real timeouts do to a flow idle that long without waiting for it.
    pub fn age_conntrack(&self, seconds: u64) -> Result<u64> {
        let mut dp = self.dp.lock().unwrap();
        let entries: Vec<(CtKey, CtEntry)> = dp.ct.iter().filter_map(|r| r.ok()).collect();
        for (k, mut e) in entries.iter().copied() {
            e.last_seen = e.last_seen.saturating_sub(seconds * 1_000_000_000);
            dp.ct.insert(k, e, 0)?;
        }
        Ok(entries.len() as u64)
    }

    pub fn gc_once(&self) -> Result<(u64, u64)> {
        let mut dp = self.dp.lock().unwrap();
        let timeouts = [
            dp.config_value(config::CT_TIMEOUT_SYN),
            dp.config_value(config::CT_TIMEOUT_ESTABLISHED),
            dp.config_value(config::CT_TIMEOUT_CLOSING),
            dp.config_value(config::CT_TIMEOUT_UDP),
        ];
        let entries: HashMap<CtKey, CtEntry> = dp.ct.iter().filter_map(|r| r.ok()).collect();
        let doomed = doomed_flows(&entries, monotonic_ns(), timeouts, dp.ct_capacity());
        for k in &doomed {
            ignore_missing(dp.ct.remove(k))?;
        }
        let removed = doomed.len() as u64;
        // new-connection counters live as long as their backend is in its frontend's rotation
        // (the load-balancer writers hold the datapath lock to change BACKENDS, as this does)
        let backends: HashSet<(u32, u32, u16)> =
            dp.backends.iter().filter_map(|r| r.ok()).map(|(k, b)| (k.service, b.addr, b.port)).collect();
        dp.prune_lb_counts(|k| backends.contains(&(k.service, k.addr, k.port)))?;
        self.ct_gc_removed.fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok((removed, (entries.len() as u64).saturating_sub(removed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    /// SYN, established, closing, UDP (the daemon's defaults are of this order).
    const TIMEOUTS: [u64; 4] = [60 * S, 3600 * S, 10 * S, 120 * S];

    /// Both entries of a DNAT flow client:sport -> 10.0.0.1:80, translated to 10.0.1.5:8080.
    fn flow(sport: u16, proto: u8, flags: u16, last_seen: u64) -> [(CtKey, CtEntry); 2] {
        let (client, frontend, backend) = (0x0a00_0009, 0x0a00_0001, 0x0a00_0105);
        let entry =
            |nat_addr, nat_port, f| CtEntry { nat_addr, nat_port, flags: f | flags, last_seen, ..Default::default() };
        [
            (CtKey::new(client, frontend, sport, 80, proto), entry(backend, 8080, ct_flags::DNAT)),
            (CtKey::new(backend, client, 8080, sport, proto), entry(frontend, 80, ct_flags::REVNAT)),
        ]
    }

    /// Under pressure the flows least likely to carry more packets go first; established TCP
    /// flows keep their timeout, and nothing changes while the table has room.
    #[test]
    fn under_pressure_established_flows_are_kept_and_the_rest_goes_early() {
        let now = 1000 * S;
        let entries: HashMap<CtKey, CtEntry> = [
            flow(1001, IPPROTO_TCP, 0, now - 5 * S),                  // established, idle 5 s
            flow(1002, IPPROTO_TCP, ct_flags::SYN_ONLY, now - 2 * S), // never answered, 2 s
            flow(1003, IPPROTO_TCP, ct_flags::SEEN_FIN, now - 2 * S), // closing, 2 s
            flow(1004, libc::IPPROTO_UDP as u8, 0, now - 15 * S),     // UDP, idle 15 s
        ]
        .into_iter()
        .flatten()
        .collect();
        assert!(doomed_flows(&entries, now, TIMEOUTS, 1024).is_empty(), "a roomy table keeps every flow");
        // 8 entries in a table of 10: pressure
        assert!(datapath::ct_under_pressure(entries.len() as u64, 10));
        let mut gone: Vec<u16> = doomed_flows(&entries, now, TIMEOUTS, 10)
            .iter()
            .map(|k| if k.sport == 8080 { k.dport } else { k.sport })
            .collect();
        gone.sort();
        assert_eq!(gone, [1002, 1002, 1003, 1003, 1004, 1004], "both entries of each non-established flow");
    }
}
