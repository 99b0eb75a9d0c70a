//! Reload: new material is swapped in only when all of it loads; a newly revoked or no longer
//! allowed client loses its open tunnel while others keep flowing.

use std::time::Duration;

use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

/// Opens a tunnel straight to the server as `cert` and proves it carries data.
async fn open(
    pki: &TestPki,
    cert: &str,
    server: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = within(T, tls_connect(pki, Some(cert), server)).await.expect("connect");
    tls.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    within(T, tls.read_exact(&mut buf)).await.expect("echo");
    tls
}

#[tokio::test]
async fn reload_with_a_new_crl_closes_the_revoked_clients_open_tunnel_and_keeps_the_others() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let cfg = server_config(&pki, backend.addr);
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let addr = server.local_addrs[0];
    let mut r0 = open(&pki, "r0", addr).await;
    let mut r1 = open(&pki, "r1", addr).await;

    ca_tool::ca::CaDir::new(pki.dir.path()).revoke("r1", 30).expect("revoke");
    let cut = nfs_tls_proxy::reload_server(&server, &cfg).expect("reload");
    assert_eq!(cut, 1);

    let mut buf = [0u8; 16];
    let n = within(T, r1.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "r1's tunnel must be closed");
    assert!(
        logs.wait_for(&["closing open tunnel", "identity=r1", "reason=\"revoked\""]).await,
        "{}",
        logs.text()
    );
    assert!(logs.wait_for(&["tunnel closed", "identity=r1", "end=cut: revoked after reload"]).await);

    r0.write_all(b"still").await.expect("r0 write");
    let mut five = [0u8; 5];
    within(T, r0.read_exact(&mut five)).await.expect("r0 still flows");
    assert_eq!(&five, b"still");
    // And r1 cannot come back.
    let again = within(T, tls_connect(&pki, Some("r1"), addr)).await;
    if let Ok(tls) = again {
        assert!(echo_on(tls, b"x").await.map(|b| b.is_empty()).unwrap_or(true));
    }
    assert!(logs.wait_for(&["connection refused", "reason=\"revoked\""]).await);
}

#[tokio::test]
async fn reload_that_narrows_the_allow_list_closes_the_tunnels_it_no_longer_admits() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let mut r1 = open(&pki, "r1", server.local_addrs[0]).await;
    cfg.allow = nfs_tls_proxy::AllowList::new(["r0".to_owned()]);
    assert_eq!(nfs_tls_proxy::reload_server(&server, &cfg).expect("reload"), 1);
    let mut buf = [0u8; 1];
    assert_eq!(within(T, r1.read(&mut buf)).await.unwrap_or(0), 0);
    assert!(logs.wait_for(&["closing open tunnel", "reason=\"name-not-allowed\""]).await, "{}", logs.text());
}

#[tokio::test]
async fn reload_with_a_broken_crl_keeps_the_old_configuration_live() {
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let cfg = server_config(&pki, backend.addr);
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let mut r0 = open(&pki, "r0", server.local_addrs[0]).await;
    std::fs::write(pki.path("crl.pem"), "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
        .expect("write");
    let err = nfs_tls_proxy::reload_server(&server, &cfg).expect_err("must refuse the broken CRL");
    assert!(err.to_string().contains("crl.pem"), "{err}");
    // The open tunnel and new handshakes both still work, with the old material.
    r0.write_all(b"ok").await.expect("write");
    let mut two = [0u8; 2];
    within(T, r0.read_exact(&mut two)).await.expect("echo");
    let _again = open(&pki, "r0", server.local_addrs[0]).await;
    assert_eq!(backend.connections(), 2);
}
