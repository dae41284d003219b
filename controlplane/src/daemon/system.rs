//! `/_ping`, `/version` and `/info` as docker's daemon answers them: what the docker CLI reads to
//! negotiate a version, decide which commands to offer, and print `docker version|info`.
use std::{collections::BTreeMap, time::Duration};

use super::Daemon;
use crate::{
    api::{
        API_VERSION, ApiResult, ClusterInfo, ComponentVersion, MIN_API_VERSION, Platform, PluginsInfo, RemoteManager,
        SwarmInfo, SystemInfo, SystemVersion,
    },
    model::{Role, Status},
};

/// How long `/_ping` and `/info` wait for the cluster store: the CLI pings before every
/// command, and a store that does not answer must not hang them all.
const CLUSTER_WAIT: Duration = Duration::from_secs(2);

/// The kernel's release, as `uname -r` prints it.
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Go's name of the architecture (`GOARCH`), which `docker version` prints.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn mem_total() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Daemon {
    pub fn system_version(&self) -> SystemVersion {
        let version = env!("CARGO_PKG_VERSION").to_string();
        let engine = ComponentVersion {
            name: "Engine".into(),
            version: version.clone(),
            details: BTreeMap::from([
                ("ApiVersion".to_string(), API_VERSION.to_string()),
                ("MinAPIVersion".to_string(), MIN_API_VERSION.to_string()),
                ("Os".to_string(), "linux".to_string()),
                ("Arch".to_string(), go_arch().to_string()),
                ("KernelVersion".to_string(), kernel_version()),
            ]),
        };
        SystemVersion {
            platform: Platform { name: format!("netbee {version}") },
            components: vec![engine],
            version,
            api_version: API_VERSION.into(),
            min_api_version: MIN_API_VERSION.into(),
            os: "linux".into(),
            arch: go_arch().into(),
            kernel_version: kernel_version(),
            ..Default::default()
        }
    }

    /// The `Swarm` header of `/_ping`: `inactive`, `active/manager` or `active/worker`. None when
    /// the cluster store does not answer in time: without the header the CLI hides nothing.
    pub async fn swarm_ping_state(&self) -> Option<String> {
        let Some(c) = self.cluster.as_ref() else { return Some("inactive".into()) };
        if c.member().is_none() {
            return Some("inactive".into());
        }
        match tokio::time::timeout(CLUSTER_WAIT, self.require_manager()).await {
            Ok(Ok(_)) => Some("active/manager".into()),
            Ok(Err(_)) => Some("active/worker".into()),
            Err(_) => None,
        }
    }

    async fn swarm_info(&self) -> SwarmInfo {
        let mut info = SwarmInfo { local_node_state: "inactive".into(), ..Default::default() };
        let Some(c) = self.cluster.as_ref() else { return info };
        let Some(m) = c.member() else { return info };
        info.node_id = c.node_id.clone();
        info.node_addr = m.advertise.to_string();
        info.local_node_state = "active".into();
        let manager = matches!(tokio::time::timeout(CLUSTER_WAIT, self.require_manager()).await, Ok(Ok(_)));
        if !manager {
            return info;
        }
        info.control_available = true;
        match tokio::time::timeout(CLUSTER_WAIT, self.node_list()).await {
            Ok(Ok(nodes)) => {
                info.nodes = nodes.len() as i64;
                let managers: Vec<_> = nodes.iter().filter(|n| n.spec.role == Role::Manager).collect();
                info.managers = managers.len() as i64;
                info.remote_managers = managers
                    .iter()
                    .map(|n| RemoteManager { node_id: n.id.clone(), addr: format!("{}:2377", n.status.addr) })
                    .collect();
            }
            Ok(Err(e)) => info.error = e.message,
            Err(_) => info.error = "the cluster store did not answer in time".into(),
        }
        info.cluster =
            Some(ClusterInfo { id: m.cluster_id.clone(), subnet_size: 24, data_path_port: 4789, ..Default::default() });
        info
    }

    pub async fn system_info(&self) -> ApiResult<SystemInfo> {
        let containers = self.containers()?;
        let running = containers.iter().filter(|c| c.state.status == Status::Running).count() as u64;
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let kernel = kernel_version();
        Ok(SystemInfo {
            id: self.cluster.as_ref().map(|c| c.node_id.clone()).unwrap_or_default(),
            containers: containers.len() as u64,
            containers_running: running,
            containers_paused: 0,
            containers_stopped: containers.len() as u64 - running,
            images: self.image_list()?.len() as u64,
            // each container's root is an overlayfs over the image's layers
            driver: "overlayfs".into(),
            plugins: PluginsInfo {
                volume: vec![],
                network: vec!["bridge".into(), "host".into(), "none".into(), "overlay".into()],
                log: vec!["json-file".into()],
            },
            ipv4_forwarding: true,
            system_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            logging_driver: "json-file".into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_version: "2".into(),
            kernel_version: kernel,
            operating_system: "netbee".into(),
            os_type: "linux".into(),
            architecture: std::env::consts::ARCH.into(),
            ncpu: std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1),
            mem_total: mem_total(),
            docker_root_dir: self.cfg.root.to_string_lossy().into_owned(),
            name: self.cfg.hostname.clone().unwrap_or(hostname),
            server_version: env!("CARGO_PKG_VERSION").into(),
            swarm: self.swarm_info().await,
            ..Default::default()
        })
    }
}
