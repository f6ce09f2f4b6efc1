//! The HTTP boundary (warp): routes, body limits, and the one place where a
//! [`WireError`] becomes an RFC 9457 problem response. Nothing below this module knows
//! about HTTP.
//!
//! Routes:
//! - `POST /phoenix/v1/{as,qs,ds}/<operation>`: TLS-codec request envelope in, TLS-codec
//!   response out (`application/octet-stream`);
//! - `POST /phoenix/v1/federation/enqueue`: QS-to-QS forwarding (a signed
//!   `FederatedEnqueue`, not an envelope);
//! - `GET /health`;
//! - `GET /metrics`: counters and outbox gauges, Prometheus text format;
//! - `GET /.well-known/phoenix`: domain, protocol version, the CA certificate (PEM) and
//!   its SHA-256 fingerprint, the QS queue-config key and the QS verifying key;
//! - `/.well-known/polyproto-core` and `/.p2/core/v1/...`: [`crate::polyproto`].

use std::convert::Infallible;

use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;

use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use zeroize::Zeroizing;

use phoenix_types::PROTOCOL_VERSION;
use phoenix_types::certs;
use phoenix_types::discovery::Discovery;
use phoenix_types::error::{ErrorCode, Problem, WireError};
use phoenix_types::messages::federation as federation_messages;

use crate::auth::Request;
use crate::ratelimit::{self, RateLimiter};
use crate::server::{Server, now};
use crate::store::{DsStore, EphemeralStore};
use crate::{as_, ds, qs};

/// All routes of the server.
pub fn routes(
    server: Arc<Server>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_server = {
        let server = server.clone();
        warp::any().map(move || server.clone())
    };
    // Requirement: OPS-HEALTH-1, OPS-HEALTH-2
    let health = warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_server.clone())
        .then(
            |server: Arc<Server>| async move { status_reply(&crate::ops::health(&server).await) },
        );
    let ready = warp::path("ready")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_server.clone())
        .map(|server: Arc<Server>| status_reply(&crate::ops::ready(&server)));
    let discovery = warp::path!(".well-known" / "phoenix")
        .and(warp::get())
        .and(with_server.clone())
        .map(|server: Arc<Server>| warp::reply::json(&discovery(&server)).into_response());
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_server.clone())
        .then(|server: Arc<Server>| async move {
            warp::reply::with_header(
                metrics(&server).await,
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    // Requirement: QS-LISTEN-1
    let listen = warp::path!("phoenix" / "v1" / "qs" / "listen")
        .and(warp::get())
        .and(warp::ws())
        .and(with_server.clone())
        .map(|ws: warp::ws::Ws, server: Arc<Server>| {
            ws.max_message_size(phoenix_types::messages::qs::MAX_LISTEN_CLIENT_FRAME)
                .max_frame_size(phoenix_types::messages::qs::MAX_LISTEN_CLIENT_FRAME)
                .on_upgrade(move |socket| listen_socket(server, socket))
                .into_response()
        });
    // Rate limits (per client IP, per target, per peer) before anything is decoded for
    // the operation; see `ratelimit`.
    let limiter = RateLimiter::new(&server.limits.rate_limits);
    limiter.spawn_maintenance();
    let polyproto_limiter = limiter.clone();
    let with_limiter = warp::any().map(move || limiter.clone());
    let operations = warp::path!("phoenix" / "v1" / String / String)
        .and(warp::post())
        .and(crate::edge::remote())
        .and(warp::header::headers_cloned())
        .and(crate::edge::body(
            server.limits.max_body,
            server.limits.edge.body_read_timeout,
        ))
        .and(with_server)
        .and(with_limiter)
        .then(
            |service: String,
             operation: String,
             peer: Option<SocketAddr>,
             headers: HeaderMap,
             body: Zeroizing<Vec<u8>>,
             server: Arc<Server>,
             limiter: Arc<RateLimiter>| async move {
                let client = limiter.client_ip(peer, &headers);
                let started = std::time::Instant::now();
                let handled = async {
                    // A foreign session's bearer token (a client of another server acting
                    // here): checked before anything else, so a bad token is refused, never
                    // ignored; only its opaque key reaches the limiter.
                    let session = match headers.get(warp::http::header::AUTHORIZATION) {
                        None => None,
                        Some(value) => {
                            match crate::polyproto::session::rate_limit_key(
                                &server,
                                value.to_str().ok(),
                            )
                            .await
                            {
                                Ok(key) => Some(key),
                                Err(e) => return problem(&e),
                            }
                        }
                    };
                    if let Err(limited) = limiter
                        .check_operation_in_session(session, client, &service, &operation, &body)
                    {
                        return ratelimit::with_retry_after(problem(&limited.error()), &limited);
                    }
                    match dispatch(&server, &service, &operation, &body).await {
                        Ok(bytes) => warp::reply::with_header(
                            bytes,
                            "content-type",
                            "application/octet-stream",
                        )
                        .into_response(),
                        Err(e) => problem(&e),
                    }
                };
                // The observation tap's request scope, from the session check on (test-only
                // feature; see `observe`).
                let response =
                    observe_request!(server, &service, &operation, client, handled).await;
                // Requirement: OPS-METRICS-1, OPS-LOG-2
                let elapsed = started.elapsed();
                let label = if is_operation(&service, &operation) {
                    format!("{service}/{operation}")
                } else {
                    "unknown".to_string()
                };
                let code = response
                    .headers()
                    .get(OUTCOME_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("OK")
                    .to_string();
                server.metrics.ops.observe(&label, &code, elapsed);
                tracing::info!(
                    target: "phoenix_server::request",
                    operation = %label,
                    outcome = %code,
                    status = response.status().as_u16(),
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    client = %crate::ops::log_address(client),
                    "request"
                );
                response
            },
        );
    health
        .or(ready)
        .unify()
        .or(discovery)
        .unify()
        .or(metrics)
        .unify()
        .or(listen)
        .unify()
        .or(operations)
        .unify()
        .or(crate::polyproto::routes(server, polyproto_limiter))
        .unify()
        .recover(recover)
        .unify()
        .map(|mut response: Response| {
            response.headers_mut().remove(OUTCOME_HEADER);
            response
        })
        .with(warp::log::custom(|info| {
            tracing::info!(
                target: "phoenix_server::http",
                method = %info.method(),
                path = %info.path(),
                status = info.status().as_u16(),
                micros = info.elapsed().as_micros() as u64,
                // Requirement: OPS-LOG-2
                client = %crate::ops::log_address(info.remote_addr().map(|a| a.ip())),
                "request"
            );
        }))
}

/// A `qs/listen` WebSocket: warp's messages to and from [`qs::listen`]'s frames.
async fn listen_socket(server: Arc<Server>, socket: warp::ws::WebSocket) {
    use futures_util::{SinkExt, StreamExt};
    use qs::listen::Inbound;
    let (sink, stream) = socket.split();
    let incoming = stream.map(|message| match message {
        Ok(m) if m.is_binary() => Inbound::Frame(m.into_bytes().to_vec()),
        Ok(m) if m.is_close() => Inbound::Closed,
        Ok(m) if m.is_text() => Inbound::Invalid,
        Ok(_) => Inbound::Ignored,
        Err(_) => Inbound::Closed,
    });
    let outgoing = sink.with(|frame: qs::listen::Outbound| async move {
        Ok::<_, warp::Error>(match frame {
            qs::listen::Outbound::Frame(bytes) => warp::ws::Message::binary(bytes),
            qs::listen::Outbound::Close => warp::ws::Message::close(),
        })
    });
    server
        .metrics
        .listen_streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ended = qs::listen::run(&server, Box::pin(incoming), Box::pin(outgoing)).await;
    server
        .metrics
        .listen_streams
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(?ended, "listen stream ended");
}

/// Serve `server` on `listener` until `shutdown` completes, with the outbox worker running
/// alongside. In-flight requests finish before this returns.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_tls(server, listener, None, shutdown).await;
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_tls(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let worker = tokio::spawn(crate::outbox::run(server.clone()));
    let purges = tokio::spawn(crate::jobs::run_purges(server.clone()));
    // Requirement: AS-CA-ROT-2
    let ca_jobs = tokio::spawn(server.clone().run_ca_jobs());
    // Requirement: OPS-HEALTH-2 (`/ready` fails from the shutdown signal on)
    let flagged = server.clone();
    let shutdown = async move {
        shutdown.await;
        flagged.metrics.ops.begin_shutdown();
    };
    crate::edge::serve(
        server.clone(),
        listener,
        tls,
        warp::service(routes(server)),
        shutdown,
    )
    .await;
    worker.abort();
    purges.abort();
    ca_jobs.abort();
}

async fn dispatch(
    server: &Server,
    service: &str,
    operation: &str,
    body: &[u8],
) -> Result<Vec<u8>, WireError> {
    let not_found = || {
        WireError::new(
            ErrorCode::NotFound,
            format!("no operation {service}/{operation}"),
        )
    };
    let now = now();
    let max = server.limits.max_body;
    match service {
        "as" => {
            let op = as_::operation(operation).ok_or_else(not_found)?;
            as_::handle(server, &Request::decode("as", op, body, max)?, now).await
        }
        "qs" => {
            let op = qs::operation(operation).ok_or_else(not_found)?;
            qs::handle(server, &Request::decode("qs", op, body, max)?, now).await
        }
        "ds" => {
            let op = ds::operation(operation).ok_or_else(not_found)?;
            ds::handle(server, &Request::decode("ds", op, body, max)?, now).await
        }
        "federation" if operation == federation_messages::ENQUEUE => {
            crate::federation::receive::enqueue(server, body, now).await
        }
        _ => Err(not_found()),
    }
}

// Requirement: WIRE-2 (every refusal is a problem document; the status comes from the code)
pub(crate) fn problem(err: &WireError) -> Response {
    let problem = Problem::from_error(err);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = warp::reply::with_status(
        warp::reply::with_header(body, "content-type", Problem::CONTENT_TYPE),
        status,
    )
    .into_response();
    // The outcome code for the request log and metrics (removed again before sending).
    if let Ok(code) = warp::http::HeaderValue::from_str(err.code.as_str()) {
        response.headers_mut().insert(OUTCOME_HEADER, code);
    }
    response
}

/// Internal header carrying a refusal's code from [`problem`] to the request log; it is
/// stripped in [`routes`] and never reaches the client.
const OUTCOME_HEADER: &str = "x-phoenix-outcome";

/// Whether `service/operation` names an operation (metrics labels stay bounded).
fn is_operation(service: &str, operation: &str) -> bool {
    match service {
        "as" => as_::operation(operation).is_some(),
        "qs" => qs::operation(operation).is_some(),
        "ds" => ds::operation(operation).is_some(),
        "federation" => operation == federation_messages::ENQUEUE,
        _ => false,
    }
}

/// `/health` and `/ready`: 200 with the checks, or 503 naming the failing ones.
fn status_reply(status: &crate::ops::Status) -> Response {
    let code = if status.ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(status), code).into_response()
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(refused) = rejection.find::<crate::edge::BodyRefused>() {
        refused.0.clone()
    } else if rejection.is_not_found() {
        WireError::new(ErrorCode::NotFound, "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        WireError::new(ErrorCode::TooLarge, "request body exceeds the size limit")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        WireError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        WireError::new(ErrorCode::Malformed, "a content-length header is required")
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        WireError::new(ErrorCode::UnsupportedMediaType, "unsupported content type")
    } else {
        WireError::new(ErrorCode::Malformed, "bad request")
    };
    Ok(problem(&err))
}

/// `GET /.well-known/phoenix`.
pub fn discovery(server: &Server) -> Discovery {
    Discovery {
        domain: server.domain.to_string(),
        protocol_version: PROTOCOL_VERSION,
        ca_certificate: certs::to_pem(&server.ca().certificate.der).unwrap_or_default(),
        ca_fingerprint: hex::encode(server.ca().certificate.fingerprint()),
        queue_config_key: hex::encode(&server.queue_config_key.public),
        qs_verifying_key: hex::encode(server.qs_signing_key.verifying_key().to_bytes()),
        push_vapid_key: Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(server.pusher.vapid_public_key()),
        ),
    }
}

/// The DER of a PEM certificate (for peers' discovery documents).
pub fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    certs::from_pem(pem).ok()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(server: &Server) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering;
    let m = &server.metrics;
    let mut out = String::new();
    let counters = [
        (
            "phoenix_local_fanout_delivered_total",
            "Fan-out messages enqueued in local queues.",
            &m.local_delivered,
        ),
        (
            "phoenix_federation_sent_total",
            "Messages delivered to remote QSs.",
            &m.federation_sent,
        ),
        (
            "phoenix_federation_retries_total",
            "Failed federated delivery attempts that will be retried.",
            &m.federation_retried,
        ),
        (
            "phoenix_federation_dropped_total",
            "Federated messages dropped after a permanent refusal.",
            &m.federation_dropped,
        ),
        (
            "phoenix_federation_received_total",
            "Messages accepted from remote QSs.",
            &m.federation_received,
        ),
        (
            "phoenix_federation_seen_pruned_total",
            "Replay records of federated messages pruned after the freshness window.",
            &m.federation_seen_pruned,
        ),
        (
            "phoenix_ds_seen_pruned_total",
            "Replay records of application messages pruned after the freshness window.",
            &m.ds_seen_pruned,
        ),
        (
            "phoenix_ds_replays_refused_total",
            "Replayed application messages refused by the DS (REPLAYED).",
            &m.ds_replays_refused,
        ),
        (
            "phoenix_connection_packages_purged_total",
            "Expired connection packages deleted by the periodic purge.",
            &m.connection_packages_purged,
        ),
        (
            "phoenix_group_reservations_purged_total",
            "Group id reservations that expired unused, deleted by the periodic purge.",
            &m.group_reservations_purged,
        ),
        (
            "phoenix_requests_seen_pruned_total",
            "Replay records of signed AS, QS and DS requests pruned after the freshness window.",
            &m.requests_seen_pruned,
        ),
        (
            "phoenix_request_replays_refused_total",
            "Replayed signed requests refused (REPLAYED), other than application messages.",
            &m.request_replays_refused,
        ),
        (
            "phoenix_outbox_errors_total",
            "Outbox delivery rounds that failed with a storage error (retried by the worker).",
            &m.outbox_errors,
        ),
        (
            "phoenix_idcert_cache_hits_total",
            "Foreign actors' certificates served from the cache.",
            &m.idcert_cache_hits,
        ),
        (
            "phoenix_idcert_cache_misses_total",
            "Foreign actors' certificates fetched from their home server.",
            &m.idcert_cache_misses,
        ),
        (
            "phoenix_idcert_cache_purged_total",
            "Cached foreign actors' certificates purged after their window.",
            &m.idcert_cache_purged,
        ),
    ];
    let edge = &m.edge;
    let refused = [
        ("max_connections", &edge.refused_total_cap),
        ("max_connections_per_ip", &edge.refused_per_ip_cap),
    ];
    let _ = writeln!(
        out,
        "# HELP phoenix_connections_refused_total Connections closed at accept, by the cap they hit.\n# TYPE phoenix_connections_refused_total counter"
    );
    for (cap, value) in refused {
        let _ = writeln!(
            out,
            "phoenix_connections_refused_total{{cap=\"{cap}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let closed = [
        ("header_read_timeout", &edge.header_timeouts),
        ("idle_timeout", &edge.idle_timeouts),
        ("malformed", &edge.malformed),
        ("error", &edge.errors),
        ("tls_handshake", &edge.tls_handshake_failures),
    ];
    let _ = writeln!(
        out,
        "# HELP phoenix_connections_closed_total Connections the edge closed, by reason.\n# TYPE phoenix_connections_closed_total counter"
    );
    for (reason, value) in closed {
        let _ = writeln!(
            out,
            "phoenix_connections_closed_total{{reason=\"{reason}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    // Requirement: QS-PUSH-2
    let push = server.pusher.metrics();
    let _ = writeln!(
        out,
        "# HELP phoenix_push_notifications_total Push notifications, by outcome (sent: accepted by the push service; failed: refused or not delivered; gone: endpoint reported gone and deleted; dropped: too many in flight).\n# TYPE phoenix_push_notifications_total counter"
    );
    for (outcome, value) in [
        ("sent", &push.sent),
        ("failed", &push.failed),
        ("gone", &push.gone),
        ("dropped", &push.dropped),
    ] {
        let _ = writeln!(
            out,
            "phoenix_push_notifications_total{{outcome=\"{outcome}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP phoenix_listen_streams Open qs/listen streams.\n# TYPE phoenix_listen_streams gauge\nphoenix_listen_streams {}\n# HELP phoenix_connections_open Open HTTP connections.\n# TYPE phoenix_connections_open gauge\nphoenix_connections_open {}\n# HELP phoenix_accept_errors_total Failed accepts (e.g. out of file descriptors).\n# TYPE phoenix_accept_errors_total counter\nphoenix_accept_errors_total {}",
        m.listen_streams.load(Ordering::Relaxed),
        edge.open.load(Ordering::Relaxed),
        edge.accept_errors.load(Ordering::Relaxed)
    );
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    match server.store.idcert_cache_len().await {
        Ok(entries) => {
            let _ = writeln!(
                out,
                "# HELP phoenix_idcert_cache_entries Foreign actors whose certificates are cached (expired entries until purged).\n# TYPE phoenix_idcert_cache_entries gauge\nphoenix_idcert_cache_entries {entries}"
            );
        }
        Err(e) => tracing::error!(error = %e, "cannot count the idcert cache for metrics"),
    }
    match server.store.outbox_summary(now()).await {
        Ok(summary) => {
            let _ = writeln!(
                out,
                "# HELP phoenix_outbox_pending Outbox entries waiting for delivery.\n# TYPE phoenix_outbox_pending gauge"
            );
            for s in &summary {
                let _ = writeln!(
                    out,
                    "phoenix_outbox_pending{{destination=\"{}\"}} {}",
                    s.destination, s.pending
                );
            }
            let _ = writeln!(
                out,
                "# HELP phoenix_outbox_due Outbox entries due for a delivery attempt now.\n# TYPE phoenix_outbox_due gauge"
            );
            for s in &summary {
                let _ = writeln!(
                    out,
                    "phoenix_outbox_due{{destination=\"{}\"}} {}",
                    s.destination, s.due
                );
            }
            let _ = writeln!(
                out,
                "# HELP phoenix_outbox_max_attempts Most failed attempts of a pending entry.\n# TYPE phoenix_outbox_max_attempts gauge"
            );
            for s in &summary {
                let _ = writeln!(
                    out,
                    "phoenix_outbox_max_attempts{{destination=\"{}\"}} {}",
                    s.destination, s.max_attempts
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the outbox for metrics"),
    }
    // Requirement: OPS-METRICS-1
    out.push_str(&server.metrics.ops.encode());
    out
}
