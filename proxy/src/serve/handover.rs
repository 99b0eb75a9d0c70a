//! Hitless restart without systemd (FreeBSD's rc.d, or any start by hand): a running proxy hands
//! its listening sockets to its successor over a Unix control socket (`--handover-socket PATH`).
//!
//! 1. The successor, started with the same PATH, connects and receives (SCM_RIGHTS) every listening
//!    socket of the running proxy: the tunnel listeners and the `--metrics` one, each with the
//!    address it is bound to, and the control socket itself.
//! 2. It adopts a socket wherever its `--listen`/`--metrics` names the same address (as it adopts
//!    systemd's, in [`super::listen::bind`]) and binds the rest, but accepts on the adopted tunnel
//!    listeners only after step 3: until then the predecessor alone accepts from those queues.
//! 3. Once ready (privileges dropped, material readable) it says `ready`; the predecessor answers
//!    `bye`, stops accepting and drains as on SIGTERM; the successor starts accepting and writes its
//!    pid file. The predecessor's descriptors close, the sockets do not: the successor holds them, so
//!    a connection waiting in a listen queue is accepted there.
//!
//! If the successor dies before `ready`, the predecessor never stopped accepting: it goes on, and
//! serves the next hand-over. With no predecessor (no file, connection refused: a stale file) the
//! proxy binds as always and creates the control socket (mode 0600).
//!
//! Why a hand-over and not SO_REUSEPORT: a second SO_REUSEPORT listener gets its own queue (Linux;
//! FreeBSD's SO_REUSEPORT_LB too), and the connections waiting in the old one's queue are reset when
//! it closes. Why the control socket travels too: the successor may run as `--user` and could not
//! create a socket under /var/run again, and a successor that fails has taken nothing away.

use std::io::{IoSlice, IoSliceMut, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a starting proxy waits for its predecessor's sockets.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a running proxy waits for its successor to be ready before it gives up on it (and keeps
/// serving). Start-up after the sockets arrive is binding what was not handed over and the pid file.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor waits for the predecessor's `bye`.
const BYE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sockets in one hand-over (listeners, metrics, control).
const MAX_SOCKETS: usize = 64;
/// Longest description of the sockets.
const MAX_OFFER: usize = 64 << 10;

/// Whether sockets may be exchanged with `uid`: root (rc.d and systemd start proxies as root) or
/// the user this process runs as (a proxy started by hand, or one that has dropped privileges to
/// the same `--user` as its successor will).
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Whether process `pid` still exists (signal 0: nothing is sent).
fn process_runs(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    pid > 1
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A tunnel listener (`--listen`).
    Listen,
    /// The ops endpoint (`--metrics`).
    Metrics,
    /// The control socket itself.
    Control,
}

/// A socket from the predecessor: what it is for, the address it is bound to.
type Received = (Kind, SocketAddr, OwnedFd);

/// The description sent with the descriptors, in their order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Offer {
    pid: u32,
    /// `server` or `client`: a proxy of the other mode on the same socket (a configuration mistake)
    /// is not taken over.
    mode: String,
    sockets: Vec<Described>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Described {
    kind: Kind,
    addr: Option<SocketAddr>,
}

/// Why the control socket could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("--handover-socket {path}: {detail}")]
pub struct HandoverError {
    pub path: PathBuf,
    pub detail: String,
}

/// Copies of this process's listening sockets, for a successor. A listener that stops (a VIP lost)
/// takes its copy off the shelf, so the socket really closes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shelf(Arc<Mutex<ShelfItems>>);

#[derive(Debug, Default)]
struct ShelfItems {
    next: u64,
    items: Vec<(u64, Kind, SocketAddr, OwnedFd)>,
}

/// A socket on the shelf; dropping it takes it off.
#[derive(Debug)]
pub(crate) struct Shelved {
    shelf: Shelf,
    id: u64,
}

impl Drop for Shelved {
    fn drop(&mut self) {
        let mut s = self.shelf.0.lock().unwrap_or_else(|p| p.into_inner());
        s.items.retain(|(id, ..)| *id != self.id);
    }
}

impl Shelf {
    /// Puts a copy of `socket` (bound to `addr`) on the shelf.
    pub(crate) fn put(&self, kind: Kind, addr: SocketAddr, socket: &impl AsFd) -> std::io::Result<Shelved> {
        let copy = socket.as_fd().try_clone_to_owned()?;
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        let id = s.next;
        s.items.push((id, kind, addr, copy));
        Ok(Shelved { shelf: self.clone(), id })
    }

    fn copies(&self) -> Vec<Received> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.items
            .iter()
            .filter_map(|(_, kind, addr, fd)| fd.try_clone().ok().map(|fd| (*kind, *addr, fd)))
            .collect()
    }
}

/// The running predecessor, between receiving its sockets and telling it that we are ready.
#[derive(Debug)]
struct Predecessor {
    pid: u32,
    conn: UnixStream,
}

/// One process's end of the hand-over: what it received, what it will hand on.
#[derive(Debug)]
pub(crate) struct Handover {
    path: PathBuf,
    /// Our mode's name, told to a successor.
    mode: String,
    control: Mutex<Option<UnixListener>>,
    predecessor: Mutex<Option<Predecessor>>,
    received: Mutex<Vec<Received>>,
    pub(crate) shelf: Shelf,
    /// Cancelled once a successor has said it is ready: stop accepting and drain.
    pub(crate) handed_over: CancellationToken,
    /// Cancelled once our predecessor has confirmed that we took over (see [`Self::accept_gate`]).
    go: CancellationToken,
    /// Whether a successor received our sockets (then PATH is no longer ours alone to remove).
    offered: AtomicBool,
}

impl Handover {
    /// At start, before binding: takes the sockets of a proxy running on `path`, or (none running)
    /// creates the control socket. Blocks for at most [`RECEIVE_TIMEOUT`].
    pub(crate) fn prepare(path: &Path, mode: &str) -> Result<Self, HandoverError> {
        let err = |detail: String| HandoverError { path: path.to_owned(), detail };
        let mut handover = Self {
            path: path.to_owned(),
            mode: mode.to_owned(),
            control: Mutex::new(None),
            predecessor: Mutex::new(None),
            received: Mutex::new(Vec::new()),
            shelf: Shelf::default(),
            go: CancellationToken::new(),
            handed_over: CancellationToken::new(),
            offered: AtomicBool::new(false),
        };
        // Sockets come only from root or from our own user: a socket file another user made (PATH
        // in a directory others may write to) could hand us listeners of theirs.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::MetadataExt;
            if !trusted(meta.uid()) {
                return Err(err(format!(
                    "it belongs to uid {}, neither root nor this proxy's user: not taking sockets from it",
                    meta.uid()
                )));
            }
        }
        match UnixStream::connect(path) {
            Ok(conn) => match receive(&conn) {
                Ok((offer, _)) if offer.mode != mode => {
                    return Err(err(format!(
                        "the proxy running there (pid {}) is a {}, this one a {}: not taking it over",
                        offer.pid, offer.mode, mode
                    )))
                }
                Ok((Offer { pid, .. }, mut sockets)) => {
                    let control = sockets
                        .iter()
                        .position(|(kind, ..)| *kind == Kind::Control)
                        .map(|i| sockets.remove(i).2)
                        .ok_or_else(|| err(format!("pid {pid} handed over no control socket")))?;
                    tracing::info!(
                        from_pid = pid,
                        sockets = sockets.len(),
                        handover_socket = %path.display(),
                        "taking over the listening sockets of the running proxy"
                    );
                    *handover.control.get_mut().unwrap_or_else(|p| p.into_inner()) =
                        Some(UnixListener::from(control));
                    *handover.received.get_mut().unwrap_or_else(|p| p.into_inner()) = sockets;
                    *handover.predecessor.get_mut().unwrap_or_else(|p| p.into_inner()) =
                        Some(Predecessor { pid, conn });
                    return Ok(handover);
                }
                // Accepted but never answered: a proxy that was already stopping (it closed its
                // control socket with us in its queue). Nobody to take over from.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::info!(handover_socket = %path.display(), "the proxy on the hand-over socket was stopping; starting afresh");
                }
                Err(e) => return Err(err(format!("receiving the running proxy's sockets: {e}"))),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(err(format!("cannot connect: {e}"))),
        }
        // Nobody running: a leftover file (the previous proxy was killed) goes.
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(handover_socket = %path.display(), "removed a stale hand-over socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("cannot remove the stale socket: {e}"))),
        }
        // Whoever connects may ask for our listening sockets: the file is created 0600 (by umask,
        // so there is no moment with a looser mode), and each peer's uid is checked (offer_until).
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(before);
        let listener = bound.map_err(|e| err(format!("cannot bind: {e}")))?;
        *handover.control.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(handover)
    }

    /// The predecessor's socket of `kind` bound to `addr`, taken (each is adopted once).
    pub(crate) fn adopt(&self, kind: Kind, addr: SocketAddr) -> Option<(OwnedFd, u32)> {
        let pid = self.predecessor.lock().unwrap_or_else(|p| p.into_inner()).as_ref()?.pid;
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let i = received.iter().position(|(k, a, _)| *k == kind && *a == addr)?;
        Some((received.remove(i).2, pid))
    }

    /// Closes the received sockets nobody adopted (an address no longer configured).
    pub(crate) fn discard_unadopted(&self) {
        for (kind, addr, _) in std::mem::take(&mut *self.received.lock().unwrap_or_else(|p| p.into_inner())) {
            tracing::info!(?kind, listen = %addr, "not configured any more: the handed-over socket is closed");
        }
    }

    /// Ready: tells the predecessor to stop (bounded; it going away first is fine), then offers our
    /// sockets to a successor until `stop`. Fails when the predecessor did not confirm and still
    /// runs: it gave up on us (we were not ready within its [`READY_TIMEOUT`]) and serves on, and two
    /// proxies with two configurations must not both go on.
    pub(crate) async fn ready(self: &Arc<Self>, stop: CancellationToken) -> Result<(), HandoverError> {
        let predecessor = self.predecessor.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Predecessor { pid, conn }) = predecessor {
            let why = match tokio::time::timeout(BYE_TIMEOUT, say_ready(conn)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {BYE_TIMEOUT:?}")),
            };
            match why {
                None => {
                    self.go.cancel();
                    tracing::info!(from_pid = pid, "took over: the previous proxy stops accepting and drains")
                }
                Some(why) if process_runs(pid) => {
                    return Err(HandoverError {
                        path: self.path.clone(),
                        detail: format!(
                            "the running proxy (pid {pid}) did not take our ready ({why}) and goes on serving: \
                             it gave up waiting for us; not starting a second one"
                        ),
                    });
                }
                Some(why) => {
                    self.go.cancel();
                    tracing::warn!(
                        from_pid = pid,
                        error = %why,
                        "the previous proxy did not confirm the hand-over and has exited meanwhile; serving"
                    );
                }
            }
        }
        let Some(control) = self.control.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.offer_until(control, stop).await {
                tracing::warn!(error = %e, handover_socket = %this.path.display(), "hand-over socket failed: a restart will stop and start");
            }
        });
        Ok(())
    }

    /// What our tunnel listeners wait for before they accept, when we took sockets over: the
    /// predecessor's confirmation. Until then it alone accepts from the shared queues, so a start-up
    /// that fails later (metrics address, pid file, privilege drop) takes no connection down with it.
    /// None without a predecessor.
    pub(crate) fn accept_gate(&self) -> Option<CancellationToken> {
        self.predecessor.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|_| self.go.clone())
    }

    /// Whether another process shares our listening sockets: a predecessor we have not yet told
    /// that we are ready (if we fail now it goes on), or a successor that took over.
    pub(crate) fn shared(&self) -> bool {
        self.handed_over.is_cancelled()
            || self.predecessor.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// At exit: removes the control socket's file, unless a successor has it.
    pub(crate) fn finish(&self) {
        if !self.offered.load(Ordering::SeqCst) && !self.handed_over.is_cancelled() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Serves successors one at a time until one is ready (or `stop`).
    async fn offer_until(&self, control: UnixListener, stop: CancellationToken) -> std::io::Result<()> {
        control.set_nonblocking(true)?;
        let control = tokio::net::UnixListener::from_std(control)?;
        loop {
            let conn = tokio::select! {
                a = control.accept() => a,
                _ = stop.cancelled() => return Ok(()),
            };
            // Out of descriptors, an aborted connection: the control socket is still good.
            let (conn, _) = match conn {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket: accept failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match crate::os::peer_uid(&conn) {
                Ok(uid) if trusted(uid) => {}
                Ok(uid) => {
                    tracing::warn!(
                        peer_uid = uid,
                        "hand-over refused: only root or this proxy's user may take our sockets"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over refused: cannot tell who connected");
                    continue;
                }
            }
            // Bounded as a whole: a successor that stops reading cannot hold the hand-over.
            let offered = tokio::time::timeout(READY_TIMEOUT, self.offer(&control, conn));
            match tokio::select! {
                r = offered => r.unwrap_or_else(|_| Err(std::io::Error::other("the new proxy was not ready in time"))),
                _ = stop.cancelled() => return Ok(()),
            } {
                Ok(()) => {
                    self.handed_over.cancel();
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "hand-over abandoned; still serving"),
            }
        }
    }

    /// Sends our sockets to one successor and waits for its `ready`; answers `bye`.
    async fn offer(
        &self,
        control: &tokio::net::UnixListener,
        conn: tokio::net::UnixStream,
    ) -> std::io::Result<()> {
        let mode = self.mode.clone();
        let mut sockets = self.shelf.copies();
        let local = control.local_addr().ok();
        sockets.truncate(MAX_SOCKETS - 1);
        let offer = Offer {
            pid: std::process::id(),
            mode,
            sockets: sockets
                .iter()
                .map(|(kind, addr, _)| Described { kind: *kind, addr: Some(*addr) })
                .chain([Described { kind: Kind::Control, addr: None }])
                .collect(),
        };
        let mut fds: Vec<RawFd> = sockets.iter().map(|(.., fd)| fd.as_raw_fd()).collect();
        fds.push(control.as_raw_fd());
        let mut payload = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
        framed.append(&mut payload);
        self.offered.store(true, Ordering::SeqCst);
        tracing::info!(sockets = offer.sockets.len(), control = ?local, "a new proxy asks for the listening sockets; handing them over");
        let mut sent = 0;
        while sent < framed.len() {
            let cmsgs =
                if sent == 0 { vec![nix::sys::socket::ControlMessage::ScmRights(&fds)] } else { Vec::new() };
            let chunk = [IoSlice::new(&framed[sent..])];
            sent += conn
                .async_io(tokio::io::Interest::WRITABLE, || {
                    nix::sys::socket::sendmsg::<()>(
                        conn.as_raw_fd(),
                        &chunk,
                        &cmsgs,
                        nix::sys::socket::MsgFlags::empty(),
                        None,
                    )
                    .map_err(std::io::Error::from)
                })
                .await?;
        }
        drop(sockets);
        let mut conn = tokio::io::BufReader::new(conn);
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        if line.trim() != "ready" {
            return Err(std::io::Error::other("the new proxy went away before it was ready"));
        }
        conn.get_mut().write_all(format!("bye {}\n", std::process::id()).as_bytes()).await?;
        tracing::info!("the new proxy is ready: stopping accepting, draining");
        Ok(())
    }
}

/// The successor's half: `ready`, then the predecessor's `bye`.
async fn say_ready(conn: UnixStream) -> std::io::Result<()> {
    conn.set_nonblocking(true)?;
    let mut conn = tokio::io::BufReader::new(tokio::net::UnixStream::from_std(conn)?);
    conn.get_mut().write_all(b"ready\n").await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    if line.starts_with("bye ") {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"))
    }
}

/// Reads the predecessor's offer: its pid and the sockets with what each is for.
fn receive(conn: &UnixStream) -> std::io::Result<(Offer, Vec<Received>)> {
    conn.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let mut head = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut head)];
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(received) = c {
                fds.extend(received.into_iter().map(crate::os::owned_received_fd));
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut data = head[..n].to_vec();
    while data.len() < 4 {
        let mut more = [0u8; 4];
        let got = (&*conn).read(&mut more)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&more[..got]);
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if len > MAX_OFFER {
        return Err(std::io::Error::other(format!("offer of {len} bytes")));
    }
    let mut payload = data.split_off(4);
    if payload.len() < len {
        let mut rest = vec![0u8; len - payload.len()];
        (&*conn).read_exact(&mut rest)?;
        payload.extend_from_slice(&rest);
    }
    let mut offer: Offer = serde_json::from_slice(&payload[..len]).map_err(std::io::Error::other)?;
    if offer.sockets.len() != fds.len() {
        return Err(std::io::Error::other(format!(
            "{} sockets described, {} received",
            offer.sockets.len(),
            fds.len()
        )));
    }
    let sockets = std::mem::take(&mut offer.sockets)
        .into_iter()
        .zip(fds)
        .map(|(d, fd)| (d.kind, d.addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))), fd))
        .collect();
    Ok((offer, sockets))
}
