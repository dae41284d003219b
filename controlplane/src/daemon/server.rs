//! HTTP routes of the API, on a root-only unix socket.
use std::{collections::HashMap, os::unix::fs::PermissionsExt as _, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    routing::{delete, get, post},
};
use serde::de::DeserializeOwned;
use tracing::info;

use super::Daemon;
use crate::{
    api::{
        ApiError, ApiResult, ConntrackAgeResponse, ConntrackGcResponse, ContainerCreateRequest,
        ContainerCreateResponse, ContainerInspectResponse, ContainerLogsResponse, ContainerSummary,
        ContainerTopResponse, ContainerWaitResponse, CtFlow, DatapathStats, DiskUsage, EndpointEntry,
        ExecCreateRequest, ExecCreateResponse, ExecInspectResponse, ExecStartRequest, ImageDeleteResponseItem,
        ImageIdResponse, ImageImportRequest, ImageLoadRequest, ImageLoadResponse, ImagePruneResponse, ImageSaveRequest,
        ImageSummary, LbFrontend, Network, NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse,
        NetworkDisconnectRequest, Node, NodeUpdateRequest, Service, ServiceCreateRequest, ServiceCreateResponse,
        ServiceUpdateRequest, ServiceUpdateResponse, Swarm, SwarmInitRequest, SwarmJoinRequest, SwarmTask, SystemInfo,
        SystemVersion, Task,
    },
    metrics::timed,
    model::Status,
};

type D = State<Arc<Daemon>>;
type Q = Query<HashMap<String, String>>;

/// Routes that answer nothing: `null` on the wire.
type NoContent = ApiResult<Json<()>>;

/// A JSON body whose rejection is an [`ApiError`] with our error shape: 400 when it is malformed,
/// of the wrong type or not JSON, 413 when it is too large.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e @ JsonRejection::JsonDataError(_)) | Err(e @ JsonRejection::JsonSyntaxError(_)) => {
                Err(ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
            }
            Err(e) => Err(rejection(e.status(), e.body_text())),
        }
    }
}

/// The kind of an extractor's other rejections (no JSON content type, a body over the limit, a
/// body that could not be read), by the status axum gives them.
fn rejection(status: axum::http::StatusCode, message: String) -> ApiError {
    match status {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(message),
        s if s.is_server_error() => ApiError::internal(message),
        _ => ApiError::bad_request(message),
    }
}

/// How long requests in flight may take once the daemon is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn serve(d: Arc<Daemon>) -> Result<()> {
    let path = d.cfg.socket.clone();
    let api_tls = d.cfg.api_tls.clone();
    if let Some(dir) = path.parent() {
        crate::paths::make_dir(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = Router::new()
        .route("/_ping", get(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/networks", get(network_list))
        .route("/networks/create", post(network_create))
        .route("/networks/prune", post(network_prune))
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
        .route("/containers/{id}/restart", post(container_restart))
        .route("/containers/{id}/rename", post(container_rename))
        .route("/containers/{id}/wait", post(container_wait))
        .route("/containers/{id}/top", get(container_top))
        .route("/system/df", get(system_df))
        .route("/containers/{id}/attach", post(container_attach))
        .route("/containers/{id}/resize", post(container_resize))
        .route("/containers/{id}/exec", post(exec_create))
        .route("/exec/{id}/start", post(exec_start))
        .route("/exec/{id}/resize", post(exec_resize))
        .route("/exec/{id}/json", get(exec_inspect))
        .route("/containers/{id}", delete(container_remove))
        .route("/images/json", get(image_list))
        .route("/images/load", post(image_load))
        .route("/images/import", post(image_import))
        .route("/images/save", post(image_save))
        .route("/images/get", get(image_export))
        .route("/images/prune", post(image_prune))
        .route("/images/create", post(image_create))
        // docker puts image names in the path as they are, slashes and all: the suffix says
        // which operation (`/json`, `/tag`), none is the image itself (DELETE)
        .route("/images/{*rest}", get(image_get).delete(image_remove).post(image_post))
        .route("/datapath/stats", get(datapath_stats))
        .route("/datapath/lb", get(datapath_lb))
        .route("/datapath/ct", get(datapath_ct))
        .route("/datapath/endpoints", get(datapath_endpoints))
        .route("/datapath/conntrack/age", post(conntrack_age))
        .route("/datapath/conntrack/gc", post(conntrack_gc))
        .route("/datapath/monitor", get(datapath_monitor))
        .route("/events", get(events))
        .route("/services", get(service_list))
        .route("/services/create", post(service_create))
        .route("/services/{id}", get(service_inspect).delete(service_remove))
        .route("/services/{id}/update", post(service_update))
        .route("/services/{id}/tasks", get(service_tasks))
        .route("/services/{id}/logs", get(service_logs))
        // netbee keeps no swarm secrets or configs: their lists are empty (`docker stack rm` reads
        // them to remove a stack's)
        .route("/secrets", get(no_swarm_objects))
        .route("/configs", get(no_swarm_objects))
        .route("/tasks", get(task_list))
        .route("/tasks/{id}", get(task_inspect))
        .route("/swarm", get(swarm_inspect))
        .route("/swarm/init", post(swarm_init))
        .route("/swarm/join", post(swarm_join))
        .route("/swarm/leave", post(swarm_leave))
        .route("/swarm/update", post(swarm_update))
        .route("/nodes", get(node_list))
        .route("/nodes/{id}", get(node_inspect).delete(node_remove))
        .route("/nodes/{id}/update", post(node_update))
        .with_state(d);
    // the version prefix is stripped before routing: a layer on the routes themselves would run
    // after the router matched the prefixed path
    let app = Router::new().fallback_service(app).layer(axum::middleware::from_fn(engine_api_version));
    // the same routes on TCP, behind TLS with client certificates, when configured
    let tls_server = match &api_tls {
        Some(tls) => Some(super::api_tls::bind(tls, app.clone()).await?),
        None => None,
    };
    let tls_server = async move {
        match tls_server {
            Some(serving) => serving.await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down; containers and the datapath keep running");
        let _ = stopping.send(());
    };
    // requests in flight get a moment to finish; a long one (a `wait`, a stuck operation) does
    // not keep the daemon from stopping: everything it does is recorded before it answers
    let grace = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = axum::serve(listener, app).with_graceful_shutdown(shutdown) => r?,
        _ = grace => info!("requests still running after {SHUTDOWN_GRACE:?}: stopping without them"),
        () = tls_server => {}
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// docker's version negotiation on every request: a supported `/v1.NN/` prefix is removed (the
/// routes are the same in every version), another is docker's 400; every answer carries the
/// headers docker's daemon sends.
async fn engine_api_version(mut req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut resp = match crate::api::version::strip_version_prefix(req.uri().path()) {
        Err(e) => e.into_response(),
        Ok(stripped) => {
            if let Some(rest) = stripped {
                let pq = match req.uri().query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_string(),
                };
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = pq.parse().ok();
                match axum::http::Uri::from_parts(parts) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => return ApiError::bad_request("invalid request path").into_response(),
                }
            }
            next.run(req).await
        }
    };
    let h = resp.headers_mut();
    h.insert("api-version", axum::http::HeaderValue::from_static(crate::api::API_VERSION));
    h.insert("docker-experimental", axum::http::HeaderValue::from_static("false"));
    h.insert("ostype", axum::http::HeaderValue::from_static("linux"));
    h.insert("server", axum::http::HeaderValue::from_static(concat!("netbee/", env!("CARGO_PKG_VERSION"), " (linux)")));
    resp
}

/// `GET|HEAD /_ping`: what the docker CLI reads before every command (the version headers come
/// from [`engine_api_version`]). `Builder-Version: 1`: netbee has no BuildKit.
async fn ping(State(d): D) -> axum::response::Response {
    let mut b = axum::response::Response::builder()
        .header("builder-version", "1")
        .header("cache-control", "no-cache, no-store, must-revalidate")
        .header("pragma", "no-cache")
        .header("content-type", "text/plain; charset=utf-8");
    if let Some(s) = d.swarm_ping_state().await {
        b = b.header("swarm", s);
    }
    b.body(axum::body::Body::from("OK")).expect("constant headers")
}

async fn version(State(d): D) -> Json<SystemVersion> {
    Json(d.system_version())
}

async fn info(State(d): D) -> ApiResult<Json<SystemInfo>> {
    Ok(Json(d.system_info().await?))
}

/// `GET /networks?filters=...`: docker's keys `name` (substring), `id` (prefix), `driver`,
/// `scope`, `type` (`builtin`/`custom`) and `label`.
async fn network_list(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<Network>>> {
    use crate::api::filters::{Filters, id_matches, name_matches};
    let f = Filters::parse(
        q.get("filters").map(String::as_str),
        &["name", "id", "driver", "scope", "type", "label", "dangling"],
    )?;
    let nets = d.networks()?;
    let all: Vec<Network> = nets.iter().map(|n| d.network_inspect(n)).collect::<Result<_>>()?;
    Ok(Json(
        all.into_iter()
            .filter(|n| {
                let builtin = crate::network::PREDEFINED.contains(&n.name.as_str());
                f.any("name", |v| name_matches(&n.name, v))
                    && f.any("id", |v| id_matches(&n.id, v))
                    && f.any("driver", |v| v == n.driver)
                    && f.any("scope", |v| v == n.scope)
                    && f.any("type", |v| (v == "builtin") == builtin)
                    && f.any("dangling", |v| (v == "true" || v == "1") == (n.containers.is_empty() && !builtin))
                    && f.labels_match(&n.labels)
            })
            .collect(),
    ))
}

async fn network_create(
    State(d): D,
    Body(mut req): Body<NetworkCreateRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<NetworkCreateResponse>)> {
    req.normalize()?;
    let n = timed("network_create", d.network_create(req)).await?;
    Ok((axum::http::StatusCode::CREATED, Json(NetworkCreateResponse { id: n.id, warning: String::new() })))
}

/// `POST /networks/prune`: removes the user-defined local networks no running container is
/// on (docker's `label` filters select among them).
async fn network_prune(State(d): D, Query(q): Q) -> ApiResult<Json<crate::api::NetworkPruneResponse>> {
    let f = crate::api::filters::Filters::parse(q.get("filters").map(String::as_str), &["label", "until"])?;
    if !f.get("until").is_empty() {
        return Err(ApiError::bad_request("network prune: the until filter is not supported"));
    }
    let mut deleted = Vec::new();
    for n in d.networks()? {
        let v = d.network_inspect(&n)?;
        if crate::network::PREDEFINED.contains(&v.name.as_str())
            || v.scope != "local"
            || !v.containers.is_empty()
            || !f.labels_match(&v.labels)
        {
            continue;
        }
        match d.network_remove(&n.id).await {
            Ok(()) => deleted.push(v.name),
            // a container joined it meanwhile: it is in use, not pruned
            Err(e) if e.kind == crate::api::ErrorKind::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(crate::api::NetworkPruneResponse { networks_deleted: deleted }))
}

async fn network_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Network>> {
    let n = d.network_find(&id).await?;
    Ok(Json(d.network_inspect(&n)?))
}

async fn network_remove(State(d): D, Path(id): Path<String>) -> NoContent {
    timed("network_remove", d.network_remove(&id)).await?;
    Ok(Json(()))
}

async fn network_connect(State(d): D, Path(id): Path<String>, Body(mut req): Body<NetworkConnectRequest>) -> NoContent {
    req.normalize();
    timed("network_connect", d.network_connect(&id, req)).await?;
    Ok(Json(()))
}

async fn network_disconnect(
    State(d): D,
    Path(id): Path<String>,
    Body(req): Body<NetworkDisconnectRequest>,
) -> NoContent {
    timed("network_disconnect", d.network_disconnect(&id, &req.container)).await?;
    Ok(Json(()))
}

/// `GET /containers/json?all=1&filters=...`: docker's keys `id` (prefix), `name` (substring),
/// `status`, `exited`, `label`, `network` and `ancestor` (the image as named).
async fn container_list(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<ContainerSummary>>> {
    use crate::api::filters::{Filters, id_matches, name_matches};
    let all = q.get("all").is_some_and(|v| v == "1" || v == "true" || v == "True");
    let f = Filters::parse(
        q.get("filters").map(String::as_str),
        &["id", "name", "status", "exited", "label", "network", "ancestor"],
    )?;
    for st in f.get("status") {
        if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter 'status={st}'")));
        }
    }
    let nets = d.networks()?;
    let mut cs = d.containers()?;
    cs.sort_by_key(|c| std::cmp::Reverse(c.created));
    // a status filter lists stopped containers too, as docker's
    let all = all || !f.get("status").is_empty() || !f.get("exited").is_empty();
    Ok(Json(
        cs.iter()
            .filter(|c| all || c.state.status == Status::Running)
            .map(|c| d.container_summary(c, &nets))
            .filter(|s| {
                let name = s.names.first().map(String::as_str).unwrap_or("");
                f.any("id", |v| id_matches(&s.id, v))
                    && f.any("name", |v| name_matches(name, v))
                    && f.any("status", |v| v == s.state)
                    && f.any("exited", |v| s.state == "exited" && s.status.starts_with(&format!("Exited ({v})")))
                    && f.any("network", |v| s.networks.iter().any(|n| n == v))
                    && f.any("ancestor", |v| s.image == v)
                    && f.labels_match(&s.labels)
            })
            .collect(),
    ))
}

/// docker's CLI pulls the image and retries on any 404 from create, so only a missing image is
/// a 404 here; whatever else is missing (a network) is the request's fault.
async fn container_create(
    State(d): D,
    Query(q): Q,
    Body(mut req): Body<ContainerCreateRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<ContainerCreateResponse>)> {
    req.normalize(q.get("name").map(String::as_str))?;
    let c = timed("container_create", d.container_create(req)).await.map_err(|e| {
        if e.kind == crate::api::ErrorKind::NotFound && !e.message.starts_with("No such image") {
            ApiError::bad_request(e.message)
        } else {
            e
        }
    })?;
    Ok((axum::http::StatusCode::CREATED, Json(ContainerCreateResponse { id: c.id, name: c.name, warnings: vec![] })))
}

async fn container_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<ContainerInspectResponse>> {
    let c = d.find_container(&id)?;
    Ok(Json(d.container_inspect(&c)?))
}

async fn container_start(State(d): D, Path(id): Path<String>) -> NoContent {
    timed("container_start", d.container_start(&id)).await?;
    Ok(Json(()))
}

fn query_u64(q: &HashMap<String, String>, k: &str, default: u64) -> ApiResult<u64> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {k}"))),
    }
}

async fn container_stop(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    timed("container_stop", d.container_stop(&id, query_u64(&q, "t", 10)?)).await?;
    Ok(Json(()))
}

async fn container_kill(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    timed("container_kill", d.container_kill(&id, q.get("signal").map(String::as_str).unwrap_or("KILL"))).await?;
    Ok(Json(()))
}

async fn container_remove(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    let force = q.get("force").is_some_and(|v| v == "1" || v == "true");
    timed("container_remove", d.container_remove(&id, force)).await?;
    Ok(Json(()))
}

async fn container_restart(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    d.container_restart(&id, query_u64(&q, "t", 10)?).await?;
    Ok(Json(()))
}

/// `GET /containers/{id}/top?ps_args=ARGS` (docker's default `-ef`).
async fn container_top(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<Json<ContainerTopResponse>> {
    let c = d.find_container(&id)?;
    let args = q.get("ps_args").map(|a| a.trim()).filter(|a| !a.is_empty()).unwrap_or("-ef");
    Ok(Json(d.container_top(&c, args).await?))
}

async fn system_df(State(d): D) -> ApiResult<Json<DiskUsage>> {
    Ok(Json(d.system_df()?))
}

async fn container_rename(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    d.container_rename(&id, q.get("name").map(String::as_str).unwrap_or("")).await?;
    Ok(Json(()))
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`. The headers go out at
/// once and the body when the condition holds: `docker run` waits for the headers before it
/// starts the container.
async fn container_wait(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<axum::response::Response> {
    use super::engine::WaitCondition;
    let cond = WaitCondition::parse(q.get("condition").map(String::as_str))?;
    // a container that is not there is a 404 now (or, for netbee's `run --rm`, its kept exit)
    if let Err(e) = d.find_container(&id)
        && (cond != WaitCondition::NotRunning || !d.removed_exits.lock().unwrap().contains_key(&id))
    {
        return Err(e);
    }
    let result = async move {
        let r = d.container_wait_for(&id, cond).await;
        let body = match r {
            Ok(code) => ContainerWaitResponse { status_code: code.into(), error: None },
            Err(e) => {
                ContainerWaitResponse { status_code: -1, error: Some(crate::api::WaitExitError { message: e.message }) }
            }
        };
        json_line(&body)
    };
    // a newline first (JSON decoders skip it) so that the headers leave at once
    use futures::StreamExt as _;
    let chunks = futures::stream::once(async { b"\n".to_vec() }).chain(futures::stream::once(result));
    let mut resp = ndjson(chunks);
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The answer that hands the connection over to a hijacked stream (docker's `101 UPGRADED`):
/// raw bytes for a terminal, docker's frames otherwise.
fn upgraded(tty: bool) -> axum::response::Response {
    let kind = if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    axum::response::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "tcp")
        .header("content-type", kind)
        .body(axum::body::Body::empty())
        .expect("constant headers")
}

/// A hijack needs the client to ask for it (docker's clients send `Upgrade: tcp`).
fn wants_upgrade(req: &Request) -> ApiResult<()> {
    if req.headers().contains_key("upgrade") {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "this stream is served over a hijacked connection: send Connection: Upgrade, Upgrade: tcp",
        ))
    }
}

/// `POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1[&detachKeys=...]`: the live
/// streams of the container, from now on (of a container not running, from its next start).
async fn container_attach(
    State(d): D,
    Path(id): Path<String>,
    Query(q): Q,
    mut req: Request,
) -> ApiResult<axum::response::Response> {
    d.find_container(&id)?;
    if !query_bool(&q, "stream") {
        return Err(ApiError::bad_request("netbee attaches to the live streams only: ask with stream=1"));
    }
    let hello = crate::runtime::attach::Hello {
        stdin: query_bool(&q, "stdin"),
        stdout: query_bool(&q, "stdout"),
        stderr: query_bool(&q, "stderr"),
    };
    let keys = crate::api::parse_detach_keys(q.get("detachKeys").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    wants_upgrade(&req)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (tty, attach) = d.container_attach(&id, hello, keys).await?;
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            attach.serve(up).await;
        }
    });
    Ok(upgraded(tty))
}

/// docker's `h` and `w` of a resize.
fn query_size(q: &HashMap<String, String>) -> ApiResult<(u16, u16)> {
    let get = |k: &str| -> ApiResult<u16> {
        q.get(k)
            .map(|v| v.parse().map_err(|_| ApiError::bad_request(format!("invalid {k} {v:?}: expected 0 to 65535"))))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok((get("h")?, get("w")?))
}

async fn container_resize(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<axum::http::StatusCode> {
    let (h, w) = query_size(&q)?;
    d.container_resize(&id, h, w).await?;
    Ok(axum::http::StatusCode::OK)
}

async fn exec_create(
    State(d): D,
    Path(id): Path<String>,
    Body(req): Body<ExecCreateRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<ExecCreateResponse>)> {
    let id = d.exec_create(&id, req)?;
    Ok((axum::http::StatusCode::CREATED, Json(ExecCreateResponse { id })))
}

/// `POST /exec/{id}/start` `{"Detach","Tty","ConsoleSize"}`: hijacked unless `Detach`.
async fn exec_start(State(d): D, Path(id): Path<String>, mut req: Request) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let upgrade = wants_upgrade(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let start: ExecStartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExecStartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    if !start.detach {
        upgrade?;
    }
    match d.exec_start(&id, start).await? {
        super::exec::ExecStarted::Detached => Ok(axum::http::StatusCode::OK.into_response()),
        super::exec::ExecStarted::Attached { tty, session } => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => {
                        let ended = super::attach::serve(up, session).await;
                        tracing::debug!(?ended, "exec session ended");
                    }
                    // nobody to serve: the output is read on, so the process does not block
                    Err(_) => super::exec::drain(session.output).await,
                }
            });
            Ok(upgraded(tty))
        }
    }
}

async fn exec_resize(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<axum::http::StatusCode> {
    let (h, w) = query_size(&q)?;
    d.exec_resize(&id, h, w)?;
    Ok(axum::http::StatusCode::OK)
}

async fn exec_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<ExecInspectResponse>> {
    Ok(Json(d.exec_inspect(&id)?))
}

/// `GET /containers/{id}/logs`: docker's multiplexed stream (`stdout=1&stderr=1`, `follow`,
/// `timestamps`, `tail`), or netbee's JSON chunks when the CLI asks by offsets.
async fn container_logs(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;

    use super::engine::{frame, lines};
    let c = d.find_container(&id)?;
    if q.contains_key("stdout_offset") || q.contains_key("stderr_offset") {
        let logs = d.container_logs(&c, query_u64(&q, "stdout_offset", 0)?, query_u64(&q, "stderr_offset", 0)?)?;
        return Ok(Json::<ContainerLogsResponse>(logs).into_response());
    }
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "1" || v == "true" || v == "True");
    let want = [flag("stdout"), flag("stderr")];
    if !want[0] && !want[1] {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let (follow, stamps) = (flag("follow"), flag("timestamps"));
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid tail {n:?}")))?),
    };
    const FILES: [&str; 2] = ["stdout.log", "stderr.log"];
    // a terminal's output is one raw stream, as docker's CLI reads it (it knows from Config.Tty)
    let raw = c.config.stdio.tty;
    let frame = move |stream: u8, bytes: &[u8]| if raw { bytes.to_vec() } else { frame(stream, bytes) };
    let stamp = move |line: &[u8], t: chrono::DateTime<chrono::Utc>| -> Vec<u8> {
        if !stamps {
            return line.to_vec();
        }
        let mut v = format!("{} ", t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)).into_bytes();
        v.extend_from_slice(line);
        v
    };
    // what is there now; netbee's logs keep no time per line, so the lines already written are
    // stamped with the time their file was last written
    let mut history = Vec::new();
    let mut offsets = [0u64; 2];
    for (i, file) in FILES.iter().enumerate() {
        let (bytes, _) = d.log_bytes(&c.id, file, 0);
        let (ls, used) = lines(&bytes, tail);
        let t = d.log_mtime(&c.id, file).unwrap_or_else(chrono::Utc::now);
        if want[i] {
            for l in ls {
                history.push(frame(i as u8 + 1, &stamp(l, t)));
            }
            // without --follow an unfinished last line is shown as it is
            if !follow && used < bytes.len() {
                history.push(frame(i as u8 + 1, &stamp(&bytes[used..], t)));
            }
        }
        offsets[i] = used as u64;
    }
    let history = futures::stream::iter(history);
    let live = futures::stream::unfold((d, c.id, offsets, follow), move |(d, id, mut offs, going)| async move {
        if !going {
            return None;
        }
        loop {
            let running = d.container_running(&id);
            let mut out = Vec::new();
            for (i, file) in FILES.iter().enumerate() {
                let (bytes, _) = d.log_bytes(&id, file, offs[i]);
                let (ls, used) = lines(&bytes, None);
                let now = chrono::Utc::now();
                if want[i] {
                    out.extend(ls.iter().flat_map(|l| frame(i as u8 + 1, &stamp(l, now))));
                    if !running && used < bytes.len() {
                        out.extend(frame(i as u8 + 1, &stamp(&bytes[used..], now)));
                    }
                }
                offs[i] += if running { used } else { bytes.len() } as u64;
            }
            if !out.is_empty() {
                return Some((out, (d, id, offs, running)));
            }
            if !running {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    use futures::StreamExt as _;
    let mut resp = ndjson(history.chain(live));
    let kind = if raw { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static(kind));
    Ok(resp)
}

async fn datapath_stats(State(d): D) -> ApiResult<Json<DatapathStats>> {
    let (stats, drops, ct_entries, capacity) = {
        let dp = d.dp.lock().unwrap();
        let (s, dr) = dp.counters()?;
        (s, dr, dp.ct.keys().count() as u64, dp.ct_capacity())
    };
    let conntrack = d.conntrack_stats(&stats, ct_entries, capacity);
    Ok(Json(DatapathStats { counters: stats.into_iter().collect(), drops: drops.into_iter().collect(), conntrack }))
}

async fn datapath_lb(State(d): D) -> ApiResult<Json<Vec<LbFrontend>>> {
    Ok(Json(d.datapath_lb().await))
}

async fn datapath_ct(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<CtFlow>>> {
    let limit = q.get("limit").map(|_| query_u64(&q, "limit", 0)).transpose()?.map(|n| n as usize);
    let service = q.get("service").map(String::as_str).filter(|s| !s.is_empty());
    Ok(Json(d.datapath_ct(service, limit).await))
}

async fn datapath_endpoints(State(d): D) -> ApiResult<Json<Vec<EndpointEntry>>> {
    Ok(Json(d.datapath_endpoints().await))
}

/// A newline-delimited JSON answer, sent as its records come (docker's `/events` style).
fn ndjson<S>(records: S) -> axum::response::Response
where
    S: futures::Stream<Item = Vec<u8>> + Send + 'static,
{
    use futures::StreamExt as _;
    let body = axum::body::Body::from_stream(
        records.map(|line| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line))),
    );
    axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .expect("a response of a body and a constant header")
}

fn json_line<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).expect("API records serialize");
    line.push(b'\n');
    line
}

/// `GET /datapath/monitor?type=drop|lb|trace&container=C&service=S`: drops, load-balancing
/// decisions and traced packets as the datapath reports them, until the client goes. A trace
/// follows the container's addresses, or the service's VIPs and its tasks' addresses as they
/// are when it attaches, or every packet.
async fn datapath_monitor(State(d): D, Query(q): Q) -> ApiResult<axum::response::Response> {
    let kinds = crate::monitor::kinds_mask(q.get("type").map(String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut traced: Option<super::monitor::TraceScope> = None;
    let host_ifaces = |c: &crate::model::ContainerRecord| -> Vec<u32> {
        c.endpoints.iter().filter_map(|e| nix::net::if_::if_nametoindex(e.host_ifname().as_str()).ok()).collect()
    };
    let container = match q.get("container") {
        Some(c) => {
            let c = d.find_container(c)?;
            let t = traced.get_or_insert_with(Default::default);
            t.addrs.extend(c.endpoints.iter().map(|e| e.ip));
            t.ifaces.extend(host_ifaces(&c));
            Some(c.name)
        }
        None => None,
    };
    let service = match q.get("service") {
        Some(s) => {
            let s = d.find_service(s).await?;
            let tasks: Vec<crate::model::TaskRecord> = d.shared().list().await?;
            let tasks: Vec<&crate::model::TaskRecord> = tasks.iter().filter(|t| t.service_id == s.id).collect();
            let t = traced.get_or_insert_with(Default::default);
            t.addrs.extend(s.vips.iter().map(|v| v.ip));
            t.addrs.extend(tasks.iter().flat_map(|t| t.addrs.iter().map(|(_, ip)| *ip)));
            // this node's tasks: their interfaces too
            for c in d.containers()? {
                if tasks.iter().any(|t| t.container_id.as_deref() == Some(c.id.as_str())) {
                    t.ifaces.extend(host_ifaces(&c));
                }
            }
            Some(s.spec.name)
        }
        None => None,
    };
    let max = netbee_abi::MONITOR_TRACE_MAX as usize;
    if traced.as_ref().is_some_and(|t| t.addrs.len() > max || t.ifaces.len() > max) {
        return Err(ApiError::bad_request(format!(
            "a trace follows at most {} addresses",
            netbee_abi::MONITOR_TRACE_MAX
        )));
    }
    let filter = crate::monitor::Filter { kinds, container, service };
    let sub = d.monitor_attach(kinds, traced)?;
    let records = futures::stream::unfold((sub, filter), |(mut sub, filter)| async move {
        loop {
            match sub.next().await {
                Some(r) if filter.matches(&r) => return Some((json_line(&*r), (sub, filter))),
                Some(_) => continue,
                // quiet: an empty line tells whether the client is still there
                None => return Some((b"\n".to_vec(), (sub, filter))),
            }
        }
    });
    Ok(ndjson(records))
}

/// `GET /events?since=T&filters={"type":["container"]}`: docker's event stream; `since` replays
/// the events this daemon kept.
async fn events(State(d): D, Query(q): Q) -> ApiResult<axum::response::Response> {
    let filter = match q.get("filters") {
        Some(f) => crate::events::EventFilter::from_json(f).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Default::default(),
    };
    let since = q
        .get("since")
        .map(|s| crate::events::parse_time(s, chrono::Utc::now()))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // `until`: the events up to that time, the stream closing then (at once for a past time), as
    // docker's `events --until`
    let now = chrono::Utc::now();
    let until = q
        .get("until")
        .filter(|s| !s.is_empty())
        .map(|s| crate::events::parse_time(s, now))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let (Some(s), Some(u)) = (since, until)
        && u < s
    {
        return Err(ApiError::bad_request("`since` time must be before `until`"));
    }
    let until_nano = until.and_then(|t| t.timestamp_nanos_opt()).unwrap_or(i64::MAX);
    let open_for = until.map(|u| (u - now).to_std().unwrap_or_default());
    let (past, rx) = d.events.subscribe(since.and_then(|t| t.timestamp_nanos_opt()));
    let past = futures::stream::iter(past);
    let live = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((e, rx)),
            // a reader this slow misses some: said in a record of its own kind
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let now = chrono::Utc::now();
                let lost = crate::api::EventMessage {
                    typ: "daemon".into(),
                    action: "events-lost".into(),
                    actor: crate::api::EventActor {
                        id: String::new(),
                        attributes: [("count".to_string(), n.to_string())].into(),
                    },
                    scope: "local".into(),
                    time: now.timestamp(),
                    time_nano: now.timestamp_nanos_opt().unwrap_or_default(),
                };
                Some((Arc::new(lost), rx))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    use futures::StreamExt as _;
    let closes = match open_for {
        Some(d) => futures::future::Either::Left(tokio::time::sleep(d)),
        None => futures::future::Either::Right(std::future::pending::<()>()),
    };
    // the kept events all go out; the live ones until `until`
    let records = past
        .chain(live.take_until(closes))
        .filter(move |e| std::future::ready(e.time_nano <= until_nano && (e.typ == "daemon" || filter.matches(e))))
        .map(|e| json_line(&*e));
    Ok(ndjson(records))
}

/// `POST /swarm/init`: answered with the new node's id (a JSON string), as docker's.
async fn swarm_init(State(d): D, Body(req): Body<SwarmInitRequest>) -> ApiResult<Json<String>> {
    let advertise = req.advertise_addr.as_deref().filter(|a| !a.is_empty());
    Ok(Json(d.swarm_init(advertise).await?))
}

async fn swarm_join(State(d): D, Body(req): Body<SwarmJoinRequest>) -> NoContent {
    let Some(remote) = req.remote_addrs.first().filter(|r| !r.is_empty()) else {
        return Err(ApiError::bad_request("swarm join needs the address of a manager (RemoteAddrs)"));
    };
    if req.join_token.is_empty() {
        return Err(ApiError::bad_request("swarm join needs a join token (JoinToken)"));
    }
    let advertise = req.advertise_addr.as_deref().filter(|a| !a.is_empty());
    d.swarm_join(&req.join_token, remote, advertise).await?;
    Ok(Json(()))
}

async fn swarm_leave(State(d): D, Query(q): Q) -> NoContent {
    d.swarm_leave(query_bool(&q, "force")).await?;
    Ok(Json(()))
}

/// `POST /swarm/update?version=N&rotateWorkerToken=..&rotateManagerToken=..` (docker's whole spec).
async fn swarm_update(State(d): D, Query(q): Q, Body(spec): Body<serde_json::Value>) -> NoContent {
    let version = query_version(&q, "swarm")?;
    d.swarm_update(version, query_bool(&q, "rotateWorkerToken"), query_bool(&q, "rotateManagerToken"), &spec).await?;
    Ok(Json(()))
}

async fn swarm_inspect(State(d): D) -> ApiResult<Json<Swarm>> {
    Ok(Json(d.swarm_inspect().await?))
}

/// A query flag as docker's clients send it: `1`/`true` (Go), `True` (docker-py).
fn query_bool(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "1" || v == "true" || v == "True")
}

/// docker's `version` query parameter of an update: the object's version the request was made
/// from. Absent (netbee's CLI) is not checked.
fn query_version(q: &HashMap<String, String>, kind: &str) -> ApiResult<Option<u64>> {
    q.get("version")
        .map(|v| v.parse().map_err(|_| ApiError::bad_request(format!("invalid {kind} version {v:?}"))))
        .transpose()
}

async fn node_list(State(d): D) -> ApiResult<Json<Vec<Node>>> {
    Ok(Json(d.node_list().await?))
}

async fn node_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Node>> {
    Ok(Json(d.node_inspect(&id).await?))
}

/// `POST /nodes/{id}/update?version=N` with the node's whole spec (also promote and demote).
async fn node_update(
    State(d): D,
    Path(id): Path<String>,
    Query(q): Q,
    Body(req): Body<NodeUpdateRequest>,
) -> NoContent {
    d.node_update(&id, query_version(&q, "node")?, req).await?;
    Ok(Json(()))
}

async fn node_remove(State(d): D, Path(id): Path<String>, Query(q): Q) -> NoContent {
    d.node_remove(&id, query_bool(&q, "force")).await?;
    Ok(Json(()))
}

/// `GET /services?filters=...&status=true`.
async fn service_list(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<Service>>> {
    let f =
        crate::api::filters::Filters::parse(q.get("filters").map(String::as_str), &["id", "name", "label", "mode"])?;
    Ok(Json(d.service_list(&f, query_bool(&q, "status")).await?))
}

/// A service spec body: docker's `ServiceSpec` (it always has a `TaskTemplate`) is converted to
/// the request netbee's CLI sends, so both are checked and applied by the same code.
fn docker_service_spec(v: &serde_json::Value) -> ApiResult<Option<ServiceCreateRequest>> {
    if v.get("TaskTemplate").is_none() {
        return Ok(None);
    }
    let spec: crate::api::DockerServiceSpec =
        serde_json::from_value(v.clone()).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    spec.into_request().map(Some).map_err(ApiError::bad_request)
}

fn netbee_body<T: DeserializeOwned>(v: serde_json::Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn service_create(
    State(d): D,
    Body(body): Body<serde_json::Value>,
) -> ApiResult<(axum::http::StatusCode, Json<ServiceCreateResponse>)> {
    let req = match docker_service_spec(&body)? {
        Some(r) => r,
        None => netbee_body(body)?,
    };
    let s = timed("service_create", d.service_create(req)).await?;
    Ok((axum::http::StatusCode::CREATED, Json(ServiceCreateResponse { id: s.id, warnings: None })))
}

async fn service_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Service>> {
    Ok(Json(d.service_inspect(&id).await?))
}

/// `POST /services/{id}/update?version=N[&rollback=previous]`: docker's whole new spec (or, with
/// `rollback=previous`, a rollback to the previous spec whatever the body), or netbee's CLI's
/// changes.
async fn service_update(
    State(d): D,
    Path(id): Path<String>,
    Query(q): Q,
    Body(body): Body<serde_json::Value>,
) -> ApiResult<Json<ServiceUpdateResponse>> {
    let version = query_version(&q, "service")?;
    let req = match (q.get("rollback").map(String::as_str), docker_service_spec(&body)?) {
        (Some("previous"), _) => ServiceUpdateRequest { rollback: true, ..Default::default() },
        (Some(r), _) if !r.is_empty() => {
            return Err(ApiError::bad_request(format!("invalid rollback value {r:?}: use previous")));
        }
        (_, Some(spec)) => ServiceUpdateRequest { spec: Some(spec), ..Default::default() },
        (_, None) => netbee_body(body)?,
    };
    let s = timed("service_update", d.service_update(&id, version, req)).await?;
    Ok(Json(ServiceUpdateResponse { id: s.id, warnings: None }))
}

async fn service_remove(State(d): D, Path(id): Path<String>) -> NoContent {
    timed("service_remove", d.service_remove(&id)).await?;
    Ok(Json(()))
}

async fn service_tasks(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Vec<Task>>> {
    Ok(Json(d.service_tasks(&id).await?))
}

/// `GET /secrets` and `GET /configs`: none (filters are checked as docker's).
async fn no_swarm_objects(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<serde_json::Value>>> {
    crate::api::filters::Filters::parse(q.get("filters").map(String::as_str), &["id", "name", "label", "names"])?;
    d.require_manager().await?;
    Ok(Json(Vec::new()))
}

/// `GET /tasks?filters=...`.
async fn task_list(State(d): D, Query(q): Q) -> ApiResult<Json<Vec<SwarmTask>>> {
    let f = crate::api::filters::Filters::parse(
        q.get("filters").map(String::as_str),
        &["id", "name", "service", "node", "label", "desired-state", "_up-to-date"],
    )?;
    Ok(Json(d.task_list(&f).await?))
}

async fn task_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Json<SwarmTask>> {
    Ok(Json(d.task_inspect(&id).await?))
}

/// `GET /services/{id}/logs`: with docker's `stdout`/`stderr` parameters, docker's multiplexed
/// stream whose lines carry the swarm context (`com.docker.swarm.node.id=...,...task.id=... `)
/// the docker CLI resolves into its `web.1.xyz@node |` prefix; without them, netbee's JSON lines.
async fn service_logs(State(d): D, Path(id): Path<String>, Query(q): Q) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let lines = d.service_logs(&id).await?;
    let (stdout, stderr) = (query_bool(&q, "stdout"), query_bool(&q, "stderr"));
    if !q.contains_key("stdout") && !q.contains_key("stderr") {
        return Ok(Json(lines).into_response());
    }
    if !stdout && !stderr {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let details = query_bool(&q, "details");
    let mut out = Vec::new();
    for l in lines.iter().filter(|l| if l.stderr { stderr } else { stdout }) {
        let context = format!(
            "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
            l.node_id, l.service_id, l.task_id
        );
        let text = if details { format!("{context} {}\n", l.line) } else { format!("{}\n", l.line) };
        out.extend(super::engine::frame(if l.stderr { 2 } else { 1 }, text.as_bytes()));
    }
    Ok(axum::response::Response::builder()
        .header("content-type", "application/vnd.docker.multiplexed-stream")
        .body(axum::body::Body::from(out))
        .expect("a constant header"))
}

async fn conntrack_age(State(d): D, Query(q): Q) -> ApiResult<Json<ConntrackAgeResponse>> {
    let aged = d.age_conntrack(query_u64(&q, "seconds", 0)?)?;
    Ok(Json(ConntrackAgeResponse { aged }))
}

async fn conntrack_gc(State(d): D) -> ApiResult<Json<ConntrackGcResponse>> {
    let (removed, live) = d.gc_once()?;
    Ok(Json(ConntrackGcResponse { removed, live }))
}

async fn image_list(State(d): D) -> ApiResult<Json<Vec<ImageSummary>>> {
    Ok(Json(d.image_list()?))
}

/// The image name and the operation of an `/images/{*rest}` path: `busybox:1/json` →
/// (`busybox:1`, `json`); a name alone → (name, "").
fn image_path(rest: &str, ops: &[&str]) -> (String, String) {
    for op in ops {
        if let Some(name) = rest.strip_suffix(&format!("/{op}")) {
            return (name.to_string(), op.to_string());
        }
    }
    (rest.to_string(), String::new())
}

async fn image_get(State(d): D, Path(rest): Path<String>) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    match image_path(&rest, &["json", "get"]) {
        (name, op) if op == "json" => Ok(Json(d.image_inspect(&name)?).into_response()),
        (name, op) if op == "get" => export(d, vec![name]).await,
        _ => Err(ApiError::not_found(format!("page not found: /images/{rest}"))),
    }
}

/// `GET /images/get?names=A&names=B`: docker's `save`, the archive (docker's and OCI's layout at
/// once, as `netbee save` writes it) as the body.
async fn image_export(State(d): D, Query(q): Query<Vec<(String, String)>>) -> ApiResult<axum::response::Response> {
    let names: Vec<String> = q.into_iter().filter(|(k, v)| k == "names" && !v.is_empty()).map(|(_, v)| v).collect();
    export(d, names).await
}

async fn export(d: Arc<Daemon>, names: Vec<String>) -> ApiResult<axum::response::Response> {
    let path = spool_path(&d, "save")?;
    d.image_save(path.to_string_lossy().into_owned(), names).await?;
    // the file is unlinked once open: the body streams from the open file and nothing is left
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::internal(format!("reading the archive: {e}")));
    let _ = std::fs::remove_file(&path);
    let stream = futures::stream::unfold(file?, |mut f| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok(axum::response::Response::builder()
        .header("content-type", "application/x-tar")
        .body(axum::body::Body::from_stream(stream))
        .expect("constant headers"))
}

/// A fresh file name in the daemon's spool directory.
fn spool_path(d: &Daemon, what: &str) -> ApiResult<std::path::PathBuf> {
    let dir = d.cfg.root.join("tmp");
    crate::paths::make_dir(&dir)?;
    Ok(dir.join(format!("{what}-{}.tar", crate::names::new_id())))
}

/// Writes a request's body to `path`.
async fn body_to_file(req: Request, path: &std::path::Path) -> std::io::Result<()> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let mut f = tokio::fs::File::create(path).await?;
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        f.write_all(&chunk).await?;
    }
    f.flush().await
}

/// `POST /images/{name}/tag?repo=R&tag=T` and `POST /images/{name}/push?tag=T`, docker's.
async fn image_post(State(d): D, Path(rest): Path<String>, Query(q): Q) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    match image_path(&rest, &["tag", "push"]) {
        (name, op) if op == "push" => {
            let reference = match q.get("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{name}:{t}"),
                None => name.clone(),
            };
            // pushed whole before answering: a failure is the request's status, which both CLIs
            // print as docker's "Error response from daemon"
            let r = d.image_push(&reference).await?;
            let tag = q.get("tag").filter(|t| !t.is_empty()).map_or("latest", String::as_str);
            let lines = vec![
                json_line(&serde_json::json!({ "status": format!("The push refers to repository [{name}]") })),
                json_line(&serde_json::json!({ "status": format!("{tag}: digest: {}", r.digest) })),
                json_line(&serde_json::json!({ "progressDetail": {}, "aux": { "Tag": tag, "Digest": r.digest } })),
            ];
            let mut resp = ndjson(futures::stream::iter(lines));
            resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        (name, op) if op == "tag" => {
            let repo = q
                .get("repo")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ApiError::bad_request("repository name must have at least one component"))?;
            let target = match q.get("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo.clone(),
            };
            d.image_tag(&name, &target)?;
            Ok(axum::http::StatusCode::CREATED.into_response())
        }
        _ => Err(ApiError::not_found(format!("page not found: /images/{rest}"))),
    }
}

async fn image_remove(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Q,
) -> ApiResult<Json<Vec<ImageDeleteResponseItem>>> {
    let force = q.get("force").is_some_and(|v| v == "1" || v == "true");
    Ok(Json(d.image_remove(&name, force)?))
}

/// `POST /images/create?fromImage=REPO&tag=T`: docker's pull (also what `docker run` sends
/// after a 404 for a missing image), answered with docker's progress lines; with `fromSrc`,
/// docker's import.
async fn image_create(State(d): D, Query(q): Q, req: Request) -> ApiResult<axum::response::Response> {
    if let Some(src) = q.get("fromSrc") {
        // a refusal is sent once the client's body is read: the CLI writes the whole tarball
        // before it reads an answer, and a connection closed under it shows as "broken pipe"
        // instead of the daemon's message
        let mut body = req.into_body().into_data_stream();
        let repo = match check_import(&q, src) {
            Ok(repo) => repo,
            Err(e) => {
                use futures::StreamExt as _;
                let mut read = 0usize;
                while let Some(Ok(chunk)) = body.next().await {
                    read += chunk.len();
                    if read > IMPORT_DRAIN_LIMIT {
                        break;
                    }
                }
                return Err(e);
            }
        };
        let req = Request::new(axum::body::Body::from_stream(body));
        return image_create_from_src(d, repo, req).await;
    }
    let Some(from) = q.get("fromImage").filter(|f| !f.is_empty()) else {
        return Err(ApiError::bad_request("one of fromImage (pull) or fromSrc (import) is required"));
    };
    let reference = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.clone(),
    };
    let r = d.image_pull(&reference).await?;
    let lines = vec![
        json_line(&serde_json::json!({ "status": format!("Pulling from {from}") })),
        json_line(&serde_json::json!({ "status": format!("Digest: {}", r.digest) })),
        json_line(&serde_json::json!({ "status": format!("Status: Downloaded newer image for {reference}") })),
    ];
    let mut resp = ndjson(futures::stream::iter(lines));
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// How much of a refused import's body is read before the connection is dropped anyway.
const IMPORT_DRAIN_LIMIT: usize = 64 << 20;

/// The `REPO[:TAG]` of an import request, or docker's 400 for what netbee cannot apply
/// (`changes`, a URL to fetch) or a bad name, before anything is stored.
fn check_import(q: &HashMap<String, String>, src: &str) -> ApiResult<Option<String>> {
    if src != "-" {
        return Err(ApiError::bad_request(format!(
            "importing from {src:?} is not supported: send the tarball in the request body (fromSrc=-)"
        )));
    }
    if q.get("changes").is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::bad_request("import --change is not supported"));
    }
    let repo = match (q.get("repo").filter(|r| !r.is_empty()), q.get("tag").filter(|t| !t.is_empty())) {
        (Some(r), Some(t)) => Some(format!("{r}:{t}")),
        (Some(r), None) => Some(r.clone()),
        (None, Some(_)) => return Err(ApiError::bad_request("a tag was given without a repository")),
        (None, None) => None,
    };
    if let Some(r) = &repo {
        crate::images::ImageRef::parse(r)
            .map_err(|e| ApiError::bad_request(format!("invalid reference {r:?}: {e}")))?;
    }
    Ok(repo)
}

/// `POST /images/create?fromSrc=-&repo=R[&tag=T]`: docker's `import` of the rootfs tarball in the
/// body (checked by [`check_import`]), answered with docker's `{"status":"sha256:..."}` line.
async fn image_create_from_src(
    d: Arc<Daemon>,
    repo: Option<String>,
    req: Request,
) -> ApiResult<axum::response::Response> {
    let path = spool_path(&d, "import")?;
    let r = match body_to_file(req, &path).await {
        Ok(()) => d.image_import(path.to_string_lossy().into_owned(), repo).await,
        Err(e) => Err(ApiError::bad_request(format!("reading the image tarball: {e}"))),
    };
    let _ = std::fs::remove_file(&path);
    let mut resp = ndjson(futures::stream::iter(vec![json_line(&serde_json::json!({ "status": r?.id }))]));
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// `POST /images/load`: docker's tar body (`application/x-tar`, answered with JSON lines), or
/// netbee's `{"Path"}` of an archive on the node.
async fn image_load(State(d): D, req: Request) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let is_json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let Body(r) = Body::<ImageLoadRequest>::from_request(req, &()).await?;
        return Ok(Json::<ImageLoadResponse>(d.image_load(r.path).await?).into_response());
    }
    // the archive goes to a file of the daemon's first: the image store reads archives by path
    let path = spool_path(&d, "load")?;
    let r = match body_to_file(req, &path).await {
        Ok(()) => d.image_load(path.to_string_lossy().into_owned()).await,
        Err(e) => Err(ApiError::bad_request(format!("reading the image archive: {e}"))),
    };
    let _ = std::fs::remove_file(&path);
    let lines: Vec<Vec<u8>> =
        r?.stream.iter().map(|l| json_line(&serde_json::json!({ "stream": format!("{l}\n") }))).collect();
    let mut resp = ndjson(futures::stream::iter(lines));
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn image_import(State(d): D, Body(req): Body<ImageImportRequest>) -> ApiResult<Json<ImageIdResponse>> {
    Ok(Json(d.image_import(req.path, req.repo).await?))
}

async fn image_save(State(d): D, Body(req): Body<ImageSaveRequest>) -> NoContent {
    d.image_save(req.path, req.names).await?;
    Ok(Json(()))
}

async fn image_prune(State(d): D) -> ApiResult<Json<ImagePruneResponse>> {
    Ok(Json(d.image_prune()?))
}
