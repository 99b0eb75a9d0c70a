//! One validation of the TLS material, for the three doors it comes through: start-up, reload (signal
//! or timer) and `check`. What `check` calls a problem, start-up and reload refuse, naming the file;
//! what it calls a warning they log. The rules:
//!
//! - the certificate parses, is X.509 v3 (blog-era `openssl x509 -req` certificates are v1), and a
//!   server's carries a subjectAltName for the clients' name check;
//! - it chains to the CA *as the certificate of its mode* (a client certificate copied over the server
//!   certificate fails here, as the clients' handshake would), and is within its validity;
//! - the key is there, matches the certificate, and can be read by the user the proxy runs as (or will
//!   run as, after `--user`); others may not read it, and its group only if that is the service's;
//! - the CA certificate is within its validity;
//! - the CRL (servers) is signed by the CA (a CRL of another CA makes every client's revocation status
//!   unknown, which refuses everyone); a passed nextUpdate is a warning (enforced, it refuses each
//!   client as `crl-expired` until a fresh CRL is reloaded).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ca_tool::inspect::{format_time, CertInfo, CrlInfo};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::config::TlsFiles;

/// A certificate or CA expiring within this is a warning.
pub(crate) const CERT_WARN_WITHIN: Duration = Duration::days(30);
/// A CRL whose nextUpdate is within this is a warning. ca-tool's CRLs last 30 days and are meant to
/// be re-signed by cron well before (docs/migrating-from-stunnel.md), so a 30-day window would warn
/// always.
pub(crate) const CRL_WARN_WITHIN: Duration = Duration::days(7);

/// Which end of the tunnel the material is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

/// Who must be able to read the key: the user and group the proxy runs as (after `--user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reader {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Whether `gid` is one of this process's supplementary groups counts (not after `--user`,
    /// whose privilege drop clears them).
    supplementary: bool,
}

impl Reader {
    /// This process, as it runs now.
    pub(crate) fn current() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            supplementary: true,
        }
    }

    /// Whether the reader is a member of `gid` through a supplementary group.
    fn also_in(&self, gid: u32) -> bool {
        self.supplementary
            && nix::unistd::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
    }

    /// Whether the kernel's owner/group/other rule gives this reader `bit` (4 read, 1 search) on a
    /// file with `meta` (ACLs aside): the owner's bits for the owner, else the group's for a member,
    /// else the others'. Root needs none.
    fn may(&self, meta: &std::fs::Metadata, bit: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        self.uid == 0
            || if meta.uid() == self.uid {
                mode & (bit << 6) != 0
            } else if meta.gid() == self.gid || self.also_in(meta.gid()) {
                mode & (bit << 3) != 0
            } else {
                mode & bit != 0
            }
    }

    /// The user the proxy will run as, or this process.
    pub(crate) fn after_drop(privileges: Option<&crate::os::Privileges>) -> Self {
        privileges.map_or_else(Self::current, |p| Self { uid: p.uid, gid: p.gid, supplementary: false })
    }
}

/// What the validation found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// What the material is, for `check`: (label, text).
    pub(crate) facts: Vec<(&'static str, String)>,
    pub(crate) warnings: Vec<String>,
    /// Each one line that starts with the file it is about.
    pub(crate) problems: Vec<String>,
}

impl Findings {
    fn fact(&mut self, label: &'static str, text: String) {
        self.facts.push((label, text));
    }
}

/// The CRL to validate, if any, and whether its nextUpdate is enforced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crl<'a> {
    pub(crate) path: &'a Path,
    pub(crate) enforce_expiry: bool,
}

/// Validates `files` (and `crl`) for `role`, read by `reader`, at `now`.
pub(crate) fn validate(
    files: &TlsFiles,
    crl: Option<Crl<'_>>,
    role: Role,
    reader: Reader,
    now: OffsetDateTime,
) -> Findings {
    let mut f = Findings::default();
    let chain = match ca_tool::pem::load_certs(&files.cert) {
        Ok(chain) if !chain.is_empty() => Some(chain),
        Ok(_) => {
            f.problems.push(format!("{}: contains no certificate", files.cert.display()));
            None
        }
        Err(e) => {
            f.problems.push(e.to_string());
            None
        }
    };
    let leaf = chain.as_ref().and_then(|c| c.first().cloned());
    let info = leaf.as_ref().and_then(|der| match CertInfo::parse(der) {
        Ok(info) => Some(info),
        Err(e) => {
            f.problems.push(format!("{}: {e}", files.cert.display()));
            None
        }
    });
    if let Some(info) = &info {
        certificate_facts(&mut f, files, info, now);
        legacy(&mut f, &files.cert, info, role);
        dates(&mut f, "certificate", &files.cert, info.not_before, info.not_after, now, CERT_WARN_WITHIN);
    }
    let key_ok = key(&mut f, files, chain.as_deref(), reader);
    let cas = match ca_tool::pem::load_certs(&files.ca) {
        Ok(cas) if !cas.is_empty() => cas,
        Ok(_) => {
            f.problems.push(format!("{}: contains no certificate", files.ca.display()));
            Vec::new()
        }
        Err(e) => {
            f.problems.push(e.to_string());
            Vec::new()
        }
    };
    for ca in &cas {
        if let Ok(ca_info) = CertInfo::parse(ca) {
            f.fact(
                "ca",
                format!(
                    "{} ({}; expires {})",
                    files.ca.display(),
                    ca_info.subject,
                    format_time(ca_info.not_after)
                ),
            );
            dates(
                &mut f,
                "CA certificate",
                &files.ca,
                ca_info.not_before,
                ca_info.not_after,
                now,
                CERT_WARN_WITHIN,
            );
        }
    }
    if let (Some(leaf), false, Some(info)) = (&leaf, cas.is_empty(), &info) {
        if ca_tool::inspect::legacy_problem(info).is_none() {
            match chains(leaf, chain.as_deref().unwrap_or_default(), &cas, role) {
                Ok(()) => f.fact(
                    "chain",
                    format!("the certificate chains to the CA as a {} certificate", role.word()),
                ),
                Err(e) => {
                    let line = format!(
                        "{}: not valid as a {} certificate under {} ({e})",
                        files.cert.display(),
                        role.word(),
                        files.ca.display()
                    );
                    // A server's clients trust this CA, so its certificate must chain to it. A
                    // client's --ca is for checking the server; its own certificate may come from
                    // another CA the server trusts, so that is only worth a warning.
                    match role {
                        Role::Server => f.problems.push(line),
                        Role::Client => f.warnings.push(line),
                    }
                }
            }
        }
    }
    if key_ok {
        f.fact("key", format!("{} matches the certificate", key_path(files).display()));
    }
    if let Some(crl) = crl {
        crl_findings(&mut f, crl, &files.ca, &cas, now);
    }
    f
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

fn key_path(files: &TlsFiles) -> PathBuf {
    files.key.clone().unwrap_or_else(|| files.cert.clone())
}

fn certificate_facts(f: &mut Findings, files: &TlsFiles, info: &CertInfo, now: OffsetDateTime) {
    let mut names: Vec<String> = Vec::new();
    for n in info.names().map(str::to_owned).chain(info.ip_addresses.iter().map(ToString::to_string)) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    f.fact(
        "certificate",
        format!(
            "{} ({}; serial {}; SANs {}; expires {}, {} days)",
            files.cert.display(),
            info.subject,
            info.serial,
            if names.is_empty() { "-".into() } else { names.join(", ") },
            format_time(info.not_after),
            (info.not_after - now).whole_days()
        ),
    );
}

/// Blog-era certificates: v1 always; no SAN on a server certificate (the clients check its name).
fn legacy(f: &mut Findings, path: &Path, info: &CertInfo, role: Role) {
    match ca_tool::inspect::legacy_problem(info) {
        Some(p @ ca_tool::inspect::LegacyProblem::V1 { .. }) => f.problems.push(p.message(path)),
        Some(p @ ca_tool::inspect::LegacyProblem::NoSubjectAltName { .. }) if role == Role::Server => {
            f.problems.push(p.message(path))
        }
        _ => {}
    }
}

fn dates(
    f: &mut Findings,
    what: &str,
    path: &Path,
    from: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
    warn_within: Duration,
) {
    if until < now {
        f.problems.push(format!("{}: the {what} expired on {}", path.display(), format_time(until)));
    } else if from > now {
        f.problems.push(format!("{}: the {what} is not valid before {}", path.display(), format_time(from)));
    } else if until - now < warn_within {
        f.warnings.push(format!(
            "{}: the {what} expires within {} days ({})",
            path.display(),
            warn_within.whole_days(),
            format_time(until)
        ));
    }
}

/// The key: present, readable by `reader` and nobody else (its group only if it is the reader's),
/// and the certificate's. Returns whether all of that holds.
fn key(
    f: &mut Findings,
    files: &TlsFiles,
    chain: Option<&[CertificateDer<'static>]>,
    reader: Reader,
) -> bool {
    let path = key_path(files);
    if files.key.is_none() {
        match ca_tool::pem::has_private_key(&files.cert) {
            Ok(true) => {}
            Ok(false) => {
                f.problems.push(format!("{}: contains no private key; pass --key", files.cert.display()));
                return false;
            }
            Err(_) => return false, // already reported with the certificate
        }
    }
    if let Err(problem) = readable_only_by(&path, reader, files.insecure_key_permissions) {
        f.problems.push(problem);
        return false;
    }
    let key = match ca_tool::pem::load_private_key(&path) {
        Ok(key) => key,
        Err(e) => {
            f.problems.push(e.to_string());
            return false;
        }
    };
    let Some(chain) = chain else { return false };
    let provider = super::provider();
    let signing = match provider.key_provider.load_private_key(key) {
        Ok(k) => k,
        Err(e) => {
            f.problems.push(format!("{}: unusable private key ({e})", path.display()));
            return false;
        }
    };
    match rustls::sign::CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => true,
        // rustls cannot compare this key type: the handshake will tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => true,
        Err(_) => {
            f.problems.push(format!(
                "{}: does not match the certificate in {} (it is the key of another certificate)",
                path.display(),
                files.cert.display()
            ));
            false
        }
    }
}

/// Whether `reader` can read the key at `path` while others cannot; group read is accepted when the
/// file's group is the reader's group (keys `root:nfs-tls-proxy` mode 0640, see docs/install.md).
fn readable_only_by(path: &Path, reader: Reader, insecure: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if !insecure {
        if mode & 0o007 != 0 {
            return Err(format!(
                "{}: private key is readable by others (mode {mode:04o}); fix with `chmod 600 {0}` or \
                 `chown root:nfs-tls-proxy {0} && chmod 640 {0}` (or pass --insecure-key-permissions)",
                path.display()
            ));
        }
        // Group read is for a dedicated service group (root:nfs-tls-proxy 0640), never root's group.
        let own_group = (meta.gid() == reader.gid || reader.also_in(meta.gid())) && meta.gid() != 0;
        if mode & 0o070 != 0 && (!own_group || mode & 0o030 != 0) {
            return Err(format!(
                "{}: private key is open to group {} (mode {mode:04o}), which is not the group the proxy runs \
                 as ({}); fix with `chmod 600 {0}` or `chown root:GROUP {0} && chmod 640 {0}` (or pass \
                 --insecure-key-permissions)",
                path.display(),
                meta.gid(),
                reader.gid
            ));
        }
    }
    if !reader.may(&meta, 0o4) {
        return Err(format!(
            "{}: not readable by uid {} gid {} (owner {}:{}, mode {mode:04o}), which the proxy runs as: \
             `chown root:nfs-tls-proxy {0} && chmod 640 {0}`",
            path.display(),
            reader.uid,
            reader.gid,
            meta.uid(),
            meta.gid()
        ));
    }
    Ok(())
}

/// Opens each file that a reload reads again (certificate, key, CA, CRL) as this process now is:
/// called right after the privilege drop, so that a file the user run as cannot open stops the
/// start instead of failing the first reload. The real open decides (ACLs included); when it is
/// refused, the first directory on the way whose mode bars this user is named as the likely cause.
pub(crate) fn readable_after_drop(files: &TlsFiles, crl: Option<&Path>) -> Result<(), String> {
    let key = key_path(files);
    let mut paths = vec![files.cert.as_path(), key.as_path(), files.ca.as_path()];
    paths.extend(crl);
    paths.dedup();
    for path in paths {
        if let Err(e) = std::fs::File::open(path) {
            let me = Reader::current();
            let why = blocking_directory(path, me).unwrap_or_else(|| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(path).map_or_else(
                    |_| String::new(),
                    |m| format!(" (owner {}:{}, mode {:04o})", m.uid(), m.gid(), m.mode() & 0o7777),
                )
            });
            return Err(format!(
                "{}: cannot be opened by uid {} gid {}, which the proxy runs as, and every reload reads it \
                 again: {e}{why}",
                path.display(),
                me.uid,
                me.gid
            ));
        }
    }
    Ok(())
}

/// The first directory on the way to `path` (as written, from the working directory for a relative
/// one, then after symbolic links) whose mode gives `reader` no search permission, as a sentence.
fn blocking_directory(path: &Path, reader: Reader) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let written = path.parent().filter(|p| !p.as_os_str().is_empty());
    // After symbolic links only for an absolute path: a relative one is searched from the working
    // directory down, whatever lies above it.
    let resolved = if path.is_absolute() { std::fs::canonicalize(path).ok() } else { None };
    let dirs = written
        .into_iter()
        .flat_map(|p| p.ancestors())
        .filter(|d| !d.as_os_str().is_empty())
        .chain(resolved.iter().flat_map(|r| r.ancestors().skip(1)));
    for dir in dirs {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        if !reader.may(&meta, 0o1) {
            return Some(format!(
                "; directory {0} (owner {1}:{2}, mode {3:04o}) does not let it search: e.g. \
                 `chgrp nfs-tls-proxy {0} && chmod g+x {0}`",
                dir.display(),
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

/// Verifies `leaf` against `cas` the way the peer will: as a server or a client certificate.
fn chains(
    leaf: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    role: Role,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    let roots = Arc::new(roots);
    let provider = super::provider();
    let now = UnixTime::now();
    let intermediates = chain.get(1..).unwrap_or_default();
    match role {
        Role::Server => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| e.to_string())?;
            let info = CertInfo::parse(leaf).map_err(|e| e.to_string())?;
            let name = info
                .dns_names
                .first()
                .cloned()
                .or_else(|| info.ip_addresses.first().map(ToString::to_string))
                .ok_or("no subjectAltName to check a server name against")?;
            let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
            verifier
                .verify_server_cert(leaf, intermediates, &name, &[], now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Role::Client => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| e.to_string())?;
            verifier.verify_client_cert(leaf, intermediates, now).map(|_| ()).map_err(|e| e.to_string())
        }
    }
}

fn crl_findings(
    f: &mut Findings,
    crl: Crl<'_>,
    ca_path: &Path,
    cas: &[CertificateDer<'static>],
    now: OffsetDateTime,
) {
    let path = crl.path;
    let ders = match ca_tool::pem::load_crls(path) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            f.problems.push(format!("{}: contains no CRL", path.display()));
            return;
        }
        Err(e) => {
            f.problems.push(e.to_string());
            return;
        }
    };
    for der in ders {
        let info = match CrlInfo::parse(&der) {
            Ok(i) => i,
            Err(e) => {
                f.problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        f.fact(
            "crl",
            format!(
                "{} (issuer {}; CRL number {}; next update {}; {} revoked)",
                path.display(),
                info.issuer,
                info.crl_number.as_deref().unwrap_or("-"),
                info.next_update.map(format_time).unwrap_or_else(|| "-".into()),
                info.revoked.len()
            ),
        );
        if !signed_by_a_ca(&der, cas) {
            f.problems.push(format!(
                "{}: issued by {}, not signed by the CA in {}",
                path.display(),
                info.issuer,
                ca_path.display()
            ));
        }
        match info.next_update {
            Some(at) if at < now => {
                let line = format!(
                    "{}: nextUpdate {} has passed; publish a fresh CRL (ca-tool crl){}",
                    path.display(),
                    format_time(at),
                    if crl.enforce_expiry { ", every client is refused (--enforce-crl-expiry)" } else { "" }
                );
                // A warning even when enforced: the proxy still starts (and a reload still applies),
                // refusing each client with `crl-expired`, so that publishing a fresh CRL and
                // reloading recovers without a restart.
                f.warnings.push(line)
            }
            Some(at) if at - now < CRL_WARN_WITHIN => f.warnings.push(format!(
                "{}: nextUpdate within {} days ({}); re-sign it (ca-tool crl)",
                path.display(),
                CRL_WARN_WITHIN.whole_days(),
                format_time(at)
            )),
            _ => {}
        }
    }
}

/// Whether one of `cas` signed the CRL `der` (its name and its signature).
fn signed_by_a_ca(der: &[u8], cas: &[CertificateDer<'static>]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    let Ok((_, crl)) = CertificateRevocationList::from_der(der) else { return false };
    cas.iter().any(|ca| match X509Certificate::from_der(ca) {
        Ok((_, ca)) => ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok(),
        Err(_) => false,
    })
}
