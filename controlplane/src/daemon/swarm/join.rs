//! The join port: a manager answers join requests on its advertise address (the token is the
//! credential), and the client side of that handshake.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use axum::{Json, Router, routing::post};
use tracing::{info, warn};

use super::ClusterState;
use crate::{
    api::{ApiError, ErrorResponse, JoinPortRequest, JoinPortResponse},
    cluster,
    daemon::Daemon,
    model::{ClusterInfo, NodeRecord, Role},
};

impl Daemon {
    /// Answers join requests on the advertise address of a manager: the token is the credential.
    pub(in crate::daemon) async fn join_server(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        let Some(m) = c.member() else { return };
        let d = self.clone();
        let app = Router::new()
            .route(
                "/join",
                // axum's own JSON extractor, lenient on purpose: a body without a JSON content type
                // is 415 and a Token that is not a string is no token (403), as this port has
                // always answered; the token check is all it does
                post(move |Json(body): Json<serde_json::Value>| {
                    let d = d.clone();
                    let req = JoinPortRequest { token: body["Token"].as_str().unwrap_or_default().to_string() };
                    async move {
                        let c = d.cluster.clone().expect("cluster");
                        let info: Option<ClusterInfo> = c.etcd.get(&cluster::key_cluster()).await.ok().flatten();
                        let answer =
                            |i: ClusterInfo, role: &str| JoinPortResponse { cluster_id: i.id, role: role.into() };
                        match info {
                            Some(i) if token_matches(&req.token, &i.worker_token) => Ok(Json(answer(i, "worker"))),
                            Some(i) if token_matches(&req.token, &i.manager_token) => Ok(Json(answer(i, "manager"))),
                            Some(_) => Err(ApiError::forbidden("invalid join token")),
                            None => Err(ApiError::not_found("this manager's swarm no longer exists")),
                        }
                    }
                }),
            )
            // a join request is one short JSON object: anything larger is refused (413) unread
            .layer(axum::extract::DefaultBodyLimit::max(JOIN_BODY_LIMIT));
        // only a manager listens: a worker has no TCP listener at all, and a demoted manager closes
        // its join port
        loop {
            if is_manager(&c).await == Some(true) {
                match tokio::net::TcpListener::bind((m.advertise, cluster::JOIN_PORT)).await {
                    Ok(l) => {
                        let c2 = c.clone();
                        let demoted = async move {
                            while is_manager(&c2).await != Some(false) {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            info!("no longer a manager: closing the join port");
                        };
                        let _ = axum::serve(l, app.clone()).with_graceful_shutdown(demoted).await;
                    }
                    Err(e) => warn!("join listener on {}:{}: {e}", m.advertise, cluster::JOIN_PORT),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Whether this node is a manager of the swarm; None while etcd cannot tell (a transient error
/// neither opens nor closes the join port).
async fn is_manager(c: &ClusterState) -> Option<bool> {
    let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await.ok()?;
    Some(me.is_some_and(|n| n.role == Role::Manager))
}

/// The largest join request body the join port reads.
const JOIN_BODY_LIMIT: usize = 4096;

/// Whether a presented join token is `real`, in time that depends only on the real token's length
/// (public: every token has the same format), never on where the two differ, so timing the
/// answers of the join port cannot recover a token byte by byte.
fn token_matches(presented: &str, real: &str) -> bool {
    let (p, r) = (presented.as_bytes(), real.as_bytes());
    let mut diff = p.len() ^ r.len();
    for (i, &b) in r.iter().enumerate() {
        diff |= usize::from(p.get(i).copied().unwrap_or(0) ^ b);
        diff = std::hint::black_box(diff);
    }
    diff == 0 && !r.is_empty()
}

/// The join handshake with a manager: POST /join {Token} on its advertise address.
pub(super) async fn join_request(ip: Ipv4Addr, port: u16, token: &str) -> Result<JoinPortResponse> {
    use http_body_util::{BodyExt as _, Full};
    let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| anyhow!("could not reach the manager at {ip}:{port}: timed out"))?
        .with_context(|| format!("could not reach the manager at {ip}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&JoinPortRequest { token: token.into() })?;
    let req = hyper::Request::post(format!("http://{ip}:{port}/join"))
        .header("host", format!("{ip}:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("the manager at {ip}:{port} did not answer"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorResponse>(&bytes).map(|e| e.message);
        return Err(anyhow!(
            "the manager at {ip}:{port} refused to join: {}",
            message.as_deref().unwrap_or("unknown error")
        ));
    }
    // an answer that is not one reads as no swarm (and fails the ClusterID check)
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn join_tokens_match_only_exactly() {
        let real = "SWMTKN-1-abcdefghijklmnopqrstuvwxy-0123456789abcdef012345678";
        assert!(token_matches(real, real));
        assert!(!token_matches("", real));
        assert!(!token_matches(&real[..real.len() - 1], real), "a prefix");
        assert!(!token_matches(&format!("{real}0"), real), "an extension");
        assert!(!token_matches(&real.replace('8', "9"), real), "last byte differs");
        assert!(!token_matches(&real.replacen('S', "T", 1), real), "first byte differs");
        assert!(!token_matches("", ""), "an empty token never matches");
    }
}
