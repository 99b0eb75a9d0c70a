//! Kernel TLS: after rustls' handshake, the socket itself seals and opens the records (Linux's `tls`
//! upper-layer protocol). What is here is the system interface only; what to do with it (when to
//! use it, alerts, key updates) is the TLS layer's (`tls/ktls.rs`).
//!
//! - [`enable`]: attach the `tls` ULP and install one direction's traffic key and sequence number
//!   (nix's `TcpUlp`, `TcpTlsTx`/`TcpTlsRx`).
//! - [`recv_record`]: read one record that is not application data (an alert, a post-handshake
//!   message), with its content type from the `TLS_GET_RECORD_TYPE` control message.
//! - [`send_record`]: send a record of a given content type (`TLS_SET_RECORD_TYPE`).
//! - [`Pipe`] and [`splice`]: move bytes between the two sockets through a pipe, never through
//!   user space (splice(2)).
//!
//! FreeBSD has kernel TLS too (`TCP_TXTLS_ENABLE`/`TCP_RXTLS_ENABLE`, no splice); it is not wired up:
//! every function here reports [`io::ErrorKind::Unsupported`] there and tunnels use rustls.

use std::io;
use std::os::fd::BorrowedFd;

use rustls::ProtocolVersion;

/// Which half of the connection a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Tx,
    Rx,
}

/// TLS record content types (RFC 8446 5.1).
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(not(target_os = "linux"))]
pub(crate) use other::*;

#[cfg(target_os = "linux")]
mod linux {
    #![allow(unsafe_code)]

    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

    use nix::fcntl::{OFlag, SpliceFFlags};
    use nix::sys::socket::sockopt::{TcpTlsRx, TcpTlsTx, TcpUlp, TlsCryptoInfo};
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, TlsGetRecordType};
    use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

    use super::{Cipher, Direction};

    /// Attaches the `tls` ULP to a connected socket. `ENOENT`: the kernel has no `tls` module.
    pub(crate) fn attach(fd: BorrowedFd<'_>) -> io::Result<()> {
        nix::sys::socket::setsockopt(&fd, TcpUlp::default(), b"tls").map_err(io::Error::from)
    }

    /// Installs the key for one direction (the ULP must be attached).
    pub(crate) fn enable(
        fd: BorrowedFd<'_>,
        direction: Direction,
        version: ProtocolVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<()> {
        set(fd, direction, &crypto_info(direction, version, seq, secrets)?)
    }

    /// Installs zero keys of `cipher` for one direction: whether the kernel can (see [`super::probe`]).
    pub(crate) fn enable_zero(
        fd: BorrowedFd<'_>,
        direction: Direction,
        version: ProtocolVersion,
        cipher: Cipher,
    ) -> io::Result<()> {
        let version = version_number(version)?;
        let info = match cipher {
            Cipher::Aes128Gcm => TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_128 },
                iv: [0; 8],
                key: [0; 16],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Aes256Gcm => TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_256 },
                iv: [0; 8],
                key: [0; 32],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Chacha20Poly1305 => {
                TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305 },
                    iv: [0; 12],
                    key: [0; 32],
                    salt: [],
                    rec_seq: [0; 8],
                })
            }
        };
        set(fd, direction, &info)
    }

    fn set(fd: BorrowedFd<'_>, direction: Direction, info: &TlsCryptoInfo) -> io::Result<()> {
        let set = match direction {
            Direction::Tx => nix::sys::socket::setsockopt(&fd, TcpTlsTx, info),
            Direction::Rx => nix::sys::socket::setsockopt(&fd, TcpTlsRx, info),
        };
        set.map_err(io::Error::from)
    }

    fn version_number(version: ProtocolVersion) -> io::Result<u16> {
        match version {
            ProtocolVersion::TLSv1_2 => Ok(libc::TLS_1_2_VERSION),
            ProtocolVersion::TLSv1_3 => Ok(libc::TLS_1_3_VERSION),
            other => Err(unsupported(format!("{other:?}"))),
        }
    }

    /// The kernel's key material for one direction. `seq`: the sequence number of the next record.
    ///
    /// Nonces (RFC 8446 5.3, RFC 5288 3, RFC 7905 2): TLS 1.3 and ChaCha20-Poly1305 form each record's
    /// nonce as the 12-byte iv XOR the sequence number, rustls and the kernel alike, so the kernel
    /// continues where rustls stopped. TLS 1.2 AES-GCM does not: rustls sealed record `s` with
    /// `salt || explicit ^ s`, while the kernel seals with `salt || iv` and adds one to `iv` after each
    /// record. Handing it `iv = explicit` would repeat the nonce of rustls' Finished (record 0) under
    /// the same key, which breaks GCM; so it gets `explicit + seq` and counts up from there. That is
    /// safe while rustls has sealed only record 0 (the Finished: `seq` is 1), which is always the case
    /// after a TLS 1.2 handshake; anything else is refused. (On receive the explicit nonce comes with
    /// each record and `iv` is not used.)
    pub(super) fn crypto_info(
        direction: Direction,
        version: ProtocolVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<TlsCryptoInfo> {
        let tls12 = version == ProtocolVersion::TLSv1_2;
        let version = version_number(version)?;
        let rec_seq = seq.to_be_bytes();
        let bad = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("kTLS: {what} of the wrong size"))
        };
        // The 12-byte AES-GCM nonce base is the kernel's 4-byte salt and 8-byte iv (for TLS 1.2 too:
        // rustls hands out the implicit salt and explicit part together).
        let split = |iv: &[u8]| -> io::Result<([u8; 4], [u8; 8])> {
            let salt = iv.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| bad("iv"))?;
            let rest = iv.get(4..).and_then(|s| s.try_into().ok()).ok_or_else(|| bad("iv"))?;
            Ok((salt, rest))
        };
        Ok(match secrets {
            // rustls may name a TLS 1.2 AES-256-GCM key Aes128Gcm: the key length decides.
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let (salt, mut iv) = split(iv.as_ref())?;
                if tls12 && direction == Direction::Tx {
                    if seq > 1 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "kTLS: TLS 1.2 AES-GCM after {seq} records sealed by rustls (only 1 is safe)"
                            ),
                        ));
                    }
                    iv = u64::from_be_bytes(iv).wrapping_add(seq).to_be_bytes();
                }
                match key.as_ref().len() {
                    16 => TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                        info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_128 },
                        iv,
                        key: key.as_ref().try_into().map_err(|_| bad("key"))?,
                        salt,
                        rec_seq,
                    }),
                    32 => TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                        info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_256 },
                        iv,
                        key: key.as_ref().try_into().map_err(|_| bad("key"))?,
                        salt,
                        rec_seq,
                    }),
                    _ => return Err(bad("AES-GCM key")),
                }
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305 },
                    iv: iv.as_ref().try_into().map_err(|_| bad("iv"))?,
                    key: key.as_ref().try_into().map_err(|_| bad("key"))?,
                    salt: [],
                    rec_seq,
                })
            }
            _ => return Err(unsupported("this cipher suite".to_owned())),
        })
    }

    fn unsupported(what: String) -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, format!("kTLS: {what} is not supported"))
    }

    /// Reads the next record into `buf` (which must hold a whole record, 2^14 bytes): its content
    /// type and length. Application data comes without a control message.
    pub(crate) fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(u8, usize)> {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(u8);
        let msg = nix::sys::socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut kind = super::APPLICATION_DATA;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::TlsGetRecordType(t) = cmsg {
                kind = match t {
                    TlsGetRecordType::ChangeCipherSpec => 20,
                    TlsGetRecordType::Alert => super::ALERT,
                    TlsGetRecordType::Handshake => super::HANDSHAKE,
                    TlsGetRecordType::ApplicationData => super::APPLICATION_DATA,
                    TlsGetRecordType::Unknown(other) => other,
                    _ => 0,
                };
            }
        }
        Ok((kind, msg.bytes))
    }

    /// Sends `data` as one record of content type `kind` (an alert, a KeyUpdate).
    pub(crate) fn send_record(fd: BorrowedFd<'_>, kind: u8, data: &[u8]) -> io::Result<()> {
        // One control message carrying one byte; the buffer is u64-aligned as cmsghdr requires.
        let mut control = [0u64; 4];
        let space = unsafe { libc::CMSG_SPACE(1) } as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        // SAFETY: msghdr is plain data; every pointer in it refers to locals that outlive sendmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes of zeroed, aligned memory, enough for one
        // header and one byte of data (checked above).
        let sent = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = kind;
            libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        match sent {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::ErrorKind::WriteZero.into()),
            _ => Ok(()),
        }
    }

    /// Bytes TCP holds for the socket that the peer has not acknowledged (SIOCOUTQ).
    pub(crate) fn unsent(fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which points at `n`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Whether the peer's FIN has arrived (TCP_INFO's state): tells the end of the stream from an
    /// empty record, which splice(2) reports alike (0 bytes).
    pub(crate) fn peer_finished(fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let got = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        // include/net/tcp_states.h: every state after the peer's FIN.
        const TIME_WAIT: u8 = 6;
        const CLOSE: u8 = 7;
        const CLOSE_WAIT: u8 = 8;
        const LAST_ACK: u8 = 9;
        const CLOSING: u8 = 11;
        Ok(matches!(info.tcpi_state, TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING))
    }

    /// A pipe for [`splice`], non-blocking at both ends.
    #[derive(Debug)]
    pub(crate) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes in it.
        pub(crate) held: usize,
    }

    impl Pipe {
        /// A pipe of the kernel's default size (64 KiB, 16 pages).
        pub(crate) fn new() -> io::Result<Self> {
            let (read, write) =
                nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            Ok(Self { read, write, held: 0 })
        }

        /// Moves up to `len` bytes from the socket `from` into the pipe.
        pub(crate) fn fill_from(&mut self, from: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
            let n = splice(from, self.write_end(), len)?;
            self.held += n;
            Ok(n)
        }

        /// Moves what the pipe holds (as much as `to` takes) into the socket `to`.
        pub(crate) fn drain_to(&mut self, to: BorrowedFd<'_>) -> io::Result<usize> {
            let n = splice(self.read_end(), to, self.held)?;
            self.held -= n;
            Ok(n)
        }

        fn read_end(&self) -> BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.read.as_fd()
        }

        fn write_end(&self) -> BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.write.as_fd()
        }
    }

    /// splice(2), never blocking, moving pages where it can.
    fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        nix::fcntl::splice(
            from,
            None,
            to,
            None,
            len,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        )
        .map_err(io::Error::from)
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::io;
    use std::os::fd::BorrowedFd;

    use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

    use super::{Cipher, Direction};

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "kernel TLS is only used on Linux")
    }

    pub(crate) fn attach(_fd: BorrowedFd<'_>) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn enable(
        _fd: BorrowedFd<'_>,
        _direction: Direction,
        _version: ProtocolVersion,
        _seq: u64,
        _secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn enable_zero(
        _fd: BorrowedFd<'_>,
        _direction: Direction,
        _version: ProtocolVersion,
        _cipher: Cipher,
    ) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn recv_record(_fd: BorrowedFd<'_>, _buf: &mut [u8]) -> io::Result<(u8, usize)> {
        Err(unsupported())
    }

    pub(crate) fn unsent(_fd: BorrowedFd<'_>) -> io::Result<usize> {
        Err(unsupported())
    }

    pub(crate) fn peer_finished(_fd: BorrowedFd<'_>) -> io::Result<bool> {
        Err(unsupported())
    }

    pub(crate) fn send_record(_fd: BorrowedFd<'_>, _kind: u8, _data: &[u8]) -> io::Result<()> {
        Err(unsupported())
    }

    #[derive(Debug)]
    pub(crate) struct Pipe {
        pub(crate) held: usize,
    }

    impl Pipe {
        pub(crate) fn new() -> io::Result<Self> {
            Err(unsupported())
        }

        pub(crate) fn fill_from(&mut self, _from: BorrowedFd<'_>, _len: usize) -> io::Result<usize> {
            Err(unsupported())
        }

        pub(crate) fn drain_to(&mut self, _to: BorrowedFd<'_>) -> io::Result<usize> {
            Err(unsupported())
        }
    }
}

/// The record protections the kernel may take over (RFC 8446 B.4 and RFC 5289/7905's ECDHE suites).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    pub(crate) const ALL: [Cipher; 3] = [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::Chacha20Poly1305];
}

/// Whether this kernel can take over records of `cipher` under `version`: attaches the ULP to `fd`
/// (a connected socket nobody uses) and installs zero keys in both directions.
pub(crate) fn probe(fd: BorrowedFd<'_>, version: ProtocolVersion, cipher: Cipher) -> io::Result<()> {
    attach(fd)?;
    enable_zero(fd, Direction::Tx, version, cipher)?;
    enable_zero(fd, Direction::Rx, version, cipher)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use nix::sys::socket::sockopt::TlsCryptoInfo;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

    use super::linux::crypto_info;
    use super::Direction;

    const IV: [u8; 12] = [0xa1, 0xa2, 0xa3, 0xa4, 0, 0, 0, 0, 0, 0, 0x12, 0x35];

    fn gcm() -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm { key: AeadKey::from([7; 32]), iv: Iv::new(IV) }
    }

    /// (salt, iv, rec_seq) as the kernel gets them.
    fn fields(info: TlsCryptoInfo) -> ([u8; 4], [u8; 8], [u8; 8]) {
        match info {
            TlsCryptoInfo::Aes256Gcm(i) => (i.salt, i.iv, i.rec_seq),
            other => panic!("expected AES-256-GCM, got {other:?}"),
        }
    }

    #[test]
    fn the_kernels_first_tls12_gcm_nonce_is_not_the_one_rustls_sealed_the_finished_with() {
        let (salt, iv, _) =
            fields(crypto_info(Direction::Tx, ProtocolVersion::TLSv1_2, 1, &gcm()).expect("crypto info"));
        // rustls sealed record 0 with salt || explicit ^ 0; the kernel's first record uses salt || iv.
        assert_eq!(salt, IV[..4]);
        assert_ne!(iv, IV[4..], "the kernel would repeat the Finished's nonce");
        assert_eq!(u64::from_be_bytes(iv), u64::from_be_bytes(IV[4..].try_into().expect("8 bytes")) + 1);
        // Counting up from there, it stays clear of it for 2^64 - 1 records.
        assert!(crypto_info(Direction::Tx, ProtocolVersion::TLSv1_2, 2, &gcm()).is_err());
    }

    #[test]
    fn tls13_keys_go_to_the_kernel_as_rustls_uses_them_with_the_next_sequence_number() {
        let (salt, iv, rec_seq) =
            fields(crypto_info(Direction::Tx, ProtocolVersion::TLSv1_3, 5, &gcm()).expect("crypto info"));
        // TLS 1.3: nonce = iv ^ seq on both sides, so the iv is passed as it is.
        assert_eq!((salt.as_slice(), iv.as_slice()), (&IV[..4], &IV[4..]));
        assert_eq!(rec_seq, 5u64.to_be_bytes());
        let (_, rx_iv, _) =
            fields(crypto_info(Direction::Rx, ProtocolVersion::TLSv1_2, 1, &gcm()).expect("crypto info"));
        assert_eq!(rx_iv, IV[4..], "receive: the explicit nonce comes with each record");
    }
}
