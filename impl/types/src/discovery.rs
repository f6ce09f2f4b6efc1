//! Discovery and resolution of homeservers.
//!
//! A homeserver of domain `D` is found at `https://D/` and describes itself at
//! `GET /.well-known/phoenix` ([`Discovery`]). For tests and private deployments a
//! [`Resolver`] maps domains to other base URLs, given as `DOMAIN=URL` like curl's
//! `--resolve` (both `phoenix-server` and `phoenix` accept it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::Domain;

/// `GET /.well-known/phoenix`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    pub domain: String,
    pub protocol_version: u16,
    /// The home server's current CA certificate, PEM.
    pub ca_certificate: String,
    /// SHA-256 of the CA certificate's DER, hex.
    pub ca_fingerprint: String,
    /// The QS's HPKE queue-config public key, hex.
    pub queue_config_key: String,
    /// The QS's Ed25519 key that signs QS-to-QS messages, hex.
    pub qs_verifying_key: String,
    /// The QS's VAPID public key (RFC 8292): an uncompressed P-256 point, base64url
    /// without padding, as a browser's `applicationServerKey` takes it. Push services
    /// that restrict a subscription to one application server check notifications
    /// against it. Absent from servers that do not send push notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_vapid_key: Option<String>,
}

pub const WELL_KNOWN_PATH: &str = "/.well-known/phoenix";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error(
        "invalid --resolve entry {0:?}: expected DOMAIN=URL, e.g. b.test=http://127.0.0.1:8081"
    )]
    Entry(String),
    #[error("invalid domain in --resolve entry {0:?}")]
    Domain(String),
    #[error("invalid URL in --resolve entry {0:?}: it must start with http:// or https://")]
    Url(String),
}

/// Maps domains to base URLs: explicit entries first, else `https://DOMAIN`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    entries: BTreeMap<Domain, String>,
}

impl Resolver {
    /// Parse `DOMAIN=URL` entries.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, ResolveError> {
        let mut resolver = Self::default();
        for entry in entries {
            resolver.add(entry)?;
        }
        Ok(resolver)
    }

    pub fn add(&mut self, entry: &str) -> Result<(), ResolveError> {
        let (domain, url) = entry
            .split_once('=')
            .ok_or_else(|| ResolveError::Entry(entry.into()))?;
        let domain = Domain::parse(domain).map_err(|_| ResolveError::Domain(entry.into()))?;
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(ResolveError::Url(entry.into()));
        }
        self.entries.insert(domain, url.to_owned());
        Ok(())
    }

    /// The base URL of `domain`'s homeserver.
    pub fn url(&self, domain: &Domain) -> String {
        self.entries
            .get(domain)
            .cloned()
            .unwrap_or_else(|| format!("https://{domain}"))
    }

    /// The explicit entries, as `DOMAIN=URL` strings.
    pub fn entries(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(d, u)| format!("{d}={u}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_overrides_then_https() {
        let r = Resolver::parse(["B.test=http://127.0.0.1:8081/"]).unwrap();
        assert_eq!(
            r.url(&Domain::parse("b.test").unwrap()),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            r.url(&Domain::parse("example.com").unwrap()),
            "https://example.com"
        );
        assert!(Resolver::parse(["b.test"]).is_err());
        assert!(Resolver::parse(["b.test=ftp://x"]).is_err());
        assert!(Resolver::parse(["not a domain=http://x.y"]).is_err());
    }
}
