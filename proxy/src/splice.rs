//! The two-way copy of an open tunnel. Half-close is passed on: end of input on one side (TCP FIN or
//! TLS close_notify) becomes a shutdown on the other (FIN, or close_notify then FIN), and the other
//! direction keeps flowing. A TLS peer that drops TCP without close_notify ends only its own
//! direction, like a FIN. A reset or write error ends the whole tunnel.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_util::sync::CancellationToken;

/// Copy buffer per direction: large enough for NFS READ/WRITE payloads (up to 1 MiB RPCs arrive in
/// pieces anyway) while keeping idle tunnels cheap (allocated only while a direction is active).
const BUFFER: usize = 64 * 1024;

/// Bytes moved so far, readable while the tunnel is open.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the accepted side (the NFS client) towards the NFS server.
    pub up: AtomicU64,
    /// From the NFS server towards the NFS client.
    pub down: AtomicU64,
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with an orderly close.
    Closed,
    /// A read or write failed (reset, broken pipe, TLS error).
    Error(String),
    /// Closed by us: drain, listener address lost, certificate revoked.
    Cut(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Error(e) => write!(f, "error: {e}"),
            End::Cut(why) => write!(f, "cut: {why}"),
        }
    }
}

/// Copies both ways until both directions are closed, one fails, or `cut` is cancelled.
///
/// Both directions are driven by one future over the two owned streams (no `split`, so no lock per
/// read or write on the TLS stream), and a direction flushes only when its reader has nothing more
/// right now: a lone NFS request goes out at once, while a bulk transfer fills whole TLS records.
pub async fn splice<A, B>(mut a: A, mut b: B, counters: &Counters, cut: &Cut) -> End
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut up = Direction::new();
    let mut down = Direction::new();
    let copy = std::future::poll_fn(|cx| {
        let up_state = up.poll(cx, &mut a, &mut b, &counters.up);
        if let Poll::Ready(Err(e)) = up_state {
            return Poll::Ready(Err(e));
        }
        let down_state = down.poll(cx, &mut b, &mut a, &counters.down);
        if let Poll::Ready(Err(e)) = down_state {
            return Poll::Ready(Err(e));
        }
        if up_state.is_ready() && down_state.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    tokio::select! {
        r = copy => match r {
            Ok(()) => End::Closed,
            Err(e) => End::Error(e),
        },
        _ = cut.token.cancelled() => End::Cut(cut.reason()),
    }
}

thread_local! {
    /// Copy buffers not in use, kept per thread: a direction takes one while data flows and gives it
    /// back whenever its reader runs dry, so idle tunnels hold no buffer and busy ones never re-zero.
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most buffers kept per thread.
const POOL_MAX: usize = 64;

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// One direction of a tunnel: read into the buffer, write it out, flush when the reader runs dry,
/// and on end of input shut the writer down (passing the half-close on).
struct Direction {
    /// Taken from the pool while data flows, given back when idle (see [`POOL`]).
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Self { buf: None, start: 0, end: 0, read_done: false, need_flush: false, done: false }
    }

    /// Ready(Ok) once this direction is finished (input ended, everything written, writer shut down).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        count: &AtomicU64,
    ) -> Poll<Result<(), String>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Write out what is buffered.
            while self.start < self.end {
                let buf = self.buf.as_deref().unwrap_or(&[]);
                match Pin::new(&mut *w).poll_write(cx, &buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err("write: wrote zero bytes".into())),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.need_flush = true;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.start = 0;
            self.end = 0;
            if self.read_done {
                ready!(self.poll_finish(cx, w))?;
                self.done = true;
                if let Some(buf) = self.buf.take() {
                    give_back(buf);
                }
                return Poll::Ready(Ok(()));
            }
            // Read more.
            let buf = self.buf.get_or_insert_with(take_buffer);
            let mut read_buf = ReadBuf::new(buf);
            match Pin::new(&mut *r).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    }
                    self.end = n;
                }
                // TLS without close_notify: the peer closed TCP. Treat it as end of this direction
                // only, so the reply the other way still arrives (stunnel and many kernels do this).
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => self.read_done = true,
                Poll::Ready(Err(e)) => {
                    let _ = Pin::new(&mut *w).poll_shutdown(cx);
                    return Poll::Ready(Err(format!("read: {e}")));
                }
                Poll::Pending => {
                    // Nothing more to read now: push out what was written (TLS records are held
                    // until flushed), then wait for either side.
                    if self.need_flush {
                        match Pin::new(&mut *w).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
                            Poll::Pending => {}
                        }
                    }
                    // Idle: the buffer is empty, so it goes back to the pool.
                    if let Some(buf) = self.buf.take() {
                        give_back(buf);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Flush and shut down the writer after end of input.
    fn poll_finish<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<Result<(), String>> {
        if self.need_flush {
            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(|e| format!("write: {e}"))?;
            self.need_flush = false;
        }
        match ready!(Pin::new(&mut *w).poll_shutdown(cx)) {
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
            Err(e) => Poll::Ready(Err(format!("shutdown: {e}"))),
        }
    }
}

/// The switch that closes one open tunnel from outside, with the reason it was closed.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Cut {
    /// Closes the tunnel; the first reason given is the one logged.
    pub fn cut(&self, why: &str) {
        let _ = self.reason.set(why.to_owned());
        self.token.cancel();
    }

    pub fn reason(&self) -> String {
        self.reason.get().cloned().unwrap_or_else(|| "cut".to_owned())
    }
}
