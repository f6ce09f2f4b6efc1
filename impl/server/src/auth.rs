//! Request envelopes and authentication: decoding the envelope, checking the protocol
//! version, verifying signatures over the exact payload bytes received, and checking that
//! signed payloads are fresh. Who may call what is decided by each operation; this module
//! only proves who is calling.

use zeroize::Zeroize;

use phoenix_types::PROTOCOL_VERSION;
use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::{Auth, MAX_CLOCK_SKEW, RequestEnvelope, operation_label};

use crate::server::Server;
use crate::store::{AsClientRecord, AsStore, QsClientRecord, QsStore};

/// A decoded request: which operation, the exact payload bytes, and the claimed sender.
#[derive(Debug)]
pub struct Request {
    pub service: &'static str,
    pub operation: &'static str,
    pub payload: Vec<u8>,
    pub auth: Auth,
}

// Requirement: DS-EAR-1
/// The exact payload bytes hold secrets the request passes through (a DS request's EAR
/// key): they are zeroized when the request is dropped, on every path.
impl Drop for Request {
    fn drop(&mut self) {
        self.payload.zeroize();
    }
}

impl Request {
    // Requirement: WIRE-1, WIRE-3
    /// Decode an envelope received for `service/operation`.
    pub fn decode(
        service: &'static str,
        operation: &'static str,
        body: &[u8],
        max_len: usize,
    ) -> Result<Self, WireError> {
        let envelope: RequestEnvelope = codec::decode(body, max_len)?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                    envelope.version
                ),
            ));
        }
        Ok(Self {
            service,
            operation,
            // Moved, not copied: the payload of a DS request holds the group's EAR key,
            // and this is the one copy, zeroized when the request is dropped.
            payload: envelope.payload.into(),
            auth: envelope.auth,
        })
    }

    pub fn label(&self) -> String {
        operation_label(self.service, self.operation)
    }

    /// Decode the payload as the operation's request type.
    pub fn payload<T: tls_codec::Deserialize>(&self) -> Result<T, WireError> {
        codec::decode(&self.payload, usize::MAX)
    }

    // Requirement: AUTH-ANON-1
    /// Operations without authentication still refuse a claimed identity they would not
    /// check: no silent fallbacks.
    pub fn require_anonymous(&self) -> Result<(), WireError> {
        match self.auth {
            Auth::None => Ok(()),
            _ => Err(WireError::new(
                ErrorCode::Malformed,
                "this operation takes no authentication",
            )),
        }
    }

    // Requirement: AUTH-SIG-1
    fn verify_signature(&self, public_key: &[u8], signature: &[u8]) -> Result<(), WireError> {
        crypto::verify(public_key, &self.label(), &self.payload, signature).map_err(|_| {
            WireError::new(
                ErrorCode::BadSignature,
                "the request signature does not verify",
            )
        })
    }

    // Requirement: AS-AUTH-1
    /// Authenticate a registered client of this AS by the key of its current ID-Cert.
    pub async fn as_client(&self, server: &Server, now: u64) -> Result<AsClientRecord, WireError> {
        let Auth::AsClient(auth) = &self.auth else {
            return Err(WireError::new(
                ErrorCode::Unauthenticated,
                "this operation needs a client signature",
            ));
        };
        let fid = Fid::parse(&auth.fid)
            .map_err(|e| WireError::new(ErrorCode::InvalidFid, e.to_string()))?;
        let client_id = ClientId::parse(&auth.client_id)
            .map_err(|e| WireError::new(ErrorCode::Malformed, e.to_string()))?;
        let record = AsStore::client(&server.store, &fid.to_string(), client_id.as_str())
            .await
            .map_err(server.internal())?
            .ok_or_else(|| {
                WireError::new(ErrorCode::UnknownClient, "no such client on this server")
            })?;
        self.verify_signature(&record.public_key, auth.signature.as_slice())?;
        // Requirement: ADV-OP-1
        observe!([
            Observed::Fid(record.fid.clone()),
            Observed::AsClientId(record.client_id.clone()),
            Observed::certificate(&record.certificate),
            Observed::CertificateSerial(record.serial.clone()),
        ]);
        if now < record.not_before || now > record.not_after {
            return Err(WireError::new(
                ErrorCode::InvalidCertificate,
                "the client's certificate is not valid now",
            ));
        }
        Ok(record)
    }

    // Requirement: QS-AUTH-1
    /// Authenticate a QS client record by its auth key.
    pub async fn qs_client(&self, server: &Server) -> Result<QsClientRecord, WireError> {
        let Auth::QsClient(auth) = &self.auth else {
            return Err(WireError::new(
                ErrorCode::Unauthenticated,
                "this operation needs a QS client signature",
            ));
        };
        let record = QsStore::client(&server.store, &auth.id)
            .await
            .map_err(server.internal())?
            .ok_or_else(|| WireError::new(ErrorCode::UnknownClient, "no such QS client record"))?;
        self.verify_signature(&record.auth_key, auth.signature.as_slice())?;
        // Requirement: ADV-OP-1
        observe!([
            Observed::QsClientId(record.client_id),
            Observed::QsUserId(record.user_id),
            Observed::QsAuthKey(record.auth_key),
        ]);
        Ok(record)
    }
}

// Requirement: AUTH-FRESH-1
/// Check a signed payload's timestamp against the server clock.
pub fn check_fresh(timestamp: u64, now: u64) -> Result<(), WireError> {
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(WireError::new(
            ErrorCode::StaleRequest,
            format!("request timestamp is more than {MAX_CLOCK_SKEW} s away from the server clock"),
        ));
    }
    Ok(())
}
