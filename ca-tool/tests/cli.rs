//! `ca-tool` as users run it: the built binary in a fresh directory, cross-checked with openssl and
//! rustls.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

struct CaTool {
    dir: tempfile::TempDir,
}

impl CaTool {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// A CA directory with `init` done.
    fn with_ca() -> Self {
        let t = Self::new();
        t.ok(&["init"]);
        t
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ca-tool"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run ca-tool")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ca-tool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail, and checks it changed nothing and said why on one line.
    fn refused(&self, args: &[&str], expect: &str) {
        let before = snapshot(self.dir.path());
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ca-tool {args:?} should have failed");
        assert!(stderr.contains(expect), "ca-tool {args:?}: stderr {stderr:?} lacks {expect:?}");
        assert_eq!(snapshot(self.dir.path()), before, "ca-tool {args:?} changed the directory");
    }
}

/// File name -> (mode, contents) of every file in a directory.
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let mode = e.metadata().expect("metadata").permissions().mode() & 0o777;
            (e.file_name().to_string_lossy().into_owned(), (mode, std::fs::read(e.path()).expect("read")))
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// openssl is a real peer: in CI it must be there; locally its absence skips loudly.
fn openssl() -> Option<Command> {
    if Command::new("openssl").arg("version").output().is_ok() {
        return Some(Command::new("openssl"));
    }
    assert!(std::env::var_os("CI").is_none(), "openssl is required in CI but is not installed");
    eprintln!("!!! SKIPPING: openssl is not installed (apt-get install openssl)");
    None
}

fn openssl_out(args: &[&str], dir: &Path) -> Option<(bool, String)> {
    let out = openssl()?.args(args).current_dir(dir).output().expect("run openssl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}

#[test]
fn init_creates_the_ca_with_a_private_key_and_an_empty_crl() {
    let t = CaTool::new();
    t.ok(&["init", "--dir", "ca", "--cn", "f3s CA"]);
    let ca = t.path("ca");
    for f in ["ca-cert.pem", "ca-key.pem", "crl.pem", "index.toml"] {
        assert!(ca.join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
    let show = t.ok(&["show", "ca/ca-cert.pem"]);
    assert!(show.contains("CN=f3s CA") && show.contains("CA:          yes"), "{show}");
    assert!(show.contains("keyCertSign, cRLSign"), "{show}");
    if let Some((ok, text)) = openssl_out(&["x509", "-in", "ca/ca-cert.pem", "-noout", "-text"], t.dir.path())
    {
        assert!(ok);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("ASN1 OID: prime256v1"), "{text}");
    }
}

#[test]
fn init_works_in_an_existing_empty_directory_and_defaults_to_the_current_one() {
    let t = CaTool::new();
    t.ok(&["init"]);
    assert!(t.path("ca-cert.pem").exists());
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca_without_force() {
    let t = CaTool::with_ca();
    t.refused(&["init"], "already exists; pass --force");
    let old = std::fs::read(t.path("ca-key.pem")).expect("key");
    t.ok(&["init", "--force"]);
    assert_ne!(std::fs::read(t.path("ca-key.pem")).expect("key"), old);
}

#[test]
fn client_certificate_verifies_with_openssl_and_carries_clientauth_and_its_name() {
    let t = CaTool::with_ca();
    let out = t.ok(&["issue", "r0"]);
    assert!(out.contains("issued client certificate r0"), "{out}");
    assert_eq!(mode(&t.path("r0-key.pem")), 0o600);
    assert_eq!(mode(&t.path("r0-cert.pem")), 0o644);
    let Some((ok, text)) = openssl_out(&["verify", "-CAfile", "ca-cert.pem", "r0-cert.pem"], t.dir.path())
    else {
        return;
    };
    assert!(ok, "{text}");
    let (_, text) =
        openssl_out(&["x509", "-in", "r0-cert.pem", "-noout", "-text"], t.dir.path()).expect("openssl");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Subject: CN = r0"), "{text}");
    assert!(text.contains("DNS:r0"), "{text}");
    assert!(text.contains("Authority Key Identifier"), "{text}");
    let (_, key) =
        openssl_out(&["pkey", "-in", "r0-key.pem", "-noout", "-text"], t.dir.path()).expect("openssl");
    assert!(key.contains("prime256v1"), "{key}");
}

#[test]
fn server_certificate_has_serverauth_and_every_requested_san() {
    let t = CaTool::with_ca();
    t.ok(&[
        "issue",
        "f3s-storage-ha",
        "--server",
        "--dns",
        "f0.lan",
        "--dns",
        "f1.lan",
        "--ip",
        "192.168.1.138",
    ]);
    let show = t.ok(&["show", "f3s-storage-ha-cert.pem"]);
    assert!(show.contains("DNS:f3s-storage-ha, DNS:f0.lan, DNS:f1.lan, IP:192.168.1.138"), "{show}");
    let Some((ok, text)) =
        openssl_out(&["verify", "-CAfile", "ca-cert.pem", "f3s-storage-ha-cert.pem"], t.dir.path())
    else {
        return;
    };
    assert!(ok, "{text}");
    let (_, text) = openssl_out(&["x509", "-in", "f3s-storage-ha-cert.pem", "-noout", "-text"], t.dir.path())
        .expect("openssl");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("DNS:f3s-storage-ha, DNS:f0.lan, DNS:f1.lan, IP Address:192.168.1.138"), "{text}");
}

#[test]
fn combined_writes_certificate_and_key_in_one_private_file() {
    let t = CaTool::with_ca();
    t.ok(&["issue", "r1", "--combined"]);
    let combined = std::fs::read_to_string(t.path("r1-stunnel.pem")).expect("combined");
    assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("BEGIN PRIVATE KEY"));
    assert_eq!(mode(&t.path("r1-stunnel.pem")), 0o600);
}

#[test]
fn serials_are_unique_and_listed_with_kind_and_expiry() {
    let t = CaTool::with_ca();
    for name in ["r0", "r1", "r2", "earth"] {
        t.ok(&["issue", name]);
    }
    t.ok(&["issue", "f3s-storage-ha", "--server"]);
    t.ok(&["issue", "soon", "--days", "10"]);
    let list = t.ok(&["list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{list}");
    let serials: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.split_whitespace().nth(2).expect("serial")).collect();
    assert_eq!(serials.len(), 6, "serials repeat: {list}");
    assert!(list.lines().any(|l| l.starts_with("f3s-storage-ha") && l.contains("server")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("soon") && l.contains("EXPIRES IN")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("r0") && l.ends_with("valid")), "{list}");
}

#[test]
fn revoke_signs_a_crl_that_openssl_verifies_and_that_lists_the_serial() {
    let t = CaTool::with_ca();
    t.ok(&["issue", "r2"]);
    let serial =
        t.ok(&["list"]).lines().nth(1).expect("row").split_whitespace().nth(2).expect("serial").to_owned();
    t.ok(&["revoke", "r2"]);
    assert!(t.ok(&["list"]).contains("revoked"));
    let show = t.ok(&["show", "crl.pem"]);
    assert!(show.contains(&serial), "{show}");
    let Some((ok, text)) =
        openssl_out(&["crl", "-in", "crl.pem", "-CAfile", "ca-cert.pem", "-noout", "-text"], t.dir.path())
    else {
        return;
    };
    assert!(ok && text.contains("verify OK"), "{text}");
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
    let (ok, text) = openssl_out(
        &["verify", "-crl_check", "-CAfile", "ca-cert.pem", "-CRLfile", "crl.pem", "r2-cert.pem"],
        t.dir.path(),
    )
    .expect("openssl");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
}

#[test]
fn crl_is_re_signed_with_a_new_number_even_when_nothing_changed() {
    let t = CaTool::with_ca();
    let before = t.ok(&["show", "crl.pem"]);
    t.ok(&["crl", "--days", "7"]);
    let after = t.ok(&["show", "crl.pem"]);
    assert!(before.contains("CRL number:  1"), "{before}");
    assert!(after.contains("CRL number:  2"), "{after}");
}

#[test]
fn rustls_accepts_a_client_chain_and_refuses_it_once_revoked() {
    let t = CaTool::with_ca();
    t.ok(&["issue", "r0"]);
    let load = |f: &str| ca_tool::pem::load_certs(&t.path(f)).expect("certs");
    let verify = |crl_file: &Path| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(load("ca-cert.pem").remove(0)).expect("root");
        let crls = ca_tool::pem::load_crls(crl_file).expect("crl");
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(crls)
        .build()
        .expect("verifier");
        let leaf: CertificateDer<'static> = load("r0-cert.pem").remove(0);
        verifier.verify_client_cert(&leaf, &[], UnixTime::now())
    };
    assert!(verify(&t.path("crl.pem")).is_ok());
    t.ok(&["revoke", "r0"]);
    let err = verify(&t.path("crl.pem")).expect_err("revoked");
    assert!(matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)), "{err:?}");
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let empty = CaTool::new();
    empty.refused(&["issue", "r0"], "no CA in .");
    empty.refused(&["revoke", "r0"], "no CA in .");
    empty.refused(&["list"], "no CA in .");
    let t = CaTool::with_ca();
    t.ok(&["issue", "r0"]);
    t.refused(&["issue", "r0"], "r0-cert.pem already exists; pass --force");
    t.refused(&["issue", "bad_name"], "invalid name \"bad_name\"");
    t.refused(&["issue", "-leading"], "");
    t.refused(&["issue", "srv", "--server", "--dns", "no..dots"], "invalid --dns \"no..dots\"");
    t.refused(&["issue", "srv", "--server", "--ip", "300.1.1.1"], "is not an IP address");
    t.refused(&["revoke", "nobody"], "no certificate named \"nobody\"");
    t.refused(&["show", "index.toml"], "contains no certificate or CRL");
    t.refused(&["show", "missing.pem"], "missing.pem: cannot read file");
    t.ok(&["revoke", "r0"]);
    t.refused(&["revoke", "r0"], "already revoked");
    for args in [&["issue", "x"][..], &["revoke", "r0"], &["list"], &["crl"]] {
        let out = t.run(args);
        assert!(String::from_utf8_lossy(&out.stderr).lines().count() <= 1);
    }
}

#[test]
fn issue_with_force_replaces_the_key_and_keeps_it_private() {
    let t = CaTool::with_ca();
    t.ok(&["issue", "r0"]);
    let old = std::fs::read(t.path("r0-key.pem")).expect("key");
    t.ok(&["issue", "r0", "--force"]);
    assert_ne!(std::fs::read(t.path("r0-key.pem")).expect("key"), old);
    assert_eq!(mode(&t.path("r0-key.pem")), 0o600);
    // Both serials are recorded, so `revoke r0` revokes the replaced certificate too.
    t.ok(&["revoke", "r0"]);
    assert_eq!(t.ok(&["show", "crl.pem"]).matches("revoked 20").count(), 2);
}

#[test]
fn a_lost_crl_is_re_signed_from_the_index() {
    let t = CaTool::with_ca();
    t.ok(&["issue", "r2"]);
    t.ok(&["revoke", "r2"]);
    std::fs::remove_file(t.path("crl.pem")).expect("rm");
    t.ok(&["crl"]);
    assert!(t.ok(&["show", "crl.pem"]).contains("Revoked:     1"));
}

#[test]
fn a_mismatched_ca_key_is_named() {
    let t = CaTool::with_ca();
    let other = CaTool::with_ca();
    std::fs::copy(other.path("ca-key.pem"), t.path("ca-key.pem")).expect("copy");
    t.refused(&["issue", "r0"], "ca-key.pem does not match");
}

#[test]
fn a_second_ca_tool_is_refused_while_another_changes_the_ca() {
    let t = CaTool::with_ca();
    // Hold the lock as a running ca-tool would (`refused` checks the directory is left unchanged).
    let held = ca_tool::ca::CaDir::new(t.dir.path()).lock().expect("lock");
    t.refused(&["issue", "r0"], "another ca-tool is changing this CA right now");
    t.refused(&["revoke", "r0"], "another ca-tool is changing this CA right now");
    // Reading needs no lock.
    t.ok(&["list"]);
    drop(held);
    t.ok(&["issue", "r0"]);
}
