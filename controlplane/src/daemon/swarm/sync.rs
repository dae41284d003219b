//! The cluster view applied to this node: overlay networks, remote endpoints and native-mesh
//! peers from etcd, re-applied whole on every change and every few seconds.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use futures::{FutureExt as _, StreamExt as _};
use netbee_abi::MacKey;
use tracing::warn;

use crate::{
    cluster,
    daemon::Daemon,
    datapath,
    model::{Liveness, NodeRecord, ServiceRecord, TaskRecord},
    network,
};

/// The shortest time between two cluster syncs' starts (issue 18: a 10-node swarm starting
/// 1,000 tasks kept every node syncing back to back, each sync reading every task and endpoint).
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

impl Daemon {
    /// Watches the cluster prefix and re-applies the whole cluster view on any change (and every
    /// few seconds regardless), so a missed event or an etcd restart heals by itself.
    pub(super) async fn sync_loop(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        loop {
            let watch = async {
                let mut client = c.etcd.client().await?;
                let mut stream =
                    client.watch(cluster::WATCH_PREFIX, Some(etcd_client::WatchOptions::new().with_prefix())).await?;
                self.full_sync().await?;
                let mut last = Instant::now();
                loop {
                    tokio::select! {
                        m = stream.next() => match m {
                            Some(Ok(_)) => {
                                // one sync for every event that already arrived: each sync reads the
                                // whole cluster view, and while tasks start on other nodes their
                                // events queue up faster than syncs finish (issue 18)
                                while let Some(m) = stream.next().now_or_never() {
                                    match m {
                                        Some(Ok(_)) => {}
                                        Some(Err(e)) => return Err(anyhow::Error::from(e)),
                                        None => return Err(anyhow!("watch closed")),
                                    }
                                }
                            }
                            Some(Err(e)) => return Err(anyhow::Error::from(e)),
                            None => return Err(anyhow!("watch closed")),
                        },
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = c.sync_now.notified() => {}
                        // a DNS query waits for a name another node may have made
                        _ = self.dns.names.sync_wanted.notified() => {}
                    }
                    // at most one sync per MIN_SYNC_INTERVAL: each reads the whole cluster view, and
                    // while tasks start on every node the events never stop; what arrives
                    // meanwhile is read by the next one
                    let wait = MIN_SYNC_INTERVAL.saturating_sub(last.elapsed());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                        while let Some(m) = stream.next().now_or_never() {
                            match m {
                                Some(Ok(_)) => {}
                                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                                None => return Err(anyhow!("watch closed")),
                            }
                        }
                    }
                    last = Instant::now();
                    self.full_sync().await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            };
            if let Err(e) = watch.await {
                warn!("cluster sync: {e:#}");
                c.etcd.reset().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Makes the node's overlay networks, remote endpoints, native-mesh peers and DNS names match
    /// etcd.
    pub(in crate::daemon) async fn full_sync(&self) -> Result<()> {
        let c = self.cluster.as_ref().expect("cluster");
        let view = loop {
            let changes = c.overlay_changes.load(Ordering::SeqCst);
            let read_at = Instant::now();
            let view = network::ClusterView::read(&c.etcd).await?;
            let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
            let alive: Vec<(String, Liveness)> = c.etcd.list(cluster::ALIVE).await?;
            let _g = self.op.lock().await;
            // an overlay created or removed here after the read would be undone by the old view
            if c.overlay_changes.load(Ordering::SeqCst) != changes {
                continue;
            }
            network::sync_cluster_view(&self.net_cx(), &view, self.containers_shared()?.values()).await?;
            self.apply_peer_nodes(&c.node_id, &nodes, &alive)?;
            break (read_at, view);
        };
        // this watch sees every change of another node's tasks and containers first: their names
        // follow at once (once the datapath reaches them), not at the service loop's next pass
        let (read_at, view) = view;
        let services: Vec<ServiceRecord> = self.shared().list().await?;
        let tasks: Vec<TaskRecord> = self.shared().list().await?;
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
