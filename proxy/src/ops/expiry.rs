//! Expiry of the certificate material: the own certificate, the CA certificate(s) and the CRL's
//! nextUpdate. Warned in the log at start, after each reload and once a day when within
//! [`WARN_WITHIN`]; the same deadlines feed the metrics.

use std::path::{Path, PathBuf};

use ca_tool::inspect::{format_time, CertInfo, CrlInfo};
use time::OffsetDateTime;

use crate::config::TlsFiles;

/// How long before a certificate's deadline the warnings start (the CRL's: see
/// [`crate::tls::validate::CRL_WARN_WITHIN`]; its nextUpdate is meant to be renewed often).
pub(crate) const WARN_WITHIN: time::Duration = crate::tls::validate::CERT_WARN_WITHIN;

impl Material {
    fn warn_within(self) -> time::Duration {
        match self {
            Material::CrlNextUpdate => crate::tls::validate::CRL_WARN_WITHIN,
            _ => WARN_WITHIN,
        }
    }
}

/// How often the deadlines are checked again while running.
pub(crate) const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Which piece of material a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Material {
    Certificate,
    Ca,
    CrlNextUpdate,
}

impl Material {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Ca => "ca",
            Self::CrlNextUpdate => "crl-next-update",
        }
    }
}

/// One date after which something stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub material: Material,
    pub path: PathBuf,
    pub at: OffsetDateTime,
}

/// Reads the deadlines of `files` and `crl` and publishes them as metrics (at start, before the ops
/// endpoint answers, after each reload and once a day).
pub(crate) fn publish(
    metrics: &crate::metrics::Metrics,
    files: &TlsFiles,
    crl: Option<&Path>,
) -> Vec<Deadline> {
    let found = deadlines(files, crl);
    metrics.set_expiry(
        found.iter().map(|d| (d.material.word(), d.path.display().to_string(), d.at.unix_timestamp())),
    );
    found
}

/// The deadlines of the material in `files` and `crl`. Files that cannot be read are skipped: the
/// loader has already refused them at start-up or reload.
pub(crate) fn deadlines(files: &TlsFiles, crl: Option<&Path>) -> Vec<Deadline> {
    let mut out = Vec::new();
    if let Some(leaf) = ca_tool::pem::load_certs(&files.cert).ok().and_then(|c| c.into_iter().next()) {
        if let Ok(info) = CertInfo::parse(&leaf) {
            out.push(Deadline {
                material: Material::Certificate,
                path: files.cert.clone(),
                at: info.not_after,
            });
        }
    }
    for ca in ca_tool::pem::load_certs(&files.ca).unwrap_or_default() {
        if let Ok(info) = CertInfo::parse(&ca) {
            out.push(Deadline { material: Material::Ca, path: files.ca.clone(), at: info.not_after });
        }
    }
    if let Some(crl) = crl {
        for der in ca_tool::pem::load_crls(crl).unwrap_or_default() {
            if let Some(at) = CrlInfo::parse(&der).ok().and_then(|i| i.next_update) {
                out.push(Deadline { material: Material::CrlNextUpdate, path: crl.to_owned(), at });
            }
        }
    }
    out
}

/// Logs a warning for each deadline within [`WARN_WITHIN`] of `now` (an error if it has passed);
/// returns how many were logged.
pub(crate) fn warn_near(deadlines: &[Deadline], now: OffsetDateTime) -> usize {
    let mut warned = 0;
    for d in deadlines {
        let left = d.at - now;
        if left > d.material.warn_within() {
            continue;
        }
        warned += 1;
        let file = d.path.display();
        let at = format_time(d.at);
        if left.is_negative() {
            tracing::error!(what = d.material.word(), %file, expired = %at, "certificate material has expired");
        } else {
            tracing::warn!(
                what = d.material.word(),
                %file,
                expires = %at,
                days_left = left.whole_days(),
                "certificate material expires soon"
            );
        }
    }
    warned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> Deadline {
        Deadline {
            material: Material::Certificate,
            path: "x.pem".into(),
            at: OffsetDateTime::UNIX_EPOCH + time::Duration::days(days),
        }
    }

    #[test]
    fn only_deadlines_within_thirty_days_or_past_are_warned() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(100);
        assert_eq!(warn_near(&[at(200), at(131)], now), 0);
        assert_eq!(warn_near(&[at(129), at(100), at(50)], now), 3);
    }
}
