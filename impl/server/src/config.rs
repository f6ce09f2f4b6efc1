//! Settings, from (highest precedence first) the command line, `PHOENIX_*` environment
//! variables, a TOML config file (`--config`), and defaults.
//!
//! | flag | env | TOML key | default |
//! |---|---|---|---|
//! | `--domain` | `PHOENIX_DOMAIN` | `domain` | (required) |
//! | `--listen` | `PHOENIX_LISTEN` | `listen` | `127.0.0.1:8080` |
//! | `--database-url` | `PHOENIX_DATABASE_URL` | `database_url` | SQLite file in the data dir |
//! | `--data-dir` | `PHOENIX_DATA_DIR` | `data_dir` | `./phoenix-data` |
//! | `--config` | `PHOENIX_CONFIG` | | none |
//! | `--log-format` | `PHOENIX_LOG_FORMAT` | `log_format` | `text` |
//! | `--max-body-bytes` | `PHOENIX_MAX_BODY_BYTES` | `max_body_bytes` | 1048576 |
//! | `--max-dequeue` | `PHOENIX_MAX_DEQUEUE` | `max_dequeue` | 500 |
//! | `--client-cert-lifetime-days` | `PHOENIX_CLIENT_CERT_LIFETIME_DAYS` | `client_cert_lifetime_days` | 30 (at most 60) |
//! | `--resolve DOMAIN=URL` (repeatable) | `PHOENIX_RESOLVE` (comma-separated) | `resolve = [...]` | https://DOMAIN |
//! | `--federation-mode` | `PHOENIX_FEDERATION_MODE` | `federation_mode` | `open` |
//! | `--federation-allow DOMAIN` (repeatable) | `PHOENIX_FEDERATION_ALLOW` | `federation_allow = [...]` | none |
//! | `--federation-block DOMAIN` (repeatable) | `PHOENIX_FEDERATION_BLOCK` | `federation_block = [...]` | none |
//! | `--ca-rotation-days` | `PHOENIX_CA_ROTATION_DAYS` | `ca_rotation_days` | off |
//! | `--ca-check-interval-secs` | `PHOENIX_CA_CHECK_INTERVAL_SECS` | `ca_check_interval_secs` | 60 (1 to 3600) |
//! | `--outbox-max-backoff-secs` | `PHOENIX_OUTBOX_MAX_BACKOFF_SECS` | `outbox_max_backoff_secs` | 60 |
//! | `--public-url` | `PHOENIX_PUBLIC_URL` | `public_url` | `https://DOMAIN` |
//! | `--idcert-cache-ttl-secs` | `PHOENIX_IDCERT_CACHE_TTL_SECS` | `idcert_cache_ttl_secs` | 3600 (3600 to 43200) |
//! | `--max-key-packages` | `PHOENIX_MAX_KEY_PACKAGES` | `max_key_packages` | 100 |
//! | `--max-connection-packages` | `PHOENIX_MAX_CONNECTION_PACKAGES` | `max_connection_packages` | 100 |
//! | `--max-group-size` | `PHOENIX_MAX_GROUP_SIZE` | `max_group_size` | 1024 |
//! | `--group-tokens-per-day` | `PHOENIX_GROUP_TOKENS_PER_DAY` | `group_tokens_per_day` | 100 |
//! | `--queue-ratchet-interval` | `PHOENIX_QUEUE_RATCHET_INTERVAL` | `queue_ratchet_interval` | 64 |
//! | `--max-csr-bytes` | `PHOENIX_MAX_CSR_BYTES` | `max_csr_bytes` | 4096 |
//! | `--max-connections` | `PHOENIX_MAX_CONNECTIONS` | `max_connections` | 512 |
//! | `--max-connections-per-ip` | `PHOENIX_MAX_CONNECTIONS_PER_IP` | `max_connections_per_ip` | 32 |
//! | `--header-read-timeout-secs` | `PHOENIX_HEADER_READ_TIMEOUT_SECS` | `header_read_timeout_secs` | 10 |
//! | `--body-read-timeout-secs` | `PHOENIX_BODY_READ_TIMEOUT_SECS` | `body_read_timeout_secs` | 30 |
//! | `--idle-timeout-secs` | `PHOENIX_IDLE_TIMEOUT_SECS` | `idle_timeout_secs` | 60 |
//! | `--tls-cert` | `PHOENIX_TLS_CERT` | `tls_cert` | none (plain HTTP) |
//! | `--tls-key` | `PHOENIX_TLS_KEY` | `tls_key` | none |
//! | `--allow-plain-http` | `PHOENIX_ALLOW_PLAIN_HTTP` | `allow_plain_http` | false |
//! | `--push-contact` | `PHOENIX_PUSH_CONTACT` | `push_contact` | `mailto:postmaster@DOMAIN` |
//! | `--push-allow-http` | `PHOENIX_PUSH_ALLOW_HTTP` | `push_allow_http` | false |
//! | `--tls-ca-file` | `PHOENIX_TLS_CA_FILE` | `tls_ca_file` | none (the public web roots only) |
//! | `--key-encryption-key-file` | `PHOENIX_KEY_ENCRYPTION_KEY_FILE` | `key_encryption_key_file` | `DATA_DIR/key-encryption-key` |
//! | | `PHOENIX_KEY_ENCRYPTION_KEY` (64 hex digits) | | |
//! | `--rate-limits`, `--rate-*`, `--trusted-proxy`, `--client-ip-header` | `PHOENIX_RATE_*`, ... | `[rate_limits]` table | see docs/limits.md |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use phoenix_types::ids::Domain;

use crate::federation::{FederationSettings, Policy};
use crate::server::Limits;

/// Command line (and environment) of `phoenix-server`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "phoenix-server",
    version,
    about = "The Phoenix homeserver (AS, QS and DS) over HTTP"
)]
pub struct Args {
    /// The home domain this server is authoritative for (an FQDN; localhost and names
    /// under .test are accepted for local use).
    #[arg(long, env = "PHOENIX_DOMAIN")]
    pub domain: Option<String>,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "PHOENIX_LISTEN")]
    pub listen: Option<String>,
    /// `postgres://...` for Postgres, `sqlite:PATH` for a given SQLite file; by default an
    /// embedded SQLite database in the data directory.
    #[arg(long, env = "PHOENIX_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory for the embedded database.
    #[arg(long, env = "PHOENIX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML config file with any of the settings above (snake_case keys).
    #[arg(long, env = "PHOENIX_CONFIG")]
    pub config: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, env = "PHOENIX_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "PHOENIX_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "PHOENIX_MAX_DEQUEUE")]
    pub max_dequeue: Option<u32>,
    #[arg(long, env = "PHOENIX_CLIENT_CERT_LIFETIME_DAYS")]
    pub client_cert_lifetime_days: Option<u64>,
    /// Reach DOMAIN's homeserver at URL instead of https://DOMAIN (repeatable, like curl's
    /// --resolve), e.g. `--resolve b.test=http://127.0.0.1:8081`.
    #[arg(
        long = "resolve",
        value_name = "DOMAIN=URL",
        env = "PHOENIX_RESOLVE",
        value_delimiter = ','
    )]
    pub resolve: Vec<String>,
    /// `open` (federate with everyone but --federation-block) or `allowlist` (only with
    /// --federation-allow).
    #[arg(long, env = "PHOENIX_FEDERATION_MODE")]
    pub federation_mode: Option<String>,
    /// A peer domain allowed in allowlist mode (repeatable).
    #[arg(
        long = "federation-allow",
        value_name = "DOMAIN",
        env = "PHOENIX_FEDERATION_ALLOW",
        value_delimiter = ','
    )]
    pub federation_allow: Vec<String>,
    /// A peer domain refused in open mode (repeatable).
    #[arg(
        long = "federation-block",
        value_name = "DOMAIN",
        env = "PHOENIX_FEDERATION_BLOCK",
        value_delimiter = ','
    )]
    pub federation_block: Vec<String>,
    /// Rotate the CA key automatically when the current CA is this many days old (off by
    /// default; `phoenix-server rotate-ca-key` rotates by hand).
    #[arg(long, env = "PHOENIX_CA_ROTATION_DAYS")]
    pub ca_rotation_days: Option<u64>,
    /// How often the server checks for a CA rotated by another process sharing the
    /// database and whether the scheduled rotation is due (seconds, 1 to 3600; default 60).
    #[arg(long, env = "PHOENIX_CA_CHECK_INTERVAL_SECS")]
    pub ca_check_interval_secs: Option<u64>,
    /// Cap of the outbox's exponential retry backoff for unreachable peers (seconds).
    #[arg(long, env = "PHOENIX_OUTBOX_MAX_BACKOFF_SECS")]
    pub outbox_max_backoff_secs: Option<u64>,
    /// Where clients reach this server, as an origin (`https://host[:port]`), published in
    /// /.well-known/polyproto-core; by default https://DOMAIN.
    #[arg(long, env = "PHOENIX_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long other servers and clients may cache the certificates this server serves on
    /// the polyproto routes (seconds, 3600 to 43200).
    #[arg(long, env = "PHOENIX_IDCERT_CACHE_TTL_SECS")]
    pub idcert_cache_ttl_secs: Option<u64>,
    /// Most key packages per upload.
    #[arg(long, env = "PHOENIX_MAX_KEY_PACKAGES")]
    pub max_key_packages: Option<usize>,
    /// Most connection packages per upload.
    #[arg(long, env = "PHOENIX_MAX_CONNECTION_PACKAGES")]
    pub max_connection_packages: Option<usize>,
    /// Most members per group.
    #[arg(long, env = "PHOENIX_MAX_GROUP_SIZE")]
    pub max_group_size: Option<usize>,
    /// Group-creation tokens one client may be issued per UTC day (each buys one group;
    /// connecting to a contact creates one too).
    #[arg(long, env = "PHOENIX_GROUP_TOKENS_PER_DAY")]
    pub group_tokens_per_day: Option<u32>,
    /// Fresh randomness is mixed into each client queue's encryption chain every this many
    /// entries (post-compromise security of queues at rest).
    #[arg(long, env = "PHOENIX_QUEUE_RATCHET_INTERVAL")]
    pub queue_ratchet_interval: Option<u64>,
    /// Largest CSR accepted at registration (bytes, at most 4096).
    #[arg(long, env = "PHOENIX_MAX_CSR_BYTES")]
    pub max_csr_bytes: Option<usize>,
    /// Most open connections in total (more are closed at accept).
    #[arg(long, env = "PHOENIX_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one address (IPv6: one /64; trusted proxies count only
    /// against the total).
    #[arg(long, env = "PHOENIX_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Time for a request head to arrive, also between keep-alive requests (seconds).
    #[arg(long, env = "PHOENIX_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Time for a request body to arrive (seconds; 408 REQUEST_TIMEOUT beyond).
    #[arg(long, env = "PHOENIX_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Close a connection on which nothing moved for this long (seconds).
    #[arg(long, env = "PHOENIX_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Serve HTTPS with this certificate chain (PEM; reloaded with the key on SIGHUP).
    #[arg(long, env = "PHOENIX_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PHOENIX_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address, for a TLS-terminating reverse proxy in
    /// front (without TLS and without this flag, only loopback addresses are served).
    #[arg(long, env = "PHOENIX_ALLOW_PLAIN_HTTP")]
    pub allow_plain_http: bool,
    /// How push services reach this server's operator: the VAPID `sub` claim of every push
    /// notification (`mailto:ADDRESS` or an `https://` URL).
    #[arg(long, env = "PHOENIX_PUSH_CONTACT", value_name = "URI")]
    pub push_contact: Option<String>,
    /// Accept plain `http://` push endpoints (a UnifiedPush distributor on a private
    /// network, tests); otherwise clients may set only `https://` endpoints.
    #[arg(long, env = "PHOENIX_PUSH_ALLOW_HTTP")]
    pub push_allow_http: bool,
    /// More CA certificates (PEM) to trust for peers' HTTPS, besides the public web roots
    /// (a private CA, or tests).
    #[arg(long, env = "PHOENIX_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// The key-encryption key the server's private keys are sealed under in the database
    /// (32 bytes, or 64 hex digits). Or the key itself in PHOENIX_KEY_ENCRYPTION_KEY. By
    /// default DATA_DIR/key-encryption-key, created on first start.
    #[arg(long, env = "PHOENIX_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub rate_limits: crate::ratelimit::RateLimitArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Maintenance commands (without one, the server runs).
#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the server (the default).
    Run,
    /// Create a new CA key and certificate and make it current, then exit. Earlier CA
    /// certificates stay in the history, so certificates they issued keep verifying; a
    /// running server sharing the database issues, serves and signs with the new CA from its
    /// next such request on (its discovery document within `--ca-check-interval-secs`).
    #[command(alias = "rotate-ca")]
    RotateCaKey,
    /// Administer users, certificates, the outbox and peers against the configured
    /// database (see `phoenix-server admin --help`; exit codes in docs/operations.md).
    Admin(crate::admin::AdminArgs),
    /// Print the effective configuration and where each value came from (flag, env,
    /// file, default), secrets redacted, then exit.
    CheckConfig,
}

/// The TOML config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub domain: Option<String>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_dequeue: Option<u32>,
    pub client_cert_lifetime_days: Option<u64>,
    pub resolve: Option<Vec<String>>,
    pub federation_mode: Option<String>,
    pub federation_allow: Option<Vec<String>>,
    pub federation_block: Option<Vec<String>>,
    pub outbox_max_backoff_secs: Option<u64>,
    pub ca_rotation_days: Option<u64>,
    pub ca_check_interval_secs: Option<u64>,
    pub public_url: Option<String>,
    pub idcert_cache_ttl_secs: Option<u64>,
    pub max_key_packages: Option<usize>,
    pub max_connection_packages: Option<usize>,
    pub max_group_size: Option<usize>,
    pub group_tokens_per_day: Option<u32>,
    pub queue_ratchet_interval: Option<u64>,
    pub max_csr_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_plain_http: Option<bool>,
    pub push_contact: Option<String>,
    pub push_allow_http: Option<bool>,
    pub tls_ca_file: Option<PathBuf>,
    pub key_encryption_key_file: Option<PathBuf>,
    pub rate_limits: Option<crate::ratelimit::RateLimitFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub domain: Domain,
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub limits: Limits,
    pub federation: FederationSettings,
    /// HTTPS: the certificate chain and key files; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    pub allow_plain_http: bool,
    /// Where the key-encryption key comes from ([`crate::keys_at_rest`]).
    pub key_source: crate::keys_at_rest::KeySource,
    pub command: Command,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "no domain given: pass --domain, set PHOENIX_DOMAIN, or put domain = \"...\" in the config file"
    )]
    MissingDomain,
    #[error("{0}")]
    Domain(String),
    #[error("invalid listen address {0:?}: expected IP:PORT, e.g. 127.0.0.1:8080")]
    Listen(String),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid log format {0:?}: expected text or json")]
    LogFormat(String),
    #[error("invalid push contact {0:?}: expected mailto:ADDRESS or an https:// URL (RFC 8292)")]
    PushContact(String),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("{0}")]
    Resolve(#[from] phoenix_types::discovery::ResolveError),
    #[error("invalid federation mode {0:?}: expected open or allowlist")]
    FederationMode(String),
    #[error("invalid peer domain {0:?} in the federation policy")]
    PeerDomain(String),
    #[error("invalid public_url: {0}")]
    PublicUrl(String),
    #[error("idcert_cache_ttl_secs must be between 3600 (1 hour) and 43200 (12 hours), got {0}")]
    CacheTtl(u64),
    #[error("{0}")]
    RateLimits(String),
    #[error(
        "client_cert_lifetime_days is {0}, but client certificates live at most 60 days (polyproto); set 60 or less"
    )]
    CertLifetime(u64),
    #[error("ca_check_interval_secs must be between 1 and 3600, got {0}")]
    CaCheckInterval(u64),
    #[error("max_connections_per_ip ({per_ip}) must not exceed max_connections ({total})")]
    ConnectionCaps { per_ip: usize, total: usize },
    #[error("tls_cert and tls_key go together: {0} is missing")]
    TlsHalf(&'static str),
    #[error(
        "refusing to serve plain HTTP on {0}, which is not a loopback address: give --tls-cert and --tls-key (docs/operations.md), or --allow-plain-http when a TLS-terminating reverse proxy is in front"
    )]
    PlainHttp(SocketAddr),
}

impl Settings {
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let edge = edge_limits(&args, &file)?;
        let mut federation = federation_settings(
            &args.resolve,
            &args.federation_mode,
            &args.federation_allow,
            &args.federation_block,
            args.outbox_max_backoff_secs,
            &file,
        )?;
        let domain = args
            .domain
            .or(file.domain)
            .ok_or(ConfigError::MissingDomain)?;
        let domain = Domain::parse(&domain).map_err(|e| ConfigError::Domain(e.to_string()))?;
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen.parse().map_err(|_| ConfigError::Listen(listen))?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./phoenix-data"));
        let database_url = args
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| sqlite_url(&data_dir));
        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::LogFormat(other.into())),
        };
        let mut limits = Limits::default();
        if let Some(v) = args.max_body_bytes.or(file.max_body_bytes) {
            limits.max_body = nonzero(v, "max_body_bytes")?;
        }
        if let Some(v) = args.max_dequeue.or(file.max_dequeue) {
            limits.max_dequeue = nonzero(v, "max_dequeue")?;
        }
        if let Some(days) = args
            .client_cert_lifetime_days
            .or(file.client_cert_lifetime_days)
        {
            // Requirement: AS-CERT-LIFE-1
            if days.saturating_mul(24 * 3600) > crate::server::MAX_CLIENT_CERT_LIFETIME {
                return Err(ConfigError::CertLifetime(days));
            }
            limits.client_cert_lifetime =
                nonzero(days, "client_cert_lifetime_days")?.saturating_mul(24 * 3600);
        }
        if let Some(url) = args.public_url.or(file.public_url) {
            federation.polyproto.public_url =
                Some(crate::polyproto::parse_public_url(&url).map_err(ConfigError::PublicUrl)?);
        }
        if let Some(ttl) = args.idcert_cache_ttl_secs.or(file.idcert_cache_ttl_secs) {
            if !(crate::polyproto::MIN_CACHE_TTL..=crate::polyproto::MAX_CACHE_TTL).contains(&ttl) {
                return Err(ConfigError::CacheTtl(ttl));
            }
            federation.polyproto.idcert_cache_ttl = ttl;
        }
        if let Some(days) = args.ca_rotation_days.or(file.ca_rotation_days) {
            limits.ca_rotation = Some(nonzero(days, "ca_rotation_days")?.saturating_mul(24 * 3600));
        }
        // Requirement: AS-CA-ROT-2
        if let Some(secs) = args.ca_check_interval_secs.or(file.ca_check_interval_secs) {
            if !(1..=3600).contains(&secs) {
                return Err(ConfigError::CaCheckInterval(secs));
            }
            limits.ca_check_interval = secs;
        }
        if let Some(v) = args.max_key_packages.or(file.max_key_packages) {
            limits.max_key_packages = nonzero(v, "max_key_packages")?;
        }
        if let Some(v) = args
            .max_connection_packages
            .or(file.max_connection_packages)
        {
            limits.max_connection_packages = nonzero(v, "max_connection_packages")?;
        }
        if let Some(v) = args.max_group_size.or(file.max_group_size) {
            limits.max_group_size = nonzero(v, "max_group_size")?;
        }
        if let Some(v) = args.group_tokens_per_day.or(file.group_tokens_per_day) {
            limits.group_tokens_per_day = nonzero(v, "group_tokens_per_day")?;
        }
        if let Some(v) = args.queue_ratchet_interval.or(file.queue_ratchet_interval) {
            limits.queue_sealer.update_interval = nonzero(v, "queue_ratchet_interval")?;
        }
        if let Some(v) = args.max_csr_bytes.or(file.max_csr_bytes) {
            limits.max_csr_bytes =
                nonzero(v, "max_csr_bytes")?.min(phoenix_types::certs::MAX_CERT_LEN);
        }
        limits.rate_limits = crate::ratelimit::RateLimitConfig::resolve(
            &args.rate_limits,
            file.rate_limits.as_ref(),
        )
        .map_err(ConfigError::RateLimits)?;
        limits.edge = edge;
        // Requirement: OPS-TLS-1
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::TlsHalf("tls_key")),
            (None, Some(_)) => return Err(ConfigError::TlsHalf("tls_cert")),
        };
        let allow_plain_http = args.allow_plain_http || file.allow_plain_http.unwrap_or(false);
        if tls.is_none() && !allow_plain_http && !listen.ip().is_loopback() {
            return Err(ConfigError::PlainHttp(listen));
        }
        federation.tls_ca_file = args.tls_ca_file.or(file.tls_ca_file);
        // Requirement: QS-PUSH-2
        limits.push.allow_http = args.push_allow_http || file.push_allow_http.unwrap_or(false);
        if let Some(contact) = args.push_contact.or(file.push_contact) {
            if !(contact.starts_with("mailto:") || contact.starts_with("https://"))
                || contact.len() < 10
            {
                return Err(ConfigError::PushContact(contact));
            }
            limits.push.contact = Some(contact);
        }
        // Requirement: OPS-KEK-1
        let key_source = if env_set(crate::keys_at_rest::ENV) {
            crate::keys_at_rest::KeySource::Env
        } else if let Some(path) = args
            .key_encryption_key_file
            .or(file.key_encryption_key_file)
        {
            crate::keys_at_rest::KeySource::File(path)
        } else {
            crate::keys_at_rest::KeySource::DataDir(
                data_dir.join(crate::keys_at_rest::DEFAULT_FILE),
            )
        };
        Ok(Self {
            domain,
            listen,
            database_url,
            data_dir,
            log_format,
            limits,
            federation,
            tls,
            allow_plain_http,
            key_source,
            command: args.command.unwrap_or(Command::Run),
        })
    }

    /// Whether the database is the embedded SQLite file in the data directory.
    pub fn uses_data_dir(&self) -> bool {
        self.database_url == sqlite_url(&self.data_dir)
    }
}

/// Whether the environment variable `name` is set and not empty.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Lists from the command line (or environment) replace those of the config file.
fn list(cli: &[String], file: &Option<Vec<String>>) -> Vec<String> {
    if cli.is_empty() {
        file.clone().unwrap_or_default()
    } else {
        cli.to_vec()
    }
}

fn domains(entries: Vec<String>) -> Result<std::collections::BTreeSet<Domain>, ConfigError> {
    entries
        .into_iter()
        .map(|d| Domain::parse(&d).map_err(|_| ConfigError::PeerDomain(d)))
        .collect()
}

fn federation_settings(
    resolve: &[String],
    mode: &Option<String>,
    allow: &[String],
    block: &[String],
    max_backoff: Option<u64>,
    file: &FileConfig,
) -> Result<FederationSettings, ConfigError> {
    let mut settings = FederationSettings::default();
    let resolve = list(resolve, &file.resolve);
    settings.resolver =
        phoenix_types::discovery::Resolver::parse(resolve.iter().map(String::as_str))?;
    let allow = domains(list(allow, &file.federation_allow))?;
    let block = domains(list(block, &file.federation_block))?;
    settings.policy = match mode.clone().or(file.federation_mode.clone()).as_deref() {
        None | Some("open") => Policy::Open { blocked: block },
        Some("allowlist") => Policy::Allowlist { allowed: allow },
        Some(other) => return Err(ConfigError::FederationMode(other.into())),
    };
    if let Some(secs) = max_backoff.or(file.outbox_max_backoff_secs) {
        settings.max_backoff = nonzero(secs, "outbox_max_backoff_secs")?;
    }
    Ok(settings)
}

/// The connection caps and timeouts (see [`crate::edge`]).
fn edge_limits(args: &Args, file: &FileConfig) -> Result<crate::edge::EdgeLimits, ConfigError> {
    use std::time::Duration;
    let mut edge = crate::edge::EdgeLimits::default();
    if let Some(v) = args.max_connections.or(file.max_connections) {
        edge.max_connections = nonzero(v, "max_connections")?;
    }
    if let Some(v) = args.max_connections_per_ip.or(file.max_connections_per_ip) {
        edge.max_connections_per_ip = nonzero(v, "max_connections_per_ip")?;
    }
    if edge.max_connections_per_ip > edge.max_connections {
        return Err(ConfigError::ConnectionCaps {
            per_ip: edge.max_connections_per_ip,
            total: edge.max_connections,
        });
    }
    if let Some(v) = args
        .header_read_timeout_secs
        .or(file.header_read_timeout_secs)
    {
        edge.header_read_timeout = Duration::from_secs(nonzero(v, "header_read_timeout_secs")?);
    }
    if let Some(v) = args.body_read_timeout_secs.or(file.body_read_timeout_secs) {
        edge.body_read_timeout = Duration::from_secs(nonzero(v, "body_read_timeout_secs")?);
    }
    if let Some(v) = args.idle_timeout_secs.or(file.idle_timeout_secs) {
        edge.idle_timeout = Duration::from_secs(nonzero(v, "idle_timeout_secs")?);
    }
    Ok(edge)
}

fn nonzero<T: PartialEq + Default>(value: T, what: &'static str) -> Result<T, ConfigError> {
    if value == T::default() {
        Err(ConfigError::Zero(what))
    } else {
        Ok(value)
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The URL of the embedded SQLite database in `data_dir`.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("phoenix.db").display())
}

/// The database URL with any password replaced, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Requirement: OPS-TLS-1
    #[test]
    fn plain_http_only_on_loopback_unless_allowed() {
        let args = |listen: &str, allow: bool, tls: bool| Args {
            domain: Some("a.test".into()),
            listen: Some(listen.into()),
            allow_plain_http: allow,
            tls_cert: tls.then(|| "c.pem".into()),
            tls_key: tls.then(|| "k.pem".into()),
            ..Args::default()
        };
        for loopback in ["127.0.0.1:0", "[::1]:8080"] {
            let s = Settings::resolve(args(loopback, false, false)).unwrap();
            assert!(s.tls.is_none());
        }
        let refused = Settings::resolve(args("0.0.0.0:8080", false, false));
        match refused {
            Err(e @ ConfigError::PlainHttp(_)) => {
                assert!(e.to_string().contains("--allow-plain-http"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(Settings::resolve(args("0.0.0.0:8080", true, false)).is_ok());
        let tls = Settings::resolve(args("0.0.0.0:8443", false, true)).unwrap();
        assert_eq!(tls.tls.unwrap().cert, PathBuf::from("c.pem"));
        let half = Settings::resolve(Args {
            tls_key: None,
            ..args("0.0.0.0:8443", false, true)
        });
        assert!(matches!(half, Err(ConfigError::TlsHalf("tls_key"))));
    }

    #[test]
    fn precedence_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "domain = \"a.test\"\nlisten = \"127.0.0.1:9000\"\nmax_dequeue = 7\n",
        )
        .unwrap();
        let settings = Settings::resolve(Args {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9001".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(settings.domain.as_str(), "a.test");
        assert_eq!(settings.listen.port(), 9001);
        assert_eq!(settings.limits.max_dequeue, 7);
        assert!(settings.uses_data_dir());

        assert!(matches!(
            Settings::resolve(Args::default()),
            Err(ConfigError::MissingDomain)
        ));
        let bad = Settings::resolve(Args {
            domain: Some("not a domain".into()),
            ..Args::default()
        });
        assert!(matches!(bad, Err(ConfigError::Domain(_))));
        std::fs::write(&file, "domian = \"a.test\"\n").unwrap();
        let typo = Settings::resolve(Args {
            config: Some(file),
            ..Args::default()
        });
        assert!(matches!(typo, Err(ConfigError::ParseFile { .. })));
    }

    // Requirement: EDGE-2 (the caps and timeouts come from flag, environment or file)
    #[test]
    fn edge_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "domain = \"a.test\"\nmax_connections = 100\nmax_connections_per_ip = 10\nidle_timeout_secs = 5\n",
        )
        .unwrap();
        let settings = Settings::resolve(Args {
            config: Some(file.clone()),
            max_connections_per_ip: Some(20),
            header_read_timeout_secs: Some(3),
            ..Args::default()
        })
        .unwrap();
        let edge = &settings.limits.edge;
        assert_eq!(
            (edge.max_connections, edge.max_connections_per_ip),
            (100, 20)
        );
        assert_eq!(edge.header_read_timeout, std::time::Duration::from_secs(3));
        assert_eq!(edge.idle_timeout, std::time::Duration::from_secs(5));
        assert_eq!(
            edge.body_read_timeout,
            crate::edge::EdgeLimits::default().body_read_timeout
        );
        let over = Settings::resolve(Args {
            config: Some(file.clone()),
            max_connections_per_ip: Some(101),
            ..Args::default()
        });
        assert!(matches!(
            over,
            Err(ConfigError::ConnectionCaps {
                per_ip: 101,
                total: 100
            })
        ));
        let zero = Settings::resolve(Args {
            config: Some(file),
            body_read_timeout_secs: Some(0),
            ..Args::default()
        });
        assert!(matches!(
            zero,
            Err(ConfigError::Zero("body_read_timeout_secs"))
        ));
    }

    #[test]
    fn polyproto_settings() {
        let settings = Settings::resolve(Args {
            domain: Some("a.test".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            settings.federation.polyproto,
            crate::polyproto::Settings::default()
        );
        let settings = Settings::resolve(Args {
            domain: Some("a.test".into()),
            public_url: Some("https://chat.a.test:8443/".into()),
            idcert_cache_ttl_secs: Some(43_200),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            settings.federation.polyproto.public_url.as_deref(),
            Some("https://chat.a.test:8443")
        );
        assert_eq!(settings.federation.polyproto.idcert_cache_ttl, 43_200);
        for (url, ttl) in [("https://a.test/api", None), ("https://a.test", Some(60))] {
            let bad = Settings::resolve(Args {
                domain: Some("a.test".into()),
                public_url: Some(url.into()),
                idcert_cache_ttl_secs: ttl,
                ..Args::default()
            });
            assert!(
                matches!(
                    bad,
                    Err(ConfigError::PublicUrl(_) | ConfigError::CacheTtl(60))
                ),
                "{url} {ttl:?}"
            );
        }
    }

    // Requirement: AS-CERT-LIFE-1
    #[test]
    fn client_cert_lifetime_above_60_days_is_refused() {
        let with = |days: u64| {
            Settings::resolve(Args {
                domain: Some("a.test".into()),
                client_cert_lifetime_days: Some(days),
                ..Args::default()
            })
        };
        assert_eq!(
            with(60).unwrap().limits.client_cert_lifetime,
            crate::server::MAX_CLIENT_CERT_LIFETIME
        );
        let refused = with(61).unwrap_err();
        assert!(matches!(refused, ConfigError::CertLifetime(61)));
        assert!(refused.to_string().contains("at most 60 days"), "{refused}");
        assert!(matches!(with(u64::MAX), Err(ConfigError::CertLifetime(_))));
    }

    // Requirement: AS-CA-ROT-2
    #[test]
    fn ca_check_interval_is_bounded() {
        let with = |secs: u64| {
            Settings::resolve(Args {
                domain: Some("a.test".into()),
                ca_check_interval_secs: Some(secs),
                ..Args::default()
            })
        };
        assert_eq!(with(1).unwrap().limits.ca_check_interval, 1);
        assert!(matches!(with(0), Err(ConfigError::CaCheckInterval(0))));
        assert!(matches!(
            with(3601),
            Err(ConfigError::CaCheckInterval(3601))
        ));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redacted("sqlite://x"), "sqlite://x");
    }
}

/// Where a setting's value came from, for `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Env => "env",
            Self::File => "file",
            Self::Default => "default",
        }
    }
}

/// Every setting with a flag, an environment variable and a TOML key of the same name
/// (the rate-limit table is shown as one entry).
pub const KEYS: &[&str] = &[
    "domain",
    "listen",
    "database_url",
    "data_dir",
    "log_format",
    "max_body_bytes",
    "max_dequeue",
    "client_cert_lifetime_days",
    "resolve",
    "federation_mode",
    "federation_allow",
    "federation_block",
    "ca_rotation_days",
    "ca_check_interval_secs",
    "outbox_max_backoff_secs",
    "public_url",
    "idcert_cache_ttl_secs",
    "max_key_packages",
    "max_connection_packages",
    "max_group_size",
    "group_tokens_per_day",
    "queue_ratchet_interval",
    "max_csr_bytes",
    "max_connections",
    "max_connections_per_ip",
    "header_read_timeout_secs",
    "body_read_timeout_secs",
    "idle_timeout_secs",
    "tls_cert",
    "tls_key",
    "allow_plain_http",
    "push_contact",
    "push_allow_http",
    "tls_ca_file",
    "key_encryption_key_file",
    "rate_limits",
];

// Requirement: OPS-CONFIG-1
/// `check-config`: one line per setting, `key = value (source)`, from the command line
/// `argv`, the environment `env` and the config file named there. Values that are secrets
/// (a database password) are redacted; defaults are shown as the effective value where the
/// resolved settings have one.
pub fn explain(
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    settings: &Settings,
) -> Result<Vec<(String, String, Source)>, ConfigError> {
    let config_path = flag_value(argv, "config").or_else(|| env("PHOENIX_CONFIG"));
    let file: toml::Table = match &config_path {
        Some(path) => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                path,
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    let l = &settings.limits;
    let mut lines = Vec::new();
    if let Some(path) = &config_path {
        let source = if flag_value(argv, "config").is_some() {
            Source::Flag
        } else {
            Source::Env
        };
        lines.push(("config".to_string(), path.clone(), source));
    }
    for key in KEYS {
        let flag = key.replace('_', "-");
        let env_name = format!("PHOENIX_{}", key.to_ascii_uppercase());
        let (raw, source) = if (*key == "allow_plain_http" || *key == "push_allow_http")
            && argv.iter().any(|a| *a == format!("--{flag}"))
        {
            (Some("true".into()), Source::Flag)
        } else if *key == "key_encryption_key_file"
            && settings.key_source == crate::keys_at_rest::KeySource::Env
        {
            (Some("true".into()), Source::Env)
        } else if let Some(v) = flag_value(argv, &flag) {
            (Some(v), Source::Flag)
        } else if let Some(v) = env(&env_name) {
            (Some(v), Source::Env)
        } else if let Some(v) = file.get(*key) {
            (Some(v.to_string()), Source::File)
        } else {
            (None, Source::Default)
        };
        let value = match *key {
            "domain" => settings.domain.to_string(),
            "listen" => settings.listen.to_string(),
            "database_url" => redacted(&settings.database_url),
            "data_dir" => settings.data_dir.display().to_string(),
            "log_format" => format!("{:?}", settings.log_format).to_ascii_lowercase(),
            "max_body_bytes" => l.max_body.to_string(),
            "max_dequeue" => l.max_dequeue.to_string(),
            "client_cert_lifetime_days" => (l.client_cert_lifetime / 86_400).to_string(),
            "ca_rotation_days" => l
                .ca_rotation
                .map(|s| (s / 86_400).to_string())
                .unwrap_or_else(|| "off".into()),
            "ca_check_interval_secs" => l.ca_check_interval.to_string(),
            "outbox_max_backoff_secs" => settings.federation.max_backoff.to_string(),
            "idcert_cache_ttl_secs" => settings.federation.polyproto.idcert_cache_ttl.to_string(),
            "max_key_packages" => l.max_key_packages.to_string(),
            "max_connection_packages" => l.max_connection_packages.to_string(),
            "max_group_size" => l.max_group_size.to_string(),
            "group_tokens_per_day" => l.group_tokens_per_day.to_string(),
            "queue_ratchet_interval" => l.queue_sealer.update_interval.to_string(),
            "max_csr_bytes" => l.max_csr_bytes.to_string(),
            "max_connections" => l.edge.max_connections.to_string(),
            "max_connections_per_ip" => l.edge.max_connections_per_ip.to_string(),
            "header_read_timeout_secs" => l.edge.header_read_timeout.as_secs().to_string(),
            "body_read_timeout_secs" => l.edge.body_read_timeout.as_secs().to_string(),
            "idle_timeout_secs" => l.edge.idle_timeout.as_secs().to_string(),
            "tls_cert" => settings
                .tls
                .as_ref()
                .map(|t| t.cert.display().to_string())
                .unwrap_or_else(|| "none (plain HTTP)".into()),
            "tls_key" => settings
                .tls
                .as_ref()
                .map(|t| t.key.display().to_string())
                .unwrap_or_else(|| "none".into()),
            "allow_plain_http" => settings.allow_plain_http.to_string(),
            "push_allow_http" => l.push.allow_http.to_string(),
            "push_contact" => l
                .push
                .contact
                .clone()
                .unwrap_or_else(|| format!("mailto:postmaster@{}", settings.domain)),
            "tls_ca_file" => settings
                .federation
                .tls_ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
            "key_encryption_key_file" => settings.key_source.describe(),
            _ => match raw {
                Some(_) if *key == "rate_limits" && source == Source::File => {
                    "[rate_limits] table".to_string()
                }
                Some(v) => v,
                None => "(default, see packaging/phoenix-server.toml)".to_string(),
            },
        };
        lines.push((key.to_string(), value, source));
    }
    Ok(lines)
}

/// The value of `--name VALUE` or `--name=VALUE` in `argv` (the last one wins).
fn flag_value(argv: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut found = None;
    let mut iter = argv.iter().peekable();
    while let Some(arg) = iter.next() {
        if arg == &long {
            found = iter.peek().map(|v| v.to_string());
        } else if let Some(v) = arg.strip_prefix(&with_eq) {
            found = Some(v.to_string());
        }
    }
    found
}
