//! The API on TCP, only behind TLS with client certificates: docker's `--tlsverify` model.
//!
//! Choices worth knowing:
//! - **No plain TCP, ever.** Whoever reaches the API runs containers as root on this node, so the
//!   daemon refuses to start with `--api-tcp` unless `--tlsverify`, `--tlscacert`, `--tlscert` and
//!   `--tlskey` are all given (docker only warns). The unix socket stays root-only beside it.
//! - **A client is whoever holds a certificate signed by `--tlscacert`**, as with docker: no
//!   per-user authorization; a client without one (or with one from another CA) fails the
//!   handshake before any HTTP is read.
//! - **The same router as the unix socket**, served connection by connection with hyper (upgrades
//!   on, for attach and exec): one API, and a slow or stuck handshake holds only its own task.
//! - Certificates are read and checked when the daemon starts, before it changes anything, so a
//!   missing or mismatched file is an error naming it and the node is untouched.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tracing::{debug, info, warn};

/// `--api-tcp` with its TLS configuration, checked.
#[derive(Clone)]
pub struct ApiTls {
    pub addr: SocketAddr,
    pub config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The daemon's TLS flags as given on its command line.
pub struct TlsFlags<'a> {
    pub addr: Option<SocketAddr>,
    pub verify: bool,
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

/// Checks the flags together and loads the files: None when no TCP listener is asked for.
pub fn from_flags(f: TlsFlags<'_>) -> Result<Option<ApiTls>> {
    let Some(addr) = f.addr else {
        if f.verify || f.ca.is_some() || f.cert.is_some() || f.key.is_some() {
            bail!("--tlsverify, --tlscacert, --tlscert and --tlskey configure --api-tcp, which is not given");
        }
        return Ok(None);
    };
    let (true, Some(ca), Some(cert), Some(key)) = (f.verify, f.ca, f.cert, f.key) else {
        bail!(
            "--api-tcp {addr} needs --tlsverify with --tlscacert, --tlscert and --tlskey: whoever reaches the \
             API controls this node as root, so it is served only to clients with a certificate"
        );
    };
    Ok(Some(ApiTls { addr, config: server_config(ca, cert, key)? }))
}

/// A rustls server that requires a client certificate signed by `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca, "--tlscacert")? {
        roots.add(c).with_context(|| format!("--tlscacert {}: not a usable CA certificate", ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| anyhow!("--tlscacert {}: {e}", ca.display()))?;
    let chain = read_certs(cert, "--tlscert")?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("--tlskey {}: no private key read: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| anyhow!("--tlscert {} and --tlskey {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

/// A handshake that has not finished by then is dropped (it holds only its own task meanwhile).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `tls.addr`; the returned future serves `app` there until it is dropped.
pub async fn bind(tls: &ApiTls, app: Router) -> Result<impl Future<Output = ()> + use<>> {
    let listener = tokio::net::TcpListener::bind(tls.addr).await.with_context(|| format!("--api-tcp {}", tls.addr))?;
    info!(addr = %tls.addr, "API served over TLS to clients with a certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    Ok(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // out of descriptors and the like: wait instead of spinning
                    warn!("API over TLS: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return info!(%peer, "API over TLS: handshake refused: {e}"),
                    Err(_) => return info!(%peer, "API over TLS: handshake timed out"),
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    debug!(%peer, "API over TLS: connection ended: {e}");
                }
            });
        }
    })
}
