//! The command line as clap sees it (one definition per subcommand), and the `--config` TOML file
//! turned into the same flags (its keys are the long flag names; flags on the command line win).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{
    parse_duration, parse_keepalive, parse_metrics_addr, parse_off_or_duration, parse_redirect,
    parse_tcp_user_timeout, parse_tls_version, CheckMode, ConfigError, DurationOrOff, Endpoint, Keepalive,
    Ktls, OnOff, SourcePort, TcpUserTimeout, TlsVersion, Transport,
};

/// A TLS tunnel for NFS: stunnel's replacement on the storage servers (`server`) and the NFS clients
/// (`client`).
#[derive(Debug, Parser)]
#[command(name = "nfs-tls-proxy", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accept TLS from NFS clients, check their certificate, forward to the NFS server.
    Server(ServerArgs),
    /// Accept plaintext NFS on loopback, forward it over TLS to the storage server.
    Client(ClientArgs),
    /// Run a server, a client and a backend in one process on loopback with demo certificates.
    Demo(LogArgs),
    /// Load a configuration file exactly as start-up would, print what it holds, and fail on any
    /// problem (one line each). For ExecStartPre / rc.d precmd.
    Check(CheckArgs),
    /// Translate a stunnel.conf into an nfs-tls-proxy TOML configuration (printed to stdout).
    ConvertStunnel(ConvertArgs),
    /// Write the man pages and shell completions into a directory.
    Manual(ManualArgs),
    /// Ask a running proxy to reload (SIGHUP) and wait for the outcome: exits non-zero when the
    /// reload failed (for ExecReload and rc.d's reload).
    Reload(ReloadArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    /// The pid file the proxy was started with (`--pid-file`).
    #[arg(long, value_name = "FILE")]
    pub pid_file: PathBuf,
    /// How long to wait for the outcome.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The TOML configuration to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Which mode the file is for (default: `backend` means server, `server` means client).
    #[arg(long, value_name = "server|client")]
    pub mode: Option<CheckMode>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// The stunnel configuration file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Which stunnel service (section name) to translate when the file has several.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ManualArgs {
    /// Directory for man/*.1 and completions/ (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging flags, shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags both tunnel modes share.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML file with the same keys as the long flags (e.g. `listen = ["127.0.0.1:2323"]`); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This host's certificate (PEM; may also hold the key, as stunnel's combined file does).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This host's private key (PEM); defaults to the key inside --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) the peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Lowest TLS version to accept: 1.3 (default) or 1.2.
    #[arg(long, value_name = "VERSION", value_parser = parse_tls_version)]
    pub min_tls: Option<TlsVersion>,
    /// Time allowed for the TLS handshake (seconds, or with a unit: 10s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Time allowed to connect to the backend / each server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Most tunnels open at once; further connections are refused with a log line.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// TCP keepalive idle time on every leg, or `off`.
    #[arg(long, value_name = "DURATION|off", value_parser = parse_keepalive)]
    pub keepalive: Option<Keepalive>,
    /// Linux: give up on a peer that leaves sent data unacknowledged (or keepalive unanswered) this
    /// long, on every leg (TCP_USER_TIMEOUT); default `keepalive`: keepalive idle + 6 probes.
    #[arg(long, value_name = "DURATION|keepalive|off", value_parser = parse_tcp_user_timeout)]
    pub tcp_user_timeout: Option<TcpUserTimeout>,
    /// End a tunnel whose writes (to either side) make no progress for this long (default 120s).
    #[arg(long, value_name = "DURATION|off", value_parser = parse_off_or_duration)]
    pub write_stall_timeout: Option<DurationOrOff>,
    /// Connections in their handshake at once, apart from --max-connections (default 256); when
    /// full, the oldest handshake of the busiest source address is dropped for a newcomer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: Option<u32>,
    /// Listen queue length (default: the system's maximum, e.g. net.core.somaxconn).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub listen_backlog: Option<u32>,
    /// On SIGTERM/SIGINT, how long open tunnels may finish before they are cut.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Re-read certificate, key, CA, CRL and allow-list this often, as SIGHUP does (e.g. 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reload_every: Option<Duration>,
    /// After binding, run as this user (name or uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// After binding, run as this group (name or gid; default: the user's group). Needs --user.
    #[arg(long, value_name = "GROUP", requires = "user")]
    pub group: Option<String>,
    /// Worker threads: 1 runs everything on one thread (lowest latency per tunnel); default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Serve /metrics, /healthz and /tunnels over plain HTTP here (ADDR, or PORT for 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Write the process id here at start (removed at exit), and each reload's outcome to FILE.reload,
    /// which `nfs-tls-proxy reload --pid-file FILE` waits for.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Restart without refusing a connection: a proxy started with the same PATH takes this one's
    /// listening sockets over this Unix socket, and this one then drains and exits.
    #[arg(long, value_name = "PATH")]
    pub handover_socket: Option<PathBuf>,
    /// Start even if the private key file is readable by group or others.
    #[arg(long)]
    pub insecure_key_permissions: bool,
    /// Kernel TLS for the data phase [default: auto]: `auto` hands the records to the kernel after
    /// the handshake where it can take them (Linux's `tls` module; the data then moves with splice),
    /// `off` keeps them in rustls.
    #[arg(long, value_name = "auto|off")]
    pub ktls: Option<Ktls>,
    /// Test knob: change keys after this many records sealed under one key (stunnel-style peers:
    /// our KeyUpdate; RFC 9289 peers: the tunnel ends at an RPC record boundary instead).
    #[arg(long, value_name = "N", hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_update_every: Option<u64>,
    /// Test knob: offer and accept only these cipher suites (rustls' names, comma-separated, e.g.
    /// TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256), e.g. to run kTLS with each AEAD.
    #[arg(long, value_name = "NAME[,NAME...]", hide = true)]
    pub tls_suite: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to accept TLS on (repeatable), e.g. 192.168.1.138:2323.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// The NFS server to forward to, e.g. 127.0.0.1:2049.
    #[arg(long, value_name = "HOST:PORT", value_parser = Endpoint::parse)]
    pub backend: Option<Endpoint>,
    /// CRL file (PEM); a revoked client is refused, and unknown revocation status fails closed.
    #[arg(long, value_name = "FILE")]
    pub crl: Option<PathBuf>,
    /// Refuse every client once the CRL's nextUpdate has passed (default: keep admitting, with a
    /// warning 30 days ahead, daily, and as a metric).
    #[arg(long)]
    pub enforce_crl_expiry: bool,
    /// Admit only clients whose certificate CN or a DNS SAN is this name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub allow_cn: Vec<String>,
    /// Answer RFC 9289 RPC-with-TLS clients (AUTH_TLS probe, then TLS 1.3) on the same port as
    /// stunnel-style TLS clients.
    #[arg(long, value_name = "on|off")]
    pub rpc_tls: Option<OnOff>,
    /// Source port towards the backend: `any`, or `reserved` (below 1024, for Linux NFS exports
    /// with the default `secure` option; needs root).
    #[arg(long, value_name = "any|reserved")]
    pub backend_source_port: Option<SourcePort>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Local plaintext address (repeatable; default 127.0.0.1:2323). Add 127.0.0.1:2049 so mounts need no port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Storage server HOST:PORT (repeatable; tried in order until one completes the handshake).
    #[arg(long, value_name = "HOST:PORT", value_parser = Endpoint::parse)]
    pub server: Vec<Endpoint>,
    /// Name the server certificate must carry (default: the host part of each --server).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// How to talk to the servers: `tls` (nfs-tls-proxy or stunnel servers) or `rpc-tls` (RFC 9289:
    /// AUTH_TLS probe, then TLS 1.3; e.g. FreeBSD's nfsd with rpc.tlsservd).
    #[arg(long, value_name = "tls|rpc-tls")]
    pub upstream_protocol: Option<Transport>,
    /// Source port towards the servers: `any`, or `reserved` (below 1024, for Linux NFS exports
    /// with the default `secure` option when talking rpc-tls straight to nfsd; needs root or
    /// CAP_NET_BIND_SERVICE).
    #[arg(long, value_name = "any|reserved")]
    pub upstream_source_port: Option<SourcePort>,
    /// While every server is unreachable (or closes the handshake half-way), hold an accepted
    /// connection and retry the servers (with backoff up to 1 s) for this long before closing it, so
    /// a hard mount waits instead of reconnecting in a tight loop (default 10s; 0: close at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upstream_retry_for: Option<Duration>,
    /// Linux: send local TCP connections to ADDR[:PORT] (port 2049 by default) to the first --listen
    /// address of the same family, with an nftables DNAT rule in a table of the proxy's own that lives
    /// as long as the client (repeatable; e.g. the storage VIP, then f0's and f1's own addresses).
    /// Needs CAP_NET_ADMIN. Catches NFS clients that connect straight to the server's port 2049.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_redirect)]
    pub redirect: Vec<SocketAddr>,
    /// Test knob: how often the --redirect rules are checked and put back if missing.
    #[arg(long, value_name = "DURATION", hide = true, value_parser = parse_duration)]
    pub redirect_check_every: Option<Duration>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses the command line, merging in the `--config` file of a tunnel subcommand: each TOML key is
/// a long flag name, its value is given as that flag unless the command line sets the flag itself.
pub fn parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some((sub_name, sub_matches)) =
        matches.subcommand().filter(|(n, _)| matches!(*n, "server" | "client"))
    else {
        return Cli::from_arg_matches(&matches);
    };
    let Some(file) = sub_matches.try_get_one::<PathBuf>("config").ok().flatten().cloned() else {
        return Cli::from_arg_matches(&matches);
    };
    let sub = command.find_subcommand(sub_name).expect("matched subcommand exists");
    let file_args = file_to_args(&file, sub, sub_matches)
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")))?;
    // argv: program, subcommand, the file's flags, then the command line's own (later ones win).
    let position = args.iter().position(|a| a == sub_name).unwrap_or(1);
    let mut merged: Vec<OsString> = args[..=position].to_vec();
    merged.extend(file_args.into_iter().map(OsString::from));
    merged.extend(args[position + 1..].iter().cloned());
    let merged_matches = Cli::command().args_override_self(true).try_get_matches_from(merged)?;
    Cli::from_arg_matches(&merged_matches)
}

fn file_to_args(
    path: &Path,
    sub: &clap::Command,
    cli: &clap::ArgMatches,
) -> Result<Vec<String>, ConfigError> {
    let err = |detail: String| ConfigError::File { path: path.to_owned(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| line_col(&text, s.start)).unwrap_or_default();
        err(format!("{at}{}", one_line(e.message())))
    })?;
    // Every unknown key at once, each with its line, rather than one per attempt.
    let unknown: Vec<String> = table
        .keys()
        .filter(|key| {
            let flag = key.replace('_', "-");
            flag == "config" || !sub.get_arguments().any(|a| a.get_long() == Some(flag.as_str()))
        })
        .map(|key| match key_line(&text, key) {
            Some(line) => format!("{key:?} (line {line})"),
            None => format!("{key:?}"),
        })
        .collect();
    if !unknown.is_empty() {
        return Err(err(format!(
            "unknown key{} {} (keys are the long flag names of `nfs-tls-proxy {} --help`)",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            sub.get_name()
        )));
    }
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
            .ok_or_else(|| err(format!("unknown key {key:?}")))?;
        if cli.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue; // the flag wins
        }
        if let toml::Value::Boolean(on) = value {
            if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                return Err(err(format!("key {key:?}: expected a value, not true/false")));
            }
            if *on {
                out.push(format!("--{flag}"));
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return Err(err(format!("key {key:?}: expected a string, a number or a list of them"))),
            };
            out.push(format!("--{flag}={text}"));
        }
    }
    Ok(out)
}

/// `line L, column C: ` of byte `offset` in `text` (1-based).
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: ")
}

/// The line on which top-level `key` is set.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(key).or_else(|| l.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
