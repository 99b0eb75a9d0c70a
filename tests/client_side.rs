//! The client while the storage is away (issue 20): an accepted connection whose servers are all
//! unreachable is held and the servers retried, so a hard mount waits instead of reconnecting in a
//! tight loop; the failures are one summarised line, not one per attempt. And the client's upstream
//! connections from a reserved source port, for Linux exports with `secure`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use test_support::{
    capture_logs, client_config, echo_through, loopback, server_config, within, EchoBackend, TestPki, SERVER,
};

const T: Duration = Duration::from_secs(20);

/// A loopback address nobody listens on (bound, noted, closed): the storage during an outage.
async fn dead_address() -> SocketAddr {
    tokio::net::TcpListener::bind(loopback()).await.expect("bind").local_addr().expect("addr")
}

#[tokio::test]
async fn a_connection_held_while_the_server_is_down_goes_through_when_it_returns() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server_addr = dead_address().await;
    let mut cfg = client_config(&pki, "r0", &[server_addr], SERVER);
    cfg.upstream_retry_for = Duration::from_secs(15);
    let client = nfs_tls_proxy::start_client(&cfg).await.expect("client");
    let local = client.local_addrs[0];
    // The NFS client connects and sends its request while the storage is down...
    let held = tokio::spawn(async move { echo_through(local, b"waited for the storage").await });
    assert!(logs.wait_for(&["server unreachable", "attempts=1"]).await, "{}", logs.text());
    // ...and the server proxy comes back on the storage address.
    let mut server_cfg = server_config(&pki, backend.addr);
    server_cfg.listen = vec![server_addr];
    let returned = Instant::now();
    let _server = nfs_tls_proxy::start_server(&server_cfg).await.expect("server");
    let back = within(T, held).await.expect("task").expect("echo");
    assert_eq!(back, b"waited for the storage");
    // The backoff is capped at 1 s: the held connection sees the server soon after it returns.
    assert!(returned.elapsed() < Duration::from_secs(3), "took {:?}", returned.elapsed());
    assert_eq!(backend.connections(), 1);
    assert!(logs.wait_for(&["server reachable again"]).await, "{}", logs.text());
    assert!(!logs.text().contains("connection refused"), "{}", logs.text());
}

#[tokio::test]
async fn a_connection_held_past_the_retry_time_is_closed_with_one_summarised_warning() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let mut cfg = client_config(&pki, "r0", &[dead_address().await], SERVER);
    cfg.upstream_retry_for = Duration::from_millis(1500);
    let client = nfs_tls_proxy::start_client(&cfg).await.expect("client");
    let started = Instant::now();
    let back = within(T, echo_through(client.local_addrs[0], b"x")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true), "nothing comes back");
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(1000), "closed after {held:?}, not held");
    assert!(held < Duration::from_secs(5), "held for {held:?}");
    assert!(logs.wait_for(&["connection refused", "reason=\"unreachable\""]).await, "{}", logs.text());
    let text = logs.text();
    // Several attempts (100, 200, 400, 800 ms apart), one line about them.
    assert_eq!(text.matches("server unreachable").count(), 1, "{text}");
    assert_eq!(text.matches("connection refused").count(), 1, "{text}");
}

#[tokio::test]
async fn with_no_retry_time_the_connection_is_closed_at_once() {
    let pki = TestPki::new();
    let mut cfg = client_config(&pki, "r0", &[dead_address().await], SERVER);
    cfg.upstream_retry_for = Duration::ZERO;
    let client = nfs_tls_proxy::start_client(&cfg).await.expect("client");
    let started = Instant::now();
    let back = within(T, echo_through(client.local_addrs[0], b"x")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn upstream_connections_come_from_a_reserved_port_when_asked() {
    let uid = std::process::Command::new("id").arg("-u").output().expect("id -u").stdout;
    if uid.trim_ascii() != b"0" {
        assert!(std::env::var_os("CI").is_none(), "this test needs root in CI (ports below 1024)");
        eprintln!("!!! SKIPPING: a reserved source port needs root");
        return;
    }
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let mut cfg = client_config(&pki, "r0", &[server.local_addrs[0]], SERVER);
    cfg.upstream_source_port = nfs_tls_proxy::config::SourcePort::Reserved;
    let client = nfs_tls_proxy::start_client(&cfg).await.expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"from below 1024")).await.expect("echo");
    assert_eq!(back, b"from below 1024");
    // The server proxy logs the client proxy's address as the peer of its tunnel.
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("tunnel opened") && l.contains("identity=r0"))
        .unwrap_or_else(|| panic!("no server-side tunnel line in:\n{text}"));
    let port: u16 = line
        .split("peer=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("no peer in {line}"));
    assert!(port < 1024, "{line}");
}

#[tokio::test]
async fn a_handshake_the_server_drops_half_way_is_tried_again_while_the_connection_is_held() {
    // A server whose handshake budget is full drops the oldest handshake of the busiest address, and
    // every handshake of a client proxy comes from one address. Here the first connection to the
    // storage address is read from and closed, as an evicted one is; the next ones reach the server.
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let real = server.local_addrs[0];
    let gate = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let storage = gate.local_addr().expect("addr");
    let gatekeeper = tokio::spawn(async move {
        let (mut first, _) = gate.accept().await.expect("accept");
        let mut hello = [0u8; 512];
        let _ = tokio::io::AsyncReadExt::read(&mut first, &mut hello).await;
        drop(first);
        loop {
            let (mut next, _) = gate.accept().await.expect("accept");
            let mut upstream = tokio::net::TcpStream::connect(real).await.expect("connect");
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut next, &mut upstream).await;
            });
        }
    });
    let mut cfg = client_config(&pki, "r0", &[storage], SERVER);
    cfg.upstream_retry_for = Duration::from_secs(15);
    let client = nfs_tls_proxy::start_client(&cfg).await.expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"after an eviction")).await.expect("echo");
    assert_eq!(back, b"after an eviction");
    assert_eq!(backend.connections(), 1);
    let text = logs.text();
    assert!(text.contains("server failed") && text.contains("closed-during-handshake"), "{text}");
    assert!(text.contains("server reachable again"), "{text}");
    assert!(!text.contains("connection refused"), "{text}");
    gatekeeper.abort();
}
