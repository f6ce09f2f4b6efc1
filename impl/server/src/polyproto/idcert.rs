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
//! This module also reads cacheable ID-Certs from other servers ([`CacheableIdCertIn`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{ClientId, Fid};

use super::{JcsObject, decimal, jcs_response, parse_u64, percent_decode, respond, with_server};
use crate::server::{Server, now};
use crate::store::AsStore;
use crate::store::sessions::SessionStore;

/// Most certificates one `idcert/actor` answer carries (the newest are kept), so that one
/// answer stays bounded however often a user renewed.
pub const MAX_ACTOR_CERTIFICATES: usize = 1024;

pub fn routes(server: Arc<Server>) -> BoxedFilter<(Response,)> {
    let server_cert = warp::path!(".p2" / "core" / "v1" / "idcert" / "server")
        .and(warp::get())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(with_server(server.clone()))
        .then(
            |query: BTreeMap<String, String>, server: Arc<Server>| async move {
                respond(server_certificate(&server, &query, now()).await)
            },
        );
    let actor_certs = warp::path!(".p2" / "core" / "v1" / "idcert" / "actor" / String)
        .and(warp::get())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(with_server(server))
        .then(
            |fid: String, query: BTreeMap<String, String>, server: Arc<Server>| async move {
                respond(actor_certificates(&server, &fid, &query, now()).await)
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
    Ok(jcs_response(&cacheable(server, &parsed, None, now)?))
}

/// `idcert/actor/{fid}`: every certificate issued to a local user's clients whose validity
/// overlaps `[notBefore, notAfter]`, optionally only those of one session (client) id.
pub async fn actor_certificates(
    server: &Server,
    fid: &str,
    query: &BTreeMap<String, String>,
    now: u64,
) -> Result<Response, WireError> {
    let fid = percent_decode(fid)
        .and_then(|fid| Fid::parse(&fid).ok())
        .ok_or_else(|| WireError::new(ErrorCode::InvalidFid, "not a valid federation id"))?;
    let not_before = optional_u64(query, "notBefore")?;
    let not_after = optional_u64(query, "notAfter")?;
    let session_id = match query.get("sessionId") {
        Some(id) => Some(ClientId::parse(id).map_err(|_| {
            WireError::new(ErrorCode::Malformed, "sessionId is not a valid session id")
        })?),
        None => None,
    };
    if fid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!(
                "{fid} is not a user of this server ({}); ask its home server",
                server.domain
            ),
        ));
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
        ));
    }
    let invalidated: BTreeMap<String, u64> = server
        .store
        .invalidations(&fid_str)
        .await
        .map_err(server.internal())?
        .into_iter()
        .collect();
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
        answer.push(cacheable(server, &parsed, invalidated_at, now)?);
    }
    let skip = answer.len().saturating_sub(MAX_ACTOR_CERTIFICATES);
    let answer: Vec<JcsObject> = answer.into_iter().skip(skip).collect();
    Ok(jcs_response(&answer))
}

/// The cacheable form of `cert`, its window starting at `now`, signed with the current CA
/// key.
pub fn cacheable(
    server: &Server,
    cert: &ParsedCert,
    invalidated_at: Option<u64>,
    now: u64,
) -> Result<JcsObject, WireError> {
    let ttl = server.federation.polyproto.idcert_cache_ttl;
    let not_valid_before = now;
    let not_valid_after = now.saturating_add(ttl).min(cert.not_after).max(now);
    let serial = decimal(&cert.serial);
    let signed = cache_signature_input(&serial, not_valid_before, not_valid_after, invalidated_at);
    let signature = ed25519_dalek::Signer::sign(&server.ca().signing_key, signed.as_bytes());
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

/// The string a `cacheSignature` signs: `"<serial> <notValidBefore> <notValidAfter>"` and
/// `" <invalidatedAt>"` if invalidated (polyproto 0.21; older versions concatenated without
/// separators).
pub fn cache_signature_input(
    serial_decimal: &str,
    not_valid_before: u64,
    not_valid_after: u64,
    invalidated_at: Option<u64>,
) -> String {
    let mut input = format!("{serial_decimal} {not_valid_before} {not_valid_after}");
    if let Some(at) = invalidated_at {
        input.push_str(&format!(" {at}"));
    }
    input
}

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

/// A cacheable ID-Cert as another server sends it (not yet verified).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheableIdCertIn {
    pub id_cert_pem: String,
    pub cache_not_valid_before: String,
    pub cache_not_valid_after: String,
    pub cache_signature: String,
    #[serde(default)]
    pub invalidated_at: Option<String>,
}

/// A cacheable ID-Cert whose certificate parsed and whose `cacheSignature` verified with the
/// issuing home server's current CA key. The certificate's own chain is not checked here.
#[derive(Debug, Clone)]
pub struct VerifiedCacheable {
    pub cert: ParsedCert,
    pub not_valid_before: u64,
    pub not_valid_after: u64,
    pub invalidated_at: Option<u64>,
}

impl CacheableIdCertIn {
    /// Parse the certificate and the numbers (any failure is the sender's fault:
    /// `UNKNOWN_PEER` is not right for a bad client request, so callers map the error).
    pub fn parse(&self) -> Result<(ParsedCert, u64, u64, Option<u64>), String> {
        let der = certs::from_pem(&self.id_cert_pem).map_err(|e| format!("idCertPem: {e}"))?;
        let cert = ParsedCert::parse(&der).map_err(|e| format!("idCertPem: {e}"))?;
        let before = parse_u64(&self.cache_not_valid_before)
            .ok_or("cacheNotValidBefore is not a u64 string")?;
        let after = parse_u64(&self.cache_not_valid_after)
            .ok_or("cacheNotValidAfter is not a u64 string")?;
        let invalidated = match &self.invalidated_at {
            Some(at) => Some(parse_u64(at).ok_or("invalidatedAt is not a u64 string")?),
            None => None,
        };
        Ok((cert, before, after, invalidated))
    }

    /// Parse and check the `cacheSignature` with `home_key` (the home server's current CA
    /// key). Strict Ed25519.
    pub fn verify(&self, home_key: &[u8; 32]) -> Result<VerifiedCacheable, String> {
        let (cert, before, after, invalidated) = self.parse()?;
        let signature = hex::decode(&self.cache_signature)
            .ok()
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
            .ok_or("cacheSignature is not a hex Ed25519 signature")?;
        let key = crypto::verifying_key(home_key).map_err(|_| "bad home server key")?;
        let input = cache_signature_input(&decimal(&cert.serial), before, after, invalidated);
        key.verify_strict(input.as_bytes(), &signature)
            .map_err(|_| "cacheSignature does not verify with the home server's CA key")?;
        Ok(VerifiedCacheable {
            cert,
            not_valid_before: before,
            not_valid_after: after,
            invalidated_at: invalidated,
        })
    }
}
