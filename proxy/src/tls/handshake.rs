//! The TLS handshake, driven through rustls' unbuffered API on our own buffers. It ends in a
//! [`Secured`] connection: a [`Link`] (the socket and rustls' connection, which from then on is the
//! record layer too, see [`super::link`]) or, when kernel TLS may take over, a [`KernelLink`] (see
//! [`super::ktls`]).

use std::io;

use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::identity::Presented;
use super::ktls::{Kernel, KernelLink};
use super::link::{Conn, KeyPolicy, Link};
use super::Secured;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// rustls refused; `presented`: the client certificate it refused, when one was presented.
    #[error("{error}")]
    Tls { error: rustls::Error, presented: Option<Presented> },
    #[error("{0}")]
    Io(io::Error),
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The kernel refused the keys after the handshake (rustls' connection is gone by then).
    #[error("kTLS: {0}")]
    Kernel(io::Error),
}

impl HandshakeError {
    fn tls(error: rustls::Error) -> Self {
        Self::Tls { error, presented: None }
    }
}

/// Accepts a TLS connection (the first byte is already known to be a ClientHello). `config` must
/// have `enable_secret_extraction` set (see [`super::server_config`]). `ktls`: hand the records to
/// the kernel afterwards if it can take them (see [`super::ktls`]).
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    keys: KeyPolicy,
    ktls: bool,
) -> Result<Secured, HandshakeError> {
    let conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::tls)?;
    drive(conn, tcp, keys, ktls).await
}

/// Connects over TLS to `name`; `config` and `ktls` as for [`accept`].
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
    keys: KeyPolicy,
    ktls: bool,
) -> Result<Secured, HandshakeError> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(HandshakeError::tls)?;
    drive(conn, tcp, keys, ktls).await
}

/// What differs between rustls' unbuffered client and server connections.
trait Side: std::ops::DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send {
    type Data: Send;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_conn(self) -> Conn;
    fn into_kernel(self) -> Result<(rustls::ExtractedSecrets, Kernel), rustls::Error>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_conn(self) -> Conn {
        Conn::Server(self)
    }
    fn into_kernel(self) -> Result<(rustls::ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Server(k)))
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_conn(self) -> Conn {
        Conn::Client(self)
    }
    fn into_kernel(self) -> Result<(rustls::ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Client(k)))
    }
}

/// Largest handshake flight we buffer: rustls limits handshake messages to 64 KiB, plus one whole
/// TLS 1.2 record (2^14 + 2048 bytes of body and its header).
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + 5 + 16 * 1024 + 2048;

/// What to do after one step of the handshake.
enum Step {
    Continue,
    Read,
    Done,
    /// The handshake is complete and the peer already sent close_notify (in the same flight).
    DoneAndClosed,
    Fail(rustls::Error),
}

/// Runs the handshake to its end: our records out, the peer's in, until rustls says the handshake
/// is complete (for a server: the client's certificate and Finished are verified). With `ktls`, the
/// peer's records are read one at a time, so that nothing after its last handshake record is read
/// from the socket: that is the kernel's to open.
async fn drive<S: Side>(
    mut conn: S,
    mut tcp: TcpStream,
    keys: KeyPolicy,
    ktls: bool,
) -> Result<Secured, HandshakeError> {
    let mut incoming = vec![0u8; 16 * 1024];
    let mut used = 0;
    let mut outgoing: Vec<u8> = Vec::new();
    let mut early = Vec::new();
    let mut failed = None;
    let mut presented = None;
    let peer_closed = loop {
        // Anything another verification left on this thread (a reload re-checks open tunnels with
        // the same verifier) is not this handshake's.
        super::identity::take_presented();
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..used]);
        if let Some(p) = super::identity::take_presented() {
            presented = Some(p);
        }
        let step = match state {
            Err(e) => Step::Fail(e),
            Ok(ConnectionState::EncodeTlsData(mut data)) => match encode(&mut outgoing, |b| data.encode(b)) {
                Ok(()) => Step::Continue,
                Err(e) => Step::Fail(rustls::Error::General(e.to_string())),
            },
            Ok(ConnectionState::TransmitTlsData(data)) => {
                // Sent below, before rustls is asked for anything else.
                data.done();
                Step::Continue
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::ReadTraffic(mut data)) => {
                let mut failed = None;
                while let Some(next) = data.next_record() {
                    match next {
                        Ok(rec) => {
                            discard += rec.discard;
                            early.extend_from_slice(rec.payload);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Step::Continue, Step::Fail)
            }
            // A server may send (0.5-RTT) before the client's certificate arrived; we wait for it.
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            // close_notify right behind the Finished: the data phase starts at its end of input.
            Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Step::DoneAndClosed,
            Ok(other) => Step::Fail(rustls::Error::General(format!("unexpected TLS state {other:?}"))),
        };
        incoming.copy_within(discard..used, 0);
        used -= discard;
        if !outgoing.is_empty() {
            let sent = tcp.write_all(&outgoing).await;
            outgoing.clear();
            if let Err(e) = sent {
                return Err(match step {
                    Step::Fail(error) => HandshakeError::Tls { error, presented: presented.take() },
                    _ => HandshakeError::Io(e),
                });
            }
        }
        let step = match step {
            Step::Done | Step::DoneAndClosed if conn.is_handshaking() => Step::Read,
            other => other,
        };
        match step {
            Step::Continue => {}
            Step::Done => break false,
            Step::DoneAndClosed => break true,
            Step::Fail(e) => {
                send_alert(&mut conn, &mut incoming[..used], &mut tcp).await;
                if conn.is_handshaking() {
                    drop_unread(&tcp);
                    return Err(HandshakeError::Tls { error: e, presented });
                }
                // The handshake completed and a record read with it failed: that belongs to the
                // data phase (the tunnel opens, what came before the bad record is delivered).
                failed = Some(e);
                break false;
            }
            Step::Read => {
                if used == incoming.len() {
                    if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(HandshakeError::tls(rustls::Error::General(
                            "handshake message too large".into(),
                        )));
                    }
                    incoming.resize((incoming.len() * 2).min(MAX_HANDSHAKE_BUFFER), 0);
                }
                let want = if ktls { used + to_record_end(&incoming[..used]) } else { incoming.len() };
                let want = want.min(incoming.len());
                let n = tcp.read(&mut incoming[used..want]).await.map_err(HandshakeError::Io)?;
                if n == 0 {
                    return Err(HandshakeError::Closed);
                }
                used += n;
            }
        }
    };
    let negotiated = negotiated(&conn);
    let peer_certificates = conn.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    // The kernel can take over only from a record boundary with nothing read ahead, and not the
    // test knob's rekeying (the kernel cannot change keys by itself).
    let kernel_may = ktls
        && used == 0
        && early.is_empty()
        && !peer_closed
        && failed.is_none()
        && !matches!(keys, KeyPolicy::Rekey { every: Some(_) })
        && matches!((conn.negotiated_cipher_suite(), conn.protocol_version()),
            (Some(suite), Some(version)) if super::ktls::supports(suite, version));
    if kernel_may && super::ktls::attach(&tcp).is_ok() {
        let (secrets, kernel) = conn.into_kernel().map_err(HandshakeError::tls)?;
        return KernelLink::new(tcp, secrets, kernel, negotiated, peer_certificates, keys)
            .map(Secured::Kernel)
            .map_err(HandshakeError::Kernel);
    }
    incoming.truncate(used);
    Ok(Secured::Rustls(Link::new(
        tcp,
        conn.into_conn(),
        negotiated,
        peer_certificates,
        incoming,
        early,
        peer_closed,
        failed,
        keys,
    )))
}

/// How many more bytes complete the record that `buf` (whole records, then part of one) ends in:
/// the rest of its 5-byte header, or of its body once the header is there. An estimate when rustls
/// has joined the fragments of a handshake message split across records in place (it rewrites the
/// headers behind the first): a read may then go past the Finished, and the tunnel stays on rustls
/// (see `kernel_may`): never wrong, only a missed chance for kTLS.
fn to_record_end(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return at + 5 - buf.len();
        };
        let end = at + 5 + u16::from_be_bytes([header[3], header[4]]) as usize;
        if end > buf.len() {
            return end - buf.len();
        }
        at = end;
        if at == buf.len() {
            return 5;
        }
    }
}

/// `VERSION/SUITE` of a finished handshake, for the log.
pub(crate) fn negotiated(conn: &rustls::CommonState) -> String {
    let version = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_else(|| "?".into());
    let suite =
        conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_else(|| "?".into());
    format!("{version}/{suite}")
}

/// Appends what `encode` writes to `out`, growing it as rustls asks.
fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) if e.required_size > room => room = e.required_size,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// After a failed handshake: send the alert rustls queued (unknown CA, bad certificate, ...), so
/// the peer learns why; best effort. One call only: rustls hands out a queued alert before it looks
/// at input again, and a second call would feed it the input it failed on anew (rustls must always
/// be given the unprocessed input, as it may hold offsets into it).
async fn send_alert<S: Side>(conn: &mut S, incoming: &mut [u8], tcp: &mut TcpStream) {
    let mut out = Vec::new();
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process(incoming).state {
        let _ = encode(&mut out, |b| data.encode(b));
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tcp.write_all(&out)).await;
    }
}

/// Reads and drops what the refused peer has already sent (its flight behind the record that
/// failed), without waiting, so that closing sends a FIN behind our alert, not a reset. Found with
/// the Linux NFS client (`xprtsec=tls`, tlshd) in the kernel VM: refused for want of a certificate,
/// which rustls notices at the empty Certificate record, before the Finished behind it is read
/// (kTLS mode reads record by record), its connection was reset with the Finished unread, and the
/// mount hung until it timed out (90 s) instead of failing at once with "access denied" (0.6 s,
/// as when that Finished had been read). Waiting for the peer to close instead (a lingering close)
/// was worse: having its first RPC read, the kernel waited 60 s for the reply.
fn drop_unread(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let mut sink = [0u8; 4096];
    let mut dropped = 0;
    while dropped < UNREAD_LIMIT {
        match nix::sys::socket::recv(tcp.as_raw_fd(), &mut sink, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(_) => break,
            Ok(n) => dropped += n,
        }
    }
}

/// The most of a refused peer's input that is read and dropped (see [`drop_unread`]).
const UNREAD_LIMIT: usize = 256 * 1024;
