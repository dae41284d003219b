//! What the daemon persists: networks and containers, with the attachments and port bindings a
//! running container holds. Kernel object names derive from these ids, so the store alone says
//! which veths, namespaces, map entries and pinned links should exist.
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    ipam::Allocator,
    portspec::{PortBinding, PortSpec, Proto},
};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Bridge,
    Overlay,
    Host,
    Null,
}

impl Driver {
    pub fn as_str(&self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Overlay => "overlay",
            Driver::Host => "host",
            Driver::Null => "null",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub created: DateTime<Utc>,
    pub internal: bool,
    /// Datapath identity (NETWORKS key); 0 for host/none.
    pub net_id: u32,
    /// None for host/none.
    pub ipam: Option<Allocator>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// VXLAN network identifier of an overlay (also its datapath id); 0 otherwise.
    #[serde(default)]
    pub vni: u32,
}

impl NetworkRecord {
    /// Bridge and overlay networks carry containers (host and none are modes, not networks).
    pub fn carries_containers(&self) -> bool {
        matches!(self.driver, Driver::Bridge | Driver::Overlay)
    }

    pub fn scope(&self) -> &'static str {
        if self.driver == Driver::Overlay { "swarm" } else { "local" }
    }

    /// Room for the VXLAN header on an overlay (underlay MTU 1500).
    pub fn mtu(&self) -> u32 {
        if self.driver == Driver::Overlay { 1450 } else { 1500 }
    }

    /// Name of the node-side device holding the gateway address.
    pub fn device(&self) -> String {
        format!("nbn{}", &self.id[..12])
    }
}

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
    pub labels: std::collections::BTreeMap<String, String>,
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

/// A port binding while it is programmed into the datapath.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedPort {
    #[serde(flatten)]
    pub binding: PortBinding,
    /// Load-balancer service id (RR cursor and BACKENDS key) of this frontend.
    pub service_id: u32,
}
