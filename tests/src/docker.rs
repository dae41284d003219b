//! The real docker CLI (docker's own binary, client only) pointed at one lab node's socket, for
//! the tests and the demo that drive netbee the way a docker user does.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{Lab, Node, netbee_bin, wait_until};

/// The docker CLI for one node, with a config dir of its own so nothing reads or writes
/// `~/.docker` (or a context chosen there).
pub struct Docker {
    host: String,
    config: PathBuf,
}

/// Whether the docker CLI is on PATH (the demo uses it only where it is present).
pub fn docker_cli_present() -> bool {
    Command::new("docker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Docker {
    pub fn new(lab: &Lab, node: &Node) -> Result<Docker> {
        Docker::for_socket(&lab.dir().join(format!("docker-config-{}", node.short_name())), &node.socket())
    }

    /// The CLI for the daemon listening on `socket`, its config in `config`.
    pub fn for_socket(config: &Path, socket: &Path) -> Result<Docker> {
        std::fs::create_dir_all(config)?;
        Ok(Docker { host: format!("unix://{}", socket.display()), config: config.to_path_buf() })
    }

    /// `DOCKER_HOST`'s value for this node, for messages that tell a person how to reach it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A `docker` command with this node's environment and nothing on stdin.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        cmd
    }

    pub fn output_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run the docker CLI (is it on PATH?): {e}"))
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.output_env(args, &[])
    }

    /// stdout and stderr of a command that must succeed (the progress display and the CLI's
    /// warnings go to either).
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.output(args);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if !o.status.success() {
            bail!("docker {args:?} failed ({}): {text}", o.status);
        }
        Ok(text)
    }

    /// stdout alone of a command that must succeed.
    pub fn stdout(&self, args: &[&str]) -> Result<String> {
        let o = self.output(args);
        if !o.status.success() {
            bail!(
                "docker {args:?} failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// stderr of a command that must fail.
    pub fn refused(&self, args: &[&str]) -> String {
        let o = self.output(args);
        assert!(!o.status.success(), "docker {args:?} should fail but printed {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The first object of `docker ... inspect ...`'s JSON array.
    pub fn inspect(&self, args: &[&str]) -> Result<Value> {
        let v: Value = serde_json::from_str(&self.stdout(args)?)?;
        Ok(v[0].clone())
    }

    /// `docker run -d --name NAME EXTRA host <netbee> whoami --port PORT`, waiting until it listens.
    pub fn run_whoami(&self, name: &str, extra: &[&str], port: u16) -> Result<String> {
        let bin = netbee_bin();
        let port_s = port.to_string();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["host", bin.to_str().unwrap(), "whoami", "--port", &port_s]);
        let id = self.stdout(&args)?.trim().to_string();
        wait_until(Duration::from_secs(10), &format!("{name} listening"), || {
            let o = self.output(&["logs", name]);
            String::from_utf8_lossy(&o.stdout).contains("listening")
                || String::from_utf8_lossy(&o.stderr).contains("listening")
        })?;
        Ok(id)
    }
}
