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
            version: 0,
            updated: None,
            labels: Default::default(),
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
            version: ObjectVersion { index: info.version + 1 },
            created_at: info.created,
            updated_at: info.updated.unwrap_or(info.created),
            spec: SwarmSpec { name: "default".into(), labels: info.labels },
            join_tokens: JoinTokens { worker: info.worker_token, manager: info.manager_token },
            root_rotation_in_progress: false,
            default_addr_pool: Vec::new(),
            subnet_size: 24,
            data_path_port: 4789,
        })
    }

    /// `POST /swarm/update?version=N[&rotateWorkerToken=true][&rotateManagerToken=true]` with
    /// docker's whole swarm spec: its labels are kept and the tokens asked for are replaced (a
    /// node then joins only with the new one). netbee has none of swarmkit's other settings
    /// (raft, dispatcher, CA, task history, autolock): a spec that sets one is refused with the
    /// setting named, so `swarm update --task-history-limit 5` does not silently do nothing.
    pub async fn swarm_update(
        &self,
        version: Option<u64>,
        rotate_worker: bool,
        rotate_manager: bool,
        spec: &serde_json::Value,
    ) -> ApiResult<()> {
        let unsupported = unsupported_swarm_settings(spec);
        if !unsupported.is_empty() {
            return Err(ApiError::bad_request(format!(
                "netbee does not support the swarm setting{} {}: only labels and join-token rotation can change",
                if unsupported.len() > 1 { "s" } else { "" },
                unsupported.join(", ")
            )));
        }
        let labels: std::collections::BTreeMap<String, String> = match spec.get("Labels") {
            None | Some(serde_json::Value::Null) => Default::default(),
            Some(l) => serde_json::from_value(l.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid swarm labels: {e}")))?,
        };
        let _g = self.op.lock().await;
        let c = self.require_manager().await?;
        let key = cluster::key_cluster();
        let old: ClusterInfo = c.etcd.get(&key).await?.ok_or_else(|| ApiError::not_found("no swarm in the store"))?;
        if let Some(v) = version
            && v != old.version + 1
        {
            return Err(ApiError::bad_request(format!(
                "update out of sequence: the swarm is at version {}, the update was made from version {v}",
                old.version + 1
            )));
        }
        let mut new = old.clone();
        new.labels = labels;
        if rotate_worker {
            new.worker_token = cluster::new_token(&old.id);
        }
        if rotate_manager {
            new.manager_token = cluster::new_token(&old.id);
        }
        new.version = old.version + 1;
        new.updated = Some(chrono::Utc::now());
        // compare-and-swap: a concurrent update on another manager is not overwritten
        if !c.etcd.put_if_value(None, &key, &old, &new).await? {
            return Err(ApiError::conflict("update out of sequence: the swarm changed meanwhile, retry"));
        }
        info!(rotate_worker, rotate_manager, version = new.version + 1, "swarm updated");
        Ok(())
    }
}

/// The settings a docker swarm spec sets besides its name and labels, as `Section.Field`
/// paths: anything but a zero, false, empty or null value (the Go client sends every field).
pub(crate) fn unsupported_swarm_settings(spec: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(false) => {}
            Value::Number(n) if n.as_f64() == Some(0.0) => {}
            Value::String(s) if s.is_empty() => {}
            Value::Array(a) if a.is_empty() => {}
            Value::Object(o) => {
                for (k, v) in o {
                    walk(&if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, v, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let mut out = Vec::new();
    if let Some(o) = spec.as_object() {
        for (k, v) in o {
            if k != "Name" && k != "Labels" {
                walk(k, v, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::unsupported_swarm_settings;

    #[test]
    fn only_name_and_labels_may_be_set_in_a_swarm_spec() {
        // what `docker swarm join-token --rotate` sends back: the spec as read, zero values
        let as_read = json!({
            "Name": "default", "Labels": { "a": "b" },
            "Orchestration": {}, "Raft": { "SnapshotInterval": 0, "ElectionTick": 0, "KeepOldSnapshots": null },
            "Dispatcher": {}, "CAConfig": { "ExternalCAs": null, "SigningCACert": "" },
            "EncryptionConfig": { "AutoLockManagers": false }, "TaskDefaults": {}
        });
        assert!(unsupported_swarm_settings(&as_read).is_empty());
        let set = json!({
            "Name": "default", "Orchestration": { "TaskHistoryRetentionLimit": 5 },
            "EncryptionConfig": { "AutoLockManagers": true }, "CAConfig": { "ExternalCAs": [{ "URL": "x" }] }
        });
        let mut got = unsupported_swarm_settings(&set);
        got.sort();
        assert_eq!(
            got,
            ["CAConfig.ExternalCAs", "EncryptionConfig.AutoLockManagers", "Orchestration.TaskHistoryRetentionLimit"]
        );
    }
}
