//! Server mode's open(): sniff the first byte -> (RFC 9289 clients: answer the AUTH_TLS probe) -> TLS
//! accept under the handshake deadline (certificate, CRL and allow-list are checked inside the
//! handshake) -> only then dial the backend. One port serves stunnel-style and RPC-with-TLS clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Endpoint, Keepalive, SourcePort, Transport};
use crate::rpc::{self, RpcError};
use crate::tls::handshake;
use crate::tls::identity::peer_name;
use crate::tls::ServerTls;
use crate::tunnel::admit::Admission;
use crate::tunnel::net;
use crate::tunnel::refuse::RefuseReason;
use crate::tunnel::{key_policy, Established, Mode};

/// TLS record type of a handshake: the first byte of every TLS ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug)]
pub struct ServerMode {
    /// Taken afresh for every handshake, so a reload only affects new connections.
    pub tls: watch::Sender<ServerTls>,
    pub backend: Endpoint,
    pub backend_source_port: SourcePort,
    /// Answer RFC 9289 probes (`--rpc-tls on`).
    pub rpc_tls: bool,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
    /// Hidden test knob, see [`crate::config::Common::key_update_every`].
    pub key_update_every: Option<u64>,
    /// Hand the records of tunnels to the kernel where it can take them (`--ktls auto`, and the
    /// kernel can).
    pub ktls: bool,
}

impl Mode for ServerMode {
    const NAME: &'static str = "server";
    const TLS_INBOUND: bool = true;

    async fn open(
        &self,
        tcp: TcpStream,
        _peer: SocketAddr,
        admission: &Admission,
    ) -> Result<Established, RefuseReason> {
        let deadline = Instant::now() + self.handshake_timeout;
        let mut tcp = tcp;
        let transport = sniff(&tcp, deadline, self.rpc_tls).await?;
        let config = match transport {
            Transport::Tls => self.tls.borrow().config.clone(),
            Transport::RpcTls => {
                match tokio::time::timeout_at(deadline, rpc::answer_probe(&mut tcp)).await {
                    Err(_) => return Err(RefuseReason::HandshakeTimeout),
                    Ok(Err(RpcError::NotProbe(d))) => return Err(RefuseReason::RpcNotProbe(d)),
                    Ok(Err(RpcError::Io(_))) => return Err(RefuseReason::ClosedEarly),
                    Ok(Err(e)) => return Err(RefuseReason::RpcMalformed(e.to_string())),
                    Ok(Ok(_probe)) => {}
                }
                self.tls.borrow().rpc_config.clone()
            }
        };
        let link = match tokio::time::timeout_at(
            deadline,
            handshake::accept(config, tcp, key_policy(transport, self.key_update_every), self.ktls),
        )
        .await
        {
            Err(_) => return Err(RefuseReason::HandshakeTimeout),
            Ok(Err(e)) => return Err(RefuseReason::from_handshake(e)),
            Ok(Ok(link)) => link,
        };
        // Authenticated: from here on this is a tunnel, limited by --max-connections alone.
        admission.admit()?;
        let peer_cert = Some(link.peer_certificates().to_vec()).filter(|c| !c.is_empty());
        let identity = peer_name(Some(link.peer_certificates()));
        let (backend, upstream) = net::connect_from(
            &self.backend,
            self.backend_source_port,
            &[],
            self.connect_timeout,
            self.keepalive,
        )
        .await
        .map_err(|e| e.refusal("backend"))?;
        Ok(Established {
            tls: link.negotiated().to_owned(),
            link,
            plain: backend,
            identity,
            upstream,
            peer_cert,
            transport,
            original_dst: None,
        })
    }

    /// An NFS NULL call (program 100003, version 4, procedure 0) to the backend: "NFS answers", not
    /// only "the port is open".
    async fn health(&self) -> Result<String, String> {
        let (mut tcp, addr) = net::connect(&self.backend, self.connect_timeout, Keepalive::Off)
            .await
            .map_err(|e| format!("backend {e}"))?;
        rpc::nfs_null(&mut tcp, rpc::next_xid(), crate::tunnel::HEALTH_TIMEOUT)
            .await
            .map_err(|e| format!("backend {addr}: NFS NULL call failed: {e}"))?;
        Ok(format!("backend {addr} answered an NFS NULL call"))
    }
}

/// Waits for the first byte, without consuming it: a TLS handshake record, or (if `rpc_tls`) the
/// record mark of an RPC record, whose last-fragment bit is set. Anything else is refused.
async fn sniff(tcp: &TcpStream, deadline: Instant, rpc_tls: bool) -> Result<Transport, RefuseReason> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => Err(RefuseReason::HandshakeTimeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(RefuseReason::ClosedEarly),
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE => Ok(Transport::Tls),
        Ok(Ok(_)) if rpc_tls && first[0] & 0x80 != 0 => Ok(Transport::RpcTls),
        Ok(Ok(_)) => Err(RefuseReason::NotTls),
    }
}
