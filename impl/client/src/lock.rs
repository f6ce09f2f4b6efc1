//! One writer per client state: an exclusive advisory lock on `<home>/state.lock`, held by
//! the [`crate::Client`] for as long as it is open.
//!
//! Two processes working on one state directory at once would each load the openmls state,
//! advance the same ratchets and write back over each other: four concurrent `phoenix send`
//! all reported success while the receivers got one message and three decryption errors.
//! The lock makes the second process wait (briefly, bounded) and then fail with a message
//! naming the holder. The lock is the operating system's (`flock` on Unix, through
//! [`std::fs::File::try_lock`]), so it is released when the holder exits, even by a crash:
//! there is never a stale lock to clean up. What the file contains (the holder's process id
//! and command) is only for the message.
//!
//! It is not responsible for concurrency inside one process: a [`crate::Client`] takes
//! `&mut self` for every operation that changes state.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::ClientError;

/// How long a second process waits for the lock by default before giving up.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

// Requirement: CL-LOCK-1
impl StateLock {
    /// Take the lock of the state directory `home` (which must exist), waiting up to
    /// `wait` for another holder to finish.
    pub async fn acquire(home: &Path, wait: Duration) -> Result<Self, ClientError> {
        let path = home.join("state.lock");
        let mut file = open_private(&path)?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if started.elapsed() >= wait {
                        return Err(ClientError::Usage(format!(
                            "the client state in {} is in use by another phoenix process ({}); \
                             waited {} s: try again when it has finished",
                            home.display(),
                            holder(&mut file),
                            wait.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(TryLockError::Error(e)) => {
                    return Err(ClientError::Store(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        // Who holds it, for the next process's message. Best effort: the lock itself is
        // what excludes.
        let me = format!(
            "pid {} ({})",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = file.write_all(me.as_bytes());
        let _ = file.flush();
        Ok(Self { _file: file })
    }
}

/// The holder's description as it wrote it into the lock file.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(512).read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "holder unknown".to_owned()
    } else {
        text.to_owned()
    }
}

/// Open (creating) a file readable and writable by its owner only.
pub fn open_private(path: &Path) -> Result<File, ClientError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| ClientError::Store(format!("cannot open {}: {e}", path.display())))
}

/// The path of the lock of `home`, for messages and tests.
pub fn lock_path(home: &Path) -> PathBuf {
    home.join("state.lock")
}
