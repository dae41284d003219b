//! netbee's control plane as a library: the `netbee` binary (src/main.rs) only calls
//! [`cli::main`]. The parsers (port specs, IPAM, names, placement constraints, API bodies) are
//! public so the fuzz targets in `controlplane/fuzz/` can drive them directly.
pub mod api;
pub mod cli;
pub mod cluster;
pub mod compose;
pub mod daemon;
mod datapath;
#[cfg(test)]
mod datapath_tests;
mod dns;
mod events;
mod humanize;
pub mod images;
pub mod ipam;
mod lookup;
pub mod metrics;
pub mod model;
mod monitor;
pub mod names;
mod netlink;
mod netns;
mod network;
mod paths;
pub mod portspec;
mod runtime;
mod service_progress;
mod store;
mod whoami;
