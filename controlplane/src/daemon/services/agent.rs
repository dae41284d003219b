//! The node agent: starts this node's assigned tasks as containers, drains and stops the ones
//! told to stop, and reports the ones that died.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Result, anyhow};
use chrono::Utc;
use tracing::{info, warn};

use super::scheduler::Pending;
use crate::{
    api::ContainerCreate,
    daemon::Daemon,
    images::HOST_IMAGE,
    model::{ServiceRecord, Status, TaskRecord, TaskState},
    portspec::Proto,
};

/// Tasks an agent starts per pass (see `run_my_tasks`).
const STARTS_PER_PASS: usize = 16;
/// How long a task leaving the load balancer keeps serving its established connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// A task told to stop keeps accepting until no node has sent it a new connection for this long:
/// every node drops it from its load balancers within a pass of the change, but a busy node's
/// pass can take seconds, and a connection sent to a stopped task would be refused.
const QUIET_BEFORE_STOP: Duration = Duration::from_millis(1500);
/// ... but at least this long after the change, and at most `QUIET_TIMEOUT` (a client that keeps
/// reusing a flow it opened before the change is its own load balancer).
const MIN_GRACE: Duration = Duration::from_secs(2);
const QUIET_TIMEOUT: Duration = Duration::from_secs(12);

/// What the agent needs of a task's container.
struct TaskContainer {
    id: String,
    status: Status,
    exit_code: i32,
    /// Host PID of its init.
    pid: i32,
}

/// What a pass of the agent did.
pub(in crate::daemon) struct AgentPass {
    /// Tasks wait to be started in a later pass.
    pub pending: Pending,
    /// A task record was written (started, failed or shut down).
    pub changed: bool,
}

impl Daemon {
    /// Whether this node's load balancers still choose any of `addrs` (a task's addresses).
    fn is_a_local_backend(&self, addrs: &[(String, Ipv4Addr)]) -> bool {
        let dp = self.dp.lock().unwrap();
        dp.backends
            .iter()
            .filter_map(|r| r.ok())
            .any(|(_, b)| addrs.iter().any(|(_, ip)| b.addr == crate::datapath::ip_be(*ip)))
    }

    /// The node agent: start this node's assigned tasks, drain and stop the ones told to stop,
    /// report the ones that died.
    /// Starts at most `STARTS_PER_PASS` tasks, so a node assigned many tasks at once programs its
    /// load balancers and answers other services' changes between batches.
    pub(in crate::daemon) async fn run_my_tasks(
        self: &Arc<Self>,
        services: &[Arc<ServiceRecord>],
        tasks: &[Arc<TaskRecord>],
    ) -> Result<AgentPass> {
        let mut started = 0;
        let mut pending = false;
        let mut changed = false;
        let me = self.my_node_id();
        // shared: a task is copied only when the agent changes it (most passes change none)
        let tasks: Vec<Arc<TaskRecord>> = tasks.iter().filter(|t| t.node_id == me).cloned().collect();
        // what the pass needs of this node's task containers, copied (not the shared table: the
        // starts below write it, and a write copies the whole table while a reader holds it; nor
        // whole records: every pass on every change copied each task's container, issue 18)
        let mine: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let by_task: HashMap<String, TaskContainer> = self
            .containers_shared()?
            .values()
            .filter_map(|c| c.config.labels.get("com.netbee.task.id").map(|t| (t, c)))
            .filter(|(t, _)| mine.contains(t.as_str()))
            .map(|(t, c)| {
                let (status, exit_code, pid) = (c.state.status.clone(), c.state.exit_code, c.state.pid);
                (t.clone(), TaskContainer { id: c.id.clone(), status, exit_code, pid })
            })
            .collect();
        drop(mine);
        for mut t in tasks {
            let ct = by_task.get(&t.id);
            if t.desired_running {
                match (t.state, ct) {
                    (TaskState::Assigned, None) => {
                        let Some(s) = services.iter().find(|s| s.id == t.service_id) else { continue };
                        let s: &ServiceRecord = s;
                        // the task runs the spec it carries (during an update, old and new ones run)
                        let view;
                        let s = match &t.spec {
                            Some(spec) if **spec != s.spec => {
                                view = ServiceRecord { spec: (**spec).clone(), ..s.clone() };
                                &view
                            }
                            _ => s,
                        };
                        if started == STARTS_PER_PASS {
                            pending = true;
                            continue;
                        }
                        started += 1;
                        changed = true;
                        let t = Arc::make_mut(&mut t);
                        t.state = TaskState::Starting;
                        self.shared().put(&*t).await?;
                        match self.start_task(s, t).await {
                            Ok((cid, addrs)) => {
                                t.container_id = Some(cid);
                                t.addrs = addrs;
                                t.state = TaskState::Running;
                            }
                            Err(e) => {
                                t.state = TaskState::Failed;
                                t.message = e.to_string();
                            }
                        }
                        t.updated = Utc::now();
                        // `tasks.S` lists it by the time anyone reads Running (see `note_task`)
                        self.note_task(t).await;
                        self.shared().put(&*t).await?;
                        self.note_task(t).await;
                    }
                    (TaskState::Running | TaskState::Starting, Some(c)) if c.status != Status::Running => {
                        changed = true;
                        let t = Arc::make_mut(&mut t);
                        t.state = TaskState::Failed;
                        t.message = format!("task exited with code {}", c.exit_code);
                        t.updated = Utc::now();
                        self.shared().put(&*t).await?;
                        let _ = self.container_remove(&c.id, true).await;
                    }
                    (TaskState::Running | TaskState::Starting, None) => {
                        changed = true;
                        let t = Arc::make_mut(&mut t);
                        t.state = TaskState::Failed;
                        t.message = "task container disappeared".into();
                        t.updated = Utc::now();
                        self.shared().put(&*t).await?;
                    }
                    _ => {}
                }
            } else if let Some(c) = ct {
                // out of every load balancer already (desired shutdown); let its connections end
                if !self.services.draining.lock().unwrap().insert(t.id.clone()) {
                    continue;
                }
                let d = self.clone();
                let cid = c.id.clone();
                let pid = c.pid;
                tokio::spawn(async move {
                    d.wait_until_no_new_connections(pid, &t.addrs).await;
                    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                    while established_connections(pid) > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let _ = d.container_stop(&cid, 10).await;
                    let _ = d.container_remove(&cid, true).await;
                    let t = Arc::make_mut(&mut t);
                    t.state = TaskState::Shutdown;
                    t.updated = Utc::now();
                    if let Err(e) = d.shared().put(&*t).await {
                        warn!(task = %t.id, "recording shutdown: {e:#}");
                    }
                    d.services.draining.lock().unwrap().remove(&t.id);
                });
            } else if matches!(
                t.state,
                TaskState::Running | TaskState::Starting | TaskState::Assigned | TaskState::Orphaned
            ) {
                changed = true;
                let t = Arc::make_mut(&mut t);
                t.state = TaskState::Shutdown;
                t.updated = Utc::now();
                self.shared().put(&*t).await?;
            }
        }
        Ok(AgentPass { pending, changed })
    }

    pub(in crate::daemon) async fn start_task(
        self: &Arc<Self>,
        s: &ServiceRecord,
        t: &TaskRecord,
    ) -> Result<(String, Vec<(String, Ipv4Addr)>)> {
        let name = format!("{}.{}.{}", s.spec.name, t.slot, &t.id[..12]);
        // the service's container labels, then netbee's own (which the agent finds tasks by)
        let mut labels = s.spec.container_labels.clone();
        labels.insert("com.netbee.task.id".to_string(), t.id.clone());
        labels.insert("com.netbee.service.id".to_string(), s.id.clone());
        labels.insert("com.netbee.service.name".to_string(), s.spec.name.clone());
        self.ensure_image(&s.spec.image).await?;
        let req = ContainerCreate {
            name: Some(name),
            image: s.spec.image.clone(),
            entrypoint: s.spec.entrypoint.clone(),
            cmd: s.spec.cmd.clone(),
            env: s.spec.env.clone(),
            network: s.spec.networks.first().cloned(),
            labels,
            ..Default::default()
        };
        let c = self.container_create(req).await.map_err(|e| anyhow!("{e}"))?;
        for extra in s.spec.networks.iter().skip(1) {
            let req = crate::api::NetworkConnect { container: c.id.clone(), ..Default::default() };
            self.network_connect(extra, req).await.map_err(|e| anyhow!("{e}"))?;
        }
        if let Err(e) = self.container_start(&c.id).await {
            let _ = self.container_remove(&c.id, true).await;
            return Err(anyhow!("{e}"));
        }
        let c = self.find_container(&c.id).map_err(|e| anyhow!("{e}"))?;
        // a task joins the load balancers only once it accepts connections on its target ports
        let targets: Vec<u16> = s.spec.ports.iter().filter(|p| p.proto == Proto::Tcp).map(|p| p.target).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !targets.iter().all(|p| listening(c.state.pid, *p)) && tokio::time::Instant::now() < deadline {
            // a task that exits before it listens failed: it must not join a load balancer, and a
            // rolling update counts it at once
            let exited = !std::path::Path::new(&format!("/proc/{}", c.state.pid)).exists()
                || self.find_container(&c.id).is_ok_and(|r| r.state.status != Status::Running);
            if exited {
                // the exit is recorded by the container's watch a moment later
                let mut code = None;
                for _ in 0..20 {
                    match self.find_container(&c.id) {
                        Ok(r) if r.state.status != Status::Running => {
                            code = Some(r.state.exit_code);
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                let _ = self.container_remove(&c.id, true).await;
                return Err(match code {
                    Some(code) => anyhow!("task exited with code {code} before listening on its published ports"),
                    None => anyhow!("task exited before listening on its published ports"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(service = %s.spec.name, slot = t.slot, container = %c.name, "task running");
        Ok((c.id.clone(), c.endpoints.iter().map(|e| (e.network_id.clone(), e.ip)).collect()))
    }
}

impl Daemon {
    /// Waits until no load balancer sends the task (its container's init is `pid`) new
    /// connections: this node's own has dropped it and no new peer has appeared in the task's
    /// network namespace for `QUIET_BEFORE_STOP`. Remote nodes' load balancers are seen only
    /// through what they send, which needs no protocol between nodes and holds however late a
    /// busy node programs its change.
    async fn wait_until_no_new_connections(&self, pid: i32, addrs: &[(String, Ipv4Addr)]) {
        let start = tokio::time::Instant::now();
        let mut seen = tcp_peers(pid);
        let mut last_new = start;
        while start.elapsed() < QUIET_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = tcp_peers(pid);
            if !now.is_subset(&seen) {
                last_new = tokio::time::Instant::now();
                seen.extend(now);
            }
            if start.elapsed() >= MIN_GRACE
                && last_new.elapsed() >= QUIET_BEFORE_STOP
                && !self.is_a_local_backend(addrs)
            {
                return;
            }
        }
    }

    /// Makes the task's image present on this node: a node that lacks it pulls it from the
    /// registry its reference names. The error is the task's ERROR in `service ps`.
    async fn ensure_image(&self, image: &str) -> Result<()> {
        if image == HOST_IMAGE || self.images.resolve(image).is_ok() {
            return Ok(());
        }
        // one pull per image at a time: the agent starts a service's tasks one after the other,
        // and a second task finds the image the first one pulled
        let _g = self.services.pulling.lock().await;
        if self.images.resolve(image).is_ok() {
            return Ok(());
        }
        info!(image, "pulling the image for a task");
        self.images.pull(image).await.map_err(|e| anyhow!("pulling image {image}: {e:#}"))?;
        Ok(())
    }
}

/// A TCP socket in a container's network namespace, as /proc shows it.
struct TcpSocket {
    local_port: u16,
    /// "ADDR:PORT" in /proc's hex notation (only compared, never parsed)
    remote: String,
    /// /proc's hex state: "01" established, "0A" listen, ...
    state: String,
}

/// The TCP sockets in the container's network namespace (via its init's /proc), IPv4 and IPv6
/// alike: a server listening on `::` (busybox httpd, most images' servers) accepts IPv4
/// connections but appears only in `tcp6`.
fn tcp_sockets(pid: i32) -> Vec<TcpSocket> {
    if pid <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(local_port), Some(remote), Some(state)) = (port, f.get(2), f.get(3)) {
                out.push(TcpSocket { local_port, remote: remote.to_string(), state: state.to_string() });
            }
        }
    }
    out
}

/// Whether a TCP socket listens on `port` in the container's network namespace.
fn listening(pid: i32, port: u16) -> bool {
    tcp_sockets(pid).iter().any(|s| s.local_port == port && s.state == "0A")
}

/// Established TCP connections in the container's network namespace.
fn established_connections(pid: i32) -> usize {
    tcp_sockets(pid).iter().filter(|s| s.state == "01").count()
}

/// The remote ends of every connection in the container's network namespace, closing ones
/// (TIME_WAIT) included: a new one among them is a connection opened since the last look.
fn tcp_peers(pid: i32) -> HashSet<String> {
    tcp_sockets(pid).into_iter().filter(|s| s.state != "0A").map(|s| s.remote).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server bound to `::` (as busybox httpd binds) counts as listening: it used to be looked
    /// for in `tcp` only, and its task joined the load balancers only after a 10 s timeout.
    #[test]
    fn listeners_on_ipv6_any_are_seen() {
        let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let me = std::process::id() as i32;
        assert!(listening(me, v6.local_addr().unwrap().port()), "a listener on [::] is not seen");
        assert!(listening(me, v4.local_addr().unwrap().port()), "a listener on 0.0.0.0 is not seen");
        let unused = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        assert!(!listening(me, unused), "a closed port is seen as listening");
    }

    /// A connection opened after the last look shows as a new peer.
    #[test]
    fn new_connections_show_as_new_peers() {
        let me = std::process::id() as i32;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = tcp_peers(me);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_served, _) = listener.accept().unwrap();
        let after = tcp_peers(me);
        assert!(!after.is_subset(&before), "a new connection is not seen: {after:?}");
    }
}
