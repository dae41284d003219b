//! TC program entry points. Each attaches to one hook and reads top to bottom as the packet's
//! path; the work is done by the concern modules.
//!
//! - `tc_from_container`: ingress of every container's host-side veth (what a container sends).
//! - `tc_uplink_ingress` / `tc_uplink_egress`: the node's uplink (published ports, masquerade).
//! - `tc_overlay_ingress`: the collect_md VXLAN device (packets from other nodes).
use core::mem::MaybeUninit;

use aya_ebpf::{macros::classifier, maps::lpm_trie::Key, programs::TcContext};
use netbee_abi::{
    CtEntry, IPPROTO_UDP, Iface, MacKey, VXLAN_PORT, config, ct_flags, drop_reason, iface_flags, net_flags, stat,
    svc_flags, trace_point,
};

use crate::{
    arp, conntrack,
    deliver::{Via, to_backend, to_endpoint, to_uplink},
    lb,
    maps::{ENDPOINTS, IFACES, NETWORKS, PEER_NODES, SUBNETS, config, count},
    monitor, nat, overlay,
    packet::{ETH_P_ARP, ETH_P_IP, EthHdr, Ip4, L4, eth, flow_key, ifindex, ipv4, l4},
    verdict::{PASS, drop},
};

#[classifier]
pub fn tc_from_container(ctx: TcContext) -> i32 {
    monitor::after(&ctx, trace_point::FROM_CONTAINER, from_container(&ctx))
}

#[classifier]
pub fn tc_uplink_ingress(ctx: TcContext) -> i32 {
    monitor::after(&ctx, trace_point::UPLINK_INGRESS, uplink_ingress(&ctx))
}

#[classifier]
pub fn tc_uplink_egress(ctx: TcContext) -> i32 {
    monitor::after(&ctx, trace_point::UPLINK_EGRESS, uplink_egress(&ctx))
}

#[classifier]
pub fn tc_overlay_ingress(ctx: TcContext) -> i32 {
    monitor::after(&ctx, trace_point::OVERLAY_INGRESS, overlay_ingress(&ctx))
}

#[inline(always)]
fn from_container(ctx: &TcContext) -> i32 {
    count(stat::FROM_CONTAINER);
    let ifx = ifindex(ctx);
    let Some(iface) = (unsafe { IFACES.get(ifx) }).copied() else {
        return drop(drop_reason::UNKNOWN_IFACE);
    };
    let Some(eth) = eth(ctx) else {
        return drop(drop_reason::MALFORMED);
    };
    if eth.src != iface.mac {
        return drop(drop_reason::SPOOFED_MAC);
    }
    match u16::from_be(eth.proto) {
        ETH_P_IP => {}
        ETH_P_ARP => return arp::from_container(ctx, &iface, ifx),
        _ => return drop(drop_reason::UNSUPPORTED_L3),
    }
    let Some(ip) = ipv4(ctx) else {
        return drop(drop_reason::MALFORMED);
    };
    if ip.saddr != iface.ip {
        return drop(drop_reason::SPOOFED_IP);
    }
    // fast path: to another container's own address, from a container that is nobody's backend,
    // no translation can apply (translated flows are keyed by VIPs, node addresses or backends)
    if iface.flags & iface_flags::BACKEND == 0
        && let Some(ep) = unsafe { ENDPOINTS.get(ip.daddr) }
    {
        if ep.net_id != iface.net_id {
            return drop(drop_reason::CROSS_NETWORK);
        }
        return to_endpoint(ctx, &eth, ep);
    }
    if let Some(l4) = l4(ctx, &ip) {
        let key = flow_key(&ip, &l4);
        if let Some(ct) = conntrack::lookup(&key, &l4) {
            return translated(ctx, &eth, &ip, &l4, &ct, Via::Container);
        }
        // spare established plain TCP the frontend lookups
        if conntrack::may_open(&ip, &l4)
            && let Some(svc) = lb::frontend(ip.daddr, l4.dport, ip.proto, true)
            // a VIP answers only inside its own network
            && (svc.flags & svc_flags::VIP == 0 || svc.net_id == iface.net_id)
            && let Some(verdict) = lb::new_dnat(ctx, &eth, &ip, &l4, &key, &svc, Via::Container)
        {
            return verdict;
        }
    }
    forward(ctx, &eth, &ip, &iface)
}

/// Plain (untranslated) traffic from a container.
#[inline(always)]
fn forward(ctx: &TcContext, eth: &EthHdr, ip: &Ip4, iface: &Iface) -> i32 {
    if let Some(ep) = unsafe { ENDPOINTS.get(ip.daddr) } {
        if ep.net_id != iface.net_id {
            return drop(drop_reason::CROSS_NETWORK);
        }
        return to_endpoint(ctx, eth, ep);
    }
    let Some(net) = (unsafe { NETWORKS.get(iface.net_id) }) else {
        return drop(drop_reason::UNKNOWN_IFACE);
    };
    if ip.daddr & net.mask == net.subnet {
        if ip.daddr == net.gateway {
            count(stat::TO_STACK);
            return PASS;
        }
        return drop(drop_reason::NO_SUCH_HOST);
    }
    if SUBNETS.get(Key::new(32, ip.daddr)).is_some() {
        return drop(drop_reason::CROSS_NETWORK);
    }
    if net.flags & net_flags::INTERNAL != 0 {
        return drop(drop_reason::INTERNAL_NETWORK);
    }
    // leaves the node: routed by the stack, masqueraded on the uplink
    count(stat::TO_STACK);
    PASS
}

/// Applies an existing conntrack entry and sends the packet on.
#[inline(always)]
fn translated(ctx: &TcContext, eth: &EthHdr, ip: &Ip4, l4: &L4, ct: &CtEntry, via: Via) -> i32 {
    let f = ct.flags;
    if f & ct_flags::DNAT != 0 {
        count(stat::DNAT_EST);
        if nat::rewrite_dst(ctx, l4, ip.daddr, ct.nat_addr, ct.nat_port).is_none() {
            return drop(drop_reason::MALFORMED);
        }
        return to_backend(ctx, eth, ct.nat_addr, via);
    }
    if f & ct_flags::REVNAT != 0 {
        count(stat::REVNAT);
        if nat::rewrite_src(ctx, l4, ip.saddr, ct.nat_addr, ct.nat_port).is_none() {
            return drop(drop_reason::MALFORMED);
        }
        return match unsafe { ENDPOINTS.get(ip.daddr) } {
            Some(ep) => to_endpoint(ctx, eth, ep),
            None => to_uplink(ctx, ct.nat_addr, ip.daddr),
        };
    }
    if f & ct_flags::SNAT_REV != 0 {
        count(stat::SNAT_REV);
        if nat::rewrite_dst(ctx, l4, ip.daddr, ct.nat_addr, ct.nat_port).is_none() {
            return drop(drop_reason::MALFORMED);
        }
        return to_backend(ctx, eth, ct.nat_addr, via);
    }
    if f & ct_flags::TUNNEL_RETURN != 0 {
        return overlay::return_to_node(ctx, ct);
    }
    // SNAT entries only matter on the uplink's egress
    PASS
}

#[inline(always)]
fn uplink_ingress(ctx: &TcContext) -> i32 {
    count(stat::UPLINK_IN);
    let Some(eth) = eth(ctx) else { return PASS };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return PASS;
    }
    let Some(ip) = ipv4(ctx) else { return PASS };
    if let Some(l4) = l4(ctx, &ip) {
        if ip.proto == IPPROTO_UDP && l4.dport == VXLAN_PORT.to_be() {
            // the overlay's own underlay traffic: neither translated nor publishable (the VXLAN
            // device holds the port), so it skips the conntrack and frontend lookups
            return PASS;
        }
        let key = flow_key(&ip, &l4);
        // A peer's frames to a local task are never translated here (the peer holds the flow's
        // translation), so they skip the conntrack lookup, which would miss on every one of them.
        if config(config::MESH_NATIVE) != 0
            && let Some(peer) = unsafe { PEER_NODES.get(MacKey { mac: eth.src, _pad: [0; 2] }) }
            && let Some(task) = overlay::from_peer_node(&ip, &l4, &key, *peer)
        {
            return to_endpoint(ctx, &eth, task);
        }
        if let Some(ct) = conntrack::lookup(&key, &l4) {
            return translated(ctx, &eth, &ip, &l4, &ct, Via::Wire);
        }
        if let Some(svc) = lb::frontend(ip.daddr, l4.dport, ip.proto, true)
            && svc.flags & svc_flags::VIP == 0
            && let Some(verdict) = lb::new_dnat(ctx, &eth, &ip, &l4, &key, &svc, Via::Wire)
        {
            return verdict;
        }
    }
    // Containers are reachable from outside only through published ports (as with docker 28+):
    // a host that routes a container subnet via this node reaches nothing.
    if SUBNETS.get(Key::new(32, ip.daddr)).is_some() {
        return drop(drop_reason::UNPUBLISHED);
    }
    PASS
}

/// Masquerade: connections that containers open to the outside leave with the node's address
/// and a source port from the SNAT range.
#[inline(always)]
fn uplink_egress(ctx: &TcContext) -> i32 {
    count(stat::UPLINK_OUT);
    let Some(eth) = eth(ctx) else { return PASS };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return PASS;
    }
    let Some(ip) = ipv4(ctx) else { return PASS };
    let node_ip = config(config::UPLINK_IP) as u32;
    if ip.saddr == node_ip {
        // the node's own traffic and replies already translated on a veth: nothing to masquerade
        return PASS;
    }
    // only containers' own connections are masqueraded: anything else leaving (a routing-mesh
    // packet forwarded for an outside client) is spared the conntrack lookup
    if SUBNETS.get(Key::new(32, ip.saddr)).is_none() {
        return PASS;
    }
    let Some(l4) = l4(ctx, &ip) else { return PASS };
    let key = flow_key(&ip, &l4);
    if let Some(ct) = conntrack::lookup(&key, &l4) {
        if ct.flags & ct_flags::SNAT != 0 {
            count(stat::SNAT_EST);
            if nat::rewrite_src(ctx, &l4, ip.saddr, ct.nat_addr, ct.nat_port).is_none() {
                return drop(drop_reason::MALFORMED);
            }
        }
        return PASS;
    }
    let Some(port) = nat::allocate_snat_port(&key, &ip, &l4, node_ip) else {
        return drop(drop_reason::NAT_PORTS_EXHAUSTED);
    };
    count(stat::SNAT_NEW);
    if nat::rewrite_src(ctx, &l4, ip.saddr, node_ip, port).is_none() {
        return drop(drop_reason::MALFORMED);
    }
    PASS
}

#[inline(always)]
fn overlay_ingress(ctx: &TcContext) -> i32 {
    count(stat::DECAP);
    let mut slot = MaybeUninit::uninit();
    let Some(tunnel) = overlay::tunnel_src(ctx, &mut slot) else {
        return drop(drop_reason::MALFORMED);
    };
    let Some(eth) = eth(ctx) else {
        return drop(drop_reason::MALFORMED);
    };
    if u16::from_be(eth.proto) != ETH_P_IP {
        return drop(drop_reason::UNSUPPORTED_L3);
    }
    let Some(ip) = ipv4(ctx) else {
        return drop(drop_reason::MALFORMED);
    };
    let l4 = l4(ctx, &ip);
    if let Some(l4) = &l4
        && let Some(ct) = conntrack::lookup(&flow_key(&ip, l4), l4)
    {
        return translated(ctx, &eth, &ip, l4, &ct, Via::Tunnel);
    }
    let Some(ep) = (unsafe { ENDPOINTS.get(ip.daddr) }).copied() else {
        return drop(drop_reason::NO_SUCH_HOST);
    };
    let vni_ok = matches!(unsafe { NETWORKS.get(ep.net_id) }, Some(n) if n.vni == tunnel.vni());
    if ep.ifindex == 0 || !vni_ok {
        return drop(drop_reason::CROSS_NETWORK);
    }
    // A routing-mesh connection from outside the overlay: its replies must return through the
    // node that received it, which holds the translation.
    if let Some(l4) = &l4
        && conntrack::may_open(&ip, l4)
        && unsafe { ENDPOINTS.get(ip.saddr) }.is_none()
    {
        overlay::bind_return(&flow_key(&ip, l4), &ip, l4, tunnel.node(), tunnel.vni(), false);
    }
    to_endpoint(ctx, &eth, &ep)
}
