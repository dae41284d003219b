//! Embedded DNS server: name resolution between containers.
//!
//! Docker-compatible networks let containers reach each other (and services) by name. The
//! daemon runs one [`serve`] instance per container-network gateway address, and containers'
//! `/etc/resolv.conf` points at their gateway. Each query is put to the daemon's [`Names`]
//! (which knows which names exist and which client may see which): netbee's own names are
//! answered authoritatively here; everything else is relayed to the host's resolvers
//! ([`upstreams_from_resolv_conf`]), so containers resolve the outside world as the host does.
//!
//! Choices worth knowing:
//! - Wire format is hickory-proto's; this module only decides *what* to answer.
//! - Answers carry a 5 s TTL and NXDOMAIN carries no SOA, so resolvers cache neither for long:
//!   a container that starts, stops or scales is seen within seconds.
//! - Containers are IPv4-only: any other type (or class) for a known name is NOERROR with no answers
//!   (NODATA), not NXDOMAIN, so resolvers asking A and AAAA in parallel keep the A answer.
//! - EDNS: OPT records in queries are ignored and the answers built here carry no OPT, which
//!   RFC 6891 §7 allows (the client then assumes a 512-byte UDP limit). Answers that would not
//!   fit 512 bytes over UDP are sent empty with TC set, and the client retries over TCP.
//!   Forwarded queries are relayed byte for byte, both ways, so EDNS (and DNSSEC) is negotiated
//!   end-to-end between the client and the upstream.
//! - Only the header and the single question are parsed; the rest of a query is never read,
//!   so odd additional sections cannot make a valid question fail.
//! - Resources are bounded per server: [`MAX_FORWARDS`] forwarded queries in flight (each in
//!   its own task, so a slow upstream delays only the queries that wait on it) and
//!   [`MAX_TCP_CONNECTIONS`] TCP connections; beyond that forwards get SERVFAIL and new
//!   connections are closed.
//! - A name this node does not know yet may already exist on another node (a container run there
//!   a moment ago, whose record reaches this node with the next cluster sync). [`Names::lookup`]
//!   says so with [`Lookup::Unsettled`], and the query waits, like a forwarded one and within the
//!   same bound, for [`Names::settle`]: a view of the cluster read after the query came in. The
//!   name then resolves at once, without the client retrying after a cached NXDOMAIN.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use hickory_proto::op::{Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::timeout;
use tracing::{debug, info, warn};

/// Short, so that a container's start, stop or scaling is seen quickly.
pub const TTL: u32 = 5;
/// Per upstream, per forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is disconnected.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded queries in flight per server (UDP and TCP together).
pub const MAX_FORWARDS: usize = 256;
/// Open TCP connections per server.
pub const MAX_TCP_CONNECTIONS: usize = 128;
/// The UDP limit of a client that did not negotiate EDNS, which we never do (see module doc).
const UDP_MAX_RESPONSE: usize = 512;
/// The largest DNS message (TCP's 2-byte length prefix).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// What the daemon knows about a name asked by a given client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Authoritative answer: these IPv4 addresses (possibly several; returned in the given order).
    Found(Vec<Ipv4Addr>),
    /// A name netbee owns (a container/service on some network) that this client may not see,
    /// or no such name in netbee's namespace, but the name is NOT to be forwarded: answer NXDOMAIN.
    NotFound,
    /// Not a netbee name: forward to the upstream resolvers.
    Forward,
    /// Not known here yet, but it could be another node's new name: the answer is what
    /// [`Names::settle`] returns.
    Unsettled,
}

/// The daemon's view of names. Called inline on the server's receive path, so it should be
/// quick and must not block (an in-memory lookup).
pub trait Names: Send + Sync + 'static {
    /// `client` is the source address of the query, `local` the gateway address it was sent to,
    /// `name` lower-cased, without the trailing dot.
    fn lookup(&self, client: Ipv4Addr, local: Ipv4Addr, name: &str) -> Lookup;

    /// The answer for a name `lookup` found [`Lookup::Unsettled`], once what the cluster had when
    /// the query came in is known here (bounded by the implementation; never `Unsettled`).
    fn settle(self: Arc<Self>, client: Ipv4Addr, local: Ipv4Addr, name: String) -> BoxFuture<'static, Lookup>;
}

/// How long a query waits for [`Names::settle`] before it is answered SERVFAIL (the client asks
/// again).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A running server; dropping it stops it (its sockets close once the aborted tasks are gone,
/// and in-flight forwards and open TCP connections are cut, as they belong to those tasks).
pub struct DnsServer {
    addr: SocketAddrV4,
    tasks: Vec<AbortHandle>,
}

impl DnsServer {
    /// The bound address (UDP and TCP share it); tells the port when `serve` was given port 0.
    // The daemon knows its gateway address already; this is for tests and logs.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves DNS over UDP and TCP on `addr` until the returned handle is dropped.
///
/// `addr` should be the gateway address itself, not 0.0.0.0: its IP is what UDP queries report
/// to [`Names::lookup`] as `local`. Port 0 picks a free port, the same for UDP and TCP.
pub async fn serve(addr: SocketAddrV4, names: Arc<dyn Names>, upstreams: Vec<SocketAddr>) -> anyhow::Result<DnsServer> {
    let (udp, tcp) = bind_pair(addr).await?;
    let bound = match udp.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => anyhow::bail!("dns: IPv4 bind gave IPv6 address {a}"),
    };
    info!(addr = %bound, ?upstreams, "dns server listening");
    let shared = Arc::new(Shared { names, upstreams, forwards: Arc::new(Semaphore::new(MAX_FORWARDS)) });
    let udp_task = tokio::spawn(udp_loop(Arc::new(udp), *bound.ip(), shared.clone()));
    let tcp_task = tokio::spawn(tcp_loop(tcp, *bound.ip(), shared));
    Ok(DnsServer { addr: bound, tasks: vec![udp_task.abort_handle(), tcp_task.abort_handle()] })
}

/// Parses nameserver lines of a resolv.conf text (IPv4 and IPv6, port 53), skipping the given
/// local addresses (to avoid loops).
///
/// Also skipped: duplicates, unspecified addresses, and IPv6 addresses with an interface-name
/// zone (`fe80::1%eth0`: resolving the name needs the host's interface table; a numeric zone is
/// kept). Loopback upstreams are kept: the daemon forwards from the host's network namespace,
/// where e.g. systemd-resolved's 127.0.0.53 is reachable.
pub fn upstreams_from_resolv_conf(text: &str, skip: &[IpAddr]) -> Vec<SocketAddr> {
    let skip: Vec<IpAddr> = skip.iter().map(|ip| ip.to_canonical()).collect();
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let Some(addr) = parse_nameserver(word) else {
            debug!(nameserver = word, "resolv.conf: unusable nameserver skipped");
            continue;
        };
        let ip = addr.ip().to_canonical();
        if ip.is_unspecified() || skip.contains(&ip) || out.contains(&addr) {
            continue;
        }
        out.push(addr);
    }
    out
}

fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Some((ip, zone)) = word.split_once('%') {
        let ip: Ipv6Addr = ip.parse().ok()?;
        let scope: u32 = zone.parse().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)));
    }
    Some(SocketAddr::new(word.parse().ok()?, 53))
}

/// Pure request handling for tests and for the sockets: given a raw query, returns the raw
/// response, or None when the query must be forwarded upstream (the caller forwards).
///
/// None is also returned for input that gets no answer at all (malformed, or not a query); the
/// servers tell the two apart internally. Responses are not size-limited here (TCP rules).
// The sockets need the three-way outcome, so outside tests nothing in the daemon may call this.
#[cfg_attr(not(test), allow(dead_code))]
pub fn answer(query: &[u8], client: Ipv4Addr, local: Ipv4Addr, names: &dyn Names) -> Option<Vec<u8>> {
    match handle(query, client, local, names, MAX_MESSAGE) {
        Action::Reply(r) => Some(r),
        Action::Forward(_) | Action::Ignore => None,
    }
}

/// The parts of a query that any response to it echoes.
struct Request {
    meta: Metadata,
    query: Query,
    /// The name to settle first (an [`Lookup::Unsettled`] one), and whom it was asked by.
    settle: Option<(String, Ipv4Addr, Ipv4Addr)>,
}

enum Action {
    Reply(Vec<u8>),
    /// Answered in a task of its own: forwarded upstream, or settled first (`Request::settle`).
    Forward(Request),
    /// Malformed or not a query: no reply (and on TCP, close the connection).
    Ignore,
}

fn handle(query: &[u8], client: Ipv4Addr, local: Ipv4Addr, names: &dyn Names, max_len: usize) -> Action {
    let mut decoder = BinDecoder::new(query);
    let Ok(header) = Header::read(&mut decoder) else {
        return Action::Ignore;
    };
    // Never answer responses: two DNS servers pointed at each other would loop forever.
    if header.message_type != MessageType::Query {
        return Action::Ignore;
    }
    let reply = |rcode| match build(&header.metadata, None, rcode, false, &[], max_len) {
        Some(r) => Action::Reply(r),
        None => Action::Ignore,
    };
    if header.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp);
    }
    if header.counts.queries != 1 {
        return reply(ResponseCode::FormErr);
    }
    let Ok(question) = Query::read(&mut decoder) else {
        return Action::Ignore;
    };
    let ascii = question.name().to_lowercase().to_ascii();
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    let mut req = Request { meta: header.metadata, query: question, settle: None };
    let lookup = names.lookup(client, local, name);
    if lookup == Lookup::Unsettled {
        req.settle = Some((name.to_string(), client, local));
    }
    respond(req, lookup, max_len)
}

/// The action for `req` now that its name's lookup is known.
fn respond(req: Request, lookup: Lookup, max_len: usize) -> Action {
    let built = match lookup {
        Lookup::Forward | Lookup::Unsettled => return Action::Forward(req),
        Lookup::NotFound => {
            counted("nxdomain");
            build(&req.meta, Some(&req.query), ResponseCode::NXDomain, true, &[], max_len)
        }
        Lookup::Found(addrs) => {
            counted("found");
            let is_a = req.query.query_class() == DNSClass::IN && req.query.query_type() == RecordType::A;
            let addrs = if is_a { &addrs[..] } else { &[] };
            build(&req.meta, Some(&req.query), ResponseCode::NoError, true, addrs, max_len)
        }
    };
    match built {
        Some(r) => Action::Reply(r),
        None => Action::Ignore,
    }
}

/// The answer to a query `handle` could not answer at once: its name settled first if it asked
/// that, then forwarded upstream if it is not netbee's. SERVFAIL when neither answers in time.
async fn answer_later(mut req: Request, query: &[u8], shared: &Shared, tcp: bool, max_len: usize) -> Option<Vec<u8>> {
    if let Some((name, client, local)) = req.settle.take() {
        let Ok(lookup) = timeout(SETTLE_TIMEOUT, shared.names.clone().settle(client, local, name)).await else {
            return servfail(&req, max_len);
        };
        match respond(req, lookup, max_len) {
            Action::Reply(r) => return Some(r),
            Action::Ignore => return None,
            Action::Forward(r) => req = r,
        }
    }
    let forwarded = if tcp {
        forward_tcp(query, req.meta.id, &shared.upstreams).await
    } else {
        forward_udp(query, req.meta.id, &shared.upstreams).await
    };
    match forwarded {
        Some(r) => {
            counted("forwarded");
            Some(r)
        }
        None => servfail(&req, max_len),
    }
}

/// Counts an answer in the daemon's metrics (`netbee_dns_queries_total{answer}`).
fn counted(answer: &'static str) {
    crate::metrics::control_plane().dns_query(answer);
}

/// Builds a response echoing the query's id, opcode, RD and CD (and question, when given),
/// with RA set: to a container we are its recursive resolver.
fn build(
    req: &Metadata,
    question: Option<&Query>,
    rcode: ResponseCode,
    authoritative: bool,
    addrs: &[Ipv4Addr],
    max_len: usize,
) -> Option<Vec<u8>> {
    let mut msg = Message::response(req.id, req.op_code);
    msg.metadata = Metadata::response_from_request(req);
    msg.metadata.recursion_available = true;
    msg.metadata.authoritative = authoritative;
    msg.metadata.response_code = rcode;
    if let Some(q) = question {
        msg.add_query(q.clone());
        for ip in addrs {
            // The owner name keeps the client's spelling: resolvers using 0x20 case
            // randomisation compare it.
            msg.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
        }
    }
    let encode = |msg: &Message| match msg.to_vec() {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(error = %e, "dns: cannot encode response");
            None
        }
    };
    let bytes = encode(&msg)?;
    if bytes.len() <= max_len {
        return Some(bytes);
    }
    msg.answers.clear();
    msg.metadata.truncation = true;
    encode(&msg)
}

fn servfail(req: &Request, max_len: usize) -> Option<Vec<u8>> {
    counted("servfail");
    build(&req.meta, Some(&req.query), ResponseCode::ServFail, false, &[], max_len)
}

struct Shared {
    names: Arc<dyn Names>,
    upstreams: Vec<SocketAddr>,
    forwards: Arc<Semaphore>,
}

async fn bind_pair(addr: SocketAddrV4) -> anyhow::Result<(UdpSocket, TcpListener)> {
    // With port 0 the kernel picks UDP's port, which TCP may already use elsewhere: try again.
    let mut attempt = 0;
    loop {
        let udp = UdpSocket::bind(addr).await.with_context(|| format!("dns: bind udp {addr}"))?;
        let port = udp.local_addr()?.port();
        let tcp_addr = SocketAddrV4::new(*addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && attempt < 16 => {
                debug!(error = %e, %tcp_addr, "dns: tcp port taken, picking another");
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("dns: bind tcp {tcp_addr}")),
        }
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, local: Ipv4Addr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    // Owned here so that aborting this task also aborts its forwards.
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "dns: udp receive failed");
                // Don't spin if the error persists.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else { continue };
        let packet = &buf[..n];
        match handle(packet, *peer.ip(), local, &*shared.names, UDP_MAX_RESPONSE) {
            Action::Ignore => debug!(%peer, len = n, "dns: ignored malformed udp packet"),
            Action::Reply(r) => {
                if let Err(e) = sock.send_to(&r, peer).await {
                    debug!(error = %e, %peer, "dns: udp send failed");
                }
            }
            Action::Forward(req) => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    debug!(%peer, "dns: too many forwarded queries, SERVFAIL");
                    if let Some(r) = servfail(&req, UDP_MAX_RESPONSE) {
                        let _ = sock.send_to(&r, peer).await;
                    }
                    continue;
                };
                let query = packet.to_vec();
                let (sock, shared) = (sock.clone(), shared.clone());
                forwards.spawn(async move {
                    let _permit = permit;
                    let Some(response) = answer_later(req, &query, &shared, false, UDP_MAX_RESPONSE).await else {
                        return;
                    };
                    if let Err(e) = sock.send_to(&response, peer).await {
                        debug!(error = %e, %peer, "dns: udp send failed");
                    }
                });
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, local: Ipv4Addr, shared: Arc<Shared>) {
    // Owned here so that aborting this task also closes its connections.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // E.g. out of file descriptors: back off rather than spin.
                warn!(error = %e, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else { continue };
        if conns.len() >= MAX_TCP_CONNECTIONS {
            debug!(%peer, "dns: too many tcp connections, closing new one");
            continue;
        }
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            _ => local,
        };
        conns.spawn(tcp_connection(stream, *peer.ip(), local, shared.clone()));
    }
}

async fn tcp_connection(stream: TcpStream, client: Ipv4Addr, local: Ipv4Addr, shared: Arc<Shared>) {
    // Each response is one write; don't let Nagle hold it back.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // Responses may come back out of order (RFC 7766 §6.2.1.1): a forwarded query must not
    // hold up the local answers behind it. The bound keeps a client that doesn't read from
    // making us queue without limit.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    // Outlives the reader, so that answers still in flight when the reader stops get written.
    let mut forwards = JoinSet::new();
    let reader = async {
        let tx = tx;
        loop {
            while forwards.try_join_next().is_some() {}
            let msg = match timeout(TCP_IDLE_TIMEOUT, read_frame(&mut rd)).await {
                Ok(Ok(m)) => m,
                // EOF, error or idle: done reading.
                _ => break,
            };
            match handle(&msg, client, local, &*shared.names, MAX_MESSAGE) {
                Action::Ignore => {
                    debug!(%client, "dns: malformed tcp message, closing");
                    break;
                }
                Action::Reply(r) => {
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
                Action::Forward(req) => {
                    let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                        debug!(%client, "dns: too many forwarded queries, SERVFAIL");
                        if let Some(r) = servfail(&req, MAX_MESSAGE)
                            && tx.send(r).await.is_err()
                        {
                            break;
                        }
                        continue;
                    };
                    let (tx, shared) = (tx.clone(), shared.clone());
                    forwards.spawn(async move {
                        let _permit = permit;
                        if let Some(r) = answer_later(req, &msg, &shared, true, MAX_MESSAGE).await {
                            let _ = tx.send(r).await;
                        }
                    });
                }
            }
        }
    };
    let writer = async {
        while let Some(r) = rx.recv().await {
            // A client that stops reading would otherwise pin this connection forever.
            match timeout(TCP_IDLE_TIMEOUT, write_frame(&mut wr, &r)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let len = r.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("dns message too long for tcp"))?;
    // One buffer, one write: the length and the message travel in one segment.
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    w.write_all(&frame).await
}

/// Whether `response` is an upstream's answer to our query `id`; anything else (stray or
/// spoofed datagrams) is not relayed.
fn is_response_to(response: &[u8], id: u16) -> bool {
    match Header::read(&mut BinDecoder::new(response)) {
        Ok(h) => h.id == id && h.message_type == MessageType::Response,
        Err(_) => false,
    }
}

/// Tries each upstream in order; the first answer wins. None if all fail or there are none.
async fn forward_udp(query: &[u8], id: u16, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        match timeout(UPSTREAM_TIMEOUT, udp_exchange(query, id, upstream)).await {
            Ok(Ok(r)) => return Some(r),
            Ok(Err(e)) => debug!(error = %e, %upstream, "dns: upstream failed (udp)"),
            Err(_) => debug!(%upstream, "dns: upstream timed out (udp)"),
        }
    }
    None
}

async fn udp_exchange(query: &[u8], id: u16, upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query: a random source port makes spoofed answers hard to land,
    // and connect() filters out datagrams from anyone but the upstream (and reports ICMP
    // port-unreachable at once, so a dead upstream fails fast).
    let sock = UdpSocket::bind(any).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = sock.recv(&mut buf).await?;
        if is_response_to(&buf[..n], id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// As [`forward_udp`], over TCP (for queries that came over TCP, typically after a truncated
/// UDP answer: asking upstream over UDP again would just be truncated again).
async fn forward_tcp(query: &[u8], id: u16, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        match timeout(UPSTREAM_TIMEOUT, tcp_exchange(query, id, upstream)).await {
            Ok(Ok(r)) => return Some(r),
            Ok(Err(e)) => debug!(error = %e, %upstream, "dns: upstream failed (tcp)"),
            Err(_) => debug!(%upstream, "dns: upstream timed out (tcp)"),
        }
    }
    None
}

async fn tcp_exchange(query: &[u8], id: u16, upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    write_frame(&mut stream, query).await?;
    let response = read_frame(&mut stream).await?;
    if !is_response_to(&response, id) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an answer to our query"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use std::str::FromStr;
    use std::sync::Mutex;
    use std::time::Instant;

    const WEB1: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
    const WEB2: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
    const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 9);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// "web" has two replicas; "hidden" exists elsewhere; "many" has 100; "late" and "late-none"
    /// are unsettled, settling after 50 ms to web's first replica and to a name to forward; the
    /// rest forwards.
    #[derive(Default)]
    struct TestNames {
        asked: Mutex<Vec<(Ipv4Addr, Ipv4Addr, String)>>,
    }

    impl Names for TestNames {
        fn lookup(&self, client: Ipv4Addr, local: Ipv4Addr, name: &str) -> Lookup {
            self.asked.lock().unwrap().push((client, local, name.to_string()));
            match name {
                "web" | "web.mynet" => Lookup::Found(vec![WEB1, WEB2]),
                "many" => Lookup::Found((1..=100).map(|i| Ipv4Addr::new(10, 89, 0, i)).collect()),
                "hidden" => Lookup::NotFound,
                "late" | "late-none" => Lookup::Unsettled,
                _ => Lookup::Forward,
            }
        }

        fn settle(self: Arc<Self>, _: Ipv4Addr, _: Ipv4Addr, name: String) -> BoxFuture<'static, Lookup> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if name == "late" { Lookup::Found(vec![WEB1]) } else { Lookup::Forward }
            })
        }
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        msg.to_vec().unwrap()
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).expect("response parses")
    }

    fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
        msg.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0,
                other => panic!("unexpected record {other:?}"),
            })
            .collect()
    }

    fn ask(names: &TestNames, q: &[u8]) -> Message {
        parse(&answer(q, CLIENT, GATEWAY, names).expect("answered locally"))
    }

    #[test]
    fn a_found_two_addresses_in_order() {
        let names = TestNames::default();
        let r = ask(&names, &query(0x1234, "Web.", RecordType::A));
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert!(r.metadata.recursion_desired);
        assert!(r.metadata.recursion_available);
        assert!(!r.metadata.truncation);
        assert_eq!(a_records(&r), vec![WEB1, WEB2]);
        assert!(r.answers.iter().all(|rec| rec.ttl == TTL));
        // Question echoed as asked, case included.
        assert_eq!(r.queries.len(), 1);
        assert_eq!(r.queries[0].name().to_ascii(), "Web.");
        assert_eq!(r.queries[0].query_type(), RecordType::A);
        assert_eq!(r.answers[0].name.to_ascii(), "Web.");
        // Lookup saw the lower-cased name without the dot, and who asked where.
        assert_eq!(names.asked.lock().unwrap().as_slice(), &[(CLIENT, GATEWAY, "web".to_string())]);
    }

    #[test]
    fn rd_is_echoed_not_invented() {
        let names = TestNames::default();
        let mut msg = Message::query();
        msg.metadata.id = 7;
        msg.metadata.recursion_desired = false;
        msg.add_query(Query::query(Name::from_str("web.mynet.").unwrap(), RecordType::A));
        let r = ask(&names, &msg.to_vec().unwrap());
        assert!(!r.metadata.recursion_desired);
        assert!(r.metadata.recursion_available);
        assert_eq!(a_records(&r), vec![WEB1, WEB2]);
    }

    #[test]
    fn not_found_is_nxdomain() {
        let names = TestNames::default();
        let r = ask(&names, &query(9, "hidden.", RecordType::A));
        assert_eq!(r.metadata.id, 9);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
        assert!(r.answers.is_empty());
        assert_eq!(r.queries.len(), 1);
        // Other types too.
        let r = ask(&names, &query(10, "hidden.", RecordType::AAAA));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn aaaa_for_found_name_is_empty_noerror() {
        let names = TestNames::default();
        for rtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let r = ask(&names, &query(11, "web.", rtype));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{rtype}");
            assert!(r.metadata.authoritative);
            assert!(r.answers.is_empty(), "{rtype}");
            assert_eq!(r.queries[0].query_type(), rtype);
        }
    }

    #[test]
    fn forward_names_are_left_to_the_caller() {
        let names = TestNames::default();
        assert!(answer(&query(12, "example.com.", RecordType::A), CLIENT, GATEWAY, &names).is_none());
        assert!(answer(&query(13, "example.com.", RecordType::AAAA), CLIENT, GATEWAY, &names).is_none());
        assert!(matches!(
            handle(&query(14, "example.com.", RecordType::A), CLIENT, GATEWAY, &names, UDP_MAX_RESPONSE),
            Action::Forward(_)
        ));
    }

    #[test]
    fn qdcount_two_is_formerr() {
        let names = TestNames::default();
        let mut msg = Message::query();
        msg.metadata.id = 0x4242;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_str("web.").unwrap(), RecordType::A));
        msg.add_query(Query::query(Name::from_str("hidden.").unwrap(), RecordType::A));
        let r = ask(&names, &msg.to_vec().unwrap());
        assert_eq!(r.metadata.id, 0x4242);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(r.metadata.recursion_desired);
        assert!(r.answers.is_empty());
        // QDCOUNT 0 as well.
        let mut msg = Message::query();
        msg.metadata.id = 5;
        let r = ask(&names, &msg.to_vec().unwrap());
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(names.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn other_opcodes_are_notimp() {
        let names = TestNames::default();
        let mut msg = Message::query();
        msg.metadata.op_code = OpCode::Status;
        msg.add_query(Query::query(Name::from_str("web.").unwrap(), RecordType::A));
        let r = ask(&names, &msg.to_vec().unwrap());
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn malformed_input_does_not_panic() {
        let names = TestNames::default();
        let good = query(15, "web.mynet.", RecordType::A);
        // Every truncation of a valid query.
        for n in 0..good.len() {
            let _ = answer(&good[..n], CLIENT, GATEWAY, &names);
            assert!(matches!(handle(&good[..n], CLIENT, GATEWAY, &names, UDP_MAX_RESPONSE), Action::Ignore));
        }
        // A response is never answered.
        let response = answer(&good, CLIENT, GATEWAY, &names).unwrap();
        assert!(answer(&response, CLIENT, GATEWAY, &names).is_none());
        // A compression pointer loop in the question name.
        let mut looped = good[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let _ = answer(&looped, CLIENT, GATEWAY, &names);
        // Random bytes after a plausible header, deterministic.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let mut pkt: Vec<u8> = (0..len).map(|i| (state.rotate_left(i as u32 * 7) ^ i as u64) as u8).collect();
            if pkt.len() >= 6 && state & 1 == 0 {
                pkt[2] &= 0x01; // query, opcode 0
                pkt[4] = 0;
                pkt[5] = 1;
            }
            let _ = answer(&pkt, CLIENT, GATEWAY, &names);
        }
    }

    #[test]
    fn oversized_udp_answer_is_truncated() {
        let names = TestNames::default();
        let q = query(16, "many.", RecordType::A);
        let Action::Reply(r) = handle(&q, CLIENT, GATEWAY, &names, UDP_MAX_RESPONSE) else {
            panic!("expected a reply");
        };
        assert!(r.len() <= UDP_MAX_RESPONSE);
        let r = parse(&r);
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.id, 16);
        // Over TCP the whole set goes out.
        let r = ask(&names, &q);
        assert!(!r.metadata.truncation);
        assert_eq!(a_records(&r).len(), 100);
    }

    #[test]
    fn resolv_conf_parsing() {
        let text = "\
# generated\n\
; another comment\n\
search example.com\n\
nameserver 192.0.2.53\n\
nameserver   10.88.0.1  \n\
nameserver 2001:db8::53\n\
nameserver fe80::1%2\n\
nameserver fe80::1%eth0\n\
nameserver 192.0.2.53\n\
nameserver 0.0.0.0\n\
nameserver not-an-ip\n\
nameserver\n\
#nameserver 192.0.2.99\n\
options ndots:0\n\
nameserver 127.0.0.53 # systemd-resolved\n";
        let got = upstreams_from_resolv_conf(text, &[IpAddr::V4(GATEWAY)]);
        let want: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            "127.0.0.53:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
        // An IPv4-mapped spelling of a skipped address is skipped too.
        let got = upstreams_from_resolv_conf("nameserver ::ffff:10.88.0.1\n", &[IpAddr::V4(GATEWAY)]);
        assert!(got.is_empty());
        assert!(upstreams_from_resolv_conf("", &[]).is_empty());
    }

    // ---- end to end, on 127.0.0.1 only ----

    async fn udp_ask(server: SocketAddrV4, q: &[u8]) -> Message {
        let sock = UdpSocket::bind((LO, 0)).await.unwrap();
        sock.send_to(q, server).await.unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, _) =
            timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.expect("udp answer in time").unwrap();
        parse(&buf[..n])
    }

    async fn tcp_ask(stream: &mut TcpStream, q: &[u8]) -> Message {
        write_frame(stream, q).await.unwrap();
        let r = timeout(Duration::from_secs(5), read_frame(stream)).await.expect("tcp answer in time").unwrap();
        parse(&r)
    }

    /// A fake upstream on 127.0.0.1 (UDP and TCP, same port) that answers every query with
    /// one A record of UPSTREAM_ANSWER.
    async fn fake_upstream() -> (SocketAddr, JoinSet<()>) {
        let (udp, tcp) = bind_pair(SocketAddrV4::new(LO, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        fn reply(q: &[u8]) -> Vec<u8> {
            let q = Message::from_vec(q).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_query(q.queries[0].clone());
            r.add_answer(Record::from_rdata(q.queries[0].name().clone(), 300, RData::A(A(UPSTREAM_ANSWER))));
            r.to_vec().unwrap()
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                udp.send_to(&reply(&buf[..n]), peer).await.unwrap();
            }
        });
        tasks.spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                let q = read_frame(&mut s).await.unwrap();
                write_frame(&mut s, &reply(&q)).await.unwrap();
            }
        });
        (addr, tasks)
    }

    /// An address on 127.0.0.1 where nothing listens (UDP and TCP).
    async fn dead_upstream() -> SocketAddr {
        let (udp, tcp) = bind_pair(SocketAddrV4::new(LO, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        drop((udp, tcp));
        addr
    }

    async fn start(upstreams: Vec<SocketAddr>) -> (DnsServer, Arc<TestNames>) {
        let names = Arc::new(TestNames::default());
        let server = serve(SocketAddrV4::new(LO, 0), names.clone(), upstreams).await.unwrap();
        assert_ne!(server.local_addr().port(), 0);
        (server, names)
    }

    #[tokio::test]
    async fn e2e_udp_and_tcp_local_answers() {
        let (server, names) = start(vec![]).await;
        let addr = server.local_addr();

        let r = udp_ask(addr, &query(100, "web.", RecordType::A)).await;
        assert_eq!(r.metadata.id, 100);
        assert_eq!(a_records(&r), vec![WEB1, WEB2]);
        assert_eq!(names.asked.lock().unwrap()[0], (LO, LO, "web".to_string()));

        let r = udp_ask(addr, &query(101, "hidden.", RecordType::A)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

        // an unsettled name is answered once it settles, over both transports
        let r = udp_ask(addr, &query(110, "late.", RecordType::A)).await;
        assert_eq!((r.metadata.id, a_records(&r)), (110, vec![WEB1]), "late over udp");

        // Several queries on one TCP connection; and what UDP truncates, TCP carries.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let r = tcp_ask(&mut stream, &query(102, "web.", RecordType::A)).await;
        assert_eq!(r.metadata.id, 102);
        assert_eq!(a_records(&r), vec![WEB1, WEB2]);
        let r = tcp_ask(&mut stream, &query(103, "web.", RecordType::AAAA)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = udp_ask(addr, &query(104, "many.", RecordType::A)).await;
        assert!(r.metadata.truncation);
        let r = tcp_ask(&mut stream, &query(105, "many.", RecordType::A)).await;
        assert_eq!(a_records(&r).len(), 100);
        let r = tcp_ask(&mut stream, &query(111, "late.", RecordType::A)).await;
        assert_eq!((r.metadata.id, a_records(&r)), (111, vec![WEB1]), "late over tcp");

        // Garbage over UDP is ignored and the server keeps serving.
        let sock = UdpSocket::bind((LO, 0)).await.unwrap();
        sock.send_to(&[1, 2, 3], addr).await.unwrap();
        let r = udp_ask(addr, &query(106, "web.", RecordType::A)).await;
        assert_eq!(r.metadata.id, 106);

        // Garbage over TCP closes that connection.
        let mut bad = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut bad, &[0xde, 0xad]).await.unwrap();
        let mut rest = Vec::new();
        let n = timeout(Duration::from_secs(5), bad.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0);
        drop(server);
    }

    #[tokio::test]
    async fn e2e_forward_udp_and_tcp() {
        let (upstream, _upstream_tasks) = fake_upstream().await;
        // A dead first upstream (port unreachable) is skipped quickly.
        let (server, _names) = start(vec![dead_upstream().await, upstream]).await;
        let addr = server.local_addr();

        let started = Instant::now();
        let q = query(200, "example.com.", RecordType::A);
        let r = udp_ask(addr, &q).await;
        assert_eq!(r.metadata.id, 200);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&r), vec![UPSTREAM_ANSWER]);
        assert_eq!(r.answers[0].ttl, 300, "upstream answer relayed verbatim");
        assert!(started.elapsed() < UPSTREAM_TIMEOUT);

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let r = tcp_ask(&mut stream, &query(201, "example.org.", RecordType::AAAA)).await;
        assert_eq!(r.metadata.id, 201);
        assert_eq!(a_records(&r), vec![UPSTREAM_ANSWER]);
        // The same connection still answers local names.
        let r = tcp_ask(&mut stream, &query(202, "web.", RecordType::A)).await;
        assert_eq!(a_records(&r), vec![WEB1, WEB2]);
        // an unsettled name that settles as not netbee's is forwarded
        let r = udp_ask(addr, &query(203, "late-none.", RecordType::A)).await;
        assert_eq!((r.metadata.id, a_records(&r)), (203, vec![UPSTREAM_ANSWER]), "late-none forwarded");
    }

    #[tokio::test]
    async fn e2e_no_upstreams_is_servfail() {
        let (server, _names) = start(vec![]).await;
        let addr = server.local_addr();
        let r = udp_ask(addr, &query(300, "example.com.", RecordType::A)).await;
        assert_eq!(r.metadata.id, 300);
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert!(r.metadata.recursion_available);
        assert_eq!(r.queries.len(), 1);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let r = tcp_ask(&mut stream, &query(301, "example.com.", RecordType::A)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn e2e_slow_upstream_blocks_nothing_else() {
        // Bound but never answers: the forward waits for the full timeout.
        let silent = UdpSocket::bind((LO, 0)).await.unwrap();
        let (server, _names) = start(vec![silent.local_addr().unwrap()]).await;
        let addr = server.local_addr();

        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let started = Instant::now();
        client.send_to(&query(400, "example.com.", RecordType::A), addr).await.unwrap();
        client.send_to(&query(401, "web.", RecordType::A), addr).await.unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, _) = timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let first = parse(&buf[..n]);
        assert_eq!(first.metadata.id, 401, "local answer not held up by the forward");
        assert!(started.elapsed() < Duration::from_secs(1));
        let (n, _) = timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let second = parse(&buf[..n]);
        assert_eq!(second.metadata.id, 400);
        assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() >= UPSTREAM_TIMEOUT);
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let (server, _names) = start(vec![]).await;
        let addr = server.local_addr();
        drop(server);
        // Let the aborted tasks go, releasing the sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
