//! Under attack and under faults, with real processes: a burst of connections, an idle/half-hello
//! flood next to a legitimate client, resets passed on end to end, a network partition (root:
//! network namespaces), a backend that never reads, and running out of file descriptors.
//!
//! Every test prints `FIGURE` lines (the before/after figures). With `NFS_TLS_PROXY_BIN`
//! set to an older build they only measure (that build may not know the newer flags) and assert
//! nothing about the outcome.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// Whether an older build is being measured (see the module documentation).
fn measuring_old() -> bool {
    std::env::var_os("NFS_TLS_PROXY_BIN").is_some()
}

/// `flags` for this build; nothing for an older one.
fn new_flags<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    if measuring_old() {
        Vec::new()
    } else {
        flags.to_vec()
    }
}

fn figure(what: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {what}: {value}");
}

/// A server in front of `backend` and a client in front of the server, both on loopback.
fn pair(
    dir: &Path,
    backend: SocketAddr,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (Proc, Proc, SocketAddr) {
    let d = dir.display().to_string();
    let mut args = server_args(&d, server_extra);
    args[4] = backend.to_string();
    let server = Proc::proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let server_addr = server.listen_addr();
    let client = our_client_with(dir, &server_addr.to_string(), client_extra);
    let client_addr = client.listen_addr();
    (server, client, client_addr)
}

fn count(proc: &Proc, part: &str) -> usize {
    proc.log().lines().filter(|l| l.contains(part)).count()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; how long it took, if it held.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit, for this process and the proxies it starts.
fn raise_nofile(want: u64) -> bool {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return false };
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    // rlim_t is u64 on Linux and i64 on FreeBSD.
    #[allow(clippy::useless_conversion)]
    let hard_u64 = u64::try_from(hard).unwrap_or(0);
    if hard_u64 < want {
        assert!(std::env::var_os("CI").is_none(), "RLIMIT_NOFILE hard limit {hard} < {want} in CI");
        eprintln!("!!! SKIPPING: the hard RLIMIT_NOFILE ({hard}) is below {want}");
        return false;
    }
    true
}

#[test]
fn a_burst_of_5000_connections_through_both_proxies_arrives_intact() {
    const N: usize = 5000;
    if !raise_nofile(2 * N as u64 + 1000) {
        return;
    }
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let limits = ["--max-connections", "6000"];
    let (server, client, addr) = pair(dir.root(), backend.addr, &limits, &limits);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    let (intact, failures) = runtime.block_on(async {
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                tokio::spawn(async move {
                    let data = test_support::random_bytes(2048 + i % 512, i as u64);
                    let echo = tokio::time::timeout(
                        Duration::from_secs(90),
                        test_support::echo_through(addr, &data),
                    );
                    match echo.await {
                        Ok(Ok(back)) if back == data => Ok(()),
                        Ok(Ok(back)) => Err(format!("{} of {} bytes back", back.len(), data.len())),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".to_owned()),
                    }
                })
            })
            .collect();
        let mut intact = 0;
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => intact += 1,
                Ok(Err(e)) => *failures.entry(e).or_default() += 1,
                Err(e) => *failures.entry(e.to_string()).or_default() += 1,
            }
        }
        (intact, failures)
    });
    figure("burst 5000 intact", format!("{intact}/{N} in {:.1}s", started.elapsed().as_secs_f64()));
    if !measuring_old() {
        // All 5000 come from one address, so the handshake budget paces them. On a machine too busy
        // to finish the first handshakes within the shortest chance (250 ms, before any completed),
        // a few are evicted: allowed here up to 0.5% (see the issue notes); idle, it is 5000/5000.
        assert!(
            intact >= N - N / 200,
            "{intact}/{N}: failures: {failures:?}\nserver:\n{}\nclient:\n{}",
            tail(&server),
            tail(&client)
        );
    }
}

/// A process's warnings and errors (or its last lines), for failure messages.
fn tail(proc: &Proc) -> String {
    let log = proc.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
    let lines = if lines.is_empty() { log.lines().collect() } else { lines };
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The start of a TLS ClientHello record that announces 512 bytes and sends 40.
const HALF_HELLO: [u8; 45] = {
    let mut b = [0u8; 45];
    b[0] = 0x16;
    b[1] = 0x03;
    b[2] = 0x01;
    b[3] = 0x02;
    b[4] = 0x00;
    b[5] = 0x01; // ClientHello
    b
};

/// Keeps `n` connections to `target` open from `source` (idle, or every other one with half a
/// ClientHello), opening a new one whenever one is closed, until `stop`.
fn flood(
    target: SocketAddr,
    source: std::net::IpAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let open = |i: usize| -> Option<TcpStream> {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
            socket.connect_timeout(&target.into(), Duration::from_secs(1)).ok()?;
            let mut tcp: TcpStream = socket.into();
            if i % 2 == 1 {
                let _ = tcp.write_all(&HALF_HELLO);
            }
            tcp.set_nonblocking(true).ok()?;
            Some(tcp)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        let mut opened = 0;
        while !stop.load(Ordering::Relaxed) {
            for (i, slot) in conns.iter_mut().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let gone = match slot {
                    None => true,
                    Some(tcp) => {
                        let mut byte = [0u8; 64];
                        matches!(tcp.read(&mut byte), Ok(0))
                            || matches!(tcp.read(&mut byte), Err(e) if e.kind() != ErrorKind::WouldBlock)
                    }
                };
                if gone {
                    *slot = open(i);
                    opened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        opened
    })
}

#[test]
fn a_legitimate_client_gets_through_an_idle_and_half_hello_flood() {
    if !raise_nofile(8000) {
        return;
    }
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let (server, _client, addr) = pair(dir.root(), backend.addr, &["--handshake-timeout", "5s"], &[]);
    let target = server.listen_addr();
    let mut results = Vec::new();
    // From another address (an attacker elsewhere), then from the legitimate client's own.
    for (source, label) in [([127, 0, 0, 2], "another address"), ([127, 0, 0, 1], "the same address")] {
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = flood(target, source.into(), 2000, stop.clone());
        // Let the flood fill the budget first.
        within(Duration::from_secs(10), || {
            count(&server, "closed-during-handshake") + count(&server, "evicted") > 0
                || count(&server, "handshake-timeout") > 0
        });
        let (mut ok, mut attempts) = (0, 0);
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            attempts += 1;
            let data = test_support::random_bytes(16 * 1024, attempts);
            if echo_through_blocking(addr, &data) == data {
                ok += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let opened = flooder.join().unwrap_or(0);
        figure(
            &format!("legit success under a flood of 2000 from {label}"),
            format!("{ok}/{attempts} (flood opened {opened})"),
        );
        results.push((label, ok, attempts));
    }
    let refused_legit = count(&server, "reason=\"max-connections\"");
    figure("max-connections refusals", refused_legit);
    if !measuring_old() {
        for (label, ok, attempts) in results {
            assert_eq!(ok, attempts, "flood from {label}:\n{}", tail(&server));
        }
        assert_eq!(refused_legit, 0);
        // The flood was logged in summaries, not one line per connection.
        assert!(count(&server, "connections refused (summary") > 0, "{}", tail(&server));
    }
}

/// A backend that, for each connection, reads `read` bytes, writes `write` bytes and resets.
fn resetting_backend(read: usize, write: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut got = vec![0u8; read];
                let _ = (&tcp).read_exact(&mut got);
                let _ = (&tcp).write_all(&vec![7u8; write]);
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            });
        }
    });
    addr
}

/// A backend that reads until the stream ends and records how: "eof", "reset" or another error.
fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ends = Arc::new(Mutex::new(Vec::new()));
    let seen = ends.clone();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().map_while(Result::ok) {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    match tcp.read(&mut buf) {
                        Ok(0) => break "eof".to_owned(),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset".to_owned(),
                        Err(e) => break format!("{e}"),
                    }
                };
                seen.lock().expect("ends").push(end);
            });
        }
    });
    (addr, ends)
}

#[test]
fn resets_arrive_as_resets_through_both_proxies_both_ways() {
    const N: usize = 20;
    let dir = TestPki::new();
    // The backend resets mid-reply: the NFS client must see ECONNRESET, never a clean end.
    let backend = resetting_backend(100, 200 * 1024);
    let (_server, _client, addr) = pair(dir.root(), backend, &[], &[]);
    let mut resets = 0;
    for _ in 0..N {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        tcp.write_all(&[1u8; 100]).expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match tcp.read(&mut buf) {
                Ok(0) => break "eof",
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
                Err(_) => break "other",
            }
        };
        resets += usize::from(end == "reset");
    }
    figure("backend reset seen by the client as ECONNRESET", format!("{resets}/{N}"));
    // The client application resets mid-request: the backend must see ECONNRESET.
    let (backend, ends) = recording_backend();
    let (_server, _client, addr) = pair(dir.root(), backend, &[], &[]);
    for _ in 0..N {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.write_all(&vec![1u8; 100 * 1024]).expect("write");
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).expect("linger");
    }
    let done = within(Duration::from_secs(30), || ends.lock().expect("ends").len() == N);
    let backend_resets = ends.lock().expect("ends").iter().filter(|e| *e == "reset").count();
    figure("client reset seen by the backend as ECONNRESET", format!("{backend_resets}/{N}"));
    if !measuring_old() {
        assert_eq!(resets, N);
        assert!(done.is_some(), "the backend saw {} of {N} ends", ends.lock().expect("ends").len());
        assert_eq!(backend_resets, N, "{:?}", ends.lock().expect("ends"));
    }
}

/// A backend that accepts and never reads; it keeps every connection open.
fn never_reading_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for tcp in listener.incoming().map_while(Result::ok) {
            held.push(tcp);
        }
    });
    addr
}

#[test]
fn a_never_reading_backend_frees_its_tunnels_once_the_clients_are_gone() {
    const N: usize = 50;
    let stall = 5;
    let dir = TestPki::new();
    let backend = never_reading_backend();
    let stall_flag = format!("{stall}s");
    let flags = new_flags(&["--write-stall-timeout", &stall_flag]);
    let (server, client, addr) = pair(dir.root(), backend, &flags, &flags);
    // Each client writes until nothing more goes in, then goes away: half of them with a FIN, half
    // with a reset.
    for i in 0..N {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_write_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let chunk = vec![9u8; 256 * 1024];
        while tcp.write(&chunk).is_ok() {}
        if i % 2 == 1 {
            socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).expect("linger");
        } else {
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
    let gone = Instant::now();
    let limit = Duration::from_secs(if measuring_old() { 30 } else { stall + 20 });
    let released = |p: &Proc| count(p, "tunnel closed") >= N;
    let server_took = within(limit, || released(&server));
    let client_took = within(limit.saturating_sub(gone.elapsed()), || released(&client));
    let show = |p: &Proc, took: Option<Duration>| match took {
        Some(_) => format!("all {N} freed {:.1}s after the clients went", gone.elapsed().as_secs_f64()),
        None => format!(
            "{} of {N} still open {}s after the clients went",
            N - count(p, "tunnel closed"),
            limit.as_secs()
        ),
    };
    figure("never-reading backend, server proxy", show(&server, server_took));
    figure("never-reading backend, client proxy", show(&client, client_took));
    if !measuring_old() {
        assert!(
            server_took.is_some() && client_took.is_some(),
            "server:\n{}\nclient:\n{}",
            tail(&server),
            tail(&client)
        );
        assert!(count(&server, "stalled: no write progress") + count(&server, "reset") > 0);
    }
}

#[test]
fn running_out_of_file_descriptors_is_reported_as_resource_exhausted_not_unreachable() {
    if !require("sh") {
        return;
    }
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    args[4] = backend.addr.to_string();
    let line = format!("ulimit -n 48 && exec {} {}", proxy_bin(), args.join(" "));
    let server = Proc::spawn("server (48 descriptors)", std::process::Command::new("sh").args(["-c", &line]));
    let server_addr = server.listen_addr();
    let client = our_client_with(dir.root(), &server_addr.to_string(), &[]);
    let addr = client.listen_addr();
    // Hold 30 tunnels open at once: they need more descriptors than the server has.
    let attempts: Vec<_> = (0..30u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(addr).ok()?;
                tcp.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
                let data = test_support::random_bytes(100, i);
                tcp.write_all(&data).ok()?;
                let mut back = vec![0u8; 100];
                tcp.read_exact(&mut back).ok().filter(|()| back == data).map(|()| tcp)
            })
        })
        .collect();
    let held: Vec<TcpStream> = attempts.into_iter().filter_map(|t| t.join().ok().flatten()).collect();
    let exhausted = within(Duration::from_secs(20), || count(&server, "resource-exhausted") > 0);
    figure(
        "descriptor exhaustion",
        format!(
            "{} tunnels held; reasons logged: resource-exhausted {}, unreachable {}",
            held.len(),
            count(&server, "resource-exhausted"),
            count(&server, "reason=\"unreachable\"")
        ),
    );
    drop(held);
    if measuring_old() {
        return;
    }
    assert!(exhausted.is_some(), "{}", tail(&server));
    assert_eq!(count(&server, "reason=\"unreachable\""), 0, "{}", tail(&server));
    // Descriptors free again: tunnels work again, and the episode's end is logged with its count.
    let data = test_support::random_bytes(1000, 99);
    let back = within(Duration::from_secs(20), || echo_through_blocking(addr, &data) == data);
    assert!(back.is_some(), "{}", tail(&server));
    server.wait_line(&["out of resources no more", "count="]);
}

#[cfg(target_os = "linux")]
mod partition {
    use super::*;
    use support::netns::Netns;

    /// Two namespaces joined by a veth pair: the NFS client side (application and our client) and
    /// the storage side (our server and the backend).
    struct Link {
        client_side: Netns,
        server_side: Netns,
    }

    impl Link {
        fn new() -> Self {
            let (client_side, server_side) = (Netns::new("pc"), Netns::new("ps"));
            client_side.ip(&[
                "link",
                "add",
                "wire",
                "type",
                "veth",
                "peer",
                "name",
                "wire",
                "netns",
                &server_side.name,
            ]);
            client_side.ip(&["addr", "add", "192.0.2.1/30", "dev", "wire"]);
            server_side.ip(&["addr", "add", "192.0.2.2/30", "dev", "wire"]);
            client_side.ip(&["link", "set", "wire", "up"]);
            server_side.ip(&["link", "set", "wire", "up"]);
            Self { client_side, server_side }
        }
    }

    #[test]
    fn a_partition_releases_the_tunnels_on_both_proxies_within_the_user_timeout() {
        if !require_root() {
            return;
        }
        let dir = TestPki::new();
        let link = Link::new();
        let backend = link.server_side.echo();
        // keepalive 1 s: probes every second, and the TCP user timeout follows: 1 + 6 x 1 = 7 s.
        let bound = Duration::from_secs(7);
        let (cert, ca) = (p(dir.root(), "f3s-storage-ha-stunnel.pem"), p(dir.root(), "ca-cert.pem"));
        let backend_addr = backend.addr.to_string();
        let server = link.server_side.proxy(
            "server",
            &[
                "server",
                "--listen",
                "192.0.2.2:2323",
                "--backend",
                &backend_addr,
                "--cert",
                &cert,
                "--ca",
                &ca,
                "--keepalive",
                "1s",
            ],
        );
        server.wait_line(&["listening"]);
        let (cert, ca) = (p(dir.root(), "r0-stunnel.pem"), p(dir.root(), "ca-cert.pem"));
        let client = link.client_side.proxy(
            "client",
            &[
                "client",
                "--listen",
                "127.0.0.1:2049",
                "--server",
                "192.0.2.2:2323",
                "--server-name",
                "localhost",
                "--cert",
                &cert,
                "--ca",
                &ca,
                "--keepalive",
                "1s",
            ],
        );
        client.wait_line(&["listening"]);
        // Two tunnels: one goes idle, one has data in flight when the link goes down.
        let mut tunnels: Vec<TcpStream> = (0..2)
            .map(|i| {
                let mut tcp = link.client_side.connect("127.0.0.1:2049").expect("connect");
                tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let data = test_support::random_bytes(1000, i);
                tcp.write_all(&data).expect("write");
                let mut back = vec![0u8; 1000];
                tcp.read_exact(&mut back).expect("echo");
                assert_eq!(back, data);
                tcp
            })
            .collect();
        client.wait_line(&["tunnel opened"]);
        link.server_side.ip(&["link", "set", "wire", "down"]);
        let cut = Instant::now();
        tunnels[1].write_all(&[5u8; 4096]).expect("write into the partition");
        let limit = if measuring_old() { Duration::from_secs(90) } else { bound + Duration::from_secs(15) };
        let released = |p: &Proc| count(p, "tunnel closed") >= 2;
        let server_took = within(limit, || released(&server)).map(|_| cut.elapsed());
        let client_took =
            within(limit.saturating_sub(cut.elapsed()), || released(&client)).map(|_| cut.elapsed());
        let show = |took: Option<Duration>, p: &Proc| match took {
            Some(t) => format!("released after {:.1}s", t.as_secs_f64()),
            None => format!(
                "{} of 2 tunnels still open after {}s",
                2 - count(p, "tunnel closed"),
                limit.as_secs()
            ),
        };
        figure("partition, server proxy", show(server_took, &server));
        figure("partition, client proxy", show(client_took, &client));
        if !measuring_old() {
            assert!(
                server_took.is_some() && client_took.is_some(),
                "server:\n{}\nclient:\n{}",
                tail(&server),
                tail(&client)
            );
            // The application sees the tunnel fail, not end.
            let mut buf = [0u8; 16];
            assert!(
                !matches!(tunnels[0].read(&mut buf), Ok(0)),
                "a partitioned tunnel must not look cleanly closed"
            );
        }
    }
}
