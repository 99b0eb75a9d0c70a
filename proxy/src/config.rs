//! Configuration: one clap definition per mode; a TOML file (`--config`) uses the long flag names as
//! keys and flags win over it. Raw arguments are resolved once into [`Server`] and [`Client`], whose
//! fields are real types (addresses, durations, non-empty lists), so nothing later re-checks them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::identity::AllowList;
use crate::os::Privileges;

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
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The TOML configuration to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Which mode the file is for (default: `backend` means server, `server` means client).
    #[arg(long, value_name = "server|client")]
    pub mode: Option<crate::check::CheckMode>,
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
    /// Start even if the private key file is readable by group or others.
    #[arg(long)]
    pub insecure_key_permissions: bool,
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
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A host (name or address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self { host: addr.ip().to_string(), port: addr.port() });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let port = port.parse().map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        if host.is_empty() || host.contains(':') || !ca_tool::ca::is_dns_name(host) {
            return Err(format!("{s:?}: {host:?} is not a host name or address"));
        }
        Ok(Self { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

fn parse_tls_version(s: &str) -> Result<TlsVersion, String> {
    match s {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        _ => Err(format!("{s:?}: expected 1.2 or 1.3")),
    }
}

/// TCP keepalive settings for every leg of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    Off,
    /// Probe after this much idle time (then every 10 s, 6 times).
    After(Duration),
}

fn parse_keepalive(s: &str) -> Result<Keepalive, String> {
    if s == "off" {
        return Ok(Keepalive::Off);
    }
    parse_duration(s).map(Keepalive::After)
}

/// `127.0.0.1:9469`, or a bare port for loopback.
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("{s:?} is not an address (e.g. 127.0.0.1:9469) or a port"))
}

/// `10` (seconds), `10s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 10, 10s, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is out of range"))
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// How TLS starts on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// TLS from the first byte (stunnel style).
    #[default]
    Tls,
    /// RFC 9289: an AUTH_TLS NULL probe answered with STARTTLS, then TLS 1.3.
    RpcTls,
}

impl Transport {
    pub fn word(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::RpcTls => "rpc-tls",
        }
    }
}

/// Which local port the backend connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SourcePort {
    /// Whatever the OS picks.
    #[default]
    Any,
    /// A port below 1024 (what Linux's `secure` export option asks for).
    Reserved,
}

/// The certificate files of either mode.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    /// None: the key is in the certificate file.
    pub key: Option<PathBuf>,
    pub ca: PathBuf,
    /// Accept a key file that group or others may read (`--insecure-key-permissions`).
    pub insecure_key_permissions: bool,
}

/// What both modes need besides their own fields.
#[derive(Debug, Clone)]
pub struct Common {
    pub tls: TlsFiles,
    pub min_tls: TlsVersion,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: u32,
    pub keepalive: Keepalive,
    pub drain_timeout: Duration,
    pub reload_every: Option<Duration>,
    /// Where /metrics, /healthz and /tunnels are served.
    pub metrics: Option<SocketAddr>,
    /// Whom to run as after binding.
    pub privileges: Option<Privileges>,
}

/// A resolved server configuration.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub backend: Endpoint,
    pub backend_source_port: SourcePort,
    /// Whether RFC 9289 clients are answered.
    pub rpc_tls: bool,
    pub crl: Option<PathBuf>,
    /// Refuse everyone once the CRL's nextUpdate has passed.
    pub enforce_crl_expiry: bool,
    pub allow: AllowList,
    pub common: Common,
}

/// A resolved client configuration.
#[derive(Debug, Clone)]
pub struct Client {
    pub listen: Vec<SocketAddr>,
    pub servers: Vec<Upstream>,
    pub upstream_protocol: Transport,
    pub common: Common,
}

/// One storage server the client may use, and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: Endpoint,
    pub server_name: String,
}

/// A configuration that cannot be used; one line naming the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required (as a flag, or as a key in the --config file)")]
    Missing(&'static str),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Args(String),
}

pub const DEFAULT_CLIENT_LISTEN: &str = "127.0.0.1:2323";

impl Common {
    fn resolve(args: &CommonArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            tls: TlsFiles {
                cert: args.cert.clone().ok_or(ConfigError::Missing("--cert"))?,
                key: args.key.clone(),
                ca: args.ca.clone().ok_or(ConfigError::Missing("--ca"))?,
                insecure_key_permissions: args.insecure_key_permissions,
            },
            min_tls: args.min_tls.unwrap_or(TlsVersion::Tls13),
            handshake_timeout: args.handshake_timeout.unwrap_or(Duration::from_secs(10)),
            connect_timeout: args.connect_timeout.unwrap_or(Duration::from_secs(5)),
            max_connections: args.max_connections.unwrap_or(1024),
            keepalive: args.keepalive.unwrap_or(Keepalive::After(Duration::from_secs(60))),
            drain_timeout: args.drain_timeout.unwrap_or(Duration::from_secs(5)),
            reload_every: args.reload_every,
            metrics: args.metrics,
            privileges: match &args.user {
                None => None,
                Some(user) => {
                    Some(Privileges::resolve(user, args.group.as_deref()).map_err(ConfigError::Args)?)
                }
            },
        })
    }
}

impl Server {
    pub fn resolve(args: &ServerArgs) -> Result<Self, ConfigError> {
        if args.listen.is_empty() {
            return Err(ConfigError::Missing("--listen"));
        }
        let backend = args.backend.clone().ok_or(ConfigError::Missing("--backend"))?;
        let common = Common::resolve(&args.common)?;
        let backend_source_port = args.backend_source_port.unwrap_or_default();
        if common.privileges.is_some() {
            if backend_source_port == SourcePort::Reserved {
                return Err(ConfigError::Args(
                    "--backend-source-port reserved needs root for every backend connection; it cannot be \
                     combined with --user"
                        .into(),
                ));
            }
            // A VIP is re-bound after every failover, long after privileges are gone.
            if let Some(addr) =
                args.listen.iter().find(|a| a.port() < 1024 && crate::listen::is_followed(**a))
            {
                return Err(ConfigError::Args(format!(
                    "--listen {addr} with --user: after dropping privileges the address could not be bound \
                     again after a failover (port below 1024); use a port from 1024 up or run without --user"
                )));
            }
        }
        Ok(Self {
            listen: args.listen.clone(),
            backend,
            backend_source_port,
            rpc_tls: args.rpc_tls != Some(OnOff::Off),
            crl: args.crl.clone(),
            enforce_crl_expiry: args.enforce_crl_expiry,
            allow: AllowList::new(args.allow_cn.iter().cloned()),
            common,
        })
    }
}

impl Client {
    pub fn resolve(args: &ClientArgs) -> Result<Self, ConfigError> {
        if args.server.is_empty() {
            return Err(ConfigError::Missing("--server"));
        }
        let listen = if args.listen.is_empty() {
            vec![DEFAULT_CLIENT_LISTEN.parse().map_err(|_| ConfigError::Missing("--listen"))?]
        } else {
            args.listen.clone()
        };
        let servers = args
            .server
            .iter()
            .map(|endpoint| Upstream {
                endpoint: endpoint.clone(),
                server_name: args.server_name.clone().unwrap_or_else(|| endpoint.host.clone()),
            })
            .collect();
        Ok(Self {
            listen,
            servers,
            upstream_protocol: args.upstream_protocol.unwrap_or_default(),
            common: Common::resolve(&args.common)?,
        })
    }
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
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(one_line(e.message())))?;
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_plain_seconds_and_units() {
        for (text, want) in [
            ("10", Duration::from_secs(10)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("500ms", Duration::from_millis(500)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "s", "10x", "-1", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_take_addresses_and_host_names() {
        assert_eq!(Endpoint::parse("127.0.0.1:2049"), Ok(Endpoint { host: "127.0.0.1".into(), port: 2049 }));
        assert_eq!(Endpoint::parse("[::1]:2049"), Ok(Endpoint { host: "::1".into(), port: 2049 }));
        assert_eq!(
            Endpoint::parse("f3s-storage-ha:2323"),
            Ok(Endpoint { host: "f3s-storage-ha".into(), port: 2323 })
        );
        for bad in ["f3s", "f3s:", "f3s:99999", ":2323", "a b:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
