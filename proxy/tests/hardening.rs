//! Hardening as operators meet it: key file permissions, dropping privileges, a reserved source port
//! towards Linux NFS servers, periodic reload, and expiry warnings.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_private_key_readable_by_others_stops_start_up_with_the_fix_in_the_message() {
    let dir = TestPki::new();
    let key = dir.root().join("f3s-storage-ha-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let d = dir.root().display().to_string();
    fails_with(
        &strs(&server_args(&d, &[])),
        &format!(
            "{}: private key is readable by others (mode 0644); fix with `chmod 600 {}`",
            key.display(),
            key.display()
        ),
    );
    // The explicit override starts anyway.
    let proxy = Proc::proxy(&strs(&server_args(&d, &["--insecure-key-permissions"])));
    proxy.listen_addr();
}

#[test]
fn a_combined_pem_readable_by_others_is_refused_too() {
    let dir = TestPki::new();
    let combined = dir.root().join("r0-stunnel.pem");
    std::fs::set_permissions(&combined, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let args = [
        "client",
        "--server",
        "127.0.0.1:1",
        "--cert",
        &p(dir.root(), "r0-stunnel.pem"),
        "--ca",
        &p(dir.root(), "ca-cert.pem"),
    ];
    fails_with(&args, "r0-stunnel.pem: private key is open to group 0 (mode 0640), which is not the group the proxy runs as");
}

#[test]
fn dropping_privileges_with_a_vip_on_a_privileged_port_is_refused_with_the_reason() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &["--user", "nobody"]);
    args[2] = "192.0.2.100:999".into();
    fails_with(&strs(&args), "--listen 192.0.2.100:999 with --user: after dropping privileges");
    fails_with(
        &strs(&server_args(&d, &["--user", "nobody", "--backend-source-port", "reserved"])),
        "--backend-source-port reserved needs root for every backend connection; it cannot be combined with --user",
    );
    fails_with(
        &strs(&server_args(&d, &["--user", "no-such-user-here"])),
        "--user no-such-user-here: no such user",
    );
}

/// The documented ownership of the server key, `root:SERVICE-GROUP` mode 0640, with `nogroup` as the
/// service group; the material's directory gets `dir_mode`. Returns nogroup's gid.
fn key_for_nogroup(dir: &TestPki, dir_mode: u32) -> u32 {
    let key = dir.path("f3s-storage-ha-key.pem");
    let nogroup = nix::unistd::Group::from_name("nogroup").expect("lookup").expect("nogroup").gid;
    nix::unistd::chown(&key, None, Some(nogroup)).expect("chgrp");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    std::fs::set_permissions(dir.root(), std::fs::Permissions::from_mode(dir_mode)).expect("chmod dir");
    nogroup.as_raw()
}

#[test]
fn a_server_runs_as_the_given_user_after_binding_and_still_tunnels() {
    if !require_root() {
        return;
    }
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let backend = EchoBackend::start();
    // The documented ownership: root:SERVICE-GROUP, mode 0640 (and a directory the user can enter).
    key_for_nogroup(&dir, 0o755);
    let mut args = server_args(&d, &["--user", "nobody", "--group", "nogroup"]);
    args[4] = backend.addr.to_string();
    let server = Proc::proxy(&strs(&args));
    let server_addr = server.listen_addr();
    server.wait_line(&["dropped privileges", "user=nobody"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    let nobody = nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody").uid.as_raw();
    assert!(
        uid_line.split_whitespace().skip(1).all(|id| id == nobody.to_string()),
        "real, effective, saved and fs uid must all be nobody: {uid_line}"
    );
    let client = our_client(dir.root(), server_addr);
    let data = vec![7u8; 100_000];
    assert_eq!(echo_through_blocking(client.listen_addr(), &data), data);
}

#[test]
fn a_key_the_run_as_user_cannot_read_stops_start_up_instead_of_every_later_reload() {
    if !require_root() {
        return;
    }
    // convert-stunnel turns `setuid = stunnel` into `user`: a root-owned 0600 key loads at start but
    // no reload after the privilege drop could read it again.
    let dir = TestPki::new();
    std::fs::set_permissions(dir.root(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let d = dir.root().display().to_string();
    let args = server_args(&d, &["--user", "nobody"]);
    fails_with(&strs(&args), "f3s-storage-ha-key.pem: not readable by uid 65534");
}

#[test]
fn material_in_a_directory_the_run_as_user_cannot_enter_stops_start_up_naming_the_directory() {
    if !require_root() {
        return;
    }
    // The key itself is right (root:nogroup 0640) but the directory of all the material is root's
    // 0700: the user run as could never open any of it again at a reload.
    let dir = TestPki::new();
    let nogroup = key_for_nogroup(&dir, 0o700);
    let d = dir.root().display().to_string();
    let args = server_args(&d, &["--user", "nobody", "--group", "nogroup"]);
    fails_with(
        &strs(&args),
        &format!(
            "f3s-storage-ha-cert.pem: cannot be opened by uid 65534 gid {nogroup}, which the proxy runs as, \
             and every reload reads it again: Permission denied (os error 13); directory {d} (owner 0:0, \
             mode 0700) does not let it search"
        ),
    );
}

#[test]
fn a_ca_file_the_run_as_user_cannot_read_stops_start_up_too() {
    if !require_root() {
        return;
    }
    // Certificates are read again at every reload as well, after the privilege drop.
    let dir = TestPki::new();
    key_for_nogroup(&dir, 0o755);
    std::fs::set_permissions(dir.path("ca-cert.pem"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod ca");
    let d = dir.root().display().to_string();
    let args = server_args(&d, &["--user", "nobody", "--group", "nogroup"]);
    fails_with(&strs(&args), "ca-cert.pem: cannot be opened by uid 65534");
}

#[test]
fn a_reserved_source_port_reaches_the_backend_from_below_1024() {
    if !require_root() {
        return;
    }
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let backend = EchoBackend::start();
    let mut args = server_args(&d, &["--backend-source-port", "reserved"]);
    args[4] = backend.addr.to_string();
    let server = Proc::proxy(&strs(&args));
    let client = our_client(dir.root(), server.listen_addr());
    for i in 0..3u8 {
        let data = vec![i; 1000];
        assert_eq!(echo_through_blocking(client.listen_addr(), &data), data);
    }
    let ports = backend.peer_ports();
    assert_eq!(ports.len(), 3);
    assert!(ports.iter().all(|p| (600..1024).contains(p)), "source ports {ports:?}");
}

#[test]
fn reload_every_rereads_the_material_without_a_signal_and_keeps_it_when_a_file_breaks() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let crl = format!("{d}/crl.pem");
    let server = Proc::proxy(&strs(&server_args(&d, &["--crl", &crl, "--reload-every", "200ms"])));
    server.listen_addr();
    server.wait_line(&["reloaded TLS material"]);
    std::fs::write(&crl, "not a CRL").expect("break the CRL");
    server.wait_line(&["reload failed", "trigger=\"--reload-every\"", "crl.pem"]);
}

#[test]
fn certificates_within_thirty_days_of_expiry_are_warned_about_at_start_and_a_fresh_crl_is_not() {
    // The test PKI issues everything for 30 days: the certificate and the CA are inside their
    // warning window; the CRL (re-signed by cron, warned about 7 days ahead) is not.
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let server = Proc::proxy(&strs(&server_args(&d, &["--crl", &format!("{d}/crl.pem")])));
    server.listen_addr();
    for what in ["what=\"certificate\"", "what=\"ca\""] {
        let line = server.wait_line(&["expires soon", what]);
        assert!(line.contains("WARN") && line.contains("days_left="), "{line}");
    }
    // The three deadlines are checked in one pass, the CRL's last: by now it would have been logged.
    assert!(!server.log().contains("crl-next-update"), "{}", server.log());
}
