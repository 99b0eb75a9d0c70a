//! Client mode's open(): the servers in order, each with a connect and a handshake timeout, until one
//! completes a handshake whose certificate chains to our CA and carries the expected name. Nothing is
//! read from the local connection before that, so no plaintext byte can go upstream unprotected.
//!
//! While every server is unreachable (or closes our handshake half-way, as a server whose handshake
//! budget is full does) the local connection is held, not closed: the servers are
//! retried with backoff for up to `--upstream-retry-for`. A kernel NFS client whose connection is
//! accepted and closed at once reconnects at once, in a tight loop (~900 connections a second in a
//! 30 s storage outage, issue 20); a held connection makes it wait, and it goes through as soon as a
//! server answers again (the backoff is capped at 1 s). Repeated identical failures of a server are
//! logged once per [`SUMMARY_EVERY`] with a count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Keepalive, SourcePort, Transport, Upstream};
use crate::rpc;
use crate::tls::handshake;
use crate::tls::identity::peer_name;
use crate::tls::link::Link;
use crate::tls::Secured;
use crate::tunnel::net;
use crate::tunnel::refuse::RefuseReason;
use crate::tunnel::{key_policy, Established, Mode, OriginalDst};

#[derive(Debug)]
pub struct ClientMode {
    pub tls: watch::Sender<Arc<rustls::ClientConfig>>,
    pub servers: Vec<Upstream>,
    /// Plain TLS, or RFC 9289's probe first.
    pub protocol: Transport,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
    /// Hidden test knob, see [`crate::config::Common::key_update_every`].
    pub key_update_every: Option<u64>,
    /// Hand the records of tunnels to the kernel where it can take them (`--ktls auto`, and the
    /// kernel can).
    pub ktls: bool,
    /// Which local port the upstream connections come from.
    pub source_port: SourcePort,
    /// How long an accepted connection is held while every server is unreachable.
    pub retry_for: Duration,
    /// The `--redirect` addresses: an original destination among them is its own metric label.
    pub redirects: Vec<SocketAddr>,
    pub(crate) failures: FailureLog,
}

/// The first retry of a held connection; each further one waits twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between retries, which bounds how late a held connection sees a server return.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Mode for ClientMode {
    const NAME: &'static str = "client";
    const TLS_INBOUND: bool = false;

    async fn open(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        _: &super::admit::Admission,
    ) -> Result<Established, RefuseReason> {
        let original_dst = tcp
            .local_addr()
            .ok()
            .and_then(|local| crate::os::original_dst(&tcp, local))
            .map(|addr| OriginalDst { addr, redirect: self.redirects.contains(&addr) });
        let hold_until = Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        let (link, upstream) = loop {
            match self.first_server().await {
                Ok(found) => break found,
                // Only "nobody answers" and "dropped half-way" are worth waiting for; a refused
                // handshake will not change.
                Err(reason) if worth_waiting_for(&reason) => {
                    let Some(left) =
                        hold_until.checked_duration_since(Instant::now()).filter(|l| !l.is_zero())
                    else {
                        return Err(reason);
                    };
                    if backoff == FIRST_BACKOFF {
                        tracing::debug!(%peer, "every server unreachable; holding the connection");
                    }
                    // The last retry comes at the end of the hold.
                    wait_or_hangup(&tcp, jittered(backoff).min(left)).await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(reason) => return Err(reason),
            }
        };
        let identity = peer_name(Some(link.peer_certificates()));
        Ok(Established {
            tls: link.negotiated().to_owned(),
            link,
            plain: tcp,
            identity,
            upstream,
            peer_cert: None,
            transport: self.protocol,
            original_dst,
        })
    }

    /// A TLS handshake (after the probe, in rpc-tls mode) with the first server that completes one.
    async fn health(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        for upstream in &self.servers {
            match self.dial(upstream).await {
                // In TLS 1.3 our handshake completes before the server has judged our certificate:
                // only an answered NFS NULL call shows that it let us in (and that NFS answers).
                Ok((mut link, addr)) => {
                    let who = peer_name(Some(link.peer_certificates()));
                    match rpc::nfs_null(&mut link, rpc::next_xid(), super::HEALTH_TIMEOUT).await {
                        Ok(()) => {
                            return Ok(format!(
                            "TLS handshake with {} ({addr}, {who}) and an NFS NULL call answered through it",
                            upstream.endpoint
                        ))
                        }
                        Err(e) => problems.push(format!(
                            "{} ({addr}, {who}): {}",
                            upstream.endpoint,
                            refused_by(&e)
                        )),
                    }
                }
                Err(reason) => problems.push(format!("{}: {reason}", upstream.endpoint)),
            }
        }
        Err(problems.join("; "))
    }
}

/// `pause` stretched by a random 0-25%, so that connections held together (a burst of mounts when
/// the storage comes back, or evicted together by the server's handshake budget) do not all retry in
/// the same instant.
fn jittered(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has fresh keys: random enough for spreading retries, and no new dependency.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    pause + pause.mul_f64((random % 1000) as f64 / 4000.0)
}

/// Whether a failure of every server may pass if the connection is held: nobody answers, or a server
/// closed our handshake before it finished (its handshake budget evicted it: all of a client proxy's
/// handshakes come from one address, so a burst of mounts can evict its own; or it was stopping).
/// A refusal with a reason (an alert, a certificate) would only be repeated.
fn worth_waiting_for(reason: &RefuseReason) -> bool {
    matches!(reason, RefuseReason::Unreachable(_) | RefuseReason::ClosedEarly)
}

/// Sleeps `pause`, unless the local client hangs up first (then the connection is not held longer).
/// A FIN behind a request already sent is not looked for: it may be a half-close (the client still
/// waits for the answer, which the tunnel will carry), and reading would take the request.
async fn wait_or_hangup(tcp: &TcpStream, pause: Duration) -> Result<(), RefuseReason> {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = &mut sleep => return Ok(()),
        n = tcp.peek(&mut probe) => match n {
            Ok(0) | Err(_) => return Err(RefuseReason::ClosedEarly),
            // A request is queued: it waits for a server, and peeking again would return at once.
            Ok(_) => {}
        },
    }
    sleep.await;
    Ok(())
}

impl ClientMode {
    /// One round over the servers in order: the first that completes a handshake, or the last
    /// failure.
    async fn first_server(&self) -> Result<(Secured, SocketAddr), RefuseReason> {
        let mut last = RefuseReason::Unreachable("no server configured".into());
        for upstream in &self.servers {
            match self.dial_with(upstream, self.ktls).await {
                Ok(found) => {
                    self.failures.succeeded(upstream);
                    return Ok(found);
                }
                Err(reason) => {
                    self.failures.failed(upstream, &reason);
                    last = reason;
                }
            }
        }
        Err(last)
    }

    /// Dials one server for a probe of our own (health, `check`): records in rustls, whatever
    /// `--ktls` says, as the probe reads and writes them itself.
    pub(crate) async fn dial(&self, upstream: &Upstream) -> Result<(Link, SocketAddr), RefuseReason> {
        match self.dial_with(upstream, false).await? {
            (Secured::Rustls(link), addr) => Ok((link, addr)),
            (Secured::Kernel(_), _) => unreachable!("kTLS was not asked for"),
        }
    }

    /// Dials one server: connect, the RFC 9289 probe (rpc-tls mode), and a complete TLS handshake.
    async fn dial_with(
        &self,
        upstream: &Upstream,
        ktls: bool,
    ) -> Result<(Secured, SocketAddr), RefuseReason> {
        let name = ServerName::try_from(upstream.server_name.clone()).map_err(|_| {
            RefuseReason::Tls(format!("{:?} is not a valid server name", upstream.server_name))
        })?;
        let (mut tcp, addr) = net::connect_from(
            &upstream.endpoint,
            self.source_port,
            &self.redirects,
            self.connect_timeout,
            self.keepalive,
        )
        .await
        .map_err(RefuseReason::from)?;
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        if self.protocol == Transport::RpcTls {
            match tokio::time::timeout_at(deadline, rpc::send_probe(&mut tcp, rpc::next_xid())).await {
                Err(_) => return Err(RefuseReason::HandshakeTimeout),
                Ok(Err(e)) => return Err(RefuseReason::NoStartTls(format!("{addr}: {e}"))),
                Ok(Ok(())) => {}
            }
        }
        let config = self.tls.borrow().clone();
        match tokio::time::timeout_at(
            deadline,
            handshake::connect(config, name, tcp, key_policy(self.protocol, self.key_update_every), ktls),
        )
        .await
        {
            Err(_) => Err(RefuseReason::HandshakeTimeout),
            Ok(Err(e)) => Err(RefuseReason::from_handshake(e)),
            Ok(Ok(link)) => Ok((link, addr)),
        }
    }
}

/// How often a server that keeps failing the same way is logged (with the count since the last line).
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The failures of each server since it last worked, so that a storm of identical ones is one line
/// per [`SUMMARY_EVERY`] (`server unreachable server=f3s:2323 reason=... attempts=412`), and its
/// return is one line too.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    streaks: Mutex<HashMap<String, Streak>>,
}

#[derive(Debug)]
struct Streak {
    reason: String,
    /// Attempts since the last line about this server.
    unlogged: u64,
    /// Attempts since the server last worked.
    total: u64,
    logged_at: Instant,
}

impl FailureLog {
    fn failed(&self, upstream: &Upstream, reason: &RefuseReason) {
        let server = upstream.endpoint.to_string();
        let text = reason.to_string();
        let now = Instant::now();
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let streak = streaks.entry(server.clone()).or_insert_with(|| Streak {
            reason: String::new(),
            unlogged: 0,
            total: 0,
            logged_at: now,
        });
        streak.unlogged += 1;
        streak.total += 1;
        let first = streak.total == 1;
        if !first && streak.reason == text && now.duration_since(streak.logged_at) < SUMMARY_EVERY {
            return;
        }
        let attempts = std::mem::take(&mut streak.unlogged);
        streak.reason = text;
        streak.logged_at = now;
        drop(streaks);
        match reason {
            RefuseReason::Unreachable(_) => {
                tracing::warn!(%server, reason = %reason, attempts, "server unreachable")
            }
            _ => tracing::warn!(%server, reason = %reason, attempts, "server failed"),
        }
    }

    fn succeeded(&self, upstream: &Upstream) {
        let server = upstream.endpoint.to_string();
        let gone = self.streaks.lock().unwrap_or_else(|p| p.into_inner()).remove(&server);
        if let Some(streak) = gone {
            tracing::info!(%server, failed_attempts = streak.total, "server reachable again");
        }
    }
}

/// What a failed NULL call through a fresh tunnel means: an alert from the server right after the
/// handshake is its refusal of our certificate (revoked, not on its allow-list, ...).
pub(crate) fn refused_by(e: &rpc::RpcError) -> String {
    let text = e.to_string();
    match text.split_once("received fatal alert: ") {
        Some((_, alert)) => {
            format!("refused-by-server: {}", alert.split_whitespace().next().unwrap_or(alert))
        }
        None => text,
    }
}
