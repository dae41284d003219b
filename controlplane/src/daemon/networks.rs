//! Network operations: create, remove, inspect, connect, disconnect. What depends on the kind of
//! network is the driver's (`network/`).
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult, ErrorKind, Ipam, IpamConfig, Network, NetworkConnect, NetworkContainer, NetworkCreate},
    model::{
        Attachment, ContainerRecord, Endpoint, NetworkRecord, ServiceRecord, Status, TaskRecord, TaskState, mac_for_ip,
        mac_string,
    },
    names,
    network::{self, Attach, PREDEFINED},
};

/// How long `network rm` waits for departing tasks to leave the network (a stopping task first
/// drains its connections, up to 20 s).
const DEPARTING_TASKS_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

impl Daemon {
    pub async fn network_create(&self, req: NetworkCreate) -> ApiResult<NetworkRecord> {
        let _g = self.op.lock().await;
        self.network_create_locked(req).await
    }

    /// `network create` with the operation lock already held.
    pub(super) async fn network_create_locked(&self, mut req: NetworkCreate) -> ApiResult<NetworkRecord> {
        req.name = req.name.trim().to_string();
        if req.name.is_empty() {
            return Err(ApiError::bad_request("network name must not be empty"));
        }
        names::validate_network_name(&req.name).map_err(ApiError::bad_request)?;
        let all = self.networks()?;
        if all.iter().any(|n| n.name == req.name) {
            return Err(ApiError::conflict(format!("network with name {} already exists", req.name)));
        }
        let name = req.driver.clone().unwrap_or_else(|| "bridge".into());
        let driver = network::driver(&name)
            .ok_or_else(|| ApiError::bad_request(format!("unknown network driver {name:?}: use bridge or overlay")))?;
        let node_subnets = network::node_subnets(&self.nl).await?;
        let cx = network::Context { avoid: &node_subnets, ..self.net_cx() };
        let rec = driver.create(&cx, &req, &all).await?;
        self.refresh_node_addrs().await?;
        self.emit_network(&rec, "create", None);
        Ok(rec)
    }

    /// `network rm`. A network whose only users are tasks being shut down (their service was
    /// removed or scaled down) is removed once they are gone: `docker stack rm` removes a stack's
    /// networks right after its services, without waiting. Bounded by [`DEPARTING_TASKS_WAIT`].
    pub async fn network_remove(&self, key: &str) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + DEPARTING_TASKS_WAIT;
        loop {
            match self.network_remove_once(key).await {
                Err(e)
                    if e.kind == ErrorKind::Conflict
                        && tokio::time::Instant::now() < deadline
                        && self.tasks_leaving(key).await =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                r => return r,
            }
        }
    }

    /// Whether tasks meant to shut down are still on the network (`key`), and no service uses it.
    async fn tasks_leaving(&self, key: &str) -> bool {
        let Ok(net) = self.find_network(key) else { return false };
        let (Ok(services), Ok(tasks)) =
            (self.shared().list::<ServiceRecord>().await, self.shared().list::<TaskRecord>().await)
        else {
            return false;
        };
        !services.iter().any(|s| s.spec.networks.contains(&net.id))
            && tasks.iter().any(|t| {
                !t.desired_running
                    && matches!(t.state, TaskState::Assigned | TaskState::Starting | TaskState::Running)
                    && t.addrs.iter().any(|(n, _)| *n == net.id)
            })
    }

    async fn network_remove_once(&self, key: &str) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let net = self.find_network_or_adopt(key).await?;
        if PREDEFINED.contains(&net.name.as_str()) {
            return Err(network::predefined_error(&net));
        }
        // local endpoints; a swarm-wide driver also checks the other nodes' on its own
        let users: Vec<String> = self
            .containers()?
            .into_iter()
            .filter(|c| c.state.status == Status::Running && c.endpoints.iter().any(|e| e.network_id == net.id))
            .map(|c| c.name)
            .collect();
        network::refuse_in_use(&net, &users)?;
        net.driver().remove(&self.net_cx(), &net).await?;
        self.refresh_node_addrs().await?;
        // its DNS server goes with its gateway
        self.refresh_names().await;
        self.emit_network(&net, "destroy", None);
        Ok(())
    }

    pub fn network_inspect(&self, net: &NetworkRecord) -> Result<Network> {
        let mut containers = BTreeMap::new();
        for c in self.containers()? {
            if c.state.status != Status::Running {
                continue;
            }
            for e in c.endpoints.iter().filter(|e| e.network_id == net.id) {
                let prefix = net.ipam.as_ref().map(|i| i.config().subnet.prefix()).unwrap_or(32);
                containers.insert(
                    c.id.clone(),
                    NetworkContainer {
                        name: c.name.clone(),
                        endpoint_id: e.endpoint_id.clone(),
                        mac_address: mac_string(&e.mac),
                        ipv4_address: format!("{}/{}", e.ip, prefix),
                        ipv6_address: String::new(),
                    },
                );
            }
        }
        let config: Vec<IpamConfig> = net
            .ipam
            .as_ref()
            .map(|i| {
                let c = i.config();
                vec![IpamConfig {
                    subnet: c.subnet.to_string(),
                    gateway: c.gateway.to_string(),
                    ip_range: c.ip_range.map(|r| r.to_string()),
                }]
            })
            .unwrap_or_default();
        Ok(Network {
            name: net.name.clone(),
            id: net.id.clone(),
            created: net.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            scope: net.scope().as_str().into(),
            driver: net.driver.clone(),
            enable_ipv6: false,
            ipam: Ipam { driver: "default".into(), options: BTreeMap::new(), config },
            internal: net.internal,
            // an overlay takes standalone containers as well as tasks (docker's --attachable)
            attachable: net.driver == "overlay",
            ingress: false,
            containers,
            options: serde_json::from_value(net.driver().inspect_options(net))?,
            labels: net.labels.clone(),
            device: net.driver().carries_containers().then(|| net.device()),
        })
    }

    /// `find_network`, and when this node does not know the network yet, the swarm's overlay of
    /// that name or id as etcd has it now, set up here at once: `network create` returns on one
    /// manager before the other nodes' cluster sync has seen the overlay (etcd is the truth), and
    /// a command or a task given it right after must not fail with "not found". The caller holds
    /// the operation lock (adopting sets the network up in the kernel).
    pub(super) async fn find_network_or_adopt(&self, key: &str) -> ApiResult<NetworkRecord> {
        let unknown = match self.find_network(key) {
            Ok(n) => return Ok(n),
            Err(e) => e,
        };
        if unknown.kind != ErrorKind::NotFound || !self.in_swarm() {
            return Err(unknown);
        }
        match network::adopt_swarm_network(&self.net_cx(), key).await? {
            Some(n) => {
                // published ports answer on its gateway too, as after `network create`
                self.refresh_node_addrs().await?;
                Ok(n)
            }
            None => Err(unknown),
        }
    }

    /// The network `key` names, for `network inspect`: also one this node has not synced yet.
    pub async fn network_find(&self, key: &str) -> ApiResult<NetworkRecord> {
        if let Ok(n) = self.find_network(key) {
            return Ok(n);
        }
        let _g = self.op.lock().await;
        self.find_network_or_adopt(key).await
    }

    pub async fn network_connect(&self, key: &str, req: NetworkConnect) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let net = self.find_network_or_adopt(key).await?;
        if !net.carries_containers() {
            return Err(ApiError::bad_request(format!(
                "container cannot be disconnected from or connected to network {} ({} driver)",
                net.name, net.driver
            )));
        }
        let mut c = self.find_container(&req.container)?;
        if c.config.network_mode != crate::model::NetworkMode::Bridge {
            return Err(ApiError::bad_request(format!(
                "container {} uses the {:?} network mode and cannot join other networks",
                c.name, c.config.network_mode
            )));
        }
        if c.attachments.iter().any(|a| a.network_id == net.id) {
            return Err(ApiError::conflict(format!(
                "endpoint with name {} already exists in network {}",
                c.name, net.name
            )));
        }
        let ip = req
            .ip_address
            .as_deref()
            .map(|s| s.parse::<Ipv4Addr>().map_err(|_| ApiError::bad_request(format!("invalid IP address {s:?}"))))
            .transpose()?;
        if ip.is_some() && net.name == "bridge" {
            return Err(ApiError::bad_request(super::containers::USER_IP_ON_DEFAULT_BRIDGE));
        }
        let att = Attachment { network_id: net.id.clone(), ip, aliases: req.aliases };
        let running = c.state.status == Status::Running;
        if running {
            let index = c.endpoints.len();
            let ep = self.attach_running(&mut c, &att, index).await?;
            c.endpoints.push(ep);
        } else if let Some(ip) = ip {
            // validate now so a bad address fails here, not at the next start
            let mut probe = net.ipam.clone().expect("bridge network has IPAM");
            probe.reserve(ip).map_err(ApiError::from)?;
        }
        c.attachments.push(att);
        self.put_container(&c)?;
        self.refresh_names().await;
        // as docker: a stopped container connects when it starts
        if running {
            self.emit_network(&net, "connect", Some(&c));
        }
        Ok(())
    }

    pub async fn network_disconnect(&self, key: &str, container: &str) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let net = self.find_network(key)?;
        let mut c = self.find_container(container)?;
        if !c.attachments.iter().any(|a| a.network_id == net.id) {
            return Err(ApiError::bad_request(format!(
                "container {} is not connected to network {}",
                c.name, net.name
            )));
        }
        let mut was_connected = false;
        if let Some(pos) = c.endpoints.iter().position(|e| e.network_id == net.id) {
            let ep = c.endpoints.remove(pos);
            self.release_endpoint(&ep).await?;
            was_connected = true;
        }
        c.attachments.retain(|a| a.network_id != net.id);
        self.put_container(&c)?;
        self.refresh_names().await;
        if was_connected {
            self.emit_network(&net, "disconnect", Some(&c));
        }
        Ok(())
    }

    /// Allocates an address on the attachment's network and creates the interface in the running
    /// container. The allocation is committed before the kernel work so a crash cannot hand the
    /// address out twice; a failure gives it back.
    pub(super) async fn attach_running(
        &self,
        c: &mut ContainerRecord,
        att: &Attachment,
        index: usize,
    ) -> ApiResult<Endpoint> {
        let net = self.find_network(&att.network_id)?;
        let cx = self.net_cx();
        let ip = net.driver().allocate(&cx, &net, att.ip, &c.id).await?;
        let ep = Endpoint {
            network_id: net.id.clone(),
            endpoint_id: names::new_id(),
            ip,
            mac: mac_for_ip(ip),
            ifname: format!("eth{index}"),
        };
        // record the endpoint before creating it, so a crash leaves something to clean up
        c.endpoints.push(ep.clone());
        self.put_container(c)?;
        c.endpoints.pop();
        let ns_path = self.netns_path(&c.id);
        let attach = Attach {
            container: c,
            ep: &ep,
            ns_path: &ns_path,
            default_route: index == 0 && !net.internal,
            backend: c.is_backend(),
        };
        if let Err(e) = net.driver().attach(&cx, &net, &attach).await {
            let _ = net.driver().detach(&cx, &net, &ep).await;
            net.driver().release(&cx, &net, ip).await?;
            self.put_container(c)?;
            return Err(e.context(format!("connecting {} to network {}", c.name, net.name)).into());
        }
        Ok(ep)
    }

    /// Removes a container's interface and gives its address back.
    pub(super) async fn release_endpoint(&self, ep: &Endpoint) -> Result<()> {
        let cx = self.net_cx();
        match self.find_network(&ep.network_id) {
            Ok(net) => {
                net.driver().detach(&cx, &net, ep).await?;
                net.driver().release(&cx, &net, ep.ip).await
            }
            // the network is gone (and its leases with it): only the kernel objects are left
            Err(_) => network::kernel::detach_endpoint(cx.nl, cx.dp, ep).await,
        }
    }

    /// Gives back an address taken on a network outside any endpoint (a service's VIP).
    pub(super) async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<()> {
        match self.find_network(network_id) {
            Ok(net) => net.driver().release(&self.net_cx(), &net, ip).await,
            Err(_) => Ok(()),
        }
    }
}
