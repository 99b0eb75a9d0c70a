//! The two-way copy of an open tunnel. Half-close is passed on: end of input on one side (TCP FIN or
//! TLS close_notify) becomes a shutdown on the other (FIN, or close_notify then FIN), and the other
//! direction keeps flowing. A TLS peer that drops TCP without close_notify ends only its own
//! direction, like a FIN. A reset or write error ends the whole tunnel.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio_util::sync::CancellationToken;

/// Copy buffer per direction: large enough for NFS READ/WRITE payloads (up to 1 MiB RPCs arrive in
/// pieces anyway) while keeping idle tunnels cheap (allocated only while a direction is active).
const BUFFER: usize = 64 * 1024;

/// Bytes moved so far, readable while the tunnel is open.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the accepted side (the NFS client) towards the NFS server.
    pub up: AtomicU64,
    /// From the NFS server towards the NFS client.
    pub down: AtomicU64,
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with an orderly close.
    Closed,
    /// A read or write failed (reset, broken pipe, TLS error).
    Error(String),
    /// Closed by us: drain, listener address lost, certificate revoked.
    Cut(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Error(e) => write!(f, "error: {e}"),
            End::Cut(why) => write!(f, "cut: {why}"),
        }
    }
}

/// Copies both ways until both directions are closed, one fails, or `cut` is cancelled.
pub async fn splice<A, B>(a: A, b: B, counters: &Counters, cut: &Cut) -> End
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let up = pump(ar, bw, &counters.up);
    let down = pump(br, aw, &counters.down);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let result = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
            _ = cut.token.cancelled() => {
                return End::Cut(cut.reason());
            }
        };
        if let Err(e) = result {
            return End::Error(e);
        }
    }
    End::Closed
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

    pub fn reason(&self) -> String {
        self.reason.get().cloned().unwrap_or_else(|| "cut".to_owned())
    }
}

async fn pump<R, W>(mut r: R, mut w: W, count: &AtomicU64) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // TLS without close_notify: the peer closed TCP. Treat it as end of this direction only,
            // so the reply the other way still arrives (stunnel and many kernels close this way).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => {
                let _ = w.shutdown().await;
                return Err(format!("read: {e}"));
            }
        };
        w.write_all(&buf[..n]).await.map_err(|e| format!("write: {e}"))?;
        // tokio-rustls holds records until flushed; NFS waits for replies, so flush every chunk.
        w.flush().await.map_err(|e| format!("write: {e}"))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    drop(buf);
    match w.shutdown().await {
        Ok(()) => Ok(()),
        // The other side already went away entirely; that is its close, not our error.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotConnected | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("shutdown: {e}")),
    }
}
