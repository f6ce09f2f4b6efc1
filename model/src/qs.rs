//! The Queuing Service: pseudonymous user and client records, key packages with a last
//! resort, and one queue per client record, filled by the DS's fan-out.
//!
//! Records are named by QS ids the QS picks; nothing here names an FID, and requests are
//! signed by record keys that are not the client's AS key. Not here: which groups a
//! client is in (the QS only opens sealed queue configs, one at a time, when enqueuing).

use std::collections::{BTreeMap, BTreeSet};

use phoenix_types::error::ErrorCode;

use crate::call::{KeyPackageArg, Outcome, QsCall, QsSigner, Reply};
use crate::ids::{DomainId, KeyId, PkgId, QsCid, QsUid, Sealed, Token};
use crate::queue::{self, Queue, QueueItem};
use crate::state::{Config, Ghost, QueueRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QsUser {
    pub auth_key: KeyId,
    pub token: Token,
}

/// A stored key package: its leaf key (the pseudonym it becomes in a group), the sealed
/// queue config it carries, and the encrypted client info stored alongside.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredKeyPackage {
    pub id: PkgId,
    pub last_resort: bool,
    pub leaf_key: KeyId,
    pub queue_config: Sealed<QsCid>,
    pub client_info: Option<Sealed<crate::ds::LeafBinding>>,
}

/// A client record's key package pool and queue (its lifecycle: created with the user,
/// packages replaced wholesale, queue appended by fan-out and trimmed by the owner).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QsClient {
    pub user: QsUid,
    pub auth_key: KeyId,
    pub key_packages: Vec<StoredKeyPackage>,
    pub queue: Queue,
    /// The push endpoint (its subscription), stored sealed to the QS itself (QS-PUSH-1).
    pub push: Option<KeyId>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QsState {
    pub domain: DomainId,
    /// The HPKE key that queue configs are sealed to.
    pub queue_config_key: KeyId,
    pub users: BTreeMap<QsUid, QsUser>,
    pub clients: BTreeMap<QsCid, QsClient>,
    pub next_user: u32,
    pub next_client: u32,
    /// Replay records: the signed state-changing requests accepted, as they were (the
    /// server keeps a digest of each) (Requirement: ADV-REPLAY-3).
    pub seen: BTreeSet<QsCall>,
    /// A seeded bug ([`crate::mutants`]); `None` in the model itself.
    pub mutant: crate::mutants::ServerMutant,
}

impl QsState {
    pub fn new(domain: DomainId, queue_config_key: KeyId) -> Self {
        Self {
            domain,
            queue_config_key,
            users: BTreeMap::new(),
            clients: BTreeMap::new(),
            // Ids are unique across homeservers (domain d counts from 1,000 d), so that
            // ghost records naming a QS id are unambiguous in a federated world.
            next_user: 1000u32.saturating_mul(u32::from(domain.0)),
            next_client: 1000u32.saturating_mul(u32::from(domain.0)),
            seen: BTreeSet::new(),
            mutant: crate::mutants::ServerMutant::None,
        }
    }

    /// Open a sealed queue config addressed to this QS.
    pub fn open_queue_config(&self, sealed: &Sealed<QsCid>) -> Option<QsCid> {
        sealed.open(self.queue_config_key)
    }
}

/// Run one QS call.
pub fn handle(state: &mut QsState, ghost: &mut Ghost, config: &Config, call: &QsCall) -> Outcome {
    // Requirement: ADV-REPLAY-3
    let protected = replay_protected(call);
    if protected && state.seen.contains(call) {
        return Err(ErrorCode::Replayed);
    }
    let outcome = handle_call(state, ghost, config, call);
    if protected && outcome.is_ok() {
        state.seen.insert(call.clone());
    }
    outcome
}

/// Whether the server keeps replay records of `call` (the signed state-changing QS
/// request; a replayed dequeue deletes nothing the original did not) (Requirement:
/// ADV-REPLAY-3).
pub fn replay_protected(call: &QsCall) -> bool {
    matches!(
        call,
        QsCall::PublishKeyPackages { .. }
            | QsCall::RekeyQueue { .. }
            | QsCall::SetPushEndpoint { .. }
            | QsCall::DeleteClient { .. }
    )
}

fn handle_call(state: &mut QsState, ghost: &mut Ghost, config: &Config, call: &QsCall) -> Outcome {
    match call {
        QsCall::CreateUser {
            user_key,
            token,
            client_key,
        } => {
            // Requirement: QS-USER-2, CL-AMBIG-2
            for (uid, user) in &state.users {
                if user.token == *token {
                    // The same request again (its answer was lost): the same ids, when
                    // the user has these auth keys and this one client.
                    let clients: Vec<_> = state
                        .clients
                        .iter()
                        .filter(|(_, c)| c.user == *uid)
                        .collect();
                    if user.auth_key == *user_key
                        && let [(cid, only)] = clients.as_slice()
                        && only.auth_key == *client_key
                    {
                        return Ok(Reply::QsUserCreated {
                            user: *uid,
                            client: **cid,
                        });
                    }
                    return Err(ErrorCode::DuplicateFriendshipToken);
                }
            }
            // Requirement: QS-USER-1
            let user = QsUid(state.next_user);
            let client = QsCid(state.next_client);
            state.next_user = state.next_user.saturating_add(1);
            state.next_client = state.next_client.saturating_add(1);
            state.users.insert(
                user,
                QsUser {
                    auth_key: *user_key,
                    token: *token,
                },
            );
            state.clients.insert(
                client,
                QsClient {
                    user,
                    auth_key: *client_key,
                    key_packages: Vec::new(),
                    queue: Queue::new(),
                    push: None,
                },
            );
            Ok(Reply::QsUserCreated { user, client })
        }
        QsCall::PublishKeyPackages {
            signer,
            fresh,
            packages,
        } => {
            let (id, _) = authenticate(state, signer)?;
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            publish_key_packages(state, id, packages)
        }
        QsCall::FetchKeyPackages { token } => fetch_key_packages(state, ghost, *token),
        QsCall::Dequeue {
            signer,
            fresh,
            start,
            max,
        } => {
            let (id, key) = match (state.mutant, signer) {
                (
                    crate::mutants::ServerMutant::QsSkipsDequeueSignature,
                    QsSigner::Client { id, key },
                ) if state.clients.contains_key(id) => (*id, *key),
                _ => authenticate(state, signer)?,
            };
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            let Some(record) = state.clients.get_mut(&id) else {
                return Err(ErrorCode::Internal);
            };
            // Requirement: QS-DEQ-1, QS-DEQ-2, QS-DEQ-3
            let d = queue::dequeue(&record.queue, *start, u32::from(*max), config.max_dequeue);
            record.queue = d.queue;
            ghost.dequeues.insert((QueueRef::Qs(id), key));
            Ok(Reply::Dequeued {
                messages: d.messages,
                remaining: d.remaining,
            })
        }
        // Requirement: QS-ENC-4
        // The chain is not in the model (entries are sealed: the snapshot shows them as
        // ciphertext); what a re-key changes that a caller sees is where the new chain
        // starts: the queue's next number. Nothing is deleted or renumbered.
        QsCall::RekeyQueue { signer, fresh, .. } => {
            let (id, _) = authenticate(state, signer)?;
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            let Some(record) = state.clients.get(&id) else {
                return Err(ErrorCode::Internal);
            };
            Ok(Reply::ChainStart(record.queue.next_seq))
        }
        // Requirement: QS-PUSH-1
        QsCall::SetPushEndpoint {
            signer,
            fresh,
            endpoint,
            ..
        } => {
            let (id, _) = authenticate(state, signer)?;
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            if endpoint.is_some_and(|e| !e.https) {
                return Err(ErrorCode::Malformed);
            }
            let Some(record) = state.clients.get_mut(&id) else {
                return Err(ErrorCode::Internal);
            };
            record.push = endpoint.map(|e| e.subscription);
            Ok(Reply::Empty)
        }
        // Requirement: QS-REC-1
        // The record goes with its queue and key packages; the user record goes when it
        // has no client left. Fan-out to it afterwards finds no record (undeliverable).
        QsCall::DeleteClient { signer, fresh, .. } => {
            let (id, _) = authenticate(state, signer)?;
            if !fresh {
                return Err(ErrorCode::StaleRequest);
            }
            let Some(record) = state.clients.remove(&id) else {
                return Err(ErrorCode::Internal);
            };
            let lonely = !state.clients.values().any(|c| c.user == record.user);
            if lonely {
                state.users.remove(&record.user);
            }
            // Its owner's dequeues were of a queue that no longer exists: no owner to
            // check them against (`only_owner_dequeues` ranges over live queues).
            ghost
                .dequeues
                .retain(|(queue, _)| *queue != QueueRef::Qs(id));
            Ok(Reply::ClientDeleted { user: lonely })
        }
        // Requirement: QS-LISTEN-1, QS-LISTEN-2, QS-LISTEN-3
        QsCall::Listen { signer, start } => {
            let (id, key) = authenticate(state, signer)?;
            let Some(record) = state.clients.get_mut(&id) else {
                return Err(ErrorCode::Internal);
            };
            let window = u32::from(crate::call::LISTEN_WINDOW);
            let d = queue::dequeue(&record.queue, *start, window, window);
            record.queue = d.queue;
            ghost.dequeues.insert((QueueRef::Qs(id), key));
            Ok(Reply::Streamed {
                messages: d.messages,
                drained: d.remaining == 0,
            })
        }
    }
}

/// Authenticate a client record by its auth key (Requirement: QS-AUTH-1).
pub fn authenticate(state: &QsState, signer: &QsSigner) -> Result<(QsCid, KeyId), ErrorCode> {
    let (id, key) = match signer {
        QsSigner::Anonymous => return Err(ErrorCode::Unauthenticated),
        QsSigner::Client { id, key } => (*id, *key),
    };
    let Some(record) = state.clients.get(&id) else {
        return Err(ErrorCode::UnknownClient);
    };
    if record.auth_key != key {
        return Err(ErrorCode::BadSignature);
    }
    Ok((id, key))
}

/// `publish_key_packages`: every package's queue config must name the publisher, exactly
/// one is last-resort, and the upload replaces the previous set (Requirement: QS-KP-1,
/// QS-KP-2).
fn publish_key_packages(state: &mut QsState, id: QsCid, packages: &[KeyPackageArg]) -> Outcome {
    if packages.is_empty() || packages.len() > 100 {
        return Err(ErrorCode::TooLarge);
    }
    for package in packages.iter() {
        if package.queue_of != id {
            // Requirement: QS-KP-5
            return Err(ErrorCode::InvalidKeyPackage);
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
    let Some(record) = state.clients.get_mut(&id) else {
        return Err(ErrorCode::Internal);
    };
    let mut stored = Vec::new();
    for p in packages.iter() {
        stored.push(StoredKeyPackage {
            id: p.id,
            last_resort: p.last_resort,
            leaf_key: p.leaf_key,
            // The client seals its queue config to the QS; the package id serves as the
            // encryption's randomness (distinct per package).
            queue_config: Sealed {
                to: state.queue_config_key,
                nonce: p.id.0,
                payload: p.queue_of,
            },
            client_info: p.client_info.clone(),
        });
    }
    record.key_packages = stored;
    // Postcondition (checked whenever debug assertions are on, i.e. in every test run):
    // the upload replaced the set.
    debug_assert_eq!(
        state.clients.get(&id).map(|c| c.key_packages.len()),
        Some(packages.len()),
        "contract of publish_key_packages"
    );
    Ok(Reply::Empty)
}

/// Take one package of one client: the oldest one-time package, consumed, else the
/// last-resort one, kept (Requirement: QS-KP-3, QS-KP-4).
pub fn take_one(
    packages: &[StoredKeyPackage],
) -> (Vec<StoredKeyPackage>, Option<StoredKeyPackage>) {
    let result = take_one_inner(packages);
    debug_assert!(post_take_one(packages, &result), "contract of take_one");
    result
}

/// The contract of [`take_one`]: a one-time package taken leaves one fewer; the
/// last-resort one (or none) leaves the set as it was.
pub fn post_take_one(
    packages: &[StoredKeyPackage],
    result: &(Vec<StoredKeyPackage>, Option<StoredKeyPackage>),
) -> bool {
    match &result.1 {
        Some(p) if !p.last_resort => result.0.len() + 1 == packages.len(),
        _ => result.0.len() == packages.len(),
    }
}

fn take_one_inner(
    packages: &[StoredKeyPackage],
) -> (Vec<StoredKeyPackage>, Option<StoredKeyPackage>) {
    let mut rest = Vec::new();
    let mut taken = None;
    for p in packages.iter() {
        if taken.is_none() && !p.last_resort {
            taken = Some(p.clone());
        } else {
            rest.push(p.clone());
        }
    }
    if taken.is_some() {
        return (rest, taken);
    }
    let mut lr = None;
    for p in packages.iter() {
        if lr.is_none() && p.last_resort {
            lr = Some(p.clone());
        }
    }
    (packages.to_vec(), lr)
}

/// `fetch_key_packages`: one package per client of the token's user (Requirement: QS-KP-3,
/// QS-KP-6).
fn fetch_key_packages(state: &mut QsState, ghost: &mut Ghost, token: Token) -> Outcome {
    let mut user = None;
    for (id, u) in state.users.iter() {
        if u.token == token {
            user = Some(*id);
        }
    }
    let Some(user) = user else {
        return Err(ErrorCode::UnknownFriendshipToken);
    };
    let mut served = Vec::new();
    let mut updates = Vec::new();
    for (id, client) in state.clients.iter() {
        if client.user == user {
            let (rest, taken) = take_one(&client.key_packages);
            if let Some(p) = taken {
                served.push((*id, p));
                updates.push((*id, rest));
            }
        }
    }
    if state.mutant == crate::mutants::ServerMutant::QsKeepsServedPackages {
        updates.clear();
    }
    for (id, rest) in updates.into_iter() {
        if let Some(client) = state.clients.get_mut(&id) {
            client.key_packages = rest;
        }
    }
    if served.is_empty() {
        return Err(ErrorCode::NoKeyPackage);
    }
    let mut out = Vec::new();
    for (id, p) in served.iter() {
        let count = ghost
            .served_key_packages
            .get(&p.id)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        ghost
            .served_key_packages
            .insert(p.id, (p.last_resort, count.saturating_add(1)));
        out.push((*id, p.id));
    }
    Ok(Reply::KeyPackages { packages: out })
}

/// Enqueue a fanned-out item for the client record a sealed queue config names. `None`
/// if the config does not open or the record is gone (the entry is dropped, as the
/// server drops undeliverable outbox entries) (Requirement: QS-ENQ-1).
pub fn enqueue(state: &mut QsState, sealed: &Sealed<QsCid>, item: &QueueItem) -> Option<QsCid> {
    let id = state.open_queue_config(sealed)?;
    let record = state.clients.get_mut(&id)?;
    let (next, _) = queue::enqueue(&record.queue, item);
    record.queue = next;
    Some(id)
}
