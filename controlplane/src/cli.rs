//! The docker-style command line. Every command but `daemon`, `shim`, `exec-in` (the daemon's
//! helpers) and `whoami` is a client of the daemon's API; `exec` joins the container's namespaces
//! itself, with `runtime::exec::exec_in` as the daemon's exec instances do (the caller's stdio,
//! no relay through the daemon: benchmarks run their load generators so).
use std::{os::unix::fs::OpenOptionsExt as _, path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::{
    api::{
        self, Client, ConntrackAgeResponse, ConntrackGcResponse, ContainerCreateRequest, ContainerCreateResponse,
        ContainerInspectResponse, ContainerLogsResponse, ContainerSummary, ContainerWaitResponse, DatapathStats,
        Network, NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse, NetworkDisconnectRequest, Node,
        NodeUpdateRequest, Replicas, Service, ServiceCreateRequest, ServiceCreateResponse, ServiceSummary,
        ServiceUpdateRequest, ServiceUpdateResponse, Swarm, SwarmInitRequest, SwarmJoinRequest, SystemInfo,
        SystemVersion, Task,
    },
    api::{
        ImageDeleteResponseItem, ImageIdResponse, ImageImportRequest, ImageInspect, ImageLoadRequest,
        ImageLoadResponse, ImagePruneResponse, ImageSaveRequest, ImageSummary,
    },
    daemon::{self, DaemonConfig, MeshRouting},
    humanize,
    runtime::process::merge_env,
    service_progress as progress,
};

mod stack;
use stack::StackCmd;

#[derive(Parser)]
#[command(name = "netbee", version, about = "eBPF container networking: daemon and docker-style CLI")]
struct Cli {
    /// Daemon socket to connect to (unix:///path); also NETBEE_HOST.
    #[arg(short = 'H', long = "host", global = true)]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (as root).
    Daemon(DaemonArgs),
    /// Show the client and daemon versions.
    Version,
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Create and start a container.
    Run(RunArgs),
    /// Create a container without starting it.
    Create(RunArgs),
    /// Start stopped containers.
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before killing the container.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to running containers.
    Kill {
        /// Signal to send to the container.
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Force the removal of a running container (uses SIGKILL).
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show all containers (default shows just running).
        #[arg(short = 'a', long = "all")]
        all: bool,
        /// Only display IDs.
        #[arg(short = 'q', long = "quiet")]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long = "format")]
        format: Option<String>,
    },
    /// Show a container's output.
    Logs {
        /// Follow the log output.
        #[arg(short = 'f', long = "follow")]
        follow: bool,
        container: String,
    },
    /// Block until containers stop, then print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command inside a running container.
    Exec {
        /// Set an environment variable (KEY=VALUE), over the container's.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory inside the container (default: the container's).
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// Run as name|uid[:group|gid] (default: the container's user).
        #[arg(short = 'u', long)]
        user: Option<String>,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show low-level information on containers (JSON).
    Inspect {
        /// Output format: json.
        #[arg(long = "format")]
        format: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List a container's port mappings.
    Port { container: String },
    /// Manage replicated services.
    #[command(subcommand)]
    Service(Box<ServiceCmd>),
    /// Manage stacks: services and networks deployed together from compose files.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Manage the swarm (cluster).
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage the swarm's nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Inspect the eBPF datapath.
    #[command(subcommand)]
    Datapath(DatapathCmd),
    /// Stream the datapath's drops, load-balancing decisions and traced packets as they happen.
    Monitor {
        /// Only this kind of event: drop, lb or trace (default: drop and lb).
        #[arg(short = 't', long = "type")]
        kind: Option<String>,
        /// Only events of this container (name or ID): its packets, or its being a backend.
        #[arg(long)]
        container: Option<String>,
        /// Only events of this service: its frontends, or its tasks' packets.
        #[arg(long)]
        service: Option<String>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stream the daemon's events (containers, networks, services, nodes).
    Events {
        /// Show the events kept since this time too (Unix seconds, RFC 3339, or a duration
        /// such as 10m).
        #[arg(long)]
        since: Option<String>,
        /// Filter output (type=, event=, container=, network=, service=, node=); repeatable.
        #[arg(short = 'f', long = "filter")]
        filter: Vec<String>,
        /// Output format: json for one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// List images.
    Images(ImagesArgs),
    /// Remove images (untag; delete when no tag is left).
    Rmi {
        /// Remove even while a container uses the image (it is then only untagged).
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Create an image from a root-filesystem tarball (FILE or - for stdin).
    Import {
        file: String,
        /// REPO[:TAG] to give the image.
        reference: Option<String>,
    },
    /// Load images from a docker save archive or an OCI layout (tar or directory).
    Load {
        /// Archive to read.
        #[arg(short = 'i', long = "input", required = true)]
        input: PathBuf,
        /// Print only the image names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Save images to an archive that is both a docker save archive and an OCI layout.
    Save {
        /// File to write.
        #[arg(short = 'o', long = "output", required = true)]
        output: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Download an image from a registry.
    Pull { reference: String },
    /// Upload an image to a registry.
    Push { reference: String },
    /// Serve hostname, addresses and the client address over HTTP and UDP (for tests and demos).
    Whoami {
        /// Port to listen on (TCP and UDP).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    #[command(hide = true)]
    Shim { spec: PathBuf },
    /// The daemon's helper for an exec instance: runs SPEC (JSON) in a container. SPEC comes in
    /// the environment, not on the command line other users can read (it has the variables).
    #[command(hide = true, name = "exec-in")]
    ExecIn {
        #[arg(env = "NETBEE_EXEC_SPEC", hide_env_values = true)]
        spec: String,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// State directory (store, container files, namespaces).
    #[arg(long)]
    root: Option<PathBuf>,
    /// API socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// bpffs directory for pinned maps and links (mounted if needed).
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// One directory for everything: DIR/state, DIR/netbee.sock, DIR/bpffs (lets several daemons
    /// run side by side).
    #[arg(long)]
    node_dir: Option<PathBuf>,
    /// The node's uplink interface (default: the default route's).
    #[arg(long)]
    uplink: Option<String>,
    /// cgroup v2 directory whose processes get socket-level load balancing (default: the root
    /// of the cgroup v2 hierarchy).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Name of this node in the swarm (default: the system hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Shared cluster state: etcd://ADDR:2379[,ADDR:2379...]. Without it the node runs alone.
    #[arg(long = "cluster-store")]
    cluster_store: Option<String>,
    /// Entries of the connection-tracking table, up to 128 bytes each, two per flow (default: 0.25% of the node's memory).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1024..))]
    conntrack_size: Option<u32>,
    /// How the routing mesh reaches tasks on other nodes: `tunnel` (VXLAN, works on any underlay)
    /// or `native` (plain frames to nodes on the same L2 segment, VXLAN to the others; only
    /// between nodes that all run `native`, and only where the network delivers frames whose
    /// destination is a container address, unlike cloud VPCs with source/destination checks).
    #[arg(long, value_enum, default_value_t = MeshRouting::Tunnel)]
    mesh_routing: MeshRouting,
    /// Start even though the state database is empty or missing while the node still has
    /// containers of an earlier one, removing their networking (recovery after a lost database).
    #[arg(long)]
    discard_state: bool,
    /// A registry (HOST:PORT) to speak plain HTTP to instead of HTTPS; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (off by default; metrics only, the
    /// control API stays on the unix socket).
    #[arg(long = "metrics-addr", value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the API on TCP at ADDR:PORT, only with --tlsverify (clients need a certificate).
    #[arg(long = "api-tcp", value_name = "ADDR:PORT")]
    api_tcp: Option<std::net::SocketAddr>,
    /// Require a client certificate signed by --tlscacert on --api-tcp (docker's model).
    #[arg(long)]
    tlsverify: bool,
    /// CA certificate (PEM) that signs the clients' certificates.
    #[arg(long, value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    /// The daemon's certificate (PEM) for --api-tcp.
    #[arg(long, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// The daemon's private key (PEM) for --api-tcp.
    #[arg(long, value_name = "FILE")]
    tlskey: Option<PathBuf>,
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network.
    Create {
        /// Driver that manages the network: bridge or overlay.
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR notation, e.g. 172.30.0.0/16.
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address of the subnet.
        #[arg(long)]
        gateway: Option<String>,
        /// Give containers addresses from this sub-range only.
        #[arg(long = "ip-range")]
        ip_range: Option<String>,
        /// Restrict external access to the network.
        #[arg(long)]
        internal: bool,
        /// Set metadata (key=value).
        #[arg(long = "label")]
        labels: Vec<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks (JSON).
    Inspect {
        /// Output format: json.
        #[arg(long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Connect a container to a network.
    Connect {
        /// IPv4 address of the container on the network.
        #[arg(long)]
        ip: Option<String>,
        /// Further name of the container on the network.
        #[arg(long = "alias")]
        aliases: Vec<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
}

#[derive(Args)]
struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Output format: table or json.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// List images.
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Show images' details (JSON).
    Inspect {
        /// Output format: json.
        #[arg(long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images.
    #[command(alias = "remove")]
    Rm {
        /// Remove even while a container uses the image.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove dangling images (no tag, no container).
    Prune {
        /// Do not ask for confirmation (there is no prompt; accepted as docker's).
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create a service.
    Create {
        /// Service name.
        #[arg(long)]
        name: String,
        /// Number of tasks (default 1).
        #[arg(long, allow_hyphen_values = true)]
        replicas: Option<String>,
        /// PUBLISHED:TARGET[/udp], served on every node (routing mesh).
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        /// Attach the tasks to a network (the first carries the routing mesh).
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Place tasks only on matching nodes (node.role==manager, node.labels.K==V, ...).
        #[arg(long = "constraint")]
        constraints: Vec<String>,
        /// Set an environment variable (KEY=VALUE) in every task.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Set a service label (KEY=VALUE).
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        /// Set a label (KEY=VALUE) on every task's container.
        #[arg(long = "container-label")]
        container_label: Vec<String>,
        #[command(flatten)]
        update: UpdateFlags,
        #[command(flatten)]
        rollback: RollbackFlags,
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// The tasks' image (`host`: a host binary); a node that lacks it pulls it.
        image: String,
        /// Command and arguments, replacing the image's command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// List a service's tasks.
    Ps {
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
        service: String,
    },
    /// Show services (JSON).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set replica counts: SERVICE=N ...
    Scale {
        /// Exit immediately instead of waiting for the services to converge.
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change a service; tasks whose spec changes are replaced by a rolling update.
    Update {
        /// Number of tasks.
        #[arg(long, allow_hyphen_values = true)]
        replicas: Option<String>,
        /// Service image tag.
        #[arg(long)]
        image: Option<String>,
        /// Service command args (split as a shell would).
        #[arg(long)]
        args: Option<String>,
        /// Add or update a published port (PUBLISHED:TARGET[/udp]).
        #[arg(long = "publish-add")]
        publish_add: Vec<String>,
        /// Remove a published port by its published port (PUBLISHED[/udp]).
        #[arg(long = "publish-rm")]
        publish_rm: Vec<String>,
        /// Add or update an environment variable (KEY=VALUE).
        #[arg(long = "env-add")]
        env_add: Vec<String>,
        /// Remove an environment variable (KEY).
        #[arg(long = "env-rm")]
        env_rm: Vec<String>,
        /// Add a network.
        #[arg(long = "network-add")]
        network_add: Vec<String>,
        /// Remove a network.
        #[arg(long = "network-rm")]
        network_rm: Vec<String>,
        /// Add or update a placement constraint.
        #[arg(long = "constraint-add")]
        constraint_add: Vec<String>,
        /// Remove a constraint.
        #[arg(long = "constraint-rm")]
        constraint_rm: Vec<String>,
        /// Force update even if no changes require it.
        #[arg(long)]
        force: bool,
        /// Rollback to previous specification.
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        update: UpdateFlags,
        #[command(flatten)]
        rollback_flags: RollbackFlags,
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short = 'q', long)]
        quiet: bool,
        service: String,
    },
    /// Fetch the logs of a service's tasks (those on this node).
    Logs {
        /// Do not prefix lines with the task name.
        #[arg(long = "no-task-ids")]
        no_task_ids: bool,
        service: String,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `--update-*`: how a rolling update replaces tasks.
#[derive(Args, Default)]
struct UpdateFlags {
    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1).
    #[arg(long = "update-parallelism", allow_hyphen_values = true)]
    update_parallelism: Option<String>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s).
    #[arg(long = "update-delay", allow_hyphen_values = true)]
    update_delay: Option<String>,
    /// Update order ("start-first"|"stop-first") (default "stop-first").
    #[arg(long = "update-order")]
    update_order: Option<String>,
    /// Action on update failure ("pause"|"continue"|"rollback") (default "pause").
    #[arg(long = "update-failure-action")]
    update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h) (default 5s).
    #[arg(long = "update-monitor", allow_hyphen_values = true)]
    update_monitor: Option<String>,
    /// Failure rate to tolerate during an update (default 0).
    #[arg(long = "update-max-failure-ratio", allow_hyphen_values = true)]
    update_max_failure_ratio: Option<String>,
}

impl UpdateFlags {
    fn request(self) -> api::UpdateConfigFlags {
        api::UpdateConfigFlags {
            parallelism: self.update_parallelism,
            delay: self.update_delay,
            order: self.update_order,
            failure_action: self.update_failure_action,
            monitor: self.update_monitor,
            max_failure_ratio: self.update_max_failure_ratio,
        }
    }
}

/// `--rollback-*`: how a rollback replaces tasks.
#[derive(Args, Default)]
struct RollbackFlags {
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) (default 1).
    #[arg(long = "rollback-parallelism", allow_hyphen_values = true)]
    rollback_parallelism: Option<String>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s).
    #[arg(long = "rollback-delay", allow_hyphen_values = true)]
    rollback_delay: Option<String>,
    /// Rollback order ("start-first"|"stop-first") (default "stop-first").
    #[arg(long = "rollback-order")]
    rollback_order: Option<String>,
    /// Action on rollback failure ("pause"|"continue") (default "pause").
    #[arg(long = "rollback-failure-action")]
    rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h) (default 5s).
    #[arg(long = "rollback-monitor", allow_hyphen_values = true)]
    rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback (default 0).
    #[arg(long = "rollback-max-failure-ratio", allow_hyphen_values = true)]
    rollback_max_failure_ratio: Option<String>,
}

impl RollbackFlags {
    fn request(self) -> api::UpdateConfigFlags {
        api::UpdateConfigFlags {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay,
            order: self.rollback_order,
            failure_action: self.rollback_failure_action,
            monitor: self.rollback_monitor,
            max_failure_ratio: self.rollback_max_failure_ratio,
        }
    }
}

#[derive(Subcommand)]
enum SwarmCmd {
    /// Create a swarm with this node as its first manager.
    Init {
        /// Address other nodes reach this node at.
        #[arg(long = "advertise-addr")]
        advertise_addr: Option<String>,
    },
    /// Join a swarm through one of its managers.
    Join {
        /// Token for entry into the swarm.
        #[arg(long)]
        token: String,
        /// Address other nodes reach this node at.
        #[arg(long = "advertise-addr")]
        advertise_addr: Option<String>,
        /// Manager address, IP[:2377].
        remote: String,
    },
    /// Print the join command for a role.
    #[command(name = "join-token")]
    JoinToken {
        /// Only display the token.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Replace the role's token: nodes join only with the new one.
        #[arg(long)]
        rotate: bool,
        /// worker or manager.
        role: String,
    },
    /// Leave the swarm.
    Leave {
        /// Leave the swarm even if this is the last manager or containers run on overlays.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show nodes (JSON).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        /// Availability of the node: active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or update a node label (key=value).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a node label if it exists.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Make nodes managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make nodes workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Remove the node even if it is not down.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DatapathCmd {
    /// Per-program counters, drop reasons and conntrack occupancy.
    Stats {
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// Run the conntrack garbage collector now.
    Gc,
    /// The load balancers: every frontend (routing-mesh port, VIP, published port) with its
    /// backends and their new-connection counts.
    #[command(subcommand)]
    Lb(LsCmd),
    /// The conntrack table's flows.
    #[command(subcommand)]
    Ct(CtCmd),
    /// The container interfaces the datapath knows, on this node and others.
    #[command(subcommand)]
    Endpoints(LsCmd),
    /// (testing) Move every conntrack entry's last-seen time SECONDS into the past.
    #[command(name = "conntrack-age", hide = true)]
    ConntrackAge {
        #[arg(long)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum LsCmd {
    /// List them.
    #[command(alias = "list")]
    Ls {
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
}

#[derive(Subcommand)]
enum CtCmd {
    /// List the flows (one line per flow, its forward direction).
    #[command(alias = "list")]
    Ls {
        /// Only the flows of this service (or container, for a published port).
        #[arg(long)]
        service: Option<String>,
        /// At most this many flows.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Name the container.
    #[arg(long, allow_hyphen_values = true)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy this shell's), over the image's.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// The container's hostname (default: its short ID).
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Connect to a network (bridge by default; host or none).
    #[arg(long = "network", alias = "net")]
    network: Option<String>,
    /// Another name for the container on its network.
    #[arg(long = "network-alias")]
    network_aliases: Vec<String>,
    /// The container's IPv4 address on a user-defined network.
    #[arg(long)]
    ip: Option<String>,
    /// Publish a port: [IP:]HOST[-HI]:CONTAINER[/udp], or CONTAINER for a free host port.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish the image's exposed ports and --expose ones to free host ports.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Expose a port or range (PORT[-HI][/udp]) without publishing it.
    #[arg(long)]
    expose: Vec<String>,
    /// Working directory inside the container, over the image's (created if missing).
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Set a label (key=value), over the image's.
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    /// Replace the image's entrypoint ("" clears it); the image's command is then dropped.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Run as name|uid[:group|gid], looked up in the container's /etc/passwd and /etc/group.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The image to run; `host` runs a host binary on the node's own root.
    image: String,
    /// Command and arguments, replacing the image's command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

pub fn main() -> i32 {
    // `-h` is docker's --hostname for run/create; help stays on --help
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 125 } else { 0 };
        }
    };
    let host = cli.host.clone();
    let result = match cli.cmd {
        Cmd::Shim { spec } => crate::runtime::shim::main(&spec),
        Cmd::ExecIn { spec } => Ok(crate::runtime::exec::helper_main(&spec)),
        Cmd::Daemon(a) => run_daemon(a),
        Cmd::Whoami { port } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(crate::whoami::run(port)))
            .map(|_| 0),
        Cmd::Exec { env, workdir, user, container, cmd } => {
            exec(host.as_deref(), &container, &cmd, &env, workdir.as_deref(), user.as_deref())
        }
        other => {
            // a client writing into a closed pipe (`netbee ps | head -1`) ends quietly, as
            // command-line tools do, instead of panicking in println!
            // SAFETY: sets the disposition of one signal before any thread is started
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            client_command(host.as_deref(), other)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

fn run_daemon(a: DaemonArgs) -> Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let (root, socket, bpffs) = match &a.node_dir {
        Some(d) => (d.join("state"), d.join("netbee.sock"), d.join("bpffs")),
        None => (PathBuf::from("/var/lib/netbee"), PathBuf::from(api::DEFAULT_SOCKET), PathBuf::from("/sys/fs/bpf")),
    };
    let cfg = DaemonConfig {
        root: a.root.unwrap_or(root),
        socket: a.socket.unwrap_or(socket),
        bpffs: a.bpffs.unwrap_or(bpffs),
        uplink: a.uplink,
        cgroup: a.cgroup,
        // used when the pinned table is first created; an existing one keeps its size
        conntrack_size: match a.conntrack_size {
            Some(n) => n,
            None => crate::datapath::default_ct_size(crate::datapath::node_memory()?),
        },
        hostname: a.hostname,
        cluster_store: a
            .cluster_store
            .as_deref()
            .map(crate::cluster::parse_store)
            .transpose()
            .map_err(|e| anyhow!(e))?,
        mesh_routing: a.mesh_routing,
        discard_state: a.discard_state,
        insecure_registries: a.insecure_registries,
        metrics_addr: a.metrics_addr,
        api_tls: daemon::api_tls::from_flags(daemon::api_tls::TlsFlags {
            addr: a.api_tcp,
            verify: a.tlsverify,
            ca: a.tlscacert.as_deref(),
            cert: a.tlscert.as_deref(),
            key: a.tlskey.as_deref(),
        })?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(daemon::run(cfg));
    // background work still running (a scheduler pass, a shim being spawned) is not waited for:
    // whatever it completed is recorded, and start-up reconcile finishes the rest
    rt.shutdown_timeout(Duration::from_millis(500));
    r?;
    Ok(0)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn client(host: Option<&str>) -> Result<Client> {
    Ok(Client::new(api::socket_path(host)?))
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn json_only(format: &Option<String>) -> Result<bool> {
    match format.as_deref() {
        None | Some("table") => Ok(false),
        Some("json") | Some("{{json .}}") => Ok(true),
        Some(f) => bail!("unsupported --format {f:?}: use json or table"),
    }
}

fn labels(v: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    v.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("invalid label {l:?}: expected key=value"))
        })
        .collect()
}

fn exec(
    host: Option<&str>,
    container: &str,
    cmd: &[String],
    env: &[String],
    workdir: Option<&str>,
    user: Option<&str>,
) -> Result<i32> {
    let info: ContainerInspectResponse = {
        let rt = rt()?;
        rt.block_on(client(host)?.get(&format!("/containers/{}/json", enc(container))))?
    };
    if !info.state.running {
        bail!("Error response from daemon: container {container} is not running");
    }
    let pid = info.state.pid;
    // as the container's main process sees it: the default PATH unless the image has one, then
    // the container's variables, then -e
    let base = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("HOSTNAME={}", info.config.hostname),
    ];
    let full_env = merge_env(&merge_env(&base, &info.config.env), env);
    let workdir = workdir.or(Some(info.config.working_dir.as_str()).filter(|w| !w.is_empty()));
    let user = user.unwrap_or(&info.config.user);
    crate::runtime::exec::exec_in(pid, cmd, &full_env, workdir, user, false)
}

/// A docker progress answer (pull, push): each line's `status` printed as it comes, an `error`
/// line is the command's error.
async fn progress_lines(c: &Client, path: &str) -> Result<()> {
    c.stream_request("POST", path, |v: serde_json::Value| {
        if let Some(e) = v.get("error").and_then(serde_json::Value::as_str) {
            bail!("{e}");
        }
        if let Some(s) = v.get("status").and_then(serde_json::Value::as_str) {
            match v.get("id").and_then(serde_json::Value::as_str) {
                Some(id) => println!("{id}: {s}"),
                None => println!("{s}"),
            }
        }
        Ok(true)
    })
    .await
}

fn client_command(host: Option<&str>, cmd: Cmd) -> Result<i32> {
    let rt = rt()?;
    let c = client(host)?;
    rt.block_on(async move {
        match cmd {
            Cmd::Version => {
                println!("Client: netbee {}", env!("CARGO_PKG_VERSION"));
                let v: SystemVersion = c.get("/version").await?;
                println!("Server: netbee {}", v.version);
                Ok(0)
            }
            Cmd::Network(n) => network(&c, n).await,
            Cmd::Image(cmd) => image(&c, cmd).await,
            Cmd::Images(a) => images(&c, a).await,
            Cmd::Rmi { force, images } => rmi(&c, &images, force).await,
            Cmd::Tag { source, target } => {
                // docker's shape: the target split into repository and tag, as its CLI sends it
                let t = crate::images::ImageRef::parse(&target).map_err(|e| anyhow!(e))?;
                if t.digest.is_some() {
                    bail!("refusing to create a tag with a digest reference: {target}");
                }
                let path =
                    format!("/images/{}/tag?repo={}&tag={}", enc(&source), enc(&t.name()), enc(t.tag_or_latest()));
                c.call::<(), serde_json::Value>("POST", &path, None).await?;
                Ok(0)
            }
            Cmd::Import { file, reference } => import(&c, &file, reference).await,
            Cmd::Load { input, quiet } => {
                let path = std::path::absolute(&input)?;
                let r: ImageLoadResponse =
                    c.post("/images/load", &ImageLoadRequest { path: path.to_string_lossy().into_owned() }).await?;
                for l in r.stream {
                    if !quiet || !l.starts_with("Loaded image ID") {
                        println!("{}", if quiet { l.trim_start_matches("Loaded image: ").to_string() } else { l });
                    }
                }
                Ok(0)
            }
            Cmd::Save { output, images } => {
                let path = std::path::absolute(&output)?;
                c.post::<_, ()>(
                    "/images/save",
                    &ImageSaveRequest { path: path.to_string_lossy().into_owned(), names: images },
                )
                .await?;
                Ok(0)
            }
            Cmd::Pull { reference } => {
                progress_lines(&c, &format!("/images/create?fromImage={}", enc(&reference))).await?;
                Ok(0)
            }
            Cmd::Push { reference } => {
                let r = crate::images::ImageRef::parse(&reference).map_err(|e| anyhow!(e))?;
                let path = format!("/images/{}/push?tag={}", enc(&r.name()), enc(r.tag_or_latest()));
                progress_lines(&c, &path).await?;
                Ok(0)
            }
            Cmd::Run(a) => run(&c, a, true).await,
            Cmd::Create(a) => run(&c, a, false).await,
            Cmd::Start { containers } => {
                for_each(&containers, |id| {
                    let c = &c;
                    async move { c.post_empty(&format!("/containers/{}/start", enc(&id))).await }
                })
                .await
            }
            Cmd::Stop { time, containers } => {
                for_each(&containers, |id| {
                    let c = &c;
                    async move { c.post_empty(&format!("/containers/{}/stop?t={time}", enc(&id))).await }
                })
                .await
            }
            Cmd::Kill { signal, containers } => {
                for_each(&containers, |id| {
                    let (c, signal) = (&c, &signal);
                    async move { c.post_empty(&format!("/containers/{}/kill?signal={}", enc(&id), enc(signal))).await }
                })
                .await
            }
            Cmd::Rm { force, containers } => {
                for_each(&containers, |id| {
                    let c = &c;
                    async move { c.delete(&format!("/containers/{}?force={}", enc(&id), force as u8)).await }
                })
                .await
            }
            Cmd::Ps { all, quiet, format } => ps(&c, all, quiet, &format).await,
            Cmd::Logs { follow, container } => logs(&c, &container, follow).await.map(|_| 0),
            Cmd::Wait { containers } => {
                let mut last = 0;
                for id in containers {
                    let v: ContainerWaitResponse = c.post(&format!("/containers/{}/wait", enc(&id)), &()).await?;
                    last = v.status_code;
                    println!("{last}");
                }
                let _ = last;
                Ok(0)
            }
            Cmd::Inspect { format, containers } => {
                json_only(&format)?;
                let mut out: Vec<ContainerInspectResponse> = Vec::new();
                for id in containers {
                    out.push(c.get(&format!("/containers/{}/json", enc(&id))).await?);
                }
                println!("{}", pretty(&out)?);
                Ok(0)
            }
            Cmd::Port { container } => {
                let v: ContainerInspectResponse = c.get(&format!("/containers/{}/json", enc(&container))).await?;
                for (k, b) in &v.network_settings.ports {
                    for e in b.iter().flatten() {
                        println!("{k} -> {}:{}", e.host_ip, e.host_port);
                    }
                }
                Ok(0)
            }
            Cmd::Service(cmd) => service(&c, *cmd).await,
            Cmd::Stack(cmd) => stack::stack(&c, cmd).await,
            Cmd::Swarm(cmd) => swarm(&c, cmd).await,
            Cmd::Node(cmd) => node(&c, cmd).await,
            Cmd::Datapath(DatapathCmd::Gc) => {
                let v: ConntrackGcResponse = c.post("/datapath/conntrack/gc", &()).await?;
                println!("removed {} entries, {} live", v.removed, v.live);
                Ok(0)
            }
            Cmd::Datapath(DatapathCmd::ConntrackAge { seconds }) => {
                let v: ConntrackAgeResponse =
                    c.post(&format!("/datapath/conntrack/age?seconds={seconds}"), &()).await?;
                println!("aged {} entries by {seconds} s", v.aged);
                Ok(0)
            }
            Cmd::Datapath(DatapathCmd::Lb(LsCmd::Ls { format })) => {
                let v: Vec<api::LbFrontend> = c.get("/datapath/lb").await?;
                if json_only(&format)? {
                    println!("{}", pretty(&v)?);
                } else {
                    print!("{}", humanize::format_table(&LB_COLUMNS, &lb_rows(&v)));
                }
                Ok(0)
            }
            Cmd::Datapath(DatapathCmd::Ct(CtCmd::Ls { service, limit, format })) => {
                let mut q = Vec::new();
                if let Some(s) = &service {
                    q.push(format!("service={}", enc(s)));
                }
                if let Some(n) = limit {
                    q.push(format!("limit={n}"));
                }
                let v: Vec<api::CtFlow> = c.get(&format!("/datapath/ct?{}", q.join("&"))).await?;
                if json_only(&format)? {
                    println!("{}", pretty(&v)?);
                } else {
                    let rows: Vec<Vec<String>> = v
                        .iter()
                        .map(|f| {
                            vec![
                                f.proto.clone(),
                                f.source.clone(),
                                f.destination.clone(),
                                f.kind.clone(),
                                f.translated.clone(),
                                f.service.clone(),
                                f.state.clone(),
                                f.flags.join(","),
                                format!("{}s", f.idle_seconds),
                            ]
                        })
                        .collect();
                    let cols =
                        ["PROTO", "SOURCE", "DESTINATION", "KIND", "TRANSLATED", "SERVICE", "STATE", "FLAGS", "IDLE"];
                    print!("{}", humanize::format_table(&cols, &rows));
                }
                Ok(0)
            }
            Cmd::Datapath(DatapathCmd::Endpoints(LsCmd::Ls { format })) => {
                let v: Vec<api::EndpointEntry> = c.get("/datapath/endpoints").await?;
                if json_only(&format)? {
                    println!("{}", pretty(&v)?);
                } else {
                    let rows: Vec<Vec<String>> = v
                        .iter()
                        .map(|e| {
                            vec![
                                e.address.clone(),
                                e.scope.clone(),
                                e.network.clone(),
                                e.node.clone(),
                                e.interface.clone(),
                                e.container.clone(),
                                e.mac.clone(),
                            ]
                        })
                        .collect();
                    let cols = ["ADDRESS", "SCOPE", "NETWORK", "NODE", "INTERFACE", "CONTAINER", "MAC"];
                    print!("{}", humanize::format_table(&cols, &rows));
                }
                Ok(0)
            }
            Cmd::Datapath(DatapathCmd::Stats { format }) => {
                let v: DatapathStats = c.get("/datapath/stats").await?;
                if json_only(&format)? {
                    println!("{}", pretty(&v)?);
                } else {
                    let mut rows = Vec::new();
                    for (sec, map) in [("counter", &v.counters), ("drop", &v.drops)] {
                        for (k, n) in map {
                            rows.push(vec![sec.to_string(), k.clone(), n.to_string()]);
                        }
                    }
                    for (k, n) in v.conntrack.fields() {
                        rows.push(vec!["conntrack".into(), k.to_string(), n.to_string()]);
                    }
                    print!("{}", humanize::format_table(&["KIND", "NAME", "VALUE"], &rows));
                }
                Ok(0)
            }
            Cmd::Monitor { kind, container, service, json } => {
                crate::monitor::kinds_mask(kind.as_deref())?;
                let mut q = Vec::new();
                for (k, v) in [("type", &kind), ("container", &container), ("service", &service)] {
                    if let Some(v) = v {
                        q.push(format!("{k}={}", enc(v)));
                    }
                }
                c.stream(&format!("/datapath/monitor?{}", q.join("&")), |r: api::MonitorRecord| {
                    if json {
                        println!("{}", line(&r)?);
                    } else {
                        println!("{}", crate::monitor::text_line(&r));
                    }
                    Ok(true)
                })
                .await?;
                Ok(0)
            }
            Cmd::Events { since, filter, format } => {
                let as_json = json_only(&format)?;
                let f = crate::events::EventFilter::parse(&filter)?;
                let mut q = vec![format!("filters={}", enc(&f.to_json()))];
                if let Some(s) = &since {
                    crate::events::parse_time(s, chrono::Utc::now())?;
                    q.push(format!("since={}", enc(s)));
                }
                c.stream(&format!("/events?{}", q.join("&")), |e: api::EventMessage| {
                    if as_json {
                        println!("{}", line(&e)?);
                    } else {
                        println!("{}", crate::events::text_line(&e));
                    }
                    Ok(true)
                })
                .await?;
                Ok(0)
            }
            Cmd::Daemon(_) | Cmd::Whoami { .. } | Cmd::Shim { .. } | Cmd::ExecIn { .. } | Cmd::Exec { .. } => {
                unreachable!()
            }
        }
    })
}

const LB_COLUMNS: [&str; 9] =
    ["SERVICE", "KIND", "FRONTEND", "BACKEND", "TASK", "NODE", "STATE", "CONNECTIONS", "ESTABLISHED"];

/// One row per backend (a frontend with none: one row saying so), the frontend named on its
/// first row only.
fn lb_rows(v: &[api::LbFrontend]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for f in v {
        let head = |first: bool| {
            if first { vec![f.service.clone(), f.kind.clone(), f.frontend.clone()] } else { vec![String::new(); 3] }
        };
        if f.backends.is_empty() {
            let mut r = head(true);
            r.extend(["(none)".to_string(), String::new(), String::new(), String::new(), String::new(), String::new()]);
            rows.push(r);
        }
        for (i, b) in f.backends.iter().enumerate() {
            let mut r = head(i == 0);
            r.extend([
                b.address.clone(),
                b.task.clone(),
                b.node.clone(),
                b.state.clone(),
                b.connections.to_string(),
                b.established.to_string(),
            ]);
            rows.push(r);
        }
    }
    rows
}

/// Applies `f` to every name, printing each name that succeeded (docker's output) and failing
/// with the first error after trying them all.
async fn for_each<F, Fut>(ids: &[String], f: F) -> Result<i32>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut failed = false;
    for id in ids {
        match f(id.clone()).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

async fn network(c: &Client, cmd: NetworkCmd) -> Result<i32> {
    match cmd {
        NetworkCmd::Create { driver, subnet, gateway, ip_range, internal, labels: l, name } => {
            let req = NetworkCreateRequest {
                name,
                driver: Some(driver),
                subnet,
                gateway,
                ip_range,
                internal,
                labels: labels(&l)?,
                ..Default::default()
            };
            let v: NetworkCreateResponse = c.post("/networks/create", &req).await?;
            println!("{}", v.id);
            Ok(0)
        }
        NetworkCmd::Ls { quiet, format } => {
            let nets: Vec<Network> = c.get("/networks").await?;
            if json_only(&format)? {
                for n in &nets {
                    println!(
                        "{}",
                        serde_json::to_string(&json!({
                            "ID": short(&n.id), "Name": n.name, "Driver": n.driver, "Scope": n.scope,
                            "Internal": n.internal, "CreatedAt": n.created,
                        }))?
                    );
                }
            } else if quiet {
                for n in &nets {
                    println!("{}", short(&n.id));
                }
            } else {
                let mut rows: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| vec![short(&n.id), n.name.clone(), n.driver.clone(), n.scope.clone()])
                    .collect();
                rows.sort_by(|a, b| a[1].cmp(&b[1]));
                print!("{}", humanize::format_table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows));
            }
            Ok(0)
        }
        NetworkCmd::Inspect { format, networks } => {
            json_only(&format)?;
            let mut out: Vec<Network> = Vec::new();
            for n in networks {
                out.push(c.get(&format!("/networks/{}", enc(&n))).await?);
            }
            println!("{}", pretty(&out)?);
            Ok(0)
        }
        NetworkCmd::Rm { networks } => {
            for_each(&networks, |n| async move { c.delete(&format!("/networks/{}", enc(&n))).await }).await
        }
        NetworkCmd::Connect { ip, aliases, network, container } => {
            let req = NetworkConnectRequest { container, ip_address: ip, aliases, ..Default::default() };
            c.post::<_, ()>(&format!("/networks/{}/connect", enc(&network)), &req).await?;
            Ok(0)
        }
        NetworkCmd::Disconnect { network, container } => {
            let req = NetworkDisconnectRequest { container };
            c.post::<_, ()>(&format!("/networks/{}/disconnect", enc(&network)), &req).await?;
            Ok(0)
        }
    }
}

/// An id as the listings show it: its first 12 characters.
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// An answer as `inspect` and `--format json` print it: the JSON the daemon sent, keys sorted.
fn pretty<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::to_value(v)?)?)
}

/// One line of `--format json`: compact, keys sorted.
fn line<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(&serde_json::to_value(v)?)?)
}

async fn run(c: &Client, a: RunArgs, start: bool) -> Result<i32> {
    let req = ContainerCreateRequest {
        name: a.name,
        image: a.image,
        entrypoint: a.entrypoint.map(|e| if e.is_empty() { vec![] } else { vec![e] }),
        user: a.user,
        cmd: a.cmd,
        env: a
            .env
            .into_iter()
            .map(|e| if e.contains('=') { e } else { format!("{e}={}", std::env::var(&e).unwrap_or_default()) })
            .collect(),
        hostname: a.hostname,
        network: a.network,
        ip: a.ip,
        network_aliases: a.network_aliases,
        publish: a.publish,
        expose: a.expose,
        publish_all: a.publish_all,
        // attached: the CLI removes the container once it has read all output and the exit code
        auto_remove: a.rm && (a.detach || !start),
        workdir: a.workdir,
        labels: labels(&a.labels)?,
        ..Default::default()
    };
    let v: ContainerCreateResponse = c.post("/containers/create", &req).await?;
    let id = v.id;
    if !start {
        println!("{id}");
        return Ok(0);
    }
    if let Err(e) = c.post_empty(&format!("/containers/{id}/start")).await {
        // `run` that cannot start leaves nothing behind (docker would keep a Created container)
        let _ = c.delete(&format!("/containers/{id}?force=1")).await;
        return Err(e);
    }
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    logs(c, &id, true).await?;
    let v: ContainerWaitResponse = c.post(&format!("/containers/{id}/wait"), &()).await?;
    if a.rm {
        c.delete(&format!("/containers/{id}?force=1")).await?;
    }
    Ok(v.status_code as i32)
}

/// Prints the container's output; with `follow`, until it exits.
async fn logs(c: &Client, id: &str, follow: bool) -> Result<()> {
    use std::io::Write as _;
    let (mut so, mut se) = (0u64, 0u64);
    loop {
        let path = |so: u64, se: u64| format!("/containers/{}/logs?stdout_offset={so}&stderr_offset={se}", enc(id));
        let v: ContainerLogsResponse = match c.get(&path(so, se)).await {
            Ok(v) => v,
            // an auto-removed container is gone once it has exited
            Err(_) if so + se > 0 || follow => return Ok(()),
            Err(e) => return Err(e),
        };
        print!("{}", v.stdout);
        eprint!("{}", v.stderr);
        let _ = std::io::stdout().flush();
        (so, se) = (v.stdout_offset, v.stderr_offset);
        if !follow {
            return Ok(());
        }
        if !v.running {
            // one more read: output written just before the exit
            if let Ok(v) = c.get::<ContainerLogsResponse>(&path(so, se)).await {
                print!("{}", v.stdout);
                eprint!("{}", v.stderr);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ps(c: &Client, all: bool, quiet: bool, format: &Option<String>) -> Result<i32> {
    let list: Vec<ContainerSummary> = c.get(&format!("/containers/json?all={}", all as u8)).await?;
    let name =
        |x: &ContainerSummary| x.names.first().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
    if json_only(format)? {
        for x in &list {
            println!(
                "{}",
                serde_json::to_string(&json!({
                    "ID": short(&x.id), "Image": x.image, "Command": x.command, "Status": x.status,
                    "State": x.state, "Ports": api::ports_text(&x.ports), "Names": name(x), "Networks": x.networks,
                }))?
            );
        }
        return Ok(0);
    }
    if quiet {
        for x in &list {
            println!("{}", short(&x.id));
        }
        return Ok(0);
    }
    let now = chrono::Utc::now().timestamp();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|x| {
            let mut cmd = format!("\"{}\"", x.command);
            if cmd.chars().count() > 22 {
                cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
            }
            let age = Duration::from_secs((now - x.created).max(0) as u64);
            vec![
                short(&x.id),
                x.image.clone(),
                cmd,
                format!("{} ago", humanize::human_duration(age)),
                x.status.clone(),
                api::ports_text(&x.ports),
                name(x),
            ]
        })
        .collect();
    print!(
        "{}",
        humanize::format_table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], &rows)
    );
    Ok(0)
}

/// The command that joins this swarm with `token`: docker's, with the manager's address as its
/// node shows it.
async fn join_command(c: &Client, node_id: &str, token: &str) -> Result<String> {
    let me: Node = c.get(&format!("/nodes/{}", enc(node_id))).await?;
    let addr = me.manager_status.map(|m| m.addr).unwrap_or_default();
    Ok(format!("netbee swarm join --token {token} {addr}"))
}

async fn swarm(c: &Client, cmd: SwarmCmd) -> Result<i32> {
    match cmd {
        SwarmCmd::Init { advertise_addr } => {
            let node_id: String = c.post("/swarm/init", &SwarmInitRequest { advertise_addr }).await?;
            let swarm: Swarm = c.get("/swarm").await?;
            println!("Swarm initialized: current node ({node_id}) is now a manager.\n");
            println!(
                "To add a worker to this swarm, run the following command:\n\n    {}\n",
                join_command(c, &node_id, &swarm.join_tokens.worker).await?
            );
            println!(
                "To add a manager to this swarm, run 'netbee swarm join-token manager' and follow the instructions."
            );
            Ok(0)
        }
        SwarmCmd::Join { token, advertise_addr, remote } => {
            let req = SwarmJoinRequest { join_token: token, remote_addrs: vec![remote], advertise_addr };
            c.post::<_, ()>("/swarm/join", &req).await?;
            let info: SystemInfo = c.get("/info").await?;
            let role = if info.swarm.control_available { "manager" } else { "worker" };
            println!("This node joined a swarm as a {role}.");
            Ok(0)
        }
        SwarmCmd::JoinToken { quiet, rotate, role } => {
            let mut swarm: Swarm = c.get("/swarm").await?;
            if !matches!(role.as_str(), "worker" | "manager") {
                bail!("unknown role {role}");
            }
            if rotate {
                let flag = if role == "worker" { "rotateWorkerToken" } else { "rotateManagerToken" };
                let path = format!("/swarm/update?version={}&{flag}=true", swarm.version.index);
                c.post::<_, ()>(&path, &swarm.spec).await?;
                if !quiet {
                    println!("Successfully rotated {role} join token.\n");
                }
                swarm = c.get("/swarm").await?;
            }
            let token = match role.as_str() {
                "worker" => swarm.join_tokens.worker,
                "manager" => swarm.join_tokens.manager,
                r => bail!("unknown role {r}"),
            };
            if quiet {
                println!("{token}");
            } else {
                let info: SystemInfo = c.get("/info").await?;
                println!(
                    "To add a {role} to this swarm, run the following command:\n\n    {}\n",
                    join_command(c, &info.swarm.node_id, &token).await?
                );
            }
            Ok(0)
        }
        SwarmCmd::Leave { force } => {
            c.post_empty(&format!("/swarm/leave?force={}", force as u8)).await?;
            println!("Node left the swarm.");
            Ok(0)
        }
    }
}

/// Reads a node's spec, lets `change` edit it, and sends it back with the version it was read
/// at (docker's `node update`).
async fn update_node(c: &Client, node: &str, change: impl FnOnce(&mut NodeUpdateRequest) -> Result<()>) -> Result<()> {
    let n: Node = c.get(&format!("/nodes/{}", enc(node))).await?;
    let mut spec = NodeUpdateRequest {
        labels: Some(n.spec.labels.clone()),
        role: Some(serde_json::to_value(n.spec.role)?.as_str().unwrap_or_default().to_string()),
        availability: Some(serde_json::to_value(n.spec.availability)?.as_str().unwrap_or_default().to_string()),
    };
    change(&mut spec)?;
    c.post::<_, ()>(&format!("/nodes/{}/update?version={}", enc(&n.id), n.version.index), &spec).await
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

async fn node(c: &Client, cmd: NodeCmd) -> Result<i32> {
    match cmd {
        NodeCmd::Ls { quiet, format } => {
            let nodes: Vec<Node> = c.get("/nodes").await?;
            if json_only(&format)? {
                for n in &nodes {
                    println!(
                        "{}",
                        serde_json::to_string(&json!({
                            "ID": n.id, "Hostname": n.description.hostname, "Status": title(&n.status.state),
                            "Availability": n.spec.availability.title(), "ManagerStatus": n.manager_status_text(),
                            "Self": n.is_self, "Addr": n.status.addr, "Role": n.spec.role,
                        }))?
                    );
                }
            } else if quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            format!("{}{}", n.id, if n.is_self { " *" } else { "" }),
                            n.description.hostname.clone(),
                            title(&n.status.state),
                            n.spec.availability.title().to_string(),
                            n.manager_status_text().to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    humanize::format_table(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"], &rows)
                );
            }
            Ok(0)
        }
        NodeCmd::Inspect { nodes } => {
            let mut out: Vec<Node> = Vec::new();
            for n in nodes {
                out.push(c.get(&format!("/nodes/{}", enc(&n))).await?);
            }
            println!("{}", pretty(&out)?);
            Ok(0)
        }
        NodeCmd::Update { availability, label_add, label_rm, node } => {
            update_node(c, &node, |spec| {
                if availability.is_some() {
                    spec.availability = availability;
                }
                let labels = spec.labels.get_or_insert_with(Default::default);
                for l in &label_add {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    if k.is_empty() {
                        bail!("invalid label {l:?}: the key is empty");
                    }
                    labels.insert(k.to_string(), v.to_string());
                }
                for k in &label_rm {
                    labels.remove(k);
                }
                Ok(())
            })
            .await?;
            println!("{node}");
            Ok(0)
        }
        NodeCmd::Promote { nodes } => {
            for_each(&nodes, |n| async move {
                update_node(c, &n, |spec| {
                    spec.role = Some("manager".into());
                    Ok(())
                })
                .await
            })
            .await
        }
        NodeCmd::Demote { nodes } => {
            for_each(&nodes, |n| async move {
                update_node(c, &n, |spec| {
                    spec.role = Some("worker".into());
                    Ok(())
                })
                .await
            })
            .await
        }
        NodeCmd::Rm { force, nodes } => {
            for_each(&nodes, |n| async move { c.delete(&format!("/nodes/{}?force={}", enc(&n), force as u8)).await })
                .await
        }
    }
}

async fn service(c: &Client, cmd: ServiceCmd) -> Result<i32> {
    match cmd {
        ServiceCmd::Create {
            name,
            replicas,
            publish,
            networks,
            constraints,
            env,
            update,
            rollback,
            detach,
            quiet,
            label,
            container_label,
            image,
            cmd,
        } => {
            let replicas = replicas.map(Replicas::String);
            let req = ServiceCreateRequest {
                name,
                image,
                replicas,
                publish,
                networks,
                constraints,
                env,
                cmd,
                update_config: update.request(),
                rollback_config: rollback.request(),
                labels: labels(&label)?,
                container_labels: labels(&container_label)?,
                ..Default::default()
            };
            let v: ServiceCreateResponse = c.post("/services/create", &req).await?;
            println!("{}", v.id);
            if detach {
                return Ok(0);
            }
            progress::wait(c, &v.id, progress::Mode::Create, quiet).await
        }
        ServiceCmd::Ls { quiet, format } => {
            let list: Vec<ServiceSummary> =
                c.get::<Vec<Service>>("/services?status=true").await?.iter().map(ServiceSummary::of).collect();
            if json_only(&format)? {
                for x in &list {
                    println!("{}", line(x)?);
                }
            } else if quiet {
                for x in &list {
                    println!("{}", x.id);
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|x| {
                        let (name, mode, replicas) = (x.name.clone(), x.mode.clone(), x.replicas.clone());
                        vec![short(&x.id), name, mode, replicas, x.command.clone(), x.ports.clone()]
                    })
                    .collect();
                print!("{}", humanize::format_table(&["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"], &rows));
            }
            Ok(0)
        }
        ServiceCmd::Ps { format, service } => {
            let list: Vec<Task> = c.get(&format!("/services/{}/tasks", enc(&service))).await?;
            if json_only(&format)? {
                for x in &list {
                    println!("{}", line(x)?);
                }
                return Ok(0);
            }
            let now = chrono::Utc::now();
            let mut rows = Vec::new();
            let mut last_slot = None;
            for x in &list {
                let name = if last_slot == Some(x.slot) { format!(" \\_ {}", x.name) } else { x.name.clone() };
                last_slot = Some(x.slot);
                let ago = (now - x.since).to_std().unwrap_or_default();
                rows.push(vec![
                    short(&x.id),
                    name,
                    x.image.clone(),
                    x.node.clone(),
                    x.desired_state.clone(),
                    format!("{} {} ago", x.current_state, humanize::human_duration(ago).to_lowercase()),
                    x.error.clone(),
                ]);
            }
            print!(
                "{}",
                humanize::format_table(
                    &["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"],
                    &rows
                )
            );
            Ok(0)
        }
        ServiceCmd::Inspect { services } => {
            let mut out: Vec<Service> = Vec::new();
            for x in services {
                out.push(c.get(&format!("/services/{}", enc(&x))).await?);
            }
            println!("{}", pretty(&out)?);
            Ok(0)
        }
        ServiceCmd::Scale { detach, pairs } => {
            let mut failed = false;
            let mut scaled = Vec::new();
            for p in pairs {
                let Some((name, n)) = p.split_once('=') else {
                    eprintln!("invalid scale specifier {p:?}: expected SERVICE=REPLICAS");
                    failed = true;
                    continue;
                };
                let req = ServiceUpdateRequest { replicas: Some(Replicas::String(n.into())), ..Default::default() };
                match c.post::<_, ServiceUpdateResponse>(&format!("/services/{}/update", enc(name)), &req).await {
                    Ok(_) => {
                        println!("{name} scaled to {n}");
                        scaled.push(name.to_string());
                    }
                    Err(e) => {
                        eprintln!("{e:#}");
                        failed = true;
                    }
                }
            }
            if !detach {
                for name in scaled {
                    if progress::wait(c, &name, progress::Mode::Create, false).await? != 0 {
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        ServiceCmd::Update {
            replicas,
            image,
            args,
            publish_add,
            publish_rm,
            env_add,
            env_rm,
            network_add,
            network_rm,
            constraint_add,
            constraint_rm,
            force,
            rollback,
            update,
            rollback_flags,
            detach,
            quiet,
            service,
        } => {
            let args = match args {
                Some(a) => Some(
                    shlex::split(&a)
                        .ok_or_else(|| anyhow!("invalid argument {a:?} for \"--args\" flag: unbalanced quotes"))?,
                ),
                None => None,
            };
            let req = ServiceUpdateRequest {
                replicas: replicas.map(Replicas::String),
                publish_add,
                publish_rm,
                env_add,
                env_rm,
                image,
                args,
                network_add,
                network_rm,
                constraint_add,
                constraint_rm,
                force,
                rollback,
                update_config: update.request(),
                rollback_config: rollback_flags.request(),
                spec: None,
            };
            c.post::<_, ServiceUpdateResponse>(&format!("/services/{}/update", enc(&service)), &req).await?;
            println!("{service}");
            if detach {
                return Ok(0);
            }
            let mode = if rollback { progress::Mode::Rollback } else { progress::Mode::Update };
            progress::wait(c, &service, mode, quiet).await
        }
        ServiceCmd::Logs { no_task_ids, service } => {
            let logs: Vec<api::ServiceLogLine> = c.get(&format!("/services/{}/logs", enc(&service))).await?;
            let width = logs.iter().map(|l| l.task.len()).max().unwrap_or(0);
            for l in logs {
                let line = if no_task_ids { l.line } else { format!("{:width$}    | {}", l.task, l.line) };
                if l.stderr {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
            Ok(0)
        }
        ServiceCmd::Rm { services } => {
            for_each(&services, |x| async move { c.delete(&format!("/services/{}", enc(&x))).await }).await
        }
    }
}

async fn image(c: &Client, cmd: ImageCmd) -> Result<i32> {
    match cmd {
        ImageCmd::Ls(a) => images(c, a).await,
        ImageCmd::Inspect { format, images } => {
            json_only(&format)?;
            let mut out: Vec<ImageInspect> = Vec::new();
            for i in images {
                out.push(c.get(&format!("/images/{}/json", enc(&i))).await?);
            }
            println!("{}", pretty(&out)?);
            Ok(0)
        }
        ImageCmd::Rm { force, images } => rmi(c, &images, force).await,
        ImageCmd::Prune { force: _ } => {
            let r: ImagePruneResponse = c.post("/images/prune", &()).await?;
            if !r.images_deleted.is_empty() {
                println!("Deleted Images:");
                print_deleted(&r.images_deleted);
                println!();
            }
            println!("Total reclaimed space: {}", human_size(r.space_reclaimed));
            Ok(0)
        }
    }
}

/// `images`: REPOSITORY TAG IMAGE ID CREATED SIZE, one row per tag (`<none>` for an untagged
/// image), newest first, as docker.
async fn images(c: &Client, a: ImagesArgs) -> Result<i32> {
    let list: Vec<ImageSummary> = c.get("/images/json").await?;
    let json = json_only(&a.format)?;
    let id = |i: &ImageSummary| short(i.id.trim_start_matches("sha256:"));
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for i in &list {
            if seen.insert(i.id.clone()) {
                println!("{}", id(i));
            }
        }
        return Ok(0);
    }
    let now = chrono::Utc::now().timestamp();
    let mut rows = Vec::new();
    for i in &list {
        let tags: Vec<(String, String)> = if i.repo_tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.repo_tags
                .iter()
                .map(|t| {
                    let at = t.rfind(':').unwrap_or(t.len());
                    (t[..at].to_string(), t.get(at + 1..).unwrap_or("").to_string())
                })
                .collect()
        };
        let age = Duration::from_secs(now.saturating_sub(i.created).max(0) as u64);
        for (repo, tag) in tags {
            if json {
                println!(
                    "{}",
                    line(&json!({
                        "Repository": repo, "Tag": tag, "ID": id(i),
                        "CreatedAt": i.created, "Size": human_size(i.size),
                    }))?
                );
            } else {
                rows.push(vec![repo, tag, id(i), format!("{} ago", humanize::human_duration(age)), human_size(i.size)]);
            }
        }
    }
    if !json {
        print!("{}", humanize::format_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows));
    }
    Ok(0)
}

/// Sizes as docker prints them: decimal units, three significant digits (`4.26MB`).
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 || u == 0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{}", units[u])
}

fn print_deleted(items: &[ImageDeleteResponseItem]) {
    for i in items {
        if let Some(t) = &i.untagged {
            println!("Untagged: {t}");
        }
        if let Some(d) = &i.deleted {
            println!("Deleted: {d}");
        }
    }
}

async fn rmi(c: &Client, images: &[String], force: bool) -> Result<i32> {
    let mut failed = false;
    for i in images {
        let r: Result<Vec<ImageDeleteResponseItem>> =
            c.call::<(), _>("DELETE", &format!("/images/{}?force={}", enc(i), force as u8), None).await;
        match r {
            Ok(items) => print_deleted(&items),
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `import FILE|- [REPO[:TAG]]`: the daemon reads the tarball from a path; stdin is first
/// copied to a private temporary file (the CLI and daemon share the machine).
async fn import(c: &Client, file: &str, reference: Option<String>) -> Result<i32> {
    let mut tmp = None;
    let path = if file == "-" {
        let p = std::env::temp_dir().join(format!("netbee-import-{}.tar", crate::names::new_id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| anyhow!("creating {}: {e}", p.display()))?;
        tmp = Some(p.clone());
        std::io::copy(&mut std::io::stdin().lock(), &mut f)?;
        p
    } else {
        std::path::absolute(file)?
    };
    let r: Result<ImageIdResponse> = c
        .post("/images/import", &ImageImportRequest { path: path.to_string_lossy().into_owned(), repo: reference })
        .await;
    if let Some(p) = tmp {
        let _ = std::fs::remove_file(p);
    }
    println!("{}", r?.id);
    Ok(0)
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory as _;

    /// Every command and flag says what it does in `--help` (one line each, as docker's).
    #[test]
    fn every_command_and_flag_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set() && !a.is_positional()) {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "netbee", &mut missing);
        assert!(missing.is_empty(), "{} without a help line:\n{}", missing.len(), missing.join("\n"));
    }
}
