//! RFC 9289 (RPC-with-TLS) in-process: our server's probe path next to plain TLS on one port, every
//! kind of non-probe RPC refused before the backend is dialled, and our client in rpc-tls mode. The
//! byte strings here are written out from the RFC's XDR, not produced by the code under test.

use std::time::Duration;

use nfs_tls_proxy::config::Transport;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(60);

/// RFC 9289 section 4.1 probe, NFSv4, XID 0xCAFE0001, one record.
const PROBE: [u8; 44] = [
    0x80, 0x00, 0x00, 0x28, // record mark: last fragment, 40 bytes
    0xca, 0xfe, 0x00, 0x01, // xid
    0x00, 0x00, 0x00, 0x00, // CALL
    0x00, 0x00, 0x00, 0x02, // RPC version 2
    0x00, 0x01, 0x86, 0xa3, // program 100003 (NFS)
    0x00, 0x00, 0x00, 0x04, // version 4
    0x00, 0x00, 0x00, 0x00, // procedure 0 (NULL)
    0x00, 0x00, 0x00, 0x07, // credential flavor AUTH_TLS
    0x00, 0x00, 0x00, 0x00, // credential length 0
    0x00, 0x00, 0x00, 0x00, // verifier flavor AUTH_NONE
    0x00, 0x00, 0x00, 0x00, // verifier length 0
];

/// The only acceptable answer to it.
const STARTTLS_REPLY: [u8; 36] = [
    0x80, 0x00, 0x00, 0x20, // record mark: last fragment, 32 bytes
    0xca, 0xfe, 0x00, 0x01, // same xid
    0x00, 0x00, 0x00, 0x01, // REPLY
    0x00, 0x00, 0x00, 0x00, // MSG_ACCEPTED
    0x00, 0x00, 0x00, 0x00, // verifier flavor AUTH_NONE
    0x00, 0x00, 0x00, 0x08, // verifier length 8
    b'S', b'T', b'A', b'R', b'T', b'T', b'L', b'S', //
    0x00, 0x00, 0x00, 0x00, // SUCCESS
];

/// A plaintext NFSv4 NULL call with AUTH_NONE: what a mount without TLS sends first.
const PLAIN_NULL: [u8; 44] = [
    0x80, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
    0x01, 0x86, 0xa3, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Connects, sends the probe and reads a reply of the STARTTLS reply's length.
async fn send_probe(addr: std::net::SocketAddr) -> (TcpStream, [u8; 36]) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&PROBE).await.expect("probe");
    let mut reply = [0u8; 36];
    within(T, tcp.read_exact(&mut reply)).await.expect("reply");
    (tcp, reply)
}

/// Sends `bytes` and returns everything the server sends back before closing.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut back = Vec::new();
    let _ = within(T, tcp.read_to_end(&mut back)).await;
    back
}

async fn assert_refused_raw(bytes: &[u8], rpc_tls: bool, reason: &str) {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    cfg.rpc_tls = rpc_tls;
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let back = send_raw(server.local_addrs[0], bytes).await;
    assert!(back.is_empty(), "a refused client got {back:?}");
    assert!(logs.wait_for(&["connection refused", &format!("reason=\"{reason}\"")]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0, "the backend was dialled for a refused client");
}

#[tokio::test]
async fn plaintext_rpc_without_the_probe_is_refused_before_the_backend() {
    assert_refused_raw(&PLAIN_NULL, true, "rpc-without-tls").await;
}

#[tokio::test]
async fn a_probe_for_another_procedure_is_refused() {
    let mut other = PROBE;
    other[27] = 1; // procedure 1 (COMPOUND)
    assert_refused_raw(&other, true, "rpc-without-tls").await;
}

#[tokio::test]
async fn an_oversized_record_is_refused_as_malformed() {
    let mut big = vec![0x80, 0x01, 0x00, 0x00]; // a 64 KiB record where a 40-byte probe belongs
    big.extend_from_slice(&[0u8; 64]);
    assert_refused_raw(&big, true, "rpc-malformed").await;
}

#[tokio::test]
async fn with_rpc_tls_off_the_probe_is_refused_as_not_tls() {
    assert_refused_raw(&PROBE, false, "not-tls").await;
}

#[tokio::test]
async fn the_server_answers_the_probe_with_starttls_then_tunnels_over_tls13() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let (tcp, reply) = send_probe(server.local_addrs[0]).await;
    assert_eq!(reply, STARTTLS_REPLY);
    assert_eq!(backend.connections(), 0, "the backend never sees the probe");
    let tls = tls_over(&pki, "r0", tcp, true).await.expect("TLS after STARTTLS");
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"sunrpc"[..]));
    let data = random_bytes(100_000, 9);
    assert_eq!(within(T, echo_on(tls, &data)).await.expect("echo"), data);
    assert!(
        logs.wait_for(&["tunnel closed", "identity=r0", "transport=\"rpc-tls\""]).await,
        "{}",
        logs.text()
    );
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn an_rpc_tls_client_without_alpn_is_served_too() {
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let (tcp, _reply) = send_probe(server.local_addrs[0]).await;
    // Linux's tlshd sends no ALPN.
    let tls = tls_over(&pki, "r0", tcp, false).await.expect("TLS without ALPN");
    assert_eq!(within(T, echo_on(tls, b"no alpn")).await.expect("echo"), b"no alpn");
}

#[tokio::test]
async fn the_probe_path_still_checks_the_client_certificate() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let (tcp, _reply) = send_probe(server.local_addrs[0]).await;
    if let Ok(tls) = tls_over(&pki, "r2", tcp, true).await {
        assert!(echo_on(tls, b"revoked").await.map(|b| b.is_empty()).unwrap_or(true));
    }
    assert!(logs.wait_for(&["connection refused", "reason=\"revoked\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn our_client_in_rpc_tls_mode_tunnels_through_our_server_and_plain_tls_shares_the_port() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let addr = server.local_addrs[0];
    let mut rpc_cfg = client_config(&pki, "r0", &[addr], SERVER);
    rpc_cfg.upstream_protocol = Transport::RpcTls;
    let rpc_client = nfs_tls_proxy::start_client(&rpc_cfg).await.expect("rpc-tls client");
    let plain_client =
        nfs_tls_proxy::start_client(&client_config(&pki, "r1", &[addr], SERVER)).await.expect("tls client");
    let data = random_bytes(1 << 20, 3);
    let back = within(T, echo_through(rpc_client.local_addrs[0], &data)).await.expect("rpc-tls echo");
    assert_eq!(sha256(&back), sha256(&data));
    let back = within(T, echo_through(plain_client.local_addrs[0], &data)).await.expect("tls echo");
    assert_eq!(sha256(&back), sha256(&data));
    assert!(
        logs.wait_for(&["tunnel closed", "identity=r0", "transport=\"rpc-tls\""]).await,
        "{}",
        logs.text()
    );
    assert!(logs.wait_for(&["tunnel closed", "identity=r1", "transport=\"tls\""]).await, "{}", logs.text());
}

#[tokio::test]
async fn our_client_refuses_a_server_that_does_not_answer_starttls() {
    let (logs, _guard) = capture_logs();
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let mut cfg = server_config(&pki, backend.addr);
    cfg.rpc_tls = false; // a stunnel-style server: the probe is not TLS, so it hangs up
    let server = nfs_tls_proxy::start_server(&cfg).await.expect("server");
    let mut rpc_cfg = client_config(&pki, "r0", &[server.local_addrs[0]], SERVER);
    rpc_cfg.upstream_protocol = Transport::RpcTls;
    let client = nfs_tls_proxy::start_client(&rpc_cfg).await.expect("client");
    let back = within(T, echo_through(client.local_addrs[0], b"must not leak")).await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    assert!(logs.wait_for(&["connection refused", "reason=\"no-starttls\""]).await, "{}", logs.text());
    assert_eq!(backend.connections(), 0);
}
