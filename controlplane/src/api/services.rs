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
    /// `--update-*`.
    pub update_config: UpdateConfigFlags,
    /// `--rollback-*`.
    pub rollback_config: UpdateConfigFlags,
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

/// The `--update-*` (or `--rollback-*`) flags as typed: the daemon parses and checks them, so a
/// bad value is refused before anything changes. Absent fields keep their value.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateConfigFlags {
    pub parallelism: Option<String>,
    /// A Go duration (`10s`, `1m30s`).
    pub delay: Option<String>,
    /// `start-first` or `stop-first`.
    pub order: Option<String>,
    /// `pause`, `continue` or `rollback`.
    pub failure_action: Option<String>,
    pub monitor: Option<String>,
    pub max_failure_ratio: Option<String>,
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
    /// `KEY`: removed from the environment.
    #[serde(deserialize_with = "null_default")]
    pub env_rm: Vec<String>,
    /// A new image for the tasks.
    pub image: Option<String>,
    /// The tasks' command and arguments (`--args`, already split as a shell would).
    pub args: Option<Vec<String>>,
    #[serde(deserialize_with = "null_default")]
    pub network_add: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub network_rm: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub constraint_add: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub constraint_rm: Vec<String>,
    /// Replace every task even if nothing else changes.
    pub force: bool,
    /// Restore the previous spec (every other field is ignored).
    pub rollback: bool,
    pub update_config: UpdateConfigFlags,
    pub rollback_config: UpdateConfigFlags,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: ServiceSpec,
    /// The spec `service update --rollback` restores.
    pub previous_spec: Option<ServiceSpec>,
    pub endpoint: ServiceEndpoint,
    /// The last rolling update (none before the first).
    pub update_status: Option<ServiceUpdateStatus>,
}

/// docker's `UpdateStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceUpdateStatus {
    /// `updating`, `paused`, `completed`, `rollback_started`, `rollback_paused` or
    /// `rollback_completed`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub message: String,
}

/// docker's `UpdateConfig` and `RollbackConfig` (durations in nanoseconds, as docker's API).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceUpdateConfig {
    pub parallelism: u64,
    pub delay: u64,
    /// `pause`, `continue` or `rollback`.
    pub failure_action: String,
    pub monitor: u64,
    pub max_failure_ratio: f64,
    /// `stop-first` or `start-first`.
    pub order: String,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task_template: TaskSpec,
    pub update_config: ServiceUpdateConfig,
    pub rollback_config: ServiceUpdateConfig,
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
    /// The image the task runs (an update changes it task by task).
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Whether the task runs the service's current spec.
    #[serde(default)]
    pub up_to_date: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskAddress {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub addr: String,
}

/// An element of `GET /services/{id}/logs`: one line of a task's output. Only tasks whose
/// containers run on the answering node are included (nodes have no API to each other).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceLogLine {
    /// `SERVICE.SLOT.TASKID@NODE`, docker's prefix.
    pub task: String,
    pub line: String,
    pub stderr: bool,
}
