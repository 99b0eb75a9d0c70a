//! The CA directory's index (`index.toml`): what the CA issued and revoked. It is the source of
//! truth: `list` and `revoke` read it, and the CRL is always re-signed from it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fsutil;
use crate::serial::Serial;

pub const FILE_NAME: &str = "index.toml";

/// Client or server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    Client,
    Server,
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertKind::Client => "client",
            CertKind::Server => "server",
        })
    }
}

/// One certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub kind: CertKind,
    /// Written as `openssl x509 -serial` prints it; read in that form or the one older ca-tool
    /// versions wrote (a leading `00` before a serial whose top bit is set).
    pub serial: Serial,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<OffsetDateTime>,
    /// When a newer certificate for the same name replaced this one (`renew`, `issue --force`). A
    /// superseded certificate is not revoked: it keeps working until it expires or is revoked.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<OffsetDateTime>,
    /// Made elsewhere (by openssl) and adopted with `ca-tool import --leaves`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
    /// DNS SANs beyond the name, and IP SANs, so `renew` can repeat them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
}

/// Where a certificate stands, as `list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In force: not revoked, not superseded, not expired.
    Valid,
    /// Replaced by a newer certificate for the same name, not revoked (not in the CRL).
    Superseded(OffsetDateTime),
    Revoked(OffsetDateTime),
    Expired,
}

impl Entry {
    pub fn status(&self, now: OffsetDateTime) -> Status {
        match (self.revoked_at, self.superseded_at) {
            (Some(at), _) => Status::Revoked(at),
            (None, Some(at)) => Status::Superseded(at),
            (None, None) if self.not_after <= now => Status::Expired,
            (None, None) => Status::Valid,
        }
    }

    /// The certificate a host should be using now: neither revoked nor superseded (it may have
    /// expired).
    pub fn is_current(&self) -> bool {
        self.revoked_at.is_none() && self.superseded_at.is_none()
    }
}

/// How the CA came to be in this directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaOrigin {
    /// `ca-tool init`
    Init,
    /// `ca-tool import`: made elsewhere, e.g. `openssl req -new -x509`.
    Import,
}

/// The CA itself, as recorded by `init` or `import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRecord {
    pub origin: CaOrigin,
    pub subject: String,
    /// SHA-256 of the CA certificate's DER, hex, colon-separated.
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// The file it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<PathBuf>,
}

/// The whole index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The number of the last CRL signed; the next one gets this plus one.
    #[serde(default)]
    pub crl_number: u64,
    /// When the current crl.pem was signed (hosts' copies older than this are stale).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub crl_signed_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaRecord>,
    #[serde(default, rename = "cert")]
    pub certs: Vec<Entry>,
}

/// The index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid index: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Index {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the index of `dir`; a missing index is an empty one (a CA made before the index
    /// existed, or a crash between the CA files and the index).
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(IndexError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| IndexError::Parse { path, detail: e.message().to_owned() })
    }

    pub fn save(&self, dir: &Path) -> Result<(), IndexError> {
        let path = Self::path(dir);
        let body = toml::to_string(self)
            .map_err(|e| IndexError::Parse { path: path.clone(), detail: e.to_string() })?;
        let text = format!(
            "# ca-tool index: every certificate this CA issued, and which are revoked.\n\
             # crl.pem is signed from this file (`ca-tool crl`).\n\n{body}"
        );
        fsutil::write_atomic(&path, text.as_bytes(), fsutil::PUBLIC, true)
            .map_err(|source| IndexError::Write { path, source })
    }

    pub fn revoked(&self) -> impl Iterator<Item = &Entry> {
        self.certs.iter().filter(|e| e.revoked_at.is_some())
    }

    /// The current (not revoked, not superseded) entries for `name`, oldest first.
    pub fn current(&self, name: &str) -> impl Iterator<Item = &Entry> {
        let name = name.to_owned();
        self.certs.iter().filter(move |e| e.name == name && e.is_current())
    }

    pub fn by_serial(&self, serial: &Serial) -> Option<&Entry> {
        self.certs.iter().find(|e| e.serial == *serial)
    }
}
