//! Storage: one small trait per service ([`AsStore`], [`QsStore`], [`DsStore`]) and two
//! backends, [`sqlite::SqliteStore`] (the embedded default) and [`postgres::PgStore`],
//! each with its own migrations. [`Store`] picks one at start-up from the database URL.
//!
//! Conventions: `Result<Option<T>, StoreError>` where `Ok(None)` means absent; every
//! method is one transaction; nothing here decides protocol questions (that is the
//! services' job), but every method that must be atomic for the protocol to be correct says
//! so and is tested for it in `tests/store_suite.rs`, which runs against both backends.
//!
//! What this module is not: a cache, or a place for business rules.
//!
//! Requirement: ADV-SNAP-2 (each service reads and writes only its own tables; `qs_` and
//! `ds_` tables hold no FID and no key shared with `as_` tables: see the migrations'
//! privacy note)

pub mod admin;
pub mod ephemeral;
pub mod postgres;
pub mod push;
pub mod qs_records;
pub mod queue_sealing;
pub mod sessions;
pub mod sqlite;
pub mod tokens;

use std::future::Future;

use thiserror::Error;

use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;

/// A storage failure. Always our fault (5xx): bad input is rejected before storage. The
/// one exception is [`StoreError::Replayed`], the outcome of a write whose replay record
/// existed: it is the caller's request, seen before, and maps to `REPLAYED` (409).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("unsupported database url (expected sqlite:... or postgres://...)")]
    UnsupportedUrl,
    // Requirement: ADV-REPLAY-3
    /// The write's [`ReplayRecord`] was recorded before: the request took effect once
    /// already, and this transaction changed nothing.
    #[error("the request was accepted before (replay record exists)")]
    Replayed,
}

// Requirement: ADV-REPLAY-3
/// The replay record of a signed state-changing request: a digest of exactly what was
/// signed (see `crate::replay`) and when it was received. The store writes it in the same
/// transaction as the request's effect, into the table of the service the method belongs
/// to (`as_seen_requests`, `qs_seen_requests`, `ds_seen_requests`); if it is there already,
/// the method changes nothing and fails with [`StoreError::Replayed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRecord {
    pub digest: [u8; 32],
    pub received_at: u64,
}

/// The service whose replay records are meant (each service keeps its own table:
/// `as_seen_requests`, `qs_seen_requests`, `ds_seen_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayService {
    As,
    Qs,
    Ds,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The home server's CA: its signing key and self-signed certificate. Rotation (a later
/// issue) adds rows; every certificate is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// The signing key as stored: sealed under the key-encryption key
    /// ([`crate::keys_at_rest`]), or in the clear when an earlier version wrote it (sealed
    /// in place at the next start).
    pub signing_key: Vec<u8>,
    pub certificate: Vec<u8>,
    pub not_before: u64,
    pub not_after: u64,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A client known to the AS, with its current ID-Cert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsClientRecord {
    pub fid: String,
    pub client_id: String,
    pub certificate: Vec<u8>,
    pub public_key: [u8; 32],
    /// Serial of the certificate (hex), unique across the server.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
}

/// A stored connection package (the encoded, signed `ConnectionPackage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConnectionPackage {
    pub package: Vec<u8>,
    pub last_resort: bool,
    /// The end of the package's validity (its signed `not_after`, Unix seconds): from
    /// then on it is never served, and the purge deletes it.
    pub not_after: u64,
}

/// Outcome of [`AsStore::create_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateUser {
    Created,
    /// The FID is taken.
    UserExists,
}

pub trait AsStore {
    /// The current CA, if one was created.
    fn ca(&self) -> impl Future<Output = StoreResult<Option<CaRecord>>> + Send;
    /// Insert the first CA. Returns false (and changes nothing) if one exists already, so
    /// that two processes starting at once agree on one CA.
    fn insert_first_ca(&self, ca: &CaRecord) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Create a user with its first client and certificate, atomically; the FID is unique.
    fn create_user(
        &self,
        client: &AsClientRecord,
        now: u64,
    ) -> impl Future<Output = StoreResult<CreateUser>> + Send;
    fn client(
        &self,
        fid: &str,
        client_id: &str,
    ) -> impl Future<Output = StoreResult<Option<AsClientRecord>>> + Send;
    /// All clients of a user (empty if the user is unknown).
    fn user_clients(
        &self,
        fid: &str,
    ) -> impl Future<Output = StoreResult<Vec<AsClientRecord>>> + Send;
    /// Every certificate ever issued to a user, oldest first: (client id, DER, not_before, not_after).
    #[allow(clippy::type_complexity)]
    fn user_certificates(
        &self,
        fid: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, Vec<u8>, u64, u64)>>> + Send;
    /// Replace all connection packages of a client, atomically, recording `replay` in the
    /// same transaction ([`StoreError::Replayed`], and no change, if it was recorded).
    fn replace_connection_packages(
        &self,
        fid: &str,
        client_id: &str,
        packages: &[StoredConnectionPackage],
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    // Requirement: AS-CP-3, AS-CP-4, AS-CP-7
    /// Take one connection package of one of the user's clients that is still valid at
    /// `now` (`now < not_after`): a non-last-resort one is deleted as it is returned
    /// (never handed out twice, even under concurrent calls); if none is left, the
    /// last-resort one is returned and kept. Expired packages are neither returned nor
    /// deleted here (the purge deletes them). Returns (client id, package).
    fn take_connection_package(
        &self,
        fid: &str,
        now: u64,
    ) -> impl Future<Output = StoreResult<Option<(String, Vec<u8>)>>> + Send;
    /// Append to a client's direct queue; the sequence number is assigned atomically and
    /// is one more than the last one ever assigned in that queue. `Ok(None)` if the client
    /// is unknown. `replay` is recorded in the same transaction ([`StoreError::Replayed`],
    /// and nothing appended, if it was recorded before).
    fn enqueue_direct(
        &self,
        fid: &str,
        client_id: &str,
        payload: &[u8],
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<Option<u64>>> + Send;
    /// Delete the messages below `start`, return up to `max` from `start` on, in order,
    /// and how many remain after them.
    fn dequeue_direct(
        &self,
        fid: &str,
        client_id: &str,
        start: u64,
        max: u32,
    ) -> impl Future<Output = StoreResult<(Vec<QueueMessage>, u64)>> + Send;
    /// Every CA this server ever had, oldest first (the last one is current).
    fn ca_history(&self) -> impl Future<Output = StoreResult<Vec<CaRecord>>> + Send;
    /// Add a CA after the existing ones (key rotation); it becomes the current one.
    fn insert_ca(&self, ca: &CaRecord) -> impl Future<Output = StoreResult<()>> + Send;
    /// Replace a client's current certificate (renewal), keeping every earlier one in the
    /// certificate history. False if the client is unknown. Records `replay` in the same
    /// transaction ([`StoreError::Replayed`], and no change, if it was recorded).
    fn renew_client(
        &self,
        client: &AsClientRecord,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// A QS user record. The friendship token is stored only as its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QsUserRecord {
    pub user_id: QsId,
    pub auth_key: [u8; 32],
    pub friendship_token_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QsClientRecord {
    pub client_id: QsId,
    pub user_id: QsId,
    pub auth_key: [u8; 32],
    /// The queue's encryption keys, as [`QsStore::create_user`] stores them; reads leave
    /// this `None` (the chain is read only by the enqueue that locks it).
    pub queue: Option<QueueKeys>,
}

/// What a client record's queue is sealed with (Requirement: QS-ENC-1): the client's
/// HPKE public key (for ratchet updates) and the first secret of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    pub queue_key: Vec<u8>,
    pub ratchet: phoenix_types::queue_ratchet::QueueRatchet,
}

/// A stored key package (the encoded `AddPackage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyPackage {
    pub add_package: Vec<u8>,
    pub last_resort: bool,
}

/// How a QS client's key packages stand (`qs/key_package_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageStatus {
    /// One-time key packages left.
    pub one_time: u64,
    /// Whether a last-resort key package is stored.
    pub last_resort: bool,
    /// How often the last-resort package was handed out because no one-time package was
    /// left (cumulative since the client record was created).
    pub last_resort_served: u64,
}

/// One message to append to a QS queue. `dedup` makes delivery from the outbox
/// idempotent: a second enqueue with the same key into the same queue is a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueEntry {
    pub client_id: QsId,
    pub payload: Vec<u8>,
    pub dedup: Option<[u8; 16]>,
}

/// Outcome of [`QsStore::create_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateQsUser {
    Created,
    DuplicateFriendshipToken,
}

pub trait QsStore {
    /// The QS's queue-config HPKE key pair (private, public), if created.
    fn queue_config_key(
        &self,
    ) -> impl Future<Output = StoreResult<Option<(Vec<u8>, Vec<u8>)>>> + Send;
    /// Insert the key pair unless one exists; returns false if one existed.
    fn insert_queue_config_key(
        &self,
        private: &[u8],
        public: &[u8],
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Create a user record and its first client record atomically. The friendship
    /// token hash is unique.
    fn create_user(
        &self,
        user: &QsUserRecord,
        client: &QsClientRecord,
    ) -> impl Future<Output = StoreResult<CreateQsUser>> + Send;
    fn user(
        &self,
        user_id: &QsId,
    ) -> impl Future<Output = StoreResult<Option<QsUserRecord>>> + Send;
    fn user_by_friendship_token_hash(
        &self,
        hash: &[u8; 32],
    ) -> impl Future<Output = StoreResult<Option<QsUserRecord>>> + Send;
    fn client(
        &self,
        client_id: &QsId,
    ) -> impl Future<Output = StoreResult<Option<QsClientRecord>>> + Send;
    /// The client records of a user (empty if the user is unknown).
    fn clients_of_user(
        &self,
        user_id: &QsId,
    ) -> impl Future<Output = StoreResult<Vec<QsClientRecord>>> + Send;
    /// Replace all key packages of a client, atomically, recording `replay` in the same
    /// transaction ([`StoreError::Replayed`], and no change, if it was recorded).
    fn replace_key_packages(
        &self,
        client_id: &QsId,
        packages: &[StoredKeyPackage],
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    // Requirement: QS-KP-3, QS-KP-4
    /// For each client of the user that has a package: take one, preferring a
    /// non-last-resort one (deleted as it is returned, never handed out twice even under
    /// concurrent calls); the last-resort one is returned and kept, and the client's
    /// count of last-resort servings goes up by one. Returns (client id, add package).
    fn take_key_packages(
        &self,
        user_id: &QsId,
    ) -> impl Future<Output = StoreResult<Vec<(QsId, Vec<u8>)>>> + Send;
    // Requirement: QS-Q-1
    /// Append each entry to its client's queue in one transaction; sequence numbers are
    /// assigned atomically per queue. Returns, per entry, the sequence number, or `None`
    /// if the client is unknown (or the entry was a duplicate by `dedup`).
    /// Each entry is sealed under its queue's chain as `sealer` says (Requirement:
    /// QS-ENC-1), while the queue is locked, so concurrent enqueues never fork the chain.
    fn enqueue(
        &self,
        entries: &[EnqueueEntry],
        sealer: &queue_sealing::QueueSealer,
    ) -> impl Future<Output = StoreResult<Vec<Option<u64>>>> + Send;
    // Requirement: QS-ENC-4
    /// Replace a client's queue key and chain secret, recording `replay` in the same
    /// transaction; returns the queue's next sequence number (where the new chain starts),
    /// or `None` if the client is unknown. Takes the record's lock, as an enqueue does.
    fn rekey_queue(
        &self,
        client_id: &QsId,
        keys: &QueueKeys,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<Option<u64>>> + Send;
    /// How a client's key packages stand; `Ok(None)` if the client is unknown.
    fn key_package_status(
        &self,
        client_id: &QsId,
    ) -> impl Future<Output = StoreResult<Option<KeyPackageStatus>>> + Send;
    // Requirement: QS-DEQ-1, QS-DEQ-2, QS-DEQ-3
    /// Delete the messages below `start`, return up to `max` from `start` on, in order,
    /// and how many remain after them.
    fn dequeue(
        &self,
        client_id: &QsId,
        start: u64,
        max: u32,
    ) -> impl Future<Output = StoreResult<(Vec<QueueMessage>, u64)>> + Send;
    /// A named long-term key pair of the server (private, public), if created.
    fn server_key(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<(Vec<u8>, Vec<u8>)>>> + Send;
    /// Insert a named key pair unless one exists; returns false if one existed.
    fn insert_server_key(
        &self,
        name: &str,
        private: &[u8],
        public: &[u8],
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Record the federated message `message_id` of `sender` and enqueue its entry, in one
    /// transaction. If the message was recorded before, nothing changes and the answer is
    /// [`FederatedEnqueue::Replayed`].
    fn enqueue_federated(
        &self,
        sender: &str,
        message_id: &[u8; 16],
        now: u64,
        entry: &EnqueueEntry,
        sealer: &queue_sealing::QueueSealer,
    ) -> impl Future<Output = StoreResult<FederatedEnqueue>> + Send;
}

/// This server's cached copy of another server's answer about one of its users'
/// certificates (`p2_idcert_cache`): the home server's JSON array of cacheable ID-Certs,
/// exactly as it signed them, and the end of the cache window (the earliest
/// `cacheNotValidAfter` in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedIdCerts {
    pub fid: String,
    pub answer: String,
    pub not_valid_after: u64,
    pub fetched_at: u64,
}

/// Storage of ephemeral rows that expire: the cache of other servers' actors' certificates
/// (a cache entry is never returned once its window has ended) and the replay records of
/// federated messages. Implemented once for both backends in [`ephemeral`].
pub trait EphemeralStore {
    /// The entry for `fid` if its window has not ended at `now` (`now <
    /// not_valid_after`). An entry whose window has ended is deleted here (eviction at
    /// read) and `Ok(None)` returned.
    fn cached_idcerts(
        &self,
        fid: &str,
        now: u64,
    ) -> impl Future<Output = StoreResult<Option<CachedIdCerts>>> + Send;
    /// Insert or replace the entry of `entry.fid`, in one transaction: entries whose window
    /// ended are purged first; if `max_entries` other entries remain, those whose windows
    /// end soonest are evicted to make room.
    fn put_cached_idcerts(
        &self,
        entry: &CachedIdCerts,
        now: u64,
        max_entries: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Delete every entry whose window has ended at `now`; returns how many.
    fn purge_idcert_cache(&self, now: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    /// How many entries are stored (expired or not).
    fn idcert_cache_len(&self) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: FED-5
    /// Delete the replay records of federated messages received before `before`; returns
    /// how many.
    fn prune_federation_seen(&self, before: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: ADV-REPLAY-2
    /// Delete the replay records of application messages received before `before`;
    /// returns how many.
    fn prune_ds_seen(&self, before: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: QS-DEDUP-1
    /// Delete the QS's records of delivered dedup keys older than `before`.
    fn prune_qs_delivered(&self, before: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: AS-CP-7
    /// Delete every connection package (last-resort ones included) whose validity ended
    /// at `now` (`not_after <= now`); returns how many.
    fn purge_connection_packages(&self, now: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: DS-GID-2
    /// Delete every group id reservation that expired unused at `now` (`expires_at <=
    /// now`; a used one was deleted when its group was created); returns how many.
    fn purge_group_reservations(&self, now: u64) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: ADV-REPLAY-3
    /// Whether `service` recorded a request with this digest (that request took effect).
    fn request_seen(
        &self,
        service: ReplayService,
        digest: &[u8; 32],
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    // Requirement: ADV-REPLAY-3
    /// Delete the replay records of signed requests (of every service) received before
    /// `before`; returns how many.
    fn prune_seen_requests(&self, before: u64) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// A group as stored: only the id, the ciphertext, a version for compare-and-swap and the
/// month of last activity are in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    pub ciphertext: Vec<u8>,
    pub version: u64,
}

/// A fan-out message waiting in the outbox. Delivered by the outbox worker after the
/// state change that produced it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The domain of the QS that serves the destination queue.
    pub destination: String,
    /// The encoded `SealedQueueConfig`.
    pub queue_config: Vec<u8>,
    /// The encoded `QueuePayload`.
    pub payload: Vec<u8>,
    /// Idempotency key, random per entry.
    pub dedup: [u8; 16],
    /// Whether the recipient's QS may send a push notification (QS-PUSH-4).
    pub notify: bool,
}

/// Outcome of [`QsStore::enqueue_federated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FederatedEnqueue {
    /// Recorded; the entry got this sequence number (`None`: its client is unknown).
    Enqueued(Option<u64>),
    /// The message id was recorded before.
    Replayed,
}

/// Outbox state of one destination, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSummary {
    pub destination: String,
    pub pending: u64,
    pub due: u64,
    pub max_attempts: u64,
}

/// Outcome of [`DsStore::create_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateGroup {
    Created,
    NotReserved,
    Exists,
}

pub trait DsStore {
    /// Reserve a group id until `expires_at`. False if it is reserved or used.
    fn reserve_group_id(
        &self,
        group_id: &[u8],
        expires_at: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Turn a live reservation (not expired at `now`) into a group, atomically, recording
    /// `replay` in the same transaction ([`StoreError::Replayed`], and no change, if it was
    /// recorded).
    fn create_group(
        &self,
        group_id: &[u8],
        ciphertext: &[u8],
        now: u64,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<CreateGroup>> + Send;
    fn group(
        &self,
        group_id: &[u8],
    ) -> impl Future<Output = StoreResult<Option<StoredGroup>>> + Send;
    // Requirement: DS-EPOCH-1
    // Requirement: DS-OUTBOX-2
    /// Compare-and-swap: if the group's version is `expected_version`, store the new
    /// ciphertext with version + 1 and append the outbox entries, in one transaction,
    /// together with `replay`. Returns the ids of the appended entries, in the order
    /// given, or `None` (and changes nothing) if the version moved on;
    /// [`StoreError::Replayed`] (and no change) if `replay` was recorded before.
    fn update_group(
        &self,
        group_id: &[u8],
        expected_version: u64,
        ciphertext: &[u8],
        now: u64,
        outbox: &[OutboxEntry],
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<Option<Vec<i64>>>> + Send;
    // Requirement: ADV-REPLAY-2
    /// Record an accepted application message by its `digest` (received at `received_at`)
    /// and append its outbox entries, in one transaction. Returns the ids of the appended
    /// entries, in the order given (Requirement: DS-OUTBOX-2), or `None`, changing
    /// nothing, if a message with that digest was recorded before (a replay).
    fn append_message_outbox(
        &self,
        digest: &[u8; 32],
        received_at: u64,
        outbox: &[OutboxEntry],
    ) -> impl Future<Output = StoreResult<Option<Vec<i64>>>> + Send;
    /// Up to `limit` outbox entries that are due at `now`, oldest first, with their ids.
    fn due_outbox(
        &self,
        now: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<(i64, OutboxEntry)>>> + Send;
    fn delete_outbox(&self, ids: &[i64]) -> impl Future<Output = StoreResult<()>> + Send;
    /// Postpone an entry after a failed delivery attempt: attempts + 1, due at `next_attempt_at`.
    fn postpone_outbox(
        &self,
        id: i64,
        next_attempt_at: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// How many failed attempts an outbox entry has had.
    fn outbox_attempts(&self, id: i64) -> impl Future<Output = StoreResult<u32>> + Send;
    /// Outbox entries per destination: (destination, pending, due at `now`, most attempts).
    fn outbox_summary(
        &self,
        now: u64,
    ) -> impl Future<Output = StoreResult<Vec<OutboxSummary>>> + Send;
    // Requirement: DS-OUTBOX-2, FED-ORDER-1
    /// Claim, until `lease_until`, those of the entries `ids` that are addressed to
    /// `local` (this server's QS), due at `now`, not claimed by anyone else, and not
    /// waiting behind an older pending entry for the same queue that is not among `ids`
    /// or cannot be claimed. Returns the claimed entries oldest first. Two callers never claim
    /// the same entry.
    fn claim_outbox(
        &self,
        ids: &[i64],
        local: &str,
        now: u64,
        lease_until: u64,
    ) -> impl Future<Output = StoreResult<Vec<(i64, OutboxEntry)>>> + Send;
    // Requirement: DS-OUTBOX-2, FED-ORDER-1
    /// Claim, until `lease_until`, up to `limit` entries that are due at `now` and not
    /// claimed, oldest first, skipping every entry that has an older entry of the same
    /// delivery order which is not due or is claimed by someone else. The delivery order
    /// of an entry for `local` (this server's QS) is its destination queue (the same
    /// queue config); of an entry for another homeserver, its destination domain. So a
    /// deliverer that takes the entries in the returned order delivers in order.
    fn claim_due_outbox(
        &self,
        local: &str,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<(i64, OutboxEntry)>>> + Send;
    /// Give up claims without delivering (the entries become available again).
    fn release_outbox(&self, ids: &[i64]) -> impl Future<Output = StoreResult<()>> + Send;
    // Requirement: FED-ORDER-1
    /// A delivery to `destination` failed transiently: count a failed attempt on entry
    /// `failed` and postpone every entry for `destination` to `next_attempt_at`,
    /// releasing their claims (backoff is per destination).
    fn postpone_destination(
        &self,
        destination: &str,
        failed: i64,
        next_attempt_at: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

mod rows;

/// The configured backend, chosen at start-up from the database URL. Each trait is
/// implemented by delegating to the backend, so services are written once against the
/// traits and never see which database is underneath.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Connect to `sqlite:...` or `postgres://...` (`postgresql://...`) and run the
    /// backend's migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite(sqlite::SqliteStore::connect(url).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(postgres::PgStore::connect(url).await?));
        }
        Err(StoreError::UnsupportedUrl)
    }

    /// `"sqlite"` or `"postgres"`, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Calls the same trait method on whichever backend is configured. The method is named
/// through its trait because `AsStore` and `QsStore` share method names.
macro_rules! delegate {
    ($self:ident, $trait:ident :: $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(store) => $trait::$method(store, $($arg),*).await,
            Store::Postgres(store) => $trait::$method(store, $($arg),*).await,
        }
    };
}

impl AsStore for Store {
    async fn ca(&self) -> StoreResult<Option<CaRecord>> {
        delegate!(self, AsStore::ca())
    }

    async fn insert_first_ca(&self, ca: &CaRecord) -> StoreResult<bool> {
        delegate!(self, AsStore::insert_first_ca(ca))
    }

    async fn create_user(&self, client: &AsClientRecord, now: u64) -> StoreResult<CreateUser> {
        delegate!(self, AsStore::create_user(client, now))
    }

    async fn client(&self, fid: &str, client_id: &str) -> StoreResult<Option<AsClientRecord>> {
        delegate!(self, AsStore::client(fid, client_id))
    }

    async fn user_clients(&self, fid: &str) -> StoreResult<Vec<AsClientRecord>> {
        delegate!(self, AsStore::user_clients(fid))
    }

    async fn user_certificates(&self, fid: &str) -> StoreResult<Vec<(String, Vec<u8>, u64, u64)>> {
        delegate!(self, AsStore::user_certificates(fid))
    }

    async fn replace_connection_packages(
        &self,
        fid: &str,
        client_id: &str,
        packages: &[StoredConnectionPackage],
        replay: &ReplayRecord,
    ) -> StoreResult<()> {
        delegate!(
            self,
            AsStore::replace_connection_packages(fid, client_id, packages, replay)
        )
    }

    async fn take_connection_package(
        &self,
        fid: &str,
        now: u64,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        delegate!(self, AsStore::take_connection_package(fid, now))
    }

    async fn enqueue_direct(
        &self,
        fid: &str,
        client_id: &str,
        payload: &[u8],
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        delegate!(
            self,
            AsStore::enqueue_direct(fid, client_id, payload, replay)
        )
    }

    async fn dequeue_direct(
        &self,
        fid: &str,
        client_id: &str,
        start: u64,
        max: u32,
    ) -> StoreResult<(Vec<QueueMessage>, u64)> {
        delegate!(self, AsStore::dequeue_direct(fid, client_id, start, max))
    }

    async fn ca_history(&self) -> StoreResult<Vec<CaRecord>> {
        delegate!(self, AsStore::ca_history())
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        delegate!(self, AsStore::insert_ca(ca))
    }

    async fn renew_client(
        &self,
        client: &AsClientRecord,
        replay: &ReplayRecord,
    ) -> StoreResult<bool> {
        delegate!(self, AsStore::renew_client(client, replay))
    }
}

impl QsStore for Store {
    async fn queue_config_key(&self) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        delegate!(self, QsStore::queue_config_key())
    }

    async fn insert_queue_config_key(&self, private: &[u8], public: &[u8]) -> StoreResult<bool> {
        delegate!(self, QsStore::insert_queue_config_key(private, public))
    }

    async fn create_user(
        &self,
        user: &QsUserRecord,
        client: &QsClientRecord,
    ) -> StoreResult<CreateQsUser> {
        delegate!(self, QsStore::create_user(user, client))
    }

    async fn user(&self, user_id: &QsId) -> StoreResult<Option<QsUserRecord>> {
        delegate!(self, QsStore::user(user_id))
    }

    async fn user_by_friendship_token_hash(
        &self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<QsUserRecord>> {
        delegate!(self, QsStore::user_by_friendship_token_hash(hash))
    }

    async fn clients_of_user(&self, user_id: &QsId) -> StoreResult<Vec<QsClientRecord>> {
        delegate!(self, QsStore::clients_of_user(user_id))
    }

    async fn client(&self, client_id: &QsId) -> StoreResult<Option<QsClientRecord>> {
        delegate!(self, QsStore::client(client_id))
    }

    async fn replace_key_packages(
        &self,
        client_id: &QsId,
        packages: &[StoredKeyPackage],
        replay: &ReplayRecord,
    ) -> StoreResult<()> {
        delegate!(
            self,
            QsStore::replace_key_packages(client_id, packages, replay)
        )
    }

    async fn take_key_packages(&self, user_id: &QsId) -> StoreResult<Vec<(QsId, Vec<u8>)>> {
        delegate!(self, QsStore::take_key_packages(user_id))
    }

    async fn enqueue(
        &self,
        entries: &[EnqueueEntry],
        sealer: &queue_sealing::QueueSealer,
    ) -> StoreResult<Vec<Option<u64>>> {
        delegate!(self, QsStore::enqueue(entries, sealer))
    }

    async fn key_package_status(&self, client_id: &QsId) -> StoreResult<Option<KeyPackageStatus>> {
        delegate!(self, QsStore::key_package_status(client_id))
    }

    async fn rekey_queue(
        &self,
        client_id: &QsId,
        keys: &QueueKeys,
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        delegate!(self, QsStore::rekey_queue(client_id, keys, replay))
    }

    async fn dequeue(
        &self,
        client_id: &QsId,
        start: u64,
        max: u32,
    ) -> StoreResult<(Vec<QueueMessage>, u64)> {
        delegate!(self, QsStore::dequeue(client_id, start, max))
    }

    async fn server_key(&self, name: &str) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        delegate!(self, QsStore::server_key(name))
    }

    async fn insert_server_key(
        &self,
        name: &str,
        private: &[u8],
        public: &[u8],
    ) -> StoreResult<bool> {
        delegate!(self, QsStore::insert_server_key(name, private, public))
    }

    async fn enqueue_federated(
        &self,
        sender: &str,
        message_id: &[u8; 16],
        now: u64,
        entry: &EnqueueEntry,
        sealer: &queue_sealing::QueueSealer,
    ) -> StoreResult<FederatedEnqueue> {
        delegate!(
            self,
            QsStore::enqueue_federated(sender, message_id, now, entry, sealer)
        )
    }
}

impl DsStore for Store {
    async fn reserve_group_id(&self, group_id: &[u8], expires_at: u64) -> StoreResult<bool> {
        delegate!(self, DsStore::reserve_group_id(group_id, expires_at))
    }

    async fn create_group(
        &self,
        group_id: &[u8],
        ciphertext: &[u8],
        now: u64,
        replay: &ReplayRecord,
    ) -> StoreResult<CreateGroup> {
        delegate!(
            self,
            DsStore::create_group(group_id, ciphertext, now, replay)
        )
    }

    async fn group(&self, group_id: &[u8]) -> StoreResult<Option<StoredGroup>> {
        delegate!(self, DsStore::group(group_id))
    }

    async fn update_group(
        &self,
        group_id: &[u8],
        expected_version: u64,
        ciphertext: &[u8],
        now: u64,
        outbox: &[OutboxEntry],
        replay: &ReplayRecord,
    ) -> StoreResult<Option<Vec<i64>>> {
        delegate!(
            self,
            DsStore::update_group(group_id, expected_version, ciphertext, now, outbox, replay)
        )
    }

    async fn append_message_outbox(
        &self,
        digest: &[u8; 32],
        received_at: u64,
        outbox: &[OutboxEntry],
    ) -> StoreResult<Option<Vec<i64>>> {
        delegate!(
            self,
            DsStore::append_message_outbox(digest, received_at, outbox)
        )
    }

    async fn due_outbox(&self, now: u64, limit: u32) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        delegate!(self, DsStore::due_outbox(now, limit))
    }

    async fn delete_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        delegate!(self, DsStore::delete_outbox(ids))
    }

    async fn postpone_outbox(&self, id: i64, next_attempt_at: u64) -> StoreResult<()> {
        delegate!(self, DsStore::postpone_outbox(id, next_attempt_at))
    }

    async fn outbox_attempts(&self, id: i64) -> StoreResult<u32> {
        delegate!(self, DsStore::outbox_attempts(id))
    }

    async fn outbox_summary(&self, now: u64) -> StoreResult<Vec<OutboxSummary>> {
        delegate!(self, DsStore::outbox_summary(now))
    }

    async fn claim_outbox(
        &self,
        ids: &[i64],
        local: &str,
        now: u64,
        lease_until: u64,
    ) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        delegate!(self, DsStore::claim_outbox(ids, local, now, lease_until))
    }

    async fn claim_due_outbox(
        &self,
        local: &str,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        delegate!(
            self,
            DsStore::claim_due_outbox(local, now, lease_until, limit)
        )
    }

    async fn release_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        delegate!(self, DsStore::release_outbox(ids))
    }

    async fn postpone_destination(
        &self,
        destination: &str,
        failed: i64,
        next_attempt_at: u64,
    ) -> StoreResult<()> {
        delegate!(
            self,
            DsStore::postpone_destination(destination, failed, next_attempt_at)
        )
    }
}

// Conversions shared by the backends. Both databases store integers as signed 64 bits;
// a silent `as` cast would turn a large `u64` into a negative number (or back), so every
// crossing is checked.

/// A `u64` that is about to be stored.
fn to_db(value: u64) -> StoreResult<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::Corrupt("value does not fit a signed 64-bit column"))
}

/// A stored signed 64-bit value that must be a `u64`.
fn from_db(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative value in an unsigned column"))
}

/// A `u64` used only as a lower bound in a comparison (a dequeue start, a clock reading).
/// It comes from a request, so it must not turn into a storage error: clamping is exact
/// because no stored value is above `i64::MAX`, and sequence numbers, counted from zero,
/// never come near it.
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Where the rest of a queue starts after a page of it: after the last message returned,
/// or at `start` if the page is empty. Used to count what remains.
fn after_page(messages: &[QueueMessage], start: i64) -> StoreResult<i64> {
    match messages.last() {
        Some(last) => Ok(to_db(last.sequence_number)?.saturating_add(1)),
        None => Ok(start),
    }
}

/// A stored blob that must be exactly `N` bytes (keys, ids, hashes).
fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> StoreResult<[u8; N]> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(what))
}

/// The month of a unix time in seconds, as `YYYY-MM` (UTC). Groups keep only this in
/// clear as their activity time, so that expiry can be decided without a finer timestamp.
fn month(unix_seconds: u64) -> String {
    // Howard Hinnant's `civil_from_days`, in unsigned arithmetic: days since 1970-01-01
    // shifted to an era starting on 0000-03-01.
    let z = unix_seconds / 86_400 + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_of_known_dates() {
        assert_eq!(month(0), "1970-01");
        // 2000-02-29T23:59:59Z and the second after it.
        assert_eq!(month(951_868_799), "2000-02");
        assert_eq!(month(951_868_800), "2000-03");
        // 2026-11-15T00:00:00Z.
        assert_eq!(month(1_794_700_800), "2026-11");
        // 2024-12-31T23:59:59Z and 2025-01-01T00:00:00Z.
        assert_eq!(month(1_735_689_599), "2024-12");
        assert_eq!(month(1_735_689_600), "2025-01");
    }

    #[test]
    fn integer_conversions_are_checked() {
        assert!(to_db(u64::MAX).is_err());
        assert_eq!(to_db(5).ok(), Some(5));
        assert!(from_db(-1).is_err());
        assert_eq!(bound(u64::MAX), i64::MAX);
    }
}
