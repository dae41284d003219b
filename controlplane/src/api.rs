//! The daemon's API: JSON over HTTP on a unix socket, docker-shaped. This module holds the
//! request bodies, the error type both sides share, and the client the CLI uses.
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_SOCKET: &str = "/run/netbee/netbee.sock";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    #[serde(rename = "IPRange")]
    pub ip_range: Option<String>,
    pub internal: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkConnect {
    pub container: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreate {
    pub name: Option<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: Option<String>,
    /// Network name/id, or "host" / "none"; default "bridge".
    pub network: Option<String>,
    #[serde(rename = "IP")]
    pub ip: Option<String>,
    pub network_aliases: Vec<String>,
    pub publish: Vec<String>,
    pub expose: Vec<String>,
    pub publish_all: bool,
    pub auto_remove: bool,
    pub workdir: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An error with the HTTP status the daemon answers with and a one-line message for the user.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: m.into() }
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: m.into() }
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::CONFLICT, message: m.into() }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: format!("{e:#}") }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        (self.status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Where the CLI finds the daemon: `-H unix:///path`, then NETBEE_HOST, then the default socket.
pub fn socket_path(host: Option<&str>) -> Result<PathBuf> {
    let h = host.map(str::to_string).or_else(|| std::env::var("NETBEE_HOST").ok());
    match h {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(anyhow!("invalid daemon address {h:?}: expected unix:///path/to/netbee.sock")),
        },
    }
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    /// One request on a fresh connection. Err carries the daemon's message for 4xx/5xx.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot connect to the netbee daemon at unix://{}: is the daemon running?", self.socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let bytes = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://netbee{path}"))
            .header("host", "netbee")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let resp = sender.send_request(req).await.context("sending the request to the daemon")?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .with_context(|| format!("daemon sent invalid JSON: {}", String::from_utf8_lossy(&body)))?
        };
        if !status.is_success() {
            let msg = v.get("message").and_then(Value::as_str).unwrap_or("request failed");
            return Err(anyhow!("Error response from daemon: {msg}"));
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None).await
    }
}
