//! Placement: on the elected leader (every lone node is its own), each pass shuts down the tasks
//! that can no longer run where they are and places the missing replica slots on eligible nodes,
//! spreading each service evenly, then by total load.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use anyhow::Result;
use chrono::Utc;

use super::update;
use crate::{
    daemon::Daemon,
    model::{Availability, NodeRecord, Role, ServiceRecord, TaskRecord, TaskState, UpdateOrder},
    names,
};

/// Shut-down tasks kept per slot for `service ps`.
const MAX_HISTORY: usize = 4;
/// New tasks placed per service and pass: a service of thousands of replicas is placed over
/// several passes, and every other service gets its turn (and the agents their tasks) in between.
const PLACEMENTS_PER_PASS: usize = 128;

/// A placement constraint: `node.labels.K==V`, `node.hostname!=H`, `node.role==manager`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

pub fn parse_constraint(s: &str) -> Result<Constraint, String> {
    let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = s.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!(
            "invalid constraint {s:?}: expected node.labels.KEY==VALUE, node.hostname==NAME or node.role==manager|worker (or !=)"
        ));
    };
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    // Another '=' makes the text ambiguous ("node.hostname!==m", "node.labels.k= ==v"), and a
    // key or value with one could not be written back as a constraint; docker refuses it too.
    if lhs.contains('=') || rhs.contains('=') {
        return Err(format!("invalid constraint {s:?}: '=' may appear only in the operator (== or !=)"));
    }
    let valid_field = lhs == "node.hostname"
        || lhs == "node.role"
        || lhs == "node.id"
        || lhs.strip_prefix("node.labels.").is_some_and(|k| !k.is_empty());
    if !valid_field {
        return Err(format!("invalid constraint {s:?}: unknown field {lhs:?}"));
    }
    if rhs.is_empty() {
        return Err(format!("invalid constraint {s:?}: missing value"));
    }
    if lhs == "node.role" && rhs != "manager" && rhs != "worker" {
        return Err(format!("invalid constraint {s:?}: node.role is manager or worker"));
    }
    Ok(Constraint { field: lhs.to_string(), equal, value: rhs.to_string() })
}

pub fn node_matches(n: &NodeRecord, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| {
        let actual = match c.field.as_str() {
            "node.hostname" => Some(n.hostname.clone()),
            "node.id" => Some(n.id.clone()),
            "node.role" => Some(if n.role == Role::Manager { "manager".into() } else { "worker".into() }),
            f => f.strip_prefix("node.labels.").and_then(|k| n.labels.get(k).cloned()),
        };
        (actual.as_deref() == Some(c.value.as_str())) == c.equal
    })
}

/// Places one task: the eligible node running the fewest of this service's tasks, then the
/// fewest tasks overall, then by id (deterministic).
pub fn pick_node<'a>(
    eligible: &'a [NodeRecord],
    per_service: &HashMap<String, usize>,
    total: &HashMap<String, usize>,
) -> Option<&'a NodeRecord> {
    eligible.iter().min_by_key(|n| {
        (per_service.get(&n.id).copied().unwrap_or(0), total.get(&n.id).copied().unwrap_or(0), n.id.clone())
    })
}

/// Whether a pass left work for the next one (which then follows at once).
pub(in crate::daemon) type Pending = bool;

impl Daemon {
    /// One placement pass; places at most `PLACEMENTS_PER_PASS` new tasks per service.
    pub(in crate::daemon) async fn schedule(
        &self,
        services: &[Arc<ServiceRecord>],
        nodes: &[NodeRecord],
        alive: &HashSet<String>,
    ) -> Result<Pending> {
        // a swarm's leader writes only while its election key exists (see `ClusterState::set_leader`)
        let fence = match &self.cluster {
            Some(c) if c.member().is_some() => Some(c.leader_fence().ok_or(crate::store::Deposed)?),
            _ => None,
        };
        let fence = fence.as_deref();
        // the copy holds every task this leader wrote; another leader's writes (before this one
        // won the election, which is a write of its own) too
        // shared with the other loops: a task is copied only when this pass changes it
        let mut tasks: Vec<Arc<TaskRecord>> = self.shared_copy().list_shared::<TaskRecord>().await?;
        let now = Utc::now();
        let mut pending = false;
        // looked up, not searched: a search per task (or per service) made every pass of the
        // leader cost tasks × services (issue 18)
        let service_ids: HashSet<&str> = services.iter().map(|s| s.id.as_str()).collect();
        // tasks whose service is gone, whose node is gone/down/drained, or that failed: shut down
        for t in tasks.iter_mut().filter(|t| t.desired_running) {
            let node = nodes.iter().find(|n| n.id == t.node_id);
            let reason = if !service_ids.contains(t.service_id.as_str()) {
                Some("service removed")
            } else if node.is_none() {
                Some("node removed")
            } else if !alive.contains(&t.node_id) {
                Some("node is down")
            } else if node.is_some_and(|n| n.availability == Availability::Drain) {
                Some("node drained")
            } else if t.state == TaskState::Failed {
                Some("task failed")
            } else {
                None
            };
            if let Some(r) = reason {
                let t = Arc::make_mut(t);
                t.desired_running = false;
                if !alive.contains(&t.node_id) && t.state == TaskState::Running {
                    t.state = TaskState::Orphaned;
                }
                // a failed task keeps the reason its agent recorded (a pull error, an exit code)
                if t.state != TaskState::Failed || t.message.is_empty() {
                    t.message = r.to_string();
                }
                t.updated = now;
                self.shared().put_fenced(fence, &*t).await?;
            }
        }
        let mut per_node_total: HashMap<String, usize> = HashMap::new();
        for t in tasks.iter().filter(|t| t.desired_running) {
            *per_node_total.entry(t.node_id.clone()).or_default() += 1;
        }
        // each service's tasks (indices into `tasks`), grouped once
        let mut by_service: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            by_service.entry(t.service_id.clone()).or_default().push(i);
        }
        for s in services {
            let mut of_service = by_service.remove(&s.id).unwrap_or_default();
            let rolling = s.update_status.as_ref().is_some_and(|u| u.state.in_progress());
            let step = if rolling {
                let mine: Vec<TaskRecord> = of_service.iter().map(|i| (*tasks[*i]).clone()).collect();
                if self.advance_update(s, &mine, now, fence).await? {
                    // the record changed (a rollback swapped the spec): place from it next pass
                    pending = true;
                    continue;
                }
                update::plan(s, &mine, now)
            } else {
                update::Step::default()
            };
            let stop_first = rolling && update::active_config(s).order == UpdateOrder::StopFirst;
            let constraints: Vec<Constraint> =
                s.spec.constraints.iter().filter_map(|c| parse_constraint(c).ok()).collect();
            let eligible: Vec<NodeRecord> = nodes
                .iter()
                .filter(|n| {
                    alive.contains(&n.id) && n.availability == Availability::Active && node_matches(n, &constraints)
                })
                .cloned()
                .collect();
            let mut per_service: HashMap<String, usize> = HashMap::new();
            let mut by_slot: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for &i in &of_service {
                if !tasks[i].desired_running {
                    continue;
                }
                let t = &mut tasks[i];
                if t.spec.is_none() {
                    let t = Arc::make_mut(t);
                    // made before tasks carried their spec: it runs the current one
                    t.spec = Some(Arc::new(s.spec.clone()));
                    self.shared().put_fenced(fence, &*t).await?;
                }
                if t.slot > s.spec.replicas || step.shutdown.contains(&t.id) {
                    let t = Arc::make_mut(t);
                    t.desired_running = false;
                    t.message = if t.slot > s.spec.replicas { "scaled down".into() } else { String::new() };
                    t.updated = now;
                    self.shared().put_fenced(fence, &*t).await?;
                    continue;
                }
                by_slot.entry(t.slot).or_default().push(i);
            }
            // one task per slot: the newest up-to-date one, and during a start-first update the
            // old one beside it until the new one runs
            let mut slots: HashSet<u64> = HashSet::new();
            for (slot, idx) in by_slot {
                let keep = *idx
                    .iter()
                    .max_by_key(|i| {
                        let t = &tasks[**i];
                        (update::up_to_date(s, t), t.state == TaskState::Running, t.created)
                    })
                    .expect("a slot in the map has a task");
                let keep_old = !stop_first && rolling && tasks[keep].state != TaskState::Running;
                for i in idx {
                    if i != keep && !(keep_old && tasks[i].state == TaskState::Running) {
                        let t = Arc::make_mut(&mut tasks[i]);
                        t.desired_running = false;
                        t.message = String::new();
                        t.updated = now;
                        self.shared().put_fenced(fence, &*t).await?;
                    } else {
                        *per_service.entry(tasks[i].node_id.clone()).or_default() += 1;
                    }
                }
                slots.insert(slot);
            }
            let mut placed = 0;
            for slot in 1..=s.spec.replicas {
                if slots.contains(&slot) && !step.start.contains(&slot) {
                    continue;
                }
                // stop-first: the new task waits until the old one has stopped
                if stop_first
                    && of_service.iter().map(|i| &tasks[*i]).any(|t| {
                        t.slot == slot
                            && !t.desired_running
                            && matches!(t.state, TaskState::Running | TaskState::Starting)
                            && alive.contains(&t.node_id)
                    })
                {
                    continue;
                }
                if placed == PLACEMENTS_PER_PASS {
                    pending = true;
                    break;
                }
                placed += 1;
                let Some(node) = pick_node(&eligible, &per_service, &per_node_total) else {
                    break;
                };
                let t = TaskRecord {
                    id: names::new_id()[..25].to_string(),
                    service_id: s.id.clone(),
                    service_name: s.spec.name.clone(),
                    slot,
                    node_id: node.id.clone(),
                    desired_running: true,
                    state: TaskState::Assigned,
                    message: String::new(),
                    container_id: None,
                    addrs: vec![],
                    created: now,
                    updated: now,
                    spec: Some(Arc::new(s.spec.clone())),
                };
                *per_service.entry(node.id.clone()).or_default() += 1;
                *per_node_total.entry(node.id.clone()).or_default() += 1;
                self.shared().put_fenced(fence, &t).await?;
                of_service.push(tasks.len());
                tasks.push(Arc::new(t));
            }
        }
        // keep a short history of shut-down tasks per slot (service ps shows it)
        let mut by_slot: BTreeMap<(&str, u64), Vec<&TaskRecord>> = BTreeMap::new();
        for t in tasks.iter().filter(|t| {
            !t.desired_running && matches!(t.state, TaskState::Shutdown | TaskState::Failed | TaskState::Orphaned)
        }) {
            by_slot.entry((t.service_id.as_str(), t.slot)).or_default().push(t);
        }
        for (_, mut old) in by_slot {
            old.sort_by_key(|t| std::cmp::Reverse(t.updated));
            for t in old.iter().skip(MAX_HISTORY) {
                self.shared().delete_fenced::<TaskRecord>(fence, &t.id).await?;
            }
        }
        for t in tasks.iter().filter(|t| !t.desired_running && !service_ids.contains(t.service_id.as_str())) {
            if matches!(t.state, TaskState::Shutdown | TaskState::Failed) {
                self.shared().delete_fenced::<TaskRecord>(fence, &t.id).await?;
            }
        }
        Ok(pending)
    }
}

impl Daemon {
    /// Records the update status [`update::plan`] decides for `s` (a rollback also swaps the
    /// spec). The write is made only if the record is unchanged since this pass read it, so a
    /// `service update` made meanwhile is never overwritten; the next pass decides again. True
    /// when the record changed.
    async fn advance_update(
        &self,
        s: &ServiceRecord,
        mine: &[TaskRecord],
        now: chrono::DateTime<Utc>,
        fence: Option<&str>,
    ) -> Result<bool> {
        if !s.update_status.as_ref().is_some_and(|u| u.state.in_progress()) {
            return Ok(false);
        }
        let step = update::plan(s, mine, now);
        let Some(status) = step.status else { return Ok(false) };
        let mut next = s.clone();
        if step.rollback {
            update::swap_for_rollback(&mut next);
        }
        tracing::info!(service = %s.spec.name, state = ?status.state, "{}", status.message);
        next.update_status = Some(status);
        let _g = self.services.op.lock().await;
        // false: lost to a concurrent change, or no longer the leader; the next pass reads again
        self.shared().put_if_unchanged(fence, s, &next).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: format!("h{id}"),
            addr: Ipv4Addr::LOCALHOST,
            role: Role::Worker,
            availability: Availability::Active,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: Utc::now(),
        }
    }

    #[test]
    fn constraints_parse_and_match() {
        let c = parse_constraint("node.labels.zone==a").unwrap();
        assert!(node_matches(&node("1", &[("zone", "a")]), std::slice::from_ref(&c)));
        assert!(!node_matches(&node("1", &[("zone", "b")]), &[c]));
        let c = parse_constraint("node.hostname!=h2").unwrap();
        assert!(node_matches(&node("1", &[]), std::slice::from_ref(&c)));
        assert!(!node_matches(&node("2", &[]), &[c]));
        assert!(node_matches(&node("1", &[]), &[parse_constraint("node.role==worker").unwrap()]));
        // the last two: found by the constraints fuzz target (ambiguous '=')
        for bad in [
            "zone=a",
            "node.labels.==a",
            "node.color==red",
            "node.hostname==",
            "node.role==boss",
            "node.hostname!= =m",
            "node.labels.k= ==v",
        ] {
            assert!(parse_constraint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spreads_evenly_then_by_load() {
        let nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let mut per_service = HashMap::new();
        let mut total: HashMap<String, usize> = HashMap::new();
        total.insert("a".into(), 5);
        let mut placed = Vec::new();
        for _ in 0..6 {
            let n = pick_node(&nodes, &per_service, &total).unwrap().id.clone();
            *per_service.entry(n.clone()).or_insert(0) += 1;
            *total.entry(n.clone()).or_insert(0) += 1;
            placed.push(n);
        }
        for id in ["a", "b", "c"] {
            assert_eq!(placed.iter().filter(|p| *p == id).count(), 2, "{placed:?}");
        }
        assert_ne!(placed[0], "a", "the busy node is used last among equals");
        assert!(pick_node(&[], &per_service, &total).is_none());
    }
}
