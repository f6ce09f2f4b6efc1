//! Keys at rest: the server's private keys (the CA signing keys, the QS signing key, the
//! group-token key and the queue-config HPKE key) are stored sealed under a key-encryption
//! key (KEK) that is not in the database: AES-256-GCM, a random nonce per seal, and the key's
//! name as associated data, so a sealed key cannot be moved to another slot.
//!
//! Where the KEK comes from (see [`KeySource`]): the `PHOENIX_KEY_ENCRYPTION_KEY`
//! environment variable (64 hex digits), or a file named by `--key-encryption-key-file`
//! (32 raw bytes, or 64 hex digits), or by default `key-encryption-key` in the data
//! directory, created (mode `0600`, 32 random bytes) on first start. A database snapshot
//! alone (a `pg_dump`, a copy of `phoenix.db`) then holds no private key in the clear.
//!
//! Keys stored in the clear by an earlier version are sealed in place at the next start
//! ([`crate::server`]). A wrong KEK refuses the start with a message that says so.
//!
//! What this module is not: the group states' encryption (under keys only the clients
//! hold, `ds::group_state`), or the TLS key (a file the operator manages, [`crate::tls`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use phoenix_types::crypto::{SymmetricKey, open_aead, seal_aead};

/// Prefix of a sealed key: format and version.
const MAGIC: &[u8; 8] = b"phxkek1\0";
/// Associated-data prefix: what the ciphertext is.
const AAD_LABEL: &str = "phoenix server key at rest v1: ";

/// The key-encryption key. Cheap to clone; zeroized when the last clone is dropped.
#[derive(Clone)]
pub struct KeyEncryptionKey(Arc<SymmetricKey>);

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(***)")
    }
}

impl Default for KeyEncryptionKey {
    /// One random KEK per process, for servers started in-process by tests (every server
    /// of the process, and every restart on the same database within it, shares it). The
    /// binary never uses it: `phoenix-server` always resolves a [`KeySource`].
    fn default() -> Self {
        static PROCESS: OnceLock<KeyEncryptionKey> = OnceLock::new();
        PROCESS
            .get_or_init(|| Self(Arc::new(SymmetricKey::random(&mut OsRng))))
            .clone()
    }
}

/// Why a stored key could not be opened, or a KEK not loaded.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error(
        "the key-encryption key does not open the stored {0} key: it is not the key the server's keys were sealed under (check PHOENIX_KEY_ENCRYPTION_KEY or --key-encryption-key-file), or the stored key is corrupt"
    )]
    WrongKey(String),
    #[error("{0}")]
    Source(String),
}

impl KeyEncryptionKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Arc::new(SymmetricKey(bytes)))
    }

    /// Seal `private` (the key named `name`) for storage.
    pub fn seal(&self, name: &str, private: &[u8]) -> Result<Vec<u8>, KekError> {
        let sealed = seal_aead(&self.0, &aad(name), private, &mut OsRng)
            .map_err(|_| KekError::Source(format!("cannot seal the {name} key")))?;
        let mut out = Vec::with_capacity(MAGIC.len() + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Open a stored key named `name`: [`Opened::Sealed`] when it was sealed (under this
    /// KEK, else [`KekError::WrongKey`]), [`Opened::Clear`] when an earlier version stored
    /// it in the clear.
    pub fn open(&self, name: &str, stored: &[u8]) -> Result<Opened, KekError> {
        match stored.strip_prefix(MAGIC.as_slice()) {
            Some(sealed) => open_aead(&self.0, &aad(name), sealed)
                .map(|clear| Opened::Sealed(Zeroizing::new(clear)))
                .map_err(|_| KekError::WrongKey(name.to_owned())),
            None => Ok(Opened::Clear(Zeroizing::new(stored.to_vec()))),
        }
    }
}

/// A stored key, opened.
pub enum Opened {
    Sealed(Zeroizing<Vec<u8>>),
    /// Stored in the clear (by a version before keys were sealed): seal it in place.
    Clear(Zeroizing<Vec<u8>>),
}

impl Opened {
    pub fn key(&self) -> &[u8] {
        match self {
            Opened::Sealed(k) | Opened::Clear(k) => k,
        }
    }
}

/// Whether `stored` is a sealed key (for tests and the admin view).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

fn aad(name: &str) -> Vec<u8> {
    format!("{AAD_LABEL}{name}").into_bytes()
}

/// Where the operator's KEK comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `PHOENIX_KEY_ENCRYPTION_KEY` (64 hex digits).
    Env,
    /// `--key-encryption-key-file`: must exist.
    File(PathBuf),
    /// The default file in the data directory, created on first start.
    DataDir(PathBuf),
}

/// The environment variable holding the KEK itself.
pub const ENV: &str = "PHOENIX_KEY_ENCRYPTION_KEY";
/// The default KEK file's name in the data directory.
pub const DEFAULT_FILE: &str = "key-encryption-key";

impl KeySource {
    /// Load the KEK (creating the default file when missing).
    pub fn load(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<KeyEncryptionKey, KekError> {
        match self {
            KeySource::Env => {
                let value = env(ENV).unwrap_or_default();
                parse_key(value.trim().as_bytes())
                    .map_err(|e| KekError::Source(format!("{ENV}: {e}")))
            }
            KeySource::File(path) => read_key_file(path),
            KeySource::DataDir(path) => {
                if !path.exists() {
                    create_key_file(path)?;
                    tracing::warn!(
                        path = %path.display(),
                        "created a key-encryption key next to the data: a copy of the database alone reveals no private key, but a copy of the whole data directory does; keep the key elsewhere (--key-encryption-key-file or {ENV}) for backups to be safe"
                    );
                }
                read_key_file(path)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeySource::Env => format!("environment variable {ENV}"),
            KeySource::File(p) => format!("file {}", p.display()),
            KeySource::DataDir(p) => {
                format!("file {} (default, in the data directory)", p.display())
            }
        }
    }
}

fn read_key_file(path: &Path) -> Result<KeyEncryptionKey, KekError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(KekError::Source(format!(
                "the key-encryption key file {} has mode {:04o}: group or others may read it; run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        KekError::Source(format!(
            "cannot read the key-encryption key file {}: {e}",
            path.display()
        ))
    })?);
    parse_key(&bytes).map_err(|e| KekError::Source(format!("{}: {e}", path.display())))
}

/// 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
fn parse_key(bytes: &[u8]) -> Result<KeyEncryptionKey, String> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(KeyEncryptionKey::from_bytes(raw));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "expected 32 bytes or 64 hex digits".to_string())?
        .trim();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text, key.as_mut_slice()).map_err(|_| {
        format!(
            "expected 64 hex digits (32 bytes), got {} characters; make one with `openssl rand -hex 32`",
            text.len()
        )
    })?;
    Ok(KeyEncryptionKey::from_bytes(*key))
}

fn create_key_file(path: &Path) -> Result<(), KekError> {
    use std::io::Write;
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut_slice());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let text = Zeroizing::new(hex::encode(key.as_slice()));
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| {
            KekError::Source(format!(
                "cannot create the key-encryption key file {}: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_their_kek_and_name() {
        let kek = KeyEncryptionKey::from_bytes([7; 32]);
        let sealed = kek.seal("qs_signing", &[1; 32]).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(32).any(|w| w == [1; 32]));
        assert!(
            matches!(kek.open("qs_signing", &sealed).unwrap(), Opened::Sealed(k) if *k == [1; 32])
        );
        // Another slot, another KEK: refused.
        assert!(matches!(
            kek.open("ca", &sealed),
            Err(KekError::WrongKey(_))
        ));
        let other = KeyEncryptionKey::from_bytes([8; 32]);
        assert!(matches!(
            other.open("qs_signing", &sealed),
            Err(KekError::WrongKey(_))
        ));
        // A key from before sealing.
        assert!(matches!(
            kek.open("qs_signing", &[1; 32]).unwrap(),
            Opened::Clear(_)
        ));
    }

    #[test]
    fn key_sources_parse_hex_and_raw_and_refuse_the_rest() {
        assert!(parse_key(&[3; 32]).is_ok());
        assert!(parse_key(hex::encode([3; 32]).as_bytes()).is_ok());
        assert!(parse_key(format!(" {}\n", hex::encode([3; 32])).as_bytes()).is_ok());
        let short = parse_key(b"abcd").err().unwrap();
        assert!(short.contains("64 hex digits"), "{short}");
        let env = |_: &str| None;
        assert!(KeySource::Env.load(&env).is_err());
    }

    #[test]
    fn the_default_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("phoenix-kek-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DEFAULT_FILE);
        let source = KeySource::DataDir(path.clone());
        let env = |_: &str| None;
        let first = source.load(&env).unwrap();
        let sealed = first.seal("x", b"secret").unwrap();
        let second = source.load(&env).unwrap();
        assert!(matches!(
            second.open("x", &sealed).unwrap(),
            Opened::Sealed(_)
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = source.load(&env).err().unwrap().to_string();
            assert!(refused.contains("chmod 600"), "{refused}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
