//! The real docker clients pointed at a lab node's socket: the docker CLI (28.2.2, client only)
//! and docker-compose 1.29.2 (Debian's, Python/docker-py), each with a config dir of its own so
//! nothing reads or writes ~/.docker.
use std::{collections::BTreeSet, path::PathBuf, process::Output, time::Duration};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{Lab, Node, netbee_bin, wait_until};

/// Whether the docker CLI is on PATH (the demo and the control-plane bench use it only where it
/// is present).
pub fn docker_cli_present() -> bool {
    std::process::Command::new("docker")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Docker {
    pub host: String,
    pub config: PathBuf,
}

impl Docker {
    pub fn new(lab: &Lab, node: &Node) -> Result<Docker> {
        let config = lab.dir().join(format!("docker-config-{}", node.short_name()));
        std::fs::create_dir_all(&config)?;
        Ok(Docker { host: format!("unix://{}", node.socket().display()), config })
    }

    /// A command of `program` (docker or docker-compose) with this node's environment.
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_API_VERSION")
            .env_remove("COMPOSE_API_VERSION")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(std::process::Stdio::null());
        cmd
    }

    pub fn output_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command("docker");
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run the docker CLI (is it on PATH?): {e}"))
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.output_env(args, &[])
    }

    /// stdout of a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        checked(&format!("docker {args:?}"), self.output(args)).map(|(out, _)| out)
    }

    /// stdout and stderr of a command that must succeed.
    pub fn all(&self, args: &[&str]) -> Result<String> {
        checked(&format!("docker {args:?}"), self.output(args)).map(|(out, err)| out + &err)
    }

    /// stderr of a command that must fail.
    pub fn refused(&self, args: &[&str]) -> String {
        let o = self.output(args);
        assert!(!o.status.success(), "docker {args:?} should fail but printed {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The first element of an inspect command's JSON array.
    pub fn inspect(&self, args: &[&str]) -> Result<Value> {
        let out = self.ok(args)?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v[0].clone())
    }

    /// `docker run -d --name NAME EXTRA host <netbee> whoami --port PORT`, waiting until it listens.
    pub fn run_whoami(&self, name: &str, extra: &[&str], port: u16) -> Result<String> {
        let bin = netbee_bin();
        let port_s = port.to_string();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["host", bin.to_str().unwrap(), "whoami", "--port", &port_s]);
        let id = self.ok(&args)?.trim().to_string();
        wait_until(Duration::from_secs(10), &format!("{name} listening"), || {
            let o = self.output(&["logs", name]);
            String::from_utf8_lossy(&o.stdout).contains("listening")
                || String::from_utf8_lossy(&o.stderr).contains("listening")
        })?;
        Ok(id)
    }

    /// `docker-compose -p PROJECT ARGS` run in `dir` (where its docker-compose.yml is): stdout and
    /// stderr (compose reports progress on stderr), failing on a non-zero exit.
    pub fn compose(&self, dir: &std::path::Path, project: &str, args: &[&str]) -> Result<String> {
        self.compose_env(dir, project, args, &[])
    }

    /// [`Docker::compose`] with extra environment (`COMPOSE_API_VERSION`, ...).
    pub fn compose_env(
        &self,
        dir: &std::path::Path,
        project: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String> {
        let mut cmd = self.command("docker-compose");
        cmd.current_dir(dir).args(["--ansi", "never"]).args(["-p", project]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o =
            cmd.output().unwrap_or_else(|e| panic!("cannot run docker-compose (cargo xtask setup installs it): {e}"));
        checked(&format!("docker-compose -p {project} {args:?}"), o).map(|(out, err)| out + &err)
    }
}

/// Now as the docker CLI's `--since`/`--until` take it: Unix seconds with nanoseconds.
pub fn unix_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn checked(what: &str, o: Output) -> Result<(String, String)> {
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    if !o.status.success() {
        bail!("{what} failed ({}): {out}{err}", o.status);
    }
    Ok((out, err))
}

impl Node {
    /// The kernel objects netbee made on this node: its interfaces (`nbe*` container veths, `nbp*`
    /// peers, `nbn*` network devices), container namespace files and pinned links.
    pub fn kernel_objects(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for l in self.sh("ip -br link")?.lines() {
            let name = l.split_whitespace().next().unwrap_or("").split('@').next().unwrap_or("").to_string();
            if name.starts_with("nbe") || name.starts_with("nbp") || name.starts_with("nbn") {
                out.insert(format!("link:{name}"));
            }
        }
        for d in ["state/netns", "bpffs/netbee/links"] {
            if let Ok(rd) = std::fs::read_dir(self.dir().join(d)) {
                for e in rd.flatten() {
                    out.insert(format!("{d}:{}", e.file_name().to_string_lossy()));
                }
            }
        }
        Ok(out)
    }
}
