//! This server's cache of other homeservers' CA certificates, served to its own clients
//! (`as/domain_certificates`), so that clients need not ask the issuing server themselves
//! (which would also tell it who talks to whom).
//!
//! A domain's CA history is fetched from its `as/server_certificate`; its current CA
//! certificate must also come back from its polyproto `/.p2/core/v1/idcert/server` with a
//! `cacheSignature` that verifies with that certificate's key. The entry is kept until the
//! cache window the issuing server gave ends (`cacheNotValidAfter`), then evicted and
//! fetched again on the next request. Never served past that window.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tls_codec::VLBytes;

use phoenix_types::certs::ParsedCert;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Domain;
use phoenix_types::messages::as_::ServerCertificateResponse;
use phoenix_types::messages::{Auth, Empty, RequestEnvelope};
use phoenix_types::{PROTOCOL_VERSION, codec};

use crate::polyproto::idcert::CacheableIdCertIn;
use crate::server::{Server, now};
use crate::store::AsStore;

/// Most domains cached at once.
const MAX_DOMAINS: usize = 1024;
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
        return Ok(ServerCertificateResponse {
            ca_certificate: VLBytes::new(server.ca().certificate.der.clone()),
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
        not_valid_after: verified.not_valid_after,
    })
}
