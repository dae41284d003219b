//! Every body on the wire, field by field: each type serializes to exactly the JSON the daemon and
//! the CLI exchanged before they were typed (the `json!` literals here), and reads it back.
use std::fmt::Debug;

use chrono::{TimeZone as _, Utc};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::*;
use crate::{
    model::{Availability, Role},
    portspec::Proto,
};

/// `v` is `wire` on the wire, and `wire` reads back as `v`.
#[track_caller]
fn wire<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T, wire: Value) {
    assert_eq!(serde_json::to_value(v).unwrap(), wire);
    assert_eq!(&serde_json::from_value::<T>(wire).unwrap(), v);
}

/// `body` reads as `v`.
#[track_caller]
fn reads<T: DeserializeOwned + PartialEq + Debug>(body: Value, v: &T) {
    assert_eq!(&serde_json::from_value::<T>(body).unwrap(), v);
}

// ---- requests ----

#[test]
fn network_create_request() {
    let req = NetworkCreateRequest {
        name: "n".into(),
        driver: Some("overlay".into()),
        subnet: Some("10.1.0.0/24".into()),
        gateway: None,
        ip_range: Some("10.1.0.128/25".into()),
        internal: true,
        labels: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    wire(
        &req,
        json!({
            "Name": "n", "Driver": "overlay", "Subnet": "10.1.0.0/24", "Gateway": null,
            "IPRange": "10.1.0.128/25", "Internal": true, "Labels": { "k": "v" },
        }),
    );
    reads(json!({ "Name": "n" }), &NetworkCreateRequest { name: "n".into(), ..Default::default() });
}

#[test]
fn docker_network_create_body_folds_into_netbees() {
    // what docker CLI 28.2.2 sends for `network create --driver bridge --subnet S --gateway G
    // --ip-range R --attachable --label k=v app`, with its nulls
    let mut req: NetworkCreateRequest = serde_json::from_value(json!({
        "Name": "app", "Driver": "bridge", "Scope": "", "EnableIPv6": null, "Internal": false,
        "Attachable": true, "Ingress": false, "ConfigOnly": false, "ConfigFrom": null,
        "IPAM": { "Driver": "default", "Options": null,
                  "Config": [{ "Subnet": "10.9.0.0/24", "IPRange": "10.9.0.128/25", "Gateway": "10.9.0.1" }] },
        "Options": {}, "Labels": { "k": "v" }, "CheckDuplicate": true,
    }))
    .unwrap();
    req.normalize().unwrap();
    assert_eq!(
        (req.subnet.as_deref(), req.gateway.as_deref(), req.ip_range.as_deref()),
        (Some("10.9.0.0/24"), Some("10.9.0.1"), Some("10.9.0.128/25"))
    );
    assert!(req.attachable && req.labels["k"] == "v" && req.driver.as_deref() == Some("bridge"));
    // compose sends IPAM null and no driver
    let mut req: NetworkCreateRequest =
        serde_json::from_value(json!({ "Name": "p_front", "IPAM": null, "Labels": null, "Driver": "" })).unwrap();
    req.normalize().unwrap();
    assert_eq!((req.subnet.clone(), req.driver.clone()), (None, None));
    // what netbee cannot do is refused, naming the network
    let refused = |v: Value| {
        let mut r: NetworkCreateRequest = serde_json::from_value(v).unwrap();
        let e = r.normalize().unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert!(e.message.contains("x"), "{}", e.message);
    };
    refused(json!({ "Name": "x", "EnableIPv6": true }));
    refused(json!({ "Name": "x", "Options": { "com.docker.network.bridge.name": "br9" } }));
    refused(json!({ "Name": "x", "IPAM": { "Config": [{ "Subnet": "10.1.0.0/24" }, { "Subnet": "10.2.0.0/24" }] } }));
    refused(json!({ "Name": "x", "IPAM": { "Driver": "dhcp" } }));
}

#[test]
fn docker_network_connect_body_folds_into_netbees() {
    let mut req: NetworkConnectRequest = serde_json::from_value(json!({
        "Container": "c1",
        "EndpointConfig": { "IPAMConfig": { "IPv4Address": "10.9.0.7" }, "Links": null, "Aliases": ["www"],
                            "NetworkID": "", "IPAddress": "" },
    }))
    .unwrap();
    req.normalize();
    assert_eq!((req.ip_address.as_deref(), req.aliases.clone()), (Some("10.9.0.7"), vec!["www".to_string()]));
}

#[test]
fn network_connect_and_disconnect_requests() {
    let req = NetworkConnectRequest {
        container: "c".into(),
        ip_address: Some("10.0.0.9".into()),
        aliases: vec!["a".into()],
        ..Default::default()
    };
    wire(&req, json!({ "Container": "c", "IPAddress": "10.0.0.9", "Aliases": ["a"] }));
    let req = NetworkDisconnectRequest { container: "c".into() };
    wire(&req, json!({ "Container": "c" }));
    // what the CLI sent before disconnect had its own type
    reads(json!({ "Container": "c", "IPAddress": null, "Aliases": [] }), &req);
}

#[test]
fn container_create_request() {
    let req = ContainerCreateRequest {
        name: Some("web".into()),
        image: "busybox".into(),
        entrypoint: Some(vec!["/bin/sh".into()]),
        user: Some("1000:50".into()),
        cmd: vec!["sleep".into(), "1".into()],
        env: vec!["A=1".into()],
        hostname: Some("h".into()),
        network: Some("net".into()),
        ip: Some("10.0.0.5".into()),
        network_aliases: vec!["w".into()],
        publish: vec!["8080:80".into()],
        expose: vec!["53/udp".into()],
        publish_all: true,
        auto_remove: true,
        workdir: Some("/tmp".into()),
        labels: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    wire(
        &req,
        json!({
            "Name": "web", "Image": "busybox", "Entrypoint": ["/bin/sh"], "User": "1000:50",
            "Cmd": ["sleep", "1"], "Env": ["A=1"], "Hostname": "h", "Network": "net",
            "IP": "10.0.0.5", "NetworkAliases": ["w"], "Publish": ["8080:80"], "Expose": ["53/udp"],
            "PublishAll": true, "AutoRemove": true, "Workdir": "/tmp", "Labels": { "k": "v" },
        }),
    );
    reads(json!({ "Cmd": ["true"] }), &ContainerCreateRequest { cmd: vec!["true".into()], ..Default::default() });
}

#[test]
fn service_create_request() {
    let req = ServiceCreateRequest {
        name: "s".into(),
        image: "host".into(),
        replicas: Some(Replicas::String("3".into())),
        publish: vec!["80:8080".into()],
        networks: vec!["ov".into()],
        constraints: vec!["node.role==manager".into()],
        env: vec!["A=1".into()],
        cmd: vec!["whoami".into()],
        entrypoint: Some(vec!["/bin/sh".into()]),
        labels: [("l".to_string(), "1".to_string())].into(),
        container_labels: [("c".to_string(), "2".to_string())].into(),
        network_aliases: [("ov".to_string(), vec!["www".to_string()])].into(),
        ..Default::default()
    };
    // clients that know no update settings leave them out
    reads(
        json!({
            "Name": "s", "Image": "host", "Replicas": "3", "Publish": ["80:8080"], "Networks": ["ov"],
            "Constraints": ["node.role==manager"], "Env": ["A=1"], "Cmd": ["whoami"], "Entrypoint": ["/bin/sh"],
            "Labels": { "l": "1" }, "ContainerLabels": { "c": "2" }, "NetworkAliases": { "ov": ["www"] },
        }),
        &req,
    );
    let flags = UpdateConfigFlags {
        parallelism: Some("2".into()),
        delay: Some("2s".into()),
        order: Some("start-first".into()),
        failure_action: Some("rollback".into()),
        monitor: Some("1s".into()),
        max_failure_ratio: Some("0.5".into()),
    };
    wire(
        &flags,
        json!({
            "Parallelism": "2", "Delay": "2s", "Order": "start-first", "FailureAction": "rollback", "Monitor": "1s",
            "MaxFailureRatio": "0.5",
        }),
    );
    // docker's clients send numbers, and null for an empty list
    let number = ServiceCreateRequest { name: "s".into(), replicas: Some(Replicas::Number(2.into())), ..req.clone() };
    reads(
        json!({
            "Name": "s", "Image": "host", "Replicas": 2, "Publish": ["80:8080"], "Networks": ["ov"],
            "Constraints": ["node.role==manager"], "Env": ["A=1"], "Cmd": ["whoami"], "Entrypoint": ["/bin/sh"],
            "Labels": { "l": "1" }, "ContainerLabels": { "c": "2" }, "NetworkAliases": { "ov": ["www"] },
        }),
        &number,
    );
    reads(
        json!({
            "Name": null, "Replicas": null, "Publish": null, "Networks": null, "Constraints": null, "Env": null,
            "Cmd": null, "Entrypoint": null, "Labels": null, "ContainerLabels": null, "NetworkAliases": null,
        }),
        &ServiceCreateRequest::default(),
    );
    assert!(serde_json::from_value::<ServiceCreateRequest>(json!({ "Replicas": true })).is_err());
}

#[test]
fn service_update_request() {
    let req = ServiceUpdateRequest {
        replicas: None,
        publish_add: vec!["81:80".into()],
        publish_rm: vec!["80".into()],
        env_add: vec!["B=2".into()],
        ..Default::default()
    };
    reads(json!({ "Replicas": null, "PublishAdd": ["81:80"], "PublishRm": ["80"], "EnvAdd": ["B=2"] }), &req);
    let req = ServiceUpdateRequest {
        image: Some("app:2".into()),
        args: Some(vec!["sh".into(), "-c".into(), "exit 1".into()]),
        network_add: vec!["a".into()],
        rollback: true,
        update_config: UpdateConfigFlags { delay: Some("2s".into()), ..Default::default() },
        ..Default::default()
    };
    reads(
        json!({
            "Image": "app:2", "Args": ["sh", "-c", "exit 1"], "NetworkAdd": ["a"], "Rollback": true,
            "UpdateConfig": { "Delay": "2s" },
        }),
        &req,
    );
    // a whole spec (`stack deploy` of a service that exists)
    reads(
        json!({ "Spec": { "Name": "s", "Image": "img", "UpdateConfig": { "Parallelism": "2" } } }),
        &ServiceUpdateRequest {
            spec: Some(ServiceCreateRequest {
                name: "s".into(),
                image: "img".into(),
                update_config: UpdateConfigFlags { parallelism: Some("2".into()), ..Default::default() },
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    // `service scale`'s body before it was typed
    reads(
        json!({ "Replicas": "5" }),
        &ServiceUpdateRequest { replicas: Some(Replicas::String("5".into())), ..Default::default() },
    );
}

#[test]
fn swarm_requests() {
    wire(&SwarmInitRequest { advertise_addr: None }, json!({ "AdvertiseAddr": null }));
    wire(&SwarmInitRequest { advertise_addr: Some("10.0.0.1".into()) }, json!({ "AdvertiseAddr": "10.0.0.1" }));
    reads(json!({}), &SwarmInitRequest::default());

    // docker's body: the fields netbee does not use are ignored
    reads(
        json!({ "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "10.0.0.1", "SubnetSize": 24, "DefaultAddrPool": [] }),
        &SwarmInitRequest { advertise_addr: Some("10.0.0.1".into()) },
    );

    let req =
        SwarmJoinRequest { join_token: "T".into(), remote_addrs: vec!["10.0.0.1:2377".into()], advertise_addr: None };
    wire(&req, json!({ "JoinToken": "T", "RemoteAddrs": ["10.0.0.1:2377"], "AdvertiseAddr": null }));
    reads(json!({ "JoinToken": null, "RemoteAddrs": null }), &SwarmJoinRequest::default());
    reads(
        json!({ "ListenAddr": "0.0.0.0:2377", "RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": "T", "AdvertiseAddr": "",
                "DataPathAddr": "", "Availability": "" }),
        &SwarmJoinRequest {
            join_token: "T".into(),
            remote_addrs: vec!["10.0.0.1:2377".into()],
            advertise_addr: Some(String::new()),
        },
    );

    let req = NodeUpdateRequest {
        labels: Some([("zone".to_string(), "a".to_string())].into()),
        role: Some("worker".into()),
        availability: Some("drain".into()),
    };
    wire(&req, json!({ "Labels": { "zone": "a" }, "Role": "worker", "Availability": "drain" }));
    reads(json!({ "Labels": null, "Role": null, "Availability": null }), &NodeUpdateRequest::default());
}

#[test]
fn join_port_bodies() {
    wire(&JoinPortRequest { token: "T".into() }, json!({ "Token": "T" }));
    reads(json!({}), &JoinPortRequest::default());
    let answer = JoinPortResponse { cluster_id: "c1".into(), role: "manager".into() };
    wire(&answer, json!({ "ClusterID": "c1", "Role": "manager" }));
    reads(json!({}), &JoinPortResponse::default());
}

// ---- responses ----

#[test]
fn errors_and_system() {
    wire(&ErrorResponse { message: "m".into() }, json!({ "message": "m" }));
    // what `docker version` reads: a client that knows only some fields still decodes it
    let v = SystemVersion {
        version: "0.1.0".into(),
        api_version: "1.50".into(),
        min_api_version: "1.24".into(),
        os: "linux".into(),
        ..Default::default()
    };
    let got = serde_json::to_value(&v).unwrap();
    assert_eq!((got["ApiVersion"].clone(), got["MinAPIVersion"].clone()), (json!("1.50"), json!("1.24")));
    reads(json!({ "Version": "0.1.0", "ApiVersion": "1.50", "MinAPIVersion": "1.24", "Os": "linux" }), &v);
    let stats = DatapathStats {
        counters: [("ct_created".to_string(), 7)].into(),
        drops: [("no_route".to_string(), 1)].into(),
        conntrack: ConntrackStats { entries: 3, capacity: 65536, entries_created: 7, entries_collected: 2, evicted: 2 },
    };
    wire(
        &stats,
        json!({
            "Counters": { "ct_created": 7 }, "Drops": { "no_route": 1 },
            "Conntrack": { "Entries": 3, "Capacity": 65536, "EntriesCreated": 7, "EntriesCollected": 2, "Evicted": 2 },
        }),
    );
    // the table lists the conntrack fields in the order of their names, as it did from the JSON
    let names: Vec<&str> = stats.conntrack.fields().iter().map(|(k, _)| *k).collect();
    let json_order: Vec<String> =
        serde_json::to_value(&stats.conntrack).unwrap().as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, json_order);
    wire(&ConntrackAgeResponse { aged: 4 }, json!({ "Aged": 4 }));
    wire(&ConntrackGcResponse { removed: 1, live: 2 }, json!({ "Removed": 1, "Live": 2 }));
    // routes without an answer send null
    assert_eq!(serde_json::to_value(()).unwrap(), Value::Null);
    wire(&(), Value::Null);
}

#[test]
fn network_responses() {
    wire(&NetworkCreateResponse { id: "abc".into(), warning: String::new() }, json!({ "Id": "abc", "Warning": "" }));
    let net = Network {
        name: "n".into(),
        id: "abc".into(),
        created: "2024-01-02T03:04:05.000000006Z".into(),
        scope: "local".into(),
        driver: "bridge".into(),
        enable_ipv6: false,
        ipam: Ipam {
            driver: "default".into(),
            options: Default::default(),
            config: vec![IpamConfig { subnet: "10.0.0.0/24".into(), gateway: "10.0.0.1".into(), ip_range: None }],
        },
        internal: false,
        attachable: false,
        ingress: false,
        containers: [(
            "cid".to_string(),
            NetworkContainer {
                name: "c".into(),
                endpoint_id: "eid".into(),
                mac_address: "02:42:0a:00:00:02".into(),
                ipv4_address: "10.0.0.2/24".into(),
                ipv6_address: String::new(),
            },
        )]
        .into(),
        options: Default::default(),
        labels: Default::default(),
        device: Some("nb-abc".into()),
    };
    wire(
        &net,
        json!({
            "Name": "n", "Id": "abc", "Created": "2024-01-02T03:04:05.000000006Z", "Scope": "local",
            "Driver": "bridge", "EnableIPv6": false,
            "IPAM": { "Driver": "default", "Options": {}, "Config": [{ "Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1" }] },
            "Internal": false, "Attachable": false, "Ingress": false,
            "Containers": { "cid": {
                "Name": "c", "EndpointID": "eid", "MacAddress": "02:42:0a:00:00:02",
                "IPv4Address": "10.0.0.2/24", "IPv6Address": "",
            } },
            "Options": {},
            "Labels": {},
            "NetbeeDevice": "nb-abc",
        }),
    );
    let range = IpamConfig { subnet: "s".into(), gateway: "g".into(), ip_range: Some("r".into()) };
    wire(&range, json!({ "Subnet": "s", "Gateway": "g", "IPRange": "r" }));
}

#[test]
fn container_responses() {
    let created = ContainerCreateResponse { id: "cid".into(), name: "web".into(), warnings: vec![] };
    wire(&created, json!({ "Id": "cid", "Name": "web", "Warnings": [] }));
    let summary = ContainerSummary {
        id: "cid".into(),
        names: vec!["/web".into()],
        image: "host".into(),
        command: "sleep 1".into(),
        created: 1_700_000_000,
        state: "running".into(),
        status: "Up 2 seconds".into(),
        ports: vec![
            Port { ip: Some("0.0.0.0".into()), private_port: 80, public_port: Some(8080), typ: "tcp".into() },
            Port { ip: Some("0.0.0.0".into()), private_port: 81, public_port: Some(8081), typ: "tcp".into() },
            Port { ip: None, private_port: 53, public_port: None, typ: "udp".into() },
        ],
        labels: [("k".to_string(), "v".to_string())].into(),
        networks: vec!["bridge".into()],
    };
    // docker's shape: the docker CLI decodes Ports as a list of objects (and groups ranges itself)
    wire(
        &summary,
        json!({
            "Id": "cid", "Names": ["/web"], "Image": "host", "Command": "sleep 1", "Created": 1_700_000_000,
            "State": "running", "Status": "Up 2 seconds",
            "Ports": [
                { "IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp" },
                { "IP": "0.0.0.0", "PrivatePort": 81, "PublicPort": 8081, "Type": "tcp" },
                { "PrivatePort": 53, "Type": "udp" },
            ],
            "Labels": { "k": "v" }, "Networks": ["bridge"],
        }),
    );
    // netbee's own `ps` prints them as before
    assert_eq!(ports_text(&summary.ports), "53/udp, 0.0.0.0:8080->80/tcp, 0.0.0.0:8081->81/tcp");
    let logs = ContainerLogsResponse {
        stdout: "o".into(),
        stderr: "e".into(),
        stdout_offset: 1,
        stderr_offset: 2,
        running: false,
        exit_code: 3,
    };
    wire(
        &logs,
        json!({ "Stdout": "o", "Stderr": "e", "StdoutOffset": 1, "StderrOffset": 2, "Running": false, "ExitCode": 3 }),
    );
    wire(&ContainerWaitResponse { status_code: 137, error: None }, json!({ "StatusCode": 137, "Error": null }));
    reads(json!({ "StatusCode": 137 }), &ContainerWaitResponse { status_code: 137, error: None });
}

#[test]
fn docker_container_create_body_folds_into_netbees() {
    // `docker run -d --name web --network app --network-alias www -p 8080:80 -p 127.0.0.1:8081:80
    // -p 9000:9000/udp -e A=1 busybox httpd -f -p 80` as docker CLI 28.2.2 sends it (zero values
    // and nulls included)
    let mut req: ContainerCreateRequest = serde_json::from_value(json!({
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
        "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": ["A=1"], "Cmd": ["httpd", "-f", "-p", "80"],
        "Image": "busybox", "Volumes": null, "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": {},
        "ExposedPorts": { "80/tcp": {}, "9000/udp": {} },
        "HostConfig": {
            "NetworkMode": "app", "RestartPolicy": { "Name": "no" }, "AutoRemove": false, "ConsoleSize": [0, 0],
            "PortBindings": {
                "80/tcp": [{ "HostIp": "", "HostPort": "8080" }, { "HostIp": "127.0.0.1", "HostPort": "8081" }],
                "9000/udp": [{ "HostIp": "", "HostPort": "9000" }],
            },
            "MemorySwappiness": -1, "Binds": null,
        },
        "NetworkingConfig": { "EndpointsConfig": { "app": { "Aliases": ["www"], "IPAMConfig": null } } },
    }))
    .unwrap();
    req.normalize(Some("web")).unwrap();
    assert_eq!(req.name.as_deref(), Some("web"));
    assert_eq!((req.hostname.clone(), req.user.clone(), req.workdir.clone()), (None, None, None));
    assert_eq!(req.network.as_deref(), Some("app"));
    assert_eq!(req.network_aliases, ["www"]);
    assert_eq!(req.publish, ["8080:80/tcp", "127.0.0.1:8081:80/tcp", "9000:9000/udp"]);
    assert_eq!(req.expose, ["80/tcp", "9000/udp"]);
    // docker-compose 1.29.2's body: no zero values, the service's aliases on its network's
    // endpoint, compose's labels
    let mut req: ContainerCreateRequest = serde_json::from_value(json!({
        "Cmd": ["httpd", "-f", "-p", "80"], "Image": "busybox",
        "HostConfig": { "NetworkMode": "proj_front", "PortBindings": { "80/tcp": [{ "HostPort": "8080" }] } },
        "NetworkingConfig": { "EndpointsConfig": { "proj_front": { "Aliases": ["www", "web"] } } },
        "Labels": { "com.docker.compose.project": "proj", "com.docker.compose.oneoff": "False" },
    }))
    .unwrap();
    req.normalize(Some("proj_web_1")).unwrap();
    assert_eq!((req.name.as_deref(), req.network.as_deref()), (Some("proj_web_1"), Some("proj_front")));
    assert_eq!(req.network_aliases, ["www", "web"]);
    assert_eq!(req.publish, ["8080:80/tcp"]);
    assert_eq!(req.labels["com.docker.compose.project"], "proj");
    // without --network: NetworkMode "default" and an endpoint named "default"
    let mut req: ContainerCreateRequest = serde_json::from_value(json!({
        "Image": "host", "Cmd": null, "Env": null,
        "HostConfig": { "NetworkMode": "default", "PortBindings": {} },
        "NetworkingConfig": { "EndpointsConfig": { "default": {} } },
    }))
    .unwrap();
    req.normalize(None).unwrap();
    assert_eq!(req.network, None);
    // `docker run -it --rm`: the streams settings and the terminal's size are kept
    let mut tty: ContainerCreateRequest = serde_json::from_value(json!({
        "AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Tty": true, "OpenStdin": true,
        "StdinOnce": true, "Cmd": ["sh"], "Image": "busybox",
        "HostConfig": { "NetworkMode": "default", "AutoRemove": true, "ConsoleSize": [40, 120] },
    }))
    .unwrap();
    tty.normalize(None).unwrap();
    assert!(tty.tty && tty.open_stdin && tty.stdin_once && tty.attach_stdin && tty.attach_stdout && tty.auto_remove);
    assert_eq!(tty.console_size, Some([40, 120]));
    // what cannot be done is refused before anything exists
    let mut two: ContainerCreateRequest = serde_json::from_value(
        json!({ "Image": "host", "NetworkingConfig": { "EndpointsConfig": { "a": {}, "b": {} } } }),
    )
    .unwrap();
    assert_eq!(two.normalize(None).unwrap_err().status().as_u16(), 400);
}

#[test]
fn container_inspect_response() {
    let endpoint = EndpointSettings {
        network_id: "nid".into(),
        endpoint_id: "eid".into(),
        gateway: "10.0.0.1".into(),
        ip_address: "10.0.0.2".into(),
        ip_prefix_len: 24,
        mac_address: "02:42:0a:00:00:02".into(),
        aliases: vec!["w".into()],
        ipam_config: Some(EndpointIpamConfig { ipv4_address: "10.0.0.2".into() }),
    };
    let binding = PortBinding { host_ip: "0.0.0.0".into(), host_port: "8080".into() };
    let inspect = ContainerInspectResponse {
        node: Some(ContainerNode { id: "node".into(), name: "h1".into(), addr: "192.168.0.1".into() }),
        id: "cid".into(),
        created: "2024-01-02T03:04:05.000000006Z".into(),
        path: Some("sleep".into()),
        args: vec!["1".into()],
        state: ContainerState {
            status: "running".into(),
            running: true,
            paused: false,
            restarting: false,
            oom_killed: false,
            dead: false,
            pid: 42,
            exit_code: 0,
            error: String::new(),
            started_at: "2024-01-02T03:04:06.000000000Z".into(),
            finished_at: "0001-01-01T00:00:00Z".into(),
        },
        name: "/web".into(),
        log_path: "/var/lib/netbee/containers/cid/stdout.log".into(),
        image: "sha256:0123".into(),
        host_config: HostConfig {
            network_mode: "default".into(),
            port_bindings: [(
                "80/tcp".to_string(),
                vec![PortBinding { host_ip: String::new(), host_port: "8080".into() }],
            )]
            .into(),
            publish_all_ports: false,
            auto_remove: false,
            ..Default::default()
        },
        config: ContainerConfig {
            hostname: "cid".into(),
            image: "busybox".into(),
            user: "app".into(),
            env: vec!["A=1".into()],
            entrypoint: None,
            cmd: vec!["sleep".into(), "1".into()],
            working_dir: String::new(),
            exposed_ports: [("53/udp".to_string(), EmptyObject {})].into(),
            labels: Default::default(),
            tty: true,
            open_stdin: true,
            ..Default::default()
        },
        network_settings: NetworkSettings {
            ports: [("53/udp".to_string(), None), ("80/tcp".to_string(), Some(vec![binding]))].into(),
            ip_address: "10.0.0.2".into(),
            ip_prefix_len: 24,
            gateway: "10.0.0.1".into(),
            mac_address: "02:42:0a:00:00:02".into(),
            networks: [("bridge".to_string(), endpoint)].into(),
        },
    };
    wire(
        &inspect,
        json!({
            "Node": { "ID": "node", "Name": "h1", "Addr": "192.168.0.1" },
            "Id": "cid",
            "Created": "2024-01-02T03:04:05.000000006Z",
            "Path": "sleep",
            "Args": ["1"],
            "State": {
                "Status": "running", "Running": true, "Paused": false, "Restarting": false, "OOMKilled": false,
                "Dead": false, "Pid": 42, "ExitCode": 0, "Error": "",
                "StartedAt": "2024-01-02T03:04:06.000000000Z", "FinishedAt": "0001-01-01T00:00:00Z",
            },
            "Name": "/web",
            "LogPath": "/var/lib/netbee/containers/cid/stdout.log",
            "Image": "sha256:0123",
            "HostConfig": {
                "NetworkMode": "default",
                "PortBindings": { "80/tcp": [{ "HostIp": "", "HostPort": "8080" }] },
                "PublishAllPorts": false, "AutoRemove": false,
                "LogConfig": { "Type": "json-file", "Config": {} },
            },
            "Config": {
                "Hostname": "cid", "Image": "busybox", "User": "app", "Env": ["A=1"], "Entrypoint": null,
                "Cmd": ["sleep", "1"], "WorkingDir": "",
                "ExposedPorts": { "53/udp": {} }, "Labels": {},
                "Tty": true, "OpenStdin": true, "StdinOnce": false,
                "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
            },
            "NetworkSettings": {
                "Ports": { "53/udp": null, "80/tcp": [{ "HostIp": "0.0.0.0", "HostPort": "8080" }] },
                "IPAddress": "10.0.0.2", "IPPrefixLen": 24, "Gateway": "10.0.0.1", "MacAddress": "02:42:0a:00:00:02",
                "Networks": { "bridge": {
                    "NetworkID": "nid", "EndpointID": "eid", "Gateway": "10.0.0.1", "IPAddress": "10.0.0.2",
                    "IPPrefixLen": 24, "MacAddress": "02:42:0a:00:00:02", "Aliases": ["w"],
                    "IPAMConfig": { "IPv4Address": "10.0.0.2" },
                } },
            },
        }),
    );
    // outside a swarm, without a command, without --ip
    let mut bare = inspect.clone();
    bare.node = None;
    bare.path = None;
    bare.network_settings.networks.get_mut("bridge").unwrap().ipam_config = None;
    let v = serde_json::to_value(&bare).unwrap();
    assert_eq!(v["Node"], Value::Null);
    assert_eq!(v["Path"], Value::Null);
    assert_eq!(v["NetworkSettings"]["Networks"]["bridge"]["IPAMConfig"], Value::Null);
    assert_eq!(serde_json::from_value::<ContainerInspectResponse>(v).unwrap(), bare);
}

#[test]
fn service_responses() {
    wire(&ServiceCreateResponse { id: "sid".into(), warnings: None }, json!({ "ID": "sid", "Warnings": null }));
    wire(&ServiceUpdateResponse { id: "sid".into(), warnings: None }, json!({ "ID": "sid", "Warnings": null }));
    let summary = ServiceSummary {
        id: "sid".into(),
        name: "s".into(),
        mode: "replicated".into(),
        replicas: "1/2".into(),
        running: 1,
        desired: 2,
        command: "whoami".into(),
        ports: "*:80->8080/tcp".into(),
        image: "host".into(),
        labels: [("com.docker.stack.namespace".to_string(), "st".to_string())].into(),
    };
    wire(
        &summary,
        json!({
            "ID": "sid", "Name": "s", "Mode": "replicated", "Replicas": "1/2", "Running": 1, "Desired": 2,
            "Command": "whoami", "Ports": "*:80->8080/tcp", "Image": "host",
            "Labels": { "com.docker.stack.namespace": "st" },
        }),
    );
    let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::nanoseconds(6);
    let service = Service {
        id: "sid".into(),
        version: ObjectVersion { index: 7 },
        created_at: t,
        updated_at: t,
        spec: ServiceSpec {
            name: "s".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
            mode: ServiceMode { replicated: ServiceModeReplicated { replicas: 2 } },
            task_template: TaskSpec {
                container_spec: TaskSpecContainerSpec {
                    image: "host".into(),
                    args: vec!["whoami".into()],
                    env: vec![],
                    command: None,
                    labels: Default::default(),
                },
                placement: TaskSpecPlacement { constraints: vec![] },
                networks: vec![NetworkAttachmentConfig { target: "nid".into(), aliases: vec!["a".into()] }],
                force_update: 0,
            },
            update_config: ServiceUpdateConfig {
                parallelism: 2,
                delay: 2_000_000_000,
                failure_action: "rollback".into(),
                monitor: 5_000_000_000,
                max_failure_ratio: 0.5,
                order: "start-first".into(),
            },
            rollback_config: ServiceUpdateConfig::default(),
            endpoint_spec: EndpointSpec {
                mode: "vip".into(),
                ports: vec![EndpointPortConfig {
                    protocol: Proto::Udp,
                    target_port: 53,
                    published_port: 5353,
                    publish_mode: "ingress".into(),
                }],
            },
        },
        endpoint: ServiceEndpoint {
            spec: EndpointSpec::default(),
            ports: vec![],
            virtual_ips: vec![EndpointVirtualIp {
                network_id: "nid".into(),
                network_name: None,
                addr: "10.0.0.3/24".into(),
            }],
        },
        previous_spec: None,
        update_status: Some(ServiceUpdateStatus {
            state: "rollback_completed".into(),
            started_at: t,
            completed_at: None,
            message: "rollback completed".into(),
        }),
        service_status: Some(ServiceStatus { running_tasks: 1, desired_tasks: 2, completed_tasks: 0 }),
    };
    wire(
        &service,
        json!({
            "ID": "sid", "Version": { "Index": 7 },
            "CreatedAt": t, "UpdatedAt": t,
            "Spec": {
                "Name": "s",
                "Labels": { "k": "v" },
                "Mode": { "Replicated": { "Replicas": 2 } },
                "TaskTemplate": {
                    "ContainerSpec": { "Image": "host", "Args": ["whoami"], "Env": [], "Labels": {} },
                    "Placement": { "Constraints": [] },
                    "Networks": [{ "Target": "nid", "Aliases": ["a"] }],
                    "ForceUpdate": 0,
                },
                "UpdateConfig": {
                    "Parallelism": 2, "Delay": 2_000_000_000u64, "FailureAction": "rollback",
                    "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0.5, "Order": "start-first",
                },
                "RollbackConfig": {
                    "Parallelism": 0, "Delay": 0, "FailureAction": "", "Monitor": 0, "MaxFailureRatio": 0.0,
                    "Order": "",
                },
                "EndpointSpec": { "Mode": "vip", "Ports": [{
                    "Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress",
                }] },
            },
            "PreviousSpec": null,
            "Endpoint": {
                "Spec": { "Mode": "", "Ports": [] }, "Ports": [],
                "VirtualIPs": [{ "NetworkID": "nid", "NetworkName": null, "Addr": "10.0.0.3/24" }],
            },
            "UpdateStatus": {
                "State": "rollback_completed", "StartedAt": t, "CompletedAt": null, "Message": "rollback completed",
            },
            "ServiceStatus": { "RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0 },
        }),
    );
    let task = Task {
        id: "tid".into(),
        name: "s.1".into(),
        slot: 1,
        node: "h1".into(),
        desired_state: "Running".into(),
        current_state: "Running".into(),
        since: t,
        error: String::new(),
        addresses: vec![TaskAddress { network_id: "nid".into(), addr: "10.0.0.4".into() }],
        image: "app:1".into(),
        created_at: Some(t),
        up_to_date: true,
    };
    wire(
        &task,
        json!({
            "ID": "tid", "Name": "s.1", "Slot": 1, "Node": "h1", "DesiredState": "Running",
            "CurrentState": "Running", "Since": t, "Error": "",
            "Addresses": [{ "NetworkID": "nid", "Addr": "10.0.0.4" }],
            "Image": "app:1", "CreatedAt": t, "UpToDate": true,
        }),
    );
}

#[test]
fn swarm_responses() {
    let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
    let swarm = Swarm {
        id: "c".into(),
        version: ObjectVersion { index: 1 },
        created_at: t,
        updated_at: t,
        spec: SwarmSpec { name: "default".into(), labels: Default::default() },
        join_tokens: JoinTokens { worker: "W".into(), manager: "M".into() },
        root_rotation_in_progress: false,
        default_addr_pool: vec![],
        subnet_size: 24,
        data_path_port: 4789,
    };
    wire(
        &swarm,
        json!({
            "ID": "c", "Version": { "Index": 1 }, "CreatedAt": t, "UpdatedAt": t,
            "Spec": { "Name": "default", "Labels": {} }, "JoinTokens": { "Worker": "W", "Manager": "M" },
            "RootRotationInProgress": false, "DefaultAddrPool": [], "SubnetSize": 24, "DataPathPort": 4789,
        }),
    );
    let node = Node {
        id: "nid".into(),
        version: ObjectVersion { index: 3 },
        is_self: true,
        description: NodeDescription {
            hostname: "h1".into(),
            engine: EngineDescription { engine_version: "0.1.0".into() },
        },
        spec: NodeSpec {
            role: Role::Manager,
            availability: Availability::Drain,
            labels: [("k".to_string(), "v".to_string())].into(),
        },
        status: NodeStatus { state: "ready".into(), addr: "192.168.0.1".into() },
        manager_status: Some(ManagerStatus {
            leader: true,
            reachability: "reachable".into(),
            addr: "192.168.0.1:2377".into(),
        }),
        created_at: t,
    };
    wire(
        &node,
        json!({
            "ID": "nid", "Version": { "Index": 3 }, "Self": true,
            "Description": { "Hostname": "h1", "Engine": { "EngineVersion": "0.1.0" } },
            "Spec": { "Role": "manager", "Availability": "drain", "Labels": { "k": "v" } },
            "Status": { "State": "ready", "Addr": "192.168.0.1" },
            "ManagerStatus": { "Leader": true, "Reachability": "reachable", "Addr": "192.168.0.1:2377" },
            "CreatedAt": t,
        }),
    );
    assert_eq!(node.manager_status_text(), "Leader");
}

/// docker's `ServiceSpec` as the docker CLI sends it (`service create` and the whole-spec
/// update) becomes the request netbee's own CLI sends.
#[test]
fn docker_service_spec_becomes_the_request() {
    let body = json!({
        "Name": "web",
        "Labels": { "com.docker.stack.namespace": "st" },
        "TaskTemplate": {
            "ContainerSpec": { "Image": "host:latest", "Args": ["whoami", "--port", "8080"], "Env": ["A=1"],
                               "Labels": { "tier": "web" } },
            "Placement": { "Constraints": ["node.labels.zone==a"], "Platforms": [{ "Architecture": "amd64", "OS": "linux" }] },
            "Networks": [{ "Target": "ov", "Aliases": ["www"] }, { "Target": "nid2" }],
        },
        "Mode": { "Replicated": { "Replicas": 5 } },
        "UpdateConfig": { "Parallelism": 2, "Delay": 5_000_000_000u64, "FailureAction": "pause", "Monitor": 0,
                          "Order": "stop-first" },
        "EndpointSpec": { "Mode": "vip", "Ports": [
            { "Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 80, "PublishMode": "ingress" },
            { "Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353 },
        ] },
    });
    let spec: DockerServiceSpec = serde_json::from_value(body).unwrap();
    let req = spec.into_request().unwrap();
    assert_eq!(req.name, "web");
    assert_eq!(req.image, "host", "the CLI's :latest on netbee's host image");
    assert_eq!(req.replicas, Some(Replicas::Number(5.into())));
    assert_eq!(req.publish, ["80:8080/tcp", "5353:53/udp"]);
    assert_eq!(req.networks, ["ov", "nid2"]);
    assert_eq!(req.network_aliases, [("ov".to_string(), vec!["www".to_string()])].into());
    assert_eq!(req.constraints, ["node.labels.zone==a"]);
    assert_eq!((req.env, req.cmd), (vec!["A=1".to_string()], vec!["whoami".into(), "--port".into(), "8080".into()]));
    assert_eq!(req.entrypoint, None);
    assert_eq!(req.container_labels["tier"], "web");
    assert_eq!(req.labels["com.docker.stack.namespace"], "st");
    let u = req.update_config;
    assert_eq!((u.parallelism.as_deref(), u.delay.as_deref()), (Some("2"), Some("5000000000ns")));
    assert_eq!(u.monitor, None, "a zero monitor keeps the default");

    // stack deploy's mode without a count is one replica (left to the daemon's default)
    let spec: DockerServiceSpec =
        serde_json::from_value(json!({ "Name": "db", "TaskTemplate": {}, "Mode": { "Replicated": {} } })).unwrap();
    assert_eq!(spec.into_request().unwrap().replicas, None);

    // what netbee does not do is refused, naming it
    for (body, want) in [
        (json!({ "Name": "g", "TaskTemplate": {}, "Mode": { "Global": {} } }), "only replicated"),
        (
            json!({ "Name": "h", "TaskTemplate": {}, "EndpointSpec": { "Ports": [
                { "TargetPort": 53, "PublishedPort": 53, "PublishMode": "host" }] } }),
            "publish mode \"host\"",
        ),
        (
            json!({ "Name": "p", "TaskTemplate": {}, "EndpointSpec": { "Ports": [{ "TargetPort": 80 }] } }),
            "needs a published port",
        ),
        (json!({ "Name": "d", "TaskTemplate": {}, "EndpointSpec": { "Mode": "dnsrr" } }), "endpoint mode"),
    ] {
        let spec: DockerServiceSpec = serde_json::from_value(body).unwrap();
        let e = spec.into_request().unwrap_err();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn ps_output_keeps_the_containers_rows_and_the_commands_spaces() {
    let out = "UID          PID    PPID  C STIME TTY          TIME CMD\n\
               root           1       0  0 04:00 ?        00:00:01 /sbin/init\n\
               root        4242    4240  0 04:01 ?        00:00:00 /usr/bin/netbee whoami --port 7000\n\
               root        4243    4242  0 04:01 ?        00:00:00 sleep 5\n";
    let top = parse_ps(out, &[4242, 4243, 9999]).unwrap();
    assert_eq!(top.titles, ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]);
    assert_eq!(top.processes.len(), 2);
    assert_eq!(top.processes[0][1], "4242");
    assert_eq!(top.processes[0][7], "/usr/bin/netbee whoami --port 7000");
    assert_eq!(top.processes[1][7], "sleep 5");
    // `-o pid,comm`: PID first; a row with an empty last column
    let top = parse_ps("    PID COMMAND\n   4242 netbee\n      7 kthreadd\n", &[4242]).unwrap();
    assert_eq!(top.processes, [vec!["4242".to_string(), "netbee".to_string()]]);
    // no PID column, or a PID that is not a number: docker's errors
    assert_eq!(parse_ps("COMMAND\nsh\n", &[1]).unwrap_err(), "Couldn't find PID field in ps output");
    assert!(parse_ps("PID CMD\nx sh\n", &[1]).is_err());
    assert!(parse_ps("", &[1]).is_err());
}

#[test]
fn exec_bodies() {
    // `docker exec -it web sh` as docker CLI 28.2.2 sends it
    reads(
        json!({ "Tty": true, "ConsoleSize": [40, 120], "AttachStdin": true, "AttachStderr": true,
                "AttachStdout": true, "Cmd": ["sh"], "Env": null, "User": "", "WorkingDir": "",
                "Privileged": false, "DetachKeys": "" }),
        &ExecCreateRequest {
            cmd: vec!["sh".into()],
            tty: true,
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            console_size: Some(vec![40, 120]),
            ..Default::default()
        },
    );
    reads(json!({ "Detach": true }), &ExecStartRequest { detach: true, ..Default::default() });
    wire(&ExecCreateResponse { id: "eid".into() }, json!({ "Id": "eid" }));
    let inspect = ExecInspectResponse {
        id: "eid".into(),
        running: false,
        exit_code: Some(7),
        process_config: ExecProcessConfig {
            tty: false,
            entrypoint: "sh".into(),
            arguments: vec!["-c".into(), "exit 7".into()],
            privileged: false,
            user: String::new(),
        },
        open_stdin: false,
        open_stderr: true,
        open_stdout: true,
        can_remove: false,
        container_id: "cid".into(),
        detach_keys: String::new(),
        pid: 0,
    };
    wire(
        &inspect,
        json!({
            "ID": "eid", "Running": false, "ExitCode": 7,
            "ProcessConfig": { "tty": false, "entrypoint": "sh", "arguments": ["-c", "exit 7"], "privileged": false, "user": "" },
            "OpenStdin": false, "OpenStderr": true, "OpenStdout": true, "CanRemove": false,
            "ContainerID": "cid", "DetachKeys": "", "Pid": 0,
        }),
    );
    // not yet exited: null, as docker's
    let running = ExecInspectResponse { running: true, exit_code: None, ..inspect };
    assert_eq!(serde_json::to_value(&running).unwrap()["ExitCode"], Value::Null);
}
