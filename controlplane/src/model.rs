//! Every record the daemon persists, in one place, each with where it is stored (`Record`):
//! networks, containers (with the attachments and port bindings a running container holds),
//! services and their tasks, and the cluster's own records (the swarm, nodes, liveness, overlay
//! endpoints). Kernel object names derive from these ids, so the store alone says which veths,
//! namespaces, map entries and pinned links should exist.
use std::{collections::BTreeMap, net::Ipv4Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    ipam::Allocator,
    portspec::{PortBinding, PortSpec, Proto},
    store::{self, Record, SharedRecord},
};

// ---- networks ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// Name of the network driver (`bridge`, `overlay`, `host`, `null`): see `network::driver`.
    pub driver: String,
    pub created: DateTime<Utc>,
    pub internal: bool,
    /// Datapath identity (NETWORKS key); 0 for host/none.
    pub net_id: u32,
    /// None for host/none.
    pub ipam: Option<Allocator>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// VXLAN network identifier of an overlay (also its datapath id); 0 otherwise.
    #[serde(default)]
    pub vni: u32,
}

impl Record for NetworkRecord {
    const TABLE: store::Table = store::NETWORKS;
    fn key(&self) -> &str {
        &self.id
    }
}

/// The node's copy of an overlay network (its record lives in etcd), so a daemon that starts
/// while etcd is unreachable still recognises (and keeps) the overlay's kernel objects.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CachedOverlay(pub NetworkRecord);

impl Record for CachedOverlay {
    const TABLE: store::Table = store::OVERLAYS;
    fn key(&self) -> &str {
        &self.0.id
    }
}

// ---- containers ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Attached to the networks in `networks`.
    Bridge,
    Host,
    None,
}

/// A network the container should be attached to when it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    pub network_id: String,
    /// Fixed address (`--ip`), kept across restarts.
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A live interface of a running container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub network_id: String,
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// eth0, eth1, ... inside the container.
    pub ifname: String,
}

impl Endpoint {
    pub fn host_ifname(&self) -> String {
        host_ifname(&self.endpoint_id)
    }
}

pub fn host_ifname(endpoint_id: &str) -> String {
    format!("nbe{}", &endpoint_id[..12])
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// docker's scheme: 02:42 followed by the IPv4 address, unique wherever the address is.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The image as the user named it; `host` runs on the node's root. Records written before
    /// images existed ran host binaries.
    #[serde(default = "host_image")]
    pub image: String,
    /// The ID of the image resolved at create (`sha256:...`), empty for `host`: a later `tag`
    /// does not change what the container runs.
    #[serde(default)]
    pub image_id: String,
    /// docker's merged Entrypoint; the process is `entrypoint` followed by `cmd`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: String,
    pub network_mode: NetworkMode,
    pub publish: Vec<PortSpec>,
    pub expose: Vec<(u16, Proto)>,
    pub publish_all: bool,
    pub auto_remove: bool,
    pub workdir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `uid[:gid]` or `name[:group]`, resolved in the container's root; empty is root.
    #[serde(default)]
    pub user: String,
    /// docker's streams settings: `Tty` (a terminal for stdin/stdout/stderr, its output raw in
    /// the log), `OpenStdin` (stdin a pipe attached clients write to), `StdinOnce` (closed when
    /// the first attached client's input ends), and the `Attach*` flags `docker run` sent.
    #[serde(default)]
    pub stdio: StdioConfig,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StdioConfig {
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    /// The terminal's first size (rows, columns), docker's `HostConfig.ConsoleSize`.
    pub console_size: Option<(u16, u16)>,
}

impl ContainerConfig {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

fn host_image() -> String {
    crate::images::HOST_IMAGE.to_string()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    /// Host PID of the container's init (PID 1 inside).
    pub pid: i32,
    /// The shim that waits for init and records its exit status.
    pub shim_pid: i32,
    /// Start time of the shim in clock ticks since boot (guards against PID reuse).
    pub shim_start: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: i32,
    pub error: String,
}

impl ContainerRecord {
    /// Whether load balancers may send it translated flows (published ports, service task).
    pub fn is_backend(&self) -> bool {
        !self.config.publish.is_empty()
            || self.config.publish_all
            || self.config.labels.contains_key("com.netbee.task.id")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: DateTime<Utc>,
    pub config: ContainerConfig,
    pub attachments: Vec<Attachment>,
    pub state: ContainerState,
    /// Interfaces and published ports that exist while the container runs.
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<PublishedPort>,
}

impl Record for ContainerRecord {
    const TABLE: store::Table = store::CONTAINERS;
    fn key(&self) -> &str {
        &self.id
    }
}

/// A port binding while it is programmed into the datapath.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedPort {
    #[serde(flatten)]
    pub binding: PortBinding,
    /// Load-balancer service id (RR cursor and BACKENDS key) of this frontend.
    pub service_id: u32,
}

// ---- services (shared: etcd in a swarm, the embedded store on a lone node) ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicePort {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    /// The tasks' image as the user named it; services created before images ran host binaries.
    #[serde(default = "host_image")]
    pub image: String,
    pub replicas: u64,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Network ids; the first carries routing-mesh traffic.
    pub networks: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub constraints: Vec<String>,
    /// How a change of the tasks' spec rolls out (`--update-*`).
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// How a rollback rolls out (`--rollback-*`).
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    /// Bumped by `service update --force`: tasks of another value are out of date.
    #[serde(default)]
    pub force_update: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels of every task's container.
    #[serde(default)]
    pub container_labels: BTreeMap<String, String>,
    /// Network id -> further names of the service there, resolving to its VIP on that network.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Replaces the image's entrypoint when set.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
}

impl ServiceSpec {
    /// Whether tasks made from `self` and from `other` are the same: what a task runs, where it is
    /// attached and placed. How many there are, the ports the routing mesh publishes, the
    /// service's labels and its aliases (names that resolve to its VIP) change no task, as in
    /// docker; a change of anything else replaces the tasks by a rolling update.
    pub fn same_tasks(&self, other: &ServiceSpec) -> bool {
        self.image == other.image
            && self.entrypoint == other.entrypoint
            && self.cmd == other.cmd
            && self.env == other.env
            && self.container_labels == other.container_labels
            && self.networks == other.networks
            && self.constraints == other.constraints
            && self.force_update == other.force_update
    }
}

/// `--update-order`: whether a slot's new task starts before its old one stops.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// `--update-failure-action`: what too many failed new tasks do to an update.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// docker's `UpdateConfig` (the same shape serves `RollbackConfig`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 replaces all at once.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long a new task must keep running before it counts as updated.
    pub monitor_ms: u64,
    /// Failed new tasks, as a fraction of the slots, that an update tolerates.
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// docker's `UpdateStatus.State`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// The scheduler is replacing tasks.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(self, UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
    }
}

/// Where a rolling update stands; kept in the service record so a new leader carries it on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Vip {
    pub network_id: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub id: String,
    pub spec: ServiceSpec,
    pub vips: Vec<Vip>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// The spec before the last `service update`: what `--rollback` restores.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// VIPs on networks only `previous_spec` has: kept so a rollback finds them.
    #[serde(default)]
    pub retained_vips: Vec<Vip>,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Assigned,
    Starting,
    Running,
    Shutdown,
    Failed,
    Orphaned,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub node_id: String,
    /// true = should run; false = should be (or has been) shut down.
    pub desired_running: bool,
    pub state: TaskState,
    pub message: String,
    pub container_id: Option<String>,
    pub addrs: Vec<(String, Ipv4Addr)>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// The spec this task runs (a rolling update replaces tasks whose spec is not the service's);
    /// none on tasks made before updates existed, which the scheduler stamps with the current one.
    /// Shared: every pass of every node's loops copies the list of all tasks, and a deep copy of
    /// each task's spec was most of what that cost (issue 18).
    #[serde(default)]
    pub spec: Option<std::sync::Arc<ServiceSpec>>,
}

impl Record for ServiceRecord {
    const TABLE: store::Table = store::SERVICES;
    fn key(&self) -> &str {
        &self.id
    }
}

impl SharedRecord for ServiceRecord {
    const CLUSTER_PREFIX: &'static str = "/netbee/services/";
}

impl Record for TaskRecord {
    const TABLE: store::Table = store::TASKS;
    fn key(&self) -> &str {
        &self.id
    }
}

impl SharedRecord for TaskRecord {
    const CLUSTER_PREFIX: &'static str = "/netbee/tasks/";
}

// ---- the cluster (etcd; keys in `cluster`) ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub created: DateTime<Utc>,
    pub worker_token: String,
    pub manager_token: String,
    /// Changes of the swarm's spec (`swarm update`, token rotations): docker's `Version.Index`
    /// is one more. Left out while zero, like the fields below, so a record written before they
    /// existed reads and writes back byte for byte (updates compare the stored bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn parse(s: &str) -> Result<Availability, String> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!("invalid availability {s:?}: use active, pause or drain")),
        }
    }
    pub fn title(&self) -> &'static str {
        match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub hostname: String,
    pub addr: Ipv4Addr,
    pub role: Role,
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
}

/// A node's published host ports in a swarm (`cluster::key_host_ports`): services' published
/// ports answer on every node, so a service may not take a port a container publishes on any
/// node. Written under the services guard when a container claims ports, so the two decisions
/// cannot both win.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPorts {
    pub hostname: String,
    pub ports: Vec<HostPortClaim>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPortClaim {
    pub port: u16,
    pub proto: Proto,
    pub container: String,
}

/// What a live node keeps under its lease (`ALIVE`): gone when the node is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Liveness {
    pub since: DateTime<Utc>,
    /// The node's uplink MAC: peers on the same L2 segment send it routing-mesh traffic natively
    /// and it accepts such frames only from the MACs of live peers.
    #[serde(default)]
    pub uplink_mac: Option<[u8; 6]>,
}

/// A container interface on an overlay, as every node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RemoteEndpoint {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub node_id: String,
    pub node_addr: Ipv4Addr,
    pub container_id: String,
    pub container_name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// This node's membership, kept in the local store so a restarted daemon rejoins by itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Membership {
    pub cluster_id: String,
    pub advertise: Ipv4Addr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability() {
        assert_eq!(Availability::parse("drain").unwrap(), Availability::Drain);
        assert!(Availability::parse("Drained").is_err());
    }
}
