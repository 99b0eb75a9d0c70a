//! `nfs-tls-proxy check --config FILE`: loads the configuration exactly as start-up does (the same
//! argument merge, the same resolve, the same TLS loader) and reports what it found. Every problem is
//! one line; any problem makes the command fail, so it fits `ExecStartPre` and rc.d's `precmd`.

use std::fmt::Write as _;
use std::path::Path;

use ca_tool::inspect::{format_time, CrlInfo};
use time::OffsetDateTime;

use crate::config::{self, CheckMode, Command};
use crate::tls::validate::{validate, Crl, Findings, Reader, Role};

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
            Ok(cfg) => {
                check_server(&mut r, &cfg);
                ktls_line(&mut r, &cfg.common);
            }
            Err(e) => r.problems.push(e.to_string()),
        },
        Command::Client(args) => match config::Client::resolve(&args) {
            Ok(cfg) => {
                check_client(&mut r, &cfg).await;
                ktls_line(&mut r, &cfg.common);
            }
            Err(e) => r.problems.push(e.to_string()),
        },
        _ => r.problems.push("not a server or client configuration".into()),
    }
    r
}

/// Who will seal and open the records of tunnels on this host (`--ktls`, and what the kernel takes).
fn ktls_line(r: &mut Report, c: &config::Common) {
    match c.ktls {
        config::Ktls::Off => r.line("ktls", "off (--ktls off): rustls' record layer"),
        config::Ktls::Auto => r.line("ktls", crate::tls::ktls::describe()),
    }
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
    let reader = Reader::after_drop(c.privileges.as_ref());
    let crl = cfg.crl.as_deref().map(|path| Crl { path, enforce_expiry: cfg.enforce_crl_expiry });
    if absorb(r, validate(&c.tls, crl, Role::Server, reader, OffsetDateTime::now_utc())) {
        // The loader itself, for anything the validation does not look at.
        if let Err(e) = crate::tls::server_config(
            &c.tls,
            cfg.crl.as_deref(),
            cfg.enforce_crl_expiry,
            &cfg.allow,
            c.min_tls,
            reader,
        ) {
            r.problems.push(e.to_string());
        }
    }
    match cfg.crl.as_deref() {
        Some(crl) => crl_behind_ca(r, crl, &c.tls.ca),
        None => r.warnings.push("no --crl: a certificate can only be withdrawn by replacing the CA".into()),
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
    backend_exposed(r, cfg);
}

/// Warns when the CRL is older than the one the CA last signed (`crl_signed_at` in ca-tool's
/// index.toml), i.e. a `ca-tool revoke` or `ca-tool crl` was not copied here. A storage host usually
/// has no CA directory, so it is looked for only where the docs put it: the directory of `--ca`
/// itself, or its `ca/` subdirectory (f0: `ca-tool import --dir /usr/local/etc/nfs-tls-proxy/ca`
/// next to `ca = "/usr/local/etc/nfs-tls-proxy/ca-cert.pem"`); without it nothing is compared.
fn crl_behind_ca(r: &mut Report, crl: &Path, ca: &Path) {
    use ca_tool::index::Index;
    let parent = ca.parent().unwrap_or(Path::new(""));
    let Some(dir) = [parent.to_path_buf(), parent.join("ca")].into_iter().find(|d| Index::path(d).is_file())
    else {
        return;
    };
    let index = match Index::load(&dir) {
        Ok(index) => index,
        Err(e) => return r.warnings.push(format!("{e}: the CRL's age was not compared with the CA's")),
    };
    let Some(signed_at) = index.crl_signed_at else { return };
    // The CRL number says it exactly; thisUpdate only to the second (a CRL without a number).
    let behind = |i: &CrlInfo| match i.crl_number.as_deref().and_then(|n| n.parse::<u64>().ok()) {
        Some(number) => number < index.crl_number,
        None => i.this_update < signed_at,
    };
    // An unreadable or empty CRL is already a problem reported by the validation.
    let ders = ca_tool::pem::load_crls(crl).unwrap_or_default();
    let newest = ders.iter().filter_map(|der| CrlInfo::parse(der).ok()).max_by_key(|i| i.this_update);
    if let Some(old) = newest.filter(behind) {
        r.warnings.push(format!(
            "{}: CRL number {} signed {}, but the CA ({}) signed number {} at {}: copy {} to this host \
             (and the other storage host) and reload, or the revocations since are not enforced here",
            crl.display(),
            old.crl_number.as_deref().unwrap_or("-"),
            format_time(old.this_update),
            Index::path(&dir).display(),
            index.crl_number,
            format_time(signed_at),
            dir.join("crl.pem").display(),
        ));
    }
}

/// Warns when the backend is on loopback but its port also answers on one of this host's other
/// addresses: plaintext NFS reachable around the tunnel (nfsd should listen on loopback only).
fn backend_exposed(r: &mut Report, cfg: &config::Server) {
    let host = cfg.backend.host.as_str();
    let on_loopback =
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !on_loopback {
        return;
    }
    let Ok(addrs) = crate::os::host_addresses() else { return };
    let port = cfg.backend.port;
    for ip in addrs {
        // Loopback is where it belongs; fe80:: needs a scope to dial and is not routed anyway.
        if ip.is_loopback() || matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
            continue;
        }
        let addr = std::net::SocketAddr::new(ip, port);
        // Our own listener on that port (the server may serve RFC 9289 clients on :2049) is not nfsd.
        if cfg.listen.iter().any(|l| l.port() == port && (l.ip() == ip || l.ip().is_unspecified())) {
            continue;
        }
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok() {
            r.warnings.push(format!(
                "backend port {port} also answers on {addr}: plaintext NFS is reachable around the tunnel; \
                 let the NFS server listen on 127.0.0.1 only (FreeBSD: nfs_server_flags=\"-t -h 127.0.0.1\"; \
                 Linux: [nfsd] host=127.0.0.1 in /etc/nfs.conf) or firewall the port"
            ));
        }
    }
}

/// Each `--redirect`: whether its rule is in place now (it is while the client runs), and whether the
/// kernel would take the table (`nft -c`, which changes nothing).
fn redirects(r: &mut Report, cfg: &config::Client) {
    let Some(table) = crate::redirect::Table::new(&cfg.redirect, &cfg.listen) else { return };
    let missing = table.missing();
    for rule in &table.rules {
        let state = match &missing {
            Ok(m) if m.contains(rule) => "not in place now: the client installs it at start".to_owned(),
            Ok(_) => "in place".to_owned(),
            Err(e) => format!("cannot tell: {e}"),
        };
        r.line("redirect", format!("{rule} (table inet {}; {state})", table.name));
    }
    if let Err(e) = table.dry_run() {
        r.problems.push(e.to_string());
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
    redirects(r, cfg);
    let c = &cfg.common;
    let reader = Reader::after_drop(c.privileges.as_ref());
    if !absorb(r, validate(&c.tls, None, Role::Client, reader, OffsetDateTime::now_utc())) {
        return;
    }
    let tls = match crate::tls::client_config(&c.tls, c.min_tls, cfg.upstream_protocol, reader) {
        Ok(tls) => tls,
        Err(e) => {
            r.problems.push(e.to_string());
            return;
        }
    };
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
        ktls: false,
        source_port: cfg.upstream_source_port,
        retry_for: std::time::Duration::ZERO,
        // A running client's DNAT would bring `check`'s own dial back to that client.
        redirects: cfg.redirect.clone(),
        failures: Default::default(),
    };
    for s in &cfg.servers {
        match mode.dial(s).await {
            Ok((mut link, addr)) => {
                let who = crate::tls::identity::peer_name(Some(link.peer_certificates()));
                r.line("server cert", format!("{}: {addr} is {who}; carries {}", s.endpoint, s.server_name));
                // In TLS 1.3 the handshake completes before the server has judged our certificate:
                // only an answered NFS NULL call through the tunnel shows it let us in.
                let xid = crate::rpc::next_xid();
                match crate::rpc::nfs_null(&mut link, xid, crate::tunnel::HEALTH_TIMEOUT).await {
                    Ok(()) => r.line(
                        "nfs",
                        format!("{}: an NFS NULL call was answered through the tunnel", s.endpoint),
                    ),
                    Err(e) => {
                        let why = crate::tunnel::client::refused_by(&e);
                        if why.starts_with("refused-by-server") {
                            r.problems.push(format!("server {}: {why}", s.endpoint));
                        } else {
                            r.warnings.push(format!(
                                "server {}: no NFS answer through the tunnel ({why}); is its NFS server up?",
                                s.endpoint
                            ));
                        }
                    }
                }
            }
            Err(crate::tunnel::refuse::RefuseReason::Unreachable(e)) => r.warnings.push(format!(
                "server {}: not reachable now ({e}); its certificate was not checked",
                s.endpoint
            )),
            Err(e) => r.problems.push(format!("server {}: handshake refused: {e}", s.endpoint)),
        }
    }
}

/// Adds what the validation found to the report; returns whether it found no problem.
fn absorb(r: &mut Report, found: Findings) -> bool {
    for (label, text) in found.facts {
        r.line(label, text);
    }
    r.warnings.extend(found.warnings);
    let ok = found.problems.is_empty();
    r.problems.extend(found.problems);
    ok
}
