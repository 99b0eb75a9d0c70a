//! The accept loop of both modes (limit, back off on accept errors, spawn), the registry of open
//! tunnels, and the drain on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Keepalive;
use crate::net;
use crate::refuse::{refuse, RefuseReason};
use crate::splice::{Counters, Cut};
use crate::tunnel::{run_one, Mode};

/// What every connection task shares.
#[derive(Debug)]
pub struct Ctx<M> {
    pub mode: M,
    pub tunnels: Tunnels,
    pub keepalive: Keepalive,
    /// Cancelled when the drain time is over: connections still in their handshake end too.
    pub hard_stop: CancellationToken,
}

/// One open tunnel, as the registry sees it.
#[derive(Debug)]
pub struct TunnelEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub listener: SocketAddr,
    pub identity: String,
    pub peer_cert: Option<rustls::pki_types::CertificateDer<'static>>,
    pub started: Instant,
    pub counters: Counters,
    pub cut: Cut,
}

impl Counters {
    pub fn totals(&self) -> (u64, u64) {
        (self.up.load(Ordering::Relaxed), self.down.load(Ordering::Relaxed))
    }
}

/// The open tunnels: for cutting them (drain, lost address, revocation) and for reporting.
#[derive(Debug, Default)]
pub struct Tunnels {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<TunnelEntry>>>,
}

impl Tunnels {
    pub fn register(
        &self,
        peer: SocketAddr,
        listener: SocketAddr,
        identity: &str,
        peer_cert: Option<rustls::pki_types::CertificateDer<'static>>,
    ) -> Arc<TunnelEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(TunnelEntry {
            id,
            peer,
            listener,
            identity: identity.to_owned(),
            peer_cert,
            started: Instant::now(),
            counters: Counters::default(),
            cut: Cut::default(),
        });
        self.lock().insert(id, entry.clone());
        entry
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn snapshot(&self) -> Vec<Arc<TunnelEntry>> {
        self.lock().values().cloned().collect()
    }

    /// Cuts every open tunnel `which` selects; returns how many.
    pub fn cut_where(&self, why: &str, which: impl Fn(&TunnelEntry) -> bool) -> usize {
        let chosen: Vec<_> = self.snapshot().into_iter().filter(|t| which(t)).collect();
        for t in &chosen {
            t.cut.cut(why);
        }
        chosen.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<TunnelEntry>>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy: its bound addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running<M> {
    pub local_addrs: Vec<SocketAddr>,
    pub ctx: Arc<Ctx<M>>,
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
    accept_loops: TaskTracker,
}

/// Why the proxy could not start listening.
#[derive(Debug, thiserror::Error)]
#[error("--listen {addr}: cannot bind: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds every listen address and starts accepting.
pub async fn start<M: Mode>(
    mode: M,
    listen: &[SocketAddr],
    max_connections: u32,
    keepalive: Keepalive,
) -> Result<Running<M>, BindError> {
    let mut listeners = Vec::new();
    for &addr in listen {
        let listener = TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })?;
        listeners.push(listener);
    }
    let ctx =
        Arc::new(Ctx { mode, tunnels: Tunnels::default(), keepalive, hard_stop: CancellationToken::new() });
    let limit = Arc::new(Semaphore::new(max_connections as usize));
    let stop_accepting = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    let mut local_addrs = Vec::new();
    for listener in listeners {
        let local = listener.local_addr().map_err(|source| BindError { addr: listen[0], source })?;
        tracing::info!(mode = M::NAME, listen = %local, "listening");
        local_addrs.push(local);
        accept_loops.spawn(accept_loop(
            listener,
            local,
            ctx.clone(),
            limit.clone(),
            tracker.clone(),
            stop_accepting.clone(),
        ));
    }
    accept_loops.close();
    Ok(Running { local_addrs, ctx, stop_accepting, tracker, accept_loops })
}

async fn accept_loop<M: Mode>(
    listener: TcpListener,
    local: SocketAddr,
    ctx: Arc<Ctx<M>>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: wait and keep serving; never end the loop.
                tracing::warn!(listen = %local, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(peer, &RefuseReason::TooManyConnections);
            continue;
        };
        net::tune(&tcp, ctx.keepalive);
        let ctx = ctx.clone();
        tracker.spawn(async move {
            run_one(ctx, tcp, peer, local).await;
            drop(permit);
        });
    }
}

impl<M: Mode> Running<M> {
    /// Stops accepting, lets open tunnels finish for `drain`, then cuts the rest. Returns how many
    /// tunnels were cut.
    pub async fn shutdown(self, drain: Duration) -> usize {
        self.stop_accepting.cancel();
        self.accept_loops.wait().await;
        self.tracker.close();
        let open = self.ctx.tunnels.snapshot().len();
        tracing::info!(open, drain_ms = drain.as_millis() as u64, "stopped accepting; draining");
        if tokio::time::timeout(drain, self.tracker.wait()).await.is_ok() {
            return 0;
        }
        let cut = self.ctx.tunnels.cut_where("shutdown (drain timeout)", |_| true);
        self.ctx.hard_stop.cancel();
        // Cut tunnels end at their next poll; bound the wait anyway.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        cut
    }
}
