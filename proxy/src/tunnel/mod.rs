//! One accepted connection, from accept to the "tunnel closed" line, the same for both modes:
//! open (mode-specific: handshake, authorize, connect) -> splice -> one summary line.
//!
//! - [`Mode`], [`Ctx`], [`run_one`]: the pipeline; [`server`], [`client`]: each mode's `open()`
//! - [`splice`]: the two-way copy (rustls' records); [`kernel`]: the same with kTLS and splice(2);
//!   [`refuse`]: refusal reasons and their one log line
//! - [`registry`]: the open tunnels; [`net`]: socket options and dialling
//! - [`admit`]: the handshake budget and the tunnel permits

pub(crate) mod admit;
pub(crate) mod client;
pub(crate) mod kernel;
pub(crate) mod net;
pub(crate) mod refuse;
pub(crate) mod registry;
pub(crate) mod server;
pub(crate) mod splice;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Keepalive, Transport};
use crate::tls::link::{KeyPolicy, RPC_TLS_RECORD_LIMIT};
use crate::tls::Secured;
use admit::{Admission, Budget};
use refuse::{Refusals, RefuseReason};
use registry::Tunnels;
use splice::splice;

/// When a tunnel's TLS leg changes keys: RFC 9289 peers (kernel TLS) are never sent a KeyUpdate.
pub(crate) fn key_policy(transport: Transport, every: Option<u64>) -> KeyPolicy {
    match transport {
        Transport::Tls => KeyPolicy::Rekey { every },
        Transport::RpcTls => KeyPolicy::EndTunnel { after: every.unwrap_or(RPC_TLS_RECORD_LIMIT) },
    }
}

/// How long a `/healthz` probe of the far side may take.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection task shares.
#[derive(Debug)]
pub struct Ctx<M> {
    pub mode: M,
    pub tunnels: Tunnels,
    pub keepalive: Keepalive,
    /// TCP_USER_TIMEOUT for both legs of every tunnel.
    pub user_timeout: Option<Duration>,
    /// A tunnel whose write makes no progress this long ends.
    pub write_stall: Option<Duration>,
    /// The handshake budget and the tunnel permits.
    pub(crate) budget: Arc<Budget>,
    /// The one place refusals are logged and counted.
    pub refusals: Refusals,
    /// Cancelled when the drain time is over: connections still in their handshake end too.
    pub hard_stop: CancellationToken,
    pub metrics: crate::metrics::Metrics,
    /// Where /metrics etc. are served, once bound.
    pub ops_addr: OnceLock<SocketAddr>,
    /// The local addresses of the listeners serving now; a tunnel whose listener left this set
    /// while it was in its handshake is cut as soon as it registers.
    pub serving: Mutex<HashSet<SocketAddr>>,
    /// Each configured listen address's state, for `/healthz`.
    pub listen_states: Mutex<std::collections::BTreeMap<SocketAddr, ListenState>>,
}

/// What a listen address is doing, for `/healthz` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenState {
    Serving,
    /// This host does not own the address (the VIP is on the other node).
    Standby,
    /// This host owns the address but cannot bind it (another process holds it, ...).
    Failing(String),
}

impl ListenState {
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Standby => "standby",
            Self::Failing(_) => "failing",
        }
    }
}

impl<M> Ctx<M> {
    /// Records what `addr` (as configured) is doing now.
    pub(crate) fn set_listen_state(&self, addr: SocketAddr, state: ListenState) {
        self.metrics.set_listen_state(addr, state.word());
        self.listen_states.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, state);
    }

    /// Every configured listen address and its state.
    pub(crate) fn listen_states(&self) -> Vec<(SocketAddr, ListenState)> {
        let map = self.listen_states.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(a, s)| (*a, s.clone())).collect()
    }

    pub fn is_serving(&self, local: SocketAddr) -> bool {
        self.serving.lock().unwrap_or_else(|p| p.into_inner()).contains(&local)
    }

    pub(crate) fn set_serving(&self, local: SocketAddr, on: bool) {
        let mut set = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            set.insert(local);
        } else {
            set.remove(&local);
        }
    }
}

/// An open tunnel's two sides and who is at the far end.
#[derive(Debug)]
pub struct Established {
    /// The TLS side: accepted in server mode, dialled in client mode.
    pub(crate) link: Secured,
    /// The plain side: the NFS server (server mode) or the local NFS client (client mode).
    pub(crate) plain: TcpStream,
    /// CN of the certificate the TLS peer presented (the client's on a server, the server's on a client).
    pub(crate) identity: String,
    /// The address dialled.
    pub(crate) upstream: SocketAddr,
    /// The client certificate (server mode), re-checked against the CRL and allow-list on reload.
    pub(crate) peer_cert: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// How TLS started on the TLS leg: stunnel-style or RFC 9289.
    pub(crate) transport: Transport,
    /// Negotiated TLS version and cipher suite, e.g. `TLSv1_3/TLS13_AES_256_GCM_SHA384`.
    pub(crate) tls: String,
    /// Client mode: where the local connection was going before `--redirect` (NAT) sent it to us.
    pub(crate) original_dst: Option<OriginalDst>,
}

/// The destination a redirected connection had before NAT (`SO_ORIGINAL_DST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OriginalDst {
    pub(crate) addr: SocketAddr,
    /// Whether it is one of our `--redirect` addresses (another NAT rule may point here too).
    pub(crate) redirect: bool,
}

impl OriginalDst {
    /// The metric label: the address for our own redirects, `other` for anything else, so the label
    /// set stays as small as the `--redirect` list.
    pub(crate) fn label(&self) -> String {
        if self.redirect {
            self.addr.to_string()
        } else {
            "other".to_owned()
        }
    }
}

/// What differs between server and client mode: how a tunnel is opened.
pub trait Mode: Send + Sync + 'static {
    /// `server` or `client`, for logs.
    const NAME: &'static str;

    /// Whether the accepted side is the TLS one (server mode), so that "up" is TLS -> plain.
    const TLS_INBOUND: bool;

    /// Handshake, authorize and connect, each under its own timeout. Any failure is a refusal, and
    /// happens before a byte of application data is forwarded. Once the peer is authenticated and
    /// before anything is dialled, a mode whose accepted side is TLS calls [`Admission::admit`]
    /// (trading its handshake slot for a tunnel permit); for the others `run_one` does it after.
    fn open(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        admission: &Admission,
    ) -> impl Future<Output = Result<Established, RefuseReason>> + Send;

    /// Whether the far side works (for `/healthz`): a one-line description either way.
    fn health(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// An entry in the open-tunnel registry, removed (and counted as closed) when this is dropped.
struct Registered<'a, M> {
    ctx: &'a Ctx<M>,
    entry: &'a registry::TunnelEntry,
    transport: &'static str,
}

impl<M> Drop for Registered<'_, M> {
    fn drop(&mut self) {
        self.ctx.tunnels.remove(self.entry.id);
        let (up, down) = self.entry.unreported();
        self.ctx.metrics.add_bytes(&self.entry.identity, up, down);
        self.ctx.metrics.closed(&self.entry.identity, self.transport);
    }
}

/// Runs one connection to its end and logs its summary.
pub(crate) async fn run_one<M: Mode>(
    ctx: Arc<Ctx<M>>,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    admission: Admission,
) {
    let started = Instant::now();
    let opened = tokio::select! {
        opened = ctx.mode.open(tcp, peer, &admission) => {
            opened.and_then(|opened| admission.admit().map(|()| opened))
        }
        _ = admission.evicted().cancelled() => Err(RefuseReason::Evicted),
        _ = ctx.hard_stop.cancelled() => return,
    };
    ctx.metrics.set_handshaking(ctx.budget.handshaking());
    let opened = match opened {
        Ok(opened) => opened,
        Err(reason) => return ctx.refusals.refuse(&ctx.metrics, peer, &reason),
    };
    net::set_user_timeout(opened.link.tcp(), ctx.user_timeout);
    net::set_user_timeout(&opened.plain, ctx.user_timeout);
    let original_dst = opened.original_dst.map(|d| d.addr);
    let entry = ctx.tunnels.register(
        peer,
        listener,
        &opened.identity,
        opened.peer_cert,
        opened.transport,
        original_dst,
    );
    // Leaves the registry and the open-tunnel gauge even if the copy loop panics.
    let registered = Registered { ctx: &*ctx, entry: &entry, transport: opened.transport.word() };
    if !ctx.is_serving(listener) {
        // The listener's address was lost while this connection was in its handshake.
        entry.cut("listen address lost during the handshake");
    }
    let transport = opened.transport.word();
    let path = opened.link.path();
    ctx.metrics.opened(&opened.identity, transport, started.elapsed());
    ctx.metrics.record_path(path);
    match &opened.original_dst {
        Some(dst) => {
            ctx.metrics.redirected(&dst.label());
            tracing::info!(
                %peer,
                identity = %opened.identity,
                upstream = %opened.upstream,
                transport,
                tls = %opened.tls,
                path,
                original_dst = %dst.addr,
                "tunnel opened"
            )
        }
        None => tracing::info!(
            %peer,
            identity = %opened.identity,
            upstream = %opened.upstream,
            transport,
            tls = %opened.tls,
            path,
            "tunnel opened"
        ),
    }
    let (counters, cut) = (&entry.counters, &entry.switch);
    let end = match opened.link {
        Secured::Rustls(link) => {
            splice(link, opened.plain, M::TLS_INBOUND, counters, cut, ctx.write_stall).await
        }
        Secured::Kernel(link) => {
            kernel::splice(link, opened.plain, M::TLS_INBOUND, counters, cut, ctx.write_stall).await
        }
    };
    drop(registered);
    // The tunnel permit goes back only now.
    drop(admission);
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
    // Client mode, TLS 1.3: our handshake completes before the server has judged our certificate,
    // so its refusal (revoked, not on its allow-list) arrives as an alert on the first read. That
    // is a refusal of this host, not a broken tunnel: say so as one, with the reason.
    if !M::TLS_INBOUND && bytes_down == 0 {
        if let splice::End::Tls(crate::tls::link::LinkError::Tls(rustls::Error::AlertReceived(alert))) = &end
        {
            let reason =
                RefuseReason::PeerRejected(format!("refused-by-server: {alert:?} right after the handshake"));
            ctx.refusals.refuse(&ctx.metrics, peer, &reason);
        }
    }
}
