//! Service discovery: the embedded DNS server on every user network's gateway, answering for
//! the containers, aliases, services (their VIP) and `tasks.<service>` of the networks the asking
//! container is on (each of them, not only the one its resolv.conf's gateway belongs to), and
//! forwarding everything else to the node's resolvers.
//!
//! The table is brought up to date (`refresh_names`, one owner at a time: see `Index`) from three
//! sources, each kept current by whoever changes it, so a name is there when the command that made
//! it returns:
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
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use tracing::warn;

use super::{Daemon, services::ServiceSnapshot};
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
    remote: Vec<Arc<RemoteEndpoint>>,
    /// Counts the replacements of `remote`: a refresh compares the endpoints only when it moved.
    remote_version: u64,
    services: Listed<ServiceRecord>,
    tasks: Listed<TaskRecord>,
    /// What the table holds, by owner.
    index: Index,
}

/// Records listed from the shared store (shared: a record unchanged since the last list is the
/// same `Arc`), and this node's own changes since.
struct Listed<T> {
    items: Vec<Arc<T>>,
    /// When the read of `items` began; a list whose read began earlier is older and ignored.
    read_at: Option<Instant>,
    /// Changes made here (None: deleted) and when. One stands until a list whose read began
    /// after it replaces `items`: etcd's reads are linearizable, so that list has the change.
    notes: HashMap<String, (Option<Arc<T>>, Instant)>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed { items: Vec::new(), read_at: None, notes: HashMap::new() }
    }
}

impl<T: Keyed> Listed<T> {
    fn replace(&mut self, read_at: Instant, items: Vec<Arc<T>>) {
        if self.read_at.is_some_and(|seen| read_at < seen) {
            return;
        }
        self.items = items;
        self.read_at = Some(read_at);
        self.notes.retain(|_, (_, at)| *at >= read_at);
    }

    fn note(&mut self, id: &str, item: Option<T>) {
        self.notes.insert(id.to_string(), (item.map(Arc::new), Instant::now()));
    }

    /// The list with the notes applied.
    fn current(&self) -> Vec<&Arc<T>> {
        let mut out: Vec<&Arc<T>> = self.items.iter().filter(|i| !self.notes.contains_key(i.id())).collect();
        out.extend(self.notes.values().filter_map(|(i, _)| i.as_ref()));
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
        if t.everywhere.contains_key(name) {
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
    /// Every name of every network (with the number of networks it is on): one the client may
    /// not see is NXDOMAIN, never forwarded.
    everywhere: HashMap<String, usize>,
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

/// Who put a name in the table. A name's addresses are in this order (containers by id, other
/// nodes' endpoints, services by id), then in the order the owner added them, whatever order
/// the changes came in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owner {
    Container(String),
    /// Another node's endpoint: (network id, address, container id).
    Remote(String, Ipv4Addr, String),
    Service(String),
}

/// What one owner puts in the table.
#[derive(Clone, Debug, Default, PartialEq)]
struct Entries {
    /// (network id, lower-case name, address), in the order the owner adds them.
    names: Vec<(String, String, Ipv4Addr)>,
    /// A local container's address on a network with DNS → its networks with DNS.
    clients: Vec<(Ipv4Addr, Vec<String>)>,
}

impl Entries {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.clients.is_empty()
    }
}

/// Receives an owner's entries as [`container_entries`], [`remote_entries`] and
/// [`service_entries`] emit them: to collect them, or to check them against what was applied
/// without building them (most owners did not change; building every owner's entries on each
/// change was the ≈ 11,000-name rebuild issue 18 measured).
trait Sink {
    /// `prefix` + `name` (lower-cased) on `net` is `ip`.
    fn name(&mut self, net: &str, prefix: &str, name: &str, ip: Ipv4Addr);
    fn client(&mut self, ip: Ipv4Addr, nets: &[&str]);
}

impl Sink for Entries {
    fn name(&mut self, net: &str, prefix: &str, name: &str, ip: Ipv4Addr) {
        self.names.push((net.to_string(), format!("{prefix}{}", name.to_lowercase()), ip));
    }

    fn client(&mut self, ip: Ipv4Addr, nets: &[&str]) {
        self.clients.push((ip, nets.iter().map(|n| n.to_string()).collect()));
    }
}

/// Compares what is emitted with entries applied earlier.
struct Same<'a> {
    applied: &'a Entries,
    names: usize,
    clients: usize,
    same: bool,
}

impl<'a> Same<'a> {
    fn new(applied: &'a Entries) -> Self {
        Same { applied, names: 0, clients: 0, same: true }
    }

    fn finish(self) -> bool {
        self.same && self.names == self.applied.names.len() && self.clients == self.applied.clients.len()
    }
}

impl Sink for Same<'_> {
    fn name(&mut self, net: &str, prefix: &str, name: &str, ip: Ipv4Addr) {
        let i = self.names;
        self.names += 1;
        if !self.same {
            return;
        }
        self.same = self.applied.names.get(i).is_some_and(|(n, stored, a)| {
            *a == ip
                && n == net
                && stored.strip_prefix(prefix).is_some_and(|rest| {
                    // names are ASCII lower case nearly always: a plain comparison
                    if !name.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
                        rest == name
                    } else {
                        rest.chars().eq(name.chars().flat_map(char::to_lowercase))
                    }
                })
        });
    }

    fn client(&mut self, ip: Ipv4Addr, nets: &[&str]) {
        let i = self.clients;
        self.clients += 1;
        if !self.same {
            return;
        }
        self.same = self.applied.clients.get(i).is_some_and(|(a, n)| *a == ip && n.iter().eq(nets.iter()));
    }
}

/// A running local container: its name, hostname and aliases on each network it is on, and
/// its addresses as DNS clients.
fn container_entries(c: &ContainerRecord, with_dns: &HashSet<String>, out: &mut dyn Sink) {
    if c.state.status != Status::Running {
        return;
    }
    for e in &c.endpoints {
        out.name(&e.network_id, "", &c.name, e.ip);
        out.name(&e.network_id, "", &c.config.hostname, e.ip);
        if let Some(a) = c.attachments.iter().find(|a| a.network_id == e.network_id) {
            for alias in &a.aliases {
                out.name(&e.network_id, "", alias, e.ip);
            }
        }
    }
    let nets: Vec<&str> = c
        .attachments
        .iter()
        .filter(|a| with_dns.contains(&a.network_id))
        .filter(|a| c.endpoints.iter().any(|e| e.network_id == a.network_id))
        .map(|a| a.network_id.as_str())
        .collect();
    for e in c.endpoints.iter().filter(|e| with_dns.contains(&e.network_id)) {
        out.client(e.ip, &nets);
    }
}

fn remote_entries(e: &RemoteEndpoint, out: &mut dyn Sink) {
    out.name(&e.network_id, "", &e.container_name, e.ip);
    for alias in &e.aliases {
        out.name(&e.network_id, "", alias, e.ip);
    }
}

/// A service's name and aliases on its VIPs, and `tasks.<name>` for its live tasks (by slot).
fn service_entries(s: &ServiceRecord, live: &[&Arc<TaskRecord>], out: &mut dyn Sink) {
    for v in &s.vips {
        out.name(&v.network_id, "", &s.spec.name, v.ip);
        // a service's aliases are names of its VIP on their network only
        for alias in s.spec.aliases.get(&v.network_id).into_iter().flatten() {
            out.name(&v.network_id, "", alias, v.ip);
        }
    }
    for t in live {
        for (net, ip) in &t.addrs {
            out.name(net, "tasks.", &s.spec.name, *ip);
        }
    }
}

fn remote_owner(e: &RemoteEndpoint) -> Owner {
    Owner::Remote(e.network_id.clone(), e.ip, e.container_id.clone())
}

/// The name table kept current one owner at a time: a change costs what its owner has, not what
/// the node has.
#[derive(Default)]
struct Index {
    /// Networks with an embedded DNS server (names on others are in `everywhere` only); when
    /// they change, everything is applied again.
    with_dns: HashSet<String>,
    /// The store's journal number the containers were last compared at (None: compare all).
    containers_seq: Option<u64>,
    /// What each owner has in the table (owners with nothing are absent).
    containers: HashMap<String, Entries>,
    remotes: HashMap<Owner, Entries>,
    /// The `Sources::remote_version` the remote endpoints were last compared at, and those
    /// endpoints (held, so that a pointer compared against them cannot be a reused address).
    remote_version: Option<u64>,
    remotes_compared: Vec<Arc<RemoteEndpoint>>,
    services: HashMap<String, Entries>,
    /// Each service's record and live tasks when its entries were last compared: a service whose
    /// record and tasks are the same shared values is not compared again.
    service_inputs: HashMap<String, ServiceSnapshot>,
    /// (network, name) → each owner's addresses for it.
    by_name: HashMap<(String, String), BTreeMap<Owner, Vec<Ipv4Addr>>>,
    /// Address → the containers that have it, with their networks (the last one wins, as it did
    /// when the table was built in container order).
    by_client: HashMap<Ipv4Addr, BTreeMap<Owner, Vec<String>>>,
}

/// The entries of `emit` if they differ from `applied`.
fn changed(applied: Option<&Entries>, emit: impl Fn(&mut dyn Sink)) -> Option<Entries> {
    let none = Entries::default();
    let mut same = Same::new(applied.unwrap_or(&none));
    emit(&mut same);
    if same.finish() {
        return None;
    }
    let mut e = Entries::default();
    emit(&mut e);
    Some(e)
}

impl Index {
    /// The owners whose entries differ from what was applied, with their new entries (empty:
    /// remove them). Compares without building what did not change: a refresh costs a walk of
    /// the sources, not the table's ≈ 11,000 names rebuilt.
    /// Only the containers of `written` are compared (the keys the store's journal says were
    /// written since the last refresh), all of them when it is None; the remote endpoints only
    /// when `remote`'s version is not the one last compared; a service only when its record or
    /// live tasks are not the shared values last compared. A refresh caused by one task's change
    /// on a node of 1,000 tasks and 1,000 remote endpoints compared all of them (issue 18).
    /// Every change returned must be applied with [`Index::set`].
    fn changes(
        &mut self,
        containers: &BTreeMap<String, ContainerRecord>,
        written: Option<&[String]>,
        (remote, remote_version): (&[Arc<RemoteEndpoint>], u64),
        services: &[&Arc<ServiceRecord>],
        tasks: &[&Arc<TaskRecord>],
    ) -> Vec<(Owner, Entries)> {
        let mut out = Vec::new();
        let mut container = |id: &String, c: Option<&ContainerRecord>| {
            let applied = self.containers.get(id);
            let e = match c {
                Some(c) => changed(applied, |s| container_entries(c, &self.with_dns, s)),
                None => applied.map(|_| Entries::default()),
            };
            if let Some(e) = e {
                out.push((Owner::Container(id.clone()), e));
            }
        };
        match written {
            Some(ids) => {
                for id in ids {
                    container(id, containers.get(id));
                }
            }
            None => {
                for (id, c) in containers {
                    container(id, Some(c));
                }
                for id in self.containers.keys().filter(|id| !containers.contains_key(*id)) {
                    container(id, None);
                }
            }
        }
        if self.remote_version != Some(remote_version) {
            // only the endpoints that are not the shared values compared last time (new or
            // changed), and those gone since: one task starting elsewhere is one endpoint to
            // compare, not all of the swarm's
            let before: foldhash::HashSet<*const RemoteEndpoint> =
                self.remotes_compared.iter().map(Arc::as_ptr).collect();
            let now: foldhash::HashSet<*const RemoteEndpoint> = remote.iter().map(Arc::as_ptr).collect();
            let mut compared: HashSet<Owner> = HashSet::new();
            for r in remote.iter().filter(|r| !before.contains(&Arc::as_ptr(r))) {
                let owner = remote_owner(r);
                if let Some(e) = changed(self.remotes.get(&owner), |s| remote_entries(r, s)) {
                    out.push((owner.clone(), e));
                }
                compared.insert(owner);
            }
            for r in self.remotes_compared.iter().filter(|r| !now.contains(&Arc::as_ptr(r))) {
                let owner = remote_owner(r);
                if !compared.contains(&owner) && self.remotes.contains_key(&owner) {
                    out.push((owner, Entries::default()));
                }
            }
            self.remotes_compared = remote.to_vec();
            self.remote_version = Some(remote_version);
        }
        // the live tasks grouped once: filtering all tasks for each service made a refresh cost
        // services × tasks (a fast hash: this runs over every task on every refresh)
        let mut live_by_service: foldhash::HashMap<&str, Vec<&Arc<TaskRecord>>> = Default::default();
        for t in tasks.iter().filter(|t| t.desired_running && t.state == TaskState::Running) {
            live_by_service.entry(t.service_id.as_str()).or_default().push(t);
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for s in services {
            // two records of one id (a note and an older listing cannot both be current, but be safe):
            // the first wins
            if !seen.insert(&s.id) {
                continue;
            }
            let mut live = live_by_service.remove(s.id.as_str()).unwrap_or_default();
            live.sort_by_key(|t| t.slot);
            if self.service_inputs.get(&s.id).is_some_and(|i| i.same(s, &live)) {
                continue;
            }
            if let Some(e) = changed(self.services.get(&s.id), |out| service_entries(s, &live, out)) {
                out.push((Owner::Service(s.id.clone()), e));
            }
            self.service_inputs.insert(s.id.clone(), ServiceSnapshot::new(s, &live));
        }
        for id in self.services.keys().filter(|id| !seen.contains(id.as_str())) {
            out.push((Owner::Service(id.clone()), Entries::default()));
        }
        self.service_inputs.retain(|id, _| seen.contains(id.as_str()));
        out
    }

    /// Replaces what `owner` has in the index and in `table`.
    fn set(&mut self, table: &mut Table, owner: Owner, new: Entries) {
        let slot = match &owner {
            Owner::Container(id) => self.containers.remove(id),
            Owner::Remote(..) => self.remotes.remove(&owner),
            Owner::Service(id) => self.services.remove(id),
        };
        let old = slot.unwrap_or_default();
        let mut touched: Vec<(String, String)> =
            old.names.iter().chain(&new.names).map(|(net, name, _)| (net.clone(), name.clone())).collect();
        touched.sort();
        touched.dedup();
        let existed: Vec<bool> = touched.iter().map(|k| self.by_name.get(k).is_some_and(|m| !m.is_empty())).collect();
        for (net, name, _) in &old.names {
            if let Some(m) = self.by_name.get_mut(&(net.clone(), name.clone())) {
                m.remove(&owner);
            }
        }
        for (net, name, ip) in &new.names {
            self.by_name.entry((net.clone(), name.clone())).or_default().entry(owner.clone()).or_default().push(*ip);
        }
        for (key, existed) in touched.into_iter().zip(existed) {
            let mut ips: Vec<Ipv4Addr> = Vec::new();
            for ip in self.by_name.get(&key).into_iter().flat_map(|m| m.values()).flatten() {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            let (net, name) = key;
            if ips.is_empty() {
                self.by_name.remove(&(net.clone(), name.clone()));
                if let Some(m) = table.names.get_mut(&net) {
                    m.remove(&name);
                    if m.is_empty() {
                        table.names.remove(&net);
                    }
                }
                if existed && let Some(n) = table.everywhere.get_mut(&name) {
                    *n -= 1;
                    if *n == 0 {
                        table.everywhere.remove(&name);
                    }
                }
            } else {
                if !existed {
                    *table.everywhere.entry(name.clone()).or_default() += 1;
                }
                if self.with_dns.contains(&net) {
                    table.names.entry(net).or_default().insert(name, ips);
                }
            }
        }
        let mut touched: Vec<Ipv4Addr> = Vec::new();
        for (ip, _) in &old.clients {
            if let Some(m) = self.by_client.get_mut(ip) {
                m.remove(&owner);
            }
            touched.push(*ip);
        }
        for (ip, nets) in &new.clients {
            self.by_client.entry(*ip).or_default().insert(owner.clone(), nets.clone());
            touched.push(*ip);
        }
        for ip in touched {
            match self.by_client.get(&ip).and_then(|m| m.values().next_back()) {
                Some(nets) => {
                    table.clients.insert(ip, nets.clone());
                }
                None => {
                    self.by_client.remove(&ip);
                    table.clients.remove(&ip);
                }
            }
        }
        if !new.is_empty() {
            match owner {
                Owner::Container(id) => self.containers.insert(id, new),
                Owner::Remote(..) => self.remotes.insert(owner, new),
                Owner::Service(id) => self.services.insert(id, new),
            };
        }
    }

    /// Brings `table` to these sources: the gateways of `nets`, then every owner that changed.
    /// `remote` must not hold this node's endpoints (its containers are authoritative for them).
    fn apply(
        &mut self,
        table: &mut Table,
        nets: &[NetworkRecord],
        containers: &BTreeMap<String, ContainerRecord>,
        remote: (&[Arc<RemoteEndpoint>], u64),
        services: &[&Arc<ServiceRecord>],
        tasks: &[&Arc<TaskRecord>],
    ) {
        let (gateways, with_dns) = dns_networks(nets);
        if with_dns != self.with_dns {
            // which names are served, and which networks a client sees, changed: apply it all
            *self = Index { with_dns, ..Index::default() };
            table.names.clear();
            table.clients.clear();
            table.everywhere.clear();
        }
        table.gateways = gateways;
        for (owner, entries) in self.changes(containers, None, remote, services, tasks) {
            self.set(table, owner, entries);
        }
    }
}

/// The gateway of each user network with an embedded DNS server → its id, and those ids: the
/// default `bridge` network has none, as in docker.
fn dns_networks(nets: &[NetworkRecord]) -> (HashMap<Ipv4Addr, String>, HashSet<String>) {
    let gateways: HashMap<Ipv4Addr, String> = nets
        .iter()
        .filter(|n| n.carries_containers() && n.name != "bridge")
        .filter_map(|n| Some((n.ipam.as_ref()?.config().gateway, n.id.clone())))
        .collect();
    let with_dns = gateways.values().cloned().collect();
    (gateways, with_dns)
}

impl Daemon {
    /// Other nodes' overlay endpoints as last read from the cluster store.
    pub(super) fn remote_endpoints(&self) -> Vec<RemoteEndpoint> {
        self.dns.sources.lock().unwrap().remote.iter().map(|e| (**e).clone()).collect()
    }

    /// Rebuilds the name table from the current sources and makes sure a DNS server listens on
    /// every user network's gateway. Every operation that adds or removes names calls it before
    /// it returns.
    pub(super) async fn refresh_names(&self) {
        let gateways = {
            let mut sources = self.dns.sources.lock().unwrap();
            let s = &mut *sources;
            let since = s.index.containers_seq.unwrap_or(0);
            let (Ok(nets), Ok((containers, seq, written))) =
                (self.networks(), self.store.list_shared_since::<ContainerRecord>(since))
            else {
                return;
            };
            let written = if s.index.containers_seq.is_some() { written } else { None };
            let in_swarm = self.in_swarm();
            // outside a swarm there are none (a version a swarm's never has)
            let remote: (&[Arc<RemoteEndpoint>], u64) =
                if in_swarm { (&s.remote, s.remote_version) } else { (&[], u64::MAX) };
            let (services, tasks) = (s.services.current(), s.tasks.current());
            // the changes are found with the table readable; only applying them blocks queries
            let (gateways, with_dns) = dns_networks(&nets);
            if with_dns == s.index.with_dns {
                let changes = s.index.changes(&containers, written.as_deref(), remote, &services, &tasks);
                let mut table = self.dns.names.table.write().unwrap();
                table.gateways = gateways;
                for (owner, entries) in changes {
                    s.index.set(&mut table, owner, entries);
                }
                s.index.containers_seq = Some(seq);
                table.in_swarm = in_swarm;
                table.gateways.keys().copied().collect::<HashSet<Ipv4Addr>>()
            } else {
                let mut table = self.dns.names.table.write().unwrap();
                s.index.apply(&mut table, &nets, &containers, remote, &services, &tasks);
                s.index.containers_seq = Some(seq);
                table.in_swarm = in_swarm;
                table.gateways.keys().copied().collect::<HashSet<Ipv4Addr>>()
            }
        };
        self.ensure_dns_servers(&gateways).await;
    }

    /// Services and tasks as listed from the shared store by a read that began at `read_at`.
    pub(super) async fn update_dns(
        &self,
        read_at: Instant,
        services: Vec<Arc<ServiceRecord>>,
        tasks: Vec<Arc<TaskRecord>>,
    ) {
        {
            let mut s = self.dns.sources.lock().unwrap();
            s.services.replace(read_at, services);
            s.tasks.replace(read_at, tasks);
        }
        self.refresh_names().await;
    }

    /// The overlay endpoints, services and tasks in etcd, as the cluster sync read them (its
    /// reads began at `read_at`).
    pub(super) async fn dns_sources_from_cluster(
        &self,
        read_at: Instant,
        endpoints: &[Arc<RemoteEndpoint>],
        services: Vec<Arc<ServiceRecord>>,
        tasks: Vec<Arc<TaskRecord>>,
    ) {
        let me = self.my_node_id();
        {
            let mut s = self.dns.sources.lock().unwrap();
            // only the cluster sync writes these, one pass after the other
            // the listing shares an endpoint that did not change: the same `Arc`
            let remote = endpoints.iter().filter(|e| e.node_id != me);
            if remote.clone().count() != s.remote.len()
                || !remote.clone().zip(&s.remote).all(|(a, b)| Arc::ptr_eq(a, b))
            {
                s.remote = remote.cloned().collect();
                s.remote_version += 1;
            }
            s.services.replace(read_at, services);
            s.tasks.replace(read_at, tasks);
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
            everywhere: ["both", "pa", "pb", "pc"].into_iter().map(|n| (n.to_string(), 1)).collect(),
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

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + n)
    }

    /// A container on `nets` (its address there `ip(addr)`, with `aliases`), running or not.
    fn container(id: &str, name: &str, running: bool, nets: &[(&str, u32, &[&str])]) -> ContainerRecord {
        let v = serde_json::json!({
            "id": id, "name": name, "created": "2026-11-30T00:00:00Z",
            "config": { "cmd": [], "env": [], "hostname": format!("H-{id}"), "network_mode": "bridge",
                        "publish": [], "expose": [], "publish_all": false, "auto_remove": false, "workdir": null },
            "attachments": nets.iter().map(|(n, _, a)| serde_json::json!({ "network_id": n, "ip": null, "aliases": a })).collect::<Vec<_>>(),
            "state": { "status": if running { "running" } else { "exited" }, "pid": 0, "shim_pid": 0, "shim_start": 0,
                       "started_at": null, "finished_at": null, "exit_code": 0, "error": "" },
            "endpoints": nets.iter().map(|(n, a, _)| serde_json::json!({ "network_id": n, "endpoint_id": format!("{id}{n}"), "ip": ip(*a), "mac": [2, 66, 0, 0, 0, 0], "ifname": "eth0" })).collect::<Vec<_>>(),
            "ports": [],
        });
        serde_json::from_value(v).unwrap()
    }

    fn service(id: &str, name: &str, vips: &[(&str, u32)], aliases: &[(&str, &str)]) -> ServiceRecord {
        let mut al: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, a) in aliases {
            al.entry(n.to_string()).or_default().push(a.to_string());
        }
        let v = serde_json::json!({
            "id": id, "created": "2026-11-30T00:00:00Z", "updated": "2026-11-30T00:00:00Z",
            "spec": { "name": name, "replicas": 1, "cmd": [], "env": [], "networks": vips.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                      "ports": [], "constraints": [], "aliases": al },
            "vips": vips.iter().map(|(n, a)| serde_json::json!({ "network_id": n, "ip": ip(*a) })).collect::<Vec<_>>(),
        });
        serde_json::from_value(v).unwrap()
    }

    fn task(id: &str, service: &str, slot: u64, running: bool, addrs: &[(&str, u32)]) -> TaskRecord {
        let v = serde_json::json!({
            "id": id, "service_id": service, "service_name": service, "slot": slot, "node_id": "n1",
            "desired_running": true, "state": if running { "running" } else { "failed" }, "message": "",
            "container_id": null, "addrs": addrs.iter().map(|(n, a)| (n, ip(*a))).collect::<Vec<_>>(),
            "created": "2026-11-30T00:00:00Z", "updated": "2026-11-30T00:00:00Z",
        });
        serde_json::from_value(v).unwrap()
    }

    fn remote(net: &str, a: u32, cid: &str, name: &str, aliases: &[&str]) -> RemoteEndpoint {
        RemoteEndpoint {
            network_id: net.into(),
            ip: ip(a),
            mac: [0; 6],
            node_id: "n2".into(),
            node_addr: Ipv4Addr::new(192, 168, 0, 2),
            container_id: cid.into(),
            container_name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// One state of a node's sources.
    struct State {
        containers: BTreeMap<String, ContainerRecord>,
        remote: Vec<Arc<RemoteEndpoint>>,
        /// Moves whenever `remote` changes (as `Sources::remote_version` does).
        remote_version: u64,
        /// Shared as listings share them: a record that did not change is the same `Arc`.
        services: Vec<Arc<ServiceRecord>>,
        tasks: Vec<Arc<TaskRecord>>,
    }

    /// `written`: the containers changed since the last sync, as the store's journal says (None:
    /// compare them all).
    fn sync_with(idx: &mut Index, table: &mut Table, s: &State, written: Option<&[String]>) {
        let services: Vec<&Arc<ServiceRecord>> = s.services.iter().collect();
        let tasks: Vec<&Arc<TaskRecord>> = s.tasks.iter().collect();
        let remote = (s.remote.as_slice(), s.remote_version);
        for (owner, entries) in idx.changes(&s.containers, written, remote, &services, &tasks) {
            idx.set(table, owner, entries);
        }
    }

    fn sync(idx: &mut Index, table: &mut Table, s: &State) {
        sync_with(idx, table, s, None);
    }

    /// A fresh index of `s`, as a daemon that starts builds it.
    fn fresh(s: &State) -> Table {
        let mut idx = Index { with_dns: ["a", "b"].iter().map(|n| n.to_string()).collect(), ..Default::default() };
        let mut table = Table::default();
        sync(&mut idx, &mut table, s);
        table
    }

    fn assert_same(inc: &Table, full: &Table, step: usize) {
        assert_eq!(inc.names, full.names, "names after step {step}");
        assert_eq!(inc.clients, full.clients, "clients after step {step}");
        assert_eq!(inc.everywhere, full.everywhere, "everywhere after step {step}");
    }

    /// Applying each change one owner at a time leaves the table a fresh build of the same
    /// sources would have, through additions, removals, renames, stops, shared names and
    /// networks without DNS; and the order of a shared name's addresses is the owners' order.
    /// Services and remote endpoints that did not change (the same shared records, the same
    /// version) are skipped by the incremental index and compared by the fresh one.
    #[test]
    fn incremental_updates_equal_a_fresh_build() {
        let mut idx = Index { with_dns: ["a", "b"].iter().map(|n| n.to_string()).collect(), ..Default::default() };
        let mut table = Table::default();
        let mut s = State {
            containers: BTreeMap::new(),
            remote: Vec::new(),
            remote_version: 0,
            services: Vec::new(),
            tasks: Vec::new(),
        };
        // a pseudo-random walk over a small world, so names collide and come back
        let mut seed: u64 = 0x9e37_79b9;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let nets = ["a", "b", "nodns"];
        for step in 0..400 {
            let mut written: Vec<String> = Vec::new();
            match next(8) {
                0 | 1 => {
                    let i = next(12);
                    let id = format!("c{i:02}");
                    let net = nets[next(3) as usize];
                    let alias = format!("Alias{}", next(4));
                    let two = next(3) == 0;
                    let mut on: Vec<(&str, u32, &[&str])> = Vec::new();
                    let aliases = [alias.as_str()];
                    on.push((net, 100 + i as u32, &aliases));
                    if two && net != "b" {
                        on.push(("b", 200 + i as u32, &[]));
                    }
                    let name = if next(2) == 0 { format!("ctr{i}") } else { format!("Shared{}", next(3)) };
                    s.containers.insert(id.clone(), container(&id, &name, next(4) != 0, &on));
                    written.push(id);
                }
                2 => {
                    let id = format!("c{:02}", next(12));
                    s.containers.remove(&id);
                    written.push(id);
                }
                3 => {
                    let i = next(6) as u32;
                    s.remote.retain(|r| r.container_id != format!("r{i}"));
                    if next(3) != 0 {
                        let alias = format!("alias{}", next(4));
                        s.remote.push(Arc::new(remote(
                            nets[next(2) as usize],
                            300 + i,
                            &format!("r{i}"),
                            &format!("rem{i}"),
                            &[&alias],
                        )));
                    }
                    s.remote_version += 1;
                }
                4 => {
                    let i = next(5);
                    let id = format!("s{i}");
                    s.services.retain(|x| x.id != id);
                    if next(4) != 0 {
                        let aliases: &[(&str, &str)] = if next(2) == 0 { &[("a", "svcalias")] } else { &[] };
                        let vips: Vec<(&str, u32)> = if next(2) == 0 {
                            vec![("a", 400 + i as u32)]
                        } else {
                            vec![("a", 400 + i as u32), ("b", 450 + i as u32)]
                        };
                        s.services.push(Arc::new(service(&id, &format!("svc{}", next(3)), &vips, aliases)));
                    }
                }
                _ => {
                    let i = next(15);
                    let id = format!("t{i:02}");
                    s.tasks.retain(|t| t.id != id);
                    if next(5) != 0 {
                        let svc = format!("s{}", next(5));
                        s.tasks.push(Arc::new(task(&id, &svc, next(4), next(4) != 0, &[("a", 500 + i as u32)])));
                    }
                }
            }
            // half the steps compare only what the journal names, as the daemon does
            if step % 2 == 0 {
                sync_with(&mut idx, &mut table, &s, Some(&written));
            } else {
                sync(&mut idx, &mut table, &s);
            }
            assert_same(&table, &fresh(&s), step);
        }
        // a name two containers share lists their addresses in container order, each once
        s.containers.clear();
        s.containers.insert("c2".into(), container("c2", "x", true, &[("a", 2, &["both"])]));
        sync(&mut idx, &mut table, &s);
        s.containers.insert("c1".into(), container("c1", "y", true, &[("a", 1, &["both", "Both"])]));
        sync(&mut idx, &mut table, &s);
        assert_eq!(table.names["a"]["both"], vec![ip(1), ip(2)]);
        assert_same(&table, &fresh(&s), 1000);
        // and the names of a network without DNS are not served, but are never forwarded
        s.containers.insert("c3".into(), container("c3", "hidden", true, &[("nodns", 3, &[])]));
        sync(&mut idx, &mut table, &s);
        assert!(table.names.values().all(|m| !m.contains_key("hidden")));
        assert!(table.everywhere.contains_key("hidden"));
        s.containers.remove("c3");
        sync(&mut idx, &mut table, &s);
        assert!(!table.everywhere.contains_key("hidden"));
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
        let listed = |items: &[Item]| items.iter().cloned().map(Arc::new).collect::<Vec<_>>();
        let current = |l: &Listed<Item>| l.current().into_iter().map(|a| (**a).clone()).collect::<Vec<_>>();
        l.replace(before, listed(&[item("s1", 1), item("gone", 1)]));
        l.note("new", Some(item("new", 1)));
        l.note("gone", None);
        l.note("s1", Some(item("s1", 2)));
        // the service loop's list, read before the changes
        l.replace(before, listed(&[item("s1", 1), item("gone", 1)]));
        let mut cur = current(&l);
        cur.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(cur, vec![item("new", 1), item("s1", 2)]);
        // a list read after the changes has them (or what came of them since) and wins
        let after = Instant::now();
        l.replace(after, listed(&[item("s1", 3)]));
        assert_eq!(current(&l), vec![item("s1", 3)]);
        assert!(l.notes.is_empty());
        // and an older list arriving late is ignored
        l.replace(before, listed(&[item("s1", 1), item("gone", 1)]));
        assert_eq!(current(&l), vec![item("s1", 3)]);
    }
}
