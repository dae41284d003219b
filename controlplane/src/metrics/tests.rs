use super::*;

fn sample() -> Snapshot {
    Snapshot {
        packets: vec![("dnat_new".into(), 600), ("ct_created".into(), 1200), ("mesh_received".into(), 200)],
        drops: vec![("cross_network".into(), 3)],
        conntrack: crate::api::ConntrackStats {
            entries: 12,
            capacity: 262144,
            entries_created: 1200,
            entries_collected: 1188,
            evicted: 0,
        },
        mesh_received: 200,
        backends: vec![
            BackendSample {
                kind: "mesh".into(),
                service: "web".into(),
                frontend: "*:80/tcp".into(),
                backend: "10.0.1.3".into(),
                task: "web.1".into(),
                node: "n2".into(),
                connections: 67,
                established: 1,
            },
            BackendSample {
                kind: "published".into(),
                service: "c1".into(),
                frontend: "*:8080/tcp".into(),
                backend: "172.18.0.2".into(),
                connections: 5,
                ..Default::default()
            },
        ],
        containers: vec![("running".into(), 2), ("exited".into(), 1)],
        networks: vec![("bridge".into(), 2)],
        services: Some(1),
        tasks: Some(vec![("running".into(), 1)]),
        process: Some(ProcessStats {
            cpu_seconds: 1.5,
            resident_memory_bytes: 20 << 20,
            virtual_memory_bytes: 1 << 30,
            start_time_seconds: 1.7e9,
            open_fds: 17,
            max_fds: 1024,
            threads: 4,
        }),
    }
}

/// The sample lines of `text` (no comments), as `name{labels} value`.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect()
}

#[test]
fn names_units_and_labels_follow_prometheus_conventions() {
    control_plane().operation("container_create", Duration::from_millis(80), true);
    control_plane().operation("container_create", Duration::from_millis(3), false);
    // a family of labelled series appears once it has one
    control_plane().etcd_request("get", Duration::from_micros(700), true);
    control_plane().dns_query("forwarded");
    let text = render(sample()).unwrap();
    let lines = samples(&text);
    // a process-wide counter other tests (the DNS server's) bump too: its name and label only
    assert!(
        lines.iter().any(|l| l.starts_with(r#"netbee_dns_queries_total{answer="forwarded"} "#)),
        "no DNS query counter in:\n{text}"
    );
    for want in [
        r#"netbee_datapath_packets_total{counter="dnat_new"} 600"#,
        r#"netbee_datapath_drops_total{reason="cross_network"} 3"#,
        "netbee_conntrack_entries 12",
        "netbee_conntrack_capacity 262144",
        "netbee_conntrack_under_pressure 0",
        "netbee_conntrack_entries_created_total 1200",
        "netbee_conntrack_entries_collected_total 1188",
        "netbee_conntrack_entries_evicted_total 0",
        "netbee_mesh_connections_received_total 200",
        r#"netbee_service_backend_connections_total{service="web",kind="mesh",frontend="*:80/tcp",backend="10.0.1.3",task="web.1",node="n2"} 67"#,
        r#"netbee_service_backend_established_flows{service="web",kind="mesh",frontend="*:80/tcp",backend="10.0.1.3",task="web.1",node="n2"} 1"#,
        r#"netbee_published_port_connections_total{container="c1",frontend="*:8080/tcp",backend="172.18.0.2"} 5"#,
        r#"netbee_containers{state="running"} 2"#,
        r#"netbee_networks{driver="bridge"} 2"#,
        "netbee_services 1",
        r#"netbee_tasks{state="running"} 1"#,
        "process_cpu_seconds_total 1.5",
        "process_resident_memory_bytes 20971520",
        "process_open_fds 17",
        "process_max_fds 1024",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{text}");
    }
    // counters not about packets are not among the packet counters
    assert!(!text.contains(r#"counter="ct_created""#) && !text.contains(r#"counter="mesh_received""#), "{text}");
    // the histograms: base unit seconds, cumulative buckets, errors as a _total counter
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with(r#"netbee_operation_duration_seconds_bucket{operation="container_create",le="0.004"}"#)),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(r#"netbee_operation_duration_seconds_count{operation="container_create"}"#)),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(r#"netbee_operation_errors_total{operation="container_create"}"#)),
        "{text}"
    );
    assert!(text.contains("# TYPE netbee_service_reconcile_duration_seconds histogram"), "{text}");
    assert!(text.contains("# TYPE netbee_etcd_request_duration_seconds histogram"), "{text}");
    // every series of the exposition: a netbee_ or process_ prefix, counters end in _total, and
    // no name carries a unit other than the base ones
    for l in &lines {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("netbee_") || name.starts_with("process_"), "{name}");
        assert!(!name.contains("_ms") && !name.contains("_kb") && !name.contains("_mib"), "{name}");
    }
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let f: Vec<&str> = l.split(' ').collect();
        if f[3] == "counter" {
            assert!(f[2].ends_with("_total"), "{l}");
        } else {
            assert!(!f[2].ends_with("_total"), "{l}");
        }
    }
}

#[test]
fn every_family_is_described_once_and_its_samples_are_together() {
    let text = render(sample()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap().to_string();
            assert!(seen.insert(current.clone()), "{current} described twice");
        } else if !l.starts_with('#') && !l.is_empty() {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(name == current || base == current, "{name} outside its family {current}");
        }
    }
}

#[test]
fn label_values_are_escaped() {
    let mut s = Snapshot::default();
    s.backends.push(BackendSample { kind: "mesh".into(), service: "we\"b\\x\ny".into(), ..Default::default() });
    let text = render(s).unwrap();
    assert!(text.contains(r#"service="we\"b\\x\ny""#), "{text}");
}
