//! The daemon's API: JSON over HTTP on a unix socket, docker-shaped. This module holds the typed
//! request and response bodies of every route, the error type both sides share, and the client
//! the CLI uses.
//!
//! The types mirror docker's Engine API models: they are named as the `bollard-stubs` crate names
//! them (`NetworkCreateRequest`, `ContainerSummary`, `ContainerInspectResponse`, `Task`, `Node`,
//! `SwarmInitRequest`, ...) and their fields carry docker's PascalCase names, so that when the
//! daemon speaks the real Engine API they can be swapped for the `bollard-stubs` models. Where
//! netbee's shape differs from docker's today (a container's `Publish` specs instead of
//! `HostConfig.PortBindings`, a summary's `Ports` as one string, a service listing with replica
//! counts), the type says so; the JSON on the wire is what the daemon has always sent.
//!
//! - `networks.rs`: `/networks/...`;
//! - `containers.rs`: `/containers/...`;
//! - `exec.rs`: `/containers/{id}/exec` and `/exec/...`;
//! - `services.rs`: `/services/...` and their tasks;
//! - `swarm.rs`: `/swarm/...`, `/nodes/...`, and the join port a manager answers on;
//! - `images.rs`: `/images/...`;
//! - `system.rs`: `/version`, `/info` and `/datapath/...`;
//! - `version.rs`: the `/v1.NN/` path prefix of docker's version negotiation;
//! - `filters.rs`: docker's `filters` query parameter, in both encodings;
//! - `monitor.rs`: the streams, `/datapath/monitor` and `/events`;
//! - `error.rs`: [`ApiError`] and its [`ErrorKind`], the one mapping to HTTP statuses.
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub mod containers;
mod error;
pub mod exec;
pub mod filters;
pub mod images;
pub mod monitor;
pub mod networks;
pub mod services;
pub mod swarm;
pub mod system;
pub mod version;

pub use containers::*;
pub use error::{ApiError, ApiResult, ErrorKind};
pub use exec::*;
pub use images::*;
pub use monitor::*;
pub use networks::*;
pub use services::*;
pub use swarm::*;
pub use system::*;

pub const DEFAULT_SOCKET: &str = "/run/netbee/netbee.sock";

/// The body of every error answer (docker's `ErrorResponse`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub message: String,
}

/// An object with no fields, `{}` on the wire (docker's `ExposedPorts` values).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// For request fields the daemon has always read leniently: `null` is the default (an empty list,
/// no value), as a Go client sends a nil slice.
pub(crate) fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

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

    /// One request on a fresh connection, its answer decoded as `T` (`()` for the routes that
    /// answer `null`). Err carries the daemon's message for 4xx/5xx.
    pub async fn call<B, T>(&self, method: &str, path: &str, body: Option<&B>) -> Result<T>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
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
        serde_json::from_value(v)
            .with_context(|| format!("daemon sent an unexpected answer: {}", String::from_utf8_lossy(&body)))
    }

    /// A GET answered with newline-delimited JSON for as long as the daemon sends it (`/events`,
    /// `/datapath/monitor`): `each` gets every record as it arrives and returns false to stop.
    pub async fn stream<T: DeserializeOwned>(&self, path: &str, each: impl FnMut(T) -> Result<bool>) -> Result<()> {
        self.stream_request("GET", path, each).await
    }

    /// `stream` for any method: docker's progress answers (`POST /images/create`, `.../push`)
    /// are newline-delimited JSON too.
    pub async fn stream_request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        mut each: impl FnMut(T) -> Result<bool>,
    ) -> Result<()> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot connect to the netbee daemon at unix://{}: is the daemon running?", self.socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://netbee{path}"))
            .header("host", "netbee")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await.context("sending the request to the daemon")?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let msg = v.get("message").and_then(Value::as_str).unwrap_or("request failed");
            return Err(anyhow!("Error response from daemon: {msg}"));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.len() <= 1 {
                    continue;
                }
                let v: T = serde_json::from_slice(&line)
                    .with_context(|| format!("daemon sent an unexpected record: {}", String::from_utf8_lossy(&line)))?;
                if !each(v)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>("GET", path, None).await
    }
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call("POST", path, Some(body)).await
    }
    /// A POST whose request and answer are both `null` (start, stop, promote, ...).
    pub async fn post_empty(&self, path: &str) -> Result<()> {
        self.post(path, &()).await
    }
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call::<(), ()>("DELETE", path, None).await
    }
}

#[cfg(test)]
mod tests;
