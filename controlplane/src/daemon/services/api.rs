//! The service API: create, update, rm, ls, inspect, and the task list `service ps` shows.
use chrono::Utc;
use serde_json::{Value, json};

use crate::{
    api::{ApiError, ApiResult},
    daemon::Daemon,
    model::{NetworkRecord, ServicePort, ServiceRecord, ServiceSpec, Status, TaskRecord, TaskState, Vip},
    names,
    network::Scope,
    portspec::Proto,
};

use super::scheduler::parse_constraint;

/// Parses `P:T[/udp]` (and `T` alone is refused: the routing mesh needs a published port).
pub fn parse_service_port(s: &str) -> Result<ServicePort, String> {
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, pr)) => (p, pr.parse::<Proto>().map_err(|_| format!("invalid protocol in {s:?}: use tcp or udp"))?),
        None => (s, Proto::Tcp),
    };
    let (p, t) =
        ports.split_once(':').ok_or_else(|| format!("invalid publish {s:?}: expected PUBLISHED:TARGET[/udp]"))?;
    let parse = |x: &str| -> Result<u16, String> {
        match x.parse::<u32>() {
            Ok(v) if (1..=65535).contains(&v) => Ok(v as u16),
            _ => Err(format!("invalid port {x:?} in {s:?}: must be 1-65535")),
        }
    };
    Ok(ServicePort { published: parse(p)?, target: parse(t)?, proto })
}

impl Daemon {
    pub async fn service_create(&self, v: &Value) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let name = v["Name"].as_str().unwrap_or_default().to_string();
        names::validate_network_name(&name)
            .map_err(|e| ApiError::bad_request(e.replace("network name", "service name")))?;
        let replicas = parse_replicas(&v["Replicas"]).map_err(ApiError::bad_request)?.unwrap_or(1);
        let cmd: Vec<String> = strings(&v["Cmd"]);
        if cmd.is_empty() {
            return Err(ApiError::bad_request("no command specified for the service"));
        }
        let env = strings(&v["Env"]);
        let ports = strings(&v["Publish"])
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let constraints = strings(&v["Constraints"]);
        for c in &constraints {
            parse_constraint(c).map_err(ApiError::bad_request)?;
        }
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        if all.iter().any(|s| s.spec.name == name) {
            return Err(ApiError::conflict(format!("service {name} already exists")));
        }
        self.check_ports_free(&ports, &all, None)?;
        let mut networks = Vec::new();
        for n in strings(&v["Networks"]) {
            let net = self.find_network(&n)?;
            if self.in_swarm() && net.scope() != Scope::Swarm {
                return Err(ApiError::bad_request(format!(
                    "network {} cannot be used with services: only overlay networks span the swarm",
                    net.name
                )));
            }
            if !net.carries_containers() {
                return Err(ApiError::bad_request(format!("network {} cannot carry services", net.name)));
            }
            networks.push(net.id);
        }
        if networks.is_empty() {
            let default = if self.in_swarm() { self.ingress_network().await? } else { self.find_network("bridge")? };
            networks.push(default.id);
        }
        let id = names::new_id()[..25].to_string();
        let mut vips = Vec::new();
        for nid in &networks {
            let net = self.find_network(nid)?;
            let ip = {
                let _g = self.op.lock().await;
                net.driver().allocate(&self.net_cx(), &net, None, &format!("vip-{id}")).await?
            };
            vips.push(Vip { network_id: nid.clone(), ip });
        }
        let rec = ServiceRecord {
            id: id.clone(),
            spec: ServiceSpec { name, replicas, cmd, env, networks, ports, constraints },
            vips,
            created: Utc::now(),
            updated: Utc::now(),
        };
        self.shared().put(&rec).await?;
        self.services.changed.notify_waiters();
        Ok(rec)
    }

    pub(in crate::daemon) fn check_ports_free(
        &self,
        ports: &[ServicePort],
        all: &[ServiceRecord],
        except: Option<&str>,
    ) -> ApiResult<()> {
        for p in ports {
            if let Some(o) = all
                .iter()
                .filter(|s| Some(s.id.as_str()) != except)
                .find(|s| s.spec.ports.iter().any(|q| q.published == p.published && q.proto == p.proto))
            {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by service {}",
                    p.published, p.proto, o.spec.name
                )));
            }
            if let Some(c) = self.containers()?.iter().find(|c| {
                c.state.status == Status::Running
                    && c.ports.iter().any(|b| b.binding.host_port == p.published && b.binding.proto == p.proto)
            }) {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by container {} on this node",
                    p.published, p.proto, c.name
                )));
            }
        }
        Ok(())
    }

    /// The swarm's `ingress` overlay: services without a network publish through it.
    pub(in crate::daemon) async fn ingress_network(&self) -> ApiResult<NetworkRecord> {
        if let Ok(n) = self.find_network("ingress") {
            return Ok(n);
        }
        let req =
            crate::api::NetworkCreate { name: "ingress".into(), driver: Some("overlay".into()), ..Default::default() };
        let _g = self.op.lock().await;
        self.network_create_locked(req).await
    }

    pub async fn service_update(&self, key: &str, v: &Value) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let mut s = self.find_service(key).await?;
        if let Some(r) = parse_replicas(&v["Replicas"]).map_err(ApiError::bad_request)? {
            s.spec.replicas = r;
        }
        let add = strings(&v["PublishAdd"])
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        self.check_ports_free(&add, &all, Some(&s.id))?;
        for p in add {
            if !s.spec.ports.contains(&p) {
                s.spec.ports.push(p);
            }
        }
        for r in strings(&v["PublishRm"]) {
            let (port, proto) = match r.split_once('/') {
                Some((p, pr)) => (
                    p.to_string(),
                    pr.parse::<Proto>().map_err(|_| ApiError::bad_request(format!("invalid protocol in {r:?}")))?,
                ),
                None => (r.clone(), Proto::Tcp),
            };
            let port: u16 = port
                .split(':')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid port {r:?}")))?;
            let before = s.spec.ports.len();
            s.spec.ports.retain(|p| !(p.published == port && p.proto == proto));
            if before == s.spec.ports.len() {
                return Err(ApiError::bad_request(format!("service {} does not publish {r}", s.spec.name)));
            }
        }
        let env_add = strings(&v["EnvAdd"]);
        let env_changed = !env_add.is_empty();
        for e in env_add {
            let k = e.split('=').next().unwrap_or("").to_string();
            s.spec.env.retain(|x| x.split('=').next() != Some(k.as_str()));
            s.spec.env.push(e);
        }
        s.updated = Utc::now();
        self.shared().put(&s).await?;
        if env_changed {
            // a new environment needs new tasks: replace them one slot at a time through the scheduler
            for mut t in self
                .shared()
                .list::<TaskRecord>()
                .await?
                .into_iter()
                .filter(|t| t.service_id == s.id && t.desired_running)
            {
                t.desired_running = false;
                t.message = "updated".into();
                self.shared().put(&t).await?;
            }
        }
        self.services.changed.notify_waiters();
        Ok(s)
    }

    pub async fn service_remove(&self, key: &str) -> ApiResult<()> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let s = self.find_service(key).await?;
        self.shared().delete::<ServiceRecord>(&s.id).await?;
        for mut t in self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id) {
            t.desired_running = false;
            self.shared().put(&t).await?;
        }
        for v in &s.vips {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        self.services.changed.notify_waiters();
        Ok(())
    }

    pub async fn service_list(&self) -> ApiResult<Vec<Value>> {
        let services: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        let tasks: Vec<TaskRecord> = self.shared().list::<TaskRecord>().await?;
        let mut out: Vec<Value> = services
            .iter()
            .map(|s| {
                let running = tasks.iter().filter(|t| t.service_id == s.id && t.desired_running && t.state == TaskState::Running).count();
                json!({
                    "ID": s.id, "Name": s.spec.name, "Mode": "replicated",
                    "Replicas": format!("{running}/{}", s.spec.replicas),
                    "Running": running, "Desired": s.spec.replicas,
                    "Command": s.spec.cmd.join(" "),
                    "Ports": s.spec.ports.iter().map(|p| format!("*:{}->{}/{}", p.published, p.target, p.proto)).collect::<Vec<_>>().join(", "),
                })
            })
            .collect();
        out.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
        Ok(out)
    }

    pub async fn service_inspect(&self, key: &str) -> ApiResult<Value> {
        let s = self.find_service(key).await?;
        let nets = self.networks()?;
        let vips: Vec<Value> = s
            .vips
            .iter()
            .map(|v| {
                let net = nets.iter().find(|n| n.id == v.network_id);
                let prefix = net.and_then(|n| n.ipam.as_ref()).map(|i| i.config().subnet.prefix()).unwrap_or(32);
                json!({ "NetworkID": v.network_id, "NetworkName": net.map(|n| n.name.clone()), "Addr": format!("{}/{}", v.ip, prefix) })
            })
            .collect();
        Ok(json!({
            "ID": s.id,
            "CreatedAt": s.created, "UpdatedAt": s.updated,
            "Spec": {
                "Name": s.spec.name,
                "Mode": { "Replicated": { "Replicas": s.spec.replicas } },
                "TaskTemplate": {
                    "ContainerSpec": { "Command": s.spec.cmd, "Env": s.spec.env },
                    "Placement": { "Constraints": s.spec.constraints },
                    "Networks": s.spec.networks.iter().map(|n| json!({"Target": n})).collect::<Vec<_>>(),
                },
                "EndpointSpec": { "Mode": "vip", "Ports": s.spec.ports.iter().map(|p| json!({
                    "Protocol": p.proto, "TargetPort": p.target, "PublishedPort": p.published, "PublishMode": "ingress",
                })).collect::<Vec<_>>() },
            },
            "Endpoint": { "VirtualIPs": vips },
        }))
    }

    pub async fn service_tasks(&self, key: &str) -> ApiResult<Vec<Value>> {
        let s = self.find_service(key).await?;
        let (nodes, _) = self.cluster_nodes().await?;
        let mut tasks: Vec<TaskRecord> =
            self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id).collect();
        tasks.sort_by_key(|a| (a.slot, !a.desired_running, std::cmp::Reverse(a.created)));
        Ok(tasks
            .iter()
            .map(|t| {
                let node = nodes.iter().find(|n| n.id == t.node_id).map(|n| n.hostname.clone()).unwrap_or_else(|| t.node_id.clone());
                json!({
                    "ID": t.id, "Name": format!("{}.{}", t.service_name, t.slot), "Slot": t.slot, "Node": node,
                    "DesiredState": if t.desired_running { "Running" } else { "Shutdown" },
                    "CurrentState": title(t.state), "Since": t.updated, "Error": t.message,
                    "Addresses": t.addrs.iter().map(|(n, ip)| json!({"NetworkID": n, "Addr": ip.to_string()})).collect::<Vec<_>>(),
                })
            })
            .collect())
    }
}

fn title(s: TaskState) -> &'static str {
    match s {
        TaskState::Assigned => "Assigned",
        TaskState::Starting => "Starting",
        TaskState::Running => "Running",
        TaskState::Shutdown => "Shutdown",
        TaskState::Failed => "Failed",
        TaskState::Orphaned => "Orphaned",
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
}

fn parse_replicas(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Ok(Some(i as u64)),
            _ => Err(format!("invalid replicas value {n}: must be a non-negative integer")),
        },
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) if i >= 0 => Ok(Some(i as u64)),
            _ => Err(format!("invalid replicas value {s:?}: must be a non-negative integer")),
        },
        other => Err(format!("invalid replicas value {other}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn service_ports() {
        assert_eq!(
            parse_service_port("80:8080").unwrap(),
            ServicePort { published: 80, target: 8080, proto: Proto::Tcp }
        );
        assert_eq!(parse_service_port("53:53/udp").unwrap().proto, Proto::Udp);
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp"] {
            assert!(parse_service_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas() {
        assert_eq!(parse_replicas(&json!(3)).unwrap(), Some(3));
        assert_eq!(parse_replicas(&json!("0")).unwrap(), Some(0));
        assert_eq!(parse_replicas(&Value::Null).unwrap(), None);
        assert!(parse_replicas(&json!(-1)).is_err());
        assert!(parse_replicas(&json!("-2")).is_err());
        assert!(parse_replicas(&json!("x")).is_err());
    }
}
