use super::*;

fn one(text: &str) -> Result<StackPlan, String> {
    let env = |k: &str| (k == "FROM_CLIENT").then(|| "client-value".to_string());
    load("st", &[ComposeFile { name: "compose.yml".into(), text: text.into() }], &env)
}

fn svc<'a>(p: &'a StackPlan, key: &str) -> &'a ServiceCreateRequest {
    &p.services.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("no service {key}")).request
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const FULL: &str = r#"
version: "3.8"
services:
  web:
    image: netbee-test/busybox:1
    command: httpd -f -p "80" -h /www
    environment:
      - A=1
      - FROM_CLIENT
      - UNSET_HERE
    ports:
      - "8080:80"
      - "5353:53/udp"
      - target: 81
        published: 8081
        protocol: tcp
        mode: ingress
    networks:
      front:
        aliases: [www, webalias]
    labels:
      tier: web
    deploy:
      replicas: 3
      labels: [owner=ops]
      placement:
        constraints: [node.role==manager]
      update_config:
        parallelism: 2
        delay: 10s
        order: start-first
        failure_action: rollback
        monitor: 1m30s
        max_failure_ratio: 0.5
      rollback_config:
        parallelism: 0
  db:
    image: netbee-test/busybox:1
    entrypoint: [sleep]
    command: ["600"]
    environment:
      B: 2
      C: "x=y"
      D: true
networks:
  front:
    attachable: true
    labels: {purpose: frontend}
    ipam:
      config:
        - subnet: 10.77.0.0/24
"#;

#[test]
fn services_and_networks_as_docker_names_and_labels_them() {
    let p = one(FULL).unwrap();
    // update settings are the service's: nothing is ignored
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let web = svc(&p, "web");
    assert_eq!(web.name, "st_web");
    assert_eq!(web.image, "netbee-test/busybox:1");
    assert_eq!(web.cmd, ["httpd", "-f", "-p", "80", "-h", "/www"]);
    assert_eq!(web.entrypoint, None);
    // a key alone takes the client's value; unset there, it is left out
    assert_eq!(web.env, ["A=1", "FROM_CLIENT=client-value"]);
    assert_eq!(web.publish, ["8080:80/tcp", "5353:53/udp", "8081:81/tcp"]);
    assert_eq!(web.replicas, Some(Replicas::Number(3.into())));
    assert_eq!(web.networks, ["st_front"]);
    // the file's aliases, then the short name, as docker sends them
    assert_eq!(
        web.network_aliases,
        [("st_front".to_string(), vec!["www".into(), "webalias".into(), "web".into()])].into()
    );
    assert_eq!(web.labels, map(&[("owner", "ops"), (NAMESPACE_LABEL, "st"), (IMAGE_LABEL, "netbee-test/busybox:1")]));
    assert_eq!(web.container_labels, map(&[("tier", "web"), (NAMESPACE_LABEL, "st")]));
    assert_eq!(web.constraints, ["node.role==manager"]);
    // as `service create --update-*` sends them
    let u = &web.update_config;
    assert_eq!(u.parallelism.as_deref(), Some("2"));
    assert_eq!(u.delay.as_deref(), Some("10s"));
    assert_eq!(u.order.as_deref(), Some("start-first"));
    assert_eq!(u.failure_action.as_deref(), Some("rollback"));
    assert_eq!(u.monitor.as_deref(), Some("1m30s"));
    assert_eq!(u.max_failure_ratio.as_deref(), Some("0.5"));
    assert_eq!(web.rollback_config.parallelism.as_deref(), Some("0"));
    assert_eq!(web.rollback_config.delay, None);

    let db = svc(&p, "db");
    assert_eq!(db.name, "st_db");
    assert_eq!(db.entrypoint, Some(vec!["sleep".to_string()]));
    assert_eq!(db.cmd, ["600"]);
    assert_eq!(db.env, ["B=2", "C=x=y", "D=true"]);
    assert_eq!(db.replicas, None, "no count: the daemon makes it one, as swarmkit");
    assert_eq!(db.networks, ["st_default"]);
    assert_eq!(db.network_aliases, [("st_default".to_string(), vec!["db".to_string()])].into());
    assert!(db.publish.is_empty());
    assert_eq!(db.update_config, UpdateConfigFlags::default(), "none given: the daemon's defaults");

    let names: Vec<&str> = p.networks.iter().map(|n| n.create.name.as_str()).collect();
    assert_eq!(names, ["st_front", "st_default"]);
    let front = &p.networks[0];
    assert!(front.attachable && !front.external);
    assert_eq!(front.create.driver.as_deref(), Some("overlay"));
    assert_eq!(front.create.subnet.as_deref(), Some("10.77.0.0/24"));
    assert_eq!(front.create.labels, map(&[("purpose", "frontend"), (NAMESPACE_LABEL, "st")]));
    assert_eq!(p.networks[1].create.labels, map(&[(NAMESPACE_LABEL, "st")]));
}

#[test]
fn ignored_keys_are_warned_about_as_docker_does() {
    let p = one(
        "services:\n  a:\n    image: i\n    build: .\n    depends_on: [b]\n    container_name: x\n    x-mine: 1\n  b:\n    image: i\n    restart: always\n    volumes: [/data]\n",
    )
    .unwrap();
    assert_eq!(
        p.warnings,
        [
            "Ignoring unsupported options: build, depends_on, restart, volumes\n".to_string(),
            "Ignoring deprecated options:\n\ncontainer_name: Setting the container name is not supported.\n".into(),
        ]
    );
    assert_eq!(p.services.len(), 2);
}

#[test]
fn bad_input_names_the_key_and_the_service() {
    for (text, needle) in [
        ("services:\n  a:\n    image: i\nfoo: 1\n", "(root) Additional property foo is not allowed"),
        (
            "services:\n  web:\n    image: i\n    colour: red\n",
            "services.web Additional property colour is not allowed",
        ),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      replicas: \"x\"\n",
            "services.web.deploy.replicas: invalid type",
        ),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      replica: 2\n",
            "services.web.deploy.replica: unknown field `replica`",
        ),
        (
            "services:\n  web:\n    image: i\n    ports: [\"99999:80\"]\n",
            "services.web.ports[0]: invalid published port \"99999\"",
        ),
        ("services:\n  web:\n    image: i\n    ports: [\"80:0\"]\n", "invalid target port \"0\""),
        ("services:\n  web:\n    image: i\n    ports: [\"80:80/sctp\"]\n", "invalid protocol \"sctp\""),
        ("services:\n  web:\n    image: i\n    ports: [\"80\"]\n", "has no published port"),
        ("services:\n  web:\n    image: i\n    ports: [{target: 80}]\n", "a published port is required"),
        (
            "services:\n  web:\n    image: i\n    ports: [{target: 80, published: 80, mode: host}]\n",
            "publish mode host",
        ),
        ("services:\n  web:\n    image: i\n    ports: [\"80:80\", \"80:81\"]\n", "port 80/tcp is published twice"),
        ("services:\n  web:\n    image: i\n    networks: [nope]\n", "service \"web\" refers to undefined network nope"),
        ("services:\n  web:\n    command: x\n", "services.web: image is required"),
        ("services:\n  web:\n    image: [a]\n", "services.web.image: invalid type"),
        (
            "services:\n  web:\n    image: i\n    environment: 3\n",
            "services.web.environment must be a mapping or a list",
        ),
        (
            "services:\n  web:\n    image: i\n    extends: base\n",
            "extends: Support for `extends` is not implemented yet.",
        ),
        ("version: \"2.4\"\nservices:\n  web:\n    image: i\n", "unsupported Compose file version: 2.4"),
        ("services:\n  web:\n    image: i\n    deploy:\n      mode: global\n", "global services are not supported"),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      update_config:\n        order: sideways\n",
            "services.web.deploy.update_config.order: invalid value \"sideways\"",
        ),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      update_config:\n        delay: 10 seconds\n",
            "services.web.deploy.update_config.delay: invalid duration",
        ),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      rollback_config:\n        failure_action: rollback\n",
            "services.web.deploy.rollback_config.failure_action: invalid value \"rollback\"",
        ),
        (
            "services:\n  web:\n    image: i\n    deploy:\n      placement:\n        constraints: [\"node.color==red\"]\n",
            "services.web.deploy.placement.constraints[0]: invalid constraint",
        ),
        ("services:\n  web:\n    image: i\nnetworks:\n  n:\n    driver: bridge\n", "networks.n.driver"),
        (
            "services:\n  web:\n    image: i\nnetworks:\n  n:\n    color: red\n",
            "networks.n.color: unknown field `color`",
        ),
        ("services: {}\n", "defines no services"),
        ("services:\n  web: [1]\n", "services.web must be a mapping"),
        ("services:\n  web:\n    image: i\n  web\n", "compose.yml:"),
    ] {
        let e = one(text).expect_err(text);
        assert!(e.contains(needle), "{text:?}: expected {needle:?} in {e:?}");
    }
}

#[test]
fn later_files_override_earlier_ones() {
    let base = ComposeFile {
        name: "a.yml".into(),
        text: "services:\n  web:\n    image: i:1\n    deploy: {replicas: 2, labels: {a: b}}\n".into(),
    };
    let over = ComposeFile {
        name: "b.yml".into(),
        text: "services:\n  web:\n    image: i:2\n    deploy: {replicas: 5}\n  extra:\n    image: e\n".into(),
    };
    let p = load("st", &[base, over], &|_| None).unwrap();
    let web = svc(&p, "web");
    assert_eq!(web.image, "i:2");
    assert_eq!(web.replicas, Some(Replicas::Number(5.into())));
    assert_eq!(web.labels.get("a").map(String::as_str), Some("b"), "mappings merge key by key");
    assert_eq!(svc(&p, "extra").name, "st_extra");
}

#[test]
fn external_and_named_networks_keep_their_names() {
    let p = one(
        "services:\n  a:\n    image: i\n    networks: [shared, own]\nnetworks:\n  shared:\n    external: true\n  own:\n    name: custom\n",
    )
    .unwrap();
    let a = svc(&p, "a");
    assert_eq!(a.networks, ["shared", "custom"]);
    assert!(p.networks[0].external);
    assert!(!p.networks[1].external);
    assert_eq!(p.networks[1].create.name, "custom");
}

#[test]
fn port_ranges_and_numbers() {
    let p = one("services:\n  a:\n    image: i\n    ports: [\"9000-9001:80-81/udp\", 7000:70]\n").unwrap();
    // YAML reads 7000:70 unquoted as a string (a sexagesimal number in YAML 1.1 is not applied)
    assert_eq!(svc(&p, "a").publish, ["9000:80/udp", "9001:81/udp", "7000:70/tcp"]);
    let e = one("services:\n  a:\n    image: i\n    ports: [\"9000-9002:80-81\"]\n").unwrap_err();
    assert!(e.contains("ranges differ"), "{e}");
}

#[test]
fn durations() {
    for ok in ["0", "10s", "1m30s", "500ms", "1.5h", "2us"] {
        assert!(check_duration(ok, "d").is_ok(), "{ok}");
    }
    for bad in ["", "10", "s", "10 s", "1x", "-1s"] {
        assert!(check_duration(bad, "d").is_err(), "{bad}");
    }
}

#[test]
fn stack_names_are_checked() {
    let e = load("bad name", &[ComposeFile { name: "f".into(), text: FULL.into() }], &|_| None).unwrap_err();
    assert!(e.contains("invalid stack name"), "{e}");
}

#[test]
fn variables_are_substituted_from_the_client_environment() {
    let env = |k: &str| match k {
        "TAG" => Some("2".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let mut unset = Vec::new();
    for (text, want) in [
        ("i:${TAG}", "i:2"),
        ("i:$TAG", "i:2"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${NOPE-d}", "d"),
        ("$$HOME and $", "$HOME and $"),
        ("a${NOPE}b", "ab"),
    ] {
        assert_eq!(substitute(text, &env, &mut unset).unwrap(), want, "{text}");
    }
    assert_eq!(unset, ["NOPE"]);
    assert!(substitute("${NOPE:?set it}", &env, &mut unset).unwrap_err().contains("NOPE is missing a value: set it"));
    assert!(substitute("${TAG", &env, &mut unset).is_err());
    let p = load(
        "st",
        &[ComposeFile {
            name: "f".into(),
            text: "services:\n  a:\n    image: i:${TAG}\n    command: echo $$X $MISSING\n".into(),
        }],
        &env,
    )
    .unwrap();
    assert_eq!(svc(&p, "a").image, "i:2");
    assert_eq!(svc(&p, "a").cmd, ["echo", "$X"]);
    assert_eq!(p.warnings, ["The \"MISSING\" variable is not set. Defaulting to a blank string."]);
}
