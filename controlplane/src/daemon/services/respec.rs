//! A service's networks and aliases as a request names them, and docker's whole-spec update:
//! the new spec replaces the old one (what `stack deploy` sends for a service that exists), with
//! VIPs taken and given back for the networks that come and go, and the tasks replaced only when
//! what they run changed, so deploying the same file again changes nothing.
use std::collections::BTreeMap;

use chrono::Utc;

use super::api::{parse_replicas, parse_service_port};
use super::scheduler::parse_constraint;
use crate::{
    api::{ApiError, ApiResult, ServiceCreateRequest},
    cluster,
    daemon::Daemon,
    images::HOST_IMAGE,
    model::{ServiceRecord, ServiceSpec, TaskRecord, Vip},
    names,
    network::Scope,
};

/// Whether the tasks must be replaced to apply `new`: what they run or where they are attached
/// changed (replicas, ports, labels, aliases and constraints apply to running tasks).
fn tasks_differ(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    old.image != new.image
        || old.cmd != new.cmd
        || old.entrypoint != new.entrypoint
        || old.env != new.env
        || old.networks != new.networks
        || old.container_labels != new.container_labels
}

impl Daemon {
    /// The ids of the networks a service's tasks attach to, in order (the first carries the
    /// routing mesh); none given is the swarm's `ingress` (a lone node's `bridge`).
    pub(super) async fn service_networks(&self, wanted: Vec<String>) -> ApiResult<Vec<String>> {
        let mut networks: Vec<String> = Vec::new();
        for n in wanted {
            let net = self.find_network(&n)?;
            if self.in_swarm() && net.scope() != Scope::Swarm {
                return Err(ApiError::bad_request(format!(
                    "network {} cannot be used with services: only overlay networks span the swarm",
                    net.name
                )));
            }
            if !net.carries_containers() {
                return Err(ApiError::bad_request(format!("network {} cannot carry services", net.name)));
            }
            if !networks.contains(&net.id) {
                networks.push(net.id);
            }
        }
        if networks.is_empty() {
            let default = if self.in_swarm() { self.ingress_network().await? } else { self.find_network("bridge")? };
            networks.push(default.id);
        }
        Ok(networks)
    }

    /// A request's aliases keyed by network id; each network must be one the request attaches
    /// the service to (`wanted`, as named there).
    pub(super) fn service_aliases(
        &self,
        wanted: &[String],
        aliases: BTreeMap<String, Vec<String>>,
    ) -> ApiResult<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, list) in aliases {
            if !wanted.contains(&n) {
                return Err(ApiError::bad_request(format!(
                    "aliases on network {n}, which is not one of the service's networks"
                )));
            }
            for a in &list {
                names::validate_network_name(a)
                    .map_err(|e| ApiError::bad_request(e.replace("network name", "network alias")))?;
            }
            let net = self.find_network(&n)?;
            let e = out.entry(net.id).or_default();
            for a in list {
                if !e.contains(&a) {
                    e.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Replaces `s`'s spec by `req` (docker's `POST /services/{id}/update` with a whole spec).
    /// Validated as at create; an unchanged spec writes nothing and keeps every task.
    pub(super) async fn service_replace_spec(
        &self,
        mut s: ServiceRecord,
        req: ServiceCreateRequest,
    ) -> ApiResult<ServiceRecord> {
        if req.name != s.spec.name {
            return Err(ApiError::bad_request(format!(
                "renaming services is not supported: the spec names {:?}, the service is {}",
                req.name, s.spec.name
            )));
        }
        if req.image.is_empty() {
            return Err(ApiError::bad_request("no image specified for the service"));
        }
        if req.image == HOST_IMAGE && req.cmd.is_empty() {
            return Err(ApiError::bad_request("no command specified for the service"));
        }
        // as swarmkit: a replicated service without a count has one replica
        let replicas = parse_replicas(req.replicas.as_ref()).map_err(ApiError::bad_request)?.unwrap_or(1);
        let ports = req
            .publish
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        for c in &req.constraints {
            parse_constraint(c).map_err(ApiError::bad_request)?;
        }
        let aliases = self.service_aliases(&req.networks, req.network_aliases)?;
        let networks = self.service_networks(req.networks).await?;
        let spec = ServiceSpec {
            name: req.name,
            image: req.image,
            replicas,
            cmd: req.cmd,
            env: req.env,
            networks,
            ports,
            constraints: req.constraints,
            labels: req.labels,
            container_labels: req.container_labels,
            aliases,
            entrypoint: req.entrypoint,
        };
        if spec == s.spec {
            return Ok(s);
        }
        let old = std::mem::replace(&mut s.spec, spec);
        // a VIP on each network the service joins; those of the networks it leaves go back once
        // the new spec is committed
        let mut added = Vec::new();
        for nid in s.spec.networks.iter().filter(|n| !s.vips.iter().any(|v| &v.network_id == *n)) {
            let net = self.find_network(nid)?;
            let ip = {
                let _g = self.op.lock().await;
                net.driver().allocate(&self.net_cx(), &net, None, &format!("vip-{}", s.id)).await
            };
            match ip {
                Ok(ip) => added.push(Vip { network_id: nid.clone(), ip }),
                Err(e) => {
                    for v in &added {
                        let _ = self.release_ip(&v.network_id, v.ip).await;
                    }
                    return Err(e);
                }
            }
        }
        let (kept, removed): (Vec<Vip>, Vec<Vip>) =
            s.vips.drain(..).partition(|v| s.spec.networks.contains(&v.network_id));
        s.vips = kept;
        s.vips.extend(added.iter().cloned());
        s.updated = Utc::now();
        // published ports are decided under the services guard, as at create
        let committed = loop {
            let seen = self.shared().guard_revision(cluster::SERVICES_GUARD).await?;
            let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
            if !all.iter().any(|o| o.id == s.id) {
                // removed meanwhile (the caller's lookup was before the guard)
                break Err(ApiError::not_found(format!("service {} not found", s.spec.name)));
            }
            let other_nodes = self.other_nodes_host_ports().await?;
            if let Err(e) = self.check_ports_free(&s.spec.ports, &all, &other_nodes, Some(&s.id)) {
                break Err(e);
            }
            match self.shared().put_guarded(cluster::SERVICES_GUARD, seen, &s).await {
                Ok(true) => break Ok(()),
                Ok(false) => continue,
                Err(e) => break Err(e.into()),
            }
        };
        if let Err(e) = committed {
            for v in &added {
                let _ = self.release_ip(&v.network_id, v.ip).await;
            }
            return Err(e);
        }
        for v in &removed {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        if tasks_differ(&old, &s.spec) {
            // new tasks for every slot: the scheduler places a replacement for each slot whose
            // task no longer should run
            for mut t in self
                .shared()
                .list::<TaskRecord>()
                .await?
                .into_iter()
                .filter(|t| t.service_id == s.id && t.desired_running)
            {
                t.desired_running = false;
                t.message = "updated".into();
                self.shared().put(&t).await?;
            }
        }
        self.services.changed.notify_waiters();
        Ok(s)
    }
}
