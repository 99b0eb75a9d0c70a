//! Starting a proxy: load its TLS material, bind its listeners, start the ops endpoint.

use std::net::SocketAddr;

use tokio::sync::watch;

use super::{listen, Running};
use crate::config;
use crate::ops;
use crate::tls;
use crate::tunnel::client::ClientMode;
use crate::tunnel::server::ServerMode;
use crate::tunnel::Mode;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Listen(#[from] super::ListenError),
    #[error(transparent)]
    Ops(#[from] ops::OpsError),
}

/// Loads the server's TLS material, binds its listeners and starts serving.
pub async fn start_server(cfg: &config::Server) -> Result<Running<ServerMode>, StartError> {
    let c = &cfg.common;
    let tls = tls::server_config(&c.tls, cfg.crl.as_deref(), cfg.enforce_crl_expiry, &cfg.allow, c.min_tls)?;
    let mode = ServerMode {
        tls: watch::Sender::new(tls),
        backend: cfg.backend.clone(),
        backend_source_port: cfg.backend_source_port,
        rpc_tls: cfg.rpc_tls,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
        key_update_every: c.key_update_every,
    };
    tracing::info!(backend = %cfg.backend, crl = ?cfg.crl, allow = ?cfg.allow.names().collect::<Vec<_>>(), "server ready");
    let running =
        super::start(mode, &cfg.listen, listen::Follow::Ownership, c.max_connections, c.keepalive).await?;
    ops::expiry::publish(&running.ctx.metrics, &c.tls, cfg.crl.as_deref());
    start_ops(&running, c.metrics).await?;
    Ok(running)
}

/// Loads the client's TLS material, binds its listeners and starts serving.
pub async fn start_client(cfg: &config::Client) -> Result<Running<ClientMode>, StartError> {
    let c = &cfg.common;
    let tls = tls::client_config(&c.tls, c.min_tls, cfg.upstream_protocol)?;
    let mode = ClientMode {
        tls: watch::Sender::new(tls),
        servers: cfg.servers.clone(),
        protocol: cfg.upstream_protocol,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
        key_update_every: c.key_update_every,
    };
    let running = super::start(mode, &cfg.listen, listen::Follow::No, c.max_connections, c.keepalive).await?;
    ops::expiry::publish(&running.ctx.metrics, &c.tls, None);
    start_ops(&running, c.metrics).await?;
    Ok(running)
}

async fn start_ops<M: Mode>(running: &Running<M>, addr: Option<SocketAddr>) -> Result<(), StartError> {
    if let Some(addr) = addr {
        let bound = ops::start(addr, running.ctx.clone(), running.stop_token()).await?;
        running.ctx.ops_addr.set(bound).ok();
    }
    Ok(())
}
