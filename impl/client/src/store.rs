//! The client's local store: one SQLite file in the client's state directory. Plain data
//! access; protocol decisions live in [`crate::client`].

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::error::ClientError;

/// A Web Push subscription as this client registered it (QS-PUSH-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    pub url: String,
    pub p256dh: Vec<u8>,
    pub auth: [u8; 16],
    /// The P-256 private key, if this client generated the subscription.
    pub private_key: Option<Vec<u8>>,
}

/// The client's identity and service records.
#[derive(Clone)]
pub struct Identity {
    pub fid: String,
    pub client_id: String,
    pub server_url: String,
    pub certificate: Vec<u8>,
    pub signing_key: [u8; 32],
    pub qs_user_id: [u8; 16],
    pub qs_client_id: [u8; 16],
    pub qs_user_key: [u8; 32],
    pub qs_client_key: [u8; 32],
    pub friendship_token: [u8; 32],
    pub friendship_key: [u8; 32],
    pub qs_domain: String,
    pub queue_config_key: Vec<u8>,
    pub qs_next_seq: u64,
    pub as_next_seq: u64,
    /// The private HPKE key of this client's queue (QS-ENC-1); `None` for a client
    /// registered before queue encryption.
    pub queue_private_key: Option<Vec<u8>>,
    /// The queue chain's secret for the entry `max(qs_next_seq, queue_chain_start)`.
    pub queue_ratchet: Option<[u8; 32]>,
    /// The first entry of the current chain (after a re-key, QS-ENC-4; else 0).
    pub queue_chain_start: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fid", &self.fid)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Contact {
    pub fid: String,
    /// `pending` (we asked, they have not joined yet) or `connected`.
    pub status: String,
    pub friendship_token: Option<[u8; 32]>,
    pub friendship_key: Option<[u8; 32]>,
    pub qs_domain: Option<String>,
    pub connection_group_id: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub group_id: Vec<u8>,
    pub name: String,
    pub ear_key: [u8; 32],
    pub credential_key: [u8; 32],
    /// `connection` or `group`.
    pub kind: String,
    pub contact: Option<String>,
    pub active: bool,
}

/// A received chat message with the sender's credential as it was when it arrived.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub group_id: Vec<u8>,
    pub received_at: u64,
    pub sender_leaf: u32,
    pub sender_leaf_key: Vec<u8>,
    pub encrypted_credential: Vec<u8>,
    pub text: String,
    /// Sent by this client (Requirement: CLI-HIST-1).
    pub own: bool,
}

/// A connection request whose answer did not arrive (CL-AMBIG-3).
#[derive(Debug, Clone)]
pub struct PendingConnection {
    pub fid: String,
    pub domain: String,
    /// The encoded `EnqueueConnectionRequest`, sent again as it is.
    pub request: Vec<u8>,
    pub client_id: String,
    pub certificate: Vec<u8>,
    pub connection_group_id: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ConnectionRequest {
    pub fid: String,
    pub client_id: String,
    pub certificate: Vec<u8>,
    pub group_id: Vec<u8>,
    pub ear_key: [u8; 32],
    pub credential_key: [u8; 32],
    pub friendship_token: [u8; 32],
    pub friendship_key: [u8; 32],
    pub qs_domain: String,
    pub received_at: u64,
}

/// A request sent (or about to be) whose outcome is not known yet.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub group_id: Vec<u8>,
    pub operation: String,
    pub body: Vec<u8>,
    /// `message` or `commit`.
    pub kind: String,
    pub detail: String,
    pub group_info: Option<Vec<u8>>,
    pub created_at: u64,
    pub attempts: u32,
}

/// An [`Outgoing`] before it is stored.
#[derive(Debug, Clone)]
pub struct NewOutgoing<'a> {
    pub group_id: &'a [u8],
    pub operation: &'a str,
    pub body: &'a [u8],
    pub kind: &'a str,
    pub detail: &'a str,
    pub group_info: Option<&'a [u8]>,
    pub created_at: u64,
}

/// How many certificates other than the first one are remembered per non-contact FID
/// (trust on first use, [`Store::see_certificate`]).
pub const SEEN_CERTIFICATES_KEPT: i64 = 16;

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The openmls entries as last loaded or committed, so that a save writes only the
    /// entries that changed (`None`: not known; the next save rewrites the table).
    mls_saved: std::sync::Arc<std::sync::Mutex<Option<MlsValues>>>,
}

/// The openmls key-value entries.
pub type MlsValues = HashMap<Vec<u8>, Vec<u8>>;

/// Refuse a database file that users other than its owner can read or write.
fn check_private(path: &Path) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ClientError::Usage(format!(
                    "{} holds your signing key and messages but is readable by other users \
                     (mode {mode:o}); fix it with `chmod 600 {}` and check who could have read it",
                    path.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

fn arr<const N: usize>(v: Vec<u8>) -> Result<[u8; N], ClientError> {
    v.try_into()
        .map_err(|_| ClientError::Store("corrupt key length".into()))
}

fn u(v: i64) -> Result<u64, ClientError> {
    u64::try_from(v).map_err(|_| ClientError::Store("negative counter".into()))
}

fn i(v: u64) -> Result<i64, ClientError> {
    i64::try_from(v).map_err(|_| ClientError::Store("counter overflow".into()))
}

impl Store {
    /// Open (creating if needed) the store in `dir`.
    pub async fn open(dir: &Path) -> Result<Self, ClientError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ClientError::Store(format!("cannot create {}: {e}", dir.display())))?;
        // Requirement: CL-FILES-1
        // The directory and the database hold the signing key and every received
        // plaintext: owner only. The database file is created 0600 before SQLite opens it
        // (SQLite gives its -wal and -shm files the database's mode); an existing one that
        // others can read is refused rather than silently used.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                ClientError::Store(format!("cannot make {} private: {e}", dir.display()))
            })?;
        }
        let db = dir.join("client.db");
        check_private(&db)?;
        crate::lock::open_private(&db)?;
        let url = format!("sqlite://{}", db.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            mls_saved: Default::default(),
        })
    }

    pub async fn identity(&self) -> Result<Option<Identity>, ClientError> {
        let Some(r) = sqlx::query("SELECT * FROM identity WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Identity {
            fid: r.try_get("fid")?,
            client_id: r.try_get("client_id")?,
            server_url: r.try_get("server_url")?,
            certificate: r.try_get("certificate")?,
            signing_key: arr(r.try_get("signing_key")?)?,
            qs_user_id: arr(r.try_get("qs_user_id")?)?,
            qs_client_id: arr(r.try_get("qs_client_id")?)?,
            qs_user_key: arr(r.try_get("qs_user_key")?)?,
            qs_client_key: arr(r.try_get("qs_client_key")?)?,
            friendship_token: arr(r.try_get("friendship_token")?)?,
            friendship_key: arr(r.try_get("friendship_key")?)?,
            qs_domain: r.try_get("qs_domain")?,
            queue_config_key: r.try_get("queue_config_key")?,
            qs_next_seq: u(r.try_get("qs_next_seq")?)?,
            as_next_seq: u(r.try_get("as_next_seq")?)?,
            queue_private_key: r.try_get("queue_private_key")?,
            queue_ratchet: r
                .try_get::<Option<Vec<u8>>, _>("queue_ratchet")?
                .map(arr)
                .transpose()?,
            queue_chain_start: u(r.try_get("queue_chain_start")?)?,
        }))
    }

    // Requirement: CL-AMBIG-2
    /// The registration in progress (JSON), if any.
    pub async fn pending_registration(&self) -> Result<Option<String>, ClientError> {
        Ok(
            sqlx::query_scalar("SELECT state FROM pending_registration WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Record (or advance) the registration in progress.
    pub async fn put_pending_registration(&self, state: &str) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO pending_registration (id, state) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        )
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The registration is complete.
    pub async fn delete_pending_registration(&self) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM pending_registration")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // Requirement: CL-AMBIG-3
    /// The connection request to `fid` whose answer did not arrive, if any.
    pub async fn pending_connection(
        &self,
        fid: &str,
    ) -> Result<Option<PendingConnection>, ClientError> {
        let row = sqlx::query(
            "SELECT domain, request, client_id, certificate, connection_group_id
             FROM pending_connections WHERE fid = ?",
        )
        .bind(fid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(PendingConnection {
                fid: fid.to_owned(),
                domain: r.try_get("domain")?,
                request: r.try_get("request")?,
                client_id: r.try_get("client_id")?,
                certificate: r.try_get("certificate")?,
                connection_group_id: r.try_get("connection_group_id")?,
            })
        })
        .transpose()
    }

    /// Record a connection request before it is sent.
    pub async fn put_pending_connection(&self, p: &PendingConnection) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO pending_connections (fid, domain, request, client_id, certificate, connection_group_id)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.fid)
        .bind(&p.domain)
        .bind(&p.request)
        .bind(&p.client_id)
        .bind(&p.certificate)
        .bind(&p.connection_group_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The connection request to `fid` is settled (delivered, or definitely refused).
    pub async fn delete_pending_connection(&self, fid: &str) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM pending_connections WHERE fid = ?")
            .bind(fid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_identity(&self, id: &Identity) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO identity (id, fid, client_id, server_url, certificate, signing_key, qs_user_id, qs_client_id,
             qs_user_key, qs_client_key, friendship_token, friendship_key, qs_domain, queue_config_key, qs_next_seq, as_next_seq,
             queue_private_key, queue_ratchet)
             VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id.fid)
        .bind(&id.client_id)
        .bind(&id.server_url)
        .bind(&id.certificate)
        .bind(id.signing_key.as_slice())
        .bind(id.qs_user_id.as_slice())
        .bind(id.qs_client_id.as_slice())
        .bind(id.qs_user_key.as_slice())
        .bind(id.qs_client_key.as_slice())
        .bind(id.friendship_token.as_slice())
        .bind(id.friendship_key.as_slice())
        .bind(&id.qs_domain)
        .bind(&id.queue_config_key)
        .bind(i(id.qs_next_seq)?)
        .bind(i(id.as_next_seq)?)
        .bind(&id.queue_private_key)
        .bind(id.queue_ratchet.as_ref().map(|r| r.as_slice()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // Requirement: QS-ENC-4
    /// A new queue key and chain, starting at `chain_start` (the QS's answer to
    /// `qs/rekey_queue`).
    pub async fn set_queue_chain(
        &self,
        private_key: &[u8],
        secret: &[u8; 32],
        chain_start: u64,
    ) -> Result<(), ClientError> {
        sqlx::query(
            "UPDATE identity SET queue_private_key = ?, queue_ratchet = ?, queue_chain_start = ? WHERE id = 1",
        )
        .bind(private_key)
        .bind(secret.as_slice())
        .bind(i(chain_start)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // Requirement: QS-PUSH-1
    /// Record (or with `None` forget) the push endpoint set at the QS.
    pub async fn set_push(&self, push: Option<&PushSubscription>) -> Result<(), ClientError> {
        sqlx::query(
            "UPDATE identity SET push_url = ?, push_p256dh = ?, push_auth = ?, push_private_key = ? WHERE id = 1",
        )
        .bind(push.map(|p| p.url.as_str()))
        .bind(push.map(|p| p.p256dh.as_slice()))
        .bind(push.map(|p| p.auth.as_slice()))
        .bind(push.and_then(|p| p.private_key.as_deref()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The push endpoint set at the QS, if any.
    pub async fn push(&self) -> Result<Option<PushSubscription>, ClientError> {
        let row = sqlx::query(
            "SELECT push_url, push_p256dh, push_auth, push_private_key FROM identity WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let url: Option<String> = row.try_get("push_url")?;
        let p256dh: Option<Vec<u8>> = row.try_get("push_p256dh")?;
        let auth: Option<Vec<u8>> = row.try_get("push_auth")?;
        let private_key: Option<Vec<u8>> = row.try_get("push_private_key")?;
        let (Some(url), Some(p256dh), Some(auth)) = (url, p256dh, auth) else {
            return Ok(None);
        };
        let auth: [u8; 16] = auth.try_into().map_err(|_| {
            ClientError::Store("the stored push auth secret is not 16 bytes".into())
        })?;
        Ok(Some(PushSubscription {
            url,
            p256dh,
            auth,
            private_key,
        }))
    }

    // Requirement: QS-Q-2, QS-ENC-1
    /// The queue is processed up to `seq` (exclusive), and its chain stands at `ratchet`
    /// for that entry: both in one statement, so they never disagree.
    pub async fn set_qs_position(
        &self,
        seq: u64,
        ratchet: Option<&[u8; 32]>,
    ) -> Result<(), ClientError> {
        sqlx::query("UPDATE identity SET qs_next_seq = ?, queue_ratchet = ? WHERE id = 1")
            .bind(i(seq)?)
            .bind(ratchet.map(|r| r.as_slice()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_as_next_seq(&self, seq: u64) -> Result<(), ClientError> {
        sqlx::query("UPDATE identity SET as_next_seq = ? WHERE id = 1")
            .bind(i(seq)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every CA certificate known for `domain`.
    pub async fn cas(&self, domain: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        Ok(
            sqlx::query_scalar("SELECT certificate FROM cas WHERE domain = ? ORDER BY rowid")
                .bind(domain)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn put_ca(&self, domain: &str, der: &[u8]) -> Result<(), ClientError> {
        sqlx::query("INSERT OR IGNORE INTO cas (domain, certificate) VALUES (?, ?)")
            .bind(domain)
            .bind(der)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The session token held on `domain`'s server: (token, certificate serial, expiry).
    pub async fn session(
        &self,
        domain: &str,
    ) -> Result<Option<(String, String, u64)>, ClientError> {
        let row = sqlx::query("SELECT token, serial, expires_at FROM sessions WHERE domain = ?")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.get("token"), r.get("serial"), u(r.get("expires_at"))?)))
            .transpose()
    }

    pub async fn put_session(
        &self,
        domain: &str,
        token: &str,
        serial: &str,
        expires_at: u64,
    ) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO sessions (domain, token, serial, expires_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (domain) DO UPDATE SET token = excluded.token, \
             serial = excluded.serial, expires_at = excluded.expires_at",
        )
        .bind(domain)
        .bind(token)
        .bind(serial)
        .bind(i(expires_at)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_session(&self, domain: &str) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM sessions WHERE domain = ?")
            .bind(domain)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What `fid`'s home server said about `certificate`, if that is still within its
    /// window at `now`: `Some(invalidated_at)`.
    pub async fn vouched(
        &self,
        fid: &str,
        certificate: &[u8],
        now: u64,
    ) -> Result<Option<Option<u64>>, ClientError> {
        let row = sqlx::query(
            "SELECT invalidated_at FROM vouched_certificates \
             WHERE fid = ? AND certificate = ? AND valid_until > ?",
        )
        .bind(fid)
        .bind(certificate)
        .bind(i(now)?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.get::<Option<i64>, _>("invalidated_at").map(u).transpose())
            .transpose()
    }

    /// Record what `fid`'s home server vouched for, dropping entries whose window ended.
    pub async fn put_vouched(
        &self,
        fid: &str,
        entries: &[(Vec<u8>, Option<u64>, u64)],
        now: u64,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM vouched_certificates WHERE valid_until <= ?")
            .bind(i(now)?)
            .execute(&mut *tx)
            .await?;
        for (certificate, invalidated_at, valid_until) in entries {
            sqlx::query(
                "INSERT OR REPLACE INTO vouched_certificates \
                 (fid, certificate, invalidated_at, valid_until) VALUES (?, ?, ?, ?)",
            )
            .bind(fid)
            .bind(certificate.as_slice())
            .bind(invalidated_at.map(i).transpose()?)
            .bind(i(*valid_until)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_certificate(
        &self,
        certificate: &[u8],
        signing_key: &[u8; 32],
    ) -> Result<(), ClientError> {
        sqlx::query("UPDATE identity SET certificate = ?, signing_key = ? WHERE id = 1")
            .bind(certificate)
            .bind(signing_key.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn put_message(&self, m: &StoredMessage) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO messages (group_id, received_at, sender_leaf, sender_leaf_key, encrypted_credential, text, own) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&m.group_id)
        .bind(i(m.received_at)?)
        .bind(i64::from(m.sender_leaf))
        .bind(&m.sender_leaf_key)
        .bind(&m.encrypted_credential)
        .bind(&m.text)
        .bind(m.own)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // Requirement: CL-LOSS-1
    /// Record that a message of `group_id` could not be processed at `at`.
    pub async fn add_gap(&self, group_id: &[u8], at: u64, reason: &str) -> Result<(), ClientError> {
        sqlx::query("INSERT INTO history_gaps (group_id, at, reason) VALUES (?, ?, ?)")
            .bind(group_id)
            .bind(i(at)?)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The gaps of `group_id`'s history: when, and why.
    pub async fn gaps(&self, group_id: &[u8]) -> Result<Vec<(u64, String)>, ClientError> {
        let rows =
            sqlx::query("SELECT at, reason FROM history_gaps WHERE group_id = ? ORDER BY id")
                .bind(group_id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| Ok((u(r.try_get("at")?)?, r.try_get("reason")?)))
            .collect()
    }

    pub async fn messages(&self, group_id: &[u8]) -> Result<Vec<StoredMessage>, ClientError> {
        let rows = sqlx::query("SELECT * FROM messages WHERE group_id = ? ORDER BY id")
            .bind(group_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let leaf: i64 = r.try_get("sender_leaf")?;
                Ok(StoredMessage {
                    group_id: r.try_get("group_id")?,
                    received_at: u(r.try_get("received_at")?)?,
                    sender_leaf: u32::try_from(leaf)
                        .map_err(|_| ClientError::Store("bad leaf index".into()))?,
                    sender_leaf_key: r.try_get("sender_leaf_key")?,
                    encrypted_credential: r.try_get("encrypted_credential")?,
                    text: r.try_get("text")?,
                    own: r.try_get("own")?,
                })
            })
            .collect()
    }

    pub async fn groups(&self) -> Result<Vec<Group>, ClientError> {
        let rows = sqlx::query("SELECT * FROM groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(group_from_row).collect()
    }

    pub async fn put_connection_key(
        &self,
        public: &[u8],
        private: &[u8],
    ) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT OR REPLACE INTO connection_keys (public_key, private_key) VALUES (?, ?)",
        )
        .bind(public)
        .bind(private)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn connection_keys(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let rows = sqlx::query("SELECT public_key, private_key FROM connection_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("public_key")?, r.try_get("private_key")?)))
            .collect()
    }

    pub async fn contact(&self, fid: &str) -> Result<Option<Contact>, ClientError> {
        let row = sqlx::query("SELECT * FROM contacts WHERE fid = ?")
            .bind(fid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(contact_from_row).transpose()
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        let rows = sqlx::query("SELECT * FROM contacts ORDER BY fid")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(contact_from_row).collect()
    }

    pub async fn put_contact(&self, c: &Contact, now: u64) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO contacts (fid, status, friendship_token, friendship_key, qs_domain, connection_group_id, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (fid) DO UPDATE SET status = excluded.status, friendship_token = excluded.friendship_token,
             friendship_key = excluded.friendship_key, qs_domain = excluded.qs_domain,
             connection_group_id = excluded.connection_group_id",
        )
        .bind(&c.fid)
        .bind(&c.status)
        .bind(c.friendship_token.map(|t| t.to_vec()))
        .bind(c.friendship_key.map(|t| t.to_vec()))
        .bind(&c.qs_domain)
        .bind(&c.connection_group_id)
        .bind(i(now)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn pin_contact_client(
        &self,
        fid: &str,
        client_id: &str,
        certificate: &[u8],
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT OR REPLACE INTO contact_clients (fid, client_id, certificate) VALUES (?, ?, ?)",
        )
        .bind(fid)
        .bind(client_id)
        .bind(certificate)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO pinned_certificates (fid, client_id, certificate) VALUES (?, ?, ?)",
        )
        .bind(fid)
        .bind(client_id)
        .bind(certificate)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- pins, trust on first use, out-of-band verification (migration 0006) -----------

    /// Whether `certificate` was ever pinned for `fid`'s client `client_id`.
    pub async fn was_pinned(
        &self,
        fid: &str,
        client_id: &str,
        certificate: &[u8],
    ) -> Result<bool, ClientError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM pinned_certificates WHERE fid = ? AND client_id = ? AND certificate = ?",
        )
        .bind(fid)
        .bind(client_id)
        .bind(certificate)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Remember `certificate` as seen for `fid` (a group member who is not a contact) and
    /// return the first certificate ever seen for `fid` (`certificate` itself the first
    /// time).
    pub async fn see_certificate(
        &self,
        fid: &str,
        certificate: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO seen_certificates (fid, certificate, first_seen_at) VALUES (?, ?, ?)",
        )
        .bind(fid)
        .bind(certificate)
        .bind(i(now)?)
        .execute(&mut *tx)
        .await?;
        // Bounded: the first certificate and the latest SEEN_CERTIFICATES_KEPT others per
        // FID (one forgotten is reported as a change again when it reappears).
        sqlx::query(
            "DELETE FROM seen_certificates WHERE fid = ? \
             AND seq <> (SELECT MIN(seq) FROM seen_certificates WHERE fid = ?) \
             AND seq NOT IN (SELECT seq FROM seen_certificates WHERE fid = ? ORDER BY seq DESC LIMIT ?)",
        )
        .bind(fid)
        .bind(fid)
        .bind(fid)
        .bind(SEEN_CERTIFICATES_KEPT)
        .execute(&mut *tx)
        .await?;
        let first: Vec<u8> = sqlx::query_scalar(
            "SELECT certificate FROM seen_certificates WHERE fid = ? ORDER BY seq LIMIT 1",
        )
        .bind(fid)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(first)
    }

    /// The code `fid` was verified with out of band, if it was.
    pub async fn verified_code(&self, fid: &str) -> Result<Option<String>, ClientError> {
        Ok(
            sqlx::query_scalar("SELECT code FROM verified_contacts WHERE fid = ?")
                .bind(fid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn set_verified(&self, fid: &str, code: &str, now: u64) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO verified_contacts (fid, code, verified_at) VALUES (?, ?, ?) \
             ON CONFLICT (fid) DO UPDATE SET code = excluded.code, verified_at = excluded.verified_at",
        )
        .bind(fid)
        .bind(code)
        .bind(i(now)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The pinned clients of a contact: client id → certificate.
    pub async fn contact_clients(
        &self,
        fid: &str,
    ) -> Result<HashMap<String, Vec<u8>>, ClientError> {
        let rows = sqlx::query("SELECT client_id, certificate FROM contact_clients WHERE fid = ?")
            .bind(fid)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("client_id")?, r.try_get("certificate")?)))
            .collect()
    }

    pub async fn group_by_name(&self, name: &str) -> Result<Option<Group>, ClientError> {
        let row = sqlx::query("SELECT * FROM groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(group_from_row).transpose()
    }

    pub async fn group_by_id(&self, group_id: &[u8]) -> Result<Option<Group>, ClientError> {
        let row = sqlx::query("SELECT * FROM groups WHERE group_id = ?")
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(group_from_row).transpose()
    }

    pub async fn put_group(&self, g: &Group) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO groups (group_id, name, ear_key, credential_key, kind, contact, active) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, active = excluded.active",
        )
        .bind(&g.group_id)
        .bind(&g.name)
        .bind(g.ear_key.as_slice())
        .bind(g.credential_key.as_slice())
        .bind(&g.kind)
        .bind(&g.contact)
        .bind(g.active)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn name_taken(&self, name: &str) -> Result<bool, ClientError> {
        Ok(self.group_by_name(name).await?.is_some())
    }

    pub async fn set_member(
        &self,
        group_id: &[u8],
        leaf: u32,
        encrypted_credential: &[u8],
    ) -> Result<(), ClientError> {
        sqlx::query("INSERT OR REPLACE INTO group_members (group_id, leaf_index, encrypted_credential) VALUES (?, ?, ?)")
            .bind(group_id)
            .bind(i64::from(leaf))
            .bind(encrypted_credential)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_member(&self, group_id: &[u8], leaf: u32) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM group_members WHERE group_id = ? AND leaf_index = ?")
            .bind(group_id)
            .bind(i64::from(leaf))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keep the credential `leaf` had until `until_epoch` (with the leaf's signature key of
    /// that time), before a commit's removal or key change replaces it; forget what is older
    /// than `keep_epochs` epochs before `until_epoch`.
    pub async fn archive_member(
        &self,
        group_id: &[u8],
        leaf: u32,
        until_epoch: u64,
        leaf_key: &[u8],
        keep_epochs: u64,
    ) -> Result<(), ClientError> {
        let until = i64::try_from(until_epoch)
            .map_err(|_| ClientError::Store("epoch out of range".into()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT OR REPLACE INTO group_member_history (group_id, leaf_index, until_epoch, leaf_key, encrypted_credential)
             SELECT group_id, leaf_index, ?, ?, encrypted_credential FROM group_members WHERE group_id = ? AND leaf_index = ?",
        )
        .bind(until)
        .bind(leaf_key)
        .bind(group_id)
        .bind(i64::from(leaf))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM group_member_history WHERE group_id = ? AND until_epoch < ?")
            .bind(group_id)
            .bind(until.saturating_sub(i64::try_from(keep_epochs).unwrap_or(i64::MAX)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The credential and signature key `leaf` had in `epoch`, if a later commit replaced
    /// or removed them (see [`Store::archive_member`]); `None` if they still hold.
    pub async fn archived_member(
        &self,
        group_id: &[u8],
        leaf: u32,
        epoch: u64,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, ClientError> {
        let epoch =
            i64::try_from(epoch).map_err(|_| ClientError::Store("epoch out of range".into()))?;
        let row = sqlx::query(
            "SELECT leaf_key, encrypted_credential FROM group_member_history
             WHERE group_id = ? AND leaf_index = ? AND until_epoch > ? ORDER BY until_epoch LIMIT 1",
        )
        .bind(group_id)
        .bind(i64::from(leaf))
        .bind(epoch)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("leaf_key")?, r.try_get("encrypted_credential")?)))
            .transpose()
    }

    /// leaf index → encrypted credential.
    pub async fn members(&self, group_id: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, ClientError> {
        let rows = sqlx::query("SELECT leaf_index, encrypted_credential FROM group_members WHERE group_id = ? ORDER BY leaf_index")
            .bind(group_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let leaf: i64 = r.try_get("leaf_index")?;
                let leaf =
                    u32::try_from(leaf).map_err(|_| ClientError::Store("bad leaf index".into()))?;
                Ok((leaf, r.try_get("encrypted_credential")?))
            })
            .collect()
    }

    pub async fn put_request(&self, r: &ConnectionRequest) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT OR REPLACE INTO requests (fid, client_id, certificate, group_id, ear_key, credential_key,
             friendship_token, friendship_key, qs_domain, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.fid)
        .bind(&r.client_id)
        .bind(&r.certificate)
        .bind(&r.group_id)
        .bind(r.ear_key.as_slice())
        .bind(r.credential_key.as_slice())
        .bind(r.friendship_token.as_slice())
        .bind(r.friendship_key.as_slice())
        .bind(&r.qs_domain)
        .bind(i(r.received_at)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn requests(&self) -> Result<Vec<ConnectionRequest>, ClientError> {
        let rows = sqlx::query("SELECT * FROM requests ORDER BY received_at, fid")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ConnectionRequest {
                    fid: r.try_get("fid")?,
                    client_id: r.try_get("client_id")?,
                    certificate: r.try_get("certificate")?,
                    group_id: r.try_get("group_id")?,
                    ear_key: arr(r.try_get("ear_key")?)?,
                    credential_key: arr(r.try_get("credential_key")?)?,
                    friendship_token: arr(r.try_get("friendship_token")?)?,
                    friendship_key: arr(r.try_get("friendship_key")?)?,
                    qs_domain: r.try_get("qs_domain")?,
                    received_at: u(r.try_get("received_at")?)?,
                })
            })
            .collect()
    }

    pub async fn delete_requests_of(&self, fid: &str) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM requests WHERE fid = ?")
            .bind(fid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn push_event(&self, event: &serde_json::Value) -> Result<(), ClientError> {
        sqlx::query("INSERT INTO events (event) VALUES (?)")
            .bind(event.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Take (and delete) every stored event, oldest first.
    pub async fn take_events(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<String> = sqlx::query_scalar("SELECT event FROM events ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM events").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }

    pub async fn put_resolve(&self, domain: &str, url: &str) -> Result<(), ClientError> {
        sqlx::query("INSERT INTO resolve (domain, url) VALUES (?, ?) ON CONFLICT (domain) DO UPDATE SET url = excluded.url")
            .bind(domain)
            .bind(url)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // Requirement: AS-TOKEN-3
    /// The group-creation token key pinned for `domain`, if any.
    pub async fn token_key(&self, domain: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(
            sqlx::query_scalar("SELECT public_key FROM token_keys WHERE domain = ?")
                .bind(domain)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Pin `domain`'s token key and keep `tokens` issued under it, in one transaction.
    pub async fn put_group_tokens(
        &self,
        domain: &str,
        public_key: &[u8],
        tokens: &[phoenix_types::tokens::Token],
        now: u64,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO token_keys (domain, public_key) VALUES (?, ?) ON CONFLICT (domain) DO NOTHING")
            .bind(domain)
            .bind(public_key)
            .execute(&mut *tx)
            .await?;
        for t in tokens {
            sqlx::query("INSERT INTO group_tokens (input, output, key_id, domain, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (input) DO NOTHING")
                .bind(t.input.as_slice())
                .bind(t.output.as_slice())
                .bind(t.key_id.as_slice())
                .bind(domain)
                .bind(i64::try_from(now).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The oldest unspent group-creation token for `domain`.
    pub async fn group_token(
        &self,
        domain: &str,
    ) -> Result<Option<phoenix_types::tokens::Token>, ClientError> {
        use phoenix_types::tokens::{INPUT_LEN, KEY_ID_LEN, Token};
        let row: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT input, output, key_id FROM group_tokens WHERE domain = ? ORDER BY created_at, input LIMIT 1",
        )
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?;
        let Some((input, output, key_id)) = row else {
            return Ok(None);
        };
        let corrupt = || ClientError::Store("a stored group-creation token is corrupt".into());
        let input: [u8; INPUT_LEN] = input.try_into().map_err(|_| corrupt())?;
        let key_id: [u8; KEY_ID_LEN] = key_id.try_into().map_err(|_| corrupt())?;
        Ok(Some(Token {
            key_id,
            input,
            output,
        }))
    }

    /// How many unspent group-creation tokens are kept for `domain`.
    pub async fn group_token_count(&self, domain: &str) -> Result<u64, ClientError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM group_tokens WHERE domain = ?")
            .bind(domain)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Forget a token (its group was created, or the DS says it was spent).
    pub async fn delete_group_token(&self, input: &[u8]) -> Result<(), ClientError> {
        sqlx::query("DELETE FROM group_tokens WHERE input = ?")
            .bind(input)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored `DOMAIN=URL` entries.
    pub async fn resolve_entries(&self) -> Result<Vec<String>, ClientError> {
        let rows = sqlx::query("SELECT domain, url FROM resolve ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let domain: String = r.try_get("domain")?;
                let url: String = r.try_get("url")?;
                Ok(format!("{domain}={url}"))
            })
            .collect()
    }

    pub async fn load_mls(&self) -> Result<MlsValues, ClientError> {
        let rows = sqlx::query("SELECT key, value FROM mls_kv")
            .fetch_all(&self.pool)
            .await?;
        let values: MlsValues = rows
            .into_iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
            .collect::<Result<_, ClientError>>()?;
        self.mls_committed(&values);
        Ok(values)
    }

    /// After a commit that wrote `values`: the stored entries are `values`.
    fn mls_committed(&self, values: &MlsValues) {
        if let Ok(mut saved) = self.mls_saved.lock() {
            *saved = Some(values.clone());
        }
    }

    // Requirement: PERF-CL-1
    /// Within `tx`, make the stored openmls entries `values`: only the entries that
    /// changed since the last load or commit are written (PERF-CL-1; a user in 100 groups
    /// has about 1,200 entries, of which an operation changes a few), or all of them when
    /// that is not known.
    async fn write_mls(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        values: &MlsValues,
    ) -> Result<(), ClientError> {
        let saved = self.mls_saved.lock().ok().and_then(|s| s.clone());
        let Some(saved) = saved else {
            sqlx::query("DELETE FROM mls_kv").execute(&mut **tx).await?;
            for (k, v) in values {
                sqlx::query("INSERT INTO mls_kv (key, value) VALUES (?, ?)")
                    .bind(k)
                    .bind(v)
                    .execute(&mut **tx)
                    .await?;
            }
            return Ok(());
        };
        for key in saved.keys().filter(|k| !values.contains_key(*k)) {
            sqlx::query("DELETE FROM mls_kv WHERE key = ?")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        for (k, v) in values {
            if saved.get(k) != Some(v) {
                sqlx::query(
                    "INSERT INTO mls_kv (key, value) VALUES (?, ?) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(k)
                .bind(v)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Replace the stored openmls state with `values`, atomically.
    pub async fn save_mls(&self, values: &HashMap<Vec<u8>, Vec<u8>>) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        self.write_mls(&mut tx, values).await?;
        tx.commit().await?;
        self.mls_committed(values);
        Ok(())
    }

    // Requirement: CL-AMBIG-1
    /// Save the MLS state a request leads to together with the request itself, before it
    /// is sent: one transaction, so that a crash leaves either neither (nothing was sent)
    /// or both (the request is sent again; its ratchet generation is never used twice).
    pub async fn save_mls_with_outgoing(
        &self,
        values: &HashMap<Vec<u8>, Vec<u8>>,
        outgoing: &NewOutgoing<'_>,
    ) -> Result<i64, ClientError> {
        let mut tx = self.pool.begin().await?;
        self.write_mls(&mut tx, values).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outgoing (group_id, operation, body, kind, detail, group_info, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(outgoing.group_id)
        .bind(outgoing.operation)
        .bind(outgoing.body)
        .bind(outgoing.kind)
        .bind(outgoing.detail)
        .bind(outgoing.group_info)
        .bind(i(outgoing.created_at)?)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.mls_committed(values);
        Ok(id)
    }

    /// Save the MLS state that settles an outgoing request and forget the request, in one
    /// transaction.
    pub async fn save_mls_settling(
        &self,
        values: &HashMap<Vec<u8>, Vec<u8>>,
        outgoing: i64,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        self.write_mls(&mut tx, values).await?;
        sqlx::query("DELETE FROM outgoing WHERE id = ?")
            .bind(outgoing)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.mls_committed(values);
        Ok(())
    }

    // Requirement: CLI-HIST-1
    /// [`Self::save_mls_settling`] for a message the server accepted, keeping it in the
    /// history (as this client's own) in the same transaction.
    pub async fn save_mls_settling_sent(
        &self,
        values: &HashMap<Vec<u8>, Vec<u8>>,
        outgoing: i64,
        m: &StoredMessage,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin().await?;
        self.write_mls(&mut tx, values).await?;
        sqlx::query("DELETE FROM outgoing WHERE id = ?")
            .bind(outgoing)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO messages (group_id, received_at, sender_leaf, sender_leaf_key, encrypted_credential, text, own) \
             VALUES (?, ?, ?, ?, ?, ?, 1)",
        )
        .bind(&m.group_id)
        .bind(i(m.received_at)?)
        .bind(i64::from(m.sender_leaf))
        .bind(&m.sender_leaf_key)
        .bind(&m.encrypted_credential)
        .bind(&m.text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.mls_committed(values);
        Ok(())
    }

    // Requirement: CLI-GROUPS-1
    /// Messages of `group_id` received (not sent by this client) after its read mark.
    pub async fn unread(&self, group_id: &[u8]) -> Result<u64, ClientError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE group_id = ? AND own = 0 \
             AND id > COALESCE((SELECT last_read FROM read_marks WHERE group_id = ?), 0)",
        )
        .bind(group_id)
        .bind(group_id)
        .fetch_one(&self.pool)
        .await?;
        u(count)
    }

    // Requirement: CLI-GROUPS-1
    /// Move `group_id`'s read mark to its newest message.
    pub async fn mark_read(&self, group_id: &[u8]) -> Result<(), ClientError> {
        sqlx::query(
            "INSERT INTO read_marks (group_id, last_read) \
             SELECT ?, COALESCE(MAX(id), 0) FROM messages WHERE group_id = ? \
             ON CONFLICT (group_id) DO UPDATE SET last_read = excluded.last_read",
        )
        .bind(group_id)
        .bind(group_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Requests whose outcome is not known, oldest first.
    pub async fn outgoing(&self) -> Result<Vec<Outgoing>, ClientError> {
        let rows = sqlx::query("SELECT * FROM outgoing ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Outgoing {
                    id: r.try_get("id")?,
                    group_id: r.try_get("group_id")?,
                    operation: r.try_get("operation")?,
                    body: r.try_get("body")?,
                    kind: r.try_get("kind")?,
                    detail: r.try_get("detail")?,
                    group_info: r.try_get("group_info")?,
                    created_at: u(r.try_get("created_at")?)?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?)
                        .map_err(|_| ClientError::Store("bad attempt count".into()))?,
                })
            })
            .collect()
    }

    /// Count one more attempt at an outgoing request.
    pub async fn outgoing_attempted(&self, id: i64) -> Result<(), ClientError> {
        sqlx::query("UPDATE outgoing SET attempts = attempts + 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn contact_from_row(r: sqlx::sqlite::SqliteRow) -> Result<Contact, ClientError> {
    let token: Option<Vec<u8>> = r.try_get("friendship_token")?;
    let key: Option<Vec<u8>> = r.try_get("friendship_key")?;
    Ok(Contact {
        fid: r.try_get("fid")?,
        status: r.try_get("status")?,
        friendship_token: token.map(arr).transpose()?,
        friendship_key: key.map(arr).transpose()?,
        qs_domain: r.try_get("qs_domain")?,
        connection_group_id: r.try_get("connection_group_id")?,
    })
}

fn group_from_row(r: sqlx::sqlite::SqliteRow) -> Result<Group, ClientError> {
    Ok(Group {
        group_id: r.try_get("group_id")?,
        name: r.try_get("name")?,
        ear_key: arr(r.try_get("ear_key")?)?,
        credential_key: arr(r.try_get("credential_key")?)?,
        kind: r.try_get("kind")?,
        contact: r.try_get("contact")?,
        active: r.try_get("active")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The rows of `mls_kv`, and how many rows the last statements changed in all.
    async fn stored(store: &Store) -> MlsValues {
        let rows = sqlx::query("SELECT key, value FROM mls_kv")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect()
    }

    async fn total_changes(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    // Requirement: PERF-CL-1
    #[tokio::test]
    async fn a_save_writes_only_the_entries_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut values: MlsValues = (0u16..500)
            .map(|i| (i.to_be_bytes().to_vec(), vec![1; 100]))
            .collect();
        store.save_mls(&values).await.unwrap();
        assert_eq!(stored(&store).await, values);
        // One entry changed, one added, one removed: three rows written, not 500.
        values.insert(7u16.to_be_bytes().to_vec(), vec![2; 100]);
        values.insert(1000u16.to_be_bytes().to_vec(), vec![3]);
        values.remove(9u16.to_be_bytes().as_slice());
        let before = total_changes(&store).await;
        store.save_mls(&values).await.unwrap();
        assert_eq!(total_changes(&store).await - before, 3);
        assert_eq!(stored(&store).await, values);
        // A store opened afresh (another process) knows what is stored once it loaded it.
        let again = Store::open(dir.path()).await.unwrap();
        assert_eq!(again.load_mls().await.unwrap(), values);
        values.remove(1000u16.to_be_bytes().as_slice());
        again.save_mls(&values).await.unwrap();
        assert_eq!(stored(&again).await, values);
    }
}
