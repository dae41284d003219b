//! A small typed layer over etcd-client: JSON values, create-if-absent, leases, with timeouts so
//! an unreachable etcd gives a clear error instead of a hang, and reconnection after failures.
use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::mirror::Mirror;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Serialize, de::DeserializeOwned};

/// etcd could not be reached or did not answer: the API answers 503 with this message (not the
/// gRPC library's text), as docker does while its raft store has no quorum.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// A one-line reason from an etcd client error: a gRPC status's message, or the transport's.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        etcd_client::Error::TransportError(t) => format!("connection failed ({t})"),
        e => e.to_string(),
    }
}

pub struct Etcd {
    endpoints: Vec<String>,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The member to try first: a client talks to one member at a time and moves on to the
    /// next when it fails (etcd-client's balanced channel keeps sending to a dead member).
    next: std::sync::atomic::AtomicUsize,
    /// The last `list` of each prefix (as `Listing<T>`). Every node lists all services and
    /// tasks several times a second; reading and decoding the same values each time was most of
    /// an idle daemon's CPU, and etcd's, with 1,000 tasks (issue 18). Replaced whole by each
    /// list: no key it did not return is kept.
    decoded: std::sync::Mutex<HashMap<(String, TypeId), Box<dyn Any + Send + Sync>>>,
    /// The copy of `/netbee/` lists are answered from while [`Etcd::mirror`] runs.
    mirror: Mirror,
    /// The revision reads from the copy must include: the store's after this node's last write
    /// or its last [`Etcd::catch_up`].
    read_floor: std::sync::atomic::AtomicI64,
}

/// How current a read of the cluster store must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Everything committed anywhere before the read began: what the API answers with.
    Linearizable,
    /// This node's copy of the store (see [`Etcd::list_copy`]): what the loops read that the
    /// copy's changes wake.
    Copy,
}

/// A list's answer: the store (cluster id) and its revision when it was read, and the values in
/// key order with their keys' modification revisions. A value is shared by every listing of its
/// key at one revision: the next list hands out the same value (see [`Etcd::list_copy_shared`]).
struct Listing<T> {
    cluster_id: u64,
    revision: i64,
    items: Vec<(String, i64, Arc<T>)>,
}

/// Answers `(key, value)` copies (what [`Etcd::list`] returns).
fn copied<T: Clone>(k: &str, v: &Arc<T>) -> (String, T) {
    (k.to_string(), (**v).clone())
}

/// Answers the shared values (what [`Etcd::list_copy_shared`] returns).
fn shared<T>(_: &str, v: &Arc<T>) -> Arc<T> {
    v.clone()
}

/// A key nothing writes: reading it returns the store's current revision and nothing else.
const REVISION_PROBE: &str = "/netbee-revision-probe";

pub(super) const TIMEOUT: Duration = Duration::from_secs(3);

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Etcd {
        Etcd {
            endpoints,
            client: tokio::sync::Mutex::new(None),
            next: Default::default(),
            decoded: Default::default(),
            mirror: Default::default(),
            read_floor: Default::default(),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let n = self.endpoints.len();
        let start = self.next.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let ep = &self.endpoints[(start + i) % n];
            let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(TIMEOUT);
            let attempt = async {
                let mut c = Client::connect([ep.as_str()], Some(opts)).await?;
                // a member that accepts connections but lost quorum would hang requests later
                c.status().await?;
                Ok::<Client, etcd_client::Error>(c)
            };
            match tokio::time::timeout(TIMEOUT, attempt).await {
                Ok(Ok(c)) => {
                    self.next.store((start + i) % n, std::sync::atomic::Ordering::Relaxed);
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => last = Some(format!("{ep}: {}", describe(&e))),
                Err(_) => last = Some(format!("{ep}: timed out")),
            }
        }
        Err(Unreachable(format!(
            "the cluster store (etcd at {}) cannot be reached: {}",
            self.endpoints.join(","),
            last.unwrap_or_default()
        ))
        .into())
    }

    /// Forget the connection after an error; the next call starts with the next member.
    pub async fn reset(&self) {
        let mut slot = self.client.lock().await;
        if slot.take().is_some() {
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let c = self.client().await?;
        let t0 = std::time::Instant::now();
        let r = tokio::time::timeout(TIMEOUT, f(c)).await;
        crate::metrics::control_plane().etcd_request(what, t0.elapsed(), matches!(r, Ok(Ok(_))));
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.reset().await;
                Err(self.unreachable(what, &describe(&e)).into())
            }
            Err(_) => {
                self.reset().await;
                Err(self.unreachable(what, "no answer within 3 s").into())
            }
        }
    }

    fn unreachable(&self, what: &str, why: &str) -> Unreachable {
        Unreachable(format!(
            "the cluster store (etcd at {}) did not complete a {what}: {why}",
            self.endpoints.join(",")
        ))
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let k = key.to_string();
        let r = self.run("get", |mut c| async move { c.get(k, None).await }).await?;
        match r.kvs().first() {
            Some(kv) => Ok(Some(serde_json::from_slice(kv.value()).with_context(|| format!("decoding {key}"))?)),
            None => Ok(None),
        }
    }

    /// Keeps a copy of everything under `/netbee/` current with one watch, for as long as the
    /// returned future runs (the daemon runs it while a swarm member); lists and key listings
    /// are answered from it meanwhile (see `cluster/mirror.rs`).
    pub async fn mirror(&self) {
        self.mirror.run(self).await
    }

    /// Notified on every change under the sections of `prefixes` (`/netbee/tasks/...`: all
    /// tasks; every section when empty) while [`Etcd::mirror`] runs.
    pub fn subscribe(&self, prefixes: &[&str]) -> Arc<tokio::sync::Notify> {
        self.mirror.subscribe(prefixes)
    }

    /// The store's id and current revision, from a header-only read.
    async fn revision(&self) -> Result<(u64, i64)> {
        let r =
            self.run("revision", |mut cl| async move {
                cl.get(REVISION_PROBE, Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        let h = r.header().ok_or_else(|| self.unreachable("revision read", "an answer without a header"))?;
        Ok((h.cluster_id(), h.revision()))
    }

    /// Lists `prefix` linearizably: everything committed before the call, anywhere, is in it.
    pub async fn list<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        self.list_as(prefix, copied).await
    }

    async fn list_as<T: DeserializeOwned + Send + Sync + 'static, R>(
        &self,
        prefix: &str,
        answer: fn(&str, &Arc<T>) -> R,
    ) -> Result<Vec<R>> {
        let cache_key = (prefix.to_string(), TypeId::of::<T>());
        let mut cached = self.take_listing::<T>(&cache_key);
        if cached.is_none() && !self.mirror.is_live() {
            return self.list_read(prefix, cache_key, None, answer).await;
        }
        // Nothing changed anywhere in the store since the last list (same store, same revision):
        // its answer stands. Asking costs a header, not the prefix's values (issue 18).
        let (cluster_id, revision) = self.revision().await?;
        if let Some(c) = cached.take_if(|c| (c.cluster_id, c.revision) == (cluster_id, revision)) {
            return Ok(self.keep_listing(cache_key, c, answer));
        }
        match self.list_from_mirror(Some(cluster_id), revision, prefix, &mut cached).await {
            Some(listing) => Ok(self.keep_listing(cache_key, listing, answer)),
            None => self.list_read(prefix, cache_key, cached, answer).await,
        }
    }

    /// Lists `prefix` as this node's copy of the store holds it: every write this node made is
    /// in it, others' writes as the watch delivered them (milliseconds behind). For the loops
    /// that the copy's changes wake (the cluster sync, the service loop): they read again on the
    /// next change, and a linearizable read would cost etcd a round trip per list per pass on
    /// every node. Without a running copy this is [`Etcd::list`].
    pub async fn list_copy<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        self.list_copy_as(prefix, copied).await
    }

    /// The values under `prefix` as [`Etcd::list_copy`] reads them, shared instead of copied: a
    /// value whose key has not changed since the last list is the same `Arc` (so a reader can
    /// tell what changed by pointer), and a list costs no copy of any value. For the loops that
    /// read every task, service and endpoint on every change, on every node (issue 18).
    pub async fn list_copy_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Arc<T>>> {
        self.list_copy_as(prefix, shared).await
    }

    /// [`Etcd::list`] with shared values (see [`Etcd::list_copy_shared`]).
    pub async fn list_shared<T: DeserializeOwned + Send + Sync + 'static>(&self, prefix: &str) -> Result<Vec<Arc<T>>> {
        self.list_as(prefix, shared).await
    }

    async fn list_copy_as<T: DeserializeOwned + Send + Sync + 'static, R>(
        &self,
        prefix: &str,
        answer: fn(&str, &Arc<T>) -> R,
    ) -> Result<Vec<R>> {
        if !self.mirror.is_live() {
            return self.list_as(prefix, answer).await;
        }
        let floor = self.read_floor.load(std::sync::atomic::Ordering::SeqCst);
        let cache_key = (prefix.to_string(), TypeId::of::<T>());
        let mut cached = self.take_listing::<T>(&cache_key);
        match self.list_from_mirror(None, floor, prefix, &mut cached).await {
            Some(listing) => Ok(self.keep_listing(cache_key, listing, answer)),
            None => self.list_read(prefix, cache_key, cached, answer).await,
        }
    }

    /// The value of `key`, as [`Etcd::list_copy`] reads.
    pub async fn get_copy<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let floor = self.read_floor.load(std::sync::atomic::Ordering::SeqCst);
        let value = self
            .mirror
            .read(None, floor, key, |kvs, _| {
                kvs.filter(|(k, _)| *k == key).map(|(_, (_, v))| serde_json::from_slice::<T>(v)).next()
            })
            .await;
        match value {
            Some(r) => Ok(r.value.transpose().with_context(|| format!("decoding {key}"))?),
            None => self.get(key).await,
        }
    }

    /// The keys under `prefix`, as [`Etcd::list_copy`] reads.
    pub async fn keys_copy(&self, prefix: &str) -> Result<Vec<String>> {
        let floor = self.read_floor.load(std::sync::atomic::Ordering::SeqCst);
        match self.mirror.read(None, floor, prefix, |kvs, _| kvs.map(|(k, _)| k.clone()).collect()).await {
            Some(r) => Ok(r.value),
            None => self.keys(prefix).await,
        }
    }

    fn take_listing<T: Send + Sync + 'static>(&self, cache_key: &(String, TypeId)) -> Option<Listing<T>> {
        self.decoded
            .lock()
            .expect("etcd decoded")
            .remove(cache_key)
            .and_then(|b| b.downcast::<Listing<T>>().ok())
            .map(|b| *b)
    }

    /// A listing of `prefix` from the copy once it holds `revision` (of store `cluster_id`, when
    /// given), reusing what `cached` decoded (taken when used).
    async fn list_from_mirror<T: DeserializeOwned>(
        &self,
        cluster_id: Option<u64>,
        revision: i64,
        prefix: &str,
        cached: &mut Option<Listing<T>>,
    ) -> Option<Listing<T>> {
        let r = self
            .mirror
            .read(cluster_id, revision, prefix, |kvs, at| {
                let before = cached.take().filter(|c| c.cluster_id == at.cluster_id);
                match before {
                    // the prefix's section has not changed since the last list
                    Some(c) if c.revision >= at.last_change => c.items,
                    before => decode_reusing(kvs, before.map(|c| c.items).unwrap_or_default()),
                }
            })
            .await?;
        Some(Listing { cluster_id: r.cluster_id, revision: r.revision, items: r.value })
    }

    /// Keeps `listing` for the next list of the same prefix and type, and returns its values.
    fn keep_listing<T: Send + Sync + 'static, R>(
        &self,
        cache_key: (String, TypeId),
        listing: Listing<T>,
        answer: fn(&str, &Arc<T>) -> R,
    ) -> Vec<R> {
        let out = listing.items.iter().map(|(k, _, v)| answer(k, v)).collect();
        self.decoded.lock().expect("etcd decoded").insert(cache_key, Box::new(listing));
        out
    }

    /// Reads the prefix; values whose key has the modification revision `before` decoded are
    /// reused (a key's value at one revision never changes).
    async fn list_read<T: DeserializeOwned + Send + Sync + 'static, R>(
        &self,
        prefix: &str,
        cache_key: (String, TypeId),
        before: Option<Listing<T>>,
        answer: fn(&str, &Arc<T>) -> R,
    ) -> Result<Vec<R>> {
        let p = prefix.to_string();
        let r = self.run("list", |mut c| async move { c.get(p, Some(GetOptions::new().with_prefix())).await }).await?;
        let mut before: HashMap<String, (i64, Arc<T>)> =
            before.map(|b| b.items.into_iter().map(|(k, rev, v)| (k, (rev, v))).collect()).unwrap_or_default();
        let mut items = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let v = match before.remove(&key) {
                Some((rev, v)) if rev == kv.mod_revision() => v,
                _ => match serde_json::from_slice::<T>(kv.value()) {
                    Ok(v) => Arc::new(v),
                    Err(e) => {
                        tracing::warn!("skipping undecodable {key}: {e}");
                        continue;
                    }
                },
            };
            items.push((key, kv.mod_revision(), v));
        }
        Ok(match r.header() {
            Some(h) => self.keep_listing(
                cache_key,
                Listing { cluster_id: h.cluster_id(), revision: h.revision(), items },
                answer,
            ),
            None => items.iter().map(|(k, _, v)| answer(k, v)).collect(),
        })
    }

    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        if self.mirror.is_live() {
            let (cluster_id, revision) = self.revision().await?;
            let keys =
                self.mirror.read(Some(cluster_id), revision, prefix, |kvs, _| kvs.map(|(k, _)| k.clone()).collect());
            if let Some(r) = keys.await {
                return Ok(r.value);
            }
        }
        let p = prefix.to_string();
        let r =
            self.run("list keys", |mut c| async move {
                c.get(p, Some(GetOptions::new().with_prefix().with_keys_only())).await
            })
            .await?;
        Ok(r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect())
    }

    pub async fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<()> {
        let (k, b) = (key.to_string(), serde_json::to_vec(v)?);
        let r = self.run("put", |mut c| async move { c.put(k, b, None).await }).await?;
        self.wrote(r.header());
        Ok(())
    }

    pub async fn put_leased<T: Serialize>(&self, key: &str, v: &T, lease: i64) -> Result<()> {
        let (k, b) = (key.to_string(), serde_json::to_vec(v)?);
        let r = self
            .run("put", |mut c| async move { c.put(k, b, Some(PutOptions::new().with_lease(lease))).await })
            .await?;
        self.wrote(r.header());
        Ok(())
    }

    /// Writes `key` only if it does not exist; false when it already did.
    pub async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool> {
        let (k, b) = (key.to_string(), serde_json::to_vec(v)?);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, b, None)]);
        self.txn("create", txn).await
    }

    /// The revision at which `guard` last changed (0 if it never existed): read it before
    /// deciding, then commit the decision with [`Etcd::put_guarded`].
    pub async fn guard_revision(&self, guard: &str) -> Result<i64> {
        let k = guard.to_string();
        let r = self.run("get", |mut c| async move { c.get(k, None).await }).await?;
        Ok(r.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0))
    }

    /// Writes `key` only if `guard` has not changed since revision `seen`, and changes `guard` in
    /// the same transaction: decisions that read a whole set (names, subnets, ports) and commit
    /// under one guard cannot both win. False when another writer got there first (decide again).
    pub async fn put_guarded<T: Serialize>(&self, guard: &str, seen: i64, key: &str, v: &T) -> Result<bool> {
        let (g, k, b) = (guard.to_string(), key.to_string(), serde_json::to_vec(v)?);
        let txn = Txn::new()
            .when([Compare::mod_revision(g.clone(), CompareOp::Equal, seen)])
            .and_then([TxnOp::put(k, b, None), TxnOp::put(g, Vec::new(), None)]);
        self.txn("transaction", txn).await
    }

    /// Writes `key` only while `fence` exists (the leader's candidate key, tied to its lease):
    /// false when the writer is no longer the leader.
    pub async fn put_fenced<T: Serialize>(&self, fence: &str, key: &str, v: &T) -> Result<bool> {
        let op = TxnOp::put(key.to_string(), serde_json::to_vec(v)?, None);
        self.fenced(fence, op).await
    }

    /// Writes `key` only if its value is still `expect` (compare-and-swap; a concurrent writer's
    /// change is not overwritten) and, with `fence`, only while the fence exists. False when
    /// either check failed.
    pub async fn put_if_value<T: Serialize>(&self, fence: Option<&str>, key: &str, expect: &T, v: &T) -> Result<bool> {
        let mut when = vec![Compare::value(key.to_string(), CompareOp::Equal, serde_json::to_vec(expect)?)];
        if let Some(f) = fence {
            when.push(Compare::version(f.to_string(), CompareOp::Greater, 0));
        }
        let txn = Txn::new().when(when).and_then([TxnOp::put(key.to_string(), serde_json::to_vec(v)?, None)]);
        self.txn("transaction", txn).await
    }

    /// Deletes `key` only while `fence` exists (see `put_fenced`).
    pub async fn delete_fenced(&self, fence: &str, key: &str) -> Result<bool> {
        self.fenced(fence, TxnOp::delete(key.to_string(), None)).await
    }

    async fn fenced(&self, fence: &str, op: TxnOp) -> Result<bool> {
        let txn = Txn::new().when([Compare::version(fence.to_string(), CompareOp::Greater, 0)]).and_then([op]);
        self.txn("transaction", txn).await
    }

    /// Runs `txn`; true when its comparisons held (and its operations were made).
    async fn txn(&self, what: &'static str, txn: Txn) -> Result<bool> {
        let r = self.run(what, |mut c| async move { c.txn(txn).await }).await?;
        self.wrote(r.header());
        Ok(r.succeeded())
    }

    /// Makes the next reads from the copy include everything committed before this call, as a
    /// linearizable read would: one header-only read for all the lists of a loop's pass.
    pub async fn catch_up(&self) -> Result<()> {
        if self.mirror.is_live() {
            let (_, revision) = self.revision().await?;
            self.read_floor.fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// Remembers the store's revision after one of this node's writes: reads from the copy
    /// include it (see [`Etcd::list_copy`]).
    fn wrote(&self, header: Option<&etcd_client::ResponseHeader>) {
        if let Some(h) = header {
            self.read_floor.fetch_max(h.revision(), std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        let r = self.run("delete", |mut c| async move { c.delete(k, None).await }).await?;
        self.wrote(r.header());
        Ok(())
    }

    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let k = prefix.to_string();
        let r = self
            .run("delete", |mut c| async move { c.delete(k, Some(DeleteOptions::new().with_prefix())).await })
            .await?;
        self.wrote(r.header());
        Ok(())
    }

    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let r = self.run("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?;
        Ok(r.id())
    }
}

/// Decodes a listing from the copy's keys (in key order), reusing each value of `before` (also in
/// key order) whose key has the same modification revision: a key's value at one revision never
/// changes.
fn decode_reusing<T: DeserializeOwned>(
    kvs: &mut dyn Iterator<Item = (&String, &(i64, Vec<u8>))>,
    before: Vec<(String, i64, Arc<T>)>,
) -> Vec<(String, i64, Arc<T>)> {
    let mut items = Vec::with_capacity(before.len() + 1);
    let mut before = before.into_iter().peekable();
    for (key, (rev, bytes)) in kvs {
        while before.next_if(|(k, _, _)| k < key).is_some() {}
        // an unchanged key keeps its entry whole (key, value): nothing is allocated for it
        if let Some(same) = before.next_if(|(k, r, _)| k == key && r == rev) {
            items.push(same);
            continue;
        }
        match serde_json::from_slice::<T>(bytes) {
            Ok(v) => items.push((key.clone(), *rev, Arc::new(v))),
            Err(e) => tracing::warn!("skipping undecodable {key}: {e}"),
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A value whose key kept its modification revision is reused as decoded before (the same
    /// shared value, here a marker the bytes do not hold, to see it); a changed, new or
    /// undecodable one is decoded from the copy's bytes; a key gone from the copy is gone from
    /// the listing.
    #[test]
    fn listings_reuse_what_was_decoded_at_the_same_revision() {
        let copy: Vec<(String, (i64, Vec<u8>))> = vec![
            ("/p/a".into(), (1, br#""a at 1""#.to_vec())),
            ("/p/b".into(), (5, br#""b at 5""#.to_vec())),
            ("/p/c".into(), (6, br#""c at 6""#.to_vec())),
            ("/p/e".into(), (7, b"{not json".to_vec())),
        ];
        let kept = Arc::new(json!("decoded before"));
        let before: Vec<(String, i64, Arc<Value>)> = vec![
            ("/p/a".into(), 1, kept.clone()),
            ("/p/b".into(), 2, Arc::new(json!("b at 2"))),
            ("/p/d".into(), 3, Arc::new(json!("d, deleted since"))),
        ];
        let mut kvs = copy.iter().map(|(k, v)| (k, v));
        let got = decode_reusing::<Value>(&mut kvs, before);
        let want: Vec<(String, i64, Value)> = vec![
            ("/p/a".into(), 1, json!("decoded before")),
            ("/p/b".into(), 5, json!("b at 5")),
            ("/p/c".into(), 6, json!("c at 6")),
        ];
        let values: Vec<(String, i64, Value)> = got.iter().map(|(k, r, v)| (k.clone(), *r, (**v).clone())).collect();
        assert_eq!(values, want);
        assert!(Arc::ptr_eq(&got[0].2, &kept), "the unchanged key's value was decoded again, not shared");
    }
}
