//! The blog's hand-made openssl PKI, made with the openssl commands the f3s setup used: an RSA 4096
//! CA from `openssl genrsa` and `openssl req -new -x509`, and for each host an RSA 2048 key, a CSR
//! and a certificate from `openssl x509 -req -CAcreateserial` (X.509 v1 on OpenSSL 3: no
//! extensions, no subjectAltName). The tests that import it into ca-tool, run stunnel on it and
//! walk the migration to nfs-tls-proxy all start from this one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The blog CA's subject, as `openssl req -subj` takes it.
pub const BLOG_CA_SUBJECT: &str = "/C=DE/O=f3s/CN=f3s stunnel CA";

/// The blog's PKI in a directory: `ca-cert.pem`, `ca-key.pem`, and per host `HOST-key.pem` (mode
/// 0600, as a host keeps it), `HOST.csr` and `HOST-cert.pem`.
#[derive(Debug, Clone)]
pub struct BlogPki {
    dir: PathBuf,
}

impl BlogPki {
    /// Makes the CA and a certificate for each of `hosts` in `dir` (created when missing).
    pub fn create(dir: &Path, hosts: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let pki = Self { dir: dir.to_owned() };
        pki.openssl(&["genrsa", "-out", "ca-key.pem", "4096"]);
        pki.openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "3650",
            "-key",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-subj",
            BLOG_CA_SUBJECT,
        ]);
        for host in hosts {
            pki.leaf(host);
        }
        pki
    }

    /// Issues `HOST-cert.pem` as the blog did, its serial from `ca-cert.srl` (random at first, then
    /// counting up: `-CAcreateserial`).
    pub fn leaf(&self, host: &str) -> PathBuf {
        self.sign(host, &["-CAcreateserial"])
    }

    /// [`Self::leaf`] with a chosen serial (hex, e.g. `A9A654...`: `openssl x509 -set_serial 0x...`),
    /// for tests that need one that random serials only sometimes give.
    pub fn leaf_with_serial(&self, host: &str, serial_hex: &str) -> PathBuf {
        self.sign(host, &["-set_serial", &format!("0x{serial_hex}")])
    }

    fn sign(&self, host: &str, serial: &[&str]) -> PathBuf {
        let (key, csr, cert) = (format!("{host}-key.pem"), format!("{host}.csr"), format!("{host}-cert.pem"));
        self.openssl(&["genrsa", "-out", &key, "2048"]);
        // The key is the host's secret (nfs-tls-proxy checks this; stunnel and ca-tool do not).
        chmod_600(&self.path(&key));
        self.openssl(&["req", "-new", "-key", &key, "-out", &csr, "-subj", &format!("/CN={host}")]);
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem"];
        self.openssl(&[&sign[..], serial, &["-out", &cert, "-days", "3650"]].concat());
        self.path(&cert)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in it, e.g. `ca-cert.pem`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `HOST-cert.pem`.
    pub fn cert(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}-cert.pem"))
    }

    /// `HOST-key.pem`.
    pub fn key(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}-key.pem"))
    }

    /// What `openssl x509 -serial -noout` prints for `HOST-cert.pem`, without `serial=`.
    pub fn serial(&self, host: &str) -> String {
        openssl_serial(&self.cert(host))
    }

    /// Runs openssl in the directory; panics when it fails.
    pub fn openssl(&self, args: &[&str]) -> String {
        openssl(&self.dir, args)
    }
}

/// Whether openssl is installed: in CI it must be (the test fails); locally its absence skips
/// loudly.
pub fn have_openssl() -> bool {
    if Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "openssl is required in CI but is not installed");
    eprintln!("!!! SKIPPING: openssl is not installed (apt-get install openssl)");
    false
}

/// Runs openssl in `dir`: whether it succeeded, and stdout then stderr.
pub fn openssl_status(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs openssl in `dir`; panics when it fails. Returns stdout then stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl_status(dir, args);
    assert!(ok, "openssl {args:?} failed: {text}");
    text
}

/// What `openssl x509 -serial -noout` prints for `cert`, without `serial=`.
pub fn openssl_serial(cert: &Path) -> String {
    let dir = cert.parent().unwrap_or(Path::new("."));
    let text = openssl(dir, &["x509", "-in", &cert.display().to_string(), "-noout", "-serial"]);
    text.trim().trim_start_matches("serial=").to_owned()
}

fn chmod_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}
