//! ID-CSRs (PKCS#10 DER) as `as/register` receives them: parsed and self-signature checked
//! over the exact received bytes. Anything accepted names a valid FID and client id.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_types::certs::{self, MAX_CERT_LEN};
use phoenix_types::ids::{ClientId, Fid};

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = certs::verify_csr(data) {
        assert!(data.len() <= MAX_CERT_LEN);
        let fid = csr.subject.fid.to_string();
        assert_eq!(Fid::parse(&fid).map(|f| f.to_string()), Ok(fid));
        assert!(ClientId::parse(csr.subject.client_id.as_str()).is_ok());
    }
});
