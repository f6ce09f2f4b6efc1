//! Push notifications: Web Push (RFC 8030 delivery, RFC 8291 `aes128gcm` encryption,
//! RFC 8292 VAPID), which UnifiedPush distributors speak too.
//!
//! A client sets an endpoint with `qs/set_push_endpoint` ([`set_push_endpoint`]); the QS
//! checks it, seals it to its own queue-config key (the client id is the associated data)
//! and stores only the sealed bytes. After an enqueue has committed, the QS notifies each
//! recipient that has an endpoint and no live `qs/listen` stream in this process
//! ([`Pusher::notify`]): it opens the endpoint, encrypts an empty notification to the
//! client's key and POSTs it, signed with the QS's VAPID key. The notification carries
//! nothing (no group, no sender, no count): it only says "your queue has something", and
//! the client fetches it over the authenticated QS API. An endpoint the push service
//! reports gone (404 or 410) is deleted; any other failure is counted and dropped
//! (notifications are a hint; the queue keeps the message).
//!
//! Bounded: at most `max_in_flight` notifications (and endpoint lookups) at a time, each
//! with a timeout; beyond that a notification is dropped and counted, never queued.
//!
//! A message whose sender suppressed its notification (QS-PUSH-4: `ds/send_message`'s
//! `notification`, kept with each outbox entry and passed to remote QSs) notifies nobody.
//!
//! Not built: with several processes on one database, a client with a live stream on
//! another process is notified too (whether a client listens is known per process; the
//! wake-ups themselves do reach every process, [`crate::qs::wakeup::PgNotify`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Semaphore;
use warp::http;
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::p256;
use web_push_native::{Auth, WebPushBuilder};
use zeroize::Zeroizing;

use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::QsId;
use phoenix_types::messages::qs::{
    MAX_PUSH_URL_LEN, PUSH_P256DH_LEN, PushEndpoint, SetPushEndpointRequest,
};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::Store;
use crate::store::push::PushStore;

/// How the QS sends push notifications (set by the operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    /// Accept `http://` endpoints (a UnifiedPush distributor on a private network, tests);
    /// otherwise only `https://`.
    pub allow_http: bool,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or
    /// `https:`); `None`: `mailto:postmaster@DOMAIN`.
    pub contact: Option<String>,
    /// Most notifications (and endpoint lookups) in flight at once.
    pub max_in_flight: usize,
    /// How long one notification may take (connect, send, answer).
    pub timeout: Duration,
    /// The notification's `TTL` header: how long the push service keeps it for an
    /// offline device.
    pub ttl: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            contact: None,
            max_in_flight: 64,
            timeout: Duration::from_secs(10),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Notifications the push service accepted (2xx).
    pub sent: AtomicU64,
    /// Notifications refused (other than gone) or not delivered (timeout, no connection).
    pub failed: AtomicU64,
    /// Endpoints deleted because the push service said they are gone (404, 410).
    pub gone: AtomicU64,
    /// Notifications dropped because `max_in_flight` were already under way.
    pub dropped: AtomicU64,
}

/// Sends the notifications; cheap to share (one `Arc`).
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    vapid: ES256KeyPair,
    vapid_public: Vec<u8>,
    contact: String,
    settings: PushSettings,
    in_flight: Arc<Semaphore>,
    store: Store,
    /// The queue-config private key, which opens the sealed endpoints.
    queue_config_private: Zeroizing<Vec<u8>>,
    metrics: PushMetrics,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("contact", &self.inner.contact)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A P-256 VAPID key: the 32-byte private scalar and the 65-byte uncompressed public
/// point (what discovery publishes).
pub fn generate_vapid_key() -> (Zeroizing<Vec<u8>>, Vec<u8>) {
    let key = ES256KeyPair::generate();
    (
        Zeroizing::new(key.to_bytes()),
        key.public_key().public_key().to_bytes_uncompressed(),
    )
}

/// The public point of a stored VAPID private key (`None` if it is not one).
pub fn vapid_public_of(private: &[u8]) -> Option<Vec<u8>> {
    ES256KeyPair::from_bytes(private)
        .ok()
        .map(|k| k.public_key().public_key().to_bytes_uncompressed())
}

impl Pusher {
    pub fn new(
        settings: PushSettings,
        domain: &str,
        vapid_private: &[u8],
        queue_config_private: &[u8],
        store: Store,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, String> {
        let vapid = ES256KeyPair::from_bytes(vapid_private)
            .map_err(|e| format!("the stored VAPID key is not a P-256 key: {e}"))?;
        let vapid_public = vapid.public_key().public_key().to_bytes_uncompressed();
        // Redirects are not followed: a push service answers the POST itself.
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none());
        for root in extra_roots {
            builder = builder.add_root_certificate(root);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the push HTTP client: {e}"))?;
        let contact = settings
            .contact
            .clone()
            .unwrap_or_else(|| format!("mailto:postmaster@{domain}"));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                vapid,
                vapid_public,
                contact,
                in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
                settings,
                store,
                queue_config_private: Zeroizing::new(queue_config_private.to_vec()),
                metrics: PushMetrics::default(),
            }),
        })
    }

    /// The VAPID public key, uncompressed (65 bytes).
    pub fn vapid_public_key(&self) -> &[u8] {
        &self.inner.vapid_public
    }

    pub fn settings(&self) -> &PushSettings {
        &self.inner.settings
    }

    pub fn metrics(&self) -> &PushMetrics {
        &self.inner.metrics
    }

    // Requirement: QS-PUSH-2, QS-PUSH-3
    /// Notify `clients` (whose queues just got entries, committed) that have a push
    /// endpoint. Returns at once; the lookups and the sends run in the background,
    /// bounded by `max_in_flight`.
    pub fn notify(&self, clients: Vec<QsId>) {
        if clients.is_empty() {
            return;
        }
        let Ok(permit) = self.inner.in_flight.clone().try_acquire_owned() else {
            self.count_dropped(clients.len());
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let endpoints = match inner.store.push_endpoints(&clients).await {
                Ok(endpoints) => endpoints,
                Err(e) => {
                    tracing::warn!(error = %e, "push endpoints could not be read");
                    return;
                }
            };
            drop(permit);
            for (client, sealed) in endpoints {
                let Ok(permit) = inner.in_flight.clone().try_acquire_owned() else {
                    inner.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    inner.send(&client, &sealed).await;
                    drop(permit);
                });
            }
        });
    }

    fn count_dropped(&self, n: usize) {
        self.inner
            .metrics
            .dropped
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Inner {
    async fn send(&self, client: &QsId, sealed: &[u8]) {
        let Some(endpoint) = open_endpoint(&self.queue_config_private, client, sealed) else {
            tracing::error!("a stored push endpoint does not open");
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let request = match self.request(&endpoint) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "push notification could not be built");
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (parts, body) = request.into_parts();
        let mut builder = self.http.post(parts.uri.to_string()).body(body);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        builder = builder.header("Urgency", "normal");
        match builder.send().await {
            Ok(response) if response.status().is_success() => {
                self.metrics.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(response) if matches!(response.status().as_u16(), 404 | 410) => {
                // Requirement: QS-PUSH-3
                self.metrics.gone.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.store.forget_push_endpoint(client, sealed).await {
                    tracing::warn!(error = %e, "a gone push endpoint could not be deleted");
                }
            }
            Ok(response) => {
                tracing::info!(status = %response.status(), "push service refused a notification");
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::info!(error = %e, "push notification not delivered");
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The notification for `endpoint`: an empty body encrypted to the client's key
    /// (RFC 8291), `TTL`, `Content-Encoding: aes128gcm`, and the VAPID `Authorization`
    /// (RFC 8292), which we sign ourselves: the crate's VAPID helper leaves an explicit
    /// port out of the audience, and a UnifiedPush distributor on its own port checks it.
    fn request(&self, endpoint: &PushEndpoint) -> Result<http::Request<Vec<u8>>, String> {
        let uri: http::Uri = std::str::from_utf8(endpoint.url.as_slice())
            .map_err(|e| e.to_string())?
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let audience = origin(&uri).ok_or("the push endpoint has no origin")?;
        let key = p256::PublicKey::from_sec1_bytes(endpoint.p256dh.as_slice())
            .map_err(|e| e.to_string())?;
        let mut request = WebPushBuilder::new(uri, key, Auth::clone_from_slice(&endpoint.auth))
            .with_valid_duration(self.settings.ttl)
            .build(Vec::new())
            .map_err(|e| e.to_string())?;
        // RFC 8292 § 2: at most 24 hours.
        let claims = Claims::create(Duration::from_secs(12 * 3600).into())
            .with_audience(audience)
            .with_subject(&self.contact);
        let token = self.vapid.sign(claims).map_err(|e| e.to_string())?;
        let value = format!(
            "vapid t={token}, k={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.vapid_public)
        );
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&value).map_err(|e| e.to_string())?,
        );
        Ok(request)
    }
}

/// The origin of a URL (RFC 6454): scheme, host, and the port unless it is the scheme's
/// default: the `aud` of a VAPID token.
fn origin(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?;
    let host = uri.host()?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

// Requirement: QS-PUSH-1
/// Check an endpoint a client gives (pure): an `https://` URL (or `http://` if allowed)
/// with a host, at most [`MAX_PUSH_URL_LEN`] bytes, and a valid P-256 point.
pub fn check_endpoint(endpoint: &PushEndpoint, allow_http: bool) -> Result<(), WireError> {
    let bad = |detail: &str| WireError::new(ErrorCode::Malformed, detail.to_string());
    if endpoint.url.as_slice().len() > MAX_PUSH_URL_LEN {
        return Err(bad("the push endpoint URL is longer than 1024 bytes"));
    }
    let url = std::str::from_utf8(endpoint.url.as_slice())
        .map_err(|_| bad("the push endpoint URL is not UTF-8"))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("the push endpoint is not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err(bad(
                "the push endpoint must be an https:// URL (this server does not send push over plain HTTP)",
            ));
        }
        _ => return Err(bad("the push endpoint must be an https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("the push endpoint URL has no host"));
    }
    if endpoint.p256dh.as_slice().len() != PUSH_P256DH_LEN
        || p256::PublicKey::from_sec1_bytes(endpoint.p256dh.as_slice()).is_err()
    {
        return Err(bad(
            "the push key (p256dh) is not an uncompressed P-256 public key",
        ));
    }
    Ok(())
}

/// Seal an endpoint to the QS's queue-config key, bound to the client id.
pub fn seal_endpoint(
    queue_config_public: &[u8],
    client: &QsId,
    endpoint: &PushEndpoint,
) -> Result<Vec<u8>, WireError> {
    let sealed = crypto::hpke_seal(
        queue_config_public,
        hpke_info::PUSH_ENDPOINT,
        client,
        &codec::encode(endpoint)?,
    )
    .map_err(|_| WireError::new(ErrorCode::Internal, "the push endpoint could not be sealed"))?;
    codec::encode(&sealed)
}

/// Open a sealed endpoint (`None`: it does not open for this client).
pub fn open_endpoint(
    queue_config_private: &[u8],
    client: &QsId,
    sealed: &[u8],
) -> Option<PushEndpoint> {
    let ciphertext: openmls::prelude::HpkeCiphertext = codec::decode(sealed, 4096).ok()?;
    let plain = crypto::hpke_open(
        queue_config_private,
        hpke_info::PUSH_ENDPOINT,
        client,
        &ciphertext,
    )
    .ok()?;
    codec::decode(&plain, 4096).ok()
}

// Requirement: QS-PUSH-1, ADV-REPLAY-3
/// `qs/set_push_endpoint`: the signing client sets or clears its push endpoint.
pub async fn set_push_endpoint(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: SetPushEndpointRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let sealed = match &req.endpoint {
        Some(endpoint) => {
            check_endpoint(endpoint, server.pusher.settings().allow_http)?;
            Some(seal_endpoint(
                &server.queue_config_key.public,
                &client.client_id,
                endpoint,
            )?)
        }
        None => None,
    };
    let set = server
        .store
        .set_push_endpoint(
            &client.client_id,
            sealed.as_deref(),
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?;
    if !set {
        return Err(WireError::new(
            ErrorCode::UnknownClient,
            "no such QS client record",
        ));
    }
    codec::encode(&phoenix_types::messages::Empty {})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tls_codec::VLBytes;

    use super::*;

    fn endpoint(url: &str) -> PushEndpoint {
        let ua = p256::SecretKey::random(&mut rand_core::OsRng);
        PushEndpoint {
            url: VLBytes::new(url.as_bytes().to_vec()),
            p256dh: VLBytes::new(
                p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &ua.public_key(),
                    false,
                )
                .as_bytes()
                .to_vec(),
            ),
            auth: [7; 16],
        }
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint(&endpoint("https://push.example/abc"), false).is_ok());
        assert!(check_endpoint(&endpoint("http://127.0.0.1:9/abc"), false).is_err());
        assert!(check_endpoint(&endpoint("http://127.0.0.1:9/abc"), true).is_ok());
        assert!(check_endpoint(&endpoint("ftp://push.example/abc"), true).is_err());
        assert!(check_endpoint(&endpoint("/relative"), true).is_err());
        let long = format!("https://push.example/{}", "a".repeat(MAX_PUSH_URL_LEN));
        assert!(check_endpoint(&endpoint(&long), false).is_err());
        let mut bad_key = endpoint("https://push.example/abc");
        bad_key.p256dh = VLBytes::new(vec![4; PUSH_P256DH_LEN]);
        assert!(check_endpoint(&bad_key, false).is_err());
    }

    #[test]
    fn the_vapid_audience_is_the_origin_with_its_port() {
        let o = |u: &str| origin(&u.parse().unwrap());
        assert_eq!(
            o("https://push.example/x"),
            Some("https://push.example".into())
        );
        assert_eq!(
            o("https://push.example:443/x"),
            Some("https://push.example".into())
        );
        assert_eq!(
            o("https://push.example:8443/x"),
            Some("https://push.example:8443".into())
        );
        assert_eq!(
            o("http://127.0.0.1:9000/x"),
            Some("http://127.0.0.1:9000".into())
        );
    }

    #[test]
    fn a_sealed_endpoint_opens_only_for_its_client() {
        let pair = crypto::HpkeKeyPair::generate(&mut rand_core::OsRng).unwrap();
        let e = endpoint("https://push.example/abc");
        let sealed = seal_endpoint(&pair.public, &[1; 16], &e).unwrap();
        assert_eq!(open_endpoint(&pair.private, &[1; 16], &sealed), Some(e));
        assert_eq!(open_endpoint(&pair.private, &[2; 16], &sealed), None);
        assert!(!sealed.windows(12).any(|w| w == b"push.example"));
    }
}
