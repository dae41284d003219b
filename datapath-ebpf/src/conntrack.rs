//! Connection tracking for translated flows. Each translated flow has two entries, one per
//! direction, each saying how to rewrite packets travelling that way. The datapath never expires
//! entries itself: it records the last time and TCP flags seen, and the daemon's garbage
//! collector removes a flow once both directions have been idle longer than their state allows
//! (seconds once closed, hours while established). A full table evicts least-recently-used flows.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use netbee_abi::{CtEntry, CtKey, IPPROTO_TCP, ct_flags, stat};

use crate::{
    maps::{CT, count},
    mem::copy_to,
    packet::{Ip4, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Refresh last_seen at most this often: a write per packet would bounce the cache line between
/// CPUs for nothing, while a second is far below any timeout.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn is_syn(l4: &L4) -> bool {
    l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether this packet may open a flow (and so create entries): any datagram, but of TCP only a
/// SYN. A stray segment must not, and checking first spares established TCP the lookups.
#[inline(always)]
pub fn may_open(ip: &Ip4, l4: &L4) -> bool {
    ip.proto != IPPROTO_TCP || is_syn(l4)
}

/// Looks up the entry for this direction and records the packet in it. A TCP SYN on an entry
/// whose flow was closed starts a new flow: the caller then creates fresh entries.
#[inline(always)]
pub fn lookup(key: &CtKey, l4: &L4) -> Option<CtEntry> {
    let e = CT.get_ptr_mut(key)?;
    let entry = unsafe { &mut *e };
    if key.proto == IPPROTO_TCP {
        if is_syn(l4) && entry.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0 {
            return None;
        }
        let mut flags = entry.flags;
        if l4.tcp_flags & TCP_FIN != 0 {
            flags |= ct_flags::SEEN_FIN;
        }
        if l4.tcp_flags & TCP_RST != 0 {
            flags |= ct_flags::SEEN_RST;
            if entry.flags & ct_flags::REVNAT != 0 {
                reset_forward(key, entry);
            }
        }
        if l4.tcp_flags & TCP_SYN == 0 {
            flags &= !ct_flags::SYN_ONLY;
        }
        if flags != entry.flags {
            entry.flags = flags;
        }
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(entry.last_seen) > REFRESH_NS {
        entry.last_seen = now;
    }
    Some(*entry)
}

/// A backend's reset (a refused SYN: the task is gone or not listening) ends the flow for its
/// client's direction too, whose entry sees only the client's segments: a client that reuses the
/// port (clients cycle through their ports; a lost node's tasks answer a whole burst of SYNs with
/// resets) must open a new flow to a live backend, not follow the old choice to the dead one.
#[inline(always)]
fn reset_forward(reply_key: &CtKey, reply: &CtEntry) {
    let fwd_key = CtKey::new(reply_key.daddr, reply.nat_addr, reply_key.dport, reply.nat_port, reply_key.proto);
    if let Some(fwd) = CT.get_ptr_mut(fwd_key) {
        // SAFETY: a map value pointer from the lookup just above
        let fwd = unsafe { &mut *fwd };
        if fwd.flags & ct_flags::SEEN_RST == 0 {
            fwd.flags |= ct_flags::SEEN_RST;
        }
    }
}

#[inline(always)]
pub fn new_entry(nat_addr: u32, nat_port: u16, flags: u16, l4: &L4, proto: u8) -> CtEntry {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = flags;
    if proto == IPPROTO_TCP && is_syn(l4) {
        flags |= ct_flags::SYN_ONLY;
    }
    CtEntry { nat_addr, nat_port, flags, tunnel_node: 0, vni: 0, last_seen: now, created: now }
}

/// Inserts both directions of a flow; the forward entry goes last so a packet never finds a
/// forward entry whose reply entry is missing.
#[inline(always)]
pub fn create(fwd_key: &CtKey, fwd: &CtEntry, rev_key: &CtKey, rev: &CtEntry) -> Option<()> {
    let rev_was_new = put(rev_key, rev)?;
    if put(fwd_key, fwd).is_none() {
        if rev_was_new {
            remove(rev_key);
        }
        return None;
    }
    count(stat::CT_CREATED);
    count(stat::CT_CREATED);
    Some(())
}

/// Stores an entry; Some(true) when it was inserted, Some(false) when an entry under that key (a
/// closed flow whose 5-tuple a new connection reuses, as a busy client's ports cycle within the
/// closing timeout) was overwritten in place. An insert into a full LRU table evicts and takes
/// locks even when the key exists; the in-place write touches only the bucket the failed lookup
/// has just read.
#[inline(always)]
pub fn put(key: &CtKey, e: &CtEntry) -> Option<bool> {
    if let Some(p) = CT.get_ptr_mut(key) {
        // SAFETY: a map value pointer from the lookup just above, apart from `e` on the stack
        unsafe { copy_to(p, e) };
        return Some(false);
    }
    insert(key, e).then_some(true)
}

/// Inserts `e` only if no entry exists under `key` (BPF_NOEXIST): false when the key is taken.
#[inline(always)]
pub fn claim(key: &CtKey, e: &CtEntry) -> bool {
    CT.insert(key, e, BPF_NOEXIST as u64).is_ok()
}

/// Inserts or replaces the entry under `key`.
#[inline(always)]
pub fn insert(key: &CtKey, e: &CtEntry) -> bool {
    CT.insert(key, e, 0).is_ok()
}

#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = CT.remove(key);
}

/// The key of packets flowing the other way once `key` has been rewritten to (addr, port) on
/// its destination side.
#[inline(always)]
pub fn reply_key(key: &CtKey, new_daddr: u32, new_dport: u16) -> CtKey {
    CtKey::new(new_daddr, key.saddr, new_dport, key.sport, key.proto)
}
