//! The honest client: what `phoenix-client` does, built from the server's calls. It holds
//! its own keys, a view of each group it is in (epoch, leaves, credentials), its pinned
//! contacts, and the position up to which it has processed its QS queue.
//!
//! Receiving: a queue item is processed only at the client's next expected sequence
//! number (duplicates and replays of older numbers are skipped), commits only for the
//! view's epoch, and an application message is accepted only if its authentication chain
//! verifies: message signed by the sender leaf's key → that leaf key signed by the
//! sender's ID-Cert key (the encrypted leaf binding) → the ID-Cert signed by the CA of the
//! sender's domain and valid now (Requirement: ID-CHAIN-1, ID-CHAIN-2).
//!
//! Not here: the client's connection establishment handshake (contacts are introduced by
//! [`introduce`], which stands for connect + accept: the AS parts of that handshake are
//! covered call by call in the conformance suite).

use std::collections::{BTreeMap, BTreeSet};

use phoenix_types::error::ErrorCode;

use crate::call::{
    AddedMember, AsCall, Call, DsCall, KeyPackageArg, LeafSigner, MemberArg, Outcome, QsCall,
    QsSigner, Reply,
};
use crate::ds::LeafBinding;
use crate::ids::{
    ClientName, DomainId, Epoch, Fid, GroupId, KeyId, Leaf, MsgId, PkgId, QsCid, QsUid, Sealed,
    Seq, Signed, Token,
};
use crate::queue::{CommitKind, MemberInfo, QueueItem};
use crate::state::{Accepted, Sent, State, call_server};

/// How many past epochs' application messages a client can still read (the client
/// library's group configuration keeps 5).
pub const MAX_PAST_EPOCHS: u64 = 5;

/// An honest client, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClientRef(pub u8);

/// What an inviter hands a joiner, sealed to the joiner's friendship key: the group's EAR
/// key and credential key, and who invited it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GroupSecrets {
    pub ear: KeyId,
    pub credential_key: KeyId,
    pub inviter: Fid,
}

/// A client's view of one group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientGroup {
    pub ear: KeyId,
    pub credential_key: KeyId,
    pub epoch: Epoch,
    pub leaf: Leaf,
    pub leaf_key: KeyId,
    pub active: bool,
    pub members: BTreeMap<Leaf, MemberInfo>,
    /// Members a commit removed, by leaf and the first epoch they no longer held it: a
    /// message they sent before that commit is still theirs (Requirement: DS-FAN-2).
    pub departed: BTreeMap<(Leaf, Epoch), MemberInfo>,
}

impl ClientGroup {
    /// The commit ending the current epoch removes `leaf`'s member: keep it for the
    /// messages it sent in the epochs still readable.
    fn retire(&mut self, leaf: Leaf) {
        let until = self.epoch.saturating_add(1);
        if let Some(m) = self.members.remove(&leaf) {
            self.departed.insert((leaf, until), m);
        }
        self.departed
            .retain(|(_, u), _| u.saturating_add(MAX_PAST_EPOCHS) > until);
    }

    /// The member that held `leaf` in `epoch` (the current epoch or an earlier one): one
    /// that departed after `epoch` if there is one, else the current one.
    pub fn member_at(&self, leaf: Leaf, epoch: Epoch) -> Option<&MemberInfo> {
        if epoch < self.epoch
            && let Some((_, m)) = self
                .departed
                .range((leaf, epoch.saturating_add(1))..=(leaf, Epoch::MAX))
                .next()
        {
            return Some(m);
        }
        self.members.get(&leaf)
    }
}

/// A connected contact: its friendship token and key, and the certificate serials of its
/// clients pinned when the connection was made (Requirement: ID-CONN-1, ADV-AS-1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Contact {
    pub home: DomainId,
    pub token: Token,
    pub friendship_key: KeyId,
    pub pinned: BTreeSet<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HonestClient {
    pub fid: Fid,
    pub name: ClientName,
    /// The ID-Cert key (also signs AS requests).
    pub as_key: KeyId,
    pub serial: u32,
    pub qs_user: QsUid,
    pub qs_id: QsCid,
    pub qs_key: KeyId,
    pub token: Token,
    pub friendship_key: KeyId,
    /// The next sequence number of its QS queue it expects.
    pub next_seq: Seq,
    pub groups: BTreeMap<GroupId, ClientGroup>,
    pub contacts: BTreeMap<Fid, Contact>,
    /// Every queue item it processed, in order, with its number.
    pub received: Vec<(Seq, QueueItem)>,
    /// Application messages it accepted (MLS refuses a second decryption of a message).
    pub accepted: BTreeSet<MsgId>,
    /// Contacts whose served certificates are not the pinned ones, or who appeared in a
    /// group or sent a message on an unpinned certificate.
    pub alerts: BTreeSet<Fid>,
    /// Counter for fresh keys and message ids.
    pub counter: u32,
    /// Requests sent whose answer was lost, oldest first (Requirement: CL-AMBIG-1).
    pub pending: Vec<crate::recovery::Pending>,
    /// A deliberately broken client that skips the pin check of group members and
    /// messages (only for the test that shows `no_minted_credential_trusted` can fail).
    pub skip_pin_check: bool,
}

/// What a client shows for a member whose chain verified (Requirement: ID-PIN-1, ID-PIN-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A contact's FID on a pinned certificate.
    Pinned,
    /// A contact's FID on another certificate: shown as not verified, and alerted.
    Unpinned,
    /// Not a contact (trust on first use in the client library).
    Unknown,
}

impl HonestClient {
    // Requirement: ID-PIN-1
    /// The standing of a member with certificate `serial` for `fid`.
    pub fn standing(&self, fid: Fid, serial: u32) -> Standing {
        match self.contacts.get(&fid) {
            Some(c) if c.pinned.contains(&serial) || self.skip_pin_check => Standing::Pinned,
            Some(_) => Standing::Unpinned,
            None => Standing::Unknown,
        }
    }

    /// Check the members a welcome or a commit brings against our contacts' pins: a
    /// contact's FID on an unpinned certificate is alerted, a pinned one recorded as shown
    /// pinned (ghost, for the invariant).
    fn check_members<'a>(
        &mut self,
        me: ClientRef,
        credential_key: KeyId,
        members: impl Iterator<Item = &'a MemberInfo>,
        shown: &mut BTreeSet<(ClientRef, Fid, u32)>,
    ) {
        for m in members {
            let Some(b) = m.credential.open(credential_key) else {
                continue;
            };
            let (fid, serial) = (b.certificate.payload.fid, b.certificate.payload.serial);
            if fid == self.fid {
                continue;
            }
            match self.standing(fid, serial) {
                Standing::Pinned => {
                    shown.insert((me, fid, serial));
                }
                Standing::Unpinned => {
                    self.alerts.insert(fid);
                }
                Standing::Unknown => {}
            }
        }
    }
}

/// What an honest client does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ClientOp {
    /// Send an application message in `group`, at the epoch of its view.
    Send { client: ClientRef, group: GroupId },
    /// Commit a path update in `group`.
    Update { client: ClientRef, group: GroupId },
    /// Add every client of the contact `invitee` to `group`.
    Add {
        client: ClientRef,
        group: GroupId,
        invitee: Fid,
    },
    /// Remove the member at `leaf`.
    Remove {
        client: ClientRef,
        group: GroupId,
        leaf: Leaf,
    },
    /// Dequeue and process everything queued (one atomic round: the conformance suite's
    /// `sync`; the model checker drives dequeues through the network instead).
    Sync { client: ClientRef },
    /// Fetch a contact's certificates from its AS and compare them with the pinned ones.
    CheckContact { client: ClientRef, contact: Fid },
    /// Rejoin `group` by external commit, replacing the own leaf with one of the same
    /// credential (Requirement: DS-RESYNC-1, CL-RESYNC-1): what a client does when it
    /// fell behind.
    Resync { client: ClientRef, group: GroupId },
}

/// Key ids of honest clients: 10_000 + 1_000 × client + n, never shared.
pub fn client_key(client: ClientRef, n: u32) -> KeyId {
    KeyId(
        10_000u32
            .saturating_add(1_000u32.saturating_mul(u32::from(client.0)))
            .saturating_add(n),
    )
}

/// Register `client` as `fid` on its home server: the AS registration, the QS records and
/// one one-time plus one last-resort key package (Requirement: AS-REG-1, QS-USER-1,
/// QS-KP-1). The QS keys and the friendship key are distinct from the AS key, so no
/// stored key links the records (Requirement: ADV-SNAP-2).
pub fn register(state: &mut State, client: ClientRef, fid: Fid) -> Outcome {
    let name = ClientName(0);
    let as_key = client_key(client, 0);
    let qs_user_key = client_key(client, 1);
    let qs_key = client_key(client, 2);
    let friendship_key = client_key(client, 3);
    let token = Token(client.0);
    let serial = match call_server(
        state,
        fid.domain,
        &Call::As(AsCall::Register {
            fid,
            client: name,
            key: as_key,
            csr_valid: true,
        }),
    )? {
        Reply::Registered { serial } => serial,
        _ => return Err(ErrorCode::Internal),
    };
    let (qs_user, qs_id) = match call_server(
        state,
        fid.domain,
        &Call::Qs(QsCall::CreateUser {
            user_key: qs_user_key,
            token,
            client_key: qs_key,
        }),
    )? {
        Reply::QsUserCreated { user, client } => (user, client),
        _ => return Err(ErrorCode::Internal),
    };
    let mut me = HonestClient {
        fid,
        name,
        as_key,
        serial,
        qs_user,
        qs_id,
        qs_key,
        token,
        friendship_key,
        next_seq: 0,
        groups: BTreeMap::new(),
        contacts: BTreeMap::new(),
        received: Vec::new(),
        accepted: BTreeSet::new(),
        alerts: BTreeSet::new(),
        counter: 10,
        pending: Vec::new(),
        skip_pin_check: false,
    };
    publish_key_packages(state, &mut me)?;
    state.clients.insert(client, me);
    Ok(Reply::Empty)
}

/// Publish a fresh set: one one-time package and the last-resort one.
fn publish_key_packages(state: &mut State, me: &mut HonestClient) -> Outcome {
    let mut packages = Vec::new();
    for last_resort in [false, true] {
        let leaf_key = fresh_key(me);
        if last_resort {
            state.ghost.last_resort_leaf_keys.insert(leaf_key);
        }
        let info = binding(state, me, leaf_key, me.friendship_key);
        packages.push(KeyPackageArg {
            id: PkgId(leaf_key.0),
            last_resort,
            leaf_key,
            queue_of: me.qs_id,
            client_info: Some(info),
        });
    }
    call_server(
        state,
        me.fid.domain,
        &Call::Qs(QsCall::PublishKeyPackages {
            signer: QsSigner::Client {
                id: me.qs_id,
                key: me.qs_key,
            },
            fresh: true,
            packages,
        }),
    )
}

fn fresh_key(me: &mut HonestClient) -> KeyId {
    let base = me.as_key.0;
    me.counter = me.counter.saturating_add(1);
    KeyId(base.saturating_add(me.counter))
}

/// Our leaf binding for `leaf_key`, sealed to `to` (a group's credential key or our
/// friendship key).
fn binding(state: &State, me: &HonestClient, leaf_key: KeyId, to: KeyId) -> Sealed<LeafBinding> {
    let certificate = state
        .server(me.fid.domain)
        .and_then(|s| s.as_.client(&me.fid, me.name))
        .map(|c| c.certificate.clone())
        .unwrap_or(Signed {
            by: KeyId(0),
            payload: crate::as_::CertBody {
                serial: 0,
                fid: me.fid,
                client: me.name,
                key: me.as_key,
                not_before: 0,
                not_after: 0,
            },
        });
    Sealed {
        to,
        nonce: leaf_key.0,
        payload: LeafBinding {
            certificate,
            binding: Signed {
                by: me.as_key,
                payload: leaf_key,
            },
        },
    }
}

/// Make `a` and `b` contacts of each other, pinning each other's current certificate:
/// what connect + accept establish (Requirement: AS-CONN-1).
pub fn introduce(state: &mut State, a: ClientRef, b: ClientRef) {
    let (Some(ca), Some(cb)) = (
        state.clients.get(&a).cloned(),
        state.clients.get(&b).cloned(),
    ) else {
        return;
    };
    let contact_of = |c: &HonestClient| {
        let mut pinned = BTreeSet::new();
        pinned.insert(c.serial);
        Contact {
            home: c.fid.domain,
            token: c.token,
            friendship_key: c.friendship_key,
            pinned,
        }
    };
    if let Some(x) = state.clients.get_mut(&a) {
        x.contacts.insert(cb.fid, contact_of(&cb));
    }
    if let Some(x) = state.clients.get_mut(&b) {
        x.contacts.insert(ca.fid, contact_of(&ca));
    }
}

// Requirement: ADV-AS-1, ID-PIN-1
/// The malicious AS's client on the certificate it minted for `fid` (client
/// [`crate::adversary::ADVERSARY_CLIENT`], key [`crate::adversary::ADVERSARY_KEY`]): QS
/// records of its own, key packages bound to the minted certificate, and a connection with
/// `contact` (who pins the minted certificate for `fid`: it has never met `fid`). Refused if
/// nothing was minted for `fid`, if `impostor` is taken, or if `contact` already has `fid`
/// as a contact (the client library refuses to connect twice).
pub fn run_impostor(
    state: &mut State,
    fid: Fid,
    impostor: ClientRef,
    contact: ClientRef,
) -> Outcome {
    use crate::adversary::{ADVERSARY_CLIENT, ADVERSARY_KEY};
    let Some(serial) = state
        .server(fid.domain)
        .and_then(|s| s.as_.client(&fid, ADVERSARY_CLIENT))
        .map(|c| c.certificate.payload.serial)
    else {
        return Err(ErrorCode::NotFound);
    };
    if state.clients.contains_key(&impostor)
        || state
            .clients
            .get(&contact)
            .is_none_or(|c| c.contacts.contains_key(&fid))
    {
        return Err(ErrorCode::Forbidden);
    }
    let qs_user_key = client_key(impostor, 1);
    let qs_key = client_key(impostor, 2);
    let friendship_key = client_key(impostor, 3);
    let token = Token(impostor.0);
    let (qs_user, qs_id) = match call_server(
        state,
        fid.domain,
        &Call::Qs(QsCall::CreateUser {
            user_key: qs_user_key,
            token,
            client_key: qs_key,
        }),
    )? {
        Reply::QsUserCreated { user, client } => (user, client),
        _ => return Err(ErrorCode::Internal),
    };
    let mut me = HonestClient {
        fid,
        name: ADVERSARY_CLIENT,
        as_key: ADVERSARY_KEY,
        serial,
        qs_user,
        qs_id,
        qs_key,
        token,
        friendship_key,
        next_seq: 0,
        groups: BTreeMap::new(),
        contacts: BTreeMap::new(),
        received: Vec::new(),
        accepted: BTreeSet::new(),
        alerts: BTreeSet::new(),
        counter: 10,
        pending: Vec::new(),
        skip_pin_check: false,
    };
    publish_key_packages(state, &mut me)?;
    state.clients.insert(impostor, me);
    introduce(state, impostor, contact);
    Ok(Reply::Empty)
}

/// `client` creates a group on its home DS with a fresh leaf, EAR key and credential key.
pub fn create_group(state: &mut State, client: ClientRef) -> Result<GroupId, ErrorCode> {
    let Some(mut me) = state.clients.get(&client).cloned() else {
        return Err(ErrorCode::UnknownClient);
    };
    let domain = me.fid.domain;
    // Requirement: DS-GID-3, AS-TOKEN-1: a token from the home AS buys the group id.
    let issued = call_server(
        state,
        domain,
        &Call::As(crate::call::AsCall::IssueGroupTokens {
            signer: crate::call::AsSigner::Client {
                fid: crate::ids::FidArg::Valid(me.fid),
                client: me.name,
                key: me.as_key,
            },
            fresh: true,
            count: 1,
            blinded: fresh_key(&mut me),
        }),
    )?;
    let token = match issued {
        Reply::GroupTokens { tokens } => tokens.first().copied().ok_or(ErrorCode::Internal)?,
        _ => return Err(ErrorCode::Internal),
    };
    let group = match call_server(state, domain, &Call::Ds(DsCall::RequestGroupId { token }))? {
        Reply::GroupId(g) => g,
        _ => return Err(ErrorCode::Internal),
    };
    let leaf_key = fresh_key(&mut me);
    let ear = fresh_key(&mut me);
    let credential_key = fresh_key(&mut me);
    let qs_key = state
        .server(domain)
        .map(|s| s.qs.queue_config_key)
        .unwrap_or(KeyId(0));
    let credential = binding(state, &me, leaf_key, credential_key);
    let creator = MemberArg {
        leaf_key,
        queue_config: Sealed {
            to: qs_key,
            nonce: leaf_key.0,
            payload: me.qs_id,
        },
        credential: credential.clone(),
    };
    call_server(
        state,
        domain,
        &Call::Ds(DsCall::CreateGroup {
            group,
            ear,
            creator,
        }),
    )?;
    let mut members = BTreeMap::new();
    members.insert(
        0,
        MemberInfo {
            leaf: 0,
            leaf_key,
            credential,
        },
    );
    me.groups.insert(
        group,
        ClientGroup {
            ear,
            credential_key,
            epoch: 0,
            leaf: 0,
            leaf_key,
            active: true,
            members,
            departed: BTreeMap::new(),
        },
    );
    state.clients.insert(client, me);
    Ok(group)
}

/// Run a client operation.
pub fn run(state: &mut State, op: &ClientOp) -> Outcome {
    match op {
        ClientOp::Send { client, group } => send(state, *client, *group),
        ClientOp::Update { client, group } => {
            let (_, view) = member_view(state, *client, *group)?;
            let outcome = call_server(
                state,
                group.domain,
                &Call::Ds(DsCall::Update {
                    group: *group,
                    ear: view.ear,
                    signer: LeafSigner {
                        leaf: view.leaf,
                        key: view.leaf_key,
                    },
                    epoch: view.epoch,
                }),
            );
            if outcome.is_ok() {
                // The committer merges its own commit.
                advance(state, *client, *group, |_| {});
            }
            outcome
        }
        ClientOp::Add {
            client,
            group,
            invitee,
        } => add(state, *client, *group, *invitee),
        ClientOp::Resync { client, group } => resync(state, *client, *group),
        ClientOp::Remove {
            client,
            group,
            leaf,
        } => {
            let (_, view) = member_view(state, *client, *group)?;
            let outcome = call_server(
                state,
                group.domain,
                &Call::Ds(DsCall::RemoveUsers {
                    group: *group,
                    ear: view.ear,
                    signer: LeafSigner {
                        leaf: view.leaf,
                        key: view.leaf_key,
                    },
                    epoch: view.epoch,
                    removed: vec![*leaf],
                }),
            );
            if outcome.is_ok() {
                let removed = *leaf;
                advance(state, *client, *group, move |v| {
                    v.retire(removed);
                });
            }
            outcome
        }
        ClientOp::Sync { client } => sync(state, *client),
        ClientOp::CheckContact { client, contact } => check_contact(state, *client, *contact),
    }
}

/// The client's own record and its view of `group`, if it is an active member.
pub(crate) fn member_view(
    state: &State,
    client: ClientRef,
    group: GroupId,
) -> Result<(HonestClient, ClientGroup), ErrorCode> {
    let Some(me) = state.clients.get(&client) else {
        return Err(ErrorCode::UnknownClient);
    };
    // Requirement: CL-AMBIG-1 (a group with an unsettled request takes no new one: the
    // client library refuses locally)
    if me.pending.iter().any(|p| p.group == group) {
        return Err(ErrorCode::Forbidden);
    }
    match me.groups.get(&group) {
        Some(view) if view.active => Ok((me.clone(), view.clone())),
        // The client library refuses locally; no request is sent.
        _ => Err(ErrorCode::UnknownGroup),
    }
}

/// After our own accepted commit: the next epoch, with `change` applied to the view.
pub(crate) fn advance(
    state: &mut State,
    client: ClientRef,
    group: GroupId,
    change: impl Fn(&mut ClientGroup),
) {
    if let Some(view) = state
        .clients
        .get_mut(&client)
        .and_then(|c| c.groups.get_mut(&group))
    {
        change(view);
        view.epoch = view.epoch.saturating_add(1);
    }
}

// Requirement: DS-RESYNC-1, DS-RESYNC-2, CL-RESYNC-1
/// Resync: fetch the group's current info with the EAR key, then rejoin by external commit
/// at that epoch, removing the own leaf and adding one with the same leaf key (the model's
/// leaf credential), the same sealed queue config and the same bound credential. On
/// success the view is the group as the info showed it, plus the new leaf.
fn resync(state: &mut State, client: ClientRef, group: GroupId) -> Outcome {
    let (me, view) = member_view(state, client, group)?;
    let (epoch, members) = match call_server(
        state,
        group.domain,
        &Call::Ds(DsCall::ExternalCommitInfo {
            group,
            ear: view.ear,
        }),
    )? {
        Reply::GroupInfo { epoch, members, .. } => (epoch, members),
        _ => return Err(ErrorCode::Internal),
    };
    let Some(own) = members.iter().find(|m| m.leaf == view.leaf) else {
        // The DS no longer has our leaf (we were removed): nothing to resync.
        return Err(ErrorCode::UnknownSender);
    };
    let qs_key = state
        .server(me.fid.domain)
        .map(|s| s.qs.queue_config_key)
        .unwrap_or(KeyId(0));
    let member = MemberArg {
        leaf_key: view.leaf_key,
        queue_config: Sealed {
            to: qs_key,
            nonce: view.leaf_key.0,
            payload: me.qs_id,
        },
        credential: own.credential.clone(),
    };
    let outcome = call_server(
        state,
        group.domain,
        &Call::Ds(DsCall::Resync {
            group,
            ear: view.ear,
            signer: LeafSigner {
                leaf: view.leaf,
                key: view.leaf_key,
            },
            epoch,
            removed: view.leaf,
            member,
        }),
    );
    if outcome.is_ok() {
        let mut others: BTreeMap<Leaf, MemberInfo> = members
            .iter()
            .filter(|m| m.leaf != view.leaf)
            .map(|m| (m.leaf, m.clone()))
            .collect();
        let mut leaf: Leaf = 0;
        while others.contains_key(&leaf) {
            leaf = leaf.saturating_add(1);
        }
        others.insert(
            leaf,
            MemberInfo {
                leaf,
                leaf_key: view.leaf_key,
                credential: own.credential.clone(),
            },
        );
        if let Some(v) = state
            .clients
            .get_mut(&client)
            .and_then(|c| c.groups.get_mut(&group))
        {
            v.epoch = epoch.saturating_add(1);
            v.leaf = leaf;
            v.members = others;
            v.departed.clear();
        }
    }
    outcome
}

fn send(state: &mut State, client: ClientRef, group: GroupId) -> Outcome {
    let (mut me, view) = member_view(state, client, group)?;
    me.counter = me.counter.saturating_add(1);
    let msg = MsgId(
        u32::from(client.0)
            .saturating_mul(100_000)
            .saturating_add(me.counter),
    );
    let at = state.now;
    let fid = me.fid;
    state.clients.insert(client, me);
    crate::recovery::note_created(state, msg);
    let outcome = call_server(
        state,
        group.domain,
        &Call::Ds(DsCall::SendMessage {
            group,
            ear: view.ear,
            signer: LeafSigner {
                leaf: view.leaf,
                key: view.leaf_key,
            },
            epoch: view.epoch,
            msg,
        }),
    );
    if outcome.is_ok() {
        state.ghost.sent.insert(
            msg,
            Sent {
                sender: fid,
                leaf_key: view.leaf_key,
                at,
            },
        );
        state.ghost.acknowledged.insert(msg);
    }
    outcome
}

/// Add the contact's clients: fetch their key packages with the friendship token from
/// their QS, then commit the adds with a welcome for each (Requirement: QS-KP-3, DS-ADD-1).
fn add(state: &mut State, client: ClientRef, group: GroupId, invitee: Fid) -> Outcome {
    let (me, view) = member_view(state, client, group)?;
    let Some(contact) = me.contacts.get(&invitee).cloned() else {
        // Only connected contacts can be invited (checked locally).
        return Err(ErrorCode::Forbidden);
    };
    // The packages as stored before the fetch: the bytes the QS will serve.
    let mut available = BTreeMap::new();
    if let Some(server) = state.server(contact.home) {
        for c in server.qs.clients.values() {
            for p in c.key_packages.iter() {
                available.insert(p.id, p.clone());
            }
        }
    }
    let served = match call_server(
        state,
        contact.home,
        &Call::Qs(QsCall::FetchKeyPackages {
            token: contact.token,
        }),
    )? {
        Reply::KeyPackages { packages } => packages,
        _ => return Err(ErrorCode::Internal),
    };
    let mut joiners = Vec::new();
    for (_, id) in served.iter() {
        let Some(p) = available.get(id) else {
            return Err(ErrorCode::Internal);
        };
        // The client info is sealed to the invitee's friendship key; verify it is bound to
        // the package's leaf by a pinned certificate of the invitee.
        let Some(info) = p
            .client_info
            .as_ref()
            .and_then(|i| i.open(contact.friendship_key))
        else {
            return Err(ErrorCode::InvalidKeyPackage);
        };
        if info.certificate.payload.fid != invitee
            || !contact.pinned.contains(&info.certificate.payload.serial)
            || !info.binding.verifies_with(info.certificate.payload.key)
            || info.binding.payload != p.leaf_key
        {
            return Err(ErrorCode::InvalidKeyPackage);
        }
        joiners.push(AddedMember {
            member: MemberArg {
                leaf_key: p.leaf_key,
                queue_config: p.queue_config.clone(),
                credential: Sealed {
                    to: view.credential_key,
                    nonce: p.leaf_key.0,
                    payload: info,
                },
            },
            welcome: Sealed {
                to: contact.friendship_key,
                nonce: p.id.0,
                payload: GroupSecrets {
                    ear: view.ear,
                    credential_key: view.credential_key,
                    inviter: me.fid,
                },
            },
        });
    }
    let outcome = call_server(
        state,
        group.domain,
        &Call::Ds(DsCall::AddUsers {
            group,
            ear: view.ear,
            signer: LeafSigner {
                leaf: view.leaf,
                key: view.leaf_key,
            },
            epoch: view.epoch,
            joiners: joiners.clone(),
        }),
    );
    if outcome.is_ok() {
        let mut members = view.members.clone();
        for j in joiners.iter() {
            let leaf = lowest_free(&members);
            members.insert(
                leaf,
                MemberInfo {
                    leaf,
                    leaf_key: j.member.leaf_key,
                    credential: j.member.credential.clone(),
                },
            );
        }
        advance(state, client, group, move |v| v.members = members.clone());
    }
    outcome
}

fn lowest_free(members: &BTreeMap<Leaf, MemberInfo>) -> Leaf {
    let mut leaf: Leaf = 0;
    for used in members.keys() {
        if *used == leaf {
            leaf = leaf.saturating_add(1);
        }
    }
    leaf
}

/// Dequeue everything from `next_seq` on and process it, in rounds of at most 100 (what
/// the client library's sync does; bounded here to 16 rounds).
fn sync(state: &mut State, client: ClientRef) -> Outcome {
    let Some(me) = state.clients.get(&client).cloned() else {
        return Err(ErrorCode::UnknownClient);
    };
    let mut start = me.next_seq;
    for _ in 0..16 {
        let reply = call_server(
            state,
            me.fid.domain,
            &Call::Qs(QsCall::Dequeue {
                signer: QsSigner::Client {
                    id: me.qs_id,
                    key: me.qs_key,
                },
                fresh: true,
                start,
                max: 100,
            }),
        )?;
        let Reply::Dequeued {
            messages,
            remaining,
        } = reply
        else {
            return Err(ErrorCode::Internal);
        };
        receive(state, client, &messages);
        if let Some((last, _)) = messages.last() {
            start = last.saturating_add(1);
        }
        if remaining == 0 || messages.is_empty() {
            break;
        }
    }
    Ok(Reply::Empty)
}

/// Process dequeued messages: each exactly once, in order, from the next expected number
/// (Requirement: QS-Q-2). A response that does not start at or before that number is
/// ignored (it cannot be: the server returns messages from the start asked for).
pub fn receive(state: &mut State, client: ClientRef, messages: &[(Seq, QueueItem)]) {
    let groups_before = state
        .clients
        .get(&client)
        .map(|c| c.groups.len())
        .unwrap_or(0);
    for (seq, item) in messages.iter() {
        let Some(expected) = state.clients.get(&client).map(|c| c.next_seq) else {
            return;
        };
        if *seq != expected {
            continue;
        }
        process(state, client, *seq, item);
        if let Some(c) = state.clients.get_mut(&client) {
            c.received.push((*seq, item.clone()));
            c.next_seq = seq.saturating_add(1);
        }
    }
    // Joining used up one of our key packages: publish a fresh set, as the client
    // library does after a sync that joined a group.
    let joined = state
        .clients
        .get(&client)
        .map(|c| c.groups.len())
        .unwrap_or(0)
        > groups_before;
    if let (true, Some(mut me)) = (joined, state.clients.get(&client).cloned()) {
        let _ = publish_key_packages(state, &mut me);
        state.clients.insert(client, me);
    }
}

fn process(state: &mut State, client: ClientRef, _seq: Seq, item: &QueueItem) {
    let now = state.now;
    let Some(mut me) = state.clients.get(&client).cloned() else {
        return;
    };
    match item {
        QueueItem::Opaque(_) => {}
        QueueItem::Welcome {
            group,
            epoch,
            leaf,
            members,
            secrets,
        } => {
            let Some(secrets) = secrets.open(me.friendship_key) else {
                return;
            };
            // Invitations only from connected contacts (Requirement: ID-CONN-2).
            if !me.contacts.contains_key(&secrets.inviter) {
                return;
            }
            let mut view_members = BTreeMap::new();
            let mut own_key = None;
            for m in members.iter() {
                if m.leaf == *leaf {
                    own_key = Some(m.leaf_key);
                }
                view_members.insert(m.leaf, m.clone());
            }
            let Some(leaf_key) = own_key else { return };
            // Requirement: ID-PIN-1 (every member of the group joined)
            me.check_members(
                client,
                secrets.credential_key,
                members.iter(),
                &mut state.ghost.shown_pinned,
            );
            me.groups.insert(
                *group,
                ClientGroup {
                    ear: secrets.ear,
                    credential_key: secrets.credential_key,
                    epoch: *epoch,
                    leaf: *leaf,
                    leaf_key,
                    active: true,
                    members: view_members,
                    departed: BTreeMap::new(),
                },
            );
        }
        QueueItem::Commit {
            group, epoch, kind, ..
        } => {
            let mut joined = Vec::new();
            let Some(view) = me.groups.get_mut(group) else {
                return;
            };
            let credential_key = view.credential_key;
            if !view.active || view.epoch != *epoch {
                // A commit for another epoch does not apply (openmls refuses it).
                return;
            }
            match kind {
                CommitKind::Update => {}
                CommitKind::Add(infos) => {
                    for i in infos.iter() {
                        view.members.insert(i.leaf, i.clone());
                    }
                    joined.extend(infos.iter().cloned());
                }
                CommitKind::ExternalJoin(i) => {
                    view.members.insert(i.leaf, i.clone());
                    joined.push(i.clone());
                }
                // Requirement: CL-RESYNC-1 (the new leaf must be the same client as the
                // one it replaces: same FID and client in the bound certificate)
                CommitKind::Resync { removed, member } => {
                    let old = view
                        .members
                        .get(removed)
                        .and_then(|m| m.credential.open(credential_key))
                        .map(|b| (b.certificate.payload.fid, b.certificate.payload.client));
                    let new = member
                        .credential
                        .open(credential_key)
                        .map(|b| (b.certificate.payload.fid, b.certificate.payload.client));
                    if old.is_none() || old != new {
                        return;
                    }
                    view.retire(*removed);
                    view.members.insert(member.leaf, member.clone());
                }
                CommitKind::Remove(leaves) => {
                    for l in leaves.iter() {
                        view.retire(*l);
                        if *l == view.leaf {
                            view.active = false;
                        }
                    }
                }
            }
            view.epoch = view.epoch.saturating_add(1);
            // Requirement: ID-PIN-1 (members added by a commit or an external join)
            me.check_members(
                client,
                credential_key,
                joined.iter(),
                &mut state.ghost.shown_pinned,
            );
        }
        QueueItem::Application {
            group,
            epoch,
            sender,
            msg,
        } => {
            let Some(view) = me.groups.get(group) else {
                return;
            };
            // Messages of the current epoch and of up to MAX_PAST_EPOCHS earlier ones are
            // readable (the client keeps that many epochs' secrets).
            let too_old = view.epoch.saturating_sub(*epoch) > MAX_PAST_EPOCHS;
            // A replayed message is not accepted twice (Requirement: ADV-REPLAY-1).
            if !view.active || *epoch > view.epoch || too_old || me.accepted.contains(msg) {
                return;
            }
            // The sender as it was in the message's epoch: a member removed since still
            // sent it (Requirement: ID-CHAIN-3).
            let Some(member) = view.member_at(*sender, *epoch) else {
                return;
            };
            // The message's signature: by the sender leaf's key.
            let Some(sent) = state.ghost.sent.get(msg).copied() else {
                return;
            };
            if sent.leaf_key != member.leaf_key {
                return;
            }
            let Some(b) = member.credential.open(view.credential_key) else {
                return;
            };
            let cert = &b.certificate;
            let ca_key = state.server(cert.payload.fid.domain).map(|s| s.as_.ca_key);
            let chain_ok = b.binding.verifies_with(cert.payload.key)
                && b.binding.payload == member.leaf_key
                && Some(cert.by) == ca_key
                && cert.payload.not_before <= now
                && now <= cert.payload.not_after;
            if !chain_ok {
                return;
            }
            // Requirement: ID-PIN-1 (a contact's FID only from a pinned certificate: an
            // unpinned one is shown as not verified, and alerted)
            if me.standing(cert.payload.fid, cert.payload.serial) == Standing::Unpinned {
                me.alerts.insert(cert.payload.fid);
                state.clients.insert(client, me);
                return;
            }
            me.accepted.insert(*msg);
            state.ghost.accepted.insert(Accepted {
                receiver: client,
                msg: *msg,
                sender: cert.payload.fid,
                serial: cert.payload.serial,
                issuer_key: cert.by,
                verified_at: now,
            });
        }
    }
    state.clients.insert(client, me);
}

/// Compare a contact's certificates as its AS serves them with the pinned ones; any
/// unpinned certificate raises an alert (Requirement: ADV-AS-1).
fn check_contact(state: &mut State, client: ClientRef, contact: Fid) -> Outcome {
    let outcome = call_server(
        state,
        contact.domain,
        &Call::As(AsCall::ClientCertificates {
            fid: crate::ids::FidArg::Valid(contact),
        }),
    );
    let mut served = BTreeSet::new();
    if let Some(server) = state.server(contact.domain) {
        for cert in server.as_.certificates.iter() {
            if cert.payload.fid == contact {
                served.insert(cert.payload.serial);
            }
        }
    }
    if let Some(me) = state.clients.get_mut(&client) {
        let mut unknown = false;
        if let Some(c) = me.contacts.get(&contact) {
            for s in served.iter() {
                if !c.pinned.contains(s) {
                    unknown = true;
                }
            }
        }
        if unknown {
            me.alerts.insert(contact);
        }
    }
    outcome
}
