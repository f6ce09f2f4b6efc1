//! An actor's certificate as its home server vouches for it: for local users straight from
//! the store, for others from the home server's `GET /.p2/core/v1/idcert/actor/{fid}`,
//! with the `cacheSignature` verified with the home server's current CA key (from its
//! discovery document, or after a rotation from its `idcert/server`) and the certificate
//! chain verified up to one of the home server's CA certificates (the current one, or for
//! a certificate issued before a rotation, an earlier one from `idcert/server?timestamp=`,
//! vouched for by the current key).
//!
//! What this module is not: a cache of remote actors' certificates. Each lookup asks the
//! home server (polyproto requires a fresh answer before a foreign actor acts and after any
//! certificate change); the discovery documents it reads are cached by
//! [`crate::federation::Peers`]. The cache this server keeps for its own clients
//! ([`crate::federation::certificates::actor_certificates`]) fetches through
//! [`actor_certificates`] but is never used for sessions.

use phoenix_types::certs::ParsedCert;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{Domain, Fid};

use super::decimal;
use super::idcert::{CacheableIdCertIn, MAX_ACTOR_CERTIFICATES, VerifiedCacheable};
use crate::server::Server;
use crate::store::AsStore;
use crate::store::sessions::SessionStore;

/// Largest `idcert/actor` or `idcert/server` answer read from a peer (bytes).
const MAX_ANSWER: usize = 2 * 1024 * 1024;
/// Tolerated clock difference when checking a peer's cache window (seconds).
const CLOCK_SKEW: u64 = 60;
/// Most earlier CA certificates looked at to find a certificate's issuer.
const MAX_HISTORY_STEPS: usize = 16;

/// An actor certificate and what its home server said about it.
#[derive(Debug, Clone)]
pub struct ActorCertificate {
    /// Parsed, its chain to a CA certificate of the FID's domain verified.
    pub cert: ParsedCert,
    /// The serial, unsigned decimal.
    pub serial: String,
    /// When the home server (or this server's own record) says it was invalidated.
    pub invalidated_at: Option<u64>,
    /// Until when the home server's answer may be relied on.
    pub verified_until: u64,
}

/// The certificate of `fid` with serial `serial` (unsigned decimal), as its home server
/// vouches for it now. `UNKNOWN_USER` if the home server does not know the user,
/// `UNKNOWN_CLIENT` if it knows no such certificate, `UNKNOWN_PEER` if the home server
/// cannot be reached or its answer does not verify, `FEDERATION_REFUSED` by policy.
pub async fn actor_certificate(
    server: &Server,
    fid: &Fid,
    serial: &str,
    now: u64,
) -> Result<ActorCertificate, WireError> {
    let mut found = if fid.domain() == &server.domain {
        local(server, fid, serial, now).await?
    } else {
        remote(server, fid, serial, now).await?
    };
    // Our own record (a session deleted here, or an invalidation announced to us) counts
    // too: an actor's revocation must not be undone by a home server that missed it.
    if let Some(record) = server
        .store
        .certificate(&fid.to_string(), serial)
        .await
        .map_err(server.internal())?
        && let Some(at) = record.invalidated_at
    {
        found.invalidated_at = Some(found.invalidated_at.map_or(at, |home| home.min(at)));
    }
    Ok(found)
}

fn unknown_certificate(fid: &Fid, serial: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownClient,
        format!("{fid} has no certificate with serial {serial}"),
    )
}

async fn local(
    server: &Server,
    fid: &Fid,
    serial: &str,
    now: u64,
) -> Result<ActorCertificate, WireError> {
    let issued = server
        .store
        .user_certificates(&fid.to_string())
        .await
        .map_err(server.internal())?;
    if issued.is_empty() {
        return Err(WireError::new(
            ErrorCode::UnknownUser,
            format!("{fid} is not registered here"),
        ));
    }
    let corrupt = |e: phoenix_types::certs::CertError| {
        tracing::error!(error = %e, "a stored certificate does not parse or verify");
        WireError::new(ErrorCode::Internal, "a stored certificate is corrupt")
    };
    let mut cert = None;
    for (_, der, _, _) in &issued {
        let parsed = ParsedCert::parse(der).map_err(corrupt)?;
        if decimal(&parsed.serial) == serial {
            cert = Some(parsed);
            break;
        }
    }
    let cert = cert.ok_or_else(|| unknown_certificate(fid, serial))?;
    let history = server.store.ca_history().await.map_err(server.internal())?;
    let mut issued_by_us = false;
    for ca in history.iter().rev() {
        let ca = ParsedCert::parse(&ca.certificate).map_err(corrupt)?;
        if cert.verify_issued_by(&ca, None).is_ok() {
            issued_by_us = true;
            break;
        }
    }
    if !issued_by_us {
        tracing::error!(serial, "a stored certificate verifies with none of our CAs");
        return Err(WireError::new(
            ErrorCode::Internal,
            "a stored certificate does not verify",
        ));
    }
    Ok(ActorCertificate {
        cert,
        serial: serial.to_owned(),
        invalidated_at: None,
        verified_until: now.saturating_add(server.federation.polyproto.idcert_cache_ttl),
    })
}

async fn remote(
    server: &Server,
    fid: &Fid,
    serial: &str,
    now: u64,
) -> Result<ActorCertificate, WireError> {
    let domain = fid.domain();
    let answers = actor_certificates(server, fid).await?;
    let base = server.peers.url(domain);
    let base = base.trim_end_matches('/');
    let mut candidate = None;
    for answer in &answers {
        // A certificate this server cannot parse (say, another algorithm) is not the one
        // asked for, and must not block the user's other certificates.
        let Ok((cert, ..)) = answer.parse() else {
            continue;
        };
        if decimal(&cert.serial) == serial {
            candidate = Some(answer);
            break;
        }
    }
    let answer = candidate.ok_or_else(|| unknown_certificate(fid, serial))?;
    let (home_ca, verified) = verify_cacheable(server, domain, base, answer).await?;
    if verified.not_valid_before > now.saturating_add(CLOCK_SKEW)
        || verified.not_valid_after.saturating_add(CLOCK_SKEW) < now
    {
        return Err(peer_error(format!(
            "{domain}'s answer about {fid} is outside its own cache window"
        )));
    }
    let cert = verified.cert;
    if cert.actor.as_ref().map(|a| &a.fid) != Some(fid) {
        return Err(peer_error(format!(
            "{domain} answered for {fid} with another actor's certificate"
        )));
    }
    issuer(server, domain, base, &home_ca, &cert).await?;
    Ok(ActorCertificate {
        cert,
        serial: serial.to_owned(),
        invalidated_at: verified.invalidated_at,
        verified_until: verified.not_valid_after,
    })
}

/// Every certificate `fid`'s home server (another domain) vouches for, as it answered
/// `GET idcert/actor/{fid}`: parsed as cacheable ID-Certs, nothing verified yet.
/// `FEDERATION_REFUSED` by policy, `UNKNOWN_USER` if the home server does not know the
/// user, `UNKNOWN_PEER` if it cannot be reached or answers with anything else than an
/// array of at most [`MAX_ACTOR_CERTIFICATES`] cacheable ID-Certs in at most
/// [`MAX_ANSWER`] bytes.
pub async fn actor_certificates(
    server: &Server,
    fid: &Fid,
) -> Result<Vec<CacheableIdCertIn>, WireError> {
    let domain = fid.domain();
    server.federation.policy.check(domain)?;
    let base = server.peers.url(domain);
    let base = base.trim_end_matches('/');
    let url = format!("{base}/.p2/core/v1/idcert/actor/{fid}");
    let answers: Vec<CacheableIdCertIn> = match fetch(server, &url).await? {
        Fetched::Json(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| peer_error(format!("{domain}'s idcert/actor answer is malformed: {e}")))?,
        Fetched::NotFound => {
            return Err(WireError::new(
                ErrorCode::UnknownUser,
                format!("{domain} does not know {fid}"),
            ));
        }
    };
    if answers.len() > MAX_ACTOR_CERTIFICATES {
        return Err(peer_error(format!(
            "{domain} answered with more than {MAX_ACTOR_CERTIFICATES} certificates for {fid}"
        )));
    }
    Ok(answers)
}

/// Verify `answer`'s `cacheSignature` with `domain`'s current CA key. That key comes from
/// the peer's discovery document (cached by [`crate::federation::Peers`]); if it does not
/// verify, the CA may have rotated since, so the home server's current CA certificate is
/// fetched from its `idcert/server` (over the same connection the discovery document would
/// come over, so with the same trust). Returns the CA certificate whose key verified it.
async fn verify_cacheable(
    server: &Server,
    domain: &Domain,
    base: &str,
    answer: &CacheableIdCertIn,
) -> Result<(ParsedCert, VerifiedCacheable), WireError> {
    let peer = server.peers.peer(domain, false).await?;
    let cached = ParsedCert::parse(&peer.ca_certificate)
        .and_then(|ca| ca.verify_self_signed_ca(domain).map(|()| ca))
        .map_err(|e| peer_error(format!("{domain}'s CA certificate is invalid: {e}")))?;
    if let Ok(verified) = answer.verify(&cached.public_key) {
        return Ok((cached, verified));
    }
    let current = current_server_certificate(server, domain, base).await?;
    if current.der == cached.der {
        return Err(peer_error(format!(
            "{domain}: cacheSignature does not verify with the home server's CA key"
        )));
    }
    let verified = answer
        .verify(&current.public_key)
        .map_err(|e| peer_error(format!("{domain}: {e}")))?;
    // Let the next lookup find the new CA without this detour.
    let _ = server.peers.peer(domain, true).await;
    Ok((current, verified))
}

/// The CA certificate of `domain` that issued `cert`: the current one, or an earlier one
/// found by walking the home server's `idcert/server?timestamp=` history back from the
/// certificate's `notBefore`, each answer vouched for by the current CA key.
async fn issuer(
    server: &Server,
    domain: &Domain,
    base: &str,
    current: &ParsedCert,
    cert: &ParsedCert,
) -> Result<ParsedCert, WireError> {
    let unchained = |detail: String| {
        WireError::new(
            ErrorCode::InvalidCertificate,
            format!("the certificate does not chain to a CA certificate of {domain}: {detail}"),
        )
    };
    let mut last_error = match cert.verify_issued_by(current, None) {
        Ok(_) => return Ok(current.clone()),
        Err(e) => e.to_string(),
    };
    let mut at = cert.not_before;
    for _ in 0..MAX_HISTORY_STEPS {
        let Some(ca) = server_certificate_at(server, domain, base, current, at).await? else {
            break;
        };
        match cert.verify_issued_by(&ca, None) {
            Ok(_) => return Ok(ca),
            Err(e) => last_error = e.to_string(),
        }
        // The CA answered for `at` is valid at `at`; look before it.
        match ca.not_before.min(at).checked_sub(1) {
            Some(earlier) => at = earlier,
            None => break,
        }
    }
    Err(unchained(last_error))
}

/// The CA certificate `domain` had at `at` (`None` if it had none), vouched for by the
/// current CA key.
async fn server_certificate_at(
    server: &Server,
    domain: &Domain,
    base: &str,
    current: &ParsedCert,
    at: u64,
) -> Result<Option<ParsedCert>, WireError> {
    let url = format!("{base}/.p2/core/v1/idcert/server?timestamp={at}");
    let answer: CacheableIdCertIn = match fetch(server, &url).await? {
        Fetched::Json(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            peer_error(format!("{domain}'s idcert/server answer is malformed: {e}"))
        })?,
        Fetched::NotFound => return Ok(None),
    };
    let verified = answer
        .verify(&current.public_key)
        .map_err(|e| peer_error(format!("{domain}'s idcert/server answer: {e}")))?;
    verified
        .cert
        .verify_self_signed_ca(domain)
        .map_err(|e| peer_error(format!("{domain}'s earlier CA certificate is invalid: {e}")))?;
    Ok(Some(verified.cert))
}

/// `domain`'s current CA certificate from its `idcert/server`: self-signed for `domain`,
/// its `cacheSignature` by its own key.
async fn current_server_certificate(
    server: &Server,
    domain: &Domain,
    base: &str,
) -> Result<ParsedCert, WireError> {
    let url = format!("{base}/.p2/core/v1/idcert/server");
    let answer: CacheableIdCertIn = match fetch(server, &url).await? {
        Fetched::Json(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            peer_error(format!("{domain}'s idcert/server answer is malformed: {e}"))
        })?,
        Fetched::NotFound => {
            return Err(peer_error(format!("{domain} serves no CA certificate")));
        }
    };
    let (cert, ..) = answer
        .parse()
        .map_err(|e| peer_error(format!("{domain}'s idcert/server answer: {e}")))?;
    cert.verify_self_signed_ca(domain)
        .map_err(|e| peer_error(format!("{domain}'s CA certificate is invalid: {e}")))?;
    answer
        .verify(&cert.public_key)
        .map_err(|e| peer_error(format!("{domain}'s idcert/server answer: {e}")))?;
    Ok(cert)
}

enum Fetched {
    Json(Vec<u8>),
    NotFound,
}

/// GET `url` from a peer: the body of a 200 (at most [`MAX_ANSWER`] bytes), or
/// `NotFound` for a 404; anything else is `UNKNOWN_PEER`.
async fn fetch(server: &Server, url: &str) -> Result<Fetched, WireError> {
    let mut response = server
        .peers
        .http()
        .get(url)
        .send()
        .await
        .map_err(|e| peer_error(format!("cannot reach {url}: {e}")))?;
    match response.status() {
        reqwest::StatusCode::OK => {}
        reqwest::StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
        status => return Err(peer_error(format!("{url} answered HTTP {status}"))),
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| peer_error(format!("cannot read {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(peer_error(format!("{url} answered with too much data")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Json(body))
}

fn peer_error(detail: String) -> WireError {
    WireError::new(ErrorCode::UnknownPeer, detail)
}
