//! The server edge: the accept loop, and what bounds a hostile connection before and while
//! a route runs (issue 10).
//!
//! - **Connection caps** ([`EdgeLimits`]): at most `max_connections` open connections, and
//!   at most `max_connections_per_ip` from one source address (IPv6 per /64; a trusted
//!   reverse proxy counts only against the total). A connection over a cap is closed right
//!   at accept, before any byte of it is read, and counted in
//!   `phoenix_connections_refused_total`.
//! - **Timeouts**: a request head must arrive within `header_read_timeout` (hyper's timer,
//!   which also runs while a keep-alive connection waits for its next request, so it is the
//!   keep-alive idle timeout too); a connection on which no byte moves either way for
//!   `idle_timeout` is closed; a request body must arrive within `body_read_timeout`
//!   ([`body`]; answered 408 `REQUEST_TIMEOUT`).
//! - **Bodies** are counted against the size limit as they arrive ([`body`]): a declared
//!   `Content-Length` over the limit is refused before a byte is read, and a body without one
//!   (chunked) is refused with `TOO_LARGE` as soon as it passes the limit.
//! - **Noise** (resets, malformed HTTP, timeouts, refused connections) is logged at debug,
//!   with one summary line a minute at info when there was any.
//!
//! Requirement: EDGE-5
//! `/health` keeps answering while one address (or a few) floods the server: an address
//! holds at most `max_connections_per_ip` of the `max_connections` slots, so the rest stays
//! free for everyone else (a monitor included), and stalled connections give their slot
//! back after the timeouts. A flood from many addresses at once is the reverse proxy's or
//! the network's job (docs/limits.md).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warp::reply::Response;
use warp::{Filter, Rejection};
use zeroize::Zeroizing;

use phoenix_types::error::{ErrorCode, WireError};

use crate::ratelimit::IpNet;
use crate::server::Server;

/// Connection caps and timeouts (part of [`crate::server::Limits`]; see docs/limits.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Most open connections in total.
    pub max_connections: usize,
    /// Most open connections from one source address (IPv6: one /64); at most
    /// `max_connections`.
    pub max_connections_per_ip: usize,
    /// Time for a request head to arrive, also between keep-alive requests.
    pub header_read_timeout: Duration,
    /// Time for a request body to arrive, from the moment the route starts reading it.
    pub body_read_timeout: Duration,
    /// A connection on which no byte is read or written for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_ip: 32,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of the edge (exported at `GET /metrics`, summarized in the log once a minute).
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub refused_total_cap: AtomicU64,
    /// Connections closed at accept because their address had `max_connections_per_ip`.
    pub refused_per_ip_cap: AtomicU64,
    /// Connections closed because a request head did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Connections closed because nothing moved for `idle_timeout`.
    pub idle_timeouts: AtomicU64,
    /// Connections closed on malformed HTTP.
    pub malformed: AtomicU64,
    /// Connections that ended with another error (reset, closed mid-message, ...).
    pub errors: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
}

/// The TCP peer of a request, put into its extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The TCP peer of the request: set by [`serve`], or by warp's own server and test harness.
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>()
        .and(warp::addr::remote())
        .map(|ours: Option<PeerAddr>, warps: Option<SocketAddr>| ours.map(|p| p.0).or(warps))
}

/// Why a body was refused; [`crate::http`]'s recovery answers with the error inside.
#[derive(Debug)]
pub struct BodyRefused(pub WireError);

impl warp::reject::Reject for BodyRefused {}

// Requirement: EDGE-3 (bodies are counted as they stream; TOO_LARGE as soon as the limit is
// passed, whatever Content-Length says or omits)
// Requirement: EDGE-1 (a body that does not arrive within the body read timeout is answered
// 408 REQUEST_TIMEOUT)
/// The request body, at most `max` bytes, read within `timeout`. Held in a buffer that is
/// zeroized when dropped (and whose earlier allocations are zeroized as it grows): a DS
/// request's body carries the group's EAR key (DS-EAR-1).
pub fn body(
    max: usize,
    timeout: Duration,
) -> impl Filter<Extract = (Zeroizing<Vec<u8>>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared: Option<u64>, stream| async move {
            read_body(declared, stream, max, timeout)
                .await
                .map_err(|e| warp::reject::custom(BodyRefused(e)))
        })
}

// Requirement: DS-EAR-1 (no copy of the body, and so of an EAR key, is freed unzeroized)
/// Make room for `additional` more bytes in `out`, never beyond `max` in all. Growing moves
/// the bytes to a new allocation; the old one is zeroized before it is freed (a plain
/// `Vec`/`BytesMut` growth would leave it behind in freed memory).
fn reserve_zeroizing(out: &mut Zeroizing<Vec<u8>>, additional: usize, max: usize) {
    let needed = out.len().saturating_add(additional);
    if needed <= out.capacity() {
        return;
    }
    let capacity = needed
        .max(out.capacity().saturating_mul(2))
        .min(max.max(needed));
    let mut grown = Vec::with_capacity(capacity);
    grown.extend_from_slice(out);
    // Dropping the old `Zeroizing` zeroizes its whole allocation, spare capacity included.
    *out = Zeroizing::new(grown);
}

async fn read_body<S, B>(
    declared: Option<u64>,
    stream: S,
    max: usize,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, WireError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || WireError::new(ErrorCode::TooLarge, "request body exceeds the size limit");
    let max_declared = u64::try_from(max).unwrap_or(u64::MAX);
    if declared.is_some_and(|n| n > max_declared) {
        return Err(too_large());
    }
    let collect = async {
        let mut stream = std::pin::pin!(stream);
        // Never allocate from a claimed length beyond a small first buffer.
        let first = declared
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            .min(max)
            .min(64 * 1024);
        let mut out = Zeroizing::new(Vec::with_capacity(first));
        while let Some(chunk) = stream.next().await {
            let mut chunk = chunk.map_err(|e| {
                tracing::debug!(target: "phoenix_server::edge", error = %e, "request body not read");
                WireError::new(ErrorCode::Malformed, "the request body could not be read")
            })?;
            if chunk.remaining() > max.saturating_sub(out.len()) {
                return Err(too_large());
            }
            reserve_zeroizing(&mut out, chunk.remaining(), max);
            while chunk.has_remaining() {
                let part = chunk.chunk();
                let n = part.len();
                out.extend_from_slice(part);
                chunk.advance(n);
            }
        }
        Ok(out)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(read) => read,
        Err(_) => {
            tracing::debug!(target: "phoenix_server::edge", "request body timed out");
            Err(WireError::new(
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
            ))
        }
    }
}

/// Open connections, in total and per address.
struct Tracker {
    limits: EdgeLimits,
    trusted: Vec<IpNet>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

enum Refusal {
    Total,
    PerIp,
}

/// A connection's slot; given back when dropped.
struct Slot {
    tracker: Arc<Tracker>,
    /// The per-address key (`None` for a trusted proxy).
    key: Option<IpAddr>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    // Requirement: EDGE-2 (caps on open connections in total and per source address,
    // enforced at accept)
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = if self.trusted.iter().any(|n| n.contains(ip)) {
            None
        } else {
            Some(crate::ratelimit::bucket_ip(ip))
        };
        let mut open = self.lock();
        if open.0 >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        if let Some(key) = key {
            let count = open.1.entry(key).or_insert(0);
            if *count >= self.limits.max_connections_per_ip {
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        open.0 += 1;
        Ok(Slot {
            tracker: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.tracker.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(key) = self.key
            && let Some(count) = open.1.get_mut(&key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.1.remove(&key);
            }
        }
    }
}

/// A TCP stream that records when a byte last moved (for the idle timeout).
struct ActivityIo {
    inner: TcpStream,
    start: Instant,
    /// Milliseconds since `start` of the last read or write.
    last: Arc<AtomicU64>,
}

impl ActivityIo {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `ActivityIo::last` before the first byte moved.
const NOTHING_YET: u64 = u64::MAX;

/// Completes once nothing moved on the connection for `idle`, or, when nothing at all
/// arrived, after `first_byte` (hyper's header timer starts only once the HTTP version is
/// known, i.e. after the first bytes). Returns whether anything had moved.
async fn idle(start: Instant, last: &AtomicU64, first_byte: Duration, idle: Duration) -> bool {
    loop {
        let moved = last.load(Ordering::Relaxed);
        let deadline = if moved == NOTHING_YET {
            start + first_byte.min(idle)
        } else {
            start + Duration::from_millis(moved) + idle
        };
        if Instant::now() >= deadline {
            return moved != NOTHING_YET;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// How a connection ended.
enum Ended {
    /// hyper finished it (the client closed, or an error).
    Served(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    /// Nothing moved for the idle timeout.
    Idle,
    /// Nothing arrived at all within the header read timeout.
    Silent,
    /// The TLS handshake failed or timed out.
    Handshake(String),
}

/// Serve `service` on `listener` until `shutdown` completes, under the caps and timeouts
/// of `server.limits.edge`. Connections in progress finish (within the timeouts) before
/// this returns.
pub async fn serve<S>(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limits = server.limits.edge.clone();
    let tracker = Arc::new(Tracker {
        limits: limits.clone(),
        trusted: server.limits.rate_limits.trusted_proxies.clone(),
        open: Mutex::new((0, HashMap::new())),
    });
    let summary = tokio::spawn(summarize(server.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = &server.metrics.edge;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or a connection that died in the backlog: wait
                    // a moment on the former rather than spin.
                    metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "phoenix_server::edge", error = %e, "accept failed");
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let slot = match tracker.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let (counter, why) = match refusal {
                    Refusal::Total => (&metrics.refused_total_cap, "max_connections"),
                    Refusal::PerIp => (&metrics.refused_per_ip_cap, "max_connections_per_ip"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "phoenix_server::edge", %peer, cap = why, "connection refused");
                drop(stream);
                continue;
            }
        };
        let watcher = graceful.watcher();
        let service = service.clone();
        let server = server.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let metrics = &server.metrics.edge;
            metrics.open.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let start = Instant::now();
            let last = Arc::new(AtomicU64::new(NOTHING_YET));
            let io = ActivityIo {
                inner: stream,
                start,
                last: last.clone(),
            };
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    let mut service = service.clone();
                    tower_service::Service::call(&mut service, request)
                });
            let outcome = match tls {
                None => serve_connection(io, service, watcher, &limits, start, &last).await,
                // Requirement: OPS-TLS-1 (the handshake within the header read timeout)
                Some(tls) => {
                    match tokio::time::timeout(
                        limits.header_read_timeout,
                        tls.acceptor().accept(io),
                    )
                    .await
                    {
                        Ok(Ok(io)) => {
                            serve_connection(io, service, watcher, &limits, start, &last).await
                        }
                        Ok(Err(e)) => Ended::Handshake(e.to_string()),
                        Err(_) => Ended::Handshake("timed out".into()),
                    }
                }
            };
            metrics.open.fetch_sub(1, Ordering::Relaxed);
            // Requirement: EDGE-4 (connection-level noise at debug, summarized once a minute)
            match outcome {
                Ended::Served(Ok(())) => {}
                Ended::Served(Err(e)) => {
                    let kind = match e.downcast_ref::<hyper::Error>() {
                        Some(h) if h.is_timeout() => {
                            metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            "header read timeout"
                        }
                        Some(h) if h.is_parse() || h.is_parse_status() => {
                            metrics.malformed.fetch_add(1, Ordering::Relaxed);
                            "malformed HTTP"
                        }
                        _ => {
                            metrics.errors.fetch_add(1, Ordering::Relaxed);
                            "connection error"
                        }
                    };
                    tracing::debug!(target: "phoenix_server::edge", %peer, error = %e, "{kind}");
                }
                Ended::Idle => {
                    metrics.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "phoenix_server::edge", %peer, "idle timeout");
                }
                Ended::Silent => {
                    metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "phoenix_server::edge", %peer, "header read timeout (nothing sent)");
                }
                Ended::Handshake(e) => {
                    metrics
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "phoenix_server::edge", %peer, error = %e, "TLS handshake failed");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    summary.abort();
}

/// Serve HTTP/1.1 or HTTP/2 on one connection (plain or TLS) until it ends, is idle for
/// the idle timeout, or sent nothing within the header read timeout.
async fn serve_connection<I, Svc>(
    io: I,
    service: Svc,
    watcher: hyper_util::server::graceful::Watcher,
    limits: &EdgeLimits,
    start: Instant,
    last: &AtomicU64,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>
        + Send
        + 'static,
    Svc::Future: Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Requirement: EDGE-1 (header read timeout, also between keep-alive requests)
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    // Requirement: EDGE-1 (idle timeout: nothing moved either way; a connection that
    // sends nothing at all is closed after the header read timeout)
    tokio::select! {
        served = connection => Ended::Served(served),
        moved = idle(start, last, limits.header_read_timeout, limits.idle_timeout) => {
            if moved { Ended::Idle } else { Ended::Silent }
        }
    }
}

/// Once a minute, one line at info with what the edge closed in that minute (nothing when
/// nothing happened).
async fn summarize(server: Arc<Server>) {
    let m = &server.metrics.edge;
    let read = || {
        [
            m.refused_total_cap.load(Ordering::Relaxed),
            m.refused_per_ip_cap.load(Ordering::Relaxed),
            m.header_timeouts.load(Ordering::Relaxed),
            m.idle_timeouts.load(Ordering::Relaxed),
            m.malformed.load(Ordering::Relaxed),
            m.errors.load(Ordering::Relaxed),
            m.accept_errors.load(Ordering::Relaxed),
        ]
    };
    let mut before = read();
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let now = read();
        let [
            total_cap,
            per_ip_cap,
            header,
            idle,
            malformed,
            errors,
            accept,
        ] = {
            let mut delta = [0u64; 7];
            for ((d, n), b) in delta.iter_mut().zip(now).zip(before) {
                *d = n.saturating_sub(b);
            }
            delta
        };
        before = now;
        if total_cap + per_ip_cap + header + idle + malformed + errors + accept > 0 {
            tracing::info!(
                target: "phoenix_server::edge",
                refused_max_connections = total_cap,
                refused_max_connections_per_ip = per_ip_cap,
                header_read_timeouts = header,
                idle_timeouts = idle,
                malformed = malformed,
                errors = errors,
                accept_errors = accept,
                open = m.open.load(Ordering::Relaxed),
                "connections closed in the last minute"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Requirement: DS-EAR-1
    /// The hole: the body buffer grew by reallocation (`BytesMut`) and was freed as it was,
    /// so copies of a DS request's EAR key stayed behind in freed memory. Every heap copy
    /// the request handling makes (body buffer as it grows, envelope payload, decoded
    /// request, key check, group state) is zeroized before it is freed. Copies on the stack
    /// and in hyper's connection buffers are outside what this sees (docs/architecture.md).
    #[test]
    fn no_copy_of_the_ear_key_is_freed_unzeroized() {
        use crate::auth::Request;
        use crate::ds::group_state::{self, GroupState};
        use phoenix_types::codec;
        use phoenix_types::crypto::SymmetricKey;
        use phoenix_types::messages::ds::SendMessageRequest;
        use phoenix_types::messages::{Auth, RequestEnvelope};
        use zeroize::Zeroize;

        assert!(
            phoenix_freed_memory::installed(),
            "the watching allocator is not installed: this test would pass vacuously"
        );
        let secret: [u8; 32] = std::array::from_fn(|i| 0xc3 ^ (i as u8).wrapping_mul(37));
        let group_id = b"engineering@a.test".to_vec();
        let empty = GroupState {
            mls: Vec::new(),
            group_info: Vec::new().into(),
            members: Vec::new(),
        };
        let sealed = group_state::seal(&SymmetricKey(secret), &group_id, 3, 1, &empty).unwrap();
        let payload = codec::encode(&SendMessageRequest {
            timestamp: 1,
            group_id: group_id.clone().into(),
            ear_key: secret,
            message: vec![1, 2, 3].into(),
            notification: phoenix_types::messages::Notification::Send,
        })
        .unwrap();
        let envelope = codec::encode(&RequestEnvelope {
            version: phoenix_types::PROTOCOL_VERSION,
            payload: payload.into(),
            auth: Auth::None,
        })
        .unwrap();
        // The client's bytes as they arrive: never freed, so only the server's copies count.
        let arrived: &'static [u8] = Box::leak(envelope.into_boxed_slice());
        let chunks: Vec<&'static [u8]> = arrived.chunks(7).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (epoch, freed) = phoenix_freed_memory::freed_holding(secret, || {
            runtime.block_on(async {
                let stream = futures_util::stream::iter(chunks.into_iter().map(Ok));
                let body = read_body(None, stream, 1 << 20, Duration::from_secs(5))
                    .await
                    .unwrap();
                let request = Request::decode("ds", "send_message", &body, 1 << 20).unwrap();
                drop(body);
                // As every DS operation takes its key (e.g. `ds::send_message`).
                let mut req: SendMessageRequest = request.payload().unwrap();
                let key = SymmetricKey(req.ear_key);
                req.ear_key.zeroize();
                let (state, epoch) = group_state::open(&key, &group_id, 3, &sealed).unwrap();
                assert_eq!(state, empty);
                epoch
            })
        });
        assert_eq!(epoch, 1);
        assert_eq!(
            freed, 0,
            "{freed} heap block(s) were freed still holding the EAR key"
        );
    }

    fn tracker(total: usize, per_ip: usize, trusted: Vec<IpNet>) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits: EdgeLimits {
                max_connections: total,
                max_connections_per_ip: per_ip,
                ..EdgeLimits::default()
            },
            trusted,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    // Requirement: EDGE-2
    #[test]
    fn caps_count_per_address_and_in_total_and_slots_come_back() {
        let t = tracker(3, 2, vec!["10.0.0.1/32".parse().unwrap()]);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let proxy: IpAddr = [10, 0, 0, 1].into();
        let a1 = t.admit(a).ok();
        let _a2 = t.admit(a).ok();
        assert!(matches!(t.admit(a), Err(Refusal::PerIp)));
        let _b1 = t.admit(b).ok();
        assert!(matches!(t.admit(proxy), Err(Refusal::Total)));
        drop(a1);
        let p1 = t.admit(proxy);
        assert!(p1.is_ok(), "a trusted proxy is not capped per address");
        assert_eq!(t.lock().0, 3);
        drop(p1);
        assert_eq!(t.lock().0, 2);
    }
}
