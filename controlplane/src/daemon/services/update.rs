//! Rolling updates and rollbacks, as swarm runs them. A `service update` that changes what the
//! tasks run records the new spec, keeps the old one as `previous_spec` and sets the update
//! status to `updating`; from then on the leader's scheduler calls [`plan`] on every pass, which
//! looks only at the service record and its tasks (each task carries the spec it runs), so a new
//! leader carries an update on from where the old one left it.
//!
//! One pass of an update: while a batch is in flight (a slot whose new task is not yet running
//! for `monitor`), wait; once it is done, wait `delay` after the last of its tasks proved itself,
//! then start the next batch of `parallelism` out-of-date slots — stop-first shuts the old task
//! down (the placement puts the new one once the old one has stopped), start-first places the new
//! task beside the old one, which the scheduler shuts down once the new one runs. New tasks that
//! fail count against `max_failure_ratio`; past it, the failure action pauses, continues or rolls
//! back (the previous spec becomes the spec, with the rollback settings).
use chrono::{DateTime, Utc};

use crate::{
    api::UpdateConfigFlags,
    model::{
        FailureAction, ServiceRecord, TaskRecord, TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
    },
};

/// Parses a Go duration as docker's flags take it (`300ms`, `2s`, `1m30s`, `1h`, `0`), in
/// milliseconds; `flag` names the flag in the error.
pub fn parse_duration(flag: &str, s: &str) -> Result<u64, String> {
    let bad = || format!("invalid argument {s:?} for \"--{flag}\" flag: time: invalid duration {s:?}");
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut rest = t.trim_start_matches('+');
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            // a number without a unit (other than a lone 0) is refused, as Go does
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * ms;
    }
    if total > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

/// `--update-max-failure-ratio`: a fraction from 0 to 1.
pub fn parse_ratio(flag: &str, s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("invalid argument {s:?} for \"--{flag}\" flag: the ratio must be between 0 and 1")),
        Err(_) => Err(format!(
            "invalid argument {s:?} for \"--{flag}\" flag: strconv.ParseFloat: parsing {s:?}: invalid syntax"
        )),
    }
}

/// Applies `--update-*` (prefix `update`) or `--rollback-*` (prefix `rollback`) flags to `cfg`.
pub fn apply_flags(cfg: &mut UpdateConfig, f: &UpdateConfigFlags, prefix: &str) -> Result<(), String> {
    if let Some(p) = &f.parallelism {
        cfg.parallelism = p.trim().parse().map_err(|_| {
            format!("invalid argument {p:?} for \"--{prefix}-parallelism\" flag: strconv.ParseUint: parsing {p:?}: invalid syntax")
        })?;
    }
    if let Some(d) = &f.delay {
        cfg.delay_ms = parse_duration(&format!("{prefix}-delay"), d)?;
    }
    if let Some(d) = &f.monitor {
        cfg.monitor_ms = parse_duration(&format!("{prefix}-monitor"), d)?;
    }
    if let Some(r) = &f.max_failure_ratio {
        cfg.max_failure_ratio = parse_ratio(&format!("{prefix}-max-failure-ratio"), r)?;
    }
    if let Some(o) = &f.order {
        cfg.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            _ => {
                return Err(format!(
                    "invalid argument {o:?} for \"--{prefix}-order\" flag: must be one of \"start-first\", \"stop-first\""
                ));
            }
        };
    }
    if let Some(a) = &f.failure_action {
        // a rollback that fails cannot roll back again: docker offers pause and continue only
        cfg.failure_action = match (a.as_str(), prefix) {
            ("pause", _) => FailureAction::Pause,
            ("continue", _) => FailureAction::Continue,
            ("rollback", "update") => FailureAction::Rollback,
            _ if prefix == "update" => {
                return Err(format!(
                    "invalid argument {a:?} for \"--{prefix}-failure-action\" flag: must be one of \"pause\", \"continue\", \"rollback\""
                ));
            }
            _ => {
                return Err(format!(
                    "invalid argument {a:?} for \"--{prefix}-failure-action\" flag: must be one of \"pause\", \"continue\""
                ));
            }
        };
    }
    Ok(())
}

/// Whether task `t` runs the service's current spec.
pub fn up_to_date(s: &ServiceRecord, t: &TaskRecord) -> bool {
    t.spec.as_ref().is_some_and(|sp| sp.same_tasks(&s.spec))
}

/// The settings the update in progress runs with: a rollback uses the rollback settings of the
/// spec it leaves (they were given with the update that failed).
pub fn active_config(s: &ServiceRecord) -> &UpdateConfig {
    match &s.update_status {
        Some(u) if u.state.is_rollback() => {
            s.previous_spec.as_ref().map_or(&s.spec.rollback_config, |p| &p.rollback_config)
        }
        _ => &s.spec.update_config,
    }
}

/// What one scheduler pass does for a service's update.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Old tasks to shut down now (a stop-first batch).
    pub shutdown: Vec<String>,
    /// Slots that get a new task beside their old one (a start-first batch).
    pub start: Vec<u64>,
    /// The update status to record.
    pub status: Option<UpdateStatus>,
    /// Roll back: the previous spec becomes the spec (and the status is `status`).
    pub rollback: bool,
}

/// One pass of the rolling update of `s` (see the module doc); `tasks` are the service's.
pub fn plan(s: &ServiceRecord, tasks: &[TaskRecord], now: DateTime<Utc>) -> Step {
    let mut step = Step::default();
    let Some(status) = &s.update_status else { return step };
    if !status.state.in_progress() {
        return step;
    }
    let rolling_back = status.state.is_rollback();
    let cfg = active_config(s);
    let monitor = chrono::Duration::milliseconds(cfg.monitor_ms as i64);
    let ours = |t: &&TaskRecord| up_to_date(s, t) && t.created >= status.started_at;

    // failures: new tasks of this update that failed (while starting or monitored)
    let failed: Vec<&TaskRecord> = tasks.iter().filter(ours).filter(|t| t.state == TaskState::Failed).collect();
    let slots = s.spec.replicas.max(1) as f64;
    if !failed.is_empty() && failed.len() as f64 / slots > cfg.max_failure_ratio {
        let task = failed.iter().max_by_key(|t| t.updated).map(|t| t.id.clone()).unwrap_or_default();
        let action = if rolling_back && cfg.failure_action == FailureAction::Rollback {
            FailureAction::Pause
        } else {
            cfg.failure_action
        };
        match (action, rolling_back) {
            (FailureAction::Continue, _) => {}
            (FailureAction::Pause, false) => {
                step.status = Some(UpdateStatus {
                    state: UpdateState::Paused,
                    completed_at: None,
                    message: format!("update paused due to failure or early termination of task {task}"),
                    ..status.clone()
                });
                return step;
            }
            (FailureAction::Pause | FailureAction::Rollback, true) => {
                step.status = Some(UpdateStatus {
                    state: UpdateState::RollbackPaused,
                    completed_at: None,
                    message: format!("rollback paused due to failure or early termination of task {task}"),
                    ..status.clone()
                });
                return step;
            }
            (FailureAction::Rollback, false) => {
                if s.previous_spec.is_some() {
                    step.rollback = true;
                    step.status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted,
                        started_at: now,
                        completed_at: None,
                        message: format!("update rolled back due to failure or early termination of task {task}"),
                    });
                    return step;
                }
            }
        }
    }

    let mut in_flight = false;
    let mut stale: Vec<(u64, Vec<&TaskRecord>)> = Vec::new();
    let mut last_proven: Option<DateTime<Utc>> = None;
    for slot in 1..=s.spec.replicas {
        let desired: Vec<&TaskRecord> = tasks.iter().filter(|t| t.slot == slot && t.desired_running).collect();
        let (new, old): (Vec<&TaskRecord>, Vec<&TaskRecord>) = desired.iter().partition(|t| up_to_date(s, t));
        if let Some(n) = new.iter().max_by_key(|t| t.created) {
            let proven = n.state == TaskState::Running && n.updated + monitor <= now;
            if !proven || !old.is_empty() {
                in_flight = true;
            } else if n.created >= status.started_at {
                last_proven = last_proven.max(Some(n.updated + monitor));
            }
        } else if old.is_empty() {
            // replaced (stop-first) or lost: the placement fills it
            in_flight = true;
        } else {
            stale.push((slot, old));
        }
    }
    if in_flight {
        return step;
    }
    if stale.is_empty() {
        let (state, message) = if rolling_back {
            (UpdateState::RollbackCompleted, "rollback completed")
        } else {
            (UpdateState::Completed, "update completed")
        };
        step.status = Some(UpdateStatus { state, completed_at: Some(now), message: message.into(), ..status.clone() });
        return step;
    }
    if let Some(t) = last_proven
        && now < t + chrono::Duration::milliseconds(cfg.delay_ms as i64)
    {
        return step;
    }
    let batch = if cfg.parallelism == 0 { stale.len() } else { cfg.parallelism as usize };
    for (slot, old) in stale.into_iter().take(batch) {
        match cfg.order {
            UpdateOrder::StopFirst => step.shutdown.extend(old.iter().map(|t| t.id.clone())),
            UpdateOrder::StartFirst => step.start.push(slot),
        }
    }
    step
}

/// The rollback of `s`: the previous spec becomes the spec (and the spec the previous one, as
/// docker swaps them), and the VIPs follow their networks.
pub fn swap_for_rollback(s: &mut ServiceRecord) {
    let Some(prev) = s.previous_spec.take() else { return };
    let old = std::mem::replace(&mut s.spec, prev);
    s.previous_spec = Some(old);
    let mut all: Vec<_> = s.vips.drain(..).chain(s.retained_vips.drain(..)).collect();
    all.dedup_by(|a, b| a.network_id == b.network_id);
    let (cur, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|v| s.spec.networks.contains(&v.network_id));
    // VIPs in the order of the spec's networks (the first carries the routing mesh)
    s.vips = s.spec.networks.iter().filter_map(|n| cur.iter().find(|v| &v.network_id == n).cloned()).collect();
    s.retained_vips = rest;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{ServiceSpec, Vip};

    fn spec(image: &str, replicas: u64, cfg: UpdateConfig) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: image.into(),
            replicas,
            cmd: vec![],
            env: vec![],
            networks: vec!["n1".into()],
            ports: vec![],
            constraints: vec![],
            update_config: cfg.clone(),
            rollback_config: cfg,
            force_update: 0,
            labels: Default::default(),
            container_labels: Default::default(),
            aliases: Default::default(),
            entrypoint: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn service(image: &str, replicas: u64, cfg: UpdateConfig, started: i64) -> ServiceRecord {
        ServiceRecord {
            id: "s".into(),
            spec: spec(image, replicas, cfg.clone()),
            vips: vec![],
            created: at(0),
            updated: at(started),
            previous_spec: Some(spec("app:1", replicas, cfg)),
            retained_vips: vec![],
            update_status: Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: at(started),
                completed_at: None,
                message: String::new(),
            }),
        }
    }

    fn task(id: &str, slot: u64, image: &str, state: TaskState, created: i64, updated: i64) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot,
            node_id: "n".into(),
            desired_running: true,
            state,
            message: String::new(),
            container_id: None,
            addrs: vec![],
            created: at(created),
            updated: at(updated),
            spec: Some(std::sync::Arc::new(spec(image, 4, UpdateConfig::default()))),
        }
    }

    fn cfg(parallelism: u64, delay_ms: u64, order: UpdateOrder) -> UpdateConfig {
        UpdateConfig { parallelism, delay_ms, order, ..Default::default() }
    }

    #[test]
    fn durations_and_ratios() {
        assert_eq!(parse_duration("update-delay", "2s"), Ok(2000));
        assert_eq!(parse_duration("update-delay", "1m30s"), Ok(90_000));
        assert_eq!(parse_duration("update-delay", "300ms"), Ok(300));
        assert_eq!(parse_duration("update-delay", "1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration("update-delay", "0"), Ok(0));
        for bad in ["", "2", "-1s", "s", "2x", "1..5s", "two"] {
            let e = parse_duration("update-delay", bad).unwrap_err();
            assert!(e.contains("--update-delay") && e.contains("invalid duration"), "{bad}: {e}");
        }
        assert_eq!(parse_ratio("update-max-failure-ratio", "0.25"), Ok(0.25));
        assert!(parse_ratio("update-max-failure-ratio", "1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_ratio("update-max-failure-ratio", "x").is_err());
        let mut c = UpdateConfig::default();
        let f = UpdateConfigFlags { failure_action: Some("rollback".into()), ..Default::default() };
        assert!(apply_flags(&mut c, &f, "rollback").is_err(), "a rollback cannot roll back");
        apply_flags(&mut c, &f, "update").unwrap();
        assert_eq!(c.failure_action, FailureAction::Rollback);
        let f = UpdateConfigFlags { order: Some("sideways".into()), ..Default::default() };
        assert!(apply_flags(&mut c, &f, "update").unwrap_err().contains("start-first"));
    }

    #[test]
    fn stop_first_batches_of_parallelism_with_monitor_and_delay() {
        let s = service("app:2", 4, cfg(2, 2000, UpdateOrder::StopFirst), 100);
        let old: Vec<TaskRecord> =
            (1..=4).map(|i| task(&format!("o{i}"), i, "app:1", TaskState::Running, 0, 1)).collect();
        // first batch: the two lowest slots' old tasks stop
        let st = plan(&s, &old, at(101));
        assert_eq!(st.shutdown, ["o1", "o2"]);
        assert!(st.start.is_empty() && st.status.is_none());
        // while those slots are empty or their new tasks are not proven, nothing else happens
        let mut ts: Vec<TaskRecord> = old[2..].to_vec();
        assert_eq!(plan(&s, &ts, at(102)), Step::default());
        ts.push(task("n1", 1, "app:2", TaskState::Running, 103, 104));
        ts.push(task("n2", 2, "app:2", TaskState::Starting, 103, 103));
        assert_eq!(plan(&s, &ts, at(105)), Step::default());
        ts.last_mut().unwrap().state = TaskState::Running;
        ts.last_mut().unwrap().updated = at(106);
        // proven at 106 + 5 s monitor = 111; the next batch waits the 2 s delay after that
        assert_eq!(plan(&s, &ts, at(110)), Step::default());
        assert_eq!(plan(&s, &ts, at(112)), Step::default());
        assert_eq!(plan(&s, &ts, at(113)).shutdown, ["o3", "o4"]);
        // everything new and proven: completed
        let done: Vec<TaskRecord> =
            (1..=4).map(|i| task(&format!("n{i}"), i, "app:2", TaskState::Running, 103, 106)).collect();
        let st = plan(&s, &done, at(120));
        let status = st.status.unwrap();
        assert_eq!((status.state, status.completed_at), (UpdateState::Completed, Some(at(120))));
    }

    #[test]
    fn start_first_starts_beside_and_parallelism_zero_takes_all() {
        let s = service("app:2", 3, cfg(0, 0, UpdateOrder::StartFirst), 100);
        let old: Vec<TaskRecord> =
            (1..=3).map(|i| task(&format!("o{i}"), i, "app:1", TaskState::Running, 0, 1)).collect();
        let st = plan(&s, &old, at(101));
        assert_eq!((st.start, st.shutdown.len()), (vec![1, 2, 3], 0));
        // an old task beside a proven new one is still in flight (the scheduler stops it)
        let mut ts = old.clone();
        ts.push(task("n1", 1, "app:2", TaskState::Running, 101, 102));
        assert_eq!(plan(&s, &ts, at(200)), Step::default());
    }

    #[test]
    fn failures_pause_continue_or_roll_back() {
        let mut c = cfg(1, 0, UpdateOrder::StopFirst);
        let old: Vec<TaskRecord> =
            (2..=4).map(|i| task(&format!("o{i}"), i, "app:1", TaskState::Running, 0, 1)).collect();
        let mut ts = old.clone();
        let mut bad = task("n1", 1, "app:2", TaskState::Failed, 101, 102);
        bad.desired_running = false;
        ts.push(bad);
        let st = plan(&service("app:2", 4, c.clone(), 100), &ts, at(103));
        let status = st.status.unwrap();
        assert_eq!(status.state, UpdateState::Paused);
        assert!(status.message.contains("task n1"), "{}", status.message);
        c.failure_action = FailureAction::Rollback;
        let st = plan(&service("app:2", 4, c.clone(), 100), &ts, at(103));
        assert!(st.rollback);
        assert_eq!(st.status.unwrap().state, UpdateState::RollbackStarted);
        // one failure in four slots is within a ratio of 0.3: the update goes on (slot 1 refills)
        c.max_failure_ratio = 0.3;
        assert_eq!(plan(&service("app:2", 4, c.clone(), 100), &ts, at(103)), Step::default());
        // failures of an earlier update do not count (slot 1 is merely being refilled)
        let st = plan(&service("app:2", 4, cfg(1, 0, UpdateOrder::StopFirst), 102), &ts, at(103));
        assert_eq!(st, Step::default());
        // a failing rollback pauses
        let mut s = service("app:2", 4, cfg(1, 0, UpdateOrder::StopFirst), 100);
        s.update_status.as_mut().unwrap().state = UpdateState::RollbackStarted;
        assert_eq!(plan(&s, &ts, at(103)).status.unwrap().state, UpdateState::RollbackPaused);
    }

    #[test]
    fn what_replaces_tasks() {
        let base = spec("app:1", 2, UpdateConfig::default());
        let same = |f: &dyn Fn(&mut ServiceSpec)| {
            let mut s = base.clone();
            f(&mut s);
            assert_ne!(s, base);
            s.same_tasks(&base)
        };
        // what a task runs, where it is attached and placed
        assert!(!same(&|s| s.image = "app:2".into()));
        assert!(!same(&|s| s.entrypoint = Some(vec!["sh".into()])));
        assert!(!same(&|s| s.cmd = vec!["x".into()]));
        assert!(!same(&|s| s.env = vec!["A=1".into()]));
        assert!(!same(&|s| s.container_labels = [("k".to_string(), "v".to_string())].into()));
        assert!(!same(&|s| s.networks.push("n2".into())));
        assert!(!same(&|s| s.constraints = vec!["node.role==manager".into()]));
        assert!(!same(&|s| s.force_update = 1));
        // applied to the running tasks: counts, ports, the service's labels, DNS aliases, settings
        assert!(same(&|s| s.replicas = 5));
        assert!(same(&|s| s.labels = [("k".to_string(), "v".to_string())].into()));
        assert!(same(&|s| s.aliases = [("n1".to_string(), vec!["www".to_string()])].into()));
        assert!(same(&|s| s.update_config.parallelism = 3));
        assert!(same(&|s| {
            s.ports = vec![crate::model::ServicePort { published: 80, target: 80, proto: crate::portspec::Proto::Tcp }]
        }));
    }

    #[test]
    fn rollback_swaps_specs_and_vips() {
        let mut s = service("app:2", 2, UpdateConfig::default(), 0);
        s.spec.networks = vec!["a".into(), "b".into()];
        s.previous_spec.as_mut().unwrap().networks = vec!["a".into()];
        let vip = |n: &str, last: u8| Vip { network_id: n.into(), ip: Ipv4Addr::new(10, 0, 0, last) };
        s.vips = vec![vip("a", 1), vip("b", 2)];
        swap_for_rollback(&mut s);
        assert_eq!(s.spec.image, "app:1");
        assert_eq!(s.previous_spec.as_ref().unwrap().image, "app:2");
        assert_eq!((s.vips.clone(), s.retained_vips.clone()), (vec![vip("a", 1)], vec![vip("b", 2)]));
        swap_for_rollback(&mut s);
        assert_eq!(s.vips, [vip("a", 1), vip("b", 2)]);
        assert!(s.retained_vips.is_empty());
    }
}
