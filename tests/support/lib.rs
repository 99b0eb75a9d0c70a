//! Test support shared by the in-process tests: a test PKI made with ca-tool (valid, expired,
//! not-yet-valid, revoked and other-CA clients), a counting echo backend, proxy spawners that return
//! after the bind, a raw TLS client, log capture, and `eventually`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ca_tool::ca::{CaDir, LeafRequest};
use ca_tool::index::CertKind;
use nfs_tls_proxy::config::{
    self, Common, Endpoint, Keepalive, SourcePort, TlsFiles, TlsVersion, Transport, Upstream,
};
use nfs_tls_proxy::AllowList;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SERVER: &str = "f3s-storage-ha";

/// A CA directory with every kind of client the refusal tests need.
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = CaDir::new(dir.path());
        ca.init("test CA", 30, false).expect("init");
        let leaf = |name: &str, kind| LeafRequest {
            name: name.into(),
            kind,
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("ip")],
            days: 30,
            combined: false,
            force: false,
        };
        ca.issue(&leaf(SERVER, CertKind::Server)).expect("server");
        for name in ["r0", "r1", "r2"] {
            ca.issue(&leaf(name, CertKind::Client)).expect("client");
        }
        ca.revoke("r2", 30).expect("revoke");
        let other = CaDir::new(dir.path().join("other"));
        other.init("other CA", 30, false).expect("other init");
        other.issue(&leaf("intruder", CertKind::Client)).expect("intruder");
        other.issue(&leaf(SERVER, CertKind::Server)).expect("impostor server");
        let pki = Self { dir };
        pki.sign_with_validity("expired", -20, -10);
        pki.sign_with_validity("future", 10, 20);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS files of a certificate named `name` (`other/intruder` for the other CA's).
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}-cert.pem")),
            key: Some(self.path(&format!("{name}-key.pem"))),
            ca: self.path("ca-cert.pem"),
            insecure_key_permissions: false,
        }
    }

    /// Our CA, to sign what ca-tool will not (expired certificates, an expired CRL).
    fn issuer(&self) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let ca_key = std::fs::read_to_string(self.path("ca-key.pem")).expect("ca key");
        let ca_cert = std::fs::read_to_string(self.path("ca-cert.pem")).expect("ca cert");
        rcgen::Issuer::from_ca_cert_pem(&ca_cert, rcgen::KeyPair::from_pem(&ca_key).expect("key"))
            .expect("issuer")
    }

    /// Writes `name`: a CRL from our CA, revoking nothing, whose nextUpdate passed a day ago.
    pub fn write_expired_crl(&self, name: &str) -> PathBuf {
        let issuer = self.issuer();
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(31),
            next_update: now - time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(99u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer).expect("sign CRL");
        let path = self.path(name);
        std::fs::write(&path, crl.pem().expect("pem")).expect("write");
        path
    }

    /// A client certificate from our CA valid from `from_days` to `to_days` relative to now.
    fn sign_with_validity(&self, name: &str, from_days: i64, to_days: i64) {
        let issuer = self.issuer();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(self.path(&format!("{name}-cert.pem")), cert.pem()).expect("write");
        let key_path = self.path(&format!("{name}-key.pem"));
        ca_tool::fsutil::write_atomic(
            &key_path,
            key.serialize_pem().as_bytes(),
            ca_tool::fsutil::SECRET,
            true,
        )
        .expect("write");
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint { host: addr.ip().to_string(), port: addr.port() }
}

pub fn common(files: TlsFiles) -> Common {
    Common {
        tls: files,
        min_tls: TlsVersion::Tls13,
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_connections: 1024,
        keepalive: Keepalive::After(Duration::from_secs(60)),
        key_update_every: None,
        drain_timeout: Duration::from_secs(1),
        reload_every: None,
        metrics: None,
        privileges: None,
    }
}

/// A server config for `pki` forwarding to `backend`, with the CRL.
pub fn server_config(pki: &TestPki, backend: SocketAddr) -> config::Server {
    config::Server {
        listen: vec![loopback()],
        backend: endpoint(backend),
        backend_source_port: SourcePort::Any,
        rpc_tls: true,
        enforce_crl_expiry: false,
        crl: Some(pki.path("crl.pem")),
        allow: AllowList::default(),
        common: common(pki.files(SERVER)),
    }
}

/// A client config for certificate `name`, trying `servers` in order.
pub fn client_config(pki: &TestPki, name: &str, servers: &[SocketAddr], server_name: &str) -> config::Client {
    config::Client {
        listen: vec![loopback()],
        upstream_protocol: Transport::Tls,
        servers: servers
            .iter()
            .map(|a| Upstream { endpoint: endpoint(*a), server_name: server_name.to_owned() })
            .collect(),
        common: common(pki.files(name)),
    }
}

/// An echo backend that counts the connections it accepted.
#[derive(Debug)]
pub struct EchoBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start() -> Self {
        Self::start_on(loopback()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, connections, task }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting (the port is closed); open connections continue.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `data`, half-closes, and reads until EOF: the echo through a tunnel.
pub async fn echo_through(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    echo_on(tcp, data).await
}

pub async fn echo_on<S>(stream: S, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back).await;
    let _ = writer.await;
    read.map(|_| back)
}

/// A TLS connection straight to a server proxy, as a stunnel-style client would make it; `cert`
/// None presents no certificate.
pub async fn tls_connect(
    pki: &TestPki,
    cert: Option<&str>,
    server: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_with(test_client_tls(pki, cert), server).await
}

/// A TLS 1.3 handshake as `cert` over an already connected stream (e.g. after the RFC 9289 probe),
/// offering ALPN "sunrpc" if `alpn`.
pub async fn tls_over(
    pki: &TestPki,
    cert: &str,
    tcp: TcpStream,
    alpn: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = test_client_tls(pki, Some(cert));
    if alpn {
        config.alpn_protocols = vec![b"sunrpc".to_vec()];
    }
    handshake(config, tcp).await
}

/// A TLS connection straight to a server proxy with a client configuration of the test's own.
pub async fn tls_connect_with(
    config: rustls::ClientConfig,
    server: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    handshake(config, TcpStream::connect(server).await?).await
}

/// The client side of a TLS handshake with the server proxy (named [`SERVER`]) over `tcp`.
async fn handshake(
    config: rustls::ClientConfig,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(SERVER).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// A rustls client configuration written independently of the proxy's loader, as `cert` (None: no
/// client certificate).
pub fn test_client_tls(pki: &TestPki, cert: Option<&str>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_tool::pem::load_certs(&pki.path("ca-cert.pem")).expect("ca") {
        roots.add(c).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match cert {
        Some(name) => {
            let files = pki.files(name);
            builder
                .with_client_auth_cert(
                    ca_tool::pem::load_certs(&files.cert).expect("cert"),
                    ca_tool::pem::load_private_key(files.key.as_deref().expect("key")).expect("key"),
                )
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config
}

/// Log lines written while the capture is alive (current-thread runtime: all tasks log here).
#[derive(Debug, Clone)]
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits (bounded) until a log line contains every one of `parts`.
    pub async fn wait_for(&self, parts: &[&str]) -> bool {
        eventually(Duration::from_secs(10), || {
            self.text().lines().any(|l| parts.iter().all(|p| l.contains(p)))
        })
        .await
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logs until the guard is dropped.
pub fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    (Logs { buf }, tracing::subscriber::set_default(subscriber))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures can be reproduced.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

/// Bounds an await in a test.
pub async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut).await.expect("test step timed out")
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
