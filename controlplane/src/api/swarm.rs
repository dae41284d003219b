//! `/swarm/...` and `/nodes/...`: docker's swarm and node models, and the join port's handshake.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::null_default;
use crate::model::{Availability, Role};

/// `POST /swarm/init` (docker's `SwarmInitRequest`; `ListenAddr` and the rest are not used:
/// managers listen on their advertise address). Answered with the new node's id, a JSON string.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInitRequest {
    /// IP[:PORT] of this node the others reach it on; absent or empty: the uplink's address.
    pub advertise_addr: Option<String>,
}

/// `POST /swarm/join` (docker's `SwarmJoinRequest`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmJoinRequest {
    #[serde(deserialize_with = "null_default")]
    pub join_token: String,
    /// The managers' IP[:2377]; the first is asked.
    #[serde(deserialize_with = "null_default")]
    pub remote_addrs: Vec<String>,
    pub advertise_addr: Option<String>,
}

/// `GET /swarm` (docker's `Swarm`): the swarm and its join tokens, on a manager.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Swarm {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: super::ObjectVersion,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: SwarmSpec,
    pub join_tokens: JoinTokens,
    pub root_rotation_in_progress: bool,
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    pub data_path_port: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

/// `GET /nodes/{id}`, and each element of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    /// Changes with every update of the node's spec: docker's `node update` sends it back.
    #[serde(default)]
    pub version: super::ObjectVersion,
    /// Whether it is the node that answered.
    #[serde(rename = "Self")]
    pub is_self: bool,
    pub description: NodeDescription,
    pub spec: NodeSpec,
    pub status: NodeStatus,
    /// A manager's; null for a worker.
    pub manager_status: Option<ManagerStatus>,
    pub created_at: DateTime<Utc>,
}

impl Node {
    /// `node ls`'s MANAGER STATUS: `Leader`, `Reachable`, `Unreachable`, or empty for a worker.
    pub fn manager_status_text(&self) -> &'static str {
        match &self.manager_status {
            None => "",
            Some(m) if m.leader => "Leader",
            Some(m) if m.reachability == "reachable" => "Reachable",
            Some(_) => "Unreachable",
        }
    }
}

/// docker's `ManagerStatus`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    #[serde(default)]
    pub leader: bool,
    /// `reachable` or `unreachable`.
    pub reachability: String,
    /// IP:PORT of the manager (the join port).
    pub addr: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    pub hostname: String,
    /// The engine's version, which `docker node ls` prints.
    #[serde(default)]
    pub engine: EngineDescription,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineDescription {
    pub engine_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    pub role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// `ready` or `down`.
    pub state: String,
    pub addr: String,
}

/// `POST /nodes/{id}/update?version=N`: the node's whole new spec (docker's `NodeSpec`, as
/// `node update|promote|demote` send back the one they read, changed). Absent fields keep
/// their value.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeUpdateRequest {
    /// The node's labels, all of them (absent or null: unchanged).
    pub labels: Option<BTreeMap<String, String>>,
    /// `worker` or `manager`.
    pub role: Option<String>,
    /// `active`, `pause` or `drain`.
    pub availability: Option<String>,
}

/// `POST /join` on a manager's join port (its advertise address, `cluster::JOIN_PORT`): the
/// token is the credential. Not docker's (swarmkit joins over gRPC).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinPortRequest {
    #[serde(deserialize_with = "null_default")]
    pub token: String,
}

/// The join port's answer: which swarm, and the role the token grants.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinPortResponse {
    #[serde(rename = "ClusterID")]
    pub cluster_id: String,
    /// `worker` or `manager`.
    #[serde(rename = "Role")]
    pub role: String,
}
