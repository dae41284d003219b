//! netbee: eBPF container networking. One binary: `netbee daemon`, the docker-style CLI, the
//! per-container shim and the `whoami` test server.
mod api;
mod cli;
mod cluster;
mod daemon;
mod datapath;
#[cfg(test)]
mod datapath_tests;
mod dns;
mod humanize;
mod ipam;
mod model;
mod names;
mod netlink;
mod netns;
mod network;
mod portspec;
mod runtime;
mod store;
mod whoami;

fn main() {
    std::process::exit(cli::main());
}
