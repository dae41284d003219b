//! Address/port rewriting with incremental checksum updates (RFC 1624 via the kernel helpers),
//! and the choice of a masqueraded connection's source port.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use netbee_abi::{CtKey, SNAT_PORT_MAX, SNAT_PORT_MIN, ct_flags, stat};

use crate::{
    conntrack,
    maps::count,
    packet::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, Ip4, L4},
};

#[inline(always)]
fn l4_flags(l4: &L4) -> u64 {
    if l4.udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 }
}

#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    port_off: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    let flags = l4_flags(l4);
    if old_addr != new_addr {
        if l4.pseudo {
            ctx.l4_csum_replace(l4.csum_off, old_addr as u64, new_addr as u64, flags | BPF_F_PSEUDO_HDR as u64 | 4)
                .ok()?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4).ok()?;
        ctx.store(addr_off, &new_addr, 0).ok()?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(l4.csum_off, old_port as u64, new_port as u64, flags | 2).ok()?;
        ctx.store(port_off, &new_port, 0).ok()?;
    }
    Some(())
}

/// DNAT: the packet's destination becomes (addr, port).
#[inline(always)]
pub fn rewrite_dst(ctx: &TcContext, l4: &L4, old: u32, new: u32, new_port: u16) -> Option<()> {
    rewrite(ctx, l4, IP_DST_OFF, l4.dport_off, old, new, l4.dport, new_port)
}

/// SNAT / reverse DNAT: the packet's source becomes (addr, port).
#[inline(always)]
pub fn rewrite_src(ctx: &TcContext, l4: &L4, old: u32, new: u32, new_port: u16) -> Option<()> {
    rewrite(ctx, l4, IP_SRC_OFF, l4.sport_off, old, new, l4.sport, new_port)
}

/// Claims a free (node_ip, port) for the flow by inserting its reply entry with BPF_NOEXIST;
/// the reply key includes the remote end, so ports only collide per destination.
#[inline(always)]
pub fn allocate_snat_port(key: &CtKey, ip: &Ip4, l4: &L4, node_ip: u32) -> Option<u16> {
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
