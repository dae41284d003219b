//! `/swarm/...` and `/nodes/...`: docker's swarm and node models, and the join port's handshake.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::null_default;
use crate::model::{Availability, Role};

/// `POST /swarm/init`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInitRequest {
    /// IP[:PORT] of this node the others reach it on; default the uplink's address.
    pub advertise_addr: Option<String>,
}

/// The answer to `POST /swarm/init` (docker answers the node id alone).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInitResponse {
    #[serde(rename = "ClusterID")]
    pub cluster_id: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// The `netbee swarm join` command line for a worker.
    #[serde(rename = "JoinCommand")]
    pub join_command: String,
}

/// `POST /swarm/join` (docker's has `JoinToken` and a list of `RemoteAddrs`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmJoinRequest {
    #[serde(deserialize_with = "null_default")]
    pub token: String,
    /// The manager's IP[:2377].
    #[serde(deserialize_with = "null_default")]
    pub remote_addr: String,
    pub advertise_addr: Option<String>,
}

/// The answer to `POST /swarm/join`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmJoinResponse {
    pub message: String,
}

/// The answer to `GET /swarm/join-token?role=worker|manager` (docker has both tokens in the
/// swarm's `JoinTokens`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmJoinTokenResponse {
    pub token: String,
    pub join_command: String,
}

/// `GET /nodes/{id}`, and each element of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
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

/// `POST /nodes/{id}/update`: the `node update` flags (docker's body is the whole `NodeSpec`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeUpdateRequest {
    /// `active`, `pause` or `drain`; absent leaves it.
    pub availability: Option<String>,
    /// `KEY[=VALUE]`.
    #[serde(deserialize_with = "null_default")]
    pub label_add: Vec<String>,
    /// `KEY`.
    #[serde(deserialize_with = "null_default")]
    pub label_rm: Vec<String>,
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
