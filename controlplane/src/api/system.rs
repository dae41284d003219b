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
