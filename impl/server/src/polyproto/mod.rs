//! polyproto core routes (`/.well-known/polyproto-core` and `/.p2/core/v1/`), in the wire
//! shape a client built on the `polyproto` crate 0.21 expects (see docs/identity.md,
//! "polyproto routes"):
//!
//! - [`well_known`]: `GET /.well-known/polyproto-core`;
//! - [`idcert`]: `GET idcert/server[?timestamp=]` and `GET idcert/actor/{fid}`: every
//!   certificate this server ever had or issued, as cacheable ID-Certs (JCS JSON, a cache
//!   window and a `cacheSignature` by the current CA key); for another domain's user, that
//!   domain's own cacheable ID-Certs from this server's cache
//!   ([`crate::federation::certificates`]);
//! - [`session`]: foreign sessions: `GET`/`POST session/auth` (a key trial answered with
//!   the actor's ID-Cert key gives a session token), `DELETE session` and
//!   `PUT session/idcert/extern`, and [`session()`] to look a bearer token up;
//! - [`home`]: how this server learns an actor's certificate from its home server (this
//!   server for local users, the peer's `idcert/actor` route otherwise) and verifies it.
//!
//! What this module is not: Phoenix's own AS/QS/DS operations (those use the TLS-codec
//! routes and their own request signatures), nor the cache of peers' discovery documents
//! ([`crate::federation`]). HTTP stays in the route functions here; errors become problem
//! documents through [`crate::http::problem`], like everywhere else.

pub mod home;
pub mod idcert;
pub mod session;
pub mod well_known;

use std::collections::BTreeMap;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use phoenix_types::error::WireError;

use crate::ratelimit::RateLimiter;
use crate::server::Server;

pub use session::{Session, session};

/// Shortest and longest cache window a home server may dictate (polyproto §6.4: 1 to 12
/// hours).
pub const MIN_CACHE_TTL: u64 = 3600;
pub const MAX_CACHE_TTL: u64 = 12 * 3600;

/// Operator settings of the polyproto routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where clients reach this server, as an origin (`https://host[:port]`, no path); `None`
    /// means `https://<domain>`. Published in `/.well-known/polyproto-core`.
    pub public_url: Option<String>,
    /// The cache window of served certificates (seconds, [`MIN_CACHE_TTL`] to
    /// [`MAX_CACHE_TTL`]).
    pub idcert_cache_ttl: u64,
    /// How long a key trial can be answered (seconds).
    pub key_trial_ttl: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: None,
            idcert_cache_ttl: MIN_CACHE_TTL,
            key_trial_ttl: session::KEY_TRIAL_TTL,
        }
    }
}

impl Settings {
    /// The public base URL of `server` (no trailing slash).
    pub fn public_url(&self, domain: &phoenix_types::ids::Domain) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => format!("https://{domain}"),
        }
    }
}

/// Check and normalise a configured public URL: an absolute `http` or `https` URL with a
/// host and nothing after it (polyproto 0.21 clients join absolute route paths onto it, so
/// a path would be silently dropped). Returns the origin without a trailing slash.
pub fn parse_public_url(input: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(input).map_err(|e| format!("{input:?} is not a URL: {e}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!("{input:?} must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{input:?} has no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{input:?} must be an origin like https://example.org:8443 (polyproto clients ignore any path)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{input:?} must not contain credentials"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// All polyproto routes. Every request that matches a route's path and method gets an
/// answer (a success or a problem document); nothing is rejected after that. `limiter`
/// tells the client's address (see [`session`]).
pub fn routes(server: Arc<Server>, limiter: Arc<RateLimiter>) -> BoxedFilter<(Response,)> {
    well_known::routes(server.clone())
        .or(idcert::routes(server.clone(), limiter.clone()))
        .unify()
        .or(session::routes(server, limiter))
        .unify()
        .boxed()
}

/// A filter that hands every request the server.
fn with_server(
    server: Arc<Server>,
) -> impl Filter<Extract = (Arc<Server>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || server.clone())
}

/// A JSON object whose values are all strings, as RFC 8785 (JCS) canonical JSON.
///
/// Why `serde_json` gives JCS here: JCS sorts object keys by their UTF-16 code units and
/// `BTreeMap` sorts by bytes, which is the same order for the ASCII keys we use;
/// `serde_json::to_vec` writes no whitespace; and for strings JCS prescribes ECMAScript's
/// `JSON.stringify` escaping, which is exactly what `serde_json` does: `"` and `\` escaped,
/// U+0008/0009/000A/000C/000D as `\b \t \n \f \r`, other controls below U+0020 as `\u00xx`
/// with lowercase hex, everything else (including `/` and non-ASCII) written as is. So the
/// PEM's line feeds come out as the two characters `\n`, as JCS requires. Numbers, whose
/// JCS form differs from `serde_json`'s, never occur: every u64 is sent as a decimal
/// string, as polyproto 0.19+ requires. The interop test checks the result with the
/// polyproto crate's own JCS check.
pub(crate) type JcsObject = BTreeMap<&'static str, String>;

/// A 200 response with a JCS body.
pub(crate) fn jcs_response<T: serde::Serialize>(value: &T) -> Response {
    json_response(StatusCode::OK, value)
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => warp::reply::with_status(
            warp::reply::with_header(body, "content-type", "application/json"),
            status,
        )
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a polyproto response");
            crate::http::problem(&WireError::new(
                phoenix_types::error::ErrorCode::Internal,
                "cannot serialise the response",
            ))
        }
    }
}

/// A response from a route result.
pub(crate) fn respond(result: Result<Response, WireError>) -> Response {
    match result {
        Ok(response) => response,
        Err(e) => crate::http::problem(&e),
    }
}

pub use phoenix_types::cacheable::decimal;
pub(crate) use phoenix_types::cacheable::parse_u64;

/// Percent-decode one path segment (an FID's `@` may arrive as `%40`). `None` for invalid
/// escapes or non-UTF-8 results.
pub(crate) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_origins() {
        assert_eq!(
            parse_public_url("https://a.test").unwrap(),
            "https://a.test"
        );
        assert_eq!(
            parse_public_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "a.test",
            "ftp://a.test",
            "https://a.test/api",
            "https://a.test/?x=1",
            "https://u:p@a.test",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jcs_escaping_of_pem() {
        let mut object = JcsObject::new();
        object.insert(
            "idCertPem",
            "-----BEGIN CERTIFICATE-----\nAB/+\n".to_owned(),
        );
        object.insert("cacheNotValidAfter", "2".to_owned());
        assert_eq!(
            serde_json::to_string(&object).unwrap(),
            r#"{"cacheNotValidAfter":"2","idCertPem":"-----BEGIN CERTIFICATE-----\nAB/+\n"}"#
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("alice%40a.test").unwrap(), "alice@a.test");
        assert_eq!(percent_decode("alice@a.test").unwrap(), "alice@a.test");
        assert!(percent_decode("%4").is_none());
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%ff").is_none());
    }
}
