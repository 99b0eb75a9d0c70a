//! nfs-tls-proxy: a TLS tunnel for NFS. One connection pipeline serves both modes
//! (accept -> handshake -> authorize -> connect -> splice -> one summary line); the mode only decides
//! which side is TLS.
//!
//! - [`config`]: flags and TOML resolved once into [`config::Server`] / [`config::Client`]
//! - [`tls`]: the one loader of certificate, key, CA and CRL (start-up, reload and `check`)
//! - [`identity`]: peer names and the allow-list
//! - [`server`], [`client`]: each mode's `open()`; [`rpc`]: RFC 9289's probe and ONC RPC bits
//! - [`tunnel`], [`splice`], [`serve`]: the shared pipeline, copy loop and accept loop
//! - [`link`], [`record`]: the TLS handshake (rustls, unbuffered) and our in-place record layer
//! - [`listen`]: listeners that follow the VIP; [`os`]: the Linux/FreeBSD specifics (ownership, users)
//! - [`refuse`]: refusal reasons and their one log line
//! - [`reload`]: SIGHUP / --reload-every: re-read the TLS material, swap it in, cut what it no longer admits
//! - [`expiry`], [`metrics`], [`ops`]: expiry warnings, Prometheus metrics, /metrics /healthz /tunnels
//! - [`check`], [`convert`], [`manual`]: `check`, `convert-stunnel`, man pages and completions
//! - [`app`]: the binary's edge (runtime, signals, exit codes); [`demo`]: the no-setup demo

pub mod app;
pub mod check;
pub mod client;
pub mod config;
pub mod convert;
pub mod demo;
pub mod expiry;
pub mod identity;
pub mod link;
pub mod listen;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod os;
pub mod record;
pub mod refuse;
pub mod reload;
pub mod rpc;
pub mod serve;
pub mod server;
pub mod splice;
pub mod tls;
pub mod tunnel;

use tokio::sync::watch;

pub use serve::Running;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Listen(#[from] serve::ListenError),
    #[error(transparent)]
    Ops(#[from] ops::OpsError),
}

/// Loads the server's TLS material, binds its listeners and starts serving.
pub async fn start_server(cfg: &config::Server) -> Result<Running<server::ServerMode>, StartError> {
    let c = &cfg.common;
    let tls = tls::server_config(&c.tls, cfg.crl.as_deref(), cfg.enforce_crl_expiry, &cfg.allow, c.min_tls)?;
    let mode = server::ServerMode {
        tls: watch::Sender::new(tls),
        backend: cfg.backend.clone(),
        backend_source_port: cfg.backend_source_port,
        rpc_tls: cfg.rpc_tls,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
    };
    tracing::info!(backend = %cfg.backend, crl = ?cfg.crl, allow = ?cfg.allow.names().collect::<Vec<_>>(), "server ready");
    let running =
        serve::start(mode, &cfg.listen, listen::Follow::Ownership, c.max_connections, c.keepalive).await?;
    start_ops(&running, c.metrics).await?;
    Ok(running)
}

/// Loads the client's TLS material, binds its listeners and starts serving.
pub async fn start_client(cfg: &config::Client) -> Result<Running<client::ClientMode>, StartError> {
    let c = &cfg.common;
    let tls = tls::client_config(&c.tls, c.min_tls, cfg.upstream_protocol)?;
    let mode = client::ClientMode {
        tls: watch::Sender::new(tls),
        servers: cfg.servers.clone(),
        protocol: cfg.upstream_protocol,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
    };
    let running = serve::start(mode, &cfg.listen, listen::Follow::No, c.max_connections, c.keepalive).await?;
    start_ops(&running, c.metrics).await?;
    Ok(running)
}

async fn start_ops<M: tunnel::Mode>(
    running: &Running<M>,
    addr: Option<std::net::SocketAddr>,
) -> Result<(), StartError> {
    if let Some(addr) = addr {
        let bound = ops::start(addr, running.ctx.clone(), running.stop_token()).await?;
        running.ctx.ops_addr.set(bound).ok();
    }
    Ok(())
}
