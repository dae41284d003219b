//! The receiving end of `forwarding-rate`: a counter that costs the same behind every system.
//!
//! A fifteen-instruction eBPF program on the TCX ingress hook of the receiving interface (a
//! container's `eth0`, a plain node's `eth0`) adds one to a counter and drops the packet if it is IPv4 (ARP passes). The
//! receiver therefore never answers (no RST to a SYN, no ICMP), and packets are counted at the
//! same place whether they arrived through a veth's backlog (iptables, the bare wire) or were
//! handed over by `bpf_redirect_peer` (netbee), which skips the veth's own rx counters.
//!
//! Why hand-assembled: this kernel has neither the `matchall` classifier nor the `gact` action,
//! and loading fifteen instructions through the bpf(2) syscall needs no compiler and no ELF object.
//! The program and its link live as long as the [`Sink`] (the link is not pinned: dropping it
//! detaches the program).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};

const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_PROG_LOAD: i32 = 5;
const BPF_LINK_CREATE: i32 = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
/// `skb->protocol` holds the ethertype in network byte order, as a 32-bit load reads it here.
const ETH_P_IP_BE: i32 = 0x0800u16.to_be() as i32;

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

/// For IPv4 packets `counter[0] += 1; return TC_ACT_SHOT;`, every other packet goes on
/// (ARP must pass: the iptables baselines resolve their containers' addresses through it), with
/// `map_fd` the one-entry array holding the counter.
pub fn count_and_drop(map_fd: i32) -> [Insn; 15] {
    [
        insn(0x61, 6, 1, 16, 0),                     // r6 = skb->protocol (network order)
        insn(0x55, 6, 0, 11, ETH_P_IP_BE),           // if r6 != ETH_P_IP goto pass
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = map (ld_imm64, first half)
        insn(0x00, 0, 0, 0, 0),                      // ld_imm64, second half
        insn(0x62, 10, 0, -4, 0),                    // *(u32 *)(r10 - 4) = 0: the key
        insn(0xbf, 2, 10, 0, 0),                     // r2 = r10
        insn(0x07, 2, 0, 0, -4),                     // r2 += -4
        insn(0x85, 0, 0, 0, 1),                      // call bpf_map_lookup_elem
        insn(0x15, 0, 0, 2, 0),                      // if r0 == 0 goto +2
        insn(0xb7, 1, 0, 0, 1),                      // r1 = 1
        insn(0xdb, 0, 1, 0, 0),                      // lock *(u64 *)(r0 + 0) += r1
        insn(0xb7, 0, 0, 0, TC_ACT_SHOT),            // r0 = TC_ACT_SHOT
        insn(0x95, 0, 0, 0, 0),                      // exit
        insn(0xb7, 0, 0, 0, TC_ACT_UNSPEC),          // pass: r0 = TC_ACT_UNSPEC (TCX: next/pass)
        insn(0x95, 0, 0, 0, 0),                      // exit
    ]
}

fn bpf(cmd: i32, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads (and for lookups writes through pointers in) `attr`, a zeroed buffer
    // larger than every bpf_attr variant used here.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u64; 16]>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

fn fd_of(r: i64) -> OwnedFd {
    // SAFETY: a successful bpf(2) create/load returns a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// A counting drop attached to one interface; detached when dropped.
pub struct Sink {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Sink {
    /// Attaches to `ifname` inside the network namespace `netns` (a `/run/netns/..` or
    /// `/proc/PID/ns/net` path). The attach runs on a short-lived thread that enters the
    /// namespace; the fds outlive it.
    pub fn attach(netns: &Path, ifname: &str) -> Result<Sink> {
        let netns = netns.to_path_buf();
        let ifname = ifname.to_string();
        std::thread::spawn(move || -> Result<Sink> {
            let ns = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
            // SAFETY: setns on this (fresh, short-lived) thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {}: {}", netns.display(), std::io::Error::last_os_error());
            }
            let ifindex = crate::packets::ifindex(&ifname)?;
            Sink::attach_here(ifindex).with_context(|| format!("counting sink on {ifname} in {}", netns.display()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sink attach thread panicked"))?
    }

    fn attach_here(ifindex: u32) -> Result<Sink> {
        let mut a = [0u64; 16];
        // map_type, key_size, value_size, max_entries
        a[0] = u64::from(BPF_MAP_TYPE_ARRAY) | (4u64 << 32);
        a[1] = 8 | (1u64 << 32);
        let map = fd_of(bpf(BPF_MAP_CREATE, &mut a).context("BPF_MAP_CREATE")?);

        let prog = count_and_drop(map.as_raw_fd());
        let license = c"GPL";
        let mut a = [0u64; 16];
        a[0] = u64::from(BPF_PROG_TYPE_SCHED_CLS) | ((prog.len() as u64) << 32); // prog_type, insn_cnt
        a[1] = prog.as_ptr() as u64; // insns
        a[2] = license.as_ptr() as u64; // license
        let prog = fd_of(bpf(BPF_PROG_LOAD, &mut a).context("BPF_PROG_LOAD")?);

        let mut a = [0u64; 16];
        a[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32); // prog_fd, target_ifindex
        a[1] = u64::from(BPF_TCX_INGRESS); // attach_type, flags 0: appended after other programs
        let link = fd_of(bpf(BPF_LINK_CREATE, &mut a).context("BPF_LINK_CREATE (tcx ingress)")?);
        Ok(Sink { map, _prog: prog, _link: link })
    }

    /// Packets counted (and dropped) so far.
    pub fn count(&self) -> Result<u64> {
        let key: u32 = 0;
        let mut value: u64 = 0;
        let mut a = [0u64; 16];
        a[0] = self.map.as_raw_fd() as u64;
        a[1] = &key as *const u32 as u64;
        a[2] = &mut value as *mut u64 as u64;
        bpf(BPF_MAP_LOOKUP_ELEM, &mut a).context("reading the sink counter")?;
        Ok(value)
    }
}

const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_PASS: i32 = 2;

/// The entry fee of XDP on an interface: a program that only returns XDP_PASS, attached with an
/// XDP link (native mode where the driver has it, as veth does); detached when dropped. Used by
/// `forwarding-rate` with `NETBEE_BENCH_XDP_PROBE=1` to measure what merely enabling XDP on a
/// node's uplink costs, before any XDP datapath is written.
pub struct XdpPass {
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl XdpPass {
    pub fn attach(netns: &Path, ifname: &str) -> Result<XdpPass> {
        let netns = netns.to_path_buf();
        let ifname = ifname.to_string();
        std::thread::spawn(move || -> Result<XdpPass> {
            let ns = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
            // SAFETY: setns on this (fresh, short-lived) thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {}: {}", netns.display(), std::io::Error::last_os_error());
            }
            let ifindex = crate::packets::ifindex(&ifname)?;
            let prog = [insn(0xb7, 0, 0, 0, XDP_PASS), insn(0x95, 0, 0, 0, 0)];
            let license = c"GPL";
            let mut a = [0u64; 16];
            a[0] = u64::from(BPF_PROG_TYPE_XDP) | ((prog.len() as u64) << 32);
            a[1] = prog.as_ptr() as u64;
            a[2] = license.as_ptr() as u64;
            let prog = fd_of(bpf(BPF_PROG_LOAD, &mut a).context("BPF_PROG_LOAD (xdp)")?);
            let mut a = [0u64; 16];
            a[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32);
            a[1] = u64::from(BPF_XDP);
            let link = fd_of(bpf(BPF_LINK_CREATE, &mut a).with_context(|| format!("XDP link on {ifname}"))?);
            Ok(XdpPass { _prog: prog, _link: link })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("xdp attach thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encoding() {
        let p = count_and_drop(7);
        assert_eq!(size_of::<Insn>(), 8);
        // not IPv4: jump to the pass branch at the end
        assert_eq!(p[1].imm, ETH_P_IP_BE);
        #[cfg(target_endian = "little")]
        assert_eq!(ETH_P_IP_BE, 0x0008);
        assert_eq!(1 + 1 + p[1].off as usize, 13);
        assert_eq!(p[13].imm, TC_ACT_UNSPEC);
        // ld_imm64 of a map fd: dst r1, src = BPF_PSEUDO_MAP_FD
        assert_eq!(p[2], Insn { code: 0x18, regs: 0x11, off: 0, imm: 7 });
        // r2 = r10: dst in the low nibble, src in the high one
        assert_eq!(p[5].regs, 0xa2);
        // the null check jumps over the increment to the drop verdict
        assert_eq!(p[8 + 1 + p[8].off as usize].imm, TC_ACT_SHOT);
        assert_eq!(p[12].code, 0x95);
        assert_eq!(p[14].code, 0x95);
    }
}
