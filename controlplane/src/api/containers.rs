//! `/containers/...`: docker's container models.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EmptyObject;

/// `POST /containers/create`: the `run`/`create` flags. Docker's body is `Config` + `HostConfig`
/// + `NetworkingConfig`; this keeps the flags as given (`Publish` specs, one network).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateRequest {
    pub name: Option<String>,
    /// As the user wrote it; `host` runs a host binary on the node's root.
    pub image: String,
    /// `--entrypoint`: replaces the image's (empty clears it) and drops the image's Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when not empty.
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: Option<String>,
    /// Network name/id, or "host" / "none"; default "bridge".
    pub network: Option<String>,
    #[serde(rename = "IP")]
    pub ip: Option<String>,
    pub network_aliases: Vec<String>,
    pub publish: Vec<String>,
    pub expose: Vec<String>,
    pub publish_all: bool,
    pub auto_remove: bool,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `-u`: replaces the image's User.
    pub user: Option<String>,
}

/// The name the daemon's internals know the create request by.
pub type ContainerCreate = ContainerCreateRequest;

/// The answer to `POST /containers/create` (docker's has no `Name`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCreateResponse {
    pub id: String,
    pub name: String,
    pub warnings: Vec<String>,
}

/// An element of `GET /containers/json`. Docker's `Ports` is a list of objects and `Networks`
/// is `NetworkSettings`; here they are what `ps` shows: one string, and the network names.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    /// `/name`.
    pub names: Vec<String>,
    pub image: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    /// `created`, `running` or `exited`.
    pub state: String,
    /// `Up 5 minutes`, `Exited (0) 2 seconds ago`, ...
    pub status: String,
    pub ports: String,
    pub networks: Vec<String>,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspectResponse {
    /// The swarm node the container runs on; null outside a swarm (docker's classic swarm field).
    pub node: Option<ContainerNode>,
    pub id: String,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// The program; null without a command.
    pub path: Option<String>,
    pub args: Vec<String>,
    pub state: ContainerState,
    /// `/name`.
    pub name: String,
    pub log_path: String,
    /// The image's ID (`sha256:...`); empty for `host`.
    pub image: String,
    pub host_config: HostConfig,
    pub config: ContainerConfig,
    pub network_settings: NetworkSettings,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerNode {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// `created`, `running` or `exited`.
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    /// RFC 3339 with nanoseconds; `0001-01-01T00:00:00Z` for never.
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// `default` (the bridge network), `host`, `none` or the first network's name.
    pub network_mode: String,
    /// The publish specs by `PORT/PROTO`, a host port range as `LO-HI`.
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    pub publish_all_ports: bool,
    pub auto_remove: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub hostname: String,
    /// The image as the user named it.
    pub image: String,
    pub user: String,
    pub env: Vec<String>,
    /// Null when there is none, as docker's.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `PORT/PROTO` → `{}`.
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// Every exposed or published `PORT/PROTO`: its bindings while running, null otherwise.
    pub ports: BTreeMap<String, Option<Vec<PortBinding>>>,
    /// The first network's address, prefix length, gateway and MAC.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: i64,
    pub gateway: String,
    pub mac_address: String,
    /// By network name.
    pub networks: BTreeMap<String, EndpointSettings>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: i64,
    pub mac_address: String,
    pub aliases: Vec<String>,
    /// The address asked for with `--ip`, null otherwise.
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpamConfig>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIpamConfig {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
}

/// The answer to `GET /containers/{id}/logs?stdout_offset=N&stderr_offset=M`: the output past
/// the offsets and the offsets to ask from next (docker streams logs instead).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerLogsResponse {
    pub stdout: String,
    pub stderr: String,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
    pub exit_code: i32,
}

/// The answer to `POST /containers/{id}/wait`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerWaitResponse {
    pub status_code: i64,
}
