//! The echo backend every test and the benchmark put behind a tunnel, and the clients that send
//! through one and read the echo.
//!
//! The backend runs on plain threads, not on a runtime: the in-process tests (tokio), the
//! process-level tests and the benchmark (blocking) all use the same one.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo server that counts the connections it accepted, those still open, and their source
/// ports. Dropping it (or [`EchoBackend::stop`]) closes the port; open connections continue.
#[derive(Debug)]
pub struct EchoBackend {
    pub addr: SocketAddr,
    listener: Arc<TcpListener>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    peer_ports: Mutex<Vec<u16>>,
}

impl EchoBackend {
    /// On a free loopback port.
    pub fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// On `addr` (e.g. the port of a backend that went away, to bring it back).
    pub fn start_on(addr: SocketAddr) -> Self {
        Self::on_listener(TcpListener::bind(addr).expect("bind echo backend"))
    }

    /// On a listener made elsewhere (e.g. inside a network namespace).
    pub fn on_listener(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let listener = Arc::new(listener);
        let counts = Arc::new(Counts::default());
        let (accepting, seen) = (listener.clone(), counts.clone());
        std::thread::spawn(move || {
            // Ends when stop() shuts the listener down (accept then fails).
            for stream in accepting.incoming().map_while(Result::ok) {
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                seen.open.fetch_add(1, Ordering::SeqCst);
                if let Ok(peer) = stream.peer_addr() {
                    seen.peer_ports.lock().unwrap_or_else(|p| p.into_inner()).push(peer.port());
                }
                let seen = seen.clone();
                std::thread::spawn(move || {
                    // Small requests (latency probes) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let (mut r, mut w) = (&stream, &stream);
                    let _ = std::io::copy(&mut r, &mut w);
                    let _ = stream.shutdown(Shutdown::Write);
                    seen.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, listener, counts }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections not yet closed by the peer.
    pub fn open_now(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// The source port of each connection, in the order accepted.
    pub fn peer_ports(&self) -> Vec<u16> {
        self.counts.peer_ports.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (blocking, bounded) until no connection is open; false if some still are after `limit`.
    pub fn all_closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.open_now() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops accepting: the port is closed at once; open connections continue.
    pub fn stop(&self) {
        // On Linux, shutting a listening socket down closes the port and wakes the blocked accept().
        let _ = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Both);
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `data`, half-closes, and reads until EOF: the echo through a tunnel.
pub async fn echo_through(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    echo_on(tcp, data).await
}

/// [`echo_through`] on a stream already connected (e.g. a TLS stream of the test's own).
pub async fn echo_on<S>(stream: S, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back).await;
    let _ = writer.await;
    read.map(|_| back)
}

/// [`echo_through`] for tests without a runtime; what came back (empty if the tunnel was refused),
/// bounded by a 30 s read timeout.
pub fn echo_through_blocking(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
    });
    let mut back = Vec::new();
    let _ = (&stream).read_to_end(&mut back);
    let _ = writer.join();
    back
}
