//! The packet generator of `forwarding-rate`: minimum-size Ethernet frames (UDP datagrams or TCP
//! SYNs) written straight onto an interface with an AF_PACKET socket, as fast as one pinned core
//! can, for a fixed time.
//!
//! Why not trafgen (netsniff-ng 0.6.8, Debian's): it exits ("Flushing TX_RING failed: Resource
//! temporarily unavailable") on the first transmit that finds the receiving CPU's backlog full —
//! which is the saturation this benchmark is after — and its `-A` (do not tune the machine-wide
//! socket memory sysctls) is refused by its own option parser. This sender keeps going past a
//! refused batch and touches no sysctl.
//!
//! Frame building and the flow patterns are pure functions (unit-tested); [`blast`] is the
//! syscall loop.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Every frame is the Ethernet minimum (60 bytes without the FCS), so pps is what is measured.
pub const FRAME_LEN: usize = 60;
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_PAYLOAD: usize = FRAME_LEN - ETH_LEN - IP_LEN - 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    /// TCP segments with only SYN set: each one a connection attempt.
    Syn,
}

/// Which 5-tuples the frames carry.
#[derive(Clone, Copy, Debug)]
pub enum Flows {
    /// Every frame a 5-tuple not seen for a long time: the source port walks 1024..=65535 and,
    /// each time it wraps, the source address moves to the next of `sources` addresses from
    /// `first_source` — 64,512 × `sources` distinct flows before any repeats, so with 64 sources
    /// a conntrack table sees only new flows for 4 million packets.
    New { first_source: Ipv4Addr, sources: u32 },
    /// One 5-tuple for every frame (an established flow once the first one passed).
    Fixed { source: Ipv4Addr, sport: u16 },
}

const FIRST_SPORT: u32 = 1024;
const SPORTS: u32 = 65536 - FIRST_SPORT;

impl Flows {
    /// Source address and port of the `i`-th frame.
    pub fn source(&self, i: u64) -> (Ipv4Addr, u16) {
        match *self {
            Flows::New { first_source, sources } => {
                let port = FIRST_SPORT + (i % u64::from(SPORTS)) as u32;
                let host = ((i / u64::from(SPORTS)) % u64::from(sources.max(1))) as u32;
                (Ipv4Addr::from(u32::from(first_source).wrapping_add(host)), port as u16)
            }
            Flows::Fixed { source, sport } => (source, sport),
        }
    }
}

/// What [`blast`] sends: frames from `src_mac` to `dst_mac` (the next hop on the wire) carrying
/// `proto` to `dst:dport`, sources from `flows`.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    pub proto: Proto,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub flows: Flows,
}

/// RFC 1071 one's-complement sum of `data` (an odd tail byte padded with zero), not inverted.
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(ones_sum(0, data))
}

/// Writes the `i`-th frame of `s` into `f`.
pub fn write_frame(f: &mut [u8; FRAME_LEN], s: &Stream, i: u64) {
    let (src, sport) = s.flows.source(i);
    f.fill(0);
    f[0..6].copy_from_slice(&s.dst_mac);
    f[6..12].copy_from_slice(&s.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let l4_len = match s.proto {
        Proto::Udp => 8 + UDP_PAYLOAD,
        Proto::Syn => 20,
    };
    let ip = &mut f[ETH_LEN..ETH_LEN + IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_LEN + l4_len) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = match s.proto {
        Proto::Udp => 17,
        Proto::Syn => 6,
    };
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&s.dst.octets());
    let ip_csum = checksum(ip);
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());

    let l4 = &mut f[ETH_LEN + IP_LEN..ETH_LEN + IP_LEN + l4_len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&s.dport.to_be_bytes());
    match s.proto {
        // UDP checksum 0 = "none" (allowed over IPv4), as many generators send.
        Proto::Udp => l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes()),
        Proto::Syn => {
            l4[4..8].copy_from_slice(&(i as u32).wrapping_mul(2_654_435_761).to_be_bytes()); // ISN
            l4[12] = 5 << 4; // data offset: 20 bytes, no options
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&src.octets());
            pseudo[4..8].copy_from_slice(&s.dst.octets());
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
            let csum = fold(ones_sum(ones_sum(0, &pseudo), l4));
            l4[16..18].copy_from_slice(&csum.to_be_bytes());
        }
    }
}

/// What one [`blast`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Blasted {
    /// Frames handed to the kernel (accepted or refused).
    pub attempted: u64,
    /// Frames the kernel accepted (the rest were refused, e.g. the next CPU's backlog was full).
    pub accepted: u64,
    pub seconds: f64,
    /// Where the next run continues the flow sequence (so flows stay new across runs).
    pub next_index: u64,
}

const BATCH: usize = 64;

/// Sends the frames of `stream`, starting with frame number `first`, out of `ifname` (in the
/// calling thread's network namespace) for `duration`, from the calling thread pinned to `cpu`. Frames bypass the qdisc layer
/// (PACKET_QDISC_BYPASS) as trafgen's do; `sendmmsg` sends them in batches of 64.
pub fn blast(ifname: &str, stream: &Stream, first: u64, duration: Duration, cpu: usize) -> Result<Blasted> {
    pin_to_cpu(cpu)?;
    // The machine's other work (builds) shares the generator's CPU: at nice -20 the generator
    // gets nearly all of it for the few seconds of a run, so the offered rate varies less.
    // SAFETY: setpriority on the calling thread (its tid) only.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) };
    let ifindex = ifindex(ifname)?;
    // SAFETY: plain socket(2); the fd is owned by `Fd` below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let fd = Fd(fd);
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option value.
    let r = unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    }
    // The socket keeps its default send buffer on purpose: every frame in flight is charged to
    // it until the receiver frees it, so the sender sleeps while ~270 frames are queued — the
    // forwarding core clocks the generator. A large buffer (SO_SNDBUFFORCE, tried) lets the
    // generator keep the forwarding CPU's one backlog full, and then the frames the datapath
    // hands on to the next veth on the same CPU find it full and are dropped mid-path.
    // SAFETY: sockaddr_ll is plain old data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&stream.dst_mac);
    // Protocol 0 in bind: the socket receives nothing, it only sends.
    // SAFETY: bind with a properly sized sockaddr_ll.
    let r = unsafe {
        libc::bind(fd.0, (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if r != 0 {
        bail!("bind to {ifname}: {}", std::io::Error::last_os_error());
    }

    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        frames.iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: FRAME_LEN }).collect();
    // SAFETY: mmsghdr is plain old data; zero is a valid start (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // With Fixed flows every frame is the same: write them once.
    let fixed = matches!(stream.flows, Flows::Fixed { .. });
    if fixed {
        for f in frames.iter_mut() {
            write_frame(f, stream, 0);
        }
    }
    let mut out = Blasted::default();
    let mut i = first;
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        if !fixed {
            for f in frames.iter_mut() {
                write_frame(f, stream, i);
                i += 1;
            }
        }
        // SAFETY: msgs point at iovs, which point at frames; all live and unmoved for the call.
        let r = unsafe { libc::sendmmsg(fd.0, msgs.as_mut_ptr(), BATCH as u32, 0) };
        // sendmmsg stops at the first refused frame: the rest of the batch was not tried
        out.attempted += (r.max(0) as u64 + 1).min(BATCH as u64);
        if r > 0 {
            out.accepted += r as u64;
        } else {
            let e = std::io::Error::last_os_error();
            // a full backlog on the receiving side refuses the frame: count it and go on
            if !matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                bail!("sendmmsg on {ifname}: {e}");
            }
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.next_index = i;
    Ok(out)
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing an fd this guard owns.
        unsafe { libc::close(self.0) };
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bitmask; CPU_SET writes within it; sched_setaffinity(0) is
    // the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    Ok(i)
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {s:?}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| anyhow::anyhow!("not a MAC address: {s:?}"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(proto: Proto, flows: Flows) -> Stream {
        Stream {
            proto,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: Ipv4Addr::new(10, 77, 0, 11),
            dport: 8080,
            flows,
        }
    }

    #[test]
    fn new_flows_never_repeat_before_the_space_is_used_up() {
        let f = Flows::New { first_source: Ipv4Addr::new(10, 77, 0, 128), sources: 64 };
        assert_eq!(f.source(0), (Ipv4Addr::new(10, 77, 0, 128), 1024));
        assert_eq!(f.source(64_511), (Ipv4Addr::new(10, 77, 0, 128), 65535));
        assert_eq!(f.source(64_512), (Ipv4Addr::new(10, 77, 0, 129), 1024));
        assert_eq!(f.source(64 * 64_512 - 1), (Ipv4Addr::new(10, 77, 0, 191), 65535));
        assert_eq!(f.source(64 * 64_512), f.source(0));
        let mut seen = std::collections::HashSet::new();
        for i in (0..64 * 64_512).step_by(997) {
            assert!(seen.insert(f.source(i)), "frame {i} repeats a flow");
        }
        let fixed = Flows::Fixed { source: Ipv4Addr::new(10, 77, 0, 101), sport: 40000 };
        assert_eq!(fixed.source(0), fixed.source(12345));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these bytes is 0xddf2, the checksum its complement.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        // odd length: the last byte is the high half of a zero-padded word
        assert_eq!(checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn udp_frame_is_well_formed() {
        let s = stream(Proto::Udp, Flows::Fixed { source: Ipv4Addr::new(10, 77, 0, 101), sport: 40000 });
        let mut f = [0u8; FRAME_LEN];
        write_frame(&mut f, &s, 7);
        assert_eq!(&f[0..6], &s.dst_mac);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        assert_eq!(checksum(ip), 0, "IP header checksum does not verify");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 46);
        assert_eq!(ip[9], 17);
        assert_eq!(&ip[12..16], &[10, 77, 0, 101]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40000);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8080);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26);
    }

    #[test]
    fn syn_frame_checksums_verify() {
        let s = stream(Proto::Syn, Flows::New { first_source: Ipv4Addr::new(10, 77, 0, 128), sources: 64 });
        let mut f = [0u8; FRAME_LEN];
        write_frame(&mut f, &s, 70_000);
        let ip = &f[14..34];
        assert_eq!(checksum(ip), 0);
        assert_eq!(ip[9], 6);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
        assert_eq!(&ip[12..16], &[10, 77, 0, 129]);
        let tcp = &f[34..54];
        assert_eq!(tcp[13], 0x02, "only SYN");
        let mut pseudo = Vec::from(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(tcp);
        assert_eq!(checksum(&pseudo), 0, "TCP checksum does not verify");
        assert!(f[54..].iter().all(|b| *b == 0), "padding is zero");
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01\n").unwrap(), [2, 0, 10, 255, 0, 1]);
        assert!(parse_mac("02:00:0a").is_err());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_err());
    }
}
