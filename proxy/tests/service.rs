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
