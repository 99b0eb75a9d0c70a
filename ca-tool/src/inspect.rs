//! Reading a certificate's identity and validity, and a CRL's contents, via x509-parser: what
//! `ca-tool show`/`list` print and what the proxy uses for peer identity and expiry warnings.

use std::fmt;
use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::serial::der_text;

/// A DER object x509-parser could not read.
#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 {what}: {detail}")]
pub struct ParseError {
    what: &'static str,
    detail: String,
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// X.509 version as people say it: 1 or 3 (`openssl x509 -req` without extensions makes 1).
    pub version: u32,
    pub subject: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub issuer: String,
    /// As `openssl x509 -serial` prints it ([`crate::serial`]): `A9A654...`, no `00` sign byte.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// Issuer and subject are the same name (a root, or a self-signed leaf).
    pub self_issued: bool,
    pub key_usages: Vec<&'static str>,
    pub extended_key_usages: Vec<&'static str>,
    /// SHA-256 of the DER, hex, colon-separated.
    pub fingerprint_sha256: String,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, ParseError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| ParseError { what: "certificate", detail: e.to_string() })?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut key_usages = Vec::new();
        if let Ok(Some(ku)) = cert.key_usage() {
            let ku = ku.value;
            for (set, name) in [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
            ] {
                if set {
                    key_usages.push(name);
                }
            }
        }
        let mut extended_key_usages = Vec::new();
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            let eku = eku.value;
            for (set, name) in [
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
                (eku.any, "anyExtendedKeyUsage"),
            ] {
                if set {
                    extended_key_usages.push(name);
                }
            }
        }
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        Ok(Self {
            version: cert.version().0 + 1,
            subject: cert.subject().to_string(),
            common_name,
            dns_names,
            ip_addresses,
            issuer: cert.issuer().to_string(),
            serial: der_text(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            key_usages,
            extended_key_usages,
            fingerprint_sha256: sha256_hex(der),
        })
    }

    /// The names an allow-list may match: the CN and every DNS SAN.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name.iter().map(String::as_str).chain(self.dns_names.iter().map(String::as_str))
    }

    /// The name to show for this certificate in logs: its CN, else its first DNS SAN.
    pub fn display_name(&self) -> &str {
        self.names().next().unwrap_or("-")
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sans: Vec<String> = self
            .dns_names
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(self.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        writeln!(f, "Certificate (X.509 v{})", self.version)?;
        writeln!(f, "  Subject:     {}", self.subject)?;
        writeln!(f, "  SANs:        {}", if sans.is_empty() { "-".into() } else { sans.join(", ") })?;
        writeln!(f, "  Issuer:      {}", self.issuer)?;
        writeln!(f, "  Serial:      {}", self.serial)?;
        writeln!(f, "  Not before:  {}", format_time(self.not_before))?;
        writeln!(f, "  Not after:   {}", format_time(self.not_after))?;
        writeln!(f, "  CA:          {}", if self.is_ca { "yes" } else { "no" })?;
        writeln!(f, "  Key usage:   {}", join_or_dash(&self.key_usages))?;
        writeln!(f, "  Ext. usage:  {}", join_or_dash(&self.extended_key_usages))?;
        write!(f, "  SHA-256:     {}", self.fingerprint_sha256)
    }
}

/// Why a certificate made the blog's way cannot serve nfs-tls-proxy (or a name check), and what to
/// do about it. The `Display` text is the part after `FILE: `; see [`legacy_problem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyProblem {
    /// An X.509 v1 end-entity certificate: rustls/webpki refuses it (`UnsupportedCertVersion`).
    V1 { name: String },
    /// A v3 certificate without a subjectAltName: a server-name check (client mode's
    /// `--server-name`) cannot match it. An allow-list (`--allow-cn`) still matches its CN.
    NoSubjectAltName { name: String },
}

impl fmt::Display for LegacyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LegacyProblem::V1 { name } => write!(
                f,
                "X.509 v1 certificate (made by `openssl x509 -req` without extensions): \
                 re-issue it with `ca-tool issue {name}` after `ca-tool import`"
            ),
            LegacyProblem::NoSubjectAltName { name } => write!(
                f,
                "certificate without subjectAltName (made by `openssl x509 -req` without extensions), \
                 so no server name can match it: re-issue it with `ca-tool issue {name}` after `ca-tool import`"
            ),
        }
    }
}

impl LegacyProblem {
    /// The whole one-line message, `FILE: ...`.
    pub fn message(&self, file: &std::path::Path) -> String {
        format!("{}: {self}", file.display())
    }
}

/// What keeps a leaf certificate made by `openssl x509 -req` (the blog's PKI) from working with
/// nfs-tls-proxy, if anything. Exact wording, with `NAME` the certificate's CN (else its first DNS
/// SAN, else `NAME`):
///
/// - v1: `X.509 v1 certificate (made by \`openssl x509 -req\` without extensions): re-issue it with
///   \`ca-tool issue NAME\` after \`ca-tool import\``
/// - v3 without a subjectAltName: `certificate without subjectAltName (made by \`openssl x509 -req\`
///   without extensions), so no server name can match it: re-issue it with \`ca-tool issue NAME\`
///   after \`ca-tool import\``
///
/// Prefix the file with [`LegacyProblem::message`]. A missing SAN only matters where a name check
/// needs one (a server certificate under `--server-name`), so callers decide whether to report
/// [`LegacyProblem::NoSubjectAltName`]; `V1` is always fatal for a leaf. CA certificates are never
/// flagged: a v1 self-signed root works as a trust anchor for both OpenSSL and rustls.
pub fn legacy_problem(cert: &CertInfo) -> Option<LegacyProblem> {
    if cert.is_ca || (cert.version < 3 && cert.self_issued) {
        return None;
    }
    let name = cert.names().next().unwrap_or("NAME").to_owned();
    if cert.version < 3 {
        Some(LegacyProblem::V1 { name })
    } else if cert.dns_names.is_empty() && cert.ip_addresses.is_empty() {
        Some(LegacyProblem::NoSubjectAltName { name })
    } else {
        None
    }
}

/// [`legacy_problem`] for a DER certificate; `None` also when it does not parse (the loader
/// reports that).
pub fn legacy_problem_der(der: &[u8]) -> Option<LegacyProblem> {
    legacy_problem(&CertInfo::parse(der).ok()?)
}

/// What a CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    pub crl_number: Option<String>,
    /// (serial as `openssl crl -text` prints it, revocation time)
    pub revoked: Vec<(String, OffsetDateTime)>,
}

impl CrlInfo {
    pub fn parse(der: &[u8]) -> Result<Self, ParseError> {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| ParseError { what: "CRL", detail: e.to_string() })?;
        Ok(Self {
            issuer: crl.issuer().to_string(),
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            crl_number: crl.crl_number().map(|n| n.to_string()),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| (der_text(r.raw_serial()), r.revocation_date.to_datetime()))
                .collect(),
        })
    }
}

impl fmt::Display for CrlInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Certificate revocation list")?;
        writeln!(f, "  Issuer:      {}", self.issuer)?;
        writeln!(f, "  CRL number:  {}", self.crl_number.as_deref().unwrap_or("-"))?;
        writeln!(f, "  This update: {}", format_time(self.this_update))?;
        writeln!(f, "  Next update: {}", self.next_update.map(format_time).unwrap_or_else(|| "-".into()))?;
        write!(f, "  Revoked:     {}", self.revoked.len())?;
        for (serial, at) in &self.revoked {
            write!(f, "\n    {serial}  revoked {}", format_time(*at))?;
        }
        Ok(())
    }
}

/// `2026-11-24 06:16:00 UTC`
pub fn format_time(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_else(|_| t.to_string())
}

fn join_or_dash(items: &[&str]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// SHA-256 of `der`, upper-case hex, colon-separated.
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}
