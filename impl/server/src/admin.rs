//! `phoenix-server admin ...`: operator commands against the configured database (the same
//! `--database-url` / `--data-dir` / config resolution as the server), safe to run while
//! the server runs. Each command prints text, or one JSON document with `--json`.
//!
//! Exit codes: 0 done; 1 the database failed (the message says why); 2 bad arguments or
//! configuration; 3 the user, certificate or destination named does not exist.
//!
//! Invitation codes are not here yet: they come with the accounts issue. Key rotation here
//! is the key-encryption key's (`keys change-kek`); the CA's is `rotate-ca-key`; the QS
//! signing and queue-config keys cannot be rotated yet.

use serde::Serialize;

use crate::polyproto::decimal;
use crate::store::Store;
use crate::store::admin::{AdminStore, IssuedCertificate, OutboxDestination, UserSummary};
use crate::store::sessions::{CertificateRecord, SessionStore};

/// `admin` arguments.
#[derive(Debug, Clone, clap::Args, PartialEq, Eq)]
pub struct AdminArgs {
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum AdminCommand {
    /// Users of this server and their clients.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Client certificates this server issued.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Federated messages waiting for delivery, per destination.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Federation peers known from the database.
    #[command(subcommand)]
    Peers(PeersCommand),
    /// The server's private keys at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum KeysCommand {
    /// Re-seal every private key in the database (CA signing keys, retired ones included;
    /// the QS signing, group-token and queue-config keys) under the key-encryption key in
    /// FILE (32 raw bytes or 64 hex digits, mode 0600), in one transaction. Stop every
    /// server process on this database first (a running one still holds the old key), then
    /// configure the new key and start them again: the old key opens nothing any more.
    ChangeKek {
        #[arg(long, value_name = "FILE")]
        new_key_file: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum UsersCommand {
    /// Every user: FID, creation time, clients, suspension.
    List,
    /// One user: clients and every certificate issued to them (serial, validity,
    /// revocation).
    Show { fid: String },
    /// Refuse the user's requests (USER_SUSPENDED) until `unsuspend`.
    Suspend { fid: String },
    /// Lift a suspension.
    Unsuspend { fid: String },
    /// Delete the user, their clients, connection packages and direct queues (their
    /// issued certificates stay on record, their groups and queues are pseudonymous and
    /// expire on their own).
    Delete { fid: String },
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum CertsCommand {
    /// Revoke a client certificate by serial (hex as `users show` prints it, or decimal
    /// as the polyproto routes print it): it authenticates nothing from now on, and the
    /// polyproto certificate routes serve it with `invalidatedAt`.
    Revoke { serial: String },
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum OutboxCommand {
    /// Per destination: pending entries, oldest, next attempt, attempts, last error.
    List,
    /// Make the pending entries (of DOMAIN, or all) due now; the server's worker delivers
    /// them within a second.
    Retry { domain: Option<String> },
}

#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum PeersCommand {
    /// Peers known from the database: outbox destinations and the domains of cached
    /// foreign certificates (discovery documents and CA certificates of peers are cached
    /// in the running server's memory only).
    List,
}

/// A failed admin command: the message and the exit code.
#[derive(Debug)]
pub struct AdminError {
    pub code: u8,
    pub message: String,
}

fn db(e: crate::store::StoreError) -> AdminError {
    AdminError {
        code: 1,
        message: format!("database: {}", crate::store::admin::describe(&e)),
    }
}

fn not_found(message: String) -> AdminError {
    AdminError { code: 3, message }
}

#[derive(Serialize)]
struct CertView {
    serial: String,
    serial_decimal: String,
    client_id: String,
    not_before: u64,
    not_after: u64,
    revoked_at: Option<u64>,
}

#[derive(Serialize)]
struct UserView {
    #[serde(flatten)]
    user: UserSummary,
    client_ids: Vec<String>,
    certificates: Vec<CertView>,
}

#[derive(Serialize)]
struct PeerView {
    domain: String,
    outbox_pending: u64,
    cached_certificates: u64,
    cache_valid_until: Option<u64>,
}

/// The configured key-encryption key, loaded only by the commands that need it.
pub type KekLoader<'a> =
    &'a (dyn Fn() -> Result<crate::keys_at_rest::KeyEncryptionKey, String> + Sync);

// Requirement: OPS-KEK-2
/// Re-seal every stored private key under `new`: each is opened with `current` first (a key
/// it does not open stops the command, and nothing changes), then all are written in one
/// transaction.
async fn change_kek(
    store: &Store,
    current: &crate::keys_at_rest::KeyEncryptionKey,
    new: &crate::keys_at_rest::KeyEncryptionKey,
) -> Result<usize, AdminError> {
    let mut pairs = Vec::new();
    for (name, stored) in store.stored_private_keys().await.map_err(db)? {
        let opened = current.open(&name, &stored).map_err(|e| AdminError {
            code: 1,
            message: format!("{e}; nothing was changed"),
        })?;
        let sealed = new.seal(&name, opened.key()).map_err(|e| AdminError {
            code: 1,
            message: format!("{e}; nothing was changed"),
        })?;
        pairs.push((stored, sealed));
    }
    store.reseal_private_keys(&pairs).await.map_err(db)?;
    Ok(pairs.len())
}

/// Run one admin command; returns what to print on stdout.
pub async fn run(
    store: &Store,
    args: &AdminArgs,
    now: u64,
    kek: KekLoader<'_>,
) -> Result<String, AdminError> {
    let json = args.json;
    let out = |value: serde_json::Value, text: String| -> String {
        if json { value.to_string() } else { text }
    };
    match &args.command {
        AdminCommand::Keys(KeysCommand::ChangeKek { new_key_file }) => {
            let current = kek().map_err(|message| AdminError { code: 2, message })?;
            let new = crate::keys_at_rest::KeySource::File(new_key_file.clone())
                .load(&|_| None)
                .map_err(|e| AdminError {
                    code: 2,
                    message: format!("the new key-encryption key: {e}"),
                })?;
            let count = change_kek(store, &current, &new).await?;
            tracing::info!(
                keys = count,
                "admin: re-sealed the private keys under a new key-encryption key"
            );
            Ok(out(
                serde_json::json!({"resealed": count, "new_key_file": new_key_file.display().to_string()}),
                format!(
                    "re-sealed {count} private keys under the key in {}; configure it (--key-encryption-key-file, PHOENIX_KEY_ENCRYPTION_KEY, or the data directory's key-encryption-key file) before starting the server: the old key opens nothing any more",
                    new_key_file.display()
                ),
            ))
        }
        AdminCommand::Users(UsersCommand::List) => {
            let users = store.list_users().await.map_err(db)?;
            let text = users
                .iter()
                .map(|u| {
                    format!(
                        "{}\tcreated {}\tclients {}{}",
                        u.fid,
                        u.created_at,
                        u.clients,
                        u.suspended_at
                            .map(|at| format!("\tsuspended since {at}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(out(serde_json::json!(users), text))
        }
        AdminCommand::Users(UsersCommand::Show { fid }) => {
            let user = store
                .user_summary(fid)
                .await
                .map_err(db)?
                .ok_or_else(|| not_found(format!("no user {fid} on this server")))?;
            let clients = crate::store::AsStore::user_clients(store, fid)
                .await
                .map_err(db)?;
            let mut certificates = Vec::new();
            for cert in store.issued_certificates(fid).await.map_err(db)? {
                certificates.push(cert_view(store, &cert).await?);
            }
            let mut text = format!(
                "user {}\ncreated {}\n{}clients:",
                user.fid,
                user.created_at,
                user.suspended_at
                    .map(|at| format!("SUSPENDED since {at}\n"))
                    .unwrap_or_default()
            );
            for c in &clients {
                text.push_str(&format!(
                    "\n  {}\tcurrent certificate {} valid {}..{}",
                    c.client_id, c.serial, c.not_before, c.not_after
                ));
            }
            text.push_str("\ncertificates:");
            for c in &certificates {
                text.push_str(&format!(
                    "\n  {} (decimal {})\tclient {}\tvalid {}..{}{}",
                    c.serial,
                    c.serial_decimal,
                    c.client_id,
                    c.not_before,
                    c.not_after,
                    c.revoked_at
                        .map(|at| format!("\tREVOKED at {at}"))
                        .unwrap_or_default()
                ));
            }
            let view = UserView {
                user,
                client_ids: clients.into_iter().map(|c| c.client_id).collect(),
                certificates,
            };
            Ok(out(serde_json::json!(view), text))
        }
        AdminCommand::Users(UsersCommand::Suspend { fid }) => {
            if !store.set_suspended(fid, Some(now)).await.map_err(db)? {
                return Err(not_found(format!("no user {fid} on this server")));
            }
            tracing::info!(%fid, "admin: suspended a user");
            Ok(out(
                serde_json::json!({"fid": fid, "suspended": true}),
                format!(
                    "suspended {fid}: the AS refuses their clients' requests with USER_SUSPENDED"
                ),
            ))
        }
        AdminCommand::Users(UsersCommand::Unsuspend { fid }) => {
            if !store.set_suspended(fid, None).await.map_err(db)? {
                return Err(not_found(format!("no user {fid} on this server")));
            }
            Ok(out(
                serde_json::json!({"fid": fid, "suspended": false}),
                format!("unsuspended {fid}"),
            ))
        }
        AdminCommand::Users(UsersCommand::Delete { fid }) => {
            if !store.delete_user(fid).await.map_err(db)? {
                return Err(not_found(format!("no user {fid} on this server")));
            }
            Ok(out(
                serde_json::json!({"fid": fid, "deleted": true}),
                format!("deleted {fid} and their clients"),
            ))
        }
        AdminCommand::Certs(CertsCommand::Revoke { serial }) => {
            let cert = find_certificate(store, serial).await?;
            let view = cert_view(store, &cert).await?;
            let serial_decimal = view.serial_decimal.clone();
            let revoked_at = match view.revoked_at {
                Some(at) => at,
                None => {
                    // Requirement: OPS-ADMIN-3
                    store
                        .invalidate_certificate(&CertificateRecord {
                            fid: cert.fid.clone(),
                            serial: serial_decimal.clone(),
                            client_id: cert.client_id.clone(),
                            certificate: cert.certificate.clone(),
                            not_after: cert.not_after,
                            invalidated_at: Some(now),
                        })
                        .await
                        .map_err(db)?;
                    now
                }
            };
            Ok(out(
                serde_json::json!({"serial": cert.serial, "serial_decimal": serial_decimal,
                    "fid": cert.fid, "client_id": cert.client_id, "revoked_at": revoked_at}),
                format!(
                    "revoked certificate {} (decimal {serial_decimal}) of {} client {} at {revoked_at}",
                    cert.serial, cert.fid, cert.client_id
                ),
            ))
        }
        AdminCommand::Outbox(OutboxCommand::List) => {
            let list = store.outbox_destinations().await.map_err(db)?;
            Ok(out(serde_json::json!(list), outbox_text(&list)))
        }
        AdminCommand::Outbox(OutboxCommand::Retry { domain }) => {
            let n = store.retry_outbox(domain.as_deref()).await.map_err(db)?;
            if n == 0
                && let Some(d) = domain
            {
                return Err(not_found(format!("nothing pending for {d}")));
            }
            Ok(out(
                serde_json::json!({"due_now": n}),
                format!("{n} pending entries are due now"),
            ))
        }
        AdminCommand::Peers(PeersCommand::List) => {
            let mut peers: std::collections::BTreeMap<String, PeerView> = Default::default();
            for d in store.outbox_destinations().await.map_err(db)? {
                peers.insert(
                    d.destination.clone(),
                    PeerView {
                        domain: d.destination,
                        outbox_pending: d.pending,
                        cached_certificates: 0,
                        cache_valid_until: None,
                    },
                );
            }
            for (domain, n, until) in store.cached_peers().await.map_err(db)? {
                let entry = peers.entry(domain.clone()).or_insert(PeerView {
                    domain,
                    outbox_pending: 0,
                    cached_certificates: 0,
                    cache_valid_until: None,
                });
                entry.cached_certificates = n;
                entry.cache_valid_until = Some(until);
            }
            let peers: Vec<PeerView> = peers.into_values().collect();
            let text = peers
                .iter()
                .map(|p| {
                    format!(
                        "{}\toutbox pending {}\tcached certificates {}{}",
                        p.domain,
                        p.outbox_pending,
                        p.cached_certificates,
                        p.cache_valid_until
                            .map(|t| format!(" (until {t})"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(out(serde_json::json!(peers), text))
        }
    }
}

fn outbox_text(list: &[OutboxDestination]) -> String {
    if list.is_empty() {
        return "the outbox is empty".into();
    }
    list.iter()
        .map(|d| {
            format!(
                "{}\tpending {}\toldest {}\tnext attempt {}\tattempts {}{}",
                d.destination,
                d.pending,
                d.oldest_created_at,
                d.next_attempt_at,
                d.max_attempts,
                d.last_error
                    .as_ref()
                    .map(|e| format!("\tlast error: {e}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The certificate named by a hex serial (as stored) or a decimal one.
async fn find_certificate(store: &Store, serial: &str) -> Result<IssuedCertificate, AdminError> {
    let lowered = serial.to_ascii_lowercase();
    if let Some(cert) = store.issued_certificate(&lowered).await.map_err(db)? {
        return Ok(cert);
    }
    // Decimal: convert to the big-endian bytes and look the hex up.
    if !serial.is_empty() && serial.len() <= 50 && serial.bytes().all(|b| b.is_ascii_digit()) {
        let mut bytes: Vec<u8> = vec![0];
        for digit in serial.bytes().map(|b| b - b'0') {
            let mut carry = u16::from(digit);
            for byte in bytes.iter_mut().rev() {
                let v = u16::from(*byte) * 10 + carry;
                *byte = (v & 0xff) as u8;
                carry = v >> 8;
            }
            while carry > 0 {
                bytes.insert(0, (carry & 0xff) as u8);
                carry >>= 8;
            }
        }
        while bytes.len() > 1 && bytes.first() == Some(&0) {
            bytes.remove(0);
        }
        for candidate in [hex::encode(&bytes), format!("00{}", hex::encode(&bytes))] {
            if let Some(cert) = store.issued_certificate(&candidate).await.map_err(db)? {
                return Ok(cert);
            }
        }
    }
    Err(not_found(format!(
        "no certificate with serial {serial} was issued by this server"
    )))
}

async fn cert_view(store: &Store, cert: &IssuedCertificate) -> Result<CertView, AdminError> {
    let bytes = hex::decode(&cert.serial).map_err(|_| AdminError {
        code: 1,
        message: format!("stored certificate serial {} is not hex", cert.serial),
    })?;
    let serial_decimal = decimal(&bytes);
    let revoked_at = store
        .certificate(&cert.fid, &serial_decimal)
        .await
        .map_err(db)?
        .and_then(|r| r.invalidated_at);
    Ok(CertView {
        serial: cert.serial.clone(),
        serial_decimal,
        client_id: cert.client_id.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        revoked_at,
    })
}
