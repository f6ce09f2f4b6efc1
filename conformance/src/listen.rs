//! The conformance harness's client of `qs/listen`: open a stream, answer the challenge,
//! read the first window (up to the listen window's size of messages) and whether the
//! server marks it as everything (`Empty`), then close. `ws://` or `wss://` (the public
//! web roots plus the client's `--ca-cert` roots) after the target's scheme.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tls_codec::VLBytes;
use tokio_tungstenite::tungstenite::Message;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;
use phoenix_types::messages::qs::{
    LISTEN_LABEL, LISTEN_PATH, LISTEN_WINDOW, ListenChallenge, ListenFrame, ListenInit,
    ListenInitTbs,
};

/// How long the harness waits for a frame the server must send at once.
const FRAME_WAIT: Duration = Duration::from_secs(10);
/// How long it waits for an `Empty` after a full window (none comes when more remain).
const EMPTY_WAIT: Duration = Duration::from_millis(300);

/// The first window of a stream at `start`: `Ok(Ok((messages, drained)))`, or
/// `Ok(Err(code))` when the server refused the init; `Err` for a harness or transport
/// failure.
pub async fn first_window(
    server: &str,
    domain: &str,
    client_id: QsId,
    key: &ed25519_dalek::SigningKey,
    start: u64,
) -> Result<Result<(Vec<QueueMessage>, bool), String>, String> {
    let base = server.trim_end_matches('/');
    let url = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}{LISTEN_PATH}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}{LISTEN_PATH}")
    } else {
        return Err(format!("target URL {base:?} is neither http nor https"));
    };
    let connector = tokio_tungstenite::Connector::Rustls(
        phoenix_client::api::websocket_tls().map_err(|e| e.to_string())?,
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, Some(connector))
            .await
            .map_err(|e| format!("cannot open {url}: {e}"))?;
    let challenge: ListenChallenge = match next(&mut ws, FRAME_WAIT).await? {
        Some(bytes) => codec::decode(&bytes, 1024).map_err(|e| e.to_string())?,
        None => return Err("the stream closed before its challenge".into()),
    };
    let tbs = codec::encode(&ListenInitTbs {
        qs_domain: VLBytes::new(domain.as_bytes().to_vec()),
        client_id,
        sequence_number_start: start,
        nonce: challenge.nonce,
    })
    .map_err(|e| e.to_string())?;
    let init = codec::encode(&ListenInit {
        client_id,
        sequence_number_start: start,
        nonce: challenge.nonce,
        signature: VLBytes::new(crypto::sign(key, LISTEN_LABEL, &tbs).to_vec()),
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::binary(init))
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    let drained = loop {
        let wait = if messages.len() >= usize::from(LISTEN_WINDOW) {
            EMPTY_WAIT
        } else {
            FRAME_WAIT
        };
        let bytes = match next(&mut ws, wait).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err("the stream closed in its first window".into()),
            // A full window and no `Empty`: more remain.
            Err(_) if messages.len() >= usize::from(LISTEN_WINDOW) => break false,
            Err(e) => return Err(e),
        };
        match codec::decode::<ListenFrame>(&bytes, 8 << 20).map_err(|e| e.to_string())? {
            ListenFrame::Message(m) => messages.push(m),
            ListenFrame::Empty { .. } => break true,
            ListenFrame::Refused { code, .. } => {
                let _ = ws.close(None).await;
                return Ok(Err(String::from_utf8_lossy(code.as_slice()).into_owned()));
            }
        }
    };
    let _ = ws.close(None).await;
    Ok(Ok((messages, drained)))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next binary frame within `wait`; `None` when the stream closed.
async fn next(ws: &mut Ws, wait: Duration) -> Result<Option<Vec<u8>>, String> {
    loop {
        let frame = tokio::time::timeout(wait, ws.next())
            .await
            .map_err(|_| format!("no frame within {wait:?}"))?;
        match frame {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Binary(bytes))) => return Ok(Some(bytes.to_vec())),
            Some(Ok(_)) => {}
        }
    }
}
