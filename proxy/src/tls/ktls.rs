//! Kernel TLS for the data phase ([`KernelLink`]): after rustls' handshake the traffic keys go to
//! the kernel, which seals and opens the records from then on, and the tunnel's bytes move between
//! the two sockets with splice(2) (see `tunnel::kernel`). rustls stays in charge of what only it
//! knows, through its kernel-connection interface: a KeyUpdate's next secret, a server's session
//! tickets. What the kernel hands up that is not application data (alerts, post-handshake messages)
//! is read here, one record at a time.
//!
//! When: `--ktls auto` (the default) and [`support`] found the kernel able (checked once, on a
//! loopback connection, for each TLS version and AEAD), and the handshake left nothing behind that
//! rustls already read (the handshake reads record by record when kTLS may follow, so the peer's
//! first data stays in the socket for the kernel). Otherwise the tunnel runs on rustls' record
//! layer ([`super::link::Link`]); the `tunnel opened` line says which (`path=ktls|rustls`).
//!
//! What the kernel cannot do: change keys where it has no TLS 1.3 rekeying (Debian 13's 6.12 has
//! none: a peer's KeyUpdate then ends the tunnel, with the reason; the new key is offered to the
//! kernel all the same, so a kernel that has it follows), and count records against the key's
//! limit. We count (an upper bound: every splice into the socket counts as whole records): towards
//! stunnel-style peers we send a KeyUpdate near the suite's confidentiality limit (the tunnel ends
//! if the kernel cannot take the new key), towards RFC 9289 peers the tunnel ends after
//! [`super::link::RPC_TLS_RECORD_LIMIT`] records (with a reset: the bytes never pass through us, so
//! not at an RPC record boundary).

use std::io;
use std::os::fd::AsFd;
use std::sync::OnceLock;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};
use tokio::net::TcpStream;

use super::link::{KeyPolicy, LinkError, MAX_PLAINTEXT};
use crate::os::ktls::{self as sys, Cipher, Direction};

/// What this kernel can take over, found once: `Ok` lists the (version, cipher) pairs; `Err` says
/// why none.
pub(crate) fn support() -> &'static Result<Vec<(ProtocolVersion, Cipher)>, String> {
    static SUPPORT: OnceLock<Result<Vec<(ProtocolVersion, Cipher)>, String>> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

/// One line for the log: what kTLS will be used for.
pub(crate) fn describe() -> String {
    match support() {
        Ok(kinds) => {
            let kinds: Vec<String> =
                kinds.iter().map(|(v, c)| format!("{}/{c:?}", version_word(*v))).collect();
            format!("available for {}", kinds.join(" "))
        }
        Err(why) => format!("not available ({why}); rustls' record layer"),
    }
}

fn version_word(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_2 => "TLS1.2",
        _ => "TLS1.3",
    }
}

/// Tries every version and cipher on connected loopback sockets (the ULP needs an established
/// connection; a socket takes one key per direction, so one connection each).
fn probe() -> Result<Vec<(ProtocolVersion, Cipher)>, String> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("probe: bind 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("probe: {e}"))?;
    let mut found = Vec::new();
    let mut last_error = None;
    for version in [ProtocolVersion::TLSv1_2, ProtocolVersion::TLSv1_3] {
        for cipher in Cipher::ALL {
            let tcp =
                std::net::TcpStream::connect(addr).map_err(|e| format!("probe: connect {addr}: {e}"))?;
            let _accepted = listener.accept().map_err(|e| format!("probe: accept: {e}"))?;
            match sys::probe(tcp.as_fd(), version, cipher) {
                Ok(()) => found.push((version, cipher)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err("the kernel has no `tls` module: setsockopt TCP_ULP tls: ENOENT".into())
                }
                Err(e) if e.kind() == io::ErrorKind::Unsupported => return Err(e.to_string()),
                Err(e) => last_error = Some(format!("{}/{cipher:?}: {e}", version_word(version))),
            }
        }
    }
    if found.is_empty() {
        return Err(last_error.unwrap_or_else(|| "no cipher accepted".into()));
    }
    Ok(found)
}

/// The kernel cipher for a negotiated suite, if the kernel can take it (see [`support`]).
pub(crate) fn supports(suite: SupportedCipherSuite, version: ProtocolVersion) -> bool {
    let cipher = match u16::from(suite.suite()) {
        0x1301 | 0xc02b | 0xc02f => Cipher::Aes128Gcm,
        0x1302 | 0xc02c | 0xc030 => Cipher::Aes256Gcm,
        0x1303 | 0xcca8 | 0xcca9 => Cipher::Chacha20Poly1305,
        _ => return false,
    };
    matches!(support(), Ok(kinds) if kinds.contains(&(version, cipher)))
}

/// rustls' connection after the handshake, of either side.
pub(crate) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn negotiated_cipher_suite(&self) -> SupportedCipherSuite {
        match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        }
    }

    fn protocol_version(&self) -> ProtocolVersion {
        match self {
            Kernel::Client(k) => k.protocol_version(),
            Kernel::Server(k) => k.protocol_version(),
        }
    }
}

/// What [`KernelLink::take_record`] found.
#[derive(Debug)]
pub(crate) enum Control {
    /// Handled (a session ticket, a KeyUpdate the kernel followed); go on reading.
    Handled,
    /// The peer's close_notify: end of input.
    Closed,
    /// Application data after all (read with the record): to be written out.
    Data(Vec<u8>),
}

/// A TLS connection whose records the kernel seals and opens; see the module documentation.
pub(crate) struct KernelLink {
    tcp: TcpStream,
    kernel: Kernel,
    negotiated: String,
    peer_certificates: Vec<CertificateDer<'static>>,
    /// An upper bound of the records sealed under the current key.
    sealed: u64,
    limit: u64,
    /// At the limit: change keys (stunnel-style peers) rather than end the tunnel (RFC 9289 peers).
    rekey: bool,
    /// The peer's KeyUpdate asked for ours; not sent yet.
    key_update_owed: bool,
}

impl std::fmt::Debug for KernelLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLink")
            .field("negotiated", &self.negotiated)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl KernelLink {
    /// Hands the traffic keys in `secrets` to the kernel: the ULP must already be attached to
    /// `tcp` (see [`attach`]).
    pub(crate) fn new(
        tcp: TcpStream,
        secrets: ExtractedSecrets,
        kernel: Kernel,
        negotiated: String,
        peer_certificates: Vec<CertificateDer<'static>>,
        keys: KeyPolicy,
    ) -> io::Result<Self> {
        let version = kernel.protocol_version();
        let suite_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        };
        let (limit, rekey) = match keys {
            KeyPolicy::EndTunnel { after } => (after.min(suite_limit), false),
            // Headroom for the count being a bound of our own (rustls itself rekeys just below it).
            // TLS 1.2 has no KeyUpdate: such a tunnel ends there (as rustls' own record layer does).
            KeyPolicy::Rekey { every } => {
                (every.unwrap_or(suite_limit - suite_limit / 8), version == ProtocolVersion::TLSv1_3)
            }
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        sys::enable(tcp.as_fd(), Direction::Tx, version, tx_seq, &tx)?;
        sys::enable(tcp.as_fd(), Direction::Rx, version, rx_seq, &rx)?;
        Ok(Self {
            tcp,
            kernel,
            negotiated,
            peer_certificates,
            sealed: 0,
            limit,
            rekey,
            key_update_owed: false,
        })
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub(crate) fn negotiated(&self) -> &str {
        &self.negotiated
    }

    pub(crate) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// `n` bytes went into the socket with one call: at most this many records.
    pub(crate) fn sealed(&mut self, n: usize) {
        self.sealed += n.div_ceil(MAX_PLAINTEXT) as u64;
    }

    /// Whether the key has sealed its share of records and the tunnel must end (RFC 9289 peers).
    /// Towards other peers our KeyUpdate is owed instead (see [`Self::key_update_owed`]).
    pub(crate) fn keys_spent(&mut self) -> bool {
        if self.sealed < self.limit {
            return false;
        }
        if self.rekey {
            self.key_update_owed = true;
            return false;
        }
        true
    }

    /// A read from the socket failed with `error`: what it means, with rustls' alert for it sent.
    pub(crate) fn read_failed(&mut self, error: io::Error) -> LinkError {
        match error.raw_os_error() {
            Some(libc::EBADMSG) => self.fail(AlertDescription::BadRecordMac, rustls::Error::DecryptError),
            Some(libc::EMSGSIZE) => {
                self.fail(AlertDescription::RecordOverflow, rustls::Error::PeerSentOversizedRecord)
            }
            Some(libc::EPIPE) => LinkError::Truncated,
            // The kernel's record parser gave up (a header it could not parse; see take_record).
            Some(libc::EINVAL) => self.stopped(),
            _ => LinkError::Read(error),
        }
    }

    /// The next record is not application data (splice(2) said `EINVAL`): reads and acts on it.
    pub(crate) fn take_record(&mut self) -> Result<Control, LinkError> {
        let mut buf = vec![0u8; MAX_PLAINTEXT + 256];
        // A record that is not data waits, opened, for this read. Nothing there (or the end of the
        // stream) means the EINVAL was the kernel giving up on the stream: a record header it could
        // not parse, after which it reads nothing more.
        let (kind, n) = match sys::recv_record(self.tcp.as_fd(), &mut buf) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(self.stopped()),
            Err(e) => return Err(self.read_failed(e)),
        };
        buf.truncate(n);
        match kind {
            sys::APPLICATION_DATA if n == 0 => Err(self.stopped()),
            sys::APPLICATION_DATA => Ok(Control::Data(buf)),
            // As rustls: close_notify ends the input; user_canceled, and in TLS 1.2 any warning, is
            // passed over; every other alert is fatal.
            sys::ALERT => match buf[..] {
                [_, 0] => Ok(Control::Closed),
                [1, 90] => Ok(Control::Handled),
                [1, _] if self.kernel.protocol_version() == ProtocolVersion::TLSv1_2 => Ok(Control::Handled),
                [_, description] => Err(LinkError::Tls(rustls::Error::AlertReceived(description.into()))),
                _ => Err(self
                    .fail(AlertDescription::DecodeError, rustls::Error::General("malformed alert".into()))),
            },
            sys::HANDSHAKE => self.handshake_messages(&buf).map(|()| Control::Handled),
            _ => Err(self.fail(
                AlertDescription::UnexpectedMessage,
                rustls::Error::General(format!(
                    "unexpected record of content type {kind} after the handshake"
                )),
            )),
        }
    }

    /// Post-handshake messages: NewSessionTicket (to rustls), KeyUpdate (new keys to the kernel).
    fn handshake_messages(&mut self, mut messages: &[u8]) -> Result<(), LinkError> {
        while !messages.is_empty() {
            let [typ, a, b, c, rest @ ..] = messages else {
                return Err(self.fragmented());
            };
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if rest.len() < len {
                return Err(self.fragmented());
            }
            let (body, rest) = rest.split_at(len);
            messages = rest;
            let tls13 = self.kernel.protocol_version() == ProtocolVersion::TLSv1_3;
            match (*typ, &mut self.kernel) {
                (4, Kernel::Client(k)) => {
                    if let Err(e) = k.handle_new_session_ticket(body) {
                        return Err(self.fail(AlertDescription::DecodeError, e));
                    }
                }
                // RFC 8446 5.1: a KeyUpdate ends its record (what follows is under the new key).
                (24, _) if tls13 && messages.is_empty() => self.key_update(body)?,
                _ => {
                    return Err(self.fail(
                        AlertDescription::UnexpectedMessage,
                        rustls::Error::General(format!(
                            "unexpected handshake message {typ} after the handshake"
                        )),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The peer changed its sending key; if it asks, we change ours too (RFC 8446 4.6.3).
    fn key_update(&mut self, body: &[u8]) -> Result<(), LinkError> {
        let requested = match body {
            [0] => false,
            [1] => true,
            _ => {
                return Err(self.fail(
                    AlertDescription::DecodeError,
                    rustls::Error::General("malformed KeyUpdate".into()),
                ))
            }
        };
        let version = self.kernel.protocol_version();
        let rx = match &mut self.kernel {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        };
        let cannot = |e: &dyn std::fmt::Display| {
            LinkError::Kernel(format!(
                "the peer changed keys (KeyUpdate) and this kernel cannot follow (it has no TLS 1.3 rekeying): {e}"
            ))
        };
        let (seq, secrets) = rx.map_err(|e| cannot(&e))?;
        sys::enable(self.tcp.as_fd(), Direction::Rx, version, seq, &secrets).map_err(|e| cannot(&e))?;
        // Ours goes out before the next data (several requests in a row get one answer).
        self.key_update_owed |= requested;
        Ok(())
    }

    /// The peer asked for our KeyUpdate: [`Self::send_key_update`] before the next data.
    pub(crate) fn key_update_owed(&self) -> bool {
        self.key_update_owed
    }

    /// Sends the KeyUpdate we owe, under the old key (`WouldBlock` while the socket buffer is full:
    /// nothing was sent). Then [`Self::key_update_sent`].
    pub(crate) fn send_key_update(&self) -> io::Result<()> {
        sys::send_record(self.tcp.as_fd(), sys::HANDSHAKE, &[24, 0, 0, 1, 0])
    }

    /// Our KeyUpdate is out: the kernel gets our new key for everything after it.
    pub(crate) fn key_update_sent(&mut self) -> Result<(), LinkError> {
        self.key_update_owed = false;
        let version = self.kernel.protocol_version();
        let tx = match &mut self.kernel {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        };
        let cannot = |e: &dyn std::fmt::Display| {
            LinkError::Kernel(format!("our KeyUpdate is sent but this kernel cannot take our new key: {e}"))
        };
        let (seq, secrets) = tx.map_err(|e| cannot(&e))?;
        sys::enable(self.tcp.as_fd(), Direction::Tx, version, seq, &secrets).map_err(|e| cannot(&e))?;
        self.sealed = 0;
        Ok(())
    }

    /// A peer that sends nothing but empty records (RFC 8446 5.1 allows some; rustls refuses a run).
    pub(crate) fn too_many_empty_records(&mut self) -> LinkError {
        self.fail(
            AlertDescription::UnexpectedMessage,
            rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::TooManyEmptyFragments),
        )
    }

    /// The kernel's record parser stopped on a header it could not parse: decode_error.
    fn stopped(&mut self) -> LinkError {
        self.fail(
            AlertDescription::DecodeError,
            rustls::Error::General("malformed record: the kernel stopped reading the stream".into()),
        )
    }

    fn fragmented(&mut self) -> LinkError {
        self.fail(
            AlertDescription::UnexpectedMessage,
            rustls::Error::General(
                "a post-handshake message split across records (not taken on the kTLS path)".into(),
            ),
        )
    }

    /// Sends a fatal `alert` (best effort: the tunnel ends either way) and returns `error`.
    fn fail(&mut self, alert: AlertDescription, error: rustls::Error) -> LinkError {
        // A record the kernel could not open leaves its error on the socket (sk_err), which fails
        // every send after it; reading the error clears it, so the alert can still go out.
        let _ = self.tcp.take_error();
        let _ = sys::send_record(self.tcp.as_fd(), sys::ALERT, &[2, u8::from(alert)]);
        LinkError::Tls(error)
    }

    /// Sends close_notify (the end of our output); `WouldBlock` while the socket buffer is full.
    pub(crate) fn send_close_notify(&self) -> io::Result<()> {
        sys::send_record(self.tcp.as_fd(), sys::ALERT, &[1, 0])
    }
}

/// Attaches the `tls` ULP to `tcp`; the socket stays an ordinary one until keys are installed.
pub(crate) fn attach(tcp: &TcpStream) -> io::Result<()> {
    sys::attach(tcp.as_fd())
}
