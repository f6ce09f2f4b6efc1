//! Foreign sessions (the original Polyphony "federation handshake", in polyproto core's
//! current shape): an actor proves to this server that it holds the key of one of its
//! ID-Certs and gets a session token.
//!
//! - `GET /.p2/core/v1/session/auth` → `{"expires","trial"}`: a key trial, 64 random
//!   alphanumeric characters, valid for [`KEY_TRIAL_TTL`] seconds, stored in the database.
//!   Pending trials are bounded per requesting address (as [`crate::ratelimit`] determines
//!   it, so behind a trusted reverse proxy the client's; an IPv6 address counts by its /64)
//!   and in total; beyond that the answer is `RATE_LIMITED`.
//! - `POST /.p2/core/v1/session/auth` with `{"fid","serialNumber","signature"}` (polyproto's
//!   `KeyTrialCompleted`; the serial as an unsigned decimal string of any length up to 20
//!   octets, the signature hex Ed25519 over the trial string), optionally `"trial"` to name
//!   the trial answered (otherwise the pending trials issued to the requesting address are
//!   tried). This server learns the certificate from the actor's home server
//!   ([`super::home`]), checks its chain, that it is valid now and not invalidated,
//!   verifies the signature, completes the trial (once: a replay is `REPLAYED`), and
//!   returns `{"token"}`. The token is 32 random bytes in hex; only its SHA-256 is stored,
//!   with the FID, client (session) id, certificate serial and expiry. Each certificate has
//!   at most one active token: a new one replaces the old.
//! - `DELETE /.p2/core/v1/session[?sessionId=]` (bearer) ends the session and records its
//!   certificate as invalidated in this server's view (for a local user, `idcert/actor`
//!   then serves it with `invalidatedAt`).
//! - `PUT /.p2/core/v1/session/idcert/extern` (bearer) with the session's new or revoked
//!   certificate (a JSON string holding the PEM, as polyproto 0.21 sends it; or
//!   `{"idCertPem", "invalidatedAt"?}`; or the bare PEM): the certificate must be the
//!   session actor's, for the same session id, and the home server must vouch for it; a
//!   revoked one (with `invalidatedAt`, or invalidated at home) is recorded and ends its
//!   sessions, a new one becomes the session's certificate.
//!
//! Every use of a bearer token ([`authenticate`], [`rate_limit_key`]) past the session's
//! `verified_until` first checks its certificate again with the home server
//! (`reverify`): no longer vouched for ends the session (`UNAUTHENTICATED`), an
//! unreachable home server is `UNAVAILABLE` (the session kept).
//!
//! Error codes: a malformed body `MALFORMED`, a bad FID `INVALID_FID`; no such trial
//! `UNAUTHENTICATED`; a trial answered before `REPLAYED`; an expired one (or one ended by a
//! wrong answer) `STALE_REQUEST`; a signature that does not verify `BAD_SIGNATURE`; an FID
//! its home server does not know `UNKNOWN_USER`; no certificate with that serial
//! `UNKNOWN_CLIENT`; an invalidated certificate `FORBIDDEN`; one that is expired or does
//! not chain to its home CA `INVALID_CERTIFICATE`; an unreachable or inconsistent home
//! server `UNKNOWN_PEER`. A wrong answer ends the trials it could have answered, so each
//! trial costs at most one lookup at a home server.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};
use zeroize::Zeroizing;

use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Fid;

use super::home::{self, ActorCertificate};
use super::{JcsObject, decimal, jcs_response, parse_u64, respond, with_server};
use crate::ratelimit::{RateLimiter, SessionKey};
use crate::server::{Server, now};
use crate::store::sessions::{
    CertificateRecord, CompleteTrial, InsertTrial, SessionRecord, SessionStore, TrialCompletion,
    TrialLimits, TrialRecord, TrialState,
};

/// How long a key trial can be answered (seconds), by default.
pub const KEY_TRIAL_TTL: u64 = 300;
/// Length of a key trial (polyproto: 32 to 256 characters, at least 64 recommended).
pub const KEY_TRIAL_LEN: usize = 64;
/// Pending trials one address may hold.
pub const MAX_PENDING_PER_ADDRESS: u32 = 16;
/// Pending trials the server holds at most.
pub const MAX_PENDING: u32 = 100_000;
/// Trials are deleted this long after they expired (seconds); until then a replay is
/// recognised as such.
pub const TRIAL_RETENTION: u64 = 24 * 3600;
/// Without `"trial"` in the answer, this many of the address's newest trials are tried.
const RECENT_TRIALS: u32 = 32;
/// Longest session (seconds); never past the certificate's `notAfter`.
pub const SESSION_LIFETIME: u64 = 7 * 24 * 3600;
/// Largest request body of these routes (bytes).
const MAX_BODY: usize = 64 * 1024;
/// Tolerated clock difference for an announced `invalidatedAt` (seconds).
const CLOCK_SKEW: u64 = 60;

/// An authenticated foreign session, as [`session`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub fid: Fid,
    /// The polyproto session id: the Phoenix client id.
    pub client_id: String,
    /// Serial of the session's certificate (unsigned decimal).
    pub serial: String,
    pub expires_at: u64,
    /// Until when the home server's answer about the certificate may be relied on; after
    /// that, polyproto wants it asked again before the actor acts.
    pub verified_until: u64,
    token_hash: [u8; 32],
}

impl Session {
    /// The opaque key the rate limiter counts this session's requests under (see
    /// [`rate_limit_key`]).
    pub fn rate_limit_key(&self) -> SessionKey {
        limiter_key(&self.token_hash)
    }
}

// Requirement: RL-SESSION-1, RL-SESSION-2
/// The rate-limit key of the live session of an `Authorization: Bearer <token>` header, or
/// `UNAUTHENTICATED` (as [`authenticate`]). Past the session's `verified_until` its
/// certificate is checked again with its home server first (`reverify`); otherwise the
/// FID is handed to nothing: a QS or DS request that carries a session is handled without
/// the actor's identity.
pub async fn rate_limit_key(
    server: &Server,
    authorization: Option<&str>,
) -> Result<SessionKey, WireError> {
    let unknown = || {
        WireError::new(
            ErrorCode::Unauthenticated,
            "unknown or expired session token",
        )
    };
    let hash = token_hash(bearer(authorization)?).ok_or_else(unknown)?;
    let record = server
        .store
        .session(&hash, now())
        .await
        .map_err(server.internal())?;
    if let Some(record) = record {
        // Requirement: P2-SESSION-4
        reverify(server, &record, now()).await?;
        // The token is the session's: the operator can look its FID up (ADV-OP-1).
        // Requirement: ADV-OP-1
        observe!([Observed::SessionToken(hash)]);
        Ok(limiter_key(&hash))
    } else {
        Err(unknown())
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme case-insensitive).
fn bearer(authorization: Option<&str>) -> Result<&str, WireError> {
    let unauthenticated =
        |detail: &str| WireError::new(ErrorCode::Unauthenticated, detail.to_owned());
    let header =
        authorization.ok_or_else(|| unauthenticated("a bearer session token is required"))?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| unauthenticated("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated("expected Authorization: Bearer <token>"));
    }
    Ok(token.trim())
}

/// A hash of the token hash, so that neither the FID nor the stored token hash appears in
/// the limiter's state.
fn limiter_key(token_hash: &[u8; 32]) -> SessionKey {
    let mut input = b"phoenix rate-limit session ".to_vec();
    input.extend_from_slice(token_hash);
    SessionKey(crypto::sha256(&input))
}

/// The session of a bearer token (without the `Bearer ` prefix), if it is stored and not
/// expired, as stored: it does not re-check a certificate past `verified_until` (requests
/// go through [`authenticate`] or [`rate_limit_key`], which do). A storage failure is
/// logged and counts as no session.
pub async fn session(server: &Server, token: &str) -> Option<Session> {
    let hash = token_hash(token)?;
    let record = match server.store.session(&hash, now()).await {
        Ok(record) => record?,
        Err(e) => {
            tracing::error!(error = %e, "cannot look a session up");
            return None;
        }
    };
    let fid = Fid::parse(&record.fid).ok()?;
    Some(Session {
        fid,
        client_id: record.client_id,
        serial: record.serial,
        expires_at: record.expires_at,
        verified_until: record.verified_until,
        token_hash: record.token_hash,
    })
}

pub fn routes(server: Arc<Server>, limiter: Arc<RateLimiter>) -> BoxedFilter<(Response,)> {
    let body_timeout = server.limits.edge.body_read_timeout;
    // The client's address as the rate limiter sees it (a trusted reverse proxy's header
    // is believed), for the per-address bound on pending trials.
    let client = crate::edge::remote()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<SocketAddr>, headers: HeaderMap| limiter.client_ip(peer, &headers));
    let trial = warp::path!(".p2" / "core" / "v1" / "session" / "auth")
        .and(warp::get())
        .and(client.clone())
        .and(with_server(server.clone()))
        .then(|client: Option<IpAddr>, server: Arc<Server>| async move {
            let handled = issue_trial(&server, client, now());
            respond(observe_request!(server, "polyproto", "session/auth", client, handled).await)
        });
    let answer = warp::path!(".p2" / "core" / "v1" / "session" / "auth")
        .and(warp::post())
        .and(client)
        .and(crate::edge::body(MAX_BODY, body_timeout))
        .and(with_server(server.clone()))
        .then(
            |client: Option<IpAddr>, body: Zeroizing<Vec<u8>>, server: Arc<Server>| async move {
                let handled = answer_trial(&server, client, &body, now());
                respond(
                    observe_request!(server, "polyproto", "session/answer", client, handled).await,
                )
            },
        );
    let delete = warp::path!(".p2" / "core" / "v1" / "session")
        .and(warp::delete())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<std::collections::BTreeMap<String, String>>())
        .and(with_server(server.clone()))
        .and(crate::observe::source())
        .then(
            |authorization: Option<String>,
             query: std::collections::BTreeMap<String, String>,
             server: Arc<Server>,
             source| async move {
                let handled = delete_session(&server, authorization.as_deref(), &query, now());
                respond(
                    observe_request!(server, "polyproto", "session/delete", source, handled).await,
                )
            },
        );
    let update = warp::path!(".p2" / "core" / "v1" / "session" / "idcert" / "extern")
        .and(warp::put())
        .and(warp::header::optional::<String>("authorization"))
        .and(crate::edge::body(MAX_BODY, body_timeout))
        .and(with_server(server))
        .and(crate::observe::source())
        .then(
            |authorization: Option<String>,
             body: Zeroizing<Vec<u8>>,
             server: Arc<Server>,
             source| async move {
                let handled = update_certificate(&server, authorization.as_deref(), &body, now());
                respond(
                    observe_request!(
                        server,
                        "polyproto",
                        "session/idcert/extern",
                        source,
                        handled
                    )
                    .await,
                )
            },
        );
    trial
        .or(answer)
        .unify()
        .or(delete)
        .unify()
        .or(update)
        .unify()
        .boxed()
}

/// `GET session/auth`.
pub async fn issue_trial(
    server: &Server,
    client: Option<IpAddr>,
    now: u64,
) -> Result<Response, WireError> {
    let trial = random_trial();
    let expires = now.saturating_add(server.federation.polyproto.key_trial_ttl);
    let limits = TrialLimits {
        per_address: MAX_PENDING_PER_ADDRESS,
        total: MAX_PENDING,
        retention: TRIAL_RETENTION,
    };
    match server
        .store
        .insert_trial(&trial, &address(client), now, expires, limits)
        .await
        .map_err(server.internal())?
    {
        InsertTrial::Inserted => {}
        InsertTrial::TooManyForAddress => {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                format!(
                    "this address has {MAX_PENDING_PER_ADDRESS} pending key trials; answer one or wait until they expire"
                ),
            ));
        }
        InsertTrial::TooMany => {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                "too many pending key trials; try again later",
            ));
        }
    }
    Ok(jcs_response(&JcsObject::from([
        ("trial", trial),
        ("expires", expires.to_string()),
    ])))
}

/// The body of `POST session/auth`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrialAnswer {
    fid: String,
    serial_number: String,
    signature: String,
    #[serde(default)]
    trial: Option<String>,
}

/// `POST session/auth`.
pub async fn answer_trial(
    server: &Server,
    client: Option<IpAddr>,
    body: &[u8],
    now: u64,
) -> Result<Response, WireError> {
    let answer: TrialAnswer = serde_json::from_slice(body).map_err(|e| {
        WireError::new(
            ErrorCode::Malformed,
            format!("expected {{\"fid\", \"serialNumber\", \"signature\"}}: {e}"),
        )
    })?;
    let fid = Fid::parse(&answer.fid)
        .map_err(|e| WireError::new(ErrorCode::InvalidFid, e.to_string()))?;
    let serial = canonical_serial(&answer.serial_number)?;
    // Requirement: ADV-OP-1
    observe!([
        Observed::Fid(fid.to_string()),
        Observed::CertificateSerial(serial.clone()),
    ]);
    let signature = hex::decode(&answer.signature)
        .ok()
        .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::Malformed,
                "signature must be a hex Ed25519 signature (128 hex digits)",
            )
        })?;
    let completion = TrialCompletion {
        fid: fid.to_string(),
        serial: serial.clone(),
        signature: answer.signature.to_ascii_lowercase(),
    };

    // Which trials this can answer, decided locally before asking any home server.
    let candidates = match &answer.trial {
        Some(trial) => {
            let record = server
                .store
                .trial(trial)
                .await
                .map_err(server.internal())?
                .ok_or_else(|| WireError::new(ErrorCode::Unauthenticated, "no such key trial"))?;
            check_state(&record, now)?;
            vec![record]
        }
        None => {
            if server
                .store
                .completed_with(&completion)
                .await
                .map_err(server.internal())?
            {
                return Err(replayed());
            }
            let recent = server
                .store
                .recent_trials(&address(client), RECENT_TRIALS)
                .await
                .map_err(server.internal())?;
            let pending: Vec<TrialRecord> = recent
                .iter()
                .filter(|t| t.state(now) == TrialState::Pending)
                .cloned()
                .collect();
            if pending.is_empty() {
                return Err(
                    if recent.iter().any(|t| t.state(now) == TrialState::Expired) {
                        stale()
                    } else {
                        WireError::new(
                            ErrorCode::Unauthenticated,
                            "no pending key trial for this address: GET /.p2/core/v1/session/auth first",
                        )
                    },
                );
            }
            pending
        }
    };

    let verified = match verify_answer(server, &fid, &serial, &signature, &candidates, now).await {
        Ok(verified) => verified,
        Err(e) => {
            // A wrong answer ends the trials it could have answered.
            let trials: Vec<String> = candidates.into_iter().map(|t| t.trial).collect();
            server
                .store
                .expire_trials(&trials, now)
                .await
                .map_err(server.internal())?;
            return Err(e);
        }
    };
    let (trial, certificate) = verified;

    let token = random_token();
    let hash = token_hash(&token).ok_or_else(|| {
        WireError::new(ErrorCode::Internal, "generated a malformed session token")
    })?;
    let client_id = certificate
        .cert
        .actor
        .as_ref()
        .map(|a| a.client_id.to_string())
        .ok_or_else(|| WireError::new(ErrorCode::InvalidCertificate, "not an actor certificate"))?;
    let session = SessionRecord {
        token_hash: hash,
        fid: fid.to_string(),
        client_id: client_id.clone(),
        serial: serial.clone(),
        created_at: now,
        expires_at: now
            .saturating_add(SESSION_LIFETIME)
            .min(certificate.cert.not_after),
        verified_until: certificate.verified_until,
    };
    let record = certificate_record(&fid, &certificate);
    observe!([
        Observed::AsClientId(client_id.clone()),
        Observed::certificate(&certificate.cert.der),
        Observed::SessionToken(hash),
    ]);
    match server
        .store
        .complete_trial(&trial, now, &completion, &record, &session)
        .await
        .map_err(server.internal())?
    {
        CompleteTrial::Completed => {}
        CompleteTrial::Replayed => return Err(replayed()),
        CompleteTrial::Expired => return Err(stale()),
        CompleteTrial::Unknown => {
            return Err(WireError::new(
                ErrorCode::Unauthenticated,
                "no such key trial",
            ));
        }
        CompleteTrial::Invalidated => return Err(invalidated(&serial)),
    }
    // Logs carry the serial, not the FID (as the AS's own logs), so that a log reader
    // learns no more than the public certificate routes tell.
    tracing::info!(domain = %fid.domain(), serial, "opened a polyproto session");
    Ok(jcs_response(&JcsObject::from([("token", token)])))
}

/// Look the certificate up at its home server, check it, and find the candidate trial
/// the signature answers.
async fn verify_answer(
    server: &Server,
    fid: &Fid,
    serial: &str,
    signature: &ed25519_dalek::Signature,
    candidates: &[TrialRecord],
    now: u64,
) -> Result<(String, ActorCertificate), WireError> {
    let certificate = home::actor_certificate(server, fid, serial, now).await?;
    check_usable(&certificate, now)?;
    let key = crypto::verifying_key(&certificate.cert.public_key)
        .map_err(|_| WireError::new(ErrorCode::InvalidCertificate, "unusable public key"))?;
    let trial = candidates
        .iter()
        .find(|t| key.verify_strict(t.trial.as_bytes(), signature).is_ok())
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::BadSignature,
                "the signature does not answer the key trial with this certificate's key",
            )
        })?;
    Ok((trial.trial.clone(), certificate))
}

/// A certificate may open or continue a session: valid now and not invalidated.
fn check_usable(certificate: &ActorCertificate, now: u64) -> Result<(), WireError> {
    if certificate.invalidated_at.is_some() {
        return Err(invalidated(&certificate.serial));
    }
    if !certificate.cert.valid_at(now) {
        return Err(WireError::new(
            ErrorCode::InvalidCertificate,
            format!(
                "certificate {} is valid only from {} to {}",
                certificate.serial, certificate.cert.not_before, certificate.cert.not_after
            ),
        ));
    }
    Ok(())
}

fn check_state(trial: &TrialRecord, now: u64) -> Result<(), WireError> {
    match trial.state(now) {
        TrialState::Pending => Ok(()),
        TrialState::Completed => Err(replayed()),
        TrialState::Expired => Err(stale()),
    }
}

fn replayed() -> WireError {
    WireError::new(
        ErrorCode::Replayed,
        "this key trial was answered already; get a new one",
    )
}

fn stale() -> WireError {
    WireError::new(
        ErrorCode::StaleRequest,
        "the key trial expired (or was ended by a wrong answer); get a new one",
    )
}

fn invalidated(serial: &str) -> WireError {
    WireError::new(
        ErrorCode::Forbidden,
        format!("certificate {serial} was invalidated"),
    )
}

/// `DELETE session`: end the bearer's session and invalidate its certificate here.
pub async fn delete_session(
    server: &Server,
    authorization: Option<&str>,
    query: &std::collections::BTreeMap<String, String>,
    now: u64,
) -> Result<Response, WireError> {
    let session = authenticate(server, authorization).await?;
    if let Some(id) = query.get("sessionId")
        && *id != session.client_id
    {
        // Ending another session of the actor is a sensitive action in polyproto, which
        // needs a second factor this server does not have for foreign actors.
        return Err(WireError::new(
            ErrorCode::Forbidden,
            "a session token can only end its own session",
        ));
    }
    let record = server
        .store
        .certificate(&session.fid.to_string(), &session.serial)
        .await
        .map_err(server.internal())?
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::Internal,
                "the session's certificate is not recorded",
            )
        })?;
    server
        .store
        .invalidate_certificate(&CertificateRecord {
            invalidated_at: Some(now),
            ..record
        })
        .await
        .map_err(server.internal())?;
    tracing::info!(
        serial = session.serial,
        "ended a polyproto session and invalidated its certificate"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `PUT session/idcert/extern` as an object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExternCertificate {
    id_cert_pem: String,
    #[serde(default)]
    invalidated_at: Option<String>,
}

/// `PUT session/idcert/extern`.
pub async fn update_certificate(
    server: &Server,
    authorization: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Response, WireError> {
    let session = authenticate(server, authorization).await?;
    let (pem, announced) = extern_body(body)?;
    if announced.is_some_and(|at| at > now.saturating_add(CLOCK_SKEW)) {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "invalidatedAt is in the future",
        ));
    }
    let der = certs::from_pem(&pem)
        .map_err(|e| WireError::new(ErrorCode::InvalidCertificate, e.to_string()))?;
    let cert = ParsedCert::parse(&der)
        .map_err(|e| WireError::new(ErrorCode::InvalidCertificate, e.to_string()))?;
    // Requirement: ADV-OP-1
    observe!([Observed::certificate(&der)]);
    let actor = cert
        .actor
        .as_ref()
        .ok_or_else(|| WireError::new(ErrorCode::InvalidCertificate, "not an actor certificate"))?;
    if actor.fid != session.fid || actor.client_id.as_str() != session.client_id {
        return Err(WireError::new(
            ErrorCode::Forbidden,
            "the certificate is not for this session's actor and session id",
        ));
    }
    let serial = decimal(&cert.serial);
    let mut certificate = home::actor_certificate(server, &session.fid, &serial, now).await?;
    if certificate.cert.der != der {
        return Err(WireError::new(
            ErrorCode::InvalidCertificate,
            "the actor's home server has a different certificate with this serial",
        ));
    }
    if let Some(at) = announced {
        certificate.invalidated_at = Some(certificate.invalidated_at.map_or(at, |t| t.min(at)));
    }
    let record = certificate_record(&session.fid, &certificate);
    if record.invalidated_at.is_some() {
        server
            .store
            .invalidate_certificate(&record)
            .await
            .map_err(server.internal())?;
        tracing::info!(
            serial,
            "recorded an invalidated certificate and ended its sessions"
        );
        return Ok(StatusCode::CREATED.into_response());
    }
    check_usable(&certificate, now)?;
    if !server
        .store
        .update_session_certificate(&session.token_hash, &record, certificate.verified_until)
        .await
        .map_err(server.internal())?
    {
        return Err(WireError::new(
            ErrorCode::Unauthenticated,
            "the session ended, or the certificate was invalidated, meanwhile",
        ));
    }
    tracing::info!(serial, "moved a polyproto session to a new certificate");
    Ok(StatusCode::CREATED.into_response())
}

/// The certificate (PEM) and announced invalidation of a `PUT session/idcert/extern` body:
/// a JSON string (polyproto 0.21 sends the JCS form of the PEM string), a JSON object
/// `{"idCertPem", "invalidatedAt"?}`, or the bare PEM.
fn extern_body(body: &[u8]) -> Result<(String, Option<u64>), WireError> {
    let malformed = |detail: String| WireError::new(ErrorCode::Malformed, detail);
    let text = std::str::from_utf8(body)
        .map_err(|_| malformed("the body is not UTF-8".into()))?
        .trim_start();
    if text.starts_with('"') {
        let pem: String =
            serde_json::from_str(text).map_err(|e| malformed(format!("bad JSON string: {e}")))?;
        Ok((pem, None))
    } else if text.starts_with('{') {
        let object: ExternCertificate = serde_json::from_str(text).map_err(|e| {
            malformed(format!(
                "expected {{\"idCertPem\", \"invalidatedAt\"?}}: {e}"
            ))
        })?;
        let at = match &object.invalidated_at {
            Some(at) => Some(parse_u64(at).ok_or_else(|| {
                malformed("invalidatedAt must be a unix time as a decimal string".into())
            })?),
            None => None,
        };
        Ok((object.id_cert_pem, at))
    } else {
        Ok((text.to_owned(), None))
    }
}

// Requirement: RL-SESSION-2
/// The session of an `Authorization: Bearer <token>` header, or `UNAUTHENTICATED` (no
/// header, another scheme, or a token that is malformed, unknown, expired or whose session
/// was ended or whose certificate was invalidated).
pub async fn authenticate(
    server: &Server,
    authorization: Option<&str>,
) -> Result<Session, WireError> {
    let unauthenticated =
        |detail: &str| WireError::new(ErrorCode::Unauthenticated, detail.to_owned());
    let header =
        authorization.ok_or_else(|| unauthenticated("a bearer session token is required"))?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| unauthenticated("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated("expected Authorization: Bearer <token>"));
    }
    let hash = token_hash(token.trim())
        .ok_or_else(|| unauthenticated("unknown or expired session token"))?;
    let record = server
        .store
        .session(&hash, now())
        .await
        .map_err(server.internal())?
        .ok_or_else(|| unauthenticated("unknown or expired session token"))?;
    // Requirement: P2-SESSION-4
    let record = reverify(server, &record, now()).await?;
    let fid =
        Fid::parse(&record.fid).map_err(|_| unauthenticated("unknown or expired session token"))?;
    let session = Session {
        fid,
        client_id: record.client_id,
        serial: record.serial,
        expires_at: record.expires_at,
        verified_until: record.verified_until,
        token_hash: record.token_hash,
    };
    // Requirement: ADV-OP-1
    observe!([
        Observed::Fid(session.fid.to_string()),
        Observed::AsClientId(session.client_id.clone()),
        Observed::CertificateSerial(session.serial.clone()),
        Observed::SessionToken(session.token_hash),
    ]);
    Ok(session)
}

/// Sessions being re-checked with their home server now (by token hash): at most one
/// re-check per session at a time.
static RECHECKING: std::sync::LazyLock<std::sync::Mutex<HashSet<[u8; 32]>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(HashSet::new()));

/// Removes its session from [`RECHECKING`] when the re-check ends (or is dropped).
struct Rechecking([u8; 32]);

impl Drop for Rechecking {
    fn drop(&mut self) {
        RECHECKING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

// Requirement: P2-SESSION-4
/// A session about to be used, its certificate still vouched for by its home server:
/// while `verified_until` has not passed, as it is; after that, the certificate is looked
/// up again at the home server ([`home::actor_certificate`], the lookup the session was
/// opened with, bounded by the federation HTTP client's timeouts). Still valid and not
/// invalidated: `verified_until` moves to the new answer's window (stored). Invalidated,
/// expired, unknown to the home server, no longer chaining to its CA or refused by policy:
/// the certificate is recorded as invalidated here, which ends its sessions, and the
/// request is `UNAUTHENTICATED`. Home server unreachable or answering something that does
/// not verify: `UNAVAILABLE`, the session is kept but not trusted until a re-check
/// succeeds. A second request of the same session while one re-check runs is
/// `UNAVAILABLE` too (retry), never a second lookup.
async fn reverify(
    server: &Server,
    record: &SessionRecord,
    now: u64,
) -> Result<SessionRecord, WireError> {
    if now <= record.verified_until {
        return Ok(record.clone());
    }
    let unavailable = |detail: String| WireError::new(ErrorCode::Unavailable, detail);
    let fid = Fid::parse(&record.fid)
        .map_err(|_| WireError::new(ErrorCode::Internal, "a stored session has a malformed FID"))?;
    let _guard = {
        let mut running = RECHECKING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !running.insert(record.token_hash) {
            return Err(unavailable(
                "the session's certificate is being checked again with its home server; retry"
                    .to_owned(),
            ));
        }
        Rechecking(record.token_hash)
    };
    let refused = match home::actor_certificate(server, &fid, &record.serial, now).await {
        Ok(certificate) => match check_usable(&certificate, now) {
            Ok(()) if certificate.verified_until > now => {
                let updated = server
                    .store
                    .update_session_certificate(
                        &record.token_hash,
                        &certificate_record(&fid, &certificate),
                        certificate.verified_until,
                    )
                    .await
                    .map_err(server.internal())?;
                if !updated {
                    return Err(WireError::new(
                        ErrorCode::Unauthenticated,
                        "the session ended, or its certificate was invalidated, meanwhile",
                    ));
                }
                return Ok(SessionRecord {
                    verified_until: certificate.verified_until,
                    ..record.clone()
                });
            }
            Ok(()) => {
                return Err(unavailable(format!(
                    "{}'s answer about the session's certificate is already out of its window",
                    fid.domain()
                )));
            }
            Err(e) => e,
        },
        Err(e) if matches!(e.code, ErrorCode::UnknownPeer) => {
            return Err(unavailable(format!(
                "cannot check the session's certificate again with its home server: {}",
                e.detail
            )));
        }
        Err(e) if matches!(e.code, ErrorCode::Internal) => return Err(e),
        Err(e) => e,
    };
    // No longer vouched for: end the session (and any other of this certificate).
    if let Some(stored) = server
        .store
        .certificate(&record.fid, &record.serial)
        .await
        .map_err(server.internal())?
    {
        server
            .store
            .invalidate_certificate(&CertificateRecord {
                invalidated_at: Some(stored.invalidated_at.map_or(now, |at| at.min(now))),
                ..stored
            })
            .await
            .map_err(server.internal())?;
    }
    tracing::info!(
        serial = record.serial,
        "ended a polyproto session: its home server no longer vouches for its certificate"
    );
    Err(WireError::new(
        ErrorCode::Unauthenticated,
        format!(
            "session ended: its home server no longer vouches for certificate {} ({})",
            record.serial, refused.detail
        ),
    ))
}

fn certificate_record(fid: &Fid, certificate: &ActorCertificate) -> CertificateRecord {
    CertificateRecord {
        fid: fid.to_string(),
        serial: certificate.serial.clone(),
        client_id: certificate
            .cert
            .actor
            .as_ref()
            .map(|a| a.client_id.to_string())
            .unwrap_or_default(),
        certificate: certificate.cert.der.clone(),
        not_after: certificate.cert.not_after,
        invalidated_at: certificate.invalidated_at,
    }
}

/// A serial as an unsigned decimal string without leading zeros, at most 20 octets (49
/// digits).
fn canonical_serial(serial: &str) -> Result<String, WireError> {
    let ok = !serial.is_empty()
        && serial.len() <= 49
        && serial.bytes().all(|b| b.is_ascii_digit())
        && (serial == "0" || !serial.starts_with('0'));
    if ok {
        Ok(serial.to_owned())
    } else {
        Err(WireError::new(
            ErrorCode::Malformed,
            "serialNumber must be the certificate serial as an unsigned decimal string",
        ))
    }
}

/// What bounds pending trials: the IPv4 address, or the /64 of an IPv6 address (one host
/// usually has a whole /64).
fn address(client: Option<IpAddr>) -> String {
    match client {
        Some(IpAddr::V4(ip)) => ip.to_string(),
        Some(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = ip.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        None => "unknown".to_owned(),
    }
}

fn random_trial() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut trial = String::with_capacity(KEY_TRIAL_LEN);
    while trial.len() < KEY_TRIAL_LEN {
        let mut random = [0u8; 1];
        OsRng.fill_bytes(&mut random);
        let [byte] = random;
        // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
        if byte < 248
            && let Some(c) = ALPHABET.get(usize::from(byte) % 62)
        {
            trial.push(char::from(*c));
        }
    }
    trial
}

fn random_token() -> String {
    let mut token = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(token.as_mut_slice());
    hex::encode(token.as_slice())
}

/// SHA-256 of a well-formed token (64 hex digits), `None` otherwise.
fn token_hash(token: &str) -> Option<[u8; 32]> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(crypto::sha256(token.to_ascii_lowercase().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_are_long_and_alphanumeric() {
        let a = random_trial();
        assert_eq!(a.len(), KEY_TRIAL_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_trial());
    }

    #[test]
    fn addresses_bucket_ipv6_by_64() {
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(address(v6("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(
            address(v6("2001:db8:1:2:ffff::1")),
            address(v6("2001:db8:1:2::9"))
        );
        assert_eq!(address(v6("::ffff:10.0.0.1")), "10.0.0.1");
        assert_eq!(address(v6("10.0.0.1")), "10.0.0.1");
        assert_eq!(address(None), "unknown");
    }

    #[test]
    fn serials_and_tokens_are_canonical() {
        assert!(canonical_serial("123").is_ok());
        assert!(canonical_serial("0").is_ok());
        for bad in ["", "0123", "-1", "12a", &"9".repeat(50)] {
            assert!(canonical_serial(bad).is_err(), "{bad}");
        }
        let token = random_token();
        assert_eq!(token.len(), 64);
        assert_eq!(token_hash(&token), token_hash(&token.to_ascii_uppercase()));
        assert!(token_hash("abc").is_none());
        assert!(token_hash(&"g".repeat(64)).is_none());
    }

    #[test]
    fn extern_bodies() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let json = serde_json::to_string(pem).unwrap();
        assert_eq!(
            extern_body(json.as_bytes()).unwrap(),
            (pem.to_owned(), None)
        );
        assert_eq!(extern_body(pem.as_bytes()).unwrap(), (pem.to_owned(), None));
        let object = format!(r#"{{"idCertPem":{json},"invalidatedAt":"5"}}"#);
        assert_eq!(
            extern_body(object.as_bytes()).unwrap(),
            (pem.to_owned(), Some(5))
        );
        let bad = format!(r#"{{"idCertPem":{json},"invalidatedAt":5}}"#);
        assert!(extern_body(bad.as_bytes()).is_err());
        assert!(extern_body(&[0xff]).is_err());
    }
}
