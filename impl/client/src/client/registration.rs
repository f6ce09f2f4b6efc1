//! Registration that survives a lost answer (CL-AMBIG-2).
//!
//! `phoenix register` sends two unauthenticated requests that create state on the server:
//! `as/register` (the CSR; the AS creates the user and issues its first certificate) and
//! `qs/create_user` (the pseudonymous QS user and client). If the answer to either is
//! lost after the server committed, a client that generated new keys and tried again
//! would get `USER_EXISTS` (or `DUPLICATE_FRIENDSHIP_TOKEN`) for good: the FID would be
//! taken by keys nobody holds. So:
//!
//! 1. Before anything is sent, every key, id and the exact bytes of both requests are
//!    saved (`pending_registration`).
//! 2. Each request is sent, and on a transport failure or a 5xx sent again, byte for
//!    byte ([`crate::api::Api::post_retrying`]). The server answers a copy of a
//!    registration that took effect with its result (AS: the certificate of the client
//!    with this client id and key; QS: the ids of the user with this token and these auth
//!    keys); any other CSR for a registered FID still gets `USER_EXISTS`.
//! 3. Each answer is saved as it arrives; the identity is stored when both are in; the
//!    pending record is deleted once the connection and key packages are published.
//! 4. If the server stays silent, the command fails and says so; running the same
//!    `phoenix register` again on this home resumes from what was saved.

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use serde::{Deserialize as SerdeDeserialize, Serialize as SerdeSerialize};
use tls_codec::VLBytes;

use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::{Empty, as_, qs};

use super::{Client, Registration, now, random32};
use crate::api::{Api, Signer, decode_answer, seal};
use crate::error::{ClientError, usage, verification};
use crate::store::Identity;

/// A registration in progress, as saved before its first request is sent.
#[derive(Debug, Clone, SerdeSerialize, SerdeDeserialize)]
struct Pending {
    fid: String,
    server_url: String,
    client_id: String,
    signing_key: Vec<u8>,
    /// The exact `as/register` request.
    register_request: Vec<u8>,
    qs_user_key: Vec<u8>,
    qs_client_key: Vec<u8>,
    friendship_token: Vec<u8>,
    friendship_key: Vec<u8>,
    /// The private HPKE key of the queue and the chain's first secret (QS-ENC-1); empty in
    /// a registration saved before queue encryption.
    #[serde(default)]
    queue_private_key: Vec<u8>,
    #[serde(default)]
    queue_ratchet: Vec<u8>,
    /// The exact `qs/create_user` request.
    create_user_request: Vec<u8>,
    /// The AS's answer, once received and checked: (client certificate, CA certificate).
    certificates: Option<(Vec<u8>, Vec<u8>)>,
    /// The QS's answer, once received: (user id, client id, queue config key).
    qs: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// Whether `as/register` may have reached the server (an attempt got no answer after
    /// a connection was made). Until then a failure to connect leaves nothing to finish.
    #[serde(default)]
    maybe_sent: bool,
}

fn arr<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], ClientError> {
    bytes
        .try_into()
        .map_err(|_| ClientError::Store(format!("pending registration: malformed {what}")))
}

impl Pending {
    /// New keys and ids for `fid` at `server_url`, and the two requests, sealed.
    fn new(fid: &Fid, server_url: &str) -> Result<Self, ClientError> {
        let client_id = ClientId::random(&mut OsRng);
        let key = crypto::generate_signing_key(&mut OsRng);
        let csr = certs::create_csr(fid, &client_id, &key)
            .map_err(|e| usage(format!("cannot build CSR: {e}")))?;
        let register_request = seal(
            "as",
            as_::REGISTER,
            &as_::RegisterRequest {
                csr: VLBytes::new(csr),
            },
            Signer::Anonymous,
        )?;
        let user_key = crypto::generate_signing_key(&mut OsRng);
        let client_key = crypto::generate_signing_key(&mut OsRng);
        let friendship_token = random32();
        // Requirement: QS-ENC-1
        let queue_key = crypto::HpkeKeyPair::generate(&mut OsRng)
            .map_err(|e| usage(format!("cannot generate the queue key: {e}")))?;
        let queue_ratchet = random32();
        let create_user_request = seal(
            "qs",
            qs::CREATE_USER,
            &qs::CreateUserRequest {
                user_auth_key: VLBytes::new(user_key.verifying_key().to_bytes().to_vec()),
                friendship_token,
                client_auth_key: VLBytes::new(client_key.verifying_key().to_bytes().to_vec()),
                queue_key: VLBytes::new(queue_key.public.clone()),
                queue_ratchet_secret: queue_ratchet,
            },
            Signer::Anonymous,
        )?;
        Ok(Self {
            fid: fid.to_string(),
            server_url: server_url.to_owned(),
            client_id: client_id.to_string(),
            signing_key: key.to_bytes().to_vec(),
            register_request,
            qs_user_key: user_key.to_bytes().to_vec(),
            qs_client_key: client_key.to_bytes().to_vec(),
            friendship_token: friendship_token.to_vec(),
            friendship_key: random32().to_vec(),
            queue_private_key: queue_key.private.clone(),
            queue_ratchet: queue_ratchet.to_vec(),
            create_user_request,
            certificates: None,
            qs: None,
            maybe_sent: false,
        })
    }
}

impl Client {
    // Requirement: CL-AMBIG-2
    /// Register `fid` with its first client at the server `server_url`, or finish the
    /// registration of `fid` that an earlier run on this home left unfinished.
    pub async fn register(
        &mut self,
        fid: &str,
        server_url: &str,
    ) -> Result<Registration, ClientError> {
        let fid = Fid::parse(fid).map_err(|e| usage(e.to_string()))?;
        let api = Api::new(server_url)?;
        let pending =
            match self.store.pending_registration().await? {
                Some(text) => Some(serde_json::from_str::<Pending>(&text).map_err(|e| {
                    ClientError::Store(format!("malformed pending registration: {e}"))
                })?),
                None => None,
            };
        let identity = self.store.identity().await?;
        match (&pending, &identity) {
            (None, Some(existing)) => {
                return Err(usage(format!(
                    "{} already holds the identity {}; use another --home",
                    self.home.display(),
                    existing.fid
                )));
            }
            (Some(p), _) if p.fid != fid.to_string() || p.server_url != api.base() => {
                return Err(usage(format!(
                    "{} holds an unfinished registration of {} at {}: run `phoenix register \
                     {} --server {}` to finish it",
                    self.home.display(),
                    p.fid,
                    p.server_url,
                    p.fid,
                    p.server_url
                )));
            }
            _ => {}
        }
        let result = self.register_inner(&fid, &api, pending, identity).await;
        let result = self.finish(result).await;
        let kept = self.store.pending_registration().await?.is_some();
        const HINT: &str = "the registration is saved: run the same `phoenix register` again on this home to \
             finish it";
        result.map_err(|e| match e {
            ClientError::Transport(text) => ClientError::Transport(format!("{text}; {HINT}")),
            // Nothing was sent and nothing is kept (see `settle_registration`), unless an
            // earlier request was answered or may have arrived.
            ClientError::NotSent(text) if kept => ClientError::Transport(format!("{text}; {HINT}")),
            ClientError::Server(w) if w.code.as_str() == "INTERNAL" => {
                ClientError::Transport(format!("the server failed ({w}); {HINT}"))
            }
            other => other,
        })
    }

    async fn register_inner(
        &mut self,
        fid: &Fid,
        api: &Api,
        pending: Option<Pending>,
        identity: Option<Identity>,
    ) -> Result<Registration, ClientError> {
        let mut p = match pending {
            Some(p) => p,
            None => {
                let p = Pending::new(fid, api.base())?;
                self.save_pending(&p).await?;
                p
            }
        };
        let identity = match identity {
            Some(identity) => identity,
            None => self.settle_registration(fid, api, &mut p).await?,
        };
        self.publish_connection_packages(&identity).await?;
        self.publish_key_packages(&identity).await?;
        self.store.delete_pending_registration().await?;
        let Some((_, ca)) = &p.certificates else {
            return Err(ClientError::Store(
                "pending registration: the AS's answer is missing".into(),
            ));
        };
        let ca = ParsedCert::parse(ca)
            .map_err(|e| ClientError::Store(format!("stored CA certificate: {e}")))?;
        Ok(Registration {
            fid: identity.fid,
            client_id: identity.client_id,
            server: identity.server_url,
            ca_fingerprint: hex::encode(ca.fingerprint()),
        })
    }

    async fn save_pending(&self, p: &Pending) -> Result<(), ClientError> {
        let text = serde_json::to_string(p)
            .map_err(|e| ClientError::Store(format!("cannot encode the registration: {e}")))?;
        self.store.put_pending_registration(&text).await
    }

    /// Send (again) whichever of the two requests has no saved answer yet, then store the
    /// identity.
    async fn settle_registration(
        &mut self,
        fid: &Fid,
        api: &Api,
        p: &mut Pending,
    ) -> Result<Identity, ClientError> {
        let key = SigningKey::from_bytes(&arr(&p.signing_key, "signing key")?);
        if p.certificates.is_none() {
            let answer = match api
                .post_retrying("as", as_::REGISTER, &p.register_request, None)
                .await
            {
                Ok(answer) => answer,
                // A definite refusal of these very bytes (a copy of a registration that took
                // effect would have been answered with its certificate): nothing was
                // created, and the home is free for another registration.
                Err(e)
                    if matches!(
                        e.code(),
                        Some("USER_EXISTS" | "WRONG_DOMAIN" | "INVALID_CSR" | "INVALID_FID")
                    ) =>
                {
                    self.store.delete_pending_registration().await?;
                    return Err(e);
                }
                // No attempt, in this run or an earlier one, made a connection: the server
                // never saw the request, and the home is free again.
                Err(e @ ClientError::NotSent(_)) if !p.maybe_sent => {
                    self.store.delete_pending_registration().await?;
                    return Err(e);
                }
                Err(e) => {
                    p.maybe_sent = true;
                    self.save_pending(p).await?;
                    return Err(e);
                }
            };
            let resp: as_::RegisterResponse = decode_answer(&answer, as_::REGISTER)?;
            let ca = ParsedCert::parse(resp.ca_certificate.as_slice())
                .map_err(|e| verification(format!("server CA certificate: {e}")))?;
            ca.verify_self_signed_ca(fid.domain())
                .map_err(|e| verification(format!("server CA certificate: {e}")))?;
            let cert = ParsedCert::parse(resp.client_certificate.as_slice())
                .map_err(|e| verification(format!("issued certificate: {e}")))?;
            let subject = cert
                .verify_issued_by(&ca, Some(now()))
                .map_err(|e| verification(format!("issued certificate: {e}")))?;
            if subject.fid != *fid
                || subject.client_id.as_str() != p.client_id
                || cert.public_key != key.verifying_key().to_bytes()
            {
                return Err(verification(
                    "the server issued a certificate for another identity or key",
                ));
            }
            p.certificates = Some((cert.der.clone(), ca.der.clone()));
            self.save_pending(p).await?;
        }
        if p.qs.is_none() {
            let qs_key: qs::QueueConfigKeyResponse = api
                .call("qs", qs::QUEUE_CONFIG_KEY, &Empty {}, Signer::Anonymous)
                .await?;
            let answer = api
                .post_retrying("qs", qs::CREATE_USER, &p.create_user_request, None)
                .await?;
            let created: qs::CreateUserResponse = decode_answer(&answer, qs::CREATE_USER)?;
            p.qs = Some((
                created.user_id.to_vec(),
                created.client_id.to_vec(),
                qs_key.public_key.as_slice().to_vec(),
            ));
            self.save_pending(p).await?;
        }
        let (Some((certificate, ca)), Some((qs_user_id, qs_client_id, queue_config_key))) =
            (&p.certificates, &p.qs)
        else {
            return Err(ClientError::Store(
                "pending registration: an answer is missing".into(),
            ));
        };
        let identity = Identity {
            fid: fid.to_string(),
            client_id: p.client_id.clone(),
            server_url: api.base().to_owned(),
            certificate: certificate.clone(),
            signing_key: key.to_bytes(),
            qs_user_id: arr(qs_user_id, "QS user id")?,
            qs_client_id: arr(qs_client_id, "QS client id")?,
            qs_user_key: arr(&p.qs_user_key, "QS user key")?,
            qs_client_key: arr(&p.qs_client_key, "QS client key")?,
            friendship_token: arr(&p.friendship_token, "friendship token")?,
            friendship_key: arr(&p.friendship_key, "friendship key")?,
            qs_domain: fid.domain().to_string(),
            queue_config_key: queue_config_key.clone(),
            qs_next_seq: 0,
            as_next_seq: 0,
            queue_private_key: (!p.queue_private_key.is_empty())
                .then(|| p.queue_private_key.clone()),
            queue_ratchet: (!p.queue_ratchet.is_empty())
                .then(|| arr(&p.queue_ratchet, "queue ratchet"))
                .transpose()?,
            queue_chain_start: 0,
        };
        self.store.put_ca(fid.domain().as_str(), ca).await?;
        self.store.insert_identity(&identity).await?;
        Ok(identity)
    }
}
