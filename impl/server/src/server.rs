//! The server context every operation runs in, and start-up: connect storage (which runs
//! migrations), create the CA certificate and the QS queue-config key on first start, and
//! load them on every later start.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use thiserror::Error;
use tokio::sync::Notify;

use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto::{self, HpkeKeyPair};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Domain;

use crate::federation::{FederationSettings, Peers};
use crate::store::{AsStore, CaRecord, QsStore, Store, StoreError};

/// Operator-tunable limits (see docs/operations.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (bytes).
    pub max_body: usize,
    /// Most messages one dequeue returns.
    pub max_dequeue: u32,
    /// Lifetime of issued client certificates (seconds).
    pub client_cert_lifetime: u64,
    /// How long a requested group id stays reserved (seconds).
    pub group_id_reservation: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: phoenix_types::codec::MAX_BODY,
            max_dequeue: 500,
            client_cert_lifetime: 30 * 24 * 3600,
            group_id_reservation: 24 * 3600,
        }
    }
}

/// Lifetime of a freshly created CA certificate: two years (polyproto: rotate every 1-3
/// years).
const CA_LIFETIME: u64 = 2 * 365 * 24 * 3600;

/// The home server's CA: signing key and parsed certificate.
pub struct CaKeys {
    pub signing_key: SigningKey,
    pub certificate: ParsedCert,
}

/// Everything an operation needs.
pub struct Server {
    pub domain: Domain,
    pub store: Store,
    pub ca: CaKeys,
    pub queue_config_key: HpkeKeyPair,
    /// Signs QS-to-QS messages; its public half is in the discovery document.
    pub qs_signing_key: SigningKey,
    pub limits: Limits,
    pub federation: FederationSettings,
    pub peers: Peers,
    pub metrics: Metrics,
    /// Woken when new outbox entries were written.
    pub outbox_wakeup: Notify,
}

/// Counters exported at `GET /metrics` (gauges come from the database).
#[derive(Debug, Default)]
pub struct Metrics {
    pub federation_sent: AtomicU64,
    pub federation_retried: AtomicU64,
    pub federation_dropped: AtomicU64,
    pub federation_received: AtomicU64,
    pub local_delivered: AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the stored CA certificate is invalid: {0}")]
    Ca(String),
    #[error(
        "the stored CA certificate is for {stored}, but this server is configured for {configured}; use the data directory or database of {configured}"
    )]
    DomainMismatch { stored: String, configured: String },
    #[error("could not create keys: {0}")]
    Keys(String),
}

/// The current Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Load (or on first start create) the server's keys; no federation settings.
    pub async fn start(
        domain: Domain,
        store: Store,
        limits: Limits,
    ) -> Result<Arc<Self>, StartError> {
        Self::start_with(domain, store, limits, FederationSettings::default()).await
    }

    /// Load (or on first start create) the server's keys.
    pub async fn start_with(
        domain: Domain,
        store: Store,
        limits: Limits,
        federation: FederationSettings,
    ) -> Result<Arc<Self>, StartError> {
        let ca = load_or_create_ca(&domain, &store).await?;
        let queue_config_key = load_or_create_queue_config_key(&store).await?;
        let qs_signing_key = load_or_create_signing_key(&store, QS_SIGNING_KEY).await?;
        let peers = Peers::new(federation.resolver.clone(), federation.peer_cache_ttl)
            .map_err(StartError::Keys)?;
        Ok(Arc::new(Self {
            domain,
            store,
            ca,
            queue_config_key,
            qs_signing_key,
            limits,
            federation,
            peers,
            metrics: Metrics::default(),
            outbox_wakeup: Notify::new(),
        }))
    }

    /// Map a storage failure to a 500 without leaking its details, logging them here.
    pub fn internal(&self) -> impl Fn(StoreError) -> WireError + '_ {
        |e| {
            tracing::error!(error = %e, "storage failure");
            WireError::new(ErrorCode::Internal, "internal storage error")
        }
    }
}

async fn load_or_create_ca(domain: &Domain, store: &Store) -> Result<CaKeys, StartError> {
    if store.ca().await?.is_none() {
        let key = crypto::generate_signing_key(&mut OsRng);
        let now = now();
        // Back-date a minute so that certificates issued right away nest inside it even
        // with a little clock skew between processes sharing a database.
        let not_before = now.saturating_sub(60);
        let not_after = now + CA_LIFETIME;
        let der = certs::create_ca_certificate(
            domain,
            &key,
            &certs::random_serial(&mut OsRng),
            not_before,
            not_after,
        )
        .map_err(|e| StartError::Keys(e.to_string()))?;
        let record = CaRecord {
            signing_key: key.to_bytes(),
            certificate: der,
            not_before,
            not_after,
        };
        if store.insert_first_ca(&record).await? {
            tracing::info!(%domain, "created the home server CA certificate");
        }
    }
    let record = store
        .ca()
        .await?
        .ok_or(StartError::Ca("missing after creation".into()))?;
    let certificate =
        ParsedCert::parse(&record.certificate).map_err(|e| StartError::Ca(e.to_string()))?;
    if certificate.issuer_domain != *domain {
        return Err(StartError::DomainMismatch {
            stored: certificate.issuer_domain.to_string(),
            configured: domain.to_string(),
        });
    }
    certificate
        .verify_self_signed_ca(domain)
        .map_err(|e| StartError::Ca(e.to_string()))?;
    let signing_key = SigningKey::from_bytes(&record.signing_key);
    if signing_key.verifying_key().to_bytes() != certificate.public_key {
        return Err(StartError::Ca(
            "the stored key does not match the certificate".into(),
        ));
    }
    Ok(CaKeys {
        signing_key,
        certificate,
    })
}

/// Name of the QS signing key in the `server_keys` table.
const QS_SIGNING_KEY: &str = "qs_signing";

async fn load_or_create_signing_key(store: &Store, name: &str) -> Result<SigningKey, StartError> {
    if store.server_key(name).await?.is_none() {
        let key = crypto::generate_signing_key(&mut OsRng);
        store
            .insert_server_key(name, &key.to_bytes(), &key.verifying_key().to_bytes())
            .await?;
    }
    // Another process may have won the race: use whatever is stored.
    let (private, public) = store
        .server_key(name)
        .await?
        .ok_or(StartError::Keys(format!(
            "{name} key missing after creation"
        )))?;
    let private: [u8; 32] = private
        .try_into()
        .map_err(|_| StartError::Keys(format!("stored {name} key is corrupt")))?;
    let key = SigningKey::from_bytes(&private);
    if key.verifying_key().to_bytes().as_slice() != public.as_slice() {
        return Err(StartError::Keys(format!(
            "stored {name} key pair does not match"
        )));
    }
    Ok(key)
}

async fn load_or_create_queue_config_key(store: &Store) -> Result<HpkeKeyPair, StartError> {
    if let Some((private, public)) = store.queue_config_key().await? {
        return Ok(HpkeKeyPair { private, public });
    }
    let pair = HpkeKeyPair::generate(&mut OsRng).map_err(|e| StartError::Keys(e.to_string()))?;
    store
        .insert_queue_config_key(&pair.private, &pair.public)
        .await?;
    // Another process may have won the race: use whatever is stored.
    let (private, public) = store.queue_config_key().await?.ok_or(StartError::Keys(
        "queue config key missing after creation".into(),
    ))?;
    Ok(HpkeKeyPair { private, public })
}
