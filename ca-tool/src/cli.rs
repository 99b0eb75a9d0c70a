//! The `ca-tool` command line: parse, run one command, print what it did.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use time::{Duration, OffsetDateTime};

use crate::ca::{self, CaDir, LeafRequest};
use crate::index::CertKind;
use crate::inspect::{format_time, CertInfo, CrlInfo};
use crate::pem::{self, PemError, PemProblem};

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
    /// Issue a client certificate (default) or, with --server, a server certificate.
    Issue {
        /// Host name: the certificate's CN and first DNS SAN; files are DIR/NAME-cert.pem and DIR/NAME-key.pem.
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
    /// Revoke every certificate issued to NAME and re-sign DIR/crl.pem.
    Revoke {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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
    },
    /// Print any certificate or CRL file (PEM or DER), ours or not.
    Show { file: PathBuf },
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
            writeln!(out, "created CA {cn:?}: {} (key {})", cert.display(), dir.join(ca::CA_KEY).display())?;
        }
        Command::Issue { name, dir, days, server, dns, ip, combined, force } => {
            let kind = if server { CertKind::Server } else { CertKind::Client };
            let req = LeafRequest { name: name.clone(), kind, dns, ips: ip, days, combined, force };
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let issued = ca.issue(&req)?;
            writeln!(
                out,
                "issued {kind} certificate {name}: {} (key {}), serial {}, expires {}",
                issued.cert.display(),
                issued.key.display(),
                issued.serial,
                format_time(issued.not_after)
            )?;
            if let Some(c) = issued.combined {
                writeln!(out, "combined cert+key for stunnel: {}", c.display())?;
            }
        }
        Command::Revoke { name, dir, crl_days } => {
            let ca = CaDir::new(&dir);
            let _lock = ca.lock_existing()?;
            let serials = ca.revoke(&name, crl_days)?;
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
        Command::List { dir } => list(&CaDir::new(&dir), out)?,
        Command::Show { file } => show(&file, out)?,
    }
    Ok(())
}

fn list(ca: &CaDir, out: &mut impl Write) -> anyhow::Result<()> {
    let index = ca.index()?;
    let now = OffsetDateTime::now_utc();
    let soon = now + Duration::days(30);
    let width = index.certs.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  {:6}  {:32}  {:23}  STATUS", "NAME", "KIND", "SERIAL", "EXPIRES")?;
    for e in &index.certs {
        let status = match e.revoked_at {
            Some(at) => format!("revoked {}", format_time(at)),
            None if e.not_after <= now => "EXPIRED".to_owned(),
            None if e.not_after <= soon => {
                format!("valid, EXPIRES IN {} DAYS", (e.not_after - now).whole_days())
            }
            None => "valid".to_owned(),
        };
        writeln!(
            out,
            "{:width$}  {:6}  {:32}  {:23}  {status}",
            e.name,
            e.kind.to_string(),
            e.serial,
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
            reports.push(info.to_string());
        } else if let Ok(info) = CrlInfo::parse(&bytes) {
            reports.push(info.to_string());
        }
    }
    for s in &sections {
        use rustls_pki_types::pem::SectionKind;
        let parsed = match s.kind {
            SectionKind::Certificate => CertInfo::parse(&s.der).map(|i| i.to_string()),
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
