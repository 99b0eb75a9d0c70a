//! The CA directory: `ca-cert.pem`, `ca-key.pem`, `index.toml`, `crl.pem` and the leaves it issued.
//! Every operation checks all its input first and writes last, each file atomically.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::{self, write_atomic};
use crate::index::{CertKind, Entry, Index, IndexError};
use crate::inspect::hex_upper;
use crate::pem::PemError;

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CRL: &str = "crl.pem";
/// The lock file that serialises changes to a CA directory.
pub const LOCK: &str = ".ca-tool.lock";

/// Held while a command changes the CA directory; released on drop.
#[derive(Debug)]
pub struct CaLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Default validity of the CA: 10 years.
pub const CA_DAYS: u32 = 3650;
/// Default validity of a leaf: 1 year.
pub const LEAF_DAYS: u32 = 365;
/// Default time until a CRL's nextUpdate.
pub const CRL_DAYS: u32 = 30;
/// Leaves start this long in the past, so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::minutes(5);

/// Why a ca-tool operation refused or failed. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no CA in {dir}: {CA_CERT} or {CA_KEY} is missing (run `ca-tool init --dir {dir}` first)", dir = .0.display())]
    NoCa(PathBuf),
    #[error("{0} already exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("invalid name {0:?}: a name must be a DNS label (letters, digits and '-', 1 to 63 characters, not starting or ending with '-')")]
    InvalidName(String),
    #[error("invalid --dns {0:?}: not a DNS name")]
    InvalidDns(String),
    #[error("no certificate named {name:?} in {index}", index = .dir.join(crate::index::FILE_NAME).display())]
    UnknownName { name: String, dir: PathBuf },
    #[error("{0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error("{key} does not match {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path}: another ca-tool is changing this CA right now (its lock is held); try again when it is done"
    )]
    Busy { path: PathBuf },
    #[error("{path}: cannot take the lock: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Sign { what: String, source: rcgen::Error },
}

/// What to put in a new leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub name: String,
    pub kind: CertKind,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
    /// Also write `NAME-stunnel.pem` (cert + key in one file).
    pub combined: bool,
    pub force: bool,
}

/// The files `issue` wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: Option<PathBuf>,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl CertKind {
    /// The certificate parameters of a leaf of this kind.
    fn params(
        self,
        req: &LeafRequest,
        serial: &[u8],
        now: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&req.name);
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(req.days));
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut sans = vec![dns_san(&req.name)?];
        match self {
            CertKind::Client => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            CertKind::Server => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                for dns in &req.dns {
                    if dns != &req.name {
                        sans.push(dns_san(dns)?);
                    }
                }
                sans.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
            }
        }
        params.subject_alt_names = sans;
        Ok(params)
    }
}

/// A CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
}

impl CaDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-cert.pem"))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-key.pem"))
    }

    pub fn combined_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-stunnel.pem"))
    }

    /// Creates the CA: key, self-signed certificate, empty index and an empty signed CRL.
    /// Takes the CA directory's lock (`.ca-tool.lock`, flock) for a command that changes it, so two
    /// ca-tool runs cannot interleave their index and CRL updates. Fails at once if it is held.
    pub fn lock(&self) -> Result<CaLock, CaError> {
        let path = self.path(LOCK);
        self.take_lock(path)
    }

    /// [`Self::lock`] for commands that need an existing CA: without one, nothing is created.
    pub fn lock_existing(&self) -> Result<CaLock, CaError> {
        if !self.path(CA_CERT).is_file() || !self.path(CA_KEY).is_file() {
            return Err(CaError::NoCa(self.dir.clone()));
        }
        self.lock()
    }

    fn take_lock(&self, path: PathBuf) -> Result<CaLock, CaError> {
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(CaError::NotADirectory { path: self.dir.clone() });
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| CaError::Lock { path: path.clone(), source })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| CaError::Lock { path: path.clone(), source })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(CaLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(CaError::Busy { path }),
            Err((_, e)) => Err(CaError::Lock { path, source: e.into() }),
        }
    }

    pub fn init(&self, common_name: &str, days: u32, force: bool) -> Result<PathBuf, CaError> {
        let (cert_path, key_path) = (self.path(CA_CERT), self.path(CA_KEY));
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(CaError::NotADirectory { path: self.dir.clone() });
        }
        for p in [&key_path, &cert_path] {
            if p.exists() && !force {
                return Err(CaError::Exists(p.clone()));
            }
        }
        let now = now_seconds();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(days));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = new_key()?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Sign { what: "CA certificate".into(), source })?;

        std::fs::create_dir_all(&self.dir)
            .map_err(|source| CaError::Io { path: self.dir.clone(), source })?;
        // Key first: a crash after it leaves a key without a certificate, which `init --force` redoes.
        self.write(&key_path, key.serialize_pem().as_bytes(), fsutil::SECRET, force)?;
        self.write(&cert_path, cert.pem().as_bytes(), fsutil::PUBLIC, force)?;
        // A new CA starts with a fresh index; a replaced CA's old leaves no longer chain to it.
        Index::default().save(&self.dir)?;
        self.sign_crl(CRL_DAYS)?;
        Ok(cert_path)
    }

    /// Issues a leaf certificate and its key.
    pub fn issue(&self, req: &LeafRequest) -> Result<Issued, CaError> {
        if !is_dns_label(&req.name) {
            return Err(CaError::InvalidName(req.name.clone()));
        }
        if let Some(bad) = req.dns.iter().find(|d| !is_dns_name(d)) {
            return Err(CaError::InvalidDns(bad.clone()));
        }
        let (issuer, _) = self.load_issuer()?;
        let mut index = Index::load(&self.dir)?;
        let (cert_path, key_path, combined_path) =
            (self.cert_path(&req.name), self.key_path(&req.name), self.combined_path(&req.name));
        let mut outputs = vec![&cert_path, &key_path];
        if req.combined {
            outputs.push(&combined_path);
        }
        for p in outputs {
            if p.exists() && !req.force {
                return Err(CaError::Exists(p.clone()));
            }
        }

        let serial = loop {
            let s = random_serial();
            let hex = hex_upper(&s);
            if !index.certs.iter().any(|e| e.serial == hex) {
                break s;
            }
        };
        let now = now_seconds();
        let params = req.kind.params(req, &serial, now)?;
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| CaError::Sign { what: format!("certificate for {}", req.name), source })?;

        // The index first: a crash after it leaves a known serial without files, which a later
        // `issue` simply writes, and `revoke` can still revoke.
        let serial_hex = hex_upper(&serial);
        index.certs.push(Entry {
            name: req.name.clone(),
            kind: req.kind,
            serial: serial_hex.clone(),
            not_before: params.not_before,
            not_after: params.not_after,
            revoked_at: None,
        });
        index.save(&self.dir)?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        self.write(&key_path, key_pem.as_bytes(), fsutil::SECRET, req.force)?;
        self.write(&cert_path, cert_pem.as_bytes(), fsutil::PUBLIC, req.force)?;
        let combined = if req.combined {
            let both = format!("{cert_pem}{key_pem}");
            self.write(&combined_path, both.as_bytes(), fsutil::SECRET, req.force)?;
            Some(combined_path)
        } else {
            None
        };
        Ok(Issued {
            cert: cert_path,
            key: key_path,
            combined,
            serial: serial_hex,
            not_after: params.not_after,
        })
    }

    /// Revokes every certificate issued under `name` and re-signs the CRL. Returns the serials.
    pub fn revoke(&self, name: &str, crl_days: u32) -> Result<Vec<String>, CaError> {
        self.load_issuer()?;
        let mut index = Index::load(&self.dir)?;
        if !index.certs.iter().any(|e| e.name == name) {
            return Err(CaError::UnknownName { name: name.to_owned(), dir: self.dir.clone() });
        }
        let now = now_seconds();
        let mut serials = Vec::new();
        for e in index.certs.iter_mut().filter(|e| e.name == name && e.revoked_at.is_none()) {
            e.revoked_at = Some(now);
            serials.push(e.serial.clone());
        }
        if serials.is_empty() {
            return Err(CaError::AlreadyRevoked(name.to_owned()));
        }
        // Index first (the source of truth), then the CRL; a crash between is mended by `ca-tool crl`.
        index.save(&self.dir)?;
        self.sign_crl(crl_days)?;
        Ok(serials)
    }

    /// Signs a fresh `crl.pem` from the index, with a new CRL number and nextUpdate.
    pub fn sign_crl(&self, days: u32) -> Result<PathBuf, CaError> {
        let (issuer, _) = self.load_issuer()?;
        let mut index = Index::load(&self.dir)?;
        let now = now_seconds();
        index.crl_number += 1;
        let revoked_certs = index
            .revoked()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex_decode(&e.serial)),
                revocation_time: e.revoked_at.unwrap_or(now),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer).map_err(|source| CaError::Sign { what: "CRL".into(), source })?;
        let pem = crl.pem().map_err(|source| CaError::Sign { what: "CRL".into(), source })?;
        index.save(&self.dir)?;
        let path = self.path(CRL);
        self.write(&path, pem.as_bytes(), fsutil::PUBLIC, true)?;
        Ok(path)
    }

    /// The index, for `list`; fails when the directory holds no CA.
    pub fn index(&self) -> Result<Index, CaError> {
        if !self.path(CA_CERT).exists() {
            return Err(CaError::NoCa(self.dir.clone()));
        }
        Ok(Index::load(&self.dir)?)
    }

    /// The CA as an rcgen issuer, after checking that key and certificate belong together.
    fn load_issuer(&self) -> Result<(Issuer<'static, KeyPair>, PathBuf), CaError> {
        let (cert_path, key_path) = (self.path(CA_CERT), self.path(CA_KEY));
        if !cert_path.exists() || !key_path.exists() {
            return Err(CaError::NoCa(self.dir.clone()));
        }
        let cert = crate::pem::load_certs(&cert_path)?.remove(0);
        let key_text = std::fs::read_to_string(&key_path)
            .map_err(|source| CaError::Io { path: key_path.clone(), source })?;
        let key = KeyPair::from_pem(&key_text).map_err(|source| CaError::Sign {
            what: format!("{}: not a usable private key", key_path.display()),
            source,
        })?;
        let info = x509_parser::parse_x509_certificate(&cert).map_err(|e| CaError::Sign {
            what: format!("{}: {e}", cert_path.display()),
            source: rcgen::Error::CouldNotParseCertificate,
        })?;
        if info.1.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(CaError::KeyMismatch { key: key_path, cert: cert_path });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|source| CaError::Sign { what: cert_path.display().to_string(), source })?;
        Ok((issuer, cert_path))
    }

    fn write(&self, path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
        write_atomic(path, contents, mode, replace).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::Exists(path.to_owned())
            } else {
                CaError::Io { path: path.to_owned(), source }
            }
        })
    }
}

/// Now, to the second: X.509 times have no fractions, and the index should say what the
/// certificate says.
fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn dns_san(name: &str) -> Result<SanType, CaError> {
    Ok(SanType::DnsName(name.to_owned().try_into().map_err(|_| CaError::InvalidDns(name.to_owned()))?))
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CaError::Sign { what: "key generation".into(), source })
}

/// 16 random bytes, positive and with a non-zero first byte, so the DER serial is always 16 bytes.
fn random_serial() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; 16];
    // SystemRandom reads the OS CSPRNG; it only fails if the OS has none, which is not a state
    // this tool can run in.
    ring::rand::SystemRandom::new().fill(&mut serial).expect("the OS random number generator failed");
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// A DNS label: letters, digits and '-', 1 to 63 characters, no leading or trailing '-'.
pub fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A DNS name: dot-separated labels, at most 253 characters.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.trim_end_matches('.').split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_dns_names_are_checked() {
        for good in ["r0", "earth", "f3s-storage-ha", "A1"] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-r0", "r0-", "r 0", "r0.lan", "r/0", "ä", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_name("f0.lan"));
        assert!(!is_dns_name("f0..lan"));
        assert!(!is_dns_name("f0_lan"));
    }

    #[test]
    fn serials_are_sixteen_positive_bytes_and_round_trip_through_hex() {
        let s = random_serial();
        assert!(s[0] >= 0x40 && s[0] < 0x80);
        assert_eq!(hex_decode(&hex_upper(&s)), s);
    }
}
