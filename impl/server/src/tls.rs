//! TLS served by the server itself (rustls, ring provider): the certificate chain and key
//! from PEM files, reloaded on SIGHUP without dropping connections (a handshake uses the
//! configuration current when it starts), and the trust roots for peers' HTTPS.
//!
//! What this module is not: the accept loop and the handshake's timeout ([`crate::edge`]),
//! or which peers may be reached over plain HTTP ([`crate::federation`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The operator's certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS configuration in use; [`Tls::reload`] swaps it.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    // Requirement: OPS-TLS-1
    /// Load the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let config = server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    // Requirement: OPS-TLS-2
    /// Read the files again (after a certificate renewal) and use them for new handshakes.
    /// On error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = Arc::new(server_config(&self.files)?);
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// An acceptor for one connection, with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a private key (PEM) from {}: {}",
            files.key.display(),
            pem_error(&e)
        )
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "the key {} does not go with the certificate {}: {e}",
                    files.key.display(),
                    files.cert.display()
                )
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read certificates (PEM) from {}: {}",
                path.display(),
                pem_error(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no such item in the file".into(),
        other => format!("{other:?}"),
    }
}

/// The extra roots of `--tls-ca-file` for outgoing HTTPS (federation), as reqwest
/// certificates.
pub fn extra_roots(path: Option<&Path>) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    read_certs(path)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))
        })
        .collect()
}
