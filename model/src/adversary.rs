//! The threat model's adversaries: what each can see or do.
//!
//! - Snapshot adversary (Requirement: ADV-SNAP-1, ADV-SNAP-2): [`snapshot`] lists what
//!   every table of a homeserver holds, as identifiers; encrypted values whose key is
//!   client-held appear as [`Ident::Opaque`]. The QS's own keys are in the snapshot (the
//!   adversary gets the disks), so sealed queue configs outside encrypted group state are
//!   readable to it.
//! - Honest-but-curious operator (Requirement: ADV-OP-1, ADV-OP-2): [`observe`] lists the
//!   identifiers a request shows the handler that serves it.
//! - Malicious AS (Requirement: ADV-AS-1): [`AdvOp::MintCredential`] issues a second
//!   certificate for an existing user with a key the adversary holds, and
//!   [`AdvOp::UseMinted`] puts it to use: a client on it, connected with a third user who
//!   can then invite it into groups with the impersonated user's contacts.
//! - Forged senders and replays: [`AdvOp::ForgeDequeue`], [`AdvOp::ReplayDs`],
//!   [`AdvOp::ReplayAs`], [`AdvOp::ReplayQs`] (every kind of signed state-changing request;
//!   Requirement: ADV-REPLAY-1, ADV-REPLAY-2, ADV-REPLAY-3).
//! - The network: [`crate::network`] (and its federated packets, [`crate::federation`]).
//! - A malicious remote server (Requirement: ADV-REMOTE-1): [`AdvOp::RemoteSend`], a
//!   domain of its own ([`REMOTE_DOMAIN`]) whose discovery document publishes its own QS
//!   key ([`REMOTE_KEY`]), sending federated enqueues it signs with that key: honest ones,
//!   forged ones (claiming another domain), replays (a message id it used before) and
//!   misrouted ones (a destination, or a queue config, of another domain), stale ones.

use std::collections::BTreeSet;

use phoenix_types::error::ErrorCode;

use crate::as_::CertBody;
use crate::call::{AsCall, AsSigner, Call, DsCall, Outcome, QsCall, QsSigner, Reply};
use crate::ids::{ClientName, DomainId, Fid, FidArg, GroupId, KeyId, QsCid, Signed};
use crate::state::{Homeserver, State, call_server};

/// The key the adversary signs with.
pub const ADVERSARY_KEY: KeyId = KeyId(9_000);
/// The client id under which a malicious AS registers its minted credential.
pub const ADVERSARY_CLIENT: ClientName = ClientName(99);
/// The malicious remote server's domain (`evil.test` in the conformance suite).
pub const REMOTE_DOMAIN: DomainId = DomainId(2);
/// A domain no server serves (`c.test`): where misrouted messages claim to go.
pub const NOWHERE_DOMAIN: DomainId = DomainId(3);
/// The QS signing key of the malicious remote server, published in its discovery
/// document.
pub const REMOTE_KEY: KeyId = KeyId(9_001);

/// A federated enqueue the malicious remote server sends to `to`. It signs with
/// [`REMOTE_KEY`] (it holds no other QS key); everything else it chooses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RemoteSend {
    /// The homeserver it sends to.
    pub to: DomainId,
    /// Who the message says sent it: [`REMOTE_DOMAIN`] when honest, another domain when
    /// forged.
    pub sender: DomainId,
    /// Who the message says it is for (`to` unless misrouted).
    pub destination: DomainId,
    /// The domain of the QS the queue config is sealed to (`to` unless misrouted).
    pub queue_domain: DomainId,
    /// The queue the config names (the adversary knows a queue config of it, e.g. from a
    /// group it hosts).
    pub victim: QsCid,
    /// The message id: a fresh one, or one it used before (a replay).
    pub id: crate::federation::FedMsgId,
    /// A timestamp outside the accepted clock skew.
    pub stale: bool,
    /// The (opaque) payload.
    pub msg: crate::ids::MsgId,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AdvOp {
    /// The AS of `fid`'s domain issues a certificate for `fid` with the adversary's key,
    /// under a new client id, and keeps it like any other.
    MintCredential { fid: Fid },
    /// Dequeue someone else's QS queue, signed with the adversary's key.
    ForgeDequeue { victim: QsCid, domain: DomainId },
    /// Dequeue someone else's direct queue, signed with the adversary's key.
    ForgeDirectDequeue { victim: Fid },
    /// The malicious AS uses the credential it minted for `fid`: it runs a client with it
    /// (`impostor`, with QS records of its own and key packages bound to the minted
    /// certificate) and connects it with `contact`, an honest client that does not have
    /// `fid` as a contact yet. From then on the impostor acts through the ordinary client
    /// operations: `contact` may invite "fid" into a group with others, and the impostor
    /// sends there (Requirement: ADV-AS-1, ID-PIN-1).
    UseMinted {
        fid: Fid,
        impostor: crate::client::ClientRef,
        contact: crate::client::ClientRef,
    },
    /// Resend the last accepted DS request as it was (Requirement: ADV-REPLAY-1).
    ReplayDs,
    /// Resend the last accepted signed state-changing AS request (a publication of
    /// connection packages) as it was (Requirement: ADV-REPLAY-3).
    ReplayAs,
    /// Resend the last accepted signed state-changing QS request (a publication of key
    /// packages) as it was (Requirement: ADV-REPLAY-3).
    ReplayQs,
    /// The malicious remote server sends a federated enqueue (Requirement: ADV-REMOTE-1).
    RemoteSend(RemoteSend),
    /// Anyone without a client record at `domain` (a remote client, a stranger) asks its
    /// DS for a group id with a token its AS did not issue (Requirement: DS-GID-3).
    ForgeGroupToken { domain: DomainId },
}

pub fn run(state: &mut State, op: &AdvOp) -> Outcome {
    state.ghost.adversary_keys.insert(ADVERSARY_KEY);
    match op {
        AdvOp::MintCredential { fid } => {
            let now = state.now;
            let lifetime = state.config.cert_lifetime;
            let Some(server) = state.servers.get_mut(&fid.domain) else {
                return Err(ErrorCode::Unavailable);
            };
            let Some(user) = server.as_.users.get_mut(fid) else {
                return Err(ErrorCode::UnknownUser);
            };
            let serial = server.as_.next_serial;
            server.as_.next_serial = serial.saturating_add(1);
            let certificate = Signed {
                by: server.as_.ca_key,
                payload: CertBody {
                    serial,
                    fid: *fid,
                    client: ADVERSARY_CLIENT,
                    key: ADVERSARY_KEY,
                    not_before: now,
                    not_after: now.saturating_add(lifetime),
                },
            };
            user.clients.insert(
                ADVERSARY_CLIENT,
                crate::as_::AsClient {
                    certificate: certificate.clone(),
                    direct_queue: crate::queue::Queue::new(),
                },
            );
            server.as_.certificates.push(certificate);
            state.ghost.minted.insert(serial);
            Ok(Reply::Registered { serial })
        }
        AdvOp::ForgeDequeue { victim, domain } => call_server(
            state,
            *domain,
            &Call::Qs(QsCall::Dequeue {
                signer: QsSigner::Client {
                    id: *victim,
                    key: ADVERSARY_KEY,
                },
                fresh: true,
                start: 0,
                max: 10,
            }),
        ),
        AdvOp::ForgeDirectDequeue { victim } => call_server(
            state,
            victim.domain,
            &Call::As(AsCall::DequeueConnection {
                signer: AsSigner::Client {
                    fid: FidArg::Valid(*victim),
                    client: ClientName(0),
                    key: ADVERSARY_KEY,
                },
                fresh: true,
                start: 0,
                max: 10,
            }),
        ),
        AdvOp::UseMinted {
            fid,
            impostor,
            contact,
        } => crate::client::run_impostor(state, *fid, *impostor, *contact),
        AdvOp::ReplayDs => {
            let Some((to, call)) = state.network.last_ds.clone() else {
                return Err(ErrorCode::NotFound);
            };
            call_server(state, to, &Call::Ds(call))
        }
        AdvOp::ReplayAs => {
            let Some((to, call)) = state.network.last_as.clone() else {
                return Err(ErrorCode::NotFound);
            };
            call_server(state, to, &Call::As(call))
        }
        AdvOp::ReplayQs => {
            let Some((to, call)) = state.network.last_qs.clone() else {
                return Err(ErrorCode::NotFound);
            };
            call_server(state, to, &Call::Qs(call))
        }
        AdvOp::RemoteSend(send) => remote_send(state, send),
        AdvOp::ForgeGroupToken { domain } => {
            let token = crate::call::GroupToken {
                domain: *domain,
                n: u32::MAX,
                genuine: false,
            };
            call_server(state, *domain, &Call::Ds(DsCall::RequestGroupId { token }))
        }
    }
}

/// Make [`REMOTE_DOMAIN`] a reachable peer: its discovery document publishes
/// [`REMOTE_KEY`].
pub fn add_remote_server(state: &mut State) {
    state.directory.insert(REMOTE_DOMAIN, REMOTE_KEY);
}

/// The malicious remote server's federated enqueue, received by `send.to`'s QS.
fn remote_send(state: &mut State, send: &RemoteSend) -> Outcome {
    let skew = state.config.clock_skew;
    let timestamp = if send.stale {
        state.now.saturating_add(skew).saturating_add(1)
    } else {
        state.now
    };
    let message = Signed {
        by: REMOTE_KEY,
        payload: crate::federation::FedTbs {
            sender: send.sender,
            destination: send.destination,
            id: send.id,
            timestamp,
            queue_config: crate::ids::Sealed {
                to: crate::federation::queue_config_key(send.queue_domain),
                nonce: send.msg.0,
                payload: send.victim,
            },
            item: crate::queue::QueueItem::Opaque(send.msg),
        },
    };
    crate::federation::receive(state, send.to, &message).map(|_| Reply::Empty)
}

/// An identifier as an adversary sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ident {
    Fid(Fid),
    QsUser(u32),
    QsClient(u32),
    Group(GroupId),
    Key(KeyId),
    /// A value encrypted under a key the adversary does not have.
    Opaque,
}

/// Which service's table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    As,
    Qs,
    Ds,
}

/// One persisted row, as identifiers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub service: Service,
    pub table: &'static str,
    pub idents: Vec<Ident>,
}

/// Everything a homeserver persists, as the snapshot adversary reads it. Group state is
/// encrypted under the client-held EAR key, so a group row shows only its id; QS queue
/// entries are sealed under their queue's chain (QS-ENC-1; until it was, they showed the
/// group id next to the queue: `docs/model.md`, finding 2). The DS's outbox still holds
/// what it fans out to other servers, group id included, until it is delivered.
pub fn snapshot(server: &Homeserver) -> Vec<Row> {
    let mut rows = Vec::new();
    // AS: users, clients (certificate keys), certificates, connection packages, direct
    // queues (HPKE ciphertext to a client-held key).
    for (fid, user) in server.as_.users.iter() {
        rows.push(Row {
            service: Service::As,
            table: "as_users",
            idents: vec![Ident::Fid(*fid)],
        });
        for client in user.clients.values() {
            rows.push(Row {
                service: Service::As,
                table: "as_clients",
                idents: vec![Ident::Fid(*fid), Ident::Key(client.certificate.payload.key)],
            });
            for _ in client.direct_queue.messages.iter() {
                rows.push(Row {
                    service: Service::As,
                    table: "as_direct_queue",
                    idents: vec![Ident::Fid(*fid), Ident::Opaque],
                });
            }
        }
    }
    for cert in server.as_.certificates.iter() {
        rows.push(Row {
            service: Service::As,
            table: "as_certificates",
            idents: vec![Ident::Fid(cert.payload.fid), Ident::Key(cert.payload.key)],
        });
    }
    for p in server.as_.packages.iter() {
        rows.push(Row {
            service: Service::As,
            table: "as_connection_packages",
            idents: vec![Ident::Fid(p.fid)],
        });
    }
    // QS: user and client records with their auth keys, key packages (leaf key and a
    // queue config the snapshot can open with the QS key), queue entries.
    for (id, user) in server.qs.users.iter() {
        rows.push(Row {
            service: Service::Qs,
            table: "qs_users",
            idents: vec![Ident::QsUser(id.0), Ident::Key(user.auth_key)],
        });
    }
    for (id, client) in server.qs.clients.iter() {
        let mut idents = vec![
            Ident::QsClient(id.0),
            Ident::QsUser(client.user.0),
            Ident::Key(client.auth_key),
        ];
        // Requirement: QS-PUSH-1
        // The push endpoint is sealed to the QS's queue-config key, which the snapshot
        // does not hold (it is sealed under the key-encryption key): ciphertext.
        if client.push.is_some() {
            idents.push(Ident::Opaque);
        }
        rows.push(Row {
            service: Service::Qs,
            table: "qs_clients",
            idents,
        });
        for p in client.key_packages.iter() {
            let mut idents = vec![Ident::QsClient(id.0), Ident::Key(p.leaf_key)];
            if let Some(target) = server.qs.open_queue_config(&p.queue_config) {
                idents.push(Ident::QsClient(target.0));
            }
            idents.push(Ident::Opaque);
            rows.push(Row {
                service: Service::Qs,
                table: "qs_key_packages",
                idents,
            });
        }
        // Requirement: QS-ENC-1
        // Each entry is sealed under the queue's chain (whose secret for what comes next
        // is in the snapshot, but opens nothing stored before it): the row shows the queue
        // and ciphertext, whatever the DS fanned out.
        for item in client.queue.messages.values() {
            let mut idents = vec![Ident::QsClient(id.0)];
            if server.qs.mutant == crate::mutants::ServerMutant::QsStoresQueueUnsealed
                && let Some(group) = group_of(item)
            {
                idents.push(Ident::Group(group));
            }
            idents.push(Ident::Opaque);
            rows.push(Row {
                service: Service::Qs,
                table: "qs_queue",
                idents,
            });
        }
    }
    // DS: reservations and groups (id + ciphertext under the EAR key).
    for group in server.ds.reserved.iter() {
        rows.push(Row {
            service: Service::Ds,
            table: "ds_reservations",
            idents: vec![Ident::Group(*group)],
        });
    }
    for group in server.ds.groups.keys() {
        rows.push(Row {
            service: Service::Ds,
            table: "ds_groups",
            idents: vec![Ident::Group(*group), Ident::Opaque],
        });
    }
    // The outbox: entries for other QSs (a queue config sealed to another QS, the payload
    // with its group id in clear); the replay records of federated messages received.
    for entry in server.fed.outbox.values() {
        let mut idents = Vec::new();
        if let Some(group) = group_of(&entry.item) {
            idents.push(Ident::Group(group));
        }
        idents.push(Ident::Opaque);
        rows.push(Row {
            service: Service::Ds,
            table: "ds_outbox",
            idents,
        });
    }
    for _ in server.fed.seen.iter() {
        rows.push(Row {
            service: Service::Qs,
            table: "qs_federation_seen",
            idents: vec![Ident::Opaque],
        });
    }
    // Replay records of signed requests: a digest each, nothing else (Requirement:
    // ADV-REPLAY-3).
    let seen = [
        (Service::As, "as_seen_requests", server.as_.seen.len()),
        (Service::Qs, "qs_seen_requests", server.qs.seen.len()),
        (Service::Ds, "ds_seen_requests", server.ds.seen.len()),
    ];
    for (service, table, count) in seen {
        for _ in 0..count {
            rows.push(Row {
                service,
                table,
                idents: vec![Ident::Opaque],
            });
        }
    }
    rows
}

fn group_of(item: &crate::queue::QueueItem) -> Option<GroupId> {
    match item {
        crate::queue::QueueItem::Commit { group, .. }
        | crate::queue::QueueItem::Application { group, .. }
        | crate::queue::QueueItem::Welcome { group, .. } => Some(*group),
        crate::queue::QueueItem::Opaque(_) => None,
    }
}

/// What one request shows the handler that serves it (Requirement: ADV-OP-1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observation {
    pub domain: DomainId,
    pub service: &'static str,
    pub fids: BTreeSet<Fid>,
    pub qs_ids: BTreeSet<u32>,
    pub groups: BTreeSet<GroupId>,
    /// Per-group pseudonyms (leaf keys) the request shows.
    pub leaf_keys: BTreeSet<KeyId>,
}

/// The identifiers `call` shows its handler. Sealed queue configs and encrypted
/// credentials are opaque to the DS handler (it does not hold the QS key or the
/// credential key).
///
/// The real server's counterpart is its test-only observation tap
/// (`impl/server/src/observe.rs`), which records per request what each handler saw;
/// `threat-model-tests/tests/honest_but_curious.rs` checks ADV-OP-1 and ADV-OP-2 over it.
/// It shows more than this view, and nothing that breaks the two requirements: the source
/// address of every request (out of the protocol's scope), members' leaf credentials and
/// sealed queue configs at the DS, and the joiners' key packages in `add_users`, which the
/// QS saw when it handed them out (a QS-to-DS link this view, which names no key package,
/// does not record; it reaches no FID).
pub fn observe(domain: DomainId, call: &Call) -> Observation {
    let mut o = Observation {
        domain,
        service: crate::call::service_of(call),
        fids: BTreeSet::new(),
        qs_ids: BTreeSet::new(),
        groups: BTreeSet::new(),
        leaf_keys: BTreeSet::new(),
    };
    match call {
        Call::As(c) => match c {
            AsCall::Register { fid, .. } => {
                o.fids.insert(*fid);
            }
            AsCall::PublishConnectionPackages { signer, .. }
            | AsCall::DequeueConnection { signer, .. }
            | AsCall::IssueGroupTokens { signer, .. } => {
                if let AsSigner::Client {
                    fid: FidArg::Valid(fid),
                    ..
                } = signer
                {
                    o.fids.insert(*fid);
                }
            }
            AsCall::FetchConnectionPackage { fid }
            | AsCall::EnqueueConnection { fid, .. }
            | AsCall::ClientCertificates { fid } => {
                if let FidArg::Valid(fid) = fid {
                    o.fids.insert(*fid);
                }
            }
        },
        Call::Qs(c) => match c {
            QsCall::CreateUser { .. } | QsCall::FetchKeyPackages { .. } => {}
            QsCall::PublishKeyPackages { signer, .. }
            | QsCall::Dequeue { signer, .. }
            | QsCall::Listen { signer, .. }
            | QsCall::RekeyQueue { signer, .. }
            | QsCall::SetPushEndpoint { signer, .. }
            | QsCall::DeleteClient { signer, .. } => {
                if let QsSigner::Client { id, .. } = signer {
                    o.qs_ids.insert(id.0);
                }
            }
        },
        Call::Ds(c) => match c {
            DsCall::RequestGroupId { .. } => {}
            DsCall::CreateGroup { group, creator, .. } => {
                o.groups.insert(*group);
                o.leaf_keys.insert(creator.leaf_key);
            }
            DsCall::ExternalCommitInfo { group, .. } => {
                o.groups.insert(*group);
            }
            DsCall::JoinConnectionGroup { group, joiner, .. } => {
                o.groups.insert(*group);
                o.leaf_keys.insert(joiner.leaf_key);
            }
            DsCall::AddUsers {
                group,
                signer,
                joiners,
                ..
            } => {
                o.groups.insert(*group);
                o.leaf_keys.insert(signer.key);
                for j in joiners.iter() {
                    o.leaf_keys.insert(j.member.leaf_key);
                }
            }
            DsCall::Resync {
                group,
                signer,
                member,
                ..
            } => {
                o.groups.insert(*group);
                o.leaf_keys.insert(signer.key);
                o.leaf_keys.insert(member.leaf_key);
            }
            DsCall::RemoveUsers { group, signer, .. }
            | DsCall::Update { group, signer, .. }
            | DsCall::SendMessage { group, signer, .. } => {
                o.groups.insert(*group);
                o.leaf_keys.insert(signer.key);
            }
        },
    }
    o
}
