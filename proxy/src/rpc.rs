//! ONC RPC (RFC 5531) on TCP, just enough for RPC-with-TLS (RFC 9289) and the NFS NULL health check:
//! record marking, the AUTH_TLS probe and its STARTTLS reply, and a NULL call's reply.
//!
//! The probe (RFC 9289 section 4.1): a CALL to the NFS program, procedure 0 (NULL), credential
//! AUTH_TLS with an empty body, verifier AUTH_NONE with an empty body. A server that does RPC-with-TLS
//! answers MSG_ACCEPTED / SUCCESS with the same XID and a verifier of flavor AUTH_NONE whose body is
//! the 8 bytes `STARTTLS`; then the TLS handshake starts on the same connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The NFS program number.
pub(crate) const NFS_PROGRAM: u32 = 100_003;
const RPC_VERSION: u32 = 2;
const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const SUCCESS: u32 = 0;
const AUTH_NONE: u32 = 0;
/// RFC 9289's credential flavor for the probe.
pub(crate) const AUTH_TLS: u32 = 7;
/// The verifier body of the probe's reply.
pub(crate) const STARTTLS: &[u8; 8] = b"STARTTLS";
/// Record-marking: the last-fragment bit of the 4-byte record mark.
pub(crate) const LAST_FRAGMENT: u32 = 0x8000_0000;
/// The largest record accepted where only a probe or a short reply may come; a probe is 40 bytes.
pub(crate) const MAX_SMALL_RECORD: usize = 1024;
/// ALPN identifier registered for RPC-with-TLS; sent by our client, never required by our server.
pub(crate) const ALPN: &[u8] = b"sunrpc";

/// A record that is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RpcError {
    /// Not a well-formed single-fragment RPC record of acceptable size.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed RPC CALL that is not the AUTH_TLS probe.
    #[error("{0}")]
    NotProbe(String),
    /// A reply that is not the expected one.
    #[error("{0}")]
    BadReply(String),
    #[error("{0}")]
    Io(String),
}

/// Big-endian u32 fields of an XDR body.
struct Xdr<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Xdr<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn u32(&mut self, field: &str) -> Result<u32, RpcError> {
        let bytes = self
            .data
            .get(self.at..self.at + 4)
            .ok_or_else(|| RpcError::Malformed(format!("record ends before {field}")))?;
        self.at += 4;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// An opaque_auth: flavor, then a body of up to 400 bytes padded to 4.
    fn auth(&mut self, what: &str) -> Result<(u32, &'a [u8]), RpcError> {
        let flavor = self.u32(what)?;
        let len = self.u32(what)? as usize;
        if len > 400 {
            return Err(RpcError::Malformed(format!("{what} body of {len} bytes (at most 400)")));
        }
        let padded = len.div_ceil(4) * 4;
        let body = self
            .data
            .get(self.at..self.at + len)
            .ok_or_else(|| RpcError::Malformed(format!("record ends inside the {what}")))?;
        self.at += padded;
        Ok((flavor, body))
    }

    fn rest(&self) -> usize {
        self.data.len().saturating_sub(self.at)
    }
}

/// The head of an RPC CALL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub xid: u32,
    pub program: u32,
    pub version: u32,
    pub procedure: u32,
    pub cred_flavor: u32,
    pub cred_len: usize,
    pub verf_flavor: u32,
    pub verf_len: usize,
}

/// Parses the body of a record (without its record mark) as an RPC CALL.
pub(crate) fn parse_call(body: &[u8]) -> Result<Call, RpcError> {
    let mut x = Xdr::new(body);
    let xid = x.u32("xid")?;
    let msg_type = x.u32("message type")?;
    if msg_type != CALL {
        return Err(RpcError::Malformed(format!("message type {msg_type}, not a CALL")));
    }
    let rpcvers = x.u32("RPC version")?;
    if rpcvers != RPC_VERSION {
        return Err(RpcError::Malformed(format!("RPC version {rpcvers}, not 2")));
    }
    let (program, version, procedure) = (x.u32("program")?, x.u32("version")?, x.u32("procedure")?);
    let (cred_flavor, cred) = x.auth("credential")?;
    let (verf_flavor, verf) = x.auth("verifier")?;
    Ok(Call {
        xid,
        program,
        version,
        procedure,
        cred_flavor,
        cred_len: cred.len(),
        verf_flavor,
        verf_len: verf.len(),
    })
}

/// Checks that `body` is exactly an RFC 9289 probe; returns the call (for its XID).
pub(crate) fn parse_probe(body: &[u8]) -> Result<Call, RpcError> {
    let call = parse_call(body)?;
    let is_probe = call.program == NFS_PROGRAM
        && call.procedure == 0
        && call.cred_flavor == AUTH_TLS
        && call.cred_len == 0
        && call.verf_flavor == AUTH_NONE
        && call.verf_len == 0
        && body.len() == 40;
    if !is_probe {
        return Err(RpcError::NotProbe(format!(
            "plaintext RPC without the TLS probe (program {} version {} procedure {}, credential flavor {})",
            call.program, call.version, call.procedure, call.cred_flavor
        )));
    }
    Ok(call)
}

/// A record mark followed by `body` as one last fragment.
fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(LAST_FRAGMENT | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// The probe record a client sends: NULL call to NFS `version` with an AUTH_TLS credential.
pub(crate) fn probe(xid: u32, version: u32) -> Vec<u8> {
    record(&words(&[xid, CALL, RPC_VERSION, NFS_PROGRAM, version, 0, AUTH_TLS, 0, AUTH_NONE, 0]))
}

/// The server's answer to a probe: accepted, verifier AUTH_NONE carrying `STARTTLS`, success.
pub(crate) fn starttls_reply(xid: u32) -> Vec<u8> {
    let mut body = words(&[xid, REPLY, MSG_ACCEPTED, AUTH_NONE, STARTTLS.len() as u32]);
    body.extend_from_slice(STARTTLS);
    body.extend_from_slice(&SUCCESS.to_be_bytes());
    record(&body)
}

/// Checks that `body` is exactly the STARTTLS reply to `xid`.
pub(crate) fn check_starttls_reply(body: &[u8], xid: u32) -> Result<(), RpcError> {
    let mut x = Xdr::new(body);
    let bad = |what: String| RpcError::BadReply(what);
    let got = x.u32("xid")?;
    if got != xid {
        return Err(bad(format!("reply for xid {got:#x}, the probe was {xid:#x}")));
    }
    if x.u32("message type")? != REPLY {
        return Err(bad("not an RPC reply".into()));
    }
    let stat = x.u32("reply status")?;
    if stat != MSG_ACCEPTED {
        return Err(bad(format!(
            "the probe was denied (reply status {stat}): the server does not do RPC-with-TLS"
        )));
    }
    let (flavor, verf) = x.auth("verifier")?;
    let accept = x.u32("accept status")?;
    if accept != SUCCESS {
        return Err(bad(format!("the probe was not accepted (accept status {accept})")));
    }
    if flavor != AUTH_NONE || verf != STARTTLS || x.rest() != 0 {
        return Err(bad(format!(
            "the reply carries no STARTTLS verifier (flavor {flavor}, {} bytes): the server does not do RPC-with-TLS",
            verf.len()
        )));
    }
    Ok(())
}

/// A NULL call (AUTH_NONE) to `program` `version`: "are you there".
pub(crate) fn null_call(xid: u32, program: u32, version: u32) -> Vec<u8> {
    record(&words(&[xid, CALL, RPC_VERSION, program, version, 0, AUTH_NONE, 0, AUTH_NONE, 0]))
}

/// Checks that `body` is an accepted, successful reply to `xid`.
pub(crate) fn check_success_reply(body: &[u8], xid: u32) -> Result<(), RpcError> {
    let mut x = Xdr::new(body);
    let got = x.u32("xid")?;
    if got != xid {
        return Err(RpcError::BadReply(format!("reply for xid {got:#x}, the call was {xid:#x}")));
    }
    if x.u32("message type")? != REPLY {
        return Err(RpcError::BadReply("not an RPC reply".into()));
    }
    let stat = x.u32("reply status")?;
    if stat != MSG_ACCEPTED {
        return Err(RpcError::BadReply(format!("call denied (reply status {stat})")));
    }
    x.auth("verifier")?;
    match x.u32("accept status")? {
        SUCCESS => Ok(()),
        other => Err(RpcError::BadReply(format!("call not accepted (accept status {other})"))),
    }
}

/// Reads one single-fragment record of at most `max` bytes; returns its body.
pub(crate) async fn read_record<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Vec<u8>, RpcError> {
    let mut mark = [0u8; 4];
    stream.read_exact(&mut mark).await.map_err(|e| RpcError::Io(format!("reading the record mark: {e}")))?;
    let mark = u32::from_be_bytes(mark);
    if mark & LAST_FRAGMENT == 0 {
        return Err(RpcError::Malformed("a fragmented record where one fragment must do".into()));
    }
    let len = (mark & !LAST_FRAGMENT) as usize;
    if len > max {
        return Err(RpcError::Malformed(format!(
            "a record of {len} bytes, more than the {max} allowed here"
        )));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| RpcError::Io(format!("reading a {len}-byte record: {e}")))?;
    Ok(body)
}

/// Server side of the probe: reads it from `stream`, and answers STARTTLS if it is one.
pub(crate) async fn answer_probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Call, RpcError> {
    let body = read_record(stream, MAX_SMALL_RECORD).await?;
    let call = parse_probe(&body)?;
    stream
        .write_all(&starttls_reply(call.xid))
        .await
        .map_err(|e| RpcError::Io(format!("writing the STARTTLS reply: {e}")))?;
    Ok(call)
}

/// Client side of the probe: sends it, and requires the exact STARTTLS reply.
pub(crate) async fn send_probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    xid: u32,
) -> Result<(), RpcError> {
    stream.write_all(&probe(xid, 4)).await.map_err(|e| RpcError::Io(format!("sending the probe: {e}")))?;
    let body = read_record(stream, MAX_SMALL_RECORD).await?;
    check_starttls_reply(&body, xid)
}

/// A NULL call to NFS version 4 over `stream`, answered successfully within `timeout`.
pub(crate) async fn nfs_null<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    xid: u32,
    timeout: Duration,
) -> Result<(), RpcError> {
    let exchange = async {
        stream
            .write_all(&null_call(xid, NFS_PROGRAM, 4))
            .await
            .map_err(|e| RpcError::Io(format!("sending the NULL call: {e}")))?;
        let body = read_record(stream, MAX_SMALL_RECORD).await?;
        check_success_reply(&body, xid)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(RpcError::Io(format!("no reply within {timeout:?}"))))
}

/// A fresh transaction id (XIDs only need to differ between calls on a connection).
pub(crate) fn next_xid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    seed ^ NEXT.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}

/// Follows the record marking of an ONC RPC stream (RFC 5531 11) as it passes, to know where its
/// records end: each fragment is a 4-byte mark (last-fragment bit, 31-bit length) and its body.
#[derive(Debug, Default)]
pub(crate) struct RecordMarks {
    /// Bytes of the next mark seen so far (0-3), and the mark being assembled.
    mark_len: usize,
    mark: [u8; 4],
    /// Bytes of the current fragment's body still to come.
    body_left: usize,
    /// Whether the current (or, between fragments, the previous) fragment is a record's last.
    last: bool,
    /// Nothing seen yet: the stream starts at a boundary.
    started: bool,
}

impl RecordMarks {
    /// Takes the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            self.started = true;
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            self.mark[self.mark_len] = data[0];
            self.mark_len += 1;
            data = &data[1..];
            if self.mark_len == 4 {
                let word = u32::from_be_bytes(self.mark);
                self.last = word & LAST_FRAGMENT != 0;
                self.body_left = (word & !LAST_FRAGMENT) as usize;
                self.mark_len = 0;
            }
        }
    }

    /// Whether the bytes seen so far end with a whole record.
    pub(crate) fn at_record_boundary(&self) -> bool {
        !self.started || (self.last && self.body_left == 0 && self.mark_len == 0)
    }

    /// How many bytes may pass before the end of the current fragment (or of the mark being read).
    pub(crate) fn to_fragment_end(&self) -> usize {
        if self.body_left > 0 {
            self.body_left
        } else {
            4 - self.mark_len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9289 section 4.1 probe for NFSv4 with XID 0x01020304, field by field from the XDR of
    /// RFC 5531 (not produced by the code under test).
    const GOLDEN_PROBE: [u8; 44] = [
        0x80, 0x00, 0x00, 0x28, // record mark: last fragment, 40 bytes
        0x01, 0x02, 0x03, 0x04, // xid
        0x00, 0x00, 0x00, 0x00, // msg_type CALL
        0x00, 0x00, 0x00, 0x02, // rpcvers 2
        0x00, 0x01, 0x86, 0xa3, // prog 100003 (NFS)
        0x00, 0x00, 0x00, 0x04, // vers 4
        0x00, 0x00, 0x00, 0x00, // proc 0 (NULL)
        0x00, 0x00, 0x00, 0x07, // cred flavor AUTH_TLS
        0x00, 0x00, 0x00, 0x00, // cred body length 0
        0x00, 0x00, 0x00, 0x00, // verf flavor AUTH_NONE
        0x00, 0x00, 0x00, 0x00, // verf body length 0
    ];

    /// The STARTTLS reply to it.
    const GOLDEN_REPLY: [u8; 36] = [
        0x80, 0x00, 0x00, 0x20, // record mark: last fragment, 32 bytes
        0x01, 0x02, 0x03, 0x04, // xid
        0x00, 0x00, 0x00, 0x01, // msg_type REPLY
        0x00, 0x00, 0x00, 0x00, // reply_stat MSG_ACCEPTED
        0x00, 0x00, 0x00, 0x00, // verf flavor AUTH_NONE
        0x00, 0x00, 0x00, 0x08, // verf body length 8
        b'S', b'T', b'A', b'R', b'T', b'T', b'L', b'S', // "STARTTLS"
        0x00, 0x00, 0x00, 0x00, // accept_stat SUCCESS
    ];

    #[test]
    fn the_probe_matches_the_rfc_byte_for_byte() {
        assert_eq!(probe(0x0102_0304, 4), GOLDEN_PROBE);
    }

    #[test]
    fn the_starttls_reply_matches_the_rfc_byte_for_byte() {
        assert_eq!(starttls_reply(0x0102_0304), GOLDEN_REPLY);
    }

    #[test]
    fn the_golden_probe_is_recognised_and_the_golden_reply_accepted() {
        let call = parse_probe(&GOLDEN_PROBE[4..]).expect("probe");
        assert_eq!((call.xid, call.version), (0x0102_0304, 4));
        check_starttls_reply(&GOLDEN_REPLY[4..], 0x0102_0304).expect("reply");
    }

    #[test]
    fn a_plain_null_call_is_not_a_probe() {
        let call = null_call(7, NFS_PROGRAM, 4);
        assert!(matches!(parse_probe(&call[4..]), Err(RpcError::NotProbe(_))));
    }

    #[test]
    fn a_probe_for_another_procedure_is_not_a_probe() {
        let mut body = GOLDEN_PROBE[4..].to_vec();
        body[23] = 1; // procedure 1 (COMPOUND)
        assert!(matches!(parse_probe(&body), Err(RpcError::NotProbe(_))));
    }

    #[test]
    fn truncated_records_are_malformed() {
        assert!(matches!(parse_probe(&GOLDEN_PROBE[4..20]), Err(RpcError::Malformed(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers() {
        // A fixed-seed generator: repeatable, bounded in count.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 && body.len() >= 8 {
                body[4..8].copy_from_slice(&0u32.to_be_bytes()); // a CALL, to reach deeper
            }
            let _ = parse_probe(&body);
            let _ = check_starttls_reply(&body, 1);
            let _ = check_success_reply(&body, 1);
        }
    }

    #[test]
    fn a_reply_without_starttls_or_for_another_xid_is_refused() {
        assert!(check_starttls_reply(&GOLDEN_REPLY[4..], 5).is_err());
        let mut other = GOLDEN_REPLY[4..].to_vec();
        other[20] = b'X';
        assert!(check_starttls_reply(&other, 0x0102_0304).is_err());
        // A plain AUTH_NONE success reply (a server that ignores AUTH_TLS) is not STARTTLS either.
        let plain: Vec<u8> = [0x0102_0304u32, 1, 0, 0, 0, 0].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(check_starttls_reply(&plain, 0x0102_0304).is_err());
    }

    #[test]
    fn record_boundaries_are_found_across_fragments_and_reads() {
        let mut marks = RecordMarks::default();
        assert!(marks.at_record_boundary());
        let mut stream = Vec::new();
        stream.extend_from_slice(&3u32.to_be_bytes()); // first fragment, 3 bytes
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&(LAST_FRAGMENT | 2).to_be_bytes()); // last fragment, 2 bytes
        stream.extend_from_slice(b"de");
        let mut boundaries = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            marks.feed(std::slice::from_ref(byte));
            if marks.at_record_boundary() {
                boundaries.push(i + 1);
            }
        }
        assert_eq!(boundaries, vec![stream.len()]);
        let mut marks = RecordMarks::default();
        marks.feed(&stream[..5]);
        assert_eq!(marks.to_fragment_end(), 2);
        marks.feed(&stream[5..9]);
        assert_eq!(marks.to_fragment_end(), 2);
    }
}
