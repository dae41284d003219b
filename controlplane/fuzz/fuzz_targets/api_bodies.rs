//! Request bodies of the daemon's API, decoded as the daemon decodes them (serde_json, as axum's
//! `Json` does), then checked with the validation the handlers run before touching the store or
//! the kernel: names, port specs, addresses, IPAM, service ports, constraints, swarm arguments,
//! exec configs.
//! Input: a JSON document, tried as every request body type (`api::*Request`), the join port's too.
#![no_main]
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use netbee_controlplane::{
    api::{
        ContainerCreateRequest, DockerServiceSpec, ExecCreateRequest, ExecStartRequest, JoinPortRequest,
        NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NodeUpdateRequest, Replicas,
        ServiceCreateRequest, ServiceUpdateRequest, SwarmInitRequest, SwarmJoinRequest, console_size,
        parse_detach_keys,
    },
    ipam,
    model::Availability,
    names,
};
use netbee_fuzz::{
    check_constraint, check_expose, check_manager_addr, check_names, check_pool, check_publish, check_service_port,
};
use serde::Serialize;

/// What the client sent survives a round trip through the type (the CLI builds bodies with it).
fn round_trip<T: Serialize + serde::de::DeserializeOwned>(v: &T) {
    let json = serde_json::to_value(v).expect("serializable");
    let back: T = serde_json::from_value(json.clone()).expect("reads back");
    assert_eq!(serde_json::to_value(&back).expect("serializable"), json);
}

/// A replica count the daemon accepts is the integer the request wrote.
fn check_replicas(r: &Replicas) {
    if let Ok(n) = r.count() {
        match r {
            Replicas::Number(v) => assert_eq!(v.as_u64(), Some(n), "{v}"),
            Replicas::String(s) => assert_eq!(s.trim().parse::<i64>(), Ok(n as i64), "{s:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mut req) = serde_json::from_slice::<NetworkCreateRequest>(data) {
        round_trip(&req);
        // docker's body folds into netbee's fields (or is refused, leaving strings the checks
        // below must take as well)
        let _ = req.normalize();
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
    if let Ok(mut req) = serde_json::from_slice::<NetworkConnectRequest>(data) {
        round_trip(&req);
        req.normalize();
        if let Some(ip) = req.ip_address.as_deref() {
            let _ = ip.parse::<Ipv4Addr>();
        }
    }
    if let Ok(req) = serde_json::from_slice::<NetworkDisconnectRequest>(data) {
        round_trip(&req);
    }
    if let Ok(mut req) = serde_json::from_slice::<ContainerCreateRequest>(data) {
        round_trip(&req);
        // docker's HostConfig/NetworkingConfig become netbee's publish specs and network (a
        // refusal leaves specs the checks below must take as well)
        let _ = req.normalize(Some("fuzzed"));
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
        if let Some([rows, cols]) = req.console_size {
            assert!(rows > 0 && cols > 0, "a terminal size of none: {rows}x{cols}");
        }
    }
    // `docker exec`: what the daemon records is a command, variables, an absolute working
    // directory, a terminal size that fits and detach keys it can watch for
    if let Ok(req) = serde_json::from_slice::<ExecCreateRequest>(data) {
        round_trip(&req);
        if let Ok(size) = req.validate() {
            assert!(!req.cmd.is_empty() && !req.cmd[0].is_empty(), "{req:?}");
            assert!(req.env.iter().all(|e| !e.is_empty() && !e.starts_with('=')), "{req:?}");
            assert!(req.working_dir.is_empty() || req.working_dir.starts_with('/'), "{req:?}");
            assert_eq!(size, console_size(req.console_size.as_deref()).expect("validated"));
            let keys = parse_detach_keys(&req.detach_keys).expect("validated");
            assert!(!keys.is_empty(), "{:?}", req.detach_keys);
            assert!(keys.len() <= req.detach_keys.len().max(2), "{:?} -> {keys:?}", req.detach_keys);
        }
    }
    if let Ok(req) = serde_json::from_slice::<ExecStartRequest>(data) {
        round_trip(&req);
        if let Ok(Some((rows, cols))) = console_size(req.console_size.as_deref()) {
            assert!(rows > 0 || cols > 0, "{req:?}");
        }
    }
    if let Ok(req) = serde_json::from_slice::<ServiceCreateRequest>(data) {
        round_trip(&req);
        check_names(&req.name);
        if let Some(r) = &req.replicas {
            check_replicas(r);
        }
        for p in &req.publish {
            check_service_port(p);
        }
        for c in &req.constraints {
            check_constraint(c);
        }
    }
    if let Ok(req) = serde_json::from_slice::<ServiceUpdateRequest>(data) {
        round_trip(&req);
        if let Some(r) = &req.replicas {
            check_replicas(r);
        }
        for p in &req.publish_add {
            check_service_port(p);
        }
    }
    if let Ok(req) = serde_json::from_slice::<SwarmInitRequest>(data) {
        round_trip(&req);
    }
    if let Ok(req) = serde_json::from_slice::<SwarmJoinRequest>(data) {
        round_trip(&req);
        for a in &req.remote_addrs {
            check_manager_addr(a);
        }
    }
    if let Ok(req) = serde_json::from_slice::<NodeUpdateRequest>(data) {
        round_trip(&req);
        if let Some(a) = req.availability.as_deref() {
            let _ = Availability::parse(a);
        }
    }
    // docker's service spec (`docker service create|update`, `stack deploy`) becomes netbee's
    // request: what it publishes is checked as netbee's CLI's `--publish`
    if let Ok(spec) = serde_json::from_slice::<DockerServiceSpec>(data) {
        round_trip(&spec);
        if let Ok(req) = spec.into_request() {
            if let Some(r) = &req.replicas {
                check_replicas(r);
            }
            for p in &req.publish {
                check_service_port(p);
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<JoinPortRequest>(data) {
        round_trip(&req);
    }
});
