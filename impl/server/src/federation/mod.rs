//! Federation between homeservers: discovery of peers (with `--resolve` overrides), the
//! operator's federation policy, a bounded cache of peers' discovery documents (their QS
//! verifying key and CA certificate), and QS-to-QS forwarding: [`send`] delivers outbox
//! entries to remote QSs, [`receive`] accepts them from remote QSs.
//!
//! What this module is not: the fan-out itself (the DS writes outbox entries; the outbox
//! worker calls [`send`]), or client-to-remote-server traffic (clients talk to remote
//! servers directly).

pub mod certificates;
pub mod receive;
pub mod send;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use phoenix_types::discovery::{Discovery, Resolver, WELL_KNOWN_PATH};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Domain;

use crate::server::now;

/// Which peers this server federates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Every peer except the blocked ones.
    Open { blocked: BTreeSet<Domain> },
    /// Only the listed peers.
    Allowlist { allowed: BTreeSet<Domain> },
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Open {
            blocked: BTreeSet::new(),
        }
    }
}

impl Policy {
    pub fn allows(&self, domain: &Domain) -> bool {
        match self {
            Policy::Open { blocked } => !blocked.contains(domain),
            Policy::Allowlist { allowed } => allowed.contains(domain),
        }
    }

    /// Refuse `domain` with `FEDERATION_REFUSED` unless the policy allows it.
    pub fn check(&self, domain: &Domain) -> Result<(), WireError> {
        if self.allows(domain) {
            Ok(())
        } else {
            Err(WireError::new(
                ErrorCode::FederationRefused,
                format!("this server does not federate with {domain}"),
            ))
        }
    }
}

/// Federation settings of a server.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    pub resolver: Resolver,
    pub policy: Policy,
    /// Cap of the outbox's exponential backoff (seconds).
    pub max_backoff: u64,
    /// How long a peer's discovery document is cached (seconds).
    pub peer_cache_ttl: u64,
    /// The polyproto routes' settings (public URL, certificate cache window).
    pub polyproto: crate::polyproto::Settings,
    /// More CA certificates (PEM file) trusted for peers' HTTPS, besides the web roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            resolver: Resolver::default(),
            policy: Policy::default(),
            max_backoff: 60,
            peer_cache_ttl: 3600,
            polyproto: crate::polyproto::Settings::default(),
            tls_ca_file: None,
        }
    }
}

/// Most peers whose discovery documents are cached at once.
const MAX_CACHED_PEERS: usize = 1024;
/// A cached peer is refetched on demand only if it is older than this (seconds).
const MIN_REFRESH_AGE: u64 = 60;
/// Timeout of requests to peers.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What we know about a peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub qs_verifying_key: [u8; 32],
    pub ca_certificate: Vec<u8>,
    fetched_at: u64,
}

/// Peers' discovery documents, fetched on demand and cached for a bounded time.
#[derive(Debug)]
pub struct Peers {
    http: reqwest::Client,
    resolver: Resolver,
    ttl: u64,
    cache: Mutex<BTreeMap<Domain, Peer>>,
}

impl Peers {
    pub fn new(settings: &FederationSettings) -> Result<Self, String> {
        // Requirement: OPS-TLS-3
        // Peers are reached at https://DOMAIN, or at the URL of a `--resolve` entry (plain
        // `http://` only there, for tests and private networks); redirects are not
        // followed, so an answer cannot send this server to a plain-HTTP URL it was not
        // configured with.
        let mut builder = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        for root in crate::tls::extra_roots(settings.tls_ca_file.as_deref())? {
            builder = builder.add_root_certificate(root);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            resolver: settings.resolver.clone(),
            ttl: settings.peer_cache_ttl,
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, domain: &Domain) -> String {
        self.resolver.url(domain)
    }

    /// The peer's discovery document, from the cache unless `refresh` or expired.
    pub async fn peer(&self, domain: &Domain, refresh: bool) -> Result<Peer, WireError> {
        let now = now();
        if let Ok(cache) = self.cache.lock()
            && let Some(peer) = cache.get(domain)
        {
            let age = now.saturating_sub(peer.fetched_at);
            // A refresh is honoured at most once a minute per peer, so that forged messages
            // cannot make us fetch a peer's discovery document once each.
            if age < self.ttl && (!refresh || age < MIN_REFRESH_AGE) {
                return Ok(peer.clone());
            }
        }
        let peer = self.fetch(domain, now).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED_PEERS {
                // Evict the stalest entry; the cache is small, a scan is fine.
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, p)| p.fetched_at)
                    .map(|(d, _)| d.clone())
                {
                    cache.remove(&oldest);
                }
            }
            cache.insert(domain.clone(), peer.clone());
        }
        Ok(peer)
    }

    async fn fetch(&self, domain: &Domain, now: u64) -> Result<Peer, WireError> {
        let unknown = |detail: String| WireError::new(ErrorCode::UnknownPeer, detail);
        let url = format!("{}{WELL_KNOWN_PATH}", self.resolver.url(domain));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unknown(format!("cannot reach {domain}: {e}")))?;
        if !response.status().is_success() {
            return Err(unknown(format!(
                "{domain} answered discovery with HTTP {}",
                response.status()
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unknown(format!("cannot read {domain}'s discovery document: {e}")))?;
        if bytes.len() > 64 * 1024 {
            return Err(unknown(format!(
                "{domain}'s discovery document is too large"
            )));
        }
        let discovery: Discovery = serde_json::from_slice(&bytes)
            .map_err(|e| unknown(format!("{domain}'s discovery document is malformed: {e}")))?;
        if discovery.domain != domain.as_str() {
            return Err(unknown(format!(
                "{url} describes {}, not {domain}",
                discovery.domain
            )));
        }
        let key = hex::decode(&discovery.qs_verifying_key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| unknown(format!("{domain}'s QS verifying key is malformed")))?;
        let ca_certificate = crate::http::pem_decode(&discovery.ca_certificate)
            .ok_or_else(|| unknown(format!("{domain}'s CA certificate is not PEM")))?;
        Ok(Peer {
            qs_verifying_key: key,
            ca_certificate,
            fetched_at: now,
        })
    }
}
