//! `-p/--publish`, `--expose`, service `--publish`, host port selection and the PORTS column.
//! Input: one spec per line; every line is tried as each kind of spec.
#![no_main]
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use netbee_controlplane::portspec::PortBinding;
use netbee_fuzz::{check_choose, check_expose, check_format_ports, check_publish, check_service_port};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut bindings = Vec::new();
    let mut exposed = Vec::new();
    // A full range expands to 65535 specs, each parsed and checked several times: lines after
    // the first 65536 expanded ports are skipped so inputs full of wide ranges stay fast.
    let mut expanded = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        if expanded > 65536 {
            break;
        }
        if let Some(specs) = check_publish(line) {
            expanded += specs.len();
            // One port in 1 to 5 is free, varying with the line: a single port or a short range
            // may be taken, so every error path runs, while scans of long ranges stay short.
            let busy = |p: u16| (usize::from(p) + i) % (line.len() % 5 + 1) != 0;
            // The PORTS column is checked on at most 64 bindings and 64 exposed ports.
            for sp in specs.iter().take(64usize.saturating_sub(bindings.len())) {
                if let Some(host_port) = check_choose(sp, &busy) {
                    bindings.push(PortBinding {
                        host_ip: sp.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        host_port,
                        container_port: sp.container_port,
                        proto: sp.proto,
                    });
                }
            }
        }
        if let Some(v) = check_expose(line) {
            expanded += v.len();
            exposed.extend(v.into_iter().take(64usize.saturating_sub(exposed.len())));
        }
        check_service_port(line);
    }
    check_format_ports(&bindings, &exposed);
});
