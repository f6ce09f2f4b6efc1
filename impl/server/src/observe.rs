//! The honest-but-curious operator's observation tap: a test-only record of the identifiers
//! each request handler saw, so that tests can check what an operator who reads the
//! server's memory (but does not interfere) learns from each request
//! (Requirement: ADV-OP-1, ADV-OP-2, ADV-OP-3).
//!
//! What this module is responsible for: the tap calls (`observe!`, `observe_request!`,
//! `observe_detached!`) that the handlers of the AS, QS and DS operations, federated
//! enqueue and the polyproto routes make where they learn an identifier (after
//! authentication or decoding), and, with the `observe` cargo feature, the in-memory record
//! of them that tests read through `crate::server::Server::observations`. What it is not:
//! logging, metrics, or anything an operator can switch on in a deployment.
//!
//! Two switches, both off by default:
//! - the cargo feature `observe`. Without it every tap call expands to `()` (or to the
//!   wrapped future itself), its arguments are dropped unexpanded, and this module defines
//!   nothing but the macros and a unit-valued `source` filter: release builds and the `phoenix-server` binary as built for
//!   deployment never contain the tap. Only `threat-model-tests` enables the feature, as a
//!   dev-dependency.
//! - the runtime switch `Observer::start`, reachable only from code linked into the
//!   server's process (the tests' in-process servers); no flag, file or environment
//!   variable sets it. It exists because cargo unifies features across a workspace build:
//!   `cargo test --workspace` compiles `phoenix-server` once, with `observe` on, also for
//!   the binary the end-to-end tests start. In such a build the tap is inert: every call
//!   costs one task-local lookup that finds no open request, and records nothing.
//!
//! A request is observed from the moment its handler starts (`observe_request!`, at the
//! HTTP boundary for the Phoenix operations, in the route for polyproto) to its end; every
//! `observe!` call in between adds to that request's set (through a tokio task-local, so
//! handlers take no extra argument). Work the server does on its own, outside requests,
//! is recorded as its own entry (`observe_detached!` or a nested `observe_request!`
//! without a source): the delivery of fan-out messages to local queues ("qs"/"enqueue"),
//! even when it runs inline right after a DS request, is a separate step of a separate
//! service, and is recorded as such.

/// Record identifiers the current request's handler saw: `observe!(iterable of Observed)`.
/// Outside an observed request (or without the `observe` feature) this does nothing and
/// does not evaluate its argument.
// Requirement: ADV-OP-3
#[cfg(feature = "observe")]
macro_rules! observe {
    ($seen:expr $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::observe::Observed;
        $crate::observe::see(|| $seen);
    }};
}
#[cfg(not(feature = "observe"))]
macro_rules! observe {
    ($seen:expr $(,)?) => {
        ()
    };
}

/// Run the future `$fut` as one observed request of `$service`/`$operation` from the
/// source address `$source` (an `Option<IpAddr>`); evaluates to the future. Without the
/// feature, it is `$fut` itself.
/// `observe_request!(server, service, operation, future)` is the server's own work,
/// without a source.
#[cfg(feature = "observe")]
macro_rules! observe_request {
    ($server:expr, $service:expr, $operation:expr, $source:expr, $fut:expr $(,)?) => {
        $crate::observe::scope(&$server.observer, $service, $operation, $source, $fut)
    };
    ($server:expr, $service:expr, $operation:expr, $fut:expr $(,)?) => {
        $crate::observe::scope(&$server.observer, $service, $operation, None, $fut)
    };
}
#[cfg(not(feature = "observe"))]
macro_rules! observe_request {
    ($server:expr, $service:expr, $operation:expr, $source:expr, $fut:expr $(,)?) => {{
        let _ = &$source;
        $fut
    }};
    ($server:expr, $service:expr, $operation:expr, $fut:expr $(,)?) => {
        $fut
    };
}

/// Record one complete observation of its own (work outside any request, or a handler
/// without async work): `observe_detached!(server, service, operation, source, seen)`.
#[cfg(feature = "observe")]
#[allow(unused_macros)]
macro_rules! observe_detached {
    ($server:expr, $service:expr, $operation:expr, $source:expr, $seen:expr $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::observe::Observed;
        $server
            .observer
            .record($service, $operation, $source, || $seen);
    }};
}
#[cfg(not(feature = "observe"))]
#[allow(unused_macros)]
macro_rules! observe_detached {
    ($server:expr, $service:expr, $operation:expr, $source:expr, $seen:expr $(,)?) => {{
        let _ = &$source;
    }};
}

/// The source address of a request for the tap, as a warp filter: the peer's IP with the
/// feature, nothing (a unit value) without it.
#[cfg(feature = "observe")]
pub fn source() -> impl warp::Filter<Extract = (Source,), Error = std::convert::Infallible> + Clone
{
    use warp::Filter;
    crate::edge::remote().map(|peer: Option<std::net::SocketAddr>| peer.map(|p| p.ip()))
}
#[cfg(not(feature = "observe"))]
pub fn source() -> impl warp::Filter<Extract = (Source,), Error = std::convert::Infallible> + Clone
{
    use warp::Filter;
    warp::any().map(|| ())
}

/// What `source` extracts: the request's source IP with the feature, `()` without.
#[cfg(feature = "observe")]
pub type Source = Option<std::net::IpAddr>;
#[cfg(not(feature = "observe"))]
pub type Source = ();

#[cfg(feature = "observe")]
pub use tap::{Observation, Observed, Observer, scope, see};

#[cfg(feature = "observe")]
mod tap {
    use std::collections::BTreeSet;
    use std::future::Future;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use phoenix_types::codec;
    use phoenix_types::crypto::sha256;
    use phoenix_types::messages::ds::QueuePayload;
    use phoenix_types::messages::qs::SealedQueueConfig;

    /// One identifier a handler saw. Variable-length values that are secret-free but long
    /// (ciphertexts, certificates, key packages) are recorded by their SHA-256.
    ///
    /// The classes (which values are a real identity, which a QS pseudonym, which a
    /// per-group pseudonym) are deliberately not decided here: the tests that read the
    /// tap classify every variant themselves, exhaustively.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Observed {
        // --- the network ----------------------------------------------------------------
        /// The address the request came from (as the rate limiter determines it for the
        /// Phoenix operations; the TCP peer for the polyproto routes).
        SourceIp(IpAddr),
        /// The homeserver a federated message claims to come from.
        PeerDomain(String),

        // --- the AS: real identities ----------------------------------------------------
        /// A Federation ID (`local@domain`): the caller's or the one asked about.
        Fid(String),
        /// An AS client id (the polyproto session id).
        AsClientId(String),
        /// A client's ID-Cert, by the SHA-256 of its DER.
        ClientCertificate([u8; 32]),
        /// A client certificate's serial (hex or decimal, as the handler had it).
        CertificateSerial(String),
        /// A connection package, by the SHA-256 of its encoding.
        ConnectionPackage([u8; 32]),
        /// A polyproto session token, by its SHA-256 (as stored).
        SessionToken([u8; 32]),

        // --- the QS: pseudonyms ---------------------------------------------------------
        /// A QS user record id.
        QsUserId([u8; 16]),
        /// A QS client record id (also what an opened queue config names).
        QsClientId([u8; 16]),
        /// A QS user or client auth key (Ed25519 public key).
        QsAuthKey([u8; 32]),
        /// The SHA-256 of a friendship token (the QS's index of a user).
        FriendshipTokenHash([u8; 32]),
        /// A key package, by the SHA-256 of its TLS encoding.
        KeyPackage([u8; 32]),

        // --- the DS: per-group pseudonyms -----------------------------------------------
        /// A group id (qualified with the hosting domain).
        GroupId(Vec<u8>),
        /// A member's position in a group's tree (meaningful only with the group).
        LeafIndex(u32),
        /// A leaf's signature public key.
        LeafKey(Vec<u8>),
        /// The pseudonym in a leaf's basic credential.
        LeafCredential(Vec<u8>),
        /// A sealed queue config (HPKE ciphertext to the QS's key), by its SHA-256.
        SealedQueueConfig([u8; 32]),
        /// A member's encrypted credential (AEAD ciphertext under the group's credential
        /// key), by its SHA-256.
        EncryptedCredential([u8; 32]),
    }

    impl Observed {
        /// A client certificate, by the SHA-256 of its DER.
        pub fn certificate(der: &[u8]) -> Self {
            Self::ClientCertificate(sha256(der))
        }

        /// A connection package, by the SHA-256 of its encoding.
        pub fn connection_package(encoded: &[u8]) -> Self {
            Self::ConnectionPackage(sha256(encoded))
        }

        /// A key package, by the SHA-256 of its TLS encoding.
        pub fn key_package(encoded: &[u8]) -> Self {
            Self::KeyPackage(sha256(encoded))
        }

        /// A sealed queue config, by the SHA-256 of its encoding (the same bytes in a key
        /// package's extension, in the DS's member entry and in an outbox entry).
        pub fn sealed_queue_config(sealed: &SealedQueueConfig) -> Self {
            Self::SealedQueueConfig(sha256(&codec::encode(sealed).unwrap_or_default()))
        }

        /// An encrypted credential, by the SHA-256 of the ciphertext.
        pub fn encrypted_credential(ciphertext: &[u8]) -> Self {
            Self::EncryptedCredential(sha256(ciphertext))
        }

        /// The group a queue payload (what the DS fans out) names in clear, if it decodes.
        pub fn payload_group(payload: &[u8]) -> Option<Self> {
            match codec::decode::<QueuePayload>(payload, usize::MAX).ok()? {
                QueuePayload::GroupMessage(m) => {
                    Some(Self::GroupId(m.group_id.as_slice().to_vec()))
                }
                QueuePayload::Welcome(w) => Some(Self::GroupId(w.group_id.as_slice().to_vec())),
            }
        }

        /// A leaf of a group's tree: its signature key and the pseudonym in its credential.
        pub fn leaf(signature_key: &[u8], credential: &openmls::prelude::Credential) -> [Self; 2] {
            [
                Self::LeafKey(signature_key.to_vec()),
                Self::LeafCredential(credential.serialized_content().to_vec()),
            ]
        }
    }

    /// What one request (or one piece of the server's own work) showed its handler.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Observation {
        /// Increasing per server, in the order the requests started.
        pub request: u64,
        /// `as`, `qs`, `ds`, `federation` or `polyproto`.
        pub service: String,
        pub operation: String,
        pub seen: BTreeSet<Observed>,
    }

    /// The tap of one server: off until a test starts it.
    #[derive(Debug, Default)]
    pub struct Observer {
        on: AtomicBool,
        next: AtomicU64,
        records: Mutex<Vec<Arc<Mutex<Observation>>>>,
    }

    tokio::task_local! {
        /// The request being observed on this task.
        static CURRENT: Arc<Mutex<Observation>>;
    }

    impl Observer {
        // Requirement: ADV-OP-3
        /// Start recording (tests only: nothing in the server or its configuration calls
        /// this).
        pub fn start(&self) {
            self.on.store(true, Ordering::SeqCst);
        }

        pub fn stop(&self) {
            self.on.store(false, Ordering::SeqCst);
        }

        pub fn is_on(&self) -> bool {
            self.on.load(Ordering::SeqCst)
        }

        /// Every observation so far, in the order the requests started.
        pub fn observations(&self) -> Vec<Observation> {
            let records = match self.records.lock() {
                Ok(records) => records.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            records
                .iter()
                .map(|r| match r.lock() {
                    Ok(o) => o.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                })
                .collect()
        }

        /// Open a record (if recording).
        fn open(
            &self,
            service: &str,
            operation: &str,
            source: Option<IpAddr>,
        ) -> Option<Arc<Mutex<Observation>>> {
            if !self.is_on() {
                return None;
            }
            let record = Arc::new(Mutex::new(Observation {
                request: self.next.fetch_add(1, Ordering::SeqCst),
                service: service.to_owned(),
                operation: operation.to_owned(),
                seen: source.map(Observed::SourceIp).into_iter().collect(),
            }));
            match self.records.lock() {
                Ok(mut records) => records.push(record.clone()),
                Err(poisoned) => poisoned.into_inner().push(record.clone()),
            }
            Some(record)
        }

        /// One complete observation (see `observe_detached!`).
        pub fn record<I: IntoIterator<Item = Observed>>(
            &self,
            service: &str,
            operation: &str,
            source: Option<IpAddr>,
            seen: impl FnOnce() -> I,
        ) {
            if let Some(record) = self.open(service, operation, source) {
                add(&record, seen());
            }
        }
    }

    fn add(record: &Mutex<Observation>, seen: impl IntoIterator<Item = Observed>) {
        match record.lock() {
            Ok(mut o) => o.seen.extend(seen),
            Err(poisoned) => poisoned.into_inner().seen.extend(seen),
        }
    }

    /// Run `fut` as one observed request (see `observe_request!`). A request nested in
    /// another (the local delivery run inline after a DS request) is recorded on its own.
    pub async fn scope<F: Future>(
        observer: &Observer,
        service: impl AsRef<str>,
        operation: impl AsRef<str>,
        source: Option<IpAddr>,
        fut: F,
    ) -> F::Output {
        match observer.open(service.as_ref(), operation.as_ref(), source) {
            Some(record) => CURRENT.scope(record, fut).await,
            None => fut.await,
        }
    }

    /// Add to the current request's record, if one is open (see `observe!`).
    pub fn see<I: IntoIterator<Item = Observed>>(seen: impl FnOnce() -> I) {
        let _ = CURRENT.try_with(|record| add(record, seen()));
    }
}
