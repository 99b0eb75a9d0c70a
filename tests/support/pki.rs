//! The test PKI: one CA directory made with the ca-tool library, holding every kind of certificate
//! the tests need, each also as stunnel's combined PEM (`NAME-stunnel.pem`).

use std::path::{Path, PathBuf};

use ca_tool::ca::{CaDir, LeafRequest};
use ca_tool::index::CertKind;
use nfs_tls_proxy::config::TlsFiles;

/// The server certificate's name (DNS `localhost` and IP 127.0.0.1 too).
pub const SERVER: &str = "f3s-storage-ha";
/// The ordinary client, valid and admitted.
pub const CLIENT: &str = "r0";

/// A CA directory with [`SERVER`] and these clients: `r0` and `r1` (valid), `r2` (revoked, in
/// `crl.pem`), `expired`, `future` (not yet valid), and under `other/` a second CA with `intruder`
/// and an impostor [`SERVER`].
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = CaDir::new(dir.path());
        ca.init("test CA", 30, false).expect("init");
        let leaf = |name: &str, kind| LeafRequest {
            name: name.into(),
            kind,
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("ip")],
            days: 30,
            combined: true,
            force: false,
        };
        ca.issue(&leaf(SERVER, CertKind::Server)).expect("server");
        for name in [CLIENT, "r1", "r2"] {
            ca.issue(&leaf(name, CertKind::Client)).expect("client");
        }
        ca.revoke("r2", 30).expect("revoke");
        let other = CaDir::new(dir.path().join("other"));
        other.init("other CA", 30, false).expect("other init");
        other.issue(&leaf("intruder", CertKind::Client)).expect("intruder");
        other.issue(&leaf(SERVER, CertKind::Server)).expect("impostor server");
        let pki = Self { dir };
        pki.sign_with_validity("expired", -20, -10);
        pki.sign_with_validity("future", 10, 20);
        pki
    }

    /// The CA directory itself.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the CA directory, e.g. `ca-cert.pem`, `crl.pem`, `r0-stunnel.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS files of a certificate named `name` (`other/intruder` for the other CA's).
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}-cert.pem")),
            key: Some(self.path(&format!("{name}-key.pem"))),
            ca: self.path("ca-cert.pem"),
            insecure_key_permissions: false,
        }
    }

    /// Our CA, to sign what ca-tool will not (expired certificates, an expired CRL).
    fn issuer(&self) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let ca_key = std::fs::read_to_string(self.path("ca-key.pem")).expect("ca key");
        let ca_cert = std::fs::read_to_string(self.path("ca-cert.pem")).expect("ca cert");
        rcgen::Issuer::from_ca_cert_pem(&ca_cert, rcgen::KeyPair::from_pem(&ca_key).expect("key"))
            .expect("issuer")
    }

    /// Writes `name`: a CRL from our CA, revoking nothing, whose nextUpdate passed a day ago.
    pub fn write_expired_crl(&self, name: &str) -> PathBuf {
        let issuer = self.issuer();
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(31),
            next_update: now - time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(99u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer).expect("sign CRL");
        let path = self.path(name);
        std::fs::write(&path, crl.pem().expect("pem")).expect("write");
        path
    }

    /// A client certificate from our CA valid from `from_days` to `to_days` relative to now.
    fn sign_with_validity(&self, name: &str, from_days: i64, to_days: i64) {
        let issuer = self.issuer();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(self.path(&format!("{name}-cert.pem")), cert.pem()).expect("write");
        let key_path = self.path(&format!("{name}-key.pem"));
        ca_tool::fsutil::write_atomic(
            &key_path,
            key.serialize_pem().as_bytes(),
            ca_tool::fsutil::SECRET,
            true,
        )
        .expect("write");
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
