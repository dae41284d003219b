//! Published ports: choosing host ports and programming them as load-balancer frontends with a
//! single backend (the container). No firewall rule and no proxy process is involved.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use netbee_abi::{Backend, BackendKey, FrontendKey, IPPROTO_TCP, IPPROTO_UDP, Service, svc_flags};

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult},
    cluster,
    datapath::{ignore_missing, ip_be},
    model::{ContainerRecord, HostPortClaim, HostPorts, PublishedPort, ServiceRecord, Status},
    portspec::{self, PortBinding, PortSpec, Proto},
    store::Shared,
};

pub fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

pub fn frontend_key(b: &PortBinding) -> FrontendKey {
    let addr = if b.host_ip.is_unspecified() { 0 } else { ip_be(b.host_ip) };
    FrontendKey { addr, port: b.host_port.to_be(), proto: proto_num(b.proto), _pad: 0 }
}

fn overlaps(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a.is_unspecified() || b.is_unspecified() || a == b
}

/// Who holds a listening socket on the node for (port, proto): "process NAME (pid N)".
fn socket_owner(port: u16, proto: Proto) -> Option<String> {
    let table = match proto {
        Proto::Tcp => "/proc/net/tcp",
        Proto::Udp => "/proc/net/udp",
    };
    let text = std::fs::read_to_string(table).ok()?;
    let inode = text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        // TCP: only listeners (state 0A); UDP: any bound socket
        let listening = proto == Proto::Udp || f.get(3) == Some(&"0A");
        (local_port == port && listening).then(|| f.get(9).map(|s| s.to_string())).flatten()
    })?;
    let needle = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).map(|l| l.to_string_lossy() == needle).unwrap_or(false) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                return Some(format!("process {} (pid {pid})", comm.trim()));
            }
        }
    }
    Some("another process on the node".into())
}

fn bound_on_node(ip: Ipv4Addr, port: u16, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => std::net::TcpListener::bind((ip, port)).is_err(),
        Proto::Udp => std::net::UdpSocket::bind((ip, port)).is_err(),
    }
}

impl Daemon {
    /// Resolves the container's publish specs to concrete host ports, refusing ports that are
    /// taken (by another container's publish or by a socket on the node) with the owner's name.
    /// `services` are the swarm's (or this lone node's) services: their published ports answer on
    /// every node, so a container may not take them.
    pub(super) fn compute_bindings(
        &self,
        c: &ContainerRecord,
        services: &[ServiceRecord],
    ) -> ApiResult<Vec<PortBinding>> {
        let all = self.containers_shared()?;
        let others: Vec<(&str, PortBinding)> = all
            .values()
            .filter(|o| o.id != c.id && o.state.status == Status::Running)
            .flat_map(|o| o.ports.iter().map(move |p| (o.name.as_str(), p.binding)))
            .collect();
        let mut specs: Vec<PortSpec> = c.config.publish.clone();
        if c.config.publish_all {
            for (port, proto) in &c.config.expose {
                if !specs.iter().any(|s| s.container_port == *port && s.proto == *proto) {
                    specs.push(PortSpec { host_ip: None, host_ports: None, container_port: *port, proto: *proto });
                }
            }
        }
        let mut out: Vec<PortBinding> = Vec::new();
        for spec in specs {
            let host_ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            let taken_by = |ip: Ipv4Addr, port: u16, proto: Proto, out: &[PortBinding]| -> Option<String> {
                if let Some((name, _)) =
                    others.iter().find(|(_, b)| b.host_port == port && b.proto == proto && overlaps(b.host_ip, ip))
                {
                    return Some(format!("container {name}"));
                }
                if out.iter().any(|b| b.host_port == port && b.proto == proto && overlaps(b.host_ip, ip)) {
                    return Some("this container".into());
                }
                if let Some(s) =
                    services.iter().find(|s| s.spec.ports.iter().any(|p| p.published == port && p.proto == proto))
                {
                    return Some(format!("service {}", s.spec.name));
                }
                if bound_on_node(ip, port, proto) {
                    return Some(socket_owner(port, proto).unwrap_or_else(|| "another process on the node".into()));
                }
                None
            };
            let in_use = |ip: Ipv4Addr, port: u16, proto: Proto| taken_by(ip, port, proto, &out).is_some();
            let port = match portspec::choose_host_port(&spec, &in_use, portspec::DEFAULT_EPHEMERAL) {
                Ok(p) => p,
                Err(e) => {
                    let owner = match spec.host_ports {
                        Some((lo, hi)) if lo == hi => taken_by(host_ip, lo, spec.proto, &out),
                        _ => None,
                    };
                    let msg = match owner {
                        Some(o) => format!("{e} (held by {o})"),
                        None => e.to_string(),
                    };
                    return Err(ApiError::conflict(msg));
                }
            };
            out.push(PortBinding { host_ip, host_port: port, container_port: spec.container_port, proto: spec.proto });
        }
        Ok(out)
    }

    /// The container's host ports, decided as `compute_bindings` does. In a swarm they are also
    /// claimed in etcd (this node's `HostPorts`) under the services guard, against the services
    /// read at the guard's revision: a service created meanwhile on another manager makes the
    /// claim fail, and the decision is made again with it. While etcd cannot be reached, local
    /// containers keep working: the ports are checked against no services and claimed at the
    /// next full sync.
    pub(super) async fn claim_bindings(&self, c: &ContainerRecord) -> ApiResult<Vec<PortBinding>> {
        let (Shared::Cluster(etcd, _), Some(cluster)) = (self.shared(), &self.cluster) else {
            return self.compute_bindings(c, &self.services_for_ports().await);
        };
        loop {
            let decided = async {
                let seen = etcd.guard_revision(cluster::SERVICES_GUARD).await?;
                let services = self.shared().list::<ServiceRecord>().await?;
                anyhow::Ok((seen, services))
            }
            .await;
            let (seen, services) = match decided {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("published ports of services unknown, not checked: {e:#}");
                    return self.compute_bindings(c, &[]);
                }
            };
            let bindings = self.compute_bindings(c, &services)?;
            if bindings.is_empty() {
                return Ok(bindings);
            }
            let claims = self.host_ports(Some((c, &bindings)))?;
            match etcd
                .put_guarded(cluster::SERVICES_GUARD, seen, &cluster::key_host_ports(&cluster.node_id), &claims)
                .await
            {
                Ok(true) => return Ok(bindings),
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!("host ports of {} not claimed in the cluster store: {e:#}", c.name);
                    return Ok(bindings);
                }
            }
        }
    }

    /// This node's published host ports: its running containers' (but `c`'s own as `bindings`,
    /// when it is being started; without `c` when it is being stopped).
    fn host_ports(&self, starting: Option<(&ContainerRecord, &[PortBinding])>) -> Result<HostPorts> {
        let mut ports = Vec::new();
        for o in self.containers_shared()?.values() {
            if o.state.status != Status::Running || starting.is_some_and(|(c, _)| c.id == o.id) {
                continue;
            }
            ports.extend(o.ports.iter().map(|p| HostPortClaim {
                port: p.binding.host_port,
                proto: p.binding.proto,
                container: o.name.clone(),
            }));
        }
        if let Some((c, bindings)) = starting {
            ports.extend(bindings.iter().map(|b| HostPortClaim {
                port: b.host_port,
                proto: b.proto,
                container: c.name.clone(),
            }));
        }
        let hostname = self.cluster.as_ref().map(|c| c.hostname.clone()).unwrap_or_default();
        Ok(HostPorts { hostname, ports })
    }

    /// Rewrites this node's host-port claims from its running containers, leaving out `stopping`
    /// (whose ports are being released). Releasing needs no guard: it cannot make two owners.
    /// The full sync writes them too, for claims an etcd outage kept from being written.
    pub(super) async fn write_host_ports(&self, stopping: Option<&ContainerRecord>) {
        let (Shared::Cluster(etcd, _), Some(cluster)) = (self.shared(), &self.cluster) else { return };
        let claims = match self.host_ports(stopping.map(|c| (c, &[][..]))) {
            Ok(c) => c,
            Err(e) => return tracing::warn!("listing host ports: {e:#}"),
        };
        // Only a change is written. Every put is an event on every node's watch of /netbee/, each
        // event runs a full sync there, and the full sync calls this: unconditional puts made the
        // syncs of a swarm wake each other for ever (a 3-node swarm at rest: 250 events/s and
        // 20 % of a CPU per daemon; issue 18). This node is the key's only writer: its copy of
        // the store has what it last wrote.
        let key = cluster::key_host_ports(&cluster.node_id);
        if etcd.get_copy::<HostPorts>(&key).await.is_ok_and(|cur| cur.as_ref() == Some(&claims)) {
            return;
        }
        if let Err(e) = etcd.put(&key, &claims).await {
            tracing::warn!("host ports not updated in the cluster store: {e:#}");
        }
    }

    /// The services whose published ports containers must leave alone. While the cluster store
    /// cannot be read, none: local containers keep working through an etcd outage.
    pub(super) async fn services_for_ports(&self) -> Vec<ServiceRecord> {
        match self.shared().list::<ServiceRecord>().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("published ports of services unknown, not checked: {e:#}");
                Vec::new()
            }
        }
    }

    fn used_service_ids(&self) -> Result<std::collections::BTreeSet<u32>> {
        Ok(self.containers_shared()?.values().flat_map(|c| c.ports.iter().map(|p| p.service_id)).collect())
    }

    /// Programs the bindings towards the container's first interface.
    pub(super) fn publish(&self, c: &mut ContainerRecord, bindings: &[PortBinding]) -> Result<()> {
        let Some(backend_ip) = c.endpoints.first().map(|e| e.ip) else { return Ok(()) };
        let used = self.used_service_ids()?;
        // the lowest free ids, found in one walk: searching from 1 again for each binding cost
        // O(ports) lookups per binding, 10 ms per `run -p` at 10,000 published ports
        let mut next = 1;
        for b in bindings {
            while used.contains(&next) {
                next += 1;
            }
            c.ports.push(PublishedPort { binding: *b, service_id: next });
            next += 1;
        }
        // the intent is on disk before the kernel sees it (reconcile removes what is not)
        self.put_container(c)?;
        let mut dp = self.dp.lock().unwrap();
        for p in &c.ports {
            program_frontend(&mut dp, p, backend_ip)?;
        }
        Ok(())
    }

    pub(super) fn unpublish(&self, c: &mut ContainerRecord) -> Result<()> {
        let mut dp = self.dp.lock().unwrap();
        for p in &c.ports {
            remove_frontend(&mut dp, p)?;
        }
        c.ports.clear();
        Ok(())
    }
}

pub fn program_frontend(dp: &mut crate::datapath::Datapath, p: &PublishedPort, backend: Ipv4Addr) -> Result<()> {
    let b = &p.binding;
    let be = Backend { addr: ip_be(backend), port: b.container_port.to_be(), _pad: 0 };
    dp.backends.insert(BackendKey { service: p.service_id, slot: 1 }, be, 0).context("updating BACKENDS")?;
    let flags = if b.host_ip.is_loopback() { svc_flags::LOCAL_ONLY } else { 0 };
    let svc = Service { id: p.service_id, count: 1, net_id: 0, flags };
    dp.frontends.insert(frontend_key(b), svc, 0).context("updating FRONTENDS")?;
    Ok(())
}

pub fn remove_frontend(dp: &mut crate::datapath::Datapath, p: &PublishedPort) -> Result<()> {
    // the frontend goes first: no new flow may pick a backend slot that is about to vanish
    ignore_missing(dp.frontends.remove(&frontend_key(&p.binding)))?;
    ignore_missing(dp.backends.remove(&BackendKey { service: p.service_id, slot: 1 }))?;
    Ok(())
}
