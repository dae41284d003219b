//! The contract between netbee's eBPF datapath and its control plane: every map's key and value
//! layout, counter indices and flag bits. Both sides depend on this crate so a layout is written
//! once. Addresses and ports are kept in network byte order (as they sit in packets) unless a
//! field says otherwise.
#![cfg_attr(not(test), no_std)]

/// Bumped whenever a pinned map changes layout (3: RR cursors are u64); the loader pins maps under `maps-v<VERSION>` so an
/// upgrade never reinterprets an old map with a new layout (Cilium PR #10289).
pub const MAP_VERSION: u32 = 3;

pub const MAX_ENDPOINTS: u32 = 65536;
pub const MAX_NETWORKS: u32 = 4096;
pub const MAX_IFACES: u32 = 65536;
pub const MAX_NODE_ADDRS: u32 = 256;
pub const MAX_FRONTENDS: u32 = 65536;
pub const MAX_SERVICES: u32 = 65536;
pub const MAX_BACKEND_SLOTS: u32 = 262144;
pub const CT_DEFAULT_SIZE: u32 = 262144;
pub const MAX_SOCK_REVNAT: u32 = 65536;
pub const MAX_PEER_NODES: u32 = 1024;
/// Frontend-backend pairs with a new-connection counter (`LB_CONNS`).
pub const MAX_LB_COUNTERS: u32 = 65536;

/// Per-CPU packet counters (`STATS` array index).
pub mod stat {
    pub const FROM_CONTAINER: u32 = 0;
    pub const REDIRECT_LOCAL: u32 = 1;
    pub const TO_STACK: u32 = 2;
    pub const ARP_REPLY: u32 = 3;
    pub const UPLINK_IN: u32 = 4;
    pub const UPLINK_OUT: u32 = 5;
    pub const DNAT_NEW: u32 = 6;
    pub const DNAT_EST: u32 = 7;
    pub const REVNAT: u32 = 8;
    pub const SNAT_NEW: u32 = 9;
    pub const SNAT_EST: u32 = 10;
    pub const SNAT_REV: u32 = 11;
    pub const ENCAP: u32 = 12;
    pub const DECAP: u32 = 13;
    pub const REDIRECT_UPLINK: u32 = 14;
    pub const SOCK_LB: u32 = 15;
    /// Conntrack entries inserted (two per translated flow, one per tunnel-return entry).
    pub const CT_CREATED: u32 = 16;
    pub const TUNNEL_RETURN: u32 = 17;
    /// Routing-mesh packets sent to or accepted from an L2-adjacent peer node without
    /// encapsulation.
    pub const DIRECT_ROUTE: u32 = 18;
    /// New connections from the wire to a routing-mesh port of this node (counted once the
    /// backend is chosen and the flow recorded).
    pub const MESH_RECEIVED: u32 = 19;
    pub const N: u32 = 32;

    /// Names in index order, for `netbee datapath stats`.
    pub const NAMES: [&str; 20] = [
        "from_container",
        "redirect_local",
        "to_stack",
        "arp_reply",
        "uplink_in",
        "uplink_out",
        "dnat_new",
        "dnat_established",
        "revnat",
        "snat_new",
        "snat_established",
        "snat_reverse",
        "encap",
        "decap",
        "redirect_uplink",
        "sock_lb",
        "ct_created",
        "tunnel_return",
        "direct_route",
        "mesh_received",
    ];
}

/// Per-CPU drop counters by reason (`DROPS` array index).
pub mod drop_reason {
    pub const SPOOFED_MAC: u32 = 0;
    pub const SPOOFED_IP: u32 = 1;
    pub const SPOOFED_ARP: u32 = 2;
    pub const CROSS_NETWORK: u32 = 3;
    pub const NO_SUCH_HOST: u32 = 4;
    pub const INTERNAL_NETWORK: u32 = 5;
    pub const UNKNOWN_IFACE: u32 = 6;
    pub const MALFORMED: u32 = 7;
    pub const UNSUPPORTED_L3: u32 = 8;
    pub const NO_BACKEND: u32 = 9;
    pub const NAT_PORTS_EXHAUSTED: u32 = 10;
    pub const CT_INSERT_FAILED: u32 = 11;
    pub const REDIRECT_FAILED: u32 = 12;
    pub const FRAGMENT: u32 = 13;
    /// From the wire straight to a container address, not through a published port.
    pub const UNPUBLISHED: u32 = 14;
    pub const N: u32 = 16;

    pub const NAMES: [&str; 15] = [
        "spoofed_mac",
        "spoofed_ip",
        "spoofed_arp",
        "cross_network",
        "no_such_host",
        "internal_network",
        "unknown_interface",
        "malformed",
        "unsupported_l3",
        "no_backend",
        "nat_ports_exhausted",
        "ct_insert_failed",
        "redirect_failed",
        "fragment",
        "unpublished",
    ];
}

/// Indices of the `CONFIG` array (u64 values, host byte order unless noted).
pub mod config {
    /// ifindex of the node's uplink.
    pub const UPLINK_IFINDEX: u32 = 0;
    /// Node's primary uplink IPv4, network byte order in the low 32 bits (masquerade source).
    pub const UPLINK_IP: u32 = 1;
    /// ifindex of the collect_md VXLAN device (0 = no overlay on this node).
    pub const VXLAN_IFINDEX: u32 = 2;
    /// netns cookie of the node's namespace: socket hooks act only on the node's own sockets.
    pub const NODE_NETNS_COOKIE: u32 = 3;
    /// Conntrack idle timeouts in nanoseconds.
    pub const CT_TIMEOUT_SYN: u32 = 4;
    pub const CT_TIMEOUT_ESTABLISHED: u32 = 5;
    pub const CT_TIMEOUT_CLOSING: u32 = 6;
    pub const CT_TIMEOUT_UDP: u32 = 7;
    /// Underlay IPv4 of this node, host byte order (compared with tunnel keys).
    pub const NODE_UNDERLAY_IP: u32 = 8;
    /// 1 with `--mesh-routing native`: the routing mesh may send to and accept from L2-adjacent
    /// peers without the tunnel. 0 spares the default mode the per-packet peer lookups.
    pub const MESH_NATIVE: u32 = 9;
    /// `monitor_kind` bits some `netbee monitor` is attached for (0 = nobody listens: the
    /// programs then emit nothing and read no clock). Reset to 0 when the daemon starts.
    pub const MONITOR: u32 = 10;
    pub const N: u32 = 16;
}

/// Where a local or remote container interface lives. Key: its IPv4 (network order). Container
/// addresses are unique per node (local subnets never overlap) and cluster-wide on overlays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Host-side veth ifindex; 0 for an endpoint on another node.
    pub ifindex: u32,
    pub net_id: u32,
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the source MAC of frames delivered into the container.
    pub host_mac: [u8; 6],
    /// Underlay IPv4 of the node that hosts a remote endpoint, host byte order (as
    /// bpf_tunnel_key.remote_ipv4 wants it). 0 for a local endpoint.
    pub node_ip: u32,
    pub flags: u32,
}

/// Attached to each host-side veth: who may send from it. Key: ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Iface {
    pub ip: u32,
    pub net_id: u32,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub flags: u32,
}

pub mod iface_flags {
    /// The container is a load-balancer backend (published ports, service task): its packets
    /// may be replies of translated flows. Plain containers skip the conntrack lookup when they
    /// talk to another container directly.
    pub const BACKEND: u32 = 1;
}

pub mod net_flags {
    /// `--internal`: nothing leaves the network but traffic to its gateway.
    pub const INTERNAL: u32 = 1;
    pub const OVERLAY: u32 = 2;
}

/// A network as the datapath sees it. Key: net_id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Network {
    pub subnet: u32,
    pub mask: u32,
    pub gateway: u32,
    pub flags: u32,
    pub vni: u32,
    pub _pad: u32,
}

/// Key of `PEER_NODES`: the uplink MAC of another cluster node on this node's L2 segment. The
/// value is that node's underlay IPv4, host byte order (like `Endpoint::node_ip`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// LPM key for the `SUBNETS` trie (prefix length + address in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubnetKey {
    pub prefixlen: u32,
    pub addr: u32,
}

/// A load-balanced frontend: a published port (`addr` = a node address, 127.0.0.1, or 0 for
/// every node address) or a service VIP:port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FrontendKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

pub mod svc_flags {
    /// Only reachable from the node itself (socket hook), never from the wire.
    pub const LOCAL_ONLY: u32 = 1;
    /// Frontend is a VIP scoped to `net_id`.
    pub const VIP: u32 = 2;
    /// Frontend is a service's routing-mesh port (published on every node).
    pub const MESH: u32 = 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Index into `RR` and the first half of every `BackendKey` of this service.
    pub id: u32,
    /// Number of active backend slots (1..=count) a new connection may pick.
    pub count: u32,
    pub net_id: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    pub service: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `LB_CONNS`: one frontend (its `Service::id`) and one backend as `BACKENDS` holds it
/// (port 0 for a VIP's any-port backend). Keyed by the backend itself rather than its slot, so a
/// count stays with its backend when slots are renumbered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbCountKey {
    pub service: u32,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A flow as seen in one direction. ICMP echo uses the identifier as `sport` on requests and as
/// `dport` on replies so both directions key like TCP/UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // two fields rather than [u8; 3]: LLVM zeroes a 3-byte array with a call to the BPF
    // target's byte-at-a-time memset on every packet
    pub _pad1: u8,
    pub _pad2: u16,
}

impl CtKey {
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey { saddr, daddr, sport, dport, proto, _pad1: 0, _pad2: 0 }
    }
}

pub mod ct_flags {
    /// Rewrite the destination to (nat_addr, nat_port): forward direction of a DNAT flow.
    pub const DNAT: u16 = 1;
    /// Rewrite the source to (nat_addr, nat_port): reply direction of a DNAT flow.
    pub const REVNAT: u16 = 2;
    /// Rewrite the source: forward direction of a masqueraded flow.
    pub const SNAT: u16 = 4;
    /// Rewrite the destination: reply direction of a masqueraded flow.
    pub const SNAT_REV: u16 = 8;
    /// Replies of this flow go back through the tunnel to `tunnel_node` (routing mesh).
    pub const TUNNEL_RETURN: u16 = 16;
    pub const SEEN_FIN: u16 = 32;
    pub const SEEN_RST: u16 = 64;
    /// Only a SYN seen so far in this direction.
    pub const SYN_ONLY: u16 = 128;
    /// With TUNNEL_RETURN: `tunnel_node` shares the uplink's L2 segment and sent the flow
    /// natively, so replies go back to it natively too.
    pub const DIRECT: u16 = 256;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub flags: u16,
    /// Underlay IPv4 (host order) of the node that must see this flow's packets next.
    pub tunnel_node: u32,
    pub vni: u32,
    /// bpf_ktime_get_ns() of the last packet (refreshed at most once a second).
    pub last_seen: u64,
    pub created: u64,
}

/// Socket-hook reverse translation: which frontend a connected/sent-to socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Kinds of flow-monitor events, as bits of `config::MONITOR` and as `MonitorEvent::kind`.
pub mod monitor_kind {
    /// A packet dropped by `verdict::drop`, with its reason.
    pub const DROP: u8 = 1;
    /// A new connection's load-balancing decision (`lb::new_dnat`).
    pub const LB: u8 = 2;
    /// A packet of a traced address leaving a datapath program, with the program's verdict.
    pub const TRACE: u8 = 4;
}

/// The program a traced packet went through (`MonitorEvent::via` of a trace).
pub mod trace_point {
    /// A container's interface (what the container sent).
    pub const FROM_CONTAINER: u8 = 0;
    /// The uplink, arriving.
    pub const UPLINK_INGRESS: u8 = 1;
    /// The uplink, leaving.
    pub const UPLINK_EGRESS: u8 = 2;
    /// The overlay's VXLAN device (decapsulated).
    pub const OVERLAY_INGRESS: u8 = 3;
    pub const NAMES: [&str; 4] = ["from-container", "uplink-ingress", "uplink-egress", "overlay-ingress"];
}

/// Addresses (and interfaces) the trace follows, at most this many of each.
pub const MONITOR_TRACE_MAX: u32 = 1024;

/// Where an LB decision was taken (`MonitorEvent::via`).
pub mod monitor_via {
    /// Sent by a local container (to a VIP or a published port).
    pub const CONTAINER: u8 = 0;
    /// Arrived on the uplink (a published port or the routing mesh).
    pub const WIRE: u8 = 1;
    /// Arrived through the overlay tunnel.
    pub const TUNNEL: u8 = 2;
}

/// Size of the `MONITOR_EVENTS` ring buffer (a power of two, a multiple of the page size).
pub const MONITOR_RING_BYTES: u32 = 1 << 20;
/// Events each CPU may emit per window; further ones are counted in `MonitorRate::suppressed`.
pub const MONITOR_EVENTS_PER_WINDOW: u64 = 200;
pub const MONITOR_WINDOW_NS: u64 = 100_000_000;

/// One flow-monitor record in the `MONITOR_EVENTS` ring buffer. Addresses and ports in network
/// byte order; for a drop or a trace the 5-tuple is the packet as the program left it (after any
/// rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorEvent {
    /// bpf_ktime_get_ns() when emitted.
    pub ktime: u64,
    /// `monitor_kind::*`.
    pub kind: u8,
    pub proto: u8,
    /// LB: `monitor_via::*`; trace: `trace_point::*`.
    pub via: u8,
    pub _pad0: u8,
    /// Drop: `drop_reason::*`; trace: the program's TC verdict (`TC_ACT_*`).
    pub reason: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// The frame's EtherType (host order): drops of ARP frames carry no 5-tuple.
    pub ethertype: u16,
    pub _pad1: u16,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// LB: the service id, the chosen slot, the frontend's `svc_flags`, the chosen backend.
    pub service: u32,
    pub slot: u32,
    pub svc_flags: u32,
    pub backend_addr: u32,
    pub backend_port: u16,
    pub _pad2: u16,
}

/// Per-CPU rate limiter of the monitor (a fixed window), and what it suppressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorRate {
    pub window_start: u64,
    pub emitted: u64,
    /// Events not emitted since the datapath was loaded: over the rate or the ring buffer full.
    pub suppressed: u64,
}

impl MonitorRate {
    /// Whether one more event may be emitted at `now` (ns): at most
    /// `MONITOR_EVENTS_PER_WINDOW` per `MONITOR_WINDOW_NS`; a refused one is counted.
    #[inline(always)]
    pub fn admit(&mut self, now: u64) -> bool {
        if now.wrapping_sub(self.window_start) >= MONITOR_WINDOW_NS {
            self.window_start = now;
            self.emitted = 0;
        }
        if self.emitted >= MONITOR_EVENTS_PER_WINDOW {
            self.suppressed += 1;
            return false;
        }
        self.emitted += 1;
        true
    }
}

/// UDP port of the overlay's VXLAN device on every node.
pub const VXLAN_PORT: u16 = 4789;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Source ports the masquerade allocates from: above Linux's default ephemeral range
/// (32768-60999) so they never collide with the node's own sockets or with published ports
/// chosen from that range.
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for Network {}
    unsafe impl aya::Pod for SubnetKey {}
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for LbCountKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for MacKey {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockRevNat {}
    unsafe impl aya::Pod for MonitorEvent {}
    unsafe impl aya::Pod for MonitorRate {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_event_has_no_implicit_padding() {
        // the kernel writes it, userspace reads it as bytes: every byte is a declared field
        assert_eq!(size_of::<MonitorEvent>(), 56);
    }

    #[test]
    fn rate_admits_a_window_then_suppresses_until_the_next() {
        let mut r = MonitorRate::default();
        let t0 = 5 * MONITOR_WINDOW_NS;
        let admitted = (0..MONITOR_EVENTS_PER_WINDOW + 50).filter(|_| r.admit(t0)).count() as u64;
        assert_eq!(admitted, MONITOR_EVENTS_PER_WINDOW);
        assert_eq!(r.suppressed, 50);
        // still inside the window
        assert!(!r.admit(t0 + MONITOR_WINDOW_NS - 1));
        assert_eq!(r.suppressed, 51);
        // a new window admits again, and the suppressed count is kept
        assert!(r.admit(t0 + MONITOR_WINDOW_NS));
        assert_eq!(r.emitted, 1);
        assert_eq!(r.suppressed, 51);
    }

    #[test]
    fn rate_first_event_after_load_is_admitted() {
        // window_start 0 and a clock already far past it: a fresh window
        let mut r = MonitorRate::default();
        assert!(r.admit(123_456_789_000));
        assert_eq!(r.window_start, 123_456_789_000);
    }
}
