//! Container traffic between nodes. Through the collect_md VXLAN device: `encap` sets the tunnel
//! key and redirects to it, `tunnel_src` reads the key of a decapsulated packet. Or natively, for
//! the routing mesh between netbee nodes on one L2 segment: `to_node` readdresses the frame to the
//! peer, `from_peer_node` accepts it there. Either way a routing-mesh connection's replies must
//! return through the node that balanced it, which holds the translation: `bind_return` records
//! that node in a tunnel-return conntrack entry and `return_to_node` sends the replies back.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{BPF_F_ZERO_CSUM_TX, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use netbee_abi::{CtEntry, CtKey, Endpoint, MacKey, config, ct_flags, drop_reason, iface_flags, net_flags, stat};

use crate::{
    conntrack, fib,
    maps::{ENDPOINTS, IFACES, NETWORKS, PEER_NODES, config, count},
    mem::zeroed_in,
    packet::{Ip4, L4, set_macs},
    verdict::{drop, redirected},
};

/// The tunnel a decapsulated packet came through (its key, read into the caller's stack slot:
/// fields are loaded only where used).
pub struct TunnelSrc<'a>(&'a bpf_tunnel_key);

impl TunnelSrc<'_> {
    /// Underlay IPv4 of the sending node, host order.
    #[inline(always)]
    pub fn node(&self) -> u32 {
        // SAFETY: the helper fills the IPv4 member of this union for an IPv4 underlay
        unsafe { self.0.__bindgen_anon_1.remote_ipv4 }
    }

    #[inline(always)]
    pub fn vni(&self) -> u32 {
        self.0.tunnel_id
    }
}

/// Reads the tunnel key of a packet the VXLAN device decapsulated; None if it has none.
#[inline(always)]
pub fn tunnel_src<'a>(ctx: &TcContext, slot: &'a mut MaybeUninit<bpf_tunnel_key>) -> Option<TunnelSrc<'a>> {
    let tk: &mut bpf_tunnel_key = zeroed_in(slot);
    let rc = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, tk, size_of::<bpf_tunnel_key>() as u32, 0) };
    if rc != 0 {
        return None;
    }
    Some(TunnelSrc(tk))
}

/// Sends the packet to another node through the collect_md VXLAN device.
#[inline(always)]
pub fn encap(ctx: &TcContext, node_ip: u32, vni: u32, dst_mac: Option<&[u8; 6]>) -> i32 {
    let vx = config(config::VXLAN_IFINDEX) as u32;
    if vx == 0 || node_ip == 0 {
        return drop(drop_reason::NO_SUCH_HOST);
    }
    if let Some(mac) = dst_mac
        && ctx.store(0, mac, 0).is_err()
    {
        return drop(drop_reason::MALFORMED);
    }
    let mut slot = MaybeUninit::uninit();
    let key: &mut bpf_tunnel_key = zeroed_in(&mut slot);
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = node_ip;
    key.tunnel_ttl = 64;
    // No outer UDP checksum, as the kernel's VXLAN devices (docker's overlay) send over IPv4: the
    // inner packet carries its own, and the helper's default would have the tunnel compute and
    // the peer verify a second one for every segment.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, key, size_of::<bpf_tunnel_key>() as u32, BPF_F_ZERO_CSUM_TX as u64)
    };
    if rc != 0 {
        return drop(drop_reason::REDIRECT_FAILED);
    }
    count(stat::ENCAP);
    redirected(unsafe { bpf_redirect(vx, 0) })
}

/// Sends the packet to another node (`node_ip` host order): natively when that node is an
/// L2-adjacent netbee peer (it accepts such frames only from the MACs in its own PEER_NODES),
/// through the tunnel otherwise.
#[inline(always)]
pub fn to_node(ctx: &TcContext, node_ip: u32, vni: u32, inner_dst: Option<&[u8; 6]>) -> i32 {
    if config(config::MESH_NATIVE) == 0 {
        return encap(ctx, node_ip, vni, inner_dst);
    }
    let mut fib = MaybeUninit::uninit();
    let Some(p) = adjacent_peer(ctx, node_ip, &mut fib) else {
        return encap(ctx, node_ip, vni, inner_dst);
    };
    if set_macs(ctx, &p.dmac, &p.smac).is_none() {
        return drop(drop_reason::MALFORMED);
    }
    count(stat::DIRECT_ROUTE);
    redirected(unsafe { bpf_redirect(p.ifindex, 0) })
}

/// The uplink next hop for `node_ip` when it is the node itself (on-link, neighbour resolved)
/// and its MAC is the one that node registered.
#[inline(always)]
fn adjacent_peer<'a>(ctx: &TcContext, node_ip: u32, fib: &'a mut MaybeUninit<FibParams>) -> Option<&'a FibParams> {
    let daddr = node_ip.to_be();
    let (rc, p) = fib::lookup(ctx, config(config::UPLINK_IP) as u32, daddr, fib);
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64
        || unsafe { p.__bindgen_anon_4.ipv4_dst } != daddr
        || p.ifindex as u64 != config(config::UPLINK_IFINDEX)
    {
        return None;
    }
    match unsafe { PEER_NODES.get(MacKey { mac: p.dmac, _pad: [0; 2] }) } {
        Some(ip) if *ip == node_ip => Some(p),
        _ => None,
    }
}

/// A routing-mesh packet that a peer node (`peer`, underlay IPv4 host order) balanced to a task
/// here and sent natively (see `to_node`): accepted only for a local service task on an overlay,
/// as the tunnel would have delivered it, and the flow's replies are bound to go back to that
/// node. Returns the task to deliver to; None: not such a packet.
#[inline(always)]
pub fn from_peer_node(ip: &Ip4, l4: &L4, key: &CtKey, peer: u32) -> Option<&'static Endpoint> {
    let ep = unsafe { ENDPOINTS.get(ip.daddr) }?;
    if ep.ifindex == 0 || unsafe { IFACES.get(ep.ifindex) }?.flags & iface_flags::BACKEND == 0 {
        return None;
    }
    let net = unsafe { NETWORKS.get(ep.net_id) }?;
    if net.flags & net_flags::OVERLAY == 0 {
        return None;
    }
    if conntrack::may_open(ip, l4) {
        bind_return(key, ip, l4, peer, net.vni, true);
    }
    count(stat::DIRECT_ROUTE);
    Some(ep)
}

/// Binds the replies of the flow `key` (which entered from another node, not yet translated
/// here) to return to that node (`node` underlay IPv4 host order, on `vni`): natively when
/// `direct`, else through the tunnel.
#[inline(always)]
pub fn bind_return(key: &CtKey, ip: &Ip4, l4: &L4, node: u32, vni: u32, direct: bool) {
    let rev_key = conntrack::reply_key(key, ip.daddr, l4.dport);
    let flags = if direct { ct_flags::TUNNEL_RETURN | ct_flags::DIRECT } else { ct_flags::TUNNEL_RETURN };
    let mut e = conntrack::new_entry(0, 0, flags, l4, ip.proto);
    e.tunnel_node = node;
    e.vni = vni;
    if conntrack::put(&rev_key, &e).is_some() {
        count(stat::CT_CREATED);
    }
}

/// Sends a reply of a flow bound by `bind_return` back to the node that holds its translation.
#[inline(always)]
pub fn return_to_node(ctx: &TcContext, ct: &CtEntry) -> i32 {
    count(stat::TUNNEL_RETURN);
    if ct.flags & ct_flags::DIRECT != 0 {
        return to_node(ctx, ct.tunnel_node, ct.vni, None);
    }
    encap(ctx, ct.tunnel_node, ct.vni, None)
}
