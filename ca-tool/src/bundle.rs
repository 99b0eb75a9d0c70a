//! `ca-tool bundle NAME --out DIR`: exactly what one host needs, in one directory, written whole or
//! not at all: its certificate and key, the CA certificate, for a server the CRL, a ready TOML
//! configuration for its mode (keys are nfs-tls-proxy's long flag names) and `INSTALL.txt` with the
//! commands that put the files in place and load them.
//!
//! Modes: the key 0640 (meant to be installed `root:nfs-tls-proxy`, the group the service runs
//! as), everything else 0644, the directory 0750. The files are written into a temporary directory
//! beside DIR, which is renamed to DIR at the end: an interrupted run leaves no half bundle.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::{CaDir, CaError, CA_CERT, CRL};
use crate::index::{CertKind, Index};
use crate::inspect::{format_time, legacy_problem, CertInfo};

/// The port nfs-tls-proxy listens on in the f3s setup (stunnel's, kept).
pub const DEFAULT_PORT: u16 = 2323;
/// Mode of the key in a bundle: owner and group (the service's group) may read it.
pub const KEY_MODE: u32 = 0o640;
/// Mode of the bundle directory.
pub const DIR_MODE: u32 = 0o750;

/// How the host runs the proxy; decides the install directory and the reload command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// FreeBSD rc.d (`dist/freebsd/nfs_tls_proxy`), files in /usr/local/etc/nfs-tls-proxy.
    Freebsd,
    /// systemd (`dist/systemd/*.service`), files in /etc/nfs-tls-proxy.
    Systemd,
}

impl System {
    fn default_dir(self) -> &'static str {
        match self {
            System::Freebsd => "/usr/local/etc/nfs-tls-proxy",
            System::Systemd => "/etc/nfs-tls-proxy",
        }
    }
}

/// What to bundle, and where.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub name: String,
    pub out: PathBuf,
    /// Replace a non-empty `out`.
    pub force: bool,
    /// Default: FreeBSD for a server (f0, f1), systemd for a client.
    pub system: Option<System>,
    /// Where the files go on the host. Default: the system's (see [`System`]).
    pub install_dir: Option<PathBuf>,
    /// Server: addresses to listen on. Default: each IP SAN of the certificate on
    /// [`DEFAULT_PORT`], else `0.0.0.0:2323`.
    pub listen: Vec<SocketAddr>,
    /// Client: servers as HOST:PORT. Default: the one server certificate in force in the index,
    /// as `NAME:2323`.
    pub servers: Vec<String>,
    /// Client: the name the server certificate must carry. Default: that server's name.
    pub server_name: Option<String>,
}

/// What `bundle` wrote.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub kind: CertKind,
    /// File names, in the order written.
    pub files: Vec<String>,
}

/// Why no bundle was written (nothing was).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0} exists and is not empty; pass --force to replace it")]
    NotEmpty(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: serial {serial} is {status} in the index; bundle the certificate in force (`ca-tool renew {name}` or `ca-tool issue {name}`)")]
    NotCurrent { path: PathBuf, name: String, serial: String, status: &'static str },
    #[error("{0}")]
    Legacy(String),
    #[error("{path}: not a valid certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("{key} does not match {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{0}: no server to connect to; pass --server HOST:PORT (and --server-name)")]
    NoServer(String),
    #[error("--server-name is needed: the index holds {0} server certificates in force")]
    ServerName(usize),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_owned(), source }
}

/// Writes the bundle for `req.name` from the CA in `ca`.
pub fn write_bundle(ca: &CaDir, req: &BundleRequest) -> Result<Bundle, BundleError> {
    // Check everything first.
    let index = ca.index()?;
    match std::fs::read_dir(&req.out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !req.force {
                return Err(BundleError::NotEmpty(req.out.clone()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(BundleError::NotADirectory(req.out.clone()))
        }
        Err(e) => return Err(io(&req.out)(e)),
    }
    let (cert_path, key_path) = (ca.cert_path(&req.name), ca.key_path(&req.name));
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let cert_der = crate::pem::load_certs(&cert_path).map_err(CaError::from)?.remove(0);
    let info = CertInfo::parse(&cert_der)
        .map_err(|e| BundleError::BadCert { path: cert_path.clone(), detail: e.to_string() })?;
    if let Some(problem) = legacy_problem(&info) {
        return Err(BundleError::Legacy(problem.message(&cert_path)));
    }
    // A negative serial (not a Serial) cannot be in the index: "unknown".
    let entry = info.serial.parse::<crate::serial::Serial>().ok().and_then(|s| index.by_serial(&s));
    let not_current = |status| BundleError::NotCurrent {
        path: cert_path.clone(),
        name: req.name.clone(),
        serial: info.serial.clone(),
        status,
    };
    match entry {
        None => return Err(not_current("unknown")),
        Some(e) if e.revoked_at.is_some() => return Err(not_current("revoked")),
        Some(e) if e.superseded_at.is_some() => return Err(not_current("superseded")),
        Some(_) => {}
    }
    let key_pem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let (_, x) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| BundleError::BadCert { path: cert_path.clone(), detail: e.to_string() })?;
    let key = crate::keys::load_signing_key(&key_path, x.public_key().raw).map_err(CaError::from)?;
    if key.public_key_raw() != x.public_key().subject_public_key.data.as_ref() {
        return Err(BundleError::KeyMismatch { key: key_path, cert: cert_path });
    }
    let kind = if info.extended_key_usages.contains(&"serverAuth")
        && !info.extended_key_usages.contains(&"clientAuth")
    {
        CertKind::Server
    } else if info.extended_key_usages.contains(&"clientAuth") {
        CertKind::Client
    } else {
        entry.map(|e| e.kind).unwrap_or(CertKind::Client)
    };
    let system = req.system.unwrap_or(match kind {
        CertKind::Server => System::Freebsd,
        CertKind::Client => System::Systemd,
    });
    let install = req.install_dir.clone().unwrap_or_else(|| PathBuf::from(system.default_dir()));
    let ca_pem = std::fs::read(ca.path(CA_CERT)).map_err(io(&ca.path(CA_CERT)))?;
    let (cert_name, key_name) = (format!("{}-cert.pem", req.name), format!("{}-key.pem", req.name));
    let config_name = format!("{kind}.toml");
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![
        (cert_name.clone(), cert_pem, crate::fsutil::PUBLIC),
        (key_name.clone(), key_pem, KEY_MODE),
        (CA_CERT.to_owned(), ca_pem, crate::fsutil::PUBLIC),
    ];
    let at = |f: &str| install.join(f).display().to_string();
    let header = format!(
        "# nfs-tls-proxy {kind} configuration for {name}, written by `ca-tool bundle` on {date}.\n\
         # Keys are the long flag names of `nfs-tls-proxy {kind}`; flags on the command line win.\n",
        name = req.name,
        date = format_time(time::OffsetDateTime::now_utc()),
    );
    let config = match kind {
        CertKind::Server => {
            let crl_path = ca.path(CRL);
            files.push((
                CRL.to_owned(),
                std::fs::read(&crl_path).map_err(io(&crl_path))?,
                crate::fsutil::PUBLIC,
            ));
            let listen: Vec<String> = if req.listen.is_empty() {
                let ips: Vec<IpAddr> = if info.ip_addresses.is_empty() {
                    vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
                } else {
                    info.ip_addresses.clone()
                };
                ips.into_iter().map(|ip| SocketAddr::new(ip, DEFAULT_PORT).to_string()).collect()
            } else {
                req.listen.iter().map(SocketAddr::to_string).collect()
            };
            let allow = allowed_clients(&index);
            let mut c = header;
            c += &format!("listen = {}\n", toml_list(&listen));
            c += "backend = \"127.0.0.1:2049\"\n";
            c += &format!(
                "cert = {}\nkey = {}\nca = {}\ncrl = {}\n",
                q(&at(&cert_name)),
                q(&at(&key_name)),
                q(&at(CA_CERT)),
                q(&at(CRL))
            );
            if allow.is_empty() {
                c += "# allow-cn = [\"r0\", \"r1\"]   # no client certificate in force in the index yet\n";
            } else {
                c += &format!("allow-cn = {}\n", toml_list(&allow));
            }
            c +=
                "# re-read cert, key, CA and CRL every hour (and on SIGHUP): a copied crl.pem takes effect\n";
            c += "reload-every = \"1h\"\n";
            c
        }
        CertKind::Client => {
            let (servers, server_name) = servers_for(&index, req)?;
            let mut c = header;
            c += "listen = [\"127.0.0.1:2323\", \"127.0.0.1:2049\"]\n";
            c += &format!("server = {}\nserver-name = {}\n", toml_list(&servers), q(&server_name));
            c += &format!(
                "cert = {}\nkey = {}\nca = {}\n",
                q(&at(&cert_name)),
                q(&at(&key_name)),
                q(&at(CA_CERT))
            );
            c
        }
    };
    files.push((config_name.clone(), config.into_bytes(), crate::fsutil::PUBLIC));
    let out_name =
        req.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
    let install_txt = install_text(&req.name, &out_name, kind, system, &install, &files, &info);
    files.push(("INSTALL.txt".to_owned(), install_txt.into_bytes(), crate::fsutil::PUBLIC));

    // Then write: a temporary directory beside `out`, renamed into place last.
    let parent = match req.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let stem = req.out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle");
    let tmp =
        tempfile::Builder::new().prefix(&format!(".{stem}.")).tempdir_in(&parent).map_err(io(&parent))?;
    for (name, contents, mode) in &files {
        let path = tmp.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(contents).map_err(io(&path))?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(std::fs::Permissions::from_mode(*mode)).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(io(tmp.path()))?;
    let old = if req.out.exists() {
        let old = parent.join(format!(".{stem}.old.{}", std::process::id()));
        std::fs::rename(&req.out, &old).map_err(io(&req.out))?;
        Some(old)
    } else {
        None
    };
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, &req.out) {
        // Put the old one back; nothing half-written stays behind.
        if let Some(old) = &old {
            let _ = std::fs::rename(old, &req.out);
        }
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(io(&req.out)(e));
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(Bundle { dir: req.out.clone(), kind, files: files.into_iter().map(|(n, _, _)| n).collect() })
}

/// Client names the server should admit: every client certificate in force, once each.
fn allowed_clients(index: &Index) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in index.certs.iter().filter(|e| e.kind == CertKind::Client && e.is_current()) {
        if !names.contains(&e.name) {
            names.push(e.name.clone());
        }
    }
    names
}

fn servers_for(index: &Index, req: &BundleRequest) -> Result<(Vec<String>, String), BundleError> {
    let mut known: Vec<&str> = Vec::new();
    for e in index.certs.iter().filter(|e| e.kind == CertKind::Server && e.is_current()) {
        if !known.contains(&e.name.as_str()) {
            known.push(&e.name);
        }
    }
    let servers = if req.servers.is_empty() {
        match known.as_slice() {
            [one] => vec![format!("{one}:{DEFAULT_PORT}")],
            _ => {
                return Err(BundleError::NoServer(format!(
                    "the index holds {} server certificates in force",
                    known.len()
                )))
            }
        }
    } else {
        req.servers.clone()
    };
    let name = match (&req.server_name, known.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [one]) => (*one).to_owned(),
        (None, many) => return Err(BundleError::ServerName(many.len())),
    };
    Ok((servers, name))
}

fn install_text(
    name: &str,
    out: &str,
    kind: CertKind,
    system: System,
    dir: &Path,
    files: &[(String, Vec<u8>, u32)],
    info: &CertInfo,
) -> String {
    let d = dir.display();
    let public: Vec<&str> =
        files.iter().filter(|(_, _, m)| *m != KEY_MODE).map(|(n, _, _)| n.as_str()).collect();
    let config = format!("{d}/{kind}.toml");
    let (account, reload) = match (system, kind) {
        (System::Freebsd, _) => (
            "pw groupshow nfs-tls-proxy >/dev/null 2>&1 || pw groupadd nfs-tls-proxy".to_owned(),
            format!(
                "nfs-tls-proxy check --mode {kind} --config {config} && sysrc nfs_tls_proxy_enable=YES nfs_tls_proxy_mode={kind} nfs_tls_proxy_config={config} && (service nfs_tls_proxy status >/dev/null && service nfs_tls_proxy reload || service nfs_tls_proxy start)"
            ),
        ),
        (System::Systemd, _) => (
            "getent passwd nfs-tls-proxy >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin nfs-tls-proxy".to_owned(),
            format!(
                "nfs-tls-proxy check --mode {kind} --config {config} && systemctl enable nfs-tls-proxy-{kind} && systemctl reload-or-restart nfs-tls-proxy-{kind}"
            ),
        ),
    };
    format!(
        "nfs-tls-proxy {kind} bundle for {name}: certificate serial {serial}, expires {expires}.\n\
         \n\
         Copy this directory to {name} (e.g. `scp -rp {out} root@{name}:`), then, as root, in it:\n\
         \n\
         # once per host: the group the service runs as (it may read the key)\n\
         {account}\n\
         \n\
         # install (key 0640 root:nfs-tls-proxy, the rest 0644, the directory 0750)\n\
         install -d -m 0750 -o root -g nfs-tls-proxy {d} && install -m 0644 -o root -g nfs-tls-proxy {public} {d}/ && install -m 0640 -o root -g nfs-tls-proxy {name}-key.pem {d}/\n\
         \n\
         # check and (re)load\n\
         {reload}\n",
        serial = info.serial,
        expires = format_time(info.not_after),
        public = public.join(" "),
    )
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))
}
