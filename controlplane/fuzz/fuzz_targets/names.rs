//! Container, network and service names; short ids; the swarm's manager address and cluster
//! store arguments. Input: the whole text, and each line on its own.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netbee_fuzz::{check_manager_addr, check_names, check_store};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for s in std::iter::once(text).chain(text.split('\n')) {
        check_names(s);
        check_names(s.trim_start_matches('/'));
        check_manager_addr(s);
        check_store(s);
    }
});
