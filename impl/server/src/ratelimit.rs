//! Rate limits on the operations anyone can call without an account, and the key-package
//! claim quota. Each limit is a GCRA bucket from the `governor` crate, kept in memory per
//! server process:
//!
//! | operation | per client IP | per target |
//! |---|---|---|
//! | `as/register` | `register` | |
//! | `as/fetch_connection_package` | `fetch_connection_package` | `connection_package_claims` (per FID) |
//! | `as/enqueue_connection` | `enqueue_connection` | `enqueue_connection_per_client` (per FID + client id) |
//! | `qs/create_user` | `create_user` | |
//! | `ds/request_group_id` | `request_group_id` (each costs the DS a VOPRF evaluation, forged tokens included) | |
//! | `qs/fetch_key_packages` | `fetch_key_packages` | `key_package_claims` (per client IP **and** friendship-token hash) |
//! | `federation/enqueue` | | `federation_per_peer` (per claimed sending domain and source IP) |
//! | `GET /.p2/core/v1/idcert/actor/{fid}` of another domain's user | `remote_idcert` | |
//!
//! **Foreign sessions.** A request that carries `Authorization: Bearer <token>` of a
//! polyproto foreign session ([`crate::polyproto::session`]) is also counted against
//! `session_operations`, per session, if it is one of the operations a client performs on
//! a remote server: `as/fetch_connection_package`, `as/enqueue_connection`,
//! `qs/fetch_key_packages` and every DS operation. The key is [`SessionKey`], a hash of the
//! token hash: the limiter never sees the session's FID, so no QS or DS state, log or
//! bucket names the actor. The per-IP and per-target limits above apply as before; a
//! request without a token has only those. A request with a token that is not a live
//! session is refused with `UNAUTHENTICATED` before any limit ([`crate::http`]), never
//! treated as one without a token.
//!
//! The key-package claim quota is what stops draining: one fetcher (an IP) can claim a
//! given user's key packages only so often, so it cannot empty the pool and force everyone
//! onto the last-resort package; owners see last-resort servings in `qs/key_package_status`.
//!
//! Client IPs: the TCP peer address, unless the peer is one of `trusted_proxies` and
//! `client_ip_header` is set, in which case the header is read from the right, skipping
//! trusted proxies (so a client cannot forge its way past the proxy that appends to it).
//! IPv6 clients are limited per /64, the smallest block a user usually controls.
//!
//! Memory is bounded: a background task drops the state of keys whose bucket is full again
//! (`retain_recent`) every [`MAINTENANCE_PERIOD`], and when a limiter tracks
//! `max_tracked_keys` keys, further new keys share one overflow bucket until the next
//! clean-up (degraded fairness under a flood, never unbounded memory).
//!
//! What this module is not: a defence against distributed floods (that is the reverse
//! proxy's or the network's job), or shared between server processes (each process keeps
//! its own buckets, so N processes allow N times the rate).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use warp::http::HeaderMap;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{Domain, Fid};
use phoenix_types::messages::RequestEnvelope;
use phoenix_types::messages::as_::{self, EnqueueConnectionRequest, FetchConnectionPackageRequest};
use phoenix_types::messages::ds;
use phoenix_types::messages::federation::{self, FederatedEnqueue, FederatedEnqueueTbs};
use phoenix_types::messages::qs::{self, FetchKeyPackagesRequest};

/// How often idle keys are forgotten.
pub const MAINTENANCE_PERIOD: Duration = Duration::from_secs(30);

/// `N/period`: at most N requests per period, all of them at once if the bucket is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub const fn new(count: NonZeroU32, period: Duration) -> Self {
        Self { count, period }
    }

    fn quota(self) -> Quota {
        let per_cell = self.period / self.count.get();
        Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `10/hour`, `5/minute`, `100/second`, `50/day`, or `N/<seconds>s` (`20/90s`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            format!(
                "invalid rate {s:?}: expected N/second, N/minute, N/hour, N/day or N/<seconds>s with N > 0"
            )
        };
        let (count, period) = s.trim().split_once('/').ok_or_else(err)?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(err)?;
        let period = match period.trim() {
            "second" | "s" | "sec" => Duration::from_secs(1),
            "minute" | "min" | "m" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            "day" | "d" => Duration::from_secs(24 * 3600),
            other => {
                let secs = other
                    .strip_suffix('s')
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(err)?;
                Duration::from_secs(secs)
            }
        };
        Ok(Self { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 => write!(f, "{}/second", self.count),
            60 => write!(f, "{}/minute", self.count),
            3600 => write!(f, "{}/hour", self.count),
            86400 => write!(f, "{}/day", self.count),
            secs => write!(f, "{}/{secs}s", self.count),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("invalid IP network {s:?}: expected an address or address/prefix");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| err())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 clients.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a per-IP bucket is kept for: the IP itself, or its /64 for IPv6.
pub(crate) fn bucket_ip(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The rate-limit settings (part of [`crate::server::Limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Off: no rate limits at all (for tests and benchmarks behind another limiter).
    pub enabled: bool,
    /// Peers whose `client_ip_header` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The header a trusted reverse proxy puts the client address in (`x-forwarded-for`,
    /// `x-real-ip`, `forwarded`); none: the TCP peer is the client.
    pub client_ip_header: Option<String>,
    pub register: Rate,
    pub create_user: Rate,
    // Requirement: DS-GID-4
    pub request_group_id: Rate,
    pub fetch_connection_package: Rate,
    pub connection_package_claims: Rate,
    pub enqueue_connection: Rate,
    pub enqueue_connection_per_client: Rate,
    pub fetch_key_packages: Rate,
    pub key_package_claims: Rate,
    pub federation_per_peer: Rate,
    /// Lookups of other domains' users' certificates, per client IP.
    pub remote_idcert: Rate,
    // Requirement: RL-SESSION-1
    /// Operations on this server by foreign clients, per foreign session.
    pub session_operations: Rate,
    /// Most keys one limiter tracks before new keys share an overflow bucket.
    pub max_tracked_keys: usize,
}

const fn rate(count: u32, secs: u64) -> Rate {
    match NonZeroU32::new(count) {
        Some(count) => Rate::new(count, Duration::from_secs(secs)),
        None => Rate::new(NonZeroU32::MIN, Duration::from_secs(secs)),
    }
}

const HOUR: u64 = 3600;

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
            client_ip_header: None,
            register: rate(30, HOUR),
            create_user: rate(60, HOUR),
            request_group_id: rate(120, HOUR),
            fetch_connection_package: rate(120, HOUR),
            connection_package_claims: rate(60, HOUR),
            enqueue_connection: rate(120, HOUR),
            enqueue_connection_per_client: rate(60, HOUR),
            fetch_key_packages: rate(600, HOUR),
            key_package_claims: rate(10, HOUR),
            federation_per_peer: rate(6000, 60),
            remote_idcert: rate(600, HOUR),
            session_operations: rate(1200, HOUR),
            max_tracked_keys: 100_000,
        }
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limit (the setting's name).
    pub limit: &'static str,
    /// When the next request would be allowed.
    pub retry_after: Duration,
}

impl Limited {
    /// The problem answered: 429 `RATE_LIMITED`.
    pub fn error(&self) -> WireError {
        WireError::new(
            ErrorCode::RateLimited,
            format!(
                "rate limit {} exceeded: retry in {} s",
                self.limit,
                self.retry_after_secs()
            ),
        )
    }

    /// Seconds for the `Retry-After` header: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 || secs == 0 {
            secs + 1
        } else {
            secs
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Target([u8; 32]),
    Fetcher(IpAddr, [u8; 32]),
    Session([u8; 32]),
    /// New keys while a limiter is full share this one.
    Overflow,
}

struct Limit {
    name: &'static str,
    limiter: DefaultKeyedRateLimiter<Key>,
}

impl Limit {
    fn new(name: &'static str, rate: Rate) -> Self {
        Self {
            name,
            limiter: governor::RateLimiter::keyed(rate.quota()),
        }
    }
}

/// The rate-limit key of a foreign session: opaque, derived from the token hash, never
/// from the actor's FID (see [`crate::polyproto::Session::rate_limit_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKey(pub [u8; 32]);

/// The rate limiters of one server process.
pub struct RateLimiter {
    config: RateLimitConfig,
    clock: DefaultClock,
    register: Limit,
    create_user: Limit,
    request_group_id: Limit,
    fetch_connection_package: Limit,
    connection_package_claims: Limit,
    enqueue_connection: Limit,
    enqueue_connection_per_client: Limit,
    fetch_key_packages: Limit,
    key_package_claims: Limit,
    federation_per_peer: Limit,
    remote_idcert: Limit,
    session_operations: Limit,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Arc<Self> {
        let c = config;
        Arc::new(Self {
            config: config.clone(),
            clock: DefaultClock::default(),
            register: Limit::new("register", c.register),
            create_user: Limit::new("create_user", c.create_user),
            request_group_id: Limit::new("request_group_id", c.request_group_id),
            fetch_connection_package: Limit::new(
                "fetch_connection_package",
                c.fetch_connection_package,
            ),
            connection_package_claims: Limit::new(
                "connection_package_claims",
                c.connection_package_claims,
            ),
            enqueue_connection: Limit::new("enqueue_connection", c.enqueue_connection),
            enqueue_connection_per_client: Limit::new(
                "enqueue_connection_per_client",
                c.enqueue_connection_per_client,
            ),
            fetch_key_packages: Limit::new("fetch_key_packages", c.fetch_key_packages),
            key_package_claims: Limit::new("key_package_claims", c.key_package_claims),
            federation_per_peer: Limit::new("federation_per_peer", c.federation_per_peer),
            remote_idcert: Limit::new("remote_idcert", c.remote_idcert),
            session_operations: Limit::new("session_operations", c.session_operations),
        })
    }

    fn limits(&self) -> [&Limit; 12] {
        [
            &self.register,
            &self.create_user,
            &self.request_group_id,
            &self.fetch_connection_package,
            &self.connection_package_claims,
            &self.enqueue_connection,
            &self.enqueue_connection_per_client,
            &self.fetch_key_packages,
            &self.key_package_claims,
            &self.federation_per_peer,
            &self.remote_idcert,
            &self.session_operations,
        ]
    }

    /// Start the background clean-up (if a tokio runtime is running); it ends when the
    /// limiter is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_PERIOD);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.forget_idle();
            }
        });
    }

    /// Drop the state of every key whose bucket is full again.
    pub fn forget_idle(&self) {
        for limit in self.limits() {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
        }
    }

    /// How many keys the limiters track in total.
    pub fn tracked_keys(&self) -> usize {
        self.limits().iter().map(|l| l.limiter.len()).sum()
    }

    fn check(&self, limit: &Limit, key: Key) -> Result<(), Limited> {
        // A full limiter puts every request into one shared bucket until the clean-up
        // forgets idle keys: memory stays bounded, fairness degrades only under a flood.
        let key = if limit.limiter.len() >= self.config.max_tracked_keys {
            Key::Overflow
        } else {
            key
        };
        limit.limiter.check_key(&key).map_err(|not_until| Limited {
            limit: limit.name,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// The client's address: the TCP peer, or what a trusted proxy says it is.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?.ip());
        let Some(header) = &self.config.client_ip_header else {
            return Some(peer);
        };
        let trusted = |ip: IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(peer) {
            return Some(peer);
        }
        // Every value of the header, in order; the rightmost untrusted hop is the client.
        let hops: Vec<IpAddr> = headers
            .get_all(header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_hop)
            .collect();
        Some(
            hops.iter()
                .rev()
                .copied()
                .find(|ip| !trusted(*ip))
                .or_else(|| hops.first().copied())
                .unwrap_or(peer),
        )
    }

    /// Check the limits of `service/operation` for a request from `client` with `body`.
    /// Operations without limits always pass; a body that does not decode is left to the
    /// operation (which refuses it) after the per-IP limit.
    pub fn check_operation(
        &self,
        client: Option<IpAddr>,
        service: &str,
        operation: &str,
        body: &[u8],
    ) -> Result<(), Limited> {
        self.check_operation_in_session(None, client, service, operation, body)
    }

    // Requirement: RL-SESSION-1
    /// [`Self::check_operation`] for a request that carries the foreign session `session`
    /// (an already authenticated one): the operations foreign clients perform on a remote
    /// server count against the session's `session_operations` bucket first.
    pub fn check_operation_in_session(
        &self,
        session: Option<SessionKey>,
        client: Option<IpAddr>,
        service: &str,
        operation: &str,
        body: &[u8],
    ) -> Result<(), Limited> {
        if !self.config.enabled {
            return Ok(());
        }
        if let Some(SessionKey(key)) = session
            && session_scoped(service, operation)
        {
            self.check(&self.session_operations, Key::Session(key))?;
        }
        let ip = client.map(bucket_ip);
        let per_ip = |limit: &Limit| match ip {
            Some(ip) => self.check(limit, Key::Ip(ip)),
            None => Ok(()),
        };
        match (service, operation) {
            ("as", as_::REGISTER) => per_ip(&self.register),
            ("qs", qs::CREATE_USER) => per_ip(&self.create_user),
            // Requirement: DS-GID-4
            ("ds", ds::REQUEST_GROUP_ID) => per_ip(&self.request_group_id),
            ("as", as_::FETCH_CONNECTION_PACKAGE) => {
                per_ip(&self.fetch_connection_package)?;
                match payload::<FetchConnectionPackageRequest>(body)
                    .and_then(|r| Fid::parse(&r.fid).ok())
                {
                    Some(fid) => self.check(
                        &self.connection_package_claims,
                        Key::Target(crypto::sha256(fid.to_string().as_bytes())),
                    ),
                    None => Ok(()),
                }
            }
            ("as", as_::ENQUEUE_CONNECTION) => {
                per_ip(&self.enqueue_connection)?;
                match payload::<EnqueueConnectionRequest>(body).and_then(|r| {
                    Fid::parse(&r.fid)
                        .ok()
                        .map(|fid| format!("{fid}\0{}", r.client_id))
                }) {
                    Some(target) => self.check(
                        &self.enqueue_connection_per_client,
                        Key::Target(crypto::sha256(target.as_bytes())),
                    ),
                    None => Ok(()),
                }
            }
            ("qs", qs::FETCH_KEY_PACKAGES) => {
                per_ip(&self.fetch_key_packages)?;
                match (ip, payload::<FetchKeyPackagesRequest>(body)) {
                    (Some(ip), Some(r)) => self.check(
                        &self.key_package_claims,
                        Key::Fetcher(ip, crypto::sha256(&r.friendship_token)),
                    ),
                    _ => Ok(()),
                }
            }
            ("federation", federation::ENQUEUE) => match federated_sender(body) {
                Some(domain) => self.check_peer(&domain, ip),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Check the per-address limit of lookups of other domains' users' certificates.
    pub fn check_remote_idcert(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        if !self.config.enabled {
            return Ok(());
        }
        match client {
            Some(ip) => self.check(&self.remote_idcert, Key::Ip(bucket_ip(ip))),
            None => Ok(()),
        }
    }

    /// Check the per-peer limit of federated requests claiming to come from `domain`,
    /// sent from `ip`. The bucket is per (domain, source IP): it is checked before the
    /// signature, so a forger elsewhere cannot use up a real peer's budget.
    pub fn check_peer(&self, domain: &Domain, ip: Option<IpAddr>) -> Result<(), Limited> {
        if !self.config.enabled {
            return Ok(());
        }
        let domain = crypto::sha256(domain.as_str().as_bytes());
        let ip = ip.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), bucket_ip);
        self.check(&self.federation_per_peer, Key::Fetcher(ip, domain))
    }
}

/// Whether `service/operation` is one a client performs on a remote server, counted per
/// foreign session.
fn session_scoped(service: &str, operation: &str) -> bool {
    matches!(
        (service, operation),
        ("as", as_::FETCH_CONNECTION_PACKAGE)
            | ("as", as_::ENQUEUE_CONNECTION)
            | ("qs", qs::FETCH_KEY_PACKAGES)
            | ("ds", _)
    )
}

/// The request struct inside an envelope, if both decode.
fn payload<T: tls_codec::Deserialize>(body: &[u8]) -> Option<T> {
    let envelope: RequestEnvelope = codec::decode(body, usize::MAX).ok()?;
    codec::decode(envelope.payload.as_slice(), usize::MAX).ok()
}

/// The claimed sender of a federated enqueue.
fn federated_sender(body: &[u8]) -> Option<Domain> {
    let message: FederatedEnqueue = codec::decode(body, usize::MAX).ok()?;
    let tbs: FederatedEnqueueTbs = codec::decode(message.tbs.as_slice(), usize::MAX).ok()?;
    Domain::parse(&tbs.sender).ok()
}

/// One hop of an `X-Forwarded-For` / `X-Real-IP` / `Forwarded` value.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let mut hop = hop.trim();
    // RFC 7239: `for=192.0.2.1;proto=https`, `for="[2001:db8::1]:4711"`.
    if let Some(rest) = hop
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("for=").or_else(|| p.strip_prefix("For=")))
    {
        hop = rest.trim_matches('"');
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .and_then(|(ip, _)| ip.parse::<IpAddr>().ok())
        .map(canonical)
}

/// The `[rate_limits]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub enabled: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
    pub register: Option<String>,
    pub create_user: Option<String>,
    pub request_group_id: Option<String>,
    pub fetch_connection_package: Option<String>,
    pub connection_package_claims: Option<String>,
    pub enqueue_connection: Option<String>,
    pub enqueue_connection_per_client: Option<String>,
    pub fetch_key_packages: Option<String>,
    pub key_package_claims: Option<String>,
    pub federation_per_peer: Option<String>,
    pub remote_idcert: Option<String>,
    pub session_operations: Option<String>,
    pub max_tracked_keys: Option<usize>,
}

/// The rate-limit flags and environment variables (flattened into the server's
/// command line).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// `on` or `off`: all rate limits.
    #[arg(long = "rate-limits", env = "PHOENIX_RATE_LIMITS")]
    pub enabled: Option<String>,
    /// Reverse proxies (addresses or networks) whose client-IP header is believed.
    #[arg(
        long = "trusted-proxy",
        env = "PHOENIX_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// The header trusted proxies put the client address in (e.g. x-forwarded-for).
    #[arg(long, env = "PHOENIX_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Registrations per client IP (N/second|minute|hour|day).
    #[arg(long = "rate-register", env = "PHOENIX_RATE_REGISTER")]
    pub register: Option<String>,
    /// QS user creations per client IP.
    #[arg(long = "rate-create-user", env = "PHOENIX_RATE_CREATE_USER")]
    pub create_user: Option<String>,
    /// Group id requests (`ds/request_group_id`) per client IP.
    #[arg(long = "rate-request-group-id", env = "PHOENIX_RATE_REQUEST_GROUP_ID")]
    pub request_group_id: Option<String>,
    /// Connection-package fetches per client IP.
    #[arg(
        long = "rate-fetch-connection-package",
        env = "PHOENIX_RATE_FETCH_CONNECTION_PACKAGE"
    )]
    pub fetch_connection_package: Option<String>,
    /// Connection-package claims per target user (from all clients together).
    #[arg(
        long = "rate-connection-package-claims",
        env = "PHOENIX_RATE_CONNECTION_PACKAGE_CLAIMS"
    )]
    pub connection_package_claims: Option<String>,
    /// Anonymous direct-queue enqueues per client IP.
    #[arg(
        long = "rate-enqueue-connection",
        env = "PHOENIX_RATE_ENQUEUE_CONNECTION"
    )]
    pub enqueue_connection: Option<String>,
    /// Anonymous direct-queue enqueues per target client.
    #[arg(
        long = "rate-enqueue-connection-per-client",
        env = "PHOENIX_RATE_ENQUEUE_CONNECTION_PER_CLIENT"
    )]
    pub enqueue_connection_per_client: Option<String>,
    /// Key-package fetches per client IP.
    #[arg(
        long = "rate-fetch-key-packages",
        env = "PHOENIX_RATE_FETCH_KEY_PACKAGES"
    )]
    pub fetch_key_packages: Option<String>,
    /// Key-package claims per fetcher (client IP) and target (friendship token).
    #[arg(
        long = "rate-key-package-claims",
        env = "PHOENIX_RATE_KEY_PACKAGE_CLAIMS"
    )]
    pub key_package_claims: Option<String>,
    /// Federated requests per peer domain.
    #[arg(
        long = "rate-federation-per-peer",
        env = "PHOENIX_RATE_FEDERATION_PER_PEER"
    )]
    pub federation_per_peer: Option<String>,
    /// Lookups of other domains' users' certificates per client IP.
    #[arg(long = "rate-remote-idcert", env = "PHOENIX_RATE_REMOTE_IDCERT")]
    pub remote_idcert: Option<String>,
    /// Operations by foreign clients per foreign session (bearer token).
    #[arg(
        long = "rate-session-operations",
        env = "PHOENIX_RATE_SESSION_OPERATIONS"
    )]
    pub session_operations: Option<String>,
    /// Most keys (IPs, targets) one limiter tracks.
    #[arg(long = "rate-limit-max-keys", env = "PHOENIX_RATE_LIMIT_MAX_KEYS")]
    pub max_tracked_keys: Option<usize>,
}

impl RateLimitConfig {
    /// Resolve flags and environment (first) and the config file's `[rate_limits]`.
    pub fn resolve(args: &RateLimitArgs, file: Option<&RateLimitFile>) -> Result<Self, String> {
        let empty = RateLimitFile::default();
        let file = file.unwrap_or(&empty);
        let mut config = Self::default();
        match args.enabled.as_deref() {
            Some("on" | "true" | "1") => config.enabled = true,
            Some("off" | "false" | "0") => config.enabled = false,
            Some(other) => {
                return Err(format!(
                    "invalid --rate-limits {other:?}: expected on or off"
                ));
            }
            None => config.enabled = file.enabled.unwrap_or(true),
        }
        let proxies: Vec<String> = if args.trusted_proxies.is_empty() {
            file.trusted_proxies.clone().unwrap_or_default()
        } else {
            args.trusted_proxies.clone()
        };
        config.trusted_proxies = proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?;
        config.client_ip_header = args
            .client_ip_header
            .clone()
            .or_else(|| file.client_ip_header.clone())
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        if let Some(header) = &config.client_ip_header {
            warp::http::HeaderName::from_str(header)
                .map_err(|_| format!("invalid client IP header name {header:?}"))?;
        }
        let pick = |arg: &Option<String>, file: &Option<String>, default: Rate| {
            arg.as_ref()
                .or(file.as_ref())
                .map_or(Ok(default), |s| s.parse::<Rate>())
        };
        config.register = pick(&args.register, &file.register, config.register)?;
        config.create_user = pick(&args.create_user, &file.create_user, config.create_user)?;
        config.request_group_id = pick(
            &args.request_group_id,
            &file.request_group_id,
            config.request_group_id,
        )?;
        config.fetch_connection_package = pick(
            &args.fetch_connection_package,
            &file.fetch_connection_package,
            config.fetch_connection_package,
        )?;
        config.connection_package_claims = pick(
            &args.connection_package_claims,
            &file.connection_package_claims,
            config.connection_package_claims,
        )?;
        config.enqueue_connection = pick(
            &args.enqueue_connection,
            &file.enqueue_connection,
            config.enqueue_connection,
        )?;
        config.enqueue_connection_per_client = pick(
            &args.enqueue_connection_per_client,
            &file.enqueue_connection_per_client,
            config.enqueue_connection_per_client,
        )?;
        config.fetch_key_packages = pick(
            &args.fetch_key_packages,
            &file.fetch_key_packages,
            config.fetch_key_packages,
        )?;
        config.key_package_claims = pick(
            &args.key_package_claims,
            &file.key_package_claims,
            config.key_package_claims,
        )?;
        config.federation_per_peer = pick(
            &args.federation_per_peer,
            &file.federation_per_peer,
            config.federation_per_peer,
        )?;
        config.remote_idcert = pick(
            &args.remote_idcert,
            &file.remote_idcert,
            config.remote_idcert,
        )?;
        config.session_operations = pick(
            &args.session_operations,
            &file.session_operations,
            config.session_operations,
        )?;
        if let Some(n) = args.max_tracked_keys.or(file.max_tracked_keys) {
            if n == 0 {
                return Err("rate_limits.max_tracked_keys must be greater than zero".into());
            }
            config.max_tracked_keys = n;
        }
        Ok(config)
    }
}

/// Add `Retry-After` to a 429 problem response.
pub fn with_retry_after(
    mut response: warp::reply::Response,
    limited: &Limited,
) -> warp::reply::Response {
    if let Ok(value) = warp::http::HeaderValue::from_str(&limited.retry_after_secs().to_string()) {
        response
            .headers_mut()
            .insert(warp::http::header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("10/hour".parse::<Rate>().unwrap().to_string(), "10/hour");
        assert_eq!("5/minute".parse::<Rate>().unwrap().period.as_secs(), 60);
        assert_eq!("20/90s".parse::<Rate>().unwrap().to_string(), "20/90s");
        for bad in [
            "",
            "0/hour",
            "x/hour",
            "10",
            "10/fortnight",
            "10/0s",
            "-1/hour",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let config = RateLimitConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            client_ip_header: Some("x-forwarded-for".into()),
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.9".parse().unwrap(),
        );
        let proxy = Some("10.0.0.1:443".parse().unwrap());
        let stranger = Some("5.5.5.5:443".parse().unwrap());
        // Through the proxy: the rightmost untrusted hop (the client cannot choose it).
        assert_eq!(limiter.client_ip(proxy, &headers), Some(ip("1.2.3.4")));
        // Directly: the header is ignored.
        assert_eq!(limiter.client_ip(stranger, &headers), Some(ip("5.5.5.5")));
        // No header: the proxy itself.
        assert_eq!(
            limiter.client_ip(proxy, &HeaderMap::new()),
            Some(ip("10.0.0.1"))
        );
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", "[2001:db8::1]:4711".parse().unwrap());
        assert_eq!(
            limiter.client_ip(proxy, &forwarded),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_hop("for=\"[2001:db8::2]:80\";proto=https"),
            Some(ip("2001:db8::2"))
        );
        assert_eq!(parse_hop("for=192.0.2.60"), Some(ip("192.0.2.60")));
    }

    #[test]
    fn limits_count_per_ip_and_answer_when_to_retry() {
        let config = RateLimitConfig {
            register: "2/hour".parse().unwrap(),
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        let a = Some(ip("192.0.2.1"));
        let b = Some(ip("2001:db8::1"));
        let b_same_64 = Some(ip("2001:db8::ffff"));
        for _ in 0..2 {
            limiter.check_operation(a, "as", "register", &[]).unwrap();
        }
        let limited = limiter
            .check_operation(a, "as", "register", &[])
            .unwrap_err();
        assert_eq!(limited.limit, "register");
        assert!(
            (1700..=1801).contains(&limited.retry_after_secs()),
            "{limited:?}"
        );
        // Other operations and other clients are unaffected; an IPv6 /64 is one client.
        limiter
            .check_operation(a, "as", "server_certificate", &[])
            .unwrap();
        limiter.check_operation(b, "as", "register", &[]).unwrap();
        limiter
            .check_operation(b_same_64, "as", "register", &[])
            .unwrap();
        assert!(limiter.check_operation(b, "as", "register", &[]).is_err());
        // Off is off.
        let off = RateLimiter::new(&RateLimitConfig {
            enabled: false,
            ..config
        });
        for _ in 0..10 {
            off.check_operation(a, "as", "register", &[]).unwrap();
        }
    }

    // Requirement: DS-GID-4
    #[test]
    fn group_id_requests_are_limited_per_ip() {
        let config = RateLimitConfig {
            request_group_id: "2/hour".parse().unwrap(),
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        let a = Some(ip("192.0.2.7"));
        for _ in 0..2 {
            limiter
                .check_operation(a, "ds", "request_group_id", &[])
                .unwrap();
        }
        let limited = limiter
            .check_operation(a, "ds", "request_group_id", &[])
            .unwrap_err();
        assert_eq!(limited.limit, "request_group_id");
        limiter
            .check_operation(Some(ip("192.0.2.8")), "ds", "request_group_id", &[])
            .unwrap();
    }

    #[test]
    fn sessions_have_their_own_bucket() {
        // Requirement: RL-SESSION-1
        let config = RateLimitConfig {
            session_operations: "2/hour".parse().unwrap(),
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        let a = Some(ip("192.0.2.1"));
        let (one, two) = (SessionKey([1; 32]), SessionKey([2; 32]));
        for _ in 0..2 {
            limiter
                .check_operation_in_session(Some(one), a, "ds", "send_message", &[])
                .unwrap();
        }
        let limited = limiter
            .check_operation_in_session(Some(one), a, "qs", "fetch_key_packages", &[])
            .unwrap_err();
        assert_eq!(limited.limit, "session_operations");
        // Another session from the same address, and the address without a session, are
        // not affected; operations outside the scope do not count.
        limiter
            .check_operation_in_session(Some(two), a, "ds", "send_message", &[])
            .unwrap();
        limiter
            .check_operation(a, "ds", "send_message", &[])
            .unwrap();
        limiter
            .check_operation_in_session(Some(one), a, "as", "server_certificate", &[])
            .unwrap();
    }

    #[test]
    fn memory_is_bounded() {
        let config = RateLimitConfig {
            register: "1/hour".parse().unwrap(),
            max_tracked_keys: 100,
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        for n in 0..10_000u32 {
            let _ = limiter.check_operation(Some(IpAddr::V4(n.into())), "as", "register", &[]);
        }
        // 100 keys and the overflow bucket; the flood shares it.
        assert!(limiter.tracked_keys() <= 101, "{}", limiter.tracked_keys());
        let fresh = Some(IpAddr::V4(4_000_000_000u32.into()));
        assert_eq!(
            limiter
                .check_operation(fresh, "as", "register", &[])
                .unwrap_err()
                .limit,
            "register"
        );
    }

    #[test]
    fn settings_resolve() {
        let args = RateLimitArgs {
            register: Some("3/minute".into()),
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..RateLimitArgs::default()
        };
        let file = RateLimitFile {
            register: Some("1/hour".into()),
            key_package_claims: Some("4/hour".into()),
            client_ip_header: Some("X-Forwarded-For".into()),
            ..RateLimitFile::default()
        };
        let config = RateLimitConfig::resolve(&args, Some(&file)).unwrap();
        assert_eq!(config.register.to_string(), "3/minute");
        assert_eq!(config.key_package_claims.to_string(), "4/hour");
        assert_eq!(config.client_ip_header.as_deref(), Some("x-forwarded-for"));
        assert_eq!(config.trusted_proxies.len(), 1);
        let bad = RateLimitArgs {
            enabled: Some("maybe".into()),
            ..RateLimitArgs::default()
        };
        assert!(RateLimitConfig::resolve(&bad, None).is_err());
    }
}
