//! Start, reload and `check` apply one validation (issue: "nothing is accepted that check rejects"):
//! bad material is refused at start and at reload with one line naming the file, a refused reload
//! keeps the old material serving and makes `nfs-tls-proxy reload` exit non-zero, a good reload says
//! what it changed. Real processes, real files.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy"))
}

/// A server in front of an echo backend, with `--pid-file` and `--metrics`; returns it with its
/// pid file.
fn server(dir: &TestPki, backend: &EchoBackend, extra: &[&str]) -> (Proc, String) {
    let d = dir.root().display().to_string();
    let pid_file = format!("{d}/server.pid");
    let crl = format!("{d}/crl.pem");
    let mut flags = vec!["--crl", crl.as_str(), "--pid-file", pid_file.as_str()];
    flags.extend_from_slice(extra);
    let mut args = server_args(&d, &flags);
    args[4] = backend.addr.to_string();
    let proc = Proc::proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    proc.listen_addr();
    (proc, pid_file)
}

/// `nfs-tls-proxy reload --pid-file FILE`: (exit code, stdout + stderr).
fn reload(pid_file: &str) -> (i32, String) {
    let out = bin().args(["reload", "--pid-file", pid_file, "--timeout", "20s"]).output().expect("reload");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn echo_works(dir: &Path, server: &Proc) -> bool {
    let client = our_client(dir, server.listen_addr());
    let ok = echo_through_blocking(client.listen_addr(), b"still serving") == b"still serving";
    if !ok {
        eprintln!("client:\n{}\nserver:\n{}", client.log(), server.log());
    }
    ok
}

#[test]
fn a_crl_of_another_ca_is_refused_at_reload_and_the_old_material_keeps_serving() {
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let (server, pid_file) = server(&dir, &backend, &[]);
    std::fs::copy(dir.path("other/crl.pem"), dir.path("crl.pem")).expect("swap in the other CA's CRL");
    let (code, text) = reload(&pid_file);
    assert_ne!(code, 0, "reload must fail: {text}");
    assert!(text.contains("crl.pem") && text.contains("not signed by the CA"), "{text}");
    server.wait_line(&["ERROR", "reload failed", "crl.pem"]);
    assert!(echo_works(dir.root(), &server), "the old material stopped serving");
}

#[test]
fn a_client_certificate_copied_over_the_server_certificate_is_refused_at_start_and_at_reload() {
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let (server, pid_file) = server(&dir, &backend, &[]);
    let (cert, key) = (dir.path("f3s-storage-ha-cert.pem"), dir.path("f3s-storage-ha-key.pem"));
    let (good_cert, good_key) = (std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key"));
    std::fs::copy(dir.path("r1-cert.pem"), &cert).expect("copy");
    std::fs::copy(dir.path("r1-key.pem"), &key).expect("copy");
    let (code, text) = reload(&pid_file);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("f3s-storage-ha-cert.pem") && text.contains("not valid as a server certificate"),
        "{text}"
    );
    assert!(echo_works(dir.root(), &server), "the old material stopped serving");

    // The same file at start: refused with the same words, before anything listens.
    let d = dir.root().display().to_string();
    let out = bin().args(server_args(&d, &[])).output().expect("start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("f3s-storage-ha-cert.pem") && stderr.contains("not valid as a server certificate"),
        "{stderr}"
    );
    std::fs::write(&cert, good_cert).expect("restore");
    std::fs::write(&key, good_key).expect("restore");
}

#[test]
fn a_good_reload_says_what_it_changed_and_reload_exits_zero() {
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let (server, pid_file) = server(&dir, &backend, &["--allow-cn", "r0"]);
    let ca = ca_tool::ca::CaDir::new(dir.root());
    ca.revoke("r1", 30).expect("revoke r1");
    let (code, text) = reload(&pid_file);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("CRL now") && text.contains("2 revoked"), "{text}");
    server.wait_line(&["reloaded TLS material", "CRL now"]);
    assert!(echo_works(dir.root(), &server));
}

#[test]
fn reload_without_a_running_proxy_fails_with_one_line_naming_the_pid_file() {
    let dir = TestPki::new();
    let missing = dir.path("nobody.pid");
    let (code, text) = reload(&missing.display().to_string());
    assert_ne!(code, 0);
    assert!(text.contains("nobody.pid"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}
