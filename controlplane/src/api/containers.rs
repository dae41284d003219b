//! `/containers/...`: docker's container models.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EmptyObject, null_default};

/// `POST /containers/create`: netbee's flat `run`/`create` flags, or docker's body (`Config`
/// fields at the top, `HostConfig`, `NetworkingConfig`, the name in the `name` query parameter);
/// [`ContainerCreateRequest::normalize`] folds docker's into netbee's. The fields both have
/// (`Image`, `Cmd`, `Env`, `Entrypoint`, `Hostname`, `User`, `Labels`) mean the same; every one
/// may be null, as a Go client sends its zero values.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateRequest {
    pub name: Option<String>,
    /// As the user wrote it; `host` runs a host binary on the node's root.
    #[serde(deserialize_with = "null_default")]
    pub image: String,
    /// `--entrypoint`: replaces the image's (empty clears it) and drops the image's Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when not empty.
    #[serde(deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    pub hostname: Option<String>,
    /// Network name/id, or "host" / "none"; default "bridge".
    pub network: Option<String>,
    #[serde(rename = "IP")]
    pub ip: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub network_aliases: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub publish: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub expose: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub publish_all: bool,
    #[serde(deserialize_with = "null_default")]
    pub auto_remove: bool,
    pub workdir: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// `-u`: replaces the image's User.
    pub user: Option<String>,
    /// docker's `WorkingDir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// docker's `ExposedPorts`: `PORT/PROTO` → `{}`.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// docker's `Tty`: a terminal for the container's stdin, stdout and stderr.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// docker's `OpenStdin`: a stdin attached clients write to (else /dev/null).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub open_stdin: bool,
    /// docker's `StdinOnce`: stdin is closed when the first attached client's input ends.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub stdin_once: bool,
    /// docker's `AttachStdin/Stdout/Stderr`: what `docker run` attached (kept, shown by inspect).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub attach_stdin: bool,
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub attach_stdout: bool,
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub attach_stderr: bool,
    /// The terminal's first size, `[rows, columns]` (docker's `HostConfig.ConsoleSize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_size: Option<[u16; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_config: Option<HostConfigRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking_config: Option<NetworkingConfigRequest>,
}

/// docker's `HostConfig` in a create request: the fields netbee acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfigRequest {
    pub network_mode: Option<String>,
    /// `PORT/PROTO` → its bindings.
    #[serde(deserialize_with = "null_default")]
    pub port_bindings: BTreeMap<String, Option<Vec<PortBindingRequest>>>,
    #[serde(deserialize_with = "null_default")]
    pub publish_all_ports: bool,
    #[serde(deserialize_with = "null_default")]
    pub auto_remove: bool,
    /// `[rows, columns]` of the terminal; `[0, 0]` when the client's output is not one.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub console_size: Vec<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBindingRequest {
    #[serde(deserialize_with = "null_default")]
    pub host_ip: String,
    #[serde(deserialize_with = "null_default")]
    pub host_port: String,
}

/// docker's `NetworkingConfig`: the endpoint of the network the container starts on.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfigRequest {
    #[serde(deserialize_with = "null_default")]
    pub endpoints_config: BTreeMap<String, Option<super::EndpointConfigRequest>>,
}

impl ContainerCreateRequest {
    /// docker's fields as netbee's: `name` is the query parameter; `HostConfig.PortBindings`
    /// become `-p` specs, `NetworkMode` and its endpoint the network, address and aliases. What
    /// netbee cannot do is a 400 before anything is created.
    pub fn normalize(&mut self, name: Option<&str>) -> Result<(), super::ApiError> {
        use super::ApiError;
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            self.name = Some(n.to_string());
        }
        let nonempty = |s: &mut Option<String>| {
            if s.as_deref() == Some("") {
                *s = None;
            }
        };
        nonempty(&mut self.hostname);
        nonempty(&mut self.user);
        if let Some(w) = self.working_dir.take().filter(|w| !w.is_empty()) {
            self.workdir = Some(w);
        }
        for k in std::mem::take(&mut self.exposed_ports).into_keys() {
            if !self.expose.contains(&k) {
                self.expose.push(k);
            }
        }
        if let Some(h) = self.host_config.take() {
            self.publish_all |= h.publish_all_ports;
            self.auto_remove |= h.auto_remove;
            if let [rows, cols] = h.console_size[..]
                && let (Ok(rows), Ok(cols)) = (u16::try_from(rows), u16::try_from(cols))
                && rows > 0
                && cols > 0
            {
                self.console_size = Some([rows, cols]);
            }
            match h.network_mode.as_deref() {
                None | Some("") | Some("default") => {}
                Some(m) if m.starts_with("container:") => {
                    return Err(ApiError::bad_request(format!("network mode {m:?} is not supported")));
                }
                Some(m) => self.network = Some(m.to_string()),
            }
            for (port, bindings) in h.port_bindings {
                for b in bindings.unwrap_or_default() {
                    let ip = if b.host_ip.contains(':') { format!("[{}]", b.host_ip) } else { b.host_ip };
                    self.publish.push(match (ip.is_empty(), b.host_port.is_empty()) {
                        (true, true) => port.clone(),
                        (true, false) => format!("{}:{port}", b.host_port),
                        (false, hp) => format!("{ip}:{}:{port}", if hp { "" } else { &b.host_port }),
                    });
                }
            }
        }
        if let Some(nc) = self.networking_config.take() {
            let mut eps = nc.endpoints_config.into_iter();
            if let Some((net, ep)) = eps.next() {
                if eps.next().is_some() {
                    return Err(ApiError::bad_request(
                        "a container is created on one network: connect it to the others with network connect",
                    ));
                }
                // docker names the endpoint after the network mode ("default" for the default one)
                if net != "default" && self.network.is_none() {
                    self.network = Some(net);
                }
                if let Some(ep) = ep {
                    if self.ip.is_none() {
                        self.ip = ep.ipv4();
                    }
                    self.network_aliases.extend(ep.aliases);
                }
            }
        }
        Ok(())
    }
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
    /// One per published port (with its host side) or exposed port (without), as docker's.
    pub ports: Vec<Port>,
    pub labels: BTreeMap<String, String>,
    /// The names of its networks (not docker's: its summary has `NetworkSettings`).
    pub networks: Vec<String>,
}

/// An element of [`ContainerSummary::ports`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    #[serde(rename = "PublicPort", default, skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(rename = "Type")]
    pub typ: String,
}

/// `ps`'s PORTS column from a summary's ports, grouped into ranges as docker's CLI prints them.
pub fn ports_text(ports: &[Port]) -> String {
    use crate::portspec::{PortBinding, Proto, format_ports};
    let proto = |t: &str| if t == "udp" { Proto::Udp } else { Proto::Tcp };
    let mut bindings = Vec::new();
    let mut unpublished = Vec::new();
    for p in ports {
        match (p.public_port, p.ip.as_deref().and_then(|i| i.parse().ok())) {
            (Some(public), Some(host_ip)) => bindings.push(PortBinding {
                host_ip,
                host_port: public,
                container_port: p.private_port,
                proto: proto(&p.typ),
            }),
            _ => unpublished.push((p.private_port, proto(&p.typ))),
        }
    }
    format_ports(&bindings, &unpublished)
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
    /// docker's default `{"Type":"json-file","Config":{}}`: the container's output is kept and
    /// served by `logs`. docker-compose shows the logs only of containers whose driver is named.
    #[serde(default)]
    pub log_config: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub typ: String,
    pub config: BTreeMap<String, String>,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { typ: "json-file".into(), config: BTreeMap::new() }
    }
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
    /// The docker CLI reads `Tty` to choose how to read `logs` and `attach` (raw for a
    /// terminal, docker's frames otherwise) and `OpenStdin` to attach stdin; docker-py
    /// (docker-compose's client) fails on a missing `Config.Tty`, so all are always present.
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub attach_stdin: bool,
    #[serde(default)]
    pub attach_stdout: bool,
    #[serde(default)]
    pub attach_stderr: bool,
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
    /// Always null: an exit is not an error of the wait (docker's `{"Message"}` otherwise).
    #[serde(default)]
    pub error: Option<WaitExitError>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitExitError {
    pub message: String,
}

/// The answer to `GET /containers/{id}/top?ps_args=ARGS`: `ps`'s columns and the rows of the
/// container's processes, each field a string as `ps` printed it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerTopResponse {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// `ps` output as [`ContainerTopResponse`], keeping the rows whose PID is in `pids`. The last
/// column (the command) keeps its spaces. An output without a PID column is docker's error.
pub fn parse_ps(output: &str, pids: &[i32]) -> Result<ContainerTopResponse, String> {
    let mut lines = output.lines().filter(|l| !l.trim().is_empty());
    let titles: Vec<String> = lines.next().unwrap_or_default().split_whitespace().map(str::to_string).collect();
    let pid_col = titles.iter().position(|t| t == "PID").ok_or("Couldn't find PID field in ps output")?;
    let mut processes = Vec::new();
    for line in lines {
        let mut fields = Vec::with_capacity(titles.len());
        let mut rest = line.trim_start();
        while fields.len() + 1 < titles.len() {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
        fields.push(rest.to_string());
        let pid: i32 = fields[pid_col].parse().map_err(|_| format!("unexpected pid '{}'", fields[pid_col]))?;
        if pids.contains(&pid) {
            processes.push(fields);
        }
    }
    Ok(ContainerTopResponse { titles, processes })
}
