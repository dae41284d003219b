//! This node's liveness: a key under an etcd lease kept alive while the daemon runs; managers
//! campaign for the scheduler's leadership with the same lease, so a dead daemon loses both at once.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Result, anyhow};
use tracing::{info, warn};

use super::ClusterState;
use crate::{
    cluster,
    daemon::Daemon,
    model::{Liveness, NodeRecord, Role},
};

impl Daemon {
    pub fn start_member_tasks(self: &Arc<Self>) {
        let Some(c) = self.cluster.clone() else { return };
        let mut tasks = c.tasks.lock().unwrap();
        for t in tasks.drain(..) {
            t.abort();
        }
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.liveness_loop().await }));
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.sync_loop().await }));
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.join_server().await }));
    }

    pub(in crate::daemon) fn stop_member_tasks(&self) {
        if let Some(c) = &self.cluster {
            for t in c.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
        }
    }

    /// Keeps this node's liveness key alive under a lease; managers campaign for leadership with
    /// the same lease, so a dead daemon loses both at once.
    pub(in crate::daemon) async fn liveness_loop(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        loop {
            if let Err(e) = self.liveness_once(&c).await {
                warn!("cluster liveness: {e:#}");
            }
            c.is_leader.store(false, Ordering::Relaxed);
            c.etcd.reset().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub(in crate::daemon) async fn liveness_once(&self, c: &Arc<ClusterState>) -> Result<()> {
        let lease = c.etcd.grant(cluster::LIVENESS_TTL).await?;
        let alive = Liveness { since: chrono::Utc::now(), uplink_mac: self.node.uplink_mac };
        c.etcd.put_leased(&cluster::key_alive(&c.node_id), &alive, lease).await?;
        let mut client = c.etcd.client().await?;
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
        let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
        let campaign = if me.is_some_and(|n| n.role == Role::Manager) {
            let (c2, mut client2) = (c.clone(), client.clone());
            Some(tokio::spawn(async move {
                if client2.campaign(cluster::ELECTION, c2.node_id.clone(), lease).await.is_ok() {
                    c2.is_leader.store(true, Ordering::Relaxed);
                    info!("elected cluster leader");
                }
            }))
        } else {
            None
        };
        let result = async {
            loop {
                keeper.keep_alive().await?;
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(_)) => return Err(anyhow!("lease expired")),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(anyhow!("no keepalive answer from etcd")),
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        .await;
        if let Some(t) = campaign {
            t.abort();
        }
        result
    }
}
