//! Every map of the datapath. All are pinned by name under the node's bpffs (the loader adds a
//! versioned directory) so forwarding state outlives daemon restarts.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use netbee_abi::{
    Backend, BackendKey, CT_DEFAULT_SIZE, CtEntry, CtKey, Endpoint, FrontendKey, Iface, LbCountKey, MAX_BACKEND_SLOTS,
    MAX_ENDPOINTS, MAX_FRONTENDS, MAX_IFACES, MAX_LB_COUNTERS, MAX_NETWORKS, MAX_NODE_ADDRS, MAX_PEER_NODES,
    MAX_SERVICES, MAX_SOCK_REVNAT, MacKey, Network, Service, SockKey, SockRevNat, config, drop_reason, stat,
};

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::N, 0);
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(drop_reason::N, 0);
#[map]
pub static CONFIG: Array<u64> = Array::pinned(config::N, 0);

/// Container interfaces by IPv4, local and (overlay) remote.
#[map]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);
/// Host-side veths by ifindex: the identity a container may send with.
#[map]
pub static IFACES: HashMap<u32, Iface> = HashMap::pinned(MAX_IFACES, 0);
#[map]
pub static NETWORKS: HashMap<u32, Network> = HashMap::pinned(MAX_NETWORKS, 0);
/// Every container subnet on this node -> net_id (isolation and masquerade decisions).
#[map]
pub static SUBNETS: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_NETWORKS, 0);
/// The node's own IPv4 addresses (published ports answer on them).
#[map]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_NODE_ADDRS, 0);
/// Live cluster nodes on the uplink's L2 segment, by uplink MAC -> underlay IPv4 (host order):
/// the routing mesh reaches their tasks without encapsulation.
#[map]
pub static PEER_NODES: HashMap<MacKey, u32> = HashMap::pinned(MAX_PEER_NODES, 0);

/// Service virtual IPs -> net_id: the ARP responder answers for them inside their network.
#[map]
pub static VIPS: HashMap<u32, u32> = HashMap::pinned(MAX_FRONTENDS, 0);
#[map]
pub static FRONTENDS: HashMap<FrontendKey, Service> = HashMap::pinned(MAX_FRONTENDS, 0);
#[map]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKEND_SLOTS, 0);
/// Round-robin cursor per service id (u64: the atomic fetch-and-add is a 64-bit one, see mem.rs).
#[map]
pub static RR: Array<u64> = Array::pinned(MAX_SERVICES, 0);

/// New connections per frontend and backend, per CPU. Entries are made by the programs on a
/// pair's first connection (allocated then: most pairs of a big table never occur); the daemon
/// removes those of backends and frontends that are gone.
#[map]
pub static LB_CONNS: PerCpuHashMap<LbCountKey, u64> = PerCpuHashMap::pinned(MAX_LB_COUNTERS, BPF_F_NO_PREALLOC);

#[map]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_DEFAULT_SIZE, 0);
#[map]
pub static SOCK_REVNAT: LruHashMap<SockKey, SockRevNat> = LruHashMap::pinned(MAX_SOCK_REVNAT, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(p) = DROPS.get_ptr_mut(reason) {
        unsafe { *p += 1 };
    }
}

/// Counts a new connection of frontend `service` sent to `be` (as `BACKENDS` holds it). A pair's
/// first connection creates its entry (this CPU's value 1, the others 0); of two CPUs creating
/// it at once, the loser counts into the winner's entry.
#[inline(always)]
pub fn count_backend(service: u32, be: &Backend) {
    let key = LbCountKey { service, addr: be.addr, port: be.port, _pad: 0 };
    if let Some(p) = LB_CONNS.get_ptr_mut(key) {
        unsafe { *p += 1 };
    } else if LB_CONNS.insert(key, 1, BPF_NOEXIST as u64).is_err()
        && let Some(p) = LB_CONNS.get_ptr_mut(key)
    {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn config(idx: u32) -> u64 {
    CONFIG.get(idx).copied().unwrap_or(0)
}
