//! Why a connection was refused, and the one place that logs it ([`Refusals`]). Every refusal
//! happens before the backend (server mode) or upstream application data (client mode) is touched.
//!
//! Under a flood the log stays readable: a refused certificate is summarised per certificate (see
//! [`REPEAT_WINDOW`]); every other reason logs its first few refusals of a second one by one, and the
//! rest of that second as one summary line with a count.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::CertificateError;

use crate::tls::identity::Presented;

/// A refusal, with a short reason word for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefuseReason {
    /// The first bytes were neither a TLS handshake nor (with --rpc-tls on) an RPC record.
    NotTls,
    /// An RPC record that is not the RFC 9289 AUTH_TLS probe (e.g. plaintext NFS).
    RpcNotProbe(String),
    /// A malformed or oversized RPC record where the probe was expected.
    RpcMalformed(String),
    /// Client mode, `--upstream-protocol rpc-tls`: the server did not answer the probe with STARTTLS.
    NoStartTls(String),
    /// The handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The peer closed the connection before the handshake finished.
    ClosedEarly,
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate does not chain to the configured CA (or its signature is bad).
    UnknownCa,
    Expired,
    NotYetValid,
    Revoked,
    /// The CRL does not cover the certificate: fail closed.
    RevocationUnknown,
    /// `--enforce-crl-expiry` and the CRL's nextUpdate has passed.
    CrlExpired,
    /// The certificate is not for this use (e.g. a server certificate used as a client's).
    WrongPurpose,
    /// Valid certificate, but its CN/SANs are not on the allow-list.
    NameNotAllowed,
    /// The server certificate does not carry the expected name (client mode).
    WrongServerName,
    /// The peer refused our certificate or our TLS parameters (it sent an alert).
    PeerRejected(String),
    /// No common TLS version or cipher suite.
    TlsIncompatible(String),
    /// Any other TLS failure.
    Tls(String),
    /// The backend (server mode) or every server (client mode) could not be reached.
    Unreachable(String),
    /// `--max-connections` tunnels are open.
    TooManyConnections,
    /// Still in its handshake when the handshake budget (`--max-handshakes`) was full: dropped to
    /// make room for a newcomer (the oldest of the busiest source address).
    Evicted,
    /// Out of file descriptors (EMFILE/ENFILE) or kernel memory, accepting or dialling.
    ResourceExhausted(String),
    /// The handshake completed but the kernel would not take its keys (`--ktls auto`): a fault of
    /// this host, not of the peer; `--ktls off` avoids it.
    KtlsRefused(String),
    /// A refusal of the certificate a client presented: `reason`, and whose certificate it was.
    Presented {
        reason: Box<RefuseReason>,
        who: Presented,
    },
}

impl RefuseReason {
    /// The short word logged as `reason`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::NotTls => "not-tls",
            Self::RpcNotProbe(_) => "rpc-without-tls",
            Self::RpcMalformed(_) => "rpc-malformed",
            Self::NoStartTls(_) => "no-starttls",
            Self::HandshakeTimeout => "handshake-timeout",
            Self::ClosedEarly => "closed-during-handshake",
            Self::NoCertificate => "no-certificate",
            Self::UnknownCa => "unknown-ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::Revoked => "revoked",
            Self::RevocationUnknown => "revocation-unknown",
            Self::CrlExpired => "crl-expired",
            Self::WrongPurpose => "wrong-purpose",
            Self::NameNotAllowed => "name-not-allowed",
            Self::WrongServerName => "wrong-server-name",
            Self::PeerRejected(_) => "peer-rejected-us",
            Self::TlsIncompatible(_) => "tls-incompatible",
            Self::Tls(_) => "tls-error",
            Self::Unreachable(_) => "unreachable",
            Self::TooManyConnections => "max-connections",
            Self::Presented { reason, .. } => reason.word(),
            Self::Evicted => "evicted",
            Self::ResourceExhausted(_) => "resource-exhausted",
            Self::KtlsRefused(_) => "ktls-refused",
        }
    }

    /// The presented certificate, if the refusal is about one.
    pub fn presented(&self) -> Option<&Presented> {
        match self {
            Self::Presented { who, .. } => Some(who),
            _ => None,
        }
    }

    /// Whether the refused certificate was signed by our CA (so its name is a bounded metric label).
    fn signed_by_our_ca(&self) -> bool {
        match self {
            Self::Presented { reason, .. } => matches!(
                **reason,
                Self::Expired
                    | Self::NotYetValid
                    | Self::Revoked
                    | Self::RevocationUnknown
                    | Self::CrlExpired
                    | Self::WrongPurpose
                    | Self::NameNotAllowed
            ),
            _ => false,
        }
    }

    /// Maps an I/O error during the handshake to a reason (a rustls error inside it is unwrapped).
    fn from_io(error: &std::io::Error) -> Self {
        if let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return Self::from_tls(tls);
        }
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => Self::ClosedEarly,
            _ => Self::Tls(error.to_string()),
        }
    }

    /// A handshake that did not complete (see [`crate::tls::handshake`]).
    pub fn from_handshake(error: crate::tls::handshake::HandshakeError) -> Self {
        use crate::tls::handshake::HandshakeError as H;
        match error {
            H::Tls { error, presented: Some(who) } => {
                Self::Presented { reason: Box::new(Self::from_tls(&error)), who }
            }
            H::Tls { error, presented: None } => Self::from_tls(&error),
            H::Io(e) => Self::from_io(&e),
            H::Closed => Self::ClosedEarly,
            // The kernel refused keys its own probe accepted: ours, not the peer's.
            H::Kernel(e) => Self::KtlsRefused(format!("the kernel refused the keys: {e}")),
        }
    }

    pub fn from_tls(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                CertificateError::Revoked => Self::Revoked,
                CertificateError::UnknownRevocationStatus => Self::RevocationUnknown,
                CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. } => Self::CrlExpired,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                    Self::WrongPurpose
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    Self::WrongServerName
                }
                CertificateError::ApplicationVerificationFailure => Self::NameNotAllowed,
                other => Self::Tls(format!("{other:?}")),
            },
            E::AlertReceived(alert) => Self::PeerRejected(format!("{alert:?}")),
            E::PeerIncompatible(p) => Self::TlsIncompatible(format!("{p:?}")),
            E::InvalidMessage(_)
            | E::InappropriateHandshakeMessage { .. }
            | E::InappropriateMessage { .. } => Self::Tls(error.to_string()),
            other => Self::Tls(other.to_string()),
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Self::Presented { reason, .. } => reason.detail(),
            Self::PeerRejected(d)
            | Self::TlsIncompatible(d)
            | Self::Tls(d)
            | Self::Unreachable(d)
            | Self::RpcNotProbe(d)
            | Self::RpcMalformed(d)
            | Self::NoStartTls(d)
            | Self::ResourceExhausted(d)
            | Self::KtlsRefused(d) => Some(d),
            _ => None,
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(d) => write!(f, "{} ({d})", self.word()),
            None => f.write_str(self.word()),
        }
    }
}

/// Logs and counts a refused certificate ([`Refusals::refuse`] hands those here). Who was refused is on the line
/// (the presented certificate's name and serial); the same refusal of the same certificate within
/// [`REPEAT_WINDOW`] is counted and summarised on its next line (`repeated=N`) instead of logged each
/// time.
fn refuse_certificate(metrics: &crate::metrics::Metrics, peer: SocketAddr, reason: &RefuseReason) {
    let who = reason.presented();
    let identity = if reason.signed_by_our_ca() { who.map_or("-", |w| w.name.as_str()) } else { "-" };
    metrics.refused(reason.word(), identity);
    // Summarised per certificate (a revoked laptop retrying every second); other refusals are
    // per address and bounded by the pre-authentication budget instead.
    let more = match who {
        Some(w) => match repeats().admit((reason.word(), w.serial.clone())) {
            Some(more) => more,
            None => return,
        },
        None => 0,
    };
    // None fields are left out of the line.
    let detail = reason.detail();
    let repeated = (more > 0).then_some(more);
    match who {
        Some(w) => tracing::warn!(
            %peer,
            reason = reason.word(),
            identity = %w.name,
            serial = %w.serial,
            detail,
            repeated,
            "connection refused"
        ),
        None => tracing::warn!(%peer, reason = reason.word(), detail, repeated, "connection refused"),
    }
}

/// How long identical refusals are summarised rather than each logged.
pub(crate) const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Identical refusals seen within the window: (reason, who) -> (window start, suppressed count).
/// (reason, certificate serial) -> (window start, refusals suppressed since).
type RepeatMap = std::collections::HashMap<(&'static str, String), (std::time::Instant, u64)>;

#[derive(Default)]
struct Repeats(std::sync::Mutex<RepeatMap>);

fn repeats() -> &'static Repeats {
    static R: std::sync::OnceLock<Repeats> = std::sync::OnceLock::new();
    R.get_or_init(Repeats::default)
}

impl Repeats {
    /// Whether to log this refusal now; if so, how many identical ones were suppressed before it.
    fn admit(&self, key: (&'static str, String)) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, (start, _)| now.duration_since(*start) < REPEAT_WINDOW);
        }
        match map.get_mut(&key) {
            Some((start, suppressed)) if now.duration_since(*start) < REPEAT_WINDOW => {
                *suppressed += 1;
                None
            }
            Some((start, suppressed)) => {
                let more = std::mem::take(suppressed);
                *start = now;
                Some(more)
            }
            None => {
                map.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Whether an I/O error means this process or host ran out of descriptors or socket memory (as
/// opposed to the far side being unreachable).
pub(crate) fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Individual refusal lines per reason and second; beyond them, one summary line per second.
const LINES_PER_SECOND: u32 = 3;
/// Episodes of `resource-exhausted` are logged once at their start and once when they end.
const EPISODE_REASON: &str = "resource-exhausted";

/// Logs and counts refused connections: the only place that does. Rate-limited per reason (see the
/// module documentation); [`Refusals::flush`] writes the summaries and runs once a second.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: Mutex<HashMap<&'static str, Window>>,
}

/// One reason's current second.
#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    /// For `resource-exhausted`: refusals since the episode began, and when it began.
    episode: Option<(u64, Instant)>,
}

impl Refusals {
    /// Logs and counts one refused connection.
    pub(crate) fn refuse(&self, metrics: &crate::metrics::Metrics, peer: SocketAddr, reason: &RefuseReason) {
        // Per certificate only for certificates our CA signed (a revoked laptop retrying): an
        // attacker's self-signed certificates, each with a fresh serial, go through the per-reason
        // limiter like any other refusal.
        if reason.presented().is_some() && reason.signed_by_our_ca() {
            return refuse_certificate(metrics, peer, reason);
        }
        let word = reason.word();
        metrics.refused(word, "-");
        let now = Instant::now();
        let individual = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(word).or_insert(Window {
                started: now,
                logged: 0,
                suppressed: 0,
                episode: None,
            });
            if word == EPISODE_REASON {
                let first = w.episode.is_none();
                let (count, _) = w.episode.get_or_insert((0, now));
                *count += 1;
                w.started = now;
                first
            } else if w.logged < LINES_PER_SECOND {
                w.logged += 1;
                true
            } else {
                w.suppressed += 1;
                false
            }
        };
        if !individual {
            return;
        }
        let detail = reason.detail();
        match (word == EPISODE_REASON, detail) {
            (true, detail) => tracing::warn!(
                %peer,
                reason = word,
                detail = detail.unwrap_or(""),
                "connection refused; out of resources: further refusals are counted until it ends"
            ),
            // Who, when a certificate was presented (not ours: its name is the peer's claim).
            (false, detail) => {
                let who = reason.presented();
                tracing::warn!(
                    %peer,
                    reason = word,
                    identity = who.map(|w| tracing::field::display(&w.name)),
                    serial = who.map(|w| tracing::field::display(&w.serial)),
                    detail,
                    "connection refused"
                )
            }
        }
    }

    /// Writes one line per reason whose refusals were not all logged in the last second, and ends
    /// a `resource-exhausted` episode after a second without one.
    pub(crate) fn flush(&self) {
        let now = Instant::now();
        let mut lines = Vec::new();
        {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            windows.retain(|&word, w| {
                if now.duration_since(w.started) < Duration::from_secs(1) {
                    return true;
                }
                if let Some((count, since)) = w.episode {
                    lines.push((word, count, now.duration_since(since), true));
                    return false;
                }
                if w.suppressed > 0 {
                    lines.push((
                        word,
                        w.suppressed + u64::from(w.logged),
                        now.duration_since(w.started),
                        false,
                    ));
                }
                false
            });
        }
        for (reason, count, over, episode) in lines {
            let over_ms = over.as_millis() as u64;
            if episode {
                tracing::warn!(
                    reason,
                    count,
                    over_ms,
                    "out of resources no more: connections refused meanwhile"
                );
            } else {
                tracing::warn!(reason, count, over_ms, "connections refused (summary: too many to log each)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, Error as E};

    #[test]
    fn every_tls_failure_maps_to_the_refusal_word_an_operator_reads() {
        let cert = |c: CertificateError| E::InvalidCertificate(c);
        for (error, word) in [
            (E::NoCertificatesPresented, "no-certificate"),
            (cert(CertificateError::UnknownIssuer), "unknown-ca"),
            (cert(CertificateError::BadSignature), "unknown-ca"),
            (cert(CertificateError::Expired), "expired"),
            (cert(CertificateError::NotValidYet), "not-yet-valid"),
            (cert(CertificateError::Revoked), "revoked"),
            (cert(CertificateError::UnknownRevocationStatus), "revocation-unknown"),
            (cert(CertificateError::ExpiredRevocationList), "crl-expired"),
            (cert(CertificateError::InvalidPurpose), "wrong-purpose"),
            (cert(CertificateError::NotValidForName), "wrong-server-name"),
            (cert(CertificateError::ApplicationVerificationFailure), "name-not-allowed"),
            (cert(CertificateError::BadEncoding), "tls-error"),
            (E::AlertReceived(AlertDescription::AccessDenied), "peer-rejected-us"),
            (E::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon), "tls-incompatible"),
            (E::General("anything else".into()), "tls-error"),
        ] {
            assert_eq!(RefuseReason::from_tls(&error).word(), word, "{error:?}");
        }
    }

    #[test]
    fn a_presented_certificate_keeps_its_reason_word_and_says_who() {
        let who = Presented { name: "earth".into(), serial: "0A".into() };
        let reason = RefuseReason::Presented { reason: Box::new(RefuseReason::Revoked), who: who.clone() };
        assert_eq!(reason.word(), "revoked");
        assert_eq!(reason.presented(), Some(&who));
        assert!(reason.signed_by_our_ca());
        let forged = RefuseReason::Presented { reason: Box::new(RefuseReason::UnknownCa), who };
        assert!(!forged.signed_by_our_ca(), "an unknown CA's names are not a bounded label set");
    }
}
