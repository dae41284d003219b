//! `netbee whoami`: a tiny server for tests and demos. Over HTTP (TCP) and UDP on the same port it
//! answers with the hostname, the addresses of the namespace it runs in and the client address it
//! saw, so a test can tell which backend answered and whether the source address survived.
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use axum::{Router, extract::ConnectInfo, http::HeaderMap, routing::get};

fn local_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|it| it.filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())))).collect())
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    ips
}

pub fn describe(remote: SocketAddr) -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = format!("Hostname: {host}\n");
    for ip in local_ips() {
        s.push_str(&format!("IP: {ip}\n"));
    }
    s.push_str(&format!("RemoteAddr: {remote}\n"));
    s
}

pub async fn run(port: u16) -> Result<()> {
    let udp =
        tokio::net::UdpSocket::bind(("0.0.0.0", port)).await.with_context(|| format!("binding UDP port {port}"))?;
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((_, from)) = udp.recv_from(&mut buf).await {
                println!("udp from {from}");
                let _ = udp.send_to(describe(from).as_bytes(), from).await;
            }
        }
    });
    let app =
        Router::new().fallback(get(|ConnectInfo(remote): ConnectInfo<SocketAddr>, headers: HeaderMap| async move {
            // one line per request: tests read the log to see who reached this server
            println!("http from {remote}");
            let mut body = describe(remote);
            if let Some(h) = headers.get("host").and_then(|h| h.to_str().ok()) {
                body.push_str(&format!("Host: {h}\n"));
            }
            body
        }));
    let listener =
        tokio::net::TcpListener::bind(("0.0.0.0", port)).await.with_context(|| format!("binding TCP port {port}"))?;
    eprintln!("whoami listening on :{port} (tcp+udp)");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
