//! The mapping between the model's names and real values, for one test case.
//!
//! Every case gets a fresh namespace on the server under test: a random prefix for the
//! local parts of its FIDs and a random salt from which its keys, friendship tokens and
//! package tags are derived. Cases therefore never see each other's users, even on a
//! shared (or deployed) server, and a case replayed with the same salt uses the same keys.
//!
//! Values the server picks (QS ids) are learned from its replies and mapped back.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use phoenix_model::ids::{
    ClientName, DomainId, Fid, FidArg, KeyId, MsgId, PkgId, QsCid, QsUid, Token,
};
use phoenix_types::ids::QsId;

/// A domain no server under test serves: FIDs on it stand for "another homeserver's user".
pub const OTHER_DOMAIN: &str = "elsewhere.invalid";

#[derive(Debug, Clone)]
pub struct Names {
    /// The domain of the server under test (the model's domain 0).
    pub domain: String,
    /// The domains of the model's domains 0, 1, ... (for the federation suite: a.test,
    /// b.test, the malicious peer, a domain nobody serves); others are [`OTHER_DOMAIN`].
    domains: Vec<String>,
    pub prefix: String,
    salt: [u8; 32],
    qs_users: BTreeMap<u32, QsId>,
    qs_clients: BTreeMap<u32, QsId>,
    qs_clients_back: BTreeMap<QsId, u32>,
}

impl Names {
    pub fn new(domain: &str) -> Self {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        Self {
            domain: domain.to_owned(),
            domains: vec![domain.to_owned()],
            prefix: format!("t{}", hex::encode(&salt[..5])),
            salt,
            qs_users: BTreeMap::new(),
            qs_clients: BTreeMap::new(),
            qs_clients_back: BTreeMap::new(),
        }
    }

    fn derive(&self, what: &[u8], n: u32) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(what);
        h.update(n.to_le_bytes());
        h.finalize().into()
    }

    /// Names for several domains: the model's domain `i` is `domains[i]`.
    pub fn with_domains(domains: &[String]) -> Self {
        let mut names = Self::new(domains.first().map_or("", String::as_str));
        names.domains = domains.to_vec();
        names
    }

    pub fn domain_of(&self, d: DomainId) -> &str {
        self.domains
            .get(usize::from(d.0))
            .map_or(OTHER_DOMAIN, String::as_str)
    }

    /// The 16-byte message id of the model's federated message id `n` (per case).
    pub fn fed_id(&self, n: u32) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.derive(b"fed-id", n)[..16]);
        out
    }

    pub fn fid(&self, fid: Fid) -> String {
        format!(
            "{}u{}@{}",
            self.prefix,
            fid.local,
            self.domain_of(fid.domain)
        )
    }

    /// A request's FID field: a well-formed FID, or one that does not parse.
    pub fn fid_arg(&self, fid: FidArg) -> String {
        match fid {
            FidArg::Valid(fid) => self.fid(fid),
            FidArg::Malformed => format!("{} not a fid", self.prefix),
        }
    }

    pub fn client(&self, client: ClientName) -> String {
        format!("c{}", client.0)
    }

    pub fn client_back(&self, client: &str) -> Option<ClientName> {
        client.strip_prefix('c')?.parse().ok().map(ClientName)
    }

    /// The Ed25519 key pair the model calls `key`.
    pub fn key(&self, key: KeyId) -> SigningKey {
        SigningKey::from_bytes(&self.derive(b"key", key.0))
    }

    pub fn token(&self, token: Token) -> [u8; 32] {
        self.derive(b"token", u32::from(token.0))
    }

    /// 32 bytes that carry `n` and this case's salt, so they can be read back.
    fn tag(&self, kind: u8, n: u32) -> [u8; 32] {
        let mut out = self.derive(b"tag", 0);
        out[0] = kind;
        out[1..5].copy_from_slice(&n.to_le_bytes());
        out
    }

    fn untag(&self, kind: u8, bytes: &[u8]) -> Option<u32> {
        let expected = self.derive(b"tag", 0);
        if bytes.len() != 32 || bytes.first() != Some(&kind) || bytes.get(5..) != expected.get(5..)
        {
            return None;
        }
        let n: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
        Some(u32::from_le_bytes(n))
    }

    pub fn package_tag(&self, id: PkgId) -> [u8; 32] {
        self.tag(b'P', id.0)
    }

    pub fn package_back(&self, bytes: &[u8]) -> Option<PkgId> {
        self.untag(b'P', bytes).map(PkgId)
    }

    pub fn message_tag(&self, id: MsgId) -> [u8; 32] {
        self.tag(b'M', id.0)
    }

    pub fn message_back(&self, bytes: &[u8]) -> Option<MsgId> {
        self.untag(b'M', bytes).map(MsgId)
    }

    /// The real id of a QS client record: learned from the server, or (for a record the
    /// model says does not exist) a fixed random one.
    pub fn qs_client(&self, id: QsCid) -> QsId {
        match self.qs_clients.get(&id.0) {
            Some(real) => *real,
            None => {
                let mut out = [0u8; 16];
                out.copy_from_slice(&self.derive(b"qs-client", id.0)[..16]);
                out
            }
        }
    }

    pub fn qs_client_back(&self, real: &QsId) -> Option<QsCid> {
        self.qs_clients_back.get(real).copied().map(QsCid)
    }

    pub fn learn_qs_user(&mut self, model: QsUid, client: QsCid, user_id: QsId, client_id: QsId) {
        self.qs_users.insert(model.0, user_id);
        self.qs_clients.insert(client.0, client_id);
        self.qs_clients_back.insert(client_id, client.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tags_read_back_only_in_their_case() {
        let a = Names::new("a.test");
        let b = Names::new("a.test");
        let tag = a.package_tag(PkgId(77));
        assert_eq!(a.package_back(&tag), Some(PkgId(77)));
        assert_eq!(b.package_back(&tag), None);
        assert_eq!(a.message_back(&tag), None);
        let fid = a.fid(Fid {
            local: 3,
            domain: DomainId(0),
        });
        assert!(phoenix_types::ids::Fid::parse(&fid).is_ok(), "{fid}");
        assert!(phoenix_types::ids::Fid::parse(&a.fid_arg(FidArg::Malformed)).is_err());
        assert_eq!(a.client_back(&a.client(ClientName(4))), Some(ClientName(4)));
    }
}
