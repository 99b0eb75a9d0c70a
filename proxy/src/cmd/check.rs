//! `nfs-tls-proxy check --config FILE`: loads the configuration exactly as start-up does (the same
//! argument merge, the same resolve, the same TLS loader) and reports what it found. Every problem is
//! one line; any problem makes the command fail, so it fits `ExecStartPre` and rc.d's `precmd`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ca_tool::inspect::{format_time, CertInfo, CrlInfo};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use time::OffsetDateTime;

use crate::config::{self, CheckMode, Command, TlsFiles};

/// What `check` found: the summary lines, and the problems (each one line).
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub summary: String,
    pub warnings: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    fn line(&mut self, key: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.summary, "{key:<14} {value}");
    }
}

/// Runs every check on `file`.
pub(crate) async fn check(file: &Path, mode: Option<CheckMode>) -> Report {
    let mut r = Report::default();
    let mode = match mode.map(Ok).unwrap_or_else(|| detect_mode(file)) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(e);
            return r;
        }
    };
    let word = match mode {
        CheckMode::Server => "server",
        CheckMode::Client => "client",
    };
    let argv = ["nfs-tls-proxy", word, "--config"].map(std::ffi::OsString::from).into_iter();
    let parsed = config::parse_args(argv.chain([file.as_os_str().to_owned()]).collect());
    let command = match parsed {
        Ok(cli) => cli.command,
        Err(e) => {
            r.problems.extend(
                e.to_string()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(1)
                    .map(|l| l.trim_start_matches("error: ").to_owned()),
            );
            return r;
        }
    };
    r.line("mode", word);
    match command {
        Command::Server(args) => match config::Server::resolve(&args) {
            Ok(cfg) => check_server(&mut r, &cfg),
            Err(e) => r.problems.push(e.to_string()),
        },
        Command::Client(args) => match config::Client::resolve(&args) {
            Ok(cfg) => check_client(&mut r, &cfg).await,
            Err(e) => r.problems.push(e.to_string()),
        },
        _ => r.problems.push("not a server or client configuration".into()),
    }
    r
}

/// `backend` means a server configuration, `server` a client one.
fn detect_mode(file: &Path) -> Result<CheckMode, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!("{}: {}", file.display(), e.message().split_whitespace().collect::<Vec<_>>().join(" "))
    })?;
    match (table.contains_key("backend"), table.contains_key("server")) {
        (true, false) => Ok(CheckMode::Server),
        (false, true) => Ok(CheckMode::Client),
        _ => Err(format!(
            "{}: cannot tell whether this is a server (has `backend`) or a client (has `server`) configuration; pass --mode",
            file.display()
        )),
    }
}

fn check_server(r: &mut Report, cfg: &config::Server) {
    for addr in &cfg.listen {
        let state = match crate::os::owns_address(addr.ip()) {
            Ok(true) => "this host owns the address now".to_owned(),
            Ok(false) => "not on this host now: the server will stand by until it is".to_owned(),
            Err(e) => format!("cannot tell whether this host owns it: {e}"),
        };
        r.line("listen", format!("{addr} ({state})"));
    }
    r.line("backend", format!("{} (source port: {:?})", cfg.backend, cfg.backend_source_port));
    r.line("rpc-tls", if cfg.rpc_tls { "on (RFC 9289 clients answered)" } else { "off" });
    let c = &cfg.common;
    let tls =
        crate::tls::server_config(&c.tls, cfg.crl.as_deref(), cfg.enforce_crl_expiry, &cfg.allow, c.min_tls);
    own_material(r, &c.tls, tls.as_ref().err().map(ToString::to_string), true);
    match &cfg.crl {
        None => r.warnings.push("no --crl: a certificate can only be withdrawn by replacing the CA".into()),
        Some(path) => crl(r, path, &c.tls.ca),
    }
    let names: Vec<&str> = cfg.allow.names().collect();
    if names.is_empty() {
        r.line("allow-cn", "(none: any certificate from the CA is admitted)");
        r.warnings.push(
            "no allow-cn: any certificate the CA ever signed is admitted (stunnel's verify = 2); list the clients".into(),
        );
    } else {
        r.line("allow-cn", names.join(", "));
    }
}

async fn check_client(r: &mut Report, cfg: &config::Client) {
    for addr in &cfg.listen {
        r.line("listen", addr);
    }
    for s in &cfg.servers {
        r.line(
            "server",
            format!("{} (name {}, {})", s.endpoint, s.server_name, cfg.upstream_protocol.word()),
        );
    }
    let c = &cfg.common;
    let tls = crate::tls::client_config(&c.tls, c.min_tls, cfg.upstream_protocol);
    own_material(r, &c.tls, tls.as_ref().err().map(ToString::to_string), false);
    let Ok(tls) = tls else { return };
    // The server's certificate is only known by asking: a handshake with each server that answers,
    // made exactly as the client makes it.
    let mode = crate::tunnel::client::ClientMode {
        tls: tokio::sync::watch::Sender::new(tls),
        servers: cfg.servers.clone(),
        protocol: cfg.upstream_protocol,
        // The same deadlines as a real tunnel, so `check` fails where start-up would.
        handshake_timeout: c.handshake_timeout,
        connect_timeout: c.connect_timeout,
        keepalive: config::Keepalive::Off,
        key_update_every: None,
    };
    for s in &cfg.servers {
        match mode.dial(s).await {
            Ok((link, addr)) => {
                let who = crate::tls::identity::peer_name(Some(link.peer_certificates()));
                r.line("server cert", format!("{}: {addr} is {who}; carries {}", s.endpoint, s.server_name))
            }
            Err(crate::tunnel::refuse::RefuseReason::Unreachable(e)) => r.warnings.push(format!(
                "server {}: not reachable now ({e}); its certificate was not checked",
                s.endpoint
            )),
            Err(e) => r.problems.push(format!("server {}: handshake refused: {e}", s.endpoint)),
        }
    }
}

/// Certificate, key and CA: what they are, and whether they fit together.
fn own_material(r: &mut Report, files: &TlsFiles, load_error: Option<String>, server: bool) {
    let now = OffsetDateTime::now_utc();
    let leaf = ca_tool::pem::load_certs(&files.cert).ok().and_then(|c| c.into_iter().next());
    match leaf.as_ref().map(|der| CertInfo::parse(der)) {
        Some(Ok(info)) => {
            let mut names: Vec<String> = Vec::new();
            for n in info.names().map(str::to_owned).chain(info.ip_addresses.iter().map(ToString::to_string))
            {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            r.line(
                "certificate",
                format!(
                    "{} ({}; SANs {}; expires {}, {} days)",
                    files.cert.display(),
                    info.subject,
                    if names.is_empty() { "-".into() } else { names.join(", ") },
                    format_time(info.not_after),
                    (info.not_after - now).whole_days()
                ),
            );
            dates(r, "certificate", &files.cert, info.not_before, info.not_after, now);
        }
        Some(Err(e)) => r.problems.push(format!("{}: {e}", files.cert.display())),
        None => {}
    }
    match &load_error {
        Some(e) => r.problems.push(e.clone()),
        None => r.line("key", format!("{} matches the certificate", key_path(files).display())),
    }
    let cas = ca_tool::pem::load_certs(&files.ca).unwrap_or_default();
    for ca in &cas {
        if let Ok(info) = CertInfo::parse(ca) {
            r.line(
                "ca",
                format!("{} ({}; expires {})", files.ca.display(), info.subject, format_time(info.not_after)),
            );
            dates(r, "CA certificate", &files.ca, info.not_before, info.not_after, now);
        }
    }
    if let (Some(leaf), false, None) = (&leaf, cas.is_empty(), &load_error) {
        match chains(leaf, &cas, server) {
            Ok(()) => r.line(
                "chain",
                format!(
                    "the certificate chains to the CA as a {} certificate",
                    if server { "server" } else { "client" }
                ),
            ),
            Err(e) => r.problems.push(format!(
                "{}: does not chain to {} ({e})",
                files.cert.display(),
                files.ca.display()
            )),
        }
    }
}

fn key_path(files: &TlsFiles) -> PathBuf {
    files.key.clone().unwrap_or_else(|| files.cert.clone())
}

fn dates(
    r: &mut Report,
    what: &str,
    path: &Path,
    from: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
) {
    if until < now {
        r.problems.push(format!("{}: the {what} expired on {}", path.display(), format_time(until)));
    } else if from > now {
        r.problems.push(format!("{}: the {what} is not valid before {}", path.display(), format_time(from)));
    } else if until - now < crate::ops::expiry::WARN_WITHIN {
        r.warnings.push(format!(
            "{}: the {what} expires within 30 days ({})",
            path.display(),
            format_time(until)
        ));
    }
}

/// Verifies `leaf` against `cas` the way the peer will: as a server or a client certificate.
fn chains(
    leaf: &rustls::pki_types::CertificateDer<'static>,
    cas: &[rustls::pki_types::CertificateDer<'static>],
    server: bool,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    let roots = Arc::new(roots);
    let provider = crate::tls::provider();
    let now = UnixTime::now();
    if server {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        let info = CertInfo::parse(leaf).map_err(|e| e.to_string())?;
        let name = info.names().next().map(str::to_owned).ok_or("no name to check it against")?;
        let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
        verifier.verify_server_cert(leaf, &[], &name, &[], now).map(|_| ()).map_err(|e| e.to_string())
    } else {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        verifier.verify_client_cert(leaf, &[], now).map(|_| ()).map_err(|e| e.to_string())
    }
}

fn crl(r: &mut Report, path: &Path, ca: &Path) {
    let ca_subjects: Vec<String> = ca_tool::pem::load_certs(ca)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| CertInfo::parse(c).ok())
        .map(|i| i.subject)
        .collect();
    for der in ca_tool::pem::load_crls(path).unwrap_or_default() {
        let Ok(info) = CrlInfo::parse(&der) else { continue };
        let next = info.next_update.map(format_time).unwrap_or_else(|| "-".into());
        r.line(
            "crl",
            format!(
                "{} (issuer {}; next update {next}; {} revoked)",
                path.display(),
                info.issuer,
                info.revoked.len()
            ),
        );
        if !ca_subjects.contains(&info.issuer) {
            r.problems.push(format!(
                "{}: issued by {}, not by the CA in {}",
                path.display(),
                info.issuer,
                ca.display()
            ));
        }
        let now = OffsetDateTime::now_utc();
        match info.next_update {
            Some(at) if at < now => r.problems.push(format!(
                "{}: nextUpdate {} has passed; publish a fresh CRL (ca-tool crl)",
                path.display(),
                format_time(at)
            )),
            Some(at) if at - now < crate::ops::expiry::WARN_WITHIN => r.warnings.push(format!(
                "{}: nextUpdate within 30 days ({})",
                path.display(),
                format_time(at)
            )),
            _ => {}
        }
    }
}
