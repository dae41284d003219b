//! The cluster view applied to this node: overlay networks, remote endpoints and native-mesh
//! peers from etcd, re-applied whole on every change and every few seconds.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use netbee_abi::MacKey;
use tracing::warn;

use crate::{
    cluster,
    daemon::Daemon,
    datapath,
    model::{Liveness, NodeRecord, ServiceRecord, TaskRecord},
    network,
    store::SharedRecord as _,
};

/// The shortest time between two cluster syncs' starts (issue 18: a 10-node swarm starting
/// 1,000 tasks kept every node syncing back to back, each sync reading every task and endpoint).
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

impl Daemon {
    /// Re-applies the whole cluster view on every change the copy of the cluster store applies to
    /// what it reads (and every few seconds regardless, so anything missed heals by itself).
    pub(super) async fn sync_loop(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        // what `full_sync` reads (and the host-port claims it keeps): address leases, the guard
        // keys and the election change with every create and every task start and would wake
        // every node's sync for nothing (issue 18)
        let changed = c.etcd.subscribe(&[
            cluster::NETWORKS,
            cluster::ENDPOINTS,
            cluster::NODES,
            cluster::ALIVE,
            cluster::HOST_PORTS,
            ServiceRecord::CLUSTER_PREFIX,
            TaskRecord::CLUSTER_PREFIX,
        ]);
        let mut last: Option<Instant> = None;
        loop {
            // at most one sync per MIN_SYNC_INTERVAL: while tasks start on every node the changes
            // never stop; what arrives meanwhile is read by the next one
            if let Some(wait) = last.map(|l| MIN_SYNC_INTERVAL.saturating_sub(l.elapsed())) {
                tokio::time::sleep(wait).await;
            }
            last = Some(Instant::now());
            if let Err(e) = self.full_sync().await {
                warn!("cluster sync: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = c.sync_now.notified() => {}
                // a DNS query waits for a name another node may have made
                _ = self.dns.names.sync_wanted.notified() => {}
            }
        }
    }

    /// Makes the node's overlay networks, remote endpoints, native-mesh peers and DNS names match
    /// etcd.
    pub(in crate::daemon) async fn full_sync(&self) -> Result<()> {
        let c = self.cluster.as_ref().expect("cluster");
        // what follows reads this node's copy of the store, as current as etcd is now (a DNS
        // query waits for a name another node may just have written)
        c.etcd.catch_up().await?;
        let view = loop {
            let changes = c.overlay_changes.load(Ordering::SeqCst);
            let read_at = Instant::now();
            let view = network::ClusterView::read(&c.etcd).await?;
            let nodes: Vec<(String, NodeRecord)> = c.etcd.list_copy(cluster::NODES).await?;
            let alive: Vec<(String, Liveness)> = c.etcd.list_copy(cluster::ALIVE).await?;
            let _g = self.op.lock().await;
            // an overlay created or removed here after the read would be undone by the old view
            if c.overlay_changes.load(Ordering::SeqCst) != changes {
                continue;
            }
            // a task's address takes part in the load balancers once this node delivers to it
            if network::sync_cluster_view(&self.net_cx(), &view, self.containers_shared()?.values()).await? {
                self.services.changed.notify_one();
            }
            self.apply_peer_nodes(&c.node_id, &nodes, &alive)?;
            break (read_at, view);
        };
        // this watch sees every change of another node's tasks and containers first: their names
        // follow at once (once the datapath reaches them), not at the service loop's next pass
        let (read_at, view) = view;
        let services: Vec<Arc<ServiceRecord>> = self.shared_copy().list_shared().await?;
        let tasks: Vec<Arc<TaskRecord>> = self.shared_copy().list_shared().await?;
        self.dns_sources_from_cluster(read_at, view.endpoints(), services, tasks).await;
        self.dns.names.synced();
        self.write_host_ports(None).await;
        self.refresh_node_addrs().await
    }

    /// Makes PEER_NODES the live peers that registered an uplink MAC (they run native mesh
    /// routing), or nothing when this node does not: the routing mesh reaches their tasks
    /// natively when they share the uplink's L2 segment (the datapath checks that per packet
    /// with a FIB lookup) and accepts native mesh frames only from them.
    pub(super) fn apply_peer_nodes(
        &self,
        me: &str,
        nodes: &[(String, NodeRecord)],
        alive: &[(String, Liveness)],
    ) -> Result<()> {
        let alive = if self.node.uplink_mac.is_some() { alive } else { &[] };
        let want: Vec<(MacKey, u32)> = alive
            .iter()
            .filter_map(|(key, l)| {
                let id = key.rsplit('/').next()?;
                let node = nodes.iter().find(|(_, n)| n.id == id && id != me)?;
                Some((l.uplink_mac?, u32::from(node.1.addr)))
            })
            .filter(|(mac, _)| Some(*mac) != self.node.uplink_mac)
            .map(|(mac, ip)| (MacKey { mac, _pad: [0; 2] }, ip))
            .collect();
        datapath::sync(&mut self.dp.lock().unwrap().peer_nodes, &want, |_, _| true)
    }
}
