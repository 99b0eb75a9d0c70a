//! Our binary against real peers: stunnel 5 in both directions, and NFS through the tunnel with
//! nfs-ganesha as the server and libnfs (`nfs-ls`, `nfs-cat`) as the client.

mod support;

use std::process::Command;

use support::*;

/// Our server in front of `backend`, with the test PKI; returns it once it is listening.
fn our_server(dir: &std::path::Path, backend: std::net::SocketAddr) -> Proc {
    our_server_with(dir, backend, &["--crl", &p(dir, "crl.pem")])
}

/// [`our_server`] with `extra` flags instead of the CRL.
fn our_server_with(dir: &std::path::Path, backend: std::net::SocketAddr, extra: &[&str]) -> Proc {
    let (backend, cert, key, ca) = (
        backend.to_string(),
        p(dir, "f3s-storage-ha-cert.pem"),
        p(dir, "f3s-storage-ha-key.pem"),
        p(dir, "ca-cert.pem"),
    );
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--backend", &backend];
    args.extend(["--cert", &cert, "--key", &key, "--ca", &ca]);
    args.extend_from_slice(extra);
    let proxy = Proc::proxy(&args);
    proxy.listen_addr();
    proxy
}

fn stunnel(dir: &std::path::Path, name: &str, config: &str) -> Proc {
    let conf = write(dir, name, &format!("foreground = yes\npid =\ndebug = 5\n{config}"));
    Proc::spawn("stunnel", Command::new("stunnel4").arg(conf))
}

#[test]
fn stunnel_client_reaches_the_backend_through_our_server() {
    if !require("stunnel4") {
        return;
    }
    let dir = TestPki::new();
    let echo = EchoBackend::start();
    let server = our_server(dir.root(), echo.addr);
    let port = free_port();
    let _stunnel = stunnel(
        dir.root(),
        "client.conf",
        &format!(
            "[nfs]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {}\ncert = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = f3s-storage-ha\n",
            server.listen_addr(),
            p(dir.root(), "r0-stunnel.pem"),
            p(dir.root(), "ca-cert.pem"),
        ),
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_port(addr).expect("listening");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(echo_through_blocking(addr, &data), data);
    server.wait_line(&["tunnel closed", "identity=r0", "bytes_up=1000000", "bytes_down=1000000"]);
}

#[test]
fn our_client_reaches_the_backend_through_a_stunnel_server() {
    if !require("stunnel4") {
        return;
    }
    let dir = TestPki::new();
    let echo = EchoBackend::start();
    let port = free_port();
    let _stunnel = stunnel(
        dir.root(),
        "server.conf",
        &format!(
            "[nfs-tls]\naccept = 127.0.0.1:{port}\nconnect = {}\ncert = {}\nkey = {}\nCAfile = {}\nverify = 2\nrequireCert = yes\n",
            echo.addr,
            p(dir.root(), "f3s-storage-ha-cert.pem"),
            p(dir.root(), "f3s-storage-ha-key.pem"),
            p(dir.root(), "ca-cert.pem"),
        ),
    );
    let server_addr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_port(server_addr).expect("listening");
    let client = our_client(dir.root(), server_addr);
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through_blocking(client.listen_addr(), &data), data);
    client.wait_line(&["tunnel closed", "identity=f3s-storage-ha", "bytes_up=1000000"]);
}

/// Every cipher suite rustls can negotiate, as stunnel (OpenSSL) spells it and as our log names it.
const SUITES: [(&str, &str, &str); 6] = [
    ("TLSv1.3", "ciphersuites = TLS_AES_128_GCM_SHA256", "TLSv1_3/TLS13_AES_128_GCM_SHA256"),
    ("TLSv1.3", "ciphersuites = TLS_AES_256_GCM_SHA384", "TLSv1_3/TLS13_AES_256_GCM_SHA384"),
    ("TLSv1.3", "ciphersuites = TLS_CHACHA20_POLY1305_SHA256", "TLSv1_3/TLS13_CHACHA20_POLY1305_SHA256"),
    ("TLSv1.2", "ciphers = ECDHE-ECDSA-AES128-GCM-SHA256", "TLSv1_2/TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ("TLSv1.2", "ciphers = ECDHE-ECDSA-AES256-GCM-SHA384", "TLSv1_2/TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    (
        "TLSv1.2",
        "ciphers = ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLSv1_2/TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

#[test]
fn every_suite_and_tls_version_carries_data_both_ways_between_stunnel_and_our_record_layer() {
    if !require("stunnel4") {
        return;
    }
    let dir = TestPki::new();
    let d = dir.root();
    let echo = EchoBackend::start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    let want = format!("bytes_up={}", data.len());
    for (i, (version, suite, logged)) in SUITES.iter().enumerate() {
        let pin = format!("sslVersionMin = {version}\nsslVersionMax = {version}\n{suite}\n");
        // stunnel client -> our server.
        let server = our_server_with(d, echo.addr, &["--min-tls", "1.2"]);
        let port = free_port();
        let stunnel_client = stunnel(
            d,
            &format!("client{i}.conf"),
            &format!(
                "[nfs]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {}\ncert = {}\nCAfile = {}\nverifyChain = yes\n{pin}",
                server.listen_addr(),
                p(d, "r0-stunnel.pem"),
                p(d, "ca-cert.pem"),
            ),
        );
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_port(addr).expect("listening");
        assert_eq!(echo_through_blocking(addr, &data), data, "stunnel client, {logged}");
        server.wait_line(&["tunnel opened", &format!("tls={logged}")]);
        server.wait_line(&["tunnel closed", &want, "end=closed"]);
        drop(stunnel_client);

        // our client -> stunnel server.
        let port = free_port();
        let stunnel_server = stunnel(
            d,
            &format!("server{i}.conf"),
            &format!(
                "[nfs-tls]\naccept = 127.0.0.1:{port}\nconnect = {}\ncert = {}\nkey = {}\nCAfile = {}\nverify = 2\nrequireCert = yes\n{pin}",
                echo.addr,
                p(d, "f3s-storage-ha-cert.pem"),
                p(d, "f3s-storage-ha-key.pem"),
                p(d, "ca-cert.pem"),
            ),
        );
        let server_addr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_port(server_addr).expect("listening");
        let client = our_client_with(d, &server_addr.to_string(), &["--min-tls", "1.2"]);
        assert_eq!(echo_through_blocking(client.listen_addr(), &data), data, "stunnel server, {logged}");
        client.wait_line(&["tunnel opened", &format!("tls={logged}")]);
        client.wait_line(&["tunnel closed", &want, "end=closed"]);
        drop(stunnel_server);
    }
}

#[test]
fn libnfs_lists_and_reads_a_16_mib_file_from_ganesha_through_our_client_and_server() {
    if !(require("ganesha.nfsd") && require("nfs-cat") && require("nfs-ls")) {
        return;
    }
    let dir = TestPki::new();
    let export = dir.root().join("export");
    std::fs::create_dir(&export).expect("mkdir");
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(export.join("big.bin"), &data).expect("write");
    std::fs::write(export.join("hello.txt"), "hello over TLS\n").expect("write");
    let (_ganesha, nfs) = ganesha(dir.root());
    let server = our_server(dir.root(), nfs);
    let client = our_client(dir.root(), server.listen_addr());
    let port = client.listen_addr().port();

    let ls = Command::new("timeout")
        .args(["60", "nfs-ls", &format!("nfs://127.0.0.1/export/?version=4&nfsport={port}")])
        .output()
        .expect("nfs-ls");
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && listing.contains("big.bin") && listing.contains("hello.txt"), "{listing}");

    let cat = Command::new("timeout")
        .args(["120", "nfs-cat", &format!("nfs://127.0.0.1/export/big.bin?version=4&nfsport={port}")])
        .output()
        .expect("nfs-cat");
    assert!(cat.status.success(), "{}", String::from_utf8_lossy(&cat.stderr));
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec();
    assert_eq!(cat.stdout.len(), data.len());
    assert_eq!(digest(&cat.stdout), digest(&data));
    server.wait_line(&["tunnel closed", "identity=r0"]);
}

#[test]
fn an_independent_rfc9289_client_gets_an_nfs_null_reply_from_ganesha_through_our_server() {
    if !(require("ganesha.nfsd") && require("python3")) {
        return;
    }
    let dir = TestPki::new();
    std::fs::create_dir(dir.root().join("export")).expect("mkdir");
    let (_ganesha, nfs) = ganesha(dir.root());
    let server = our_server(dir.root(), nfs);
    let addr = server.listen_addr();
    for alpn in [true, false] {
        let mut cmd = python_peer("rpc_tls_client.py");
        cmd.args([
            "127.0.0.1",
            &addr.port().to_string(),
            "--ca",
            &p(dir.root(), "ca-cert.pem"),
            "--cert",
            &p(dir.root(), "r0-cert.pem"),
            "--key",
            &p(dir.root(), "r0-key.pem"),
            "--server-name",
            "f3s-storage-ha",
        ]);
        if !alpn {
            cmd.arg("--no-alpn"); // as Linux's tlshd
        }
        let out = cmd.output().expect("python3");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && line.starts_with("OK nfs-null-accepted version=TLSv1.3"),
            "{line}\n{}",
            server.log()
        );
        assert_eq!(line.contains("alpn=sunrpc"), alpn, "{line}");
    }
    server.wait_line(&["tunnel closed", "identity=r0", "transport=\"rpc-tls\""]);
}

#[test]
fn libnfs_reads_from_ganesha_through_our_client_in_rpc_tls_mode_and_our_server() {
    if !(require("ganesha.nfsd") && require("nfs-cat") && require("nfs-ls")) {
        return;
    }
    let dir = TestPki::new();
    let export = dir.root().join("export");
    std::fs::create_dir(&export).expect("mkdir");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8).collect();
    std::fs::write(export.join("four.bin"), &data).expect("write");
    let (_ganesha, nfs) = ganesha(dir.root());
    let server = our_server(dir.root(), nfs);
    let client =
        our_client_with(dir.root(), &server.listen_addr().to_string(), &["--upstream-protocol", "rpc-tls"]);
    let port = client.listen_addr().port();
    let ls = Command::new("timeout")
        .args(["60", "nfs-ls", &format!("nfs://127.0.0.1/export/?version=4&nfsport={port}")])
        .output()
        .expect("nfs-ls");
    assert!(String::from_utf8_lossy(&ls.stdout).contains("four.bin"), "{}", client.log());
    let cat = Command::new("timeout")
        .args(["120", "nfs-cat", &format!("nfs://127.0.0.1/export/four.bin?version=4&nfsport={port}")])
        .output()
        .expect("nfs-cat");
    assert!(cat.status.success() && cat.stdout == data, "{}", String::from_utf8_lossy(&cat.stderr));
    server.wait_line(&["tunnel closed", "identity=r0", "transport=\"rpc-tls\""]);
    client.wait_line(&["tunnel closed", "identity=f3s-storage-ha", "transport=\"rpc-tls\""]);
}

/// The Python RPC-with-TLS server: started, its port read from its first line.
struct PyServer {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    port: u16,
}

impl PyServer {
    fn start(dir: &std::path::Path, answer: &str) -> Self {
        use std::io::BufRead;
        let mut child = python_peer("rpc_tls_server.py")
            .args(["--ca", &p(dir, "ca-cert.pem"), "--cert", &p(dir, "f3s-storage-ha-cert.pem")])
            .args(["--key", &p(dir, "f3s-storage-ha-key.pem"), "--answer", answer])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        let port =
            line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("listening PORT");
        Self { child, out, port }
    }

    /// The result line it prints when its one connection ends (it has its own timeouts).
    fn result(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).expect("result line");
        line.trim().to_owned()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rpc_tls_client(dir: &std::path::Path, port: u16) -> Proc {
    our_client_with(dir, &format!("127.0.0.1:{port}"), &["--upstream-protocol", "rpc-tls"])
}

#[test]
fn our_client_speaks_rfc9289_to_an_independent_rpc_tls_server() {
    if !require("python3") {
        return;
    }
    let dir = TestPki::new();
    let mut peer = PyServer::start(dir.root(), "starttls");
    let client = rpc_tls_client(dir.root(), peer.port);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(echo_through_blocking(client.listen_addr(), &data), data, "{}", client.log());
    let result = peer.result();
    assert!(result.starts_with("tls TLSv1.3 ") && result.ends_with(" sunrpc echoed=100000"), "{result}");
    client.wait_line(&["tunnel closed", "transport=\"rpc-tls\"", "bytes_up=100000"]);
}

#[test]
fn our_client_refuses_a_server_that_denies_or_ignores_the_probe_and_sends_it_nothing_more() {
    if !require("python3") {
        return;
    }
    let dir = TestPki::new();
    for answer in ["denied", "plain"] {
        let mut peer = PyServer::start(dir.root(), answer);
        let client = rpc_tls_client(dir.root(), peer.port);
        let back = echo_through_blocking(client.listen_addr(), b"plaintext NFS that must not leak");
        assert!(back.is_empty(), "{answer}: got {back:?}");
        client.wait_line(&["connection refused", "reason=\"no-starttls\""]);
        assert_eq!(peer.result(), "after-reply-bytes 0", "{answer}: the server got more than the probe");
    }
}
