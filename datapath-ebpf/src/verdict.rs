//! TC verdicts: hand the packet on, drop it (counted by reason), or report a redirect helper's
//! outcome. Every program returns through these.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use netbee_abi::drop_reason;

use crate::{maps::count_drop, monitor};

/// On to the stack (under TCX, the end of the chain: this is the last program).
pub const PASS: i32 = TC_ACT_OK;
/// Dropped and not counted: for packets that need no answer (a gratuitous ARP), not errors.
pub const SILENT_DROP: i32 = TC_ACT_SHOT;

/// Drops the packet and counts it under `reason` (`drop_reason::*`); the flow monitor reports it
/// from the entry point.
#[inline(always)]
pub fn drop(reason: u32) -> i32 {
    count_drop(reason);
    monitor::note_drop(reason);
    TC_ACT_SHOT
}

/// The verdict for a bpf_redirect* helper's return value: the redirect, or a counted drop.
#[inline(always)]
pub fn redirected(ret: i64) -> i32 {
    if ret == TC_ACT_REDIRECT as i64 { ret as i32 } else { drop(drop_reason::REDIRECT_FAILED) }
}
