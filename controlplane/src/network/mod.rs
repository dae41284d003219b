//! Network drivers: how a network and a container's attachment to it exist in the kernel.
pub mod bridge;
