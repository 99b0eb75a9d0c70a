//! Reload (SIGHUP, `--reload-every`): the certificate, key, CA, CRL and allow-list go through the same
//! validation and loader as at start-up and are swapped in last, so a file that `check` would reject
//! changes nothing. New handshakes use the new material; open tunnels continue, except those whose
//! client certificate the new CRL revokes or the new allow-list no longer admits: they are cut, each
//! with a log line. A reload says what it changed.

use std::collections::BTreeSet;
use std::path::Path;

use ca_tool::inspect::{format_time, CertInfo, CrlInfo};
use rustls::pki_types::UnixTime;

use crate::config::{self, AllowList, TlsFiles};
use crate::serve::Running;
use crate::tls::{self, TlsError};
use crate::tunnel::client::ClientMode;
use crate::tunnel::refuse::RefuseReason;
use crate::tunnel::server::ServerMode;

/// What the loaded material is, to say what a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Material {
    /// `serial S, expires D` of our certificate.
    certificate: String,
    /// `number N, R revoked, next update D` of the CRL, if any.
    crl: Option<String>,
    allow: BTreeSet<String>,
}

impl Material {
    /// Reads what `files`, `crl` and `allow` hold now (files already validated).
    pub(crate) fn read(files: &TlsFiles, crl: Option<&Path>, allow: &AllowList) -> Self {
        let certificate = ca_tool::pem::load_certs(&files.cert)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|der| CertInfo::parse(&der).ok())
            .map(|i| format!("serial {}, expires {}", i.serial, format_time(i.not_after)))
            .unwrap_or_default();
        let crl = crl.map(|path| {
            ca_tool::pem::load_crls(path)
                .ok()
                .and_then(|c| c.into_iter().next())
                .and_then(|der| CrlInfo::parse(&der).ok())
                .map(|i| {
                    format!(
                        "number {}, {} revoked, next update {}",
                        i.crl_number.as_deref().unwrap_or("-"),
                        i.revoked.len(),
                        i.next_update.map(format_time).unwrap_or_else(|| "-".into())
                    )
                })
                .unwrap_or_default()
        });
        Self { certificate, crl, allow: allow.names().map(str::to_owned).collect() }
    }

    /// One phrase per change from `self` to `new`, e.g. `certificate: serial 0A, expires ...`.
    pub(crate) fn changes(&self, new: &Material) -> Vec<String> {
        let mut out = Vec::new();
        if self.certificate != new.certificate {
            out.push(format!("certificate now {}", new.certificate));
        }
        if self.crl != new.crl {
            out.push(match &new.crl {
                Some(c) => format!("CRL now {c}"),
                None => "CRL removed".into(),
            });
        }
        let added: Vec<&str> = new.allow.difference(&self.allow).map(String::as_str).collect();
        let removed: Vec<&str> = self.allow.difference(&new.allow).map(String::as_str).collect();
        if !added.is_empty() {
            out.push(format!("allow-cn added {}", added.join(",")));
        }
        if !removed.is_empty() {
            out.push(format!("allow-cn removed {}", removed.join(",")));
        }
        out
    }
}

/// Reloads a server; returns how many open tunnels were cut.
pub fn reload_server(running: &Running<ServerMode>, cfg: &config::Server) -> Result<usize, TlsError> {
    let c = &cfg.common;
    let reader = tls::Reader::current();
    let new = tls::server_config(
        &c.tls,
        cfg.crl.as_deref(),
        cfg.enforce_crl_expiry,
        &cfg.allow,
        c.min_tls,
        reader,
    )?;
    let verifier = new.verifier.clone();
    running.ctx.mode.tls.send_replace(new);
    let now = UnixTime::now();
    let mut cut = 0;
    for tunnel in running.ctx.tunnels.snapshot() {
        // The whole chain the client presented: one issued by an intermediate CA passes again.
        let Some([leaf, intermediates @ ..]) = tunnel.peer_cert.as_deref() else { continue };
        let verified = verifier.verify_client_cert(leaf, intermediates, now);
        // This verification is not a handshake's: leave nothing for one on this thread.
        crate::tls::identity::take_presented();
        if let Err(e) = verified {
            let reason = RefuseReason::from_tls(&e);
            tracing::warn!(
                peer = %tunnel.peer,
                identity = %tunnel.identity,
                reason = reason.word(),
                "closing open tunnel: the reloaded configuration no longer admits its certificate"
            );
            tunnel.cut(&format!("{} after reload", reason.word()));
            cut += 1;
        }
    }
    Ok(cut)
}

/// Reloads a client's certificate, key and CA.
pub fn reload_client(running: &Running<ClientMode>, cfg: &config::Client) -> Result<(), TlsError> {
    let c = &cfg.common;
    let new = tls::client_config(&c.tls, c.min_tls, cfg.upstream_protocol, tls::Reader::current())?;
    running.ctx.mode.tls.send_replace(new);
    Ok(())
}
