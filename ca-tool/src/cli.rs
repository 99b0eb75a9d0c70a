//! The `ca-tool` command line: parse, run one command, print what it did.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use time::{Duration, OffsetDateTime};

use crate::bundle::{self, BundleRequest, System};
use crate::ca::{self, CaDir, LeafRequest, RenewRequest};
use crate::index::{CertKind, Status};
use crate::inspect::{format_time, legacy_problem, CertInfo, CrlInfo};
use crate::pem::{self, PemError, PemProblem};
use crate::serial::Serial;

/// A small private CA for nfs-tls-proxy (ECDSA P-256, client and server certificates, CRLs).
#[derive(Debug, Parser)]
#[command(name = "ca-tool", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a CA: DIR/ca-cert.pem, DIR/ca-key.pem, DIR/index.toml and an empty DIR/crl.pem.
    Init {
        /// CA directory (created when missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "nfs-tls-proxy CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = ca::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Overwrite an existing CA (its old certificates will no longer verify).
        #[arg(long)]
        force: bool,
    },
    /// Adopt a CA made elsewhere (e.g. `openssl req -new -x509`): check it, copy it into DIR (0700),
    /// record it and the leaves it signed (as `legacy`), sign DIR/crl.pem. Then `issue` signs v3
    /// certificates under the same CA.
    Import {
        /// The CA certificate (PEM): basicConstraints CA:TRUE, or a v1 self-signed root.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM: PKCS#8, or PKCS#1/SEC1 as older openssl writes them; unencrypted).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// CA directory (created when missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Client (or, by their EKU, server) certificates this CA already signed, e.g. with
        /// `openssl x509 -req`: listed as legacy, so `list`, `revoke` and the CRL know them.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        leaves: Vec<PathBuf>,
        /// Like --leaves, for server certificates (v1 certificates carry no EKU saying so).
        #[arg(long, value_name = "FILE", num_args = 1..)]
        server_leaves: Vec<PathBuf>,
        /// Replace a different CA already in DIR (its certificates will no longer verify).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate (default) or, with --server, a server certificate. Certificates
    /// NAME had before are marked superseded (not revoked).
    Issue {
        /// Host name (a DNS name: `r0`, `r0.lan`): the certificate's CN and first DNS SAN; files are
        /// DIR/NAME-cert.pem and DIR/NAME-key.pem.
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = ca::LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// A server certificate (EKU serverAuth) instead of a client one (clientAuth).
        #[arg(long)]
        server: bool,
        /// Extra DNS SAN (server certificates; repeatable).
        #[arg(long, requires = "server")]
        dns: Vec<String>,
        /// IP address SAN (server certificates; repeatable).
        #[arg(long, requires = "server", value_parser = parse_ip)]
        ip: Vec<IpAddr>,
        /// Also write DIR/NAME-stunnel.pem (certificate and key in one file) for stunnel.
        #[arg(long)]
        combined: bool,
        /// Overwrite existing files for NAME.
        #[arg(long)]
        force: bool,
    },
    /// Issue a fresh certificate for NAME with the same kind and names (a new key unless
    /// --keep-key) and mark the old one superseded (not revoked: hosts keep working until they switch).
    Renew {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = ca::LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Certify the current key again (from DIR/NAME-cert.pem) instead of making a new one.
        #[arg(long)]
        keep_key: bool,
        /// Also write DIR/NAME-stunnel.pem (rewritten anyway when it exists).
        #[arg(long)]
        combined: bool,
    },
    /// Revoke every certificate issued to NAME (superseded and legacy ones too), or only --serial,
    /// and re-sign DIR/crl.pem.
    Revoke {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Revoke only this serial of NAME: hex, as `list` and `openssl x509 -serial` show it (a
        /// leading 00, lower case and colons between bytes are read too).
        #[arg(long, value_name = "HEX")]
        serial: Option<Serial>,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = ca::CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        crl_days: u32,
    },
    /// Re-sign DIR/crl.pem from the index with a new nextUpdate (run it before the CRL expires).
    Crl {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = ca::CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// List issued certificates: name, kind, serial, expiry, status.
    List {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Only certificates in force (not revoked, not superseded) that expire within this window
        /// (e.g. `30d`, `2w`, `12h`; a bare number is days), expired ones included.
        #[arg(long, value_name = "DURATION", value_parser = parse_window)]
        expiring: Option<Duration>,
    },
    /// Print any certificate or CRL file (PEM or DER), ours or not; flags certificates
    /// nfs-tls-proxy cannot use (X.509 v1, no subjectAltName).
    Show { file: PathBuf },
    /// Write exactly what one host needs into a new directory: its certificate and key, the CA
    /// certificate, for a server the CRL, a TOML configuration for its mode and INSTALL.txt.
    Bundle {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The directory to create (it must not exist or be empty, unless --force).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace a non-empty --out directory.
        #[arg(long)]
        force: bool,
        /// The host's service manager [default: freebsd for servers, systemd for clients].
        #[arg(long, value_enum)]
        system: Option<System>,
        /// Where the files go on the host [default: /usr/local/etc/nfs-tls-proxy (freebsd),
        /// /etc/nfs-tls-proxy (systemd)].
        #[arg(long, value_name = "DIR")]
        install_dir: Option<PathBuf>,
        /// Server: address to listen on (repeatable) [default: each IP SAN on port 2323].
        #[arg(long, value_name = "ADDR")]
        listen: Vec<std::net::SocketAddr>,
        /// Client: server to connect to, HOST:PORT (repeatable) [default: the one server
        /// certificate in the index, on port 2323].
        #[arg(long, value_name = "HOST:PORT")]
        server: Vec<String>,
        /// Client: the name the server's certificate must carry [default: that server's name].
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
    },
}

/// `30d`, `2w`, `12h`, or a bare number of days.
fn parse_window(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30d, 2w or 12h");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "d"),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    match unit {
        "d" => Ok(Duration::days(n)),
        "w" => Ok(Duration::weeks(n)),
        "h" => Ok(Duration::hours(n)),
        _ => Err(bad()),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// Runs one command, writing its report to `out`.
pub fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, cn, days, force } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock()?;
            let cert = ca.init(&cn, days, force)?;
            writeln!(
                out,
                "created CA {cn:?}: {} (key {}), directory mode 0700",
                cert.display(),
                dir.join(ca::CA_KEY).display()
            )?;
        }
        Command::Import { cert, key, dir, leaves, server_leaves, force } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock()?;
            let imported = ca.import(&cert, &key, &leaves, &server_leaves, force)?;
            let how = if imported.version < 3 { " (X.509 v1 self-signed root)" } else { "" };
            writeln!(
                out,
                "imported CA {}{how}: {} (key {}, mode 0600), directory mode 0700",
                imported.subject,
                dir.join(ca::CA_CERT).display(),
                dir.join(ca::CA_KEY).display()
            )?;
            for (name, serial, file) in &imported.leaves {
                writeln!(out, "legacy certificate {name}: serial {serial} ({})", file.display())?;
            }
            for file in &imported.skipped {
                writeln!(out, "already in the index: {}", file.display())?;
            }
            writeln!(out, "CRL written to {}", imported.crl.display())?;
        }
        Command::Issue { name, dir, days, server, dns, ip, combined, force } => {
            let kind = if server { CertKind::Server } else { CertKind::Client };
            let req = LeafRequest { name: name.clone(), kind, dns, ips: ip, days, combined, force };
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let issued = ca.issue(&req)?;
            report_issued(out, "issued", kind, &name, &issued)?;
        }
        Command::Renew { name, dir, days, keep_key, combined } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let issued = ca.renew(&RenewRequest { name: name.clone(), days, keep_key, combined })?;
            let kind = ca.index()?.by_serial(&issued.serial).map(|e| e.kind).unwrap_or(CertKind::Client);
            report_issued(out, "renewed", kind, &name, &issued)?;
        }
        Command::Bundle {
            name,
            dir,
            out: out_dir,
            force,
            system,
            install_dir,
            listen,
            server,
            server_name,
        } => {
            let ca = CaDir::new(&dir);
            let req = BundleRequest {
                name: name.clone(),
                out: out_dir,
                force,
                system,
                install_dir,
                listen,
                servers: server,
                server_name,
            };
            let b = bundle::write_bundle(&ca, &req)?;
            writeln!(out, "bundle for {name} ({}): {}/ {}", b.kind, b.dir.display(), b.files.join(" "))?;
            writeln!(out, "next: copy {} to {name} and follow its INSTALL.txt", b.dir.display())?;
        }
        Command::Revoke { name, dir, serial, crl_days } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let serials = ca.revoke_serial(&name, serial.as_ref(), crl_days)?;
            let serials: Vec<String> = serials.iter().map(Serial::to_string).collect();
            writeln!(
                out,
                "revoked {name} (serial {}); CRL written to {}",
                serials.join(", "),
                dir.join(ca::CRL).display()
            )?;
        }
        Command::Crl { dir, days } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let path = ca.sign_crl(days)?;
            writeln!(out, "CRL signed: {} (next update in {days} days)", path.display())?;
        }
        Command::List { dir, expiring } => list(&CaDir::new(&dir), expiring, out)?,
        Command::Show { file } => show(&file, out)?,
    }
    Ok(())
}

fn report_issued(
    out: &mut impl Write,
    verb: &str,
    kind: CertKind,
    name: &str,
    issued: &ca::Issued,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{verb} {kind} certificate {name}: {} (key {}), serial {}, expires {}",
        issued.cert.display(),
        issued.key.display(),
        issued.serial,
        format_time(issued.not_after)
    )?;
    if let Some(c) = &issued.combined {
        writeln!(out, "combined cert+key for stunnel: {}", c.display())?;
    }
    for s in &issued.superseded {
        writeln!(out, "superseded serial {s} (not revoked: it works until it expires; `ca-tool revoke {name} --serial {s}` cuts it off)")?;
    }
    Ok(())
}

fn list(ca: &CaDir, expiring: Option<Duration>, out: &mut impl Write) -> anyhow::Result<()> {
    let index = ca.index()?;
    let now = OffsetDateTime::now_utc();
    let soon = now + Duration::days(30);
    let shown: Vec<_> = index
        .certs
        .iter()
        .filter(|e| expiring.is_none_or(|w| e.is_current() && e.not_after <= now + w))
        .collect();
    let width = shown.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4);
    // openssl's serials are 20 bytes (40 hex digits), ours 16.
    let sw = shown.iter().map(|e| e.serial.to_string().len()).max().unwrap_or(32).max(32);
    writeln!(out, "{:width$}  {:6}  {:sw$}  {:23}  STATUS", "NAME", "KIND", "SERIAL", "EXPIRES")?;
    for e in shown {
        let mut status = match e.status(now) {
            Status::Revoked(at) => format!("revoked {}", format_time(at)),
            Status::Superseded(at) => format!("superseded {}", format_time(at)),
            Status::Expired => "EXPIRED".to_owned(),
            Status::Valid if e.not_after <= soon => {
                format!("valid, EXPIRES IN {} DAYS", (e.not_after - now).whole_days())
            }
            Status::Valid => "valid".to_owned(),
        };
        if e.legacy && e.is_current() {
            status.push_str(" (legacy: made by openssl; re-issue or renew it)");
        } else if e.legacy {
            status.push_str(" (legacy)");
        }
        writeln!(
            out,
            "{:width$}  {:6}  {:sw$}  {:23}  {status}",
            e.name,
            e.kind.to_string(),
            e.serial.to_string(),
            format_time(e.not_after)
        )?;
    }
    Ok(())
}

fn show(file: &std::path::Path, out: &mut impl Write) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read file", file.display()))?;
    let pem_error = |problem| PemError { path: file.to_owned(), problem };
    let sections = pem::parse_sections(&bytes).map_err(pem_error)?;
    let mut reports = Vec::new();
    if sections.is_empty() {
        // Not PEM: try DER, certificate first.
        if let Ok(info) = CertInfo::parse(&bytes) {
            reports.push(with_problem(file, &info));
        } else if let Ok(info) = CrlInfo::parse(&bytes) {
            reports.push(info.to_string());
        }
    }
    for s in &sections {
        use rustls_pki_types::pem::SectionKind;
        let parsed = match s.kind {
            SectionKind::Certificate => CertInfo::parse(&s.der).map(|i| with_problem(file, &i)),
            SectionKind::Crl => CrlInfo::parse(&s.der).map(|i| i.to_string()),
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                Ok("Private key (not shown)".to_owned())
            }
            other => Ok(format!("{other:?} (not shown)")),
        };
        reports.push(parsed.with_context(|| file.display().to_string())?);
    }
    if reports.is_empty() {
        return Err(pem_error(PemProblem::Missing("certificate or CRL")).into());
    }
    writeln!(out, "{}", reports.join("\n\n"))?;
    Ok(())
}

/// A certificate's report, with the line saying why nfs-tls-proxy cannot use it, if so.
fn with_problem(file: &std::path::Path, info: &CertInfo) -> String {
    match legacy_problem(info) {
        Some(p) => format!("{info}\n{}", p.message(file)),
        None => info.to_string(),
    }
}
