//! `/version` (docker's `SystemVersion`) and netbee's own `/datapath/...`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The newest Engine API version the daemon speaks: the one it advertises on `/_ping` and
/// `/version`, and the version of unprefixed paths.
pub const API_VERSION: &str = "1.50";
/// The oldest version a `/v1.NN/` prefix may name (docker 28's minimum).
pub const MIN_API_VERSION: &str = "1.24";

/// The answer to `GET /version` (docker's `SystemVersion`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SystemVersion {
    pub platform: Platform,
    pub components: Vec<ComponentVersion>,
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub git_commit: String,
    pub go_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
    pub build_time: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Platform {
    pub name: String,
}

/// One entry of `SystemVersion::components`: what `docker version` lists under "Server:".
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComponentVersion {
    pub name: String,
    pub version: String,
    pub details: BTreeMap<String, String>,
}

/// The answer to `GET /info` (docker's `SystemInfo`): the fields `docker info` prints.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SystemInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub containers: u64,
    pub containers_running: u64,
    pub containers_paused: u64,
    pub containers_stopped: u64,
    pub images: u64,
    pub driver: String,
    /// `[[key, value], ...]` as docker's.
    pub driver_status: Vec<[String; 2]>,
    pub plugins: PluginsInfo,
    pub memory_limit: bool,
    pub swap_limit: bool,
    pub cpu_cfs_period: bool,
    pub cpu_cfs_quota: bool,
    #[serde(rename = "IPv4Forwarding")]
    pub ipv4_forwarding: bool,
    pub debug: bool,
    pub n_fd: i64,
    pub n_goroutines: i64,
    pub system_time: String,
    pub logging_driver: String,
    pub cgroup_driver: String,
    pub cgroup_version: String,
    pub n_events_listener: i64,
    pub kernel_version: String,
    pub operating_system: String,
    #[serde(rename = "OSVersion")]
    pub os_version: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    #[serde(rename = "NCPU")]
    pub ncpu: i64,
    pub mem_total: i64,
    pub docker_root_dir: String,
    pub name: String,
    pub labels: Vec<String>,
    pub experimental_build: bool,
    pub server_version: String,
    pub live_restore_enabled: bool,
    pub isolation: String,
    pub security_options: Vec<String>,
    pub swarm: SwarmInfo,
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PluginsInfo {
    pub volume: Vec<String>,
    pub network: Vec<String>,
    pub log: Vec<String>,
}

/// `SystemInfo::swarm`: this node's part in a swarm.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInfo {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_addr: String,
    /// `inactive` or `active`.
    pub local_node_state: String,
    /// Whether this node is a manager (the CLI then prints the cluster section).
    pub control_available: bool,
    pub error: String,
    pub remote_managers: Vec<RemoteManager>,
    /// Counted only on a manager, as docker's.
    pub nodes: i64,
    pub managers: i64,
    /// Only on a manager: the CLI reads it when `ControlAvailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RemoteManager {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub addr: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClusterInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub root_rotation_in_progress: bool,
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    pub data_path_port: u32,
}

/// The answer to `GET /datapath/stats`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathStats {
    /// Per-program counters, by name.
    pub counters: BTreeMap<String, u64>,
    /// Dropped packets, by reason.
    pub drops: BTreeMap<String, u64>,
    pub conntrack: ConntrackStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConntrackStats {
    pub entries: u64,
    pub capacity: u64,
    pub entries_created: u64,
    pub entries_collected: u64,
    /// LRU evictions: created, neither collected nor still present.
    pub evicted: u64,
}

impl ConntrackStats {
    /// The fields by name, in the order of their names (as a JSON object's keys sort).
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("Capacity", self.capacity),
            ("Entries", self.entries),
            ("EntriesCollected", self.entries_collected),
            ("EntriesCreated", self.entries_created),
            ("Evicted", self.evicted),
        ]
    }
}

/// The answer to `POST /datapath/conntrack/age?seconds=N`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConntrackAgeResponse {
    pub aged: u64,
}

/// The answer to `POST /datapath/conntrack/gc`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConntrackGcResponse {
    pub removed: u64,
    pub live: u64,
}

/// One frontend of `GET /datapath/lb`: a routing-mesh port, a service VIP or a container's
/// published port, with its backends.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LbFrontend {
    /// `mesh`, `vip` or `published`.
    pub kind: String,
    /// `ADDR:PORT/PROTO`; `*` for every node address (published ports, the mesh) or every port
    /// (a VIP).
    pub frontend: String,
    /// The service's name, or the container's for a published port.
    pub service: String,
    /// The VIP's network (empty for the others).
    #[serde(default)]
    pub network: String,
    /// The datapath's id of this frontend (its round-robin cursor and counters).
    pub id: u32,
    pub backends: Vec<LbBackend>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LbBackend {
    /// `IP:PORT`, or `IP:*` when the client's port is kept (a VIP).
    pub address: String,
    /// The node it runs on, when known.
    pub node: String,
    /// The task (`web.3`) or container it is.
    pub task: String,
    /// `active` (new connections may choose it), or `removed` (out of the rotation; its counters
    /// and flows are shown until they are gone).
    pub state: String,
    /// New connections this node sent to it through this frontend (counted by the datapath).
    pub connections: u64,
    /// Of those, the flows established now (read from conntrack).
    pub established: u64,
}

/// One flow of `GET /datapath/ct`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CtFlow {
    pub proto: String,
    /// The flow as it arrived: `IP:PORT`.
    pub source: String,
    pub destination: String,
    /// `dnat` (load balanced), `snat` (masqueraded) or `tunnel-return` (a routing-mesh flow
    /// another node received, whose replies go back to it).
    pub kind: String,
    /// Where the translation sends it: the backend (dnat), the source it leaves with (snat), the
    /// node replies return to (tunnel-return).
    pub translated: String,
    /// The service (or container) of the frontend, for dnat flows.
    pub service: String,
    /// `syn-sent`, `established`, `closing` (TCP) or `active` (UDP, ICMP).
    pub state: String,
    /// Conntrack flags of both directions.
    pub flags: Vec<String>,
    pub age_seconds: u64,
    pub idle_seconds: u64,
}

/// One container interface of `GET /datapath/endpoints`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointEntry {
    pub address: String,
    /// `local` (a veth of this node) or `remote` (another node's, reached through it).
    pub scope: String,
    pub network: String,
    pub node: String,
    /// The host-side interface (local endpoints).
    pub interface: String,
    pub container: String,
    pub mac: String,
}

/// The answer to `GET /system/df` (docker's `DiskUsage`): what `docker system df` sums.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskUsage {
    /// Bytes of every unpacked layer, each counted once however many images share it.
    pub layers_size: i64,
    pub images: Vec<DiskUsageImage>,
    pub containers: Vec<DiskUsageContainer>,
    /// netbee has no volumes and no build cache: always empty.
    pub volumes: Vec<serde_json::Value>,
    pub build_cache: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskUsageImage {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: i64,
    /// Bytes of its layers that other images use too.
    pub shared_size: i64,
    /// Containers using the image.
    pub containers: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskUsageContainer {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    pub command: String,
    pub created: i64,
    pub state: String,
    pub status: String,
    /// Bytes written in its own layer.
    pub size_rw: i64,
    pub size_root_fs: i64,
}
