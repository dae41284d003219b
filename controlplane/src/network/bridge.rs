//! The `bridge` driver: node-local networks. The record holds its own address allocator and lives
//! in the embedded store; the kernel side is `kernel.rs` (no Linux bridge on the forwarding path).
use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use async_trait::async_trait;

use super::{Context, NetworkDriver, Scope, kernel};
use crate::{
    api::{ApiError, ApiResult, NetworkCreate},
    ipam::{self, Allocator},
    model::NetworkRecord,
    names,
};

/// docker's default bridge network.
pub const DEFAULT_SUBNET: &str = "172.17.0.0/16";

pub struct Bridge;

#[async_trait]
impl NetworkDriver for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    async fn create(&self, cx: &Context<'_>, req: &NetworkCreate, existing: &[NetworkRecord]) -> ApiResult<NetworkRecord> {
        let taken = super::taken_subnets(cx, existing);
        let cfg = ipam::pool_config(
            req.subnet.as_deref(),
            req.gateway.as_deref(),
            req.ip_range.as_deref(),
            &taken,
            &ipam::local_default_pools(),
        )
        .map_err(ApiError::from)?;
        // datapath ids of node-local networks: the lowest free one (overlays use their VNI)
        let used: HashSet<u32> = existing.iter().map(|n| n.net_id).collect();
        let rec = NetworkRecord {
            id: names::new_id(),
            name: req.name.clone(),
            driver: self.name().into(),
            created: chrono::Utc::now(),
            internal: req.internal,
            net_id: (1..).find(|i| !used.contains(i)).unwrap_or(1),
            ipam: Some(Allocator::new(cfg)),
            labels: req.labels.clone(),
            vni: 0,
        };
        // store first: if the daemon dies half-way, reconcile finishes (or the rm undoes) it
        cx.store.put(&rec)?;
        if let Err(e) = self.setup(cx, &rec).await {
            let _ = self.teardown(cx, &rec).await;
            cx.store.delete::<NetworkRecord>(&rec.id)?;
            return Err(e.context(format!("creating network {}", rec.name)).into());
        }
        Ok(rec)
    }

    async fn remove(&self, cx: &Context<'_>, net: &NetworkRecord) -> ApiResult<()> {
        self.teardown(cx, net).await?;
        cx.store.delete::<NetworkRecord>(&net.id)?;
        Ok(())
    }

    async fn setup(&self, cx: &Context<'_>, net: &NetworkRecord) -> Result<()> {
        kernel::setup_network(cx.nl, cx.dp, net, 0).await
    }

    async fn teardown(&self, cx: &Context<'_>, net: &NetworkRecord) -> Result<()> {
        kernel::teardown_network(cx.nl, cx.dp, net).await
    }

    /// The allocation is committed before any kernel work, so a crash cannot hand it out twice.
    async fn allocate(
        &self,
        cx: &Context<'_>,
        net: &NetworkRecord,
        want: Option<Ipv4Addr>,
        _owner: &str,
    ) -> ApiResult<Ipv4Addr> {
        // the stored record, not the caller's copy: another allocation may have happened since
        let mut net = cx.store.get::<NetworkRecord>(&net.id)?.unwrap_or_else(|| net.clone());
        let ipam = net.ipam.as_mut().ok_or_else(|| ApiError::bad_request("network has no addresses"))?;
        let ip = match want {
            Some(ip) => {
                ipam.reserve(ip).map_err(ApiError::from)?;
                ip
            }
            None => ipam.allocate().map_err(ApiError::from)?,
        };
        cx.store.put(&net)?;
        Ok(ip)
    }

    async fn release(&self, cx: &Context<'_>, net: &NetworkRecord, ip: Ipv4Addr) -> Result<()> {
        if let Some(mut net) = cx.store.get::<NetworkRecord>(&net.id)?
            && let Some(ipam) = net.ipam.as_mut()
        {
            ipam.release(ip);
            cx.store.put(&net)?;
        }
        Ok(())
    }

    async fn reconcile_addresses(&self, cx: &Context<'_>, net: &NetworkRecord, in_use: &HashSet<Ipv4Addr>) -> Result<()> {
        let Some(mut net) = cx.store.get::<NetworkRecord>(&net.id)? else { return Ok(()) };
        let Some(ipam) = net.ipam.as_mut() else { return Ok(()) };
        let stale: Vec<_> = ipam.allocated().filter(|ip| !in_use.contains(ip)).collect();
        let missing: Vec<_> = in_use.iter().filter(|ip| !ipam.is_allocated(**ip)).copied().collect();
        if stale.is_empty() && missing.is_empty() {
            return Ok(());
        }
        for ip in stale {
            ipam.release(ip);
        }
        for ip in missing {
            let _ = ipam.reserve(ip);
        }
        cx.store.put(&net)
    }
}
