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
    /// docker's `TaskTemplate.ForceUpdate` of a whole-spec update: a value above the service's
    /// replaces every task although nothing else changed (`docker service update --force`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_update: Option<u64>,
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
    #[serde(rename = "Warnings", default)]
    pub warnings: Option<Vec<String>>,
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

/// The answer to `POST /services/{id}/update`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdateResponse {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Warnings", default)]
    pub warnings: Option<Vec<String>>,
}

/// A line of netbee's `service ls` and `stack services`, made by the CLI from a [`Service`]
/// listed with its status (`ServiceSummary::of`).
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
    /// Changes with every update: docker's update requests name the version they were made
    /// from (`?version=`), and one made from an older version is refused.
    pub version: ObjectVersion,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: ServiceSpec,
    /// The spec `service update --rollback` restores.
    pub previous_spec: Option<ServiceSpec>,
    pub endpoint: ServiceEndpoint,
    /// The last rolling update (none before the first).
    pub update_status: Option<ServiceUpdateStatus>,
    /// Running and desired tasks (`GET /services?status=true`; `service ls` counts with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_status: Option<ServiceStatus>,
}

/// docker's `Version` of a swarm object.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ObjectVersion {
    pub index: u64,
}

impl ObjectVersion {
    /// A version of an object that keeps no counter: a digest of what changes with it (FNV-1a,
    /// kept below 2^53 so that JSON readers with doubles see the same number).
    pub fn digest<T: Serialize>(what: &T) -> ObjectVersion {
        let text = serde_json::to_vec(what).unwrap_or_default();
        let h = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        ObjectVersion { index: h & ((1 << 53) - 1) }
    }
}

/// docker's `ServiceStatus`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    pub running_tasks: u64,
    pub desired_tasks: u64,
    #[serde(default)]
    pub completed_tasks: u64,
}

impl ServiceSummary {
    /// What `service ls` shows of a service listed with its status.
    pub fn of(s: &Service) -> ServiceSummary {
        let status = s.service_status.clone().unwrap_or_default();
        let spec = &s.spec;
        ServiceSummary {
            id: s.id.clone(),
            name: spec.name.clone(),
            mode: "replicated".into(),
            replicas: format!("{}/{}", status.running_tasks, status.desired_tasks),
            running: status.running_tasks,
            desired: status.desired_tasks,
            command: spec.task_template.container_spec.args.join(" "),
            ports: spec
                .endpoint_spec
                .ports
                .iter()
                .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol))
                .collect::<Vec<_>>()
                .join(", "),
            image: spec.task_template.container_spec.image.clone(),
            labels: spec.labels.clone(),
        }
    }
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
    /// Always given in answers (the docker CLI's progress display needs it).
    pub replicas: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpec {
    pub container_spec: TaskSpecContainerSpec,
    pub placement: TaskSpecPlacement,
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Bumped by each `service update --force`: the CLI sends back the value it read plus one.
    #[serde(default)]
    pub force_update: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpecContainerSpec {
    /// The image as the user named it.
    pub image: String,
    /// The command's arguments (after the entrypoint).
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// The image's entrypoint replaced; absent when the image's is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
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
#[serde(rename_all = "PascalCase", default)]
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
    #[serde(rename = "Spec", default)]
    pub spec: EndpointSpec,
    /// The published ports (`service ls` prints them from here).
    #[serde(rename = "Ports", default)]
    pub ports: Vec<EndpointPortConfig>,
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
    /// The ids docker's log stream carries as the line's context.
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(rename = "TaskID", default)]
    pub task_id: String,
    pub line: String,
    pub stderr: bool,
}

/// docker's `ServiceSpec` as requests carry it: `POST /services/create`, and the whole new spec
/// of `POST /services/{id}/update` (`scale`, `update`, `stack deploy` send back the spec they
/// read, changed). Any field may be absent or null, as the Go client omits empty ones. The daemon
/// turns it into a [`ServiceCreateRequest`] ([`DockerServiceSpec::into_request`]) and checks that
/// as it checks its own CLI's.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerServiceSpec {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    pub task_template: Option<DockerTaskSpec>,
    pub mode: Option<DockerServiceMode>,
    pub update_config: Option<DockerUpdateConfig>,
    pub rollback_config: Option<DockerUpdateConfig>,
    pub endpoint_spec: Option<DockerEndpointSpec>,
    /// Networks at the service level (deprecated by docker for `TaskTemplate.Networks`).
    pub networks: Option<Vec<DockerNetworkAttachment>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerTaskSpec {
    pub container_spec: Option<DockerContainerSpec>,
    pub placement: Option<DockerPlacement>,
    pub networks: Option<Vec<DockerNetworkAttachment>>,
    pub force_update: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerContainerSpec {
    #[serde(deserialize_with = "null_default")]
    pub image: String,
    pub labels: Option<BTreeMap<String, String>>,
    /// Replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerPlacement {
    pub constraints: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerNetworkAttachment {
    /// The network's id or name (`stack deploy` names it).
    #[serde(deserialize_with = "null_default")]
    pub target: String,
    pub aliases: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerServiceMode {
    pub replicated: Option<DockerReplicated>,
    pub global: Option<serde_json::Value>,
    pub replicated_job: Option<serde_json::Value>,
    pub global_job: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerReplicated {
    /// Absent means one, as swarmkit fills in (`stack deploy` without `deploy.replicas`).
    pub replicas: Option<Replicas>,
}

/// docker's `UpdateConfig`/`RollbackConfig`: durations in nanoseconds; a zero or absent field
/// keeps netbee's default, as swarmkit's.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerUpdateConfig {
    pub parallelism: Option<u64>,
    pub delay: Option<i64>,
    pub failure_action: Option<String>,
    pub monitor: Option<i64>,
    pub max_failure_ratio: Option<f64>,
    pub order: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerEndpointSpec {
    pub mode: Option<String>,
    pub ports: Option<Vec<DockerPortConfig>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerPortConfig {
    pub protocol: Option<String>,
    pub target_port: u32,
    pub published_port: u32,
    pub publish_mode: Option<String>,
}

impl DockerUpdateConfig {
    fn flags(self) -> UpdateConfigFlags {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        UpdateConfigFlags {
            parallelism: self.parallelism.map(|p| p.to_string()),
            delay: self.delay.map(|d| format!("{d}ns")),
            order: nonempty(self.order),
            failure_action: nonempty(self.failure_action),
            monitor: self.monitor.filter(|m| *m != 0).map(|m| format!("{m}ns")),
            max_failure_ratio: self.max_failure_ratio.map(|r| r.to_string()),
        }
    }
}

impl DockerServiceSpec {
    /// The request netbee's checks run on. What netbee does not do (global or job services, DNS
    /// round robin, host-mode or unpublished ports) is refused here with the field named.
    pub fn into_request(self) -> Result<ServiceCreateRequest, String> {
        let name = self.name;
        let mode = self.mode.unwrap_or_default();
        if mode.global.is_some() || mode.replicated_job.is_some() || mode.global_job.is_some() {
            return Err(format!("service {name}: only replicated services are supported"));
        }
        let replicas = mode.replicated.and_then(|r| r.replicas);
        let tt = self.task_template.unwrap_or_default();
        let cs = tt.container_spec.unwrap_or_default();
        let endpoint = self.endpoint_spec.unwrap_or_default();
        if endpoint.mode.as_deref().is_some_and(|m| !m.is_empty() && m != "vip") {
            return Err(format!(
                "service {name}: endpoint mode {:?} is not supported: use vip",
                endpoint.mode.unwrap()
            ));
        }
        let mut publish = Vec::new();
        for p in endpoint.ports.unwrap_or_default() {
            let proto = p.protocol.filter(|s| !s.is_empty()).unwrap_or_else(|| "tcp".into());
            if p.publish_mode.as_deref().is_some_and(|m| !m.is_empty() && m != "ingress") {
                return Err(format!(
                    "service {name}: publish mode {:?} is not supported: ports are published through the routing mesh (ingress)",
                    p.publish_mode.unwrap()
                ));
            }
            if p.published_port == 0 {
                return Err(format!(
                    "service {name}: port {}/{proto} needs a published port (PUBLISHED:TARGET)",
                    p.target_port
                ));
            }
            publish.push(format!("{}:{}/{proto}", p.published_port, p.target_port));
        }
        let mut networks = Vec::new();
        let mut network_aliases = BTreeMap::new();
        for n in tt.networks.or(self.networks).unwrap_or_default() {
            let aliases = n.aliases.unwrap_or_default();
            if !aliases.is_empty() {
                network_aliases.insert(n.target.clone(), aliases);
            }
            networks.push(n.target);
        }
        // the Go client tags an untagged image `:latest`; netbee's host image has no tags
        let image = match cs.image.as_str() {
            "host:latest" => crate::images::HOST_IMAGE.to_string(),
            _ => cs.image,
        };
        Ok(ServiceCreateRequest {
            name,
            image,
            replicas,
            publish,
            networks,
            constraints: tt.placement.and_then(|p| p.constraints).unwrap_or_default(),
            env: cs.env.unwrap_or_default(),
            cmd: cs.args.unwrap_or_default(),
            update_config: self.update_config.map(DockerUpdateConfig::flags).unwrap_or_default(),
            rollback_config: self.rollback_config.map(DockerUpdateConfig::flags).unwrap_or_default(),
            entrypoint: cs.command.filter(|c| !c.is_empty()),
            labels: self.labels,
            container_labels: cs.labels.unwrap_or_default(),
            network_aliases,
            force_update: tt.force_update,
        })
    }
}

/// docker's `Task`: an element of `GET /tasks`, and `GET /tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmTask {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: ObjectVersion,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The spec the task runs.
    pub spec: TaskSpec,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub slot: u64,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub status: SwarmTaskStatus,
    /// `running` or `shutdown`.
    pub desired_state: String,
    #[serde(default)]
    pub networks_attachments: Vec<TaskNetworkAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmTaskStatus {
    pub timestamp: DateTime<Utc>,
    /// docker's lower-case task state: `assigned`, `starting`, `running`, `shutdown`, `failed`,
    /// `orphaned`.
    pub state: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<TaskContainerStatus>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskContainerStatus {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    #[serde(rename = "PID", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskNetworkAttachment {
    pub network: TaskNetwork,
    /// ADDRESS/PREFIX.
    pub addresses: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNetwork {
    #[serde(rename = "ID")]
    pub id: String,
}
