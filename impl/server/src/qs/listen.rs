//! `qs/listen`: the live stream of a client's queue, over a WebSocket (the frames are in
//! `phoenix_types::messages::qs`). The server sends a fresh challenge; the client answers
//! with a [`ListenInit`] signed by its QS client key over the challenge; from then on the
//! server sends the queued messages from the client's start on, at most
//! [`LISTEN_WINDOW`] unacknowledged, then [`ListenFrame::Empty`] when the client has
//! everything, and each new message as soon as the transaction that enqueued it committed
//! (a [`crate::qs::wakeup`] after the commit). An acknowledgement (`up_to`) deletes the
//! messages below it, as `dequeue` does. A reconnect resumes from the start the client
//! gives: nothing acknowledged is sent again, nothing unacknowledged is lost.
//!
//! Bounded: the init must arrive within [`INIT_TIMEOUT`], a client frame is at most
//! [`MAX_LISTEN_CLIENT_FRAME`] bytes, a window is at most [`LISTEN_WINDOW`] messages (a slow
//! client holds the server back, it does not make it buffer), and the queue is checked
//! again every [`RECHECK`] (which also keeps an idle connection alive: an `Empty` frame is
//! sent again).
//!
//! The WebSocket itself (warp) stays in `http.rs`: this module sees a stream of
//! [`Inbound`] frames and a sink of encoded frames.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand_core::{OsRng, RngCore};
use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{
    LISTEN_LABEL, LISTEN_WINDOW, ListenAck, ListenChallenge, ListenFrame, ListenInit,
    ListenInitTbs, MAX_LISTEN_CLIENT_FRAME,
};

use crate::server::Server;
use crate::store::{QsClientRecord, QsStore};

/// Time for the client's init after the challenge.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the queue is read again without a wake-up (and `Empty` sent again).
pub const RECHECK: Duration = Duration::from_secs(25);

/// One frame from the client, as the transport delivered it.
#[derive(Debug)]
pub enum Inbound {
    /// A binary frame.
    Frame(Vec<u8>),
    /// A control frame (ping, pong) or anything else the transport handles itself.
    Ignored,
    /// A frame this protocol does not use (text).
    Invalid,
    /// The client closed the stream, or it broke.
    Closed,
}

// Requirement: QS-LISTEN-1
/// Authenticate a listen init against the challenge `nonce`: the client record exists and
/// its auth key signed the init (for this QS, this challenge, this start).
pub async fn authenticate(
    server: &Server,
    init: &ListenInit,
    nonce: &[u8; 32],
) -> Result<QsClientRecord, WireError> {
    if !crypto::ct_eq(&init.nonce, nonce) {
        return Err(WireError::new(
            ErrorCode::BadSignature,
            "the init does not answer this connection's challenge",
        ));
    }
    let record = QsStore::client(&server.store, &init.client_id)
        .await
        .map_err(server.internal())?
        .ok_or_else(|| WireError::new(ErrorCode::UnknownClient, "no such QS client record"))?;
    let tbs = codec::encode(&ListenInitTbs {
        qs_domain: VLBytes::new(server.domain.as_str().as_bytes().to_vec()),
        client_id: init.client_id,
        sequence_number_start: init.sequence_number_start,
        nonce: *nonce,
    })?;
    crypto::verify(
        &record.auth_key,
        LISTEN_LABEL,
        &tbs,
        init.signature.as_slice(),
    )
    .map_err(|_| {
        WireError::new(
            ErrorCode::BadSignature,
            "the listen signature does not verify",
        )
    })?;
    Ok(record)
}

/// One frame to the client.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    /// Close the stream (the server shuts down: the client reconnects elsewhere or later).
    Close,
}

/// Why a stream ended (logged at debug).
#[derive(Debug)]
pub enum Ended {
    Closed,
    Refused(WireError),
    Transport(String),
    Storage,
}

// Requirement: QS-LISTEN-1, QS-LISTEN-2, QS-LISTEN-3
/// Run one listen stream until the client closes it or it fails.
pub async fn run<I, O>(server: &Server, mut incoming: I, mut outgoing: O) -> Ended
where
    I: Stream<Item = Inbound> + Unpin,
    O: Sink<Outbound> + Unpin,
    O::Error: std::fmt::Display,
{
    macro_rules! send {
        ($frame:expr) => {
            match codec::encode(&$frame) {
                Ok(bytes) => {
                    if let Err(e) = outgoing.send(Outbound::Frame(bytes)).await {
                        return Ended::Transport(e.to_string());
                    }
                }
                Err(e) => return Ended::Refused(e),
            }
        };
    }
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    send!(ListenChallenge { nonce });
    let init = match tokio::time::timeout(INIT_TIMEOUT, next_frame(&mut incoming)).await {
        Err(_) => {
            let e = WireError::new(ErrorCode::RequestTimeout, "no listen init in time");
            send!(refused(&e));
            return Ended::Refused(e);
        }
        Ok(None) => return Ended::Closed,
        Ok(Some(Err(e))) => {
            send!(refused(&e));
            return Ended::Refused(e);
        }
        Ok(Some(Ok(bytes))) => match codec::decode::<ListenInit>(&bytes, MAX_LISTEN_CLIENT_FRAME) {
            Ok(init) => init,
            Err(e) => {
                send!(refused(&e));
                return Ended::Refused(e);
            }
        },
    };
    let client = match authenticate(server, &init, &nonce).await {
        Ok(record) => record,
        Err(e) => {
            send!(refused(&e));
            return Ended::Refused(e);
        }
    };
    // Subscribed before the first read: a message committed between the read and the
    // wait leaves a permit, so it is not missed.
    let wakeup = server.queue_wakeup.subscribe(client.client_id);
    // Everything below `acked` is processed; everything below `sent` was sent.
    let mut acked = init.sequence_number_start;
    let mut sent = acked;
    let mut empty_sent = false;
    let mut read = true;
    loop {
        if read {
            read = false;
            let Ok((messages, remaining)) = QsStore::dequeue(
                &server.store,
                &client.client_id,
                acked,
                u32::from(LISTEN_WINDOW),
            )
            .await
            .inspect_err(|e| tracing::error!(error = %e, "listen: storage failure")) else {
                return Ended::Storage;
            };
            let mut new = false;
            let from = sent;
            for message in messages.into_iter().filter(|m| m.sequence_number >= from) {
                sent = message.sequence_number.saturating_add(1);
                new = true;
                send!(ListenFrame::Message(message));
            }
            if new {
                empty_sent = false;
            }
            // Nothing beyond what was sent: the client has everything (once acknowledged).
            if remaining == 0 && !empty_sent {
                send!(ListenFrame::Empty { next: sent });
                empty_sent = true;
            }
        }
        tokio::select! {
            () = wakeup.notified() => read = true,
            frame = next_frame(&mut incoming) => match frame {
                None => return Ended::Closed,
                Some(Err(e)) => {
                    send!(refused(&e));
                    return Ended::Refused(e);
                }
                Some(Ok(bytes)) => match codec::decode::<ListenAck>(&bytes, MAX_LISTEN_CLIENT_FRAME) {
                    Ok(ack) if ack.up_to > sent => {
                        let e = WireError::new(
                            ErrorCode::Malformed,
                            format!("acknowledged up to {}, but only up to {sent} was sent", ack.up_to),
                        );
                        send!(refused(&e));
                        return Ended::Refused(e);
                    }
                    Ok(ack) => {
                        if ack.up_to > acked {
                            acked = ack.up_to;
                            read = true;
                        }
                    }
                    Err(e) => {
                        send!(refused(&e));
                        return Ended::Refused(e);
                    }
                },
            },
            // Requirement: QS-LISTEN-3 (a shutdown closes the stream cleanly; the client
            // reconnects)
            () = server.metrics.ops.stopping() => {
                let _ = outgoing.send(Outbound::Close).await;
                return Ended::Closed;
            }
            () = tokio::time::sleep(RECHECK) => {
                read = true;
                // A heartbeat on an idle stream: the edge's idle timeout counts bytes.
                empty_sent = false;
            }
        }
    }
}

/// The next binary frame; `None` when the stream ended; an error for a frame this
/// protocol does not use.
async fn next_frame<I: Stream<Item = Inbound> + Unpin>(
    incoming: &mut I,
) -> Option<Result<Vec<u8>, WireError>> {
    loop {
        match incoming.next().await? {
            Inbound::Frame(bytes) => return Some(Ok(bytes)),
            Inbound::Ignored => {}
            Inbound::Invalid => {
                return Some(Err(WireError::new(
                    ErrorCode::Malformed,
                    "listen frames are binary",
                )));
            }
            Inbound::Closed => return None,
        }
    }
}

fn refused(e: &WireError) -> ListenFrame {
    ListenFrame::Refused {
        code: VLBytes::new(e.code.as_str().as_bytes().to_vec()),
        detail: VLBytes::new(e.detail.as_bytes().to_vec()),
    }
}
