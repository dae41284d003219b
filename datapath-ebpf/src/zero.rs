//! Zero-filled helper arguments (FIB lookup parameters, tunnel keys) built on the stack.
//!
//! `mem::zeroed` of a struct larger than a few words compiles to a call to the BPF target's
//! `memset`, a byte-at-a-time loop: 64 iterations for a FIB lookup's parameters, on every packet
//! that needs one. Volatile word stores keep LLVM from turning the fill back into that call.
use core::mem::{MaybeUninit, align_of, size_of};

/// Zeroes `slot` in place and returns it initialized. `T` must be a plain-old-data helper
/// argument (all-zero is a valid value) whose size and alignment are multiples of 4. In place,
/// because returning the value would let LLVM turn the copy back into a `memset` call.
#[inline(always)]
pub fn zeroed_in<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
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
