//! The harness's malicious remote server: a homeserver domain of its own (`evil.test`) that
//! the servers under test reach over real HTTP. It serves its discovery document
//! (`/.well-known/phoenix`) with its own CA certificate and its own QS verifying key, like
//! any homeserver, and signs `FederatedEnqueue` messages with that key exactly as a QS
//! does (label `federation/enqueue`, phoenix-types crypto): honest ones, and forged,
//! replayed, misrouted and stale ones, which the federation suite sends.
//!
//! The servers under test must resolve its domain to it (`--resolve evil.test=URL`): a
//! deployed server cannot be told that from outside, so [`probe`] asks each server, with a
//! stale message signed by this peer, whether it reaches this peer, refuses it by policy,
//! or neither (then the suite does not run the malicious-peer transitions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use tls_codec::VLBytes;
use warp::Filter;

use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::crypto::{self, HpkeKeyPair};
use phoenix_types::discovery::{Discovery, WELL_KNOWN_PATH};
use phoenix_types::error::Problem;
use phoenix_types::ids::Domain;
use phoenix_types::messages::federation::{self, FederatedEnqueue, FederatedEnqueueTbs};

use crate::HarnessError;

/// The malicious peer's default domain.
pub const EVIL_DOMAIN: &str = "evil.test";
/// A domain nobody serves: where misrouted messages claim to go.
pub const NOWHERE_DOMAIN: &str = "c.test";

/// What the suites need to know of a running malicious peer: where it is, its domain and
/// its QS signing key (the key is the peer's secret; the harness plays the peer).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub url: String,
    pub domain: String,
    pub qs_key_seed: [u8; 32],
}

impl std::fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInfo")
            .field("url", &self.url)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl PeerInfo {
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.qs_key_seed)
    }

    /// The body of a `FederatedEnqueue` with `tbs`, signed with this peer's QS key.
    pub fn sign(&self, tbs: &FederatedEnqueueTbs) -> Result<Vec<u8>, HarnessError> {
        let tbs = codec::encode(tbs).map_err(|e| HarnessError::Setup(e.detail))?;
        let signature = crypto::sign(&self.signing_key(), federation::LABEL, &tbs);
        codec::encode(&FederatedEnqueue {
            tbs: VLBytes::new(tbs),
            signature: VLBytes::new(signature.to_vec()),
        })
        .map_err(|e| HarnessError::Setup(e.detail))
    }
}

/// A running malicious peer (its HTTP server stops when this is dropped).
pub struct MaliciousPeer {
    pub info: PeerInfo,
    /// How often its discovery document was fetched.
    pub discovery_fetches: Arc<AtomicUsize>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl MaliciousPeer {
    /// Start it on `listener` (must be called inside a tokio runtime).
    pub fn start(
        listener: std::net::TcpListener,
        domain: &str,
    ) -> Result<MaliciousPeer, HarnessError> {
        let setup = |e: String| HarnessError::Setup(format!("malicious peer: {e}"));
        let addr: SocketAddr = listener.local_addr().map_err(|e| setup(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup(e.to_string()))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| setup(e.to_string()))?;
        let parsed = Domain::parse(domain).map_err(|e| setup(e.to_string()))?;
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let qs_key = SigningKey::from_bytes(&seed);
        let ca_key = crypto::generate_signing_key(&mut OsRng);
        let now = phoenix_client::client::now();
        let ca = certs::create_ca_certificate(
            &parsed,
            &ca_key,
            &certs::random_serial(&mut OsRng),
            now.saturating_sub(60),
            now.saturating_add(365 * 24 * 3600),
        )
        .map_err(|e| setup(e.to_string()))?;
        let queue_config_key =
            HpkeKeyPair::generate(&mut OsRng).map_err(|e| setup(e.to_string()))?;
        let discovery = Discovery {
            domain: domain.to_owned(),
            protocol_version: 1,
            ca_certificate: certs::to_pem(&ca).map_err(|e| setup(e.to_string()))?,
            ca_fingerprint: hex::encode(crypto::sha256(&ca)),
            queue_config_key: hex::encode(&queue_config_key.public),
            qs_verifying_key: hex::encode(qs_key.verifying_key().to_bytes()),
            push_vapid_key: None,
        };
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let path = WELL_KNOWN_PATH.trim_start_matches('/').to_owned();
        let mut segments = path.split('/').map(str::to_owned);
        let first = segments.next().unwrap_or_default();
        let second = segments.next().unwrap_or_default();
        let route = warp::get()
            .and(warp::path(first))
            .and(warp::path(second))
            .and(warp::path::end())
            .map(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                warp::reply::json(&discovery)
            });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        Ok(MaliciousPeer {
            info: PeerInfo {
                url: format!("http://{addr}"),
                domain: domain.to_owned(),
                qs_key_seed: seed,
            },
            discovery_fetches: fetches,
            _shutdown: tx,
        })
    }
}

/// POST a federated enqueue body to the server at `url`: `Ok(())` for 200, else the
/// problem's code.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<Result<(), String>, HarnessError> {
    let response = http
        .post(format!(
            "{url}/phoenix/v1/federation/{}",
            federation::ENQUEUE
        ))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| HarnessError::Transport(format!("{url}: {e}")))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| HarnessError::Transport(format!("{url}: {e}")))?;
    if status.is_success() {
        return Ok(Ok(()));
    }
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(p) => Ok(Err(p.code)),
        Err(_) => Err(HarnessError::Mismatch(format!(
            "{url}: HTTP {status} without a problem document"
        ))),
    }
}

/// How a server under test stands to the malicious peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// It verified the peer's signature with the key the peer publishes.
    Reaches,
    /// Its policy refuses the peer (`FEDERATION_REFUSED`) before anything else.
    Refuses,
    /// Neither: it does not resolve the peer's domain to the harness (e.g. a deployment
    /// not started with `--resolve evil.test=...`). The malicious transitions cannot run.
    Unreachable(String),
}

/// Ask the server at `url` (of `domain`) how it stands to `peer`: a message signed by the
/// peer, addressed to the server, with a stale timestamp (so that, whatever happens, it
/// changes nothing there): `STALE_REQUEST` means the signature verified with the peer's
/// key.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    domain: &str,
    queue_config: Vec<u8>,
    peer: &PeerInfo,
) -> Result<Reach, HarnessError> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let body = peer.sign(&FederatedEnqueueTbs {
        sender: peer.domain.clone(),
        destination: domain.to_owned(),
        message_id: id,
        timestamp: phoenix_client::client::now().saturating_sub(24 * 3600),
        queue_config: VLBytes::new(queue_config),
        payload: VLBytes::new(b"probe".to_vec()),
        notification: phoenix_types::messages::Notification::Send,
    })?;
    Ok(match post(http, url, body).await? {
        Err(code) if code == "STALE_REQUEST" => Reach::Reaches,
        Err(code) if code == "FEDERATION_REFUSED" => Reach::Refuses,
        Err(code) => Reach::Unreachable(format!("{domain} answered {code}")),
        Ok(()) => Reach::Unreachable(format!("{domain} accepted a stale message")),
    })
}
