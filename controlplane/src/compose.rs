//! Compose files (format version 3) as `stack deploy` reads them, mapped onto the service and
//! network requests docker's CLI would send: names scoped by the stack (`NAME_svc`,
//! `NAME_default`), the `com.docker.stack.namespace` label on everything the stack owns, the
//! service's short name as an alias on each of its networks.
//!
//! Pure logic: everything is validated here, before the CLI sends its first request, so a bad
//! file creates nothing. The YAML is parsed by `serde_norway` into a value tree; keys are checked
//! against the version 3 schema by hand (unknown keys are errors, keys swarm ignores are
//! warnings, as docker's loader does), then each part is decoded into typed structs, whose errors
//! carry the path of the offending key.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

use crate::api::{NetworkCreateRequest, Replicas, ServiceCreateRequest, UpdateConfigFlags};

/// The label docker puts on every service and network of a stack; `stack ls` groups by it.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// The image a stack's service was deployed with, as the file named it.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// What `stack deploy` creates or updates, in order: the networks, then the services.
#[derive(Debug, Clone, PartialEq)]
pub struct StackPlan {
    pub networks: Vec<StackNetwork>,
    pub services: Vec<StackService>,
    /// Lines for stderr (ignored options), printed before anything is sent.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StackNetwork {
    /// The name in the file (`front`, `default`).
    pub key: String,
    /// `external: true`: must exist already; never created nor removed by the stack.
    pub external: bool,
    /// The request that creates it (its `name` is the real one, e.g. `st_front`).
    pub create: NetworkCreateRequest,
    /// `attachable:` as given; netbee's overlays always accept containers, so it is only kept.
    pub attachable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StackService {
    /// The name in the file (`web`).
    pub key: String,
    pub request: ServiceCreateRequest,
}

/// `deploy.update_config` and `deploy.rollback_config`, as docker's `service update --update-*`
/// and `--rollback-*` flags take them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    pub parallelism: Option<u64>,
    /// A Go duration (`10s`, `1m30s`).
    pub delay: Option<String>,
    /// `continue`, `pause` or `rollback`.
    pub failure_action: Option<String>,
    pub monitor: Option<String>,
    pub max_failure_ratio: Option<f64>,
    /// `start-first` or `stop-first`.
    pub order: Option<String>,
}

impl UpdateConfig {
    /// The request's form: the flags as typed, which the daemon parses as `service create`'s.
    fn flags(self) -> UpdateConfigFlags {
        UpdateConfigFlags {
            parallelism: self.parallelism.map(|n| n.to_string()),
            delay: self.delay,
            order: self.order,
            failure_action: self.failure_action,
            monitor: self.monitor,
            max_failure_ratio: self.max_failure_ratio.map(|r| r.to_string()),
        }
    }
}

/// Version 3 service keys swarm ignores; docker's loader warns `Ignoring unsupported options`
/// (`depends_on` too here: a stack starts every service at once, with no order).
const UNSUPPORTED: &[&str] = &[
    "build",
    "cgroup_parent",
    "cgroupns_mode",
    "depends_on",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
];

/// Valid version 3 keys that swarm honours but netbee does not implement yet: ignored with the
/// same warning, so a file written for docker still deploys.
const NOT_IMPLEMENTED: &[&str] = &[
    "cap_add",
    "cap_drop",
    "configs",
    "credential_spec",
    "dns",
    "dns_search",
    "env_file",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "init",
    "isolation",
    "logging",
    "read_only",
    "secrets",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "volumes",
    "working_dir",
];

/// Deprecated keys and docker's explanation (`Ignoring deprecated options`).
const DEPRECATED: &[(&str, &str)] = &[
    ("container_name", "Setting the container name is not supported."),
    (
        "expose",
        "Exposing ports is unnecessary - services on the same network can access each other's containers on any port.",
    ),
];

/// Keys docker refuses outright, with its reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("extends", "Support for `extends` is not implemented yet."),
    (
        "volume_driver",
        "Instead of setting the volume driver on the service, define a volume using the top-level `volumes` option and specify the driver there.",
    ),
    (
        "volumes_from",
        "To share a volume between services, define it using the top-level `volumes` option and reference it from each service that shares it using the service-level `volumes` option.",
    ),
    ("cpu_quota", "Set resource limits using deploy.resources"),
    ("cpu_shares", "Set resource limits using deploy.resources"),
    ("cpuset", "Set resource limits using deploy.resources"),
    ("mem_limit", "Set resource limits using deploy.resources"),
    ("memswap_limit", "Set resource limits using deploy.resources"),
];

/// The service keys this module maps onto the service spec.
const SUPPORTED: &[&str] = &["image", "command", "entrypoint", "environment", "ports", "networks", "deploy", "labels"];

const TOP_LEVEL: &[&str] = &["version", "services", "networks", "volumes", "secrets", "configs"];

/// The service keys decoded by serde (the others are checked above and skipped).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ComposeService {
    image: Option<String>,
    command: Option<Value>,
    entrypoint: Option<Value>,
    environment: Option<Value>,
    labels: Option<Value>,
    ports: Option<Vec<Value>>,
    networks: Option<Value>,
    deploy: Option<Deploy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Deploy {
    mode: Option<String>,
    replicas: Option<u64>,
    labels: Option<Value>,
    placement: Option<Placement>,
    update_config: Option<UpdateConfig>,
    rollback_config: Option<UpdateConfig>,
    endpoint_mode: Option<String>,
    // valid, not implemented: warned about
    resources: Option<Value>,
    restart_policy: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Placement {
    constraints: Vec<String>,
    preferences: Option<Value>,
    max_replicas_per_node: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LongPort {
    target: Option<u64>,
    published: Option<Value>,
    protocol: Option<String>,
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServiceNetwork {
    aliases: Vec<String>,
    ipv4_address: Option<String>,
    ipv6_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ComposeNetwork {
    driver: Option<String>,
    driver_opts: Option<Value>,
    ipam: Option<Ipam>,
    external: Option<Value>,
    internal: bool,
    attachable: bool,
    labels: Option<Value>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Ipam {
    driver: Option<String>,
    config: Vec<IpamConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IpamConfig {
    subnet: Option<String>,
}

/// A compose file as read: its name (for messages) and text.
pub struct ComposeFile {
    pub name: String,
    pub text: String,
}

/// Reads one or more compose files (later files override earlier ones, mapping by mapping, as
/// `-c a.yml -c b.yml`) into the plan of stack `stack`. `env` looks up the client's environment
/// (`environment: [KEY]` takes KEY's value from it).
pub fn load(stack: &str, files: &[ComposeFile], env: &dyn Fn(&str) -> Option<String>) -> Result<StackPlan, String> {
    crate::names::validate_network_name(stack)
        .map_err(|e| e.replace("network name", "stack name").replace("network", "stack"))?;
    let mut merged = Value::Mapping(Mapping::new());
    for f in files {
        let v: Value = serde_norway::from_str(&f.text).map_err(|e| format!("{}: {e}", f.name))?;
        match v {
            Value::Mapping(_) => merge(&mut merged, v),
            Value::Null => {}
            _ => return Err(format!("{}: top-level object must be a mapping", f.name)),
        }
    }
    let mut unset = Vec::new();
    interpolate(&mut merged, env, &mut unset)?;
    let mut p = plan(stack, merged, env)?;
    unset.sort();
    unset.dedup();
    for v in unset.iter().rev() {
        p.warnings.insert(0, format!("The \"{v}\" variable is not set. Defaulting to a blank string."));
    }
    Ok(p)
}

/// Substitutes the client's environment into every string value, as docker's loader does:
/// `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
/// `${VAR:?message}`/`${VAR?message}` (an error), and `$$` for a literal `$`. Unset variables
/// without a default are blank and collected in `unset` for a warning.
fn interpolate(v: &mut Value, env: &dyn Fn(&str) -> Option<String>, unset: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::String(s) => *s = substitute(s, env, unset)?,
        Value::Sequence(items) => {
            for i in items {
                interpolate(i, env, unset)?;
            }
        }
        Value::Mapping(m) => {
            for (_, i) in m.iter_mut() {
                interpolate(i, env, unset)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>, unset: &mut Vec<String>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| format!("invalid interpolation format for {s:?}: missing }}"))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let split = expr.find(|c: char| !is_name(c)).unwrap_or(expr.len());
            let (name, op) = expr.split_at(split);
            if name.is_empty() {
                return Err(format!("invalid interpolation format for {s:?}: ${{{expr}}}"));
            }
            let val = env(name);
            let val_nonempty = val.clone().filter(|v| !v.is_empty());
            let text = match op {
                "" => val.unwrap_or_else(|| {
                    unset.push(name.to_string());
                    String::new()
                }),
                _ if op.starts_with(":-") => val_nonempty.unwrap_or_else(|| op[2..].to_string()),
                _ if op.starts_with('-') => val.unwrap_or_else(|| op[1..].to_string()),
                _ if op.starts_with(":?") => {
                    val_nonempty.ok_or_else(|| format!("required variable {name} is missing a value: {}", &op[2..]))?
                }
                _ if op.starts_with('?') => {
                    val.ok_or_else(|| format!("required variable {name} is missing a value: {}", &op[1..]))?
                }
                _ => return Err(format!("invalid interpolation format for {s:?}: ${{{expr}}}")),
            };
            out.push_str(&text);
        } else {
            let end = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
            if end == 0 {
                // a lone `$` stays as written
                out.push('$');
                continue;
            }
            let name = &rest[..end];
            rest = &rest[end..];
            out.push_str(&env(name).unwrap_or_else(|| {
                unset.push(name.to_string());
                String::new()
            }));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Later values win; mappings merge key by key (so a second file can change one service's image).
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn key_str(k: &Value) -> Result<String, String> {
    match k {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("invalid key {other:?}: keys must be strings")),
    }
}

/// The entries of a mapping with string keys; `what` names it in the error.
fn entries(v: Value, what: &str) -> Result<Vec<(String, Value)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => m.into_iter().map(|(k, v)| Ok((key_str(&k)?, v))).collect(),
        _ => Err(format!("{what} must be a mapping")),
    }
}

/// Decodes a part of the file, naming the key at fault (`services.web.deploy.replicas: invalid
/// type: string "x", expected u64`).
fn decode<T: for<'de> Deserialize<'de>>(v: Value, path: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." { path.to_string() } else { format!("{path}.{inner}") };
        format!("{at}: {}", e.into_inner())
    })
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `command:`/`entrypoint:`: a string (split as a shell would, without running one) or a list.
fn string_or_list(v: Value, path: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => shlex::split(&s).ok_or_else(|| format!("{path}: unbalanced quotes in {s:?}")),
        Value::Sequence(items) => items
            .iter()
            .map(|i| scalar_string(i).ok_or_else(|| format!("{path} must be a string or a list of strings")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(format!("{path} must be a string or a list of strings")),
    }
}

/// `environment:`/`labels:`: `[K=V, ...]` or `{K: V}`; a value is `None` where the file gives
/// only the key.
fn map_or_list(v: Value, path: &str) -> Result<Vec<(String, Option<String>)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = scalar_string(i).ok_or_else(|| format!("{path} must be a list of KEY=VALUE strings"))?;
                Ok(match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                })
            })
            .collect(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = key_str(k)?;
                match v {
                    Value::Null => Ok((k, None)),
                    v => scalar_string(v)
                        .map(|s| (k.clone(), Some(s)))
                        .ok_or_else(|| format!("{path}.{k} must be a string, number, boolean or null")),
                }
            })
            .collect(),
        _ => Err(format!("{path} must be a mapping or a list")),
    }
}

fn labels_of(v: Option<Value>, path: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(v.map(|v| map_or_list(v, path))
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// A port number of a spec, 1-65535.
fn port_number(s: &str, spec: &str, path: &str, which: &str) -> Result<u16, String> {
    match s.trim().parse::<u64>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("{path}: invalid {which} port {s:?} in {spec:?}: must be 1-65535")),
    }
}

/// A port or a range `LO-HI`.
fn port_range(s: &str, spec: &str, path: &str, which: &str) -> Result<Vec<u16>, String> {
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (port_number(lo, spec, path, which)?, port_number(hi, spec, path, which)?);
            if lo > hi {
                return Err(format!("{path}: invalid {which} port range {s:?} in {spec:?}"));
            }
            Ok((lo..=hi).collect())
        }
        None => Ok(vec![port_number(s, spec, path, which)?]),
    }
}

fn protocol(p: &str, spec: &str, path: &str) -> Result<&'static str, String> {
    match p {
        "tcp" => Ok("tcp"),
        "udp" => Ok("udp"),
        _ => Err(format!("{path}: invalid protocol {p:?} in {spec:?}: use tcp or udp")),
    }
}

/// A `ports:` entry as `PUBLISHED:TARGET/PROTO` publish specs (a range gives several).
fn ports_of(v: Value, path: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Mapping(_) => {
            let p: LongPort = decode(v, path)?;
            let target = p.target.ok_or_else(|| format!("{path}: target is required"))?;
            let target = port_number(&target.to_string(), &format!("target: {target}"), path, "target")?;
            let published = match &p.published {
                None | Some(Value::Null) => {
                    return Err(format!(
                        "{path}: a published port is required (netbee's routing mesh does not pick one)"
                    ));
                }
                Some(v) => scalar_string(v).ok_or_else(|| format!("{path}.published must be a number or a string"))?,
            };
            let published = port_number(&published, &format!("published: {published}"), path, "published")?;
            let proto = protocol(p.protocol.as_deref().unwrap_or("tcp"), "protocol", path)?;
            match p.mode.as_deref() {
                None | Some("ingress") => {}
                Some("host") => {
                    return Err(format!("{path}: publish mode host is not supported by netbee (use ingress)"));
                }
                Some(m) => return Err(format!("{path}.mode: invalid mode {m:?}: use ingress or host")),
            }
            Ok(vec![format!("{published}:{target}/{proto}")])
        }
        v => {
            let spec = scalar_string(&v).ok_or_else(|| format!("{path} must be a string, a number or a mapping"))?;
            let (ports, proto) = match spec.rsplit_once('/') {
                Some((p, pr)) => (p, protocol(pr, &spec, path)?),
                None => (spec.as_str(), "tcp"),
            };
            let parts: Vec<&str> = ports.split(':').collect();
            let (published, target) = match parts.as_slice() {
                [p, t] => (*p, *t),
                [_ip, _p, _t] => {
                    return Err(format!("{path}: {spec:?}: a host IP is not supported for swarm services"));
                }
                [t] => {
                    port_range(t, &spec, path, "target")?;
                    return Err(format!(
                        "{path}: {spec:?} has no published port (netbee's routing mesh does not pick one): use PUBLISHED:TARGET"
                    ));
                }
                _ => return Err(format!("{path}: invalid port {spec:?}: expected PUBLISHED:TARGET[/PROTOCOL]")),
            };
            let (ps, ts) =
                (port_range(published, &spec, path, "published")?, port_range(target, &spec, path, "target")?);
            if ps.len() != ts.len() {
                return Err(format!("{path}: {spec:?}: the published and target ranges differ in size"));
            }
            Ok(ps.iter().zip(&ts).map(|(p, t)| format!("{p}:{t}/{proto}")).collect())
        }
    }
}

/// A Go duration as docker's flags take it (`300ms`, `10s`, `1m30s`, `1h`), parsed as the
/// daemon parses `--update-delay`.
fn check_duration(s: &str, path: &str) -> Result<(), String> {
    crate::daemon::services::parse_duration("", s)
        .map(|_| ())
        .map_err(|_| format!("{path}: invalid duration {s:?} (expected e.g. 10s, 1m30s, 500ms)"))
}

fn check_update_config(u: &UpdateConfig, path: &str) -> Result<(), String> {
    for (k, d) in [("delay", &u.delay), ("monitor", &u.monitor)] {
        if let Some(d) = d {
            check_duration(d, &format!("{path}.{k}"))?;
        }
    }
    if let Some(a) = &u.failure_action
        && !["continue", "pause", "rollback"].contains(&a.as_str())
    {
        return Err(format!("{path}.failure_action: invalid value {a:?}: use continue, pause or rollback"));
    }
    if let Some(o) = &u.order
        && !["start-first", "stop-first"].contains(&o.as_str())
    {
        return Err(format!("{path}.order: invalid value {o:?}: use start-first or stop-first"));
    }
    if let Some(r) = u.max_failure_ratio
        && !(0.0..=1.0).contains(&r)
    {
        return Err(format!("{path}.max_failure_ratio: {r} is not between 0 and 1"));
    }
    Ok(())
}

fn plan(stack: &str, root: Value, client_env: &dyn Fn(&str) -> Option<String>) -> Result<StackPlan, String> {
    let mut top: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in entries(root, "(root)")? {
        if !TOP_LEVEL.contains(&k.as_str()) && !k.starts_with("x-") {
            return Err(format!("(root) Additional property {k} is not allowed"));
        }
        top.insert(k, v);
    }
    if let Some(v) = top.get("version") {
        let s = scalar_string(v).ok_or("version must be a string")?;
        if !(s == "3" || s.starts_with("3.")) {
            return Err(format!("unsupported Compose file version: {s}"));
        }
    }
    let mut warnings = Vec::new();
    let (mut unsupported, mut deprecated) = (Vec::<String>::new(), Vec::<String>::new());

    // top-level networks, by their name in the file
    let mut declared: BTreeMap<String, StackNetwork> = BTreeMap::new();
    for (key, v) in entries(top.remove("networks").unwrap_or(Value::Null), "networks")? {
        let path = format!("networks.{key}");
        let n: ComposeNetwork = decode(v, &path)?;
        let external = match &n.external {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(n.name.clone().unwrap_or_else(|| key.clone())),
            Some(Value::Mapping(m)) => {
                // the deprecated `external: {name: X}`
                let name = m.get("name").and_then(scalar_string);
                Some(name.or(n.name.clone()).unwrap_or_else(|| key.clone()))
            }
            Some(_) => return Err(format!("{path}.external must be a boolean or a mapping")),
        };
        let driver = n.driver.clone().unwrap_or_else(|| "overlay".into());
        if driver != "overlay" && external.is_none() {
            return Err(format!(
                "{path}.driver: a stack's networks span the swarm: use the overlay driver, not {driver:?}"
            ));
        }
        if n.driver_opts.is_some() {
            unsupported.push(format!("networks.{key}.driver_opts"));
        }
        let mut subnet = None;
        if let Some(ipam) = &n.ipam {
            if ipam.driver.as_deref().is_some_and(|d| d != "default") {
                unsupported.push(format!("networks.{key}.ipam.driver"));
            }
            match ipam.config.as_slice() {
                [] => {}
                [c] => subnet = c.subnet.clone(),
                _ => return Err(format!("{path}.ipam.config: netbee networks have one subnet")),
            }
        }
        let mut labels = labels_of(n.labels, &format!("{path}.labels"))?;
        labels.insert(NAMESPACE_LABEL.into(), stack.into());
        let name = external.clone().or(n.name.clone()).unwrap_or_else(|| format!("{stack}_{key}"));
        let create = NetworkCreateRequest {
            name,
            driver: Some(driver),
            subnet,
            internal: n.internal,
            labels,
            ..Default::default()
        };
        declared.insert(
            key,
            StackNetwork { key: String::new(), external: external.is_some(), create, attachable: n.attachable },
        );
    }
    for (k, v) in &mut declared {
        v.key = k.clone();
    }
    for section in ["volumes", "secrets", "configs"] {
        if let Some(v) = top.get(section)
            && !matches!(v, Value::Null)
            && !entries(v.clone(), section)?.is_empty()
        {
            unsupported.push(section.to_string());
        }
    }

    let services = entries(top.remove("services").unwrap_or(Value::Null), "services")?;
    if services.is_empty() {
        return Err("the compose file defines no services".into());
    }
    let mut used_networks: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (key, v) in services {
        let path = format!("services.{key}");
        crate::names::validate_network_name(&format!("{stack}_{key}"))
            .map_err(|e| format!("{path}: {}", e.replace("network name", "service name")))?;
        let fields = entries(v.clone(), &path)?;
        let mut forbidden = Vec::new();
        for (k, _) in &fields {
            if let Some((_, why)) = FORBIDDEN.iter().find(|(f, _)| f == k) {
                forbidden.push(format!("{k}: {why}"));
            } else if let Some((_, why)) = DEPRECATED.iter().find(|(d, _)| d == k) {
                deprecated.push(format!("{k}: {why}"));
            } else if UNSUPPORTED.contains(&k.as_str()) || NOT_IMPLEMENTED.contains(&k.as_str()) {
                unsupported.push(k.clone());
            } else if !SUPPORTED.contains(&k.as_str()) && !k.starts_with("x-") {
                return Err(format!("{path} Additional property {k} is not allowed"));
            }
        }
        if !forbidden.is_empty() {
            return Err(format!("Compose file contains unsupported options:\n\n{}", forbidden.join("\n")));
        }
        let s: ComposeService = decode(v, &path)?;
        let image = s.image.filter(|i| !i.is_empty()).ok_or_else(|| format!("{path}: image is required"))?;
        let cmd = s.command.map(|c| string_or_list(c, &format!("{path}.command"))).transpose()?.unwrap_or_default();
        let entrypoint = s.entrypoint.map(|c| string_or_list(c, &format!("{path}.entrypoint"))).transpose()?;
        let mut env: Vec<String> = Vec::new();
        for (k, v) in
            s.environment.map(|e| map_or_list(e, &format!("{path}.environment"))).transpose()?.unwrap_or_default()
        {
            // a key without a value takes the client's (docker's rule); unset, it is left out
            if let Some(v) = v.or_else(|| client_env(&k)) {
                env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
                env.push(format!("{k}={v}"));
            }
        }
        env.sort();
        let mut publish = Vec::new();
        for (i, p) in s.ports.unwrap_or_default().into_iter().enumerate() {
            publish.extend(ports_of(p, &format!("{path}.ports[{i}]"))?);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &publish {
            let (published, rest) = p.split_once(':').unwrap_or_default();
            let proto = rest.rsplit('/').next().unwrap_or_default();
            if !seen.insert((published.to_string(), proto.to_string())) {
                return Err(format!("{path}.ports: port {published}/{proto} is published twice"));
            }
        }

        // networks: a list of names or a mapping name -> {aliases}; none means `default`
        let mut nets: Vec<(String, Vec<String>)> = Vec::new();
        match s.networks {
            None | Some(Value::Null) => nets.push(("default".into(), Vec::new())),
            Some(Value::Sequence(items)) => {
                for i in items {
                    let n = scalar_string(&i).ok_or_else(|| format!("{path}.networks must be a list of names"))?;
                    nets.push((n, Vec::new()));
                }
            }
            Some(m @ Value::Mapping(_)) => {
                for (n, cfg) in entries(m, &format!("{path}.networks"))? {
                    let cfg: ServiceNetwork = decode(cfg, &format!("{path}.networks.{n}"))?;
                    if cfg.ipv4_address.is_some() || cfg.ipv6_address.is_some() {
                        unsupported.push(format!("{path}.networks.{n}.ipv4_address"));
                    }
                    nets.push((n, cfg.aliases));
                }
            }
            Some(_) => return Err(format!("{path}.networks must be a list or a mapping")),
        }
        if nets.is_empty() {
            nets.push(("default".into(), Vec::new()));
        }
        let mut networks = Vec::new();
        let mut network_aliases = BTreeMap::new();
        for (n, mut aliases) in nets {
            if n != "default" && !declared.contains_key(&n) {
                return Err(format!("service \"{key}\" refers to undefined network {n}: invalid compose project"));
            }
            let real = declared.get(&n).map(|d| d.create.name.clone()).unwrap_or_else(|| format!("{stack}_{n}"));
            if !used_networks.contains(&n) {
                used_networks.push(n);
            }
            // the service's short name resolves on every stack network, then the file's aliases
            aliases.push(key.clone());
            aliases.dedup();
            network_aliases.insert(real.clone(), aliases);
            networks.push(real);
        }

        let deploy = s.deploy.unwrap_or_default();
        let dpath = format!("{path}.deploy");
        match deploy.mode.as_deref() {
            None | Some("replicated") => {}
            Some("global") => return Err(format!("{dpath}.mode: global services are not supported by netbee yet")),
            Some(m) => return Err(format!("{dpath}.mode: invalid mode {m:?}: use replicated or global")),
        }
        match deploy.endpoint_mode.as_deref() {
            None | Some("vip") => {}
            Some("dnsrr") => return Err(format!("{dpath}.endpoint_mode: dnsrr is not supported by netbee (use vip)")),
            Some(m) => return Err(format!("{dpath}.endpoint_mode: invalid mode {m:?}: use vip or dnsrr")),
        }
        for (k, set) in [("resources", deploy.resources.is_some()), ("restart_policy", deploy.restart_policy.is_some())]
        {
            if set {
                unsupported.push(format!("deploy.{k}"));
            }
        }
        let placement = deploy.placement.unwrap_or_default();
        if placement.preferences.is_some() || placement.max_replicas_per_node.is_some() {
            unsupported.push("deploy.placement.preferences".into());
        }
        for (i, c) in placement.constraints.iter().enumerate() {
            crate::daemon::services::parse_constraint(c)
                .map_err(|e| format!("{dpath}.placement.constraints[{i}]: {e}"))?;
        }
        if let Some(n) = deploy.replicas
            && n > crate::daemon::services::MAX_REPLICAS
        {
            return Err(format!(
                "{dpath}.replicas: {n} is too many: a service has at most {} replicas",
                crate::daemon::services::MAX_REPLICAS
            ));
        }
        if let Some(u) = &deploy.update_config {
            check_update_config(u, &format!("{dpath}.update_config"))?;
        }
        if let Some(u) = &deploy.rollback_config {
            check_update_config(u, &format!("{dpath}.rollback_config"))?;
            // a rollback that fails cannot roll back again
            if u.failure_action.as_deref() == Some("rollback") {
                return Err(format!(
                    "{dpath}.rollback_config.failure_action: invalid value \"rollback\": use continue or pause"
                ));
            }
        }
        let mut labels = labels_of(deploy.labels, &format!("{dpath}.labels"))?;
        labels.insert(NAMESPACE_LABEL.into(), stack.into());
        labels.insert(IMAGE_LABEL.into(), image.clone());
        let mut container_labels = labels_of(s.labels, &format!("{path}.labels"))?;
        container_labels.insert(NAMESPACE_LABEL.into(), stack.into());

        let request = ServiceCreateRequest {
            name: format!("{stack}_{key}"),
            image,
            replicas: deploy.replicas.map(|n| Replicas::Number(n.into())),
            publish,
            networks,
            constraints: placement.constraints,
            env,
            cmd,
            entrypoint,
            labels,
            container_labels,
            network_aliases,
            update_config: deploy.update_config.unwrap_or_default().flags(),
            rollback_config: deploy.rollback_config.unwrap_or_default().flags(),
            force_update: None,
        };
        out.push(StackService { key, request });
    }

    // networks: the declared ones services use, and `default` when a service lists none
    let mut networks = Vec::new();
    for n in used_networks {
        networks.push(declared.remove(&n).unwrap_or_else(|| StackNetwork {
            key: n.clone(),
            external: false,
            create: NetworkCreateRequest {
                name: format!("{stack}_{n}"),
                driver: Some("overlay".into()),
                labels: [(NAMESPACE_LABEL.to_string(), stack.to_string())].into(),
                ..Default::default()
            },
            attachable: false,
        }));
    }
    unsupported.sort();
    unsupported.dedup();
    if !unsupported.is_empty() {
        warnings.push(format!("Ignoring unsupported options: {}\n", unsupported.join(", ")));
    }
    deprecated.sort();
    deprecated.dedup();
    if !deprecated.is_empty() {
        warnings.push(format!("Ignoring deprecated options:\n\n{}\n", deprecated.join("\n")));
    }
    Ok(StackPlan { networks, services: out, warnings })
}

#[cfg(test)]
mod tests;
