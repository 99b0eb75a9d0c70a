//! The open tunnels: what each one is (peer, identity, listener), its byte counters, and the switch
//! that cuts it from outside (drain, lost VIP, revocation on reload). `/tunnels` and the metrics read
//! it; [`super::run_one`] adds and removes entries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::Transport;

/// Bytes moved so far, readable while the tunnel is open.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the accepted side (the NFS client) towards the NFS server.
    pub up: AtomicU64,
    /// From the NFS server towards the NFS client.
    pub down: AtomicU64,
}

/// One open tunnel, as the registry sees it.
#[derive(Debug)]
pub struct TunnelEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub listener: SocketAddr,
    pub identity: String,
    pub peer_cert: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    pub transport: Transport,
    pub started: Instant,
    pub counters: Counters,
    /// What the metrics have already counted of `counters`.
    pub reported_up: AtomicU64,
    pub reported_down: AtomicU64,
    pub switch: Cut,
    /// Client mode: where a redirected connection was going before NAT sent it to us.
    pub original_dst: Option<SocketAddr>,
}

impl Counters {
    pub fn totals(&self) -> (u64, u64) {
        (self.up.load(Ordering::Relaxed), self.down.load(Ordering::Relaxed))
    }
}

impl TunnelEntry {
    /// Closes this tunnel from outside; the first reason given is the one logged.
    pub fn cut(&self, why: &str) {
        self.switch.cut(why);
    }

    /// Bytes up and down carried since the last call, for the metrics.
    pub fn unreported(&self) -> (u64, u64) {
        let (up, down) = self.counters.totals();
        (
            up - self.reported_up.swap(up, Ordering::Relaxed),
            down - self.reported_down.swap(down, Ordering::Relaxed),
        )
    }
}

/// The open tunnels: for cutting them (drain, lost address, revocation) and for reporting.
#[derive(Debug, Default)]
pub struct Tunnels {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<TunnelEntry>>>,
}

impl Tunnels {
    pub fn register(
        &self,
        peer: SocketAddr,
        listener: SocketAddr,
        identity: &str,
        peer_cert: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
        transport: Transport,
        original_dst: Option<SocketAddr>,
    ) -> Arc<TunnelEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(TunnelEntry {
            id,
            peer,
            listener,
            identity: identity.to_owned(),
            peer_cert,
            transport,
            started: Instant::now(),
            counters: Counters::default(),
            reported_up: AtomicU64::new(0),
            reported_down: AtomicU64::new(0),
            switch: Cut::default(),
            original_dst,
        });
        self.lock().insert(id, entry.clone());
        entry
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn snapshot(&self) -> Vec<Arc<TunnelEntry>> {
        self.lock().values().cloned().collect()
    }

    /// Cuts every open tunnel `which` selects; returns how many.
    pub fn cut_where(&self, why: &str, which: impl Fn(&TunnelEntry) -> bool) -> usize {
        let chosen: Vec<_> = self.snapshot().into_iter().filter(|t| which(t)).collect();
        for t in &chosen {
            t.cut(why);
        }
        chosen.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<TunnelEntry>>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The switch that closes one open tunnel from outside, with the reason it was closed.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Cut {
    /// Closes the tunnel; the first reason given is the one logged.
    pub fn cut(&self, why: &str) {
        let _ = self.reason.set(why.to_owned());
        self.token.cancel();
    }

    /// Resolves when the tunnel is cut.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn reason(&self) -> String {
        self.reason.get().cloned().unwrap_or_else(|| "cut".to_owned())
    }
}
