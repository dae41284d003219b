//! ARP responder for containers: the node answers for the gateway (with the host veth's MAC) and
//! for other containers of the same network (with their real MAC), so no broadcast ever needs
//! flooding and a container cannot learn or claim an address that is not its own.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use netbee_abi::{Iface, drop_reason, stat};

use crate::{
    maps::{ENDPOINTS, NETWORKS, VIPS, count},
    packet::ETH_HLEN,
    verdict::{PASS, SILENT_DROP, drop},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct ArpHdr {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    oper: u16,
}

/// Sender and target fields of an Ethernet/IPv4 ARP packet (addresses unaligned on the wire).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct ArpAddrs {
    sha: [u8; 6],
    spa: u32,
    tha: [u8; 6],
    tpa: u32,
}

#[inline(always)]
pub fn from_container(ctx: &TcContext, iface: &Iface, ifindex: u32) -> i32 {
    let Ok(hdr) = ctx.load::<ArpHdr>(ETH_HLEN) else {
        return drop(drop_reason::MALFORMED);
    };
    let Ok(addrs) = ctx.load::<ArpAddrs>(ETH_HLEN + 8) else {
        return drop(drop_reason::MALFORMED);
    };
    if hdr.htype != 1u16.to_be() || hdr.ptype != 0x0800u16.to_be() || hdr.hlen != 6 || hdr.plen != 4 {
        return drop(drop_reason::MALFORMED);
    }
    let (sha, spa, tpa) = (addrs.sha, addrs.spa, addrs.tpa);
    if sha != iface.mac || spa != iface.ip {
        return drop(drop_reason::SPOOFED_ARP);
    }
    let oper = u16::from_be(hdr.oper);
    if oper == ARP_REPLY {
        // the container answering the node's own neighbour resolution
        return PASS;
    }
    if oper != ARP_REQUEST {
        return drop(drop_reason::MALFORMED);
    }
    let Some(net) = (unsafe { NETWORKS.get(iface.net_id) }) else {
        return drop(drop_reason::UNKNOWN_IFACE);
    };
    // a service VIP lives "behind the gateway": frames to it reach this veth, where lb translates
    let is_vip = || matches!(unsafe { VIPS.get(tpa) }, Some(n) if *n == iface.net_id);
    let answer = if tpa == net.gateway || is_vip() {
        iface.host_mac
    } else if tpa == spa {
        // gratuitous ARP: nobody else needs to hear it
        return SILENT_DROP;
    } else {
        match unsafe { ENDPOINTS.get(tpa) } {
            Some(ep) if ep.net_id == iface.net_id => ep.mac,
            _ => return drop(drop_reason::NO_SUCH_HOST),
        }
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&sha);
    macs[6..].copy_from_slice(&answer);
    let reply = ArpAddrs { sha: answer, spa: tpa, tha: sha, tpa: spa };
    if ctx.store(0, &macs, 0).is_err()
        || ctx.store(ETH_HLEN + 6, &ARP_REPLY.to_be(), 0).is_err()
        || ctx.store(ETH_HLEN + 8, &reply, 0).is_err()
    {
        return drop(drop_reason::MALFORMED);
    }
    count(stat::ARP_REPLY);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
