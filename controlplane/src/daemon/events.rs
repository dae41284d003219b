//! The daemon's event bus (`GET /events`, `netbee events`): what changed on this node, in
//! docker's `EventMessage` shape. Operations emit after they succeed; subscribers get a bounded
//! broadcast channel (one that reads too slowly misses events and is told how many, as an
//! `events lost` record) and the last `HISTORY` events for `--since`.
use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

use chrono::Utc;
use tokio::sync::broadcast;

use super::Daemon;
use crate::{
    api::{EventActor, EventMessage},
    model::{ContainerRecord, NetworkRecord, NodeRecord},
};

/// Events kept for `--since`, and the channel's capacity per subscriber.
const HISTORY: usize = 1024;
const CHANNEL: usize = 1024;

pub struct EventBus {
    tx: broadcast::Sender<std::sync::Arc<EventMessage>>,
    /// Emitting and subscribing both take this lock, so a subscriber's history and its channel
    /// neither overlap nor leave a gap.
    history: Mutex<VecDeque<std::sync::Arc<EventMessage>>>,
    /// The swarm nodes alive at the last service pass (None before the first).
    nodes_alive: Mutex<Option<HashSet<String>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(CHANNEL).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            nodes_alive: Mutex::new(None),
        }
    }
}

impl EventBus {
    pub fn emit(&self, typ: &str, action: &str, id: &str, scope: &str, attrs: &[(&str, String)]) {
        let now = Utc::now();
        let nanos = now.timestamp_nanos_opt().unwrap_or_default();
        let msg = std::sync::Arc::new(EventMessage {
            typ: typ.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            },
            scope: scope.into(),
            time: now.timestamp(),
            time_nano: nanos,
        });
        let mut h = self.history.lock().unwrap();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(msg.clone());
        // no subscriber is not an error
        let _ = self.tx.send(msg);
    }

    /// A node whose liveness key went or came back since the last pass is reported as docker
    /// reports a node's state change (`node update`, `state.old`/`state.new`: ready, down).
    pub fn observe_nodes(&self, nodes: &[NodeRecord], alive: &HashSet<String>) {
        let mut last = self.nodes_alive.lock().unwrap();
        if let Some(before) = last.as_ref() {
            for n in nodes {
                let (was, is) = (before.contains(&n.id), alive.contains(&n.id));
                if was != is {
                    let state = |up: bool| if up { "ready" } else { "down" }.to_string();
                    self.emit(
                        "node",
                        "update",
                        &n.id,
                        "swarm",
                        &[("name", n.hostname.clone()), ("state.old", state(was)), ("state.new", state(is))],
                    );
                }
            }
        }
        *last = Some(alive.clone());
    }

    /// The kept events since `since_nano` and the live ones after them.
    pub fn subscribe(
        &self,
        since_nano: Option<i64>,
    ) -> (Vec<std::sync::Arc<EventMessage>>, broadcast::Receiver<std::sync::Arc<EventMessage>>) {
        let h = self.history.lock().unwrap();
        let past = match since_nano {
            Some(t) => h.iter().filter(|e| e.time_nano >= t).cloned().collect(),
            None => Vec::new(),
        };
        (past, self.tx.subscribe())
    }
}

impl Daemon {
    pub(super) fn emit_container(&self, c: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        let mut attrs = vec![("name", c.name.clone()), ("image", c.config.image.clone())];
        attrs.extend(extra.iter().cloned());
        self.events.emit("container", action, &c.id, "local", &attrs);
    }

    pub(super) fn emit_network(&self, n: &NetworkRecord, action: &str, container: Option<&ContainerRecord>) {
        let mut attrs = vec![("name", n.name.clone()), ("type", n.driver.clone())];
        if let Some(c) = container {
            attrs.push(("container", c.id.clone()));
            attrs.push(("containerName", c.name.clone()));
        }
        let scope = if n.driver == "overlay" { "swarm" } else { "local" };
        self.events.emit("network", action, &n.id, scope, &attrs);
    }

    /// `network connect` for each of a started container's networks, as docker reports them.
    pub(super) fn emit_endpoints(&self, c: &ContainerRecord, action: &str) {
        let Ok(nets) = self.networks() else { return };
        for ep in &c.endpoints {
            if let Some(n) = nets.iter().find(|n| n.id == ep.network_id) {
                self.emit_network(n, action, Some(c));
            }
        }
    }
}
