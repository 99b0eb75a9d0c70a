//! Listeners that follow the VIP: an address this host does not own is waited for, bound when the
//! host gains it, and released when it loses it, with every tunnel accepted through it cut. Whether
//! the host owns an address is the OS-specific part, in [`crate::os::owns_address`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve::Accepting;
use crate::tunnel::{ListenState, Mode};

/// How often an address this host may gain or lose (a VIP) is checked.
pub(crate) const ADDRESS_POLL: Duration = Duration::from_millis(500);

/// Binds `addr`; returns the listener and the address it got (the port, if 0 was asked for).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Which listen addresses follow ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Bind every address at start; failing to bind is an error (client mode).
    No,
    /// An address this host does not own is waited for, and released when the host loses it
    /// (server mode: the CARP / keepalived VIP). Wildcard and loopback addresses are simply bound.
    Ownership,
}

/// Watches whether this host owns `addr`: binds when it gains it, and when it loses it closes the
/// listener and cuts every tunnel accepted through it.
pub(crate) async fn follow_address<M: Mode>(
    addr: SocketAddr,
    mut serving: Option<(SocketAddr, CancellationToken)>,
    acc: Accepting<M>,
) {
    let mut tick = tokio::time::interval(ADDRESS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Repeated failures are logged once each, not every poll.
    let mut last_problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = acc.stop.cancelled() => return,
        }
        let owned = match crate::os::owns_address(addr.ip()) {
            Ok(owned) => owned,
            Err(e) => {
                let problem = format!("cannot tell whether this host owns the address: {e}");
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(listen = %addr, "{problem}; keeping the current state");
                    last_problem = Some(problem);
                }
                continue;
            }
        };
        match (&serving, owned) {
            (None, true) => match bind(addr).await {
                Ok((listener, local)) => {
                    tracing::info!(mode = M::NAME, listen = %addr, "address acquired");
                    acc.ctx.set_listen_state(addr, ListenState::Serving);
                    last_problem = None;
                    serving = Some((local, acc.serve(listener, local)));
                }
                Err(e) => {
                    let problem = format!("address acquired but cannot bind: {e}");
                    acc.ctx.set_listen_state(addr, ListenState::Failing(e.to_string()));
                    if last_problem.as_ref() != Some(&problem) {
                        tracing::warn!(listen = %addr, "{problem}; retrying");
                        last_problem = Some(problem);
                    }
                }
            },
            (Some((local, token)), false) => {
                token.cancel();
                acc.ctx.set_listen_state(addr, ListenState::Standby);
                let local = *local;
                // Out of the serving set first: a tunnel finishing its handshake now cuts itself.
                acc.ctx.set_serving(local, false);
                let why = format!("address {} lost", addr.ip());
                let cut = acc.ctx.tunnels.cut_where(&why, |t| t.listener == local);
                tracing::warn!(
                    mode = M::NAME,
                    listen = %addr,
                    tunnels_cut = cut,
                    "address lost: listener closed, open tunnels through it cut; standing by"
                );
                serving = None;
            }
            _ => {}
        }
    }
}
