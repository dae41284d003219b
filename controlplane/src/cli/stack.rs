//! `stack deploy|ls|ps|services|rm`. As docker's, a stack is only a label: the client reads the
//! compose file (`compose.rs`), then creates, updates and removes the networks and services
//! labelled `com.docker.stack.namespace=NAME` through the ordinary service and network API, so
//! anything that lists by that label (docker's own `stack ls`) sees the same stacks.
use std::{collections::BTreeMap, io::Read as _, path::PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use super::{enc, humanize, json_only, line, short};
use crate::{
    api::{
        Client, Network, NetworkCreateResponse, Service, ServiceCreateResponse, ServiceSummary, ServiceUpdateRequest,
        ServiceUpdateResponse, Task,
    },
    compose::{self, ComposeFile, NAMESPACE_LABEL},
};

#[derive(Subcommand)]
pub(super) enum StackCmd {
    /// Deploy a new stack or update an existing stack from compose files.
    Deploy {
        /// Path to a Compose file, or "-" to read from stdin (repeatable: later files override
        /// earlier ones).
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_files: Vec<String>,
        /// Remove the stack's services that the files no longer define.
        #[arg(long)]
        prune: bool,
        /// Stack name.
        stack: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// List the tasks in the stack.
    Ps {
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
        /// Stack name.
        stack: String,
    },
    /// List the services in the stack.
    Services {
        /// Only display IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long)]
        format: Option<String>,
        /// Stack name.
        stack: String,
    },
    /// Remove one or more stacks.
    #[command(alias = "remove", alias = "down")]
    Rm {
        /// Stack names.
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

pub(super) async fn stack(c: &Client, cmd: StackCmd) -> Result<i32> {
    match cmd {
        StackCmd::Deploy { compose_files, prune, stack } => deploy(c, &compose_files, prune, &stack).await,
        StackCmd::Ls { format } => ls(c, &format).await,
        StackCmd::Ps { format, stack } => ps(c, &format, &stack).await,
        StackCmd::Services { quiet, format, stack } => services(c, quiet, &format, &stack).await,
        StackCmd::Rm { stacks } => rm(c, &stacks).await,
    }
}

fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|s| s == stack)
}

async fn stack_services(c: &Client, stack: &str) -> Result<Vec<ServiceSummary>> {
    let all: Vec<ServiceSummary> =
        c.get::<Vec<Service>>("/services?status=true").await?.iter().map(ServiceSummary::of).collect();
    Ok(all.into_iter().filter(|s| in_stack(&s.labels, stack)).collect())
}

fn read_file(f: &str) -> Result<ComposeFile> {
    let text = if f == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(PathBuf::from(f)).map_err(|e| anyhow!("open {f}: {e}"))?
    };
    Ok(ComposeFile { name: f.to_string(), text })
}

/// Everything is read and checked before the first request that changes anything: a bad file,
/// a missing external network or a name another stack owns leaves the swarm as it was.
async fn deploy(c: &Client, files: &[String], prune: bool, stack: &str) -> Result<i32> {
    let files = files.iter().map(|f| read_file(f)).collect::<Result<Vec<_>>>()?;
    let plan = compose::load(stack, &files, &|k| std::env::var(k).ok()).map_err(|e| anyhow!(e))?;
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    let nets: Vec<Network> = c.get("/networks").await?;
    let existing: Vec<ServiceSummary> =
        c.get::<Vec<Service>>("/services?status=true").await?.iter().map(ServiceSummary::of).collect();
    for n in &plan.networks {
        let found = nets.iter().find(|x| x.name == n.create.name);
        match found {
            None if n.external => bail!(
                "network \"{}\" is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed",
                n.create.name
            ),
            Some(x) if !n.external && !in_stack(&x.labels, stack) => bail!(
                "network {} already exists and is not part of stack {stack}: remove or rename it, or declare it external",
                x.name
            ),
            _ => {}
        }
    }
    for s in &plan.services {
        if let Some(x) = existing.iter().find(|x| x.name == s.request.name)
            && !in_stack(&x.labels, stack)
        {
            bail!("service {} already exists and is not part of stack {stack}", x.name);
        }
    }

    for n in plan.networks.iter().filter(|n| !n.external && !nets.iter().any(|x| x.name == n.create.name)) {
        println!("Creating network {}", n.create.name);
        let _: NetworkCreateResponse = c.post("/networks/create", &n.create).await?;
    }
    for s in &plan.services {
        match existing.iter().find(|x| x.name == s.request.name) {
            Some(x) => {
                println!("Updating service {} (id: {})", x.name, x.id);
                let req = ServiceUpdateRequest { spec: Some(s.request.clone()), ..Default::default() };
                let _: ServiceUpdateResponse = c.post(&format!("/services/{}/update", enc(&x.id)), &req).await?;
            }
            None => {
                println!("Creating service {}", s.request.name);
                let _: ServiceCreateResponse = c.post("/services/create", &s.request).await?;
            }
        }
    }
    if prune {
        for x in existing.iter().filter(|x| in_stack(&x.labels, stack)) {
            if !plan.services.iter().any(|s| s.request.name == x.name) {
                println!("Removing service {}", x.name);
                c.delete(&format!("/services/{}", enc(&x.id))).await?;
            }
        }
    }
    Ok(0)
}

async fn ls(c: &Client, format: &Option<String>) -> Result<i32> {
    let json = json_only(format)?;
    let all: Vec<ServiceSummary> =
        c.get::<Vec<Service>>("/services?status=true").await?.iter().map(ServiceSummary::of).collect();
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for s in &all {
        if let Some(n) = s.labels.get(NAMESPACE_LABEL) {
            *stacks.entry(n.clone()).or_default() += 1;
        }
    }
    if json {
        for (name, n) in &stacks {
            println!("{}", line(&json!({ "Name": name, "Services": n.to_string() }))?);
        }
    } else {
        let rows: Vec<Vec<String>> = stacks.iter().map(|(name, n)| vec![name.clone(), n.to_string()]).collect();
        print!("{}", humanize::format_table(&["NAME", "SERVICES"], &rows));
    }
    Ok(0)
}

async fn services(c: &Client, quiet: bool, format: &Option<String>, stack: &str) -> Result<i32> {
    let json = json_only(format)?;
    let list = stack_services(c, stack).await?;
    if list.is_empty() {
        eprintln!("Nothing found in stack: {stack}");
        return Ok(0);
    }
    if quiet {
        for s in &list {
            println!("{}", s.id);
        }
    } else if json {
        for s in &list {
            println!(
                "{}",
                line(&json!({
                    "ID": short(&s.id), "Name": s.name, "Mode": s.mode, "Replicas": s.replicas,
                    "Image": s.image, "Ports": s.ports,
                }))?
            );
        }
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|s| {
                vec![short(&s.id), s.name.clone(), s.mode.clone(), s.replicas.clone(), s.image.clone(), s.ports.clone()]
            })
            .collect();
        print!("{}", humanize::format_table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows));
    }
    Ok(0)
}

async fn ps(c: &Client, format: &Option<String>, stack: &str) -> Result<i32> {
    let json = json_only(format)?;
    let list = stack_services(c, stack).await?;
    if list.is_empty() {
        bail!("nothing found in stack: {stack}");
    }
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for s in &list {
        let tasks: Vec<Task> = c.get(&format!("/services/{}/tasks", enc(&s.id))).await?;
        let mut last_slot = None;
        for t in &tasks {
            if json {
                println!(
                    "{}",
                    line(&json!({
                        "ID": short(&t.id), "Name": t.name, "Image": s.image, "Node": t.node,
                        "DesiredState": t.desired_state, "CurrentState": t.current_state, "Error": t.error,
                    }))?
                );
                continue;
            }
            // the slot's history under its current task, as docker shows it
            let name = if last_slot == Some(t.slot) { format!(" \\_ {}", t.name) } else { t.name.clone() };
            last_slot = Some(t.slot);
            let ago = (now - t.since).to_std().unwrap_or_default();
            rows.push(vec![
                short(&t.id),
                name,
                s.image.clone(),
                t.node.clone(),
                t.desired_state.clone(),
                format!("{} {} ago", t.current_state, humanize::human_duration(ago).to_lowercase()),
                t.error.clone(),
                String::new(),
            ]);
        }
    }
    if !json {
        print!(
            "{}",
            humanize::format_table(
                &["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"],
                &rows
            )
        );
    }
    Ok(0)
}

/// Services first, then the networks, as docker's CLI does: the daemon removes a network once the
/// removed services' tasks have left it.
async fn rm(c: &Client, stacks: &[String]) -> Result<i32> {
    let mut failed = false;
    for stack in stacks {
        let services = stack_services(c, stack).await?;
        let nets: Vec<Network> = c.get("/networks").await?;
        let mut nets: Vec<Network> = nets.into_iter().filter(|n| in_stack(&n.labels, stack)).collect();
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        if services.is_empty() && nets.is_empty() {
            eprintln!("Nothing found in stack: {stack}");
            continue;
        }
        for s in &services {
            println!("Removing service {}", s.name);
            if let Err(e) = c.delete(&format!("/services/{}", enc(&s.id))).await {
                eprintln!("Failed to remove service {}: {e:#}", s.name);
                failed = true;
            }
        }
        for n in &nets {
            println!("Removing network {}", n.name);
            // the daemon waits for the removed services' tasks to leave the network
            if let Err(e) = c.delete(&format!("/networks/{}", enc(&n.id))).await {
                eprintln!("Failed to remove network {}: {e:#}", n.id);
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
