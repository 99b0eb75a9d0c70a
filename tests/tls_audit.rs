//! The TLS data phase against a peer that misbehaves on purpose: the findings of the record-layer
//! audit (tlsfuzzer, OpenSSL and GnuTLS knobs) replayed against our server, each checking what the
//! peer is sent back (an alert) and what the backend sees (nothing forwarded after close_notify; a
//! reset, not a clean end of stream, when the TLS stream broke).
//!
//! The peer is rustls' buffered client driven by hand over a blocking socket, so that the test
//! decides which bytes go out in which write (e.g. Finished and close_notify in one segment).

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use test_support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(60);

/// What a backend connection received and how it ended.
#[derive(Debug)]
struct Seen {
    bytes: Vec<u8>,
    /// Ok: a clean end of stream; Err: how it broke (e.g. ConnectionReset).
    end: Result<(), ErrorKind>,
}

/// A backend that records every connection until its end.
async fn recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                let end = loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = tx.send(Seen { bytes, end });
            });
        }
    });
    (addr, rx)
}

/// A hand-driven TLS client: `flight` decides what goes out after the handshake completes on the
/// client's side (its final flight is not yet sent when `flight` is called).
struct Peer {
    conn: rustls::ClientConnection,
    sock: std::net::TcpStream,
}

impl Peer {
    /// Connects and runs the handshake up to (not including) sending the client's final flight,
    /// which is returned.
    fn handshake(config: rustls::ClientConfig, server: SocketAddr) -> (Self, Vec<u8>) {
        let name = rustls::pki_types::ServerName::try_from(SERVER).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        // The test decides when bytes go out: let rustls queue as much as it is given.
        conn.set_buffer_limit(None);
        let mut sock = std::net::TcpStream::connect(server).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut out = Vec::new();
        for _ in 0..20 {
            while conn.wants_write() {
                conn.write_tls(&mut out).expect("write_tls");
            }
            if !conn.is_handshaking() {
                return (Self { conn, sock }, out);
            }
            sock.write_all(&out).expect("send");
            out.clear();
            conn.read_tls(&mut sock).expect("read_tls");
            conn.process_new_packets().expect("handshake");
        }
        panic!("handshake did not complete");
    }

    /// Our records for `data`, sealed but not sent.
    fn seal(&mut self, data: &[u8]) -> Vec<u8> {
        self.conn.writer().write_all(data).expect("plaintext");
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    fn close_notify(&mut self) -> Vec<u8> {
        self.conn.send_close_notify();
        self.seal(&[])
    }

    /// Reads until the server closes: Ok(plaintext) after its close_notify, or the TLS error it
    /// sent (an alert), or the socket error.
    fn read_to_end(&mut self) -> Result<Vec<u8>, String> {
        let mut got = Vec::new();
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(got),
                Ok(_) => {}
                Err(e) => return Err(format!("socket: {:?}", e.kind())),
            }
            let state = self.conn.process_new_packets().map_err(|e| format!("tls: {e}"))?;
            let mut buf = vec![0u8; state.plaintext_bytes_to_read()];
            self.conn.reader().read_exact(&mut buf).expect("plaintext");
            got.extend_from_slice(&buf);
            if state.peer_has_closed() {
                return Ok(got);
            }
        }
    }
}

/// A client certificate chain padded with `extra` unrelated certificates, so that the client's
/// Certificate message (its final flight) is large.
fn padded_client(pki: &TestPki, extra: usize) -> rustls::ClientConfig {
    let files = pki.files("r0");
    let mut chain = ca_tool::pem::load_certs(&files.cert).expect("cert");
    for i in 0..extra {
        let mut params = rcgen::CertificateParams::new(
            (0..60).map(|j| format!("padding-{i}-{j}.invalid")).collect::<Vec<_>>(),
        )
        .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("padding {i}"));
        let key = rcgen::KeyPair::generate().expect("key");
        chain.push(params.self_signed(&key).expect("pad").der().clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_tool::pem::load_certs(&pki.path("ca-cert.pem")).expect("ca") {
        roots.add(c).expect("root");
    }
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            chain,
            ca_tool::pem::load_private_key(files.key.as_deref().expect("key")).expect("key"),
        )
        .expect("client auth")
}

async fn start(
    pki: &TestPki,
) -> (nfs_tls_proxy::Running<nfs_tls_proxy::ServerMode>, mpsc::UnboundedReceiver<Seen>) {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let (backend, seen) = recording_backend().await;
    let server = nfs_tls_proxy::start_server(&server_config(pki, backend)).await.expect("server");
    (server, seen)
}

async fn no_tunnel_left(server: &nfs_tls_proxy::Running<nfs_tls_proxy::ServerMode>) -> bool {
    eventually(T, || server.ctx.tunnels.snapshot().is_empty()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_in_the_same_segment_as_finished_ends_input_and_nothing_after_it_is_forwarded() {
    let pki = TestPki::new();
    let (server, mut seen) = start(&pki).await;
    let config = test_client_tls(&pki, Some("r0"));
    let addr = server.local_addrs[0];
    let peer = tokio::task::spawn_blocking(move || {
        let (mut peer, mut flight) = Peer::handshake(config, addr);
        flight.extend(peer.close_notify());
        // A valid record behind the close_notify (rustls still seals after it): must be dropped.
        flight.extend(peer.seal(b"after close_notify"));
        peer.sock.write_all(&flight).expect("send");
        peer.read_to_end()
    });
    let backend = within(T, seen.recv()).await.expect("backend connection");
    assert_eq!(backend.end, Ok(()), "the backend must see a clean end of input");
    assert!(
        backend.bytes.is_empty(),
        "forwarded after close_notify: {:?}",
        String::from_utf8_lossy(&backend.bytes)
    );
    assert_eq!(within(T, peer).await.expect("peer"), Ok(Vec::new()), "our close_notify back");
    assert!(no_tunnel_left(&server).await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_handshake_flight_with_64_kib_of_records_behind_its_close_notify_neither_panics_nor_leaks_a_tunnel(
) {
    let pki = TestPki::new();
    let (server, mut seen) = start(&pki).await;
    let config = padded_client(&pki, 34);
    let addr = server.local_addrs[0];
    let peer = tokio::task::spawn_blocking(move || {
        let (mut peer, mut flight) = Peer::handshake(config, addr);
        assert!(flight.len() > 50_000, "the final flight is only {} bytes", flight.len());
        flight.extend(peer.close_notify());
        flight.extend(peer.seal(&random_bytes(70_000, 7)));
        peer.sock.write_all(&flight).expect("send");
        peer.read_to_end()
    });
    let backend = within(T, seen.recv()).await.expect("backend connection");
    assert_eq!(backend.end, Ok(()));
    assert!(backend.bytes.is_empty());
    assert!(within(T, peer).await.expect("peer").is_ok());
    assert!(no_tunnel_left(&server).await, "a tunnel stayed in the registry");
    // The server still serves.
    let tls = within(T, tls_connect(&pki, Some("r0"), addr)).await.expect("connect");
    drop(tls);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_record_is_answered_with_bad_record_mac_and_the_backend_sees_a_reset() {
    let pki = TestPki::new();
    let (server, mut seen) = start(&pki).await;
    let config = test_client_tls(&pki, Some("r0"));
    let addr = server.local_addrs[0];
    let peer = tokio::task::spawn_blocking(move || {
        let (mut peer, flight) = Peer::handshake(config, addr);
        peer.sock.write_all(&flight).expect("send");
        let mut first = peer.seal(b"hello backend");
        peer.sock.write_all(&first).expect("send");
        first = peer.seal(b"this record is modified on the way");
        let last = first.len() - 1;
        first[last] ^= 1;
        peer.sock.write_all(&first).expect("send");
        peer.read_to_end()
    });
    let answer = within(T, peer).await.expect("peer");
    assert!(
        matches!(&answer, Err(e) if e.contains("BadRecordMac") || e.contains("ConnectionReset")),
        "want an alert (or a reset), got {answer:?}"
    );
    let backend = within(T, seen.recv()).await.expect("backend connection");
    assert_eq!(backend.bytes, b"hello backend");
    assert_eq!(backend.end, Err(ErrorKind::ConnectionReset), "the backend must see the stream break");
    assert!(no_tunnel_left(&server).await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_closed_in_the_middle_of_a_record_is_a_truncation_and_the_backend_sees_a_reset() {
    let pki = TestPki::new();
    let (server, mut seen) = start(&pki).await;
    let config = test_client_tls(&pki, Some("r0"));
    let addr = server.local_addrs[0];
    let peer = tokio::task::spawn_blocking(move || {
        let (mut peer, flight) = Peer::handshake(config, addr);
        peer.sock.write_all(&flight).expect("send");
        let whole = peer.seal(b"complete");
        peer.sock.write_all(&whole).expect("send");
        let cut = peer.seal(b"this one is cut short");
        peer.sock.write_all(&cut[..cut.len() / 2]).expect("send");
        peer.sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let _ = peer.read_to_end();
    });
    within(T, peer).await.expect("peer");
    let backend = within(T, seen.recv()).await.expect("backend connection");
    assert_eq!(backend.bytes, b"complete");
    assert_eq!(backend.end, Err(ErrorKind::ConnectionReset));
    assert!(no_tunnel_left(&server).await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_closed_at_a_record_boundary_without_close_notify_ends_only_that_direction() {
    // The Linux kernel's RPC-with-TLS client closes this way; the reply must still arrive.
    let pki = TestPki::new();
    let backend = EchoBackend::start();
    let server = nfs_tls_proxy::start_server(&server_config(&pki, backend.addr)).await.expect("server");
    let config = test_client_tls(&pki, Some("r0"));
    let addr = server.local_addrs[0];
    let got = within(
        T,
        tokio::task::spawn_blocking(move || {
            let (mut peer, flight) = Peer::handshake(config, addr);
            peer.sock.write_all(&flight).expect("send");
            let data = peer.seal(b"ping");
            peer.sock.write_all(&data).expect("send");
            peer.sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
            peer.read_to_end()
        }),
    )
    .await
    .expect("peer");
    assert_eq!(got, Ok(b"ping".to_vec()));
    assert!(no_tunnel_left(&server).await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bytes_after_a_handshake_never_panic_forward_garbage_or_leak_a_tunnel() {
    let pki = TestPki::new();
    let (server, mut seen) = start(&pki).await;
    let addr = server.local_addrs[0];
    for case in 0..40u64 {
        let config = test_client_tls(&pki, Some("r0"));
        let peer = tokio::task::spawn_blocking(move || {
            let (mut peer, mut flight) = Peer::handshake(config, addr);
            let noise = random_bytes(1 + (case as usize * 977) % 40_000, case + 1);
            match case % 4 {
                // Raw noise right behind the Finished.
                0 => flight.extend(&noise),
                // Noise shaped as application-data records (header, random body).
                1 => {
                    for chunk in noise.chunks(300) {
                        flight.extend([23, 3, 3, (chunk.len() >> 8) as u8, chunk.len() as u8]);
                        flight.extend(chunk);
                    }
                }
                // A valid record, then noise.
                2 => {
                    flight.extend(peer.seal(b"valid"));
                    flight.extend(&noise);
                }
                // Handshake-typed records after the handshake.
                _ => {
                    for chunk in noise.chunks(200) {
                        flight.extend([22, 3, 3, (chunk.len() >> 8) as u8, chunk.len() as u8]);
                        flight.extend(chunk);
                    }
                }
            }
            let _ = peer.sock.write_all(&flight);
            let _ = peer.read_to_end();
        });
        within(T, peer).await.expect("peer");
        let backend = within(T, seen.recv()).await.expect("backend connection");
        assert!(
            backend.bytes.is_empty() || backend.bytes == b"valid",
            "case {case}: garbage reached the backend: {} bytes",
            backend.bytes.len()
        );
        assert_eq!(
            backend.end,
            Err(ErrorKind::ConnectionReset),
            "case {case}: a broken stream must arrive broken"
        );
    }
    assert!(no_tunnel_left(&server).await, "tunnels leaked");
    assert!(within(T, tls_connect(&pki, Some("r0"), addr)).await.is_ok(), "the server stopped serving");
    server.shutdown(Duration::from_secs(1)).await;
}
