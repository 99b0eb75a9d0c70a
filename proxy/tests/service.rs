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

/// Our client as systemd starts it when socket-activated: `listener` passed as fd 3 with
/// LISTEN_PID/LISTEN_FDS (sh does the dup and sets LISTEN_PID to the pid that execs the proxy).
fn activated_client(dir: &TestPki, listener: &std::net::TcpListener, server: &str) -> Proc {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // Inherited across exec: clear close-on-exec (the test process keeps its own copy open).
    nix::fcntl::fcntl(listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("fcntl");
    let addr = listener.local_addr().expect("addr").to_string();
    let (cert, ca) = (p(dir.root(), "r0-stunnel.pem"), p(dir.root(), "ca-cert.pem"));
    let script = format!("exec 3<&{fd} {fd}<&-; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"");
    let proc = Proc::spawn(
        "nfs-tls-proxy",
        Command::new("sh").args(["-c", &script, env!("CARGO_BIN_EXE_nfs-tls-proxy")]).args([
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
        ]),
    );
    proc.wait_line(&["socket activation"]);
    proc.wait_line(&["ready: SIGHUP reloads"]);
    proc
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
