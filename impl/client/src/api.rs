//! The HTTP API client: builds request envelopes, signs them over the exact payload bytes
//! with the key the operation needs, and turns problem documents back into errors.

use std::time::Duration;

use tls_codec::{Deserialize, Serialize, VLBytes};

use phoenix_types::PROTOCOL_VERSION;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, Problem, WireError};
use phoenix_types::messages::{
    AsClientAuth, Auth, DsLeafAuth, QsAuth, RequestEnvelope, operation_label,
};

use crate::error::ClientError;

/// Who signs a request.
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    Anonymous,
    AsClient {
        fid: &'a str,
        client_id: &'a str,
        key: &'a ed25519_dalek::SigningKey,
    },
    QsClient {
        id: [u8; 16],
        key: &'a ed25519_dalek::SigningKey,
    },
    /// A group member's leaf key (held by openmls).
    DsLeaf {
        leaf_index: u32,
        key: &'a dyn openmls_traits::signatures::Signer,
    },
}

/// CA certificates (DER) trusted besides the public web roots (`phoenix --ca-cert`).
static EXTRA_ROOTS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();

/// Trust the CA certificates of the PEM file `path` (a private CA, or tests) for every
/// server this process talks to. Call once, before the first request.
pub fn trust_extra_roots(path: &std::path::Path) -> Result<(), ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let roots: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ClientError::Usage(format!(
                "cannot read PEM CA certificates from {}: {e:?}",
                path.display()
            ))
        })?
        .into_iter()
        .map(|der| der.to_vec())
        .collect();
    if roots.is_empty() {
        return Err(ClientError::Usage(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    let _ = EXTRA_ROOTS.set(roots);
    Ok(())
}

/// The TLS configuration of the listen stream (WebSocket): the public web roots and the
/// extra roots, ring provider.
pub fn websocket_tls() -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in EXTRA_ROOTS.get().into_iter().flatten() {
        roots
            .add(rustls_pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| ClientError::Usage(format!("unusable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Transport(format!("TLS configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// An API client for one server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "server URL {base:?} must start with http:// or https://"
            )));
        }
        // No redirects: a server's answer cannot send this client to another URL (say a
        // plain-HTTP one) than the one configured for the domain.
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        for der in EXTRA_ROOTS.get().into_iter().flatten() {
            let root = reqwest::Certificate::from_der(der)
                .map_err(|e| ClientError::Usage(format!("unusable CA certificate: {e}")))?;
            builder = builder.add_root_certificate(root);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self { http, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The server's discovery document (`GET /.well-known/phoenix`).
    pub async fn discovery(&self) -> Result<phoenix_types::discovery::Discovery, ClientError> {
        let url = format!("{}{}", self.base, phoenix_types::discovery::WELL_KNOWN_PATH);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        if !response.status().is_success() {
            return Err(ClientError::Transport(format!(
                "{url}: HTTP {}",
                response.status()
            )));
        }
        response.json().await.map_err(|e| {
            ClientError::Transport(format!("{url}: malformed discovery document: {e}"))
        })
    }

    /// Call `service/operation` with `payload`, signed by `signer`.
    pub async fn call<Req: Serialize, Resp: Deserialize>(
        &self,
        service: &str,
        operation: &str,
        payload: &Req,
        signer: Signer<'_>,
    ) -> Result<Resp, ClientError> {
        self.call_in_session(service, operation, payload, signer, None)
            .await
    }

    /// [`Self::call`] with a foreign session's token as `Authorization: Bearer` (for the
    /// rate-limited operations on a remote server).
    pub async fn call_in_session<Req: Serialize, Resp: Deserialize>(
        &self,
        service: &str,
        operation: &str,
        payload: &Req,
        signer: Signer<'_>,
        session: Option<&str>,
    ) -> Result<Resp, ClientError> {
        let body = seal(service, operation, payload, signer)?;
        let bytes = if retry_safe(service, operation) {
            self.post_retrying(service, operation, &body, session)
                .await?
        } else {
            self.post_sealed(service, operation, &body, session).await?
        };
        decode_answer(
            &bytes,
            &format!("{}/phoenix/v1/{service}/{operation}", self.base),
        )
    }

    /// Send a sealed request (the exact bytes of [`seal`]) to `service/operation`: the
    /// body of a 2xx answer, or the problem document as an error. Sending the same bytes
    /// again is how a client retries a request whose answer it did not get: the server
    /// accepts a signed request once and answers a copy with `REPLAYED`.
    pub async fn post_sealed(
        &self,
        service: &str,
        operation: &str,
        body: &[u8],
        session: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/phoenix/v1/{service}/{operation}", self.base);
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec());
        if let Some(token) = session {
            request = request.bearer_auth(token);
        }
        answer(request, &url).await
    }

    // Requirement: CL-AMBIG-2
    /// [`Self::post_sealed`], sending the identical bytes again (after a short pause, a
    /// bounded number of times) while no answer comes (a transport failure or a 5xx). A
    /// `REPLAYED` refusal after an unanswered attempt means the server accepted the
    /// request then: it is answered with an empty body (what an `Empty` answer encodes
    /// to). Only for the operations of [`retry_safe`].
    pub async fn post_retrying(
        &self,
        service: &str,
        operation: &str,
        body: &[u8],
        session: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut silence = false;
        // Whether some attempt may have reached the server: then a final "not sent" is
        // not the whole story.
        let mut maybe_sent = false;
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match self.post_sealed(service, operation, body, session).await {
                Err(e) if silence && e.code() == Some("REPLAYED") => return Ok(Vec::new()),
                Err(e) if is_unanswered(&e) => {
                    maybe_sent |= !matches!(e, ClientError::NotSent(_));
                    match pauses.next() {
                        Some(pause) => {
                            silence = true;
                            tracing::debug!(%service, %operation, error = %e, "no answer; sending the same request again");
                            tokio::time::sleep(*pause).await;
                        }
                        None => {
                            return Err(match e {
                                ClientError::NotSent(text) if maybe_sent => {
                                    ClientError::Transport(text)
                                }
                                other => other,
                            });
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// `GET path` (a polyproto route), the body of a 2xx answer.
    pub async fn get_json(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        answer(self.http.get(&url), &url).await
    }

    /// `POST path` with a JSON body (a polyproto route), the body of a 2xx answer.
    pub async fn post_json(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        answer(request, &url).await
    }
}

/// Pauses between the attempts at one request whose answer does not come.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

// Requirement: CL-AMBIG-2
/// Whether sending the identical bytes of `service/operation` again after a lost answer is
/// safe, so that [`Api::call`] does it by itself: reads (a second fetch of a consumable
/// package takes another one; the one whose answer was lost is never used, nothing is
/// served twice), the repeatable dequeues, the replay-protected publications (a copy is
/// answered `REPLAYED`), and the registration pair (a copy of a registration that took
/// effect is answered with its result again), and `enqueue_connection` (the AS records
/// its bytes and answers a copy `REPLAYED`, CL-AMBIG-3). Not here: `renew_certificate` and `issue_group_tokens` (a
/// `REPLAYED` copy does not carry the answer), and the DS operations, settled by
/// [`crate::client`]'s recovery.
pub fn retry_safe(service: &str, operation: &str) -> bool {
    use phoenix_types::messages::{as_, ds, qs};
    match service {
        "as" => [
            as_::REGISTER,
            as_::PUBLISH_CONNECTION_PACKAGES,
            as_::FETCH_CONNECTION_PACKAGE,
            // Requirement: CL-AMBIG-3
            as_::ENQUEUE_CONNECTION,
            as_::DEQUEUE_CONNECTION,
            as_::CLIENT_CERTIFICATES,
            as_::SERVER_CERTIFICATE,
            as_::DOMAIN_CERTIFICATES,
        ]
        .contains(&operation),
        "qs" => [
            qs::QUEUE_CONFIG_KEY,
            qs::CREATE_USER,
            qs::PUBLISH_KEY_PACKAGES,
            qs::FETCH_KEY_PACKAGES,
            qs::DEQUEUE,
            qs::KEY_PACKAGE_STATUS,
        ]
        .contains(&operation),
        "ds" => operation == ds::EXTERNAL_COMMIT_INFO,
        _ => false,
    }
}

/// Whether `error` leaves the request's outcome unknown: no answer, or the server's own
/// failure (a 5xx; a store failure is rolled back, a proxy's 502/504 says nothing).
pub fn is_unanswered(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(_) | ClientError::NotSent(_) => true,
        ClientError::Server(e) => e.code.as_str() == "INTERNAL",
        _ => false,
    }
}

/// The request envelope of `service/operation` with `payload`, signed by `signer`: the
/// exact bytes to send (and to send again, unchanged, after a lost answer).
pub fn seal<Req: Serialize>(
    service: &str,
    operation: &str,
    payload: &Req,
    signer: Signer<'_>,
) -> Result<Vec<u8>, ClientError> {
    let payload = payload
        .tls_serialize_detached()
        .map_err(|e| ClientError::Usage(format!("request too large: {e}")))?;
    let label = operation_label(service, operation);
    let auth = match signer {
        Signer::Anonymous => Auth::None,
        Signer::AsClient {
            fid,
            client_id,
            key,
        } => Auth::AsClient(AsClientAuth {
            fid: fid.to_owned(),
            client_id: client_id.to_owned(),
            signature: VLBytes::new(crypto::sign(key, &label, &payload).to_vec()),
        }),
        Signer::QsClient { id, key } => Auth::QsClient(QsAuth {
            id,
            signature: VLBytes::new(crypto::sign(key, &label, &payload).to_vec()),
        }),
        Signer::DsLeaf { leaf_index, key } => {
            let signature = key
                .sign(&crypto::labelled(&label, &payload))
                .map_err(|e| ClientError::Mls(format!("signing failed: {e:?}")))?;
            Auth::DsLeaf(DsLeafAuth {
                leaf_index,
                signature: VLBytes::new(signature),
            })
        }
    };
    RequestEnvelope {
        version: PROTOCOL_VERSION,
        payload: VLBytes::new(payload),
        auth,
    }
    .tls_serialize_detached()
    .map_err(|e| ClientError::Usage(format!("request too large: {e}")))
}

/// Decode a 2xx answer's body as the operation's response type.
pub fn decode_answer<Resp: Deserialize>(bytes: &[u8], url: &str) -> Result<Resp, ClientError> {
    Resp::tls_deserialize_exact(bytes)
        .map_err(|e| ClientError::Transport(format!("{url}: malformed response: {e}")))
}

/// An error with its chain of causes ("error sending request: ... : Connection refused"),
/// so that the user sees why, not only that, a request failed.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// Requirement: CLI-ERR-1
/// A request to `url` that got no answer: the server (origin, not the internal route)
/// and the cause in words.
fn unreachable(url: &str, error: &reqwest::Error) -> ClientError {
    let timed_out = error.is_timeout();
    let text = format!("{}: {}", origin(url), cause_in_words(error, timed_out));
    // A connect error (refused, name not found, TLS handshake) means the request was
    // never written to a connection.
    if error.is_connect() && !timed_out {
        ClientError::NotSent(text)
    } else {
        ClientError::Transport(text)
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url.get(after_scheme..).and_then(|rest| rest.find('/')) {
        Some(end) => url.get(..after_scheme + end).unwrap_or(url),
        None => url,
    }
}

// Requirement: CLI-ERR-1
/// Why a request got no answer, in words: connection refused, name not found, TLS
/// failure, timed out, or else the error's chain of causes.
pub fn cause_in_words(error: &(dyn std::error::Error + 'static), timed_out: bool) -> String {
    use std::io::ErrorKind;
    let chain = with_causes(error);
    let mut innermost = chain.clone();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        innermost = e.to_string();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused => {
                    return "connection refused (nothing listens at that address: is the \
                            server running, and is the address right?)"
                        .to_owned();
                }
                ErrorKind::TimedOut => return "timed out (no answer)".to_owned(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                    return "the connection was closed by the other side before it answered"
                        .to_owned();
                }
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    return format!("the network cannot reach it ({innermost})");
                }
                _ => {}
            }
        }
        source = e.source();
    }
    if timed_out {
        return format!(
            "timed out (no answer within {} s)",
            REQUEST_TIMEOUT.as_secs()
        );
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
        || lower.contains("no address associated")
    {
        return "name not found: the host name does not resolve (check the name, or say \
                where the server is with --resolve DOMAIN=URL)"
            .to_owned();
    }
    if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
    {
        if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            return format!(
                "TLS failure: the server's certificate is not signed by a CA this client trusts ({innermost}); for a private CA, pass --ca-cert FILE"
            );
        }
        return format!("TLS failure: {innermost}");
    }
    chain
}

/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read (bytes).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Send `request`; the body of a 2xx answer, or the problem document as an error.
async fn answer(request: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, ClientError> {
    let mut response = request.send().await.map_err(|e| unreachable(url, &e))?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, &e))? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(ClientError::Transport(format!(
                "{url}: the answer is too large"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let error = serde_json::from_slice::<Problem>(&bytes)
            .map(|p| p.to_error())
            .unwrap_or_else(|_| {
                WireError::new(
                    ErrorCode::Internal,
                    format!("HTTP {status} without a problem document"),
                )
            });
        return Err(ClientError::Server(error));
    }
    Ok(bytes)
}
