//! Replicated services. A service's record and its tasks live in the shared store (etcd in a
//! swarm, the embedded store on a lone node); every node runs one loop that recomputes from it:
//!
//! - `api.rs`: the API handlers (create, update, rm, ls, inspect, ps);
//! - `scheduler.rs`: placement (constraints, spreading) on the elected leader;
//! - `agent.rs`: the node agent that runs this node's tasks as containers;
//! - `loadbalancer.rs`: every service's VIP per network and its routing-mesh port on every node;
//! - `update.rs`: rolling updates and rollbacks (what the scheduler does for each).
use crate::cluster::etcd::Reads;
use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::Result;
use chrono::Utc;
use tracing::warn;

use super::Daemon;
use crate::store::SharedRecord as _;
use crate::{
    api::{ApiError, ApiResult},
    cluster, lookup,
    model::{Availability, NodeRecord, Role, ServiceRecord, TaskRecord},
};

mod agent;
mod api;
mod loadbalancer;
mod respec;
mod scheduler;
mod update;

pub use api::{MAX_REPLICAS, parse_service_port};
pub use loadbalancer::SERVICE_ID_BASE;
pub use scheduler::{Constraint, node_matches, parse_constraint, pick_node};
pub use update::parse_duration;

/// The shortest time between the starts of two service passes woken by another node's change.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(100);

/// A service's record and its live tasks (by slot) as a pass last used them. The listings share a
/// record that did not change (the same `Arc`), so "unchanged since" is a pointer comparison; the
/// values are held, not their addresses, so a reused address cannot pass for an unchanged record.
/// The name table and the load balancer recompute a service only when it differs (issue 18).
pub(in crate::daemon) struct ServiceSnapshot {
    service: Arc<ServiceRecord>,
    live: Vec<Arc<TaskRecord>>,
}

impl ServiceSnapshot {
    pub(in crate::daemon) fn new(service: &Arc<ServiceRecord>, live: &[&Arc<TaskRecord>]) -> Self {
        ServiceSnapshot { service: Arc::clone(service), live: live.iter().map(|t| Arc::clone(t)).collect() }
    }

    pub(in crate::daemon) fn same(&self, service: &Arc<ServiceRecord>, live: &[&Arc<TaskRecord>]) -> bool {
        Arc::ptr_eq(&self.service, service)
            && self.live.len() == live.len()
            && self.live.iter().zip(live).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// What the service loop and the service API share on a node.
#[derive(Default)]
pub(super) struct ServiceState {
    /// Serializes service create/update/rm (the scheduler reads what they write). Taken before
    /// the daemon's operation lock, never after.
    op: tokio::sync::Mutex<()>,
    /// Wakes the service loop after a change instead of waiting for its period.
    pub(in crate::daemon) changed: tokio::sync::Notify,
    /// Tasks whose containers are being drained and stopped.
    draining: std::sync::Mutex<HashSet<String>>,
    /// Held while a task's image is pulled (see `ensure_image`); taken with no other lock held.
    pulling: tokio::sync::Mutex<()>,
    /// What `program_services` computed for each service last (taken after the datapath's lock).
    wanted: std::sync::Mutex<loadbalancer::WantedCache>,
}

impl Daemon {
    pub(in crate::daemon) fn in_swarm(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.member().is_some())
    }

    pub(in crate::daemon) fn my_node_id(&self) -> String {
        match &self.cluster {
            Some(c) if c.member().is_some() => c.node_id.clone(),
            _ => "local".into(),
        }
    }

    /// Nodes that can run tasks, with liveness. A lone node is its own cluster.
    pub(in crate::daemon) async fn cluster_nodes(&self, reads: Reads) -> Result<(Vec<NodeRecord>, HashSet<String>)> {
        if !self.in_swarm() {
            let me = NodeRecord {
                id: "local".into(),
                hostname: self.cluster.as_ref().map(|c| c.hostname.clone()).unwrap_or_else(|| "local".into()),
                addr: self.node.uplink_ip,
                role: Role::Manager,
                availability: Availability::Active,
                labels: Default::default(),
                created: Utc::now(),
            };
            return Ok((vec![me], ["local".to_string()].into()));
        }
        self.cluster.as_ref().expect("a swarm member has a cluster").nodes(reads).await
    }

    pub(in crate::daemon) fn is_scheduler(&self) -> bool {
        match &self.cluster {
            Some(c) if c.member().is_some() => c.is_leader(),
            _ => true,
        }
    }

    pub(in crate::daemon) async fn find_service(&self, key: &str) -> ApiResult<ServiceRecord> {
        Ok(lookup::find(&self.shared().list::<ServiceRecord>().await?, key)?.clone())
    }

    pub(in crate::daemon) async fn require_service_manager(&self) -> ApiResult<()> {
        if let Some(c) = &self.cluster
            && c.member().is_some()
        {
            let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
            if !me.is_some_and(|n| n.role == Role::Manager) {
                return Err(ApiError::unavailable(
                    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state.",
                ));
            }
        }
        Ok(())
    }

    /// The scheduler, the node agent and the load-balancer programming, twice a second and on
    /// every change, here or (in a swarm) anywhere. Each pass recomputes from the shared store, so a missed event costs at most
    /// one period.
    pub async fn service_loop(self: Arc<Self>) {
        // another node's change to what a pass reads wakes it too: a task that starts elsewhere
        // reaches this node's load balancers at once, not at the next period (issue 18)
        let cluster_changed = self.cluster.as_ref().map(|c| {
            c.etcd.subscribe(&[
                ServiceRecord::CLUSTER_PREFIX,
                TaskRecord::CLUSTER_PREFIX,
                cluster::NODES,
                cluster::ALIVE,
            ])
        });
        loop {
            let t0 = std::time::Instant::now();
            let pass = self.service_pass().await;
            crate::metrics::control_plane().reconcile_pass(t0.elapsed(), pass.is_ok());
            match pass {
                // a batch is done and more work waits: the next pass follows at once
                Ok(true) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => warn!("services: {e:#}"),
            }
            let elsewhere = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => false,
                _ = self.services.changed.notified() => false,
                _ = async {
                    match &cluster_changed {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            // changes made elsewhere come in bursts (a service's tasks starting on every node):
            // at most one pass per MIN_PASS_INTERVAL for them, and the changes that arrive
            // meanwhile are read by that pass
            if elsewhere {
                tokio::time::sleep(MIN_PASS_INTERVAL.saturating_sub(t0.elapsed())).await;
            }
        }
    }

    pub(in crate::daemon) async fn service_pass(self: &Arc<Self>) -> Result<scheduler::Pending> {
        let mut pending = false;
        // before the services and tasks are read: the DNS keeps what this node changed since
        let read_at = std::time::Instant::now();
        // the reads below are from this node's copy of the store, as current as etcd is now
        if let Some(c) = &self.cluster
            && self.in_swarm()
        {
            c.etcd.catch_up().await?;
        }
        if self.in_swarm()
            || !self.store.list::<ServiceRecord>()?.is_empty()
            || !self.store.list::<TaskRecord>()?.is_empty()
        {
            // shared, not copied: this runs on every node on every change in the swarm (issue 18)
            let services: Vec<Arc<ServiceRecord>> = self.shared_copy().list_shared::<ServiceRecord>().await?;
            let (nodes, alive) = self.cluster_nodes(Reads::Copy).await?;
            self.events.observe_nodes(&nodes, &alive);
            if self.is_scheduler() {
                match self.schedule(&services, &nodes, &alive).await {
                    Ok(p) => pending |= p,
                    // lease lost: the liveness loop notices and steps down; this node's own tasks
                    // and load balancers are still kept below
                    Err(e) if e.is::<crate::store::Deposed>() => tracing::warn!("scheduling stopped: {e}"),
                    Err(e) => return Err(e),
                }
            }
            // the load balancers first: a lost node's tasks and stopping ones leave them before
            // this node spends the pass starting its own (each waits until it listens)
            let mut tasks: Vec<Arc<TaskRecord>> = self.shared_copy().list_shared::<TaskRecord>().await?;
            self.program_services(&services, &tasks, &alive, &nodes)?;
            let agent = self.run_my_tasks(&services, &tasks).await?;
            pending |= agent.pending;
            if agent.changed {
                tasks = self.shared_copy().list_shared::<TaskRecord>().await?;
                self.program_services(&services, &tasks, &alive, &nodes)?;
            }
            self.update_dns(read_at, services, tasks).await;
        } else {
            self.program_services(&[], &[], &HashSet::new(), &[])?;
            self.update_dns(read_at, Vec::new(), Vec::new()).await;
        }
        Ok(pending)
    }
}
