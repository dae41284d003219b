//! The service API: create, update, rm, ls, inspect, and the task list `service ps` shows.
use crate::cluster::etcd::Reads;
use std::collections::{BTreeMap, HashMap};

use chrono::Utc;

use crate::{
    api::{
        self, ApiError, ApiResult, EndpointPortConfig, EndpointSpec, EndpointVirtualIp, ErrorKind,
        NetworkAttachmentConfig, ObjectVersion, Replicas, Service, ServiceCreateRequest, ServiceEndpoint, ServiceMode,
        ServiceModeReplicated, ServiceUpdateConfig, ServiceUpdateRequest, ServiceUpdateStatus, SwarmTask,
        SwarmTaskStatus, Task, TaskAddress, TaskContainerStatus, TaskNetwork, TaskNetworkAttachment, TaskSpec,
        TaskSpecContainerSpec, TaskSpecPlacement, filters::Filters,
    },
    cluster,
    daemon::Daemon,
    images::HOST_IMAGE,
    model::{
        FailureAction, HostPorts, NetworkRecord, ServicePort, ServiceRecord, ServiceSpec, Status, TaskRecord,
        TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, Vip,
    },
    names, network,
    portspec::Proto,
    store::Shared,
};

use super::{respec, scheduler::parse_constraint, update};

/// Parses `P:T[/udp]` (and `T` alone is refused: the routing mesh needs a published port).
pub fn parse_service_port(s: &str) -> Result<ServicePort, String> {
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, pr)) => (p, pr.parse::<Proto>().map_err(|_| format!("invalid protocol in {s:?}: use tcp or udp"))?),
        None => (s, Proto::Tcp),
    };
    let (p, t) =
        ports.split_once(':').ok_or_else(|| format!("invalid publish {s:?}: expected PUBLISHED:TARGET[/udp]"))?;
    let parse = |x: &str| -> Result<u16, String> {
        match x.parse::<u32>() {
            Ok(v) if (1..=65535).contains(&v) => Ok(v as u16),
            _ => Err(format!("invalid port {x:?} in {s:?}: must be 1-65535")),
        }
    };
    Ok(ServicePort { published: parse(p)?, target: parse(t)?, proto })
}

/// Service names are unique in the swarm.
fn check_name_free(name: &str, all: &[ServiceRecord]) -> ApiResult<()> {
    if all.iter().any(|s| s.spec.name == name) {
        return Err(ApiError::conflict(format!("service {name} already exists")));
    }
    Ok(())
}

impl Daemon {
    pub async fn service_create(&self, req: ServiceCreateRequest) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let (mut spec, wanted) = respec::checked_spec(req)?;
        // refuse early what is already taken; the decision is made again under the guard below
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        check_name_free(&spec.name, &all)?;
        self.check_ports_free(&spec.ports, &all, &self.other_nodes_host_ports().await?, None)?;
        self.attach_networks(&mut spec, wanted).await?;
        let id = names::new_id()[..25].to_string();
        let mut vips = Vec::new();
        for nid in &spec.networks {
            let net = self.find_network(nid)?;
            let ip = {
                let _g = self.op.lock().await;
                net.driver().allocate(&self.net_cx(), &net, None, &format!("vip-{id}")).await?
            };
            vips.push(Vip { network_id: nid.clone(), ip });
        }
        let rec = ServiceRecord {
            id: id.clone(),
            spec,
            vips,
            created: Utc::now(),
            updated: Utc::now(),
            previous_spec: None,
            retained_vips: Vec::new(),
            update_status: None,
        };
        // name and ports are decided from the whole set and committed only if no other manager
        // committed meanwhile; a loser gives its addresses back
        let committed = loop {
            let seen = self.shared().guard_revision(cluster::SERVICES_GUARD).await?;
            let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
            let other_nodes = self.other_nodes_host_ports().await?;
            if let Err(e) = check_name_free(&rec.spec.name, &all)
                .and_then(|_| self.check_ports_free(&rec.spec.ports, &all, &other_nodes, None))
            {
                break Err(e);
            }
            match self.shared().put_guarded(cluster::SERVICES_GUARD, seen, &rec).await {
                Ok(true) => break Ok(()),
                Ok(false) => continue,
                Err(e) => break Err(e.into()),
            }
        };
        if let Err(e) = committed {
            for v in &rec.vips {
                let _ = self.release_ip(&v.network_id, v.ip).await;
            }
            return Err(e);
        }
        // its name resolves to its VIPs when the command returns
        self.note_service(&rec.id, Some(&rec)).await;
        self.services.changed.notify_waiters();
        self.events.emit("service", "create", &rec.id, "swarm", &[("name", rec.spec.name.clone())]);
        Ok(rec)
    }

    /// Other nodes' published host ports (a swarm's; none on a lone node).
    pub(in crate::daemon) async fn other_nodes_host_ports(&self) -> ApiResult<Vec<HostPorts>> {
        let (Shared::Cluster(etcd, _), Some(cluster)) = (self.shared(), &self.cluster) else { return Ok(Vec::new()) };
        let mine = cluster::key_host_ports(&cluster.node_id);
        Ok(etcd
            .list::<HostPorts>(cluster::HOST_PORTS)
            .await?
            .into_iter()
            .filter(|(k, _)| *k != mine)
            .map(|(_, h)| h)
            .collect())
    }

    /// Refuses published ports that a service (other than `except`) or a container on any node
    /// (`other_nodes`: their claims; this node's own containers are read here) already publishes.
    pub(in crate::daemon) fn check_ports_free(
        &self,
        ports: &[ServicePort],
        all: &[ServiceRecord],
        other_nodes: &[HostPorts],
        except: Option<&str>,
    ) -> ApiResult<()> {
        for p in ports {
            if let Some(o) = all
                .iter()
                .filter(|s| Some(s.id.as_str()) != except)
                .find(|s| s.spec.ports.iter().any(|q| q.published == p.published && q.proto == p.proto))
            {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by service {}",
                    p.published, p.proto, o.spec.name
                )));
            }
            if let Some(c) = self.containers_shared()?.values().find(|c| {
                c.state.status == Status::Running
                    && c.ports.iter().any(|b| b.binding.host_port == p.published && b.binding.proto == p.proto)
            }) {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by container {} on this node",
                    p.published, p.proto, c.name
                )));
            }
            for n in other_nodes {
                if let Some(c) = n.ports.iter().find(|c| c.port == p.published && c.proto == p.proto) {
                    return Err(ApiError::conflict(format!(
                        "port {}/{} is already published by container {} on node {}",
                        p.published, p.proto, c.container, n.hostname
                    )));
                }
            }
        }
        Ok(())
    }

    /// The swarm's `ingress` overlay: services without a network publish through it. Created by
    /// the first such service; when managers race to create it, one wins and the others use it.
    pub(in crate::daemon) async fn ingress_network(&self) -> ApiResult<NetworkRecord> {
        if let Ok(n) = self.find_network("ingress") {
            return Ok(n);
        }
        let req =
            api::NetworkCreateRequest { name: "ingress".into(), driver: Some("overlay".into()), ..Default::default() };
        let _g = self.op.lock().await;
        match self.network_create_locked(req).await {
            Err(e) if e.kind == ErrorKind::Conflict => {
                network::adopt_swarm_network(&self.net_cx(), "ingress").await?.ok_or(e)
            }
            r => r,
        }
    }

    /// Applies `req` to the service; `version` (docker's `?version=`) is the version the
    /// request was made from: if the service changed since, the request would undo that change
    /// and is refused.
    pub async fn service_update(
        &self,
        key: &str,
        version: Option<u64>,
        req: ServiceUpdateRequest,
    ) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let orig = self.find_service(key).await?;
        if let Some(v) = version
            && v != ObjectVersion::digest(&(&orig.updated, &orig.spec)).index
        {
            return Err(ApiError::conflict(format!(
                "update out of sequence: service {} changed since version {v} was read",
                orig.spec.name
            )));
        }
        let now = Utc::now();
        let mut s = orig.clone();
        if let Some(spec) = &req.spec {
            // docker's whole-spec update (`stack deploy` again): nothing else may come with it
            if req != (ServiceUpdateRequest { spec: req.spec.clone(), ..Default::default() }) {
                return Err(ApiError::bad_request("a whole spec cannot be combined with other changes"));
            }
            s.spec = self.whole_spec(&orig.spec, spec.clone()).await?;
            if s.spec == orig.spec {
                // deploying the same file again changes nothing
                return Ok(orig);
            }
            begin_update(&mut s, &orig.spec, now);
        } else if req.rollback {
            if s.previous_spec.is_none() {
                return Err(ApiError::bad_request(format!("service {} does not have a previous spec", s.spec.name)));
            }
            update::swap_for_rollback(&mut s);
            s.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted,
                started_at: now,
                completed_at: None,
                message: "manually requested rollback".into(),
            });
        } else {
            self.apply_update(&mut s, &req).await?;
            begin_update(&mut s, &orig.spec, now);
        }
        // VIPs: the spec's networks have one (kept, taken back from the retained ones, or new);
        // the previous spec's keep theirs for a rollback; the rest are given back after the commit
        let mut known: Vec<Vip> = orig.vips.iter().chain(&orig.retained_vips).cloned().collect();
        let mut fresh = Vec::new();
        let committed: ApiResult<Vec<Vip>> = async {
            for nid in s.spec.networks.clone() {
                if !known.iter().any(|v| v.network_id == nid) {
                    let net = self.find_network(&nid)?;
                    let ip = {
                        let _g = self.op.lock().await;
                        net.driver().allocate(&self.net_cx(), &net, None, &format!("vip-{}", s.id)).await?
                    };
                    let v = Vip { network_id: nid, ip };
                    fresh.push(v.clone());
                    known.push(v);
                }
            }
            let prev_nets: &[String] = s.previous_spec.as_ref().map_or(&[], |p| &p.networks);
            s.vips =
                s.spec.networks.iter().filter_map(|n| known.iter().find(|v| &v.network_id == n).cloned()).collect();
            let (retained, released): (Vec<Vip>, Vec<Vip>) = known
                .iter()
                .filter(|v| !s.spec.networks.contains(&v.network_id))
                .cloned()
                .partition(|v| prev_nets.contains(&v.network_id));
            s.retained_vips = retained;
            s.updated = now;
            let added: Vec<ServicePort> =
                s.spec.ports.iter().filter(|p| !orig.spec.ports.contains(p)).cloned().collect();
            if added.is_empty() {
                self.shared().put(&s).await?;
                return Ok(released);
            }
            // new published ports are decided under the services guard, as at create
            loop {
                let seen = self.shared().guard_revision(cluster::SERVICES_GUARD).await?;
                let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
                if !all.iter().any(|o| o.id == s.id) {
                    // removed meanwhile (the lookup above was before the guard)
                    return Err(ApiError::not_found(format!("service {} not found", s.spec.name)));
                }
                self.check_ports_free(&added, &all, &self.other_nodes_host_ports().await?, Some(&s.id))?;
                if self.shared().put_guarded(cluster::SERVICES_GUARD, seen, &s).await? {
                    return Ok(released);
                }
            }
        }
        .await;
        // the VIPs of networks neither spec has go back once committed; new ones if not
        let give_back = match &committed {
            Ok(released) => released,
            Err(_) => &fresh,
        };
        for v in give_back {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        committed?;
        // names on added networks resolve, and on removed ones go, when the command returns
        self.note_service(&s.id, Some(&s)).await;
        self.services.changed.notify_waiters();
        self.events.emit("service", "update", &s.id, "swarm", &[("name", s.spec.name.clone())]);
        Ok(s)
    }

    /// Applies a `service update`'s changes to `s`, checking each; the first bad one is the error
    /// and nothing is recorded.
    async fn apply_update(&self, s: &mut ServiceRecord, req: &ServiceUpdateRequest) -> ApiResult<()> {
        let spec = &mut s.spec;
        if let Some(r) = parse_replicas(req.replicas.as_ref()).map_err(ApiError::bad_request)? {
            spec.replicas = r;
        }
        if let Some(image) = &req.image {
            if image.trim().is_empty() {
                return Err(ApiError::bad_request("no image specified for the service"));
            }
            spec.image = image.trim().to_string();
        }
        if let Some(args) = &req.args {
            spec.cmd = args.clone();
        }
        if spec.image == HOST_IMAGE && spec.cmd.is_empty() {
            return Err(ApiError::bad_request("no command specified for the service"));
        }
        let add = req
            .publish_add
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        self.check_ports_free(&add, &all, &self.other_nodes_host_ports().await?, Some(&s.id))?;
        for r in &req.publish_rm {
            let (port, proto) = match r.split_once('/') {
                Some((p, pr)) => (
                    p.to_string(),
                    pr.parse::<Proto>().map_err(|_| ApiError::bad_request(format!("invalid protocol in {r:?}")))?,
                ),
                None => (r.clone(), Proto::Tcp),
            };
            let port: u16 = port
                .split(':')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid port {r:?}")))?;
            let before = spec.ports.len();
            spec.ports.retain(|p| !(p.published == port && p.proto == proto));
            if before == spec.ports.len() {
                return Err(ApiError::bad_request(format!("service {} does not publish {r}", spec.name)));
            }
        }
        for p in add {
            if !spec.ports.contains(&p) {
                spec.ports.push(p);
            }
        }
        for k in &req.env_rm {
            let k = k.split('=').next().unwrap_or("");
            spec.env.retain(|x| x.split('=').next() != Some(k));
        }
        for e in &req.env_add {
            let k = e.split('=').next().unwrap_or("");
            if k.is_empty() {
                return Err(ApiError::bad_request(format!("invalid environment variable {e:?}: expected KEY=VALUE")));
            }
            spec.env.retain(|x| x.split('=').next() != Some(k));
            spec.env.push(e.clone());
        }
        for c in &req.constraint_rm {
            spec.constraints.retain(|x| x.replace(' ', "") != c.replace(' ', ""));
        }
        for c in &req.constraint_add {
            parse_constraint(c).map_err(ApiError::bad_request)?;
            if !spec.constraints.contains(c) {
                spec.constraints.push(c.clone());
            }
        }
        for n in &req.network_rm {
            // by name or id; a network deleted since is still removable by its id
            let id = match self.find_network(n) {
                Ok(net) => net.id,
                Err(_) => spec.networks.iter().find(|id| id.starts_with(n.as_str())).cloned().unwrap_or_default(),
            };
            if !spec.networks.contains(&id) {
                return Err(ApiError::bad_request(format!("service {} is not attached to network {n}", spec.name)));
            }
            spec.networks.retain(|x| *x != id);
            spec.aliases.remove(&id);
        }
        for n in &req.network_add {
            let net = {
                let _g = self.op.lock().await;
                self.find_network_or_adopt(n).await?
            };
            self.check_service_network(&net)?;
            if spec.networks.contains(&net.id) {
                return Err(ApiError::bad_request(format!(
                    "service {} is already attached to network {}",
                    spec.name, net.name
                )));
            }
            spec.networks.push(net.id);
        }
        if spec.networks.is_empty() {
            return Err(ApiError::bad_request(format!(
                "service {} would be left without a network: add another one first",
                spec.name
            )));
        }
        update::apply_flags(&mut spec.update_config, &req.update_config, "update").map_err(ApiError::bad_request)?;
        update::apply_flags(&mut spec.rollback_config, &req.rollback_config, "rollback")
            .map_err(ApiError::bad_request)?;
        if req.force {
            spec.force_update += 1;
        }
        Ok(())
    }

    pub async fn service_remove(&self, key: &str) -> ApiResult<()> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let s = self.find_service(key).await?;
        self.shared().delete::<ServiceRecord>(&s.id).await?;
        for mut t in self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id) {
            t.desired_running = false;
            self.shared().put(&t).await?;
        }
        for v in s.vips.iter().chain(&s.retained_vips) {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        // its name and `tasks.` name go when the command returns
        self.note_service(&s.id, None).await;
        self.services.changed.notify_waiters();
        self.events.emit("service", "remove", &s.id, "swarm", &[("name", s.spec.name.clone())]);
        Ok(())
    }

    /// `GET /services?filters=...&status=true`: docker's keys `id` (prefix), `name` (prefix, as
    /// swarmkit's), `label` and `mode`; with `status`, each service's running and desired tasks.
    pub async fn service_list(&self, f: &Filters, status: bool) -> ApiResult<Vec<Service>> {
        let services: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        let tasks: Vec<TaskRecord> = if status { self.shared().list::<TaskRecord>().await? } else { Vec::new() };
        let nets = self.networks()?;
        // counted once: counting each service's tasks by a walk of all tasks cost services × tasks
        let mut running: HashMap<&str, u64> = HashMap::new();
        for t in tasks.iter().filter(|t| t.desired_running && t.state == TaskState::Running) {
            *running.entry(t.service_id.as_str()).or_default() += 1;
        }
        let mut out: Vec<Service> = services
            .into_iter()
            .filter(|s| {
                f.any("id", |v| s.id.starts_with(v))
                    && f.any("name", |v| s.spec.name.starts_with(v))
                    && f.any("mode", |v| v == "replicated")
                    && f.labels_match(&s.spec.labels)
            })
            .map(|s| {
                let service_status = status.then(|| {
                    let running = running.get(s.id.as_str()).copied().unwrap_or(0);
                    api::ServiceStatus { running_tasks: running, desired_tasks: s.spec.replicas, completed_tasks: 0 }
                });
                let mut v = api_service(s, &nets);
                v.service_status = service_status;
                v
            })
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    pub async fn service_inspect(&self, key: &str) -> ApiResult<Service> {
        let s = self.find_service(key).await?;
        Ok(api_service(s, &self.networks()?))
    }

    /// `GET /tasks?filters=...`: docker's keys `id` (prefix), `name` (`SERVICE.SLOT`), `service`
    /// (id, prefix or name), `node` (id or hostname), `label` (the service's labels),
    /// `desired-state` and the CLI's `_up-to-date` (tasks of the service's current spec).
    pub async fn task_list(&self, f: &Filters) -> ApiResult<Vec<SwarmTask>> {
        let services: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        let wanted_nodes: Vec<String> = if f.get("node").is_empty() {
            Vec::new()
        } else {
            let (nodes, _) = self.cluster_nodes(Reads::Linearizable).await?;
            f.get("node")
                .iter()
                .map(|k| nodes.iter().find(|n| n.hostname == *k).map_or_else(|| k.clone(), |n| n.id.clone()))
                .collect()
        };
        let mut tasks: Vec<TaskRecord> = self.shared().list::<TaskRecord>().await?;
        tasks.sort_by_key(|a| (a.service_name.clone(), a.slot, std::cmp::Reverse(a.created)));
        let nets = self.networks()?;
        Ok(tasks
            .iter()
            .filter_map(|t| {
                let s = services.iter().find(|s| s.id == t.service_id)?;
                let keep = f.any("id", |v| t.id.starts_with(v))
                    && f.any("name", |v| v == format!("{}.{}", t.service_name, t.slot))
                    && f.any("service", |v| v == s.spec.name || s.id.starts_with(v))
                    && (wanted_nodes.is_empty() || wanted_nodes.iter().any(|n| t.node_id.starts_with(n.as_str())))
                    && f.any("desired-state", |v| v == if t.desired_running { "running" } else { "shutdown" })
                    && f.any("_up-to-date", |v| (v == "true" || v == "1") == update::up_to_date(s, t))
                    && f.labels_match(&s.spec.labels);
                keep.then(|| api_task(s, t, &nets))
            })
            .collect())
    }

    pub async fn task_inspect(&self, key: &str) -> ApiResult<SwarmTask> {
        let services: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        let tasks: Vec<TaskRecord> = self.shared().list::<TaskRecord>().await?;
        let mut found = tasks.iter().filter(|t| !key.is_empty() && t.id.starts_with(key));
        let t = match (found.next(), found.next()) {
            (Some(t), None) => t,
            (Some(_), Some(_)) if !tasks.iter().any(|t| t.id == key) => {
                return Err(ApiError::bad_request(format!("task {key} is ambiguous")));
            }
            (Some(_), Some(_)) => tasks.iter().find(|t| t.id == key).expect("checked"),
            (None, _) => return Err(ApiError::not_found(format!("task {key} not found"))),
        };
        let s = services
            .iter()
            .find(|s| s.id == t.service_id)
            .ok_or_else(|| ApiError::not_found(format!("task {key} not found")))?;
        Ok(api_task(s, t, &self.networks()?))
    }

    pub async fn service_tasks(&self, key: &str) -> ApiResult<Vec<Task>> {
        let s = self.find_service(key).await?;
        let (nodes, _) = self.cluster_nodes(Reads::Linearizable).await?;
        let mut tasks: Vec<TaskRecord> =
            self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id).collect();
        tasks.sort_by_key(|a| (a.slot, !a.desired_running, std::cmp::Reverse(a.created)));
        Ok(tasks
            .iter()
            .map(|t| {
                let node = nodes
                    .iter()
                    .find(|n| n.id == t.node_id)
                    .map(|n| n.hostname.clone())
                    .unwrap_or_else(|| t.node_id.clone());
                Task {
                    id: t.id.clone(),
                    name: format!("{}.{}", t.service_name, t.slot),
                    slot: t.slot,
                    node,
                    desired_state: if t.desired_running { "Running" } else { "Shutdown" }.into(),
                    current_state: title(t.state).into(),
                    since: t.updated,
                    error: t.message.clone(),
                    addresses: t
                        .addrs
                        .iter()
                        .map(|(n, ip)| TaskAddress { network_id: n.clone(), addr: ip.to_string() })
                        .collect(),
                    image: t.spec.as_ref().map_or_else(|| s.spec.image.clone(), |sp| sp.image.clone()),
                    created_at: Some(t.created),
                    up_to_date: update::up_to_date(&s, t),
                }
            })
            .collect())
    }
}

/// Records that `s.spec` replaced `prev`: the old spec is kept for a rollback when anything
/// changed, and a rolling update starts when the tasks must be replaced.
fn begin_update(s: &mut ServiceRecord, prev: &ServiceSpec, now: chrono::DateTime<Utc>) {
    if !s.spec.same_tasks(prev) {
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: now,
            completed_at: None,
            message: "update in progress".into(),
        });
    }
    if s.spec != *prev {
        s.previous_spec = Some(prev.clone());
    }
}

/// A service spec as docker's API shows it.
fn api_spec(spec: ServiceSpec) -> api::ServiceSpec {
    let ports = spec
        .ports
        .iter()
        .map(|p| EndpointPortConfig {
            protocol: p.proto,
            target_port: p.target,
            published_port: p.published,
            publish_mode: "ingress".into(),
        })
        .collect();
    api::ServiceSpec {
        name: spec.name,
        labels: spec.labels,
        mode: ServiceMode { replicated: ServiceModeReplicated { replicas: spec.replicas } },
        task_template: TaskSpec {
            container_spec: TaskSpecContainerSpec {
                image: spec.image,
                args: spec.cmd,
                env: spec.env,
                command: spec.entrypoint,
                labels: spec.container_labels,
            },
            placement: TaskSpecPlacement { constraints: spec.constraints },
            networks: spec
                .networks
                .into_iter()
                .map(|target| NetworkAttachmentConfig {
                    aliases: spec.aliases.get(&target).cloned().unwrap_or_default(),
                    target,
                })
                .collect(),
            force_update: spec.force_update,
        },
        update_config: api_update_config(&spec.update_config),
        rollback_config: api_update_config(&spec.rollback_config),
        endpoint_spec: EndpointSpec { mode: "vip".into(), ports },
    }
}

fn api_update_config(c: &UpdateConfig) -> ServiceUpdateConfig {
    ServiceUpdateConfig {
        parallelism: c.parallelism,
        delay: c.delay_ms * 1_000_000,
        failure_action: match c.failure_action {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
        .into(),
        monitor: c.monitor_ms * 1_000_000,
        max_failure_ratio: c.max_failure_ratio,
        order: match c.order {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
        .into(),
    }
}

impl Daemon {
    /// The output of the service's tasks whose containers are on this node, task by task in slot
    /// order, each line prefixed as docker does (`web.1.TASKID@node`). Tasks elsewhere are not
    /// included: nodes have no API to each other to fetch them through.
    pub async fn service_logs(&self, key: &str) -> ApiResult<Vec<api::ServiceLogLine>> {
        let s = self.find_service(key).await?;
        let me = self.my_node_id();
        let (nodes, _) = self.cluster_nodes(Reads::Linearizable).await?;
        let host = nodes.iter().find(|n| n.id == me).map_or_else(|| me.clone(), |n| n.hostname.clone());
        let mut tasks: Vec<TaskRecord> = self
            .shared()
            .list::<TaskRecord>()
            .await?
            .into_iter()
            .filter(|t| t.service_id == s.id && t.node_id == me && t.container_id.is_some())
            .collect();
        tasks.sort_by_key(|t| (t.slot, t.created));
        let mut out = Vec::new();
        for t in tasks {
            let Ok(c) = self.find_container(t.container_id.as_deref().unwrap_or_default()) else { continue };
            let logs = self.container_logs(&c, 0, 0)?;
            let task = format!("{}.{}.{}@{host}", s.spec.name, t.slot, &t.id[..12.min(t.id.len())]);
            for (text, stderr) in [(logs.stdout, false), (logs.stderr, true)] {
                out.extend(text.lines().map(|l| api::ServiceLogLine {
                    task: task.clone(),
                    node_id: me.clone(),
                    service_id: s.id.clone(),
                    task_id: t.id.clone(),
                    line: l.to_string(),
                    stderr,
                }));
            }
        }
        Ok(out)
    }
}

/// A service as docker's API shows it (without `ServiceStatus`, which only a listing asks for).
fn api_service(s: ServiceRecord, nets: &[NetworkRecord]) -> Service {
    let virtual_ips: Vec<EndpointVirtualIp> = s
        .vips
        .iter()
        .map(|v| {
            let net = nets.iter().find(|n| n.id == v.network_id);
            let prefix = net.and_then(|n| n.ipam.as_ref()).map(|i| i.config().subnet.prefix()).unwrap_or(32);
            EndpointVirtualIp {
                network_id: v.network_id.clone(),
                network_name: net.map(|n| n.name.clone()),
                addr: format!("{}/{}", v.ip, prefix),
            }
        })
        .collect();
    let version = ObjectVersion::digest(&(&s.updated, &s.spec));
    let spec = api_spec(s.spec);
    Service {
        id: s.id,
        version,
        created_at: s.created,
        updated_at: s.updated,
        endpoint: ServiceEndpoint {
            spec: spec.endpoint_spec.clone(),
            ports: spec.endpoint_spec.ports.clone(),
            virtual_ips,
        },
        spec,
        previous_spec: s.previous_spec.map(api_spec),
        update_status: s.update_status.map(|u| ServiceUpdateStatus {
            state: serde_json::to_value(u.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            started_at: u.started_at,
            completed_at: u.completed_at,
            message: u.message,
        }),
        service_status: None,
    }
}

/// A task as docker's API shows it: its state in docker's lower-case words, the spec it runs.
fn api_task(s: &ServiceRecord, t: &TaskRecord, nets: &[NetworkRecord]) -> SwarmTask {
    let spec = api_spec(t.spec.as_deref().unwrap_or(&s.spec).clone());
    let state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let failed = t.state == TaskState::Failed;
    SwarmTask {
        id: t.id.clone(),
        version: ObjectVersion::digest(&(&t.updated, &t.state, t.desired_running)),
        created_at: t.created,
        updated_at: t.updated,
        labels: BTreeMap::new(),
        spec: spec.task_template,
        service_id: s.id.clone(),
        slot: t.slot,
        node_id: t.node_id.clone(),
        status: SwarmTaskStatus {
            timestamp: t.updated,
            state,
            message: if failed { String::new() } else { t.message.clone() },
            err: if failed { t.message.clone() } else { String::new() },
            container_status: t.container_id.as_ref().map(|c| TaskContainerStatus {
                container_id: c.clone(),
                pid: 0,
                exit_code: 0,
            }),
        },
        desired_state: if t.desired_running { "running" } else { "shutdown" }.into(),
        networks_attachments: t
            .addrs
            .iter()
            .map(|(n, ip)| {
                let prefix = nets
                    .iter()
                    .find(|x| x.id == *n)
                    .and_then(|x| x.ipam.as_ref())
                    .map(|i| i.config().subnet.prefix())
                    .unwrap_or(32);
                TaskNetworkAttachment {
                    network: TaskNetwork { id: n.clone() },
                    addresses: vec![format!("{ip}/{prefix}")],
                }
            })
            .collect(),
    }
}

fn title(s: TaskState) -> &'static str {
    match s {
        TaskState::Assigned => "Assigned",
        TaskState::Starting => "Starting",
        TaskState::Running => "Running",
        TaskState::Shutdown => "Shutdown",
        TaskState::Failed => "Failed",
        TaskState::Orphaned => "Orphaned",
    }
}

/// The most replicas a service may have. Every replica is a task record in the shared store and a
/// container on some node; a typo (`--replicas 100000`, `scale web=99999999999`) must be refused at
/// once rather than make the scheduler write records for minutes.
pub const MAX_REPLICAS: u64 = 10_000;

/// A request's replica count: absent is None, anything but an integer from 0 to `MAX_REPLICAS`
/// an error.
pub(super) fn parse_replicas(v: Option<&Replicas>) -> Result<Option<u64>, String> {
    match v.map(Replicas::count).transpose()? {
        Some(n) if n > MAX_REPLICAS => {
            Err(format!("invalid replicas value {n}: a service has at most {MAX_REPLICAS} replicas"))
        }
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn service_ports() {
        assert_eq!(
            parse_service_port("80:8080").unwrap(),
            ServicePort { published: 80, target: 8080, proto: Proto::Tcp }
        );
        assert_eq!(parse_service_port("53:53/udp").unwrap().proto, Proto::Udp);
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp"] {
            assert!(parse_service_port(bad).is_err(), "{bad}");
        }
    }

    fn replicas_of(v: Value) -> Result<Option<u64>, String> {
        let req: ServiceUpdateRequest = serde_json::from_value(json!({ "Replicas": v })).unwrap();
        parse_replicas(req.replicas.as_ref())
    }

    #[test]
    fn replicas() {
        assert_eq!(replicas_of(json!(3)).unwrap(), Some(3));
        assert_eq!(replicas_of(json!("0")).unwrap(), Some(0));
        assert_eq!(replicas_of(json!(" 4 ")).unwrap(), Some(4));
        assert_eq!(replicas_of(Value::Null).unwrap(), None);
        assert_eq!(parse_replicas(None).unwrap(), None);
        assert!(replicas_of(json!(-1)).is_err());
        assert!(replicas_of(json!(1.5)).is_err());
        assert!(replicas_of(json!(u64::MAX)).is_err());
        assert!(replicas_of(json!("-2")).is_err());
        assert!(replicas_of(json!("x")).is_err());
        assert_eq!(replicas_of(json!(MAX_REPLICAS)).unwrap(), Some(MAX_REPLICAS));
        let e = replicas_of(json!(100_000)).unwrap_err();
        assert!(e.contains("at most 10000 replicas"), "{e}");
        assert!(replicas_of(json!("99999999999")).is_err());
    }
}
