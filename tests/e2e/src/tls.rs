//! Certificates for the TLS tests: a test CA (made with rcgen) that issues server
//! certificates for a domain, `localhost` and `127.0.0.1`, written as PEM files the
//! server's `--tls-cert`/`--tls-key` and the client's `--ca-cert` read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use tempfile::TempDir;

/// A CA for tests, with its certificate in a PEM file.
pub struct TestCa {
    dir: TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
    issued: AtomicU32,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("phoenix-e2e-ca-")
            .tempdir()
            .unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Self {
            dir,
            cert,
            key,
            issued: AtomicU32::new(0),
        }
    }

    /// The CA certificate (PEM), for `--ca-cert` and `--tls-ca-file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issue a certificate for `domain`, `localhost` and `127.0.0.1`; (cert file, key file).
    pub fn issue(&self, domain: &str) -> (PathBuf, PathBuf) {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let mut params =
            CertificateParams::new(vec![domain.to_owned(), "localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, domain);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = self.dir.path().join(format!("{domain}-{n}.crt"));
        let key_path = self.dir.path().join(format!("{domain}-{n}.key"));
        fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// `GET base+path` over HTTPS trusting only `ca_file`: (status, body), or the error in
/// words.
pub fn https_get(base: &str, path: &str, ca_file: &Path) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pem = fs::read(ca_file).map_err(|e| e.to_string())?;
        let root = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    })
}
