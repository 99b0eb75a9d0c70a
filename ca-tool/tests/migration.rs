//! Taking over the blog's openssl PKI and keeping certificates alive: `import`, legacy leaves,
//! `renew`, superseded serials, `list --expiring`, `bundle`, dotted names. The blog's PKI comes
//! from the shared test support ([`test_support::BlogPki`]: the real openssl commands, which on
//! OpenSSL 3 make v1 certificates) and every result is checked with openssl and rustls.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::UnixTime;
use test_support::{have_openssl, BlogPki};

/// A scratch directory: the blog's PKI in it, the CA directory in `ca/`.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_tool(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ca-tool"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run ca-tool")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ca_tool(args);
        assert!(out.status.success(), "ca-tool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that must fail with one stderr line containing `expect`.
    fn refused(&self, args: &[&str], expect: &str) {
        let out = self.ca_tool(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ca-tool {args:?} should have failed");
        assert!(stderr.contains(expect), "ca-tool {args:?}: stderr {stderr:?} lacks {expect:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
    }

    /// Runs openssl in the site; panics when it fails (use `openssl_status` for expected failures).
    fn openssl(&self, args: &[&str]) -> String {
        test_support::openssl(self.dir.path(), args)
    }

    fn openssl_status(&self, args: &[&str]) -> (bool, String) {
        test_support::openssl_status(self.dir.path(), args)
    }

    /// The blog's PKI in the site (CA and `hosts`), from the shared test support.
    fn blog_pki(&self, hosts: &[&str]) -> BlogPki {
        BlogPki::create(self.dir.path(), hosts)
    }

    fn serial_of(&self, cert: &str) -> String {
        test_support::openssl_serial(&self.path(cert))
    }

    /// `ca-tool import` of the blog's CA (`ca-cert.pem`, `ca-key.pem`) into `ca/`, with `leaves`.
    fn import(&self, leaves: &[&str]) -> String {
        let mut args = vec!["import", "--cert", "ca-cert.pem", "--key", "ca-key.pem", "--dir", "ca"];
        if !leaves.is_empty() {
            args.push("--leaves");
            args.extend_from_slice(leaves);
        }
        self.ok(&args)
    }

    /// `openssl crl -text` of `ca/crl.pem`, its signature checked against `ca/ca-cert.pem`.
    fn crl_text(&self) -> String {
        self.openssl(&["crl", "-in", "ca/crl.pem", "-CAfile", "ca/ca-cert.pem", "-noout", "-text"])
    }

    /// openssl's verdict on `cert` under `ca/`'s CA and CRL: (accepted, what it said).
    fn openssl_verify_with_crl(&self, cert: &str) -> (bool, String) {
        self.openssl_status(&[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca/ca-cert.pem",
            "-CRLfile",
            "ca/crl.pem",
            cert,
        ])
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// rustls' verdict on `leaf` as a client certificate under `ca` and `crl`.
fn rustls_verdict(ca: &Path, crl: &Path, leaf: &Path) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_tool::pem::load_certs(ca).expect("ca").remove(0)).expect("root");
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(ca_tool::pem::load_crls(crl).expect("crl"))
    .build()
    .expect("verifier");
    let leaf = ca_tool::pem::load_certs(leaf).expect("leaf").remove(0);
    verifier.verify_client_cert(&leaf, &[], UnixTime::now()).map(|_| ())
}

/// The list row of a serial.
fn row<'a>(list: &'a str, serial: &str) -> &'a str {
    list.lines().find(|l| l.contains(serial)).unwrap_or_else(|| panic!("serial {serial} not listed:\n{list}"))
}

#[test]
fn the_blogs_openssl_ca_is_imported_and_its_new_v3_leaves_chain_to_it() {
    if !have_openssl() {
        return;
    }
    let s = Site::new();
    s.blog_pki(&["r0", "r1"]);
    assert!(s.openssl(&["x509", "-in", "r0-cert.pem", "-noout", "-text"]).contains("Version: 1 (0x0)"));
    let out = s.import(&["r0-cert.pem", "r1-cert.pem"]);
    assert!(out.contains("imported CA C=DE, O=f3s, CN=f3s stunnel CA"), "{out}");
    let legacy = s.serial_of("r0-cert.pem");
    assert!(out.contains(&format!("legacy certificate r0: serial {legacy}")), "{out}");
    // The same CA certificate, byte for byte; the key kept private.
    assert_eq!(
        ca_tool::pem::load_certs(&s.path("ca-cert.pem")).expect("ca"),
        ca_tool::pem::load_certs(&s.path("ca/ca-cert.pem")).expect("ca")
    );
    assert_eq!(mode(&s.path("ca/ca-key.pem")), 0o600);
    assert_eq!(mode(&s.path("ca")), 0o700);
    let list = s.ok(&["list", "--dir", "ca"]);
    assert!(row(&list, &legacy).contains("valid (legacy"), "{list}");

    let out = s.ok(&["issue", "r0", "--dir", "ca", "--combined"]);
    assert!(out.contains(&format!("superseded serial {legacy}")), "{out}");
    let text = s.openssl(&["verify", "-CAfile", "ca/ca-cert.pem", "ca/r0-cert.pem"]);
    assert!(text.contains("ca/r0-cert.pem: OK"), "{text}");
    let text = s.openssl(&["x509", "-in", "ca/r0-cert.pem", "-noout", "-text"]);
    assert!(text.contains("Version: 3 (0x2)") && text.contains("DNS:r0"), "{text}");
    assert!(text.contains("Signature Algorithm: sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("Issuer: C = DE, O = f3s, CN = f3s stunnel CA"), "{text}");
    // The CRL is signed with the imported RSA key; rustls accepts the new leaf under it.
    let text = s.crl_text();
    assert!(text.contains("verify OK"), "{text}");
    rustls_verdict(&s.path("ca/ca-cert.pem"), &s.path("ca/crl.pem"), &s.path("ca/r0-cert.pem"))
        .expect("rustls");
    // The superseded legacy certificate is not revoked: a host still on it keeps working.
    assert!(!text.contains(&legacy), "{text}");
    let list = s.ok(&["list", "--dir", "ca"]);
    assert!(row(&list, &legacy).contains("superseded"), "{list}");
}

#[test]
fn revoking_a_legacy_serial_puts_it_in_the_crl_that_openssl_reads() {
    if !have_openssl() {
        return;
    }
    let s = Site::new();
    s.blog_pki(&["r1", "r2"]);
    s.import(&["r1-cert.pem", "r2-cert.pem"]);
    let (r1, r2) = (s.serial_of("r1-cert.pem"), s.serial_of("r2-cert.pem"));
    let out = s.ok(&["revoke", "r2", "--dir", "ca", "--serial", &r2]);
    assert!(out.contains(&format!("revoked r2 (serial {r2})")), "{out}");
    let text = s.crl_text();
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains(&format!("Serial Number: {r2}")), "{text}");
    assert!(!text.contains(&r1), "{text}");
    let (ok, text) = s.openssl_verify_with_crl("r2-cert.pem");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = s.openssl_verify_with_crl("r1-cert.pem");
    assert!(ok && text.contains("r1-cert.pem: OK"), "{text}");
    s.refused(&["revoke", "r2", "--dir", "ca", "--serial", &r2], "already revoked");
    s.refused(&["revoke", "r1", "--dir", "ca", "--serial", "ABCD"], "has no serial ABCD");
}

/// A serial whose top bit is set: DER writes it with a leading `00` sign byte, openssl prints it
/// without (`openssl x509 -serial`, `openssl crl -text`, index.txt).
const TOP_BIT: &str = "A9A6540102030405060708090A0B0C0D0E0F1011";
/// The same number as older ca-tool versions printed and stored it: the DER content bytes.
const TOP_BIT_OLD: &str = "00A9A6540102030405060708090A0B0C0D0E0F1011";
/// A serial whose first byte is below 0x10: openssl keeps its leading `0` digit.
const LOW_FIRST_BYTE: &str = "0A11223344556677";

/// The blog's CA with `r0` signed under [`TOP_BIT`] and `r1` under [`LOW_FIRST_BYTE`], imported.
fn site_with_chosen_serials() -> Site {
    let s = Site::new();
    let blog = s.blog_pki(&[]);
    blog.leaf_with_serial("r0", TOP_BIT);
    blog.leaf_with_serial("r1", LOW_FIRST_BYTE);
    let out = s.import(&["r0-cert.pem", "r1-cert.pem"]);
    for (host, serial) in [("r0", TOP_BIT), ("r1", LOW_FIRST_BYTE)] {
        assert_eq!(blog.serial(host), serial, "openssl's own spelling");
        assert!(out.contains(&format!("legacy certificate {host}: serial {serial} ")), "{out}");
    }
    s
}

#[test]
fn a_serial_with_the_top_bit_set_is_printed_as_openssl_prints_it_everywhere() {
    if !have_openssl() {
        return;
    }
    let s = site_with_chosen_serials();
    let list = s.ok(&["list", "--dir", "ca"]);
    assert!(!list.contains(TOP_BIT_OLD), "{list}");
    assert!(row(&list, TOP_BIT).starts_with("r0 "), "{list}");
    assert!(row(&list, LOW_FIRST_BYTE).starts_with("r1 "), "{list}");
    for (host, serial) in [("r0", TOP_BIT), ("r1", LOW_FIRST_BYTE)] {
        let show = s.ok(&["show", &format!("{host}-cert.pem")]);
        assert!(show.contains(&format!("Serial:      {serial}\n")), "{show}");
    }
    let index = std::fs::read_to_string(s.path("ca/index.toml")).expect("index");
    assert!(index.contains(&format!("serial = \"{TOP_BIT}\"")) && !index.contains(TOP_BIT_OLD), "{index}");
    // Superseding names the old serial the same way.
    let out = s.ok(&["issue", "r0", "--dir", "ca"]);
    assert!(out.contains(&format!("superseded serial {TOP_BIT} ")), "{out}");
    // Revoked: the CRL entry as openssl reads it, and as `show` prints it.
    let out = s.ok(&["revoke", "r0", "--dir", "ca", "--serial", TOP_BIT]);
    assert!(out.contains(&format!("revoked r0 (serial {TOP_BIT});")), "{out}");
    let text = s.crl_text();
    assert!(text.contains("verify OK") && text.contains(&format!("Serial Number: {TOP_BIT}\n")), "{text}");
    let show = s.ok(&["show", "ca/crl.pem"]);
    assert!(show.contains(&format!("\n    {TOP_BIT}  revoked ")) && !show.contains(TOP_BIT_OLD), "{show}");
    let (ok, text) = s.openssl_verify_with_crl("r0-cert.pem");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
}

#[test]
fn revoke_serial_takes_either_spelling_of_a_top_bit_serial_and_compares_numbers() {
    if !have_openssl() {
        return;
    }
    let s = site_with_chosen_serials();
    // The old spelling (with the sign byte), as an older ca-tool printed it; then the new one.
    let out = s.ok(&["revoke", "r0", "--dir", "ca", "--serial", TOP_BIT_OLD]);
    assert!(out.contains(&format!("revoked r0 (serial {TOP_BIT});")), "{out}");
    s.refused(&["revoke", "r0", "--dir", "ca", "--serial", TOP_BIT], "already revoked");
    s.refused(&["revoke", "r0", "--dir", "ca", "--serial", &TOP_BIT.to_lowercase()], "already revoked");
    // As `openssl x509 -text` shows a long serial: lower case, colons.
    let colons = "0a:11:22:33:44:55:66:77";
    let out = s.ok(&["revoke", "r1", "--dir", "ca", "--serial", colons]);
    assert!(out.contains(&format!("revoked r1 (serial {LOW_FIRST_BYTE});")), "{out}");
    let text = s.crl_text();
    for serial in [TOP_BIT, LOW_FIRST_BYTE] {
        assert!(text.contains(&format!("Serial Number: {serial}\n")), "{text}");
    }
    // Another number is another serial, whatever its spelling; what is not hex is said so.
    s.refused(&["revoke", "r0", "--dir", "ca", "--serial", "00A9A6"], "has no serial A9A6 ");
    let out = s.ca_tool(&["revoke", "r0", "--dir", "ca", "--serial", "A9-A6"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("\"A9-A6\" is not a serial number"), "{stderr}");
}

#[test]
fn an_index_an_older_ca_tool_wrote_with_00_serials_is_read_as_the_same_numbers_and_rewritten() {
    if !have_openssl() {
        return;
    }
    let s = site_with_chosen_serials();
    // What an older ca-tool wrote for the same import: the DER content bytes, sign byte included.
    let path = s.path("ca/index.toml");
    let new = std::fs::read_to_string(&path).expect("index");
    let old = new.replace(&format!("\"{TOP_BIT}\""), &format!("\"{TOP_BIT_OLD}\""));
    assert_ne!(old, new);
    std::fs::write(&path, &old).expect("write");

    let list = s.ok(&["list", "--dir", "ca"]);
    assert!(row(&list, TOP_BIT).starts_with("r0 ") && !list.contains(TOP_BIT_OLD), "{list}");
    // Importing the leaf again finds it: the same number.
    let out = s.import(&["r0-cert.pem"]);
    assert!(out.contains("already in the index: r0-cert.pem"), "{out}");
    let out = s.ok(&["revoke", "r0", "--dir", "ca", "--serial", TOP_BIT]);
    assert!(out.contains(&format!("revoked r0 (serial {TOP_BIT});")), "{out}");
    // Written back in openssl's form, and the CRL lists the certificate openssl made.
    let index = std::fs::read_to_string(&path).expect("index");
    assert!(index.contains(&format!("serial = \"{TOP_BIT}\"")) && !index.contains(TOP_BIT_OLD), "{index}");
    let (ok, text) = s.openssl_verify_with_crl("r0-cert.pem");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
}

#[test]
fn show_flags_a_v1_certificate_and_one_without_a_san_with_the_fix() {
    if !have_openssl() {
        return;
    }
    let s = Site::new();
    s.blog_pki(&["r0"]);
    let show = s.ok(&["show", "r0-cert.pem"]);
    assert!(show.contains("Certificate (X.509 v1)"), "{show}");
    assert!(
        show.contains(
            "r0-cert.pem: X.509 v1 certificate (made by `openssl x509 -req` without extensions): \
             re-issue it with `ca-tool issue r0` after `ca-tool import`"
        ),
        "{show}"
    );
    // A v3 certificate, but with no subjectAltName.
    std::fs::write(s.path("ext.cnf"), "basicConstraints = CA:FALSE\n").expect("ext");
    s.openssl(&[
        "x509",
        "-req",
        "-in",
        "r0.csr",
        "-CA",
        "ca-cert.pem",
        "-CAkey",
        "ca-key.pem",
        "-out",
        "r0-v3.pem",
        "-days",
        "30",
        "-extfile",
        "ext.cnf",
    ]);
    let show = s.ok(&["show", "r0-v3.pem"]);
    assert!(show.contains("r0-v3.pem: certificate without subjectAltName"), "{show}");
    assert!(show.contains("re-issue it with `ca-tool issue r0` after `ca-tool import`"), "{show}");
    // The CA is not flagged, nor is what ca-tool issues after import.
    assert!(!s.ok(&["show", "ca-cert.pem"]).contains("re-issue"));
    s.import(&[]);
    s.ok(&["issue", "r0", "--dir", "ca"]);
    assert!(!s.ok(&["show", "ca/r0-cert.pem"]).contains("re-issue"));

    // The library function the proxy calls.
    let der = ca_tool::pem::load_certs(&s.path("r0-cert.pem")).expect("cert").remove(0);
    let problem = ca_tool::inspect::legacy_problem_der(&der).expect("v1 is a problem");
    assert_eq!(problem, ca_tool::inspect::LegacyProblem::V1 { name: "r0".into() });
    assert!(problem
        .message(Path::new("/etc/r0-cert.pem"))
        .starts_with("/etc/r0-cert.pem: X.509 v1 certificate"));
}

#[test]
fn an_openssl_1_1_pkcs1_key_and_a_v1_self_signed_root_are_imported_and_rustls_accepts_the_chain() {
    if !have_openssl() {
        return;
    }
    let s = Site::new();
    // `-traditional`: PKCS#1 (`BEGIN RSA PRIVATE KEY`), as OpenSSL 1.1.1 (FreeBSD 13) writes it.
    s.openssl(&["genrsa", "-traditional", "-out", "ca-key.pem", "2048"]);
    assert!(std::fs::read_to_string(s.path("ca-key.pem"))
        .expect("key")
        .starts_with("-----BEGIN RSA PRIVATE KEY"));
    // A v1 root: `openssl x509 -req -signkey` makes a self-signed certificate without extensions.
    s.openssl(&["req", "-new", "-key", "ca-key.pem", "-out", "ca.csr", "-subj", "/CN=old root"]);
    s.openssl(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-signkey",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-days",
        "365",
    ]);
    let out = s.import(&[]);
    assert!(out.contains("(X.509 v1 self-signed root)"), "{out}");
    assert!(std::fs::read_to_string(s.path("ca/ca-key.pem"))
        .expect("key")
        .starts_with("-----BEGIN PRIVATE KEY"));
    s.ok(&["issue", "r0", "--dir", "ca"]);
    s.openssl(&["verify", "-CAfile", "ca/ca-cert.pem", "ca/r0-cert.pem"]);
    let (ca, crl, leaf) = (s.path("ca/ca-cert.pem"), s.path("ca/crl.pem"), s.path("ca/r0-cert.pem"));
    rustls_verdict(&ca, &crl, &leaf).expect("rustls accepts a leaf under a v1 root");
    s.ok(&["revoke", "r0", "--dir", "ca"]);
    let err = rustls_verdict(&ca, &crl, &leaf).expect_err("revoked");
    assert!(matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)), "{err:?}");
}

#[test]
fn import_refuses_a_leaf_a_wrong_key_an_encrypted_key_and_foreign_leaves_naming_the_file() {
    if !have_openssl() {
        return;
    }
    let s = Site::new();
    s.blog_pki(&["r0"]);
    let import = |cert: &str, key: &str| {
        vec!["import", "--cert", cert, "--key", key, "--dir", "ca"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, expect: &str| {
        s.refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), expect)
    };
    run(
        import("r0-cert.pem", "r0-key.pem"),
        "r0-cert.pem: not a CA certificate: an X.509 v1 certificate issued by someone else",
    );
    run(import("ca-cert.pem", "r0-key.pem"), "r0-key.pem does not match ca-cert.pem");
    s.openssl(&["genrsa", "-aes256", "-passout", "pass:secret", "-out", "enc-key.pem", "2048"]);
    run(import("ca-cert.pem", "enc-key.pem"), "enc-key.pem: the private key is encrypted");
    run(import("ca-cert.pem", "missing.pem"), "missing.pem: cannot read file");
    // A leaf of another CA.
    let other = Site::new();
    other.blog_pki(&["x1"]);
    std::fs::copy(other.path("x1-cert.pem"), s.path("x1-cert.pem")).expect("copy");
    let mut args = import("ca-cert.pem", "ca-key.pem");
    args.extend(["--leaves".into(), "x1-cert.pem".into()]);
    run(args, "x1-cert.pem: was not issued by the CA in ca-cert.pem");
    // Nothing was adopted by the refused runs.
    assert!(!s.path("ca/ca-cert.pem").exists());
    // A CA whose keyUsage lacks cRLSign could never sign a CRL anyone accepts.
    std::fs::write(s.path("ku.cnf"), "basicConstraints = critical, CA:TRUE\nkeyUsage = keyCertSign\n")
        .expect("cnf");
    s.openssl(&["req", "-new", "-key", "ca-key.pem", "-out", "ku.csr", "-subj", "/CN=ku"]);
    s.openssl(&[
        "x509",
        "-req",
        "-in",
        "ku.csr",
        "-signkey",
        "ca-key.pem",
        "-out",
        "ku-cert.pem",
        "-extfile",
        "ku.cnf",
    ]);
    run(import("ku-cert.pem", "ca-key.pem"), "ku-cert.pem: not a CA certificate: its keyUsage lacks cRLSign");
    // Importing the same CA again adds leaves; a different CA needs --force.
    s.import(&[]);
    let out = s.import(&["r0-cert.pem"]);
    assert!(out.contains("legacy certificate r0"), "{out}");
    let out = s.import(&["r0-cert.pem"]);
    assert!(out.contains("already in the index: r0-cert.pem"), "{out}");
    std::fs::copy(other.path("ca-cert.pem"), s.path("other-ca.pem")).expect("copy");
    std::fs::copy(other.path("ca-key.pem"), s.path("other-key.pem")).expect("copy");
    s.refused(
        &["import", "--cert", "other-ca.pem", "--key", "other-key.pem", "--dir", "ca"],
        "ca already holds a different CA",
    );
}

#[test]
fn renew_issues_a_fresh_certificate_and_marks_the_old_one_superseded_not_revoked() {
    let s = Site::new();
    s.ok(&["init", "--dir", "ca"]);
    s.ok(&[
        "issue",
        "f3s-storage-ha",
        "--dir",
        "ca",
        "--server",
        "--dns",
        "f0.lan",
        "--ip",
        "192.168.1.138",
        "--days",
        "20",
    ]);
    s.ok(&["issue", "r0", "--dir", "ca", "--combined"]);
    let index = ca_tool::ca::CaDir::new(s.path("ca")).index().expect("index");
    let old_srv = index.current("f3s-storage-ha").next().expect("srv").serial.clone();
    let old_key = std::fs::read(s.path("ca/f3s-storage-ha-key.pem")).expect("key");

    let out = s.ok(&["renew", "f3s-storage-ha", "--dir", "ca", "--days", "400"]);
    assert!(out.contains("renewed server certificate f3s-storage-ha"), "{out}");
    assert!(out.contains(&format!("superseded serial {old_srv}")), "{out}");
    assert_ne!(
        std::fs::read(s.path("ca/f3s-storage-ha-key.pem")).expect("key"),
        old_key,
        "a new key by default"
    );
    let show = s.ok(&["show", "ca/f3s-storage-ha-cert.pem"]);
    assert!(show.contains("DNS:f3s-storage-ha, DNS:f0.lan, IP:192.168.1.138"), "same names: {show}");
    assert!(show.contains("serverAuth"), "same usage: {show}");
    let list = s.ok(&["list", "--dir", "ca"]);
    assert!(row(&list, &old_srv.to_string()).contains("superseded"), "{list}");
    assert!(s.ok(&["show", "ca/crl.pem"]).contains("Revoked:     0"), "superseded is not revoked");

    // --keep-key: the same public key, certified again; the stunnel file follows.
    let pubkey = |f: &str| {
        let der = ca_tool::pem::load_certs(&s.path(f)).expect("cert").remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).expect("parse");
        x.public_key().raw.to_vec()
    };
    let before = pubkey("ca/r0-cert.pem");
    let key_before = std::fs::read(s.path("ca/r0-key.pem")).expect("key");
    s.ok(&["renew", "r0", "--dir", "ca", "--keep-key"]);
    assert_eq!(pubkey("ca/r0-cert.pem"), before);
    assert_eq!(std::fs::read(s.path("ca/r0-key.pem")).expect("key"), key_before);
    assert_eq!(pubkey("ca/r0-stunnel.pem"), before, "the combined file holds the renewed certificate");
    let combined = std::fs::read_to_string(s.path("ca/r0-stunnel.pem")).expect("combined");
    assert!(combined.contains(&std::fs::read_to_string(s.path("ca/r0-cert.pem")).expect("cert")));

    // Revoking the name afterwards revokes the superseded serials too.
    s.ok(&["revoke", "r0", "--dir", "ca"]);
    assert!(s.ok(&["show", "ca/crl.pem"]).contains("Revoked:     2"));
    s.refused(&["renew", "r0", "--dir", "ca"], "has no certificate in force to renew");
    s.refused(&["renew", "nobody", "--dir", "ca"], "no certificate named \"nobody\"");
}

#[test]
fn issue_with_force_marks_the_replaced_serial_superseded() {
    let s = Site::new();
    s.ok(&["init"]);
    s.ok(&["issue", "r1"]);
    let list = s.ok(&["list"]);
    let old = list.lines().nth(1).expect("row").split_whitespace().nth(2).expect("serial").to_owned();
    let out = s.ok(&["issue", "r1", "--force"]);
    assert!(out.contains(&format!("superseded serial {old}")), "{out}");
    let list = s.ok(&["list"]);
    assert!(row(&list, &old).contains("superseded"), "{list}");
    assert_eq!(list.lines().filter(|l| l.ends_with("valid")).count(), 1, "{list}");
}

#[test]
fn list_expiring_shows_only_certificates_in_force_within_the_window() {
    let s = Site::new();
    s.ok(&["init"]);
    s.ok(&["issue", "soon", "--days", "10"]);
    s.ok(&["issue", "later", "--days", "200"]);
    s.ok(&["issue", "gone", "--days", "5"]);
    s.ok(&["revoke", "gone"]);
    s.ok(&["issue", "renewed", "--days", "5"]);
    s.ok(&["renew", "renewed", "--days", "365"]);
    let names = |out: &str| {
        out.lines().skip(1).map(|l| l.split_whitespace().next().unwrap_or("").to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names(&s.ok(&["list", "--expiring", "30d"])), ["soon"]);
    assert_eq!(names(&s.ok(&["list", "--expiring", "1w"])), Vec::<String>::new());
    assert_eq!(names(&s.ok(&["list", "--expiring", "400"])), ["soon", "later", "renewed"]);
    assert_eq!(names(&s.ok(&["list"])).len(), 5);
    let out = s.ca_tool(&["list", "--expiring", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"soon\" is not a duration like 30d, 2w or 12h"));
}

#[test]
fn a_server_bundle_holds_exactly_what_the_host_needs_with_private_modes() {
    let s = Site::new();
    s.ok(&["init", "--dir", "ca", "--cn", "f3s CA"]);
    s.ok(&["issue", "f3s-storage-ha", "--dir", "ca", "--server", "--dns", "f0", "--ip", "192.168.1.138"]);
    for host in ["r0", "r1.lan", "r2"] {
        s.ok(&["issue", host, "--dir", "ca"]);
    }
    s.ok(&["revoke", "r2", "--dir", "ca"]);
    let out = s.ok(&["bundle", "f3s-storage-ha", "--dir", "ca", "--out", "f0-bundle"]);
    assert!(out.contains("bundle for f3s-storage-ha (server)"), "{out}");
    let dir = s.path("f0-bundle");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "INSTALL.txt",
            "ca-cert.pem",
            "crl.pem",
            "f3s-storage-ha-cert.pem",
            "f3s-storage-ha-key.pem",
            "server.toml"
        ]
    );
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(mode(&dir.join("f3s-storage-ha-key.pem")), 0o640);
    for f in ["INSTALL.txt", "ca-cert.pem", "crl.pem", "f3s-storage-ha-cert.pem", "server.toml"] {
        assert_eq!(mode(&dir.join(f)), 0o644, "{f}");
    }
    for f in ["ca-cert.pem", "crl.pem", "f3s-storage-ha-cert.pem", "f3s-storage-ha-key.pem"] {
        let src = s.path(&format!("ca/{f}"));
        assert_eq!(std::fs::read(dir.join(f)).expect("f"), std::fs::read(src).expect("src"), "{f}");
    }
    let config: toml::Table =
        std::fs::read_to_string(dir.join("server.toml")).expect("toml").parse().expect("valid TOML");
    let want: toml::Table = r#"
        listen = ["192.168.1.138:2323"]
        backend = "127.0.0.1:2049"
        cert = "/usr/local/etc/nfs-tls-proxy/f3s-storage-ha-cert.pem"
        key = "/usr/local/etc/nfs-tls-proxy/f3s-storage-ha-key.pem"
        ca = "/usr/local/etc/nfs-tls-proxy/ca-cert.pem"
        crl = "/usr/local/etc/nfs-tls-proxy/crl.pem"
        allow-cn = ["r0", "r1.lan"]
        reload-every = "1h"
    "#
    .parse()
    .expect("want");
    assert_eq!(config, want, "the revoked r2 is not allowed");
    let install = std::fs::read_to_string(dir.join("INSTALL.txt")).expect("install");
    assert!(
        install.contains(
            "install -m 0640 -o root -g nfs-tls-proxy f3s-storage-ha-key.pem /usr/local/etc/nfs-tls-proxy/"
        ),
        "{install}"
    );
    assert!(
        install
            .contains("nfs-tls-proxy check --mode server --config /usr/local/etc/nfs-tls-proxy/server.toml"),
        "{install}"
    );
    assert!(install.contains("service nfs_tls_proxy reload"), "{install}");
    // The install line is valid sh.
    let line = install.lines().find(|l| l.starts_with("install -d")).expect("install line");
    assert!(Command::new("sh").args(["-n", "-c", line]).status().expect("sh").success());

    // Not over a non-empty directory without --force; with it, replaced whole.
    s.refused(
        &["bundle", "f3s-storage-ha", "--dir", "ca", "--out", "f0-bundle"],
        "f0-bundle exists and is not empty; pass --force",
    );
    std::fs::write(dir.join("stale.txt"), "old").expect("stale");
    s.ok(&["bundle", "f3s-storage-ha", "--dir", "ca", "--out", "f0-bundle", "--force"]);
    assert!(!dir.join("stale.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".f0-bundle"))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories left: {leftovers:?}");
    // An empty directory is fine.
    std::fs::create_dir(s.path("empty")).expect("mkdir");
    s.ok(&["bundle", "r0", "--dir", "ca", "--out", "empty"]);
    // A revoked certificate is not bundled.
    s.refused(&["bundle", "r2", "--dir", "ca", "--out", "r2-bundle"], "is revoked in the index");
    assert!(!s.path("r2-bundle").exists());
}

#[test]
fn a_client_bundle_points_at_the_one_server_and_has_no_crl() {
    let s = Site::new();
    s.ok(&["init", "--dir", "ca"]);
    s.ok(&["issue", "r0.lan", "--dir", "ca"]);
    s.refused(
        &["bundle", "r0.lan", "--dir", "ca", "--out", "b"],
        "no server to connect to; pass --server HOST:PORT",
    );
    s.ok(&["issue", "f3s-storage-ha", "--dir", "ca", "--server"]);
    s.ok(&["bundle", "r0.lan", "--dir", "ca", "--out", "b"]);
    let mut files: Vec<String> = std::fs::read_dir(s.path("b"))
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["INSTALL.txt", "ca-cert.pem", "client.toml", "r0.lan-cert.pem", "r0.lan-key.pem"]);
    let config: toml::Table =
        std::fs::read_to_string(s.path("b/client.toml")).expect("toml").parse().expect("valid TOML");
    let want: toml::Table = r#"
        listen = ["127.0.0.1:2323", "127.0.0.1:2049"]
        server = ["f3s-storage-ha:2323"]
        server-name = "f3s-storage-ha"
        cert = "/etc/nfs-tls-proxy/r0.lan-cert.pem"
        key = "/etc/nfs-tls-proxy/r0.lan-key.pem"
        ca = "/etc/nfs-tls-proxy/ca-cert.pem"
    "#
    .parse()
    .expect("want");
    assert_eq!(config, want);
    let install = std::fs::read_to_string(s.path("b/INSTALL.txt")).expect("install");
    assert!(install.contains("systemctl reload-or-restart nfs-tls-proxy-client"), "{install}");
    // Explicit servers and install directory.
    s.ok(&[
        "bundle",
        "r0.lan",
        "--dir",
        "ca",
        "--out",
        "b2",
        "--server",
        "192.168.1.130:2323",
        "--server",
        "192.168.1.131:2323",
        "--server-name",
        "f3s-storage-ha",
        "--install-dir",
        "/opt/ntp",
    ]);
    let config: toml::Table =
        std::fs::read_to_string(s.path("b2/client.toml")).expect("toml").parse().expect("toml");
    assert_eq!(config["server"].as_array().map(Vec::len), Some(2));
    assert_eq!(config["cert"].as_str(), Some("/opt/ntp/r0.lan-cert.pem"));
}

#[test]
fn dotted_names_become_cn_and_san_and_invalid_names_are_refused_with_one_line() {
    let s = Site::new();
    s.ok(&["init"]);
    s.ok(&["issue", "r0.lan"]);
    let show = s.ok(&["show", "r0.lan-cert.pem"]);
    assert!(show.contains("Subject:     CN=r0.lan") && show.contains("SANs:        DNS:r0.lan"), "{show}");
    if have_openssl() {
        let out = Command::new("openssl")
            .args(["x509", "-in", "r0.lan-cert.pem", "-noout", "-ext", "subjectAltName"])
            .current_dir(s.dir.path())
            .output()
            .expect("openssl");
        assert!(String::from_utf8_lossy(&out.stdout).contains("DNS:r0.lan"));
    }
    s.ok(&["issue", "f0.lan", "--server", "--dns", "f0.example.org"]);
    for bad in ["r0.", ".r0", "r0..lan", "r0_lan", "../r0", "r0 lan"] {
        s.refused(&["issue", bad], &format!("invalid name {bad:?}: a name must be a DNS name"));
    }
    assert!(!s.path("r0.-cert.pem").exists());
}

#[test]
fn init_and_import_make_the_ca_directory_private() {
    let s = Site::new();
    s.ok(&["init", "--dir", "new/ca"]);
    assert_eq!(mode(&s.path("new/ca")), 0o700);
    // An existing, open directory is closed down too: it now holds a CA key.
    std::fs::create_dir(s.path("open")).expect("mkdir");
    std::fs::set_permissions(s.path("open"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    s.ok(&["init", "--dir", "open"]);
    assert_eq!(mode(&s.path("open")), 0o700);
    if have_openssl() {
        s.blog_pki(&[]);
        std::fs::create_dir(s.path("imp")).expect("mkdir");
        std::fs::set_permissions(s.path("imp"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        s.ok(&["import", "--cert", "ca-cert.pem", "--key", "ca-key.pem", "--dir", "imp"]);
        assert_eq!(mode(&s.path("imp")), 0o700);
    }
}
