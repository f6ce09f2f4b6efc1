//! The server context every operation runs in, and start-up: connect storage (which runs
//! migrations), create the CA certificate and the QS queue-config key on first start, and
//! load them on every later start.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
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
use crate::keys_at_rest::{KeyEncryptionKey, Opened};
use crate::store::admin::AdminStore;
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
    /// Group-creation tokens the AS issues to one client per UTC day
    /// (`TOKEN_QUOTA_EXCEEDED` beyond).
    pub group_tokens_per_day: u32,
    /// Rotate the CA key when the current CA is this old (seconds); `None`: never
    /// automatically.
    pub ca_rotation: Option<u64>,
    /// How often the CA jobs run (seconds): pick up a CA rotated by another process, and
    /// the scheduled rotation ([`Server::run_ca_jobs`]).
    pub ca_check_interval: u64,
    /// Most key packages one `qs/publish_key_packages` may carry.
    pub max_key_packages: usize,
    /// Most connection packages one `as/publish_connection_packages` may carry.
    pub max_connection_packages: usize,
    /// Most members a group may have (`GROUP_FULL` beyond).
    pub max_group_size: usize,
    /// How queue entries are sealed at rest (Requirement: QS-ENC-3: how often fresh
    /// randomness enters each queue's chain).
    pub queue_sealer: crate::store::queue_sealing::QueueSealer,
    /// Largest CSR `as/register` parses (bytes; at most `certs::MAX_CERT_LEN`).
    pub max_csr_bytes: usize,
    /// Rate limits of the anonymous operations and the key-package claim quota.
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    /// Connection caps and timeouts of the HTTP edge.
    pub edge: crate::edge::EdgeLimits,
    /// The key-encryption key the server's private keys are sealed under in the database
    /// (not a limit, but set by the operator with them; [`crate::keys_at_rest`]). By
    /// default one random key per process, which only in-process tests use.
    // Requirement: OPS-KEK-1
    pub key_encryption: KeyEncryptionKey,
    /// How push notifications are sent ([`crate::qs::push`]).
    pub push: crate::qs::push::PushSettings,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: phoenix_types::codec::MAX_BODY,
            max_dequeue: 500,
            client_cert_lifetime: 30 * 24 * 3600,
            group_id_reservation: 24 * 3600,
            group_tokens_per_day: 100,
            ca_rotation: None,
            ca_check_interval: 60,
            max_key_packages: phoenix_types::messages::qs::MAX_KEY_PACKAGES,
            max_connection_packages: phoenix_types::messages::as_::MAX_CONNECTION_PACKAGES,
            max_group_size: phoenix_types::messages::ds::MAX_GROUP_SIZE,
            queue_sealer: Default::default(),
            max_csr_bytes: phoenix_types::certs::MAX_CERT_LEN,
            rate_limits: crate::ratelimit::RateLimitConfig::default(),
            edge: crate::edge::EdgeLimits::default(),
            key_encryption: KeyEncryptionKey::default(),
            push: Default::default(),
        }
    }
}

/// The longest lifetime of a client certificate (polyproto: at most 60 days), whatever the
/// configuration says (`client_cert_lifetime_days` above it is refused at start-up).
// Requirement: AS-CERT-LIFE-1
pub const MAX_CLIENT_CERT_LIFETIME: u64 = 60 * 24 * 3600;

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
    /// The current CA; replaced on rotation (see [`Server::rotate_ca`]).
    ca: RwLock<Arc<CaKeys>>,
    pub queue_config_key: HpkeKeyPair,
    /// Signs QS-to-QS messages; its public half is in the discovery document.
    pub qs_signing_key: SigningKey,
    /// Issues (AS) and checks (DS) anonymous group-creation tokens (phoenix-types
    /// `tokens`).
    pub group_token_key: phoenix_types::tokens::TokenKey,
    pub limits: Limits,
    pub federation: FederationSettings,
    pub peers: Peers,
    /// Other homeservers' CA certificates, cached for this server's clients.
    pub ca_cache: crate::federation::certificates::CaCache,
    pub metrics: Metrics,
    /// Woken when new outbox entries were written.
    pub outbox_wakeup: Notify,
    /// Queue configs opened by this process ([`crate::qs::QueueConfigCache`]).
    pub queue_configs: crate::qs::QueueConfigCache,
    /// Wakes the live streams of a queue after an enqueue committed (`qs/listen`).
    pub queue_wakeup: Arc<dyn crate::qs::wakeup::QueueWakeup>,
    /// Sends push notifications to clients with no live stream ([`crate::qs::push`]).
    pub pusher: crate::qs::push::Pusher,
    /// The test-only observation tap (off until a test starts it; see [`crate::observe`]).
    #[cfg(feature = "observe")]
    pub observer: crate::observe::Observer,
}

/// Counters exported at `GET /metrics` (gauges come from the database).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open `qs/listen` streams.
    pub listen_streams: AtomicU64,
    pub federation_sent: AtomicU64,
    pub federation_retried: AtomicU64,
    pub federation_dropped: AtomicU64,
    pub federation_received: AtomicU64,
    pub local_delivered: AtomicU64,
    /// Foreign actors' certificates served from the cache / fetched from their home server.
    pub idcert_cache_hits: AtomicU64,
    pub idcert_cache_misses: AtomicU64,
    /// Cache entries deleted by the periodic purge because their window ended.
    pub idcert_cache_purged: AtomicU64,
    /// Replay records of federated messages pruned.
    pub federation_seen_pruned: AtomicU64,
    /// Replay records of application messages (DS `send_message`) pruned.
    pub ds_seen_pruned: AtomicU64,
    /// The QS's records of delivered dedup keys pruned (QS-DEDUP-1).
    pub qs_delivered_pruned: AtomicU64,
    /// Replayed application messages refused.
    pub ds_replays_refused: AtomicU64,
    /// Connection packages deleted by the periodic purge because they expired.
    pub connection_packages_purged: AtomicU64,
    /// Group id reservations deleted by the periodic purge because they expired unused.
    pub group_reservations_purged: AtomicU64,
    /// Replay records of signed requests (AS, QS, DS) pruned.
    pub requests_seen_pruned: AtomicU64,
    /// Replayed signed requests refused (`REPLAYED`), other than application messages.
    pub request_replays_refused: AtomicU64,
    /// Outbox delivery rounds (a request's own entries, or a worker round) that failed
    /// with a storage error (Requirement: DS-OUTBOX-2).
    pub outbox_errors: AtomicU64,
    /// Connections refused, timed out or failed at the HTTP edge.
    pub edge: crate::edge::EdgeMetrics,
    /// Per-operation request metrics, uptime, and the shutdown flag of `/ready`.
    pub ops: crate::ops::OpsState,
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
    #[error("{0}")]
    KeyEncryption(#[from] crate::keys_at_rest::KekError),
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
        let kek = &limits.key_encryption;
        let ca = load_or_create_ca(&domain, &store, kek).await?;
        seal_clear_ca_keys(&store, kek).await?;
        let queue_config_key = load_or_create_queue_config_key(&store, kek).await?;
        let qs_signing_key = load_or_create_signing_key(&store, QS_SIGNING_KEY, kek).await?;
        let group_token_key = load_or_create_token_key(&store, kek).await?;
        let vapid_key = load_or_create_vapid_key(&store, kek).await?;
        // Requirement: QS-LISTEN-4 (Postgres: several processes may share the database)
        let queue_wakeup: Arc<dyn crate::qs::wakeup::QueueWakeup> = match &store {
            Store::Postgres(pg) => Arc::new(
                crate::qs::wakeup::PgNotify::start(pg.pool().clone())
                    .await
                    .map_err(|e| StartError::Store(StoreError::Database(e)))?,
            ),
            Store::Sqlite(_) => Arc::new(crate::qs::wakeup::InProcess::default()),
        };
        let peers = Peers::new(&federation).map_err(StartError::Keys)?;
        let pusher = crate::qs::push::Pusher::new(
            limits.push.clone(),
            domain.as_str(),
            &vapid_key,
            &queue_config_key.private,
            store.clone(),
            crate::tls::extra_roots(federation.tls_ca_file.as_deref()).map_err(StartError::Keys)?,
        )
        .map_err(StartError::Keys)?;
        Ok(Arc::new(Self {
            domain,
            store,
            ca: RwLock::new(Arc::new(ca)),
            queue_config_key,
            qs_signing_key,
            group_token_key,
            limits,
            federation,
            peers,
            ca_cache: Default::default(),
            metrics: Metrics::default(),
            outbox_wakeup: Notify::new(),
            queue_configs: Default::default(),
            queue_wakeup,
            pusher,
            #[cfg(feature = "observe")]
            observer: crate::observe::Observer::default(),
        }))
    }

    /// Start the observation tap: from now on, record the identifiers each request's
    /// handler sees (tests only; see [`crate::observe`]).
    #[cfg(feature = "observe")]
    pub fn start_observing(&self) {
        self.observer.start();
    }

    /// What the handlers saw since [`Server::start_observing`], one entry per request (and
    /// per local delivery), in the order they started.
    #[cfg(feature = "observe")]
    pub fn observations(&self) -> Vec<crate::observe::Observation> {
        self.observer.observations()
    }

    /// The current CA.
    pub fn ca(&self) -> Arc<CaKeys> {
        match self.ca.read() {
            Ok(ca) => ca.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Create a new CA key and certificate, store it as the current CA and use it from now
    /// on. Certificates issued by earlier CAs stay valid until they expire, and every CA
    /// certificate stays in the history that clients verify against.
    pub async fn rotate_ca(&self) -> Result<Arc<CaKeys>, StartError> {
        let record = new_ca(&self.domain, &self.limits.key_encryption)?;
        self.store.insert_ca(&record).await?;
        self.reload_ca().await?;
        let ca = self.ca();
        tracing::info!(fingerprint = %hex::encode(ca.certificate.fingerprint()), "rotated the CA key");
        Ok(ca)
    }

    /// Pick up a CA rotated by another process sharing the database
    /// (`phoenix-server rotate-ca-key`): one read of the current CA row; the certificate is
    /// parsed and checked only when it changed.
    // Requirement: AS-CA-ROT-1
    pub async fn reload_ca(&self) -> Result<(), StartError> {
        let stored = self
            .store
            .ca()
            .await?
            .ok_or(StartError::Ca("missing".into()))?;
        if stored.certificate == self.ca().certificate.der {
            return Ok(());
        }
        let current = check_ca(&self.domain, stored, &self.limits.key_encryption)?;
        tracing::info!(fingerprint = %hex::encode(current.certificate.fingerprint()), "using a new CA certificate");
        match self.ca.write() {
            Ok(mut ca) => *ca = Arc::new(current),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(current),
        }
        Ok(())
    }

    /// The current CA as stored, for a request that advertises the CA or signs with its
    /// key: a rotation by another process sharing the database takes effect at the next
    /// such request, so what this server signs and what it serves as current never differ.
    /// A failed read is a 500 (logged), never a signature with a key that may be retired.
    // Requirement: AS-CA-ROT-1
    pub async fn current_ca(&self) -> Result<Arc<CaKeys>, WireError> {
        self.reload_ca().await.map_err(|e| {
            tracing::error!(error = %e, "cannot read the current CA");
            WireError::new(ErrorCode::Internal, "cannot read the current CA")
        })?;
        Ok(self.ca())
    }

    /// Background identity jobs, every `limits.ca_check_interval` (first at start-up):
    /// pick up a CA rotated by another process, and rotate the CA when it reached the
    /// configured age (`limits.ca_rotation`). Runs until the task is aborted.
    // Requirement: AS-CA-ROT-2
    pub async fn run_ca_jobs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(
            self.limits.ca_check_interval.max(1),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.ca_jobs_once(now()).await;
        }
    }

    /// One round of the identity jobs as of `now`.
    pub async fn ca_jobs_once(&self, now: u64) {
        if let Err(e) = self.reload_ca().await {
            tracing::error!(error = %e, "cannot reload the CA");
            return;
        }
        if let Some(max_age) = self.limits.ca_rotation
            && now.saturating_sub(self.ca().certificate.not_before) >= max_age
        {
            match self.rotate_ca().await {
                Ok(_) => tracing::info!("scheduled CA rotation done"),
                Err(e) => tracing::error!(error = %e, "scheduled CA rotation failed"),
            }
        }
    }

    /// Map a storage failure to a 500 without leaking its details, logging them here. The
    /// one outcome that is not a failure, a write whose replay record existed
    /// ([`StoreError::Replayed`]), becomes `REPLAYED` (see [`crate::replay`]).
    pub fn internal(&self) -> impl Fn(StoreError) -> WireError + '_ {
        |e| {
            if let StoreError::Replayed = e {
                // Requirement: ADV-REPLAY-3
                return crate::replay::replayed(self);
            }
            tracing::error!(error = %e, "storage failure");
            WireError::new(ErrorCode::Internal, "internal storage error")
        }
    }
}

/// The name the CA signing keys are sealed under ([`crate::keys_at_rest`]).
pub(crate) const CA_KEY: &str = "ca";

fn new_ca(domain: &Domain, kek: &KeyEncryptionKey) -> Result<CaRecord, StartError> {
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
    Ok(CaRecord {
        signing_key: kek.seal(CA_KEY, &key.to_bytes())?,
        certificate: der,
        not_before,
        not_after,
    })
}

async fn load_or_create_ca(
    domain: &Domain,
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<CaKeys, StartError> {
    if store.ca().await?.is_none() && store.insert_first_ca(&new_ca(domain, kek)?).await? {
        tracing::info!(%domain, "created the home server CA certificate");
    }
    let record = store.ca().await?.ok_or(StartError::Ca("missing".into()))?;
    check_ca(domain, record, kek)
}

// Requirement: OPS-KEK-1
/// Seal, in place, every CA signing key an earlier version stored in the clear (the
/// current one and the retired ones, which stay in the history). A sealed key that this
/// KEK does not open refuses the start.
async fn seal_clear_ca_keys(store: &Store, kek: &KeyEncryptionKey) -> Result<(), StartError> {
    for record in store.ca_history().await? {
        if let Opened::Clear(key) = kek.open(CA_KEY, &record.signing_key)? {
            reseal(store, kek, CA_KEY, &record.signing_key, &key).await?;
        }
    }
    Ok(())
}

/// Replace the clear `stored` bytes of the key `name` with the same key sealed.
async fn reseal(
    store: &Store,
    kek: &KeyEncryptionKey,
    name: &str,
    stored: &[u8],
    key: &[u8],
) -> Result<(), StartError> {
    let sealed = kek.seal(name, key)?;
    store.reseal_private_key(stored, &sealed).await?;
    tracing::info!(
        key = name,
        "sealed a private key stored in the clear by an earlier version under the key-encryption key"
    );
    Ok(())
}

/// A stored CA record, parsed and checked: for `domain`, self-signed, key matching.
fn check_ca(
    domain: &Domain,
    record: CaRecord,
    kek: &KeyEncryptionKey,
) -> Result<CaKeys, StartError> {
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
    let opened = kek.open(CA_KEY, &record.signing_key)?;
    let private: &[u8; 32] = opened
        .key()
        .try_into()
        .map_err(|_| StartError::Ca("the stored key is not 32 bytes".into()))?;
    let signing_key = SigningKey::from_bytes(private);
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

async fn load_or_create_signing_key(
    store: &Store,
    name: &str,
    kek: &KeyEncryptionKey,
) -> Result<SigningKey, StartError> {
    if store.server_key(name).await?.is_none() {
        let key = crypto::generate_signing_key(&mut OsRng);
        let sealed = kek.seal(name, &key.to_bytes())?;
        store
            .insert_server_key(name, &sealed, &key.verifying_key().to_bytes())
            .await?;
    }
    // Another process may have won the race: use whatever is stored.
    let (private, public) = store
        .server_key(name)
        .await?
        .ok_or(StartError::Keys(format!(
            "{name} key missing after creation"
        )))?;
    let opened = kek.open(name, &private)?;
    if let Opened::Clear(key) = &opened {
        reseal(store, kek, name, &private, key).await?;
    }
    let private: &[u8; 32] = opened
        .key()
        .try_into()
        .map_err(|_| StartError::Keys(format!("stored {name} key is corrupt")))?;
    let key = SigningKey::from_bytes(private);
    if key.verifying_key().to_bytes().as_slice() != public.as_slice() {
        return Err(StartError::Keys(format!(
            "stored {name} key pair does not match"
        )));
    }
    Ok(key)
}

/// Name of the group-creation token key (a Ristretto255 scalar) in the `server_keys` table.
const GROUP_TOKEN_KEY: &str = "group_token";

async fn load_or_create_token_key(
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<phoenix_types::tokens::TokenKey, StartError> {
    use phoenix_types::tokens::TokenKey;
    if store.server_key(GROUP_TOKEN_KEY).await?.is_none() {
        let (key, private) = TokenKey::generate(&mut OsRng)
            .map_err(|e| StartError::Keys(format!("group token key: {e}")))?;
        let sealed = kek.seal(GROUP_TOKEN_KEY, &private)?;
        store
            .insert_server_key(GROUP_TOKEN_KEY, &sealed, key.public_key())
            .await?;
    }
    // Another process may have won the race: use whatever is stored.
    let (private, public) = store
        .server_key(GROUP_TOKEN_KEY)
        .await?
        .ok_or(StartError::Keys(
            "group token key missing after creation".into(),
        ))?;
    let opened = kek.open(GROUP_TOKEN_KEY, &private)?;
    if let Opened::Clear(key) = &opened {
        reseal(store, kek, GROUP_TOKEN_KEY, &private, key).await?;
    }
    let key = TokenKey::from_private(opened.key())
        .map_err(|_| StartError::Keys("stored group token key is corrupt".into()))?;
    if key.public_key().as_slice() != public.as_slice() {
        return Err(StartError::Keys(
            "stored group token key pair does not match".into(),
        ));
    }
    Ok(key)
}

/// Name of the QS's VAPID key (P-256, RFC 8292) in the `server_keys` table.
const VAPID_KEY: &str = "vapid";

// Requirement: QS-PUSH-2, OPS-KEK-1
/// The QS's VAPID private key, created on first start and sealed like the others.
async fn load_or_create_vapid_key(
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<zeroize::Zeroizing<Vec<u8>>, StartError> {
    if store.server_key(VAPID_KEY).await?.is_none() {
        let (private, public) = crate::qs::push::generate_vapid_key();
        let sealed = kek.seal(VAPID_KEY, &private)?;
        store.insert_server_key(VAPID_KEY, &sealed, &public).await?;
    }
    // Another process may have won the race: use whatever is stored.
    let (private, public) = store
        .server_key(VAPID_KEY)
        .await?
        .ok_or(StartError::Keys("VAPID key missing after creation".into()))?;
    let opened = kek.open(VAPID_KEY, &private)?;
    if let Opened::Clear(key) = &opened {
        reseal(store, kek, VAPID_KEY, &private, key).await?;
    }
    if crate::qs::push::vapid_public_of(opened.key()).as_deref() != Some(public.as_slice()) {
        return Err(StartError::Keys(
            "stored VAPID key pair does not match".into(),
        ));
    }
    Ok(zeroize::Zeroizing::new(opened.key().to_vec()))
}

/// The name the queue-config private key is sealed under ([`crate::keys_at_rest`]).
pub(crate) const QUEUE_CONFIG_KEY: &str = "queue_config";

async fn load_or_create_queue_config_key(
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<HpkeKeyPair, StartError> {
    if store.queue_config_key().await?.is_none() {
        let pair =
            HpkeKeyPair::generate(&mut OsRng).map_err(|e| StartError::Keys(e.to_string()))?;
        let sealed = kek.seal(QUEUE_CONFIG_KEY, &pair.private)?;
        store.insert_queue_config_key(&sealed, &pair.public).await?;
    }
    // Another process may have won the race: use whatever is stored.
    let (stored, public) = store.queue_config_key().await?.ok_or(StartError::Keys(
        "queue config key missing after creation".into(),
    ))?;
    let opened = kek.open(QUEUE_CONFIG_KEY, &stored)?;
    if let Opened::Clear(key) = &opened {
        reseal(store, kek, QUEUE_CONFIG_KEY, &stored, key).await?;
    }
    Ok(HpkeKeyPair {
        private: opened.key().to_vec(),
        public,
    })
}
