//! The progress display of `service create/update/scale` (unless `--detach`), as docker prints
//! it: an overall line and one line per replica slot, redrawn in place on a terminal and printed
//! as lines change otherwise, until the service converges, an update pauses or rolls back.
use std::{collections::HashMap, io::IsTerminal as _, io::Write as _, time::Duration};

use anyhow::{Result, bail};

use crate::api::{Client, Service, Task};

/// What the command waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Every slot running (create, scale).
    Create,
    /// The update completed (a rollback is a failure).
    Update,
    /// The requested rollback completed.
    Rollback,
}

const BAR: usize = 50;
const POLL: Duration = Duration::from_millis(300);

/// docker's task states in order, for the bar of a slot.
fn state_rank(state: &str) -> usize {
    match state {
        "assigned" => 4,
        "starting" => 8,
        "running" => 9,
        _ => 0,
    }
}

fn bar(state: &str) -> String {
    let filled = BAR * state_rank(state) / 9;
    if filled == 0 {
        format!("[>{}]", " ".repeat(BAR))
    } else {
        format!("[{}>{}]", "=".repeat(filled), " ".repeat(BAR - filled))
    }
}

/// The lines for `svc` and its tasks, and how many slots run the current spec.
pub fn render(svc: &Service, tasks: &[Task], rolling_back: bool) -> (Vec<String>, u64) {
    let replicas = svc.spec.mode.replicated.replicas;
    let mut by_slot: HashMap<u64, Vec<&Task>> = HashMap::new();
    for t in tasks {
        by_slot.entry(t.slot).or_default().push(t);
    }
    let mut done = 0;
    let mut lines = Vec::new();
    for slot in 1..=replicas {
        // the slot's current task: a wanted up-to-date one first, then the newest
        let t = by_slot.get(&slot).and_then(|ts| {
            ts.iter().max_by_key(|t| (t.up_to_date && t.desired_state == "Running", t.created_at)).copied()
        });
        let line = match t {
            Some(t) if t.up_to_date && t.desired_state == "Running" => {
                let state = t.current_state.to_lowercase();
                if state == "running" {
                    done += 1;
                }
                format!("{slot}/{replicas}: {state:<9} {}", bar(&state))
            }
            Some(t) if t.current_state == "Failed" && t.up_to_date => {
                format!("{slot}/{replicas}: {}", t.error)
            }
            _ => format!("{slot}/{replicas}: {:<9} {}", "", bar("")),
        };
        lines.push(line);
    }
    let what = if rolling_back { "rolling back update: " } else { "" };
    lines.insert(0, format!("overall progress: {what}{done} out of {replicas} tasks"));
    (lines, done)
}

/// Follows service `key` until it converges (0), or fails with docker's message.
pub async fn wait(c: &Client, key: &str, mode: Mode, quiet: bool) -> Result<i32> {
    let tty = std::io::stdout().is_terminal();
    let mut shown: Vec<String> = Vec::new();
    let mut said_rollback = false;
    loop {
        let svc: Service = c.get(&format!("/services/{}", enc(key))).await?;
        let tasks: Vec<Task> = c.get(&format!("/services/{}/tasks", enc(key))).await?;
        let status = svc.update_status.as_ref();
        let state = status.map(|u| u.state.as_str()).unwrap_or("");
        let message = status.map(|u| u.message.clone()).unwrap_or_default();
        if state.starts_with("rollback") && mode == Mode::Update && !said_rollback && !quiet {
            said_rollback = true;
            println!("rollback: {message}");
            shown.clear();
        }
        let (lines, done) = render(&svc, &tasks, state.starts_with("rollback"));
        if !quiet {
            draw(&mut shown, lines, tty);
        }
        let all = done == svc.spec.mode.replicated.replicas;
        let converged = match (mode, state) {
            (Mode::Update, "paused") => bail!("service update paused: {message}"),
            (Mode::Update, "rollback_completed") => bail!("service rolled back: {message}"),
            (Mode::Update | Mode::Rollback, "rollback_paused") => bail!("service rollback paused: {message}"),
            (Mode::Update, "completed") | (Mode::Rollback, "rollback_completed") => all,
            (Mode::Update | Mode::Rollback, "updating" | "rollback_started") => false,
            _ => all,
        };
        if converged {
            if !quiet {
                println!("verify: Service {} converged", svc.spec.name);
            }
            return Ok(0);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// On a terminal, redraws the block in place; otherwise prints the lines that changed.
fn draw(shown: &mut Vec<String>, lines: Vec<String>, tty: bool) {
    let mut out = std::io::stdout().lock();
    if tty {
        if !shown.is_empty() {
            let _ = write!(out, "\x1b[{}A", shown.len());
        }
        for l in &lines {
            let _ = writeln!(out, "\x1b[2K{l}");
        }
    } else {
        for (i, l) in lines.iter().enumerate() {
            if shown.get(i) != Some(l) {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    let _ = out.flush();
    *shown = lines;
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_as_docker_draws_them() {
        assert_eq!(bar("running"), format!("[{}>]", "=".repeat(50)));
        assert_eq!(bar("").len(), 53);
        assert!(bar("starting").starts_with("[===="));
    }
}
