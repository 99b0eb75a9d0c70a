//! Configuration: raw arguments ([`args`]: clap + the TOML file) are resolved once into [`Server`] and
//! [`Client`], whose fields are real types (addresses, durations, non-empty lists), so nothing later
//! re-checks them.

mod allow;
pub mod args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use allow::AllowList;
pub use args::*;

use crate::os::Privileges;

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

/// Which mode a configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckMode {
    Server,
    Client,
}

/// TCP keepalive settings for every leg of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    Off,
    /// Probe after this much idle time (then every 10 s, 6 times).
    After(Duration),
}

/// Defences against floods, stalls and dead peers; see [`Limits::default`] for the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The listen queue length asked for (`--listen-backlog`); None: the system's maximum.
    pub listen_backlog: Option<u32>,
    /// Connections in their handshake (or RFC 9289 probe) at once, apart from `max_connections`.
    pub max_handshakes: u32,
    /// A tunnel whose write makes no progress for this long ends (`--write-stall-timeout`).
    pub write_stall_timeout: Option<Duration>,
    /// TCP_USER_TIMEOUT on every leg (`--tcp-user-timeout`).
    pub tcp_user_timeout: TcpUserTimeout,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            listen_backlog: None,
            max_handshakes: 256,
            write_stall_timeout: Some(Duration::from_secs(120)),
            tcp_user_timeout: TcpUserTimeout::FromKeepalive,
        }
    }
}

/// How long sent data may stay unacknowledged (or keepalive probes unanswered) before the kernel
/// gives up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpUserTimeout {
    /// What keepalive would take to give up: idle + 6 probes (`Keepalive::probe_interval` apart);
    /// off when keepalive is off.
    FromKeepalive,
    Off,
    After(Duration),
}

impl Keepalive {
    /// Probes at most every 10 s, and never further apart than the idle time itself.
    pub fn probe_interval(idle: Duration) -> Duration {
        idle.min(Duration::from_secs(10)).max(Duration::from_secs(1))
    }

    /// Unanswered probes before keepalive gives up.
    pub const PROBES: u32 = 6;
}

impl TcpUserTimeout {
    /// The value to set on sockets, given the keepalive setting.
    pub fn resolve(self, keepalive: Keepalive) -> Option<Duration> {
        match (self, keepalive) {
            (Self::After(d), _) => Some(d),
            (Self::Off, _) | (Self::FromKeepalive, Keepalive::Off) => None,
            (Self::FromKeepalive, Keepalive::After(idle)) => {
                Some(idle + Keepalive::probe_interval(idle) * Keepalive::PROBES)
            }
        }
    }
}

fn parse_tcp_user_timeout(s: &str) -> Result<TcpUserTimeout, String> {
    match s {
        "off" => Ok(TcpUserTimeout::Off),
        "keepalive" => Ok(TcpUserTimeout::FromKeepalive),
        _ => parse_duration(s).map(TcpUserTimeout::After),
    }
}

/// A duration, or `off` (None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrOff(pub Option<Duration>);

fn parse_off_or_duration(s: &str) -> Result<DurationOrOff, String> {
    if s == "off" {
        return Ok(DurationOrOff(None));
    }
    parse_duration(s).map(|d| DurationOrOff(Some(d)))
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

/// `--redirect ADDR[:PORT]`: an IPv4 or IPv6 address (IPv6 with a port in brackets), port 2049 if
/// none is given.
fn parse_redirect(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(s);
    bare.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, NFS_PORT)).map_err(|_| {
        format!("{s:?} is not an address with an optional port (e.g. 192.168.1.138 or [2001:db8::1]:2049)")
    })
}

/// Where NFS servers listen, and where a `--redirect` without a port points.
pub const NFS_PORT: u16 = 2049;

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--ktls`: whether the data phase is handed to the kernel's TLS where it can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ktls {
    /// The kernel takes the records after the handshake where it can (Linux's `tls` module).
    #[default]
    Auto,
    /// The records stay in rustls.
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
    /// Records under one key before we change keys (hidden test knob; default: the library's limits).
    pub key_update_every: Option<u64>,
    /// `--ktls`: kernel TLS for the data phase where the kernel can take it.
    pub ktls: Ktls,
    /// Hidden test knob `--tls-suite`: this cipher suite only.
    pub tls_suite: Option<String>,
    /// `--pid-file`: the process id, and next to it each reload's outcome.
    pub pid_file: Option<PathBuf>,
    /// Listen queue, handshake budget, write stalls, TCP user timeout.
    pub limits: Limits,
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
    pub upstream_source_port: SourcePort,
    /// How long an accepted connection is held while every server is unreachable (zero: not held).
    pub upstream_retry_for: Duration,
    /// Addresses whose local TCP connections are sent to our listener (Linux, nftables).
    pub redirect: Vec<SocketAddr>,
    /// How often the redirect rules are checked and put back.
    pub redirect_check_every: Duration,
    pub common: Common,
}

/// `--upstream-retry-for` when not given.
pub const DEFAULT_UPSTREAM_RETRY_FOR: Duration = Duration::from_secs(10);
/// How often the `--redirect` rules are checked when the (hidden) knob is not given.
pub const DEFAULT_REDIRECT_CHECK_EVERY: Duration = Duration::from_secs(5);

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
            key_update_every: args.key_update_every,
            ktls: args.ktls.unwrap_or_default(),
            tls_suite: args.tls_suite.clone(),
            pid_file: args.pid_file.clone(),
            limits: Limits {
                listen_backlog: args.listen_backlog,
                max_handshakes: args.max_handshakes.unwrap_or(Limits::default().max_handshakes),
                write_stall_timeout: args
                    .write_stall_timeout
                    .map_or(Limits::default().write_stall_timeout, |DurationOrOff(d)| d),
                tcp_user_timeout: args.tcp_user_timeout.unwrap_or(TcpUserTimeout::FromKeepalive),
            },
            privileges: match &args.user {
                None => None,
                Some(user) => {
                    Some(Privileges::resolve(user, args.group.as_deref()).map_err(ConfigError::Args)?)
                }
            },
        })
    }
}

/// Refuses a listen address given twice (binding it twice would fail with "address in use").
fn no_duplicates(listen: &[SocketAddr]) -> Result<(), ConfigError> {
    for (i, a) in listen.iter().enumerate() {
        if listen[..i].contains(a) {
            return Err(ConfigError::Args(format!("--listen {a} is given twice")));
        }
    }
    Ok(())
}

impl Server {
    pub fn resolve(args: &ServerArgs) -> Result<Self, ConfigError> {
        if args.listen.is_empty() {
            return Err(ConfigError::Missing("--listen"));
        }
        no_duplicates(&args.listen)?;
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
            if let Some(addr) = args.listen.iter().find(|a| a.port() < 1024 && crate::os::is_followed(**a)) {
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
        no_duplicates(&listen)?;
        let servers = args
            .server
            .iter()
            .map(|endpoint| Upstream {
                endpoint: endpoint.clone(),
                server_name: args.server_name.clone().unwrap_or_else(|| endpoint.host.clone()),
            })
            .collect();
        let common = Common::resolve(&args.common)?;
        let upstream_source_port = args.upstream_source_port.unwrap_or_default();
        if common.privileges.is_some() {
            if upstream_source_port == SourcePort::Reserved {
                return Err(ConfigError::Args(
                    "--upstream-source-port reserved needs root or CAP_NET_BIND_SERVICE for every upstream \
                     connection; it cannot be combined with --user (under systemd: User= with \
                     AmbientCapabilities=CAP_NET_BIND_SERVICE)"
                        .into(),
                ));
            }
            if !args.redirect.is_empty() {
                return Err(ConfigError::Args(
                    "--redirect needs CAP_NET_ADMIN for as long as the client runs (to re-check the rule and \
                     remove it at exit); it cannot be combined with --user (under systemd: User= with \
                     AmbientCapabilities=CAP_NET_ADMIN)"
                        .into(),
                ));
            }
        }
        check_redirects(&args.redirect, &listen, &args.server)?;
        Ok(Self {
            listen,
            servers,
            upstream_protocol: args.upstream_protocol.unwrap_or_default(),
            upstream_source_port,
            upstream_retry_for: args.upstream_retry_for.unwrap_or(DEFAULT_UPSTREAM_RETRY_FOR),
            redirect: args.redirect.clone(),
            redirect_check_every: args.redirect_check_every.unwrap_or(DEFAULT_REDIRECT_CHECK_EVERY),
            common,
        })
    }
}

/// The settings a reload cannot apply (only the TLS material and the allow-list are reloaded):
/// the long flag names whose value differs between `old` and `new`.
fn restart_keys(pairs: &[(&'static str, String, String)]) -> Vec<&'static str> {
    pairs.iter().filter(|(_, a, b)| a != b).map(|(k, _, _)| *k).collect()
}

fn common_pairs(a: &Common, b: &Common) -> Vec<(&'static str, String, String)> {
    let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
    vec![
        ("min-tls", d(&a.min_tls), d(&b.min_tls)),
        ("handshake-timeout", d(&a.handshake_timeout), d(&b.handshake_timeout)),
        ("connect-timeout", d(&a.connect_timeout), d(&b.connect_timeout)),
        ("max-connections", d(&a.max_connections), d(&b.max_connections)),
        ("keepalive", d(&a.keepalive), d(&b.keepalive)),
        ("listen-backlog", d(&a.limits.listen_backlog), d(&b.limits.listen_backlog)),
        ("max-handshakes", d(&a.limits.max_handshakes), d(&b.limits.max_handshakes)),
        ("write-stall-timeout", d(&a.limits.write_stall_timeout), d(&b.limits.write_stall_timeout)),
        ("tcp-user-timeout", d(&a.limits.tcp_user_timeout), d(&b.limits.tcp_user_timeout)),
        ("drain-timeout", d(&a.drain_timeout), d(&b.drain_timeout)),
        ("reload-every", d(&a.reload_every), d(&b.reload_every)),
        ("metrics", d(&a.metrics), d(&b.metrics)),
        ("user", d(&a.privileges), d(&b.privileges)),
        ("pid-file", d(&a.pid_file), d(&b.pid_file)),
        ("ktls", d(&a.ktls), d(&b.ktls)),
        ("tls-suite", d(&a.tls_suite), d(&b.tls_suite)),
    ]
}

impl Server {
    /// The changed settings in `new` that only a restart applies.
    pub fn restart_needed(&self, new: &Server) -> Vec<&'static str> {
        let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
        let mut pairs = vec![
            ("listen", d(&self.listen), d(&new.listen)),
            ("backend", d(&self.backend), d(&new.backend)),
            ("backend-source-port", d(&self.backend_source_port), d(&new.backend_source_port)),
            ("rpc-tls", d(&self.rpc_tls), d(&new.rpc_tls)),
        ];
        pairs.extend(common_pairs(&self.common, &new.common));
        restart_keys(&pairs)
    }
}

impl Client {
    /// The changed settings in `new` that only a restart applies.
    pub fn restart_needed(&self, new: &Client) -> Vec<&'static str> {
        let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
        let mut pairs = vec![
            ("listen", d(&self.listen), d(&new.listen)),
            ("server", d(&self.servers), d(&new.servers)),
            ("upstream-protocol", d(&self.upstream_protocol), d(&new.upstream_protocol)),
            ("upstream-source-port", d(&self.upstream_source_port), d(&new.upstream_source_port)),
            ("upstream-retry-for", d(&self.upstream_retry_for), d(&new.upstream_retry_for)),
            ("redirect", d(&self.redirect), d(&new.redirect)),
        ];
        pairs.extend(common_pairs(&self.common, &new.common));
        restart_keys(&pairs)
    }
}

/// Whether a connection to `a` is one to `b` as a DNAT rule on `b` sees it: the same port and the
/// same address once an IPv4-mapped IPv6 address is taken as the IPv4 one it carries (it leaves as
/// IPv4) and the scope id is ignored (nft matches the address alone).
pub(crate) fn same_destination(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// `--redirect` is Linux's (nftables); each one needs a `--listen` address of its family to point at,
/// and must not catch the client's own connections to a `--server`.
fn check_redirects(
    redirect: &[SocketAddr],
    listen: &[SocketAddr],
    servers: &[Endpoint],
) -> Result<(), ConfigError> {
    let Some(first) = redirect.first() else { return Ok(()) };
    if !cfg!(target_os = "linux") {
        let to = listen.first().copied().unwrap_or(*first);
        return Err(ConfigError::Args(format!(
            "--redirect needs Linux (nftables); on FreeBSD let pf do it (untested here): in pf.conf \
             `rdr pass on lo0 inet proto tcp from any to {ip} port {port} -> {lip} port {lport}` and \
             `pass out on egress route-to lo0 inet proto tcp from any to {ip} port {port}`",
            ip = first.ip(),
            port = first.port(),
            lip = to.ip(),
            lport = to.port(),
        )));
    }
    for r in redirect {
        if !listen.iter().any(|l| l.is_ipv4() == r.is_ipv4()) {
            return Err(ConfigError::Args(format!(
                "--redirect {r}: no --listen address of the same IP version to send it to (add e.g. --listen {})",
                if r.is_ipv4() { "127.0.0.1:2323" } else { "[::1]:2323" }
            )));
        }
        if listen.iter().any(|l| same_destination(*l, *r)) {
            return Err(ConfigError::Args(format!("--redirect {r} is a --listen address: it would loop")));
        }
        if let Some(s) = servers.iter().find(|s| {
            s.host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| same_destination(SocketAddr::new(ip, s.port), *r))
        }) {
            return Err(ConfigError::Args(format!(
                "--redirect {r} would also catch the client's own connections to --server {s}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_take_v4_and_v6_addresses_with_port_2049_by_default() {
        for (text, want) in [
            ("192.0.2.138", "192.0.2.138:2049"),
            ("192.0.2.138:2323", "192.0.2.138:2323"),
            ("2001:db8::1", "[2001:db8::1]:2049"),
            ("[2001:db8::1]", "[2001:db8::1]:2049"),
            ("[2001:db8::1]:20490", "[2001:db8::1]:20490"),
        ] {
            assert_eq!(parse_redirect(text), Ok(want.parse().expect("addr")), "{text}");
        }
        for bad in ["", "f3s-storage-ha", "192.0.2.138:", "192.0.2.138:99999", "[2001:db8::1]:"] {
            assert!(parse_redirect(bad).is_err(), "{bad}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_server_written_as_an_ipv4_mapped_address_is_still_caught_by_its_redirect() {
        let redirect: SocketAddr = "192.0.2.138:2049".parse().expect("addr");
        let listen = ["127.0.0.1:2323".parse().expect("addr")];
        let server = Endpoint::parse("[::ffff:192.0.2.138]:2049").expect("server");
        let Err(ConfigError::Args(why)) = check_redirects(&[redirect], &listen, &[server]) else {
            panic!("a --server the redirect catches was accepted");
        };
        assert!(why.contains("would also catch the client's own connections"), "{why}");
        assert!(same_destination(
            "[fe80::1%2]:2049".parse().expect("addr"),
            "[fe80::1]:2049".parse().expect("addr")
        ));
        assert!(!same_destination("192.0.2.138:2050".parse().expect("addr"), redirect));
    }

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
    fn the_tcp_user_timeout_follows_keepalive_unless_set() {
        let after = |s| Keepalive::After(Duration::from_secs(s));
        let default = TcpUserTimeout::FromKeepalive;
        assert_eq!(default.resolve(after(60)), Some(Duration::from_secs(120)));
        assert_eq!(default.resolve(after(2)), Some(Duration::from_secs(14)));
        assert_eq!(default.resolve(Keepalive::Off), None);
        assert_eq!(
            TcpUserTimeout::After(Duration::from_secs(5)).resolve(Keepalive::Off),
            Some(Duration::from_secs(5))
        );
        assert_eq!(TcpUserTimeout::Off.resolve(after(60)), None);
        assert_eq!(parse_tcp_user_timeout("keepalive"), Ok(default));
        assert_eq!(parse_off_or_duration("off"), Ok(DurationOrOff(None)));
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
