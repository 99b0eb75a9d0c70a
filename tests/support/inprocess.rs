//! For in-process tests: `config::Server`/`config::Client` for the test PKI on loopback, a raw TLS
//! client written independently of the proxy's loader, and capture of the proxy's log lines.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfs_tls_proxy::config::{
    self, Common, Endpoint, Keepalive, SourcePort, TlsFiles, TlsVersion, Transport, Upstream,
};
use nfs_tls_proxy::AllowList;
use tokio::net::TcpStream;

use crate::pki::{TestPki, SERVER};
use crate::wait::eventually;

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
        ktls: Default::default(),
        tls_suite: None,
        pid_file: None,
        limits: Default::default(),
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
        upstream_source_port: SourcePort::Any,
        upstream_retry_for: config::DEFAULT_UPSTREAM_RETRY_FOR,
        redirect: Vec::new(),
        redirect_check_every: config::DEFAULT_REDIRECT_CHECK_EVERY,
        common: common(pki.files(name)),
    }
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
