//! The one loader of certificates, keys, CA and CRL into rustls configurations, used at start-up (and
//! by reload). Everything is read and checked here; an error names the file and the problem.

//!
//! Submodules: [`identity`] (peer names, the allow-list verifier), [`handshake`] (rustls, unbuffered,
//! ending in a [`link::Link`]), [`link`] (the data phase, rustls' record layer on our buffers),
//! [`buffer`] (pooled copy buffers).

pub(crate) mod buffer;
pub(crate) mod handshake;
pub(crate) mod identity;
pub(crate) mod ktls;
pub(crate) mod link;
pub(crate) mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ca_tool::pem::{self, PemError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::AllowList;
use crate::config::{TlsFiles, TlsVersion, Transport};
use identity::AllowListVerifier;
pub(crate) use validate::{Reader, Role};

/// Certificate material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(
        "{path}: private key is readable by group or others (mode {mode:04o}); fix with `chmod 600 {path}` \
         (or pass --insecure-key-permissions)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: cannot read: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: contains no private key; pass --key")]
    NoKey { path: PathBuf },
    #[error("--tls-suite {name}: not a cipher suite of this build (there are: {known})")]
    UnknownSuite { name: String, known: String },
    #[error("{key} does not match the certificate in {cert} ({detail})")]
    KeyMismatch { cert: PathBuf, key: PathBuf, detail: String },
    #[error("{path}: not a usable CA certificate ({detail})")]
    BadCa { path: PathBuf, detail: String },
    #[error("{path}: not a usable CRL ({detail})")]
    BadCrl { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// What [`validate`] found wrong: each problem one line naming its file.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Runs the one validation ([`validate::validate`]) and refuses the material on any problem. Its
/// warnings are all about dates, which the expiry watch logs and publishes.
fn validated(
    files: &TlsFiles,
    crl: Option<validate::Crl<'_>>,
    role: Role,
    reader: Reader,
) -> Result<(), TlsError> {
    let found = validate::validate(files, crl, role, reader, time::OffsetDateTime::now_utc());
    if found.problems.is_empty() {
        Ok(())
    } else {
        Err(TlsError::Invalid(found.problems))
    }
}

/// An established TLS connection: rustls seals and opens its records ([`link::Link`]), or the
/// kernel does ([`ktls::KernelLink`]).
/// (One per tunnel, moved a few times: not worth a box.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Secured {
    Rustls(link::Link),
    Kernel(ktls::KernelLink),
}

impl Secured {
    pub(crate) fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            Secured::Rustls(l) => l.tcp(),
            Secured::Kernel(k) => k.tcp(),
        }
    }

    /// `VERSION/SUITE`, e.g. `TLSv1_3/TLS13_AES_256_GCM_SHA384`.
    pub(crate) fn negotiated(&self) -> &str {
        match self {
            Secured::Rustls(l) => l.negotiated(),
            Secured::Kernel(k) => k.negotiated(),
        }
    }

    /// The certificate chain the peer presented, leaf first.
    pub(crate) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        match self {
            Secured::Rustls(l) => l.peer_certificates(),
            Secured::Kernel(k) => k.peer_certificates(),
        }
    }

    /// Who seals and opens the records: `rustls` or `ktls` (for the log and the metric).
    pub(crate) fn path(&self) -> &'static str {
        match self {
            Secured::Rustls(_) => "rustls",
            Secured::Kernel(_) => "ktls",
        }
    }
}

/// The crypto provider, always passed explicitly: ring (aws-lc-rs does not build for FreeBSD here,
/// and two providers compiled in make rustls panic at run time).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(only) = ONLY_SUITES.get() {
        provider.cipher_suites.retain(|s| only.contains(&format!("{:?}", s.suite())));
    }
    Arc::new(provider)
}

/// The hidden test knob `--tls-suite`: offer and accept these cipher suites only.
static ONLY_SUITES: OnceLock<Vec<String>> = OnceLock::new();

/// Sets `--tls-suite NAME[,NAME...]` (once per process; a later call is ignored). An unknown name is
/// an error naming the ones there are.
pub(crate) fn only_suites(names: &str) -> Result<(), TlsError> {
    let known: Vec<String> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    let names: Vec<String> = names.split(',').map(|n| n.trim().to_owned()).collect();
    if let Some(name) = names.iter().find(|n| !known.contains(n)) {
        return Err(TlsError::UnknownSuite { name: name.clone(), known: known.join(", ") });
    }
    let _ = ONLY_SUITES.set(names);
    Ok(())
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls13 => &TLS13_ONLY,
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
    }
}

/// Our own certificate chain and key; the key may sit in the certificate file (stunnel style).
fn load_identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, PathBuf), TlsError> {
    let chain = pem::load_certs(&files.cert)?;
    let key_path = files.key.clone().unwrap_or_else(|| files.cert.clone());
    if files.key.is_none() && !pem::has_private_key(&files.cert)? {
        return Err(TlsError::NoKey { path: files.cert.clone() });
    }
    let key = pem::load_private_key(&key_path)?;
    Ok((chain, key, key_path))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem::load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.to_owned(), detail: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

fn key_error(files: &TlsFiles, key_path: PathBuf, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) | rustls::Error::General(_) => {
            TlsError::KeyMismatch { cert: files.cert.clone(), key: key_path, detail: e.to_string() }
        }
        other => TlsError::Rustls(other),
    }
}

/// Server side: require a client certificate from `files.ca`, checked against `crl` and `allow`.
/// No session resumption (no tickets, no cache), so every connection meets the current CA, CRL and
/// allow-list.
pub(crate) fn server_config(
    files: &TlsFiles,
    crl: Option<&Path>,
    enforce_crl_expiry: bool,
    allow: &AllowList,
    min: TlsVersion,
    reader: Reader,
) -> Result<ServerTls, TlsError> {
    validated(
        files,
        crl.map(|path| validate::Crl { path, enforce_expiry: enforce_crl_expiry }),
        Role::Server,
        reader,
    )?;
    let provider = provider();
    let (chain, key, key_path) = load_identity(files)?;
    let roots = load_roots(&files.ca)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl_path) = crl {
        // Unknown revocation status is refused (the builder's default): fail closed.
        builder = builder.with_crls(pem::load_crls(crl_path)?);
        if enforce_crl_expiry {
            builder = builder.enforce_revocation_expiration();
        }
    }
    let inner = builder.build().map_err(|e| match (crl, &e) {
        (Some(p), rustls::server::VerifierBuilderError::InvalidCrl(_)) => {
            TlsError::BadCrl { path: p.to_owned(), detail: e.to_string() }
        }
        _ => TlsError::BadCa { path: files.ca.clone(), detail: e.to_string() },
    })?;
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(AllowListVerifier { inner, allow: allow.clone() });
    let build = |versions, alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| key_error(files, key_path.clone(), e))?;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        // The keys go to the kernel after the handshake when it does the records (kTLS).
        config.enable_secret_extraction = true;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    };
    let config = build(versions(min), Vec::new())?;
    // RFC 9289: TLS 1.3 only; "sunrpc" is offered back if the client asks, never required.
    let rpc_config = build(&TLS13_ONLY, vec![crate::rpc::ALPN.to_vec()])?;
    Ok(ServerTls { config, rpc_config, verifier })
}

/// A server's TLS configuration, and the client verifier inside it (kept to re-check the
/// certificates of open tunnels after a reload).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// For stunnel-style TLS clients.
    pub config: Arc<ServerConfig>,
    /// For RPC-with-TLS clients, after the probe: TLS 1.3 only, ALPN "sunrpc" if offered.
    pub rpc_config: Arc<ServerConfig>,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// Client side: present our certificate, verify the server's against `files.ca`. No resumption.
/// Towards an RPC-with-TLS server: TLS 1.3 only, offering ALPN "sunrpc".
pub(crate) fn client_config(
    files: &TlsFiles,
    min: TlsVersion,
    protocol: Transport,
    reader: Reader,
) -> Result<Arc<ClientConfig>, TlsError> {
    validated(files, None, Role::Client, reader)?;
    let (chain, key, key_path) = load_identity(files)?;
    let roots = load_roots(&files.ca)?;
    let versions = match protocol {
        Transport::Tls => versions(min),
        Transport::RpcTls => &TLS13_ONLY,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| key_error(files, key_path, e))?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_secret_extraction = true;
    if protocol == Transport::RpcTls {
        config.alpn_protocols = vec![crate::rpc::ALPN.to_vec()];
    }
    Ok(Arc::new(config))
}
