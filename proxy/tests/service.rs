//! Service integration: readiness reported to systemd (Type=notify) only after the listeners are
//! bound, and STOPPING on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn readiness_is_reported_to_systemd_after_binding_and_stopping_on_sigterm() {
    let dir = TestPki::new();
    let socket_path = dir.root().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    let port = free_port();
    args[2] = format!("127.0.0.1:{port}");
    let mut server = Proc::spawn(
        "nfs-tls-proxy",
        Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy")).args(&args).env("NOTIFY_SOCKET", &socket_path),
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY datagram");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means bound: the port accepts at once.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("bound before READY=1");
    server.signal("TERM");
    let n = notify.recv(&mut buf).expect("STOPPING datagram");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(server.wait_exit(), Some(0));
}

/// Our proxy with `args` as systemd starts it when socket-activated: `listener` passed as fd 3 with
/// LISTEN_PID/LISTEN_FDS (sh does the dup and sets LISTEN_PID to the pid that execs the proxy).
fn activated(listener: &std::net::TcpListener, args: &[String]) -> Proc {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // Inherited across exec: clear close-on-exec (the test process keeps its own copy open).
    nix::fcntl::fcntl(listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("fcntl");
    // Move it to fd 3 (unless it is fd 3 already).
    let to_three = if fd == 3 { String::new() } else { format!("exec 3<&{fd} {fd}<&-; ") };
    let script = format!("{to_three}export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"");
    let proc = Proc::spawn(
        "nfs-tls-proxy",
        // bash, not sh: dash cannot redirect fds above 9.
        Command::new("bash").args(["-c", &script, env!("CARGO_BIN_EXE_nfs-tls-proxy")]).args(args),
    );
    proc.wait_line(&["socket activation"]);
    proc.wait_line(&["ready: SIGHUP reloads"]);
    proc
}

/// Our client on `listener` towards `server`, socket-activated.
fn activated_client(dir: &TestPki, listener: &std::net::TcpListener, server: &str) -> Proc {
    let addr = listener.local_addr().expect("addr").to_string();
    let (cert, ca) = (p(dir.root(), "r0-stunnel.pem"), p(dir.root(), "ca-cert.pem"));
    let args = [
        "client",
        "--listen",
        &addr,
        "--server",
        server,
        "--server-name",
        "f3s-storage-ha",
        "--cert",
        &cert,
        "--ca",
        &ca,
    ];
    activated(listener, &args.map(String::from))
}

/// Our server on `listener` in front of `backend`, socket-activated.
fn activated_server(dir: &TestPki, listener: &std::net::TcpListener, backend: std::net::SocketAddr) -> Proc {
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    args[2] = listener.local_addr().expect("addr").to_string();
    args[4] = backend.to_string();
    activated(listener, &args)
}

#[test]
fn a_socket_activated_client_restarts_without_refusing_a_connection() {
    // systemd holds the listening socket across `systemctl restart` (dist/systemd/
    // nfs-tls-proxy-client.socket); here the test process holds it, as systemd would.
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, &[]);
    args[4] = backend.addr.to_string();
    let server = Proc::proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let server_addr = server.listen_addr().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");

    let mut first = activated_client(&dir, &listener, &server_addr);
    assert_eq!(echo_through_blocking(addr, b"before the restart"), b"before the restart");
    first.signal("TERM");
    assert_eq!(first.wait_exit(), Some(0));

    // Between the two processes a mount reconnects: the kernel queues it, nothing refuses it.
    let mut waiting = std::net::TcpStream::connect(addr).expect("connect while no proxy runs");
    waiting.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    std::io::Write::write_all(&mut waiting, b"during the restart").expect("write");
    let _second = activated_client(&dir, &listener, &server_addr);
    let mut got = vec![0u8; b"during the restart".len()];
    std::io::Read::read_exact(&mut waiting, &mut got).expect("the queued connection is served");
    assert_eq!(got, b"during the restart");
}

#[test]
fn an_nfs_read_loop_through_both_proxies_sees_no_failure_while_each_restarts() {
    // Both proxies socket-activated (dist/systemd/nfs-tls-proxy-{client,server}.socket): libnfs reads
    // a file in a loop while the client, then the server, is stopped and started again.
    if !require("ganesha.nfsd") || !require("nfs-cat") {
        return;
    }
    let dir = TestPki::new();
    std::fs::create_dir(dir.root().join("export")).expect("mkdir");
    let data = test_support::random_bytes(256 << 10, 9);
    std::fs::write(dir.root().join("export/file"), &data).expect("file");
    let (_ganesha, nfs) = ganesha(dir.root());
    let server_socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client_socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let server_addr = server_socket.local_addr().expect("addr").to_string();
    let port = client_socket.local_addr().expect("addr").port();
    let mut server = activated_server(&dir, &server_socket, nfs);
    let mut client = activated_client(&dir, &client_socket, &server_addr);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, data) = (stop.clone(), data.clone());
        std::thread::spawn(move || {
            let url = format!("nfs://127.0.0.1/export/file?version=4&nfsport={port}");
            let (mut reads, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 2000 {
                let out = Command::new("timeout").args(["30", "nfs-cat", &url]).output().expect("nfs-cat");
                if !out.status.success() || out.stdout != data {
                    failures.push(format!(
                        "{:?} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                reads += 1;
            }
            (reads, failures)
        })
    };
    let restart = |proc: &mut Proc, start: &dyn Fn() -> Proc| {
        proc.signal("TERM");
        assert_eq!(proc.wait_exit(), Some(0));
        *proc = start();
    };
    // Let a few reads pass, restart each proxy in turn, let a few more pass.
    let pause = || std::thread::sleep(Duration::from_millis(300)); // pacing the restarts, not synchronising
    pause();
    restart(&mut client, &|| activated_client(&dir, &client_socket, &server_addr));
    pause();
    restart(&mut server, &|| activated_server(&dir, &server_socket, nfs));
    pause();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failures) = reader.join().expect("reader");
    eprintln!("FIGURE restarts under an nfs-cat loop: {reads} reads, {} failed", failures.len());
    assert!(reads >= 3, "too few reads: {reads}");
    assert!(failures.is_empty(), "{} of {reads} reads failed: {failures:?}", failures.len());
}
