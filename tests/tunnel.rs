//! The tunnel in-process: our server and client proxies, a counting echo backend, real TLS.
//! Every refusal asserts that the backend saw no connection and that the log names the reason.

use std::time::Duration;

use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);

/// Connects with client certificate `cert` straight to the server and tries one exchange; returns
/// whether any byte came back.
async fn attempt(pki: &TestPki, cert: Option<&str>, server: std::net::SocketAddr) -> bool {
    match tls_connect(pki, cert, server).await {
        Err(_) => false,
        Ok(tls) => matches!(echo_on(tls, b"ping").await, Ok(b) if !b.is_empty()),
    }
}

async fn assert_refused(cert: Option<&str>, reason: &str) {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let addr = server.local_addrs[0];
    assert!(!within(T, attempt(&pki, cert, addr)).await, "{cert:?} got data through");
    assert!(logs.wait_for(&["connection refused", &format!("reason=\"{reason}\"")]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0, "the backend was dialled for a refused client");
    // A legitimate client still works afterwards.
    assert!(within(T, attempt(&pki, Some("r0"), addr)).await);
    assert_eq!(backend.connections(), 1);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused_and_never_reaches_backend() {
    assert_refused(None, "no-certificate").await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused_and_never_reaches_backend() {
    assert_refused(Some("other/intruder"), "unknown-ca").await;
}

#[tokio::test]
async fn expired_client_is_refused_and_never_reaches_backend() {
    assert_refused(Some("expired"), "expired").await;
}

#[tokio::test]
async fn not_yet_valid_client_is_refused_and_never_reaches_backend() {
    assert_refused(Some("future"), "not-yet-valid").await;
}

#[tokio::test]
async fn revoked_client_is_refused_and_never_reaches_backend() {
    assert_refused(Some("r2"), "revoked").await;
}

#[tokio::test]
async fn server_certificate_used_as_client_is_refused() {
    assert_refused(Some(SERVER), "wrong-purpose").await;
}

#[tokio::test]
async fn client_not_on_the_allow_list_is_refused_and_one_on_it_is_admitted() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    cfg.allow = nfs_tls_proxy::AllowList::new(["r0".to_owned()]);
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let addr = server.local_addrs[0];
    assert!(!within(T, attempt(&pki, Some("r1"), addr)).await);
    assert!(logs.wait_for(&["connection refused", "reason=\"name-not-allowed\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
    assert!(within(T, attempt(&pki, Some("r0"), addr)).await);
    assert!(
        logs.wait_for(&["tunnel closed", "identity=r0", "bytes_up=4", "bytes_down=4"]).await,
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn plaintext_client_is_refused_as_not_tls() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let back = within(T, echo_through(server.local_addrs[0], b"GET / HTTP/1.0\r\n\r\n")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(logs.wait_for(&["connection refused", "reason=\"not-tls\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn silent_client_is_refused_at_the_handshake_timeout() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    cfg.common.handshake_timeout = Duration::from_millis(300);
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let mut tcp = tokio::net::TcpStream::connect(server.local_addrs[0]).await.expect("connect");
    let mut buf = [0u8; 1];
    // The server closes the silent connection by itself.
    assert_eq!(within(T, tcp.read(&mut buf)).await.unwrap_or(0), 0);
    assert!(logs.wait_for(&["connection refused", "reason=\"handshake-timeout\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
}

/// Server + client proxies in front of an echo backend; returns (client listen address, guards).
async fn tunnel(
    pki: &TestPki,
) -> (
    std::net::SocketAddr,
    EchoBackend,
    nfs_tls_proxy::Running<nfs_tls_proxy::ServerMode>,
    nfs_tls_proxy::Running<nfs_tls_proxy::ClientMode>,
) {
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(pki, backend.addr)).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    (client.local_addrs[0], backend, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact_and_in_order() {
    let pki = TestPki::new();
    let (addr, _backend, _server, _client) = tunnel(&pki).await;
    let data = random_bytes(64 << 20, 7);
    let back = within(T, echo_through(addr, &data)).await.expect("echo");
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256(&back), sha256(&data));
}

/// One 200-byte request and its echo over `tls`.
async fn exchange(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, byte: u8) {
    let req = [byte; 200];
    tls.write_all(&req).await.expect("write");
    let mut rep = [0u8; 200];
    tls.read_exact(&mut rep).await.expect("read");
    assert_eq!(rep, req);
}

/// A rustls peer asks for a TLS 1.3 KeyUpdate mid-stream (`update_requested`): the server follows the
/// peer's new keys and answers with a KeyUpdate of its own. Proof of the answer: the peer's receive
/// sequence number, which restarts at zero with each new key, counts only the records sent after it.
#[tokio::test]
async fn a_peers_key_update_request_is_followed_and_answered_with_our_own() {
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let mut config = test_client_tls(&pki, Some("r0"));
    config.enable_secret_extraction = true;
    let mut tls = within(T, tls_connect_with(config, server.local_addrs[0])).await.expect("connect");
    for i in 0..20 {
        within(T, exchange(&mut tls, i)).await;
    }
    tls.get_mut().1.refresh_traffic_keys().expect("key update");
    within(T, exchange(&mut tls, 0xee)).await;
    within(T, exchange(&mut tls, 0xef)).await;
    let (_, conn) = tls.into_inner();
    let secrets = conn.dangerous_extract_secrets().expect("secrets");
    // Sent since the peer's update: the two requests. Received since ours: the two echoes (one record
    // each, maybe split in two by the backend's reads), not the twenty before.
    assert_eq!(secrets.tx.0, 2, "the peer's own key update did not take effect");
    assert!(
        (2..=4).contains(&secrets.rx.0),
        "no KeyUpdate came back: {} records under the old key",
        secrets.rx.0
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn half_close_from_the_client_still_delivers_the_reply() {
    let pki = TestPki::new();
    // A backend that reads to EOF, then answers, then closes: only works if our FIN is passed on
    // as close_notify/FIN and the other direction stays open.
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.expect("read");
        tcp.write_all(format!("got {} bytes", got.len()).as_bytes()).await.expect("write");
        tcp.shutdown().await.expect("shutdown");
    });
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend_addr)).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    let back = within(T, echo_through(client.local_addrs[0], &[1u8; 1000])).await.expect("exchange");
    assert_eq!(back, b"got 1000 bytes");
}

#[tokio::test]
async fn half_close_from_the_backend_still_accepts_the_clients_data() {
    let pki = TestPki::new();
    // The backend speaks first and closes its sending side; the client then sends, and the backend
    // still receives it.
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut r, mut w) = tcp.into_split();
        w.write_all(b"hello").await.expect("write");
        w.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        let _ = tx.send(got);
    });
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend_addr)).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    let mut tcp = tokio::net::TcpStream::connect(client.local_addrs[0]).await.expect("connect");
    let mut greeting = Vec::new();
    within(T, tcp.read_to_end(&mut greeting)).await.expect("read");
    assert_eq!(greeting, b"hello");
    tcp.write_all(b"after your FIN").await.expect("write");
    tcp.shutdown().await.expect("shutdown");
    assert_eq!(within(T, rx).await.expect("backend"), b"after your FIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_tunnels_each_echo_64_kib() {
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    // All 300 come from one client proxy (one address): more than the server's default handshake
    // budget (256), whose eviction on a saturated machine is tests/faults' subject, not this one's.
    let mut cfg = server_config(&pki, backend.addr);
    cfg.common.limits.max_handshakes = 1024;
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    let addr = client.local_addrs[0];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u64 {
        tasks.spawn(async move {
            let data = random_bytes(64 << 10, i + 1);
            let back = echo_through(addr, &data).await.expect("echo");
            assert_eq!(sha256(&back), sha256(&data), "tunnel {i}");
        });
    }
    within(T, async {
        while let Some(r) = tasks.join_next().await {
            r.expect("tunnel task");
        }
    })
    .await;
    assert_eq!(backend.connections(), 300);
}

#[tokio::test]
async fn backend_down_closes_the_client_quickly_and_the_proxy_recovers() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let backend_addr = backend.addr;
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend_addr)).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    drop(backend);
    // The port is closed now: the tunnel is refused, the client's connection closed, no hang.
    let back = within(Duration::from_secs(10), echo_through(client.local_addrs[0], b"x")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(logs.wait_for(&["connection refused", "reason=\"unreachable\""]).await, "{}", logs.text());
    // The backend comes back on the same port: tunnels work again.
    let backend = EchoBackend::start_on(backend_addr);
    let back = within(T, echo_through(client.local_addrs[0], b"back again")).await.expect("echo");
    assert_eq!(back, b"back again");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn client_fails_over_to_the_second_server_when_the_first_is_dead() {
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    // A port nobody listens on: bind, note, close.
    let dead = tokio::net::TcpListener::bind(loopback()).await.expect("bind").local_addr().expect("addr");
    let client =
        nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[dead, server.local_addrs[0]], SERVER))
            .await
            .expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"over to f1")).await.expect("echo");
    assert_eq!(back, b"over to f1");
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_name_and_sends_nothing() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], "f9.lan"))
        .await
        .expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"secret")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(logs.wait_for(&["connection refused", "reason=\"wrong-server-name\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0, "not one byte may reach the NFS server");
}

#[tokio::test]
async fn client_refuses_a_server_certificate_from_another_ca() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    // An impostor server: its certificate is from another CA (which also signs its client check).
    cfg.common.tls = pki.files("other/f3s-storage-ha");
    cfg.common.tls.ca = pki.path("other/ca-cert.pem");
    cfg.crl = None;
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let client = nfs_tls_proxy::start_client(&client_config(&pki, "r0", &[server.local_addrs[0]], SERVER))
        .await
        .expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"secret")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(logs.wait_for(&["connection refused", "reason=\"unknown-ca\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn shutdown_drains_then_cuts_open_tunnels_and_reports_how_many() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let (addr, _backend, server, _client) = tunnel(&pki).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    within(T, idle.read_exact(&mut one)).await.expect("echo");
    let cut = within(T, server.shutdown(Duration::from_millis(200))).await;
    assert_eq!(cut, 1);
    assert!(logs.wait_for(&["tunnel closed", "end=cut: shutdown"]).await, "{}", logs.text());
}

#[tokio::test]
async fn an_expired_crl_is_tolerated_by_default_and_refuses_everyone_when_enforced() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    cfg.crl = Some(pki.write_expired_crl("expired-crl.pem"));
    let lenient = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    assert!(within(T, attempt(&pki, Some("r0"), lenient.local_addrs[0])).await, "default: still admitted");
    cfg.enforce_crl_expiry = true;
    let strict = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    assert!(!within(T, attempt(&pki, Some("r0"), strict.local_addrs[0])).await, "enforced: refused");
    assert!(logs.wait_for(&["connection refused", "reason=\"crl-expired\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 1, "only the lenient server's client reached the backend");
}
