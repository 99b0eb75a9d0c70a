//! Loading certificates, private keys and CRLs from PEM files: the one loader both `ca-tool` and
//! `nfs-tls-proxy` use. Every error names the file and says what is wrong with it.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A PEM file that could not be used, with the path it came from.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct PemError {
    pub path: PathBuf,
    pub problem: PemProblem,
}

/// What is wrong with a PEM file.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error("cannot read file: {0}")]
    Read(#[source] std::io::Error),
    #[error("not valid PEM: {0}")]
    Syntax(String),
    #[error("contains no {0}")]
    Missing(&'static str),
    #[error("contains more than one private key")]
    SeveralKeys,
}

impl PemError {
    fn new(path: &Path, problem: PemProblem) -> Self {
        Self { path: path.to_owned(), problem }
    }
}

/// One section of a PEM file, whatever its kind.
#[derive(Debug)]
pub struct Section {
    pub kind: SectionKind,
    pub der: Vec<u8>,
}

impl PemObject for Section {
    fn from_pem(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        Some(Self { kind, der })
    }
}

/// Reads every PEM section of a file, in order.
pub fn read_sections(path: &Path) -> Result<Vec<Section>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| PemError::new(path, PemProblem::Read(e)))?;
    parse_sections(&bytes).map_err(|problem| PemError::new(path, problem))
}

/// Parses every PEM section of a buffer, in order.
pub fn parse_sections(bytes: &[u8]) -> Result<Vec<Section>, PemProblem> {
    Section::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| PemProblem::Syntax(e.to_string()))
}

/// All certificates in a file (a chain: leaf first), at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = read_sections(path)?
        .into_iter()
        .filter(|s| s.kind == SectionKind::Certificate)
        .map(|s| CertificateDer::from(s.der))
        .collect();
    if certs.is_empty() {
        return Err(PemError::new(path, PemProblem::Missing("CERTIFICATE")));
    }
    Ok(certs)
}

/// The one private key in a file (PKCS#8, SEC1 or PKCS#1). A file may also hold certificates, as
/// stunnel's combined PEM does.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let mut keys = read_sections(path)?.into_iter().filter_map(|s| match s.kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(s.der.into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(s.der.into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(s.der.into())),
        _ => None,
    });
    let key = keys.next().ok_or_else(|| PemError::new(path, PemProblem::Missing("PRIVATE KEY")))?;
    if keys.next().is_some() {
        return Err(PemError::new(path, PemProblem::SeveralKeys));
    }
    Ok(key)
}

/// Whether a file holds a private key (used to accept stunnel's combined cert+key PEM).
pub fn has_private_key(path: &Path) -> Result<bool, PemError> {
    Ok(read_sections(path)?.iter().any(|s| {
        matches!(s.kind, SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey)
    }))
}

/// All CRLs in a file, at least one.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let crls: Vec<_> = read_sections(path)?
        .into_iter()
        .filter(|s| s.kind == SectionKind::Crl)
        .map(|s| CertificateRevocationListDer::from(s.der))
        .collect();
    if crls.is_empty() {
        return Err(PemError::new(path, PemProblem::Missing("X509 CRL")));
    }
    Ok(crls)
}
