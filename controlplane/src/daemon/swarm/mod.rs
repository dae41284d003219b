//! The swarm: cluster membership on top of etcd.
//!
//! - `membership.rs`: `swarm init|join|leave|join-token`;
//! - `nodes.rs`: `node ls|inspect|update|promote|demote|rm`;
//! - `liveness.rs`: this node's liveness lease and the leader election;
//! - `join.rs`: the join port a manager answers on (server) and the handshake (client);
//! - `sync.rs`: the loop that turns the cluster's overlays, endpoints and peers into this node's
//!   kernel state.
use std::{net::Ipv4Addr, sync::Arc};

use serde_json::{Value, json};

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult},
    cluster::{self, ClusterState},
    model::{Membership, NodeRecord, Role},
};

mod join;
mod liveness;
mod membership;
mod nodes;
mod sync;

impl Daemon {
    pub fn cluster(&self) -> ApiResult<&Arc<ClusterState>> {
        self.cluster.as_ref().ok_or_else(|| ApiError::unavailable(cluster::NO_CLUSTER_STORE))
    }

    pub(in crate::daemon) fn member(&self) -> ApiResult<(&Arc<ClusterState>, Membership)> {
        let c = self.cluster()?;
        let m = c.member().ok_or_else(|| ApiError::unavailable(cluster::NOT_MEMBER))?;
        Ok((c, m))
    }

    pub(in crate::daemon) async fn require_manager(&self) -> ApiResult<&Arc<ClusterState>> {
        let (c, _) = self.member()?;
        let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
        match me {
            Some(n) if n.role == Role::Manager => Ok(c),
            Some(_) => Err(ApiError::unavailable(cluster::NOT_MANAGER)),
            None => Err(ApiError::unavailable("this node was removed from the swarm")),
        }
    }

    pub(in crate::daemon) async fn local_addr(&self, want: Option<&str>) -> ApiResult<Ipv4Addr> {
        let addrs: Vec<Ipv4Addr> = self.nl.ipv4_addrs().await?.into_iter().map(|(_, ip, _)| ip).collect();
        match want {
            None => Ok(self.node.uplink_ip),
            Some(s) => {
                let ip: Ipv4Addr = s
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid advertise address {s:?}")))?;
                if !addrs.contains(&ip) {
                    return Err(ApiError::bad_request(format!(
                        "advertise address {ip} is not an address of this node"
                    )));
                }
                Ok(ip)
            }
        }
    }

    /// The `Node` section of a container's inspect output when in a swarm.
    pub fn node_info(&self) -> Option<Value> {
        let c = self.cluster.as_ref()?;
        let m = c.member()?;
        Some(json!({ "ID": c.node_id, "Name": c.hostname, "Addr": m.advertise.to_string() }))
    }
}
