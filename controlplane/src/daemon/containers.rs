//! Container lifecycle: create, start, stop, kill, rm, and the exit monitor.
use std::{
    collections::BTreeMap,
    io::BufRead as _,
    os::fd::{FromRawFd as _, OwnedFd},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::Daemon;
use crate::{
    api::{
        self, ApiError, ApiResult, ContainerCreate, ContainerInspectResponse, ContainerLogsResponse, ContainerNode,
        ContainerSummary, EmptyObject, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkSettings, PortBinding,
    },
    humanize,
    images::{HOST_IMAGE, ImageConfig},
    model::{
        Attachment, ContainerConfig, ContainerRecord, ContainerState, NetworkMode, NetworkRecord, Status, StdioConfig,
        mac_string,
    },
    names, netns,
    portspec::{self, Proto},
    runtime::{self, ExitRecord, ShimSpec, attach, process, rootfs::RootfsSpec},
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// docker's answer to `--ip` on the default network, whose addresses are not kept across restarts.
pub(super) const USER_IP_ON_DEFAULT_BRIDGE: &str =
    "user specified IP address is supported on user defined networks only";

/// Every TCP and every UDP port once.
const MAX_PORTS_PER_CONTAINER: usize = 2 * 65535;

impl Daemon {
    pub async fn container_create(&self, req: ContainerCreate) -> ApiResult<ContainerRecord> {
        let _g = self.op.lock().await;
        if req.image.is_empty() {
            return Err(ApiError::bad_request("no image specified: give the image (or host) after the options"));
        }
        let (image_id, image) = if req.image == HOST_IMAGE {
            (String::new(), ImageConfig::default())
        } else {
            let rec = self.images.resolve(&req.image).map_err(image_error)?;
            (rec.id, rec.config)
        };
        // the table is shared only for the name check: held until the record is written, it
        // made that write copy all of the node's containers (issue 18)
        let name = {
            let all = self.containers_shared()?;
            match req.name.as_deref().filter(|n| !n.is_empty()) {
                Some(n) => {
                    let n = n.trim_start_matches('/');
                    names::validate_name(n).map_err(ApiError::bad_request)?;
                    if let Some(o) = all.values().find(|c| c.name == n) {
                        return Err(ApiError::conflict(format!(
                            "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                            o.id
                        )));
                    }
                    n.to_string()
                }
                None => names::generate_name(&|n| all.values().any(|c| c.name == n)),
            }
        };
        for e in &req.env {
            if e.is_empty() || e.starts_with('=') {
                return Err(ApiError::bad_request(format!("invalid environment variable {e:?}: expected KEY=VALUE")));
            }
        }
        // every range is expanded: a body of many "1-65535" must fail before it exhausts memory
        let too_many = || {
            ApiError::bad_request(format!(
                "too many ports: a container publishes or exposes at most {MAX_PORTS_PER_CONTAINER}"
            ))
        };
        let mut publish = Vec::new();
        for p in &req.publish {
            publish.extend(portspec::parse_publish(p).map_err(|e| ApiError::bad_request(e.to_string()))?);
            if publish.len() > MAX_PORTS_PER_CONTAINER {
                return Err(too_many());
            }
        }
        // what -P publishes: the image's ExposedPorts and --expose
        let mut expose: Vec<(u16, Proto)> = image.exposed_ports.clone();
        for e in &req.expose {
            expose.extend(portspec::parse_expose(e).map_err(|e| ApiError::bad_request(e.to_string()))?);
            if expose.len() > MAX_PORTS_PER_CONTAINER {
                return Err(too_many());
            }
        }
        let ip = req
            .ip
            .as_deref()
            .map(|s| s.parse().map_err(|_| ApiError::bad_request(format!("invalid IP address {s:?} for --ip"))))
            .transpose()?;
        let network = req.network.clone().unwrap_or_else(|| "bridge".into());
        let (mode, attachments) = match network.as_str() {
            "host" | "none" => {
                if ip.is_some() {
                    return Err(ApiError::bad_request(format!("--ip cannot be used with --network {network}")));
                }
                if !publish.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "published ports need a bridge network; --network {network} has none"
                    )));
                }
                (if network == "host" { NetworkMode::Host } else { NetworkMode::None }, vec![])
            }
            key => {
                let net = self.find_network_or_adopt(key).await?;
                if !net.carries_containers() {
                    return Err(ApiError::bad_request(format!("network {} cannot take containers", net.name)));
                }
                if let Some(ip) = ip {
                    if net.name == "bridge" {
                        return Err(ApiError::bad_request(USER_IP_ON_DEFAULT_BRIDGE));
                    }
                    let mut probe = net.ipam.clone().expect("bridge network has IPAM");
                    probe.reserve(ip).map_err(ApiError::from)?;
                    if let Some(o) =
                        self.containers_shared()?.values().find(|c| c.attachments.iter().any(|a| a.ip == Some(ip)))
                    {
                        return Err(ApiError::conflict(format!(
                            "address {ip} is already reserved by container {}",
                            o.name
                        )));
                    }
                }
                (NetworkMode::Bridge, vec![Attachment { network_id: net.id, ip, aliases: req.network_aliases.clone() }])
            }
        };
        expose.sort();
        expose.dedup();
        let process = process::compute(
            &image,
            &process::Overrides {
                entrypoint: req.entrypoint.clone(),
                cmd: req.cmd.clone(),
                env: req.env.clone(),
                workdir: req.workdir.clone(),
                user: req.user.clone(),
            },
        )
        .map_err(ApiError::bad_request)?;
        // the container's labels win over the image's
        let mut labels = image.labels.clone();
        labels.extend(req.labels);
        let id = names::new_id();
        let hostname = req.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| id[..12].to_string());
        let rec = ContainerRecord {
            id: id.clone(),
            name,
            created: chrono::Utc::now(),
            config: ContainerConfig {
                image: req.image,
                image_id,
                entrypoint: process.entrypoint,
                cmd: process.cmd,
                env: process.env,
                hostname,
                network_mode: mode,
                publish,
                expose,
                publish_all: req.publish_all,
                auto_remove: req.auto_remove,
                workdir: process.workdir,
                labels,
                user: process.user,
                stdio: StdioConfig {
                    tty: req.tty,
                    open_stdin: req.open_stdin,
                    stdin_once: req.stdin_once,
                    attach_stdin: req.attach_stdin,
                    attach_stdout: req.attach_stdout,
                    attach_stderr: req.attach_stderr,
                    console_size: req.console_size.map(|[rows, cols]| (rows, cols)),
                },
            },
            attachments,
            state: ContainerState {
                status: Status::Created,
                pid: 0,
                shim_pid: 0,
                shim_start: 0,
                started_at: None,
                finished_at: None,
                exit_code: 0,
                error: String::new(),
            },
            endpoints: vec![],
            ports: vec![],
        };
        // taken host ports are refused now, not at the first start
        self.compute_bindings(&rec, &self.services_for_ports().await)?;
        crate::paths::make_dir(&self.container_dir(&id))?;
        self.put_container(&rec)?;
        self.emit_container(&rec, "create", &[]);
        Ok(rec)
    }

    pub async fn container_start(self: &Arc<Self>, key: &str) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let mut c = self.find_container(key)?;
        if c.state.status == Status::Running {
            return Ok(());
        }
        for a in &c.attachments {
            self.find_network(&a.network_id).map_err(|_| {
                ApiError::not_found(format!("network {} attached to {} no longer exists", a.network_id, c.name))
            })?;
        }
        let bindings = self.claim_bindings(&c).await?;
        match self.start_inner(&mut c, &bindings).await {
            Ok(()) => {
                let d = self.clone();
                let (id, shim) = (c.id.clone(), c.state.shim_pid);
                tokio::spawn(async move { d.watch(id, shim).await });
                // its names resolve when `run` returns, not at the next pass of a loop
                self.refresh_names().await;
                self.emit_endpoints(&c, "connect");
                self.emit_container(&c, "start", &[]);
                Ok(())
            }
            Err(e) => {
                warn!(container = %c.name, "start failed: {e:#}");
                self.teardown(&mut c).await;
                c.state.error = format!("{e:#}");
                c.state.status = if c.state.started_at.is_some() { Status::Exited } else { Status::Created };
                c.state.exit_code = 128;
                self.put_container(&c)?;
                Err(ApiError::from(e.context(format!("starting container {}", c.name))))
            }
        }
    }

    async fn start_inner(&self, c: &mut ContainerRecord, bindings: &[portspec::PortBinding]) -> Result<()> {
        let dir = self.container_dir(&c.id);
        crate::paths::make_dir(&dir)?;
        let _ = std::fs::remove_file(dir.join("exit.json"));
        let ns = match c.config.network_mode {
            NetworkMode::Host => None,
            _ => {
                let p = self.netns_path(&c.id);
                netns::remove(&p)?;
                netns::create(&p)?;
                Some(p)
            }
        };
        if ns.is_some() && c.config.network_mode == NetworkMode::None {
            netns::run_in(self.netns_path(&c.id), || async {
                let nl = crate::netlink::Netlink::open()?;
                let lo = nl.require_link("lo").await?;
                nl.set_up(lo.index).await
            })?;
        }
        for (i, att) in c.attachments.clone().iter().enumerate() {
            let ep = self.attach_running(c, att, i).await.map_err(|e| anyhow!("{e}"))?;
            c.endpoints.push(ep);
            self.put_container(c)?;
        }
        // files the container sees as /etc/hosts, /etc/resolv.conf, /etc/hostname
        let hostname = &c.config.hostname;
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for ep in &c.endpoints {
            hosts.push_str(&format!("{}\t{}\t{}\n", ep.ip, hostname, c.name));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        // user networks get the embedded DNS on their gateway; the default bridge copies the
        // node's resolvers, as docker does
        let first_net = c.attachments.first().and_then(|a| self.find_network(&a.network_id).ok());
        let resolv = match first_net.filter(|n| n.name != "bridge").and_then(|n| n.ipam.map(|i| i.config().gateway)) {
            Some(gw) => format!("nameserver {gw}\noptions ndots:0\n"),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        // an image's PATH replaces the default one; -e values were merged over the image's at
        // create; docker's TERM for a terminal
        let mut base = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
        if c.config.stdio.tty {
            base.push("TERM=xterm".into());
        }
        let env = process::merge_env(&base, &c.config.env);
        let rootfs = self.prepare_rootfs(c)?;
        let spec = ShimSpec {
            cmd: c.config.argv(),
            env,
            hostname: hostname.clone(),
            netns: ns,
            hosts: dir.join("hosts"),
            resolv: dir.join("resolv.conf"),
            hostname_file: dir.join("hostname"),
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
            workdir: c.config.workdir.clone(),
            exit_file: dir.join("exit.json"),
            rootfs,
            user: c.config.user.clone(),
            tty: c.config.stdio.tty,
            open_stdin: c.config.stdio.open_stdin,
            console_size: c.config.stdio.console_size,
            attach_fd: Some(SHIM_ATTACH_FD),
        };
        let spec_path = dir.join("shim.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
        // the attach point, bound here and handed to the shim, so that clients attached before
        // the start are connected before the program runs
        let (_dirfd, sock) = attach::short_path(&dir, attach::SOCKET)?;
        let _ = std::fs::remove_file(dir.join(attach::SOCKET));
        let listener = std::os::unix::net::UnixListener::bind(&sock).context("binding the container's attach point")?;
        std::fs::set_permissions(dir.join(attach::SOCKET), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut waiting = self.attaches.lock().await;
        let handoff = super::attach::connect_pending(&sock, waiting.remove(&c.id).unwrap_or_default());
        let (shim_pid, init_pid) = tokio::task::spawn_blocking(move || spawn_shim(&spec_path, listener)).await??;
        c.state = ContainerState {
            status: Status::Running,
            pid: init_pid,
            shim_pid,
            shim_start: runtime::process_start_time(shim_pid).unwrap_or(0),
            started_at: Some(chrono::Utc::now()),
            finished_at: None,
            exit_code: 0,
            error: String::new(),
        };
        self.put_container(c)?;
        drop(waiting);
        for (to, s) in handoff {
            let _ = to.send(s);
        }
        self.publish(c, bindings)?;
        info!(container = %c.name, pid = init_pid, "started");
        Ok(())
    }

    /// The container's overlayfs root: the image's layers under its writable layer, which lives
    /// in the container's directory from its first start until `rm`. None for image `host`.
    fn prepare_rootfs(&self, c: &ContainerRecord) -> Result<Option<RootfsSpec>> {
        if c.config.image == HOST_IMAGE {
            return Ok(None);
        }
        // by ID: a tag moved since create does not change what the container runs
        let image = self.images.resolve(&c.config.image_id).with_context(|| format!("image {}", c.config.image))?;
        let dir = self.container_dir(&c.id);
        let mut lower = self.images.layer_dirs(&image)?;
        if lower.is_empty() {
            // overlayfs needs a lower layer; an image without layers (`import` of an empty
            // tarball) gets an empty one
            let empty = dir.join("rootfs").join("empty");
            std::fs::create_dir_all(&empty)?;
            lower.push(empty);
        }
        let r = RootfsSpec::in_container_dir(&dir, lower);
        for d in [&r.upper, &r.work, &r.merged] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Some(r))
    }

    /// Removes the container's kernel objects and address leases (best effort, idempotent).
    pub(super) async fn teardown(&self, c: &mut ContainerRecord) {
        let had_ports = !c.ports.is_empty();
        if let Err(e) = self.unpublish(c) {
            warn!(container = %c.name, "unpublishing: {e:#}");
        }
        if had_ports {
            self.write_host_ports(Some(c)).await;
        }
        for ep in std::mem::take(&mut c.endpoints) {
            if let Err(e) = self.release_endpoint(&ep).await {
                warn!(container = %c.name, "removing {}: {e:#}", ep.host_ifname());
            }
        }
        if let Err(e) = netns::remove(&self.netns_path(&c.id)) {
            warn!(container = %c.name, "removing netns: {e:#}");
        }
    }

    /// Waits for the container's shim to exit (pidfd), then records the exit.
    pub(super) async fn watch(self: Arc<Self>, id: String, shim_pid: i32) {
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, shim_pid, 0) };
        if fd >= 0 {
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: the AsyncFd owns the pidfd for as long as it is registered
            if let Ok(afd) =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            {
                let _ = afd.readable().await;
            }
        }
        if let Err(e) = self.on_exit(&id, shim_pid).await {
            warn!(container = %id, "recording exit: {e:#}");
        }
    }

    pub(super) async fn on_exit(self: &Arc<Self>, id: &str, shim_pid: i32) -> Result<()> {
        let _g = self.op.lock().await;
        let Some(mut c) = self.store.get::<ContainerRecord>(id)? else { return Ok(()) };
        if c.state.status != Status::Running || c.state.shim_pid != shim_pid {
            return Ok(());
        }
        self.record_exit(&mut c).await?;
        if c.config.auto_remove {
            let mut exits = self.removed_exits.lock().unwrap();
            if exits.len() > 1024 {
                exits.clear();
            }
            exits.insert(c.id.clone(), c.state.exit_code);
            drop(exits);
            self.execs.forget_container(&c.id);
            self.store.delete::<ContainerRecord>(&c.id)?;
            let _ = std::fs::remove_dir_all(self.container_dir(&c.id));
            self.emit_container(&c, "destroy", &[]);
        }
        self.refresh_names().await;
        Ok(())
    }

    /// Blocks until the container is not running and returns its exit code (also for a
    /// container removed by --rm meanwhile).
    pub async fn container_wait(&self, key: &str) -> ApiResult<i32> {
        let id = match self.find_container(key) {
            Ok(c) => c.id,
            Err(e) => {
                let exits = self.removed_exits.lock().unwrap();
                return exits.get(key).copied().ok_or(e);
            }
        };
        loop {
            match self.store.get::<ContainerRecord>(&id)? {
                Some(c) if c.state.status == Status::Running => {}
                Some(c) => return Ok(c.state.exit_code),
                None => {
                    if let Some(code) = self.removed_exits.lock().unwrap().get(&id) {
                        return Ok(*code);
                    }
                    return Err(ApiError::not_found(format!("No such container: {key}")));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks a container whose shim is gone as exited and removes its kernel objects.
    pub(super) async fn record_exit(&self, c: &mut ContainerRecord) -> Result<()> {
        let exit: Option<ExitRecord> = std::fs::read(self.container_dir(&c.id).join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let attached = c.clone();
        // Exited on disk before its ports are released: a cluster sync that runs between the two
        // (the release itself wakes every node's) would otherwise claim them again for a
        // container it still reads as running
        c.state.status = Status::Exited;
        match exit {
            Some(e) => {
                c.state.exit_code = e.exit_code;
                c.state.finished_at = Some(e.finished_at);
            }
            None => {
                c.state.exit_code = 137;
                c.state.finished_at = Some(chrono::Utc::now());
                c.state.error = "the container's supervisor died without recording an exit status".into();
            }
        }
        c.state.pid = 0;
        self.put_container(c)?;
        self.teardown(c).await;
        self.emit_endpoints(&attached, "disconnect");
        self.put_container(c)?;
        self.emit_container(c, "die", &[("exitCode", c.state.exit_code.to_string())]);
        info!(container = %c.name, code = c.state.exit_code, "exited");
        Ok(())
    }

    fn running(&self, key: &str) -> ApiResult<ContainerRecord> {
        let c = self.find_container(key)?;
        if c.state.status != Status::Running {
            return Err(ApiError::conflict(format!("Container {} is not running", c.name)));
        }
        Ok(c)
    }

    async fn wait_exited(&self, id: &str, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.store.get::<ContainerRecord>(id)? {
                Some(c) if c.state.status == Status::Running => {}
                _ => return Ok(true),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal_init(&self, c: &ContainerRecord, sig: Signal) -> Result<()> {
        if c.state.pid > 0 && runtime::process_alive(c.state.shim_pid, c.state.shim_start) {
            match kill(Pid::from_raw(c.state.pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(anyhow!("signalling container {}: {e}", c.name)),
            }
        }
        Ok(())
    }

    pub async fn container_stop(&self, key: &str, timeout: u64) -> ApiResult<()> {
        let c = self.find_container(key)?;
        if c.state.status != Status::Running {
            return Ok(());
        }
        self.signal_init(&c, Signal::SIGTERM)?;
        if !self.wait_exited(&c.id, Duration::from_secs(timeout)).await? {
            self.signal_init(&c, Signal::SIGKILL)?;
            if !self.wait_exited(&c.id, Duration::from_secs(10)).await? {
                return Err(anyhow!("container {} did not exit after SIGKILL", c.name).into());
            }
        }
        Ok(())
    }

    pub async fn container_kill(&self, key: &str, signal: &str) -> ApiResult<()> {
        let c = self.running(key)?;
        let sig = parse_signal(signal).map_err(ApiError::bad_request)?;
        self.signal_init(&c, sig)?;
        if sig == Signal::SIGKILL {
            self.wait_exited(&c.id, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    pub async fn container_remove(&self, key: &str, force: bool) -> ApiResult<()> {
        let c = self.find_container(key)?;
        if c.state.status == Status::Running {
            if !force {
                return Err(ApiError::conflict(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    c.id
                )));
            }
            self.signal_init(&c, Signal::SIGKILL)?;
            if !self.wait_exited(&c.id, Duration::from_secs(10)).await? {
                return Err(anyhow!("container {} did not exit after SIGKILL", c.name).into());
            }
        }
        let _g = self.op.lock().await;
        self.attaches.forget(&c.id).await;
        self.execs.forget_container(&c.id);
        if let Some(mut c) = self.store.get::<ContainerRecord>(&c.id)? {
            self.teardown(&mut c).await;
            self.store.delete::<ContainerRecord>(&c.id)?;
            self.refresh_names().await;
            self.emit_container(&c, "destroy", &[]);
        }
        let _ = std::fs::remove_dir_all(self.container_dir(&c.id));
        Ok(())
    }

    pub fn container_summary(&self, c: &ContainerRecord, nets: &[NetworkRecord]) -> ContainerSummary {
        let now = chrono::Utc::now();
        let status = match c.state.status {
            Status::Created => humanize::status_created(),
            Status::Running => {
                humanize::status_running((now - c.state.started_at.unwrap_or(now)).to_std().unwrap_or_default())
            }
            Status::Exited => humanize::status_exited(
                c.state.exit_code,
                (now - c.state.finished_at.unwrap_or(now)).to_std().unwrap_or_default(),
            ),
        };
        let bindings: Vec<portspec::PortBinding> = c.ports.iter().map(|p| p.binding).collect();
        let unpublished: Vec<(u16, Proto)> = c.config.expose.clone();
        let networks: Vec<String> = c
            .attachments
            .iter()
            .filter_map(|a| nets.iter().find(|n| n.id == a.network_id).map(|n| n.name.clone()))
            .collect();
        ContainerSummary {
            id: c.id.clone(),
            names: vec![format!("/{}", c.name)],
            image: c.config.image.clone(),
            command: c.config.argv().join(" "),
            created: c.created.timestamp(),
            state: status_str(&c.state.status).into(),
            status,
            ports: bindings
                .iter()
                .map(|b| api::Port {
                    ip: Some(b.host_ip.to_string()),
                    private_port: b.container_port,
                    public_port: Some(b.host_port),
                    typ: b.proto.to_string(),
                })
                .chain(
                    unpublished
                        .iter()
                        .filter(|(p, pr)| !bindings.iter().any(|b| b.container_port == *p && b.proto == *pr))
                        .map(|(p, pr)| api::Port {
                            ip: None,
                            private_port: *p,
                            public_port: None,
                            typ: pr.to_string(),
                        }),
                )
                .collect(),
            labels: c.config.labels.clone(),
            networks,
        }
    }

    pub fn container_inspect(&self, c: &ContainerRecord) -> Result<ContainerInspectResponse> {
        let nets = self.networks()?;
        let mut ports: BTreeMap<String, Option<Vec<PortBinding>>> = BTreeMap::new();
        for (port, proto) in &c.config.expose {
            ports.insert(format!("{port}/{proto}"), None);
        }
        for s in &c.config.publish {
            ports.entry(format!("{}/{}", s.container_port, s.proto)).or_insert(None);
        }
        for p in &c.ports {
            let k = format!("{}/{}", p.binding.container_port, p.binding.proto);
            let entry =
                PortBinding { host_ip: p.binding.host_ip.to_string(), host_port: p.binding.host_port.to_string() };
            ports.entry(k).or_default().get_or_insert_default().push(entry);
        }
        let mut port_bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
        for s in &c.config.publish {
            let host_port = match s.host_ports {
                Some((lo, hi)) if lo == hi => lo.to_string(),
                Some((lo, hi)) => format!("{lo}-{hi}"),
                None => String::new(),
            };
            let e = PortBinding { host_ip: s.host_ip.map(|i| i.to_string()).unwrap_or_default(), host_port };
            port_bindings.entry(format!("{}/{}", s.container_port, s.proto)).or_default().push(e);
        }
        let mut networks = BTreeMap::new();
        let mut primary = EndpointSettings::default();
        for (i, a) in c.attachments.iter().enumerate() {
            let Some(net) = nets.iter().find(|n| n.id == a.network_id) else { continue };
            let ep = c.endpoints.iter().find(|e| e.network_id == a.network_id);
            let cfg = net.ipam.as_ref().map(|i| i.config());
            let v = EndpointSettings {
                network_id: net.id.clone(),
                endpoint_id: ep.map(|e| e.endpoint_id.clone()).unwrap_or_default(),
                gateway: if ep.is_some() {
                    cfg.map(|c| c.gateway.to_string()).unwrap_or_default()
                } else {
                    String::new()
                },
                ip_address: ep.map(|e| e.ip.to_string()).unwrap_or_default(),
                ip_prefix_len: if ep.is_some() { cfg.map(|c| c.subnet.prefix()).unwrap_or(0).into() } else { 0 },
                mac_address: ep.map(|e| mac_string(&e.mac)).unwrap_or_default(),
                aliases: a.aliases.clone(),
                ipam_config: a.ip.map(|ip| EndpointIpamConfig { ipv4_address: ip.to_string() }),
            };
            if i == 0 {
                primary = v.clone();
            }
            networks.insert(net.name.clone(), v);
        }
        let mode = match c.config.network_mode {
            NetworkMode::Host => "host".to_string(),
            NetworkMode::None => "none".to_string(),
            NetworkMode::Bridge => c
                .attachments
                .first()
                .and_then(|a| nets.iter().find(|n| n.id == a.network_id))
                .map(|n| if n.name == "bridge" { "default".to_string() } else { n.name.clone() })
                .unwrap_or_default(),
        };
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
        };
        let dir = self.container_dir(&c.id);
        Ok(ContainerInspectResponse {
            node: self.node_info().map(serde_json::from_value::<ContainerNode>).transpose()?,
            id: c.id.clone(),
            created: c.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            path: c.config.argv().first().cloned(),
            args: c.config.argv().into_iter().skip(1).collect(),
            state: api::ContainerState {
                status: status_str(&c.state.status).into(),
                running: c.state.status == Status::Running,
                paused: false,
                restarting: false,
                oom_killed: false,
                dead: false,
                pid: c.state.pid,
                exit_code: c.state.exit_code,
                error: c.state.error.clone(),
                started_at: ts(c.state.started_at),
                finished_at: ts(c.state.finished_at),
            },
            name: format!("/{}", c.name),
            log_path: dir.join("stdout.log").to_string_lossy().into_owned(),
            image: c.config.image_id.clone(),
            host_config: HostConfig {
                network_mode: mode,
                port_bindings,
                publish_all_ports: c.config.publish_all,
                auto_remove: c.config.auto_remove,
                ..Default::default()
            },
            config: api::ContainerConfig {
                hostname: c.config.hostname.clone(),
                image: c.config.image.clone(),
                user: c.config.user.clone(),
                env: c.config.env.clone(),
                entrypoint: Some(c.config.entrypoint.clone()).filter(|e| !e.is_empty()),
                cmd: c.config.cmd.clone(),
                working_dir: c.config.workdir.clone().unwrap_or_default(),
                exposed_ports: c.config.expose.iter().map(|(p, pr)| (format!("{p}/{pr}"), EmptyObject {})).collect(),
                labels: c.config.labels.clone(),
                tty: c.config.stdio.tty,
                open_stdin: c.config.stdio.open_stdin,
                stdin_once: c.config.stdio.stdin_once,
                attach_stdin: c.config.stdio.attach_stdin,
                attach_stdout: c.config.stdio.attach_stdout,
                attach_stderr: c.config.stdio.attach_stderr,
            },
            network_settings: NetworkSettings {
                ports,
                ip_address: primary.ip_address,
                ip_prefix_len: primary.ip_prefix_len,
                gateway: primary.gateway,
                mac_address: primary.mac_address,
                networks,
            },
        })
    }

    pub fn container_logs(&self, c: &ContainerRecord, out_off: u64, err_off: u64) -> Result<ContainerLogsResponse> {
        let dir = self.container_dir(&c.id);
        let read_from = |name: &str, off: u64| -> (String, u64) {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            let start = (off as usize).min(bytes.len());
            (String::from_utf8_lossy(&bytes[start..]).into_owned(), bytes.len() as u64)
        };
        let (stdout, stdout_offset) = read_from("stdout.log", out_off);
        let (stderr, stderr_offset) = read_from("stderr.log", err_off);
        Ok(ContainerLogsResponse {
            stdout,
            stderr,
            stdout_offset,
            stderr_offset,
            running: c.state.status == Status::Running,
            exit_code: c.state.exit_code,
        })
    }

    pub(super) async fn start_monitors(self: &Arc<Self>) -> Result<()> {
        for c in self.containers()? {
            if c.state.status == Status::Running {
                let d = self.clone();
                tokio::spawn(async move { d.watch(c.id, c.state.shim_pid).await });
            }
        }
        Ok(())
    }
}

/// An image the store cannot resolve: docker's 404 for a missing one, the store's reason
/// otherwise.
fn image_error(e: anyhow::Error) -> ApiError {
    let msg = format!("{e:#}");
    if msg.starts_with("No such image") { ApiError::not_found(msg) } else { ApiError::from(e) }
}

fn status_str(s: &Status) -> &'static str {
    match s {
        Status::Created => "created",
        Status::Running => "running",
        Status::Exited => "exited",
    }
}

fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let s = s.trim().to_uppercase();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal: {s}"));
    }
    let name = if s.starts_with("SIG") { s.clone() } else { format!("SIG{s}") };
    name.parse::<Signal>().map_err(|_| format!("invalid signal: {s}"))
}

/// The descriptor the shim finds the container's attach point on.
const SHIM_ATTACH_FD: i32 = 3;

/// Runs `netbee shim` detached, with the attach point's listener as [`SHIM_ATTACH_FD`], and
/// returns (shim pid, container init pid).
fn spawn_shim(spec_path: &std::path::Path, listener: std::os::unix::net::UnixListener) -> Result<(i32, i32)> {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let exe = std::env::current_exe().context("locating the netbee binary")?;
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("shim").arg(spec_path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: only dup2/fcntl between fork and exec (async-signal-safe); the listener is open
    // for as long as the command is spawned
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec
            let r =
                if fd == SHIM_ATTACH_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, SHIM_ATTACH_FD) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        })
    };
    let mut child = cmd.spawn().context("spawning the container shim")?;
    // the shim has its own copy: once it exits, connections are refused, not queued
    drop(listener);
    let stdout = child.stdout.take().expect("piped stdout");
    let status = child.wait()?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let line = line.trim();
    if let Some(err) = line.strip_prefix("error: ") {
        return Err(anyhow!("{err}"));
    }
    if !status.success() {
        return Err(anyhow!("container shim failed ({status})"));
    }
    let pids: Vec<i32> = line.split(' ').filter_map(|p| p.parse().ok()).collect();
    match pids[..] {
        [shim, init] => Ok((shim, init)),
        _ => Err(anyhow!("unexpected shim output {line:?}")),
    }
}
