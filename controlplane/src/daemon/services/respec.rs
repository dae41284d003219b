//! A service's spec as a request gives it whole: `service create`'s, and docker's whole-spec
//! update (what `stack deploy` sends for a service that exists), checked the same way, with the
//! networks and aliases as the request names them resolved to ids. A whole-spec update is then
//! recorded as any `service update` is (`api.rs`): an unchanged spec writes nothing, a changed one
//! becomes the spec with the old one kept for a rollback, VIPs follow the networks, and tasks are
//! replaced by a rolling update only when what they run changed (`ServiceSpec::same_tasks`).
use std::collections::BTreeMap;

use super::api::{parse_replicas, parse_service_port};
use super::{scheduler::parse_constraint, update};
use crate::{
    api::{ApiError, ApiResult, ServiceCreateRequest},
    daemon::Daemon,
    images::HOST_IMAGE,
    model::{NetworkRecord, ServiceSpec, UpdateConfig},
    names,
    network::Scope,
};

/// A request's networks (as named there) and its aliases on them, resolved by
/// [`Daemon::attach_networks`].
pub(super) type WantedNetworks = (Vec<String>, BTreeMap<String, Vec<String>>);

/// Checks a whole spec as `service create` gives it and makes the service spec of it, with no
/// networks yet (see [`Daemon::attach_networks`]); the first bad field is the error.
pub(super) fn checked_spec(req: ServiceCreateRequest) -> ApiResult<(ServiceSpec, WantedNetworks)> {
    let ServiceCreateRequest {
        name,
        image,
        replicas,
        publish,
        networks,
        constraints,
        env,
        cmd,
        update_config: update_flags,
        rollback_config: rollback_flags,
        entrypoint,
        labels,
        container_labels,
        network_aliases,
        // read by `whole_spec`: a new service starts at 0
        force_update: _,
    } = req;
    names::validate_network_name(&name)
        .map_err(|e| ApiError::bad_request(e.replace("network name", "service name")))?;
    // as swarmkit: a replicated service without a count has one replica
    let replicas = parse_replicas(replicas.as_ref()).map_err(ApiError::bad_request)?.unwrap_or(1);
    if image.is_empty() {
        return Err(ApiError::bad_request("no image specified for the service"));
    }
    // an image's command is known only where its tasks pull it; `host` has none
    if image == HOST_IMAGE && cmd.is_empty() {
        return Err(ApiError::bad_request("no command specified for the service"));
    }
    let ports =
        publish.iter().map(|p| parse_service_port(p)).collect::<Result<Vec<_>, _>>().map_err(ApiError::bad_request)?;
    for c in &constraints {
        parse_constraint(c).map_err(ApiError::bad_request)?;
    }
    let mut update_config = UpdateConfig::default();
    update::apply_flags(&mut update_config, &update_flags, "update").map_err(ApiError::bad_request)?;
    let mut rollback_config = UpdateConfig::default();
    update::apply_flags(&mut rollback_config, &rollback_flags, "rollback").map_err(ApiError::bad_request)?;
    let spec = ServiceSpec {
        name,
        image,
        replicas,
        cmd,
        env,
        networks: Vec::new(),
        ports,
        constraints,
        update_config,
        rollback_config,
        force_update: 0,
        labels,
        container_labels,
        aliases: BTreeMap::new(),
        entrypoint,
    };
    Ok((spec, (networks, network_aliases)))
}

impl Daemon {
    /// The ids of the networks a service's tasks attach to, in order (the first carries the
    /// routing mesh); none given is the swarm's `ingress` (a lone node's `bridge`).
    pub(super) async fn service_networks(&self, wanted: Vec<String>) -> ApiResult<Vec<String>> {
        let mut networks: Vec<String> = Vec::new();
        for n in wanted {
            let net = {
                let _g = self.op.lock().await;
                self.find_network_or_adopt(&n).await?
            };
            self.check_service_network(&net)?;
            if !networks.contains(&net.id) {
                networks.push(net.id);
            }
        }
        if networks.is_empty() {
            let default = if self.in_swarm() { self.ingress_network().await? } else { self.find_network("bridge")? };
            networks.push(default.id);
        }
        Ok(networks)
    }

    /// A network services may use: in a swarm an overlay, and one that carries containers.
    pub(super) fn check_service_network(&self, net: &NetworkRecord) -> ApiResult<()> {
        if self.in_swarm() && net.scope() != Scope::Swarm {
            return Err(ApiError::bad_request(format!(
                "network {} cannot be used with services: only overlay networks span the swarm",
                net.name
            )));
        }
        if !net.carries_containers() {
            return Err(ApiError::bad_request(format!("network {} cannot carry services", net.name)));
        }
        Ok(())
    }

    /// A request's aliases keyed by network id; each network must be one the request attaches
    /// the service to (`wanted`, as named there).
    pub(super) fn service_aliases(
        &self,
        wanted: &[String],
        aliases: BTreeMap<String, Vec<String>>,
    ) -> ApiResult<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, list) in aliases {
            if !wanted.contains(&n) {
                return Err(ApiError::bad_request(format!(
                    "aliases on network {n}, which is not one of the service's networks"
                )));
            }
            for a in &list {
                names::validate_network_name(a)
                    .map_err(|e| ApiError::bad_request(e.replace("network name", "network alias")))?;
            }
            let net = self.find_network(&n)?;
            let e = out.entry(net.id).or_default();
            for a in list {
                if !e.contains(&a) {
                    e.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Resolves a request's networks and aliases (see [`checked_spec`]) into `spec`.
    pub(super) async fn attach_networks(&self, spec: &mut ServiceSpec, wanted: WantedNetworks) -> ApiResult<()> {
        let (networks, aliases) = wanted;
        // networks first: one this node has not synced yet is adopted, and aliases then find it
        spec.networks = self.service_networks(networks.clone()).await?;
        spec.aliases = self.service_aliases(&networks, aliases)?;
        Ok(())
    }

    /// The spec a whole-spec update (`req`) makes of `current`'s: checked as at create; its name
    /// must be the service's; `--force`'s counter is kept unless docker's spec carries a higher
    /// one (its CLI's `--force` sends the value it read plus one).
    pub(super) async fn whole_spec(&self, current: &ServiceSpec, req: ServiceCreateRequest) -> ApiResult<ServiceSpec> {
        if req.name != current.name {
            return Err(ApiError::bad_request(format!(
                "renaming services is not supported: the spec names {:?}, the service is {}",
                req.name, current.name
            )));
        }
        let force_update = req.force_update.map_or(current.force_update, |f| f.max(current.force_update));
        let (mut spec, wanted) = checked_spec(req)?;
        self.attach_networks(&mut spec, wanted).await?;
        spec.force_update = force_update;
        Ok(spec)
    }
}
