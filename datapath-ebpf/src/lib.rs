//! netbee's kernel datapath: TC (TCX) programs on container veths, the uplink and the VXLAN
//! device, and cgroup socket programs. A library, so that host tools (clippy, rustdoc,
//! rust-analyzer) see it; `main.rs` links it into the eBPF object. Entry points stay thin and
//! each datapath concern has one module:
//!
//! - `programs`: the TC entry points, each its hook's packet path
//! - `sock`: the cgroup socket entry points (socket-level load balancing on the node)
//! - `packet`: header parsing, flow keys, MAC rewrite
//! - `verdict`: pass, counted drop, redirect outcome
//! - `conntrack`: the flow table (lookup, entries, whether a packet may open a flow)
//! - `nat`: address/port rewrites with checksums, SNAT port allocation
//! - `lb`: frontends, backend choice, a connection's first-packet DNAT
//! - `deliver`: to a local container, a container's node, or out of the uplink
//! - `overlay`: VXLAN encapsulation and tunnel key, native routing mesh, tunnel-return entries
//! - `fib`: FIB lookups
//! - `arp`: the ARP responder
//! - `maps`: every map, counters, configuration
//! - `monitor`: drop and load-balancing events for `netbee monitor` (ring buffer, rate limit)
//! - `mem`: zero-fill and copies without memset/memmove calls, the one atomic add
#![no_std]
// mem::fetch_add's one instruction (see there)
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod arp;
mod conntrack;
mod deliver;
mod fib;
mod lb;
mod maps;
mod mem;
mod monitor;
mod nat;
mod overlay;
mod packet;
mod programs;
mod sock;
mod verdict;
