//! An in-process server for the stateful targets, and the signing side of a client.
//!
//! One [`Server`] on in-memory SQLite is shared by the runs of a target process and
//! replaced every [`RECYCLE_AFTER`] runs, so memory stays bounded. Each run gets its own
//! namespace (FIDs, tokens) so runs do not see each other's users; keys are derived
//! deterministically from small indices chosen by the fuzz input, so a crashing input
//! replays with the same keys.

use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use ed25519_dalek::SigningKey;
use tls_codec::{Serialize, VLBytes};

use phoenix_server::auth::Request;
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::Store;
use phoenix_server::{as_, ds, qs};
use phoenix_types::PROTOCOL_VERSION;
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Domain;
use phoenix_types::messages::{
    AsClientAuth, Auth, DsLeafAuth, QsAuth, RequestEnvelope, operation_label,
};

use crate::check::blames_caller;
use crate::ds_fixture::DsFixture;

/// A fixed point in time for the stateless targets (2026-09-21).
pub const NOW: u64 = 1_790_000_000;

/// The domain of the in-process server.
pub const DOMAIN: &str = "fuzz.test";

/// Runs after which the shared server is replaced by a fresh one.
pub const RECYCLE_AFTER: u64 = 5_000;

/// Signing key number `n`, the same in every run and every process.
pub fn key(n: u8) -> SigningKey {
    let mut seed = b"phoenix-fuzz signing key ".to_vec();
    seed.push(n);
    SigningKey::from_bytes(&crypto::sha256(&seed))
}

/// A fixed CA certificate of `fuzz.test` (key 255), for the certificate target.
pub fn fixed_ca() -> &'static ParsedCert {
    static CA: OnceLock<ParsedCert> = OnceLock::new();
    CA.get_or_init(|| {
        let domain = Domain::parse(DOMAIN).expect("a valid domain");
        let der = certs::create_ca_certificate(
            &domain,
            &key(255),
            &[1; 16],
            NOW - 3600,
            NOW + 365 * 24 * 3600,
        )
        .expect("a CA certificate");
        ParsedCert::parse(&der).expect("our CA certificate parses")
    })
}

/// Who signs a request in a harness call.
pub enum Signer<'a> {
    Anonymous,
    AsClient {
        fid: &'a str,
        client_id: &'a str,
        key: &'a SigningKey,
    },
    QsClient {
        id: [u8; 16],
        key: &'a SigningKey,
    },
    DsLeaf {
        leaf_index: u32,
        key: &'a dyn openmls_traits::signatures::Signer,
    },
}

/// How a request is damaged before it is sent, chosen by the fuzzer. Most useful inputs
/// send valid requests (`None`) and damage a few.
#[derive(Debug, Clone, Arbitrary)]
pub enum Mutation {
    None,
    /// Flip one bit of the payload after signing.
    FlipPayload {
        at: u16,
        bit: u8,
    },
    /// Flip one bit of the signature.
    FlipSignature {
        at: u8,
        bit: u8,
    },
    /// Cut the payload after signing.
    TruncatePayload {
        keep: u16,
    },
    /// Append a byte to the payload after signing.
    AppendToPayload {
        byte: u8,
    },
    /// Sign under another operation's label.
    WrongLabel,
    /// Claim another protocol version.
    WrongVersion {
        version: u16,
    },
    /// Send the request without authentication.
    DropAuth,
    /// Flip one bit of the encoded envelope.
    FlipEnvelope {
        at: u16,
        bit: u8,
    },
    /// Cut the encoded envelope.
    TruncateEnvelope {
        keep: u16,
    },
}

fn flip(bytes: &mut [u8], at: usize, bit: u8) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    if let Some(b) = bytes.get_mut(at % len) {
        *b ^= 1 << (bit % 8);
    }
}

/// Build the envelope of `service/operation` with `payload`, signed by `signer` and then
/// damaged by `mutation`.
pub fn envelope(
    service: &str,
    operation: &str,
    payload: &[u8],
    signer: &Signer<'_>,
    mutation: &Mutation,
) -> Vec<u8> {
    let label = match mutation {
        Mutation::WrongLabel => operation_label(service, "another_operation"),
        _ => operation_label(service, operation),
    };
    let mut auth = match signer {
        Signer::Anonymous => Auth::None,
        Signer::AsClient {
            fid,
            client_id,
            key,
        } => Auth::AsClient(AsClientAuth {
            fid: (*fid).to_owned(),
            client_id: (*client_id).to_owned(),
            signature: VLBytes::new(crypto::sign(key, &label, payload).to_vec()),
        }),
        Signer::QsClient { id, key } => Auth::QsClient(QsAuth {
            id: *id,
            signature: VLBytes::new(crypto::sign(key, &label, payload).to_vec()),
        }),
        Signer::DsLeaf { leaf_index, key } => Auth::DsLeaf(DsLeafAuth {
            leaf_index: *leaf_index,
            signature: VLBytes::new(
                key.sign(&crypto::labelled(&label, payload))
                    .expect("the leaf key signs"),
            ),
        }),
    };
    let mut payload = payload.to_vec();
    let mut version = PROTOCOL_VERSION;
    match mutation {
        Mutation::FlipPayload { at, bit } => flip(&mut payload, usize::from(*at), *bit),
        Mutation::TruncatePayload { keep } => payload.truncate(usize::from(*keep)),
        Mutation::AppendToPayload { byte } => payload.push(*byte),
        Mutation::WrongVersion { version: v } => version = *v,
        Mutation::DropAuth => auth = Auth::None,
        Mutation::FlipSignature { at, bit } => match &mut auth {
            Auth::AsClient(AsClientAuth { signature, .. })
            | Auth::QsUser(QsAuth { signature, .. })
            | Auth::QsClient(QsAuth { signature, .. })
            | Auth::DsLeaf(DsLeafAuth { signature, .. }) => {
                let mut bytes = signature.as_slice().to_vec();
                flip(&mut bytes, usize::from(*at), *bit);
                *signature = VLBytes::new(bytes);
            }
            Auth::None => {}
        },
        _ => {}
    }
    let mut body = RequestEnvelope {
        version,
        payload: VLBytes::new(payload),
        auth,
    }
    .tls_serialize_detached()
    .expect("an envelope encodes");
    match mutation {
        Mutation::FlipEnvelope { at, bit } => flip(&mut body, usize::from(*at), *bit),
        Mutation::TruncateEnvelope { keep } => body.truncate(usize::from(*keep)),
        _ => {}
    }
    body
}

/// The shared in-process server of a target process.
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub server: Arc<Server>,
    /// Runs served by this server so far; also the namespace of the current run.
    pub runs: u64,
    /// A process-unique number of this server (namespaces stay unique across recycling).
    pub generation: u64,
    /// The DS target's precomputed groups, built on first use.
    pub ds: Option<Box<DsFixture>>,
    /// The application messages (MLS bytes) the DS target got this server to accept: the
    /// DS refuses the same message again (`REPLAYED`), in this run or a later one.
    pub ds_sent: std::cell::RefCell<std::collections::BTreeSet<Vec<u8>>>,
    /// SHA-256 of every request body of a replay-protected operation this server accepted
    /// (ADV-REPLAY-3): the same bytes again are refused with `REPLAYED`, in this run or a
    /// later one ([`Harness::call`] checks it).
    pub accepted: std::cell::RefCell<std::collections::BTreeSet<[u8; 32]>>,
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

impl Harness {
    fn new(generation: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = runtime.block_on(async {
            let store = Store::connect("sqlite::memory:")
                .await
                .expect("in-memory SQLite");
            Server::start(
                Domain::parse(DOMAIN).expect("a valid domain"),
                store,
                Limits::default(),
            )
            .await
            .expect("the server starts")
        });
        Self {
            runtime,
            server,
            runs: 0,
            generation,
            ds: None,
            ds_sent: Default::default(),
            accepted: Default::default(),
        }
    }

    /// Run `f` with the shared server (created or recycled as needed), as a new run.
    pub fn with<T>(f: impl FnOnce(&mut Harness) -> T) -> T {
        let mut guard = HARNESS.lock().unwrap_or_else(|p| p.into_inner());
        let generation = match guard.as_ref() {
            Some(h) if h.runs < RECYCLE_AFTER => None,
            Some(h) => Some(h.generation + 1),
            None => Some(0),
        };
        if let Some(generation) = generation {
            // Drop the old server (and its runtime) before building the next one.
            *guard = None;
            *guard = Some(Harness::new(generation));
        }
        let harness = guard.as_mut().expect("just created");
        harness.runs += 1;
        f(harness)
    }

    /// The DS fixture of this server, built on first use.
    pub fn ds_fixture(&mut self) -> &DsFixture {
        if self.ds.is_none() {
            let fixture = DsFixture::build(self);
            self.ds = Some(Box::new(fixture));
        }
        self.ds.as_deref().expect("just built")
    }

    /// A name unique to this run: `r<generation>x<run>`.
    pub fn namespace(&self) -> String {
        format!("r{}x{}", self.generation, self.runs)
    }

    /// Decode `body` as the server's HTTP boundary does and run the operation, with the
    /// current time. Any error must blame the caller.
    pub fn call(
        &self,
        service: &'static str,
        operation: &'static str,
        body: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        let server = &self.server;
        let digest =
            phoenix_server::replay::protected(service, operation).map(|_| crypto::sha256(body));
        let replay = self.is_replay(service, operation, body);
        let result = match Request::decode(service, operation, body, server.limits.max_body) {
            Ok(request) => self.runtime.block_on(async {
                let now = now();
                match service {
                    "as" => as_::handle(server, &request, now).await,
                    "qs" => qs::handle(server, &request, now).await,
                    _ => ds::handle(server, &request, now).await,
                }
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            blames_caller(&format!("{service}/{operation}"), e);
        }
        // Requirement: ADV-REPLAY-3
        if replay {
            assert_eq!(
                result.as_ref().err().map(|e| e.code),
                Some(ErrorCode::Replayed),
                "{service}/{operation}: the exact bytes of an accepted request were not refused as a replay"
            );
        } else if let (Ok(_), Some(digest)) = (&result, digest) {
            self.accepted.borrow_mut().insert(digest);
        }
        result
    }

    /// Whether `body` is an exact copy of a replay-protected request this server accepted
    /// before: [`Harness::call`] then expects `REPLAYED` (Requirement: ADV-REPLAY-3).
    pub fn is_replay(&self, service: &str, operation: &str, body: &[u8]) -> bool {
        phoenix_server::replay::protected(service, operation).is_some()
            && self.accepted.borrow().contains(&crypto::sha256(body))
    }

    /// Encode `payload`, sign, damage and send it.
    pub fn send<P: Serialize>(
        &self,
        service: &'static str,
        operation: &'static str,
        payload: &P,
        signer: &Signer<'_>,
        mutation: &Mutation,
    ) -> Result<Vec<u8>, WireError> {
        let payload = payload.tls_serialize_detached().expect("a payload encodes");
        let body = envelope(service, operation, &payload, signer, mutation);
        self.call(service, operation, &body)
    }
}

/// Whether a mutation leaves the request intact (so the outcome can be predicted).
pub fn intact(mutation: &Mutation) -> bool {
    matches!(mutation, Mutation::None)
}
