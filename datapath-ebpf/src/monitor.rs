//! The flow monitor: drop, load-balancing and trace events into a ring buffer for `netbee
//! monitor`.
//! Nothing happens unless `config::MONITOR` has the event's kind set (the daemon sets it while a
//! monitor is attached): one array read on a drop or a new connection, none on forwarded
//! packets. Each CPU emits at most `MONITOR_EVENTS_PER_WINDOW` events per window and counts the
//! rest, so a flood of drops costs the datapath a counter increment per packet and the daemon a
//! bounded read rate.
//!
//! A trace follows the packets of the addresses in `MONITOR_TRACE` and of the interfaces in
//! `MONITOR_TRACE_IFACES` (the daemon fills them from the attached trace monitors' containers and
//! services; address 0 means every packet): each program a packet of theirs goes through reports
//! it as it leaves, translated or not, with its verdict. The interfaces catch what a container
//! sends once it is translated (an answer through a published port leaves with the node's
//! address), the addresses what reaches it.
//! With no trace attached that is the same one array read per packet as the drop's check.
//!
//! Drops are reported from the entry points (`after`): `verdict::drop` has no packet to read, so
//! it leaves its reason in a per-CPU slot (`note_drop`) and the entry point, which has the
//! context, emits it when the program's verdict is a drop. A TC program runs to completion on
//! its CPU, so the slot is the current packet's.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use netbee_abi::{
    Backend, MONITOR_RING_BYTES, MONITOR_TRACE_MAX, MonitorEvent, MonitorRate, Service, config, monitor_kind,
    monitor_via,
};

use crate::{
    deliver::Via,
    maps::config,
    packet::{ETH_P_IP, Ip4, L4, eth, ifindex, ipv4, l4},
};

/// Not pinned: a restarted daemon reads the ring of the programs it loaded itself.
#[map]
static MONITOR_EVENTS: RingBuf = RingBuf::with_byte_size(MONITOR_RING_BYTES, 0);
#[map]
static MONITOR_RATE: PerCpuArray<MonitorRate> = PerCpuArray::with_max_entries(1, 0);
/// Addresses (network order) whose packets a trace follows; key 0: every packet.
#[map]
static MONITOR_TRACE: HashMap<u32, u8> = HashMap::with_max_entries(MONITOR_TRACE_MAX, 0);
/// Interfaces (ifindex) whose programs' packets a trace follows.
#[map]
static MONITOR_TRACE_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(MONITOR_TRACE_MAX, 0);
/// The reason of the drop the current packet met, plus one (0: none).
#[map]
static MONITOR_PENDING_DROP: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn enabled(kind: u8) -> bool {
    config(config::MONITOR) & kind as u64 != 0
}

/// Called by `verdict::drop`: remembers the reason for the entry point's `after`.
#[inline(always)]
pub fn note_drop(reason: u32) {
    if !enabled(monitor_kind::DROP) {
        return;
    }
    if let Some(p) = MONITOR_PENDING_DROP.get_ptr_mut(0) {
        unsafe { *p = reason + 1 };
    }
}

/// Every TC entry point (`point`: `trace_point::*`) returns through this: a drop the packet met
/// is emitted with the packet's addresses, and a traced packet with the verdict. Forwarded
/// packets cost a comparison and, for the trace, one array read.
#[inline(always)]
pub fn after(ctx: &TcContext, point: u8, verdict: i32) -> i32 {
    if verdict == TC_ACT_SHOT {
        emit_drop(ctx);
    }
    if enabled(monitor_kind::TRACE) {
        emit_trace(ctx, point, verdict);
    }
    verdict
}

#[inline(always)]
fn traced(addr: u32) -> bool {
    unsafe { MONITOR_TRACE.get(addr) }.is_some()
}

#[inline(always)]
fn emit_trace(ctx: &TcContext, point: u8, verdict: i32) {
    let Some(e) = eth(ctx) else { return };
    if u16::from_be(e.proto) != ETH_P_IP {
        return;
    }
    let Some(ip) = ipv4(ctx) else { return };
    let ifindex = ifindex(ctx);
    if !traced(0) && !traced(ip.saddr) && !traced(ip.daddr) && unsafe { MONITOR_TRACE_IFACES.get(ifindex) }.is_none() {
        return;
    }
    let mut ev = MonitorEvent {
        kind: monitor_kind::TRACE,
        via: point,
        reason: verdict as u32,
        ifindex,
        ethertype: ETH_P_IP,
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        ..blank()
    };
    if let Some(l4) = l4(ctx, &ip) {
        ev.sport = l4.sport;
        ev.dport = l4.dport;
    }
    emit(ev);
}

#[inline(always)]
fn emit_drop(ctx: &TcContext) {
    let Some(pending) = MONITOR_PENDING_DROP.get_ptr_mut(0) else {
        return;
    };
    let reason = unsafe { *pending };
    if reason == 0 {
        // a silent drop, or the monitor is off
        return;
    }
    unsafe { *pending = 0 };
    let mut ev = MonitorEvent { kind: monitor_kind::DROP, reason: reason - 1, ifindex: ifindex(ctx), ..blank() };
    if let Some(e) = eth(ctx) {
        ev.ethertype = u16::from_be(e.proto);
        if ev.ethertype == ETH_P_IP
            && let Some(ip) = ipv4(ctx)
        {
            ev.saddr = ip.saddr;
            ev.daddr = ip.daddr;
            ev.proto = ip.proto;
            if let Some(l4) = l4(ctx, &ip) {
                ev.sport = l4.sport;
                ev.dport = l4.dport;
            }
        }
    }
    emit(ev);
}

/// A new connection's backend choice (`lb::new_dnat`, after its conntrack entries exist).
#[inline(always)]
pub fn lb_decision(ctx: &TcContext, ip: &Ip4, l4: &L4, svc: &Service, slot: u32, be: &Backend, via: Via) {
    if !enabled(monitor_kind::LB) {
        return;
    }
    emit(MonitorEvent {
        kind: monitor_kind::LB,
        proto: ip.proto,
        via: match via {
            Via::Container => monitor_via::CONTAINER,
            Via::Wire => monitor_via::WIRE,
            Via::Tunnel => monitor_via::TUNNEL,
        },
        ifindex: ifindex(ctx),
        ethertype: ETH_P_IP,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: l4.sport,
        dport: l4.dport,
        service: svc.id,
        slot,
        svc_flags: svc.flags,
        backend_addr: be.addr,
        backend_port: be.port,
        ..blank()
    });
}

/// Every field spelled out: a `Default` or zeroed struct becomes a memset call on this target.
#[inline(always)]
const fn blank() -> MonitorEvent {
    MonitorEvent {
        ktime: 0,
        kind: 0,
        proto: 0,
        via: 0,
        _pad0: 0,
        reason: 0,
        ifindex: 0,
        ethertype: 0,
        _pad1: 0,
        saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        service: 0,
        slot: 0,
        svc_flags: 0,
        backend_addr: 0,
        backend_port: 0,
        _pad2: 0,
    }
}

#[inline(always)]
fn emit(mut ev: MonitorEvent) {
    let Some(rate) = MONITOR_RATE.get_ptr_mut(0) else {
        return;
    };
    let rate = unsafe { &mut *rate };
    let now = unsafe { bpf_ktime_get_ns() };
    if !rate.admit(now) {
        return;
    }
    let Some(mut slot) = MONITOR_EVENTS.reserve::<MonitorEvent>(0) else {
        // the daemon is behind: counted like the rate's refusals
        rate.suppressed += 1;
        return;
    };
    ev.ktime = now;
    slot.write(ev);
    slot.submit(0);
}
