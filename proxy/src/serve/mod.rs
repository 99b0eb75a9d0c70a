//! Serving: the accept loop of both modes (a handshake slot for each connection, back off on accept
//! errors, spawn) and the drain on shutdown; [`start`]: start_server/start_client; [`listen`]:
//! listeners that follow the VIP; [`reload`]: SIGHUP / --reload-every; [`handover`]: the listening
//! sockets passed to a successor (hitless restart without systemd).

pub(crate) mod handover;
pub(crate) mod listen;
pub(crate) mod reload;
mod start;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Common;
use crate::tunnel::admit::Budget;
use crate::tunnel::net;
use crate::tunnel::refuse::{is_exhaustion, Refusals, RefuseReason};
use crate::tunnel::registry::Tunnels;
use crate::tunnel::{run_one, Ctx, ListenState, Mode};

pub use start::{start_client, start_server, StartError};
pub(crate) use start::{start_client_taking_over, start_server_taking_over};

/// A running proxy: its bound addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running<M> {
    /// The addresses bound at start (an address this host does not own yet is bound later).
    pub local_addrs: Vec<SocketAddr>,
    pub ctx: Arc<Ctx<M>>,
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
    accept_loops: TaskTracker,
    /// `--handover-socket`: what we took over, and what we will hand on.
    handover: Option<Arc<handover::Handover>>,
}

/// Why the proxy could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--listen {addr}: cannot bind: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("--listen {addr}: cannot tell whether this host owns the address: {error}")]
    Ownership { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
}

/// What every accept loop shares.
#[derive(Debug)]
pub(crate) struct Accepting<M> {
    pub(crate) ctx: Arc<Ctx<M>>,
    /// `--listen-backlog` (None: the system's maximum), for listeners bound later too.
    pub(crate) backlog: Option<u32>,
    tracker: TaskTracker,
    loops: TaskTracker,
    pub(crate) stop: CancellationToken,
    /// Copies of the listening sockets for a successor (`--handover-socket`).
    shelf: Option<handover::Shelf>,
    /// With a predecessor: accept only once it has confirmed the hand-over.
    gate: Option<CancellationToken>,
}

impl<M> Clone for Accepting<M> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            backlog: self.backlog,
            tracker: self.tracker.clone(),
            loops: self.loops.clone(),
            stop: self.stop.clone(),
            shelf: self.shelf.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<M: Mode> Accepting<M> {
    /// Starts accepting on `listener`; the returned token stops this listener alone.
    pub(crate) fn serve(&self, listener: TcpListener, local: SocketAddr) -> CancellationToken {
        let backlog = self.backlog.map_or_else(listen::max_backlog, |b| b as i32);
        tracing::info!(mode = M::NAME, listen = %local, backlog, "listening");
        self.ctx.set_serving(local, true);
        let own = self.stop.child_token();
        let shelved = self.shelf.as_ref().and_then(|shelf| {
            shelf
                .put(handover::Kind::Listen, local, &listener)
                .inspect_err(|e| tracing::warn!(listen = %local, error = %e, "cannot keep this listener for a hand-over"))
                .ok()
        });
        self.loops.spawn(accept_loop(listener, local, self.clone(), own.clone(), shelved));
        own
    }
}

/// Binds every listen address (or, with [`listen::Follow::Ownership`], waits for it) and starts
/// accepting. With `handover`, a listener handed over by the running proxy is taken instead of a bind.
pub(crate) async fn start<M: Mode>(
    mode: M,
    listen: &[SocketAddr],
    follow: listen::Follow,
    common: &Common,
    handover: Option<&std::path::Path>,
) -> Result<Running<M>, ListenError> {
    let limits = common.limits;
    let handover = handover.map(|path| handover::Handover::prepare(path, M::NAME)).transpose()?.map(Arc::new);
    // Decide and bind everything first, so a bad address fails start-up before anything runs.
    let mut plan = Vec::new();
    for &addr in listen {
        let followed = follow == listen::Follow::Ownership && crate::os::is_followed(addr);
        let owned = if followed {
            crate::os::owns_address(addr.ip()).map_err(|error| ListenError::Ownership { addr, error })?
        } else {
            true
        };
        let listener = if owned {
            Some(
                listen::bind(addr, limits.listen_backlog, handover.as_deref())
                    .map_err(|error| ListenError::Bind { addr, error })?,
            )
        } else {
            None
        };
        plan.push((addr, followed, listener));
    }
    let ctx = Arc::new(Ctx {
        mode,
        tunnels: Tunnels::default(),
        keepalive: common.keepalive,
        user_timeout: limits.tcp_user_timeout.resolve(common.keepalive),
        write_stall: limits.write_stall_timeout,
        // Server mode evicts under a flood; a client's peers are local and only wait.
        budget: Arc::new(Budget::new(
            limits.max_handshakes,
            common.max_connections,
            common.handshake_timeout,
            M::TLS_INBOUND,
        )),
        refusals: Refusals::default(),
        hard_stop: CancellationToken::new(),
        metrics: crate::metrics::Metrics::new(M::NAME),
        ops_addr: std::sync::OnceLock::new(),
        serving: Mutex::default(),
        listen_states: Mutex::default(),
    });
    let acc = Accepting {
        ctx: ctx.clone(),
        backlog: limits.listen_backlog,
        tracker: TaskTracker::new(),
        loops: TaskTracker::new(),
        stop: CancellationToken::new(),
        shelf: handover.as_ref().map(|h| h.shelf.clone()),
        gate: handover.as_ref().and_then(|h| h.accept_gate()),
    };
    let mut local_addrs = Vec::new();
    for (addr, followed, listener) in plan {
        ctx.set_listen_state(
            addr,
            if listener.is_some() { ListenState::Serving } else { ListenState::Standby },
        );
        let serving = listener.map(|(l, local)| {
            local_addrs.push(local);
            (local, acc.serve(l, local))
        });
        if followed {
            if serving.is_none() {
                tracing::info!(mode = M::NAME, listen = %addr, "standing by: this host does not own the address; will bind when it does");
            }
            acc.loops.spawn(listen::follow_address(addr, serving, acc.clone()));
        }
    }
    acc.loops.spawn(summarise_refusals(ctx.clone(), acc.stop.clone()));
    acc.loops.close();
    Ok(Running {
        local_addrs,
        ctx,
        stop_accepting: acc.stop.clone(),
        tracker: acc.tracker.clone(),
        accept_loops: acc.loops.clone(),
        handover,
    })
}

/// Writes the refusal summaries once a second (see [`Refusals`]).
async fn summarise_refusals<M>(ctx: Arc<Ctx<M>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => ctx.refusals.flush(),
            _ = stop.cancelled() => return ctx.refusals.flush(),
        }
    }
}

/// Accepts connections until `stop`: each one takes a handshake slot (which may evict the oldest
/// handshake of the busiest address, or wait while none may be evicted yet) and runs in its own
/// task. Accepting does nothing else, so the listen queue drains fast.
async fn accept_loop<M: Mode>(
    listener: TcpListener,
    local: SocketAddr,
    acc: Accepting<M>,
    stop: CancellationToken,
    // Off the hand-over shelf when this loop ends, so the socket closes with the listener.
    _shelved: Option<handover::Shelved>,
) {
    let ctx = &acc.ctx;
    if let Some(go) = &acc.gate {
        tokio::select! {
            _ = go.cancelled() => {}
            _ = stop.cancelled() => return,
        }
    }
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: the connection waits in the listen
                // queue until some are freed. Anything else (ECONNABORTED...) concerns one
                // connection. Either way wait a little and keep serving; never end the loop.
                if is_exhaustion(&e) {
                    let reason = RefuseReason::ResourceExhausted(format!("accept: {e}"));
                    ctx.refusals.refuse(&ctx.metrics, local, &reason);
                } else {
                    tracing::warn!(listen = %local, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        // The evicted connection's own task logs its refusal.
        let (admission, _) = tokio::select! {
            entered = ctx.budget.enter(peer) => entered,
            _ = stop.cancelled() => return,
        };
        ctx.metrics.set_handshaking(ctx.budget.handshaking());
        net::tune(&tcp, ctx.keepalive);
        acc.tracker.spawn(run_one(ctx.clone(), tcp, peer, local, admission));
    }
}

impl<M: Mode> Running<M> {
    /// Cancelled when the proxy stops accepting (for side services such as the metrics endpoint).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop_accepting.clone()
    }

    /// Cancelled when a successor has taken over our listening sockets (`--handover-socket`): stop
    /// as on SIGTERM. Never cancelled without a hand-over socket.
    pub fn handed_over(&self) -> CancellationToken {
        self.handover.as_ref().map_or_else(CancellationToken::new, |h| h.handed_over.clone())
    }

    /// Once the proxy is ready: a predecessor we took sockets from is told to stop, and from now on
    /// a successor may take ours. Nothing without `--handover-socket`.
    pub async fn handover_ready(&self) -> Result<(), ListenError> {
        if let Some(h) = &self.handover {
            h.ready(self.stop_accepting.clone()).await?;
        }
        Ok(())
    }

    /// Whether another proxy shares our listening sockets right now (see
    /// [`handover::Handover::shared`]): then what belongs to the listen address as a whole (the
    /// client's redirect table) is not ours to remove when we stop.
    pub(crate) fn sockets_shared(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let handover = self.handover.clone();
        move || handover.as_ref().is_some_and(|h| h.shared())
    }

    /// Puts a copy of a listening socket that is not a tunnel listener (the ops endpoint) on the
    /// hand-over shelf until the proxy stops accepting; returns a socket handed over for `addr`.
    pub(crate) fn adopt(
        &self,
        kind: handover::Kind,
        addr: SocketAddr,
    ) -> Option<(std::os::fd::OwnedFd, u32)> {
        self.handover.as_ref()?.adopt(kind, addr)
    }

    /// Keeps a copy of `socket` for a successor until the proxy stops accepting.
    pub(crate) fn shelve(&self, kind: handover::Kind, addr: SocketAddr, socket: &impl std::os::fd::AsFd) {
        let Some(h) = &self.handover else { return };
        match h.shelf.put(kind, addr, socket) {
            Ok(shelved) => {
                let stop = self.stop_accepting.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    drop(shelved);
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep this socket for a hand-over"),
        }
    }

    /// After start-up: received sockets that no listener took are closed.
    pub(crate) fn discard_unadopted(&self) {
        if let Some(h) = &self.handover {
            h.discard_unadopted();
        }
    }

    /// Stops accepting, lets open tunnels finish for `drain`, then cuts the rest. Returns how many
    /// tunnels were cut.
    pub async fn shutdown(self, drain: Duration) -> usize {
        self.stop_accepting.cancel();
        self.accept_loops.wait().await;
        self.tracker.close();
        if let Some(h) = &self.handover {
            h.finish();
        }
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
