//! Service placement constraints (`--constraint`) and matching them against nodes.
//! Input: constraints, one per line; lines `label:K=V`, `host:H`, `manager` describe the node.
#![no_main]
use std::net::Ipv4Addr;

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use netbee_controlplane::model::{Availability, NodeRecord, Role};
use netbee_fuzz::{check_constraint, check_node_matches};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut node = NodeRecord {
        id: "n1".into(),
        hostname: "node1".into(),
        addr: Ipv4Addr::new(10, 0, 0, 1),
        role: Role::Worker,
        availability: Availability::Active,
        labels: Default::default(),
        created: DateTime::UNIX_EPOCH,
    };
    let mut cs = Vec::new();
    for line in text.split('\n') {
        if let Some(kv) = line.strip_prefix("label:") {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            node.labels.insert(k.to_string(), v.to_string());
        } else if let Some(h) = line.strip_prefix("host:") {
            node.hostname = h.to_string();
        } else if line == "manager" {
            node.role = Role::Manager;
        }
        cs.extend(check_constraint(line));
    }
    check_node_matches(&node, &cs);
});
