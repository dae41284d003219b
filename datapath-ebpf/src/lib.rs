//! netbee's kernel datapath, as a library so that host tools (clippy, rustdoc, rust-analyzer) see
//! it; `main.rs` links it into the eBPF object. Entry points live in `programs.rs` and stay thin;
//! each concern has its own module.
#![no_std]

mod arp;
mod conntrack;
mod deliver;
mod lb;
mod maps;
mod mem;
mod nat;
mod packet;
mod programs;
mod sock;
