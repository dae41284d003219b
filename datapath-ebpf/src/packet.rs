//! Header parsing. The Ethernet and IPv4 headers (fixed offsets) are read straight from the skb's
//! linear data, where they are for nearly every packet, else with bpf_skb_load_bytes; transport
//! headers (offset depends on IP options, which the verifier cannot bound through LLVM's
//! rewrites) always with one bpf_skb_load_bytes. No packet needs a second code path above this
//! module.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use netbee_abi::{CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// What the datapath needs to know about an IPv4 packet.
#[derive(Clone, Copy)]
pub struct Ip4 {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// True for any fragment (first or later): it cannot be translated port-wise.
    pub fragment: bool,
}

/// Transport view used for conntrack and NAT.
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// Offsets of the source/destination "port" fields (the echo id for ICMP) and the checksum.
    pub sport_off: usize,
    pub dport_off: usize,
    pub csum_off: usize,
    /// Checksum covers the pseudo header (TCP/UDP, not ICMP).
    pub pseudo: bool,
    /// UDP with checksum 0 must stay 0 (BPF_F_MARK_MANGLED_0).
    pub udp: bool,
}

/// Reads a `T` at the constant offset `OFF`. A helper call costs about as much as the rest of
/// the plain forwarding path, so the direct read comes first.
#[inline(always)]
fn read_fixed<T: Copy, const OFF: usize>(ctx: &TcContext) -> Option<T> {
    let start = ctx.data();
    if start + OFF + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the range was checked against data_end just above (the verifier checks it too)
        Some(unsafe { core::ptr::read_unaligned((start + OFF) as *const T) })
    } else {
        ctx.load::<T>(OFF).ok()
    }
}

#[inline(always)]
pub fn eth(ctx: &TcContext) -> Option<EthHdr> {
    read_fixed::<EthHdr, 0>(ctx)
}

#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ip4> {
    let h: Ipv4Hdr = read_fixed::<Ipv4Hdr, ETH_HLEN>(ctx)?;
    let ihl = ((h.vihl & 0x0f) as usize) * 4;
    if h.vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // MF flag or a non-zero offset
    let fragment = u16::from_be(h.frag) & 0x3fff != 0;
    Some(Ip4 { saddr: h.saddr, daddr: h.daddr, proto: h.proto, l4_off: ETH_HLEN + (ihl & 0x3c), fragment })
}

#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ip4) -> Option<L4> {
    if ip.fragment {
        return None;
    }
    let off = ip.l4_off;
    match ip.proto {
        IPPROTO_TCP => {
            // ports and flags in one helper call
            let h: [u8; 14] = ctx.load(off).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags: h[13],
                sport_off: off,
                dport_off: off + 2,
                csum_off: off + 16,
                pseudo: true,
                udp: false,
            })
        }
        IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(off).ok()?;
            Some(L4 {
                sport: ports[0],
                dport: ports[1],
                tcp_flags: 0,
                sport_off: off,
                dport_off: off + 2,
                csum_off: off + 6,
                pseudo: true,
                udp: true,
            })
        }
        IPPROTO_ICMP => {
            let h: [u8; 6] = ctx.load(off).ok()?;
            let (ty, id) = (h[0], u16::from_ne_bytes([h[4], h[5]]));
            // Echo requests key the id as source "port", replies as destination "port", so the
            // two directions of one ping mirror each other like a TCP flow's.
            let (sport, dport, sport_off, dport_off) = match ty {
                ICMP_ECHO_REQUEST => (id, 0, off + 4, off + 6),
                ICMP_ECHO_REPLY => (0, id, off + 6, off + 4),
                _ => return None,
            };
            Some(L4 { sport, dport, tcp_flags: 0, sport_off, dport_off, csum_off: off + 2, pseudo: false, udp: false })
        }
        _ => None,
    }
}

/// Rewrites the frame's destination and source MACs (one store).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).ok()
}

#[inline(always)]
pub fn flow_key(ip: &Ip4, l4: &L4) -> CtKey {
    CtKey::new(ip.saddr, ip.daddr, l4.sport, l4.dport, ip.proto)
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}
