//! `node ls|inspect|update|promote|demote|rm`: the swarm's nodes as a manager sees them.
use crate::cluster::etcd::Reads;
use std::{collections::HashSet, time::Duration};

use serde_json::Value;

use crate::{
    api::{
        ApiError, ApiResult, EngineDescription, ManagerStatus, Node, NodeDescription, NodeSpec, NodeStatus,
        NodeUpdateRequest, ObjectVersion,
    },
    cluster::{self, ClusterState},
    daemon::Daemon,
    lookup,
    model::{Availability, NodeRecord, Role},
    network,
};

impl Daemon {
    /// Nodes with their liveness and manager status, as `node ls` shows them.
    pub async fn node_list(&self) -> ApiResult<Vec<Node>> {
        let c = self.require_manager().await?;
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let alive: HashSet<String> = c
            .etcd
            .keys(cluster::ALIVE)
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(String::from))
            .collect();
        let leader = self.leader_id().await;
        let mut out: Vec<Node> = nodes
            .into_iter()
            .map(|(_, n)| {
                let up = alive.contains(&n.id);
                let manager_status = match n.role {
                    Role::Worker => None,
                    Role::Manager => Some(ManagerStatus {
                        leader: leader.as_deref() == Some(n.id.as_str()),
                        reachability: if up { "reachable" } else { "unreachable" }.into(),
                        addr: format!("{}:{}", n.addr, cluster::JOIN_PORT),
                    }),
                };
                Node {
                    version: node_version(&n),
                    is_self: n.id == c.node_id,
                    id: n.id,
                    description: NodeDescription {
                        hostname: n.hostname,
                        // nodes do not record their version: empty rather than this node's
                        engine: EngineDescription::default(),
                    },
                    spec: NodeSpec { role: n.role, availability: n.availability, labels: n.labels },
                    status: NodeStatus { state: if up { "ready" } else { "down" }.into(), addr: n.addr.to_string() },
                    manager_status,
                    created_at: n.created,
                }
            })
            .collect();
        out.sort_by(|a, b| a.description.hostname.cmp(&b.description.hostname));
        Ok(out)
    }

    pub(in crate::daemon) async fn leader_id(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let mut client = c.etcd.client().await.ok()?;
        let r = tokio::time::timeout(Duration::from_secs(2), client.leader(cluster::ELECTION)).await.ok()?.ok()?;
        r.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    pub(in crate::daemon) async fn find_node(&self, c: &ClusterState, key: &str) -> ApiResult<NodeRecord> {
        let nodes: Vec<NodeRecord> = c.etcd.list(cluster::NODES).await?.into_iter().map(|(_, n)| n).collect();
        Ok(lookup::find(&nodes, key)?.clone())
    }

    pub async fn node_inspect(&self, key: &str) -> ApiResult<Node> {
        let c = self.require_manager().await?;
        let n = self.find_node(c, key).await?;
        let list = self.node_list().await?;
        list.into_iter().find(|v| v.id == n.id).ok_or_else(|| ApiError::not_found(format!("node {key} not found")))
    }

    /// `node update|promote|demote`: the node's new spec, whole (docker's), made from
    /// `version` (a spec read before another update is refused: it would undo that one).
    pub async fn node_update(&self, key: &str, version: Option<u64>, req: NodeUpdateRequest) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let mut n = self.find_node(c, key).await?;
        if let Some(v) = version
            && v != node_version(&n).index
        {
            return Err(ApiError::conflict(format!(
                "update out of sequence: node {} changed since version {v} was read",
                n.hostname
            )));
        }
        if let Some(a) = &req.availability {
            n.availability = Availability::parse(a).map_err(ApiError::bad_request)?;
        }
        if let Some(labels) = req.labels {
            if let Some(k) = labels.keys().find(|k| k.is_empty()) {
                return Err(ApiError::bad_request(format!("invalid label {k:?}: the key is empty")));
            }
            n.labels = labels;
        }
        let role = match req.role.as_deref() {
            None => n.role,
            Some("manager") => Role::Manager,
            Some("worker") => Role::Worker,
            Some(r) => return Err(ApiError::bad_request(format!("invalid role {r:?}: use worker or manager"))),
        };
        if role == Role::Worker && n.role == Role::Manager {
            let managers = c.nodes(Reads::Linearizable).await?.0.iter().filter(|n| n.role == Role::Manager).count();
            if managers <= 1 {
                return Err(ApiError::conflict(format!(
                    "rpc error: attempting to demote the last manager of the swarm ({})",
                    n.hostname
                )));
            }
        }
        n.role = role;
        c.etcd.put(&cluster::key_node(&n.id), &n).await?;
        c.sync_now.notify_waiters();
        Ok(())
    }

    pub async fn node_remove(&self, key: &str, force: bool) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let n = self.find_node(c, key).await?;
        let up = c.etcd.get::<Value>(&cluster::key_alive(&n.id)).await?.is_some();
        if up && !force {
            return Err(ApiError::conflict(format!("node {} is not down and can't be removed", n.hostname)));
        }
        if n.id == c.node_id {
            return Err(ApiError::bad_request("a node cannot remove itself: use \"netbee swarm leave\""));
        }
        if n.role == Role::Manager {
            let managers = c.nodes(Reads::Linearizable).await?.0.iter().filter(|n| n.role == Role::Manager).count();
            if managers <= 1 {
                return Err(ApiError::conflict("cannot remove the last manager of the swarm"));
            }
        }
        network::forget_node(&c.etcd, &n.id).await?;
        c.etcd.delete(&cluster::key_node(&n.id)).await?;
        c.etcd.delete(&cluster::key_alive(&n.id)).await?;
        Ok(())
    }
}

/// A node's version: a digest of what `node update` changes (nodes keep no counter).
fn node_version(n: &NodeRecord) -> ObjectVersion {
    ObjectVersion::digest(&(&n.role, &n.availability, &n.labels))
}
