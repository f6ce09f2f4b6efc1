//! The invariants, each a pure predicate over the state (Requirement: MODEL-1). The model
//! checker checks all of them in every reachable state of its configurations; the
//! conformance suite checks the ones that the API can observe on the real server,
//! projected.

use std::collections::BTreeSet;

use phoenix_types::error::ErrorCode;

use crate::adversary::{self, Ident, Service};
use crate::ids::KeyId;
use crate::queue;
use crate::state::{QueueRef, State};

/// Every invariant, by name.
pub fn all(state: &State) -> Vec<(&'static str, bool)> {
    vec![
        ("queues_well_formed", inv_queues_well_formed(state)),
        (
            "client_receives_in_order",
            inv_client_receives_in_order(state),
        ),
        ("only_owner_dequeues", inv_only_owner_dequeues(state)),
        ("one_commit_per_epoch", inv_one_commit_per_epoch(state)),
        (
            "one_time_packages_served_once",
            inv_one_time_packages_served_once(state),
        ),
        (
            "no_fan_out_to_non_members",
            inv_no_fan_out_to_non_members(state),
        ),
        (
            "ds_cannot_link_pseudonyms",
            inv_ds_cannot_link_pseudonyms(state),
        ),
        ("snapshot_unlinkable", inv_snapshot_unlinkable(state)),
        (
            "snapshot_shows_no_queue_group",
            inv_snapshot_shows_no_queue_group(state),
        ),
        (
            "operator_sees_no_identity_with_pseudonym",
            inv_operator_sees_no_identity_with_pseudonym(state),
        ),
        (
            "accepted_chain_ends_at_home_ca",
            inv_accepted_chain_ends_at_home_ca(state),
        ),
        (
            "no_minted_credential_trusted",
            inv_no_minted_credential_trusted(state),
        ),
        ("federated_exactly_once", inv_federated_exactly_once(state)),
        ("federated_no_loss", inv_federated_no_loss(state)),
        ("no_open_relay", inv_no_open_relay(state)),
        (
            "no_forged_enqueue_accepted",
            inv_no_forged_enqueue_accepted(state),
        ),
        (
            "no_message_fanned_out_twice",
            inv_no_message_fanned_out_twice(state),
        ),
        (
            "groups_only_for_local_clients",
            inv_groups_only_for_local_clients(state),
        ),
        ("member_in_one_leaf", inv_member_in_one_leaf(state)),
    ]
}

/// Every group id a DS reserved was bought with a token its own AS issued (to one of its
/// registered clients): nobody else gets to create groups there (Requirement: DS-GID-3,
/// AS-TOKEN-1).
pub fn inv_groups_only_for_local_clients(state: &State) -> bool {
    state.servers.iter().all(|(domain, server)| {
        server
            .ds
            .spent_tokens
            .keys()
            .all(|n| state.ghost.tokens_issued.contains(&(*domain, *n)))
    })
}

/// No application message reaches a queue twice, whatever the adversary replayed: the DS
/// refuses a replayed `send_message` (Requirement: ADV-REPLAY-2, ADV-REPLAY-1).
pub fn inv_no_message_fanned_out_twice(state: &State) -> bool {
    for server in state.servers.values() {
        for record in server.qs.clients.values() {
            let mut seen = BTreeSet::new();
            for item in record.queue.history.iter() {
                if let queue::QueueItem::Application { msg, .. } = item
                    && !seen.insert(*msg)
                {
                    return false;
                }
            }
        }
    }
    true
}

/// No duplicate ever: each federated message (sender, id) is enqueued at most once,
/// whatever the network duplicated, the outbox retried or a remote server replayed
/// (Requirement: FED-3, ADV-NET-1, ADV-REMOTE-1).
pub fn inv_federated_exactly_once(state: &State) -> bool {
    state.ghost.fed.enqueued.values().all(|n| *n <= 1)
}

/// In order per destination: the messages of one sender that one destination accepted were
/// accepted in the order the sender's DS fanned them out (outbox ids grow), whatever the
/// network dropped, duplicated or delayed and however often a server restarted; so a peer
/// back from an outage gets the older messages first (Requirement: FED-ORDER-1).
pub fn inv_federation_delivers_in_order_per_destination(state: &State) -> bool {
    state
        .ghost
        .fed
        .accepted_order
        .values()
        .all(|ids| ids.windows(2).all(|w| matches!(w, [a, b] if a < b)))
}

/// No loss: every outbox entry ever created is still in its sender's (durable) outbox, was
/// enqueued at its destination, or was refused for good by a policy (the sender's or the
/// receiver's) or because its queue is gone; never lost to a dropped packet, a restart or
/// a transient failure. So once the network delivers (the outbox is empty), every message
/// between servers whose policies allow each other is in its queue, once (Requirement:
/// FED-3, ADV-NET-1).
pub fn inv_federated_no_loss(state: &State) -> bool {
    for ((from, id), _) in state.ghost.fed.created.iter() {
        let pending = state
            .server(*from)
            .is_some_and(|s| s.fed.outbox.contains_key(id));
        let delivered = state.ghost.fed.enqueued.get(&(*from, *id)) == Some(&1);
        let refused = matches!(
            state.ghost.fed.refused.get(&(*from, *id)),
            Some(ErrorCode::FederationRefused) | Some(ErrorCode::UnknownQueue)
        );
        if !(pending || delivered || refused) {
            return false;
        }
    }
    true
}

/// No open relay: a QS enqueues only messages addressed to it whose queue config is
/// sealed to it (Requirement: FED-1, ADV-REMOTE-1).
pub fn inv_no_open_relay(state: &State) -> bool {
    state
        .ghost
        .fed
        .accepted
        .iter()
        .all(|a| a.destination == a.at && a.queue_domain == Some(a.at))
}

/// No forged enqueue accepted: every accepted federated message is signed with the key
/// its claimed sender publishes, from a sender the receiver's policy allows, not claiming
/// to be the receiver; and one that names an honest homeserver as sender was really put
/// in that homeserver's outbox, for that destination (Requirement: FED-2, FED-4,
/// ADV-REMOTE-1).
pub fn inv_no_forged_enqueue_accepted(state: &State) -> bool {
    for a in state.ghost.fed.accepted.iter() {
        if state.directory.get(&a.sender) != Some(&a.signer) || a.sender == a.at {
            return false;
        }
        let Some(receiver) = state.server(a.at) else {
            return false;
        };
        if !receiver.fed.policy.allows(a.sender) {
            return false;
        }
        if state.servers.contains_key(&a.sender) {
            match state.ghost.fed.created.get(&(a.sender, a.id)) {
                Some((destination, _, _)) if *destination == a.at => {}
                _ => return false,
            }
        }
    }
    true
}

/// Per-client queue order with no loss: every queue holds exactly its numbers from the
/// owner's last dequeue start to its counter, each with what was enqueued under it
/// (Requirement: QS-Q-1, AS-DQ-1, QS-DEQ-1).
pub fn inv_queues_well_formed(state: &State) -> bool {
    for server in state.servers.values() {
        for user in server.as_.users.values() {
            for client in user.clients.values() {
                if !queue::well_formed(&client.direct_queue) {
                    return false;
                }
            }
        }
        for client in server.qs.clients.values() {
            if !queue::well_formed(&client.queue) {
                return false;
            }
        }
    }
    true
}

/// Delivery to the owner is in order, without loss and without duplicates after it acked:
/// what a client processed is exactly its queue's history from 0, whatever the network
/// dropped, duplicated or reordered (Requirement: QS-Q-2, ADV-NET-1).
pub fn inv_client_receives_in_order(state: &State) -> bool {
    for client in state.clients.values() {
        let Some(record) = state
            .server(client.fid.domain)
            .and_then(|s| s.qs.clients.get(&client.qs_id))
        else {
            return false;
        };
        for (i, (seq, item)) in client.received.iter().enumerate() {
            if *seq != i as u64 {
                return false;
            }
            if record.queue.history.get(i) != Some(item) {
                return false;
            }
        }
        if client.next_seq != client.received.len() as u64 {
            return false;
        }
    }
    true
}

/// Only the owner dequeues: every accepted dequeue was signed with the key of the queue's
/// owner (Requirement: QS-AUTH-1, AS-AUTH-1).
pub fn inv_only_owner_dequeues(state: &State) -> bool {
    for (queue, key) in state.ghost.dequeues.iter() {
        let owner = owner_key(state, queue);
        if owner != Some(*key) {
            return false;
        }
    }
    true
}

fn owner_key(state: &State, queue: &QueueRef) -> Option<KeyId> {
    match queue {
        QueueRef::Direct(fid, client) => state
            .server(fid.domain)
            .and_then(|s| s.as_.client(fid, *client))
            .map(|c| c.certificate.payload.key),
        QueueRef::Qs(id) => {
            for server in state.servers.values() {
                if let Some(c) = server.qs.clients.get(id) {
                    return Some(c.auth_key);
                }
            }
            None
        }
    }
}

/// A resynced member is in exactly one leaf: in every group a DS hosts, no two leaves
/// carry the same leaf key (the per-group pseudonym a resync keeps), so the DS never keeps
/// the old leaf besides the new one (Requirement: DS-RESYNC-2). (Not "no client in two
/// leaves": an honest inviter that adds a contact again before the contact processed the
/// first welcome puts it in two leaves with two key packages; the real client refuses that
/// add locally, the model's does not.)
pub fn inv_member_in_one_leaf(state: &State) -> bool {
    for server in state.servers.values() {
        for group in server.ds.groups.values() {
            let mut seen = BTreeSet::new();
            for m in group.members.values() {
                if !seen.insert(m.leaf_key) {
                    return false;
                }
            }
        }
    }
    true
}

/// One accepted commit per (group, epoch) (Requirement: DS-EPOCH-1).
pub fn inv_one_commit_per_epoch(state: &State) -> bool {
    state.ghost.commits.values().all(|n| *n == 1)
}

/// A one-time connection or key package is served at most once, whatever the adversary
/// replayed (Requirement: AS-CP-3, QS-KP-3, ADV-REPLAY-4).
pub fn inv_one_time_packages_served_once(state: &State) -> bool {
    let once = |(last_resort, n): &(bool, u32)| *last_resort || *n <= 1;
    state.ghost.served_connection_packages.values().all(once)
        && state.ghost.served_key_packages.values().all(once)
}

/// No fan-out to non-members, and none back to the sender (Requirement: DS-FAN-1,
/// DS-FAN-2).
pub fn inv_no_fan_out_to_non_members(state: &State) -> bool {
    for (group, epoch, sender, recipient, _) in state.ghost.deliveries.iter() {
        let Some(members) = state.ghost.members_at.get(&(*group, *epoch)) else {
            return false;
        };
        if !members.contains(recipient) {
            return false;
        }
        if *sender == Some(*recipient) {
            return false;
        }
    }
    true
}

/// The DS cannot link one client's pseudonyms across groups: no leaf key and no sealed
/// queue config appears in two groups, except where a client joined both through its
/// reusable last-resort key package (Requirement: DS-PRIV-1; the exception is a
/// documented limit, see docs/model.md).
pub fn inv_ds_cannot_link_pseudonyms(state: &State) -> bool {
    let exempt = &state.ghost.last_resort_leaf_keys;
    for server in state.servers.values() {
        let groups: Vec<_> = server.ds.groups.values().collect();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i.saturating_add(1)) {
                for ma in a.members.values() {
                    for mb in b.members.values() {
                        let linked =
                            ma.leaf_key == mb.leaf_key || ma.queue_config == mb.queue_config;
                        if linked && !exempt.contains(&ma.leaf_key) {
                            return false;
                        }
                    }
                }
            }
        }
    }
    true
}

/// Whether some DS shows the same pseudonym in two groups (the last-resort exception is
/// reachable: the model checker reports it as a finding).
pub fn ds_links_some_pseudonym(state: &State) -> bool {
    for server in state.servers.values() {
        let groups: Vec<_> = server.ds.groups.values().collect();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i.saturating_add(1)) {
                for ma in a.members.values() {
                    for mb in b.members.values() {
                        if ma.leaf_key == mb.leaf_key || ma.queue_config == mb.queue_config {
                            return true;
                        }
                    }
                }
            }
        }
    }
    false
}

/// No persisted record links an AS identity to a QS pseudonym or to group membership: QS
/// and DS tables hold no FID, no row holds an FID together with a QS id or a group, and
/// no key appears both in AS tables and in QS or DS tables (Requirement: ADV-SNAP-1,
/// ADV-SNAP-2).
pub fn inv_snapshot_unlinkable(state: &State) -> bool {
    for server in state.servers.values() {
        let rows = adversary::snapshot(server);
        let mut as_keys = BTreeSet::new();
        let mut other_keys = BTreeSet::new();
        for row in rows.iter() {
            let has_fid = row.idents.iter().any(|i| matches!(i, Ident::Fid(_)));
            let has_pseudonym = row
                .idents
                .iter()
                .any(|i| matches!(i, Ident::QsUser(_) | Ident::QsClient(_) | Ident::Group(_)));
            if has_fid && (has_pseudonym || row.service != Service::As) {
                return false;
            }
            for ident in row.idents.iter() {
                if let Ident::Key(k) = ident {
                    if row.service == Service::As {
                        as_keys.insert(*k);
                    } else {
                        other_keys.insert(*k);
                    }
                }
            }
        }
        if as_keys.intersection(&other_keys).next().is_some() {
            return false;
        }
    }
    true
}

/// No persisted row shows a QS pseudonym next to a group id (Requirement: QS-ENC-1,
/// ADV-SNAP-2). Reachable before queue entries were sealed: the QS queue table stored the
/// fanned-out payload with its group id in clear (`docs/model.md`, finding 2).
pub fn inv_snapshot_shows_no_queue_group(state: &State) -> bool {
    for server in state.servers.values() {
        for row in adversary::snapshot(server).iter() {
            let client = row.idents.iter().any(|i| matches!(i, Ident::QsClient(_)));
            let group = row.idents.iter().any(|i| matches!(i, Ident::Group(_)));
            if client && group {
                return false;
            }
        }
    }
    true
}

/// No request shows its handler a real identity together with a QS pseudonym or a group,
/// and the DS sees only groups and per-group pseudonyms (Requirement: ADV-OP-1,
/// ADV-OP-2).
pub fn inv_operator_sees_no_identity_with_pseudonym(state: &State) -> bool {
    for o in state.ghost.observations.iter() {
        if !o.fids.is_empty() && (!o.qs_ids.is_empty() || !o.groups.is_empty()) {
            return false;
        }
        if o.service == "ds" && (!o.fids.is_empty() || !o.qs_ids.is_empty()) {
            return false;
        }
        if o.service == "qs" && (!o.groups.is_empty() || !o.leaf_keys.is_empty()) {
            return false;
        }
    }
    true
}

/// Every accepted message's authentication chain ends at its sender's home CA
/// certificate, through a certificate for that sender valid when the message was sent,
/// and the sender is who really sent it (Requirement: ID-CHAIN-1, ID-CHAIN-2).
pub fn inv_accepted_chain_ends_at_home_ca(state: &State) -> bool {
    for a in state.ghost.accepted.iter() {
        let Some(sent) = state.ghost.sent.get(&a.msg) else {
            return false;
        };
        if a.sender != sent.sender {
            return false;
        }
        let Some(home) = state.server(sent.sender.domain) else {
            return false;
        };
        if a.issuer_key != home.as_.ca_key {
            return false;
        }
        let mut valid = false;
        for cert in home.as_.certificates.iter() {
            let c = &cert.payload;
            if c.serial == a.serial
                && c.fid == sent.sender
                && c.not_before <= sent.at
                && sent.at <= c.not_after
            {
                valid = true;
            }
        }
        if !valid {
            return false;
        }
    }
    true
}

/// A credential minted by a malicious AS is never trusted for the user it impersonates by
/// an honest client that knows that user: no message it accepted and no group member it
/// showed as pinned comes from a minted certificate of a FID it has as a contact on a
/// genuine (not minted) certificate, and such a contact's pins never take in a minted one
/// (Requirement: ADV-AS-1, ID-PIN-1). A client that never met the user and connected with
/// the impostor itself pins what it was shown: only an out-of-band comparison (ID-OOB-1)
/// tells the two apart, which is outside the model.
pub fn inv_no_minted_credential_trusted(state: &State) -> bool {
    let minted = |serial: &u32| state.ghost.minted.contains(serial);
    let knows_genuinely = |client: &crate::client::ClientRef, fid: &crate::ids::Fid| {
        state
            .clients
            .get(client)
            .and_then(|c| c.contacts.get(fid))
            .is_some_and(|c| c.pinned.iter().any(|s| !minted(s)))
    };
    for a in state.ghost.accepted.iter() {
        if minted(&a.serial) && knows_genuinely(&a.receiver, &a.sender) {
            return false;
        }
    }
    for (client, fid, serial) in state.ghost.shown_pinned.iter() {
        if minted(serial) && knows_genuinely(client, fid) {
            return false;
        }
    }
    for client in state.clients.values() {
        for contact in client.contacts.values() {
            let genuine = contact.pinned.iter().any(|s| !minted(s));
            if genuine && contact.pinned.iter().any(minted) {
                return false;
            }
        }
    }
    true
}

/// Whether some client noticed a contact's certificate set change (the malicious AS's
/// mint is detectable: the model checker shows it reachable).
pub fn some_alert_raised(state: &State) -> bool {
    state.clients.values().any(|c| !c.alerts.is_empty())
}

// ----- a client's lost answers (Requirement: CL-AMBIG-1) ------------------------------

/// No two messages are ever created under one message id, i.e. one ratchet generation of
/// their sender: a lost answer never makes the client reuse a generation.
pub fn inv_no_generation_reused(state: &State) -> bool {
    state.ghost.created.values().all(|n| *n <= 1)
}

/// Every message a client was told was sent is one the server kept.
pub fn inv_acknowledged_kept(state: &State) -> bool {
    state
        .ghost
        .acknowledged
        .iter()
        .all(|m| state.ghost.sent.contains_key(m))
}

/// A client merges as its own only a commit the DS accepted from its leaf: no fork after a
/// lost answer.
pub fn inv_merged_commits_were_accepted(state: &State) -> bool {
    state
        .ghost
        .merged_own
        .iter()
        .all(|(group, epoch, leaf)| state.ghost.committers.get(&(*group, *epoch)) == Some(leaf))
}
