//! Reload (SIGHUP): the certificate, key, CA, CRL and allow-list are loaded and checked in full
//! first and swapped in last, so a broken or missing file keeps the old configuration live. New
//! handshakes use the new material; open tunnels continue, except those whose client certificate the
//! new CRL revokes or the new allow-list no longer admits: they are cut, each with a log line.

use rustls::pki_types::UnixTime;

use crate::config;
use crate::serve::Running;
use crate::tls::{self, TlsError};
use crate::tunnel::client::ClientMode;
use crate::tunnel::refuse::RefuseReason;
use crate::tunnel::server::ServerMode;

/// Reloads a server; returns how many open tunnels were cut.
pub fn reload_server(running: &Running<ServerMode>, cfg: &config::Server) -> Result<usize, TlsError> {
    let c = &cfg.common;
    let new = tls::server_config(&c.tls, cfg.crl.as_deref(), cfg.enforce_crl_expiry, &cfg.allow, c.min_tls)?;
    let verifier = new.verifier.clone();
    running.ctx.mode.tls.send_replace(new);
    let now = UnixTime::now();
    let mut cut = 0;
    for tunnel in running.ctx.tunnels.snapshot() {
        let Some(cert) = &tunnel.peer_cert else { continue };
        if let Err(e) = verifier.verify_client_cert(cert, &[], now) {
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
    tracing::info!(open_tunnels_cut = cut, "reloaded TLS material");
    Ok(cut)
}

/// Reloads a client's certificate, key and CA.
pub fn reload_client(running: &Running<ClientMode>, cfg: &config::Client) -> Result<(), TlsError> {
    let new = tls::client_config(&cfg.common.tls, cfg.common.min_tls, cfg.upstream_protocol)?;
    running.ctx.mode.tls.send_replace(new);
    tracing::info!("reloaded TLS material");
    Ok(())
}
