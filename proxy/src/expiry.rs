//! Expiry of the certificate material: the own certificate, the CA certificate(s) and the CRL's
//! nextUpdate. Warned in the log at start, after each reload and once a day when within
//! [`WARN_WITHIN`]; the same deadlines feed the metrics.

use std::path::{Path, PathBuf};

use ca_tool::inspect::{format_time, CertInfo, CrlInfo};
use time::OffsetDateTime;

use crate::config::TlsFiles;

/// How long before a deadline the warnings start.
pub const WARN_WITHIN: time::Duration = time::Duration::days(30);

/// How often the deadlines are checked again while running.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Which piece of material a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Certificate,
    Ca,
    CrlNextUpdate,
}

impl What {
    pub fn word(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Ca => "ca",
            Self::CrlNextUpdate => "crl-next-update",
        }
    }
}

/// One date after which something stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub what: What,
    pub path: PathBuf,
    pub at: OffsetDateTime,
}

/// The deadlines of the material in `files` and `crl`. Files that cannot be read are skipped: the
/// loader has already refused them at start-up or reload.
pub fn deadlines(files: &TlsFiles, crl: Option<&Path>) -> Vec<Deadline> {
    let mut out = Vec::new();
    if let Some(leaf) = ca_tool::pem::load_certs(&files.cert).ok().and_then(|c| c.into_iter().next()) {
        if let Ok(info) = CertInfo::parse(&leaf) {
            out.push(Deadline { what: What::Certificate, path: files.cert.clone(), at: info.not_after });
        }
    }
    for ca in ca_tool::pem::load_certs(&files.ca).unwrap_or_default() {
        if let Ok(info) = CertInfo::parse(&ca) {
            out.push(Deadline { what: What::Ca, path: files.ca.clone(), at: info.not_after });
        }
    }
    if let Some(crl) = crl {
        for der in ca_tool::pem::load_crls(crl).unwrap_or_default() {
            if let Some(at) = CrlInfo::parse(&der).ok().and_then(|i| i.next_update) {
                out.push(Deadline { what: What::CrlNextUpdate, path: crl.to_owned(), at });
            }
        }
    }
    out
}

/// Logs a warning for each deadline within [`WARN_WITHIN`] of `now` (an error if it has passed);
/// returns how many were logged.
pub fn warn_near(deadlines: &[Deadline], now: OffsetDateTime) -> usize {
    let mut warned = 0;
    for d in deadlines {
        let left = d.at - now;
        if left > WARN_WITHIN {
            continue;
        }
        warned += 1;
        let file = d.path.display();
        let at = format_time(d.at);
        if left.is_negative() {
            tracing::error!(what = d.what.word(), %file, expired = %at, "certificate material has expired");
        } else {
            tracing::warn!(
                what = d.what.word(),
                %file,
                expires = %at,
                days_left = left.whole_days(),
                "certificate material expires within 30 days"
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
            what: What::Certificate,
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
