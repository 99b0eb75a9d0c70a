//! The two-way copy of an open tunnel, between the TLS link and the plain socket, with the record
//! layer of [`crate::record`] in the middle. Half-close is passed on: end of input on one side (TCP
//! FIN or TLS close_notify) becomes a shutdown on the other (FIN, or close_notify then FIN), and the
//! other direction keeps flowing. A TLS peer that drops TCP without close_notify ends only its own
//! direction, like a FIN. A reset, a write error or a bad record ends the whole tunnel.

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::link::Link;
use crate::record::{self, content, Opened, PostHandshake, MAX_PLAINTEXT};

/// Records sealed from one read of the plain side: a read of up to 64 KiB becomes four full records.
const SLOTS: usize = 4;
/// Copy buffer per direction: room for [`SLOTS`] records with their header and tag (and enough for
/// several received records). Allocated only while a direction is active.
const BUFFER: usize = SLOTS * (MAX_PLAINTEXT + 64);
/// Most plaintext pieces handed to one vectored write.
const MAX_IOV: usize = 64;

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

/// Copies both ways between the TLS link and the plain socket until both directions are closed, one
/// fails, or `cut` is cancelled. `tls_is_inbound`: the TLS side is the accepted one (server mode),
/// which decides which direction counts as "up".
///
/// Both directions are driven by one future (no locks, no task per direction). Records are opened
/// where they were read and their plaintext written out with one vectored write; plaintext is read
/// with one vectored read straight into the places of up to four records, sealed there and written
/// with one write. A lone NFS request goes out at once as one record.
pub async fn splice(
    mut link: Link,
    mut plain: TcpStream,
    tls_is_inbound: bool,
    counters: &Counters,
    cut: &Cut,
) -> End {
    let (from_count, to_count) =
        if tls_is_inbound { (&counters.up, &counters.down) } else { (&counters.down, &counters.up) };
    let mut from_tls = FromTls::new(std::mem::take(&mut link.pending), std::mem::take(&mut link.early));
    let mut to_tls = ToTls::default();
    let copy = std::future::poll_fn(|cx| {
        // TLS -> plain first: a KeyUpdate it reads may ask the other direction to send ours.
        let from = from_tls.poll(cx, &mut link, &mut plain, from_count);
        if let Poll::Ready(Err(e)) = from {
            return Poll::Ready(Err(e));
        }
        let to = to_tls.poll(cx, &mut link, &mut plain, to_count);
        if let Poll::Ready(Err(e)) = to {
            return Poll::Ready(Err(e));
        }
        if from.is_ready() && to.is_ready() {
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
    /// back whenever it runs dry, so idle tunnels hold no buffer and busy ones never re-zero.
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most buffers kept per thread.
const POOL_MAX: usize = 64;

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice())
}

fn give_back(buf: &mut Option<Box<[u8]>>) {
    if let Some(buf) = buf.take() {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        });
    }
}

/// TLS -> plain: read records, open them in place, write their plaintext out.
struct FromTls {
    buf: Option<Box<[u8]>>,
    /// Bytes read into `buf`; those before `opened` are records already opened.
    used: usize,
    opened: usize,
    /// Plaintext of opened records, still to be written, and how much of the first is written.
    out: Vec<Range<usize>>,
    out_at: usize,
    out_written: usize,
    /// Plaintext that came with the handshake.
    early: Vec<u8>,
    read_done: bool,
    done: bool,
}

impl FromTls {
    fn new(pending: Vec<u8>, early: Vec<u8>) -> Self {
        let mut this = Self {
            buf: None,
            used: 0,
            opened: 0,
            out: Vec::new(),
            out_at: 0,
            out_written: 0,
            early,
            read_done: false,
            done: false,
        };
        if !pending.is_empty() {
            let mut buf = take_buffer();
            buf[..pending.len()].copy_from_slice(&pending);
            this.used = pending.len();
            this.buf = Some(buf);
        }
        this
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut Link,
        plain: &mut TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), String>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.early.is_empty() {
                let n = ready!(write_some(cx, plain, &self.early))?;
                self.early.drain(..n);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            while self.out_at < self.out.len() {
                let buf = self.buf.as_deref().unwrap_or_default();
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let pieces = self.out[self.out_at..].iter().take(MAX_IOV);
                let mut k = 0;
                for (slot, r) in iov.iter_mut().zip(pieces) {
                    let skip = if k == 0 { self.out_written } else { 0 };
                    *slot = IoSlice::new(&buf[r.start + skip..r.end]);
                    k += 1;
                }
                let mut n = match Pin::new(&mut *plain).poll_write_vectored(cx, &iov[..k]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err("write: wrote zero bytes".into())),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
                    Poll::Pending => return Poll::Pending,
                };
                count.fetch_add(n as u64, Ordering::Relaxed);
                while n > 0 {
                    let left = self.out[self.out_at].len() - self.out_written;
                    if n >= left {
                        n -= left;
                        self.out_at += 1;
                        self.out_written = 0;
                    } else {
                        self.out_written += n;
                        n = 0;
                    }
                }
            }
            self.out.clear();
            self.out_at = 0;
            if self.read_done {
                ready!(poll_finish(cx, plain))?;
                self.done = true;
                give_back(&mut self.buf);
                return Poll::Ready(Ok(()));
            }
            if let Some(buf) = self.buf.as_deref_mut() {
                // Keep the unfinished record (at most one) and open the complete ones.
                if self.opened > 0 {
                    buf.copy_within(self.opened..self.used, 0);
                    self.used -= self.opened;
                    self.opened = 0;
                }
                self.open_records(link).map_err(|e| format!("tls: {e}"))?;
                if !self.out.is_empty() || self.read_done {
                    continue;
                }
            }
            let buf = self.buf.get_or_insert_with(take_buffer);
            let mut read_buf = ReadBuf::new(&mut buf[self.used..]);
            match Pin::new(&mut link.tcp).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        // TCP closed without close_notify: the end of this direction only, so the
                        // reply the other way still arrives (stunnel and many kernels do this).
                        self.read_done = true;
                    }
                    self.used += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
                Poll::Pending => {
                    if self.used == 0 {
                        give_back(&mut self.buf);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Opens every complete record in the buffer, noting where its plaintext is.
    fn open_records(&mut self, link: &mut Link) -> Result<(), record::RecordError> {
        let Some(buf) = self.buf.as_deref_mut() else { return Ok(()) };
        while let Some(len) = link.opener.record_len(&buf[self.opened..self.used])? {
            let at = self.opened;
            let rec = &mut buf[at..at + len];
            self.opened += len;
            match link.opener.open(rec)? {
                Opened::Data(r) if r.is_empty() => {}
                Opened::Data(r) => self.out.push(at + r.start..at + r.end),
                Opened::CloseNotify => {
                    self.read_done = true;
                    return Ok(());
                }
                Opened::Handshake(r) => {
                    for m in link.handshake.take(&rec[r], link.version, link.is_client)? {
                        if let PostHandshake::KeyUpdate { reply } = m {
                            link.peer_key_update()?;
                            link.key_update_due |= reply;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Plain -> TLS: read plaintext into the places of records, seal them there, write them out.
#[derive(Default)]
struct ToTls {
    buf: Option<Box<[u8]>>,
    /// Sealed records in `buf[start..end]` still to be written, carrying `plain` bytes of plaintext.
    start: usize,
    end: usize,
    plain: usize,
    read_done: bool,
    close_sent: bool,
    done: bool,
}

impl ToTls {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        link: &mut Link,
        plain: &mut TcpStream,
        count: &AtomicU64,
    ) -> Poll<Result<(), String>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.start < self.end {
                let buf = self.buf.as_deref().unwrap_or_default();
                let n = ready!(write_some(cx, &mut link.tcp, &buf[self.start..self.end]))?;
                self.start += n;
            }
            count.fetch_add(std::mem::take(&mut self.plain) as u64, Ordering::Relaxed);
            self.start = 0;
            self.end = 0;
            if self.close_sent {
                ready!(poll_finish(cx, &mut link.tcp))?;
                self.done = true;
                give_back(&mut self.buf);
                return Poll::Ready(Ok(()));
            }
            if link.key_update_due || link.sealer.needs_new_key() {
                if link.version != record::Version::Tls13 {
                    return Poll::Ready(Err(format!("tls: {}", record::RecordError::KeysExhausted)));
                }
                let buf = self.buf.get_or_insert_with(take_buffer);
                self.end = link.our_key_update(buf).map_err(|e| format!("tls: {e}"))?;
                continue;
            }
            if self.read_done {
                let buf = self.buf.get_or_insert_with(take_buffer);
                self.end = link.sealer.seal_message(content::ALERT, &record::CLOSE_NOTIFY, buf);
                self.close_sent = true;
                continue;
            }
            match plain.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
                Poll::Pending => {
                    give_back(&mut self.buf);
                    return Poll::Pending;
                }
            }
            let buf = self.buf.get_or_insert_with(take_buffer);
            let (prefix, suffix) = (link.sealer.prefix(), link.sealer.suffix());
            let slot = prefix + MAX_PLAINTEXT + suffix;
            // The payload places of the SLOTS records in the buffer (no allocation per read).
            let mut places =
                buf.chunks_exact_mut(slot).map(|s| IoSliceMut::new(&mut s[prefix..prefix + MAX_PLAINTEXT]));
            let mut iov: [IoSliceMut<'_>; SLOTS] =
                std::array::from_fn(|_| places.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
            match read_drained(plain, &mut iov) {
                Ok(0) => self.read_done = true,
                Ok(n) => {
                    let mut left = n;
                    let mut at = 0;
                    while left > 0 {
                        let len = left.min(MAX_PLAINTEXT);
                        self.end = at + link.sealer.seal(content::APPLICATION_DATA, &mut buf[at..], len);
                        left -= len;
                        at += slot;
                    }
                    self.plain = n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(format!("read: {e}"))),
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

/// One write of `buf` (at least one byte).
fn write_some(cx: &mut Context<'_>, w: &mut TcpStream, buf: &[u8]) -> Poll<Result<usize, String>> {
    match ready!(Pin::new(w).poll_write(cx, buf)) {
        Ok(0) => Poll::Ready(Err("write: wrote zero bytes".into())),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(format!("write: {e}"))),
    }
}

/// Shuts the writer down after the end of input (passing the half-close on).
fn poll_finish(cx: &mut Context<'_>, w: &mut TcpStream) -> Poll<Result<(), String>> {
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
        Err(e) => Poll::Ready(Err(format!("shutdown: {e}"))),
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
