//! A small typed layer over etcd-client: JSON values, create-if-absent, leases, with timeouts so
//! an unreachable etcd gives a clear error instead of a hang, and reconnection after failures.
use std::{
    any::{Any, TypeId},
    collections::HashMap,
    time::Duration,
};

use anyhow::{Context as _, Result};

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
}

/// A list's answer: the store (cluster id) and its revision when it was read, and the values in
/// key order with their keys' modification revisions.
struct Listing<T> {
    cluster_id: u64,
    revision: i64,
    items: Vec<(String, i64, T)>,
}

/// A key nothing writes: reading it returns the store's current revision and nothing else.
const REVISION_PROBE: &str = "/netbee-revision-probe";

const TIMEOUT: Duration = Duration::from_secs(3);

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Etcd {
        Etcd { endpoints, client: tokio::sync::Mutex::new(None), next: Default::default(), decoded: Default::default() }
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

    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T>
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

    pub async fn list<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        let cache_key = (prefix.to_string(), TypeId::of::<T>());
        let cached: Option<Listing<T>> = self
            .decoded
            .lock()
            .expect("etcd decoded")
            .remove(&cache_key)
            .and_then(|b| b.downcast::<Listing<T>>().ok())
            .map(|b| *b);
        // Nothing changed anywhere in the store since the last list (same store, same revision):
        // its answer stands. Asking costs a header, not the prefix's values: the service loops
        // list all services and tasks twice a second on every node, and at rest this is all
        // they read (issue 18).
        if let Some(c) = cached {
            let r = self
                .run("revision", |mut cl| async move {
                    cl.get(REVISION_PROBE, Some(GetOptions::new().with_count_only())).await
                })
                .await;
            let same = r.as_ref().ok().and_then(|r| r.header()).map(|h| (h.cluster_id(), h.revision()));
            if same == Some((c.cluster_id, c.revision)) {
                let out = c.items.iter().map(|(k, _, v)| (k.clone(), v.clone())).collect();
                self.decoded.lock().expect("etcd decoded").insert(cache_key, Box::new(c));
                return Ok(out);
            }
            return self.list_read(prefix, cache_key, Some(c)).await;
        }
        self.list_read(prefix, cache_key, None).await
    }

    /// Reads the prefix; values whose key has the modification revision `before` decoded are
    /// reused (a key's value at one revision never changes).
    async fn list_read<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        prefix: &str,
        cache_key: (String, TypeId),
        before: Option<Listing<T>>,
    ) -> Result<Vec<(String, T)>> {
        let p = prefix.to_string();
        let r = self.run("list", |mut c| async move { c.get(p, Some(GetOptions::new().with_prefix())).await }).await?;
        let mut before: HashMap<String, (i64, T)> =
            before.map(|b| b.items.into_iter().map(|(k, rev, v)| (k, (rev, v))).collect()).unwrap_or_default();
        let mut items = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let v = match before.remove(&key) {
                Some((rev, v)) if rev == kv.mod_revision() => v,
                _ => match serde_json::from_slice::<T>(kv.value()) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("skipping undecodable {key}: {e}");
                        continue;
                    }
                },
            };
            items.push((key, kv.mod_revision(), v));
        }
        let out = items.iter().map(|(k, _, v)| (k.clone(), v.clone())).collect();
        if let Some(h) = r.header() {
            let listing = Listing { cluster_id: h.cluster_id(), revision: h.revision(), items };
            self.decoded.lock().expect("etcd decoded").insert(cache_key, Box::new(listing));
        }
        Ok(out)
    }

    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
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
        self.run("put", |mut c| async move { c.put(k, b, None).await }).await.map(|_| ())
    }

    pub async fn put_leased<T: Serialize>(&self, key: &str, v: &T, lease: i64) -> Result<()> {
        let (k, b) = (key.to_string(), serde_json::to_vec(v)?);
        self.run("put", |mut c| async move { c.put(k, b, Some(PutOptions::new().with_lease(lease))).await })
            .await
            .map(|_| ())
    }

    /// Writes `key` only if it does not exist; false when it already did.
    pub async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool> {
        let (k, b) = (key.to_string(), serde_json::to_vec(v)?);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, b, None)]);
        let r = self.run("create", |mut c| async move { c.txn(txn).await }).await?;
        Ok(r.succeeded())
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
        let r = self.run("transaction", |mut c| async move { c.txn(txn).await }).await?;
        Ok(r.succeeded())
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
        let r = self.run("transaction", |mut c| async move { c.txn(txn).await }).await?;
        Ok(r.succeeded())
    }

    /// Deletes `key` only while `fence` exists (see `put_fenced`).
    pub async fn delete_fenced(&self, fence: &str, key: &str) -> Result<bool> {
        self.fenced(fence, TxnOp::delete(key.to_string(), None)).await
    }

    async fn fenced(&self, fence: &str, op: TxnOp) -> Result<bool> {
        let txn = Txn::new().when([Compare::version(fence.to_string(), CompareOp::Greater, 0)]).and_then([op]);
        let r = self.run("transaction", |mut c| async move { c.txn(txn).await }).await?;
        Ok(r.succeeded())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        self.run("delete", |mut c| async move { c.delete(k, None).await }).await.map(|_| ())
    }

    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let k = prefix.to_string();
        self.run("delete", |mut c| async move { c.delete(k, Some(DeleteOptions::new().with_prefix())).await })
            .await
            .map(|_| ())
    }

    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let r = self.run("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?;
        Ok(r.id())
    }
}
