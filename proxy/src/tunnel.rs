//! One accepted connection, from accept to the "tunnel closed" line, the same for both modes:
//! open (mode-specific: handshake, authorize, connect) -> splice -> one summary line.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::Transport;
use crate::link::Link;
use crate::refuse::{refuse, RefuseReason};
use crate::serve::Ctx;
use crate::splice::splice;

/// An open tunnel's two sides and who is at the far end.
#[derive(Debug)]
pub struct Opened {
    /// The TLS side: accepted in server mode, dialled in client mode.
    pub link: Link,
    /// The plain side: the NFS server (server mode) or the local NFS client (client mode).
    pub plain: TcpStream,
    /// CN of the certificate the TLS peer presented (the client's on a server, the server's on a client).
    pub identity: String,
    /// The address dialled.
    pub upstream: SocketAddr,
    /// The client certificate (server mode), re-checked against the CRL and allow-list on reload.
    pub peer_cert: Option<rustls::pki_types::CertificateDer<'static>>,
    /// How TLS started on the TLS leg: stunnel-style or RFC 9289.
    pub transport: Transport,
    /// Negotiated TLS version and cipher suite, e.g. `TLSv1_3/TLS13_AES_256_GCM_SHA384`.
    pub tls: String,
}

/// `VERSION/SUITE` of a finished handshake, for the log.
pub fn negotiated(conn: &rustls::CommonState) -> String {
    let version = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_else(|| "?".into());
    let suite =
        conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_else(|| "?".into());
    format!("{version}/{suite}")
}

/// What differs between server and client mode: how a tunnel is opened.
pub trait Mode: Send + Sync + 'static {
    /// `server` or `client`, for logs.
    const NAME: &'static str;

    /// Whether the accepted side is the TLS one (server mode), so that "up" is TLS -> plain.
    const TLS_INBOUND: bool;

    /// Handshake, authorize and connect, each under its own timeout. Any failure is a refusal, and
    /// happens before a byte of application data is forwarded.
    fn open(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Opened, RefuseReason>> + Send;

    /// Whether the far side works (for `/healthz`): a one-line description either way.
    fn health(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// Runs one connection to its end and logs its summary.
pub async fn run_one<M: Mode>(ctx: Arc<Ctx<M>>, tcp: TcpStream, peer: SocketAddr, listener: SocketAddr) {
    let started = Instant::now();
    let opened = tokio::select! {
        opened = ctx.mode.open(tcp, peer) => opened,
        _ = ctx.hard_stop.cancelled() => return,
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(reason) => return refuse(&ctx.metrics, peer, &reason),
    };
    let entry = ctx.tunnels.register(peer, listener, &opened.identity, opened.peer_cert, opened.transport);
    if !ctx.is_serving(listener) {
        // The listener's address was lost while this connection was in its handshake.
        entry.cut.cut("listen address lost during the handshake");
    }
    let transport = opened.transport.word();
    ctx.metrics.opened(&opened.identity, transport, started.elapsed());
    tracing::info!(
        %peer,
        identity = %opened.identity,
        upstream = %opened.upstream,
        transport,
        tls = %opened.tls,
        "tunnel opened"
    );
    let end = splice(opened.link, opened.plain, M::TLS_INBOUND, &entry.counters, &entry.cut).await;
    ctx.tunnels.remove(entry.id);
    ctx.metrics.closed(&entry);
    let (bytes_up, bytes_down) = entry.counters.totals();
    tracing::info!(
        %peer,
        identity = %opened.identity,
        upstream = %opened.upstream,
        transport,
        bytes_up,
        bytes_down,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end,
        "tunnel closed"
    );
}
