//! TCP plumbing: socket options on every leg, and connecting with a timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::config::{Endpoint, Keepalive, SourcePort};
use crate::tunnel::refuse::{is_exhaustion, RefuseReason};

/// TCP_NODELAY (NFS RPCs are small and latency-bound) and keepalive (so a peer that vanished in a
/// failover is noticed instead of holding the tunnel for ever).
pub(crate) fn tune(tcp: &TcpStream, keepalive: Keepalive) {
    let _ = tcp.set_nodelay(true);
    if let Keepalive::After(idle) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Keepalive::probe_interval(idle))
            .with_retries(Keepalive::PROBES);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&params);
    }
}

/// TCP_USER_TIMEOUT: the kernel gives up on the connection (ETIMEDOUT) when data it sent stays
/// unacknowledged this long, or, with keepalive, when probes go unanswered this long. Without it a
/// partitioned peer with data in flight holds the tunnel for the whole retransmission schedule
/// (~15 minutes on Linux), since keepalive does not probe while data is outstanding. Linux only:
/// FreeBSD has no such option (its retransmission limit and keepalive apply there).
pub(crate) fn set_user_timeout(tcp: &TcpStream, timeout: Option<Duration>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(timeout);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, timeout);
}

/// Why dialling failed: the far side (unreachable, refused, timed out), or ourselves (no descriptor
/// or socket memory left), which is not the far side's fault and is reported as such.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Exhausted(String),
}

impl DialError {
    /// The refusal of a connection whose `what` (e.g. "backend") could not be dialled.
    pub(crate) fn refusal(self, what: &str) -> RefuseReason {
        match self {
            Self::Failed(e) => RefuseReason::Unreachable(format!("{what} {e}")),
            Self::Exhausted(e) => RefuseReason::ResourceExhausted(format!("dialling {what} {e}")),
        }
    }
}

impl From<DialError> for RefuseReason {
    fn from(error: DialError) -> Self {
        match error {
            DialError::Failed(e) => Self::Unreachable(e),
            DialError::Exhausted(e) => Self::ResourceExhausted(format!("dialling {e}")),
        }
    }
}

/// Resolves `endpoint` and connects to the first address that answers within `timeout` overall.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<(TcpStream, SocketAddr), String> {
    connect_from(endpoint, SourcePort::Any, &[], timeout, keepalive).await.map_err(|e| e.to_string())
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

/// [`connect`], choosing the source port. An address in `never` is not dialled even when the name
/// resolves to it: the client passes its `--redirect` addresses, whose DNAT rule would send the
/// connection straight back to the client's own listener (a loop that the start-up check can only
/// rule out for literal addresses, not for a host name resolved later).
pub(crate) async fn connect_from(
    endpoint: &Endpoint,
    source: SourcePort,
    never: &[SocketAddr],
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| DialError::Failed(format!("{endpoint}: cannot resolve: {e}")))?;
        let mut last = DialError::Failed(format!("{endpoint}: no addresses"));
        for addr in addrs {
            if never.iter().any(|n| crate::config::same_destination(*n, addr)) {
                last = DialError::Failed(format!(
                    "{endpoint}: resolves to {addr}, a --redirect address: not dialled (the redirect \
                     would bring the connection back to this client)"
                ));
                continue;
            }
            let attempt = match source {
                SourcePort::Any => TcpStream::connect(addr).await,
                SourcePort::Reserved => connect_reserved(addr).await,
            };
            match attempt {
                Ok(tcp) => {
                    tune(&tcp, keepalive);
                    return Ok((tcp, addr));
                }
                // Trying the next address would fail the same way.
                Err(e) if is_exhaustion(&e) => return Err(DialError::Exhausted(format!("{addr}: {e}"))),
                Err(e) => last = DialError::Failed(format!("{addr}: {e}")),
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
        Err(DialError::Failed(format!("{endpoint}: connect timed out after {timeout:?}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_that_resolves_to_a_redirect_address_is_not_dialled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let endpoint = Endpoint { host: "localhost".into(), port: addr.port() };
        // As written in --redirect: 127.0.0.1 and ::1 with the port. "localhost" resolves to both.
        let never = [addr, SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())];
        let Err(DialError::Failed(why)) =
            connect_from(&endpoint, SourcePort::Any, &never, Duration::from_secs(5), Keepalive::Off).await
        else {
            panic!("dialled an address the redirect would send back to us");
        };
        assert!(why.contains("a --redirect address: not dialled"), "{why}");
        // Nothing reached the listener: a dialled connection would be in its queue by now (connect
        // returns once the kernel has completed the handshake), and a zero timeout still polls the
        // accept once.
        let accepted = tokio::time::timeout(Duration::ZERO, listener.accept()).await;
        assert!(accepted.is_err(), "a connection arrived: {accepted:?}");
        // An IPv4-mapped form of the redirect's address, as a name may resolve to, is the same one.
        let mapped = Endpoint { host: "::ffff:127.0.0.1".into(), port: addr.port() };
        let Err(DialError::Failed(why)) =
            connect_from(&mapped, SourcePort::Any, &never, Duration::from_secs(5), Keepalive::Off).await
        else {
            panic!("dialled the IPv4-mapped form of a redirect address");
        };
        assert!(why.contains("a --redirect address: not dialled"), "{why}");
        // The same name without the redirect connects.
        connect_from(&endpoint, SourcePort::Any, &[], Duration::from_secs(5), Keepalive::Off)
            .await
            .expect("the same name without the redirect connects");
    }
}
