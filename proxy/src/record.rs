//! The TLS record layer of an open tunnel, on our own buffers.
//!
//! rustls makes the handshake and hands over the traffic keys (its "kernel connection" interface, the
//! one kTLS uses); from then on records are sealed and opened here, in place, with ring's AEAD: a
//! record read from the socket is decrypted where it lies and its plaintext written straight to the
//! other socket, and plaintext is read straight into the place its record will be sealed. No byte is
//! copied in user space. rustls' own record layer copies every byte two or three times
//! (`benches/`: this is where the time went).
//!
//! What is covered is everything rustls can negotiate: TLS 1.3 and TLS 1.2, each with AES-128-GCM,
//! AES-256-GCM or ChaCha20-Poly1305. After the handshake a TLS 1.3 peer may send NewSessionTicket
//! (skipped: we never resume) and KeyUpdate (new receive keys, and our own KeyUpdate if asked); a
//! TLS 1.2 peer may send HelloRequest (ignored: no renegotiation). Anything else is an error.

use std::ops::Range;

use ring::aead;
use rustls::{AlertDescription, ConnectionTrafficSecrets, ProtocolVersion};

/// Record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// AEAD tag of every suite rustls offers.
const TAG: usize = 16;
/// TLS 1.2 AES-GCM: the explicit part of the nonce, sent before the ciphertext.
const EXPLICIT_NONCE: usize = 8;
/// Largest plaintext in one record (RFC 8446 5.1, RFC 5246 6.2.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest record body a peer may send: TLS 1.3 allows 2^14 + 256, TLS 1.2 2^14 + 2048.
const MAX_BODY_TLS13: usize = MAX_PLAINTEXT + 256;
const MAX_BODY_TLS12: usize = MAX_PLAINTEXT + 2048;
/// Largest whole record: a receive buffer of this size always has room for the next record.
pub const MAX_RECORD: usize = HEADER + MAX_BODY_TLS12;

/// TLS 1.3: records sealed with one key before we send a KeyUpdate and switch to the next. Well
/// below AES-GCM's confidentiality limit of 2^24.5 records (RFC 8446 5.5); a KeyUpdate is cheap.
pub const KEY_LIMIT: u64 = 1 << 23;
/// TLS 1.2 has no KeyUpdate: with AES-GCM the tunnel ends after this many records (rustls' limit
/// too) and the NFS client reconnects; ChaCha20-Poly1305 has no practical limit.
const TLS12_AES_GCM_LIMIT: u64 = 1 << 24;

pub mod content {
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
}

/// TLS 1.3 handshake message types that may follow the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// TLS 1.2: a server asking for renegotiation, which we decline by ignoring it (RFC 5246 7.4.1.1).
const HELLO_REQUEST: u8 = 0;

/// Why the record layer gave up on a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("record of {0} bytes is larger than TLS allows")]
    Oversized(usize),
    #[error("record of {0} bytes is too short")]
    Undersized(usize),
    #[error("unexpected record type {0}")]
    UnexpectedType(u8),
    #[error("unexpected record version {0:#06x}")]
    BadVersion(u16),
    #[error("peer sent alert {0}")]
    Alert(String),
    #[error("unexpected handshake message {0} after the handshake")]
    UnexpectedHandshake(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("cipher suite not supported by the record layer")]
    UnsupportedSuite,
    #[error("TLS 1.2 keys used up: reconnect")]
    KeysExhausted,
    #[error("key update: {0}")]
    KeyUpdate(String),
}

/// The protocol details that change how records look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    pub fn of(v: ProtocolVersion) -> Option<Self> {
        match v {
            ProtocolVersion::TLSv1_3 => Some(Self::Tls13),
            ProtocolVersion::TLSv1_2 => Some(Self::Tls12),
            _ => None,
        }
    }
}

/// One direction's key, fixed IV and record sequence number.
struct Keys {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// TLS 1.2 AES-GCM: 8 bytes of the nonce travel in each record.
    explicit_nonce: bool,
    aes_gcm: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("seq", &self.seq).finish_non_exhaustive()
    }
}

/// The AEAD, key and IV in rustls' traffic secrets.
fn parts(
    secrets: &ConnectionTrafficSecrets,
) -> Result<(&'static aead::Algorithm, &[u8], &[u8]), RecordError> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            Ok((&aead::AES_128_GCM, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            Ok((&aead::AES_256_GCM, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok((&aead::CHACHA20_POLY1305, key.as_ref(), iv.as_ref()))
        }
        #[allow(unreachable_patterns)]
        _ => Err(RecordError::UnsupportedSuite),
    }
}

impl Keys {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets, version: Version) -> Result<Self, RecordError> {
        let (alg, key, iv) = parts(secrets)?;
        Self::from_parts(seq, alg, key, iv, version)
    }

    fn from_parts(
        seq: u64,
        alg: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        version: Version,
    ) -> Result<Self, RecordError> {
        let gcm = alg != &aead::CHACHA20_POLY1305;
        let key = aead::UnboundKey::new(alg, key).map_err(|_| RecordError::UnsupportedSuite)?;
        let iv: [u8; aead::NONCE_LEN] = iv.try_into().map_err(|_| RecordError::UnsupportedSuite)?;
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
            explicit_nonce: gcm && version == Version::Tls12,
            aes_gcm: gcm,
        })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Seals the records we send.
#[derive(Debug)]
pub struct Sealer {
    keys: Keys,
    version: Version,
    /// Records one key may seal (see [`KEY_LIMIT`]).
    limit: u64,
}

impl Sealer {
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets, version: Version) -> Result<Self, RecordError> {
        let keys = Keys::new(seq, &secrets, version)?;
        Ok(Self::with_keys(keys, version))
    }

    fn with_keys(keys: Keys, version: Version) -> Self {
        let limit = match version {
            Version::Tls13 => KEY_LIMIT,
            Version::Tls12 if keys.aes_gcm => TLS12_AES_GCM_LIMIT,
            Version::Tls12 => u64::MAX,
        };
        Self { keys, version, limit }
    }

    /// Bytes of a record before its plaintext: the header, and TLS 1.2 AES-GCM's explicit nonce.
    pub fn prefix(&self) -> usize {
        HEADER + if self.keys.explicit_nonce { EXPLICIT_NONCE } else { 0 }
    }

    /// Bytes of a record after its plaintext: TLS 1.3's inner content type, and the tag.
    pub fn suffix(&self) -> usize {
        TAG + usize::from(self.version == Version::Tls13)
    }

    /// Whether the current key has sealed all the records it may, and must be replaced first (TLS
    /// 1.3) or the tunnel ended (TLS 1.2).
    pub fn needs_new_key(&self) -> bool {
        self.keys.seq >= self.limit
    }

    /// Seals, in place, the record whose `len` bytes of plaintext of type `typ` are at
    /// `record[prefix()..]`: writes the header (and nonce) before and the tag after. `record` must
    /// hold at least `prefix() + len + suffix()` bytes; returns that length.
    pub fn seal(&mut self, typ: u8, record: &mut [u8], len: usize) -> usize {
        debug_assert!(len <= MAX_PLAINTEXT);
        let prefix = self.prefix();
        let total = prefix + len + self.suffix();
        let body = total - HEADER;
        let nonce = self.keys.nonce();
        let (outer_type, sealed) = match self.version {
            Version::Tls13 => {
                record[prefix + len] = typ;
                (content::APPLICATION_DATA, prefix..prefix + len + 1)
            }
            Version::Tls12 => (typ, prefix..prefix + len),
        };
        record[0] = outer_type;
        record[1..3].copy_from_slice(&[3, 3]);
        record[3..5].copy_from_slice(&(body as u16).to_be_bytes());
        let tag = match self.version {
            Version::Tls13 => {
                let aad: [u8; HEADER] = record[..HEADER].try_into().unwrap_or_default();
                self.keys.key.seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut record[sealed.clone()],
                )
            }
            Version::Tls12 => {
                if self.keys.explicit_nonce {
                    record[HEADER..HEADER + EXPLICIT_NONCE].copy_from_slice(&nonce[4..]);
                }
                self.keys.key.seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(tls12_aad(self.keys.seq, typ, len)),
                    &mut record[sealed.clone()],
                )
            }
        };
        // Sealing only fails for inputs far beyond a record's size.
        let tag = tag.unwrap_or_else(|_| unreachable_seal());
        record[sealed.end..sealed.end + TAG].copy_from_slice(tag.as_ref());
        self.keys.seq += 1;
        total
    }

    /// Seals `payload` (a short control message) as a record at the start of `out`.
    pub fn seal_message(&mut self, typ: u8, payload: &[u8], out: &mut [u8]) -> usize {
        let prefix = self.prefix();
        out[prefix..prefix + payload.len()].copy_from_slice(payload);
        self.seal(typ, out, payload.len())
    }

    /// Switches to the next key after our KeyUpdate was sealed with the old one.
    pub fn rekey(&mut self, seq: u64, secrets: ConnectionTrafficSecrets) -> Result<(), RecordError> {
        self.keys = Keys::new(seq, &secrets, self.version)?;
        Ok(())
    }
}

#[cold]
fn unreachable_seal() -> aead::Tag {
    panic!("AEAD seal of a TLS record failed")
}

/// What an opened record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: the plaintext's place in the record.
    Data(Range<usize>),
    /// The peer's close_notify: no more data will come.
    CloseNotify,
    /// A post-handshake handshake message (or part of one): its place in the record.
    Handshake(Range<usize>),
}

/// Opens the records we receive.
#[derive(Debug)]
pub struct Opener {
    keys: Keys,
    version: Version,
}

impl Opener {
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets, version: Version) -> Result<Self, RecordError> {
        Ok(Self { keys: Keys::new(seq, &secrets, version)?, version })
    }

    pub fn rekey(&mut self, seq: u64, secrets: ConnectionTrafficSecrets) -> Result<(), RecordError> {
        self.keys = Keys::new(seq, &secrets, self.version)?;
        Ok(())
    }

    /// The length of the whole record at the start of `buf`, once all of it is there; checks the
    /// header first, so a bad record is refused before its body arrives.
    pub fn record_len(&self, buf: &[u8]) -> Result<Option<usize>, RecordError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let typ = buf[0];
        let allowed = match self.version {
            Version::Tls13 => typ == content::APPLICATION_DATA,
            Version::Tls12 => matches!(typ, content::ALERT | content::HANDSHAKE | content::APPLICATION_DATA),
        };
        if !allowed {
            return Err(RecordError::UnexpectedType(typ));
        }
        let version = u16::from_be_bytes([buf[1], buf[2]]);
        if version != 0x0303 {
            return Err(RecordError::BadVersion(version));
        }
        let body = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let max = match self.version {
            Version::Tls13 => MAX_BODY_TLS13,
            Version::Tls12 => MAX_BODY_TLS12,
        };
        if body > max {
            return Err(RecordError::Oversized(body));
        }
        let min = TAG + if self.keys.explicit_nonce { EXPLICIT_NONCE } else { 0 };
        if body < min {
            return Err(RecordError::Undersized(body));
        }
        Ok((buf.len() >= HEADER + body).then_some(HEADER + body))
    }

    /// Decrypts the whole record `record` (as measured by [`Opener::record_len`]) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, RecordError> {
        let nonce = self.keys.nonce();
        let (typ, plain) = match self.version {
            Version::Tls13 => {
                let aad: [u8; HEADER] = record[..HEADER].try_into().unwrap_or_default();
                let inner = self
                    .keys
                    .key
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        &mut record[HEADER..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                // The content type is the last non-zero byte; zeros after it are padding.
                let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Malformed("record without content type"));
                };
                if end > MAX_PLAINTEXT {
                    return Err(RecordError::Oversized(end));
                }
                (inner[end], HEADER..HEADER + end)
            }
            Version::Tls12 => {
                let typ = record[0];
                let (nonce, start) = if self.keys.explicit_nonce {
                    let mut n = [0u8; aead::NONCE_LEN];
                    n[..4].copy_from_slice(&self.keys.iv[..4]);
                    n[4..].copy_from_slice(&record[HEADER..HEADER + EXPLICIT_NONCE]);
                    (n, HEADER + EXPLICIT_NONCE)
                } else {
                    (nonce, HEADER)
                };
                let len = record.len() - start - TAG;
                if len > MAX_PLAINTEXT {
                    return Err(RecordError::Oversized(len));
                }
                self.keys
                    .key
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(tls12_aad(self.keys.seq, typ, len)),
                        &mut record[start..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                (typ, start..start + len)
            }
        };
        self.keys.seq += 1;
        match typ {
            content::APPLICATION_DATA => Ok(Opened::Data(plain)),
            content::HANDSHAKE if !plain.is_empty() => Ok(Opened::Handshake(plain)),
            content::ALERT => match record[plain] {
                [_, 0] => Ok(Opened::CloseNotify),
                // user_canceled is followed by close_notify (RFC 8446 6.1).
                [1, 90] => Ok(Opened::Data(HEADER..HEADER)),
                [_, desc] => Err(RecordError::Alert(format!("{:?}", AlertDescription::from(desc)))),
                _ => Err(RecordError::Malformed("alert")),
            },
            other => Err(RecordError::UnexpectedType(other)),
        }
    }
}

/// What a post-handshake handshake message asks of us.
#[derive(Debug, PartialEq, Eq)]
pub enum PostHandshake {
    /// Nothing (a session ticket we do not keep, a renegotiation request we decline).
    Nothing,
    /// The peer switched its keys; `reply` if it asked us to switch ours too.
    KeyUpdate { reply: bool },
}

/// Post-handshake handshake messages, which may span records or share one.
#[derive(Debug, Default)]
pub struct HandshakeReader {
    buf: Vec<u8>,
}

/// Longest post-handshake message accepted (a NewSessionTicket is a few hundred bytes).
const MAX_POST_HANDSHAKE: usize = 64 * 1024;

impl HandshakeReader {
    /// Takes a record's handshake bytes; returns the complete messages' meaning, in order.
    /// `is_client`: only a server may send NewSessionTicket or HelloRequest.
    pub fn take(
        &mut self,
        bytes: &[u8],
        version: Version,
        is_client: bool,
    ) -> Result<Vec<PostHandshake>, RecordError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_POST_HANDSHAKE {
            return Err(RecordError::Oversized(self.buf.len()));
        }
        let mut out = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let typ = self.buf[at];
            let len = u32::from_be_bytes([0, self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]]) as usize;
            if self.buf.len() - at - 4 < len {
                break;
            }
            let body = &self.buf[at + 4..at + 4 + len];
            at += 4 + len;
            match (version, typ) {
                (Version::Tls13, NEW_SESSION_TICKET) if is_client => out.push(PostHandshake::Nothing),
                (Version::Tls13, KEY_UPDATE) => {
                    let reply = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(RecordError::Malformed("KeyUpdate")),
                    };
                    // New keys apply from the next record: nothing may follow in this one.
                    if at != self.buf.len() {
                        return Err(RecordError::Malformed("KeyUpdate not at a record boundary"));
                    }
                    out.push(PostHandshake::KeyUpdate { reply });
                }
                (Version::Tls12, HELLO_REQUEST) if is_client && len == 0 => out.push(PostHandshake::Nothing),
                (_, other) => return Err(RecordError::UnexpectedHandshake(other)),
            }
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// Our KeyUpdate message: `update_not_requested` (0) or `update_requested` (1).
pub fn key_update_message(request: bool) -> [u8; 5] {
    [KEY_UPDATE, 0, 0, 1, u8::from(request)]
}

/// The close_notify alert.
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(kind: u8, version: Version) -> Keys {
        let (alg, key): (_, &[u8]) = match kind {
            0 => (&aead::AES_128_GCM, &[1u8; 16]),
            1 => (&aead::AES_256_GCM, &[2u8; 32]),
            _ => (&aead::CHACHA20_POLY1305, &[3u8; 32]),
        };
        Keys::from_parts(0, alg, key, &[7u8; 12], version).expect("keys")
    }

    fn pair(kind: u8, version: Version) -> (Sealer, Opener) {
        (Sealer::with_keys(keys(kind, version), version), Opener { keys: keys(kind, version), version })
    }

    #[test]
    fn every_suite_and_version_opens_what_it_seals_in_place() {
        for kind in 0..3 {
            for version in [Version::Tls12, Version::Tls13] {
                let (mut sealer, mut opener) = pair(kind, version);
                for len in [0usize, 1, 200, MAX_PLAINTEXT] {
                    let mut record = vec![0u8; sealer.prefix() + len + sealer.suffix()];
                    let prefix = sealer.prefix();
                    for (i, b) in record[prefix..prefix + len].iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    let n = sealer.seal(content::APPLICATION_DATA, &mut record, len);
                    assert_eq!(n, record.len());
                    assert_eq!(opener.record_len(&record).expect("header"), Some(n));
                    assert_eq!(opener.record_len(&record[..n - 1]).expect("header"), None);
                    let Opened::Data(range) = opener.open(&mut record).expect("open") else { panic!() };
                    assert_eq!(range.len(), len, "{kind} {version:?}");
                    assert!(record[range].iter().enumerate().all(|(i, &b)| b == i as u8));
                }
            }
        }
    }

    #[test]
    fn a_flipped_bit_or_a_replayed_record_fails_authentication() {
        for version in [Version::Tls12, Version::Tls13] {
            let (mut sealer, mut opener) = pair(1, version);
            let mut record = vec![0u8; sealer.prefix() + 10 + sealer.suffix()];
            sealer.seal(content::APPLICATION_DATA, &mut record, 10);
            let replay = record.clone();
            let mut flipped = record.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert_eq!(opener.open(&mut flipped), Err(RecordError::BadRecordMac));
            let mut opener2 = pair(1, version).1;
            assert!(matches!(opener2.open(&mut record), Ok(Opened::Data(_))));
            // The same record again: the sequence number moved on, so the nonce no longer fits.
            assert_eq!(opener2.open(&mut replay.clone()), Err(RecordError::BadRecordMac));
        }
    }

    #[test]
    fn a_key_is_replaced_before_its_record_limit_and_tls12_chacha_has_none() {
        let (mut sealer, _) = pair(1, Version::Tls13);
        sealer.keys.seq = KEY_LIMIT - 1;
        assert!(!sealer.needs_new_key());
        let mut out = [0u8; 64];
        sealer.seal_message(content::APPLICATION_DATA, b"x", &mut out);
        assert!(sealer.needs_new_key());
        let (mut sealer, _) = pair(0, Version::Tls12);
        sealer.keys.seq = TLS12_AES_GCM_LIMIT;
        assert!(sealer.needs_new_key());
        let (mut sealer, _) = pair(2, Version::Tls12);
        sealer.keys.seq = TLS12_AES_GCM_LIMIT;
        assert!(!sealer.needs_new_key());
    }

    #[test]
    fn close_notify_and_fatal_alerts_are_told_apart() {
        let (mut sealer, mut opener) = pair(2, Version::Tls13);
        let mut out = [0u8; 64];
        let n = sealer.seal_message(content::ALERT, &CLOSE_NOTIFY, &mut out);
        assert_eq!(opener.open(&mut out[..n]), Ok(Opened::CloseNotify));
        let n = sealer.seal_message(content::ALERT, &[2, 48], &mut out);
        assert_eq!(opener.open(&mut out[..n]), Err(RecordError::Alert("UnknownCA".into())));
    }

    #[test]
    fn headers_that_cannot_be_a_record_are_refused_before_the_body_arrives() {
        let (_, opener) = pair(0, Version::Tls13);
        assert_eq!(opener.record_len(&[22, 3, 3, 0, 40]), Err(RecordError::UnexpectedType(22)));
        assert_eq!(opener.record_len(&[23, 3, 1, 0, 40]), Err(RecordError::BadVersion(0x0301)));
        assert_eq!(opener.record_len(&[23, 3, 3, 0xff, 0xff]), Err(RecordError::Oversized(0xffff)));
        assert_eq!(opener.record_len(&[23, 3, 3, 0, 3]), Err(RecordError::Undersized(3)));
        assert_eq!(opener.record_len(&[23, 3, 3]), Ok(None));
    }

    #[test]
    fn key_updates_and_tickets_are_read_across_records() {
        let mut r = HandshakeReader::default();
        // A NewSessionTicket split over two records, then a KeyUpdate asking for ours.
        assert_eq!(r.take(&[4, 0, 0, 3, 9], Version::Tls13, true).expect("take"), vec![]);
        assert_eq!(r.take(&[9, 9], Version::Tls13, true).expect("take"), vec![PostHandshake::Nothing]);
        assert_eq!(
            r.take(&key_update_message(true), Version::Tls13, true).expect("take"),
            vec![PostHandshake::KeyUpdate { reply: true }]
        );
        // A client may not send tickets; a KeyUpdate must end its record.
        assert_eq!(r.take(&[4, 0, 0, 0], Version::Tls13, false), Err(RecordError::UnexpectedHandshake(4)));
        let mut r = HandshakeReader::default();
        let mut two = key_update_message(false).to_vec();
        two.extend_from_slice(&[4, 0, 0, 0]);
        assert!(r.take(&two, Version::Tls13, true).is_err());
    }

    #[test]
    fn tls13_padding_is_stripped_and_the_inner_type_read() {
        let (mut sealer, mut opener) = pair(0, Version::Tls13);
        // Seal "hi" + type + 3 bytes of zero padding by hand: seal() with len 6 where the tail is 0s
        // would put the type after them, so build it as a 6-byte payload ending in type then zeros.
        let mut record = vec![0u8; sealer.prefix() + 5 + sealer.suffix()];
        let p = sealer.prefix();
        record[p..p + 5].copy_from_slice(&[b'h', b'i', content::APPLICATION_DATA, 0, 0]);
        // Sealing 5 bytes appends the type byte 0 after them: inner = h i 23 0 0 0.
        sealer.seal(0, &mut record, 5);
        assert_eq!(opener.open(&mut record), Ok(Opened::Data(HEADER..HEADER + 2)));
        assert_eq!(&record[HEADER..HEADER + 2], b"hi");
    }
}
