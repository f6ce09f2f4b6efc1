//! The network adversary's position between clients and a server: an HTTP proxy that
//! forwards every request to the server and records it with the server's answer. The DS
//! suite's clients talk to their server through one, so that the suite can replay a
//! request byte for byte, as the model's [`phoenix_model::adversary::AdvOp::ReplayDs`]
//! does (Requirement: ADV-REPLAY-1, ADV-REPLAY-2).
//!
//! The proxy sits where TLS would end: it sees what the server sees, nothing more.

use std::sync::{Arc, Mutex};

use warp::Filter;
use warp::http::{HeaderMap, Method, Response};
use warp::path::FullPath;

use crate::HarnessError;

/// The largest body the proxy forwards (the server's own limit is smaller).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// One request that went through the proxy, with the status the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub path: String,
    pub body: Vec<u8>,
    pub status: u16,
}

/// A running recording proxy; it stops when dropped.
#[derive(Debug)]
pub struct RecordingProxy {
    /// Where clients reach the proxy.
    pub url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl RecordingProxy {
    /// Start a proxy for `upstream` (a server's base URL) on a loopback port.
    pub async fn start(upstream: &str) -> Result<Self, HarnessError> {
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let recorder = log.clone();
        let http = reqwest::Client::new();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::content_length_limit(MAX_BODY))
            .and(warp::body::bytes())
            .and_then(
                move |method: Method,
                      path: FullPath,
                      query: String,
                      headers: HeaderMap,
                      body: bytes::Bytes| {
                    let recorder = recorder.clone();
                    let http = http.clone();
                    let upstream = upstream.clone();
                    async move {
                        let answer =
                            forward(&http, &upstream, &method, &path, &query, &headers, &body)
                                .await;
                        let status = answer.as_ref().map_or(502, |(s, _, _)| *s);
                        if let Ok(mut log) = recorder.lock() {
                            log.push(Exchange {
                                path: path.as_str().to_owned(),
                                body: body.to_vec(),
                                status,
                            });
                        }
                        let (status, content_type, body) =
                            answer.unwrap_or_else(|e| (502, None, e.into_bytes()));
                        let mut response = Response::builder().status(status);
                        if let Some(content_type) = content_type {
                            response = response.header("content-type", content_type);
                        }
                        Ok::<_, std::convert::Infallible>(
                            response
                                .body(body)
                                .unwrap_or_else(|_| Response::new(Vec::new())),
                        )
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::Setup(format!("proxy listener: {e}")))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| HarnessError::Setup(format!("proxy listener: {e}")))?
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        Ok(Self {
            url,
            log,
            _shutdown: tx,
        })
    }

    /// The last request whose path `wanted` accepts and that the server accepted (2xx).
    pub fn last_accepted(&self, wanted: impl Fn(&str) -> bool) -> Option<Exchange> {
        let log = self.log.lock().ok()?;
        log.iter()
            .rev()
            .find(|x| (200..300).contains(&x.status) && wanted(&x.path))
            .cloned()
    }
}

/// Send the request on to `upstream`; the answer's status, content type and body, or why
/// the upstream server could not be reached.
async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    method: &Method,
    path: &FullPath,
    query: &str,
    headers: &HeaderMap,
    body: &bytes::Bytes,
) -> Result<(u16, Option<Vec<u8>>, Vec<u8>), String> {
    let mut url = format!("{upstream}{}", path.as_str());
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| format!("method: {e}"))?;
    let mut request = http.request(method, url).body(body.clone());
    for name in ["content-type", "authorization"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let answer = request.send().await.map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get("content-type")
        .map(|v| v.as_bytes().to_vec());
    let body = answer.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, content_type, body.to_vec()))
}

/// POST `body` to `path` on `server` as the adversary, bypassing any proxy: the observed
/// answer (empty on success, else the problem's code).
pub async fn post_raw(
    server: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<crate::observed::Observed, HarnessError> {
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", server.trim_end_matches('/')))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| HarnessError::Transport(e.to_string()))?;
    let status = answer.status().as_u16();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| HarnessError::Transport(e.to_string()))?;
    if (200..300).contains(&status) {
        return Ok(crate::observed::Observed::Empty);
    }
    let problem: phoenix_types::error::Problem = serde_json::from_slice(&bytes).map_err(|e| {
        HarnessError::Mismatch(format!("status {status} without a problem document: {e}"))
    })?;
    Ok(crate::observed::Observed::Error(problem.code))
}
