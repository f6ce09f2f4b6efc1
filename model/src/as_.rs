//! The Authentication Service: the only service that knows users by their FID. It is the
//! domain's CA (it issues one ID-Cert per registered client and keeps every certificate it
//! ever issued, with its validity window), holds connection packages and the direct queues
//! used to establish connections.
//!
//! Each operation checks, in the server's order, what the server checks, and fails with
//! the same code. Not here: QS pseudonyms or groups (the AS never sees them).

use std::collections::{BTreeMap, BTreeSet};

use phoenix_types::error::ErrorCode;

use crate::call::{AsCall, AsSigner, ConnectionPackageArg, Outcome, PackageDefect, Reply};
use crate::ids::{ClientName, DomainId, Fid, FidArg, KeyId, PkgId, Signed, Time};
use crate::queue::{self, Queue, QueueItem};
use crate::state::{Config, Ghost, QueueRef};

/// The content of an ID-Cert: which client of which user holds `key`, and when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CertBody {
    pub serial: u32,
    pub fid: Fid,
    pub client: ClientName,
    pub key: KeyId,
    pub not_before: Time,
    pub not_after: Time,
}

/// An ID-Cert: the body signed by the issuing CA's key.
pub type Certificate = Signed<CertBody>;

/// A registered client and its current certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsClient {
    pub certificate: Certificate,
    pub direct_queue: Queue,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AsUser {
    pub clients: BTreeMap<ClientName, AsClient>,
}

/// A published connection package, in upload order (the fetch takes the oldest one-time
/// package first: the model's refinement of "any one", so that conformance can compare).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredConnectionPackage {
    pub fid: Fid,
    pub client: ClientName,
    pub id: PkgId,
    pub last_resort: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsState {
    pub domain: DomainId,
    /// The CA's signing key (its self-signed certificate is named by it).
    pub ca_key: KeyId,
    pub users: BTreeMap<Fid, AsUser>,
    /// Every certificate ever issued, in issuance order (Requirement: AS-CERT-2).
    pub certificates: Vec<Certificate>,
    pub packages: Vec<StoredConnectionPackage>,
    pub next_serial: u32,
    /// Group-creation tokens issued per client (the server counts per UTC day; the model
    /// has no days: its allowance is per run) (Requirement: AS-TOKEN-2).
    pub tokens_issued: BTreeMap<(Fid, ClientName), u32>,
    /// The next token's name.
    pub next_token: u32,
    /// Replay records: the signed state-changing requests accepted, as they were (the
    /// server keeps a digest of each) (Requirement: ADV-REPLAY-3).
    pub seen: BTreeSet<AsCall>,
}

impl AsState {
    pub fn new(domain: DomainId, ca_key: KeyId) -> Self {
        Self {
            domain,
            ca_key,
            users: BTreeMap::new(),
            certificates: Vec::new(),
            packages: Vec::new(),
            next_serial: 1,
            tokens_issued: BTreeMap::new(),
            next_token: 0,
            seen: BTreeSet::new(),
        }
    }

    pub fn client(&self, fid: &Fid, client: ClientName) -> Option<&AsClient> {
        self.users.get(fid).and_then(|u| u.clients.get(&client))
    }
}

/// Run one AS call.
pub fn handle(
    state: &mut AsState,
    ghost: &mut Ghost,
    config: &Config,
    now: Time,
    call: &AsCall,
) -> Outcome {
    // Requirement: ADV-REPLAY-3
    let protected = replay_protected(call);
    if protected && state.seen.contains(call) {
        return Err(ErrorCode::Replayed);
    }
    let outcome = handle_call(state, ghost, config, now, call);
    if protected && outcome.is_ok() {
        state.seen.insert(call.clone());
    }
    outcome
}

/// Whether the server keeps replay records of `call` (the signed state-changing AS
/// requests, the model has no certificate renewal; and the anonymous connection request,
/// whose identical copy is a client retrying: Requirement: CL-AMBIG-3) (Requirement:
/// ADV-REPLAY-3).
pub fn replay_protected(call: &AsCall) -> bool {
    matches!(
        call,
        AsCall::PublishConnectionPackages { .. }
            | AsCall::IssueGroupTokens { .. }
            | AsCall::EnqueueConnection { .. }
    )
}

fn handle_call(
    state: &mut AsState,
    ghost: &mut Ghost,
    config: &Config,
    now: Time,
    call: &AsCall,
) -> Outcome {
    match call {
        AsCall::Register {
            fid,
            client,
            key,
            csr_valid,
        } => register(state, config, now, *fid, *client, *key, *csr_valid),
        AsCall::PublishConnectionPackages {
            signer,
            fresh,
            packages,
        } => publish_connection_packages(state, now, signer, *fresh, packages),
        AsCall::FetchConnectionPackage { fid } => fetch_connection_package(state, ghost, *fid),
        AsCall::IssueGroupTokens {
            signer,
            fresh,
            count,
            ..
        } => issue_group_tokens(state, ghost, config, now, signer, *fresh, *count),
        AsCall::EnqueueConnection { fid, client, msg } => {
            let fid = match fid {
                FidArg::Valid(fid) => *fid,
                FidArg::Malformed => return Err(ErrorCode::InvalidFid),
            };
            let Some(user) = state.users.get_mut(&fid) else {
                return Err(ErrorCode::UnknownClient);
            };
            let Some(record) = user.clients.get_mut(client) else {
                return Err(ErrorCode::UnknownClient);
            };
            // Requirement: AS-DQ-1
            let (next, _) = queue::enqueue(&record.direct_queue, &QueueItem::Opaque(*msg));
            record.direct_queue = next;
            Ok(Reply::Empty)
        }
        AsCall::DequeueConnection {
            signer,
            fresh,
            start,
            max,
        } => {
            let (fid, client, key) = authenticate(state, now, signer)?;
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            let Some(record) = state
                .users
                .get_mut(&fid)
                .and_then(|u| u.clients.get_mut(&client))
            else {
                return Err(ErrorCode::Internal);
            };
            // Requirement: AS-DQ-2
            let d = queue::dequeue(
                &record.direct_queue,
                *start,
                u32::from(*max),
                config.max_dequeue,
            );
            record.direct_queue = d.queue;
            ghost.dequeues.insert((QueueRef::Direct(fid, client), key));
            Ok(Reply::Dequeued {
                messages: d.messages,
                remaining: d.remaining,
            })
        }
        AsCall::ClientCertificates { fid } => {
            let fid = match fid {
                FidArg::Valid(fid) => *fid,
                FidArg::Malformed => return Err(ErrorCode::InvalidFid),
            };
            if fid.domain != state.domain {
                return Err(ErrorCode::WrongDomain);
            }
            let mut count = 0u32;
            for cert in state.certificates.iter() {
                if cert.payload.fid == fid {
                    count = count.saturating_add(1);
                }
            }
            if count == 0 {
                return Err(ErrorCode::UnknownUser);
            }
            Ok(Reply::Certificates { count })
        }
    }
}

/// Authenticate a registered client by the key of its ID-Cert (Requirement: AS-AUTH-1):
/// the signer's key must be the one its current certificate names, and the certificate
/// must be valid now. Returns (fid, client, signing key).
pub fn authenticate(
    state: &AsState,
    now: Time,
    signer: &AsSigner,
) -> Result<(Fid, ClientName, KeyId), ErrorCode> {
    let (fid, client, key) = match signer {
        AsSigner::Anonymous => return Err(ErrorCode::Unauthenticated),
        AsSigner::Client { fid, client, key } => (*fid, *client, *key),
    };
    let fid = match fid {
        FidArg::Valid(fid) => fid,
        FidArg::Malformed => return Err(ErrorCode::InvalidFid),
    };
    let Some(record) = state.client(&fid, client) else {
        return Err(ErrorCode::UnknownClient);
    };
    if !record.certificate.payload.key.eq(&key) {
        return Err(ErrorCode::BadSignature);
    }
    let body = &record.certificate.payload;
    if now < body.not_before || now > body.not_after {
        return Err(ErrorCode::InvalidCertificate);
    }
    Ok((fid, client, key))
}

/// `register` (Requirement: AS-REG-1, AS-REG-2, AS-REG-3, AS-CERT-1, CL-AMBIG-2).
fn register(
    state: &mut AsState,
    config: &Config,
    now: Time,
    fid: Fid,
    client: ClientName,
    key: KeyId,
    csr_valid: bool,
) -> Outcome {
    if !csr_valid {
        // Requirement: AS-REG-4
        return Err(ErrorCode::InvalidCsr);
    }
    if fid.domain != state.domain {
        // Requirement: AS-REG-2
        return Err(ErrorCode::WrongDomain);
    }
    if state.users.contains_key(&fid) {
        // Requirement: CL-AMBIG-2
        // The same CSR again (its answer was lost): the certificate of the client with
        // this name and key, nothing new issued.
        if let Some(existing) = state.client(&fid, client)
            && existing.certificate.payload.key == key
        {
            return Ok(Reply::Registered {
                serial: existing.certificate.payload.serial,
            });
        }
        // Requirement: AS-REG-3
        return Err(ErrorCode::UserExists);
    }
    let serial = state.next_serial;
    state.next_serial = serial.saturating_add(1);
    let certificate = Signed {
        by: state.ca_key,
        payload: CertBody {
            serial,
            fid,
            client,
            key,
            not_before: now,
            not_after: now.saturating_add(config.cert_lifetime),
        },
    };
    state.certificates.push(certificate.clone());
    let mut user = AsUser::default();
    user.clients.insert(
        client,
        AsClient {
            certificate,
            direct_queue: Queue::new(),
        },
    );
    state.users.insert(fid, user);
    // Postcondition: the user is registered in the new state.
    debug_assert!(state.users.contains_key(&fid), "contract of register");
    Ok(Reply::Registered { serial })
}

/// `publish_connection_packages` (Requirement: AS-CP-1, AS-CP-2).
fn publish_connection_packages(
    state: &mut AsState,
    now: Time,
    signer: &AsSigner,
    fresh: bool,
    packages: &[ConnectionPackageArg],
) -> Outcome {
    let (fid, client, _) = authenticate(state, now, signer)?;
    if !fresh {
        // Requirement: AUTH-FRESH-1
        return Err(ErrorCode::StaleRequest);
    }
    if packages.is_empty() || packages.len() > 100 {
        return Err(ErrorCode::TooLarge);
    }
    for package in packages.iter() {
        if package.defect != PackageDefect::None {
            // Requirement: AS-CP-5
            return Err(ErrorCode::InvalidConnectionPackage);
        }
    }
    let mut last_resort = 0usize;
    for package in packages.iter() {
        if package.last_resort {
            last_resort = last_resort.saturating_add(1);
        }
    }
    if last_resort != 1 {
        return Err(ErrorCode::LastResortRequired);
    }
    // Publishing replaces the client's previous set.
    let mut kept = Vec::new();
    for p in state.packages.iter() {
        if !(p.fid == fid && p.client == client) {
            kept.push(*p);
        }
    }
    for package in packages.iter() {
        kept.push(StoredConnectionPackage {
            fid,
            client,
            id: package.id,
            last_resort: package.last_resort,
        });
    }
    state.packages = kept;
    Ok(Reply::Empty)
}

/// `fetch_connection_package`: the oldest one-time package of any of the user's clients,
/// consumed; if none is left, the last-resort one, kept (Requirement: AS-CP-3, AS-CP-4,
/// AS-CP-6).
fn fetch_connection_package(state: &mut AsState, ghost: &mut Ghost, fid: FidArg) -> Outcome {
    let fid = match fid {
        FidArg::Valid(fid) => fid,
        FidArg::Malformed => return Err(ErrorCode::InvalidFid),
    };
    if fid.domain != state.domain {
        return Err(ErrorCode::WrongDomain);
    }
    let mut taken: Option<usize> = None;
    for (i, p) in state.packages.iter().enumerate() {
        if taken.is_none() && p.fid == fid && !p.last_resort {
            taken = Some(i);
        }
    }
    let package = match taken {
        Some(i) => {
            let p = state.packages.remove(i);
            Some(p)
        }
        None => {
            let mut lr = None;
            for p in state.packages.iter() {
                if lr.is_none() && p.fid == fid && p.last_resort {
                    lr = Some(*p);
                }
            }
            lr
        }
    };
    let Some(p) = package else {
        return Err(ErrorCode::NoConnectionPackage);
    };
    let served = ghost
        .served_connection_packages
        .get(&p.id)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    ghost
        .served_connection_packages
        .insert(p.id, (p.last_resort, served.saturating_add(1)));
    Ok(Reply::ConnectionPackage {
        client: p.client,
        id: p.id,
        last_resort: p.last_resort,
    })
}

// Requirement: AS-TOKEN-1, AS-TOKEN-2
/// `issue_group_tokens`: a registered client of this AS gets `count` (1 to 16) tokens
/// within its allowance. Only local clients have a record here, so only they get tokens.
fn issue_group_tokens(
    state: &mut AsState,
    ghost: &mut Ghost,
    config: &Config,
    now: Time,
    signer: &AsSigner,
    fresh: bool,
    count: u8,
) -> Outcome {
    let (fid, client, _) = authenticate(state, now, signer)?;
    if !fresh {
        return Err(ErrorCode::StaleRequest);
    }
    if count == 0 || count > 16 {
        return Err(ErrorCode::Malformed);
    }
    let issued = state
        .tokens_issued
        .get(&(fid, client))
        .copied()
        .unwrap_or(0);
    let total = issued.saturating_add(u32::from(count));
    if total > config.group_tokens_per_day {
        return Err(ErrorCode::TokenQuotaExceeded);
    }
    state.tokens_issued.insert((fid, client), total);
    let mut tokens = Vec::new();
    for _ in 0..count {
        let token = crate::call::GroupToken {
            domain: state.domain,
            n: state.next_token,
            genuine: true,
        };
        state.next_token = state.next_token.saturating_add(1);
        ghost.tokens_issued.insert((state.domain, token.n));
        tokens.push(token);
    }
    Ok(Reply::GroupTokens { tokens })
}
