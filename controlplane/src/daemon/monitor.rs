//! The flow monitor's daemon side (`GET /datapath/monitor`, `netbee monitor`). The first monitor
//! to attach starts the one reader of the datapath's ring buffer; the reader names what it reads
//! (`monitor::record`) and fans the records out through a bounded broadcast channel, so a slow
//! monitor loses records (and is told how many) instead of growing the daemon's memory. While at
//! least one monitor is attached, `config::MONITOR` holds the kinds they asked for; with none
//! attached the datapath emits nothing. A trace follows addresses and interfaces (`TraceScope`):
//! those of the container or service it was asked for when it attached, or every packet; the
//! datapath's maps hold the union of the attached traces'.
use crate::cluster::etcd::Reads;
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use netbee_abi::{FrontendKey, config, monitor_kind};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{Notify, broadcast},
};
use tracing::warn;

use super::{Daemon, services::SERVICE_ID_BASE};
use crate::{
    api::MonitorRecord,
    datapath::{self, MonitorMaps, ip_be, ip_from_be},
    model::{NodeRecord, ServiceRecord, TaskRecord, TaskState},
    monitor::{self, Names, Owner},
};

/// Records buffered per monitor before a slow one starts losing them.
const CHANNEL: usize = 4096;
/// A monitor with nothing to show is sent an empty line this often, so a client that went away
/// is noticed (the write fails) and its kinds are switched off in the datapath.
const HEARTBEAT: Duration = Duration::from_secs(5);

pub struct MonitorHub {
    tx: broadcast::Sender<Arc<MonitorRecord>>,
    state: Mutex<HubState>,
    /// A monitor attached: names are rebuilt at once (containers started since the last second).
    attached: Notify,
}

#[derive(Default)]
struct HubState {
    /// The datapath's maps until the reader is started.
    maps: Option<MonitorMaps>,
    drop_monitors: usize,
    lb_monitors: usize,
    /// Attached traces by subscription: what each follows (None: every packet).
    traces: HashMap<u64, Option<TraceScope>>,
    next_id: u64,
}

/// What a trace follows: packets from or to these addresses, and packets of these interfaces'
/// programs (a container's host-side veth: what it sends, also once translated).
#[derive(Clone, Debug, Default)]
pub struct TraceScope {
    pub addrs: Vec<Ipv4Addr>,
    pub ifaces: Vec<u32>,
}

impl MonitorHub {
    pub fn new(maps: Option<MonitorMaps>) -> MonitorHub {
        MonitorHub {
            tx: broadcast::channel(CHANNEL).0,
            state: Mutex::new(HubState { maps, ..Default::default() }),
            attached: Notify::new(),
        }
    }
}

/// An attached monitor: its records, and on drop its kinds are released.
pub struct MonitorSubscription {
    pub rx: broadcast::Receiver<Arc<MonitorRecord>>,
    d: Arc<Daemon>,
    kinds: u8,
    id: u64,
}

impl Drop for MonitorSubscription {
    fn drop(&mut self) {
        if let Err(e) = self.d.monitor_count(self.id, self.kinds, None) {
            warn!("detaching a monitor: {e:#}");
        }
    }
}

impl MonitorSubscription {
    /// The next record, a `Lost` count when this monitor fell behind, or None after a quiet
    /// `HEARTBEAT`.
    pub async fn next(&mut self) -> Option<Arc<MonitorRecord>> {
        match tokio::time::timeout(HEARTBEAT, self.rx.recv()).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => Some(Arc::new(MonitorRecord::Lost { count: n })),
            // the reader never stops while the daemon runs
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => None,
        }
    }
}

impl Daemon {
    /// Attaches a monitor for `kinds` (`monitor_kind` bits): starts the reader the first time and
    /// switches the kinds on in the datapath. A trace follows `traced` (None: every packet).
    pub(super) fn monitor_attach(
        self: &Arc<Self>,
        kinds: u8,
        traced: Option<TraceScope>,
    ) -> Result<MonitorSubscription> {
        let rx = self.monitor.tx.subscribe();
        let id = {
            let mut st = self.monitor.state.lock().unwrap();
            if let Some(maps) = st.maps.take() {
                tokio::spawn(read_monitor(self.clone(), maps));
            }
            st.next_id += 1;
            st.next_id
        };
        self.monitor_count(id, kinds, Some(traced))?;
        self.monitor.attached.notify_one();
        Ok(MonitorSubscription { rx, d: self.clone(), kinds, id })
    }

    /// Counts monitor `id` in (`attach`: what its trace follows) or out (None), and makes the
    /// datapath's kinds and traced addresses what the attached monitors ask for.
    fn monitor_count(&self, id: u64, kinds: u8, attach: Option<Option<TraceScope>>) -> Result<()> {
        let mut guard = self.monitor.state.lock().unwrap();
        let st = &mut *guard;
        for (bit, n) in [(monitor_kind::DROP, &mut st.drop_monitors), (monitor_kind::LB, &mut st.lb_monitors)] {
            if kinds & bit != 0 {
                *n = if attach.is_some() { *n + 1 } else { n.saturating_sub(1) };
            }
        }
        if kinds & monitor_kind::TRACE != 0 {
            match attach {
                Some(traced) => st.traces.insert(id, traced),
                None => st.traces.remove(&id),
            };
        }
        let mask = if st.drop_monitors > 0 { monitor_kind::DROP } else { 0 }
            | if st.lb_monitors > 0 { monitor_kind::LB } else { 0 }
            | if st.traces.is_empty() { 0 } else { monitor_kind::TRACE };
        let scopes: Vec<&TraceScope> = st.traces.values().flatten().collect();
        // map entries: key -> 1
        let (addrs, ifaces) = if st.traces.values().any(Option::is_none) {
            (BTreeSet::from([0]), BTreeSet::new())
        } else {
            let addrs: BTreeSet<u32> = scopes.iter().flat_map(|s| s.addrs.iter().map(|a| ip_be(*a))).collect();
            let ifaces: BTreeSet<u32> = scopes.iter().flat_map(|s| s.ifaces.iter().copied()).collect();
            (addrs, ifaces)
        };
        let entries = |keys: BTreeSet<u32>| keys.into_iter().map(|k| (k, 1u8)).collect::<Vec<_>>();
        let (addrs, ifaces) = (entries(addrs), entries(ifaces));
        // lock order: the hub's state, then the datapath; what is followed before the kind is on
        let mut dp = self.dp.lock().unwrap();
        datapath::sync(&mut dp.monitor_trace, &addrs, |_, _| true)?;
        datapath::sync(&mut dp.monitor_trace_ifaces, &ifaces, |_, _| true)?;
        dp.set_config(config::MONITOR, mask as u64)
    }

    /// What the monitor names things with: this node's containers and their interfaces, every
    /// service task's addresses and node, and the datapath's frontends by service id.
    async fn monitor_names(&self) -> Names {
        let mut n = Names::default();
        if let Ok(ix) = nix::net::if_::if_nametoindex(self.node.uplink.as_str()) {
            n.ifaces.insert(ix, (self.node.uplink.clone(), None));
        }
        for c in self.containers().unwrap_or_default() {
            for ep in &c.endpoints {
                let ifname = ep.host_ifname();
                if let Ok(ix) = nix::net::if_::if_nametoindex(ifname.as_str()) {
                    n.ifaces.insert(ix, (ifname, Some(c.name.clone())));
                }
                n.addrs.insert(ep.ip, Owner { name: c.name.clone(), ..Default::default() });
            }
            for p in &c.ports {
                n.services.insert(p.service_id, c.name.clone());
            }
        }
        let services: Vec<ServiceRecord> = self.shared().list().await.unwrap_or_default();
        if services.is_empty() {
            return n;
        }
        let tasks: Vec<TaskRecord> = self.shared().list().await.unwrap_or_default();
        let nodes: Vec<NodeRecord> = self.cluster_nodes(Reads::Linearizable).await.map(|(n, _)| n).unwrap_or_default();
        // a running task's name wins over a gone one's that had the same address
        let mut tasks: Vec<&TaskRecord> = tasks.iter().collect();
        tasks.sort_by_key(|t| t.state == TaskState::Running);
        for t in tasks {
            let owner = Owner {
                name: format!("{}.{}.{}", t.service_name, t.slot, &t.id[..12.min(t.id.len())]),
                service: Some(t.service_name.clone()),
                node: nodes.iter().find(|nd| nd.id == t.node_id).map(|nd| nd.hostname.clone()),
            };
            for (_, ip) in &t.addrs {
                n.addrs.insert(*ip, owner.clone());
            }
        }
        let frontends: Vec<(FrontendKey, u32)> = {
            let dp = self.dp.lock().unwrap();
            dp.frontends.iter().filter_map(|r| r.ok()).map(|(k, v)| (k, v.id)).collect()
        };
        for (k, id) in frontends.into_iter().filter(|(_, id)| *id >= SERVICE_ID_BASE) {
            let vip = ip_from_be(k.addr);
            let port = u16::from_be(k.port);
            let s = services.iter().find(|s| {
                if k.addr == 0 {
                    s.spec.ports.iter().any(|p| p.published == port && super::ports::proto_num(p.proto) == k.proto)
                } else {
                    s.vips.iter().any(|v| v.ip == vip)
                }
            });
            if let Some(s) = s {
                n.services.insert(id, s.spec.name.clone());
            }
        }
        n
    }
}

/// Nanoseconds to add to a CLOCK_MONOTONIC time (bpf_ktime_get_ns) for the wall-clock time.
fn monotonic_to_wall() -> i64 {
    let now = |clock| {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec this closure owns
        unsafe { libc::clock_gettime(clock, &mut t) };
        t.tv_sec * 1_000_000_000 + t.tv_nsec
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The ring buffer's one reader; runs for the daemon's lifetime once a monitor attached.
async fn read_monitor(d: Arc<Daemon>, maps: MonitorMaps) {
    let suppressed_total = maps.suppressed();
    let MonitorMaps { events, rate } = maps;
    let suppressed = move || rate.get(&0, 0).map(|v| v.iter().map(|r| r.suppressed).sum()).unwrap_or(0u64);
    // SAFETY: the AsyncFd owns the ring buffer, and with it the descriptor, while registered
    let mut ring = match unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) } {
        Ok(r) => r,
        Err(e) => {
            warn!("the flow monitor cannot poll its ring buffer: {e}");
            return;
        }
    };
    let tx = d.monitor.tx.clone();
    let mut names = d.monitor_names().await;
    let mut last_suppressed = suppressed_total;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("the flow monitor stopped reading: {e}");
                        return;
                    }
                };
                let offset = monotonic_to_wall();
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    let Some(ev) = monitor::decode(&item) else { continue };
                    if let Some(r) = monitor::record(&ev, &names, rfc3339(ev.ktime as i64 + offset)) {
                        // no subscriber left is not an error: the datapath is told at detach
                        let _ = tx.send(Arc::new(r));
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let now = suppressed();
                if now > last_suppressed {
                    let _ = tx.send(Arc::new(MonitorRecord::Suppressed { count: now - last_suppressed }));
                }
                last_suppressed = now;
                if tx.receiver_count() > 0 {
                    names = d.monitor_names().await;
                }
            }
            _ = d.monitor.attached.notified() => names = d.monitor_names().await,
        }
    }
}
