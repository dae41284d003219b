//! The user side of the eBPF datapath: loads the embedded object with its maps pinned under the
//! node's bpffs, attaches programs through pinned TCX/cgroup links, and offers typed map updates.
//! Reconcilers state what they want (`sync_*`, `prune_*`): each map's entries are written through
//! these, and entries that belong to another writer (e.g. local vs remote endpoints) are never
//! touched by the wrong one. ARCHITECTURE.md lists which module writes each map.
//! Because maps and links are pinned, forwarding continues while the daemon is down; a restarted
//! daemon reuses the pinned maps and swaps its freshly loaded programs into the pinned links
//! atomically (bpf_link_update), so no packet meets a half-replaced datapath.
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use netbee_abi::{
    Backend, BackendKey, CtEntry, CtKey, Endpoint, FrontendKey, Iface, LbCountKey, MAP_VERSION, MacKey, MonitorRate,
    Network, Service, config, drop_reason, stat,
};

pub(crate) const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbee-datapath"));

pub const TC_PROGRAMS: [&str; 4] = ["tc_from_container", "tc_uplink_ingress", "tc_uplink_egress", "tc_overlay_ingress"];
pub const SOCK_PROGRAMS: [&str; 4] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeername4"];

pub fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// Named counters summed over CPUs.
pub type Counters = Vec<(String, u64)>;

pub struct Datapath {
    bpf: Ebpf,
    links_dir: PathBuf,
    /// Written only through the methods below, which keep `endpoints_written` equal to it.
    endpoints: HashMap<MapData, u32, Endpoint>,
    /// What ENDPOINTS holds. The daemon is its only writer (the programs only read it), so its
    /// readers ask this copy: a system call per lookup made every load-balancer pass cost one
    /// per task in the cluster, and the cluster sync read the whole map on every change (issue 18).
    endpoints_written: foldhash::HashMap<u32, Endpoint>,
    pub ifaces: HashMap<MapData, u32, Iface>,
    pub networks: HashMap<MapData, u32, Network>,
    pub subnets: LpmTrie<MapData, u32, u32>,
    pub node_addrs: HashMap<MapData, u32, u32>,
    pub peer_nodes: HashMap<MapData, MacKey, u32>,
    pub vips: HashMap<MapData, u32, u32>,
    pub frontends: HashMap<MapData, FrontendKey, Service>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    lb_conns: PerCpuHashMap<MapData, LbCountKey, u64>,
    config: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    /// Addresses the flow monitor's trace follows (key 0: every packet).
    pub monitor_trace: HashMap<MapData, u32, u8>,
    /// Interfaces (ifindex) the flow monitor's trace follows.
    pub monitor_trace_ifaces: HashMap<MapData, u32, u8>,
    ct_size: u32,
    /// The flow monitor's maps, until the monitor's reader takes them.
    monitor: Option<MonitorMaps>,
    /// What `program_services` last wrote: a pass writes only what differs (see there).
    pub services_programmed: Option<ServicesProgrammed>,
}

/// The service frontends and VIPs `program_services` wrote, and when it last wrote them all.
pub struct ServicesProgrammed {
    pub frontends: std::collections::HashMap<FrontendKey, ServiceFrontend>,
    /// VIPs (address, network id).
    pub vips: Vec<(u32, u32)>,
    pub written_all: std::time::Instant,
}

/// One service frontend: its datapath id, network id, backends in slot order and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFrontend {
    pub id: u32,
    pub net_id: u32,
    pub backends: Vec<Backend>,
    pub flags: u32,
}

/// The flow monitor's ring buffer and its per-CPU rate limiter (for the suppressed counts).
pub struct MonitorMaps {
    pub events: RingBuf<MapData>,
    pub rate: PerCpuArray<MapData, MonitorRate>,
}

impl MonitorMaps {
    /// Events the datapath suppressed since it was loaded, summed over CPUs.
    pub fn suppressed(&self) -> u64 {
        self.rate.get(&0, 0).map(|v| v.iter().map(|r| r.suppressed).sum()).unwrap_or(0)
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(bpf: &mut Ebpf, name: &str) -> Result<T> {
    let m = bpf.take_map(name).ok_or_else(|| anyhow!("datapath object has no map {name}"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

/// cgroup2 magic from linux/magic.h
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// bpffs magic from linux/magic.h
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts a bpffs instance at `dir` unless one is already there.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    crate::paths::make_dir(dir)?;
    let st = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting bpffs at {}", dir.display()))
}

impl Datapath {
    /// Loads the programs and opens (or creates) the pinned maps under `bpffs/netbee`.
    /// `ct_size` sizes a newly created conntrack table; an existing pinned one keeps its size.
    pub fn load(bpffs: &Path, ct_size: u32) -> Result<Datapath> {
        ensure_bpffs(bpffs)?;
        let root = bpffs.join("netbee");
        let maps_dir = root.join(format!("maps-v{MAP_VERSION}"));
        let links_dir = root.join("links");
        crate::paths::make_dir(&maps_dir)?;
        crate::paths::make_dir(&links_dir)?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries("CT", ct_size)
            .load(OBJECT)
            .context("loading the eBPF datapath object")?;
        for name in TC_PROGRAMS {
            let p: &mut SchedClassifier =
                bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            p.load().with_context(|| format!("verifying program {name}"))?;
        }
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr =
                bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            p.load().with_context(|| format!("verifying program {name}"))?;
        }
        let endpoints: HashMap<MapData, u32, Endpoint> = take(&mut bpf, "ENDPOINTS")?;
        // a pinned map outlives the daemon: what an earlier one wrote is there
        let endpoints_written = endpoints.iter().filter_map(|r| r.ok()).collect();
        Ok(Datapath {
            endpoints,
            endpoints_written,
            ifaces: take(&mut bpf, "IFACES")?,
            networks: take(&mut bpf, "NETWORKS")?,
            subnets: take(&mut bpf, "SUBNETS")?,
            node_addrs: take(&mut bpf, "NODE_ADDRS")?,
            peer_nodes: take(&mut bpf, "PEER_NODES")?,
            vips: take(&mut bpf, "VIPS")?,
            frontends: take(&mut bpf, "FRONTENDS")?,
            backends: take(&mut bpf, "BACKENDS")?,
            ct: take(&mut bpf, "CT")?,
            lb_conns: take(&mut bpf, "LB_CONNS")?,
            config: take(&mut bpf, "CONFIG")?,
            stats: take(&mut bpf, "STATS")?,
            drops: take(&mut bpf, "DROPS")?,
            monitor_trace: take(&mut bpf, "MONITOR_TRACE")?,
            monitor_trace_ifaces: take(&mut bpf, "MONITOR_TRACE_IFACES")?,
            ct_size: pinned_max_entries(&maps_dir.join("CT")).unwrap_or(ct_size),
            monitor: Some(MonitorMaps {
                events: take(&mut bpf, "MONITOR_EVENTS")?,
                rate: take(&mut bpf, "MONITOR_RATE")?,
            }),
            services_programmed: None,
            bpf,
            links_dir,
        })
    }

    #[cfg(test)]
    pub fn program_mut(&mut self, name: &str) -> &mut aya::programs::Program {
        self.bpf.program_mut(name).expect("program")
    }

    pub fn set_config(&mut self, idx: u32, v: u64) -> Result<()> {
        self.config.set(idx, v, 0).with_context(|| format!("setting datapath config {idx}"))
    }

    /// Attaches a TC program to `ifname` through a TCX link pinned as `pin`. If the pin already
    /// holds a link (daemon restart, upgrade), the program inside it is replaced atomically.
    pub fn attach_tc(&mut self, prog: &str, ifname: &str, dir: TcAttachType, pin: &str) -> Result<()> {
        let pin_path = self.links_dir.join(pin);
        let p: &mut SchedClassifier =
            self.bpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing"))?.try_into()?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
        let pinned = PinnedLink::from_pin(&pin_path).ok();
        // a pinned link lives on after its device is deleted (a veth removed by hand, a NIC reset),
        // attached to nothing: it is replaced by a link on the device that has the name now
        let pinned = match pinned {
            Some(old) if pinned_tcx_ifindex(&pin_path) == Some(ifindex) => Some(old),
            Some(old) => {
                drop(old);
                fs::remove_file(&pin_path)
                    .with_context(|| format!("unpinning the stale link {}", pin_path.display()))?;
                None
            }
            None => None,
        };
        let id = match pinned {
            Some(old) => {
                let link = FdLink::from(old).try_into()?;
                let id = p.attach_to_link(link).with_context(|| format!("replacing {prog} on {ifname}"))?;
                fs::remove_file(&pin_path)?;
                id
            }
            None => p
                .attach_with_options(ifname, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attaching {prog} to {ifname}"))?,
        };
        let link: FdLink = p.take_link(id)?.try_into()?;
        link.pin(&pin_path).with_context(|| format!("pinning link {}", pin_path.display()))?;
        Ok(())
    }

    /// Attaches the socket hooks to a cgroup v2 directory. A new link is created before the old
    /// one is released so node-local connections are translated throughout.
    pub fn attach_sock_hooks(&mut self, cgroup: &Path) -> Result<()> {
        let st = nix::sys::statfs::statfs(cgroup).with_context(|| format!("cgroup {}", cgroup.display()))?;
        if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            anyhow::bail!("{} is not a directory of a cgroup v2 hierarchy (--cgroup)", cgroup.display());
        }
        let cg = fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCK_PROGRAMS {
            let pin_path = self.links_dir.join(format!("cgroup-{name}"));
            let p: &mut CgroupSockAddr =
                self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            // a bpf link on a cgroup is always multi-attach; link_create wants flags 0 (Single)
            let id = p
                .attach(&cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
            let link: FdLink = p.take_link(id)?.try_into()?;
            let _ = fs::remove_file(&pin_path);
            link.pin(&pin_path)?;
        }
        Ok(())
    }

    /// Unpinning drops the last reference to the link, which detaches the program.
    pub fn detach(&self, pin: &str) -> Result<()> {
        let p = self.links_dir.join(pin);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unpinning {}", p.display())),
        }
    }

    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.links_dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    pub fn set_subnet(&mut self, subnet: ipnetwork::Ipv4Network, net_id: u32) -> Result<()> {
        let key = Key::new(subnet.prefix() as u32, ip_be(subnet.network()));
        self.subnets.insert(&key, net_id, 0).context("updating SUBNETS")
    }

    pub fn remove_subnet(&mut self, subnet: ipnetwork::Ipv4Network) -> Result<()> {
        let key = Key::new(subnet.prefix() as u32, ip_be(subnet.network()));
        ignore_missing(self.subnets.remove(&key))
    }

    pub fn subnets(&self) -> Vec<(u32, u32)> {
        self.subnets.keys().filter_map(|k| k.ok()).map(|k| (k.prefix_len(), k.data())).collect()
    }

    /// (packet counters, drop counters), each by name.
    pub fn counters(&self) -> Result<(Counters, Counters)> {
        let mut stats = Vec::new();
        for (i, name) in stat::NAMES.iter().enumerate() {
            let v: u64 = self.stats.get(&(i as u32), 0)?.iter().sum();
            stats.push((name.to_string(), v));
        }
        let mut drops = Vec::new();
        for (i, name) in drop_reason::NAMES.iter().enumerate() {
            let v: u64 = self.drops.get(&(i as u32), 0)?.iter().sum();
            drops.push((name.to_string(), v));
        }
        Ok((stats, drops))
    }

    /// New connections per frontend and backend (`LB_CONNS`), summed over CPUs.
    pub fn lb_counts(&self) -> std::collections::HashMap<LbCountKey, u64> {
        self.lb_conns.iter().filter_map(|r| r.ok()).map(|(k, v)| (k, v.iter().sum())).collect()
    }

    /// Removes the new-connection counters `keep` refuses (their frontend or backend is gone);
    /// returns how many went.
    pub fn prune_lb_counts(&mut self, keep: impl Fn(&LbCountKey) -> bool) -> Result<usize> {
        let doomed: Vec<LbCountKey> = self.lb_conns.keys().filter_map(|r| r.ok()).filter(|k| !keep(k)).collect();
        for k in &doomed {
            ignore_missing(self.lb_conns.remove(k))?;
        }
        Ok(doomed.len())
    }

    pub fn ct_capacity(&self) -> u32 {
        self.ct_size
    }

    /// Hands the flow monitor's maps to their one reader (None after the first call).
    pub fn take_monitor_maps(&mut self) -> Option<MonitorMaps> {
        self.monitor.take()
    }

    pub fn config_value(&self, idx: u32) -> u64 {
        self.config.get(&idx, 0).unwrap_or(0)
    }
}

/// The interface a pinned TCX link is attached to (0 once its device is gone), read with
/// BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD: aya's `LinkInfo` does not expose it. None when the pin
/// is not a TCX link or cannot be read.
fn pinned_tcx_ifindex(pin: &Path) -> Option<u32> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_TCX: u32 = 11;
    /// `union bpf_attr` for BPF_OBJ_GET
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    /// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0 };
    // SAFETY: the attribute struct and the path it points to outlive the call
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &mut get as *mut ObjGet, size_of::<ObjGet>()) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_link_info`: type, id, prog_id, then the per-type union (8-aligned) at offset 16;
    // its tcx member starts with the ifindex
    let mut info = [0u64; 16];
    let mut req =
        InfoByFd { bpf_fd: fd.as_raw_fd() as u32, info_len: size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut req as *mut InfoByFd, size_of::<InfoByFd>())
    };
    let link_type = info[0] as u32;
    (rc == 0 && link_type == BPF_LINK_TYPE_TCX).then_some(info[2] as u32)
}

fn pinned_max_entries(pin: &Path) -> Option<u32> {
    aya::maps::MapInfo::from_pin(pin).ok().map(|i| i.max_entries())
}

/// Whether an ENDPOINTS entry is another node's container (reached through its node's underlay
/// address) rather than one of this node's (reached through its veth).
pub fn is_remote(e: &Endpoint) -> bool {
    e.ifindex == 0
}

/// Makes the entries of `map` that `owned` selects exactly `want`: writes what differs, removes
/// the owned entries not wanted. Entries `owned` does not select are never touched.
pub fn sync<K, V>(map: &mut HashMap<MapData, K, V>, want: &[(K, V)], owned: impl Fn(&K, &V) -> bool) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let want_keys: std::collections::HashSet<K> = want.iter().map(|(k, _)| *k).collect();
    prune(map, |k, v| !owned(k, v) || want_keys.contains(k))?;
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(*k, *v, 0)?;
        }
    }
    Ok(())
}

/// Removes every entry of `map` that `keep` refuses; returns how many went.
pub fn prune<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    keep: impl Fn(&K, &V) -> bool,
) -> Result<usize> {
    let doomed: Vec<K> = map.iter().filter_map(|r| r.ok()).filter(|(k, v)| !keep(k, v)).map(|(k, _)| k).collect();
    for k in &doomed {
        ignore_missing(map.remove(k))?;
    }
    Ok(doomed.len())
}

impl Datapath {
    /// The ENDPOINTS entry of `ip` (as written; no system call).
    pub fn endpoint(&self, ip: u32) -> Option<&Endpoint> {
        self.endpoints_written.get(&ip)
    }

    /// Every ENDPOINTS entry, read from the kernel.
    pub fn endpoints_in_kernel<C: FromIterator<(u32, Endpoint)>>(&self) -> C {
        self.endpoints.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn insert_endpoint(&mut self, ip: u32, e: Endpoint) -> Result<()> {
        self.endpoints.insert(ip, e, 0).context("updating ENDPOINTS")?;
        self.endpoints_written.insert(ip, e);
        Ok(())
    }

    fn remove_endpoint(&mut self, ip: u32) -> Result<()> {
        ignore_missing(self.endpoints.remove(&ip))?;
        self.endpoints_written.remove(&ip);
        Ok(())
    }

    /// ENDPOINTS entries of other nodes' containers (the overlay sync is their only writer):
    /// only the entries that differ are written. True when any was.
    pub fn sync_remote_endpoints(&mut self, want: &[(u32, Endpoint)]) -> Result<bool> {
        let want_keys: foldhash::HashSet<u32> = want.iter().map(|(k, _)| *k).collect();
        let mut changed = self.prune_endpoints(|k, v| !is_remote(v) || want_keys.contains(k))? > 0;
        for (k, v) in want {
            if self.endpoints_written.get(k) != Some(v) {
                self.insert_endpoint(*k, *v)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// ENDPOINTS entries of this node's containers: keeps those whose address is in `keep`.
    pub fn prune_local_endpoints(&mut self, keep: &std::collections::HashSet<u32>) -> Result<usize> {
        self.prune_endpoints(|k, v| is_remote(v) || keep.contains(k))
    }

    fn prune_endpoints(&mut self, keep: impl Fn(&u32, &Endpoint) -> bool) -> Result<usize> {
        let doomed: Vec<u32> = self.endpoints_written.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| *k).collect();
        for k in &doomed {
            self.remove_endpoint(*k)?;
        }
        Ok(doomed.len())
    }

    /// Removes the local endpoint entry of `ip` (a remote one that took its place stays).
    pub fn remove_local_endpoint(&mut self, ip: u32) -> Result<()> {
        if self.endpoints_written.get(&ip).is_some_and(|e| !is_remote(e)) {
            self.remove_endpoint(ip)?;
        }
        Ok(())
    }
}

/// Map removals of entries that are already gone are not errors for a reconciler.
pub fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Default conntrack idle timeouts (nanoseconds). Established flows live for hours: IPVS's
/// 900 s default that drops idle docker connections is a known complaint (moby#31208).
pub fn default_timeouts() -> [(u32, u64); 4] {
    const S: u64 = 1_000_000_000;
    [
        (config::CT_TIMEOUT_SYN, 60 * S),
        (config::CT_TIMEOUT_ESTABLISHED, 6 * 3600 * S),
        (config::CT_TIMEOUT_CLOSING, 10 * S),
        (config::CT_TIMEOUT_UDP, 120 * S),
    ]
}

/// Kernel memory per conntrack entry, an upper bound of what the kernel charges an LRU hash of
/// 16-byte keys and 32-byte values (element header, key, value, and the bucket array, which is
/// rounded up to a power of two; the table is allocated whole when created): measured from the
/// map's fdinfo `memlock`, 112 bytes at 65,536 entries and 121 at 40,960, by
/// `datapath_tests::a_conntrack_entry_costs_what_the_default_size_assumes`.
pub const CT_ENTRY_BYTES: u64 = 128;

/// The conntrack table's size when `--conntrack-size` is not given: 0.25 % of the node's memory
/// (Cilium's default ratio for its dynamically sized maps) at [`CT_ENTRY_BYTES`] each, between
/// 65,536 and 4,194,304 entries, a multiple of 1,024. A flow takes two entries (one per
/// direction). 24 GiB → 502,784 entries (61 MiB), 251,392 flows; 2 GiB → 65,536 (8 MiB).
pub fn default_ct_size(mem_total_bytes: u64) -> u32 {
    let fitting = mem_total_bytes / 400 / CT_ENTRY_BYTES;
    (fitting.clamp(65_536, 4_194_304) as u32) & !1023
}

/// Whether a conntrack table of `capacity` entries holding `live` is under pressure (three
/// quarters full): the collector then gives the least useful flows short timeouts.
pub fn ct_under_pressure(live: u64, capacity: u64) -> bool {
    live * 4 >= capacity * 3
}

/// The node's memory (MemTotal of /proc/meminfo), in bytes.
pub fn node_memory() -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no MemTotal in /proc/meminfo"))
}

#[cfg(test)]
mod sizing_tests {
    use super::*;

    #[test]
    fn the_default_conntrack_size_follows_memory_within_bounds() {
        const GIB: u64 = 1 << 30;
        assert_eq!(default_ct_size(24 * GIB), 502_784);
        assert_eq!(default_ct_size(2 * GIB), 65_536, "the floor");
        assert_eq!(default_ct_size(4096 * GIB), 4_194_304, "the ceiling");
        for gib in [1, 3, 7, 24, 100, 900] {
            let n = u64::from(default_ct_size(gib * GIB));
            assert_eq!(n % 1024, 0);
            assert!(n * CT_ENTRY_BYTES <= (gib * GIB / 400).max(65_536 * CT_ENTRY_BYTES), "{gib} GiB");
        }
        assert!(node_memory().unwrap() > 0);
    }
}
