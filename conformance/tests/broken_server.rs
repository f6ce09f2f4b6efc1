//! A deliberately broken server is caught. A proxy in front of a real, correct server
//! misbehaves the way a buggy server would, and the suites must fail against it:
//!
//! - `KeyPackageServedTwice`: the second fetch with a friendship token gets the first
//!   fetch's answer again, as a server whose key package fetch does not consume would (a
//!   one-time package served twice);
//! - `StaleEpochAccepted`: a `WRONG_EPOCH` refusal of a DS request becomes a success, as a
//!   server without the epoch check would answer a commit or message for a stale epoch;
//! - `MisaddressedAccepted`: a `MISADDRESSED` refusal of a federated enqueue becomes a
//!   success, as an open relay would answer (in front of b.test, for the federation suite).
//!
//! Requirement: QS-KP-3, DS-EPOCH-1, DS-EPOCH-2, FED-1, ADV-REMOTE-1
//!
//! Nothing in the server is changed; the proxy forwards exact request bytes, so every
//! signature still verifies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};

use phoenix_conformance::as_qs::AsQs;
use phoenix_conformance::ds::Ds;
use phoenix_conformance::federation::{Federation, TEST_PROFILE};
use phoenix_conformance::fixtures::Fixture;
use phoenix_conformance::runner::{self, RunConfig};
use phoenix_conformance::target::Target;
use support::{Backend, Federated, TestServer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KeyPackageServedTwice,
    StaleEpochAccepted,
    MisaddressedAccepted,
}

/// Per fetch request body: the first answer, and whether it was replayed already.
type Answers = HashMap<Vec<u8>, (Bytes, bool)>;

/// Start a proxy for `upstream` with `fault`; returns its base URL.
async fn proxy(upstream: String, fault: Fault) -> String {
    let http = reqwest::Client::new();
    let upstream_ws = upstream.replacen("http://", "ws://", 1);
    let served: Arc<Mutex<Answers>> = Arc::default();
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: Method, path: warp::path::FullPath, headers: HeaderMap, body: Bytes| {
                let http = http.clone();
                let upstream = upstream.clone();
                let served = served.clone();
                async move {
                    let path = path.as_str().to_owned();
                    if fault == Fault::KeyPackageServedTwice
                        && path == "/phoenix/v1/qs/fetch_key_packages"
                    {
                        let replay = {
                            let mut map = served.lock().unwrap();
                            match map.get_mut(body.as_ref()) {
                                Some((answer, replayed)) if !*replayed => {
                                    *replayed = true;
                                    Some(answer.clone())
                                }
                                _ => None,
                            }
                        };
                        if let Some(answer) = replay {
                            return reply(StatusCode::OK, "application/octet-stream", answer);
                        }
                    }
                    let mut request = http
                        .request(method, format!("{upstream}{path}"))
                        .body(body.clone());
                    if let Some(ct) = headers.get("content-type") {
                        request = request.header("content-type", ct);
                    }
                    let response = request.send().await.unwrap();
                    let status = response.status();
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_owned();
                    let answer = response.bytes().await.unwrap();
                    if fault == Fault::KeyPackageServedTwice
                        && path == "/phoenix/v1/qs/fetch_key_packages"
                        && status.is_success()
                    {
                        served
                            .lock()
                            .unwrap()
                            .insert(body.to_vec(), (answer.clone(), false));
                    }
                    if fault == Fault::StaleEpochAccepted
                        && path.starts_with("/phoenix/v1/ds/")
                        && String::from_utf8_lossy(&answer).contains("\"WRONG_EPOCH\"")
                    {
                        // The empty response (`Empty {}` encodes to no bytes).
                        return reply(StatusCode::OK, "application/octet-stream", Bytes::new());
                    }
                    if fault == Fault::MisaddressedAccepted
                        && path == "/phoenix/v1/federation/enqueue"
                        && String::from_utf8_lossy(&answer).contains("\"MISADDRESSED\"")
                    {
                        return reply(StatusCode::OK, "application/octet-stream", Bytes::new());
                    }
                    reply(
                        StatusCode::from_u16(status.as_u16()).unwrap(),
                        &content_type,
                        answer,
                    )
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        warp::serve(listen_passthrough(upstream_ws).or(route))
            .incoming(listener)
            .run(),
    );
    url
}

/// The listen stream (`qs/listen`, a WebSocket) passed through untouched, frame by frame,
/// so that the AS/QS suite's `Listen` steps reach the real server behind the proxy.
fn listen_passthrough(
    upstream: String,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Up;
    use warp::ws::Message as Down;

    warp::path!("phoenix" / "v1" / "qs" / "listen")
        .and(warp::ws())
        .map(move |ws: warp::ws::Ws| {
            let upstream = format!("{upstream}/phoenix/v1/qs/listen");
            ws.on_upgrade(move |client| async move {
                let Ok((server, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await
                else {
                    return;
                };
                let (mut server_tx, mut server_rx) = server.split();
                let (mut client_tx, mut client_rx) = client.split();
                let down = async {
                    while let Some(Ok(frame)) = server_rx.next().await {
                        let frame = match frame {
                            Up::Binary(bytes) => Down::binary(bytes.to_vec()),
                            Up::Text(text) => Down::text(text.as_str()),
                            Up::Close(_) => break,
                            _ => continue,
                        };
                        if client_tx.send(frame).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_tx.close().await;
                };
                let up = async {
                    while let Some(Ok(frame)) = client_rx.next().await {
                        let frame = if frame.is_binary() {
                            Up::binary(frame.into_bytes())
                        } else if frame.is_text() {
                            Up::text(frame.to_str().unwrap_or_default())
                        } else if frame.is_close() {
                            break;
                        } else {
                            continue;
                        };
                        if server_tx.send(frame).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_tx.close().await;
                };
                tokio::join!(down, up);
            })
        })
}

fn reply(status: StatusCode, content_type: &str, body: Bytes) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(
        warp::reply::with_header(body.to_vec(), "content-type", content_type.to_owned()),
        status,
    )
    .into_response()
}

fn fixture(name: &str) -> Fixture {
    Fixture::load_all(&support::fixtures_dir())
        .unwrap()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("fixture {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_package_served_twice_is_caught() {
    let server = TestServer::sqlite().await;
    let target = Target {
        url: proxy(server.url.clone(), Fault::KeyPackageServedTwice).await,
        domain: server.domain.clone(),
        resolve: Vec::new(),
        peer: None,
        malicious: None,
    };
    let handle = tokio::runtime::Handle::current();
    let traces = tempfile::tempdir().unwrap();
    let traces_dir = traces.path().to_owned();
    let (replayed, report) = tokio::task::spawn_blocking(move || {
        // The hand-written trace fails deterministically ...
        let replayed = runner::replay::<AsQs>(
            &handle,
            &target,
            &fixture("kp-drained-pool-falls-back-to-last-resort"),
        );
        // ... and the random suite finds it on its own, shrinks it and saves the trace.
        let config = RunConfig {
            cases: 400,
            transitions: (20, 60),
            seed: support::seed(),
            fixtures_dir: Some(traces_dir),
            max_shrink_iters: 100,
            max_shrink_time: Duration::from_secs(60),
            label: "kp-twice".into(),
            ..RunConfig::default()
        };
        (
            replayed,
            runner::run_suite::<AsQs>(&handle, &target, &config),
        )
    })
    .await
    .unwrap();
    let error = replayed.expect_err("the broken server passed the key package trace");
    eprintln!("caught by the fixture: {error}");
    assert!(error.to_string().contains("KeyPackages"), "{error}");
    let failure = report
        .failure
        .clone()
        .expect("the broken server passed the random suite");
    eprintln!("caught by the random suite: {failure}");
    assert!(failure.contains("KeyPackages"), "{failure}");
    assert!(
        report
            .requirements
            .iter()
            .any(|(id, c)| id.starts_with("QS-KP") && c.failures > 0)
    );
    let saved = Fixture::load_all(traces.path()).unwrap();
    assert_eq!(saved.len(), 1, "the shrunk trace is saved");
    assert!(
        saved[0].transitions.len() <= 8,
        "shrunk to {} transitions",
        saved[0].transitions.len()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_epoch_check_is_caught() {
    let server = TestServer::sqlite().await;
    let target = Target {
        url: proxy(server.url.clone(), Fault::StaleEpochAccepted).await,
        domain: server.domain.clone(),
        resolve: Vec::new(),
        peer: None,
        malicious: None,
    };
    let handle = tokio::runtime::Handle::current();
    let replayed = tokio::task::spawn_blocking(move || {
        runner::replay::<Ds>(&handle, &target, &fixture("stale-epoch-commit-and-message"))
    })
    .await
    .unwrap();
    let error = replayed.expect_err("the broken server passed the stale-epoch trace");
    eprintln!("caught: {error}");
    assert!(error.to_string().contains("WRONG_EPOCH"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_relay_is_caught() {
    let servers = Federated::start(Backend::Sqlite).await;
    let mut target = servers.target();
    let b = target.peer.as_mut().unwrap();
    b.url = proxy(b.url.clone(), Fault::MisaddressedAccepted).await;
    let handle = tokio::runtime::Handle::current();
    let replayed = tokio::task::spawn_blocking(move || {
        runner::replay::<Federation<TEST_PROFILE>>(
            &handle,
            &target,
            &fixture("federation-malicious-peer-repertoire"),
        )
    })
    .await
    .unwrap();
    let error = replayed.unwrap_err().to_string();
    assert!(
        error.contains("MISADDRESSED") && error.contains("Empty"),
        "{error}"
    );
    servers.stop().await;
}
