//! The two-way copy of an open tunnel, between the TLS link ([`Link`]: plaintext in and out, rustls
//! inside) and the plain socket. It moves buffers; it knows nothing of records or keys.
//!
//! Half-close is passed on: end of input on one side (TCP FIN, or TLS close_notify) becomes a
//! shutdown on the other (FIN, or close_notify then FIN), and the other direction keeps flowing. A
//! stream that breaks arrives broken: a reset, a read error, a TLS failure or a truncated record on
//! either side ends the whole tunnel and both sockets are closed with a TCP reset (`SO_LINGER` 0), so
//! the NFS client or server, and the peer proxy, see ECONNRESET rather than a clean end of stream.
//!
//! A direction that cannot write (its receiver does not read) is watched: its own source is checked
//! for a reset while it waits (nothing reads that source meanwhile, so nothing else would notice),
//! and with `--write-stall-timeout` a write that makes no progress for that long ends the tunnel.

use std::future::Future;
use std::io::{ErrorKind, IoSliceMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::registry::{Counters, Cut};
use crate::rpc::RecordMarks;
use crate::tls::buffer::Buffer;
use crate::tls::link::{Link, LinkError};

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both directions finished with an orderly close.
    Closed,
    /// The TLS side failed: a TLS error (alert sent or received), a truncated record, a reset.
    Tls(LinkError),
    /// The plain side failed (`op` is `read` or `write`).
    Plain { op: &'static str, error: std::io::Error },
    /// Towards an RFC 9289 peer, the key sealed its share of records: ended at an RPC record
    /// boundary so that the peer reconnects with fresh keys (see `KeyPolicy::EndTunnel`).
    KeysSpent,
    /// kTLS: the key sealed its share of records and the kernel cannot change keys; ended with a
    /// reset (not at an RPC record boundary: the bytes never pass through us), the peer reconnects.
    KeyLimit,
    /// Closed by us: drain, listener address lost, certificate revoked.
    Cut(String),
    /// A write towards `towards` (`plain` or `tls`) made no progress for `after`
    /// (`--write-stall-timeout`): the receiver stopped reading.
    Stalled { towards: &'static str, after: Duration },
}

impl End {
    /// Whether the far ends should see a reset rather than an orderly close.
    pub(super) fn is_failure(&self) -> bool {
        matches!(self, End::Tls(_) | End::Plain { .. } | End::Stalled { .. } | End::KeyLimit)
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Tls(e) if e.is_io_kind(ErrorKind::ConnectionReset) => write!(f, "reset: tls side: {e}"),
            End::Tls(e) => write!(f, "error: {e}"),
            End::Plain { op, error } if error.kind() == ErrorKind::ConnectionReset => {
                write!(f, "reset: plain side: {op}: {error}")
            }
            End::Plain { op, error } => write!(f, "error: {op}: {error}"),
            End::KeysSpent => f.write_str("keys-spent: ended at an RPC record boundary, the peer reconnects"),
            End::KeyLimit => {
                f.write_str("key-limit: the kernel's key sealed its share of records, the peer reconnects")
            }
            End::Cut(why) => write!(f, "cut: {why}"),
            End::Stalled { towards, after } => {
                write!(f, "stalled: no write progress towards the {towards} side for {}s", after.as_secs())
            }
        }
    }
}

/// Copies both ways between the TLS link and the plain socket until both directions are closed, one
/// fails, or `cut` is cancelled. `tls_is_inbound`: the TLS side is the accepted one (server mode),
/// which decides which direction counts as "up".
///
/// Both directions are driven by one future (no locks, no task per direction). Each direction holds
/// a pooled buffer only while data flows. Plaintext is read with one vectored read of up to four
/// records' worth and sealed with one write; opened records are written out together. A lone NFS
/// request goes out at once as one record. `stall_limit`: see [`End::Stalled`].
pub(crate) async fn splice(
    link: Link,
    plain: TcpStream,
    tls_is_inbound: bool,
    counters: &Counters,
    cut: &Cut,
    stall_limit: Option<Duration>,
) -> End {
    let to_tls = ToTls { marks: link.keys_can_run_out().then(RecordMarks::default), ..ToTls::default() };
    let mut copy = RustlsCopy { link, plain, from_tls: FromTls::default(), to_tls };
    copy_loop(&mut copy, tls_is_inbound, counters, cut, stall_limit).await
}

/// The two directions of a tunnel, for [`copy_loop`]: one record path's way of moving bytes.
pub(super) trait Directions {
    /// Polls TLS -> plain: its result (ready: done or failed) and whether it is pending on a write
    /// (its receiver does not read).
    fn poll_from_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled;
    /// Polls plain -> TLS, as [`Self::poll_from_tls`].
    fn poll_to_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled;
    fn tls(&self) -> &TcpStream;
    fn plain(&self) -> &TcpStream;
    /// What an error found on the TLS socket while nothing reads it means (kTLS: a record the kernel
    /// could not open, whose alert is still to be sent).
    fn tls_failed(&mut self, error: std::io::Error) -> LinkError {
        LinkError::Read(error)
    }
}

/// One direction's state after a poll: its result, and whether it waits on a write.
pub(super) type Polled = (Poll<Result<(), End>>, bool);

/// Runs both directions to their end (see [`splice`]): what every record path shares — the stall
/// watch, the cut, and the reset of both sockets when the tunnel failed.
pub(super) async fn copy_loop<D: Directions>(
    d: &mut D,
    tls_is_inbound: bool,
    counters: &Counters,
    cut: &Cut,
    stall_limit: Option<Duration>,
) -> End {
    let (from_count, to_count) =
        if tls_is_inbound { (&counters.up, &counters.down) } else { (&counters.down, &counters.up) };
    let (mut from_stall, mut to_stall) = (Stall::default(), Stall::default());
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    let copy = std::future::poll_fn(|cx| {
        let written = (from_count.load(Ordering::Relaxed), to_count.load(Ordering::Relaxed));
        let (from, from_writing) = d.poll_from_tls(cx, from_count);
        // A failed TLS -> plain direction ends the tunnel: the other one is not polled again.
        let (to, to_writing) = if from.is_ready() && !matches!(from, Poll::Ready(Ok(()))) {
            (Poll::Pending, false)
        } else {
            d.poll_to_tls(cx, to_count)
        };
        let (from, to) = match (from, to) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => return Poll::Ready(e),
            pair => pair,
        };
        if from.is_ready() && to.is_ready() {
            return Poll::Ready(End::Closed);
        }
        let now = Instant::now();
        from_stall.update(
            from.is_pending() && from_writing,
            from_count.load(Ordering::Relaxed) != written.0,
            now,
        );
        to_stall.update(to.is_pending() && to_writing, to_count.load(Ordering::Relaxed) != written.1, now);
        // While a direction cannot write, nothing reads its source: look there for a reset.
        if from_stall.since.is_some() {
            if let Some(error) = source_failed(cx, d.tls()) {
                return Poll::Ready(End::Tls(d.tls_failed(error)));
            }
        }
        if to_stall.since.is_some() {
            if let Some(error) = source_failed(cx, d.plain()) {
                return Poll::Ready(End::Plain { op: "read", error });
            }
        }
        let stalled = [(from_stall.since, "plain"), (to_stall.since, "tls")]
            .into_iter()
            .filter_map(|(since, towards)| since.map(|s| (s, towards)))
            .min();
        if let Some((since, towards)) = stalled {
            let mut wake = now + WATCH_EVERY;
            if let Some(limit) = stall_limit {
                if now.duration_since(since) >= limit {
                    return Poll::Ready(End::Stalled { towards, after: limit });
                }
                wake = wake.min(since + limit);
            }
            timer.as_mut().reset(wake);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    });
    let end = tokio::select! {
        end = copy => end,
        _ = cut.cancelled() => End::Cut(cut.reason()),
    };
    if end.is_failure() {
        // Dropping a socket with SO_LINGER 0 sends a reset instead of a FIN.
        for tcp in [d.tls(), d.plain()] {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    end
}

/// rustls' record layer: plaintext through pooled buffers, [`Link`] seals and opens.
struct RustlsCopy {
    link: Link,
    plain: TcpStream,
    from_tls: FromTls,
    to_tls: ToTls,
}

impl Directions for RustlsCopy {
    fn poll_from_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled {
        let from = self.from_tls.poll(cx, &mut self.link, &mut self.plain, count);
        (from, self.from_tls.writing)
    }

    fn poll_to_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled {
        let to = self.to_tls.poll(cx, &mut self.link, &mut self.plain, count);
        (to, self.to_tls.writing)
    }

    fn tls(&self) -> &TcpStream {
        self.link.tcp()
    }

    fn plain(&self) -> &TcpStream {
        &self.plain
    }
}

/// How often a direction that cannot write looks at its source (a reset is not always signalled
/// to a task that is not reading).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Since when a direction has been waiting to write without progress.
#[derive(Default)]
struct Stall {
    since: Option<Instant>,
}

impl Stall {
    fn update(&mut self, blocked: bool, progressed: bool, now: Instant) {
        self.since = match (blocked, progressed) {
            (false, _) => None,
            (true, true) => Some(now),
            (true, false) => Some(self.since.unwrap_or(now)),
        };
    }
}

/// A reset (or other error) the kernel recorded on `tcp`, which nobody is reading; also asks to
/// be woken when it becomes readable (data, end of input or a reset).
fn source_failed(cx: &mut Context<'_>, tcp: &TcpStream) -> Option<std::io::Error> {
    let _ = tcp.poll_read_ready(cx);
    match tcp.take_error() {
        Ok(error) => error,
        Err(error) => Some(error),
    }
}

/// TLS -> plain: plaintext of opened records, written out.
#[derive(Default)]
struct FromTls {
    buf: Buffer,
    read_done: bool,
    done: bool,
    /// Pending on a write (not on a read).
    writing: bool,
}

impl FromTls {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut Link,
        plain: &mut TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), End>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            self.writing = true;
            while !self.buf.is_empty() {
                let n = ready!(write_some(cx, plain, self.buf.filled()))?;
                self.buf.consume(n);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.read_done {
                ready!(poll_finish(cx, plain))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            match link.poll_read(cx, self.buf.spare()) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => self.buf.filled_by(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Tls(e))),
                Poll::Pending => {
                    self.writing = false;
                    self.buf.release();
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Plain -> TLS: plaintext read in large vectored reads, sealed and sent by the link.
#[derive(Default)]
struct ToTls {
    buf: Buffer,
    /// Towards an RFC 9289 peer: where the RPC records of the stream end, so that a tunnel whose
    /// keys are spent ends between two of them.
    marks: Option<RecordMarks>,
    read_done: bool,
    done: bool,
    /// Pending on a write (not on a read).
    writing: bool,
}

impl ToTls {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut Link,
        plain: &mut TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), End>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            self.writing = true;
            while !self.buf.is_empty() {
                let n = ready!(link.poll_write(cx, self.buf.filled())).map_err(End::Tls)?;
                self.buf.consume(n);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.read_done {
                ready!(link.poll_shutdown(cx)).map_err(End::Tls)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // At most up to the end of the current RPC fragment once the keys are spent.
            let mut limit = usize::MAX;
            if let Some(marks) = &self.marks {
                if link.keys_spent() {
                    if marks.at_record_boundary() {
                        ready!(link.poll_flush(cx)).map_err(End::Tls)?;
                        return Poll::Ready(Err(End::KeysSpent));
                    }
                    limit = marks.to_fragment_end();
                }
            }
            match plain.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Plain { op: "read", error: e })),
                Poll::Pending => {
                    // The reader ran dry: send what is sealed.
                    ready!(link.poll_flush(cx)).map_err(End::Tls)?;
                    self.writing = false;
                    self.buf.release();
                    return Poll::Pending;
                }
            }
            let spare = self.buf.spare();
            let room = spare.len().min(limit);
            match read_drained(plain, &mut [IoSliceMut::new(&mut spare[..room])]) {
                Ok(0) => self.read_done = true,
                Ok(n) => {
                    if let Some(marks) = &mut self.marks {
                        marks.feed(&spare[..n]);
                    }
                    self.buf.filled_by(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(End::Plain { op: "read", error: e })),
            }
        }
    }
}

/// One vectored read of what `socket` holds. A read that does not fill `iov` has drained the socket,
/// so its readiness is cleared right away, as tokio's own `poll_read` does for a short read (the
/// edge-triggered poller reports the next arrival; end of input stays reported): the next poll waits
/// instead of paying one more read only to get `WouldBlock`. Worth one system call per wake-up, i.e.
/// per NFS request on the client and per reply on the server.
fn read_drained(socket: &TcpStream, iov: &mut [IoSliceMut<'_>]) -> std::io::Result<usize> {
    use std::io::Read;
    let room: usize = iov.iter().map(|b| b.len()).sum();
    let mut short = None;
    let result = socket.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(socket)).read_vectored(iov)?;
        if n > 0 && n < room {
            short = Some(n);
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (result, short) {
        (Err(e), Some(n)) if e.kind() == ErrorKind::WouldBlock => Ok(n),
        (result, _) => result,
    }
}

/// One write of `buf` (at least one byte) to the plain side.
fn write_some(cx: &mut Context<'_>, w: &mut TcpStream, buf: &[u8]) -> Poll<Result<usize, End>> {
    match ready!(Pin::new(w).poll_write(cx, buf)) {
        Ok(0) => Poll::Ready(Err(End::Plain { op: "write", error: ErrorKind::WriteZero.into() })),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(End::Plain { op: "write", error: e })),
    }
}

/// Shuts the plain writer down after the end of input (passing the half-close on).
pub(super) fn poll_finish(cx: &mut Context<'_>, w: &mut TcpStream) -> Poll<Result<(), End>> {
    match ready!(Pin::new(w).poll_shutdown(cx)) {
        Ok(()) => Poll::Ready(Ok(())),
        // The other side already went away entirely; that is its close, not our error.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotConnected | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ) =>
        {
            Poll::Ready(Ok(()))
        }
        Err(e) => Poll::Ready(Err(End::Plain { op: "shutdown", error: e })),
    }
}
