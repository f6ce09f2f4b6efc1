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
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
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
            .map_err(|e| ClientError::Transport(format!("{url}: {}", with_causes(&e))))?;
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
        let bytes = self.post_sealed(service, operation, &body, session).await?;
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

/// Largest answer read (bytes).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Send `request`; the body of a 2xx answer, or the problem document as an error.
async fn answer(request: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, ClientError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(format!("{url}: {}", with_causes(&e))))?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Transport(format!("{url}: {}", with_causes(&e))))?
    {
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
