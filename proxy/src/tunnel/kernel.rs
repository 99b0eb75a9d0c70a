//! The two-way copy of a tunnel whose records the kernel seals and opens ([`KernelLink`], kTLS):
//! each direction moves bytes socket -> pipe -> socket with splice(2), so they never enter user
//! space. The contract is [`super::splice::splice`]'s: half-close passed on (the peer's
//! close_notify becomes a FIN on the plain side, a FIN from the plain side our close_notify then a
//! FIN), failures end the tunnel with resets, stalls are watched, a cut is honoured.
//!
//! What the kernel hands up that is not application data stops splice(2) with `EINVAL`; the
//! record is then read and acted on by [`KernelLink::take_record`] (close_notify, an alert, a
//! session ticket, a KeyUpdate). A record the kernel cannot open is `EBADMSG`, and so on: see
//! [`KernelLink::read_failed`].

use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::registry::{Counters, Cut};
use super::splice::{copy_loop, poll_finish, Directions, End, Polled};
use crate::os::ktls::Pipe;
use crate::tls::ktls::{Control, KernelLink};
use crate::tls::link::LinkError;

/// Each direction's pipe, the kernel's default size: 16 pages. Larger pipes count against the
/// service user's pipe-user-pages-soft (16384 pages), beyond which new pipes get 2 pages; at 16
/// pages two per tunnel stay below it up to 512 tunnels. Each tunnel holds four descriptors more
/// than on the rustls path (see LimitNOFILE in the systemd units).
const PIPE_SIZE: usize = 64 * 1024;
/// Empty records in a row that end the tunnel: rustls' own limit (and BoringSSL's).
const MAX_EMPTY_RECORDS: u32 = 32;
/// How often the end of our output looks whether TCP has sent everything (see `poll_close`): first
/// after this, then twice as long each time, up to [`SETTLE_MAX`].
const SETTLE_FIRST: Duration = Duration::from_millis(1);
const SETTLE_MAX: Duration = Duration::from_millis(100);
/// How long the peer may acknowledge nothing before the close_notify goes out regardless.
const SETTLE_GIVE_UP: Duration = Duration::from_secs(60);
/// Opened records taken into the pipe before it is drained (three full ones fit in its 16 pages).
const BATCH: usize = 48 * 1024;

/// Copies both ways between the kTLS socket and the plain socket; see [`super::splice::splice`] for
/// the arguments and the end.
pub(crate) async fn splice(
    link: KernelLink,
    plain: TcpStream,
    tls_is_inbound: bool,
    counters: &Counters,
    cut: &Cut,
    stall_limit: Option<Duration>,
) -> End {
    let pipes = Pipe::new().and_then(|a| Pipe::new().map(|b| (a, b)));
    let (from_pipe, to_pipe) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => {
            let _ = socket2::SockRef::from(&plain).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(link.tcp()).set_linger(Some(Duration::ZERO));
            return End::Plain { op: "pipe", error };
        }
    };
    let mut copy = KernelCopy {
        link,
        plain,
        from_tls: FromKernel {
            pipe: from_pipe,
            spill: Vec::new(),
            failed: None,
            record_next: false,
            empty_records: 0,
            state: State::default(),
        },
        to_tls: ToKernel { pipe: to_pipe, state: State::default(), close_sent: false, settle: None },
    };
    copy_loop(&mut copy, tls_is_inbound, counters, cut, stall_limit).await
}

struct KernelCopy {
    link: KernelLink,
    plain: TcpStream,
    from_tls: FromKernel,
    to_tls: ToKernel,
}

impl Directions for KernelCopy {
    fn poll_from_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled {
        let from = self.from_tls.poll(cx, &mut self.link, &mut self.plain, count);
        (from, self.from_tls.state.writing)
    }

    fn poll_to_tls(&mut self, cx: &mut Context<'_>, count: &AtomicU64) -> Polled {
        let to = self.to_tls.poll(cx, &mut self.link, &self.plain, count);
        (to, self.to_tls.state.writing)
    }

    fn tls(&self) -> &TcpStream {
        self.link.tcp()
    }

    fn plain(&self) -> &TcpStream {
        &self.plain
    }

    fn tls_failed(&mut self, error: std::io::Error) -> LinkError {
        self.link.read_failed(error)
    }
}

/// Where a direction is.
#[derive(Default)]
struct State {
    read_done: bool,
    done: bool,
    /// Pending on a write (not on a read).
    writing: bool,
}

/// kTLS -> plain.
struct FromKernel {
    pipe: Pipe,
    /// Application data read with a record (see [`Control::Data`]), written before the pipe.
    spill: Vec<u8>,
    /// A failure met behind data still in the pipe: reported once that data is out.
    failed: Option<LinkError>,
    /// splice(2) said the next record is not application data: read it with [`KernelLink::take_record`].
    record_next: bool,
    /// Empty application-data records in a row (legal, but a peer sending only those is refused, as
    /// rustls refuses it).
    empty_records: u32,
    state: State,
}

impl FromKernel {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut KernelLink,
        plain: &mut TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), End>> {
        if self.state.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            self.state.writing = true;
            while !self.spill.is_empty() {
                let n = match ready!(Pin::new(&mut *plain).poll_write(cx, &self.spill)) {
                    Ok(0) => return Poll::Ready(Err(plain_error("write", ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(plain_error("write", e))),
                };
                self.spill.drain(..n);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            while self.pipe.held > 0 {
                if let Err(e) = ready!(plain.poll_write_ready(cx)) {
                    return Poll::Ready(Err(plain_error("write", e)));
                }
                match plain.try_io(Interest::WRITABLE, || self.pipe.drain_to(plain.as_fd())) {
                    Ok(0) => return Poll::Ready(Err(plain_error("write", ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(plain_error("write", e))),
                }
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(End::Tls(e)));
            }
            if self.state.read_done {
                ready!(poll_finish(cx, plain))?;
                self.state.done = true;
                return Poll::Ready(Ok(()));
            }
            self.state.writing = false;
            let tcp = link.tcp();
            if let Err(e) = ready!(tcp.poll_read_ready(cx)) {
                return Poll::Ready(Err(End::Tls(LinkError::Read(e))));
            }
            // The kernel opens one record per splice: take several before draining. Only a splice
            // into an empty pipe may clear the socket's readiness (its EAGAIN can only mean the socket
            // has no whole record); a later one's EAGAIN may mean a full pipe, so it is called directly
            // and only ends the batch.
            if std::mem::take(&mut self.record_next) {
                match link.take_record() {
                    Ok(Control::Handled) => {}
                    Ok(Control::Closed) => self.state.read_done = true,
                    Ok(Control::Data(data)) => self.spill = data,
                    Err(e) => return Poll::Ready(Err(End::Tls(e))),
                }
                continue;
            }
            let mut first = true;
            loop {
                let filled = if first {
                    tcp.try_io(Interest::READABLE, || self.pipe.fill_from(tcp.as_fd(), PIPE_SIZE))
                } else {
                    self.pipe.fill_from(tcp.as_fd(), PIPE_SIZE)
                };
                first = false;
                match filled {
                    // An empty record, or TCP's end at a record boundary without close_notify (a FIN
                    // in the middle of a record is EPIPE: see KernelLink::read_failed).
                    Ok(0) => match crate::os::ktls::peer_finished(tcp.as_fd()) {
                        Ok(false) if self.empty_records < MAX_EMPTY_RECORDS => {
                            self.empty_records += 1;
                            continue;
                        }
                        Ok(false) => return Poll::Ready(Err(End::Tls(link.too_many_empty_records()))),
                        Ok(true) | Err(_) => self.state.read_done = true,
                    },
                    Ok(_) if self.pipe.held < BATCH => {
                        self.empty_records = 0;
                        continue;
                    }
                    Ok(_) => self.empty_records = 0,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // Not application data (an alert, a post-handshake message): read once what
                    // came before it is out (the kernel may not say EINVAL twice).
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.record_next = true,
                    // Delivered after what came before it, as on the rustls path.
                    Err(e) if self.pipe.held > 0 => self.failed = Some(link.read_failed(e)),
                    Err(e) => return Poll::Ready(Err(End::Tls(link.read_failed(e)))),
                }
                break;
            }
        }
    }
}

/// plain -> kTLS.
struct ToKernel {
    pipe: Pipe,
    state: State,
    close_sent: bool,
    /// While the end of our output waits for TCP to have sent everything (see [`Self::poll_close`]).
    settle: Option<Settle>,
}

impl ToKernel {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut KernelLink,
        plain: &TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), End>> {
        if self.state.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            self.state.writing = true;
            // A KeyUpdate the peer asked for goes out before any more data.
            while link.key_update_owed() {
                if let Err(e) = ready!(link.tcp().poll_write_ready(cx)) {
                    return Poll::Ready(Err(End::Tls(LinkError::Write(e))));
                }
                let tcp = link.tcp();
                match tcp.try_io(Interest::WRITABLE, || link.send_key_update()) {
                    Ok(()) => link.key_update_sent().map_err(End::Tls)?,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(End::Tls(LinkError::Write(e)))),
                }
            }
            while self.pipe.held > 0 {
                if let Err(e) = ready!(link.tcp().poll_write_ready(cx)) {
                    return Poll::Ready(Err(End::Tls(LinkError::Write(e))));
                }
                let tcp = link.tcp();
                match tcp.try_io(Interest::WRITABLE, || self.pipe.drain_to(tcp.as_fd())) {
                    Ok(0) => {
                        return Poll::Ready(Err(End::Tls(LinkError::Write(ErrorKind::WriteZero.into()))))
                    }
                    Ok(n) => {
                        link.sealed(n);
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(End::Tls(LinkError::Write(e)))),
                }
            }
            if self.state.read_done {
                ready!(self.poll_close(cx, link))?;
                self.state.done = true;
                return Poll::Ready(Ok(()));
            }
            if link.keys_spent() {
                return Poll::Ready(Err(End::KeyLimit));
            }
            self.state.writing = false;
            if let Err(e) = ready!(plain.poll_read_ready(cx)) {
                return Poll::Ready(Err(plain_error("read", e)));
            }
            match plain.try_io(Interest::READABLE, || self.pipe.fill_from(plain.as_fd(), PIPE_SIZE)) {
                Ok(0) => self.state.read_done = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(plain_error("read", e))),
            }
        }
    }

    /// close_notify, then FIN: the end of the plain side's input passed on.
    ///
    /// kTLS takes a record whole even when TCP has room for only part of it, and pushes the rest
    /// later, when acknowledgements make room; a FIN queued meanwhile would cut that record. So the
    /// close_notify waits until TCP holds nothing unacknowledged (checked with a backoff from
    /// [`SETTLE_FIRST`] to [`SETTLE_MAX`]), then goes into an empty queue (its sendmsg pushes
    /// whatever kTLS still holds first). The wait is not a stalled write: the peer acknowledges
    /// what it can, and one that takes no more for [`SETTLE_GIVE_UP`] gets the close_notify anyway.
    /// A reset or timeout met meanwhile ends it as an error.
    fn poll_close(&mut self, cx: &mut Context<'_>, link: &KernelLink) -> Poll<Result<(), End>> {
        let tcp = link.tcp();
        while !self.close_sent {
            if let Ok(Some(e)) | Err(e) = tcp.take_error() {
                return Poll::Ready(Err(End::Tls(LinkError::Write(e))));
            }
            let unsent = crate::os::ktls::unsent(tcp.as_fd()).unwrap_or(0);
            let now = tokio::time::Instant::now();
            let settle = self.settle.get_or_insert_with(|| Settle::new(unsent, now));
            if unsent == 0 || settle.gave_up(unsent, now) {
                break;
            }
            self.state.writing = false;
            ready!(settle.poll_next(cx));
            self.state.writing = true;
        }
        while !self.close_sent {
            if let Err(e) = ready!(tcp.poll_write_ready(cx)) {
                return Poll::Ready(Err(End::Tls(LinkError::Write(e))));
            }
            match tcp.try_io(Interest::WRITABLE, || link.send_close_notify()) {
                Ok(()) => self.close_sent = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(End::Tls(LinkError::Write(e)))),
            }
        }
        match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) if matches!(e.kind(), ErrorKind::NotConnected | ErrorKind::BrokenPipe) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(End::Tls(LinkError::Write(e)))),
        }
    }
}

fn plain_error(op: &'static str, error: std::io::Error) -> End {
    End::Plain { op, error }
}

/// The wait before our close_notify (see `ToKernel::poll_close`).
struct Settle {
    timer: Pin<Box<tokio::time::Sleep>>,
    every: Duration,
    /// The least unacknowledged byte count seen, and when it last went down.
    least: usize,
    progress_at: tokio::time::Instant,
}

impl Settle {
    fn new(unsent: usize, now: tokio::time::Instant) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep(SETTLE_FIRST)),
            every: SETTLE_FIRST,
            least: unsent,
            progress_at: now,
        }
    }

    /// Whether the peer has acknowledged nothing for [`SETTLE_GIVE_UP`].
    fn gave_up(&mut self, unsent: usize, now: tokio::time::Instant) -> bool {
        if unsent < self.least {
            self.least = unsent;
            self.progress_at = now;
        }
        now.duration_since(self.progress_at) >= SETTLE_GIVE_UP
    }

    /// The next look, with a longer wait after it.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.timer.as_mut().poll(cx));
        self.every = (self.every * 2).min(SETTLE_MAX);
        let next = tokio::time::Instant::now() + self.every;
        self.timer.as_mut().reset(next);
        Poll::Ready(())
    }
}
