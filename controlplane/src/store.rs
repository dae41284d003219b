//! Where records live. The node's embedded store (redb under the state directory) has one table
//! per kind of record (`Record`, implemented beside each record in `model.rs`), values as JSON.
//! Every write is its own durable transaction, so whatever the CLI was told succeeded survives a
//! crash of the daemon at any later point. `Shared` is where the records a swarm shares (services
//! and tasks) live: etcd in a swarm, the embedded store on a lone node.
use std::{
    any::{Any, TypeId},
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::cluster::etcd::{Etcd, Reads};

pub const NETWORKS: Table = Table::named("networks");
pub const CONTAINERS: Table = Table::named("containers");
/// Single values of the node: its node id, its swarm membership.
const META: Table = Table::named("meta");
/// Services and tasks of a node running alone (in a swarm they live in etcd).
pub const SERVICES: Table = Table::named("services");
pub const TASKS: Table = Table::named("tasks");
/// The overlay networks of the cluster as last seen in etcd (`CachedOverlay`).
pub const OVERLAYS: Table = Table::named("overlays");
/// Images on this node (`ImageRecord`), by image ID.
pub const IMAGES: Table = Table::named("images");

/// A kind of record the daemon persists: its table in the embedded store and its key.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const TABLE: Table;
    fn key(&self) -> &str;
}

/// A kind of record every node of a swarm shares through etcd, under `CLUSTER_PREFIX` + key.
pub trait SharedRecord: Record {
    const CLUSTER_PREFIX: &'static str;
}

#[derive(Clone, Copy)]
pub struct Table(TableDefinition<'static, &'static str, &'static [u8]>, &'static str);

impl Table {
    const fn named(name: &'static str) -> Table {
        Table(TableDefinition::new(name), name)
    }
}

pub struct Store {
    db: Database,
    decoded: DecodedCache,
    tables: TableCache,
    /// Taken inside `tables`' lock, never alone around a write.
    journal: Mutex<Journal>,
}

/// The keys each write changed, numbered, so a reader that saw a table at one number finds what
/// changed since without comparing every record: the DNS table compared all 1,000 containers'
/// 11,000 names on every container start (issue 18).
#[derive(Default)]
struct Journal {
    /// The number of the last write.
    seq: u64,
    /// The changes up to this number are not all in `log` any more.
    floor: u64,
    log: std::collections::VecDeque<(u64, &'static str, String)>,
}

/// Writes the journal remembers; a reader further behind compares everything.
const JOURNAL_LEN: usize = 4096;

impl Journal {
    fn record(&mut self, table: Table, key: &str) {
        self.seq += 1;
        self.log.push_back((self.seq, table.1, key.to_string()));
        if self.log.len() > JOURNAL_LEN
            && let Some((n, ..)) = self.log.pop_front()
        {
            self.floor = n;
        }
    }

    /// A write that may have changed anything (it failed half-way).
    fn lost(&mut self) {
        self.seq += 1;
        self.floor = self.seq;
    }

    /// The keys of `table` written after number `seq`; None when the journal no longer knows.
    fn since(&self, table: Table, seq: u64) -> Option<Vec<String>> {
        if seq < self.floor || seq > self.seq {
            return None;
        }
        let mut keys: Vec<String> = self
            .log
            .iter()
            .rev()
            .take_while(|(n, ..)| *n > seq)
            .filter(|(_, t, _)| *t == table.1)
            .map(|(.., k)| k.clone())
            .collect();
        keys.sort();
        keys.dedup();
        Some(keys)
    }
}

/// Whole tables as decoded, by table: each listed once from the database, then kept current by
/// this store's own writes (the daemon is its database's only writer). Listing the containers
/// is part of most operations (names, addresses, ports, the DNS table) and of every service
/// pass; read from redb it cost each `run -d` ~90 ms of CPU at 1,000 containers, 13× the first
/// one's (issue 18). `list_shared` hands out the table without copying it; a write copies it
/// only while a reader still holds the previous snapshot.
#[derive(Default)]
struct TableCache(Mutex<Tables>);

/// Table name → (the record type it was decoded as, its `Listed<T>`).
type Tables = HashMap<&'static str, (TypeId, Box<dyn Any + Send + Sync>)>;

/// A table's records by key, in the database's (key) order.
pub type Listed<T> = Arc<BTreeMap<String, T>>;

impl TableCache {
    /// The cached table of `T`, if it is cached with that type.
    fn get<T: Record>(cache: &mut Tables) -> Option<&mut Listed<T>> {
        match cache.get_mut(T::TABLE.1) {
            Some((id, b)) if *id == TypeId::of::<T>() => b.downcast_mut::<Listed<T>>(),
            _ => None,
        }
    }
}

/// Decoded values by (table, key, type), each with the bytes it was decoded from. Every API
/// operation scans all container records (names, addresses, port conflicts); re-decoding the JSON
/// of a container that publishes thousands of ports made each operation grow with the node's
/// published ports. A hit needs the stored bytes to be equal, so the cache can never serve a
/// value the database no longer holds, whatever the interleaving of readers and writers.
#[derive(Default)]
struct DecodedCache(Mutex<HashMap<CacheKey, Decoded>>);

/// (table name, record key, decoded type)
type CacheKey = (&'static str, String, TypeId);
/// The stored bytes and the value decoded from them.
type Decoded = (Arc<[u8]>, Arc<dyn Any + Send + Sync>);

impl DecodedCache {
    fn decode<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
        bytes: &[u8],
    ) -> Result<T> {
        let id = (table.1, key.to_string(), TypeId::of::<T>());
        if let Some((b, v)) = self.0.lock().expect("store cache").get(&id)
            && **b == *bytes
            && let Some(v) = v.downcast_ref::<T>()
        {
            return Ok(v.clone());
        }
        let v: T = serde_json::from_slice(bytes)?;
        self.0.lock().expect("store cache").insert(id, (bytes.into(), Arc::new(v.clone())));
        Ok(v)
    }

    fn forget(&self, table: Table, key: &str) {
        self.0.lock().expect("store cache").retain(|(t, k, _), _| !(*t == table.1 && k == key));
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        // redb panics on some corrupt files instead of returning an error: either way the
        // daemon stops with the file's name, before it changes anything (and without the
        // library's panic message: start-up runs before anything else that could panic)
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| Database::create(path));
        std::panic::set_hook(hook);
        let db = opened
            .map_err(|_| {
                anyhow::anyhow!(
                    "the state database {} is corrupt (the storage library could not read it)",
                    path.display()
                )
            })?
            .with_context(|| format!("opening the state database {}", path.display()))?;
        let tx = db.begin_write()?;
        for t in [NETWORKS, CONTAINERS, META, OVERLAYS, SERVICES, TASKS, IMAGES] {
            tx.open_table(t.0)?;
        }
        tx.commit()?;
        Ok(Store { db, decoded: DecodedCache::default(), tables: TableCache::default(), journal: Default::default() })
    }

    pub fn get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        self.get_in(T::TABLE, key)
    }

    pub fn list<T: Record>(&self) -> Result<Vec<T>> {
        Ok(self.list_shared::<T>()?.values().cloned().collect())
    }

    /// Every record of `T`'s table, shared: no copy is made.
    pub fn list_shared<T: Record>(&self) -> Result<Listed<T>> {
        let mut cache = self.tables.0.lock().expect("store tables");
        self.list_locked(&mut cache)
    }

    /// Every record of `T`'s table (shared), the number of the last write, and the keys of `T`
    /// written after number `seq` (None: not known; compare everything). A reader keeps the
    /// number to ask again.
    pub fn list_shared_since<T: Record>(&self, seq: u64) -> Result<(Listed<T>, u64, Option<Vec<String>>)> {
        let mut cache = self.tables.0.lock().expect("store tables");
        let listed = self.list_locked(&mut cache)?;
        let j = self.journal.lock().expect("store journal");
        Ok((listed, j.seq, j.since(T::TABLE, seq)))
    }

    fn list_locked<T: Record>(&self, cache: &mut Tables) -> Result<Listed<T>> {
        if let Some(t) = TableCache::get::<T>(cache) {
            return Ok(t.clone());
        }
        // read under the lock: a write cannot commit between this read and the caching
        let tx = self.db.begin_read()?;
        let t = tx.open_table(T::TABLE.0)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_string(), self.decoded.decode(T::TABLE, k.value(), v.value())?);
        }
        let out = Arc::new(out);
        cache.insert(T::TABLE.1, (TypeId::of::<T>(), Box::new(out.clone())));
        Ok(out)
    }

    pub fn put<T: Record>(&self, value: &T) -> Result<()> {
        // held across the commit, so a list cannot cache the table as it was before it
        let mut cache = self.tables.0.lock().expect("store tables");
        let written = self.put_in(T::TABLE, value.key(), value);
        match &written {
            Ok(()) => self.journal.lock().expect("store journal").record(T::TABLE, value.key()),
            Err(_) => self.journal.lock().expect("store journal").lost(),
        }
        match (&written, TableCache::get::<T>(&mut cache)) {
            (Ok(()), Some(t)) => {
                Arc::make_mut(t).insert(value.key().to_string(), value.clone());
            }
            // not committed (or cached as another type): read again at the next list
            _ => {
                cache.remove(T::TABLE.1);
            }
        }
        written
    }

    pub fn delete<T: Record>(&self, key: &str) -> Result<()> {
        let mut cache = self.tables.0.lock().expect("store tables");
        let deleted = self.delete_in(T::TABLE, key);
        match &deleted {
            Ok(()) => self.journal.lock().expect("store journal").record(T::TABLE, key),
            Err(_) => self.journal.lock().expect("store journal").lost(),
        }
        match (&deleted, TableCache::get::<T>(&mut cache)) {
            (Ok(()), Some(t)) => {
                Arc::make_mut(t).remove(key);
            }
            _ => {
                cache.remove(T::TABLE.1);
            }
        }
        deleted
    }

    /// A single value of the node (`node_id`, `membership`).
    pub fn meta<T: DeserializeOwned + Clone + Send + Sync + 'static>(&self, key: &str) -> Result<Option<T>> {
        self.get_in(META, key)
    }

    pub fn set_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.put_in(META, key, value)
    }

    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.delete_in(META, key)
    }

    fn get_in<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.0)?;
        match t.get(key)? {
            Some(v) => Ok(Some(self.decoded.decode(table, key, v.value())?)),
            None => Ok(None),
        }
    }

    fn put_in<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table.0)?;
            t.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_in(&self, table: Table, key: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table.0)?;
            t.remove(key)?;
        }
        tx.commit()?;
        self.decoded.forget(table, key);
        Ok(())
    }
}

/// Where the records a swarm shares live: etcd when this node is a swarm member (every manager
/// sees the same), the embedded store when it runs alone. Callers never switch tables by hand.
/// A fenced write found that this node no longer leads the swarm.
#[derive(Debug, thiserror::Error)]
#[error("no longer the swarm's leader: another manager schedules now")]
pub struct Deposed;

pub enum Shared<'a> {
    Local(&'a Store),
    /// etcd, read as current as `Reads` says (writes always go to etcd).
    Cluster(&'a Etcd, Reads),
}

impl Shared<'_> {
    pub async fn list<T: SharedRecord>(&self) -> Result<Vec<T>> {
        let listed = match self {
            Shared::Local(s) => return s.list(),
            Shared::Cluster(e, Reads::Linearizable) => e.list(T::CLUSTER_PREFIX).await?,
            Shared::Cluster(e, Reads::Copy) => e.list_copy(T::CLUSTER_PREFIX).await?,
        };
        Ok(listed.into_iter().map(|(_, v)| v).collect())
    }

    /// Every record, shared rather than copied. From etcd a record unchanged since the last
    /// list is the very same `Arc` (see `Etcd::list_copy_shared`); the embedded store's are
    /// fresh each time.
    pub async fn list_shared<T: SharedRecord + Send + Sync>(&self) -> Result<Vec<Arc<T>>> {
        match self {
            Shared::Local(s) => Ok(s.list_shared::<T>()?.values().map(|v| Arc::new(v.clone())).collect()),
            Shared::Cluster(e, Reads::Linearizable) => e.list_shared(T::CLUSTER_PREFIX).await,
            Shared::Cluster(e, Reads::Copy) => e.list_copy_shared(T::CLUSTER_PREFIX).await,
        }
    }

    pub async fn put<T: SharedRecord>(&self, value: &T) -> Result<()> {
        match self {
            Shared::Local(s) => s.put(value),
            Shared::Cluster(e, _) => e.put(&format!("{}{}", T::CLUSTER_PREFIX, value.key()), value).await,
        }
    }

    /// The revision of `guard` a decision reads before it commits with [`Shared::put_guarded`]
    /// (always 0 on a lone node, where the daemon's own locks serialize decisions).
    pub async fn guard_revision(&self, guard: &str) -> Result<i64> {
        match self {
            Shared::Local(_) => Ok(0),
            Shared::Cluster(e, _) => e.guard_revision(guard).await,
        }
    }

    /// Writes `value` only if `guard` has not changed since `seen` (see `Etcd::put_guarded`):
    /// false when another manager committed a decision meanwhile.
    pub async fn put_guarded<T: SharedRecord>(&self, guard: &str, seen: i64, value: &T) -> Result<bool> {
        match self {
            Shared::Local(s) => s.put(value).map(|_| true),
            Shared::Cluster(e, _) => {
                e.put_guarded(guard, seen, &format!("{}{}", T::CLUSTER_PREFIX, value.key()), value).await
            }
        }
    }

    /// The scheduler's writes: in a swarm made only while `fence` (the leader's election key)
    /// exists, and refused with [`Deposed`] when it does not; a lone node writes as `put` does.
    pub async fn put_fenced<T: SharedRecord>(&self, fence: Option<&str>, value: &T) -> Result<()> {
        match (self, fence) {
            (Shared::Cluster(e, _), Some(f)) => {
                let key = format!("{}{}", T::CLUSTER_PREFIX, value.key());
                if e.put_fenced(f, &key, value).await? { Ok(()) } else { Err(Deposed.into()) }
            }
            _ => self.put(value).await,
        }
    }

    /// Writes `value` only if the stored record is still `expect` (and, with `fence`, only while
    /// this node leads): false when someone else changed it since it was read (read and decide
    /// again). On a lone node the caller holds the service lock, so compare and write cannot
    /// interleave with another writer.
    pub async fn put_if_unchanged<T: SharedRecord + Serialize + PartialEq>(
        &self,
        fence: Option<&str>,
        expect: &T,
        value: &T,
    ) -> Result<bool> {
        match self {
            Shared::Local(s) => {
                if s.get::<T>(expect.key())?.as_ref() != Some(expect) {
                    return Ok(false);
                }
                s.put(value).map(|_| true)
            }
            Shared::Cluster(e, _) => {
                let key = format!("{}{}", T::CLUSTER_PREFIX, value.key());
                e.put_if_value(fence, &key, expect, value).await
            }
        }
    }

    /// `delete` under the leader's fence (see `put_fenced`).
    pub async fn delete_fenced<T: SharedRecord>(&self, fence: Option<&str>, key: &str) -> Result<()> {
        match (self, fence) {
            (Shared::Cluster(e, _), Some(f)) => {
                if e.delete_fenced(f, &format!("{}{key}", T::CLUSTER_PREFIX)).await? {
                    Ok(())
                } else {
                    Err(Deposed.into())
                }
            }
            _ => self.delete::<T>(key).await,
        }
    }

    pub async fn delete<T: SharedRecord>(&self, key: &str) -> Result<()> {
        match self {
            Shared::Local(s) => s.delete::<T>(key),
            Shared::Cluster(e, _) => e.delete(&format!("{}{key}", T::CLUSTER_PREFIX)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader gets the keys of its table written since its number, each once; one further
    /// behind than the journal remembers, or after a write that failed, compares everything.
    #[test]
    fn the_journal_names_what_changed_since() {
        let mut j = Journal::default();
        assert_eq!(j.since(CONTAINERS, 0), Some(vec![]));
        j.record(CONTAINERS, "b");
        j.record(NETWORKS, "n");
        j.record(CONTAINERS, "a");
        let seen = j.seq;
        j.record(CONTAINERS, "c");
        j.record(CONTAINERS, "a");
        assert_eq!(j.since(CONTAINERS, 0), Some(vec!["a".to_string(), "b".to_string(), "c".to_string()]));
        assert_eq!(j.since(CONTAINERS, seen), Some(vec!["a".to_string(), "c".to_string()]));
        assert_eq!(j.since(NETWORKS, seen), Some(vec![]));
        assert_eq!(j.since(CONTAINERS, j.seq), Some(vec![]));
        // a number from another store (the daemon restarted): not known
        assert_eq!(j.since(CONTAINERS, j.seq + 1), None);
        for i in 0..JOURNAL_LEN {
            j.record(NETWORKS, &i.to_string());
        }
        assert_eq!(j.since(CONTAINERS, seen), None);
        let now = j.seq;
        j.record(CONTAINERS, "d");
        assert_eq!(j.since(CONTAINERS, now), Some(vec!["d".to_string()]));
        j.lost();
        assert_eq!(j.since(CONTAINERS, now), None);
        assert_eq!(j.since(CONTAINERS, j.seq), Some(vec![]));
    }
}
