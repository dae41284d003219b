//! The eBPF object: links the datapath library (programs and maps) and adds what only a binary
//! may hold, the panic handler and the license. Built for the BPF target by the control plane's
//! build.rs; on the host it is an empty binary so `cargo build --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
use netbee_ebpf as _;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
