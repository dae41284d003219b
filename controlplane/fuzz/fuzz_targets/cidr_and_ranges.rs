//! IPAM: `network create --subnet --gateway --ip-range`, default subnets, endpoint allocation.
//! Input lines: subnet, gateway, ip-range (`~` or a missing line = not given), `overlay` to use
//! the overlay default pools (else the local ones), then existing networks (CIDR) and `@IP`
//! addresses to reserve (`--ip`).
#![no_main]
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use libfuzzer_sys::fuzz_target;
use netbee_controlplane::ipam;
use netbee_fuzz::{check_allocator, check_pool};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines: Vec<&str> = text.split('\n').collect();
    let field = |i: usize| lines.get(i).copied().filter(|l| *l != "~");
    let pools = if field(3) == Some("overlay") { ipam::overlay_default_pools() } else { ipam::local_default_pools() };
    let mut existing = Vec::new();
    let mut reserve = Vec::new();
    for l in lines.iter().skip(4) {
        if let Some(ip) = l.strip_prefix('@') {
            reserve.extend(ip.parse::<Ipv4Addr>());
        } else if let Ok(n) = l.parse::<Ipv4Network>() {
            existing.push((format!("net{}", existing.len()), n));
        }
    }
    if let Some(cfg) = check_pool(field(0), field(1), field(2), &existing, &pools) {
        check_allocator(&cfg, &reserve, 1 + text.len() % 64);
    }
});
