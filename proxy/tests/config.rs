//! Start-up as operators meet it: bad configuration stops with one line naming the file or flag;
//! a TOML config runs, with flags winning over it; SIGTERM drains and exits 0.

mod support;

use support::*;

#[test]
fn missing_certificate_file_is_named_in_one_line() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    args[6] = "/nonexistent/cert.pem".into();
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "/nonexistent/cert.pem: cannot read file",
    );
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    args[8] = format!("{d}/r0-key.pem");
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "r0-key.pem: does not match the certificate",
    );
}

#[test]
fn certificate_without_key_and_no_key_flag_is_refused() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let args = [
        "client",
        "--server",
        "127.0.0.1:1",
        "--cert",
        &format!("{d}/r0-cert.pem"),
        "--ca",
        &format!("{d}/ca-cert.pem"),
    ];
    fails_with(&args, "contains no private key; pass --key");
}

#[test]
fn missing_required_option_is_named() {
    fails_with(&["server", "--listen", "127.0.0.1:0"], "--backend is required");
}

#[test]
fn address_that_does_not_parse_is_named() {
    fails_with(&["server", "--listen", "nowhere"], "--listen");
    fails_with(&["client", "--server", "f3s:notaport"], "--server");
    fails_with(&["server", "--handshake-timeout", "10 parsecs"], "--handshake-timeout");
}

#[test]
fn unknown_key_in_the_config_file_is_named() {
    let dir = TestPki::new();
    let conf = write(dir.root(), "server.toml", "listen = [\"127.0.0.1:0\"]\nverify = 2\n");
    fails_with(&["server", "--config", &conf.display().to_string()], "server.toml: unknown key \"verify\"");
}

#[test]
fn toml_config_runs_and_flags_win_over_it() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let echo = EchoBackend::start();
    let conf = write(
        dir.root(),
        "server.toml",
        &format!(
            "listen = [\"127.0.0.1:1\"]\nbackend = \"{}\"\ncert = \"{d}/f3s-storage-ha-cert.pem\"\nkey = \"{d}/f3s-storage-ha-key.pem\"\n\
             ca = \"{d}/ca-cert.pem\"\ncrl = \"{d}/crl.pem\"\nallow-cn = [\"r0\"]\nhandshake-timeout = \"5s\"\n",
            echo.addr
        ),
    );
    // --listen on the command line replaces the file's (unbindable) port 1.
    let server = Proc::proxy(&["server", "--config", &conf.display().to_string(), "--listen", "127.0.0.1:0"]);
    let addr = server.listen_addr();
    assert_ne!(addr.port(), 1);
    let client = Proc::proxy(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--server",
        &addr.to_string(),
        "--server-name",
        "localhost",
        "--cert",
        &format!("{d}/r0-stunnel.pem"),
        "--ca",
        &format!("{d}/ca-cert.pem"),
    ]);
    assert_eq!(echo_through_blocking(client.listen_addr(), b"via toml"), b"via toml");
}

#[test]
fn sigterm_drains_open_tunnels_and_exits_zero() {
    let dir = TestPki::new();
    let d = dir.root().display().to_string();
    let echo = EchoBackend::start();
    let mut args = server_args(&d, &["--drain-timeout", "300ms"]);
    args[4] = echo.addr.to_string();
    let mut server = Proc::proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let client = our_client(dir.root(), server.listen_addr());
    // One open, idle tunnel.
    let mut tcp = std::net::TcpStream::connect(client.listen_addr()).expect("connect");
    use std::io::{Read, Write};
    tcp.write_all(b"x").expect("write");
    let mut one = [0u8; 1];
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    tcp.read_exact(&mut one).expect("echo");
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    let log = server.log();
    assert!(log.contains("stopping") || log.contains("shutting down"), "{log}");
    assert!(log.contains("cut: shutdown (drain timeout)"), "{log}");
    assert!(log.lines().any(|l| l.contains("stopped") && l.contains("cut=1")), "{log}");
}
