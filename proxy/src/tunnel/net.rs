//! TCP plumbing: socket options on every leg, and connecting with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use std::sync::atomic::{AtomicU16, Ordering};

use tokio::net::TcpSocket;

use crate::config::{Endpoint, Keepalive, SourcePort};

/// TCP_NODELAY (NFS RPCs are small and latency-bound) and keepalive (so a peer that vanished in a
/// failover is noticed instead of holding the tunnel for ever).
pub(crate) fn tune(tcp: &TcpStream, keepalive: Keepalive) {
    let _ = tcp.set_nodelay(true);
    if let Keepalive::After(idle) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&params);
    }
}

/// Resolves `endpoint` and connects to the first address that answers within `timeout` overall.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<(TcpStream, SocketAddr), String> {
    connect_from(endpoint, SourcePort::Any, timeout, keepalive).await
}

/// Reserved source ports tried, from the top down (as bindresvport does, below the well-known
/// services' range).
const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 600..=1023;

/// Where the next reserved-port search starts, so consecutive connections do not all probe the
/// same ports first.
static NEXT_RESERVED: AtomicU16 = AtomicU16::new(0);

/// Connects from a port below 1024, trying the free ones.
async fn connect_reserved(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let span = RESERVED_PORTS.end() - RESERVED_PORTS.start() + 1;
    let offset = NEXT_RESERVED.fetch_add(1, Ordering::Relaxed) % span;
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrInUse, "every reserved port is in use");
    for i in 0..span {
        let port = RESERVED_PORTS.end() - (offset + i) % span;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        let local = SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            port,
        );
        match socket.bind(local) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = e;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(std::io::Error::new(e.kind(), "a reserved source port needs root"));
            }
            Err(e) => return Err(e),
        }
        match socket.connect(addr).await {
            // Bound port clashes with an existing connection to the same peer: try the next.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// [`connect`], choosing the source port.
pub(crate) async fn connect_from(
    endpoint: &Endpoint,
    source: SourcePort,
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<(TcpStream, SocketAddr), String> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("{endpoint}: cannot resolve: {e}"))?;
        let mut last = format!("{endpoint}: no addresses");
        for addr in addrs {
            let attempt = match source {
                SourcePort::Any => TcpStream::connect(addr).await,
                SourcePort::Reserved => connect_reserved(addr).await,
            };
            match attempt {
                Ok(tcp) => {
                    tune(&tcp, keepalive);
                    return Ok((tcp, addr));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{endpoint}: connect timed out after {timeout:?}")))
}
