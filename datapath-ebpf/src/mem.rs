//! Stack and map memory without the BPF target's `memset`/`memmove`, which are calls to
//! byte-at-a-time loops (the BPF backend inlines only `memcpy`).
//!
//! - `mem::zeroed` of a struct larger than a few words compiles to a `memset` call: 64 iterations
//!   for a FIB lookup's parameters, on every packet that needs one.
//! - A struct assignment into a map value is a `memcpy` that LLVM turns into a `memmove` when it
//!   forwards the copy from a stack temporary whose address also escapes to a helper (it can then
//!   no longer prove the two apart).
//!
//! Volatile word accesses keep LLVM from turning either back into the call.
//!
//! And the datapath's one atomic read-modify-write, [`fetch_add`].
use core::mem::{MaybeUninit, align_of, size_of};

/// Zeroes `slot` in place and returns it initialized. `T` must be a plain-old-data helper
/// argument (all-zero is a valid value) whose size and alignment are multiples of 4. In place,
/// because returning the value would let LLVM turn the copy back into a `memset` call.
#[inline(always)]
pub fn zeroed_in<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let words = slot.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: i < size_of::<T>() / 4 keeps every store inside `slot`, which is 4-aligned
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written, and all-zero is a valid T (caller's contract above)
    unsafe { slot.assume_init_mut() }
}

/// `*dst = *src`, one 8-byte word at a time. `T` must be plain old data whose size and alignment
/// are multiples of 8.
///
/// # Safety
/// `dst` must be valid for writes of a `T` (a map value pointer from a lookup) and must not
/// overlap `src`.
#[inline(always)]
pub unsafe fn copy_to<T: Copy>(dst: *mut T, src: &T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let (d, s) = (dst as *mut u64, src as *const T as *const u64);
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: i < size_of::<T>() / 8 keeps both accesses inside their 8-aligned `T`s
        unsafe { d.add(i).write_volatile(s.add(i).read()) };
        i += 1;
    }
}

/// Adds 1 to `*counter` atomically and returns the value before: every CPU sees each value once.
///
/// On BPF this is the ISA v3 instruction `atomic_fetch_add` (kernel 5.12+), written out because
/// the compiler cannot be asked for it: the target spec has no compare-and-swap, so core's atomic
/// types have no `fetch_add` there, and generating the whole object for `-C target-cpu=v3` (whose
/// code generation would emit it) makes code the verifier rejects (a register read before it
/// is written, seen with the nightly of 2026-05) and is not selectable through aya-build 0.2.0.
///
/// # Safety
/// `counter` must be valid for reads and writes of a u64 (a map value pointer from a lookup),
/// 8-byte aligned.
#[inline(always)]
pub unsafe fn fetch_add(counter: *mut u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut v: u64 = 1;
        // SAFETY: the caller's contract; the instruction touches only *counter and `v`'s register
        unsafe {
            core::arch::asm!(
                "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
                p = in(reg) counter,
                v = inout(reg) v,
                options(nostack),
            )
        };
        v
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // host builds (clippy, docs) only
        // SAFETY: the caller's contract; the value is only ever accessed atomically
        unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
    }
}
