//! The TLS side of a tunnel: the handshake, driven through rustls' unbuffered API on our own buffers,
//! ends in a [`Link`]: the socket, and the record layer of [`crate::record`] holding the traffic
//! keys that rustls hands over (its kernel-connection interface, made for kTLS). rustls still does
//! everything that needs judgement: the handshake, certificate checks, and the key schedule for
//! KeyUpdate.

use std::io;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ExtractedSecrets, ServerConfig};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::record::{self, HandshakeReader, Opener, RecordError, Sealer, Version};

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("{0}")]
    Record(RecordError),
}

/// An established TLS connection: the socket and the keys, driven by [`crate::splice`].
#[derive(Debug)]
pub struct Link {
    pub(crate) tcp: TcpStream,
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    pub(crate) version: Version,
    pub(crate) is_client: bool,
    pub(crate) handshake: HandshakeReader,
    /// The peer asked for our KeyUpdate (or our key is used up): send it before the next record.
    pub(crate) key_update_due: bool,
    /// Ciphertext read with the handshake's last records (the start of the first data record).
    pub(crate) pending: Vec<u8>,
    /// Plaintext that arrived with the handshake, already decrypted by rustls.
    pub(crate) early: Vec<u8>,
    kernel: Kernel,
    negotiated: String,
    peer_certificates: Vec<CertificateDer<'static>>,
}

/// rustls' side of an established connection: the key schedule.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernel::Client(_) => "Kernel::Client",
            Kernel::Server(_) => "Kernel::Server",
        })
    }
}

impl Kernel {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
    }
}

impl Link {
    /// `VERSION/SUITE`, e.g. `TLSv1_3/TLS13_AES_256_GCM_SHA384`.
    pub fn negotiated(&self) -> &str {
        &self.negotiated
    }

    /// The certificate chain the peer presented, leaf first.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// The peer switched to its next key: so do we, for reading.
    pub(crate) fn peer_key_update(&mut self) -> Result<(), RecordError> {
        let (seq, secrets) = self.kernel.update_rx().map_err(|e| RecordError::KeyUpdate(e.to_string()))?;
        self.opener.rekey(seq, secrets)
    }

    /// Seals our KeyUpdate into `out` with the current key, then switches to the next one.
    pub(crate) fn our_key_update(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        let n = self.sealer.seal_message(record::content::HANDSHAKE, &record::key_update_message(false), out);
        let (seq, secrets) = self.kernel.update_tx().map_err(|e| RecordError::KeyUpdate(e.to_string()))?;
        self.sealer.rekey(seq, secrets)?;
        self.key_update_due = false;
        Ok(n)
    }
}

/// Accepts a TLS connection (the first byte is already known to be a ClientHello). `config` must
/// have `enable_secret_extraction` set (see [`crate::tls`]).
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> Result<Link, HandshakeError> {
    let conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::Tls)?;
    drive(conn, tcp).await
}

/// Connects over TLS to `name`; `config` as for [`accept`].
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<Link, HandshakeError> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
    drive(conn, tcp).await
}

/// What differs between rustls' unbuffered client and server connections.
trait Side: std::ops::DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send {
    type Data: Send;
    const IS_CLIENT: bool;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const IS_CLIENT: bool = false;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Server(k)))
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const IS_CLIENT: bool = true;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Client(k)))
    }
}

/// Largest handshake flight we buffer (rustls itself limits handshake messages to 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + record::MAX_RECORD;

/// What to do after one step of the handshake.
enum Step {
    Continue,
    Read,
    Done,
    Fail(rustls::Error),
}

/// Runs the handshake to its end: our records out, the peer's in, until rustls says the handshake
/// is complete (for a server: the client's certificate and Finished are verified).
async fn drive<S: Side>(mut conn: S, mut tcp: TcpStream) -> Result<Link, HandshakeError> {
    let mut incoming = vec![0u8; 16 * 1024];
    let mut used = 0;
    let mut outgoing: Vec<u8> = Vec::new();
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..used]);
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
            Ok(ConnectionState::WriteTraffic(_))
            | Ok(ConnectionState::PeerClosed)
            | Ok(ConnectionState::Closed) => Step::Done,
            Ok(other) => Step::Fail(rustls::Error::General(format!("unexpected TLS state {other:?}"))),
        };
        incoming.copy_within(discard..used, 0);
        used -= discard;
        if !outgoing.is_empty() {
            let sent = tcp.write_all(&outgoing).await;
            outgoing.clear();
            if let Err(e) = sent {
                return Err(match step {
                    Step::Fail(e) => HandshakeError::Tls(e),
                    _ => HandshakeError::Io(e),
                });
            }
        }
        let step = match step {
            Step::Done if conn.is_handshaking() => Step::Read,
            other => other,
        };
        match step {
            Step::Continue => {}
            Step::Done => break,
            Step::Fail(e) => {
                send_alert(&mut conn, &mut incoming[..used], &mut tcp).await;
                return Err(HandshakeError::Tls(e));
            }
            Step::Read => {
                if used == incoming.len() {
                    if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(HandshakeError::Tls(rustls::Error::General(
                            "handshake message too large".into(),
                        )));
                    }
                    incoming.resize((incoming.len() * 2).min(MAX_HANDSHAKE_BUFFER), 0);
                }
                let n = tcp.read(&mut incoming[used..]).await.map_err(HandshakeError::Io)?;
                if n == 0 {
                    return Err(HandshakeError::Closed);
                }
                used += n;
            }
        }
    }
    let version = conn
        .protocol_version()
        .and_then(Version::of)
        .ok_or_else(|| HandshakeError::Tls(rustls::Error::General("no TLS version negotiated".into())))?;
    let negotiated = crate::tunnel::negotiated(&conn);
    let peer_certificates = conn.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    let (secrets, kernel) = conn.into_kernel().map_err(HandshakeError::Tls)?;
    let sealer = Sealer::new(secrets.tx.0, secrets.tx.1, version).map_err(HandshakeError::Record)?;
    let opener = Opener::new(secrets.rx.0, secrets.rx.1, version).map_err(HandshakeError::Record)?;
    incoming.truncate(used);
    Ok(Link {
        tcp,
        sealer,
        opener,
        version,
        is_client: S::IS_CLIENT,
        handshake: HandshakeReader::default(),
        key_update_due: false,
        pending: incoming,
        early,
        kernel,
        negotiated,
        peer_certificates,
    })
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
/// the peer learns why; best effort.
async fn send_alert<S: Side>(conn: &mut S, incoming: &mut [u8], tcp: &mut TcpStream) {
    let mut out = Vec::new();
    for _ in 0..4 {
        match conn.process(incoming).state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                if encode(&mut out, |b| data.encode(b)).is_err() {
                    break;
                }
            }
            Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
            _ => break,
        }
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tcp.write_all(&out)).await;
    }
}
