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

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::{self, write_atomic};
use crate::index::{CaOrigin, CaRecord, CertKind, Entry, Index, IndexError};
use crate::keys::{self, KeyError};
use crate::pem::PemError;
use crate::serial::{Serial, SerialError};

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
    #[error("invalid name {0:?}: a name must be a DNS name (labels of letters, digits and '-', 1 to 63 characters, not starting or ending with '-', joined by dots; at most 64 characters in all, no trailing dot)")]
    InvalidName(String),
    #[error("invalid --dns {0:?}: not a DNS name")]
    InvalidDns(String),
    #[error("no certificate named {name:?} in {index}", index = .dir.join(crate::index::FILE_NAME).display())]
    UnknownName { name: String, dir: PathBuf },
    #[error("{0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error("{name:?} has no serial {serial} in {index}", index = .dir.join(crate::index::FILE_NAME).display())]
    UnknownSerial { name: String, serial: Serial, dir: PathBuf },
    #[error("{name:?} has no certificate in force to renew (all revoked); issue a new one with `ca-tool issue {name}`")]
    NothingToRenew { name: String },
    #[error("{path}: holds serial {found}, but the certificate of {name:?} in force is serial {expected}; --keep-key needs the current certificate there")]
    StaleCertFile { path: PathBuf, name: String, found: Serial, expected: Serial },
    #[error("{path}: not a CA certificate: {why}")]
    NotACa { path: PathBuf, why: String },
    #[error("{path}: was not issued by the CA in {ca} ({why})", ca = .ca.display())]
    NotOurs { path: PathBuf, ca: PathBuf, why: String },
    #[error("{path}: {source}")]
    BadSerial { path: PathBuf, source: SerialError },
    #[error("{path}: the certificate has no CN and no DNS name to list it under")]
    NoName { path: PathBuf },
    #[error("{dir} already holds a different CA ({CA_CERT}); pass --force to replace it (its certificates will no longer verify)", dir = .0.display())]
    OtherCa(PathBuf),
    #[error("{path}: cannot use this CA's subject name: {why}")]
    Subject { path: PathBuf, why: String },
    #[error(transparent)]
    Key(#[from] KeyError),
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
    pub serial: Serial,
    pub not_after: OffsetDateTime,
    /// Serials of the same name this one superseded.
    pub superseded: Vec<Serial>,
}

impl CertKind {
    /// The certificate parameters of a leaf of this kind.
    fn params(
        self,
        req: &LeafRequest,
        serial: &Serial,
        now: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&req.name);
        params.serial_number = Some(SerialNumber::from_slice(serial.to_be_bytes()));
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

/// What to renew: the certificate in force for `name`, again, for another `days`.
#[derive(Debug, Clone)]
pub struct RenewRequest {
    pub name: String,
    pub days: u32,
    /// Certify the public key of the current certificate again instead of making a new key.
    pub keep_key: bool,
    /// Also write `NAME-stunnel.pem` (it is rewritten anyway when it exists).
    pub combined: bool,
}

/// What `import` adopted.
#[derive(Debug, Clone)]
pub struct Imported {
    pub subject: String,
    /// X.509 version of the CA certificate (1 for a v1 self-signed root).
    pub version: u32,
    /// (name, serial, file) of every legacy leaf added to the index.
    pub leaves: Vec<(String, Serial, PathBuf)>,
    /// Leaves whose serial the index already held.
    pub skipped: Vec<PathBuf>,
    pub crl: PathBuf,
}

/// The CA loaded for signing: the rcgen issuer plus what it needs from the certificate.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    /// How this CA names its key (its SubjectKeyIdentifier when it has one), for the
    /// AuthorityKeyIdentifier of the CRLs it signs.
    key_id: KeyIdMethod,
    /// Whether the CA certificate has a SubjectKeyIdentifier (a v1 root has none, and then its
    /// leaves carry no AuthorityKeyIdentifier either: there is nothing for it to match).
    has_ski: bool,
}

/// The public key of a leaf: new, or kept from the certificate being renewed.
enum LeafKey {
    New(Box<KeyPair>),
    Kept { spki: rcgen::SubjectPublicKeyInfo, private_pem: Option<String> },
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

    pub fn dir(&self) -> &Path {
        &self.dir
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
        self.create_private_dir().map_err(|source| CaError::Lock { path: path.clone(), source })?;
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

    /// Creates the CA directory (and missing parents) with mode 0700: it holds the CA key.
    fn create_private_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if self.dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new().recursive(true).mode(fsutil::PRIVATE_DIR).create(&self.dir)
    }

    /// Makes the CA directory 0700 (init and import: whatever it was before, it now holds a CA key).
    fn restrict_dir(&self) -> Result<(), CaError> {
        use std::os::unix::fs::PermissionsExt;
        self.create_private_dir().map_err(|source| CaError::Io { path: self.dir.clone(), source })?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(fsutil::PRIVATE_DIR))
            .map_err(|source| CaError::Io { path: self.dir.clone(), source })
    }

    /// Creates the CA: key, self-signed certificate, empty index and an empty signed CRL. The
    /// directory is made mode 0700.
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
        params.serial_number = Some(SerialNumber::from_slice(random_serial().to_be_bytes()));
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(days));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = new_key()?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Sign { what: "CA certificate".into(), source })?;

        self.restrict_dir()?;
        // Key first: a crash after it leaves a key without a certificate, which `init --force` redoes.
        self.write(&key_path, key.serialize_pem().as_bytes(), fsutil::SECRET, force)?;
        self.write(&cert_path, cert.pem().as_bytes(), fsutil::PUBLIC, force)?;
        // A new CA starts with a fresh index; a replaced CA's old leaves no longer chain to it.
        let index = Index {
            ca: Some(CaRecord {
                origin: CaOrigin::Init,
                subject: format!("CN={common_name}"),
                sha256: crate::inspect::sha256_hex(cert.der()),
                recorded_at: now,
                imported_from: None,
            }),
            ..Index::default()
        };
        index.save(&self.dir)?;
        self.sign_crl(CRL_DAYS)?;
        Ok(cert_path)
    }

    /// Adopts a CA made elsewhere (e.g. `openssl req -new -x509`): checks that `cert` is a CA and
    /// `key` its key, that this CA's name and key can be used to sign, copies both in (the key as
    /// PKCS#8, mode 0600), records it in the index, adds `leaves` it signed as `legacy` entries
    /// (`server_leaves` as server certificates when they carry no EKU saying so) and signs the CRL.
    ///
    /// Importing the same CA again only adds leaves; a different CA needs `force`.
    ///
    /// What counts as a CA: a v3 certificate with basicConstraints CA:TRUE (what `openssl req -x509`
    /// writes with the stock openssl.cnf), or a v1/v2 certificate that is self-signed (what it wrote
    /// with a config lacking `x509_extensions`). A v1 certificate cannot carry basicConstraints at
    /// all, and both OpenSSL and rustls take a v1 self-signed certificate as a trust anchor, so
    /// refusing it would strand exactly the setups `import` exists for; a v1 certificate signed by
    /// someone else is a leaf and is refused. With a keyUsage extension, keyCertSign and cRLSign
    /// must both be in it: without cRLSign no CRL this CA signs would be accepted, and ca-tool's
    /// revocation is CRLs.
    pub fn import(
        &self,
        cert: &Path,
        key: &Path,
        leaves: &[PathBuf],
        server_leaves: &[PathBuf],
        force: bool,
    ) -> Result<Imported, CaError> {
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(CaError::NotADirectory { path: self.dir.clone() });
        }
        // Everything is read and checked first.
        let cert_der = crate::pem::load_certs(cert)?.remove(0).to_vec();
        let (version, subject) = check_ca_cert(cert, &cert_der)?;
        let x = parse_cert(cert, &cert_der)?;
        let signing_key = keys::load_signing_key(key, x.public_key().raw)?;
        if signing_key.public_key_raw() != x.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch { key: key.to_owned(), cert: cert.to_owned() });
        }
        let key_pem = signing_key.serialize_pem();
        let loaded = LoadedCa::new(cert, cert_der.clone(), signing_key)?;
        loaded.check_can_sign(cert)?;

        let existing = self.path(CA_CERT);
        let same_ca = match crate::pem::load_certs(&existing) {
            Ok(certs) => certs.first().is_some_and(|c| c.as_ref() == cert_der.as_slice()),
            Err(_) => false,
        };
        if !same_ca && !force && (existing.exists() || self.path(CA_KEY).exists()) {
            return Err(CaError::OtherCa(self.dir.clone()));
        }
        let mut index = if same_ca { Index::load(&self.dir)? } else { Index::default() };
        let mut new_leaves = Vec::new();
        let mut skipped = Vec::new();
        let all_leaves = leaves.iter().map(|p| (p, false)).chain(server_leaves.iter().map(|p| (p, true)));
        for (path, server) in all_leaves {
            for der in crate::pem::load_certs(path)? {
                // A chain file may hold the CA itself: it is not a leaf.
                if der.as_ref() == cert_der.as_slice() {
                    continue;
                }
                let entry = legacy_entry(path, der.as_ref(), cert, &x, server)?;
                if index.by_serial(&entry.serial).is_some()
                    || new_leaves.iter().any(|(e, _): &(Entry, PathBuf)| e.serial == entry.serial)
                {
                    skipped.push(path.clone());
                    continue;
                }
                new_leaves.push((entry, path.clone()));
            }
        }

        // Then written: directory, key, certificate, index, CRL.
        self.restrict_dir()?;
        let now = now_seconds();
        self.write(&self.path(CA_KEY), key_pem.as_bytes(), fsutil::SECRET, true)?;
        self.write(
            &self.path(CA_CERT),
            pem_encode("CERTIFICATE", &cert_der).as_bytes(),
            fsutil::PUBLIC,
            true,
        )?;
        if !same_ca || index.ca.is_none() {
            index.ca = Some(CaRecord {
                origin: CaOrigin::Import,
                subject: subject.clone(),
                sha256: crate::inspect::sha256_hex(&cert_der),
                recorded_at: now,
                imported_from: Some(std::fs::canonicalize(cert).unwrap_or_else(|_| cert.to_owned())),
            });
        }
        let leaves_out =
            new_leaves.iter().map(|(e, p)| (e.name.clone(), e.serial.clone(), p.clone())).collect();
        index.certs.extend(new_leaves.into_iter().map(|(e, _)| e));
        index.save(&self.dir)?;
        let crl = self.sign_crl(CRL_DAYS)?;
        Ok(Imported { subject, version, leaves: leaves_out, skipped, crl })
    }

    /// Issues a leaf certificate and its key. Earlier certificates for the same name that are still
    /// in force are marked superseded (not revoked).
    pub fn issue(&self, req: &LeafRequest) -> Result<Issued, CaError> {
        self.issue_with(req, None)
    }

    fn issue_with(&self, req: &LeafRequest, kept: Option<LeafKey>) -> Result<Issued, CaError> {
        if !is_host_name(&req.name) {
            return Err(CaError::InvalidName(req.name.clone()));
        }
        if let Some(bad) = req.dns.iter().find(|d| !is_dns_name(d)) {
            return Err(CaError::InvalidDns(bad.clone()));
        }
        let ca = self.load_ca()?;
        let mut index = Index::load(&self.dir)?;
        let (cert_path, key_path, combined_path) =
            (self.cert_path(&req.name), self.key_path(&req.name), self.combined_path(&req.name));
        let writes_key = !matches!(kept, Some(LeafKey::Kept { .. }));
        let mut outputs = vec![&cert_path];
        if writes_key {
            outputs.push(&key_path);
        }
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
            if index.by_serial(&s).is_none() {
                break s;
            }
        };
        let now = now_seconds();
        let mut params = req.kind.params(req, &serial, now)?;
        params.use_authority_key_identifier_extension = ca.has_ski;
        let key = match kept {
            Some(k) => k,
            None => LeafKey::New(Box::new(new_key()?)),
        };
        let what = || format!("certificate for {}", req.name);
        let cert = match &key {
            LeafKey::New(k) => params.signed_by(k.as_ref(), &ca.issuer),
            LeafKey::Kept { spki, .. } => params.signed_by(spki, &ca.issuer),
        }
        .map_err(|source| CaError::Sign { what: what(), source })?;
        ca.check_issued(&self.path(CA_CERT), cert.der())?;

        // The index first: a crash after it leaves a known serial without files, which a later
        // `issue` simply writes, and `revoke` can still revoke.
        let mut superseded = Vec::new();
        for e in index.certs.iter_mut().filter(|e| e.name == req.name && e.is_current()) {
            e.superseded_at = Some(now);
            superseded.push(e.serial.clone());
        }
        index.certs.push(Entry {
            name: req.name.clone(),
            kind: req.kind,
            serial: serial.clone(),
            not_before: params.not_before,
            not_after: params.not_after,
            revoked_at: None,
            superseded_at: None,
            legacy: false,
            dns: if req.kind == CertKind::Server { req.dns.clone() } else { Vec::new() },
            ips: if req.kind == CertKind::Server { req.ips.clone() } else { Vec::new() },
        });
        index.save(&self.dir)?;
        let key_pem = match &key {
            LeafKey::New(k) => Some(k.serialize_pem()),
            LeafKey::Kept { private_pem, .. } => private_pem.clone(),
        };
        let cert_pem = cert.pem();
        if writes_key {
            if let Some(k) = &key_pem {
                self.write(&key_path, k.as_bytes(), fsutil::SECRET, req.force)?;
            }
        }
        self.write(&cert_path, cert_pem.as_bytes(), fsutil::PUBLIC, req.force)?;
        let combined = match (&key_pem, req.combined) {
            (Some(k), true) => {
                let both = format!("{cert_pem}{k}");
                self.write(&combined_path, both.as_bytes(), fsutil::SECRET, req.force)?;
                Some(combined_path)
            }
            _ => None,
        };
        Ok(Issued {
            cert: cert_path,
            key: key_path,
            combined,
            serial,
            not_after: params.not_after,
            superseded,
        })
    }

    /// Issues a fresh certificate for `name` with the kind and names of the one in force, and marks
    /// that one superseded. A new key unless `keep_key`; `NAME-stunnel.pem` is rewritten when it
    /// exists (or with `combined`).
    pub fn renew(&self, req: &RenewRequest) -> Result<Issued, CaError> {
        let index = Index::load(&self.dir)?;
        if !index.certs.iter().any(|e| e.name == req.name) {
            return Err(CaError::UnknownName { name: req.name.clone(), dir: self.dir.clone() });
        }
        let current = index
            .current(&req.name)
            .max_by_key(|e| e.not_before)
            .ok_or_else(|| CaError::NothingToRenew { name: req.name.clone() })?
            .clone();
        let combined = req.combined || self.combined_path(&req.name).exists();
        let kept = if req.keep_key {
            let cert_path = self.cert_path(&req.name);
            let der = crate::pem::load_certs(&cert_path)?.remove(0).to_vec();
            let x = parse_cert(&cert_path, &der)?;
            let found = Serial::from_der(x.raw_serial())
                .map_err(|source| CaError::BadSerial { path: cert_path.clone(), source })?;
            if found != current.serial {
                return Err(CaError::StaleCertFile {
                    path: cert_path,
                    name: req.name.clone(),
                    found,
                    expected: current.serial.clone(),
                });
            }
            let spki = rcgen::SubjectPublicKeyInfo::from_der(x.public_key().raw).map_err(|source| {
                CaError::Sign { what: format!("{}: public key", cert_path.display()), source }
            })?;
            let private_pem = if combined {
                let key_path = self.key_path(&req.name);
                let key = keys::load_signing_key(&key_path, x.public_key().raw)?;
                if key.public_key_raw() != x.public_key().subject_public_key.data.as_ref() {
                    return Err(CaError::KeyMismatch { key: key_path, cert: cert_path });
                }
                Some(key.serialize_pem())
            } else {
                None
            };
            Some(LeafKey::Kept { spki, private_pem })
        } else {
            None
        };
        let leaf = LeafRequest {
            name: req.name.clone(),
            kind: current.kind,
            dns: current.dns.clone(),
            ips: current.ips.clone(),
            days: req.days,
            combined,
            force: true,
        };
        self.issue_with(&leaf, kept)
    }

    /// Revokes every certificate issued under `name` and re-signs the CRL. Returns the serials.
    pub fn revoke(&self, name: &str, crl_days: u32) -> Result<Vec<Serial>, CaError> {
        self.revoke_serial(name, None, crl_days)
    }

    /// Revokes one serial of `name` (or, with `None`, every serial not yet revoked, superseded and
    /// legacy ones included) and re-signs the CRL. Returns the serials.
    pub fn revoke_serial(
        &self,
        name: &str,
        serial: Option<&Serial>,
        crl_days: u32,
    ) -> Result<Vec<Serial>, CaError> {
        self.load_ca()?;
        let mut index = Index::load(&self.dir)?;
        if !index.certs.iter().any(|e| e.name == name) {
            return Err(CaError::UnknownName { name: name.to_owned(), dir: self.dir.clone() });
        }
        if let Some(s) = serial {
            if !index.certs.iter().any(|e| e.name == name && e.serial == *s) {
                return Err(CaError::UnknownSerial {
                    name: name.to_owned(),
                    serial: s.clone(),
                    dir: self.dir.clone(),
                });
            }
        }
        let now = now_seconds();
        let mut serials = Vec::new();
        for e in index
            .certs
            .iter_mut()
            .filter(|e| e.name == name && e.revoked_at.is_none() && serial.is_none_or(|s| e.serial == *s))
        {
            e.revoked_at = Some(now);
            serials.push(e.serial.clone());
        }
        if serials.is_empty() {
            return Err(CaError::AlreadyRevoked(match serial {
                Some(s) => format!("{name} serial {s}"),
                None => name.to_owned(),
            }));
        }
        // Index first (the source of truth), then the CRL; a crash between is mended by `ca-tool crl`.
        index.save(&self.dir)?;
        self.sign_crl(crl_days)?;
        Ok(serials)
    }

    /// Signs a fresh `crl.pem` from the index, with a new CRL number and nextUpdate.
    pub fn sign_crl(&self, days: u32) -> Result<PathBuf, CaError> {
        let ca = self.load_ca()?;
        let mut index = Index::load(&self.dir)?;
        let now = now_seconds();
        index.crl_number += 1;
        let revoked_certs = index
            .revoked()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(e.serial.to_be_bytes()),
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
            key_identifier_method: ca.key_id.clone(),
        };
        let crl =
            params.signed_by(&ca.issuer).map_err(|source| CaError::Sign { what: "CRL".into(), source })?;
        let pem = crl.pem().map_err(|source| CaError::Sign { what: "CRL".into(), source })?;
        index.crl_signed_at = Some(now);
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

    /// The CA for signing, after checking that key and certificate belong together.
    fn load_ca(&self) -> Result<LoadedCa, CaError> {
        let (cert_path, key_path) = (self.path(CA_CERT), self.path(CA_KEY));
        if !cert_path.exists() || !key_path.exists() {
            return Err(CaError::NoCa(self.dir.clone()));
        }
        let cert = crate::pem::load_certs(&cert_path)?.remove(0).to_vec();
        let x = parse_cert(&cert_path, &cert)?;
        let key = keys::load_signing_key(&key_path, x.public_key().raw)?;
        if key.public_key_raw() != x.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch { key: key_path, cert: cert_path });
        }
        LoadedCa::new(&cert_path, cert, key)
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

impl LoadedCa {
    fn new(cert_path: &Path, cert_der: Vec<u8>, key: KeyPair) -> Result<Self, CaError> {
        let x = parse_cert(cert_path, &cert_der)?;
        // rcgen rebuilds the issuer name from its parts and panics on an empty RDN: refuse first.
        if x.subject().iter().any(|rdn| rdn.iter().next().is_none()) {
            return Err(CaError::Subject { path: cert_path.to_owned(), why: "it has an empty RDN".into() });
        }
        let ski = x.iter_extensions().find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key).map_err(|e| CaError::Subject {
                path: cert_path.to_owned(),
                why: format!("{e} (multi-valued RDNs are not supported)"),
            })?;
        let has_ski = ski.is_some();
        let key_id = ski.map(KeyIdMethod::PreSpecified).unwrap_or(KeyIdMethod::Sha256);
        Ok(Self { issuer, cert_der, key_id, has_ski })
    }

    /// A certificate we signed must name the CA exactly as the CA names itself (chains are built by
    /// comparing these bytes) and verify under its key. rcgen re-encodes the name from its parts, so
    /// a CA subject it cannot reproduce byte for byte (e.g. the same attribute twice) is caught here.
    fn check_issued(&self, ca_path: &Path, leaf: &[u8]) -> Result<(), CaError> {
        let ca = parse_cert(ca_path, &self.cert_der)?;
        let (_, leaf) = X509Certificate::from_der(leaf)
            .map_err(|e| CaError::Subject { path: ca_path.to_owned(), why: e.to_string() })?;
        if leaf.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CaError::Subject {
                path: ca_path.to_owned(),
                why: format!(
                    "ca-tool cannot reproduce {:?} byte for byte (repeated attributes?)",
                    ca.subject().to_string()
                ),
            });
        }
        leaf.verify_signature(Some(ca.public_key())).map_err(|e| CaError::Subject {
            path: ca_path.to_owned(),
            why: format!("a certificate signed with this key does not verify ({e})"),
        })
    }

    /// Signs a throw-away leaf and checks it (import: fail before anything is written).
    fn check_can_sign(&self, ca_path: &Path) -> Result<(), CaError> {
        let req = LeafRequest {
            name: "ca-tool-import-check".into(),
            kind: CertKind::Client,
            dns: vec![],
            ips: vec![],
            days: 1,
            combined: false,
            force: false,
        };
        let mut params = CertKind::Client.params(&req, &random_serial(), now_seconds())?;
        params.use_authority_key_identifier_extension = self.has_ski;
        let cert = params.signed_by(&new_key()?, &self.issuer).map_err(|source| CaError::Sign {
            what: format!("{}: test signature", ca_path.display()),
            source,
        })?;
        self.check_issued(ca_path, cert.der())
    }
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der).map(|(_, x)| x).map_err(|e| CaError::NotACa {
        path: path.to_owned(),
        why: format!("not a valid X.509 certificate ({e})"),
    })
}

/// Checks that a certificate can be a CA for `import` (see [`CaDir::import`]). Returns its X.509
/// version and subject.
fn check_ca_cert(path: &Path, der: &[u8]) -> Result<(u32, String), CaError> {
    let x = parse_cert(path, der)?;
    let not_ca = |why: &str| CaError::NotACa { path: path.to_owned(), why: why.to_owned() };
    let version = x.version().0 + 1;
    let self_issued = x.subject().as_raw() == x.issuer().as_raw();
    if version >= 3 {
        match x.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => return Err(not_ca("basicConstraints CA:TRUE is missing (a leaf certificate?)")),
            Err(e) => return Err(not_ca(&format!("unreadable basicConstraints ({e})"))),
        }
    } else if !self_issued {
        return Err(not_ca("an X.509 v1 certificate issued by someone else is a leaf, not a CA"));
    }
    if self_issued && x.verify_signature(None).is_err() {
        return Err(not_ca("its self-signature does not verify"));
    }
    if let Ok(Some(ku)) = x.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(not_ca("its keyUsage lacks keyCertSign"));
        }
        if !ku.value.crl_sign() {
            return Err(not_ca("its keyUsage lacks cRLSign, so no CRL it signs would be accepted"));
        }
    }
    let not_after = x.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(not_ca(&format!("it expired on {}", crate::inspect::format_time(not_after))));
    }
    Ok((version, x.subject().to_string()))
}

/// The index entry of a leaf made elsewhere, after checking this CA signed it.
fn legacy_entry(
    path: &Path,
    der: &[u8],
    ca_path: &Path,
    ca: &X509Certificate<'_>,
    server: bool,
) -> Result<Entry, CaError> {
    let (_, x) = X509Certificate::from_der(der).map_err(|e| CaError::NotOurs {
        path: path.to_owned(),
        ca: ca_path.to_owned(),
        why: format!("not a valid X.509 certificate: {e}"),
    })?;
    let not_ours = |why: String| CaError::NotOurs { path: path.to_owned(), ca: ca_path.to_owned(), why };
    if x.issuer().as_raw() != ca.subject().as_raw() {
        return Err(not_ours(format!("its issuer is {}", x.issuer())));
    }
    x.verify_signature(Some(ca.public_key()))
        .map_err(|_| not_ours("its signature does not verify under this CA's key".into()))?;
    let info = crate::inspect::CertInfo::parse(der).map_err(|e| not_ours(e.to_string()))?;
    let name = info.names().next().ok_or_else(|| CaError::NoName { path: path.to_owned() })?.to_owned();
    let eku = &info.extended_key_usages;
    let kind = if eku.contains(&"serverAuth") && !eku.contains(&"clientAuth") {
        CertKind::Server
    } else if eku.contains(&"clientAuth") && !eku.contains(&"serverAuth") {
        CertKind::Client
    } else if server {
        CertKind::Server
    } else {
        CertKind::Client
    };
    let dns = info.dns_names.iter().filter(|d| **d != name).cloned().collect();
    let serial = Serial::from_der(x.raw_serial())
        .map_err(|source| CaError::BadSerial { path: path.to_owned(), source })?;
    Ok(Entry {
        name,
        kind,
        serial,
        not_before: info.not_before,
        not_after: info.not_after,
        revoked_at: None,
        superseded_at: None,
        legacy: true,
        dns: if kind == CertKind::Server { dns } else { Vec::new() },
        ips: if kind == CertKind::Server { info.ip_addresses } else { Vec::new() },
    })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
fn random_serial() -> Serial {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; 16];
    // SystemRandom reads the OS CSPRNG; it only fails if the OS has none, which is not a state
    // this tool can run in.
    ring::rand::SystemRandom::new().fill(&mut serial).expect("the OS random number generator failed");
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Serial::from_be_bytes(&serial)
}

/// A DNS label: letters, digits and '-', 1 to 63 characters, no leading or trailing '-'.
pub fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A certificate name (CN, first DNS SAN and file name stem): a DNS name without a trailing dot,
/// at most 64 characters (the X.509 upper bound of a CN), e.g. `r0` or `r0.lan`.
pub fn is_host_name(name: &str) -> bool {
    name.len() <= 64 && !name.ends_with('.') && is_dns_name(name)
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
        for good in ["r0", "r0.lan", "f3s-storage-ha.example.org"] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in ["r0.", ".r0", "r0..lan", "r0_lan", "r0/x", "../r0", &"a.".repeat(40)] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert!(!is_dns_name("f0..lan"));
        assert!(!is_dns_name("f0_lan"));
    }

    #[test]
    fn serials_are_sixteen_positive_bytes_and_round_trip_through_hex() {
        let s = random_serial();
        let bytes = s.to_be_bytes();
        assert!(bytes.len() == 16 && bytes[0] >= 0x40 && bytes[0] < 0x80, "{s}");
        assert_eq!(s.to_string().parse::<Serial>(), Ok(s));
    }
}
