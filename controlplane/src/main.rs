//! netbee: eBPF container networking. One binary: `netbee daemon`, the docker-style CLI, the
//! per-container shim and the `whoami` test server. The code lives in the library (src/lib.rs).
fn main() {
    std::process::exit(netbee_controlplane::cli::main());
}
