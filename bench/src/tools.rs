//! The load generators and servers the benchmarks drive (iperf3, sockperf, wrk, nginx): the
//! files they need and parsers for what they print. Parsers are pure functions with unit tests,
//! so a changed output format fails loudly instead of producing wrong numbers.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Tools every implemented scenario needs, installed by `cargo xtask setup`.
pub const REQUIRED: &[&str] =
    &["iperf3", "sockperf", "wrk", "socat", "nginx", "haproxy", "iptables", "iptables-legacy", "nft", "nsenter", "ss"];

/// The tools missing from `PATH`.
pub fn missing() -> Vec<&'static str> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    // root's usual sbin dirs, in case PATH lacks them
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(Into::into));
    REQUIRED.iter().copied().filter(|t| !dirs.iter().any(|d| d.join(t).is_file())).collect()
}

/// Receiver-side throughput in Gbit/s from `iperf3 -J` output (all streams summed).
pub fn iperf3_gbps(json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3 error: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON lacks end.sum_received.bits_per_second"))?;
    Ok(bps / 1e9)
}

/// Sender-side TCP retransmits from `iperf3 -J` output (all streams summed).
pub fn iperf3_retransmits(json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 output is not JSON")?;
    v["end"]["sum_sent"]["retransmits"].as_f64().ok_or_else(|| anyhow!("iperf3 JSON lacks end.sum_sent.retransmits"))
}

/// sockperf ping-pong latency percentiles (p50, p99) in microseconds.
pub fn sockperf_p50_p99(out: &str) -> Result<(f64, f64)> {
    let find = |p: &str| -> Result<f64> {
        let key = format!("percentile {p} =");
        out.lines()
            .find_map(|l| l.split_once(&key).map(|(_, v)| v.trim().to_string()))
            .ok_or_else(|| anyhow!("sockperf output lacks `{key}`:\n{out}"))?
            .parse::<f64>()
            .with_context(|| format!("sockperf `{key}` value"))
    };
    Ok((find("50.000")?, find("99.000")?))
}

/// What the wrk script below prints at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl WrkResult {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// A wrk script that closes every connection after one request (so each request is one new
/// connection through the published port) and prints a machine-readable summary line.
pub const WRK_LUA: &str = r#"
wrk.headers["Connection"] = "close"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let line = out
        .lines()
        .find(|l| l.starts_with("WRKRESULT "))
        .ok_or_else(|| anyhow!("wrk output lacks the WRKRESULT line:\n{out}"))?;
    let field = |k: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .ok_or_else(|| anyhow!("wrk summary lacks {k}: {line}"))?
            .parse::<f64>()
            .with_context(|| format!("wrk {k}"))
    };
    let r = WrkResult {
        requests: field("requests")? as u64,
        seconds: field("duration_us")? / 1e6,
        errors: field("errors")? as u64,
        p50_ms: field("p50_us")? / 1e3,
        p99_ms: field("p99_us")? / 1e3,
    };
    if r.requests == 0 || r.seconds <= 0.0 {
        bail!("wrk completed no request: {line}");
    }
    Ok(r)
}

/// Writes a minimal nginx config into `dir` (listening on `port`, one worker, no access log,
/// answering 200 "ok") and returns its path. Every path nginx writes stays inside `dir`.
pub fn write_nginx_conf(dir: &Path, port: u16) -> Result<std::path::PathBuf> {
    write_nginx_conf_body(dir, port, "ok")
}

/// The body a routing-mesh backend answers: its hostname and the local address the connection
/// reached (nginx variables), so a client can tell the backends apart whether they are netbee
/// tasks (distinct hostnames) or plain namespaces (same hostname, distinct addresses), then the
/// peer address it saw (the client's, unless the balancer proxied or masqueraded).
pub const BACKEND_ID_BODY: &str = "$hostname $server_addr $remote_addr";

/// [`write_nginx_conf`] answering 200 with `body` (one line; nginx variables are expanded).
pub fn write_nginx_conf_body(dir: &Path, port: u16, body: &str) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{ listen {port} backlog=4096; location / {{ return 200 \"{body}\\n\"; }} }}\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`); the body's first line.
pub fn http_get_line(addr: std::net::SocketAddr, timeout: std::time::Duration) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    body_line(&resp)
}

fn body_line(resp: &str) -> Result<String> {
    if !resp.starts_with("HTTP/1.1 200") {
        bail!("not a 200 answer: {resp:?}");
    }
    let (_, body) = resp.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no body in {resp:?}"))?;
    let line = body.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        bail!("empty body in {resp:?}");
    }
    Ok(line.to_string())
}

/// Fairness of a load balancer: the largest share over the smallest share among `backends`
/// backends, given how many requests each answered (backends that answered none count as 0, so
/// the result is infinite). 1.0 is a perfect spread.
pub fn max_min_share(counts: &std::collections::HashMap<String, usize>, backends: usize) -> f64 {
    let mut v: Vec<usize> = counts.values().copied().collect();
    v.resize(v.len().max(backends), 0);
    let max = v.iter().copied().max().unwrap_or(0) as f64;
    let min = v.iter().copied().min().unwrap_or(0) as f64;
    if min == 0.0 { f64::INFINITY } else { max / min }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_percentiles() {
        let out = "sockperf: ---> percentile 99.999 = 5840.273\n\
                   sockperf: ---> percentile 99.000 =   29.710\n\
                   sockperf: ---> percentile 90.000 =    7.439\n\
                   sockperf: ---> percentile 50.000 =    6.644\n";
        assert_eq!(sockperf_p50_p99(out).unwrap(), (6.644, 29.71));
        assert!(sockperf_p50_p99("nothing").is_err());
    }

    #[test]
    fn iperf3_sum() {
        let j = r#"{"end":{"sum_received":{"bits_per_second":8.5e9}}}"#;
        assert!((iperf3_gbps(j).unwrap() - 8.5).abs() < 1e-9);
        assert!(iperf3_gbps(r#"{"error":"unable to connect"}"#).is_err());
        let j = r#"{"end":{"sum_sent":{"retransmits":12}}}"#;
        assert_eq!(iperf3_retransmits(j).unwrap(), 12.0);
    }

    #[test]
    fn wrk_line() {
        let out = "Running 3s test\nWRKRESULT requests=30000 duration_us=3000000 errors=2 p50_us=1500 p99_us=9000\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 30000);
        assert_eq!(r.errors, 2);
        assert!((r.per_second() - 10000.0).abs() < 1e-6);
        assert!((r.p50_ms - 1.5).abs() < 1e-9 && (r.p99_ms - 9.0).abs() < 1e-9);
        assert!(parse_wrk("WRKRESULT requests=0 duration_us=1 errors=0 p50_us=0 p99_us=0").is_err());
    }

    #[test]
    fn body_and_fairness() {
        let resp = "HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: close\r\n\r\nweb.1.abc 10.0.0.5\n";
        assert_eq!(body_line(resp).unwrap(), "web.1.abc 10.0.0.5");
        assert!(body_line("HTTP/1.1 502 Bad Gateway\r\n\r\nx").is_err());
        let mut c = std::collections::HashMap::new();
        c.insert("a".to_string(), 100);
        c.insert("b".to_string(), 105);
        assert!((max_min_share(&c, 2) - 1.05).abs() < 1e-9);
        assert!(max_min_share(&c, 3).is_infinite());
    }
}
