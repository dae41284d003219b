//! Header parsing. Headers are read with bpf_skb_load_bytes, which works whatever part of the skb
//! is linear, so a GSO packet or one with IP options never needs a second code path.
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

#[inline(always)]
pub fn eth(ctx: &TcContext) -> Option<EthHdr> {
    ctx.load::<EthHdr>(0).ok()
}

#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ip4> {
    let h: Ipv4Hdr = ctx.load(ETH_HLEN).ok()?;
    let ihl = ((h.vihl & 0x0f) as usize) * 4;
    if h.vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // MF flag or a non-zero offset
    let fragment = u16::from_be(h.frag) & 0x3fff != 0;
    Some(Ip4 {
        saddr: h.saddr,
        daddr: h.daddr,
        proto: h.proto,
        l4_off: ETH_HLEN + (ihl & 0x3c),
        fragment,
    })
}

#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ip4) -> Option<L4> {
    if ip.fragment {
        return None;
    }
    let off = ip.l4_off;
    match ip.proto {
        IPPROTO_TCP => {
            let ports: [u16; 2] = ctx.load(off).ok()?;
            let flags: u8 = ctx.load(off + 13).ok()?;
            Some(L4 {
                sport: ports[0],
                dport: ports[1],
                tcp_flags: flags,
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
            let ty: u8 = ctx.load(off).ok()?;
            let id: u16 = ctx.load(off + 4).ok()?;
            // Echo requests key the id as source "port", replies as destination "port", so the
            // two directions of one ping mirror each other like a TCP flow's.
            let (sport, dport, sport_off, dport_off) = match ty {
                ICMP_ECHO_REQUEST => (id, 0, off + 4, off + 6),
                ICMP_ECHO_REPLY => (0, id, off + 6, off + 4),
                _ => return None,
            };
            Some(L4 {
                sport,
                dport,
                tcp_flags: 0,
                sport_off,
                dport_off,
                csum_off: off + 2,
                pseudo: false,
                udp: false,
            })
        }
        _ => None,
    }
}

#[inline(always)]
pub fn flow_key(ip: &Ip4, l4: &L4) -> CtKey {
    CtKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto: ip.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}
