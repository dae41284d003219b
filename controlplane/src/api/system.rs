//! `/version` (docker's `SystemVersion`) and netbee's own `/datapath/...`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The answer to `GET /version`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemVersion {
    pub version: String,
    pub api_version: String,
    pub os: String,
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
