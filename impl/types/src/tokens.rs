//! Anonymous group-creation tokens: RFC 9497 VOPRF (mode `0x01`, Ristretto255-SHA512),
//! in the manner of Privacy Pass (RFC 9576/9578 issuance, batched as the Phoenix spec's
//! `DsGroupCreation` token type).
//!
//! The DS hosts groups only for clients of its own homeserver (spec: "Local clients only"
//! for `RequestGroupId` and `CreateGroup`), but a DS that learnt which client created which
//! group could link a user's groups. Tokens give it the first without the second:
//!
//! 1. The client picks random inputs, blinds them ([`blind`]) and sends the blinded
//!    elements to its AS (`as/issue_group_tokens`, signed with its ID-Cert key). The AS
//!    counts them against the client's daily allowance and evaluates them with the
//!    server's token key ([`TokenKey::issue`]), with a batch DLEQ proof.
//! 2. The client checks the proof against the token key's public key and unblinds
//!    ([`finalize`]): each (input, output) pair is a token. The AS never saw the input or
//!    the output, so it cannot recognise the token later.
//! 3. The client spends a token at its DS (`ds/request_group_id`). The DS (same server,
//!    same key) evaluates the input itself ([`TokenKey::check`]) and compares; it records
//!    the spent input so a token buys one reservation.
//!
//! Key consistency: a server that gave every client its own token key could recognise the
//! client by the key. The client pins the first public key it gets per server and refuses
//! a different one (`phoenix-client`), and every issuance response carries the key, so
//! two clients (or an auditor) can compare what they were given.

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use voprf::{
    BlindedElement, EvaluationElement, Group, Proof, Ristretto255, VoprfClient, VoprfServer,
};

/// Length of a serialized group element (blinded, evaluated, public key).
pub const ELEMENT_LEN: usize = 32;
/// Length of a serialized scalar (the private key).
pub const SCALAR_LEN: usize = 32;
/// Length of a serialized DLEQ proof.
pub const PROOF_LEN: usize = 64;
/// Length of the client's random input.
pub const INPUT_LEN: usize = 32;
/// Length of a token's output (SHA-512).
pub const OUTPUT_LEN: usize = 64;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token element or proof")]
    Malformed,
    #[error("the issuance proof does not verify against the token key")]
    Proof,
    #[error("the number of evaluated elements does not match the request")]
    Count,
}

/// Identifier of a token key: the first bytes of a domain-separated SHA-256 of its public
/// key.
pub fn key_id(public_key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"phoenix group token key id v1")
        .chain_update(public_key)
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.get(..KEY_ID_LEN).unwrap_or(&[0u8; KEY_ID_LEN]));
    id
}

/// The digest under which a spent token is recorded (the DS keeps no input in the clear).
pub fn spent_digest(input: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"phoenix spent group token v1")
        .chain_update(input)
        .finalize()
        .into()
}

/// The server's token key (held by AS and DS of one homeserver).
pub struct TokenKey {
    server: VoprfServer<Ristretto255>,
    public_key: [u8; ELEMENT_LEN],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("public_key", &hex::encode(self.public_key))
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A fresh random key; returns it and its private scalar for storage.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Result<(Self, Vec<u8>), TokenError> {
        let private = Ristretto255::serialize_scalar(Ristretto255::random_scalar(rng)).to_vec();
        let key = Self::from_private(&private)?;
        Ok((key, private))
    }

    /// Load a stored private scalar.
    pub fn from_private(private: &[u8]) -> Result<Self, TokenError> {
        let server = VoprfServer::<Ristretto255>::new_with_key(private)
            .map_err(|_| TokenError::Malformed)?;
        let mut public_key = [0u8; ELEMENT_LEN];
        public_key.copy_from_slice(&Ristretto255::serialize_elem(server.get_public_key()));
        Ok(Self { server, public_key })
    }

    pub fn public_key(&self) -> &[u8; ELEMENT_LEN] {
        &self.public_key
    }

    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(&self.public_key)
    }

    /// Evaluate blinded elements (each [`ELEMENT_LEN`] bytes) with one batch proof.
    /// Returns the evaluated elements and the proof, serialized.
    pub fn issue<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        blinded: &[&[u8]],
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>), TokenError> {
        let elements = blinded
            .iter()
            .map(|b| BlindedElement::<Ristretto255>::deserialize(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TokenError::Malformed)?;
        let result = self
            .server
            .batch_blind_evaluate(rng, &elements)
            .map_err(|_| TokenError::Malformed)?;
        let evaluated = result
            .messages
            .iter()
            .map(|m| m.serialize().to_vec())
            .collect();
        Ok((evaluated, result.proof.serialize().to_vec()))
    }

    /// Whether `output` is this key's evaluation of `input` (constant time in the output).
    pub fn check(&self, input: &[u8], output: &[u8]) -> bool {
        if input.len() != INPUT_LEN || output.len() != OUTPUT_LEN {
            return false;
        }
        match self.server.evaluate(input) {
            Ok(expected) => bool::from(expected.as_slice().ct_eq(output)),
            Err(_) => false,
        }
    }
}

/// The client's side of one token being issued: its input and blinding state.
pub struct PendingToken {
    input: [u8; INPUT_LEN],
    state: VoprfClient<Ristretto255>,
    blinded: [u8; ELEMENT_LEN],
}

impl std::fmt::Debug for PendingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingToken").finish_non_exhaustive()
    }
}

impl PendingToken {
    pub fn blinded(&self) -> &[u8] {
        &self.blinded
    }
}

/// A usable token: input and output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub key_id: [u8; KEY_ID_LEN],
    pub input: [u8; INPUT_LEN],
    pub output: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

/// Draw a random input and blind it.
pub fn blind<R: RngCore + CryptoRng>(rng: &mut R) -> Result<PendingToken, TokenError> {
    let mut input = [0u8; INPUT_LEN];
    rng.fill_bytes(&mut input);
    let result =
        VoprfClient::<Ristretto255>::blind(&input, rng).map_err(|_| TokenError::Malformed)?;
    let mut blinded = [0u8; ELEMENT_LEN];
    blinded.copy_from_slice(&result.message.serialize());
    Ok(PendingToken {
        input,
        state: result.state,
        blinded,
    })
}

/// Check the issuance proof against `public_key` and unblind every token.
pub fn finalize(
    pending: &[PendingToken],
    evaluated: &[&[u8]],
    proof: &[u8],
    public_key: &[u8],
) -> Result<Vec<Token>, TokenError> {
    if pending.len() != evaluated.len() || pending.is_empty() {
        return Err(TokenError::Count);
    }
    let pk = Ristretto255::deserialize_elem(public_key).map_err(|_| TokenError::Malformed)?;
    let messages = evaluated
        .iter()
        .map(|e| EvaluationElement::<Ristretto255>::deserialize(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TokenError::Malformed)?;
    let proof = Proof::<Ristretto255>::deserialize(proof).map_err(|_| TokenError::Malformed)?;
    let inputs: Vec<&[u8]> = pending.iter().map(|p| p.input.as_slice()).collect();
    let clients: Vec<VoprfClient<Ristretto255>> = pending.iter().map(|p| p.state.clone()).collect();
    let outputs = VoprfClient::batch_finalize(&inputs, &clients, &messages, &proof, pk)
        .map_err(|_| TokenError::Proof)?;
    let key_id = key_id(public_key);
    pending
        .iter()
        .zip(outputs)
        .map(|(p, output)| {
            let output = output.map_err(|_| TokenError::Malformed)?;
            Ok(Token {
                key_id,
                input: p.input,
                output: output.to_vec(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use rand_core::OsRng;

    // Requirement: DS-GID-3
    #[test]
    fn issued_tokens_check_and_forged_ones_do_not() {
        let (key, private) = TokenKey::generate(&mut OsRng).unwrap();
        let again = TokenKey::from_private(&private).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let pending: Vec<_> = (0..3).map(|_| blind(&mut OsRng).unwrap()).collect();
        let blinded: Vec<&[u8]> = pending.iter().map(|p| p.blinded()).collect();
        let (evaluated, proof) = key.issue(&mut OsRng, &blinded).unwrap();
        let evaluated: Vec<&[u8]> = evaluated.iter().map(Vec::as_slice).collect();
        let tokens = finalize(&pending, &evaluated, &proof, key.public_key()).unwrap();
        for t in &tokens {
            assert!(again.check(&t.input, &t.output));
            assert_eq!(t.key_id, key.key_id());
        }
        // A forged output, another input, another key: refused.
        let mut forged = tokens[0].output.clone();
        forged[0] ^= 1;
        assert!(!key.check(&tokens[0].input, &forged));
        assert!(!key.check(&tokens[1].input, &tokens[0].output));
        let (other, _) = TokenKey::generate(&mut OsRng).unwrap();
        assert!(!other.check(&tokens[0].input, &tokens[0].output));
        // A proof under another key (a per-client key) fails the client's check.
        assert_eq!(
            finalize(&pending, &evaluated, &proof, other.public_key()),
            Err(TokenError::Proof)
        );
        // Garbage from the client is an error, not a panic.
        assert!(key.issue(&mut OsRng, &[&[0xffu8; 32][..]]).is_err());
        assert!(key.issue(&mut OsRng, &[&[1u8; 3][..]]).is_err());
    }
}
