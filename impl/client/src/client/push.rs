//! Push notifications (QS-PUSH-1): this client's Web Push endpoint at its QS.
//!
//! `phoenix push set URL` generates the subscription's P-256 key and auth secret (RFC 8291)
//! here, registers URL with them, and keeps the private key so that `phoenix push decrypt`
//! can open what the push service delivers; `--p256dh` and `--auth` register keys another
//! program holds instead (a browser's `PushSubscription`, a UnifiedPush app). A
//! notification carries no content: it says only that the queue has something, and
//! `phoenix sync` (or `listen`) fetches it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use tls_codec::VLBytes;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;

use phoenix_types::messages::Empty;
use phoenix_types::messages::qs::{
    self, MAX_PUSH_URL_LEN, PUSH_P256DH_LEN, PushEndpoint, SetPushEndpointRequest,
};

use super::{Client, now};
use crate::api::Signer;
use crate::error::{ClientError, usage};
use crate::store::PushSubscription;

/// What `phoenix push set` and `phoenix push show` print.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PushStatus {
    pub url: String,
    /// The subscription's public key, base64url (as a `PushSubscription`'s `p256dh`).
    pub p256dh: String,
    /// The auth secret, base64url.
    pub auth: String,
    /// Whether this client holds the private key (`phoenix push decrypt` works).
    pub decrypts_here: bool,
}

impl PushStatus {
    fn of(s: &PushSubscription) -> Self {
        Self {
            url: s.url.clone(),
            p256dh: URL_SAFE_NO_PAD.encode(&s.p256dh),
            auth: URL_SAFE_NO_PAD.encode(s.auth),
            decrypts_here: s.private_key.is_some(),
        }
    }
}

/// Decode base64url (padded or not) or standard base64, as subscriptions are written.
fn base64_any(what: &str, text: &str) -> Result<Vec<u8>, ClientError> {
    let trimmed = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| usage(format!("{what} is not base64: {text:?}")))
}

impl Client {
    // Requirement: QS-PUSH-1
    /// Set this client's push endpoint. `keys`: the subscription's `p256dh` and `auth`
    /// (base64url) when another program holds the private key; `None`: generate them here.
    pub async fn set_push(
        &mut self,
        url: &str,
        keys: Option<(&str, &str)>,
    ) -> Result<PushStatus, ClientError> {
        if url.len() > MAX_PUSH_URL_LEN {
            return Err(usage(format!(
                "the push URL is longer than {MAX_PUSH_URL_LEN} bytes"
            )));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(usage(format!(
                "the push endpoint must be an https:// URL, got {url:?}"
            )));
        }
        let subscription = match keys {
            Some((p256dh, auth)) => {
                let p256dh = base64_any("--p256dh", p256dh)?;
                if p256dh.len() != PUSH_P256DH_LEN
                    || p256::PublicKey::from_sec1_bytes(&p256dh).is_err()
                {
                    return Err(usage(
                        "--p256dh is not an uncompressed P-256 public key (65 bytes)",
                    ));
                }
                let auth: [u8; 16] = base64_any("--auth", auth)?
                    .try_into()
                    .map_err(|_| usage("--auth is not 16 bytes"))?;
                PushSubscription {
                    url: url.to_owned(),
                    p256dh,
                    auth,
                    private_key: None,
                }
            }
            None => {
                let secret = p256::SecretKey::random(&mut rand_core::OsRng);
                let mut auth = [0u8; 16];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
                PushSubscription {
                    url: url.to_owned(),
                    p256dh: secret
                        .public_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec(),
                    auth,
                    private_key: Some(secret.to_bytes().to_vec()),
                }
            }
        };
        self.send_push_endpoint(Some(PushEndpoint {
            url: VLBytes::new(subscription.url.as_bytes().to_vec()),
            p256dh: VLBytes::new(subscription.p256dh.clone()),
            auth: subscription.auth,
        }))
        .await?;
        // Stored once the QS accepted it: what `show` prints is what the QS has.
        self.store.set_push(Some(&subscription)).await?;
        Ok(PushStatus::of(&subscription))
    }

    /// Clear this client's push endpoint (the QS forgets it; no more notifications).
    pub async fn clear_push(&mut self) -> Result<(), ClientError> {
        self.send_push_endpoint(None).await?;
        self.store.set_push(None).await
    }

    /// The endpoint this client set, if any.
    pub async fn push_status(&self) -> Result<Option<PushStatus>, ClientError> {
        Ok(self.store.push().await?.as_ref().map(PushStatus::of))
    }

    // Requirement: QS-PUSH-2
    /// Open a notification the push service delivered (its body, `aes128gcm`), with the
    /// key `set_push` generated; returns its plaintext (empty from a Phoenix QS).
    pub async fn decrypt_push(&self, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let subscription = self
            .store
            .push()
            .await?
            .ok_or_else(|| usage("no push endpoint is set: run `phoenix push set URL`"))?;
        let private = subscription.private_key.ok_or_else(|| {
            usage("this client does not hold the push key (it was set with --p256dh)")
        })?;
        let secret = p256::SecretKey::from_slice(&private)
            .map_err(|_| ClientError::Store("the stored push key is corrupt".into()))?;
        web_push_native::decrypt(
            body.to_vec(),
            &secret,
            &web_push_native::Auth::clone_from_slice(&subscription.auth),
        )
        .map_err(|e| {
            usage(format!(
                "the notification does not decrypt with this client's push key: {e}"
            ))
        })
    }

    async fn send_push_endpoint(&self, endpoint: Option<PushEndpoint>) -> Result<(), ClientError> {
        let id = self.identity().await?;
        let api = Self::api(&id)?;
        let key = SigningKey::from_bytes(&id.qs_client_key);
        let _: Empty = api
            .call(
                "qs",
                qs::SET_PUSH_ENDPOINT,
                &SetPushEndpointRequest {
                    timestamp: now(),
                    endpoint,
                },
                Signer::QsClient {
                    id: id.qs_client_id,
                    key: &key,
                },
            )
            .await?;
        Ok(())
    }
}
