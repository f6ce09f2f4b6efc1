//! Idle live listeners (`qs/listen`, QS-LISTEN-1): the benchmark opens many streams to the
//! server, each authenticated by a user's QS client key over the server's challenge, reads
//! each until the server says the queue is drained (`Empty`), and keeps them open and idle
//! while it reads the server's resident memory. The figure is the RSS growth per stream
//! (design.md: at most 5 KiB per idle listener).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tls_codec::VLBytes;
use tokio_tungstenite::tungstenite::Message;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::ids::QsId;
use phoenix_types::messages::qs::{
    LISTEN_LABEL, LISTEN_PATH, ListenAck, ListenChallenge, ListenFrame, ListenInit, ListenInitTbs,
};

/// How long one stream may take to authenticate and drain.
const WAIT: Duration = Duration::from_secs(30);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Whose queue a stream listens to: the QS client id and key, and where to start.
pub struct Listener {
    pub client_id: QsId,
    pub key: ed25519_dalek::SigningKey,
    pub start: u64,
}

/// Open one authenticated stream on `url` (`http://...`) for `domain`, acknowledge what it
/// sends until `Empty`, and return it open.
pub async fn open(url: &str, domain: &str, listener: &Listener) -> Result<Ws, String> {
    let ws_url = format!(
        "{}{LISTEN_PATH}",
        url.trim_end_matches('/').replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url.as_str()))
        .await
        .map_err(|_| format!("{ws_url}: no answer within {WAIT:?}"))?
        .map_err(|e| format!("cannot open {ws_url}: {e}"))?;
    let challenge: ListenChallenge = codec::decode(&next(&mut ws).await?, 1024)
        .map_err(|e| format!("listen challenge: {}", e.detail))?;
    let tbs = codec::encode(&ListenInitTbs {
        qs_domain: VLBytes::new(domain.as_bytes().to_vec()),
        client_id: listener.client_id,
        sequence_number_start: listener.start,
        nonce: challenge.nonce,
    })
    .map_err(|e| e.detail)?;
    let init = codec::encode(&ListenInit {
        client_id: listener.client_id,
        sequence_number_start: listener.start,
        nonce: challenge.nonce,
        signature: VLBytes::new(crypto::sign(&listener.key, LISTEN_LABEL, &tbs).to_vec()),
    })
    .map_err(|e| e.detail)?;
    ws.send(Message::binary(init))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let frame: ListenFrame = codec::decode(&next(&mut ws).await?, 8 << 20)
            .map_err(|e| format!("listen frame: {}", e.detail))?;
        match frame {
            ListenFrame::Empty { .. } => return Ok(ws),
            ListenFrame::Message(m) => {
                let ack = codec::encode(&ListenAck {
                    up_to: m.sequence_number.saturating_add(1),
                })
                .map_err(|e| e.detail)?;
                ws.send(Message::binary(ack))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ListenFrame::Refused { code, detail } => {
                return Err(format!(
                    "listen refused: {} {}",
                    String::from_utf8_lossy(code.as_slice()),
                    String::from_utf8_lossy(detail.as_slice())
                ));
            }
        }
    }
}

async fn next(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| format!("no frame within {WAIT:?}"))?
        {
            None | Some(Ok(Message::Close(_))) => return Err("the stream closed".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(_)) => {}
        }
    }
}
