//! Client mode's open(): the servers in order, each with a connect and a handshake timeout, until one
//! completes a handshake whose certificate chains to our CA and carries the expected name. Nothing is
//! read from the local connection before that, so no plaintext byte can go upstream unprotected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Keepalive, Transport, Upstream};
use crate::rpc;
use crate::tls::handshake;
use crate::tls::identity::peer_name;
use crate::tls::link::Link;
use crate::tunnel::net;
use crate::tunnel::refuse::RefuseReason;
use crate::tunnel::{key_policy, Established, Mode};

#[derive(Debug)]
pub struct ClientMode {
    pub tls: watch::Sender<Arc<rustls::ClientConfig>>,
    pub servers: Vec<Upstream>,
    /// Plain TLS, or RFC 9289's probe first.
    pub protocol: Transport,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
    /// Hidden test knob, see [`crate::config::Common::key_update_every`].
    pub key_update_every: Option<u64>,
}

impl Mode for ClientMode {
    const NAME: &'static str = "client";
    const TLS_INBOUND: bool = false;

    async fn open(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Established, RefuseReason> {
        let mut last = RefuseReason::Unreachable("no server configured".into());
        for upstream in &self.servers {
            match self.dial(upstream).await {
                Ok((link, addr)) => {
                    let identity = peer_name(Some(link.peer_certificates()));
                    return Ok(Established {
                        tls: link.negotiated().to_owned(),
                        link,
                        plain: tcp,
                        identity,
                        upstream: addr,
                        peer_cert: None,
                        transport: self.protocol,
                    });
                }
                Err(reason) => {
                    tracing::warn!(%peer, server = %upstream.endpoint, reason = %reason, "server failed; trying the next");
                    last = reason;
                }
            }
        }
        Err(last)
    }

    /// A TLS handshake (after the probe, in rpc-tls mode) with the first server that completes one.
    async fn health(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        for upstream in &self.servers {
            match self.dial(upstream).await {
                Ok((link, addr)) => {
                    let who = peer_name(Some(link.peer_certificates()));
                    return Ok(format!("TLS handshake with {} ({addr}, {who})", upstream.endpoint));
                }
                Err(reason) => problems.push(format!("{}: {reason}", upstream.endpoint)),
            }
        }
        Err(problems.join("; "))
    }
}

impl ClientMode {
    /// Dials one server: connect, the RFC 9289 probe (rpc-tls mode), and a complete TLS handshake.
    pub(crate) async fn dial(&self, upstream: &Upstream) -> Result<(Link, SocketAddr), RefuseReason> {
        let name = ServerName::try_from(upstream.server_name.clone()).map_err(|_| {
            RefuseReason::Tls(format!("{:?} is not a valid server name", upstream.server_name))
        })?;
        let (mut tcp, addr) = net::connect(&upstream.endpoint, self.connect_timeout, self.keepalive)
            .await
            .map_err(RefuseReason::Unreachable)?;
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        if self.protocol == Transport::RpcTls {
            match tokio::time::timeout_at(deadline, rpc::send_probe(&mut tcp, rpc::next_xid())).await {
                Err(_) => return Err(RefuseReason::HandshakeTimeout),
                Ok(Err(e)) => return Err(RefuseReason::NoStartTls(format!("{addr}: {e}"))),
                Ok(Ok(())) => {}
            }
        }
        let config = self.tls.borrow().clone();
        match tokio::time::timeout_at(
            deadline,
            handshake::connect(config, name, tcp, key_policy(self.protocol, self.key_update_every)),
        )
        .await
        {
            Err(_) => Err(RefuseReason::HandshakeTimeout),
            Ok(Err(e)) => Err(RefuseReason::from_handshake(e)),
            Ok(Ok(link)) => Ok((link, addr)),
        }
    }
}
