//! Identifiers: Federation IDs (`local@domain`), domains, client ids, QS pseudonyms and
//! qualified group ids. Each type can only be built through validation.

use std::fmt;

use thiserror::Error;

/// Maximum length of a domain name (RFC 1035).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Maximum length of the local part of an FID (the polyproto crate's limit is 160; we keep
/// it shorter, names are for humans).
pub const MAX_LOCAL_LEN: usize = 64;
/// Maximum length of a client id (polyproto session ids are IA5 strings of 1 to 32 chars).
pub const MAX_CLIENT_ID_LEN: usize = 32;

/// Why an identifier was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error(
        "invalid domain {0:?}: expected a fully qualified domain name (or localhost, or a name under .test)"
    )]
    Domain(String),
    #[error(
        "invalid federation id {0:?}: expected local@domain with local made of a-z 0-9 . _ % + -"
    )]
    Fid(String),
    #[error("invalid client id {0:?}: expected 1 to 32 characters of a-z A-Z 0-9 - _")]
    ClientId(String),
    #[error("invalid group id: {0}")]
    GroupId(&'static str),
}

/// A validated, lowercased domain name: a fully qualified domain name with at least two
/// labels, or `localhost`, or a name under `.test` (RFC 6761) for local use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let lower = input.trim_end_matches('.').to_ascii_lowercase();
        let err = || IdError::Domain(input.chars().take(80).collect());
        if lower.is_empty() || lower.len() > MAX_DOMAIN_LEN || input != input.trim() {
            return Err(err());
        }
        if lower == "localhost" {
            return Ok(Self(lower));
        }
        let labels: Vec<&str> = lower.split('.').collect();
        if labels.len() < 2 {
            return Err(err());
        }
        for label in &labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(err());
            }
        }
        // The top-level label of a real FQDN is never all digits (that would be an IP address).
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err());
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels, top-level label first (the order of the `dc` components in a
    /// polyproto distinguished name).
    pub fn labels_top_first(&self) -> Vec<&str> {
        self.0.split('.').rev().collect()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Federation ID `local@domain`, lowercased before validation (FIDs are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fid {
    local: String,
    domain: Domain,
}

impl Fid {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = || IdError::Fid(input.chars().take(80).collect());
        let lower = input.to_ascii_lowercase();
        let (local, domain) = lower.rsplit_once('@').ok_or_else(err)?;
        let local_ok = !local.is_empty()
            && local.len() <= MAX_LOCAL_LEN
            && local.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
            });
        if !local_ok {
            return Err(err());
        }
        let domain = Domain::parse(domain).map_err(|_| err())?;
        Ok(Self {
            local: local.to_owned(),
            domain,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// A client id, chosen by the client at registration; it is the polyproto session id of the
/// client's ID-Cert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let ok = !input.is_empty()
            && input.len() <= MAX_CLIENT_ID_LEN
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(input.to_owned()))
        } else {
            Err(IdError::ClientId(input.chars().take(40).collect()))
        }
    }

    /// A fresh random client id (32 hex characters).
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A QS pseudonym (user record id or client record id): 16 random bytes, never derived
/// from the AS identity.
pub type QsId = [u8; 16];

/// Length of the random part of a group id.
pub const GROUP_ID_RANDOM_LEN: usize = 16;

/// A group id qualified with the domain of the DS that hosts the group:
/// 16 random bytes followed by the UTF-8 domain. This is the MLS group id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedGroupId {
    random: [u8; GROUP_ID_RANDOM_LEN],
    domain: Domain,
}

impl QualifiedGroupId {
    pub fn new(random: [u8; GROUP_ID_RANDOM_LEN], domain: Domain) -> Self {
        Self { random, domain }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.len() <= GROUP_ID_RANDOM_LEN || bytes.len() > GROUP_ID_RANDOM_LEN + MAX_DOMAIN_LEN
        {
            return Err(IdError::GroupId("wrong length"));
        }
        let (random, domain) = bytes.split_at(GROUP_ID_RANDOM_LEN);
        let random: [u8; GROUP_ID_RANDOM_LEN] = random
            .try_into()
            .map_err(|_| IdError::GroupId("wrong length"))?;
        let domain =
            std::str::from_utf8(domain).map_err(|_| IdError::GroupId("domain is not UTF-8"))?;
        let domain = Domain::parse(domain).map_err(|_| IdError::GroupId("invalid domain"))?;
        Ok(Self { random, domain })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.random.to_vec();
        out.extend_from_slice(self.domain.as_str().as_bytes());
        out
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// A short printable form for logs and the CLI (never secret: group ids are visible to the DS).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fids_are_lowercased_and_validated() {
        let fid = Fid::parse("Alice@A.Test").unwrap();
        assert_eq!(fid.to_string(), "alice@a.test");
        assert!(Fid::parse("alice@localhost").is_ok());
        assert!(Fid::parse("alice@example.com").is_ok());
        for bad in [
            "",
            "alice",
            "@a.test",
            "al ice@a.test",
            "alice@",
            "alice@a",
            "alice@-a.test",
            "alice@1.2.3.4",
            "a@b@c",
        ] {
            assert!(Fid::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@a.test", "a".repeat(65));
        assert!(Fid::parse(&long).is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            Domain::parse("B.test").unwrap().labels_top_first(),
            vec!["test", "b"]
        );
        assert!(Domain::parse(" a.test").is_err());
        assert!(Domain::parse("a_b.test").is_err());
    }

    #[test]
    fn group_ids_roundtrip() {
        let gid = QualifiedGroupId::new([7; 16], Domain::parse("a.test").unwrap());
        assert_eq!(QualifiedGroupId::parse(&gid.to_bytes()).unwrap(), gid);
        assert!(QualifiedGroupId::parse(&[1; 16]).is_err());
    }
}
