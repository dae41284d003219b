//! rtnetlink operations the drivers need, on the namespace the handle was opened in.
use std::net::{IpAddr, Ipv4Addr};

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkInfo},
    neighbour::NeighbourState,
    route::RouteScope,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

#[derive(Clone)]
pub struct Netlink {
    h: Handle,
    /// The kernel runs one dump per netlink socket at a time and refuses a second with EBUSY;
    /// dumps from concurrent tasks (an API request beside the reconciler) take turns here.
    dump_turn: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Clone, Debug)]
pub struct LinkInfoLite {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH)
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's current network namespace; the connection
    /// task runs on the current tokio runtime.
    pub fn open() -> Result<Netlink> {
        let (conn, h, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { h, dump_turn: Default::default() })
    }

    pub async fn links(&self) -> Result<Vec<LinkInfoLite>> {
        let _turn = self.dump_turn.lock().await;
        let mut out = Vec::new();
        let mut s = self.h.link().get().execute();
        while let Some(m) = s.try_next().await.context("listing interfaces")? {
            out.push(link_info(m));
        }
        Ok(out)
    }

    /// One interface by name, asked of the kernel directly (not a dump).
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfoLite>> {
        let mut s = self.h.link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(link_info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<LinkInfoLite> {
        self.link(name).await?.ok_or_else(|| anyhow!("interface {name} does not exist"))
    }

    /// Creates a veth pair; an existing `host` end (left by an interrupted attempt) is replaced.
    pub async fn create_veth(&self, host: &str, peer: &str, mtu: u32) -> Result<()> {
        for name in [host, peer] {
            if let Some(l) = self.link(name).await? {
                self.delete_link(l.index).await?;
            }
        }
        self.h
            .link()
            .add(LinkVeth::new(host, peer).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {host}/{peer}"))
    }

    /// A bridge with no ports: it only holds a network's gateway address on the node.
    pub async fn ensure_gateway_device(&self, name: &str) -> Result<u32> {
        if let Some(l) = self.link(name).await? {
            return Ok(l.index);
        }
        match self.h.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("creating device {name}")),
        }
        let l = self.require_link(name).await?;
        self.set_up(l.index).await?;
        Ok(l.index)
    }

    /// The node's collect_md ("external") VXLAN device, created once and kept across restarts so
    /// overlay traffic never stops.
    pub async fn ensure_vxlan(&self, name: &str, port: u16, mtu: u32) -> Result<u32> {
        if let Some(l) = self.link(name).await? {
            return Ok(l.index);
        }
        let msg = LinkMessageBuilder::<LinkVxlan>::new(name).port(port).collect_metadata(true).mtu(mtu).up().build();
        match self.h.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("creating VXLAN device {name}")),
        }
        Ok(self.require_link(name).await?.index)
    }

    pub async fn move_to_netns(&self, index: u32, fd: std::os::fd::RawFd) -> Result<()> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(fd).build())
            .execute()
            .await
            .context("moving interface into the container's namespace")
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("bringing up interface {index}"))
    }

    pub async fn rename_and_set_mac(&self, index: u32, name: &str, mac: [u8; 6], mtu: u32) -> Result<()> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(index).name(name.to_string()).address(mac.to_vec()).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("naming interface {name}"))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.h.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting interface {index}")),
        }
    }

    pub async fn delete_link_named(&self, name: &str) -> Result<()> {
        if let Some(l) = self.link(name).await? {
            self.delete_link(l.index).await?;
        }
        Ok(())
    }

    pub async fn add_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        match self.h.address().add(index, IpAddr::V4(ip), prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding address {ip}/{prefix}")),
        }
    }

    /// IPv4 addresses per interface index.
    pub async fn ipv4_addrs(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let _turn = self.dump_turn.lock().await;
        let mut out = Vec::new();
        let mut req = self.h.address().get();
        // IPv4 only: an unspecified family also dumps every veth's IPv6 link-local address, and
        // every cluster sync asks (the node's addresses include the overlays' gateways)
        req.message_mut().header.family = netlink_packet_route::AddressFamily::Inet;
        let mut s = req.execute();
        while let Some(m) = s.try_next().await.context("listing addresses")? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((m.header.index, *ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// A /32 route to a container through its host-side veth, sourced from the gateway.
    pub async fn add_host_route(&self, ip: Ipv4Addr, index: u32, src: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(index)
            .pref_source(src)
            .scope(RouteScope::Link)
            .build();
        match self.h.route().add(msg).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding route to {ip}")),
        }
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        match self.h.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding default route via {gateway}")),
        }
    }

    pub async fn add_permanent_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.h
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding neighbour {ip}"))
    }
}

fn link_info(m: netlink_packet_route::link::LinkMessage) -> LinkInfoLite {
    let mut l = LinkInfoLite { index: m.header.index, name: String::new(), kind: None, mac: None };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => l.mac = Some(a.try_into().unwrap_or_default()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(match k {
                            InfoKind::Veth => "veth".into(),
                            InfoKind::Bridge => "bridge".into(),
                            InfoKind::Vxlan => "vxlan".into(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent callers share one netlink socket; the kernel refuses a second dump on a socket
    /// while one runs (EBUSY), which once failed `service create` beside the reconciler.
    #[test]
    fn concurrent_dumps_on_one_handle_take_turns() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (needs root)");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let nl = Netlink::open().unwrap();
                // enough interfaces that a dump spans several messages
                for i in 0..150 {
                    nl.create_veth(&format!("dmp{i}a"), &format!("dmp{i}b"), 1500).await.unwrap();
                }
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        let nl = nl.clone();
                        tokio::spawn(async move {
                            for _ in 0..10 {
                                if i % 2 == 0 {
                                    assert_eq!(nl.links().await.unwrap().len(), 301);
                                } else {
                                    assert!(nl.ipv4_addrs().await.is_ok());
                                }
                                assert!(nl.link("dmp7a").await.unwrap().is_some());
                                assert!(nl.link("nosuch0").await.unwrap().is_none());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
        })
        .join()
        .unwrap();
    }
}
