//! Network operations: create, remove, inspect, connect, disconnect.
use std::net::Ipv4Addr;

use anyhow::Result;
use serde_json::{Value, json};

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult, NetworkConnect, NetworkCreate},
    ipam::{self, Allocator},
    model::{Attachment, Driver, Endpoint, NetworkRecord, Status, mac_for_ip, mac_string},
    names,
    network::bridge,
    store,
};

pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

impl Daemon {
    pub(super) async fn ensure_predefined_networks(&self) -> Result<()> {
        let have = self.networks()?;
        for name in PREDEFINED {
            if have.iter().any(|n| n.name == name) {
                continue;
            }
            let (driver, ipam) = match name {
                "bridge" => {
                    let cfg = ipam::pool_config(Some("172.17.0.0/16"), None, None, &[], &[])
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    (Driver::Bridge, Some(Allocator::new(cfg)))
                }
                "host" => (Driver::Host, None),
                _ => (Driver::Null, None),
            };
            let net_id = if ipam.is_some() { self.next_net_id()? } else { 0 };
            let rec = NetworkRecord {
                id: names::new_id(),
                name: name.to_string(),
                driver,
                created: chrono::Utc::now(),
                internal: false,
                net_id,
                ipam,
                labels: Default::default(),
                vni: 0,
            };
            self.put_network(&rec)?;
        }
        Ok(())
    }

    fn next_net_id(&self) -> Result<u32> {
        let used: std::collections::BTreeSet<u32> = self.networks()?.iter().map(|n| n.net_id).collect();
        Ok((1..).find(|i| !used.contains(i)).unwrap_or(1))
    }

    pub async fn network_create(&self, req: NetworkCreate) -> ApiResult<NetworkRecord> {
        let _g = self.op.lock().await;
        let name = req.name.trim().to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("network name must not be empty"));
        }
        names::validate_network_name(&name).map_err(ApiError::bad_request)?;
        let all = self.networks()?;
        if all.iter().any(|n| n.name == name) {
            return Err(ApiError::conflict(format!("network with name {name} already exists")));
        }
        match req.driver.as_deref().unwrap_or("bridge") {
            "bridge" => {}
            "overlay" => {
                if self.cluster.as_ref().and_then(|c| c.member()).is_none() {
                    return Err(ApiError::bad_request(
                        "overlay networks need a swarm: start the daemon with --cluster-store and run `netbee swarm init` or `netbee swarm join`",
                    ));
                }
                let mut req = req;
                req.name = name;
                let rec = self.overlay_create(req, &all).await?;
                self.refresh_node_addrs().await?;
                return Ok(rec);
            }
            "host" | "null" => {
                return Err(ApiError::bad_request(format!(
                    "only one instance of \"{}\" network is allowed",
                    req.driver.as_deref().unwrap_or_default()
                )));
            }
            d => return Err(ApiError::bad_request(format!("unknown network driver {d:?}: use bridge or overlay"))),
        }
        let existing: Vec<(String, ipnetwork::Ipv4Network)> =
            all.iter().filter_map(|n| n.ipam.as_ref().map(|i| (n.name.clone(), i.config().subnet))).collect();
        let cfg = ipam::pool_config(
            req.subnet.as_deref(),
            req.gateway.as_deref(),
            req.ip_range.as_deref(),
            &existing,
            &ipam::local_default_pools(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let rec = NetworkRecord {
            id: names::new_id(),
            name,
            driver: Driver::Bridge,
            created: chrono::Utc::now(),
            internal: req.internal,
            net_id: self.next_net_id()?,
            ipam: Some(Allocator::new(cfg)),
            labels: req.labels,
            vni: 0,
        };
        // store first: if the daemon dies half-way, reconcile finishes (or the rm undoes) it
        self.put_network(&rec)?;
        if let Err(e) = bridge::setup_network(&self.nl, &self.dp, &rec).await {
            let _ = bridge::teardown_network(&self.nl, &self.dp, &rec).await;
            self.store.delete(store::NETWORKS, &rec.id)?;
            return Err(e.context(format!("creating network {}", rec.name)).into());
        }
        self.refresh_node_addrs().await?;
        Ok(rec)
    }

    pub async fn network_remove(&self, key: &str) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let net = self.find_network(key)?;
        if PREDEFINED.contains(&net.name.as_str()) {
            return Err(ApiError::bad_request(format!("{} is a pre-defined network and cannot be removed", net.name)));
        }
        if net.driver == Driver::Overlay {
            self.overlay_remove(&net).await?;
            self.refresh_node_addrs().await?;
            return Ok(());
        }
        let users: Vec<String> = self
            .containers()?
            .into_iter()
            .filter(|c| c.state.status == Status::Running && c.endpoints.iter().any(|e| e.network_id == net.id))
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "error while removing network: network {} has active endpoints ({})",
                net.name,
                users.join(", ")
            )));
        }
        bridge::teardown_network(&self.nl, &self.dp, &net).await?;
        self.store.delete(store::NETWORKS, &net.id)?;
        self.refresh_node_addrs().await?;
        Ok(())
    }

    pub fn network_inspect(&self, net: &NetworkRecord) -> Result<Value> {
        let mut containers = serde_json::Map::new();
        for c in self.containers()? {
            if c.state.status != Status::Running {
                continue;
            }
            for e in c.endpoints.iter().filter(|e| e.network_id == net.id) {
                let prefix = net.ipam.as_ref().map(|i| i.config().subnet.prefix()).unwrap_or(32);
                containers.insert(
                    c.id.clone(),
                    json!({
                        "Name": c.name,
                        "EndpointID": e.endpoint_id,
                        "MacAddress": mac_string(&e.mac),
                        "IPv4Address": format!("{}/{}", e.ip, prefix),
                        "IPv6Address": "",
                    }),
                );
            }
        }
        let config: Vec<Value> = net
            .ipam
            .as_ref()
            .map(|i| {
                let c = i.config();
                let mut m = json!({ "Subnet": c.subnet.to_string(), "Gateway": c.gateway.to_string() });
                if let Some(r) = c.ip_range {
                    m["IPRange"] = json!(r.to_string());
                }
                vec![m]
            })
            .unwrap_or_default();
        Ok(json!({
            "Name": net.name,
            "Id": net.id,
            "Created": net.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "Scope": net.scope(),
            "Driver": net.driver.as_str(),
            "EnableIPv6": false,
            "IPAM": { "Driver": "default", "Options": {}, "Config": config },
            "Internal": net.internal,
            "Attachable": false,
            "Ingress": false,
            "Containers": containers,
            "Options": match net.driver {
                Driver::Bridge => json!({ "com.netbee.network.device": net.device() }),
                Driver::Overlay => json!({ "com.netbee.network.device": net.device(), "com.docker.network.driver.overlay.vxlanid_list": net.vni.to_string() }),
                _ => json!({}),
            },
            "Labels": net.labels,
        }))
    }

    pub async fn network_connect(&self, key: &str, req: NetworkConnect) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let net = self.find_network(key)?;
        if !net.carries_containers() {
            return Err(ApiError::bad_request(format!(
                "container cannot be disconnected from or connected to network {} ({} driver)",
                net.name,
                net.driver.as_str()
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
        let att = Attachment { network_id: net.id.clone(), ip, aliases: req.aliases };
        if c.state.status == Status::Running {
            let index = c.endpoints.len();
            let ep = self.attach_running(&mut c, &att, index).await?;
            c.endpoints.push(ep);
        } else if let Some(ip) = ip {
            // validate now so a bad address fails here, not at the next start
            let mut probe = net.ipam.clone().expect("bridge network has IPAM");
            probe.reserve(ip).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        c.attachments.push(att);
        self.put_container(&c)?;
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
        if let Some(pos) = c.endpoints.iter().position(|e| e.network_id == net.id) {
            let ep = c.endpoints.remove(pos);
            self.release_endpoint(&ep, c.attachments.iter().find(|a| a.network_id == net.id)).await?;
        }
        c.attachments.retain(|a| a.network_id != net.id);
        self.put_container(&c)?;
        Ok(())
    }

    /// Allocates an address on the attachment's network and creates the interface in the running
    /// container. The allocation is committed before the kernel work so a crash cannot hand the
    /// address out twice; a failure gives it back.
    pub(super) async fn attach_running(
        &self,
        c: &mut crate::model::ContainerRecord,
        att: &Attachment,
        index: usize,
    ) -> ApiResult<Endpoint> {
        let mut net = self.find_network(&att.network_id)?;
        let ip = if net.driver == Driver::Overlay {
            self.overlay_allocate(&net, att.ip, &c.id).await?
        } else {
            let ipam = net.ipam.as_mut().ok_or_else(|| ApiError::bad_request("network has no addresses"))?;
            let ip = match att.ip {
                Some(ip) => {
                    ipam.reserve(ip).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    ip
                }
                None => ipam.allocate().map_err(|e| ApiError::bad_request(e.to_string()))?,
            };
            self.put_network(&net)?;
            ip
        };
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
        let default_route = index == 0 && !net.internal;
        let attached = async {
            bridge::attach_endpoint(
                &self.nl,
                &self.dp,
                &self.netns_path(&c.id),
                &net,
                &ep,
                default_route,
                c.is_backend(),
            )
            .await?;
            if net.driver == Driver::Overlay {
                self.register_endpoint(c, &ep).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = attached.await {
            let _ = bridge::detach_endpoint(&self.nl, &self.dp, &ep).await;
            self.release_ip(&net.id, ip).await?;
            self.put_container(c)?;
            return Err(e.context(format!("connecting {} to network {}", c.name, net.name)).into());
        }
        Ok(ep)
    }

    pub(super) async fn release_endpoint(&self, ep: &Endpoint, _att: Option<&Attachment>) -> Result<()> {
        bridge::detach_endpoint(&self.nl, &self.dp, ep).await?;
        self.release_ip(&ep.network_id, ep.ip).await
    }

    pub(super) async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<()> {
        if self.is_overlay(network_id) {
            return self.overlay_release(network_id, ip).await;
        }
        if let Some(mut net) = self.store.get::<NetworkRecord>(store::NETWORKS, network_id)?
            && let Some(ipam) = net.ipam.as_mut()
        {
            ipam.release(ip);
            self.put_network(&net)?;
        }
        Ok(())
    }
}
