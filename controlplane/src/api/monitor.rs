//! `GET /datapath/monitor` (netbee's flow monitor) and `GET /events` (docker's event stream):
//! both answer with newline-delimited JSON, one record per line, for as long as the client reads.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of `GET /datapath/monitor?type=drop|lb|trace&container=C&service=S`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MonitorRecord {
    Drop(DropRecord),
    Lb(LbRecord),
    Trace(TraceRecord),
    /// Events the datapath did not emit over the last second: over its per-CPU rate, or with the
    /// ring buffer full.
    Suppressed {
        count: u64,
    },
    /// Events this monitor missed because it read more slowly than they came.
    Lost {
        count: u64,
    },
}

/// A dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    /// RFC 3339 with nanoseconds.
    pub time: String,
    /// As `datapath stats` names drop reasons (`cross_network`, ...).
    pub reason: String,
    pub ifindex: u32,
    /// The interface's name, when it still exists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// `tcp`, `udp`, `icmp`, `arp`, a protocol number, or the EtherType of other frames.
    pub proto: String,
    /// ADDR:PORT (ADDR alone for packets without ports); empty for non-IPv4 frames.
    pub src: String,
    pub dst: String,
    /// The container behind the interface (its sender, or its receiver on the uplink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Names of the source and destination addresses (container or task), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    /// The service whose task sent or would have received the packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A new connection's load-balancing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRecord {
    pub time: String,
    /// The datapath's id of the frontend (node-local).
    pub service_id: u32,
    /// The service's name, or the container's for a port published with `run -p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `mesh` (a service's published port), `vip`, or `published` (a container's port).
    pub kind: String,
    /// Where the packet came from: `wire` (the uplink), `container`, `tunnel`.
    pub via: String,
    pub proto: String,
    /// The address the client asked for.
    pub frontend: String,
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub slot: u32,
    pub backend: String,
    /// The task (`web.2.TASKID`) or container behind the backend address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The node the backend runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A traced packet as a datapath program left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub time: String,
    /// The program: `from-container`, `uplink-ingress`, `uplink-egress`, `overlay-ingress`.
    pub point: String,
    /// What the program did with it: `redirected` (straight to its interface), `to-stack`,
    /// `dropped`.
    pub verdict: String,
    pub ifindex: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// The container behind the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub proto: String,
    /// After any translation the program made.
    pub src: String,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One line of `GET /events`, in docker's `EventMessage` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    /// `container`, `network`, `service`, `node`.
    #[serde(rename = "Type")]
    pub typ: String,
    /// `create`, `start`, `die`, `destroy`, `connect`, `disconnect`, `update`, `remove`, ...
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    /// `local` for a node's own objects, `swarm` for services and nodes.
    pub scope: String,
    /// Unix seconds.
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    #[serde(rename = "ID")]
    pub id: String,
    /// `name` always; then what docker adds (`image`, `exitCode`, `container`, `type`, ...).
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}
