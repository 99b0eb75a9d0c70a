//! Server mode's open(): sniff for TLS -> TLS accept under the handshake deadline (certificate, CRL
//! and allow-list are checked inside the handshake) -> only then dial the backend.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Endpoint, Keepalive, SourcePort};
use crate::identity::peer_name;
use crate::net;
use crate::refuse::RefuseReason;
use crate::tls::ServerTls;
use crate::tunnel::{Mode, Opened};

/// TLS record type of a handshake: the first byte of every TLS ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug)]
pub struct ServerMode {
    /// Taken afresh for every handshake, so a reload only affects new connections.
    pub tls: watch::Sender<ServerTls>,
    pub backend: Endpoint,
    pub backend_source_port: SourcePort,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
}

impl Mode for ServerMode {
    type Inbound = TlsStream<TcpStream>;
    type Outbound = TcpStream;
    const NAME: &'static str = "server";

    async fn open(
        &self,
        tcp: TcpStream,
        _peer: SocketAddr,
    ) -> Result<Opened<Self::Inbound, Self::Outbound>, RefuseReason> {
        let deadline = Instant::now() + self.handshake_timeout;
        sniff_tls(&tcp, deadline).await?;
        let acceptor = TlsAcceptor::from(self.tls.borrow().config.clone());
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Err(_) => return Err(RefuseReason::HandshakeTimeout),
            Ok(Err(e)) => return Err(RefuseReason::from_handshake(&e)),
            Ok(Ok(tls)) => tls,
        };
        let peer_cert =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        let identity = peer_name(tls.get_ref().1.peer_certificates());
        let (backend, upstream) =
            net::connect_from(&self.backend, self.backend_source_port, self.connect_timeout, self.keepalive)
                .await
                .map_err(|e| RefuseReason::Unreachable(format!("backend {e}")))?;
        Ok(Opened { inbound: tls, outbound: backend, identity, upstream, peer_cert })
    }
}

/// Waits for the first byte and refuses anything that is not a TLS handshake record, without
/// consuming it.
async fn sniff_tls(tcp: &TcpStream, deadline: Instant) -> Result<(), RefuseReason> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => Err(RefuseReason::HandshakeTimeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(RefuseReason::ClosedEarly),
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE => Ok(()),
        Ok(Ok(_)) => Err(RefuseReason::NotTls),
    }
}
