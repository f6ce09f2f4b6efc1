//! The operations a user performs, each a complete protocol flow against the server:
//! registration, connection establishment (connect / requests / accept), groups (create,
//! invite, members), sending, and sync (processing the QS queue).
//!
//! Every operation loads the openmls state from the local store and saves it only when
//! the operation succeeded; a failed operation leaves the local state as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use openmls::prelude::{
    Extension, Extensions, GroupId, KeyPackage, KeyPackageIn, LeafNodeParameters, MlsGroup,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, ProtocolVersion, RatchetTreeIn,
    Sender, UnknownExtension,
};
use openmls_traits::OpenMlsProvider;
use rand_core::{OsRng, RngCore};
use serde_json::json;
use tls_codec::{Deserialize, Serialize, VLBytes};

use phoenix_types::cacheable::CacheableIdCertIn;
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::codec;
use phoenix_types::crypto::{self, HpkeKeyPair, SymmetricKey, hpke_info, label};
use phoenix_types::discovery::Resolver;
use phoenix_types::ids::{ClientId, Domain, Fid, QualifiedGroupId};
pub use phoenix_types::messages::Notification;
use phoenix_types::messages::as_::{self, ConnectionPackage, ConnectionPackagePayload};
use phoenix_types::messages::client::{
    ADD_PACKAGE_AAD, ApplicationPayload, ClientCredentialInfo, ConnectionEstablishmentPackage,
    ConnectionEstablishmentTbs, FriendshipPackage, WelcomeAttributionInfo, WelcomeAttributionTbs,
};
use phoenix_types::messages::ds::{
    self, AddedMember, GroupMessage, MemberInfo, QueuePayload, WelcomeBundle,
};
use phoenix_types::messages::qs::{
    self, AddPackage, QUEUE_CONFIG_EXTENSION_TYPE, QueueConfig, SealedQueueConfig,
};
use phoenix_types::messages::{DequeueRequest, DequeueResponse, Empty};

use crate::api::{Api, Signer};
pub use listen::ListenEnd;
pub use overview::GroupSummary;
use recovery::CommitAftermath;

mod group_tokens;
mod listen;
mod overview;
pub mod push;
pub mod queue_entry;
mod recovery;
mod registration;
mod rekey_queue;
mod resync;
use crate::error::{ClientError, mls_err, usage, verification};
use crate::mls::{self, CIPHERSUITE, Provider};
use crate::store::{
    ConnectionRequest, Contact, Group, Identity, PendingConnection, Store, StoredMessage,
};
use crate::verify::{self, VerifiedMember};

/// One-time connection packages published per upload (plus one last-resort).
const CONNECTION_PACKAGES: usize = 5;
/// One-time key packages published per upload (plus one last-resort).
const KEY_PACKAGES: usize = 5;
/// Fewer one-time key packages than this left at the QS: `sync` publishes a fresh set
/// (CL-KP-1).
const KEY_PACKAGES_LOW: u64 = 2;
/// How long published connection packages are valid (seconds).
const CONNECTION_PACKAGE_LIFETIME: u64 = 30 * 24 * 3600;
/// What processing queue messages produced so far (one `sync`, or one listen session).
#[derive(Debug, Default)]
pub(crate) struct QueueProgress {
    pub(crate) events: Vec<serde_json::Value>,
    /// A Welcome was processed: publish fresh key packages afterwards.
    pub(crate) joined: bool,
    /// Groups resynced already (at most once each).
    pub(crate) resynced: BTreeSet<Vec<u8>>,
    /// The queue's chain broke: re-key it afterwards (QS-ENC-4).
    pub(crate) rekey: bool,
}

/// Messages fetched per dequeue round.
const DEQUEUE_BATCH: u16 = 100;

/// Whether an opened queue entry broke the chain (kept apart from the payload it moved).
enum OpenedKind {
    ChainBroken,
    Other,
}
/// Prefix of the local names of connection groups (user group names may not start with it).
const CONNECTION_GROUP_PREFIX: &str = "@contact:";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b
}

/// A foreign session is renewed after this long (seconds), well within the server's own
/// lifetime for it (a week, or the certificate's end).
const SESSION_RENEWAL: u64 = 24 * 3600;
/// Tolerated clock difference with a home server's cache window (seconds).
const CLOCK_SKEW: u64 = 60;

/// Which operations on other homeservers carry this client's foreign session there (see
/// docs/identity.md, "What a session tells the remote server").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteSessions {
    /// None: every remote operation is anonymous to the remote server, limited per address.
    Off,
    /// The AS operations (connection-package fetches, direct-queue enqueues), whose requests
    /// name only identities already. The default.
    #[default]
    As,
    /// Also the QS key-package fetches and the DS operations, which tells the remote
    /// server's operator which pseudonymous user's key packages, and which groups, go with
    /// this client's FID: opt-in.
    All,
}

impl RemoteSessions {
    fn covers(self, service: &str) -> bool {
        match self {
            Self::Off => false,
            Self::As => service == "as",
            Self::All => true,
        }
    }
}

impl std::str::FromStr for RemoteSessions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "as" => Ok(Self::As),
            "all" => Ok(Self::All),
            other => Err(format!(
                "invalid remote-sessions setting {other:?}: expected off, as or all"
            )),
        }
    }
}

/// Where the client fetches a domain's CA certificates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaSource {
    /// Our own homeserver's cache.
    Home,
    /// The domain's own homeserver.
    Issuer,
}

impl CaSource {
    fn name(self) -> &'static str {
        match self {
            Self::Home => "own server",
            Self::Issuer => "issuing server",
        }
    }
}

/// The longest cache window polyproto allows (12 hours).
const MAX_CACHE_WINDOW: u64 = 12 * 3600;
/// Most certificates one `idcert/actor` answer may hold.
const MAX_VOUCHED: usize = 1024;

/// A certificate as its home server vouched for it (verified).
#[derive(Debug, Clone)]
struct Vouched {
    cert: ParsedCert,
    invalidated_at: Option<u64>,
    not_valid_after: u64,
}

/// What `certificates FID` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActorCertificates {
    pub fid: String,
    /// `own server` (its cache) or `issuing server`.
    pub source: &'static str,
    pub certificates: Vec<VouchedCertificate>,
}

/// One certificate of [`ActorCertificates`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct VouchedCertificate {
    pub client_id: String,
    pub fingerprint: String,
    /// Unsigned decimal.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalidated_at: Option<u64>,
    /// Until when the home server's statement may be relied on.
    pub cache_not_valid_after: u64,
}

/// What `register` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registration {
    pub fid: String,
    pub client_id: String,
    pub server: String,
    pub ca_fingerprint: String,
}

/// What `renew` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Renewal {
    pub fingerprint: String,
    pub not_after: u64,
    pub groups_updated: usize,
}

/// A group member as shown to the user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberView {
    pub leaf_index: u32,
    pub fid: Option<String>,
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Whether the member is a pinned client of a contact (absent when the chain did not
    /// verify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinStatus>,
}

/// A contact as shown to the user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContactView {
    pub fid: String,
    pub status: String,
    /// SHA-256 fingerprints of the contact's pinned client certificates.
    pub clients: Vec<String>,
    /// The fingerprint code of the pinned clients, as `phoenix fingerprint FID` prints it
    /// (none while no client is pinned yet) (Requirement: CLI-FMT-1).
    pub code: Option<String>,
    /// `unverified`, `verified` (out of band, `phoenix verify`) or `changed` (verified, but
    /// the contact's pinned clients changed since).
    pub verification: &'static str,
}

/// How a group member whose chain verified stands against what this client trusts for its
/// FID (Requirement: ID-PIN-1, ID-PIN-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinStatus {
    /// This client itself.
    Own,
    /// A client of a contact, with a certificate pinned in the connection group.
    Pinned,
    /// The FID of a contact (or our own), but not one of its pinned clients: for example a
    /// credential minted by the contact's server. Shown as not verified.
    Unpinned,
    /// Not a contact; the first certificate seen for this FID (trust on first use).
    Unknown,
    /// Not a contact, and not the first certificate seen for this FID: a change to check.
    Changed,
}

/// A member's [`PinStatus`], with what to tell the user when it is not plainly trusted.
#[derive(Debug, Clone)]
pub struct Standing {
    pub status: PinStatus,
    pub problem: Option<String>,
}

/// What `fingerprint` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FingerprintView {
    pub fid: String,
    /// The comparable code (docs/identity.md, "Out-of-band verification").
    pub code: String,
    /// SHA-256 fingerprints of the certificates the code covers.
    pub clients: Vec<String>,
    /// For a contact: `unverified`, `verified` or `changed`; for yourself: `own`.
    pub verification: &'static str,
}

/// A Phoenix client with its state directory.
pub struct Client {
    home: PathBuf,
    store: Store,
    provider: Provider,
    sync_before_commit: bool,
    remote_sessions: RemoteSessions,
    /// Held for the client's lifetime: one writer per state directory.
    _lock: crate::lock::StateLock,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Open the client state in `home` (created if missing).
    ///
    /// Takes the state directory's lock first (one writer per client state): a second
    /// process waits up to [`crate::lock::DEFAULT_WAIT`] (`PHOENIX_LOCK_WAIT_SECS`
    /// overrides it), then fails naming the holder.
    pub async fn open(home: &Path) -> Result<Self, ClientError> {
        let wait = std::env::var("PHOENIX_LOCK_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| std::time::Duration::from_secs(s.min(3600)))
            .unwrap_or(crate::lock::DEFAULT_WAIT);
        std::fs::create_dir_all(home)
            .map_err(|e| ClientError::Store(format!("cannot create {}: {e}", home.display())))?;
        let lock = crate::lock::StateLock::acquire(home, wait).await?;
        let store = Store::open(home).await?;
        let provider = Provider::from_values(store.load_mls().await?);
        Ok(Self {
            home: home.to_owned(),
            store,
            provider,
            sync_before_commit: true,
            remote_sessions: RemoteSessions::default(),
            _lock: lock,
        })
    }

    /// Which operations on other homeservers carry a foreign session (default: the AS
    /// ones).
    pub fn set_remote_sessions(&mut self, setting: RemoteSessions) {
        self.remote_sessions = setting;
    }

    /// Whether operations that send to a group (send, invite, update, remove) first process
    /// the queue so that they act on the group's latest epoch (default: on). Turned off, a
    /// commit may be for an outdated epoch and the DS answers `WRONG_EPOCH`.
    pub fn set_sync_before_commit(&mut self, on: bool) {
        self.sync_before_commit = on;
    }

    async fn save(&self) -> Result<(), ClientError> {
        self.store.save_mls(&self.provider.values()?).await
    }

    /// Drop unsaved openmls changes after a failed operation.
    async fn rollback(&mut self) -> Result<(), ClientError> {
        self.provider = Provider::from_values(self.store.load_mls().await?);
        Ok(())
    }

    async fn finish<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        match result {
            Ok(v) => {
                self.save().await?;
                Ok(v)
            }
            Err(e) => {
                self.rollback().await?;
                Err(e)
            }
        }
    }

    async fn identity(&self) -> Result<Identity, ClientError> {
        self.store.identity().await?.ok_or_else(|| {
            usage(format!(
                "no identity in {}: run `phoenix register FID --server URL` first",
                self.home.display()
            ))
        })
    }

    /// The FID of this client, if registered.
    pub async fn fid(&self) -> Result<Option<String>, ClientError> {
        Ok(self.store.identity().await?.map(|i| i.fid))
    }

    fn signing_key(id: &Identity) -> SigningKey {
        SigningKey::from_bytes(&id.signing_key)
    }

    fn api(id: &Identity) -> Result<Api, ClientError> {
        Api::new(&id.server_url)
    }

    fn as_signer<'a>(id: &'a Identity, key: &'a SigningKey) -> Signer<'a> {
        Signer::AsClient {
            fid: &id.fid,
            client_id: &id.client_id,
            key,
        }
    }

    /// Remember where to reach other homeservers (`DOMAIN=URL`, like curl's --resolve).
    pub async fn add_resolve(&self, entries: &[String]) -> Result<(), ClientError> {
        let resolver = Resolver::parse(entries.iter().map(String::as_str))
            .map_err(|e| usage(e.to_string()))?;
        for entry in resolver.entries() {
            if let Some((domain, url)) = entry.split_once('=') {
                self.store.put_resolve(domain, url).await?;
            }
        }
        Ok(())
    }

    async fn resolver(&self) -> Result<Resolver, ClientError> {
        let entries = self.store.resolve_entries().await?;
        Resolver::parse(entries.iter().map(String::as_str))
            .map_err(|e| ClientError::Store(e.to_string()))
    }

    /// The API of `domain`'s homeserver: ours, or another one (federation).
    async fn api_for(&self, id: &Identity, domain: &str) -> Result<Api, ClientError> {
        if domain == id.qs_domain {
            return Self::api(id);
        }
        let domain = Domain::parse(domain).map_err(|e| verification(e.to_string()))?;
        Api::new(&self.resolver().await?.url(&domain))
    }

    /// Call a DS operation at the DS that hosts `group_id`.
    async fn ds_call<Req: Serialize, Resp: Deserialize>(
        &self,
        id: &Identity,
        group_id: &[u8],
        operation: &str,
        payload: &Req,
        signer: Signer<'_>,
    ) -> Result<Resp, ClientError> {
        let gid = QualifiedGroupId::parse(group_id).map_err(|e| verification(e.to_string()))?;
        self.call_at(id, gid.domain().as_str(), "ds", operation, payload, signer)
            .await
    }

    // Requirement: RL-SESSION-3
    /// Call `service/operation` at `domain`'s server (ours, or another one). On another
    /// server, the request carries this client's foreign session there as a bearer token
    /// when [`RemoteSessions`] allows it for `service` (the server then counts the request
    /// against the session's quota rather than only its address's); a token the server
    /// refuses (`UNAUTHENTICATED`: expired, ended, revoked) is dropped, a new session
    /// opened, and the request sent once more.
    async fn call_at<Req: Serialize, Resp: Deserialize>(
        &self,
        id: &Identity,
        domain: &str,
        service: &str,
        operation: &str,
        payload: &Req,
        signer: Signer<'_>,
    ) -> Result<Resp, ClientError> {
        let api = self.api_for(id, domain).await?;
        let token = self.session_token(id, &api, domain, service, false).await;
        let result = api
            .call_in_session(service, operation, payload, signer, token.as_deref())
            .await;
        match result {
            Err(e) if token.is_some() && e.code() == Some("UNAUTHENTICATED") => {
                let token = self.session_token(id, &api, domain, service, true).await;
                api.call_in_session(service, operation, payload, signer, token.as_deref())
                    .await
            }
            other => other,
        }
    }

    /// This client's session token on `domain`'s server for a `service` operation: `None`
    /// for our own server, when the setting excludes `service`, or when no session can be
    /// opened (the request then goes without one and counts against the address's limits;
    /// the reason is logged). `renew` drops the stored token first.
    async fn session_token(
        &self,
        id: &Identity,
        api: &Api,
        domain: &str,
        service: &str,
        renew: bool,
    ) -> Option<String> {
        if domain == id.qs_domain || !self.remote_sessions.covers(service) {
            return None;
        }
        let result = async {
            let serial = phoenix_types::cacheable::decimal(
                &ParsedCert::parse(&id.certificate)
                    .map_err(|e| ClientError::Store(format!("our own certificate: {e}")))?
                    .serial,
            );
            if renew {
                self.store.delete_session(domain).await?;
            } else if let Some((token, stored_serial, expires_at)) =
                self.store.session(domain).await?
                && stored_serial == serial
                && expires_at > now()
            {
                return Ok(token);
            }
            self.open_session(id, api, domain, &serial).await
        }
        .await;
        match result {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::warn!(error = %e, %domain, "cannot open a session; going without one");
                None
            }
        }
    }

    /// Open a foreign session on `domain`'s server: answer its key trial with our ID-Cert
    /// key (polyproto `session/auth`); the token is stored until [`SESSION_RENEWAL`] or our
    /// certificate's end, whichever comes first.
    async fn open_session(
        &self,
        id: &Identity,
        api: &Api,
        domain: &str,
        serial: &str,
    ) -> Result<String, ClientError> {
        let malformed = |what: &str| ClientError::Transport(format!("{domain}: {what}"));
        let trial: serde_json::Value =
            serde_json::from_slice(&api.get_json("/.p2/core/v1/session/auth").await?)
                .map_err(|_| malformed("malformed key trial"))?;
        let trial = trial
            .get("trial")
            .and_then(serde_json::Value::as_str)
            .filter(|t| (32..=256).contains(&t.len()))
            .ok_or_else(|| malformed("malformed key trial"))?;
        let signature =
            ed25519_dalek::Signer::sign(&Self::signing_key(id), trial.as_bytes()).to_bytes();
        let body = serde_json::to_vec(&json!({
            "fid": id.fid,
            "serialNumber": serial,
            "signature": hex::encode(signature),
            "trial": trial,
        }))
        .map_err(|e| ClientError::Usage(e.to_string()))?;
        let answer: serde_json::Value =
            serde_json::from_slice(&api.post_json("/.p2/core/v1/session/auth", body).await?)
                .map_err(|_| malformed("malformed session answer"))?;
        let token = answer
            .get("token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| malformed("malformed session token"))?
            .to_owned();
        let not_after = ParsedCert::parse(&id.certificate)
            .map(|c| c.not_after)
            .unwrap_or(0);
        let expires_at = now().saturating_add(SESSION_RENEWAL).min(not_after);
        self.store
            .put_session(domain, &token, serial, expires_at)
            .await?;
        Ok(token)
    }

    /// The CA certificates known for `domain`; fetched when none is known yet.
    async fn cas_for(&self, domain: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let cas = self.store.cas(domain).await?;
        if !cas.is_empty() {
            return Ok(cas);
        }
        self.refresh_cas(domain).await?;
        self.store.cas(domain).await
    }

    /// Where a domain's CA certificates come from.
    async fn fetch_cas(&self, domain: &str, source: CaSource) -> Result<(), ClientError> {
        let id = self.identity().await?;
        let parsed_domain = Domain::parse(domain).map_err(|e| verification(e.to_string()))?;
        let response: as_::ServerCertificateResponse = match source {
            // Our own server (which caches other servers' CA certificates within the cache
            // window their servers signed).
            CaSource::Home => {
                Self::api(&id)?
                    .call(
                        "as",
                        as_::DOMAIN_CERTIFICATES,
                        &as_::DomainCertificatesRequest {
                            domain: domain.to_owned(),
                        },
                        Signer::Anonymous,
                    )
                    .await?
            }
            CaSource::Issuer => {
                self.api_for(&id, domain)
                    .await?
                    .call("as", as_::SERVER_CERTIFICATE, &Empty {}, Signer::Anonymous)
                    .await?
            }
        };
        let mut kept = 0;
        for der in response
            .history
            .iter()
            .chain(std::iter::once(&response.ca_certificate))
        {
            let Ok(ca) = ParsedCert::parse(der.as_slice()) else {
                continue;
            };
            if ca.verify_self_signed_ca(&parsed_domain).is_ok() {
                self.store.put_ca(domain, &ca.der).await?;
                kept += 1;
            }
        }
        if kept == 0 {
            return Err(verification(format!(
                "no valid CA certificate of {domain} was served"
            )));
        }
        Ok(())
    }

    /// Fetch `domain`'s CA certificate history: through our own server first, then from
    /// the issuing server itself.
    async fn refresh_cas(&self, domain: &str) -> Result<(), ClientError> {
        match self.fetch_cas(domain, CaSource::Home).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, %domain, "our server could not provide the CA certificates");
                self.fetch_cas(domain, CaSource::Issuer).await
            }
        }
    }

    /// Verify an actor certificate as of `at` against its domain's CA certificates. If it
    /// does not verify, follow the ladder: fetch the domain's CA history again, retry, and
    /// only then fail (the caller reports the message as unverified, with the reason).
    async fn verify_actor(
        &self,
        cert: &ParsedCert,
        at: u64,
    ) -> Result<phoenix_types::certs::ActorSubject, ClientError> {
        let subject = self.verify_actor_chain(cert, at).await?;
        // Another domain's user: its home server must vouch for the certificate and not
        // have invalidated it (the same ladder: our server's cache, then the home server).
        if cert.issuer_domain.as_str() != self.identity().await?.qs_domain {
            self.check_vouched(cert, &subject.fid, at).await?;
        }
        Ok(subject)
    }

    /// The chain part of [`Self::verify_actor`], with the CA ladder.
    async fn verify_actor_chain(
        &self,
        cert: &ParsedCert,
        at: u64,
    ) -> Result<phoenix_types::certs::ActorSubject, ClientError> {
        let domain = cert.issuer_domain.to_string();
        let cas = self.cas_for(&domain).await?;
        let mut last = match verify::verify_chain(cert, &cas, at) {
            Ok(subject) => return Ok(subject),
            Err(e) => e,
        };
        // The ladder: fetch again through our own server, then from the issuing server.
        for source in [CaSource::Home, CaSource::Issuer] {
            if let Err(e) = self.fetch_cas(&domain, source).await {
                tracing::warn!(error = %e, %domain, ?source, "cannot refresh the CA certificates");
                continue;
            }
            let cas = self.store.cas(&domain).await?;
            match verify::verify_chain(cert, &cas, at) {
                Ok(subject) => return Ok(subject),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    // Requirement: ID-CACHE-3
    /// The certificates of `fid` that its home server vouches for now, through the ladder:
    /// our own server's cache first, then the home server itself. Every object's
    /// `cacheSignature` must verify with a CA key of `fid`'s domain, its certificate must
    /// be `fid`'s and chain to that domain's CA, and its window must contain now.
    pub async fn actor_certificates(&self, fid: &str) -> Result<ActorCertificates, ClientError> {
        let id = self.identity().await?;
        let fid = Fid::parse(fid).map_err(|e| usage(e.to_string()))?;
        let (source, vouched) = self.vouching_ladder(&id, &fid, None).await?;
        Ok(ActorCertificates {
            fid: fid.to_string(),
            source: source.name(),
            certificates: vouched
                .iter()
                .map(|v| VouchedCertificate {
                    client_id: v
                        .cert
                        .actor
                        .as_ref()
                        .map(|a| a.client_id.to_string())
                        .unwrap_or_default(),
                    fingerprint: hex::encode(v.cert.fingerprint()),
                    serial: phoenix_types::cacheable::decimal(&v.cert.serial),
                    not_before: v.cert.not_before,
                    not_after: v.cert.not_after,
                    invalidated_at: v.invalidated_at,
                    cache_not_valid_after: v.not_valid_after,
                })
                .collect(),
        })
    }

    /// Whether `cert` (of `fid`, another domain's user, its chain already verified) was
    /// not invalidated as of `at`, as its home server says: from what we were told within
    /// its window, or through the ladder (own server, home server). Neither answering, or
    /// neither listing the certificate, fails with both reasons: the caller marks the
    /// message unverified and says why.
    async fn check_vouched(
        &self,
        cert: &ParsedCert,
        fid: &Fid,
        at: u64,
    ) -> Result<(), ClientError> {
        let fid_str = fid.to_string();
        let invalidated_at = match self.store.vouched(&fid_str, &cert.der, now()).await? {
            Some(invalidated_at) => invalidated_at,
            None => {
                let id = self.identity().await?;
                let (_, vouched) = self.vouching_ladder(&id, fid, Some(&cert.der)).await?;
                vouched
                    .iter()
                    .find(|v| v.cert.der == cert.der)
                    .and_then(|v| v.invalidated_at)
            }
        };
        match invalidated_at {
            Some(when) if when <= at => Err(verification(format!(
                "the certificate of {fid_str} was invalidated at {when} by its home server"
            ))),
            _ => Ok(()),
        }
    }

    /// Ask our own server, then `fid`'s home server, for the certificates the home server
    /// vouches for; with `wanted`, an answer that does not list that certificate counts as
    /// a failure of that rung. Records every verified answer in the local store until its
    /// window ends.
    async fn vouching_ladder(
        &self,
        id: &Identity,
        fid: &Fid,
        wanted: Option<&[u8]>,
    ) -> Result<(CaSource, Vec<Vouched>), ClientError> {
        let rungs: &[CaSource] = if fid.domain().as_str() == id.qs_domain {
            &[CaSource::Home]
        } else {
            &[CaSource::Home, CaSource::Issuer]
        };
        let mut reasons = Vec::new();
        for source in rungs {
            match self.fetch_vouched(id, fid, *source).await {
                Ok(vouched) => {
                    self.store
                        .put_vouched(
                            &fid.to_string(),
                            &vouched
                                .iter()
                                .map(|v| (v.cert.der.clone(), v.invalidated_at, v.not_valid_after))
                                .collect::<Vec<_>>(),
                            now(),
                        )
                        .await?;
                    if wanted.is_none_or(|der| vouched.iter().any(|v| v.cert.der == der)) {
                        return Ok((*source, vouched));
                    }
                    reasons.push(format!("{} does not list the certificate", source.name()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %fid, source = source.name(), "cannot learn the certificates");
                    reasons.push(format!("{}: {e}", source.name()));
                }
            }
        }
        Err(verification(format!(
            "no server vouches for this certificate of {fid} ({})",
            reasons.join("; ")
        )))
    }

    /// One rung: `GET idcert/actor/{fid}` at our own server or at `fid`'s home server,
    /// every object verified.
    async fn fetch_vouched(
        &self,
        id: &Identity,
        fid: &Fid,
        source: CaSource,
    ) -> Result<Vec<Vouched>, ClientError> {
        let domain = fid.domain().as_str();
        let api = match source {
            CaSource::Home => Self::api(id)?,
            CaSource::Issuer => self.api_for(id, domain).await?,
        };
        let body = api
            .get_json(&format!("/.p2/core/v1/idcert/actor/{fid}"))
            .await?;
        let objects: Vec<CacheableIdCertIn> = serde_json::from_slice(&body)
            .map_err(|e| verification(format!("malformed idcert/actor answer: {e}")))?;
        if objects.len() > MAX_VOUCHED {
            return Err(verification("too many certificates in the answer"));
        }
        let mut refreshed = false;
        let mut vouched = Vec::with_capacity(objects.len());
        let now = now();
        for object in &objects {
            let verified = loop {
                let cas = self.cas_for(domain).await?;
                let found = cas.iter().find_map(|der| {
                    let ca = ParsedCert::parse(der).ok()?;
                    ca.verify_self_signed_ca(fid.domain()).ok()?;
                    object.verify(&ca.public_key).ok()
                });
                match found {
                    Some(verified) => break verified,
                    // The domain's CA may have rotated: learn its history once more.
                    None if !refreshed => {
                        refreshed = true;
                        self.refresh_cas(domain).await?;
                    }
                    None => {
                        return Err(verification(format!(
                            "a cacheSignature verifies with no CA key of {domain}"
                        )));
                    }
                }
            };
            let subject = verify::verify_chain(
                &verified.cert,
                &self.store.cas(domain).await?,
                verified.cert.not_before,
            )?;
            if subject.fid != *fid {
                return Err(verification(format!(
                    "the answer for {fid} holds a certificate of {}",
                    subject.fid
                )));
            }
            if verified.not_valid_before > now.saturating_add(CLOCK_SKEW)
                || verified.not_valid_after.saturating_add(CLOCK_SKEW) < now
            {
                return Err(verification(format!(
                    "the answer for {fid} is outside its cache window"
                )));
            }
            vouched.push(Vouched {
                cert: verified.cert,
                invalidated_at: verified.invalidated_at,
                // Kept no longer than polyproto's longest window, whatever was signed.
                not_valid_after: verified
                    .not_valid_after
                    .min(now.saturating_add(MAX_CACHE_WINDOW)),
            });
        }
        Ok(vouched)
    }

    /// Verify a credential info for `leaf_key` as of `at`.
    async fn verify_info(
        &self,
        info: &ClientCredentialInfo,
        leaf_key: &[u8],
        at: u64,
    ) -> Result<VerifiedMember, ClientError> {
        let cert = verify::check_binding(info, leaf_key)?;
        let subject = self.verify_actor(&cert, at).await?;
        Ok(VerifiedMember::new(&cert, &subject))
    }

    // ----- pins, trust on first use, out-of-band verification ---------------------------

    // Requirement: ID-PIN-1, ID-PIN-2
    /// How `member` (its chain verified) stands against what we trust for its FID: our own
    /// client; a contact's client whose certificate was pinned in our connection group with
    /// them (or announced there as a renewal), or a contact's FID on any other certificate
    /// (unpinned: what a minted credential looks like); for other FIDs, the first
    /// certificate seen (remembered now if it is the first) or a change from it.
    pub async fn standing(
        &self,
        id: &Identity,
        member: &VerifiedMember,
    ) -> Result<Standing, ClientError> {
        let fid = member.fid.as_str();
        if fid == id.fid {
            if member.certificate == id.certificate {
                return Ok(Standing {
                    status: PinStatus::Own,
                    problem: None,
                });
            }
            return Ok(Standing {
                status: PinStatus::Unpinned,
                problem: Some(format!(
                    "not this client's certificate although it claims your own FID {fid} (fingerprint {})",
                    member.fingerprint
                )),
            });
        }
        if self.store.contact(fid).await?.is_some() {
            if self
                .store
                .was_pinned(fid, &member.client_id, &member.certificate)
                .await?
            {
                return Ok(Standing {
                    status: PinStatus::Pinned,
                    problem: None,
                });
            }
            return Ok(Standing {
                status: PinStatus::Unpinned,
                problem: Some(format!(
                    "not a pinned client of {fid} (fingerprint {}, client {})",
                    member.fingerprint, member.client_id
                )),
            });
        }
        let first = self
            .store
            .see_certificate(fid, &member.certificate, now())
            .await?;
        if first == member.certificate {
            Ok(Standing {
                status: PinStatus::Unknown,
                problem: None,
            })
        } else {
            Ok(Standing {
                status: PinStatus::Changed,
                problem: Some(format!(
                    "{fid} is not a contact and now uses another certificate than when first seen \
                     (fingerprint {}, first seen {}): check it with them",
                    member.fingerprint,
                    hex::encode(crypto::sha256(&first))
                )),
            })
        }
    }

    /// A member's verification result with its [`Standing`] applied: an unpinned member
    /// of a contact's FID fails, with the reason.
    async fn verify_pinned(
        &self,
        id: &Identity,
        verified: Result<VerifiedMember, ClientError>,
    ) -> Result<(VerifiedMember, Standing), ClientError> {
        let member = verified?;
        let standing = self.standing(id, &member).await?;
        if standing.status == PinStatus::Unpinned {
            return Err(verification(standing.problem.unwrap_or_default()));
        }
        Ok((member, standing))
    }

    /// The certificates the fingerprint code of `fid` covers: our own for our FID, the
    /// contact's currently pinned ones otherwise.
    async fn fingerprint_certificates(
        &self,
        id: &Identity,
        fid: &str,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        if fid == id.fid {
            return Ok(vec![id.certificate.clone()]);
        }
        if self.store.contact(fid).await?.is_none() {
            return Err(usage(format!(
                "{fid} is not a contact: fingerprints compare a contact's pinned clients"
            )));
        }
        let pinned: Vec<Vec<u8>> = self
            .store
            .contact_clients(fid)
            .await?
            .into_values()
            .collect();
        if pinned.is_empty() {
            return Err(usage(format!("no client of {fid} is pinned yet")));
        }
        Ok(pinned)
    }

    /// `unverified`, `verified` or `changed` for contact `fid`.
    async fn verification_of(&self, id: &Identity, fid: &str) -> Result<&'static str, ClientError> {
        let Some(code) = self.store.verified_code(fid).await? else {
            return Ok("unverified");
        };
        let certificates = self.fingerprint_certificates(id, fid).await?;
        Ok(if verify::fingerprint_code(fid, &certificates) == code {
            "verified"
        } else {
            "changed"
        })
    }

    // Requirement: ID-OOB-1
    /// The fingerprint code of contact `fid`'s pinned clients, or of this client (`None`).
    pub async fn fingerprint(&self, fid: Option<&str>) -> Result<FingerprintView, ClientError> {
        let id = self.identity().await?;
        let fid = match fid {
            Some(f) => Fid::parse(f).map_err(|e| usage(e.to_string()))?.to_string(),
            None => id.fid.clone(),
        };
        let certificates = self.fingerprint_certificates(&id, &fid).await?;
        let mut clients: Vec<String> = certificates
            .iter()
            .map(|der| hex::encode(crypto::sha256(der)))
            .collect();
        clients.sort();
        let verification = if fid == id.fid {
            "own"
        } else {
            self.verification_of(&id, &fid).await?
        };
        Ok(FingerprintView {
            code: verify::fingerprint_code(&fid, &certificates),
            fid,
            clients,
            verification,
        })
    }

    // Requirement: ID-OOB-1
    /// Mark contact `fid` verified if `code` (as read out by them, separators ignored) is
    /// the fingerprint code of their pinned clients; refuse otherwise.
    pub async fn verify_contact(
        &self,
        fid: &str,
        code: &str,
    ) -> Result<FingerprintView, ClientError> {
        let id = self.identity().await?;
        let fid = Fid::parse(fid)
            .map_err(|e| usage(e.to_string()))?
            .to_string();
        if fid == id.fid {
            return Err(usage("you cannot verify yourself"));
        }
        let certificates = self.fingerprint_certificates(&id, &fid).await?;
        let expected = verify::fingerprint_code(&fid, &certificates);
        if verify::normalize_code(code) != verify::normalize_code(&expected) {
            return Err(verification(format!(
                "the code does not match the fingerprint of {fid}'s pinned clients: {fid} was \
                 NOT marked verified (compare `phoenix fingerprint {fid}` with what `phoenix \
                 fingerprint` shows on their device)"
            )));
        }
        self.store.set_verified(&fid, &expected, now()).await?;
        self.fingerprint(Some(&fid)).await
    }

    // ----- registration -------------------------------------------------------------

    async fn publish_connection_packages(&self, id: &Identity) -> Result<(), ClientError> {
        let key = Self::signing_key(id);
        let mut packages = Vec::with_capacity(CONNECTION_PACKAGES + 1);
        for n in 0..=CONNECTION_PACKAGES {
            let pair =
                HpkeKeyPair::generate(&mut OsRng).map_err(|e| ClientError::Mls(e.to_string()))?;
            self.store
                .put_connection_key(&pair.public, &pair.private)
                .await?;
            let payload = codec::encode(&ConnectionPackagePayload {
                fid: id.fid.clone(),
                client_id: id.client_id.clone(),
                encryption_key: VLBytes::new(pair.public.clone()),
                not_after: now() + CONNECTION_PACKAGE_LIFETIME,
                last_resort: u8::from(n == CONNECTION_PACKAGES),
            })
            .map_err(ClientError::Server)?;
            let signature = crypto::sign(&key, label::CONNECTION_PACKAGE, &payload);
            packages.push(ConnectionPackage {
                payload: VLBytes::new(payload),
                signature: VLBytes::new(signature.to_vec()),
            });
        }
        let _: Empty = Self::api(id)?
            .call(
                "as",
                as_::PUBLISH_CONNECTION_PACKAGES,
                &as_::PublishConnectionPackagesRequest {
                    timestamp: now(),
                    packages,
                },
                Self::as_signer(id, &key),
            )
            .await?;
        Ok(())
    }

    fn seal_queue_config(id: &Identity) -> Result<SealedQueueConfig, ClientError> {
        let plain = codec::encode(&QueueConfig {
            client_id: id.qs_client_id,
        })
        .map_err(ClientError::Server)?;
        let sealed = crypto::hpke_seal(
            &id.queue_config_key,
            hpke_info::QUEUE_CONFIG,
            id.qs_domain.as_bytes(),
            &plain,
        )
        .map_err(|e| ClientError::Mls(e.to_string()))?;
        Ok(SealedQueueConfig {
            qs_domain: id.qs_domain.clone(),
            sealed,
        })
    }

    /// Our credential info binding `leaf_key` to our ID-Cert.
    fn credential_info(id: &Identity, leaf_key: &[u8]) -> ClientCredentialInfo {
        let key = Self::signing_key(id);
        ClientCredentialInfo {
            client_certificate: VLBytes::new(id.certificate.clone()),
            leaf_signature_key: VLBytes::new(leaf_key.to_vec()),
            binding_signature: VLBytes::new(
                crypto::sign(&key, label::LEAF_BINDING, leaf_key).to_vec(),
            ),
        }
    }

    fn encrypt_credential(
        cek: &SymmetricKey,
        group_id: &[u8],
        info: &ClientCredentialInfo,
    ) -> Result<Vec<u8>, ClientError> {
        let plain = codec::encode(info).map_err(ClientError::Server)?;
        crypto::seal_aead(cek, &verify::credential_aad(group_id), &plain, &mut OsRng)
            .map_err(|e| ClientError::Mls(e.to_string()))
    }

    /// Publish a fresh set of key packages at our QS, replacing those there; each binds a
    /// new leaf key to this client's current certificate.
    pub async fn refresh_key_packages(&mut self) -> Result<(), ClientError> {
        let id = self.identity().await?;
        let result = self.publish_key_packages(&id).await;
        self.finish(result).await
    }

    // Requirement: CL-KP-1
    /// Ask the QS how our key packages stand and publish a fresh set when fewer than
    /// [`KEY_PACKAGES_LOW`] one-time packages are left or no last-resort one is stored.
    /// Whether a set was published.
    async fn top_up_key_packages(&self, id: &Identity) -> Result<bool, ClientError> {
        let qs_key = SigningKey::from_bytes(&id.qs_client_key);
        let status: qs::KeyPackageStatusResponse = Self::api(id)?
            .call(
                "qs",
                qs::KEY_PACKAGE_STATUS,
                &qs::KeyPackageStatusRequest { timestamp: now() },
                Signer::QsClient {
                    id: id.qs_client_id,
                    key: &qs_key,
                },
            )
            .await?;
        if status.one_time_remaining >= KEY_PACKAGES_LOW && status.has_last_resort != 0 {
            return Ok(false);
        }
        self.publish_key_packages(id).await?;
        Ok(true)
    }

    async fn publish_key_packages(&self, id: &Identity) -> Result<(), ClientError> {
        let friendship_key = SymmetricKey(id.friendship_key);
        let mut add_packages = Vec::with_capacity(KEY_PACKAGES + 1);
        for n in 0..=KEY_PACKAGES {
            let (signer, credential) = mls::new_leaf(&self.provider)?;
            let sealed =
                codec::encode(&Self::seal_queue_config(id)?).map_err(ClientError::Server)?;
            let extensions = Extensions::single(Extension::Unknown(
                QUEUE_CONFIG_EXTENSION_TYPE,
                UnknownExtension(sealed),
            ))
            .map_err(mls_err)?;
            let mut builder = KeyPackage::builder()
                .leaf_node_capabilities(mls::capabilities())
                .key_package_extensions(extensions);
            if n == KEY_PACKAGES {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(CIPHERSUITE, &self.provider, &signer, credential)
                .map_err(mls_err)?;
            let key_package = bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(mls_err)?;
            let info = codec::encode(&Self::credential_info(id, signer.public()))
                .map_err(ClientError::Server)?;
            let encrypted_client_info =
                crypto::seal_aead(&friendship_key, ADD_PACKAGE_AAD, &info, &mut OsRng)
                    .map_err(|e| ClientError::Mls(e.to_string()))?;
            add_packages.push(AddPackage {
                key_package: VLBytes::new(key_package),
                encrypted_client_info: VLBytes::new(encrypted_client_info),
            });
        }
        // Requirement: CL-AMBIG-2
        // The packages' private keys are saved before the request leaves: if its answer
        // is lost, the server may hold the packages, and a rollback would leave every
        // invitation through them undecryptable.
        self.save().await?;
        let qs_key = SigningKey::from_bytes(&id.qs_client_key);
        let _: Empty = Self::api(id)?
            .call(
                "qs",
                qs::PUBLISH_KEY_PACKAGES,
                &qs::PublishKeyPackagesRequest {
                    timestamp: now(),
                    add_packages,
                },
                Signer::QsClient {
                    id: id.qs_client_id,
                    key: &qs_key,
                },
            )
            .await?;
        Ok(())
    }

    // ----- groups (shared) -----------------------------------------------------------

    /// Request a group id, create the MLS group with a fresh pseudonymous leaf and store
    /// it at the DS under fresh EAR and credential keys.
    async fn create_group_internal(
        &mut self,
        id: &Identity,
        name: &str,
        kind: &str,
        contact: Option<String>,
    ) -> Result<Group, ClientError> {
        let (group_id, token) = self.reserve_group_id(id).await?;
        let (signer, credential) = mls::new_leaf(&self.provider)?;
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &signer,
            &mls::create_config(),
            GroupId::from_slice(&group_id),
            credential,
        )
        .map_err(mls_err)?;
        let group_info = group
            .export_group_info(self.provider.crypto(), &signer, false)
            .map_err(mls_err)?
            .tls_serialize_detached()
            .map_err(mls_err)?;
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(mls_err)?;
        let ear_key = random32();
        let credential_key = SymmetricKey(random32());
        let encrypted_credential = Self::encrypt_credential(
            &credential_key,
            &group_id,
            &Self::credential_info(id, signer.public()),
        )?;
        let own_leaf = group.own_leaf_index().u32();
        // Requirement: CL-AMBIG-1 (the identical bytes again after a lost answer)
        let body = crate::api::seal(
            "ds",
            ds::CREATE_GROUP,
            &ds::CreateGroupRequest {
                timestamp: now(),
                group_id: VLBytes::new(group_id.clone()),
                ear_key,
                group_info: VLBytes::new(group_info),
                ratchet_tree: VLBytes::new(tree),
                creator: MemberInfo {
                    queue_config: Self::seal_queue_config(id)?,
                    encrypted_credential: VLBytes::new(encrypted_credential.clone()),
                },
            },
            Signer::DsLeaf {
                leaf_index: own_leaf,
                key: &signer,
            },
        )?;
        self.deliver_create_group(id, &group_id, &body).await?;
        let record = Group {
            group_id: group_id.clone(),
            name: name.to_owned(),
            ear_key,
            credential_key: credential_key.0,
            kind: kind.to_owned(),
            contact,
            active: true,
        };
        self.store.put_group(&record).await?;
        self.store
            .set_member(&group_id, own_leaf, &encrypted_credential)
            .await?;
        self.store.delete_group_token(&token.input).await?;
        Ok(record)
    }

    fn load_group(&self, group_id: &[u8]) -> Result<MlsGroup, ClientError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(mls_err)?
            .ok_or_else(|| ClientError::Store("the group's MLS state is missing".into()))
    }

    /// Verify the member at `leaf` of `group` in the current epoch from its stored
    /// encrypted credential.
    async fn verify_member(
        &self,
        record: &Group,
        group: &MlsGroup,
        leaf: u32,
    ) -> Result<VerifiedMember, ClientError> {
        self.verify_member_at(record, group, leaf, group.epoch().as_u64())
            .await
    }

    /// Verify the member that held `leaf` in `epoch` (the current epoch or a recent one).
    async fn verify_member_at(
        &self,
        record: &Group,
        group: &MlsGroup,
        leaf: u32,
        epoch: u64,
    ) -> Result<VerifiedMember, ClientError> {
        let (leaf_key, encrypted) = self.member_at(record, group, leaf, epoch).await?;
        let info = verify::decrypt_credential(
            &SymmetricKey(record.credential_key),
            &record.group_id,
            &encrypted,
        )?;
        self.verify_info(&info, &leaf_key, now()).await
    }

    /// The signature key and encrypted credential `leaf` had in `epoch`: the ones archived
    /// when a later commit removed or replaced them, else the current ones. A message sent
    /// just before a commit that removed its sender is thus still attributed to that
    /// sender, never to a member who took the leaf later (Requirement: ID-CHAIN-3).
    async fn member_at(
        &self,
        record: &Group,
        group: &MlsGroup,
        leaf: u32,
        epoch: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        if epoch < group.epoch().as_u64()
            && let Some(archived) = self
                .store
                .archived_member(&record.group_id, leaf, epoch)
                .await?
        {
            return Ok(archived);
        }
        let members = self.store.members(&record.group_id).await?;
        let encrypted = members
            .into_iter()
            .find(|(l, _)| *l == leaf)
            .map(|(_, c)| c)
            .ok_or_else(|| verification(format!("no credential is known for leaf {leaf}")))?;
        let leaf_key = group
            .members()
            .find(|m| m.index.u32() == leaf)
            .map(|m| m.signature_key)
            .ok_or_else(|| verification(format!("leaf {leaf} is not in the group")))?;
        Ok((leaf_key, encrypted))
    }

    /// After a commit is merged, before the stored credentials are updated for the new
    /// epoch: archive the credential of every leaf that the commit removed, re-keyed or
    /// gives a new credential (`replaced`), as it was in the epoch that ended
    /// (`before`: the leaves' signature keys then).
    async fn archive_ended_epoch(
        &self,
        record: &Group,
        before: &BTreeMap<u32, Vec<u8>>,
        group: &MlsGroup,
        replaced: &[u32],
    ) -> Result<(), ClientError> {
        let after = leaf_keys(group);
        for (leaf, key) in before {
            if after.get(leaf) != Some(key) || replaced.contains(leaf) {
                self.store
                    .archive_member(
                        &record.group_id,
                        *leaf,
                        group.epoch().as_u64(),
                        key,
                        mls::MAX_PAST_EPOCHS as u64 + 1,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn send_in_group(
        &mut self,
        id: &Identity,
        record: &Group,
        payload: &ApplicationPayload,
        notification: Notification,
    ) -> Result<(), ClientError> {
        self.require_settled(record).await?;
        let mut group = self.load_group(&record.group_id)?;
        let signer = mls::own_signer(&self.provider, &group)?;
        let plain = codec::encode(payload).map_err(ClientError::Server)?;
        let message = group
            .create_message(&self.provider, &signer, &plain)
            .map_err(mls_err)?
            .tls_serialize_detached()
            .map_err(mls_err)?;
        let body = crate::api::seal(
            "ds",
            ds::SEND_MESSAGE,
            &ds::SendMessageRequest {
                timestamp: now(),
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                message: VLBytes::new(message),
                notification,
            },
            Signer::DsLeaf {
                leaf_index: group.own_leaf_index().u32(),
                key: &signer,
            },
        )?;
        let text = match payload {
            ApplicationPayload::Text(text) => text.as_str(),
            ApplicationPayload::Friendship(_) => "(friendship package)",
        };
        self.send_message_sealed(id, record, &body, text).await
    }

    // ----- connections ---------------------------------------------------------------

    /// Ask `fid` to connect: fetch one of its connection packages, create a connection
    /// group, and send the signed, encrypted connection establishment package.
    pub async fn connect(&mut self, fid: &str) -> Result<(), ClientError> {
        let result = self.connect_inner(fid).await;
        let result = self.finish(result).await;
        self.explain_connect_error(fid, result).await
    }

    async fn connect_inner(&mut self, fid: &str) -> Result<(), ClientError> {
        let id = self.identity().await?;
        let target = Fid::parse(fid).map_err(|e| usage(e.to_string()))?;
        let target_str = target.to_string();
        if target_str == id.fid {
            return Err(usage("you cannot connect to yourself"));
        }
        if let Some(c) = self.store.contact(&target_str).await? {
            return Err(usage(format!(
                "{} is already a contact ({})",
                c.fid, c.status
            )));
        }
        // Requirement: CL-AMBIG-3 (a request whose answer was lost: the same bytes again)
        if let Some(pending) = self.store.pending_connection(&target_str).await? {
            return self.settle_connection(&id, &pending).await;
        }
        // The AS of the target's homeserver (ours, or another one).
        let target_domain = target.domain().as_str();
        let fetched: as_::FetchConnectionPackageResponse = self
            .call_at(
                &id,
                target_domain,
                "as",
                as_::FETCH_CONNECTION_PACKAGE,
                &as_::FetchConnectionPackageRequest {
                    fid: target_str.clone(),
                },
                Signer::Anonymous,
            )
            .await?;
        let cert = ParsedCert::parse(fetched.client_certificate.as_slice())
            .map_err(|e| verification(format!("{target}'s certificate: {e}")))?;
        let subject = self.verify_actor(&cert, now()).await?;
        if subject.fid != target {
            return Err(verification(format!(
                "the server returned a certificate of {} for {target}",
                subject.fid
            )));
        }
        crypto::verify(
            &cert.public_key,
            label::CONNECTION_PACKAGE,
            fetched.package.payload.as_slice(),
            fetched.package.signature.as_slice(),
        )
        .map_err(|_| verification("the connection package is not signed by its client"))?;
        let payload: ConnectionPackagePayload =
            codec::decode(fetched.package.payload.as_slice(), 1024)
                .map_err(|e| verification(e.detail))?;
        if payload.fid != target_str
            || payload.client_id != subject.client_id.as_str()
            || payload.not_after <= now()
        {
            return Err(verification(
                "the connection package does not match its certificate or has expired",
            ));
        }

        let name = format!("{CONNECTION_GROUP_PREFIX}{target_str}");
        let group = self
            .create_group_internal(&id, &name, "connection", Some(target_str.clone()))
            .await?;
        let tbs = codec::encode(&ConnectionEstablishmentTbs {
            sender_certificate: VLBytes::new(id.certificate.clone()),
            recipient_fid: target_str.clone(),
            recipient_client_id: subject.client_id.to_string(),
            timestamp: now(),
            connection_group_id: VLBytes::new(group.group_id.clone()),
            ear_key: group.ear_key,
            credential_key: group.credential_key,
            friendship: self.friendship_package(&id),
        })
        .map_err(ClientError::Server)?;
        let signature = crypto::sign(
            &Self::signing_key(&id),
            label::CONNECTION_ESTABLISHMENT,
            &tbs,
        );
        let cep = codec::encode(&ConnectionEstablishmentPackage {
            tbs: VLBytes::new(tbs),
            signature: VLBytes::new(signature.to_vec()),
        })
        .map_err(ClientError::Server)?;
        let ciphertext = crypto::hpke_seal(
            payload.encryption_key.as_slice(),
            hpke_info::CONNECTION_ESTABLISHMENT,
            &direct_queue_aad(&target_str, subject.client_id.as_str()),
            &cep,
        )
        .map_err(|e| ClientError::Mls(e.to_string()))?;
        // Requirement: CL-AMBIG-3
        // The exact request is saved before it leaves: if its answer is lost, `phoenix
        // connect` run again sends the same bytes instead of a second request.
        let request = as_::EnqueueConnectionRequest {
            fid: target_str.clone(),
            client_id: subject.client_id.to_string(),
            ciphertext,
        };
        let pending = PendingConnection {
            fid: target_str.clone(),
            domain: target_domain.to_owned(),
            request: codec::encode(&request).map_err(ClientError::Server)?,
            client_id: subject.client_id.to_string(),
            certificate: cert.der.clone(),
            connection_group_id: group.group_id.clone(),
        };
        // The connection group's MLS state too: the command may end in an error that
        // leaves the request pending, and the group exists at the DS.
        self.save().await?;
        self.store.put_pending_connection(&pending).await?;
        self.settle_connection(&id, &pending).await
    }

    // Requirement: CL-AMBIG-3
    /// Send the saved connection request `pending` (again), and settle it: delivered (an
    /// answer, or `REPLAYED`: a copy of it was delivered before), the contact is recorded as
    /// pending with its client pinned; definitely refused, it is forgotten; unanswered, it
    /// stays saved for the next `phoenix connect`.
    async fn settle_connection(
        &mut self,
        id: &Identity,
        pending: &PendingConnection,
    ) -> Result<(), ClientError> {
        let request: as_::EnqueueConnectionRequest =
            codec::decode(&pending.request, usize::MAX).map_err(ClientError::Server)?;
        let sent: Result<Empty, ClientError> = self
            .call_at(
                id,
                &pending.domain,
                "as",
                as_::ENQUEUE_CONNECTION,
                &request,
                Signer::Anonymous,
            )
            .await;
        match sent {
            Ok(_) => {}
            Err(e) if e.code() == Some("REPLAYED") => {}
            Err(e) if crate::api::is_unanswered(&e) => {
                return Err(ClientError::Transport(format!(
                    "{e}; the connection request to {} may have arrived: run `phoenix connect {}` again to settle it (it sends the same request, never a second one)",
                    pending.fid, pending.fid
                )));
            }
            Err(e) => {
                self.store.delete_pending_connection(&pending.fid).await?;
                return Err(e);
            }
        }
        self.store
            .put_contact(
                &Contact {
                    fid: pending.fid.clone(),
                    status: "pending".into(),
                    friendship_token: None,
                    friendship_key: None,
                    qs_domain: None,
                    connection_group_id: pending.connection_group_id.clone(),
                },
                now(),
            )
            .await?;
        self.store
            .pin_contact_client(&pending.fid, &pending.client_id, &pending.certificate)
            .await?;
        self.store.delete_pending_connection(&pending.fid).await?;
        Ok(())
    }

    fn friendship_package(&self, id: &Identity) -> FriendshipPackage {
        FriendshipPackage {
            friendship_token: id.friendship_token,
            friendship_key: id.friendship_key,
            qs_domain: id.qs_domain.clone(),
        }
    }

    // Requirement: ID-CONN-1, ADV-AS-1
    /// Why a pending request is suspicious: it names an existing contact but comes from a
    /// certificate not pinned in our connection group with them (for example a second
    /// credential minted by their server).
    pub async fn request_warning(
        &self,
        request: &ConnectionRequest,
    ) -> Result<Option<String>, ClientError> {
        let Some(contact) = self.store.contact(&request.fid).await? else {
            return Ok(None);
        };
        let pinned = self.store.contact_clients(&contact.fid).await?;
        if pinned.values().any(|der| *der == request.certificate) {
            return Ok(None);
        }
        let mut known: Vec<String> = pinned
            .values()
            .map(|der| hex::encode(crypto::sha256(der)))
            .collect();
        known.sort();
        Ok(Some(format!(
            "{} is already a contact, but this request comes from a certificate you have not pinned \
             (client {}, fingerprint {}; pinned: {}): possibly a credential minted by their server",
            request.fid,
            request.client_id,
            hex::encode(crypto::sha256(&request.certificate)),
            known.join(", ")
        )))
    }

    /// Fetch new connection requests from the AS direct queue and list all pending ones.
    pub async fn requests(&mut self) -> Result<Vec<ConnectionRequest>, ClientError> {
        let id = self.identity().await?;
        let mut start = id.as_next_seq;
        let api = Self::api(&id)?;
        let key = Self::signing_key(&id);
        let connection_keys = self.store.connection_keys().await?;
        loop {
            let batch: DequeueResponse = api
                .call(
                    "as",
                    as_::DEQUEUE_CONNECTION,
                    &DequeueRequest {
                        timestamp: now(),
                        sequence_number_start: start,
                        max: DEQUEUE_BATCH,
                    },
                    Self::as_signer(&id, &key),
                )
                .await?;
            for message in &batch.messages {
                match self
                    .open_connection_request(&id, &connection_keys, message.payload.as_slice())
                    .await
                {
                    Ok(request) => self.store.put_request(&request).await?,
                    Err(e) => tracing::warn!(error = %e, "ignoring an invalid connection request"),
                }
                start = message.sequence_number.saturating_add(1);
                self.store.set_as_next_seq(start).await?;
            }
            if batch.remaining == 0 || batch.messages.is_empty() {
                break;
            }
        }
        self.store.requests().await
    }

    async fn open_connection_request(
        &self,
        id: &Identity,
        keys: &[(Vec<u8>, Vec<u8>)],
        payload: &[u8],
    ) -> Result<ConnectionRequest, ClientError> {
        let ciphertext: openmls_traits::types::HpkeCiphertext =
            codec::decode(payload, 64 * 1024).map_err(|e| verification(e.detail))?;
        let aad = direct_queue_aad(&id.fid, &id.client_id);
        let plain = keys
            .iter()
            .find_map(|(_, private)| {
                crypto::hpke_open(
                    private,
                    hpke_info::CONNECTION_ESTABLISHMENT,
                    &aad,
                    &ciphertext,
                )
                .ok()
            })
            .ok_or_else(|| {
                verification(
                    "the connection request does not decrypt with any of our connection keys",
                )
            })?;
        let cep: ConnectionEstablishmentPackage =
            codec::decode(&plain, 64 * 1024).map_err(|e| verification(e.detail))?;
        let tbs: ConnectionEstablishmentTbs =
            codec::decode(cep.tbs.as_slice(), 64 * 1024).map_err(|e| verification(e.detail))?;
        let cert = ParsedCert::parse(tbs.sender_certificate.as_slice())
            .map_err(|e| verification(e.to_string()))?;
        let sender = self.verify_actor(&cert, now()).await?;
        crypto::verify(
            &cert.public_key,
            label::CONNECTION_ESTABLISHMENT,
            cep.tbs.as_slice(),
            cep.signature.as_slice(),
        )
        .map_err(|_| verification("the connection request is not signed by its sender"))?;
        if tbs.recipient_fid != id.fid || tbs.recipient_client_id != id.client_id {
            return Err(verification(
                "the connection request is addressed to someone else",
            ));
        }
        Ok(ConnectionRequest {
            fid: sender.fid.to_string(),
            client_id: sender.client_id.to_string(),
            certificate: cert.der.clone(),
            group_id: tbs.connection_group_id.as_slice().to_vec(),
            ear_key: tbs.ear_key,
            credential_key: tbs.credential_key,
            friendship_token: tbs.friendship.friendship_token,
            friendship_key: tbs.friendship.friendship_key,
            qs_domain: tbs.friendship.qs_domain,
            received_at: now(),
        })
    }

    /// Accept `fid`'s connection request: join its connection group by external commit
    /// and send our friendship package in it.
    pub async fn accept(&mut self, fid: &str) -> Result<(), ClientError> {
        let result = self.accept_inner(fid).await;
        self.finish(result).await
    }

    async fn accept_inner(&mut self, fid: &str) -> Result<(), ClientError> {
        let id = self.identity().await?;
        let fid = Fid::parse(fid)
            .map_err(|e| usage(e.to_string()))?
            .to_string();
        // A request not fetched yet is fetched now: `accept` works without `requests`.
        let mut stored = self.store.requests().await?;
        if !stored.iter().any(|r| r.fid == fid) {
            self.requests().await?;
            stored = self.store.requests().await?;
        }
        let request = stored.into_iter().find(|r| r.fid == fid).ok_or_else(|| {
            usage(format!(
                "no connection request from {fid} (none is waiting on the server either)"
            ))
        })?;
        if let Some(warning) = self.request_warning(&request).await? {
            return Err(verification(format!("refusing to accept: {warning}")));
        }
        let info: ds::ExternalCommitInfoResponse = self
            .ds_call(
                &id,
                &request.group_id,
                ds::EXTERNAL_COMMIT_INFO,
                &ds::ExternalCommitInfoRequest {
                    group_id: VLBytes::new(request.group_id.clone()),
                    ear_key: request.ear_key,
                },
                Signer::Anonymous,
            )
            .await?;
        let message =
            MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice()).map_err(mls_err)?;
        let MlsMessageBodyIn::GroupInfo(group_info) = message.extract() else {
            return Err(verification(
                "the DS returned something other than a group info",
            ));
        };
        let tree =
            RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice()).map_err(mls_err)?;
        let (signer, credential) = mls::new_leaf(&self.provider)?;
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(mls::join_config())
            .build_group(&self.provider, group_info, credential)
            .map_err(mls_err)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(mls::capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &signer,
                |_| true,
            )
            .map_err(mls_err)?
            .finalize(&self.provider)
            .map_err(mls_err)?;
        let (commit, _, group_info) = bundle.into_messages();
        let group_info =
            group_info.ok_or_else(|| ClientError::Mls("no group info for the new epoch".into()))?;

        // The group must consist of the requester's client (as pinned by its signed
        // request) and us.
        let record = Group {
            group_id: request.group_id.clone(),
            name: format!("{CONNECTION_GROUP_PREFIX}{fid}"),
            ear_key: request.ear_key,
            credential_key: request.credential_key,
            kind: "connection".into(),
            contact: Some(fid.clone()),
            active: true,
        };
        let own_leaf = group.own_leaf_index().u32();
        for credential in &info.credentials {
            self.store
                .set_member(
                    &record.group_id,
                    credential.leaf_index,
                    credential.encrypted_credential.as_slice(),
                )
                .await?;
        }
        for member in group.members() {
            if member.index.u32() == own_leaf {
                continue;
            }
            let verified = self
                .verify_member(&record, &group, member.index.u32())
                .await?;
            if verified.fid != fid || verified.certificate != request.certificate {
                return Err(verification(format!(
                    "the connection group holds a client that is not {fid}'s requesting client"
                )));
            }
        }
        let encrypted_credential = Self::encrypt_credential(
            &SymmetricKey(record.credential_key),
            &record.group_id,
            &Self::credential_info(&id, signer.public()),
        )?;
        let group_info = group_info.tls_serialize_detached().map_err(mls_err)?;
        let body = crate::api::seal(
            "ds",
            ds::JOIN_CONNECTION_GROUP,
            &ds::JoinConnectionGroupRequest {
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                commit: VLBytes::new(commit.tls_serialize_detached().map_err(mls_err)?),
                group_info: VLBytes::new(group_info.clone()),
                joiner: MemberInfo {
                    queue_config: Self::seal_queue_config(&id)?,
                    encrypted_credential: VLBytes::new(encrypted_credential.clone()),
                },
            },
            Signer::Anonymous,
        )?;
        self.send_join_sealed(&id, &record, ds::JOIN_CONNECTION_GROUP, &body, &group_info)
            .await?;
        self.store.put_group(&record).await?;
        self.store
            .set_member(&record.group_id, own_leaf, &encrypted_credential)
            .await?;
        self.store
            .put_contact(
                &Contact {
                    fid: fid.clone(),
                    status: "connected".into(),
                    friendship_token: Some(request.friendship_token),
                    friendship_key: Some(request.friendship_key),
                    qs_domain: Some(request.qs_domain.clone()),
                    connection_group_id: record.group_id.clone(),
                },
                now(),
            )
            .await?;
        self.store
            .pin_contact_client(&fid, &request.client_id, &request.certificate)
            .await?;
        self.store.delete_requests_of(&fid).await?;
        // Hand our friendship package to the requester inside the (end-to-end encrypted)
        // connection group.
        self.send_in_group(
            &id,
            &record,
            &ApplicationPayload::Friendship(self.friendship_package(&id)),
            // The requester learns that we accepted: worth a notification.
            Notification::Send,
        )
        .await?;
        Ok(())
    }

    pub async fn contacts(&self) -> Result<Vec<ContactView>, ClientError> {
        let id = self.identity().await?;
        let mut out = Vec::new();
        for contact in self.store.contacts().await? {
            let verification = self.verification_of(&id, &contact.fid).await?;
            let pinned = self.store.contact_clients(&contact.fid).await?;
            let mut clients: Vec<String> = pinned
                .values()
                .map(|der| hex::encode(crypto::sha256(der)))
                .collect();
            clients.sort();
            let certificates: Vec<Vec<u8>> = pinned.into_values().collect();
            out.push(ContactView {
                code: (!certificates.is_empty())
                    .then(|| verify::fingerprint_code(&contact.fid, &certificates)),
                fid: contact.fid,
                status: contact.status,
                clients,
                verification,
            });
        }
        Ok(out)
    }

    // ----- groups ---------------------------------------------------------------------

    /// Create a group named `name` (a local name; members learn it from the invitation).
    pub async fn create_group(&mut self, name: &str) -> Result<Vec<u8>, ClientError> {
        let result = self.create_group_inner(name).await;
        self.finish(result).await
    }

    async fn create_group_inner(&mut self, name: &str) -> Result<Vec<u8>, ClientError> {
        let id = self.identity().await?;
        check_group_name(name)?;
        if self.store.name_taken(name).await? {
            return Err(usage(format!("a group named {name:?} exists already")));
        }
        Ok(self
            .create_group_internal(&id, name, "group", None)
            .await?
            .group_id)
    }

    async fn user_group(&self, name: &str) -> Result<Group, ClientError> {
        self.store
            .group_by_name(name)
            .await?
            .filter(|g| g.kind == "group" || name.starts_with(CONNECTION_GROUP_PREFIX))
            .ok_or_else(|| usage(format!("no group named {name:?}")))
    }

    /// Invite the connected contact `fid` (all its clients) into the group `name`.
    pub async fn invite(&mut self, name: &str, fid: &str) -> Result<(), ClientError> {
        let mut result = self.invite_inner(name, fid).await;
        if self.moved_on_after_refused_commit(name, &result).await {
            result = self.invite_inner(name, fid).await;
        }
        self.finish(result).await
    }

    async fn invite_inner(&mut self, name: &str, fid: &str) -> Result<(), ClientError> {
        let id = self.identity().await?;
        // Catch up first, so that the commit is for the group's current epoch.
        self.pull_into_events(&id).await?;
        let record = self.user_group(name).await?;
        if record.kind != "group" {
            return Err(usage("connection groups cannot be extended"));
        }
        if !record.active {
            return Err(usage(format!("you are no longer a member of {name:?}")));
        }
        let fid = Fid::parse(fid)
            .map_err(|e| usage(e.to_string()))?
            .to_string();
        if fid == id.fid {
            return Err(usage(format!("you are already a member of {name:?}")));
        }
        let group = self.load_group(&record.group_id)?;
        if self.has_member_claiming(&record, &group, &fid).await? {
            return Err(usage(format!("{fid} is already a member of {name:?}")));
        }
        let contact = self.store.contact(&fid).await?;
        let (token, friendship_key) = match contact
            .as_ref()
            .and_then(|c| c.friendship_token.zip(c.friendship_key))
        {
            Some(pair) => pair,
            None => {
                return Err(usage(format!(
                    "{fid} is not a connected contact: `phoenix connect {fid}`, and they must accept (then `phoenix sync`)"
                )));
            }
        };
        let pinned = self.store.contact_clients(&fid).await?;
        let contact_qs = contact
            .as_ref()
            .and_then(|c| c.qs_domain.clone())
            .unwrap_or_else(|| id.qs_domain.clone());
        let fetched: qs::FetchKeyPackagesResponse = self
            .call_at(
                &id,
                &contact_qs,
                "qs",
                qs::FETCH_KEY_PACKAGES,
                &qs::FetchKeyPackagesRequest {
                    friendship_token: token,
                },
                Signer::Anonymous,
            )
            .await?;
        let friendship_key = SymmetricKey(friendship_key);
        let mut key_packages = Vec::new();
        let mut infos = Vec::new();
        for add_package in &fetched.add_packages {
            let plain = crypto::open_aead(
                &friendship_key,
                ADD_PACKAGE_AAD,
                add_package.encrypted_client_info.as_slice(),
            )
            .map_err(|_| {
                verification(format!(
                    "a key package of {fid} does not decrypt with their friendship key"
                ))
            })?;
            let info: ClientCredentialInfo =
                codec::decode(&plain, 8192).map_err(|e| verification(e.detail))?;
            let key_package =
                KeyPackageIn::tls_deserialize_exact(add_package.key_package.as_slice())
                    .map_err(mls_err)?
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(|e| verification(format!("invalid key package of {fid}: {e}")))?;
            let member = self
                .verify_info(
                    &info,
                    key_package.leaf_node().signature_key().as_slice(),
                    now(),
                )
                .await?;
            if member.fid != fid {
                return Err(verification(format!(
                    "a key package for {fid} belongs to {}",
                    member.fid
                )));
            }
            if pinned.get(&member.client_id) != Some(&member.certificate) {
                return Err(verification(format!(
                    "a key package of {fid} comes from client {} that is not in your connection group with {fid}; \
                     refusing to add it (its certificate fingerprint is {})",
                    member.client_id, member.fingerprint
                )));
            }
            key_packages.push(key_package);
            infos.push(info);
        }
        let mut group = self.load_group(&record.group_id)?;
        let signer = mls::own_signer(&self.provider, &group)?;
        let bundle = group
            .commit_builder()
            .propose_adds(key_packages.iter().cloned())
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &signer,
                |_| true,
            )
            .map_err(mls_err)?
            .stage_commit(&self.provider)
            .map_err(mls_err)?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let welcome =
            welcome.ok_or_else(|| ClientError::Mls("no welcome for the added members".into()))?;
        let group_info =
            group_info.ok_or_else(|| ClientError::Mls("no group info for the new epoch".into()))?;
        let cek = SymmetricKey(record.credential_key);
        let wai_tbs = codec::encode(&WelcomeAttributionTbs {
            sender_certificate: VLBytes::new(id.certificate.clone()),
            group_id: VLBytes::new(record.group_id.clone()),
            group_name: record.name.clone(),
            ear_key: record.ear_key,
            credential_key: record.credential_key,
            timestamp: now(),
        })
        .map_err(ClientError::Server)?;
        let wai = codec::encode(&WelcomeAttributionInfo {
            signature: VLBytes::new(
                crypto::sign(
                    &Self::signing_key(&id),
                    label::WELCOME_ATTRIBUTION,
                    &wai_tbs,
                )
                .to_vec(),
            ),
            tbs: VLBytes::new(wai_tbs),
        })
        .map_err(ClientError::Server)?;
        let mut added = Vec::with_capacity(infos.len());
        let mut encrypted = Vec::with_capacity(infos.len());
        for info in &infos {
            let credential = Self::encrypt_credential(&cek, &record.group_id, info)?;
            let welcome_info =
                crypto::seal_aead(&friendship_key, &record.group_id, &wai, &mut OsRng)
                    .map_err(|e| ClientError::Mls(e.to_string()))?;
            encrypted.push(credential.clone());
            added.push(AddedMember {
                encrypted_credential: VLBytes::new(credential),
                welcome_info: VLBytes::new(welcome_info),
            });
        }
        let group_info = group_info.tls_serialize_detached().map_err(mls_err)?;
        let body = crate::api::seal(
            "ds",
            ds::ADD_USERS,
            &ds::AddUsersRequest {
                timestamp: now(),
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                commit: VLBytes::new(commit.tls_serialize_detached().map_err(mls_err)?),
                welcome: VLBytes::new(welcome.tls_serialize_detached().map_err(mls_err)?),
                group_info: VLBytes::new(group_info.clone()),
                added,
            },
            Signer::DsLeaf {
                leaf_index: group.own_leaf_index().u32(),
                key: &signer,
            },
        )?;
        let aftermath = CommitAftermath {
            own_credential: None,
            members: key_packages
                .iter()
                .zip(encrypted)
                .map(|(key_package, credential)| {
                    (
                        hex::encode(key_package.leaf_node().signature_key().as_slice()),
                        hex::encode(credential),
                    )
                })
                .collect(),
        };
        self.send_commit_sealed(
            &id,
            &record,
            &mut group,
            ds::ADD_USERS,
            &body,
            &group_info,
            &aftermath,
        )
        .await
    }

    /// Rotate our leaf's keys in group `name` (an MLS update commit).
    pub async fn update(&mut self, name: &str) -> Result<(), ClientError> {
        let mut result = self.update_inner(name).await;
        if self.moved_on_after_refused_commit(name, &result).await {
            result = self.update_inner(name).await;
        }
        self.finish(result).await
    }

    async fn update_inner(&mut self, name: &str) -> Result<(), ClientError> {
        let id = self.identity().await?;
        self.pull_into_events(&id).await?;
        let record = self.active_group(name).await?;
        let mut group = self.load_group(&record.group_id)?;
        let signer = mls::own_signer(&self.provider, &group)?;
        let bundle = self.self_update(&mut group, &signer)?;
        self.send_commit(&id, &record, &mut group, ds::UPDATE, bundle, None)
            .await
    }

    /// A staged commit of `group` that updates our own leaf (a path, no proposals).
    fn self_update(
        &self,
        group: &mut MlsGroup,
        signer: &openmls_basic_credential::SignatureKeyPair,
    ) -> Result<openmls::group::CommitMessageBundle, ClientError> {
        group
            .commit_builder()
            .force_self_update(true)
            .consume_proposal_store(false)
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(self.provider.rand(), self.provider.crypto(), signer, |_| {
                true
            })
            .map_err(mls_err)?
            .stage_commit(&self.provider)
            .map_err(mls_err)
    }

    /// Remove the member `fid` (all its clients) from group `name`.
    pub async fn remove(&mut self, name: &str, fid: &str) -> Result<(), ClientError> {
        let mut result = self.remove_inner(name, fid).await;
        if self.moved_on_after_refused_commit(name, &result).await {
            result = self.remove_inner(name, fid).await;
        }
        self.finish(result).await
    }

    async fn remove_inner(&mut self, name: &str, fid: &str) -> Result<(), ClientError> {
        let id = self.identity().await?;
        self.pull_into_events(&id).await?;
        let record = self.active_group(name).await?;
        if record.kind != "group" {
            return Err(usage("members cannot be removed from connection groups"));
        }
        let fid = Fid::parse(fid)
            .map_err(|e| usage(e.to_string()))?
            .to_string();
        if fid == id.fid {
            return Err(usage("you cannot remove yourself this way"));
        }
        let mut group = self.load_group(&record.group_id)?;
        let leaves = self.leaves_of(&record, &group, &fid).await;
        if leaves.is_empty() {
            return Err(usage(format!("{fid} is not a member of {name:?}")));
        }
        let signer = mls::own_signer(&self.provider, &group)?;
        let bundle = group
            .commit_builder()
            .propose_removals(leaves.iter().copied())
            .consume_proposal_store(false)
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &signer,
                |_| true,
            )
            .map_err(mls_err)?
            .stage_commit(&self.provider)
            .map_err(mls_err)?;
        self.send_commit(&id, &record, &mut group, ds::REMOVE_USERS, bundle, None)
            .await?;
        for leaf in leaves {
            self.store
                .remove_member(&record.group_id, leaf.u32())
                .await?;
        }
        Ok(())
    }

    /// The leaves of `group` whose member verifies as `fid`.
    async fn leaves_of(
        &self,
        record: &Group,
        group: &MlsGroup,
        fid: &str,
    ) -> Vec<openmls::prelude::LeafNodeIndex> {
        let mut leaves = Vec::new();
        for member in group.members() {
            if let Ok(v) = self.verify_member(record, group, member.index.u32()).await
                && v.fid == fid
            {
                leaves.push(member.index);
            }
        }
        leaves
    }

    /// Whether a member of `group` claims to be `fid`: its credential, bound to its leaf
    /// key, names it. Checked locally (no certificate chain, no request): a guard against
    /// adding someone twice, not an authentication.
    async fn has_member_claiming(
        &self,
        record: &Group,
        group: &MlsGroup,
        fid: &str,
    ) -> Result<bool, ClientError> {
        let keys = leaf_keys(group);
        for (leaf, encrypted) in self.store.members(&record.group_id).await? {
            let Some(key) = keys.get(&leaf) else {
                continue;
            };
            let claimed = verify::decrypt_credential(
                &SymmetricKey(record.credential_key),
                &record.group_id,
                &encrypted,
            )
            .and_then(|info| verify::check_binding(&info, key))
            .is_ok_and(|cert| cert.actor.is_some_and(|a| a.fid.to_string() == fid));
            if claimed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Send a staged commit (update or remove) to the DS, then merge it, or drop it if the
    /// DS refused it.
    async fn send_commit(
        &mut self,
        id: &Identity,
        record: &Group,
        group: &mut MlsGroup,
        operation: &str,
        bundle: openmls::group::CommitMessageBundle,
        new_credential: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.require_settled(record).await?;
        let signer = &mls::own_signer(&self.provider, group)?;
        let (commit, _, group_info) = bundle.into_messages();
        let group_info =
            group_info.ok_or_else(|| ClientError::Mls("no group info for the new epoch".into()))?;
        let group_info = group_info.tls_serialize_detached().map_err(mls_err)?;
        let body = crate::api::seal(
            "ds",
            operation,
            &ds::CommitRequest {
                timestamp: now(),
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                commit: VLBytes::new(commit.tls_serialize_detached().map_err(mls_err)?),
                group_info: VLBytes::new(group_info.clone()),
                new_encrypted_credential: new_credential.clone().map(VLBytes::new),
            },
            Signer::DsLeaf {
                leaf_index: group.own_leaf_index().u32(),
                key: signer,
            },
        )?;
        let aftermath = CommitAftermath {
            own_credential: new_credential.map(hex::encode),
            members: Vec::new(),
        };
        self.send_commit_sealed(id, record, group, operation, &body, &group_info, &aftermath)
            .await
    }

    async fn active_group(&self, name: &str) -> Result<Group, ClientError> {
        let record = self.user_group(name).await?;
        if !record.active {
            return Err(usage(format!("you are no longer a member of {name:?}")));
        }
        Ok(record)
    }

    /// Renew this client's certificate with a new key, then announce it: republish
    /// connection and key packages, and in every group (connection groups included)
    /// commit an update that carries the credential bound to the new certificate.
    /// Messages sent before stay verifiable against the previous certificate, which stays
    /// valid until it expires.
    pub async fn renew(&mut self) -> Result<Renewal, ClientError> {
        let result = self.renew_inner().await;
        self.finish(result).await
    }

    async fn renew_inner(&mut self) -> Result<Renewal, ClientError> {
        let id = self.identity().await?;
        self.pull_into_events(&id).await?;
        let fid = Fid::parse(&id.fid).map_err(|e| ClientError::Store(e.to_string()))?;
        let client_id =
            ClientId::parse(&id.client_id).map_err(|e| ClientError::Store(e.to_string()))?;
        let key = crypto::generate_signing_key(&mut OsRng);
        let csr = certs::create_csr(&fid, &client_id, &key)
            .map_err(|e| usage(format!("cannot build CSR: {e}")))?;
        let old_key = Self::signing_key(&id);
        let resp: as_::RegisterResponse = Self::api(&id)?
            .call(
                "as",
                as_::RENEW_CERTIFICATE,
                &as_::RenewCertificateRequest {
                    timestamp: now(),
                    csr: VLBytes::new(csr),
                },
                Self::as_signer(&id, &old_key),
            )
            .await?;
        let ca = ParsedCert::parse(resp.ca_certificate.as_slice())
            .map_err(|e| verification(format!("server CA certificate: {e}")))?;
        ca.verify_self_signed_ca(fid.domain())
            .map_err(|e| verification(format!("server CA certificate: {e}")))?;
        self.store.put_ca(fid.domain().as_str(), &ca.der).await?;
        let cert = ParsedCert::parse(resp.client_certificate.as_slice())
            .map_err(|e| verification(format!("renewed certificate: {e}")))?;
        let subject = self.verify_actor(&cert, now()).await?;
        if subject.fid != fid
            || subject.client_id != client_id
            || cert.public_key != key.verifying_key().to_bytes()
        {
            return Err(verification(
                "the server issued a certificate for another identity or key",
            ));
        }
        self.store
            .set_certificate(&cert.der, &key.to_bytes())
            .await?;
        let id = self.identity().await?;
        self.publish_connection_packages(&id).await?;
        self.publish_key_packages(&id).await?;
        let mut groups = 0;
        // Connection groups first: a contact pins the renewed certificate from there, so it
        // is pinned before the same renewal arrives in the other groups (ID-PIN-1).
        let mut records = self.store.groups().await?;
        records.sort_by_key(|r| r.kind != "connection");
        for record in records {
            if !record.active {
                continue;
            }
            let mut group = self.load_group(&record.group_id)?;
            let signer = mls::own_signer(&self.provider, &group)?;
            let credential = Self::encrypt_credential(
                &SymmetricKey(record.credential_key),
                &record.group_id,
                &Self::credential_info(&id, signer.public()),
            )?;
            let bundle = self.self_update(&mut group, &signer)?;
            self.send_commit(
                &id,
                &record,
                &mut group,
                ds::UPDATE,
                bundle,
                Some(credential),
            )
            .await?;
            groups += 1;
        }
        Ok(Renewal {
            fingerprint: hex::encode(cert.fingerprint()),
            not_after: cert.not_after,
            groups_updated: groups,
        })
    }

    /// Whether our certificate should be renewed: less than a third of its lifetime left.
    async fn needs_renewal(&self, id: &Identity) -> bool {
        match ParsedCert::parse(&id.certificate) {
            Ok(cert) => {
                let lifetime = cert.not_after.saturating_sub(cert.not_before);
                cert.not_after.saturating_sub(now()) < lifetime / 3
            }
            Err(_) => false,
        }
    }

    /// The messages received in group `name`, each re-verified as of when it arrived (so
    /// messages from before a certificate or CA rotation still verify after it).
    pub async fn history(&self, name: &str) -> Result<Vec<serde_json::Value>, ClientError> {
        let id = self.identity().await?;
        let record = self.user_group(name).await?;
        let mut out = Vec::new();
        // Requirement: CLI-HIST-1 (own messages confirmed late go where they were sent)
        let mut messages = self.store.messages(&record.group_id).await?;
        messages.sort_by_key(|m| m.received_at);
        for m in messages {
            let verified = match verify::decrypt_credential(
                &SymmetricKey(record.credential_key),
                &record.group_id,
                &m.encrypted_credential,
            ) {
                Ok(info) => {
                    self.verify_info(&info, &m.sender_leaf_key, m.received_at)
                        .await
                }
                Err(e) => Err(e),
            };
            // Requirement: ID-PIN-1
            let verified = self.verify_pinned(&id, verified).await;
            out.push(match verified {
                Ok((member, standing)) => {
                    json!({"received_at": m.received_at, "sender": member.fid, "verified": true,
                    "certificate": member.fingerprint, "pin": standing.status,
                    "warning": standing.problem, "text": m.text, "own": m.own})
                }
                Err(e) => json!({"received_at": m.received_at, "sender": null, "verified": false,
                    "problem": e.to_string(), "text": m.text, "own": m.own}),
            });
        }
        // Requirement: CL-LOSS-1
        // Where messages could not be processed, the history says so, in time order.
        for (at, reason) in self.store.gaps(&record.group_id).await? {
            let position = out
                .iter()
                .position(|m| m["received_at"].as_u64().is_some_and(|t| t > at))
                .unwrap_or(out.len());
            out.insert(
                position,
                json!({"received_at": at, "gap": true, "verified": false, "sender": null,
                    "problem": format!("a message could not be processed here: {reason}")}),
            );
        }
        Ok(out)
    }

    /// The groups this client is in (not the connection groups), with their number of
    /// members, sorted by name.
    pub async fn group_list(&self) -> Result<Vec<(String, usize, bool)>, ClientError> {
        let mut out = Vec::new();
        for record in self.store.groups().await? {
            if record.kind != "group" {
                continue;
            }
            let members = self.store.members(&record.group_id).await?.len();
            out.push((record.name, members, record.active));
        }
        Ok(out)
    }

    // Requirement: ID-PIN-1, ID-PIN-2
    /// The members of group `name`, each with its verified FID (or why it did not verify)
    /// and whether it is a pinned client of a contact.
    pub async fn members(&self, name: &str) -> Result<Vec<MemberView>, ClientError> {
        let id = self.identity().await?;
        let record = self.user_group(name).await?;
        let group = self.load_group(&record.group_id)?;
        let mut out = Vec::new();
        for member in group.members() {
            let leaf = member.index.u32();
            out.push(match self.verify_member(&record, &group, leaf).await {
                Ok(v) => {
                    let standing = self.standing(&id, &v).await?;
                    MemberView {
                        leaf_index: leaf,
                        fid: Some(v.fid),
                        verified: standing.status != PinStatus::Unpinned,
                        problem: standing.problem,
                        fingerprint: Some(v.fingerprint),
                        pin: Some(standing.status),
                    }
                }
                Err(e) => MemberView {
                    leaf_index: leaf,
                    fid: None,
                    verified: false,
                    problem: Some(e.to_string()),
                    fingerprint: None,
                    pin: None,
                },
            });
        }
        Ok(out)
    }

    /// Send `text` to the group `name`.
    pub async fn send(&mut self, name: &str, text: &str) -> Result<(), ClientError> {
        self.send_with(name, text, Notification::Send).await
    }

    // Requirement: QS-PUSH-4
    /// [`Client::send`], saying whether the recipients' servers may announce it by push
    /// notification (`Suppress`: they receive it unannounced).
    pub async fn send_with(
        &mut self,
        name: &str,
        text: &str,
        notification: Notification,
    ) -> Result<(), ClientError> {
        let result = self.send_inner(name, text, notification).await;
        self.finish(result).await
    }

    async fn send_inner(
        &mut self,
        name: &str,
        text: &str,
        notification: Notification,
    ) -> Result<(), ClientError> {
        let id = self.identity().await?;
        self.pull_into_events(&id).await?;
        let record = self.user_group(name).await?;
        if !record.active {
            return Err(usage(format!("you are no longer a member of {name:?}")));
        }
        if text.len() > 64 * 1024 {
            return Err(usage("messages are limited to 64 KiB"));
        }
        let payload = ApplicationPayload::Text(text.to_owned());
        match self
            .send_in_group(&id, &record, &payload, notification)
            .await
        {
            // Requirement: CL-RESYNC-1 (the DS is at a later epoch although our queue was
            // just processed: catch up, or resync if nothing queued can bring us there,
            // then send once more at the new epoch)
            Err(e) if e.code() == Some("WRONG_EPOCH") && self.sync_before_commit => {
                let before = self.load_group(&record.group_id)?.epoch().as_u64();
                self.catch_up_or_resync(&id, &record).await?;
                let record = self.user_group(name).await?;
                if !record.active || self.load_group(&record.group_id)?.epoch().as_u64() == before {
                    return Err(e);
                }
                self.send_in_group(&id, &record, &payload, notification)
                    .await
            }
            other => other,
        }
    }

    // ----- sync -------------------------------------------------------------------------

    /// Process everything queued for us and return the events, oldest first (including
    /// events received during earlier operations).
    pub async fn sync(&mut self) -> Result<Vec<serde_json::Value>, ClientError> {
        let id = self.identity().await?;
        if self.needs_renewal(&id).await {
            let renewal = self.renew().await?;
            self.store
                .push_event(
                    &json!({"kind": "certificate_renewed", "fingerprint": renewal.fingerprint,
                    "not_after": renewal.not_after, "groups_updated": renewal.groups_updated}),
                )
                .await?;
        }
        let id = self.identity().await?;
        let mut events = self.store.take_events().await?;
        let result = self.pull(&id).await;
        let fresh = self.finish(result).await?;
        events.extend(fresh);
        // Requirement: AS-TOKEN-3 (tokens are fetched ahead, at a time unrelated to the
        // group they will buy; a failure here is retried by the next sync)
        if let Err(e) = self.top_up_group_tokens(&id).await {
            tracing::debug!(error = %e, "group-creation tokens not topped up");
        }
        // Requirement: CL-KP-1 (after the queue: a join there already published a fresh
        // set; a failure here is retried by the next sync and loses nothing)
        match self.top_up_key_packages(&id).await {
            Ok(true) => events.push(json!({"kind": "key_packages_published",
                "detail": "few key packages were left at the server: published a fresh set"})),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "key packages not checked or topped up"),
        }
        // Connection requests waiting in the AS direct queue are shown too.
        let known: BTreeSet<String> = self
            .store
            .requests()
            .await?
            .into_iter()
            .map(|r| r.fid)
            .collect();
        match self.requests().await {
            Ok(all) => {
                for request in all.iter().filter(|r| !known.contains(&r.fid)) {
                    let warning = self.request_warning(request).await?;
                    events.push(json!({"kind": "connection_request", "fid": request.fid,
                        "warning": warning}));
                }
            }
            Err(e) => events.push(json!({"kind": "error",
                "detail": format!("could not fetch connection requests: {e}")})),
        }
        Ok(events)
    }

    async fn pull_into_events(&mut self, id: &Identity) -> Result<(), ClientError> {
        if !self.sync_before_commit {
            // Requests of earlier commands still unsettled go first, whatever else.
            for event in self.flush_outgoing(id).await? {
                self.store.push_event(&event).await?;
            }
            return Ok(());
        }
        let events = self.pull(id).await?;
        self.save().await?;
        for event in &events {
            self.store.push_event(event).await?;
        }
        Ok(())
    }

    async fn pull(&mut self, id: &Identity) -> Result<Vec<serde_json::Value>, ClientError> {
        let api = Self::api(id)?;
        let qs_key = SigningKey::from_bytes(&id.qs_client_key);
        // Requirement: QS-Q-2, ADV-NET-1 (resume from the persisted sequence number: each
        // message once, in order, whatever the network dropped or duplicated)
        let mut start = self
            .store
            .identity()
            .await?
            .map(|i| i.qs_next_seq)
            .unwrap_or(id.qs_next_seq);
        // Requirement: CL-AMBIG-1 (what an earlier command could not settle, first)
        let mut progress = QueueProgress {
            events: self.flush_outgoing(id).await?,
            ..QueueProgress::default()
        };
        // Requirement: QS-ENC-4 (registered before queue encryption: the QS stores our
        // entries unsealed until we give it a queue key)
        if self.identity().await?.queue_ratchet.is_none() {
            self.rekey_queue(id).await?;
        }
        loop {
            // A dequeue only reads from `start` (and drops what is below it): asking again
            // after a lost answer is safe, so a transport failure is retried a few times.
            let mut attempt = 0;
            let batch: Option<DequeueResponse> = loop {
                attempt += 1;
                let result = api
                    .call(
                        "qs",
                        qs::DEQUEUE,
                        &DequeueRequest {
                            timestamp: now(),
                            sequence_number_start: start,
                            max: DEQUEUE_BATCH,
                        },
                        Signer::QsClient {
                            id: id.qs_client_id,
                            key: &qs_key,
                        },
                    )
                    .await;
                match result {
                    Err(ClientError::Transport(_) | ClientError::NotSent(_)) if attempt < 3 => {
                        tokio::time::sleep(std::time::Duration::from_millis(250 * attempt)).await;
                    }
                    // What was processed is acknowledged already: its events must reach
                    // the user even though the next batch cannot be fetched now.
                    Err(e) if !progress.events.is_empty() => {
                        progress.events.push(json!({"kind": "error",
                            "detail": format!("could not fetch the rest of the queue: {e}")}));
                        break None;
                    }
                    other => break Some(other?),
                }
            };
            let Some(batch) = batch else { break };
            for message in &batch.messages {
                self.process_queue_message(id, message, &mut progress)
                    .await?;
                start = message.sequence_number.saturating_add(1);
            }
            if batch.remaining == 0 || batch.messages.is_empty() {
                break;
            }
        }
        self.after_queue(id, &mut progress).await;
        Ok(progress.events)
    }

    /// What follows processing queue messages: a join consumed one of our key packages,
    /// so a fresh set is published. A failure must not lose the events of what was already
    /// processed (and acknowledged): it is reported, and the last-resort package keeps us
    /// invitable meanwhile.
    pub(crate) async fn after_queue(&mut self, id: &Identity, progress: &mut QueueProgress) {
        // Requirement: QS-ENC-4
        if std::mem::take(&mut progress.rekey)
            && let Err(e) = self.rekey_queue(id).await
        {
            progress.events.push(json!({"kind": "error",
                "detail": format!("the queue could not be re-keyed (the next sync tries again): {e}")}));
        }
        if std::mem::take(&mut progress.joined)
            && let Err(e) = self.publish_key_packages(id).await
        {
            progress.events.push(json!({"kind": "error",
                "detail": format!("could not publish new key packages (the next join publishes them): {e}")}));
        }
    }

    /// Process one message of our QS queue (from `dequeue` or the listen stream), then
    /// persist the MLS state and the next sequence number before anything acknowledges it.
    pub(crate) async fn process_queue_message(
        &mut self,
        id: &Identity,
        message: &phoenix_types::messages::QueueMessage,
        progress: &mut QueueProgress,
    ) -> Result<(), ClientError> {
        // Requirement: QS-ENC-1 (the entry is sealed under our queue's chain; the
        // position is read afresh: the previous message moved it)
        let position = self.identity().await?;
        let (opened, ratchet) = queue_entry::open(&position, message);
        let opened_kind = match &opened {
            queue_entry::Opened::ChainBroken(_) => OpenedKind::ChainBroken,
            _ => OpenedKind::Other,
        };
        let next_seq = message.sequence_number.saturating_add(1);
        let payload = match opened {
            queue_entry::Opened::Payload(payload) => payload,
            queue_entry::Opened::Processed => return Ok(()),
            queue_entry::Opened::Lost(detail) | queue_entry::Opened::ChainBroken(detail) => {
                if matches!(opened_kind, OpenedKind::ChainBroken) {
                    progress.rekey = true;
                }
                progress
                    .events
                    .push(json!({"kind": "error", "detail": detail}));
                self.store
                    .set_qs_position(next_seq, ratchet.as_ref())
                    .await?;
                return Ok(());
            }
        };
        match self.handle_queue_message(id, &payload).await {
            Ok(Some(event)) => {
                if event.get("kind").and_then(|k| k.as_str()) == Some("joined") {
                    progress.joined = true;
                }
                progress.events.push(event);
            }
            Ok(None) => {}
            Err(e) => {
                progress
                    .events
                    .push(self.unprocessed_event(&payload, &e).await);
                // Requirement: CL-RESYNC-1 (a message from a future epoch: we fell
                // behind; at most one resync per group and sync)
                if let Some(record) = self.behind_in(&payload).await
                    && progress.resynced.insert(record.group_id.clone())
                {
                    match self.resync_group(id, &record).await {
                        Ok(event) => progress.events.push(event),
                        Err(e) => {
                            // Back to the state saved after the previous message.
                            self.rollback().await?;
                            progress
                                .events
                                .push(json!({"kind": "error", "group": record.name,
                                "detail": format!("fell behind and could not resync: {e}")}));
                        }
                    }
                }
            }
        }
        // Persist the MLS state before acknowledging the message.
        self.save().await?;
        self.store
            .set_qs_position(next_seq, ratchet.as_ref())
            .await?;
        Ok(())
    }

    // Requirement: CL-LOSS-1
    /// The event for a queue message that could not be processed: the reason, and the
    /// group it was for where the client can tell (the sender of an undecryptable message
    /// is encrypted with it, so it is not known).
    async fn unprocessed_event(&self, payload: &[u8], error: &ClientError) -> serde_json::Value {
        let group = match codec::decode::<QueuePayload>(payload, 4 * 1024 * 1024) {
            Ok(QueuePayload::GroupMessage(message)) => {
                match self.store.group_by_id(message.group_id.as_slice()).await {
                    Ok(Some(record)) => {
                        // The gap shows in `history` too; failing to record it must not
                        // hide the event itself.
                        let _ = self
                            .store
                            .add_gap(&record.group_id, now(), &error.to_string())
                            .await;
                        Some(record.name)
                    }
                    _ => Some(format!(
                        "unknown group {}",
                        hex::encode(message.group_id.as_slice())
                    )),
                }
            }
            Ok(QueuePayload::Welcome(_)) => Some("(an invitation)".to_owned()),
            Err(_) => None,
        };
        match group {
            Some(group) => json!({"kind": "error", "group": group, "detail": error.to_string()}),
            None => json!({"kind": "error", "detail": error.to_string()}),
        }
    }

    async fn handle_queue_message(
        &mut self,
        id: &Identity,
        payload: &[u8],
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let payload: QueuePayload =
            codec::decode(payload, 4 * 1024 * 1024).map_err(ClientError::Server)?;
        match payload {
            QueuePayload::GroupMessage(message) => self.handle_group_message(id, message).await,
            QueuePayload::Welcome(bundle) => self.handle_welcome(id, bundle).await.map(Some),
        }
    }

    async fn handle_group_message(
        &mut self,
        id: &Identity,
        message: GroupMessage,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let Some(mut record) = self.store.group_by_id(message.group_id.as_slice()).await? else {
            return Err(verification("a message for a group we are not in"));
        };
        let mut group = self.load_group(&record.group_id)?;
        let protocol = mls::protocol_message(message.message.as_slice())?;
        let processed = group
            .process_message(&self.provider, protocol)
            .map_err(mls_err)?;
        let sender = processed.sender().clone();
        let message_epoch = processed.epoch().as_u64();
        let display = display_name(&record);
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Sender::Member(leaf) = sender else {
                    return Err(verification("an application message from a non-member"));
                };
                let payload: ApplicationPayload =
                    codec::decode(&app.into_bytes(), 128 * 1024).map_err(ClientError::Server)?;
                // The sender as it was in the message's epoch, which may have ended (a
                // message sent just before a commit that removed or re-keyed its sender).
                let verified = self
                    .verify_member_at(&record, &group, leaf.u32(), message_epoch)
                    .await;
                match payload {
                    ApplicationPayload::Text(text) => {
                        // Keep the message with the sender's credential of its epoch, so
                        // that `history` can re-verify it as of its arrival.
                        let (leaf_key, credential) = self
                            .member_at(&record, &group, leaf.u32(), message_epoch)
                            .await
                            .unwrap_or_default();
                        self.store
                            .put_message(&StoredMessage {
                                group_id: record.group_id.clone(),
                                received_at: now(),
                                sender_leaf: leaf.u32(),
                                sender_leaf_key: leaf_key,
                                encrypted_credential: credential,
                                text: text.clone(),
                                own: false,
                            })
                            .await?;
                        // Requirement: ID-PIN-1, ID-PIN-2 (a contact's FID only from a client
                        // pinned in the connection group; other FIDs against the first
                        // certificate seen)
                        let pinned = self.verify_pinned(id, verified).await;
                        Ok(Some(match pinned {
                            Ok((member, standing)) => {
                                json!({"kind": "message", "group": display, "sender": member.fid, "verified": true,
                                    "pin": standing.status, "warning": standing.problem, "text": text})
                            }
                            Err(e) => {
                                json!({"kind": "message", "group": display, "sender": null, "verified": false,
                                         "problem": e.to_string(), "text": text})
                            }
                        }))
                    }
                    ApplicationPayload::Friendship(friendship) => {
                        let member = verified?;
                        let Some(contact_fid) = record
                            .contact
                            .clone()
                            .filter(|_| record.kind == "connection")
                        else {
                            return Err(verification(
                                "a friendship package outside a connection group",
                            ));
                        };
                        if member.fid != contact_fid {
                            return Err(verification(format!(
                                "{} sent a friendship package in the connection group with {contact_fid}",
                                member.fid
                            )));
                        }
                        let pinned = self.store.contact_clients(&contact_fid).await?;
                        if pinned.is_empty() {
                            self.store
                                .pin_contact_client(
                                    &contact_fid,
                                    &member.client_id,
                                    &member.certificate,
                                )
                                .await?;
                        }
                        self.store
                            .put_contact(
                                &Contact {
                                    fid: contact_fid.clone(),
                                    status: "connected".into(),
                                    friendship_token: Some(friendship.friendship_token),
                                    friendship_key: Some(friendship.friendship_key),
                                    qs_domain: Some(friendship.qs_domain),
                                    connection_group_id: record.group_id.clone(),
                                },
                                now(),
                            )
                            .await?;
                        Ok(Some(json!({"kind": "connected", "contact": contact_fid})))
                    }
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed: Vec<u32> = staged
                    .remove_proposals()
                    .map(|r| r.remove_proposal().removed().u32())
                    .collect();
                let self_removed = staged.self_removed();
                // Requirement: CL-RESYNC-1 (a member rejoining by external commit with one
                // Remove, of its own old leaf: the new leaf must be the same client)
                let resync = match (&sender, removed.as_slice()) {
                    (Sender::NewMemberCommit, [old]) => {
                        let was = self.verify_member(&record, &group, *old).await?;
                        let new_key = staged
                            .update_path_leaf_node()
                            .map(|l| l.signature_key().as_slice().to_vec())
                            .ok_or_else(|| verification("an external commit without a path"))?;
                        let [credential] = message.new_credentials.as_slice() else {
                            return Err(verification(
                                "a resync commit must carry exactly one new credential",
                            ));
                        };
                        let info = verify::decrypt_credential(
                            &SymmetricKey(record.credential_key),
                            &record.group_id,
                            credential.encrypted_credential.as_slice(),
                        )?;
                        let now_member = self.verify_info(&info, &new_key, now()).await?;
                        if was.fid != now_member.fid || was.client_id != now_member.client_id {
                            return Err(verification(format!(
                                "a resync replaced {}'s client {} with {}'s client {}",
                                was.fid, was.client_id, now_member.fid, now_member.client_id
                            )));
                        }
                        Some(now_member)
                    }
                    _ => None,
                };
                let before = leaf_keys(&group);
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(mls_err)?;
                let replaced: Vec<u32> = message
                    .new_credentials
                    .iter()
                    .map(|c| c.leaf_index)
                    .collect();
                self.archive_ended_epoch(&record, &before, &group, &replaced)
                    .await?;
                for leaf in &removed {
                    self.store.remove_member(&record.group_id, *leaf).await?;
                }
                for credential in &message.new_credentials {
                    self.store
                        .set_member(
                            &record.group_id,
                            credential.leaf_index,
                            credential.encrypted_credential.as_slice(),
                        )
                        .await?;
                }
                if self_removed {
                    record.active = false;
                    self.store.put_group(&record).await?;
                    return Ok(Some(json!({"kind": "removed", "group": display})));
                }
                if let Some(member) = resync {
                    if record.kind == "connection" {
                        // Requirement: ID-PIN-1 (still the contact's pinned client)
                        let contact = record.contact.clone().unwrap_or_default();
                        let pinned = self.store.contact_clients(&contact).await?;
                        if member.fid != contact
                            || pinned.get(&member.client_id) != Some(&member.certificate)
                        {
                            return Err(verification(format!(
                                "{} resynced into the connection group with {contact}, which is not {contact}'s pinned client",
                                member.fid
                            )));
                        }
                        return Ok(None);
                    }
                    return Ok(Some(
                        json!({"kind": "member_resynced", "group": display, "member": member.fid}),
                    ));
                }
                let mut joined = Vec::new();
                let mut events = Vec::new();
                let mut warnings = Vec::new();
                for credential in &message.new_credentials {
                    let member = self
                        .verify_member(&record, &group, credential.leaf_index)
                        .await?;
                    let contact = record.contact.clone().unwrap_or_default();
                    let renewal = record.kind == "connection"
                        && sender
                            == Sender::Member(openmls::prelude::LeafNodeIndex::new(
                                credential.leaf_index,
                            ))
                        && member.fid == contact;
                    if renewal {
                        // The contact's pinned client announced a renewed certificate in our
                        // connection group, signed by its current leaf: pin the new one. A new
                        // certificate that does not come this way (e.g. one a malicious AS
                        // minted) is never pinned.
                        let pinned = self.store.contact_clients(&contact).await?;
                        if !pinned.contains_key(&member.client_id) {
                            return Err(verification(format!(
                                "{contact} announced a certificate for client {}, which is not the client pinned in our connection group",
                                member.client_id
                            )));
                        }
                        if pinned.get(&member.client_id) != Some(&member.certificate) {
                            let was = self.verification_of(id, &contact).await?;
                            self.store
                                .pin_contact_client(
                                    &contact,
                                    &member.client_id,
                                    &member.certificate,
                                )
                                .await?;
                            // Requirement: ID-OOB-1 (a verified contact's clients changed:
                            // said loudly, and `contacts` shows `changed`)
                            let verification = self.verification_of(id, &contact).await?;
                            events.push(
                                json!({"kind": "contact_certificate_renewed", "contact": contact,
                                "client_id": member.client_id, "fingerprint": member.fingerprint,
                                "verification": verification,
                                "verified_contact_changed": was == "verified" && verification == "changed"}),
                            );
                        }
                        continue;
                    }
                    if sender
                        == Sender::Member(openmls::prelude::LeafNodeIndex::new(
                            credential.leaf_index,
                        ))
                    {
                        // A member replaced its own credential (a renewed certificate).
                        // Requirement: ID-PIN-1 (a contact's FID on an unpinned certificate
                        // is reported, whichever way it enters the group)
                        if record.kind != "connection" {
                            let standing = self.standing(id, &member).await?;
                            if let Some(problem) = standing.problem {
                                warnings.push(json!({"fid": member.fid, "pin": standing.status,
                                    "fingerprint": member.fingerprint, "problem": problem}));
                            }
                        }
                        continue;
                    }
                    if record.kind == "connection" {
                        // The only client that may join our connection group with a contact is
                        // the one whose connection package we used (pinned at `connect`).
                        let contact = record.contact.clone().unwrap_or_default();
                        let pinned = self.store.contact_clients(&contact).await?;
                        if member.fid != contact
                            || pinned.get(&member.client_id) != Some(&member.certificate)
                        {
                            return Err(verification(format!(
                                "{} joined the connection group with {contact}, which is not {contact}'s pinned client",
                                member.fid
                            )));
                        }
                    }
                    if record.kind != "connection" {
                        // Requirement: ID-PIN-1, ID-PIN-2
                        let standing = self.standing(id, &member).await?;
                        if let Some(problem) = standing.problem {
                            warnings.push(json!({"fid": member.fid, "pin": standing.status,
                                "fingerprint": member.fingerprint, "problem": problem}));
                        }
                    }
                    joined.push(member.fid);
                }
                if let Some(event) = events.pop() {
                    return Ok(Some(event));
                }
                Ok(if record.kind == "connection" {
                    None
                } else if !joined.is_empty() {
                    Some(
                        json!({"kind": "members_added", "group": display, "members": joined,
                        "warnings": warnings}),
                    )
                } else if !warnings.is_empty() {
                    Some(json!({"kind": "member_warning", "group": display, "warnings": warnings}))
                } else {
                    None
                })
            }
            _ => Ok(None),
        }
    }

    async fn handle_welcome(
        &mut self,
        id: &Identity,
        bundle: WelcomeBundle,
    ) -> Result<serde_json::Value, ClientError> {
        let group_id = bundle.group_id.as_slice().to_vec();
        let friendship_key = SymmetricKey(id.friendship_key);
        let wai_bytes =
            crypto::open_aead(&friendship_key, &group_id, bundle.welcome_info.as_slice()).map_err(
                |_| verification("an invitation whose attribution does not decrypt: refused"),
            )?;
        let wai: WelcomeAttributionInfo =
            codec::decode(&wai_bytes, 64 * 1024).map_err(|e| verification(e.detail))?;
        let tbs: WelcomeAttributionTbs =
            codec::decode(wai.tbs.as_slice(), 64 * 1024).map_err(|e| verification(e.detail))?;
        let cert = ParsedCert::parse(tbs.sender_certificate.as_slice())
            .map_err(|e| verification(e.to_string()))?;
        let inviter = self.verify_actor(&cert, now()).await?;
        crypto::verify(
            &cert.public_key,
            label::WELCOME_ATTRIBUTION,
            wai.tbs.as_slice(),
            wai.signature.as_slice(),
        )
        .map_err(|_| verification("the invitation is not signed by its inviter"))?;
        if tbs.group_id.as_slice() != group_id.as_slice() {
            return Err(verification(
                "the invitation's attribution names another group",
            ));
        }
        let inviter_fid = inviter.fid.to_string();
        let connected = self
            .store
            .contact(&inviter_fid)
            .await?
            .is_some_and(|c| c.status == "connected");
        let pinned = self.store.contact_clients(&inviter_fid).await?;
        // Requirement: ID-CONN-2, ADV-AS-1
        if !connected || pinned.get(inviter.client_id.as_str()) != Some(&cert.der) {
            return Ok(
                json!({"kind": "invitation_refused", "group": tbs.group_name, "invited_by": inviter_fid,
                "reason": "the inviting client is not in our connection group with the inviter"}),
            );
        }
        let group = mls::join_from_welcome(
            &self.provider,
            &mls::join_config(),
            bundle.welcome.as_slice(),
            Some(bundle.ratchet_tree.as_slice()),
            openmls::group::LeafNodeLifetimePolicy::Verify,
        )?;
        if group.group_id().as_slice() != group_id.as_slice() {
            return Err(verification("the welcome is for another group"));
        }
        let mut name = tbs.group_name.clone();
        let mut n = 2;
        while self.store.name_taken(&name).await? || check_group_name(&name).is_err() {
            name = format!(
                "{}-{n}",
                tbs.group_name
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(48)
                    .collect::<String>()
            );
            n += 1;
        }
        let record = Group {
            group_id: group_id.clone(),
            name: name.clone(),
            ear_key: tbs.ear_key,
            credential_key: tbs.credential_key,
            kind: "group".into(),
            contact: None,
            active: true,
        };
        for credential in &bundle.credentials {
            self.store
                .set_member(
                    &group_id,
                    credential.leaf_index,
                    credential.encrypted_credential.as_slice(),
                )
                .await?;
        }
        let mut inviter_present = false;
        let mut warnings = Vec::new();
        for member in group.members() {
            if let Ok(v) = self
                .verify_member(&record, &group, member.index.u32())
                .await
            {
                inviter_present |= v.fid == inviter_fid && v.certificate == cert.der;
                // Requirement: ID-PIN-1, ID-PIN-2
                let standing = self.standing(id, &v).await?;
                if let Some(problem) = standing.problem {
                    warnings.push(json!({"fid": v.fid, "pin": standing.status,
                        "fingerprint": v.fingerprint, "problem": problem}));
                }
            }
        }
        if !inviter_present {
            return Err(verification(
                "the inviter is not a verified member of the group it invited us to",
            ));
        }
        self.store.put_group(&record).await?;
        Ok(
            json!({"kind": "joined", "group": name, "invited_by": inviter_fid, "warnings": warnings}),
        )
    }

    /// Pending connection requests as stored (without fetching new ones).
    pub async fn stored_requests(&self) -> Result<Vec<ConnectionRequest>, ClientError> {
        self.store.requests().await
    }

    /// The local state directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Group names and ids, for listing.
    pub async fn group(&self, name: &str) -> Result<Group, ClientError> {
        self.user_group(name).await
    }
}

fn direct_queue_aad(fid: &str, client_id: &str) -> Vec<u8> {
    let mut aad = fid.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(client_id.as_bytes());
    aad
}

/// The members' signature keys in the group's current epoch, by leaf index.
fn leaf_keys(group: &MlsGroup) -> BTreeMap<u32, Vec<u8>> {
    group
        .members()
        .map(|m| (m.index.u32(), m.signature_key))
        .collect()
}

fn display_name(record: &Group) -> String {
    record.name.clone()
}

fn check_group_name(name: &str) -> Result<(), ClientError> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('@')
        || name.chars().any(|c| c.is_control())
    {
        return Err(usage(
            "group names are 1 to 64 printable characters and may not start with @",
        ));
    }
    Ok(())
}
