//! `swarm init|join|leave|join-token`.
use std::{net::Ipv4Addr, sync::Arc};

use anyhow::Result;
use tracing::info;

use super::join::join_request;
use crate::{
    api::{ApiError, ApiResult, JoinTokens, ObjectVersion, Swarm, SwarmSpec},
    cluster::{self, ClusterState},
    daemon::Daemon,
    model::{Availability, ClusterInfo, Membership, NodeRecord, Role, Status},
    names, network,
};

impl Daemon {
    /// Makes this node the first manager of a new swarm; its node id, as docker answers.
    pub async fn swarm_init(self: &Arc<Self>, advertise: Option<&str>) -> ApiResult<String> {
        let _g = self.op.lock().await;
        let c = self.cluster()?.clone();
        if c.member().is_some() {
            return Err(ApiError::conflict(
                "This node is already part of a swarm. Use \"netbee swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let addr = self.local_addr(advertise).await?;
        let id = names::new_id();
        let info = ClusterInfo {
            id: id.clone(),
            created: chrono::Utc::now(),
            worker_token: cluster::new_token(&id),
            manager_token: cluster::new_token(&id),
        };
        if !c.etcd.create(&cluster::key_cluster(), &info).await? {
            return Err(ApiError::conflict(format!(
                "a swarm already exists in the cluster store {}: join it with \"netbee swarm join\"",
                c.etcd.endpoints().join(",")
            )));
        }
        self.become_member(&c, &info, addr, Role::Manager).await?;
        Ok(c.node_id.clone())
    }

    pub(in crate::daemon) async fn become_member(
        self: &Arc<Self>,
        c: &Arc<ClusterState>,
        info: &ClusterInfo,
        addr: Ipv4Addr,
        role: Role,
    ) -> Result<()> {
        let rec = NodeRecord {
            id: c.node_id.clone(),
            hostname: c.hostname.clone(),
            addr,
            role,
            availability: Availability::Active,
            labels: Default::default(),
            created: chrono::Utc::now(),
        };
        c.etcd.put(&cluster::key_node(&c.node_id), &rec).await?;
        let m = Membership { cluster_id: info.id.clone(), advertise: addr };
        self.store.set_meta("membership", &m)?;
        *c.membership.write().unwrap() = Some(m);
        self.start_member_tasks();
        info!(node = %c.node_id, %addr, ?role, "joined the swarm");
        Ok(())
    }

    pub async fn swarm_join(self: &Arc<Self>, token: &str, remote: &str, advertise: Option<&str>) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let c = self.cluster()?.clone();
        if c.member().is_some() {
            return Err(ApiError::conflict(
                "This node is already part of a swarm. Use \"netbee swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let (ip, port) = cluster::parse_manager_addr(remote).map_err(ApiError::bad_request)?;
        let addr = self.local_addr(advertise).await?;
        let answer = join_request(ip, port, token).await.map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let role = if answer.role == "manager" { Role::Manager } else { Role::Worker };
        let info: ClusterInfo = c
            .etcd
            .get(&cluster::key_cluster())
            .await?
            .ok_or_else(|| ApiError::not_found("the cluster store holds no swarm"))?;
        if answer.cluster_id != info.id {
            return Err(ApiError::bad_request(format!(
                "the manager at {remote} belongs to another swarm than this daemon's cluster store"
            )));
        }
        self.become_member(&c, &info, addr, role).await?;
        Ok(())
    }

    pub async fn swarm_leave(self: &Arc<Self>, force: bool) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let (c, _) = self.member()?;
        let c = c.clone();
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let me = nodes.iter().find(|(_, n)| n.id == c.node_id).map(|(_, n)| n.clone());
        let managers = nodes.iter().filter(|(_, n)| n.role == Role::Manager).count();
        if !force && me.as_ref().is_some_and(|m| m.role == Role::Manager) && managers == 1 && nodes.len() > 1 {
            return Err(ApiError::conflict(
                "You are attempting to leave the swarm on a node that is its last manager: the other nodes would be left without one. Promote another node first, or use --force.",
            ));
        }
        let nets = self.networks()?;
        let on_overlays: Vec<String> = self
            .containers()?
            .into_iter()
            .filter(|ct| {
                ct.state.status == Status::Running
                    && ct
                        .endpoints
                        .iter()
                        .any(|e| nets.iter().any(|n| n.id == e.network_id && n.scope() == network::Scope::Swarm))
            })
            .map(|ct| ct.name)
            .collect();
        if !on_overlays.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "containers on overlay networks are running here ({}): stop them or use --force",
                on_overlays.join(", ")
            )));
        }
        self.stop_member_tasks();
        let _ = network::forget_node(&c.etcd, &c.node_id).await;
        c.etcd.delete(&cluster::key_alive(&c.node_id)).await?;
        c.etcd.delete(&cluster::key_node(&c.node_id)).await?;
        self.store.delete_meta("membership")?;
        *c.membership.write().unwrap() = None;
        c.set_leader(None);
        network::leave_swarm(&self.net_cx()).await?;
        self.apply_peer_nodes(&c.node_id, &[], &[])?;
        info!("left the swarm");
        Ok(())
    }

    /// `GET /swarm`: the swarm and its join tokens (a manager's only, as docker's).
    pub async fn swarm_inspect(&self) -> ApiResult<Swarm> {
        let c = self.require_manager().await?;
        let info: ClusterInfo =
            c.etcd.get(&cluster::key_cluster()).await?.ok_or_else(|| ApiError::not_found("no swarm in the store"))?;
        Ok(Swarm {
            id: info.id,
            // the swarm's settings never change: one version
            version: ObjectVersion { index: 1 },
            created_at: info.created,
            updated_at: info.created,
            spec: SwarmSpec { name: "default".into(), labels: Default::default() },
            join_tokens: JoinTokens { worker: info.worker_token, manager: info.manager_token },
            root_rotation_in_progress: false,
            default_addr_pool: Vec::new(),
            subnet_size: 24,
            data_path_port: 4789,
        })
    }
}
