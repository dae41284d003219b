//! `/services/...`: docker's service and task models.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::null_default;
use crate::portspec::Proto;

/// A replica count as a request carries it: a JSON number (docker's) or a string (the CLI's
/// `--replicas` as typed); the daemon checks it is a non-negative integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Replicas {
    Number(serde_json::Number),
    String(String),
}

impl Replicas {
    /// The count, if it is a non-negative integer (the message is the daemon's 400).
    pub fn count(&self) -> Result<u64, String> {
        match self {
            Replicas::Number(n) => match n.as_i64() {
                Some(i) if i >= 0 => Ok(i as u64),
                _ => Err(format!("invalid replicas value {n}: must be a non-negative integer")),
            },
            Replicas::String(s) => match s.trim().parse::<i64>() {
                Ok(i) if i >= 0 => Ok(i as u64),
                _ => Err(format!("invalid replicas value {s:?}: must be a non-negative integer")),
            },
        }
    }
}

/// `POST /services/create`: the `service create` flags. Docker's body is a `ServiceSpec`; this
/// keeps the flags as given. Lists may be null (empty).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCreateRequest {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// The tasks' image as the user named it (`host`: a host binary).
    #[serde(deserialize_with = "null_default")]
    pub image: String,
    /// Default 1.
    pub replicas: Option<Replicas>,
    /// `PUBLISHED:TARGET[/udp]`.
    #[serde(deserialize_with = "null_default")]
    pub publish: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub networks: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub constraints: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    /// Replaces the image's entrypoint (compose `entrypoint:`); absent keeps it.
    pub entrypoint: Option<Vec<String>>,
    /// The service's labels (`--label`; a stack's `com.docker.stack.namespace`).
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Labels of every task's container (`--container-label`, compose `labels:`).
    #[serde(deserialize_with = "null_default")]
    pub container_labels: BTreeMap<String, String>,
    /// Further names of the service on a network of `networks` (keyed as named there): they
    /// resolve to the service's VIP on that network only.
    #[serde(deserialize_with = "null_default")]
    pub network_aliases: BTreeMap<String, Vec<String>>,
}

/// The answer to `POST /services/create`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCreateResponse {
    #[serde(rename = "ID")]
    pub id: String,
}

/// `POST /services/{id}/update`: the `service update`/`scale` flags (docker's body is the whole
/// new `ServiceSpec`). Absent fields change nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceUpdateRequest {
    pub replicas: Option<Replicas>,
    #[serde(deserialize_with = "null_default")]
    pub publish_add: Vec<String>,
    /// `PUBLISHED[:TARGET][/udp]`.
    #[serde(deserialize_with = "null_default")]
    pub publish_rm: Vec<String>,
    /// `KEY=VALUE`, replacing KEY's value.
    #[serde(deserialize_with = "null_default")]
    pub env_add: Vec<String>,
    /// The whole new spec, replacing the service's (docker's update body is one; `stack deploy`
    /// sends it). Its name must be the service's; with it, the other fields must be absent.
    pub spec: Option<ServiceCreateRequest>,
}

/// The answer to `POST /services/{id}/update` (docker's carries `Warnings`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdateResponse {
    #[serde(rename = "ID")]
    pub id: String,
}

/// An element of `GET /services`: what `service ls` shows (docker lists whole `Service`s and the
/// CLI counts the tasks itself).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    /// `replicated`.
    pub mode: String,
    /// `RUNNING/DESIRED`.
    pub replicas: String,
    pub running: u64,
    pub desired: u64,
    pub command: String,
    /// `*:PUBLISHED->TARGET/PROTO, ...`.
    pub ports: String,
    /// The tasks' image (`stack services`' IMAGE).
    #[serde(default)]
    pub image: String,
    /// The service's labels (`stack ls` groups by `com.docker.stack.namespace`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `GET /services/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: ServiceSpec,
    pub endpoint: ServiceEndpoint,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task_template: TaskSpec,
    pub endpoint_spec: EndpointSpec,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceMode {
    pub replicated: ServiceModeReplicated,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceModeReplicated {
    pub replicas: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpec {
    pub container_spec: TaskSpecContainerSpec,
    pub placement: TaskSpecPlacement,
    pub networks: Vec<NetworkAttachmentConfig>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpecContainerSpec {
    /// The image as the user named it.
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    /// The image's entrypoint replaced; absent when the image's is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpecPlacement {
    pub constraints: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachmentConfig {
    /// The network's id.
    pub target: String,
    /// The service's further names on this network (they resolve to its VIP there).
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// `vip`.
    pub mode: String,
    pub ports: Vec<EndpointPortConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointPortConfig {
    pub protocol: Proto,
    pub target_port: u16,
    pub published_port: u16,
    /// `ingress`.
    pub publish_mode: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    #[serde(rename = "VirtualIPs")]
    pub virtual_ips: Vec<EndpointVirtualIp>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointVirtualIp {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Null when the network is not known on this node.
    pub network_name: Option<String>,
    /// ADDRESS/PREFIX.
    pub addr: String,
}

/// An element of `GET /services/{id}/tasks`: what `service ps` shows (docker's `Task` nests
/// these in `Status` and `Spec`; here the node is its hostname and the state is titled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    /// `SERVICE.SLOT`.
    pub name: String,
    pub slot: u64,
    /// The node's hostname (its id if the node is gone).
    pub node: String,
    /// `Running` or `Shutdown`.
    pub desired_state: String,
    /// `Assigned`, `Starting`, `Running`, `Shutdown`, `Failed` or `Orphaned`.
    pub current_state: String,
    pub since: DateTime<Utc>,
    pub error: String,
    pub addresses: Vec<TaskAddress>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskAddress {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub addr: String,
}
