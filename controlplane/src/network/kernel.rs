//! The kernel side every container-carrying driver shares, without a Linux bridge on the
//! forwarding path. A network is a portless device holding the gateway address (so the node
//! answers its gateway and routes to the subnet) plus NETWORKS/SUBNETS map entries. A container's
//! attachment is a veth pair whose host side carries `tc_from_container` (TCX, pinned):
//! containers of one network reach each other by bpf_redirect_peer, the eBPF program answers their
//! ARP, and the node reaches them by a /32 route with a permanent neighbour entry.
use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::TcAttachType;
use netbee_abi::{Endpoint as DpEndpoint, Iface, Network as DpNetwork, net_flags};

use crate::{
    datapath::{Datapath, ignore_missing, ip_be},
    model::{Endpoint, NetworkRecord},
    netlink::Netlink,
    netns,
};

pub fn endpoint_pin(host_ifname: &str) -> String {
    format!("ep-{host_ifname}")
}

/// Makes the network exist on the node (idempotent).
pub async fn setup_network(
    nl: &Netlink,
    dp: &std::sync::Mutex<Datapath>,
    net: &NetworkRecord,
    flags: u32,
) -> Result<()> {
    let Some(ipam) = &net.ipam else { return Ok(()) };
    let cfg = ipam.config();
    let dev = net.device();
    let idx = nl.ensure_gateway_device(&dev).await?;
    nl.add_addr(idx, cfg.gateway, cfg.subnet.prefix()).await?;
    let mut dp = dp.lock().unwrap();
    let entry = DpNetwork {
        subnet: ip_be(cfg.subnet.network()),
        mask: ip_be(cfg.subnet.mask()),
        gateway: ip_be(cfg.gateway),
        flags: (if net.internal { net_flags::INTERNAL } else { 0 }) | flags,
        vni: net.vni,
        _pad: 0,
    };
    dp.networks.insert(net.net_id, entry, 0).context("updating NETWORKS")?;
    dp.set_subnet(cfg.subnet, net.net_id)?;
    Ok(())
}

pub async fn teardown_network(nl: &Netlink, dp: &std::sync::Mutex<Datapath>, net: &NetworkRecord) -> Result<()> {
    nl.delete_link_named(&net.device()).await?;
    let mut dp = dp.lock().unwrap();
    ignore_missing(dp.networks.remove(&net.net_id))?;
    if let Some(ipam) = &net.ipam {
        dp.remove_subnet(ipam.config().subnet)?;
    }
    Ok(())
}

/// Creates the container's interface on `net` inside the namespace at `ns_path`.
pub async fn attach_endpoint(
    nl: &Netlink,
    dp: &std::sync::Mutex<Datapath>,
    ns_path: &Path,
    net: &NetworkRecord,
    ep: &Endpoint,
    default_route: bool,
    backend: bool,
) -> Result<()> {
    let ipam = net.ipam.as_ref().ok_or_else(|| anyhow!("network {} has no addresses", net.name))?;
    let (gateway, prefix) = (ipam.config().gateway, ipam.config().subnet.prefix());
    let host = ep.host_ifname();
    let peer = format!("nbp{}", &ep.endpoint_id[..12]);
    nl.create_veth(&host, &peer, net.mtu()).await?;
    let peer_idx = nl.require_link(&peer).await?.index;
    let ns = std::fs::File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    nl.move_to_netns(peer_idx, ns.as_raw_fd()).await?;
    let (ifname, mac, ip, mtu) = (ep.ifname.clone(), ep.mac, ep.ip, net.mtu());
    netns::run_in(ns_path.to_path_buf(), move || async move {
        let nl = Netlink::open()?;
        // containers speak IPv4 only; IPv6 autoconfiguration would only produce dropped frames
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let lo = nl.require_link("lo").await?;
        nl.set_up(lo.index).await?;
        let l = nl.require_link(&peer).await?;
        nl.rename_and_set_mac(l.index, &ifname, mac, mtu).await?;
        nl.add_addr(l.index, ip, prefix).await?;
        nl.set_up(l.index).await?;
        if default_route {
            nl.add_default_route(gateway).await?;
        }
        Ok(())
    })
    .with_context(|| format!("configuring {} in the container", ep.ifname))?;
    program_endpoint(nl, dp, net, ep, backend).await
}

/// The node-side half of an endpoint: neighbour, route, map entries and the pinned TC link.
/// Idempotent; on a daemon restart it swaps the new program into the existing link.
pub async fn program_endpoint(
    nl: &Netlink,
    dp: &std::sync::Mutex<Datapath>,
    net: &NetworkRecord,
    ep: &Endpoint,
    backend: bool,
) -> Result<()> {
    let gateway = net.gateway().ok_or_else(|| anyhow!("network {} has no gateway", net.name))?;
    let host = ep.host_ifname();
    let h = nl.require_link(&host).await?;
    let host_mac = h.mac.ok_or_else(|| anyhow!("{host} has no MAC address"))?;
    nl.set_up(h.index).await?;
    nl.add_permanent_neighbour(h.index, ep.ip, ep.mac).await?;
    nl.add_host_route(ep.ip, h.index, gateway).await?;
    let mut dp = dp.lock().unwrap();
    dp.ifaces
        .insert(
            h.index,
            Iface {
                ip: ip_be(ep.ip),
                net_id: net.net_id,
                mac: ep.mac,
                host_mac,
                flags: if backend { netbee_abi::iface_flags::BACKEND } else { 0 },
            },
            0,
        )
        .context("updating IFACES")?;
    let entry = DpEndpoint { ifindex: h.index, net_id: net.net_id, mac: ep.mac, host_mac, node_ip: 0, flags: 0 };
    dp.insert_endpoint(ip_be(ep.ip), entry)?;
    dp.attach_tc("tc_from_container", &host, TcAttachType::Ingress, &endpoint_pin(&host))?;
    Ok(())
}

/// Removes everything `attach_endpoint` made; safe on a half-made or already removed endpoint.
pub async fn detach_endpoint(nl: &Netlink, dp: &std::sync::Mutex<Datapath>, ep: &Endpoint) -> Result<()> {
    let host = ep.host_ifname();
    let link = nl.link(&host).await?;
    {
        let mut dp = dp.lock().unwrap();
        dp.remove_local_endpoint(ip_be(ep.ip))?;
        if let Some(l) = &link {
            ignore_missing(dp.ifaces.remove(&l.index))?;
        }
        dp.detach(&endpoint_pin(&host))?;
    }
    if let Some(l) = link {
        nl.delete_link(l.index).await?;
    }
    nl.delete_link_named(&format!("nbp{}", &ep.endpoint_id[..12])).await?;
    Ok(())
}
