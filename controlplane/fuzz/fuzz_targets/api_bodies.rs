//! Request bodies of the daemon's API, decoded as the daemon decodes them (serde_json, as axum's
//! `Json` does), then checked with the validation the handlers run before touching the store or
//! the kernel: names, port specs, addresses, IPAM, service ports, constraints, swarm arguments.
//! Input: a JSON document, tried as every body type.
#![no_main]
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use netbee_controlplane::{
    api::{ContainerCreate, NetworkConnect, NetworkCreate},
    ipam,
    model::Availability,
    names,
};
use netbee_fuzz::{
    check_constraint, check_expose, check_manager_addr, check_names, check_pool, check_publish, check_service_port,
};
use serde::Serialize;
use serde_json::Value;

/// What the client sent survives a round trip through the type (the CLI builds bodies with it).
fn round_trip<T: Serialize + serde::de::DeserializeOwned>(v: &T) {
    let json = serde_json::to_value(v).expect("serializable");
    let back: T = serde_json::from_value(json.clone()).expect("reads back");
    assert_eq!(serde_json::to_value(&back).expect("serializable"), json);
}

/// The string elements of a JSON array, as the service handlers read lists.
fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<NetworkCreate>(data) {
        round_trip(&req);
        let name = req.name.trim();
        check_names(name);
        if !name.is_empty() && names::validate_network_name(name).is_ok() {
            let (s, g, r) = (req.subnet.as_deref(), req.gateway.as_deref(), req.ip_range.as_deref());
            match req.driver.as_deref().unwrap_or("bridge") {
                "bridge" => drop(check_pool(s, g, r, &[], &ipam::local_default_pools())),
                "overlay" => drop(check_pool(s, g, r, &[], &ipam::overlay_default_pools())),
                _ => {}
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<NetworkConnect>(data) {
        round_trip(&req);
        if let Some(ip) = req.ip_address.as_deref() {
            let _ = ip.parse::<Ipv4Addr>();
        }
    }
    if let Ok(req) = serde_json::from_slice::<ContainerCreate>(data) {
        round_trip(&req);
        if let Some(n) = req.name.as_deref() {
            check_names(n.trim_start_matches('/'));
        }
        for p in &req.publish {
            check_publish(p);
        }
        for e in &req.expose {
            check_expose(e);
        }
        if let Some(ip) = req.ip.as_deref() {
            let _ = ip.parse::<Ipv4Addr>();
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        // services/create and services/{id}/update
        if let Some(name) = v["Name"].as_str() {
            check_names(name);
        }
        for p in strings(&v["Publish"]).into_iter().chain(strings(&v["PublishAdd"])) {
            check_service_port(p);
        }
        for c in strings(&v["Constraints"]) {
            check_constraint(c);
        }
        // swarm/join and nodes/{id}/update
        if let Some(remote) = v["RemoteAddr"].as_str() {
            check_manager_addr(remote);
        }
        if let Some(a) = v["Availability"].as_str() {
            let _ = Availability::parse(a);
        }
    }
});
