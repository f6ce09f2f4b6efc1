//! This server's caches of other homeservers' certificates, served to its own clients so
//! that clients need not ask the issuing server themselves (which would also tell it who
//! talks to whom):
//!
//! - **CA certificates** ([`domain_certificates`], the AS operation
//!   `as/domain_certificates`), in memory: a domain's CA history is fetched from its
//!   `as/server_certificate`; its current CA certificate must also come back from its
//!   polyproto `/.p2/core/v1/idcert/server` with a `cacheSignature` that verifies with that
//!   certificate's key. The entry is kept until the cache window the issuing server gave
//!   ends (`cacheNotValidAfter`), then evicted and fetched again on the next request.
//! - **Client certificates of other domains' users** ([`actor_certificates`], the route
//!   `GET /.p2/core/v1/idcert/actor/{fid}` for a foreign FID), in the database
//!   (`p2_idcert_cache`, shared by every server process): fetched from the user's home
//!   server ([`crate::polyproto::home::actor_certificates`]); each one's `cacheSignature`
//!   must verify with the home server's current CA key and its chain with one of that
//!   domain's CA certificates (both from the CA cache above); stored as the home server
//!   signed them, with its cache window, and served from the cache until the earliest
//!   `cacheNotValidAfter` among them; then evicted (at read, and by [`purge`]) and fetched
//!   again.
//!
//! Neither cache ever serves an entry past its window. Bounds: [`MAX_DOMAINS`] domains,
//! [`MAX_CACHED_ACTORS`] actors, [`MAX_CACHED_CERTIFICATES`] certificates per actor (each
//! answer read is at most 2 MiB, see [`crate::polyproto::home`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tls_codec::VLBytes;

use phoenix_types::cacheable::CacheableIdCertIn;
use phoenix_types::certs::ParsedCert;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{Domain, Fid};
use phoenix_types::messages::as_::ServerCertificateResponse;
use phoenix_types::messages::{Auth, Empty, RequestEnvelope};
use phoenix_types::{PROTOCOL_VERSION, codec};

use crate::server::{Server, now};
use crate::store::{AsStore, CachedIdCerts, EphemeralStore};

/// Most domains cached at once.
pub const MAX_DOMAINS: usize = 1024;
/// Most foreign actors whose certificates are cached at once.
pub const MAX_CACHED_ACTORS: u64 = 10_000;
/// Most certificates kept per cached actor (the newest).
pub const MAX_CACHED_CERTIFICATES: usize = 256;
/// Tolerated clock difference with a peer's cache window (seconds).
const CLOCK_SKEW: u64 = 60;
/// Largest answer read from a peer (bytes).
const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Debug, Clone)]
struct Entry {
    /// The DER of every CA certificate of the domain, oldest first, each a valid
    /// self-signed CA certificate of that domain.
    history: Vec<Vec<u8>>,
    current: Vec<u8>,
    not_valid_after: u64,
}

/// The cache.
#[derive(Debug, Default)]
pub struct CaCache {
    entries: Mutex<BTreeMap<Domain, Entry>>,
}

impl CaCache {
    fn get(&self, domain: &Domain, now: u64) -> Option<Entry> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(domain) {
            Some(entry) if now < entry.not_valid_after => Some(entry.clone()),
            Some(_) => {
                entries.remove(domain);
                None
            }
            None => None,
        }
    }

    /// Forget `domain` (its CA may have rotated before the window ended).
    fn evict(&self, domain: &Domain) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(domain);
        }
    }

    fn put(&self, domain: Domain, entry: Entry, now: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| now < e.not_valid_after);
            if entries.len() >= MAX_DOMAINS
                && let Some(first) = entries.keys().next().cloned()
            {
                entries.remove(&first);
            }
            entries.insert(domain, entry);
        }
    }
}

/// The CA certificate history of `domain` for this server's clients.
pub async fn domain_certificates(
    server: &Server,
    domain: &Domain,
) -> Result<ServerCertificateResponse, WireError> {
    if domain == &server.domain {
        // Requirement: AS-CA-ROT-1
        let ca = server.current_ca().await?;
        return Ok(ServerCertificateResponse {
            ca_certificate: VLBytes::new(ca.certificate.der.clone()),
            history: server
                .store
                .ca_history()
                .await
                .map_err(server.internal())?
                .into_iter()
                .map(|ca| VLBytes::new(ca.certificate))
                .collect(),
        });
    }
    server.federation.policy.check(domain)?;
    let now = now();
    let entry = match server.ca_cache.get(domain, now) {
        Some(entry) => entry,
        None => {
            let entry = fetch(server, domain, now).await?;
            server.ca_cache.put(domain.clone(), entry.clone(), now);
            entry
        }
    };
    Ok(ServerCertificateResponse {
        ca_certificate: VLBytes::new(entry.current),
        history: entry.history.into_iter().map(VLBytes::new).collect(),
    })
}

async fn fetch(server: &Server, domain: &Domain, now: u64) -> Result<Entry, WireError> {
    let unknown = |detail: String| WireError::new(ErrorCode::UnknownPeer, detail);
    let base = server.peers.url(domain);
    // The history, through the Phoenix AS operation.
    let body = codec::encode(&RequestEnvelope {
        version: PROTOCOL_VERSION,
        payload: VLBytes::new(codec::encode(&Empty {})?),
        auth: Auth::None,
    })?;
    let response = server
        .peers
        .http()
        .post(format!("{base}/phoenix/v1/as/server_certificate"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| unknown(format!("cannot reach {domain}: {e}")))?;
    if !response.status().is_success() {
        return Err(unknown(format!(
            "{domain} answered HTTP {}",
            response.status()
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unknown(format!("{domain}: {e}")))?;
    let answer: ServerCertificateResponse = codec::decode(&bytes, MAX_ANSWER)
        .map_err(|e| unknown(format!("{domain}: {}", e.detail)))?;
    let current = ParsedCert::parse(answer.ca_certificate.as_slice())
        .map_err(|e| unknown(format!("{domain}'s CA certificate: {e}")))?;
    current
        .verify_self_signed_ca(domain)
        .map_err(|e| unknown(format!("{domain}'s CA certificate: {e}")))?;
    let mut history = Vec::new();
    for der in &answer.history {
        if let Ok(ca) = ParsedCert::parse(der.as_slice())
            && ca.verify_self_signed_ca(domain).is_ok()
        {
            history.push(ca.der);
        }
    }
    if !history.contains(&current.der) {
        history.push(current.der.clone());
    }
    // The issuing server vouches for its current CA certificate with a cache window and a
    // cache signature (polyproto's CacheableIDCert).
    let response = server
        .peers
        .http()
        .get(format!("{base}/.p2/core/v1/idcert/server"))
        .send()
        .await
        .map_err(|e| unknown(format!("cannot reach {domain}: {e}")))?;
    if !response.status().is_success() {
        return Err(unknown(format!(
            "{domain}'s idcert/server answered HTTP {}",
            response.status()
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unknown(format!("{domain}: {e}")))?;
    if bytes.len() > MAX_ANSWER {
        return Err(unknown(format!(
            "{domain}'s idcert/server answer is too large"
        )));
    }
    let cacheable: CacheableIdCertIn = serde_json::from_slice(&bytes)
        .map_err(|e| unknown(format!("{domain}'s idcert/server: {e}")))?;
    let verified = cacheable
        .verify(&current.public_key)
        .map_err(|e| unknown(format!("{domain}'s idcert/server: {e}")))?;
    if verified.cert.der != current.der {
        return Err(unknown(format!(
            "{domain} serves two different current CA certificates"
        )));
    }
    if verified.invalidated_at.is_some() || verified.not_valid_after <= now {
        return Err(unknown(format!(
            "{domain}'s cache window for its CA certificate is over"
        )));
    }
    Ok(Entry {
        history,
        current: current.der,
        // Never longer than polyproto's longest window, whatever the peer signed.
        not_valid_after: verified
            .not_valid_after
            .min(now.saturating_add(crate::polyproto::MAX_CACHE_TTL)),
    })
}

/// Where [`actor_certificates`] found its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cache, within the window the home server signed.
    Cache,
    /// The home server, just now (and then cached).
    HomeServer,
}

// Requirement: ID-CACHE-1, ID-CACHE-2
/// The certificates of `fid`, a user of another domain, for this server's clients: from
/// the cache while its window lasts, otherwise fetched from the home server, verified and
/// cached. Each returned object is exactly as the home server signed it and its window has
/// not ended at `now` (certificates the home server gave an empty window, such as expired
/// ones, are left out: they may not be cached, and a client that needs one asks the home
/// server). Errors: `FEDERATION_REFUSED` by policy, `UNKNOWN_USER` if the home server does
/// not know the user, `UNKNOWN_PEER` if it cannot be reached or its answer does not
/// verify.
pub async fn actor_certificates(
    server: &Server,
    fid: &Fid,
    now: u64,
) -> Result<(Vec<CacheableIdCertIn>, Source), WireError> {
    use std::sync::atomic::Ordering;
    let domain = fid.domain();
    server.federation.policy.check(domain)?;
    let key = fid.to_string();
    if let Some(entry) = server
        .store
        .cached_idcerts(&key, now)
        .await
        .map_err(server.internal())?
    {
        match serde_json::from_str::<Vec<CacheableIdCertIn>>(&entry.answer) {
            Ok(answer) => {
                server
                    .metrics
                    .idcert_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return Ok((answer, Source::Cache));
            }
            // Only this server writes the column; refetch rather than fail.
            Err(e) => tracing::error!(error = %e, "a cached idcert answer does not parse"),
        }
    }
    server
        .metrics
        .idcert_cache_misses
        .fetch_add(1, Ordering::Relaxed);
    let answer = crate::polyproto::home::actor_certificates(server, fid).await?;
    let kept = match verify_actor_answer(server, fid, &answer, now, false).await {
        Ok(kept) => kept,
        // The home server may have rotated its CA within the CA cache's window: once more
        // with its CA certificates fetched afresh.
        Err(_) => {
            server.ca_cache.evict(domain);
            verify_actor_answer(server, fid, &answer, now, true).await?
        }
    };
    if let Some(not_valid_after) = kept.iter().map(|(_, until)| *until).min() {
        let answer: Vec<&CacheableIdCertIn> = kept.iter().map(|(object, _)| object).collect();
        let entry = CachedIdCerts {
            fid: key,
            answer: serde_json::to_string(&answer).map_err(|e| {
                tracing::error!(error = %e, "cannot serialise an idcert answer");
                WireError::new(ErrorCode::Internal, "cannot cache the answer")
            })?,
            not_valid_after,
            fetched_at: now,
        };
        server
            .store
            .put_cached_idcerts(&entry, now, MAX_CACHED_ACTORS)
            .await
            .map_err(server.internal())?;
    }
    Ok((
        kept.into_iter().map(|(object, _)| object).collect(),
        Source::HomeServer,
    ))
}

/// Check every object of a home server's `idcert/actor` answer: its `cacheSignature` with
/// the domain's current CA key, that it is `fid`'s, that it chains to one of the domain's
/// CA certificates, and that its window is plausible. Returns the objects whose window
/// has not ended, with their `cacheNotValidAfter`, newest [`MAX_CACHED_CERTIFICATES`].
async fn verify_actor_answer(
    server: &Server,
    fid: &Fid,
    answer: &[CacheableIdCertIn],
    now: u64,
    fresh: bool,
) -> Result<Vec<(CacheableIdCertIn, u64)>, WireError> {
    let domain = fid.domain();
    let unknown = |detail: String| WireError::new(ErrorCode::UnknownPeer, detail);
    let cas = domain_certificates(server, domain).await?;
    let current = ParsedCert::parse(cas.ca_certificate.as_slice())
        .map_err(|e| unknown(format!("{domain}'s CA certificate: {e}")))?;
    let history: Vec<ParsedCert> = cas
        .history
        .iter()
        .filter_map(|der| ParsedCert::parse(der.as_slice()).ok())
        .collect();
    let mut kept = Vec::new();
    for object in answer {
        let verified = object.verify(&current.public_key).map_err(|e| {
            unknown(format!(
                "{domain}'s answer about {fid}{}: {e}",
                if fresh { "" } else { " (cached CA)" }
            ))
        })?;
        if verified.cert.actor.as_ref().map(|a| &a.fid) != Some(fid) {
            return Err(unknown(format!(
                "{domain} answered for {fid} with another actor's certificate"
            )));
        }
        if !history
            .iter()
            .any(|ca| verified.cert.verify_issued_by(ca, None).is_ok())
        {
            return Err(unknown(format!(
                "{domain} vouches for a certificate of {fid} that none of its CA certificates issued"
            )));
        }
        if verified.not_valid_before > now.saturating_add(CLOCK_SKEW) {
            return Err(unknown(format!(
                "{domain}'s cache window for {fid} starts in the future"
            )));
        }
        if verified.not_valid_after > now {
            // A window longer than polyproto allows is cached for the longest it allows.
            let until = verified
                .not_valid_after
                .min(now.saturating_add(crate::polyproto::MAX_CACHE_TTL));
            kept.push((object.clone(), until));
        }
    }
    let skip = kept.len().saturating_sub(MAX_CACHED_CERTIFICATES);
    Ok(kept.into_iter().skip(skip).collect())
}

/// Delete cache entries whose window has ended (the periodic purge; reads evict too).
pub async fn purge(server: &Server, now: u64) {
    use std::sync::atomic::Ordering;
    match server.store.purge_idcert_cache(now).await {
        Ok(purged) => {
            server
                .metrics
                .idcert_cache_purged
                .fetch_add(purged, Ordering::Relaxed);
        }
        Err(e) => tracing::error!(error = %e, "cannot purge the idcert cache"),
    }
}
