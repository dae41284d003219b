//! This node's copy of the cluster's keys (everything under `/netbee/`), kept current by one
//! watch, so that listing a prefix costs etcd a header-only read instead of the prefix's values.
//!
//! Every node lists all tasks, services, endpoints and nodes on every change anywhere in the
//! swarm (the cluster sync, the service loop). Read from etcd, that is the whole cluster view
//! per change per node: with 1,000 tasks on 10 nodes, starting tasks kept etcd and every daemon
//! busy re-reading megabytes, and `service create` and the load balancers' convergence slowed
//! with the number of tasks already running (issue 18). With the copy, a change costs each node
//! its events, once.
//!
//! Choices worth knowing:
//! - **Reads stay linearizable.** A list first asks etcd for its current revision (a count-only
//!   read of a key nothing writes: a header, no values) and answers from the copy only once the
//!   watch has applied that revision; when the copy is down or more than a second behind, it
//!   reads etcd as before. A node therefore sees its own writes, and everything written anywhere
//!   before its read began, exactly as a direct read would.
//! - **Applied up to the last event held.** etcd may send a catch-up batch under the store's
//!   current revision while older events are still to come, so a response's header does not say
//!   how far the copy is; the last event's revision does. Progress responses are not used: etcd
//!   3.4 answers a progress request with the store's revision even while events are still
//!   queued for the watcher. So a revision that changed nothing under `/netbee/` is never
//!   reached (nothing netbee writes lies outside it): a reader waits a second, reads etcd, and
//!   the copy is read again.
//! - **A stuck watch heals.** A reader that waited a second in vain restarts the copy (a member
//!   cut off keeps its stream open and sends nothing); the loops that read the copy first ask
//!   etcd for its revision, once per pass (`Etcd::catch_up`), so they never act on a copy that
//!   stopped moving.
//! - **Sections.** Each key's first segment below `/netbee/` (`tasks`, `services`, `endpoints`,
//!   ...) remembers the revision of its last change: a reader's decoded listing of a section that
//!   has not changed since is reused without walking the keys, and subscribers are woken only by
//!   the sections they asked for.
//! - **One full read** at start and after any failure of the watch (a compacted revision, a lost
//!   member): in pages of 1,000 keys at one revision (gRPC's 4 MiB message limit), then watched
//!   from the next revision. Nothing of an old copy is kept.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};
use tokio::sync::Notify;

use super::{WATCH_PREFIX as PREFIX, etcd::Etcd};

/// The end of `PREFIX`'s range (its last byte plus one).
const PREFIX_END: &str = "/netbee0";
const PAGE: i64 = 1000;
/// How long a reader waits for the watch before it reads etcd itself (and restarts the copy).
const SLOW_WAIT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Mirror {
    held: RwLock<Held>,
    /// (live, revision): what readers wait on.
    applied: tokio::sync::watch::Sender<(bool, i64)>,
    /// A reader waited in vain: the watch is stuck (a member cut off keeps the stream open and
    /// sends nothing); read everything again, from another member if need be.
    restart: Notify,
    subscribers: Mutex<Vec<Subscriber>>,
}

#[derive(Default)]
struct Held {
    live: bool,
    cluster_id: u64,
    /// Every event up to this revision is applied.
    revision: i64,
    /// The revision of the full read the copy started from.
    loaded_at: i64,
    /// Key → (modification revision, value).
    kvs: BTreeMap<String, (i64, Vec<u8>)>,
    /// Section → the revision of its last change since `loaded_at`.
    changed: HashMap<String, i64>,
}

struct Subscriber {
    /// Empty: every section.
    sections: Vec<String>,
    notify: Weak<Notify>,
}

/// A section's name: the first segment below `/netbee/` of a key or prefix.
pub(super) fn section(key: &str) -> &str {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// Answers read from the copy, with the revision they are current at.
pub(super) struct Read<T> {
    pub cluster_id: u64,
    pub revision: i64,
    pub value: T,
}

impl Mirror {
    /// Keeps the copy current until the task is aborted; down (readers go to etcd) whenever the
    /// watch is not running.
    pub(super) async fn run(&self, etcd: &Etcd) {
        struct Down<'a>(&'a Mirror);
        impl Drop for Down<'_> {
            fn drop(&mut self) {
                self.0.set_down();
            }
        }
        let _down = Down(self);
        loop {
            if let Err(e) = self.follow(etcd).await {
                tracing::warn!("cluster store copy: {e:#}; reading etcd directly until it is read again");
                etcd.reset().await;
            }
            self.set_down();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn set_down(&self) {
        let mut h = self.held.write().expect("mirror");
        *h = Held::default();
        drop(h);
        self.applied.send_replace((false, 0));
    }

    /// One full read, then the watch from the next revision, applied until it fails.
    async fn follow(&self, etcd: &Etcd) -> Result<()> {
        let (cluster_id, revision, kvs) = read_all(etcd).await?;
        let mut client = etcd.client().await?;
        let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        // the request half stays open for as long as the watch runs
        let (_requests, mut responses) = tokio::time::timeout(super::etcd::TIMEOUT, client.watch(PREFIX, Some(opts)))
            .await
            .map_err(|_| anyhow!("no answer to the watch request within 3 s"))??
            .split();
        *self.held.write().expect("mirror") =
            Held { live: true, cluster_id, revision, loaded_at: revision, kvs, changed: HashMap::new() };
        self.applied.send_replace((true, revision));
        // the copy may differ from what the subscribers last saw in any section
        self.wake(None);
        loop {
            tokio::select! {
                m = responses.message() => {
                    let resp = m?.ok_or_else(|| anyhow!("the watch closed"))?;
                    if resp.canceled() {
                        bail!("the watch was cancelled ({}; compacted at {})", resp.cancel_reason(), resp.compact_revision());
                    }
                    if !resp.created() {
                        self.apply(&resp);
                    }
                }
                _ = self.restart.notified() => bail!("the watch fell more than {SLOW_WAIT:?} behind"),
            }
        }
    }

    fn apply(&self, resp: &WatchResponse) {
        let mut sections: Vec<String> = Vec::new();
        let revision = {
            let mut h = self.held.write().expect("mirror");
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rev = kv.mod_revision();
                let s = section(&key).to_string();
                h.changed.insert(s.clone(), rev);
                if !sections.contains(&s) {
                    sections.push(s);
                }
                match ev.event_type() {
                    EventType::Put => {
                        h.kvs.insert(key, (rev, kv.value().to_vec()));
                    }
                    EventType::Delete => {
                        h.kvs.remove(&key);
                    }
                }
                h.revision = h.revision.max(rev);
            }
            h.revision
        };
        self.applied.send_replace((true, revision));
        if !sections.is_empty() {
            self.wake(Some(&sections));
        }
    }

    fn wake(&self, sections: Option<&[String]>) {
        let mut subs = self.subscribers.lock().expect("mirror subscribers");
        subs.retain(|s| s.notify.strong_count() > 0);
        for s in subs.iter() {
            let wanted = match sections {
                None => true,
                Some(changed) => s.sections.is_empty() || changed.iter().any(|c| s.sections.contains(c)),
            };
            if wanted && let Some(n) = s.notify.upgrade() {
                n.notify_one();
            }
        }
    }

    /// A notification for every change in the sections of `prefixes` (all sections when empty)
    /// and whenever the copy is read again; it stops when the returned handle is dropped.
    pub(super) fn subscribe(&self, prefixes: &[&str]) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let sections = prefixes.iter().map(|p| section(p).to_string()).collect();
        self.subscribers
            .lock()
            .expect("mirror subscribers")
            .push(Subscriber { sections, notify: Arc::downgrade(&notify) });
        notify
    }

    pub(super) fn is_live(&self) -> bool {
        self.applied.borrow().0
    }

    /// Waits until the copy has applied `revision` (of the store `cluster_id`, when given):
    /// false when it is down, of another store, or still behind after `SLOW_WAIT`.
    async fn caught_up(&self, cluster_id: Option<u64>, revision: i64) -> bool {
        let mut rx = self.applied.subscribe();
        let done = |a: &(bool, i64)| !a.0 || a.1 >= revision;
        if tokio::time::timeout(SLOW_WAIT, rx.wait_for(done)).await.is_err() {
            tracing::warn!("cluster store copy: more than {SLOW_WAIT:?} behind revision {revision}; reading it again");
            self.restart.notify_waiters();
            return false;
        }
        self.held.read().expect("mirror").holds(cluster_id, revision)
    }

    /// Reads from the copy once it holds everything up to `revision` (of store `cluster_id`, when
    /// given); None when it cannot (the caller reads etcd). `f` gets the keys and values under
    /// `prefix`, in key order.
    pub(super) async fn read<T>(
        &self,
        cluster_id: Option<u64>,
        revision: i64,
        prefix: &str,
        f: impl FnOnce(&mut dyn Iterator<Item = (&String, &(i64, Vec<u8>))>, At) -> T,
    ) -> Option<Read<T>> {
        if !self.caught_up(cluster_id, revision).await {
            return None;
        }
        let h = self.held.read().expect("mirror");
        if !h.holds(cluster_id, revision) {
            return None;
        }
        let last_change = h.changed.get(section(prefix)).copied().unwrap_or(h.loaded_at).max(h.loaded_at);
        let mut range = h.kvs.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded));
        let mut under = range.by_ref().take_while(|(k, _)| k.starts_with(prefix));
        let value = f(&mut under, At { cluster_id: h.cluster_id, last_change });
        Some(Read { cluster_id: h.cluster_id, revision: h.revision, value })
    }
}

impl Held {
    fn holds(&self, cluster_id: Option<u64>, revision: i64) -> bool {
        self.live && cluster_id.is_none_or(|c| c == self.cluster_id) && self.revision >= revision
    }
}

/// Where a read from the copy stands: the store, and the revision at which the read prefix's
/// section last changed (or the copy was read).
pub(super) struct At {
    pub cluster_id: u64,
    pub last_change: i64,
}

/// Everything under `PREFIX` at one revision, in pages.
async fn read_all(etcd: &Etcd) -> Result<(u64, i64, BTreeMap<String, (i64, Vec<u8>)>)> {
    let mut kvs = BTreeMap::new();
    let mut from = PREFIX.to_string();
    let mut at: Option<(u64, i64)> = None;
    loop {
        let mut opts = GetOptions::new().with_range(PREFIX_END).with_limit(PAGE);
        if let Some((_, rev)) = at {
            opts = opts.with_revision(rev);
        }
        let key = from.clone();
        let mut r = etcd.run("list", |mut c| async move { c.get(key, Some(opts)).await }).await?;
        let h = r.header().ok_or_else(|| anyhow!("etcd answered without a header"))?;
        let first = *at.get_or_insert((h.cluster_id(), h.revision()));
        let more = r.more();
        let mut last = None;
        for kv in r.take_kvs() {
            let rev = kv.mod_revision();
            let (k, v) = kv.into_key_value();
            let k = String::from_utf8_lossy(&k).into_owned();
            last = Some(k.clone());
            kvs.insert(k, (rev, v));
        }
        match (more, last) {
            (true, Some(last)) => from = format!("{last}\0"),
            _ => return Ok((first.0, first.1, kvs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_the_first_segment_below_the_prefix() {
        assert_eq!(section("/netbee/tasks/abc"), "tasks");
        assert_eq!(section("/netbee/tasks/"), "tasks");
        assert_eq!(section("/netbee/ipam/net1/10.0.0.2"), "ipam");
        assert_eq!(section("/netbee/cluster"), "cluster");
        assert!(PREFIX_END > PREFIX && !PREFIX_END.starts_with(PREFIX));
        assert_eq!(PREFIX.as_bytes()[..7], PREFIX_END.as_bytes()[..7]);
        assert_eq!(PREFIX.as_bytes()[7] + 1, PREFIX_END.as_bytes()[7]);
    }
}
