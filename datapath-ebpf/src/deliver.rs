//! Where a packet goes once its final destination is known: straight into a local container
//! (bpf_redirect_peer, skipping the host-side veth's backlog), to a container on another node
//! (see `overlay`), or out of the uplink after a FIB lookup. The Linux bridge and netfilter are
//! never on these paths.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_redir_neigh},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netbee_abi::{Endpoint, drop_reason, stat};

use crate::{
    fib,
    maps::{ENDPOINTS, NETWORKS, count},
    mem::zeroed_in,
    overlay,
    packet::{EthHdr, set_macs},
    verdict::{PASS, drop, redirected},
};

/// Which hook a packet entered through.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Container,
    Wire,
    Tunnel,
}

/// Delivers to a container interface, local or (through the tunnel) on another node. `eth` is
/// the frame's header as it arrived.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, eth: &EthHdr, ep: &Endpoint) -> i32 {
    if ep.ifindex == 0 {
        return match unsafe { NETWORKS.get(ep.net_id) } {
            Some(n) => overlay::encap(ctx, ep.node_ip, n.vni, inner_dst_mac(eth, ep)),
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
        Some(n) => overlay::to_node(ctx, ep.node_ip, n.vni, inner_dst_mac(eth, ep)),
        None => drop(drop_reason::NO_SUCH_HOST),
    }
}

/// Delivers a translated packet to the backend (or client) at `addr`.
#[inline(always)]
pub fn to_backend(ctx: &TcContext, eth: &EthHdr, addr: u32, via: Via) -> i32 {
    match unsafe { ENDPOINTS.get(addr) } {
        Some(ep) if via == Via::Wire => to_endpoint_from_wire(ctx, eth, ep),
        Some(ep) => to_endpoint(ctx, eth, ep),
        None => drop(drop_reason::NO_BACKEND),
    }
}

#[inline(always)]
fn inner_dst_mac<'a>(eth: &EthHdr, ep: &'a Endpoint) -> Option<&'a [u8; 6]> {
    if eth.dst == ep.mac { None } else { Some(&ep.mac) }
}

/// Routes a packet leaving the node (a reply to an outside client) without the stack's forwarding
/// path. Anything the FIB cannot resolve on its own is handed to the stack unchanged.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    let mut fib = MaybeUninit::uninit();
    let (rc, p) = fib::lookup(ctx, saddr, daddr, &mut fib);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if set_macs(ctx, &p.dmac, &p.smac).is_none() {
            return drop(drop_reason::MALFORMED);
        }
        count(stat::REDIRECT_UPLINK);
        redirected(unsafe { bpf_redirect(p.ifindex, 0) })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        let mut slot = MaybeUninit::uninit();
        let nh: &mut bpf_redir_neigh = zeroed_in(&mut slot);
        nh.nh_family = fib::AF_INET as u32;
        nh.__bindgen_anon_1.ipv4_nh = unsafe { p.__bindgen_anon_4.ipv4_dst };
        count(stat::REDIRECT_UPLINK);
        redirected(unsafe { bpf_redirect_neigh(p.ifindex, nh, size_of::<bpf_redir_neigh>() as i32, 0) })
    } else {
        count(stat::TO_STACK);
        PASS
    }
}
