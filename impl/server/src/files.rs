//! Files at rest: the embedded SQLite database holds the CA signing key, the QS federation
//! signing key and the queue-config private key, so only the server's own user may read it.
//! At start-up the data directory is created `0700`, a new database file is created `0600`
//! before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database file's
//! mode), and an existing database file (or `-wal`/`-shm` file) that group or others may
//! read or write refuses the start, naming the file and the fix.
//!
//! What this module is not: Postgres's files, which belong to the database server.

use std::path::{Path, PathBuf};

/// The file of a `sqlite:` URL, or `None` for other URLs and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Create `dir` (and missing parents) with mode `0700`; an existing directory is left as
/// it is.
// Requirement: OPS-FILES-1
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))
}

/// Before SQLite opens the database of `url`: refuse an existing database, `-wal` or
/// `-shm` file readable or writable by group or others, and create a missing database
/// file with mode `0600`.
// Requirement: OPS-FILES-1
pub fn prepare_sqlite(url: &str) -> Result<(), String> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        check_private(Path::new(&name))?;
    }
    if !path.exists() {
        create_private_file(&path)?;
    }
    Ok(())
}

/// An existing file must not be accessible to group or others.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read the mode of {}: {e}", path.display())),
    };
    if mode & 0o077 != 0 {
        return Err(format!(
            "the database file {path} has mode {mode:04o}: group or others may read it, and it holds this server's private keys (CA, federation and queue-config keys); run `chmod 600 {path}` (and consider the keys exposed if other users had access), then start again",
            path = path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

fn create_private_file(path: &Path) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another process created it meanwhile: its mode is checked on the next start.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private(path),
        Err(e) => Err(format!(
            "cannot create database file {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/p/phoenix.db"),
            Some(PathBuf::from("/var/lib/p/phoenix.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:data/x.db?mode=rwc"),
            Some(PathBuf::from("data/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite:x?mode=memory&cache=shared"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
