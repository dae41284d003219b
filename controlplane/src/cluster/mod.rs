//! Cluster state in etcd: the cluster record and join tokens, nodes with lease-based liveness,
//! overlay networks, their address leases and endpoints, and the leader election. Everything a
//! node needs from its peers comes from here; there is no node-to-node protocol except the join
//! handshake, which a manager answers on its advertise address (port 2377) to check the token.
pub mod etcd;
mod mirror;

use std::{collections::HashSet, net::Ipv4Addr};

use crate::model::{Membership, NodeRecord};
use etcd::{Etcd, Reads};

/// What a daemon started with `--cluster-store` keeps about the cluster.
pub struct ClusterState {
    pub etcd: Etcd,
    pub node_id: String,
    pub hostname: String,
    pub membership: std::sync::RwLock<Option<Membership>>,
    is_leader: std::sync::atomic::AtomicBool,
    /// While leading: this node's candidate key in the election. The scheduler's writes are made
    /// only while it exists (`Etcd::put_fenced`), so a leader whose lease expired while it was cut
    /// off — another manager leads by then — cannot write a stale decision when it comes back.
    leader_key: std::sync::Mutex<Option<String>>,
    pub tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Wakes the sync loop (after a change this node made) instead of waiting for the watch.
    pub sync_now: tokio::sync::Notify,
    /// Counts this node's own overlay creations and removals: the cluster sync reads etcd before
    /// it takes the operation lock, and applies what it read only if no local change came between.
    pub overlay_changes: std::sync::atomic::AtomicU64,
}

impl ClusterState {
    pub fn new(
        endpoints: Vec<String>,
        node_id: String,
        hostname: String,
        membership: Option<Membership>,
    ) -> ClusterState {
        ClusterState {
            etcd: Etcd::new(endpoints),
            node_id,
            hostname,
            membership: std::sync::RwLock::new(membership),
            is_leader: Default::default(),
            leader_key: Default::default(),
            tasks: Default::default(),
            sync_now: Default::default(),
            overlay_changes: Default::default(),
        }
    }

    /// Won the election with `candidate_key` (Some), or lost or resigned the leadership (None).
    pub fn set_leader(&self, candidate_key: Option<String>) {
        let leading = candidate_key.is_some();
        *self.leader_key.lock().unwrap() = candidate_key;
        self.is_leader.store(leading, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The key the leader's writes are fenced on; None when not leading.
    pub fn leader_fence(&self) -> Option<String> {
        self.leader_key.lock().unwrap().clone()
    }

    pub fn member(&self) -> Option<Membership> {
        self.membership.read().unwrap().clone()
    }

    /// The swarm's nodes and the ids of those alive (holding their liveness lease).
    pub async fn nodes(&self, reads: Reads) -> anyhow::Result<(Vec<NodeRecord>, HashSet<String>)> {
        let (nodes, alive) = match reads {
            Reads::Linearizable => (self.etcd.list(NODES).await?, self.etcd.keys(ALIVE).await?),
            Reads::Copy => (self.etcd.list_copy(NODES).await?, self.etcd.keys_copy(ALIVE).await?),
        };
        let alive = alive.into_iter().filter_map(|k| k.rsplit('/').next().map(String::from)).collect();
        Ok((nodes.into_iter().map(|(_, n)| n).collect(), alive))
    }
}

pub const NOT_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
pub const NOT_MEMBER: &str = "This node is not a swarm manager. Use \"netbee swarm init\" or \"netbee swarm join\" to connect this node to swarm and try again.";
pub const NO_CLUSTER_STORE: &str = "this daemon has no cluster store: start it with --cluster-store etcd://ADDR:2379";

pub const JOIN_PORT: u16 = 2377;
/// Lease TTL of a node's liveness key: a dead daemon shows Down within this plus one poll.
pub const LIVENESS_TTL: i64 = 5;
pub const ELECTION: &str = "/netbee/election/leader";
/// VNIs start above the node-local network ids so an overlay's datapath id can be its VNI.
pub const FIRST_VNI: u32 = 4096;

pub fn key_cluster() -> String {
    "/netbee/cluster".into()
}
pub fn key_node(id: &str) -> String {
    format!("/netbee/nodes/{id}")
}
pub fn key_alive(id: &str) -> String {
    format!("/netbee/alive/{id}")
}
pub fn key_network(id: &str) -> String {
    format!("/netbee/networks/{id}")
}
pub fn key_ipam(net: &str, ip: Ipv4Addr) -> String {
    format!("/netbee/ipam/{net}/{ip}")
}
pub fn key_endpoint(net: &str, ip: Ipv4Addr) -> String {
    format!("/netbee/endpoints/{net}/{ip}")
}
pub fn key_host_ports(node: &str) -> String {
    format!("{HOST_PORTS}{node}")
}
pub const HOST_PORTS: &str = "/netbee/hostports/";
pub const NODES: &str = "/netbee/nodes/";
pub const ALIVE: &str = "/netbee/alive/";
pub const NETWORKS: &str = "/netbee/networks/";
/// Changes with every overlay created: creations on different managers commit under it
/// (`Etcd::put_guarded`), so names, subnets and VNIs are decided one at a time.
pub const NETWORKS_GUARD: &str = "/netbee/guard/networks";
/// Changes with every service created or given new published ports: service names and published
/// ports are decided one at a time across managers.
pub const SERVICES_GUARD: &str = "/netbee/guard/services";
pub const ENDPOINTS: &str = "/netbee/endpoints/";
/// Every key netbee writes: what each daemon watches and keeps a copy of (`mirror.rs`).
pub const WATCH_PREFIX: &str = "/netbee/";

pub fn new_token(cluster_id: &str) -> String {
    let secret = crate::names::new_id();
    format!("SWMTKN-1-{}-{}", &cluster_id[..25.min(cluster_id.len())], &secret[..25])
}

/// Splits "HOST[:PORT]" with the join port as default.
pub fn parse_manager_addr(s: &str) -> Result<(Ipv4Addr, u16), String> {
    let (h, p) = match s.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p != 0 => (h, p),
            _ => return Err(format!("invalid port in manager address {s:?}: expected 1-65535")),
        },
        None => (s, JOIN_PORT),
    };
    let ip = h.parse::<Ipv4Addr>().map_err(|_| format!("invalid manager address {s:?}: expected IPv4[:PORT]"))?;
    Ok((ip, p))
}

/// Parses `etcd://A:2379[,B:2379...]`.
pub fn parse_store(s: &str) -> Result<Vec<String>, String> {
    let rest = s
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("invalid cluster store {s:?}: expected etcd://ADDR:2379[,ADDR:2379...]"))?;
    let eps: Vec<String> = rest.split(',').filter(|e| !e.is_empty()).map(|e| format!("http://{e}")).collect();
    if eps.is_empty() {
        return Err(format!("invalid cluster store {s:?}: no address"));
    }
    Ok(eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_addresses() {
        assert_eq!(parse_manager_addr("10.0.0.1").unwrap(), ("10.0.0.1".parse().unwrap(), 2377));
        assert_eq!(parse_manager_addr("10.0.0.1:9000").unwrap(), ("10.0.0.1".parse().unwrap(), 9000));
        assert!(parse_manager_addr("nohost:x").is_err());
        assert!(parse_manager_addr("example.com").is_err());
        // found by the names fuzz target: port 0 was accepted (the join then failed to connect)
        for zero in ["10.0.0.1:0", "2.0.0.32:0000000"] {
            assert!(parse_manager_addr(zero).unwrap_err().contains("expected 1-65535"), "{zero}");
        }
    }

    #[test]
    fn store_urls() {
        assert_eq!(parse_store("etcd://1.2.3.4:2379").unwrap(), vec!["http://1.2.3.4:2379"]);
        assert_eq!(parse_store("etcd://a:1,b:2").unwrap().len(), 2);
        assert!(parse_store("http://x").is_err());
        assert!(parse_store("etcd://").is_err());
    }

    #[test]
    fn tokens_differ_and_carry_the_cluster() {
        let a = new_token("0123456789abcdef0123456789abcdef");
        let b = new_token("0123456789abcdef0123456789abcdef");
        assert_ne!(a, b);
        assert!(a.starts_with("SWMTKN-1-0123456789abcdef012345678-"));
    }
}
