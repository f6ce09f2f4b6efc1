//! Client errors: each says whose fault it is (the user's input, the server's answer, a
//! verification failure, or local storage).

use thiserror::Error;

use phoenix_types::error::WireError;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The user asked for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// The server refused the request.
    #[error("server refused the request: {0}")]
    Server(WireError),
    /// The server could not be reached or answered garbage.
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// No connection could be made (refused, name not found, TLS handshake failed): the
    /// request never left, so the server cannot have acted on it.
    #[error("cannot reach the server: {0}")]
    NotSent(String),
    /// Something the server or a peer sent does not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// MLS processing failed.
    #[error("MLS error: {0}")]
    Mls(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
}

impl ClientError {
    /// The stable server error code, if the server refused the request.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ClientError::Server(e) => Some(e.code.as_str()),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ClientError {
    fn from(e: sqlx::Error) -> Self {
        ClientError::Store(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for ClientError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        ClientError::Store(e.to_string())
    }
}

pub fn mls_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Mls(e.to_string())
}

pub fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::Usage(msg.into())
}

pub fn verification(msg: impl Into<String>) -> ClientError {
    ClientError::Verification(msg.into())
}
