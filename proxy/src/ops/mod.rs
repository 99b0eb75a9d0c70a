//! The operator's HTTP endpoint (`--metrics ADDR`, plain HTTP, loopback by default):
//!
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`] for the names)
//! - `GET /healthz`: server mode: an NFS NULL call to the backend answered; client mode: a TLS
//!   handshake with the first server that completes one. 200 or 503 with a one-line reason. The
//!   far side is asked at most once per [`HEALTH_FRESH`]: requests in between, and requests that
//!   arrive while it is being asked, share that answer (a client's probe is a tunnel on the server).
//! - `GET /tunnels`: the open tunnels as JSON
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per connection, bounded head size and
//! time, so nothing here can hold the proxy's resources.

pub(crate) mod expiry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::tunnel::Ctx;
use crate::tunnel::{ListenState, Mode, HEALTH_TIMEOUT};

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Time allowed for a request to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests handled at once; more connections are closed unanswered.
const MAX_REQUESTS: usize = 32;
/// How long the far side's answer to `/healthz` is reused.
const HEALTH_FRESH: Duration = Duration::from_secs(2);

/// The last answer of the far side to a health probe, and when it was asked. Locked across a probe,
/// so requests that arrive meanwhile wait for it instead of starting their own.
#[derive(Debug, Default)]
struct Health {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<String, String>)>>,
}

impl Health {
    async fn far_side<M: Mode>(&self, ctx: &Ctx<M>) -> Result<String, String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < HEALTH_FRESH {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(HEALTH_TIMEOUT, ctx.mode.health()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
        };
        *last = Some((tokio::time::Instant::now(), answer.clone()));
        answer
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("--metrics {addr}: cannot bind: {error}")]
pub struct OpsError {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

/// Serves on `listener` (bound to `addr`, or handed over by the previous proxy) until `stop`;
/// returns the bound address.
pub(crate) async fn start<M: Mode>(
    addr: SocketAddr,
    listener: std::net::TcpListener,
    ctx: Arc<Ctx<M>>,
    stop: CancellationToken,
) -> Result<SocketAddr, OpsError> {
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
        .map_err(|error| OpsError { addr, error })?;
    let local = listener.local_addr().map_err(|error| OpsError { addr, error })?;
    tracing::info!(metrics = %local, "serving /metrics, /healthz and /tunnels");
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
    let health = Arc::new(Health::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let Ok((tcp, _)) = accepted else {
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
            let (ctx, health) = (ctx.clone(), health.clone());
            tokio::spawn(async move {
                handle(tcp, ctx, &health).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

async fn handle<M: Mode>(mut tcp: TcpStream, ctx: Arc<Ctx<M>>, health: &Health) {
    let Ok(Some(request)) =
        tokio::time::timeout(READ_TIMEOUT, read_request(&mut tcp)).await.unwrap_or(Ok(None))
    else {
        return;
    };
    let (status, content_type, body) = route(&request, &ctx, health).await;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// A GET request: its path, and whether it accepts OpenMetrics.
#[derive(Debug)]
struct Request {
    path: String,
    openmetrics: bool,
}

/// Reads the request head; returns the path of a GET (anything else: None).
async fn read_request(tcp: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    // OpenMetrics only for a scraper that asks for it (Prometheus does); Prometheus text otherwise.
    let openmetrics = text.lines().skip(1).any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    match (first.next(), first.next()) {
        (Some("GET"), Some(path)) => {
            Ok(Some(Request { path: path.split('?').next().unwrap_or(path).to_owned(), openmetrics }))
        }
        _ => Ok(None),
    }
}

async fn route<M: Mode>(
    request: &Request,
    ctx: &Ctx<M>,
    health: &Health,
) -> (&'static str, &'static str, String) {
    match request.path.as_str() {
        "/metrics" => {
            for t in ctx.tunnels.snapshot() {
                let (up, down) = t.unreported();
                ctx.metrics.add_bytes(&t.identity, up, down);
            }
            let text = ctx.metrics.encode();
            if request.openmetrics {
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            } else {
                // The same samples as Prometheus' text format 0.0.4: without the OpenMetrics end marker.
                let text = text.strip_suffix("# EOF\n").unwrap_or(&text).to_owned();
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
            }
        }
        "/healthz" => healthz(ctx, health).await,
        "/tunnels" => ("200 OK", "application/json", tunnels_json(ctx)),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics, /healthz or /tunnels\n".into(),
        ),
    }
}

/// `serving: ...` (200), `standby: ...` (200: this node does not hold the VIP; the far side is
/// still checked, so a standby that could not take over is 503), or `failing: ...` (503: owns the
/// VIP but cannot bind it, or the far side does not answer). The first word is the state.
async fn healthz<M: Mode>(ctx: &Ctx<M>, health: &Health) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let states = ctx.listen_states();
    if let Some((addr, ListenState::Failing(why))) =
        states.iter().find(|(_, s)| matches!(s, ListenState::Failing(_)))
    {
        return (
            "503 Service Unavailable",
            TEXT,
            format!("failing: owns {addr} but cannot bind it ({why})\n"),
        );
    }
    let standby: Vec<String> =
        states.iter().filter(|(_, s)| *s == ListenState::Standby).map(|(a, _)| a.to_string()).collect();
    match health.far_side(ctx).await {
        Err(why) => ("503 Service Unavailable", TEXT, format!("failing: {why}\n")),
        Ok(ok) if !standby.is_empty() && states.iter().all(|(_, s)| *s == ListenState::Standby) => {
            ("200 OK", TEXT, format!("standby: this host does not own {}; {ok}\n", standby.join(", ")))
        }
        Ok(ok) => ("200 OK", TEXT, format!("serving: {ok}\n")),
    }
}

fn tunnels_json<M: Mode>(ctx: &Ctx<M>) -> String {
    let mut open = ctx.tunnels.snapshot();
    open.sort_by_key(|t| t.id);
    let list: Vec<serde_json::Value> = open
        .iter()
        .map(|t| {
            let (up, down) = t.counters.totals();
            serde_json::json!({
                "peer": t.peer.to_string(),
                "identity": t.identity,
                "transport": t.transport.word(),
                "listen": t.listener.to_string(),
                "bytes_up": up,
                "bytes_down": down,
                "age_seconds": t.started.elapsed().as_secs_f64(),
                "original_dst": t.original_dst.map(|a| a.to_string()),
            })
        })
        .collect();
    let mut text = serde_json::Value::Array(list).to_string();
    text.push('\n');
    text
}
