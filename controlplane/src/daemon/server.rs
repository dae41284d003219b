//! HTTP routes of the API, on a root-only unix socket.
use std::{collections::HashMap, os::unix::fs::PermissionsExt as _, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    routing::{delete, get, post},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::info;

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult, ContainerCreate, NetworkConnect, NetworkCreate},
    model::Status,
};

type D = State<Arc<Daemon>>;
type Q = Query<HashMap<String, String>>;

/// A JSON body whose rejection (malformed, wrong type, oversized) is a 400 with our error shape.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e @ JsonRejection::JsonDataError(_)) | Err(e @ JsonRejection::JsonSyntaxError(_)) => {
                Err(ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
            }
            Err(e) => Err(ApiError { status: e.status(), message: e.body_text() }),
        }
    }
}

pub async fn serve(d: Arc<Daemon>) -> Result<()> {
    let path = d.cfg.socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/version", get(version))
        .route("/networks", get(network_list))
        .route("/networks/create", post(network_create))
        .route("/networks/{id}", get(network_inspect).delete(network_remove))
        .route("/networks/{id}/connect", post(network_connect))
        .route("/networks/{id}/disconnect", post(network_disconnect))
        .route("/containers/json", get(container_list))
        .route("/containers/create", post(container_create))
        .route("/containers/{id}/json", get(container_inspect))
        .route("/containers/{id}/start", post(container_start))
        .route("/containers/{id}/stop", post(container_stop))
        .route("/containers/{id}/kill", post(container_kill))
        .route("/containers/{id}/logs", get(container_logs))
        .route("/containers/{id}/wait", post(container_wait))
        .route("/containers/{id}", delete(container_remove))
        .route("/datapath/stats", get(datapath_stats))
        .route("/datapath/conntrack/age", post(conntrack_age))
        .route("/datapath/conntrack/gc", post(conntrack_gc))
        .route("/services", get(service_list))
        .route("/services/create", post(service_create))
        .route("/services/{id}", get(service_inspect).delete(service_remove))
        .route("/services/{id}/update", post(service_update))
        .route("/services/{id}/tasks", get(service_tasks))
        .route("/swarm/init", post(swarm_init))
        .route("/swarm/join", post(swarm_join))
        .route("/swarm/leave", post(swarm_leave))
        .route("/swarm/join-token", get(swarm_join_token))
        .route("/nodes", get(node_list))
        .route("/nodes/{id}", get(node_inspect).delete(node_remove))
        .route("/nodes/{id}/update", post(node_update))
        .route("/nodes/{id}/promote", post(node_promote))
        .route("/nodes/{id}/demote", post(node_demote))
        .with_state(d);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down; containers and the datapath keep running");
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn version() -> Json<Value> {
    Json(json!({ "Version": env!("CARGO_PKG_VERSION"), "ApiVersion": "1.0", "Os": "linux" }))
}

async fn network_list(State(d): D) -> ApiResult<Json<Value>> {
    let nets = d.networks()?;
    let v: Vec<Value> = nets.iter().map(|n| d.network_inspect(n)).collect::<Result<_>>()?;
    Ok(Json(Value::Array(v)))
}

async fn network_create(State(d): D, Body(req): Body<NetworkCreate>) -> ApiResult<Json<Value>> {
    let n = d.network_create(req).await?;
    Ok(Json(json!({ "Id": n.id, "Warning": "" })))
}

async fn network_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let n = d.find_network(&id)?;
    Ok(Json(d.network_inspect(&n)?))
}

async fn network_remove(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    d.network_remove(&id).await?;
    Ok(Json(Value::Null))
}

async fn network_connect(
    State(d): D,
    Path(id): Path<String>,
    Body(req): Body<NetworkConnect>,
) -> ApiResult<Json<Value>> {
    d.network_connect(&id, req).await?;
    Ok(Json(Value::Null))
}

async fn network_disconnect(
    State(d): D,
    Path(id): Path<String>,
    Body(req): Body<NetworkConnect>,
) -> ApiResult<Json<Value>> {
    d.network_disconnect(&id, &req.container).await?;
    Ok(Json(Value::Null))
}

async fn container_list(State(d): D, Query(q): Q) -> ApiResult<Json<Value>> {
    let all = q.get("all").is_some_and(|v| v == "1" || v == "true");
    let nets = d.networks()?;
    let mut cs = d.containers()?;
    cs.sort_by_key(|c| std::cmp::Reverse(c.created));
    let v: Vec<Value> =
        cs.iter().filter(|c| all || c.state.status == Status::Running).map(|c| d.container_summary(c, &nets)).collect();
    Ok(Json(Value::Array(v)))
}

async fn container_create(State(d): D, Body(req): Body<ContainerCreate>) -> ApiResult<Json<Value>> {
    let c = d.container_create(req).await?;
    Ok(Json(json!({ "Id": c.id, "Name": c.name, "Warnings": [] })))
}

async fn container_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let c = d.find_container(&id)?;
    Ok(Json(d.container_inspect(&c)?))
}

async fn container_start(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    d.container_start(&id).await?;
    Ok(Json(Value::Null))
}

fn query_u64(q: &HashMap<String, String>, k: &str, default: u64) -> ApiResult<u64> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {k}"))),
    }
}

async fn container_stop(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<Value>> {
    d.container_stop(&id, query_u64(&q, "t", 10)?).await?;
    Ok(Json(Value::Null))
}

async fn container_kill(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<Value>> {
    d.container_kill(&id, q.get("signal").map(String::as_str).unwrap_or("KILL")).await?;
    Ok(Json(Value::Null))
}

async fn container_remove(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<Value>> {
    let force = q.get("force").is_some_and(|v| v == "1" || v == "true");
    d.container_remove(&id, force).await?;
    Ok(Json(Value::Null))
}

async fn container_wait(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let code = d.container_wait(&id).await?;
    Ok(Json(json!({ "StatusCode": code })))
}

async fn container_logs(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<Value>> {
    let c = d.find_container(&id)?;
    Ok(Json(d.container_logs(&c, query_u64(&q, "stdout_offset", 0)?, query_u64(&q, "stderr_offset", 0)?)?))
}

async fn datapath_stats(State(d): D) -> ApiResult<Json<Value>> {
    let (stats, drops, ct_entries, capacity) = {
        let dp = d.dp.lock().unwrap();
        let (s, dr) = dp.counters()?;
        (s, dr, dp.ct.keys().count(), dp.ct_capacity())
    };
    let created = stats.iter().find(|(n, _)| n == "ct_created").map(|(_, v)| *v).unwrap_or(0);
    let removed = d.ct_gc_removed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(json!({
        "Counters": stats.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
        "Drops": drops.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
        "Conntrack": {
            "Entries": ct_entries,
            "Capacity": capacity,
            "EntriesCreated": created,
            "EntriesCollected": removed,
            // LRU evictions are silent in the kernel: whatever was created and neither collected
            // nor still present was evicted to make room
            "Evicted": created.saturating_sub(removed).saturating_sub(ct_entries as u64),
        },
    })))
}

async fn swarm_init(State(d): D, Body(v): Body<Value>) -> ApiResult<Json<Value>> {
    Ok(Json(d.swarm_init(v["AdvertiseAddr"].as_str()).await?))
}

async fn swarm_join(State(d): D, Body(v): Body<Value>) -> ApiResult<Json<Value>> {
    let token = v["Token"].as_str().unwrap_or_default();
    let remote = v["RemoteAddr"].as_str().unwrap_or_default();
    if token.is_empty() || remote.is_empty() {
        return Err(ApiError::bad_request("swarm join needs --token and the manager's address"));
    }
    d.swarm_join(token, remote, v["AdvertiseAddr"].as_str()).await?;
    Ok(Json(json!({ "Message": "This node joined a swarm as a node." })))
}

async fn swarm_leave(State(d): D, Query(q): Q) -> ApiResult<Json<Value>> {
    d.swarm_leave(q.get("force").is_some_and(|v| v == "1" || v == "true")).await?;
    Ok(Json(Value::Null))
}

async fn swarm_join_token(State(d): D, Query(q): Q) -> ApiResult<Json<Value>> {
    Ok(Json(d.join_token(q.get("role").map(String::as_str).unwrap_or("worker")).await?))
}

async fn node_list(State(d): D) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(d.node_list().await?)))
}

async fn node_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(d.node_inspect(&id).await?))
}

async fn node_update(State(d): D, Path(id): Path<String>, Body(v): Body<Value>) -> ApiResult<Json<Value>> {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
    };
    d.node_update(&id, v["Availability"].as_str(), &list("LabelAdd"), &list("LabelRm")).await?;
    Ok(Json(Value::Null))
}

async fn node_promote(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    d.node_set_role(&id, crate::model::Role::Manager).await?;
    Ok(Json(Value::Null))
}

async fn node_demote(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    d.node_set_role(&id, crate::model::Role::Worker).await?;
    Ok(Json(Value::Null))
}

async fn node_remove(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<Value>> {
    d.node_remove(&id, q.get("force").is_some_and(|v| v == "1" || v == "true")).await?;
    Ok(Json(Value::Null))
}

async fn service_list(State(d): D) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(d.service_list().await?)))
}

async fn service_create(State(d): D, Body(v): Body<Value>) -> ApiResult<Json<Value>> {
    let s = d.service_create(&v).await?;
    Ok(Json(json!({ "ID": s.id })))
}

async fn service_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(d.service_inspect(&id).await?))
}

async fn service_update(State(d): D, Path(id): Path<String>, Body(v): Body<Value>) -> ApiResult<Json<Value>> {
    let s = d.service_update(&id, &v).await?;
    Ok(Json(json!({ "ID": s.id })))
}

async fn service_remove(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    d.service_remove(&id).await?;
    Ok(Json(Value::Null))
}

async fn service_tasks(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(d.service_tasks(&id).await?)))
}

async fn conntrack_age(State(d): D, Query(q): Q) -> ApiResult<Json<Value>> {
    let n = d.age_conntrack(query_u64(&q, "seconds", 0)?)?;
    Ok(Json(json!({ "Aged": n })))
}

async fn conntrack_gc(State(d): D) -> ApiResult<Json<Value>> {
    let (removed, live) = d.gc_once()?;
    Ok(Json(json!({ "Removed": removed, "Live": live })))
}
