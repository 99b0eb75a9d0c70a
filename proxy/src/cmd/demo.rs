//! `nfs-tls-proxy demo`: a server, a client and an echo backend in one process on loopback, with the
//! certs-example PKI built in. It pushes data through the tunnel, shows a refused client (a
//! certificate from another CA), and exits 0 only if both behaved.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::AllowList;
use crate::config::{
    self, Common, Endpoint, Keepalive, SourcePort, TlsFiles, TlsVersion, Transport, Upstream,
};

/// The demo PKI (certs-example/): public material, never for real use.
const FILES: &[(&str, &str)] = &[
    ("ca-cert.pem", include_str!("../../../certs-example/ca-cert.pem")),
    ("f3s-storage-ha-cert.pem", include_str!("../../../certs-example/f3s-storage-ha-cert.pem")),
    ("f3s-storage-ha-key.pem", include_str!("../../../certs-example/f3s-storage-ha-key.pem")),
    ("r0-cert.pem", include_str!("../../../certs-example/r0-cert.pem")),
    ("r0-key.pem", include_str!("../../../certs-example/r0-key.pem")),
    ("crl.pem", include_str!("../../../certs-example/crl.pem")),
];

const PAYLOAD: usize = 4 * 1024 * 1024;

pub(crate) async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    for (name, text) in FILES {
        let mode = if name.ends_with("-key.pem") { ca_tool::fsutil::SECRET } else { ca_tool::fsutil::PUBLIC };
        ca_tool::fsutil::write_atomic(&dir.path().join(name), text.as_bytes(), mode, true)
            .with_context(|| format!("cannot write {name}"))?;
    }
    // A second CA and a client certificate from it: the intruder.
    let other = dir.path().join("other-ca");
    let other_ca = ca_tool::ca::CaDir::new(&other);
    other_ca.init("some other CA", 30, false)?;
    other_ca.issue(&ca_tool::ca::LeafRequest {
        name: "intruder".into(),
        kind: ca_tool::index::CertKind::Client,
        dns: vec![],
        ips: vec![],
        days: 30,
        combined: false,
        force: false,
    })?;

    let (backend, backend_connections) = echo_backend().await?;
    let p = |name: &str| dir.path().join(name);
    let server = crate::serve::start_server(&config::Server {
        listen: vec![loopback()],
        backend: Endpoint { host: "127.0.0.1".into(), port: backend.port() },
        backend_source_port: SourcePort::Any,
        rpc_tls: true,
        enforce_crl_expiry: false,
        crl: Some(p("crl.pem")),
        allow: AllowList::new(["r0".to_owned(), "r1".to_owned(), "r2".to_owned(), "earth".to_owned()]),
        common: common(&p("f3s-storage-ha-cert.pem"), &p("f3s-storage-ha-key.pem"), &p("ca-cert.pem")),
    })
    .await?;
    let server_addr = server.local_addrs[0];
    let client_cfg = |cert: &Path, key: &Path| config::Client {
        listen: vec![loopback()],
        upstream_protocol: Transport::Tls,
        servers: vec![Upstream {
            endpoint: Endpoint { host: "127.0.0.1".into(), port: server_addr.port() },
            server_name: "f3s-storage-ha".into(),
        }],
        upstream_source_port: config::SourcePort::Any,
        upstream_retry_for: config::DEFAULT_UPSTREAM_RETRY_FOR,
        redirect: Vec::new(),
        redirect_check_every: config::DEFAULT_REDIRECT_CHECK_EVERY,
        common: common(cert, key, &p("ca-cert.pem")),
    };
    let r0 = crate::serve::start_client(&client_cfg(&p("r0-cert.pem"), &p("r0-key.pem"))).await?;
    let intruder = crate::serve::start_client(&client_cfg(
        &other.join("intruder-cert.pem"),
        &other.join("intruder-key.pem"),
    ))
    .await?;

    // r0: 4 MiB through client -> TLS -> server -> echo backend and back.
    let data: Vec<u8> = (0..PAYLOAD).map(|i| (i * 31 % 251) as u8).collect();
    let echoed = tokio::time::timeout(Duration::from_secs(30), round_trip(r0.local_addrs[0], &data))
        .await
        .context("echo through the tunnel timed out")??;
    ensure!(echoed == data, "the echo through the tunnel came back different");

    // The intruder: its client proxy connects, the server refuses the certificate, nothing reaches
    // the backend, and the local connection is closed without a byte.
    let refused =
        tokio::time::timeout(Duration::from_secs(30), round_trip(intruder.local_addrs[0], b"hello"))
            .await
            .context("the refused client was not closed in time")?;
    ensure!(refused.map(|b| b.is_empty()).unwrap_or(true), "the intruder received data through the tunnel");

    for running in [r0, intruder] {
        running.shutdown(Duration::from_secs(1)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;
    let dialled = backend_connections.load(Ordering::SeqCst);
    ensure!(dialled == 1, "the backend saw {dialled} connections; expected exactly 1 (r0's)");
    println!(
        "demo ok: {} bytes echoed through the tunnel for r0; the client with another CA's certificate was \
         refused and the backend saw only r0's connection",
        data.len()
    );
    Ok(())
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn common(cert: &Path, key: &Path, ca: &Path) -> Common {
    Common {
        tls: TlsFiles {
            cert: cert.to_owned(),
            key: Some(key.to_owned()),
            ca: ca.to_owned(),
            insecure_key_permissions: false,
        },
        min_tls: TlsVersion::Tls13,
        handshake_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_connections: 64,
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

/// Writes `data`, half-closes, and reads everything that comes back.
async fn round_trip(addr: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut r, mut w) = tcp.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        // A refused tunnel may reset mid-write; the read side reports the outcome.
        let _ = w.write_all(&data).await;
        let _ = w.shutdown().await;
    });
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back).await;
    let _ = writer.await;
    match read {
        Ok(_) => Ok(back),
        Err(e) if back.is_empty() => Err(e),
        Err(_) => Ok(back),
    }
}

async fn echo_backend() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind(loopback()).await.context("cannot bind the demo backend")?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok((addr, count))
}
