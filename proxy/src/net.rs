//! TCP plumbing: socket options on every leg, and connecting with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{Endpoint, Keepalive};

/// TCP_NODELAY (NFS RPCs are small and latency-bound) and keepalive (so a peer that vanished in a
/// failover is noticed instead of holding the tunnel for ever).
pub fn tune(tcp: &TcpStream, keepalive: Keepalive) {
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
pub async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<(TcpStream, SocketAddr), String> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("{endpoint}: cannot resolve: {e}"))?;
        let mut last = format!("{endpoint}: no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
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
