//! Starting a proxy: load its TLS material, bind its listeners, start the ops endpoint; for a client
//! with `--redirect`, install its nftables rules and keep them in place until it stops.

use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::watch;

use super::handover::Kind;
use super::{listen, Running};
use crate::config;
use crate::ops;
use crate::redirect;
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
    #[error(transparent)]
    Redirect(#[from] redirect::RedirectError),
}

/// Loads the server's TLS material, binds its listeners and starts serving.
pub async fn start_server(cfg: &config::Server) -> Result<Running<ServerMode>, StartError> {
    start_server_taking_over(cfg, None).await
}

/// [`start_server`], taking the listening sockets of a proxy running on `handover`
/// (`--handover-socket`) instead of binding them, and offering ours there in turn.
pub(crate) async fn start_server_taking_over(
    cfg: &config::Server,
    handover: Option<&Path>,
) -> Result<Running<ServerMode>, StartError> {
    let c = &cfg.common;
    if let Some(name) = &c.tls_suite {
        tls::only_suites(name)?;
    }
    let reader = tls::Reader::after_drop(c.privileges.as_ref());
    let tls = tls::server_config(
        &c.tls,
        cfg.crl.as_deref(),
        cfg.enforce_crl_expiry,
        &cfg.allow,
        c.min_tls,
        reader,
    )?;
    let mode = ServerMode {
        tls: watch::Sender::new(tls),
        backend: cfg.backend.clone(),
        backend_source_port: cfg.backend_source_port,
        rpc_tls: cfg.rpc_tls,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
        key_update_every: c.key_update_every,
        ktls: ktls_wanted(c),
    };
    let running = super::start(mode, &cfg.listen, listen::Follow::Ownership, c, handover).await?;
    // Said once everything is bound, never before a bind fails.
    let crl = cfg.crl.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string());
    let allow = cfg.allow.names().collect::<Vec<_>>().join(",");
    tracing::info!(backend = %cfg.backend, %crl, allow = %if allow.is_empty() { "-" } else { &allow }, "server ready");
    ops::expiry::publish(&running.ctx.metrics, &c.tls, cfg.crl.as_deref());
    start_ops(&running, c.metrics).await?;
    Ok(running)
}

/// Loads the client's TLS material, binds its listeners and starts serving.
pub async fn start_client(cfg: &config::Client) -> Result<Running<ClientMode>, StartError> {
    start_client_taking_over(cfg, None).await
}

/// [`start_client`] with a hand-over socket, as [`start_server_taking_over`].
pub(crate) async fn start_client_taking_over(
    cfg: &config::Client,
    handover: Option<&Path>,
) -> Result<Running<ClientMode>, StartError> {
    let c = &cfg.common;
    if let Some(name) = &c.tls_suite {
        tls::only_suites(name)?;
    }
    let tls = tls::client_config(
        &c.tls,
        c.min_tls,
        cfg.upstream_protocol,
        tls::Reader::after_drop(c.privileges.as_ref()),
    )?;
    let mode = ClientMode {
        tls: watch::Sender::new(tls),
        servers: cfg.servers.clone(),
        protocol: cfg.upstream_protocol,
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: c.keepalive,
        key_update_every: c.key_update_every,
        ktls: ktls_wanted(c),
        source_port: cfg.upstream_source_port,
        retry_for: cfg.upstream_retry_for,
        redirects: cfg.redirect.clone(),
        failures: Default::default(),
    };
    let running = super::start(mode, &cfg.listen, listen::Follow::No, c, handover).await?;
    ops::expiry::publish(&running.ctx.metrics, &c.tls, None);
    start_ops(&running, c.metrics).await?;
    // After binding: the rules point at the bound address (a --listen port 0 is known only now).
    if let Some(table) = redirect::Table::new(&cfg.redirect, &running.local_addrs) {
        if let Err(e) = install_redirect(&table, &running) {
            running.stop_token().cancel();
            return Err(e.into());
        }
        tokio::spawn(keep_redirect(
            table,
            running.ctx.clone(),
            cfg.redirect_check_every,
            running.stop_token(),
            running.sockets_shared(),
        ));
    }
    Ok(running)
}

/// Installs the client's redirect table (replacing a stale one) and logs each rule.
fn install_redirect(
    table: &redirect::Table,
    running: &Running<ClientMode>,
) -> Result<(), redirect::RedirectError> {
    table.install()?;
    for rule in &table.rules {
        running.ctx.metrics.set_redirect_in_place(&rule.from.to_string(), true);
        tracing::info!(redirect = %rule.from, to = %rule.to, table = %format!("inet {}", table.name), "redirect in place");
    }
    Ok(())
}

/// The installed redirect table. Checks and removal take turns under one lock, and once removed it is
/// never put back, so a check that was running when the client stopped cannot re-create it.
#[derive(Debug)]
struct Installed {
    table: redirect::Table,
    live: std::sync::Mutex<bool>,
}

impl Installed {
    /// Puts missing rules back; returns the ones that were missing.
    fn restore(&self) -> Result<Vec<redirect::Rule>, redirect::RedirectError> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if !*live {
            return Ok(Vec::new());
        }
        let missing = self.table.missing()?;
        if !missing.is_empty() {
            self.table.install()?;
        }
        Ok(missing)
    }

    fn remove(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if !std::mem::replace(&mut *live, false) {
            return;
        }
        match self.table.remove() {
            Ok(()) => tracing::info!(table = %format!("inet {}", self.table.name), "redirect removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the redirect"),
        }
    }
}

/// Removes the redirect table when dropped: when the client stops accepting, or when the runtime
/// ends with the keeper still running.
struct RemoveOnDrop(std::sync::Arc<Installed>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// Checks the redirect rules every `every` and puts them back when something (a firewall reload,
/// `nft flush ruleset`) removed them; removes them when the client stops accepting, unless another
/// proxy shares the listening sockets (`shared`: a hand-over), whose table it is too (same name).
async fn keep_redirect(
    table: redirect::Table,
    ctx: std::sync::Arc<crate::tunnel::Ctx<ClientMode>>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    shared: impl Fn() -> bool + Send + 'static,
) {
    let installed = std::sync::Arc::new(Installed { table, live: std::sync::Mutex::new(true) });
    let guard = RemoveOnDrop(installed.clone());
    let in_place = |on: bool| {
        for rule in &installed.table.rules {
            ctx.metrics.set_redirect_in_place(&rule.from.to_string(), on);
        }
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let checking = installed.clone();
        match tokio::task::spawn_blocking(move || checking.restore()).await {
            Ok(Ok(missing)) => {
                if !missing.is_empty() {
                    ctx.metrics.redirect_restored();
                }
                for rule in &missing {
                    tracing::warn!(redirect = %rule.from, to = %rule.to, "redirect rule was missing (firewall reload?); put it back");
                }
                in_place(true);
            }
            Ok(Err(e)) => {
                in_place(false);
                tracing::warn!(error = %e, "cannot check or restore the redirect");
            }
            Err(e) => tracing::warn!(error = %e, "redirect check did not finish"),
        }
    }
    in_place(false);
    if shared() {
        tracing::info!(table = %installed.table.name, "redirect left in place for the proxy that shares our sockets");
        std::mem::forget(guard);
    } else {
        drop(guard);
    }
}

/// Starts the ops endpoint on `addr` (on the socket the running proxy handed over, if any); then
/// closes handed-over sockets that nothing took.
async fn start_ops<M: Mode>(running: &Running<M>, addr: Option<SocketAddr>) -> Result<(), StartError> {
    if let Some(addr) = addr {
        let listener = match running.adopt(Kind::Metrics, addr) {
            Some((fd, pid)) => {
                tracing::info!(metrics = %addr, from_pid = pid, "using the metrics socket the running proxy handed over");
                std::net::TcpListener::from(fd)
            }
            None => std::net::TcpListener::bind(addr).map_err(|error| ops::OpsError { addr, error })?,
        };
        running.shelve(Kind::Metrics, addr, &listener);
        let bound = ops::start(addr, listener, running.ctx.clone(), running.stop_token()).await?;
        running.ctx.ops_addr.set(bound).ok();
    }
    running.discard_unadopted();
    Ok(())
}

/// `--ktls auto` and a kernel that can take the records (found once, said once).
fn ktls_wanted(c: &config::Common) -> bool {
    if c.ktls == config::Ktls::Off {
        tracing::info!("kTLS: off (--ktls off); rustls' record layer");
        return false;
    }
    tracing::info!("kTLS: {}", tls::ktls::describe());
    tls::ktls::support().is_ok()
}
