//! Prometheus metrics of a node (`netbee daemon --metrics-addr`), in the Prometheus text format
//! (0.0.4) written by `prometheus-client`.
//!
//! Two kinds of figures: the control plane's own latencies and errors, recorded as operations
//! run into process-wide histograms and counters ([`control_plane`]); and everything that is state
//! (datapath counters, conntrack, load-balancer counts, containers, tasks, the process), read at
//! scrape time into a [`Snapshot`] and rendered by [`render`]. Names follow Prometheus's
//! conventions: a `netbee_` prefix, base units (seconds, bytes), `_total` on counters; the
//! process's series keep the `process_` names every client library uses.
use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub mod process;

pub use process::ProcessStats;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = [(&'static str, &'static str); 1];

/// Latency buckets (seconds) for control-plane operations: 1 ms to about 33 s.
fn op_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16))
}

/// Latency buckets (seconds) for etcd requests: 0.25 ms to about 4 s.
fn etcd_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00025, 2.0, 15))
}

/// The control plane's latencies and errors, shared by the whole process.
pub struct ControlPlane {
    operation_duration: Family<Labels, Histogram>,
    operation_errors: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    reconcile_errors: Counter,
    etcd_duration: Family<Labels, Histogram>,
    etcd_errors: Family<Labels, Counter>,
    dns_queries: Family<Labels, Counter>,
}

static CONTROL_PLANE: LazyLock<ControlPlane> = LazyLock::new(|| ControlPlane {
    operation_duration: Family::new_with_constructor(op_buckets),
    operation_errors: Family::default(),
    reconcile_duration: op_buckets(),
    reconcile_errors: Counter::default(),
    etcd_duration: Family::new_with_constructor(etcd_buckets),
    etcd_errors: Family::default(),
    dns_queries: Family::default(),
});

pub fn control_plane() -> &'static ControlPlane {
    &CONTROL_PLANE
}

impl ControlPlane {
    /// Records one API operation (`container_create`, `service_update`, ...) that took `took`.
    pub fn operation(&self, op: &'static str, took: Duration, ok: bool) {
        self.operation_duration.get_or_create(&[("operation", op)]).observe(took.as_secs_f64());
        if !ok {
            self.operation_errors.get_or_create(&[("operation", op)]).inc();
        }
    }

    /// Records one pass of the service loop (schedule, run this node's tasks, program the load
    /// balancers and names).
    pub fn reconcile_pass(&self, took: Duration, ok: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    /// Records one etcd round trip (`get`, `list`, `put`, `txn`, ...).
    pub fn etcd_request(&self, op: &'static str, took: Duration, ok: bool) {
        self.etcd_duration.get_or_create(&[("operation", op)]).observe(took.as_secs_f64());
        if !ok {
            self.etcd_errors.get_or_create(&[("operation", op)]).inc();
        }
    }

    /// Records one query the embedded DNS answered: `found`, `nxdomain`, `forwarded` (relayed
    /// upstream) or `servfail`.
    pub fn dns_query(&self, answer: &'static str) {
        self.dns_queries.get_or_create(&[("answer", answer)]).inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "netbee_operation_duration_seconds",
            "Time the daemon took to answer an API operation, by operation",
            self.operation_duration.clone(),
        );
        r.register(
            "netbee_operation_errors",
            "API operations that failed, by operation",
            self.operation_errors.clone(),
        );
        r.register(
            "netbee_service_reconcile_duration_seconds",
            "Time of one pass of the service loop (scheduling, this node's tasks, load balancers, names)",
            self.reconcile_duration.clone(),
        );
        r.register(
            "netbee_service_reconcile_errors",
            "Passes of the service loop that failed",
            self.reconcile_errors.clone(),
        );
        r.register(
            "netbee_etcd_request_duration_seconds",
            "Round-trip time of requests to the cluster store, by operation",
            self.etcd_duration.clone(),
        );
        r.register(
            "netbee_dns_queries",
            "Queries the embedded DNS servers answered, by answer (found, nxdomain, forwarded, servfail)",
            self.dns_queries.clone(),
        );
        r.register(
            "netbee_etcd_request_errors",
            "Requests to the cluster store that failed or timed out, by operation",
            self.etcd_errors.clone(),
        );
    }
}

/// Runs `f` and records it as API operation `op`.
pub async fn timed<T, E>(op: &'static str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let t0 = Instant::now();
    let r = f.await;
    control_plane().operation(op, t0.elapsed(), r.is_ok());
    r
}

/// New connections and current flows of one backend of one frontend, as this node balanced them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendSample {
    /// `mesh`, `vip` or `published`.
    pub kind: String,
    /// The service's name (a published port: its container's name).
    pub service: String,
    /// The frontend as `lb ls` shows it (`*:80/tcp`, `10.0.1.2:*/tcp`).
    pub frontend: String,
    /// The backend's address.
    pub backend: String,
    /// The task's name (`web.3`), empty for a container's published port.
    pub task: String,
    /// The node the backend runs on, when known.
    pub node: String,
    pub connections: u64,
    pub established: u64,
}

/// Everything read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Datapath counters by name (`stat::NAMES`), summed over CPUs.
    pub packets: Vec<(String, u64)>,
    /// Drops by reason (`drop_reason::NAMES`).
    pub drops: Vec<(String, u64)>,
    pub conntrack: crate::api::ConntrackStats,
    pub mesh_received: u64,
    pub backends: Vec<BackendSample>,
    /// Containers of this node by state.
    pub containers: Vec<(String, u64)>,
    /// Networks this node knows, by driver.
    pub networks: Vec<(String, u64)>,
    /// Services of the cluster (None when the store could not be read).
    pub services: Option<u64>,
    /// Tasks assigned to this node by state (None when the store could not be read).
    pub tasks: Option<Vec<(String, u64)>>,
    pub process: Option<ProcessStats>,
}

/// Counters and gauges that are not the datapath's packet counters.
const NOT_PACKETS: [&str; 2] = ["ct_created", "mesh_received"];

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let packets: Vec<(&str, u64)> = self
            .packets
            .iter()
            .filter(|(n, _)| !NOT_PACKETS.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        family(
            &mut enc,
            "netbee_datapath_packets",
            "Packets (and first packets of flows) the datapath handled, by counter, summed over CPUs",
            MetricType::Counter,
            packets.iter().map(|(n, v)| (vec![("counter", *n)], Value::U(*v))),
        )?;
        family(
            &mut enc,
            "netbee_datapath_drops",
            "Packets the datapath dropped, by reason",
            MetricType::Counter,
            self.drops.iter().map(|(n, v)| (vec![("reason", n.as_str())], Value::U(*v))),
        )?;
        let ct = &self.conntrack;
        single(
            &mut enc,
            "netbee_conntrack_entries",
            "Conntrack entries now (two per translated flow)",
            MetricType::Gauge,
            ct.entries,
        )?;
        single(&mut enc, "netbee_conntrack_capacity", "Size of the conntrack table", MetricType::Gauge, ct.capacity)?;
        single(
            &mut enc,
            "netbee_conntrack_under_pressure",
            "1 while the conntrack table is three quarters full (the collector then runs every second with short timeouts for SYN-only, closing and UDP flows)",
            MetricType::Gauge,
            u64::from(crate::datapath::ct_under_pressure(ct.entries, ct.capacity)),
        )?;
        single(
            &mut enc,
            "netbee_conntrack_entries_created",
            "Conntrack entries the datapath created",
            MetricType::Counter,
            ct.entries_created,
        )?;
        single(
            &mut enc,
            "netbee_conntrack_entries_collected",
            "Conntrack entries the daemon's collector removed as idle",
            MetricType::Counter,
            ct.entries_collected,
        )?;
        single(
            &mut enc,
            "netbee_conntrack_entries_evicted",
            "Conntrack entries evicted from the full table (created, neither collected nor present)",
            MetricType::Counter,
            ct.evicted,
        )?;
        single(
            &mut enc,
            "netbee_mesh_connections_received",
            "New connections from the network to this node's routing-mesh ports",
            MetricType::Counter,
            self.mesh_received,
        )?;
        let (services, published): (Vec<&BackendSample>, Vec<&BackendSample>) =
            self.backends.iter().partition(|b| b.kind != "published");
        family(
            &mut enc,
            "netbee_service_backend_connections",
            "New connections this node's datapath sent to a service backend, by frontend (mesh or VIP)",
            MetricType::Counter,
            services.iter().map(|b| (service_labels(b), Value::U(b.connections))),
        )?;
        family(
            &mut enc,
            "netbee_service_backend_established_flows",
            "Flows this node translated to a service backend that are established now (from conntrack)",
            MetricType::Gauge,
            services.iter().map(|b| (service_labels(b), Value::U(b.established))),
        )?;
        family(
            &mut enc,
            "netbee_published_port_connections",
            "New connections to a container's published port",
            MetricType::Counter,
            published.iter().map(|b| (published_labels(b), Value::U(b.connections))),
        )?;
        family(
            &mut enc,
            "netbee_published_port_established_flows",
            "Flows to a container's published port that are established now (from conntrack)",
            MetricType::Gauge,
            published.iter().map(|b| (published_labels(b), Value::U(b.established))),
        )?;
        family(
            &mut enc,
            "netbee_containers",
            "Containers of this node, by state",
            MetricType::Gauge,
            self.containers.iter().map(|(s, v)| (vec![("state", s.as_str())], Value::U(*v))),
        )?;
        family(
            &mut enc,
            "netbee_networks",
            "Networks this node knows, by driver",
            MetricType::Gauge,
            self.networks.iter().map(|(s, v)| (vec![("driver", s.as_str())], Value::U(*v))),
        )?;
        if let Some(n) = self.services {
            single(
                &mut enc,
                "netbee_services",
                "Services of the cluster (the same on every node)",
                MetricType::Gauge,
                n,
            )?;
        }
        if let Some(tasks) = &self.tasks {
            family(
                &mut enc,
                "netbee_tasks",
                "Service tasks assigned to this node, by state",
                MetricType::Gauge,
                tasks.iter().map(|(s, v)| (vec![("state", s.as_str())], Value::U(*v))),
            )?;
        }
        if let Some(p) = &self.process {
            let series: [(&str, &str, MetricType, Value); 7] = [
                (
                    "process_cpu_seconds",
                    "User and system CPU time of the daemon, seconds",
                    MetricType::Counter,
                    Value::F(p.cpu_seconds),
                ),
                (
                    "process_resident_memory_bytes",
                    "Resident memory of the daemon",
                    MetricType::Gauge,
                    Value::U(p.resident_memory_bytes),
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory of the daemon",
                    MetricType::Gauge,
                    Value::U(p.virtual_memory_bytes),
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the daemon, seconds since the epoch",
                    MetricType::Gauge,
                    Value::F(p.start_time_seconds),
                ),
                ("process_open_fds", "Open file descriptors of the daemon", MetricType::Gauge, Value::U(p.open_fds)),
                (
                    "process_max_fds",
                    "Soft limit of the daemon's open file descriptors",
                    MetricType::Gauge,
                    Value::U(p.max_fds),
                ),
                ("process_threads", "Threads of the daemon", MetricType::Gauge, Value::U(p.threads)),
            ];
            for (name, help, ty, v) in series {
                family(&mut enc, name, help, ty, std::iter::once((Vec::new(), v)))?;
            }
        }
        Ok(())
    }
}

fn service_labels(b: &BackendSample) -> Vec<(&'static str, &str)> {
    vec![
        ("service", b.service.as_str()),
        ("kind", b.kind.as_str()),
        ("frontend", b.frontend.as_str()),
        ("backend", b.backend.as_str()),
        ("task", b.task.as_str()),
        ("node", b.node.as_str()),
    ]
}

fn published_labels(b: &BackendSample) -> Vec<(&'static str, &str)> {
    vec![("container", b.service.as_str()), ("frontend", b.frontend.as_str()), ("backend", b.backend.as_str())]
}

#[derive(Clone, Copy, Debug)]
enum Value {
    U(u64),
    F(f64),
}

/// One metric family: a descriptor, then a sample per label set. Written even when empty (a
/// family with no series yet still tells the scraper that it exists).
fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let mut s = m.encode_family(&labels)?;
        match (ty, v) {
            (MetricType::Counter, Value::U(v)) => s.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            (MetricType::Counter, Value::F(v)) => s.encode_counter::<NoLabelSet, _, f64>(&v, None)?,
            (_, Value::U(v)) => s.encode_gauge(&v)?,
            (_, Value::F(v)) => s.encode_gauge(&v)?,
        }
    }
    Ok(())
}

fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, ty: MetricType, v: u64) -> Result<(), std::fmt::Error> {
    family(enc, name, help, ty, std::iter::once((Vec::new(), Value::U(v))))
}

/// The text a scrape answers: the snapshot and the control plane's histograms and counters.
pub fn render(s: Snapshot) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    control_plane().register(&mut r);
    r.register_collector(Box::new(s));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
