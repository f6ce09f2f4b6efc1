//! `GET /.p2/core/v1/idcert/server[?timestamp=T]` and
//! `GET /.p2/core/v1/idcert/actor/{fid}[?notBefore=&notAfter=&sessionId=]`: this server's CA
//! certificate valid at a time, and every certificate ever issued to one of its users, as
//! polyproto "cacheable ID-Certs".
//!
//! A cacheable ID-Cert is the JCS object
//! `{"cacheNotValidAfter","cacheNotValidBefore","cacheSignature","idCertPem"}` plus
//! `"invalidatedAt"` when the certificate was invalidated, every u64 a decimal string.
//! `cacheSignature` is the hex Ed25519 signature, by the **current** CA key, over
//! `"<serial> <cacheNotValidBefore> <cacheNotValidAfter>"` (+ `" <invalidatedAt>"`), the
//! serial being the certificate serial's unsigned decimal value: exactly what
//! `polyproto::api::cacheable_cert::CacheableIdCert::verify` rebuilds and checks. The
//! current key signs (not the key of the CA that issued the certificate) because the
//! signature attests to the cache window and revocation status as of now, which only the
//! key in use now may do; a rotated-out key may be rotated out because it leaked.
//!
//! The cache window starts now and lasts the configured TTL (1 to 12 hours), but never
//! past the certificate's `notAfter`: a certificate that has expired gets an empty window
//! (`cacheNotValidAfter == cacheNotValidBefore`), so it is served for verifying old
//! messages but not cached.
//!
//! For a user of another domain, `idcert/actor/{fid}` answers from this server's cache of
//! that domain's own cacheable ID-Certs (their windows and signatures are the home
//! server's, see [`crate::federation::certificates`]): 404 `UNKNOWN_USER` if the home server
//! does not know the user, 502 `UNKNOWN_PEER` if it cannot be reached or its answer does not
//! verify, 403 `FEDERATION_REFUSED` by policy, 429 `RATE_LIMITED` beyond the client
//! address's `remote_idcert` limit.
//!
//! The vocabulary (the signed string, reading another server's objects) is
//! [`phoenix_types::cacheable`]'s.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;

use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{ClientId, Fid};

use super::{JcsObject, decimal, jcs_response, parse_u64, percent_decode, respond, with_server};
use crate::http::problem;
use crate::ratelimit::{Limited, RateLimiter};
use crate::server::{Server, now};
use crate::store::AsStore;
use crate::store::sessions::SessionStore;

/// Most certificates one `idcert/actor` answer carries (the newest are kept), so that one
/// answer stays bounded however often a user renewed.
pub const MAX_ACTOR_CERTIFICATES: usize = 1024;

pub fn routes(server: Arc<Server>, limiter: Arc<RateLimiter>) -> BoxedFilter<(Response,)> {
    // The client's address as the rate limiter sees it, for the per-address limit on
    // lookups of other domains' users (each may make this server ask a peer).
    let client = crate::edge::remote()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<SocketAddr>, headers: HeaderMap| {
            (limiter.clone(), limiter.client_ip(peer, &headers))
        });
    let server_cert = warp::path!(".p2" / "core" / "v1" / "idcert" / "server")
        .and(warp::get())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(with_server(server.clone()))
        .and(crate::observe::source())
        .then(
            |query: BTreeMap<String, String>, server: Arc<Server>, source| async move {
                let handled = server_certificate(&server, &query, now());
                respond(
                    observe_request!(server, "polyproto", "idcert/server", source, handled).await,
                )
            },
        );
    let actor_certs = warp::path!(".p2" / "core" / "v1" / "idcert" / "actor" / String)
        .and(warp::get())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(client)
        .and(with_server(server))
        .then(
            |fid: String,
             query: BTreeMap<String, String>,
             (limiter, client): (Arc<RateLimiter>, Option<IpAddr>),
             server: Arc<Server>| async move {
                let lookup = Lookup {
                    limiter: &limiter,
                    client,
                };
                let handled = actor_certificates(&server, &fid, &query, Some(lookup), now());
                match observe_request!(server, "polyproto", "idcert/actor", client, handled).await {
                    Ok(response) => response,
                    Err(Refusal::Limited(limited)) => {
                        crate::ratelimit::with_retry_after(problem(&limited.error()), &limited)
                    }
                    Err(Refusal::Error(e)) => problem(&e),
                }
            },
        );
    server_cert.or(actor_certs).unify().boxed()
}

/// `idcert/server`: the CA certificate that was current at `timestamp` (default: now).
pub async fn server_certificate(
    server: &Server,
    query: &BTreeMap<String, String>,
    now: u64,
) -> Result<Response, WireError> {
    let at = optional_u64(query, "timestamp")?.unwrap_or(now);
    // Requirement: AS-CA-ROT-1
    let signer = server.current_ca().await?;
    let history = server.store.ca_history().await.map_err(server.internal())?;
    // The history is oldest first and each CA became current when it was added, so the
    // last one valid at `at` is the one that was current then. (A new CA is back-dated by
    // 60 s, so within a minute before a rotation either answer is a CA valid at `at`.)
    let ca = history
        .iter()
        .rev()
        .find(|ca| ca.not_before <= at && at <= ca.not_after)
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!("this server had no CA certificate valid at {at}"),
            )
        })?;
    let parsed = ParsedCert::parse(&ca.certificate).map_err(|e| {
        tracing::error!(error = %e, "a stored CA certificate does not parse");
        WireError::new(ErrorCode::Internal, "a stored CA certificate is corrupt")
    })?;
    Ok(jcs_response(&cacheable(
        server, &signer, &parsed, None, now,
    )?))
}

/// Who asks for another domain's user, for the rate limit of such lookups.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub limiter: &'a RateLimiter,
    pub client: Option<IpAddr>,
}

/// Why `idcert/actor` answered with a problem.
#[derive(Debug)]
pub enum Refusal {
    Limited(Limited),
    Error(WireError),
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Self::Error(e)
    }
}

/// `idcert/actor/{fid}`: every certificate issued to the user's clients whose validity
/// overlaps `[notBefore, notAfter]`, optionally only those of one session (client) id. For
/// a local user, from the store, each with a window starting now. For another domain's
/// user, the home server's own cacheable ID-Certs as this server caches them for its
/// clients ([`crate::federation::certificates::actor_certificates`]), within the home
/// server's windows; such a lookup counts against the client address's `remote_idcert`
/// rate limit (`lookup`; `None` skips it, for callers inside the server).
pub async fn actor_certificates(
    server: &Server,
    fid: &str,
    query: &BTreeMap<String, String>,
    lookup: Option<Lookup<'_>>,
    now: u64,
) -> Result<Response, Refusal> {
    let fid = percent_decode(fid)
        .and_then(|fid| Fid::parse(&fid).ok())
        .ok_or_else(|| WireError::new(ErrorCode::InvalidFid, "not a valid federation id"))?;
    // Requirement: ADV-OP-1
    observe!([Observed::Fid(fid.to_string())]);
    let not_before = optional_u64(query, "notBefore")?;
    let not_after = optional_u64(query, "notAfter")?;
    let session_id = match query.get("sessionId") {
        Some(id) => Some(ClientId::parse(id).map_err(|_| {
            WireError::new(ErrorCode::Malformed, "sessionId is not a valid session id")
        })?),
        None => None,
    };
    if fid.domain() != &server.domain {
        if let Some(lookup) = lookup {
            lookup
                .limiter
                .check_remote_idcert(lookup.client)
                .map_err(Refusal::Limited)?;
        }
        let (cached, _) =
            crate::federation::certificates::actor_certificates(server, &fid, now).await?;
        let mut answer = Vec::new();
        for object in cached {
            // Parsed when it was cached; the filters look at the certificate itself.
            let Ok((cert, ..)) = object.parse() else {
                continue;
            };
            let client_id = cert.actor.as_ref().map(|a| a.client_id.as_str());
            if not_before.is_some_and(|t| cert.not_after < t)
                || not_after.is_some_and(|t| cert.not_before > t)
                || session_id
                    .as_ref()
                    .is_some_and(|id| Some(id.as_str()) != client_id)
            {
                continue;
            }
            observe!(
                client_id
                    .map(|id| Observed::AsClientId(id.to_owned()))
                    .into_iter()
                    .chain([Observed::certificate(&cert.der)])
            );
            answer.push(object);
        }
        return Ok(jcs_response(&answer));
    }
    let fid_str = fid.to_string();
    let issued = server
        .store
        .user_certificates(&fid_str)
        .await
        .map_err(server.internal())?;
    if issued.is_empty() {
        return Err(WireError::new(
            ErrorCode::UnknownUser,
            format!("{fid} is not registered here"),
        )
        .into());
    }
    let invalidated: BTreeMap<String, u64> = server
        .store
        .invalidations(&fid_str)
        .await
        .map_err(server.internal())?
        .into_iter()
        .collect();
    // Requirement: AS-CA-ROT-1
    let signer = server.current_ca().await?;
    let mut answer = Vec::new();
    for (client_id, der, cert_not_before, cert_not_after) in &issued {
        if not_before.is_some_and(|t| *cert_not_after < t)
            || not_after.is_some_and(|t| *cert_not_before > t)
            || session_id
                .as_ref()
                .is_some_and(|id| id.as_str() != client_id)
        {
            continue;
        }
        let parsed = ParsedCert::parse(der).map_err(|e| {
            tracing::error!(error = %e, "a stored client certificate does not parse");
            WireError::new(ErrorCode::Internal, "a stored certificate is corrupt")
        })?;
        let invalidated_at = invalidated.get(&decimal(&parsed.serial)).copied();
        observe!([
            Observed::AsClientId(client_id.clone()),
            Observed::certificate(der),
            Observed::CertificateSerial(decimal(&parsed.serial)),
        ]);
        answer.push(cacheable(server, &signer, &parsed, invalidated_at, now)?);
    }
    let skip = answer.len().saturating_sub(MAX_ACTOR_CERTIFICATES);
    let answer: Vec<JcsObject> = answer.into_iter().skip(skip).collect();
    Ok(jcs_response(&answer))
}

/// The cacheable form of `cert`, its window starting at `now`, signed with `ca`'s key (the
/// current CA, read with [`Server::current_ca`] by the request).
pub fn cacheable(
    server: &Server,
    ca: &crate::server::CaKeys,
    cert: &ParsedCert,
    invalidated_at: Option<u64>,
    now: u64,
) -> Result<JcsObject, WireError> {
    let ttl = server.federation.polyproto.idcert_cache_ttl;
    let not_valid_before = now;
    let not_valid_after = now.saturating_add(ttl).min(cert.not_after).max(now);
    let serial = decimal(&cert.serial);
    let signed = cache_signature_input(&serial, not_valid_before, not_valid_after, invalidated_at);
    let signature = ed25519_dalek::Signer::sign(&ca.signing_key, signed.as_bytes());
    let pem = certs::to_pem(&cert.der).map_err(|e| {
        tracing::error!(error = %e, "cannot PEM-encode a certificate");
        WireError::new(ErrorCode::Internal, "cannot encode a certificate")
    })?;
    let mut object = JcsObject::from([
        ("idCertPem", pem),
        ("cacheNotValidBefore", not_valid_before.to_string()),
        ("cacheNotValidAfter", not_valid_after.to_string()),
        ("cacheSignature", hex::encode(signature.to_bytes())),
    ]);
    if let Some(at) = invalidated_at {
        object.insert("invalidatedAt", at.to_string());
    }
    Ok(object)
}

pub use phoenix_types::cacheable::cache_signature_input;

fn optional_u64(query: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, WireError> {
    match query.get(name) {
        None => Ok(None),
        Some(value) => parse_u64(value).map(Some).ok_or_else(|| {
            WireError::new(
                ErrorCode::Malformed,
                format!("{name} must be a unix time in seconds"),
            )
        }),
    }
}

pub use phoenix_types::cacheable::{CacheableIdCertIn, VerifiedCacheable};
