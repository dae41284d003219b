//! Service load balancing: frontend lookup, round-robin backend choice, and a connection's first
//! packet (backend chosen, both conntrack entries created, destination translated). The cursor is one
//! counter per service shared by all CPUs, so sequential new connections visit backends in a
//! strict rotation whichever CPU they land on (a per-CPU cursor would not). It is advanced with an
//! atomic fetch-and-add (`mem::fetch_add`), so two CPUs choosing at the same
//! moment still take consecutive slots: docker's strict order holds under concurrency.
use aya_ebpf::programs::TcContext;
use netbee_abi::{Backend, BackendKey, CtKey, FrontendKey, Service, ct_flags, drop_reason, stat, svc_flags};

use crate::{
    conntrack,
    deliver::{Via, to_backend},
    maps::{BACKENDS, FRONTENDS, NODE_ADDRS, RR, VIPS, count, count_backend},
    mem, monitor, nat,
    packet::{EthHdr, Ip4, L4},
    verdict::drop,
};

/// Finds the service behind (addr, port, proto): an exact frontend first, then a VIP's any-port
/// frontend (port 0: the port is kept), then the publish on every node address when `addr` is
/// one of this node's addresses.
#[inline(always)]
pub fn frontend(addr: u32, port: u16, proto: u8, from_wire: bool) -> Option<Service> {
    let key = FrontendKey { addr, port, proto, _pad: 0 };
    let svc = match unsafe { FRONTENDS.get(key) } {
        Some(s) => *s,
        None => {
            if unsafe { VIPS.get(addr) }.is_some() {
                *unsafe { FRONTENDS.get(FrontendKey { addr, port: 0, proto, _pad: 0 }) }?
            } else {
                unsafe { NODE_ADDRS.get(addr) }?;
                frontend_wildcard(port, proto)?
            }
        }
    };
    if from_wire && svc.flags & svc_flags::LOCAL_ONLY != 0 {
        return None;
    }
    Some(svc)
}

/// The publish that answers on every node address.
#[inline(always)]
pub fn frontend_wildcard(port: u16, proto: u8) -> Option<Service> {
    unsafe { FRONTENDS.get(FrontendKey { addr: 0, port, proto, _pad: 0 }) }.copied()
}

/// The chosen slot and its backend.
#[inline(always)]
pub fn select_backend(svc: &Service) -> Option<(u32, Backend)> {
    if svc.count == 0 {
        return None;
    }
    let cursor = RR.get_ptr_mut(svc.id)?;
    // SAFETY: a value pointer of the RR array, valid for the whole program run
    let n = unsafe { mem::fetch_add(cursor) };
    // u64 % u32 fits u32
    let slot = (n % u64::from(svc.count)) as u32 + 1;
    unsafe { BACKENDS.get(BackendKey { service: svc.id, slot }) }.map(|b| (slot, *b))
}

/// First packet of a connection to a frontend: pick a backend, remember the choice for both
/// directions, translate, deliver. None when the packet cannot open a flow (a stray TCP segment
/// without SYN): the caller treats it as ordinary traffic.
#[inline(always)]
pub fn new_dnat(ctx: &TcContext, eth: &EthHdr, ip: &Ip4, l4: &L4, key: &CtKey, svc: &Service, via: Via) -> Option<i32> {
    if !conntrack::may_open(ip, l4) {
        return None;
    }
    let Some((slot, mut be)) = select_backend(svc) else {
        return Some(drop(drop_reason::NO_BACKEND));
    };
    let chosen = be;
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
    count_backend(svc.id, &chosen);
    if via == Via::Wire && svc.flags & svc_flags::MESH != 0 {
        count(stat::MESH_RECEIVED);
    }
    monitor::lb_decision(ctx, ip, l4, svc, slot, &be, via);
    if nat::rewrite_dst(ctx, l4, ip.daddr, be.addr, be.port).is_none() {
        return Some(drop(drop_reason::MALFORMED));
    }
    Some(to_backend(ctx, eth, be.addr, via))
}
