//! Program entry points. Each attaches to one hook and reads top to bottom as the packet's path.
//!
//! - `tc_from_container`: ingress of every container's host-side veth (what a container sends).
//! - `tc_uplink_ingress` / `tc_uplink_egress`: the node's uplink (published ports, masquerade).
//! - `tc_overlay_ingress`: the collect_md VXLAN device (packets from other nodes).
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_tunnel_key},
    helpers::bpf_skb_get_tunnel_key,
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netbee_abi::{
    CtEntry, CtKey, IPPROTO_UDP, Iface, MacKey, SNAT_PORT_MAX, SNAT_PORT_MIN, Service, VXLAN_PORT, config, ct_flags,
    drop_reason, iface_flags, net_flags, stat, svc_flags,
};

use crate::{
    arp, conntrack,
    deliver::{drop, encap, to_endpoint, to_endpoint_from_wire, to_node, to_uplink},
    lb,
    maps::{ENDPOINTS, IFACES, NETWORKS, PEER_NODES, SUBNETS, config, count},
    mem::zeroed_in,
    nat,
    packet::{ETH_P_ARP, ETH_P_IP, EthHdr, Ip4, L4, eth, flow_key, ifindex, ipv4, l4},
};

const PASS: i32 = TC_ACT_OK;

#[classifier]
pub fn tc_from_container(ctx: TcContext) -> i32 {
    from_container(&ctx)
}

#[classifier]
pub fn tc_uplink_ingress(ctx: TcContext) -> i32 {
    uplink_ingress(&ctx)
}

#[classifier]
pub fn tc_uplink_egress(ctx: TcContext) -> i32 {
    uplink_egress(&ctx)
}

#[classifier]
pub fn tc_overlay_ingress(ctx: TcContext) -> i32 {
    overlay_ingress(&ctx)
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
        // only a SYN (or a datagram) can open a translated flow: spare established plain TCP the
        // frontend lookups
        let opens = ip.proto != netbee_abi::IPPROTO_TCP || conntrack::is_syn(&l4);
        if opens && let Some(svc) = lb::frontend(ip.daddr, l4.dport, ip.proto, true) {
            // a VIP answers only inside its own network
            if (svc.flags & svc_flags::VIP == 0 || svc.net_id == iface.net_id)
                && let Some(verdict) = new_dnat(ctx, &eth, &ip, &l4, &key, &svc, Via::Container)
            {
                return verdict;
            }
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

/// Which hook a packet entered through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Container,
    Wire,
    Tunnel,
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
        count(stat::TUNNEL_RETURN);
        if f & ct_flags::DIRECT != 0 {
            return to_node(ctx, ct.tunnel_node, ct.vni, None);
        }
        return encap(ctx, ct.tunnel_node, ct.vni, None);
    }
    // SNAT entries only matter on the uplink's egress
    PASS
}

#[inline(always)]
fn to_backend(ctx: &TcContext, eth: &EthHdr, addr: u32, via: Via) -> i32 {
    match unsafe { ENDPOINTS.get(addr) } {
        Some(ep) if via == Via::Wire => to_endpoint_from_wire(ctx, eth, ep),
        Some(ep) => to_endpoint(ctx, eth, ep),
        None => drop(drop_reason::NO_BACKEND),
    }
}

/// First packet of a connection to a frontend: pick a backend, remember the choice for both
/// directions, translate, deliver. None when the packet cannot open a flow (a stray TCP segment
/// without SYN): the caller treats it as ordinary traffic.
#[inline(always)]
fn new_dnat(ctx: &TcContext, eth: &EthHdr, ip: &Ip4, l4: &L4, key: &CtKey, svc: &Service, via: Via) -> Option<i32> {
    if ip.proto == netbee_abi::IPPROTO_TCP && !conntrack::is_syn(l4) {
        return None;
    }
    let Some(mut be) = lb::select_backend(svc) else {
        return Some(drop(drop_reason::NO_BACKEND));
    };
    if be.port == 0 {
        // a VIP's any-port frontend keeps the port the client asked for
        be.port = l4.dport;
    }
    let fwd = conntrack::new_entry(be.addr, be.port, ct_flags::DNAT, l4, ip.proto);
    let rev_key = conntrack::reply_key(key, be.addr, be.port);
    let rev = conntrack::new_entry(ip.daddr, l4.dport, ct_flags::REVNAT, l4, ip.proto);
    if conntrack::create(key, &fwd, &rev_key, &rev).is_none() {
        return Some(drop(drop_reason::CT_INSERT_FAILED));
    }
    count(stat::DNAT_NEW);
    if nat::rewrite_dst(ctx, l4, ip.daddr, be.addr, be.port).is_none() {
        return Some(drop(drop_reason::MALFORMED));
    }
    Some(to_backend(ctx, eth, be.addr, via))
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
            && let Some(verdict) = from_peer_node(ctx, &eth, &ip, &l4, &key, *peer)
        {
            return verdict;
        }
        if let Some(ct) = conntrack::lookup(&key, &l4) {
            return translated(ctx, &eth, &ip, &l4, &ct, Via::Wire);
        }
        if let Some(svc) = lb::frontend(ip.daddr, l4.dport, ip.proto, true)
            && svc.flags & svc_flags::VIP == 0
            && let Some(verdict) = new_dnat(ctx, &eth, &ip, &l4, &key, &svc, Via::Wire)
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

/// A routing-mesh packet that a peer node balanced to a task here and sent natively (see
/// `deliver::to_node`): accepted only for a local service task on an overlay, as the tunnel would
/// have delivered it, and the flow's replies are sent back to that node, which holds the
/// translation. None: not such a packet.
#[inline(always)]
fn from_peer_node(ctx: &TcContext, eth: &EthHdr, ip: &Ip4, l4: &L4, key: &CtKey, peer: u32) -> Option<i32> {
    let ep = unsafe { ENDPOINTS.get(ip.daddr) }?;
    if ep.ifindex == 0 || unsafe { IFACES.get(ep.ifindex) }?.flags & iface_flags::BACKEND == 0 {
        return None;
    }
    let net = unsafe { NETWORKS.get(ep.net_id) }?;
    if net.flags & net_flags::OVERLAY == 0 {
        return None;
    }
    if ip.proto != netbee_abi::IPPROTO_TCP || conntrack::is_syn(l4) {
        let rev_key = conntrack::reply_key(key, ip.daddr, l4.dport);
        let mut e = conntrack::new_entry(0, 0, ct_flags::TUNNEL_RETURN | ct_flags::DIRECT, l4, ip.proto);
        e.tunnel_node = peer;
        e.vni = net.vni;
        if conntrack::put(&rev_key, &e).is_some() {
            count(stat::CT_CREATED);
        }
    }
    count(stat::DIRECT_ROUTE);
    Some(to_endpoint(ctx, eth, ep))
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
    let Some(port) = allocate_snat_port(&key, &ip, &l4, node_ip) else {
        return drop(drop_reason::NAT_PORTS_EXHAUSTED);
    };
    count(stat::SNAT_NEW);
    if nat::rewrite_src(ctx, &l4, ip.saddr, node_ip, port).is_none() {
        return drop(drop_reason::MALFORMED);
    }
    PASS
}

/// Claims a free (node_ip, port) for the flow by inserting its reply entry with BPF_NOEXIST;
/// the reply key includes the remote end, so ports only collide per destination.
#[inline(always)]
fn allocate_snat_port(key: &CtKey, ip: &Ip4, l4: &L4, node_ip: u32) -> Option<u16> {
    let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let seed = key.saddr ^ key.daddr.rotate_left(7) ^ ((key.sport as u32) << 16 | key.dport as u32);
    let rev = conntrack::new_entry(ip.saddr, l4.sport, ct_flags::SNAT_REV, l4, ip.proto);
    for i in 0..16u32 {
        let port = (SNAT_PORT_MIN as u32 + seed.wrapping_add(i.wrapping_mul(4099)) % range) as u16;
        let port = port.to_be();
        let rev_key = conntrack::reply_key(key, key.daddr, key.dport);
        let rev_key = CtKey { daddr: node_ip, dport: port, ..rev_key };
        if conntrack::claim(&rev_key, &rev) {
            let fwd = conntrack::new_entry(node_ip, port, ct_flags::SNAT, l4, ip.proto);
            if !conntrack::insert(key, &fwd) {
                conntrack::remove(&rev_key);
                return None;
            }
            count(stat::CT_CREATED);
            count(stat::CT_CREATED);
            return Some(port);
        }
    }
    None
}

#[inline(always)]
fn overlay_ingress(ctx: &TcContext) -> i32 {
    count(stat::DECAP);
    let mut slot = MaybeUninit::uninit();
    let tk: &mut bpf_tunnel_key = zeroed_in(&mut slot);
    let rc = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, tk, size_of::<bpf_tunnel_key>() as u32, 0) };
    if rc != 0 {
        return drop(drop_reason::MALFORMED);
    }
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
    if let Some(l4) = &l4 {
        let key = flow_key(&ip, l4);
        if let Some(ct) = conntrack::lookup(&key, l4) {
            return translated(ctx, &eth, &ip, l4, &ct, Via::Tunnel);
        }
    }
    let Some(ep) = (unsafe { ENDPOINTS.get(ip.daddr) }).copied() else {
        return drop(drop_reason::NO_SUCH_HOST);
    };
    let vni_ok = matches!(unsafe { NETWORKS.get(ep.net_id) }, Some(n) if n.vni == tk.tunnel_id);
    if ep.ifindex == 0 || !vni_ok {
        return drop(drop_reason::CROSS_NETWORK);
    }
    if let Some(l4) = &l4 {
        // A routing-mesh connection from outside the overlay: its replies must return through
        // the node that received it, which holds the translation.
        let opens = ip.proto != netbee_abi::IPPROTO_TCP || conntrack::is_syn(l4);
        if opens && unsafe { ENDPOINTS.get(ip.saddr) }.is_none() {
            let key = flow_key(&ip, l4);
            let rev_key = conntrack::reply_key(&key, ip.daddr, l4.dport);
            let mut e = conntrack::new_entry(0, 0, ct_flags::TUNNEL_RETURN, l4, ip.proto);
            e.tunnel_node = unsafe { tk.__bindgen_anon_1.remote_ipv4 };
            e.vni = tk.tunnel_id;
            if conntrack::put(&rev_key, &e).is_some() {
                count(stat::CT_CREATED);
            }
        }
    }
    to_endpoint(ctx, &eth, &ep)
}
