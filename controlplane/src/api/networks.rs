//! `/networks/...`: docker's network models.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ApiError, null_default};

/// `POST /networks/create`: docker's body (`IPAM.Config`, `Attachable`, ... as the docker CLI
/// and compose send it) or the flat `Subnet`, `Gateway` and `IPRange` of netbee's CLI;
/// [`NetworkCreateRequest::normalize`] folds the first into the second. Every docker field may
/// be null, as a Go client sends its zero values.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreateRequest {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    #[serde(rename = "IPRange")]
    pub ip_range: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub internal: bool,
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// docker's: netbee's overlays always take standalone containers, so it is only kept.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "std::ops::Not::not")]
    pub attachable: bool,
    /// docker's address configuration (one IPv4 config at most here).
    #[serde(rename = "IPAM", skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamRequest>,
    /// docker's: IPv6 is refused when true.
    #[serde(rename = "EnableIPv6", skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<bool>,
    /// docker's driver options: none is supported, so any given is refused.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// `NetworkCreateRequest::ipam`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamRequest {
    pub driver: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub config: Vec<IpamConfigRequest>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfigRequest {
    pub subnet: Option<String>,
    #[serde(rename = "IPRange")]
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
}

impl NetworkCreateRequest {
    /// docker's fields as netbee's: the IPAM config becomes `Subnet`/`Gateway`/`IPRange`; what
    /// netbee cannot do is a 400 naming it, before anything changes.
    pub fn normalize(&mut self) -> Result<(), ApiError> {
        if self.enable_ipv6 == Some(true) {
            return Err(ApiError::bad_request(format!("network {}: IPv6 is not supported", self.name)));
        }
        if let Some(k) = self.options.keys().next() {
            return Err(ApiError::bad_request(format!("network {}: driver option {k:?} is not supported", self.name)));
        }
        if let Some(ipam) = self.ipam.take() {
            if let Some(d) = ipam.driver.as_deref().filter(|d| !d.is_empty() && *d != "default") {
                return Err(ApiError::bad_request(format!(
                    "network {}: IPAM driver {d:?} is not supported",
                    self.name
                )));
            }
            match ipam.config.as_slice() {
                [] => {}
                [c] => {
                    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
                    self.subnet = self.subnet.take().or_else(|| nonempty(&c.subnet));
                    self.gateway = self.gateway.take().or_else(|| nonempty(&c.gateway));
                    self.ip_range = self.ip_range.take().or_else(|| nonempty(&c.ip_range));
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "network {}: one subnet per network is supported",
                        self.name
                    )));
                }
            }
        }
        if let Some(d) = self.driver.as_deref()
            && d.is_empty()
        {
            self.driver = None;
        }
        Ok(())
    }
}

/// The name the network drivers (`network/`) know the request by.
pub type NetworkCreate = NetworkCreateRequest;

/// The answer to `POST /networks/create`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreateResponse {
    pub id: String,
    pub warning: String,
}

/// `POST /networks/{id}/connect`: netbee's flat `IPAddress` and `Aliases`, or docker's
/// `EndpointConfig` (folded in by [`NetworkConnectRequest::normalize`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkConnectRequest {
    #[serde(deserialize_with = "null_default")]
    pub container: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_config: Option<EndpointConfigRequest>,
}

/// docker's `EndpointSettings` as a request: the fields netbee acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointConfigRequest {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpamConfigRequest>,
    #[serde(deserialize_with = "null_default")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointIpamConfigRequest {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: Option<String>,
}

impl EndpointConfigRequest {
    /// The address asked for, if any (docker sends "" for none).
    pub fn ipv4(&self) -> Option<String> {
        self.ipam_config.as_ref().and_then(|c| c.ipv4_address.clone()).filter(|s| !s.is_empty())
    }
}

impl NetworkConnectRequest {
    pub fn normalize(&mut self) {
        if let Some(ep) = self.endpoint_config.take() {
            self.ip_address = self.ip_address.take().filter(|s| !s.is_empty()).or_else(|| ep.ipv4());
            self.aliases.extend(ep.aliases);
        }
    }
}

/// The answer to `POST /networks/prune`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkPruneResponse {
    pub networks_deleted: Vec<String>,
}

/// The name the daemon's internals know the connect request by.
pub type NetworkConnect = NetworkConnectRequest;

/// `POST /networks/{id}/disconnect` (docker's also has `Force`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkDisconnectRequest {
    pub container: String,
}

/// `GET /networks/{id}`, and each element of `GET /networks`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    pub name: String,
    pub id: String,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// `local` or `swarm`.
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    /// The running containers on the network, by container id.
    pub containers: BTreeMap<String, NetworkContainer>,
    /// The driver options docker shows: none for a bridge network. docker-compose compares them
    /// with its file's `driver_opts` and refuses to reuse a network whose options differ, so
    /// netbee's own facts are not here.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// netbee's: the network's device on the node (not docker's field; its clients ignore it).
    #[serde(rename = "NetbeeDevice", default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipam {
    pub driver: String,
    pub options: BTreeMap<String, String>,
    /// One entry for a network with addresses, none for host and none.
    pub config: Vec<IpamConfig>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    pub subnet: String,
    pub gateway: String,
    /// Only present when the network allocates from a sub-range.
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

/// A container's endpoint in [`Network::containers`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkContainer {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    /// ADDRESS/PREFIX.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}
