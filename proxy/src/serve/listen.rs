//! Listeners that follow the VIP: an address this host does not own is waited for, bound when the
//! host gains it, and released when it loses it, with every tunnel accepted through it cut. Whether
//! the host owns an address is the OS-specific part, in [`crate::os::owns_address`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve::handover::{Handover, Kind};
use crate::serve::Accepting;
use crate::tunnel::{ListenState, Mode};

/// How often an address this host may gain or lose (a VIP) is checked.
pub(crate) const ADDRESS_POLL: Duration = Duration::from_millis(500);

/// Binds `addr` with a listen queue of `backlog` (None: the system's maximum); returns the listener
/// and the address it got (the port, if 0 was asked for). A listening socket for `addr` that systemd
/// passed, or that the running proxy handed over (`handover`), is taken instead.
pub(crate) fn bind(
    addr: SocketAddr,
    backlog: Option<u32>,
    handover: Option<&Handover>,
) -> std::io::Result<(TcpListener, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if let Some((fd, pid)) = handover.and_then(|h| h.adopt(Kind::Listen, addr)) {
        let socket = Socket::from(fd);
        if socket.is_listener().unwrap_or(false) {
            // Its backlog stays as the previous proxy set it.
            socket.set_nonblocking(true)?;
            tracing::info!(listen = %addr, from_pid = pid, "using the listening socket the running proxy handed over");
            let listener = TcpListener::from_std(socket.into())?;
            let local = listener.local_addr()?;
            return Ok((listener, local));
        }
        tracing::warn!(listen = %addr, from_pid = pid, "the handed-over socket is not listening; binding afresh");
    }
    if let Some(inherited) = crate::os::activated_listener(addr) {
        // systemd socket activation: its socket, its backlog (ListenStream's Backlog=).
        inherited.set_nonblocking(true)?;
        tracing::info!(listen = %addr, "using the listening socket systemd passed (socket activation)");
        let listener = TcpListener::from_std(inherited)?;
        let local = listener.local_addr()?;
        return Ok((listener, local));
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's and std's bind do: a restarted proxy may bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.map_or_else(max_backlog, |b| i32::try_from(b).unwrap_or(i32::MAX)))?;
    let listener = TcpListener::from_std(socket.into())?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// The longest listen queue the system allows. A burst of connections beyond the queue is dropped
/// or reset by the kernel before we see it (std and tokio ask for 128; stunnel for 4096).
pub(crate) fn max_backlog() -> i32 {
    // Linux caps the request at net.core.somaxconn silently; read it so that we ask for exactly it.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(max) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&n| n > 0)
    {
        return max;
    }
    // FreeBSD (and others) cap a larger request at their own maximum (kern.ipc.soacceptqueue).
    i32::MAX
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
            (None, true) => match bind(addr, acc.backlog, None) {
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
