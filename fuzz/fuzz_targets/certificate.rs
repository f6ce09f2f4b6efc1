//! X.509 certificates (DER) as clients and the server parse them: parsed, then checked as
//! a self-signed home-server CA and as an ID-Cert issued by a fixed CA.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::harness::{NOW, fixed_ca};
use phoenix_types::certs::{MAX_CERT_LEN, ParsedCert};

fuzz_target!(|data: &[u8]| {
    let Ok(cert) = ParsedCert::parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_CERT_LEN);
    assert_eq!(cert.der, data);
    let _ = cert.fingerprint();
    let _ = cert.valid_at(NOW);
    let _ = cert.verify_self_signed_ca(&cert.issuer_domain);
    let ca = fixed_ca();
    if let Ok(actor) = cert.verify_issued_by(ca, Some(NOW)) {
        // Only our fixed CA's key can have signed it, and it names a user of its domain.
        assert_eq!(actor.fid.domain(), &ca.issuer_domain);
    }
});
