//! FIB lookups: the next hop the kernel would route a packet to, without its forwarding path.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{EbpfContext as _, bindings::bpf_fib_lookup as FibParams, helpers::bpf_fib_lookup, programs::TcContext};

use crate::{mem::zeroed_in, packet::ifindex};

pub const AF_INET: u8 = 2;

/// FIB lookup as if the packet were forwarded from its ingress device; addresses in network
/// order. On success `ipv4_dst` holds the next hop (the gateway, or `daddr` when on-link).
#[inline(always)]
pub fn lookup<'a>(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    fib: &'a mut MaybeUninit<FibParams>,
) -> (i64, &'a FibParams) {
    let p: &mut FibParams = zeroed_in(fib);
    p.family = AF_INET;
    // tot_len 0: let the kernel check the MTU against the skb itself (GSO-aware)
    p.__bindgen_anon_1.tot_len = 0;
    p.ifindex = ifindex(ctx);
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    (rc, p)
}
