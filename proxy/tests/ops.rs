//! The operator's endpoint over real HTTP: /metrics, /healthz and /tunnels move with real traffic,
//! refusals and a real NFS server (nfs-ganesha) going away.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// `GET path` over plain HTTP; returns (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    (code, body.to_owned())
}

/// The metrics address our binary logged.
fn metrics_addr(proc: &Proc) -> SocketAddr {
    let line = proc.wait_line(&["serving /metrics", "metrics="]);
    line.split("metrics=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .expect("addr")
        .parse()
        .expect("addr")
}

/// Our server in front of `backend`, with `extra` flags.
fn server_in_front_of(dir: &TestPki, backend: SocketAddr, extra: &[&str]) -> Proc {
    let d = dir.root().display().to_string();
    let mut args = server_args(&d, extra);
    args[4] = backend.to_string();
    Proc::proxy(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Our server in front of a fresh nfs-ganesha (with an `export` directory in `dir`), and `extra`
/// flags; returns both processes.
fn server_in_front_of_ganesha(dir: &TestPki, extra: &[&str]) -> (Proc, Proc) {
    std::fs::create_dir(dir.root().join("export")).expect("mkdir");
    let (ganesha, nfs) = ganesha(dir.root());
    (server_in_front_of(dir, nfs, extra), ganesha)
}

/// The value of the sample whose line starts with `prefix` (name and labels), if present.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_and_tunnels_move_with_traffic_and_refusals() {
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let server = server_in_front_of(&dir, backend.addr, &["--metrics", "127.0.0.1:0"]);
    let server_addr = server.listen_addr();
    let ops = metrics_addr(&server);

    let (code, m) = get(ops, "/metrics");
    assert_eq!(code, 200);
    assert!(m.contains("nfs_tls_proxy_build_info{version=\"0.1.0\",mode=\"server\"} 1"), "{m}");
    assert_eq!(sample(&m, "nfs_tls_proxy_listen_address_owned{listen=\"127.0.0.1:0\"}"), Some(1.0), "{m}");
    assert!(m.contains("nfs_tls_proxy_expiry_timestamp_seconds{what=\"certificate\""), "{m}");
    assert_eq!(get(ops, "/tunnels"), (200, "[]\n".to_owned()));

    // One open tunnel that has moved 1000 bytes each way.
    let client = our_client(dir.root(), server_addr);
    let mut open = TcpStream::connect(client.listen_addr()).expect("connect");
    open.write_all(&[1u8; 1000]).expect("write");
    let mut back = [0u8; 1000];
    open.read_exact(&mut back).expect("echo");
    server.wait_line(&["tunnel opened", "identity=r0"]);

    let (_, tunnels) = get(ops, "/tunnels");
    let list: serde_json::Value = serde_json::from_str(&tunnels).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{tunnels}");
    assert_eq!(list[0]["identity"], "r0");
    assert_eq!(list[0]["transport"], "tls");
    assert_eq!(list[0]["bytes_up"], 1000);
    assert_eq!(list[0]["bytes_down"], 1000);

    let (_, m) = get(ops, "/metrics");
    assert_eq!(sample(&m, "nfs_tls_proxy_tunnels_open{identity=\"r0\",transport=\"tls\"}"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "nfs_tls_proxy_tunnels_total{identity=\"r0\",transport=\"tls\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "nfs_tls_proxy_bytes_total{identity=\"r0\",direction=\"up\"}"),
        Some(1000.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "nfs_tls_proxy_bytes_total{identity=\"r0\",direction=\"down\"}"),
        Some(1000.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "nfs_tls_proxy_handshake_duration_seconds_count{transport=\"tls\"}"),
        Some(1.0),
        "{m}"
    );

    // A refusal is counted by reason; closing the tunnel empties /tunnels and keeps the bytes.
    let mut plain = TcpStream::connect(server_addr).expect("connect");
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    server.wait_line(&["connection refused", "reason=\"not-tls\""]);
    drop(open);
    server.wait_line(&["tunnel closed", "identity=r0"]);
    let (_, m) = get(ops, "/metrics");
    assert_eq!(
        sample(&m, "nfs_tls_proxy_refusals_total{reason=\"not-tls\",identity=\"-\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "nfs_tls_proxy_tunnels_open{identity=\"r0\",transport=\"tls\"}"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "nfs_tls_proxy_bytes_total{identity=\"r0\",direction=\"up\"}"),
        Some(1000.0),
        "{m}"
    );
    assert_eq!(get(ops, "/tunnels"), (200, "[]\n".to_owned()));
    assert_eq!(get(ops, "/nothing-here").0, 404);
}

#[test]
fn healthz_means_nfs_answers_not_just_that_the_port_is_open() {
    if !require("ganesha.nfsd") {
        return;
    }
    let dir = TestPki::new();
    std::fs::create_dir(dir.root().join("export")).expect("mkdir");
    let (mut ganesha, nfs) = ganesha(dir.root());
    let echo = EchoBackend::start();
    let serve = |backend: SocketAddr| server_in_front_of(&dir, backend, &["--metrics", "127.0.0.1:0"]);
    let in_front_of_nfs = serve(nfs);
    let in_front_of_echo = serve(echo.addr);

    let (code, body) = get(metrics_addr(&in_front_of_nfs), "/healthz");
    assert_eq!((code, body.starts_with("serving: backend")), (200, true), "{body}");
    assert!(body.contains("answered an NFS NULL call"), "{body}");
    // An open port that is not NFS is not healthy.
    let (code, body) = get(metrics_addr(&in_front_of_echo), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("failing: backend") && body.contains("NFS NULL call failed"), "{body}");
    // Nor is a stopped NFS server, once the answer of the last probe (reused for 2 s) is stale.
    ganesha.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut code, mut body) = get(metrics_addr(&in_front_of_nfs), "/healthz");
    while code == 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200)); // polling /healthz with a deadline
        (code, body) = get(metrics_addr(&in_front_of_nfs), "/healthz");
    }
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("failing: backend"), "{body}");
}

#[test]
fn healthz_requests_at_once_share_one_probe_of_the_far_side() {
    if !require("ganesha.nfsd") {
        return;
    }
    // A client's probe is a whole tunnel on the storage server (handshake, NFS NULL call): eight
    // monitors asking at once must not make eight.
    let dir = TestPki::new();
    let (server, _ganesha) = server_in_front_of_ganesha(&dir, &[]);
    let up = server.listen_addr().to_string();
    let client = our_client_with(dir.root(), &up, &["--metrics", "127.0.0.1:0"]);
    let ops = metrics_addr(&client);
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let askers: Vec<_> = (0..8)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                get(ops, "/healthz")
            })
        })
        .collect();
    for asker in askers {
        let (code, body) = asker.join().expect("thread");
        assert_eq!(code, 200, "{body}");
    }
    server.wait_line(&["tunnel closed"]);
    let opened = server.log().matches("tunnel opened").count();
    assert_eq!(opened, 1, "{}", server.log());
}

#[test]
fn a_clients_healthz_is_an_nfs_null_call_through_the_first_server_that_lets_it_in() {
    if !require("ganesha.nfsd") {
        return;
    }
    let dir = TestPki::new();
    let crl = p(dir.root(), "crl.pem");
    let (server, _ganesha) = server_in_front_of_ganesha(&dir, &["--crl", &crl]);
    let dead = format!("127.0.0.1:{}", free_port());
    let ca = p(dir.root(), "ca-cert.pem");
    let up = server.listen_addr().to_string();
    let client = |who: &str, servers: &[&str]| {
        let cert = p(dir.root(), &format!("{who}-stunnel.pem"));
        let mut v: Vec<String> =
            ["client", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"].map(String::from).to_vec();
        for s in servers {
            v.extend(["--server".to_owned(), s.to_string()]);
        }
        v.extend(["--server-name", "f3s-storage-ha", "--cert", &cert, "--ca", &ca].map(String::from));
        Proc::proxy(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let good = client("r0", &[&dead, &up]);
    let (code, body) = get(metrics_addr(&good), "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("NFS NULL call answered") && body.contains("f3s-storage-ha"), "{body}");

    let bad = client("r0", &[&dead]);
    let (code, body) = get(metrics_addr(&bad), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unreachable"), "{body}");

    // r2 is revoked: its TLS 1.3 handshake completes, then the server refuses it. Not healthy.
    let revoked = client("r2", &[&up]);
    let (code, body) = get(metrics_addr(&revoked), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused-by-server"), "{body}");
    // Its tunnels are refusals too, logged as such on its own side.
    let mut app = std::net::TcpStream::connect(revoked.listen_addr()).expect("connect");
    app.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    let _ = app.write_all(b"\0\0\0\x28 an NFS call that the server will never see");
    let _ = std::io::Read::read(&mut app, &mut [0u8; 64]);
    revoked.wait_line(&["WARN", "connection refused", "refused-by-server"]);
}

/// `--ktls auto` (the default) on a host whose kernel has no `tls` module (this one, CI's): the
/// proxy says so once at start, every tunnel runs on rustls' record layer and says `path=rustls`,
/// and the metric counts it. On a kernel with the module the same test sees `path=ktls` instead
/// (the kernel VM's scenarios test that path).
#[test]
fn each_tunnel_says_which_record_layer_it_runs_on_and_the_metric_counts_it() {
    let dir = TestPki::new();
    let backend = EchoBackend::start();
    let server = server_in_front_of(&dir, backend.addr, &["--metrics", "127.0.0.1:0"]);
    let ops = metrics_addr(&server);
    let ktls = server.wait_line(&["kTLS:"]);
    let path = if ktls.contains("not available") { "rustls" } else { "ktls" };
    if path == "rustls" {
        assert!(ktls.contains("tls") && ktls.contains("rustls' record layer"), "{ktls}");
    }

    let client = our_client(dir.root(), server.listen_addr());
    let mut open = TcpStream::connect(client.listen_addr()).expect("connect");
    open.write_all(&[7u8; 100_000]).expect("write");
    let mut back = vec![0u8; 100_000];
    open.read_exact(&mut back).expect("echo");
    assert!(back.iter().all(|&b| b == 7));
    server.wait_line(&["tunnel opened", &format!("path=\"{path}\"")]);
    client.wait_line(&["tunnel opened", &format!("path=\"{path}\"")]);

    let (_, m) = get(ops, "/metrics");
    assert_eq!(sample(&m, &format!("nfs_tls_proxy_record_path_total{{path=\"{path}\"}}")), Some(1.0), "{m}");
    let other = if path == "rustls" { "ktls" } else { "rustls" };
    assert_eq!(sample(&m, &format!("nfs_tls_proxy_record_path_total{{path=\"{other}\"}}")), Some(0.0), "{m}");
}
