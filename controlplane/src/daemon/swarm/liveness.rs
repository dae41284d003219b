//! This node's liveness: a key under an etcd lease kept alive while the daemon runs; managers
//! campaign for the scheduler's leadership with the same lease, so a dead daemon loses both at once.
use std::{sync::Arc, time::Duration};

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
        let store = c.clone();
        tasks.push(tokio::spawn(async move { store.etcd.mirror().await }));
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
            c.set_leader(None);
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
        let campaign = tokio::spawn(campaign_while_manager(c.clone(), client.clone(), lease));
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
        campaign.abort();
        result
    }
}

/// Campaigns for the scheduler's leadership with this node's lease for as long as the node is a
/// manager. A campaign waits inside etcd until every earlier candidate's key is gone, and the
/// client's request timeout ends each wait after a few seconds: it is simply made again (the
/// candidate key, tied to the lease, stays in its place in the queue). So a manager keeps
/// campaigning until it wins, a node promoted later starts within a round, and a node that is
/// not (or no longer) a manager withdraws its candidate key, resigning if it led, so that a
/// worker never holds the leadership nobody exercises.
async fn campaign_while_manager(c: Arc<ClusterState>, mut client: etcd_client::Client, lease: i64) {
    // the key etcd's election API gives a candidate: the election name, '/', the lease in hex
    let candidate = format!("{}/{lease:x}", cluster::ELECTION);
    let mut candidate_key_exists = false;
    loop {
        let manager = match c.etcd.get::<NodeRecord>(&cluster::key_node(&c.node_id)).await {
            Ok(me) => me.is_some_and(|n| n.role == Role::Manager),
            // etcd cannot tell now: keep the current state and ask again
            Err(_) => {
                tokio::time::sleep(ROUND).await;
                continue;
            }
        };
        let leading = c.is_leader();
        if manager && !leading {
            candidate_key_exists = true;
            let asked = tokio::time::Instant::now();
            match client.campaign(cluster::ELECTION, c.node_id.clone(), lease).await {
                Ok(_) => {
                    c.set_leader(Some(candidate.clone()));
                    info!("elected cluster leader");
                }
                // the wait timed out (campaign again at once), or etcd refused (not in a loop)
                Err(_) if asked.elapsed() < ROUND => tokio::time::sleep(ROUND).await,
                Err(_) => {}
            }
            continue;
        }
        if !manager && candidate_key_exists && client.delete(candidate.clone(), None).await.is_ok() {
            candidate_key_exists = false;
            if leading {
                c.set_leader(None);
                info!("no longer a manager: resigned the leadership");
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

/// How often a candidate or leader checks its role.
const ROUND: Duration = Duration::from_secs(1);
