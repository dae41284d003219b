//! Service discovery: the embedded DNS server on every user network's gateway, answering for
//! the containers, aliases, services (their VIP) and `tasks.<service>` of the networks the asking
//! container is on (each of them, not only the one its resolv.conf's gateway belongs to), and
//! forwarding everything else to the node's resolvers.
//!
//! The table is rebuilt whole (`refresh_names`) from three sources, each kept current by whoever
//! changes it, so a name is there when the command that made it returns:
//! - this node's containers, read from the store at every rebuild; every operation that starts,
//!   stops, connects or disconnects one rebuilds before it returns;
//! - other nodes' overlay endpoints, as the cluster sync read them from etcd (its watch fires on
//!   every change);
//! - services and tasks, as the service loop and the cluster sync list them, plus what this node
//!   changed since (`note_service`, `note_task`): a list read before a change must not undo it.
//!
//! Another node's new name reaches this node with the cluster sync its watch triggers, a few
//! milliseconds after the command that made it returned there, more under load. So in a swarm a
//! name that could be such a name (one label, or `tasks.` and one label) and is not known yet is
//! [`Lookup::Unsettled`]: the query waits for a cluster sync that began after it came in
//! ([`NameTable::settle`], at most [`SETTLE_WAIT`]) and is answered from that. A name that does
//! not exist costs a sync; lookups of external names (they have dots) never wait.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use tracing::warn;

use super::Daemon;
use crate::{
    dns::{self, Lookup, Names},
    model::{ContainerRecord, NetworkRecord, RemoteEndpoint, ServiceRecord, Status, TaskRecord, TaskState},
    store::Record,
};

/// What a note is keyed by.
trait Keyed {
    fn id(&self) -> &str;
}

impl Keyed for ServiceRecord {
    fn id(&self) -> &str {
        self.key()
    }
}

impl Keyed for TaskRecord {
    fn id(&self) -> &str {
        self.key()
    }
}

/// The embedded DNS of the node: the names it answers and a server per user network's gateway.
#[derive(Default)]
pub(super) struct DnsState {
    pub names: Arc<NameTable>,
    pub servers: Mutex<HashMap<Ipv4Addr, dns::DnsServer>>,
    /// What the table is built from besides this node's containers. Held while a table is built
    /// and installed, so two rebuilds cannot install out of order.
    sources: Mutex<Sources>,
    /// Serializes starting servers: two rebuilds must not both bind a new gateway.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Sources {
    /// Other nodes' overlay endpoints (this node's own come from its store, which is current).
    remote: Vec<RemoteEndpoint>,
    services: Listed<ServiceRecord>,
    tasks: Listed<TaskRecord>,
}

/// Records listed from the shared store, and this node's own changes since.
struct Listed<T> {
    items: Vec<T>,
    /// When the read of `items` began; a list whose read began earlier is older and ignored.
    read_at: Option<Instant>,
    /// Changes made here (None: deleted) and when. One stands until a list whose read began
    /// after it replaces `items`: etcd's reads are linearizable, so that list has the change.
    notes: HashMap<String, (Option<T>, Instant)>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed { items: Vec::new(), read_at: None, notes: HashMap::new() }
    }
}

impl<T: Keyed + Clone> Listed<T> {
    fn replace(&mut self, read_at: Instant, items: Vec<T>) {
        if self.read_at.is_some_and(|seen| read_at < seen) {
            return;
        }
        self.items = items;
        self.read_at = Some(read_at);
        self.notes.retain(|_, (_, at)| *at >= read_at);
    }

    fn note(&mut self, id: &str, item: Option<T>) {
        self.notes.insert(id.to_string(), (item, Instant::now()));
    }

    /// The list with the notes applied.
    fn current(&self) -> Vec<T> {
        let mut out: Vec<T> = self.items.iter().filter(|i| !self.notes.contains_key(i.id())).cloned().collect();
        out.extend(self.notes.values().filter_map(|(i, _)| i.clone()));
        out
    }
}

/// How long a query for an unsettled name waits for a fresh cluster sync.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// The names of each network and who may see them.
pub struct NameTable {
    table: RwLock<Table>,
    /// Cluster syncs completed (their names installed); `settle` waits for it to move.
    syncs: tokio::sync::watch::Sender<u64>,
    /// Asks the cluster sync for a pass now (a query waits for a name it may bring).
    pub(super) sync_wanted: tokio::sync::Notify,
}

impl Default for NameTable {
    fn default() -> Self {
        NameTable {
            table: RwLock::default(),
            syncs: tokio::sync::watch::Sender::new(0),
            sync_wanted: tokio::sync::Notify::new(),
        }
    }
}

impl NameTable {
    /// A cluster sync has installed the names it read.
    pub(super) fn synced(&self) {
        self.syncs.send_modify(|n| *n += 1);
    }

    /// What the table has for `name` asked by `client` on `local`; a miss is `Unsettled` when
    /// `may_wait` and another node may have the name already.
    fn find(&self, client: Ipv4Addr, local: Ipv4Addr, name: &str, may_wait: bool) -> Lookup {
        let t = self.table.read().unwrap();
        let via = t.gateways.get(&local);
        // the network the query came in on first (a name on two of the client's networks has the
        // address a connection from here would use), then the client's other networks; a client
        // this node does not know sees the network it asked on only
        let scope: Vec<&String> = match t.clients.get(&client) {
            Some(nets) => {
                let first = via.filter(|v| nets.contains(*v));
                first.into_iter().chain(nets.iter().filter(|n| Some(*n) != via)).collect()
            }
            None => via.into_iter().collect(),
        };
        for net in &scope {
            if let Some(ips) = t.names.get(*net).and_then(|m| m.get(name)) {
                return Lookup::Found(ips.clone());
            }
        }
        if may_wait && t.in_swarm && !scope.is_empty() && could_be_netbee_name(name) {
            return Lookup::Unsettled;
        }
        if t.everywhere.contains(name) {
            // a name of another network: not visible from here, and never sent upstream
            return Lookup::NotFound;
        }
        Lookup::Forward
    }
}

/// Container, alias and service names have no dot; `tasks.S` has one.
fn could_be_netbee_name(name: &str) -> bool {
    !name.is_empty() && !name.strip_prefix("tasks.").unwrap_or(name).contains('.')
}

#[derive(Default)]
struct Table {
    /// Network id → name → addresses.
    names: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// The gateway of each network with an embedded DNS server → that network's id.
    gateways: HashMap<Ipv4Addr, String>,
    /// A local container's address on a network with DNS → every such network it is on, in the
    /// order it joined them: a query from that address may see their names, and no others.
    clients: HashMap<Ipv4Addr, Vec<String>>,
    /// Every name of every network: one the client may not see is NXDOMAIN, never forwarded.
    everywhere: HashSet<String>,
    /// Other nodes make names too: a miss may be one not synced yet.
    in_swarm: bool,
}

impl Names for NameTable {
    fn lookup(&self, client: Ipv4Addr, local: Ipv4Addr, name: &str) -> Lookup {
        self.find(client, local, name, true)
    }

    /// Waits for a cluster sync that began after the query (the one running when it came in may
    /// have read etcd before the name was written: two completions), answering as soon as the
    /// name is there.
    fn settle(self: Arc<Self>, client: Ipv4Addr, local: Ipv4Addr, name: String) -> BoxFuture<'static, Lookup> {
        Box::pin(async move {
            let mut syncs = self.syncs.subscribe();
            let asked = *syncs.borrow_and_update();
            self.sync_wanted.notify_one();
            let deadline = tokio::time::sleep(SETTLE_WAIT);
            tokio::pin!(deadline);
            loop {
                if let found @ Lookup::Found(_) = self.find(client, local, &name, false) {
                    return found;
                }
                if *syncs.borrow_and_update() >= asked + 2 {
                    break;
                }
                tokio::select! {
                    r = syncs.changed() => if r.is_err() { break },
                    _ = &mut deadline => break,
                }
            }
            self.find(client, local, &name, false)
        })
    }
}

/// The table for these sources. `remote` must not hold this node's endpoints (its containers
/// are authoritative for them).
fn build(
    nets: &[NetworkRecord],
    containers: &[&ContainerRecord],
    remote: &[RemoteEndpoint],
    services: &[ServiceRecord],
    tasks: &[TaskRecord],
) -> Table {
    let mut table: HashMap<String, HashMap<String, Vec<Ipv4Addr>>> = HashMap::new();
    let mut add = |net: &str, name: &str, ip: Ipv4Addr| {
        let e = table.entry(net.to_string()).or_default().entry(name.to_lowercase()).or_default();
        if !e.contains(&ip) {
            e.push(ip);
        }
    };
    let running: Vec<&ContainerRecord> =
        containers.iter().copied().filter(|c| c.state.status == Status::Running).collect();
    for c in &running {
        for e in &c.endpoints {
            add(&e.network_id, &c.name, e.ip);
            add(&e.network_id, &c.config.hostname, e.ip);
            if let Some(a) = c.attachments.iter().find(|a| a.network_id == e.network_id) {
                for alias in &a.aliases {
                    add(&e.network_id, alias, e.ip);
                }
            }
        }
    }
    for e in remote {
        add(&e.network_id, &e.container_name, e.ip);
        for alias in &e.aliases {
            add(&e.network_id, alias, e.ip);
        }
    }
    // the live tasks grouped once: filtering all tasks for each service made a build cost
    // services × tasks (10^7 steps at 1,000 services of 10)
    let mut live_by_service: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    for t in tasks.iter().filter(|t| t.desired_running && t.state == TaskState::Running) {
        live_by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    for s in services {
        for v in &s.vips {
            add(&v.network_id, &s.spec.name, v.ip);
            // a service's aliases are names of its VIP on their network only
            for alias in s.spec.aliases.get(&v.network_id).into_iter().flatten() {
                add(&v.network_id, alias, v.ip);
            }
        }
        let mut live = live_by_service.remove(s.id.as_str()).unwrap_or_default();
        live.sort_by_key(|t| t.slot);
        for t in live {
            for (net, ip) in &t.addrs {
                add(net, &format!("tasks.{}", s.spec.name), *ip);
            }
        }
    }
    let everywhere: HashSet<String> = table.values().flat_map(|m| m.keys().cloned()).collect();
    // user networks only: the default `bridge` network has no embedded DNS, as in docker
    let gateways: HashMap<Ipv4Addr, String> = nets
        .iter()
        .filter(|n| n.carries_containers() && n.name != "bridge")
        .filter_map(|n| Some((n.ipam.as_ref()?.config().gateway, n.id.clone())))
        .collect();
    let with_dns: HashSet<&String> = gateways.values().collect();
    let mut clients: HashMap<Ipv4Addr, Vec<String>> = HashMap::new();
    for c in &running {
        let nets: Vec<String> = c
            .attachments
            .iter()
            .filter(|a| with_dns.contains(&a.network_id))
            .filter(|a| c.endpoints.iter().any(|e| e.network_id == a.network_id))
            .map(|a| a.network_id.clone())
            .collect();
        for e in c.endpoints.iter().filter(|e| with_dns.contains(&e.network_id)) {
            clients.insert(e.ip, nets.clone());
        }
    }
    table.retain(|net, _| with_dns.contains(net));
    Table { names: table, gateways, clients, everywhere, in_swarm: false }
}

impl Daemon {
    /// Other nodes' overlay endpoints as last read from the cluster store.
    pub(super) fn remote_endpoints(&self) -> Vec<RemoteEndpoint> {
        self.dns.sources.lock().unwrap().remote.clone()
    }

    /// Rebuilds the name table from the current sources and makes sure a DNS server listens on
    /// every user network's gateway. Every operation that adds or removes names calls it before
    /// it returns.
    pub(super) async fn refresh_names(&self) {
        let gateways = {
            let sources = self.dns.sources.lock().unwrap();
            let (Ok(nets), Ok(containers)) = (self.networks(), self.containers_shared()) else { return };
            let containers: Vec<&ContainerRecord> = containers.values().collect();
            let remote: &[RemoteEndpoint] = if self.in_swarm() { &sources.remote } else { &[] };
            let mut table = build(&nets, &containers, remote, &sources.services.current(), &sources.tasks.current());
            table.in_swarm = self.in_swarm();
            let gateways: HashSet<Ipv4Addr> = table.gateways.keys().copied().collect();
            *self.dns.names.table.write().unwrap() = table;
            gateways
        };
        self.ensure_dns_servers(&gateways).await;
    }

    /// Services and tasks as listed from the shared store by a read that began at `read_at`.
    pub(super) async fn update_dns(&self, read_at: Instant, services: &[ServiceRecord], tasks: &[TaskRecord]) {
        {
            let mut s = self.dns.sources.lock().unwrap();
            s.services.replace(read_at, services.to_vec());
            s.tasks.replace(read_at, tasks.to_vec());
        }
        self.refresh_names().await;
    }

    /// The overlay endpoints, services and tasks in etcd, as the cluster sync read them (its
    /// reads began at `read_at`).
    pub(super) async fn dns_sources_from_cluster(
        &self,
        read_at: Instant,
        endpoints: &[RemoteEndpoint],
        services: &[ServiceRecord],
        tasks: &[TaskRecord],
    ) {
        let me = self.my_node_id();
        {
            let mut s = self.dns.sources.lock().unwrap();
            // only the cluster sync writes these, one pass after the other
            s.remote = endpoints.iter().filter(|e| e.node_id != me).cloned().collect();
            s.services.replace(read_at, services.to_vec());
            s.tasks.replace(read_at, tasks.to_vec());
        }
        self.refresh_names().await;
    }

    /// A service this node created, changed or removed (None): its name and VIPs, and its tasks'
    /// names, change now rather than at the next list.
    pub(in crate::daemon) async fn note_service(&self, id: &str, service: Option<&ServiceRecord>) {
        self.dns.sources.lock().unwrap().services.note(id, service.cloned());
        self.refresh_names().await;
    }

    /// A task whose state this node changed. Called before the change is written, so the name is
    /// there by the time anyone reads the new state, and again after, so the note outlives every
    /// list read before the write.
    pub(in crate::daemon) async fn note_task(&self, task: &TaskRecord) {
        self.dns.sources.lock().unwrap().tasks.note(&task.id, Some(task.clone()));
        self.refresh_names().await;
    }

    async fn ensure_dns_servers(&self, gateways: &HashSet<Ipv4Addr>) {
        let _g = self.dns.starting.lock().await;
        let missing: Vec<Ipv4Addr> = {
            let mut servers = self.dns.servers.lock().unwrap();
            servers.retain(|gw, _| gateways.contains(gw));
            gateways.iter().filter(|g| !servers.contains_key(g)).copied().collect()
        };
        for gw in missing {
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let skip: Vec<IpAddr> = gateways.iter().map(|g| IpAddr::V4(*g)).collect();
            let upstreams = dns::upstreams_from_resolv_conf(&resolv, &skip);
            let names: Arc<dyn Names> = self.dns.names.clone();
            match dns::serve(SocketAddrV4::new(gw, 53), names, upstreams).await {
                Ok(server) => {
                    self.dns.servers.lock().unwrap().insert(gw, server);
                }
                Err(e) => warn!(gateway = %gw, "starting the embedded DNS server: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const GW_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
    const GW_C: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 1);
    /// On a and b (a first).
    const BOTH_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const BOTH_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
    const ONLY_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
    const ONLY_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 3);
    const ONLY_C: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 3);

    fn table() -> NameTable {
        let names = |pairs: &[(&str, Ipv4Addr)]| -> HashMap<String, Vec<Ipv4Addr>> {
            pairs.iter().map(|(n, ip)| (n.to_string(), vec![*ip])).collect()
        };
        let t = Table {
            names: [
                ("a".to_string(), names(&[("both", BOTH_A), ("pa", ONLY_A)])),
                ("b".to_string(), names(&[("both", BOTH_B), ("pb", ONLY_B)])),
                ("c".to_string(), names(&[("pc", ONLY_C)])),
            ]
            .into(),
            gateways: [(GW_A, "a".to_string()), (GW_B, "b".to_string()), (GW_C, "c".to_string())].into(),
            clients: [
                (BOTH_A, vec!["a".to_string(), "b".to_string()]),
                (BOTH_B, vec!["a".to_string(), "b".to_string()]),
                (ONLY_A, vec!["a".to_string()]),
                (ONLY_B, vec!["b".to_string()]),
                (ONLY_C, vec!["c".to_string()]),
            ]
            .into(),
            everywhere: ["both", "pa", "pb", "pc"].into_iter().map(String::from).collect(),
            in_swarm: false,
        };
        NameTable { table: RwLock::new(t), ..Default::default() }
    }

    /// In a swarm a one-label name this node does not know yet waits for a cluster sync that
    /// began after the query, and is answered from it; external names never wait.
    #[tokio::test]
    async fn in_a_swarm_an_unknown_name_waits_for_a_fresh_sync() {
        let t = Arc::new(table());
        t.table.write().unwrap().in_swarm = true;
        assert_eq!(t.lookup(ONLY_A, GW_A, "newone"), Lookup::Unsettled);
        assert_eq!(t.lookup(ONLY_A, GW_A, "tasks.newone"), Lookup::Unsettled);
        assert_eq!(t.lookup(ONLY_A, GW_A, "example.com"), Lookup::Forward);
        assert_eq!(t.lookup(ONLY_A, GW_A, "pa"), Lookup::Found(vec![ONLY_A]));
        let waiting = tokio::spawn(t.clone().settle(ONLY_A, GW_A, "newone".into()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // the sync that was running when the query came in, then one that read the new name
        t.synced();
        t.table.write().unwrap().names.get_mut("a").unwrap().insert("newone".into(), vec![ONLY_A]);
        t.synced();
        assert_eq!(waiting.await.unwrap(), Lookup::Found(vec![ONLY_A]));
        // a name of another network stays NXDOMAIN once two syncs passed without it
        let waiting = tokio::spawn(t.clone().settle(ONLY_A, GW_A, "pb".into()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.synced();
        t.synced();
        assert_eq!(waiting.await.unwrap(), Lookup::NotFound);
    }

    /// A container on two networks asks its first network's gateway (the one its resolv.conf
    /// names) and used to see that network's names only.
    #[test]
    fn a_client_on_two_networks_sees_both() {
        let t = table();
        assert_eq!(t.lookup(BOTH_A, GW_A, "pa"), Lookup::Found(vec![ONLY_A]));
        assert_eq!(t.lookup(BOTH_A, GW_A, "pb"), Lookup::Found(vec![ONLY_B]));
        assert_eq!(t.lookup(BOTH_A, GW_A, "pc"), Lookup::NotFound);
        assert_eq!(t.lookup(BOTH_A, GW_A, "example.com"), Lookup::Forward);
    }

    #[test]
    fn the_network_asked_on_answers_first() {
        let t = table();
        assert_eq!(t.lookup(ONLY_A, GW_A, "both"), Lookup::Found(vec![BOTH_A]));
        assert_eq!(t.lookup(ONLY_B, GW_B, "both"), Lookup::Found(vec![BOTH_B]));
        assert_eq!(t.lookup(BOTH_B, GW_B, "both"), Lookup::Found(vec![BOTH_B]));
    }

    #[test]
    fn others_stay_isolated() {
        let t = table();
        assert_eq!(t.lookup(ONLY_A, GW_A, "pb"), Lookup::NotFound, "a peer does not see through a shared container");
        assert_eq!(t.lookup(ONLY_C, GW_C, "both"), Lookup::NotFound);
        // a container asking another network's gateway sees its own networks' names only
        assert_eq!(t.lookup(ONLY_C, GW_A, "pa"), Lookup::NotFound);
        assert_eq!(t.lookup(ONLY_C, GW_A, "pc"), Lookup::Found(vec![ONLY_C]));
        // an address the node does not know sees the network it asked on
        let stranger = Ipv4Addr::new(10, 1, 0, 99);
        assert_eq!(t.lookup(stranger, GW_A, "pa"), Lookup::Found(vec![ONLY_A]));
        assert_eq!(t.lookup(stranger, GW_A, "pb"), Lookup::NotFound);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Item(String, u32);

    impl Keyed for Item {
        fn id(&self) -> &str {
            &self.0
        }
    }

    fn item(id: &str, v: u32) -> Item {
        Item(id.to_string(), v)
    }

    /// A list read before this node's change must not undo it; one read after replaces it.
    #[test]
    fn notes_outlive_older_lists() {
        let mut l: Listed<Item> = Listed::default();
        let before = Instant::now();
        l.replace(before, vec![item("s1", 1), item("gone", 1)]);
        l.note("new", Some(item("new", 1)));
        l.note("gone", None);
        l.note("s1", Some(item("s1", 2)));
        // the service loop's list, read before the changes
        l.replace(before, vec![item("s1", 1), item("gone", 1)]);
        let mut cur = l.current();
        cur.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(cur, vec![item("new", 1), item("s1", 2)]);
        // a list read after the changes has them (or what came of them since) and wins
        let after = Instant::now();
        l.replace(after, vec![item("s1", 3)]);
        assert_eq!(l.current(), vec![item("s1", 3)]);
        assert!(l.notes.is_empty());
        // and an older list arriving late is ignored
        l.replace(before, vec![item("s1", 1), item("gone", 1)]);
        assert_eq!(l.current(), vec![item("s1", 3)]);
    }
}
