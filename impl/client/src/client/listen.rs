//! `phoenix listen`: the live stream of this client's QS queue (`qs/listen`, a WebSocket;
//! frames in `phoenix_types::messages::qs`). Each message is processed as `sync` processes
//! it ([`Client::process_queue_message`]: MLS state and the next sequence number saved
//! first), and only then acknowledged; a message the server sends again after a reconnect
//! (below the saved sequence number) is acknowledged without processing it twice.
//!
//! Connection requests wait in the AS direct queue, which has no stream: they are looked
//! up when the stream says the QS queue is drained (at least every 25 s while idle).

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tls_codec::VLBytes;
use tokio_tungstenite::tungstenite::Message;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::messages::qs::{
    LISTEN_LABEL, LISTEN_PATH, ListenAck, ListenChallenge, ListenFrame, ListenInit, ListenInitTbs,
};

use super::{Client, QueueProgress};
use crate::error::ClientError;

/// Largest frame read from the server (a queue message is at most a few MiB).
const MAX_FRAME: usize = 8 * 1024 * 1024;

/// How a listen session ended.
#[derive(Debug)]
pub enum ListenEnd {
    /// The server closed the stream (it restarts, say): connect again.
    Closed,
    /// `stop` said so (between two messages, never within one).
    Stopped,
}

impl Client {
    // Requirement: QS-LISTEN-1, QS-LISTEN-3, CLI-LISTEN-1
    /// One listen session: catch up with `sync`, connect to the QS's stream, then hand each
    /// batch of events to `on_events` as messages arrive, until the stream ends (an error
    /// when it could not be opened or failed; `Ok` when the server closed it).
    pub async fn listen_once(
        &mut self,
        on_events: &mut (dyn FnMut(Vec<serde_json::Value>) + Send),
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<ListenEnd, ClientError> {
        self.listen_and_send(on_events, stop, None).await
    }

    // Requirement: CLI-CHAT-1
    /// [`Client::listen_once`], and meanwhile send each line of `lines` to the group
    /// `chat.0` (between two received messages, never within one); a `sent` event (with
    /// the text) or an `error` event for each. The end of `lines` ends the session
    /// ([`ListenEnd::Stopped`]).
    pub async fn listen_and_send(
        &mut self,
        on_events: &mut (dyn FnMut(Vec<serde_json::Value>) + Send),
        stop: &mut tokio::sync::watch::Receiver<bool>,
        mut chat: Option<(&str, &mut tokio::sync::mpsc::Receiver<String>)>,
    ) -> Result<ListenEnd, ClientError> {
        let caught_up = self.sync().await?;
        if !caught_up.is_empty() {
            on_events(caught_up);
        }
        let id = self.identity().await?;
        let url = websocket_url(&id.server_url)?;
        let connector = tokio_tungstenite::Connector::Rustls(crate::api::websocket_tls()?);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true,
            Some(connector),
        )
        .await
        .map_err(|e| {
            ClientError::NotSent(format!("{url}: {}", crate::api::cause_in_words(&e, false)))
        })?;

        let challenge: ListenChallenge = match next_frame(&mut socket).await? {
            Some(bytes) => codec::decode(&bytes, MAX_FRAME).map_err(ClientError::Server)?,
            None => return Ok(ListenEnd::Closed),
        };
        let start = self
            .store
            .identity()
            .await?
            .map(|i| i.qs_next_seq)
            .unwrap_or(id.qs_next_seq);
        let key = SigningKey::from_bytes(&id.qs_client_key);
        let tbs = codec::encode(&ListenInitTbs {
            qs_domain: VLBytes::new(id.qs_domain.as_bytes().to_vec()),
            client_id: id.qs_client_id,
            sequence_number_start: start,
            nonce: challenge.nonce,
        })
        .map_err(ClientError::Server)?;
        let init = ListenInit {
            client_id: id.qs_client_id,
            sequence_number_start: start,
            nonce: challenge.nonce,
            signature: VLBytes::new(crypto::sign(&key, LISTEN_LABEL, &tbs).to_vec()),
        };
        send(
            &mut socket,
            &codec::encode(&init).map_err(ClientError::Server)?,
        )
        .await?;

        let mut known: BTreeSet<String> = self
            .store
            .requests()
            .await?
            .into_iter()
            .map(|r| r.fid)
            .collect();
        let mut announced = false;
        loop {
            let bytes = tokio::select! {
                frame = next_frame(&mut socket) => match frame? {
                    Some(bytes) => bytes,
                    None => return Ok(ListenEnd::Closed),
                },
                _ = stop.changed() => {
                    let _ = socket.close(None).await;
                    return Ok(ListenEnd::Stopped);
                }
                line = next_line(&mut chat) => {
                    let Some(line) = line else {
                        let _ = socket.close(None).await;
                        return Ok(ListenEnd::Stopped);
                    };
                    let Some((group, _)) = &chat else { continue };
                    let group = (*group).to_owned();
                    let event = match self.send(&group, &line).await {
                        Ok(()) => json!({"kind": "sent", "group": group, "text": line}),
                        Err(e) => json!({"kind": "error", "group": group,
                            "detail": format!("not sent: {e}")}),
                    };
                    on_events(vec![event]);
                    continue;
                }
            };
            let frame: ListenFrame =
                codec::decode(&bytes, MAX_FRAME).map_err(ClientError::Server)?;
            match frame {
                ListenFrame::Message(message) => {
                    let next = self
                        .store
                        .identity()
                        .await?
                        .map(|i| i.qs_next_seq)
                        .unwrap_or(0);
                    let mut progress = QueueProgress::default();
                    if message.sequence_number >= next {
                        self.process_queue_message(&id, &message, &mut progress)
                            .await?;
                        self.after_queue(&id, &mut progress).await;
                    }
                    // Saved first, then acknowledged.
                    let ack = ListenAck {
                        up_to: message.sequence_number.saturating_add(1).max(next),
                    };
                    send(
                        &mut socket,
                        &codec::encode(&ack).map_err(ClientError::Server)?,
                    )
                    .await?;
                    if !progress.events.is_empty() {
                        on_events(progress.events);
                    }
                }
                ListenFrame::Empty { .. } => {
                    let mut events = Vec::new();
                    if !announced {
                        announced = true;
                        events.push(json!({"kind": "listening", "server": id.server_url}));
                    }
                    match self.requests().await {
                        Ok(all) => {
                            for request in all.iter().filter(|r| !known.contains(&r.fid)) {
                                let warning = self.request_warning(request).await?;
                                events.push(json!({"kind": "connection_request",
                                    "fid": request.fid, "warning": warning}));
                            }
                            known = all.into_iter().map(|r| r.fid).collect();
                        }
                        Err(e) => events.push(json!({"kind": "error",
                            "detail": format!("could not fetch connection requests: {e}")})),
                    }
                    if !events.is_empty() {
                        on_events(events);
                    }
                }
                ListenFrame::Refused { code, detail } => {
                    use phoenix_types::error::{ErrorCode, WireError};
                    let code = ErrorCode::parse(&String::from_utf8_lossy(code.as_slice()))
                        .unwrap_or(ErrorCode::Internal);
                    let detail = String::from_utf8_lossy(detail.as_slice()).into_owned();
                    return Err(ClientError::Server(WireError::new(code, detail)));
                }
            }
        }
    }
}

/// The next line to send in chat mode; never completes without one (`None`: the lines
/// ended).
async fn next_line(
    chat: &mut Option<(&str, &mut tokio::sync::mpsc::Receiver<String>)>,
) -> Option<String> {
    match chat {
        Some((_, lines)) => lines.recv().await,
        None => std::future::pending().await,
    }
}

/// `ws://` or `wss://` of the server's listen path.
fn websocket_url(server_url: &str) -> Result<String, ClientError> {
    let base = server_url.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}{LISTEN_PATH}"))
    } else if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}{LISTEN_PATH}"))
    } else {
        Err(ClientError::Usage(format!(
            "server URL {base:?} must start with http:// or https://"
        )))
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next binary frame, or `None` when the server closed the stream.
async fn next_frame(socket: &mut Socket) -> Result<Option<Vec<u8>>, ClientError> {
    loop {
        match socket.next().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(ClientError::Transport(format!(
                    "the listen stream broke: {e}"
                )));
            }
            Some(Ok(Message::Binary(bytes))) => return Ok(Some(bytes.to_vec())),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

async fn send(socket: &mut Socket, bytes: &[u8]) -> Result<(), ClientError> {
    socket
        .send(Message::binary(bytes.to_vec()))
        .await
        .map_err(|e| ClientError::Transport(format!("the listen stream broke: {e}")))
}
