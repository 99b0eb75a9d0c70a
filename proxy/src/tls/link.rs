//! An established TLS connection ([`Link`]): plaintext in, plaintext out, with rustls' unbuffered
//! connection as the record layer. rustls opens and seals every record and owns every rule of the
//! data phase: post-handshake messages (KeyUpdate, NewSessionTicket), alerts, close_notify, empty and
//! oversized records, padding, key limits. We keep the buffers: ciphertext is read into a pooled
//! buffer and decrypted there, sealed records are queued in another and sent with one write, and
//! both go back to the pool when they run empty.
//!
//! The copy loop sees a stream: [`Link::poll_read`] (0 bytes = end of input, by close_notify or a
//! TCP FIN at a record boundary), [`Link::poll_write`], [`Link::poll_flush`], [`Link::poll_shutdown`]
//! (close_notify, then FIN). A failure is a [`LinkError`]; rustls' alert for it has been sent.

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buffer::Buffer;

/// Largest plaintext in one TLS record (RFC 8446 5.1): a read needs this much room to take one.
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Most plaintext sealed by one [`Link::poll_write`]: four full records, sent with one write.
const MAX_BATCH: usize = 4 * MAX_PLAINTEXT;
/// Records sealed under one key before a tunnel to an RFC 9289 peer ends (see [`KeyPolicy`]): well
/// below rustls' own KeyUpdate at AES-GCM's confidentiality limit (2^24.5 records, RFC 8446 5.5).
pub(crate) const RPC_TLS_RECORD_LIMIT: u64 = 1 << 23;

/// rustls' connection of either side.
pub(crate) enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// Runs `$body` with `$status` bound to what `process_tls_records` returned for `$incoming`, on
/// whichever side `$conn` is (the state types differ by side only in a type parameter).
macro_rules! process {
    ($conn:expr, $incoming:expr, |$status:ident| $body:expr) => {
        match $conn {
            Conn::Client(c) => {
                let $status = c.process_tls_records($incoming);
                $body
            }
            Conn::Server(c) => {
                let $status = c.process_tls_records($incoming);
                $body
            }
        }
    };
}

/// When we change keys ourselves. rustls answers a peer's KeyUpdate in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyPolicy {
    /// Stunnel-style peers: rustls sends a KeyUpdate at the suite's confidentiality limit (TLS 1.3;
    /// a TLS 1.2 tunnel ends there). `Some(n)`: also after every `n` records (a test knob).
    Rekey { every: Option<u64> },
    /// RFC 9289 peers: Linux's kernel TLS receive side cannot follow a KeyUpdate (its decryption fails
    /// and the NFS mount sees EBADMSG), so we never send one. After `after` records the link asks
    /// to be ended ([`Link::keys_spent`]), which the copy loop does at an RPC record boundary; the
    /// kernel reconnects with fresh keys.
    EndTunnel { after: u64 },
}

/// Why a link failed. Where rustls had an alert for it, the alert has been sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("tls: {0}")]
    Tls(rustls::Error),
    #[error("tls: the peer closed TCP in the middle of a record (truncated)")]
    Truncated,
    /// kTLS: the kernel cannot go on (e.g. it cannot take the key of a peer's KeyUpdate).
    #[error("tls: kTLS: {0}")]
    Kernel(String),
    #[error("read: {0}")]
    Read(io::Error),
    #[error("write: {0}")]
    Write(io::Error),
}

impl LinkError {
    /// Whether the peer ended the stream abnormally (a reset, a TLS failure or a truncation), as
    /// opposed to us failing to write.
    pub(crate) fn is_io_kind(&self, kind: ErrorKind) -> bool {
        matches!(self, Self::Read(e) | Self::Write(e) if e.kind() == kind)
    }
}

/// An established TLS connection; see the module documentation.
pub(crate) struct Link {
    tcp: TcpStream,
    conn: Conn,
    /// Ciphertext read and not yet processed by rustls.
    rx: Buffer,
    /// Sealed records (and rustls' own messages: alerts, KeyUpdate) not yet written.
    tx: Buffer,
    /// Plaintext that arrived with the handshake, handed out first.
    early: Vec<u8>,
    /// The peer's close_notify arrived (or TCP ended at a record boundary): end of input.
    input_done: bool,
    /// A failure met after some plaintext was opened in the same read: reported once that
    /// plaintext has been handed out.
    failed: Option<LinkError>,
    close_sent: bool,
    keys: KeyPolicy,
    /// Records sealed under the current key.
    sealed: u64,
    negotiated: String,
    peer_certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("negotiated", &self.negotiated)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link whose handshake is complete. `pending`: ciphertext read with the handshake's last
    /// flight; `early`: plaintext rustls already decrypted from it; `peer_closed`: its close_notify
    /// came with the handshake; `failed`: a record behind the handshake failed (its alert is sent),
    /// reported after `early`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tcp: TcpStream,
        conn: Conn,
        negotiated: String,
        peer_certificates: Vec<CertificateDer<'static>>,
        pending: Vec<u8>,
        early: Vec<u8>,
        peer_closed: bool,
        failed: Option<rustls::Error>,
        keys: KeyPolicy,
    ) -> Self {
        Self {
            tcp,
            conn,
            rx: Buffer::holding(pending),
            tx: Buffer::default(),
            early,
            input_done: peer_closed,
            failed: failed.map(LinkError::Tls),
            close_sent: false,
            keys,
            sealed: 0,
            negotiated,
            peer_certificates,
        }
    }

    /// `VERSION/SUITE`, e.g. `TLSv1_3/TLS13_AES_256_GCM_SHA384`.
    pub(crate) fn negotiated(&self) -> &str {
        &self.negotiated
    }

    /// The certificate chain the peer presented, leaf first.
    pub(crate) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// Whether this link may ask to be ended ([`KeyPolicy::EndTunnel`]).
    pub(crate) fn keys_can_run_out(&self) -> bool {
        matches!(self.keys, KeyPolicy::EndTunnel { .. })
    }

    /// With [`KeyPolicy::EndTunnel`]: the key has sealed its share of records; end the tunnel at
    /// the next message boundary.
    pub(crate) fn keys_spent(&self) -> bool {
        matches!(self.keys, KeyPolicy::EndTunnel { after } if self.sealed >= after)
    }

    /// Reads plaintext into `out` (which must have room for a whole record: [`MAX_PLAINTEXT`]);
    /// `Ok(0)` is the end of input.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, LinkError>> {
        debug_assert!(out.len() >= MAX_PLAINTEXT);
        if !self.early.is_empty() {
            let n = self.early.len().min(out.len());
            out[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Poll::Ready(Ok(n));
        }
        loop {
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            if self.input_done {
                return Poll::Ready(Ok(0));
            }
            let n = self.open_records(out)?;
            // rustls' own messages (a KeyUpdate reply waits for our next record; alerts do not).
            if !self.tx.is_empty() {
                let _ = self.poll_flush(cx)?;
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            if self.input_done {
                continue;
            }
            let spare = self.rx.spare();
            if spare.is_empty() {
                // rustls keeps every record of a message it is still reassembling: one larger than
                // the buffer cannot be read (a read into no room would look like end of input).
                return Poll::Ready(Err(
                    self.fail(rustls::Error::General("TLS message larger than the receive buffer".into()))
                ));
            }
            let mut read = ReadBuf::new(spare);
            match Pin::new(&mut self.tcp).poll_read(cx, &mut read) {
                Poll::Pending => {
                    self.rx.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(LinkError::Read(e))),
                Poll::Ready(Ok(())) => {
                    let got = read.filled().len();
                    if got == 0 {
                        if !self.rx.is_empty() {
                            return Poll::Ready(Err(LinkError::Truncated));
                        }
                        // TCP FIN without close_notify, at a record boundary: the end of this
                        // direction only (the Linux kernel's RPC-with-TLS client and many stunnel
                        // setups close this way), so the reply the other way still arrives.
                        self.input_done = true;
                        continue;
                    }
                    self.rx.filled_by(got);
                }
            }
        }
    }

    /// Lets rustls open the records in `rx`, copying their plaintext into `out` while a whole record
    /// still fits (so no plaintext is ever left inside rustls, where it would block sealing).
    fn open_records(&mut self, out: &mut [u8]) -> Result<usize, LinkError> {
        let mut n = 0;
        while out.len() - n >= MAX_PLAINTEXT && !self.input_done {
            let (discard, step) = process!(&mut self.conn, self.rx.filled_mut(), |status| {
                let UnbufferedStatus { mut discard, state } = status;
                let step = match state {
                    Err(e) => Step::Failed(e),
                    Ok(ConnectionState::ReadTraffic(mut records)) => match records.next_record() {
                        Some(Ok(record)) => {
                            discard += record.discard;
                            out[n..n + record.payload.len()].copy_from_slice(record.payload);
                            n += record.payload.len();
                            Step::Again
                        }
                        Some(Err(e)) => Step::Failed(e),
                        None => Step::Again,
                    },
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        encode_into(&mut self.tx, |b| data.encode(b))
                            .map_or_else(Step::Failed, |()| Step::Again)
                    }
                    Ok(ConnectionState::TransmitTlsData(data)) => {
                        // Queued in `tx`, which is written before any later record.
                        data.done();
                        Step::Again
                    }
                    Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Step::PeerClosed,
                    Ok(ConnectionState::WriteTraffic(_)) | Ok(ConnectionState::BlockedHandshake) => {
                        Step::NeedMore
                    }
                    Ok(other) => {
                        Step::Failed(rustls::Error::General(format!("unexpected TLS state {other:?}")))
                    }
                };
                (discard, step)
            });
            self.rx.consume(discard);
            match step {
                Step::Again => {}
                Step::NeedMore => break,
                Step::PeerClosed => self.input_done = true,
                Step::Failed(e) => {
                    let e = self.fail(e);
                    if n == 0 {
                        return Err(e);
                    }
                    // The records before the bad one are the peer's data: deliver them first.
                    self.failed = Some(e);
                    break;
                }
            }
        }
        Ok(n)
    }

    /// After rustls failed the connection: queue the alert it prepared and try to send it now
    /// (without waiting: the link is over either way). One call only: rustls hands out a queued
    /// alert before it looks at input again, and a second call would feed it the failed input anew.
    fn fail(&mut self, error: rustls::Error) -> LinkError {
        process!(&mut self.conn, self.rx.filled_mut(), |status| {
            if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
                let _ = encode_into(&mut self.tx, |b| data.encode(b));
            }
        });
        if !self.tx.is_empty() {
            if let Ok(n) = self.tcp.try_write(self.tx.filled()) {
                self.tx.consume(n);
            }
        }
        LinkError::Tls(error)
    }

    /// Seals up to [`MAX_BATCH`] bytes of `plain` and starts sending them; returns how many were
    /// taken. What was sealed earlier is sent first.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        plain: &[u8],
    ) -> Poll<Result<usize, LinkError>> {
        ready!(self.poll_flush(cx))?;
        let take = plain.len().min(MAX_BATCH);
        if let KeyPolicy::Rekey { every: Some(every) } = self.keys {
            if self.sealed >= every {
                self.act(Action::ChangeKeys)?;
                self.sealed = 0;
            }
        }
        self.act(Action::Seal(&plain[..take]))?;
        self.sealed += take.div_ceil(MAX_PLAINTEXT) as u64;
        // Start sending at once; what the socket does not take now goes with the next call.
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    /// Runs rustls until it can take application data, then does `action`. rustls must always be
    /// given the unprocessed input (it keeps offsets into it while it reassembles a handshake
    /// message), so records it opens on the way are kept for [`Link::poll_read`], and its own
    /// messages are queued in `tx`.
    fn act(&mut self, action: Action<'_>) -> Result<(), LinkError> {
        for _ in 0..1024 {
            let (discard, next) = process!(&mut self.conn, self.rx.filled_mut(), |status| {
                let UnbufferedStatus { mut discard, state } = status;
                let next = match state {
                    Err(e) => Next::Failed(e),
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => match action {
                        Action::ChangeKeys => {
                            traffic.refresh_traffic_keys().map_or_else(Next::Failed, |()| Next::Done)
                        }
                        Action::Seal(plain) => sealed(traffic.encrypt(plain, self.tx.spare()), &mut self.tx),
                        Action::CloseNotify => {
                            sealed(traffic.queue_close_notify(self.tx.spare()), &mut self.tx)
                        }
                    },
                    Ok(ConnectionState::ReadTraffic(mut records)) => match records.next_record() {
                        Some(Ok(record)) => {
                            discard += record.discard;
                            self.early.extend_from_slice(record.payload);
                            Next::Again
                        }
                        Some(Err(e)) => Next::Failed(e),
                        None => Next::Again,
                    },
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        encode_into(&mut self.tx, |b| data.encode(b))
                            .map_or_else(Next::Failed, |()| Next::Again)
                    }
                    Ok(ConnectionState::TransmitTlsData(data)) => {
                        data.done();
                        Next::Again
                    }
                    Ok(ConnectionState::PeerClosed) => Next::PeerClosed,
                    // Both close_notify are exchanged: nothing more can be sent.
                    Ok(ConnectionState::Closed) => Next::Closed,
                    Ok(other) => {
                        Next::Failed(rustls::Error::General(format!("cannot send in TLS state {other:?}")))
                    }
                };
                (discard, next)
            });
            self.rx.consume(discard);
            match next {
                Next::Done => return Ok(()),
                Next::Again => {}
                Next::PeerClosed => self.input_done = true,
                Next::Closed if matches!(action, Action::CloseNotify) => return Ok(()),
                Next::Closed => {
                    return Err(self.fail(rustls::Error::General("the connection is closed".into())));
                }
                Next::Failed(e) => return Err(self.fail(e)),
            }
        }
        Err(self.fail(rustls::Error::General("rustls made no progress".into())))
    }

    /// Writes out everything sealed so far.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        while !self.tx.is_empty() {
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, self.tx.filled())) {
                Ok(0) => return Poll::Ready(Err(LinkError::Write(ErrorKind::WriteZero.into()))),
                Ok(n) => self.tx.consume(n),
                Err(e) => return Poll::Ready(Err(LinkError::Write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The end of our output: close_notify, then TCP FIN (the other direction keeps flowing).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        if !self.close_sent {
            ready!(self.poll_flush(cx))?;
            self.act(Action::CloseNotify)?;
            self.close_sent = true;
        }
        ready!(self.poll_flush(cx))?;
        match ready!(Pin::new(&mut self.tcp).poll_shutdown(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // The peer already went away entirely: that is its close, not our error.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotConnected | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                ) =>
            {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(LinkError::Write(e))),
        }
    }

    /// The TCP socket, e.g. to reset it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// What [`Link::act`] does once rustls can take application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    Seal(&'a [u8]),
    CloseNotify,
    /// Our own KeyUpdate (TLS 1.3), sent before the next record.
    ChangeKeys,
}

/// What [`Link::act`] does after one call into rustls.
enum Next {
    Done,
    Again,
    PeerClosed,
    Closed,
    Failed(rustls::Error),
}

/// The link as a tokio stream, for small exchanges outside the copy loop (the health probe's NFS
/// NULL call): reads of any size (what does not fit waits for the next read), errors as I/O errors.
impl AsyncRead for Link {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut tmp = vec![0u8; MAX_PLAINTEXT];
        let n = ready!(Link::poll_read(this, cx, &mut tmp)).map_err(io::Error::other)?;
        let take = n.min(buf.remaining());
        buf.put_slice(&tmp[..take]);
        // The rest is handed out first next time.
        this.early.splice(0..0, tmp[take..n].iter().copied());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Link {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Link::poll_write(self.get_mut(), cx, buf).map_err(io::Error::other)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Link::poll_flush(self.get_mut(), cx).map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Link::poll_shutdown(self.get_mut(), cx).map_err(io::Error::other)
    }
}

/// One step of opening records.
enum Step {
    Again,
    NeedMore,
    PeerClosed,
    Failed(rustls::Error),
}

/// What rustls sealed into `tx`'s spare room.
fn sealed(result: Result<usize, EncryptError>, tx: &mut Buffer) -> Next {
    match result {
        Ok(n) => {
            tx.filled_by(n);
            Next::Done
        }
        Err(EncryptError::InsufficientSize(e)) => Next::Failed(rustls::Error::General(format!(
            "sealed records need {} bytes of buffer",
            e.required_size
        ))),
        Err(e) => Next::Failed(rustls::Error::General(e.to_string())),
    }
}

/// Lets rustls write one of its messages into `tx`.
fn encode_into(
    tx: &mut Buffer,
    encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    match encode(tx.spare()) {
        Ok(n) => {
            tx.filled_by(n);
            Ok(())
        }
        Err(e) => Err(rustls::Error::General(format!("queueing a TLS message: {e}"))),
    }
}
