//! Where a packet goes once its final destination is known: straight into a local container
//! (bpf_redirect_peer, skipping the host-side veth's backlog), through the collect_md VXLAN device
//! to another node, natively to an L2-adjacent node (routing mesh), or out of the uplink after a
//! FIB lookup. The Linux bridge and netfilter are never on these paths.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_ZERO_CSUM_TX, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_fib_lookup as FibParams, bpf_redir_neigh, bpf_tunnel_key,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use netbee_abi::{Endpoint, MacKey, config, drop_reason, stat};

use crate::{
    maps::{NETWORKS, PEER_NODES, config, count, count_drop},
    mem::zeroed_in,
    packet::{EthHdr, ifindex},
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn drop(reason: u32) -> i32 {
    count_drop(reason);
    TC_ACT_SHOT
}

#[inline(always)]
fn redirected(ret: i64) -> i32 {
    if ret == TC_ACT_REDIRECT as i64 { ret as i32 } else { drop(drop_reason::REDIRECT_FAILED) }
}

#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).ok()
}

/// Delivers to a container interface, local or (through the tunnel) on another node. `eth` is
/// the frame's header as it arrived.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, eth: &EthHdr, ep: &Endpoint) -> i32 {
    if ep.ifindex == 0 {
        return match unsafe { NETWORKS.get(ep.net_id) } {
            Some(n) => encap(ctx, ep.node_ip, n.vni, inner_dst_mac(eth, ep)),
            None => drop(drop_reason::NO_SUCH_HOST),
        };
    }
    // A frame already addressed to the container (same network, or decapsulated) goes in as it
    // is, like a bridge forwards it: writing into a TCP segment that the sender still holds for
    // retransmission would make the kernel copy its headers first (skb_ensure_writable).
    if eth.dst != ep.mac && set_macs(ctx, &ep.mac, &ep.host_mac).is_none() {
        return drop(drop_reason::MALFORMED);
    }
    count(stat::REDIRECT_LOCAL);
    redirected(unsafe { bpf_redirect_peer(ep.ifindex, 0) })
}

/// Delivers a routing-mesh packet (it came from the wire) to a backend task: a remote one is
/// reached natively when its node shares the uplink's L2 segment, like the underlay routes the
/// baseline's pod subnets, instead of paying an encapsulation on both nodes.
#[inline(always)]
pub fn to_endpoint_from_wire(ctx: &TcContext, eth: &EthHdr, ep: &Endpoint) -> i32 {
    if ep.ifindex != 0 {
        return to_endpoint(ctx, eth, ep);
    }
    match unsafe { NETWORKS.get(ep.net_id) } {
        Some(n) => to_node(ctx, ep.node_ip, n.vni, inner_dst_mac(eth, ep)),
        None => drop(drop_reason::NO_SUCH_HOST),
    }
}

#[inline(always)]
fn inner_dst_mac<'a>(eth: &EthHdr, ep: &'a Endpoint) -> Option<&'a [u8; 6]> {
    if eth.dst == ep.mac { None } else { Some(&ep.mac) }
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
    let (rc, p) = fib_lookup(ctx, config(config::UPLINK_IP) as u32, daddr, fib);
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

/// Routes a packet leaving the node (a reply to an outside client) without the stack's forwarding
/// path. Anything the FIB cannot resolve on its own is handed to the stack unchanged.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    let mut fib = MaybeUninit::uninit();
    let (rc, p) = fib_lookup(ctx, saddr, daddr, &mut fib);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if set_macs(ctx, &p.dmac, &p.smac).is_none() {
            return drop(drop_reason::MALFORMED);
        }
        count(stat::REDIRECT_UPLINK);
        redirected(unsafe { bpf_redirect(p.ifindex, 0) })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        let mut slot = MaybeUninit::uninit();
        let nh: &mut bpf_redir_neigh = zeroed_in(&mut slot);
        nh.nh_family = AF_INET as u32;
        nh.__bindgen_anon_1.ipv4_nh = unsafe { p.__bindgen_anon_4.ipv4_dst };
        count(stat::REDIRECT_UPLINK);
        redirected(unsafe { bpf_redirect_neigh(p.ifindex, nh, size_of::<bpf_redir_neigh>() as i32, 0) })
    } else {
        count(stat::TO_STACK);
        TC_ACT_OK
    }
}

/// FIB lookup as if the packet were forwarded from its ingress device; addresses in network
/// order. On success `ipv4_dst` holds the next hop (the gateway, or `daddr` when on-link).
#[inline(always)]
fn fib_lookup<'a>(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    fib: &'a mut MaybeUninit<FibParams>,
) -> (i64, &'a FibParams) {
    let p: &mut FibParams = zeroed_in(fib);
    p.family = AF_INET;
    // tot_len 0: let the kernel check the MTU against the skb itself (GSO-aware)
    p.__bindgen_anon_1.tot_len = 0;
    p.ifindex = ifindex(ctx);
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    (rc, p)
}
