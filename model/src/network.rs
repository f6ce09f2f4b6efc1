//! The network adversary between clients and their QS (Requirement: ADV-NET-1): dequeue
//! requests and responses travel as packets that the network may deliver in any order,
//! drop, or duplicate. Group operations are atomic request-response pairs here (a lost
//! answer to a commit is a stale view, which the epoch check covers); a replayed DS
//! request is the adversary's [`crate::adversary::AdvOp::ReplayDs`], a replayed signed AS
//! or QS request its [`crate::adversary::AdvOp::ReplayAs`] and
//! [`crate::adversary::AdvOp::ReplayQs`].
//!
//! Federated traffic between homeservers travels as [`FedPacket`]s on the same network,
//! with the same faults; its operations are [`crate::federation::FedOp`].

use phoenix_types::error::ErrorCode;

use crate::call::{AsCall, Call, DsCall, Outcome, QsCall, QsSigner, Reply};
use crate::client::{self, ClientRef};
use crate::ids::{DomainId, Seq};
use crate::queue::QueueItem;
use crate::state::{State, call_server};

/// A packet on the wire.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Packet {
    /// A client's dequeue request from `start`.
    Dequeue { client: ClientRef, start: Seq },
    /// The server's answer to it.
    Dequeued {
        client: ClientRef,
        messages: Vec<(Seq, QueueItem)>,
    },
}

/// A federated packet on the wire between two homeservers (Requirement: ADV-NET-1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FedPacket {
    /// A signed federated enqueue from `origin`'s outbox worker to `to`'s QS (`origin` is
    /// who really sent it; the message names a sender of its own).
    Request {
        origin: DomainId,
        to: DomainId,
        message: crate::federation::FederatedEnqueue,
    },
    /// The QS's answer to it, back to the sender's outbox worker.
    Answer {
        from: DomainId,
        to: DomainId,
        id: crate::federation::FedMsgId,
        outcome: Result<(), ErrorCode>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Network {
    /// Packets in flight, as a multiset (order is not delivery order: any can go next).
    pub in_flight: Vec<Packet>,
    /// Federated packets in flight, as a multiset.
    pub federation: Vec<FedPacket>,
    /// The last accepted DS request seen on the wire (what a replay resends).
    pub last_ds: Option<(DomainId, DsCall)>,
    /// The last accepted signed state-changing AS and QS requests seen on the wire (what a
    /// replay of each resends) (Requirement: ADV-REPLAY-3).
    pub last_as: Option<(DomainId, AsCall)>,
    pub last_qs: Option<(DomainId, QsCall)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NetOp {
    /// `client` sends a dequeue request from its next expected number, at most `max`.
    SendDequeue {
        client: ClientRef,
    },
    /// The server handles the request in flight at `index`.
    Serve {
        index: usize,
        max: u16,
    },
    /// The response at `index` reaches its client.
    Receive {
        index: usize,
    },
    Drop {
        index: usize,
    },
    Duplicate {
        index: usize,
    },
}

pub fn run(state: &mut State, op: &NetOp) -> Outcome {
    let outcome = run_inner(state, op);
    // In-flight packets are a multiset: keep them in a canonical order.
    state.network.in_flight.sort();
    outcome
}

fn run_inner(state: &mut State, op: &NetOp) -> Outcome {
    match op {
        NetOp::SendDequeue { client } => {
            let Some(c) = state.clients.get(client) else {
                return Err(ErrorCode::UnknownClient);
            };
            let start = c.next_seq;
            state.network.in_flight.push(Packet::Dequeue {
                client: *client,
                start,
            });
            Ok(Reply::Empty)
        }
        NetOp::Serve { index, max } => {
            let Some(Packet::Dequeue { client, start }) =
                state.network.in_flight.get(*index).cloned()
            else {
                return Err(ErrorCode::NotFound);
            };
            state.network.in_flight.remove(*index);
            let Some(c) = state.clients.get(&client).cloned() else {
                return Err(ErrorCode::UnknownClient);
            };
            let reply = call_server(
                state,
                c.fid.domain,
                &Call::Qs(QsCall::Dequeue {
                    signer: QsSigner::Client {
                        id: c.qs_id,
                        key: c.qs_key,
                    },
                    fresh: true,
                    start,
                    max: *max,
                }),
            )?;
            if let Reply::Dequeued { messages, .. } = reply {
                state
                    .network
                    .in_flight
                    .push(Packet::Dequeued { client, messages });
            }
            Ok(Reply::Empty)
        }
        NetOp::Receive { index } => {
            let Some(Packet::Dequeued { client, messages }) =
                state.network.in_flight.get(*index).cloned()
            else {
                return Err(ErrorCode::NotFound);
            };
            state.network.in_flight.remove(*index);
            client::receive(state, client, &messages);
            Ok(Reply::Empty)
        }
        NetOp::Drop { index } => {
            if *index < state.network.in_flight.len() {
                state.network.in_flight.remove(*index);
            }
            Ok(Reply::Empty)
        }
        NetOp::Duplicate { index } => {
            if let Some(p) = state.network.in_flight.get(*index).cloned() {
                state.network.in_flight.push(p);
            }
            Ok(Reply::Empty)
        }
    }
}
