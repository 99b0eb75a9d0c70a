//! The point of `ca-tool import`: a running stunnel (`verify = 2`, the blog's CA and its v1 server
//! certificate) keeps accepting clients that present the v3 certificates ca-tool now issues under
//! the same CA (the `--combined` file, as a host still on stunnel uses it), and honours the CRL
//! ca-tool signs with the imported RSA key. Real stunnel4 processes, ports from the OS, every wait
//! bounded; stunnel is required in CI and skipped loudly elsewhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{free_port, have_openssl, BlogPki};

const DEADLINE: Duration = Duration::from_secs(15);

fn stunnel() -> Option<PathBuf> {
    for name in ["stunnel4", "stunnel"] {
        if let Ok(out) = Command::new("sh").args(["-c", &format!("command -v {name}")]).output() {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !path.is_empty() {
                return Some(PathBuf::from(path));
            }
        }
    }
    assert!(std::env::var_os("CI").is_none(), "stunnel4 is required in CI but is not installed");
    eprintln!("!!! SKIPPING: stunnel4 is not installed (apt-get install -y stunnel4)");
    None
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).current_dir(dir).output().expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    text
}

/// An echo server on a port from the OS; its thread ends with the test process.
fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(DEADLINE));
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A stunnel process, killed (and reaped) when dropped.
struct Stunnel {
    child: Child,
    log: PathBuf,
}

impl Stunnel {
    fn start(bin: &Path, dir: &Path, name: &str, config: &str, port: u16) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, format!("foreground = yes\npid =\ndebug = info\n{config}")).expect("conf");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .arg(&conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).expect("log"))
            .spawn()
            .expect("start stunnel");
        let mut s = Self { child, log };
        s.wait_listening(port);
        s
    }

    /// Polls until stunnel accepts on `port`, or fails the test at the deadline.
    fn wait_listening(&mut self, port: u16) {
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stunnel exited early ({status}): {}", self.logs());
            }
            if TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stunnel did not listen on {port} within {DEADLINE:?}: {}", self.logs());
    }

    fn logs(&self) -> String {
        let err = self.log.with_extension("err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a message through `port` and returns what came back (empty when the tunnel was refused).
fn echo_through(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut conn =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), DEADLINE).expect("connect");
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.set_write_timeout(Some(DEADLINE)).expect("timeout");
    if conn.write_all(msg).is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn a_running_stunnel_with_the_imported_ca_accepts_the_new_v3_client_certificate_and_honours_the_crl() {
    let (Some(bin), true) = (stunnel(), have_openssl()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    // The blog's PKI: RSA CA by `openssl req -new -x509`, v1 leaves by `openssl x509 -req`.
    let blog = BlogPki::create(dir, &["f3s-storage-ha", "r0", "r1"]);
    // r1 still runs stunnel with its legacy certificate: cert and key in one file.
    let r1_legacy = [
        std::fs::read(dir.join("r1-cert.pem")).expect("c"),
        std::fs::read(dir.join("r1-key.pem")).expect("k"),
    ]
    .concat();
    std::fs::write(dir.join("r1-legacy.pem"), r1_legacy).expect("write");

    let ca_tool = env!("CARGO_BIN_EXE_ca-tool");
    run(
        dir,
        ca_tool,
        &[
            "import",
            "--cert",
            "ca-cert.pem",
            "--key",
            "ca-key.pem",
            "--dir",
            "ca",
            "--leaves",
            "r0-cert.pem",
            "r1-cert.pem",
            "--server-leaves",
            "f3s-storage-ha-cert.pem",
        ],
    );
    run(dir, ca_tool, &["issue", "r0", "--dir", "ca", "--combined"]);
    run(dir, ca_tool, &["revoke", "r1", "--dir", "ca", "--serial", &blog.serial("r1")]);

    // The storage side as it runs today: the blog's server certificate, verify = 2, plus the CRL
    // ca-tool now signs with the imported key.
    let backend = echo_backend();
    let server_port = free_port();
    let server = Stunnel::start(
        &bin,
        dir,
        "server",
        &format!(
            "[nfs]\naccept = 127.0.0.1:{server_port}\nconnect = {backend}\ncert = f3s-storage-ha-cert.pem\nkey = f3s-storage-ha-key.pem\n\
             CAfile = ca/ca-cert.pem\nverify = 2\nCRLfile = ca/crl.pem\n"
        ),
        server_port,
    );
    let client = |name: &str, cert: &str| {
        let port = free_port();
        let conf = format!(
            "client = yes\n[nfs]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{server_port}\ncert = {cert}\nCAfile = ca-cert.pem\nverify = 2\n"
        );
        (Stunnel::start(&bin, dir, name, &conf, port), port)
    };

    // r0 on stunnel with the new v3 certificate from `ca-tool issue r0 --combined`.
    let (r0, r0_port) = client("client-r0", "ca/r0-stunnel.pem");
    let msg = b"NFS over the adopted CA".to_vec();
    assert_eq!(echo_through(r0_port, &msg), msg, "r0 (v3) refused; server log: {}", server.logs());
    drop(r0);

    // r1's legacy certificate, revoked by serial: stunnel reads ca-tool's CRL and refuses it.
    let (r1, r1_port) = client("client-r1", "r1-legacy.pem");
    assert!(
        echo_through(r1_port, b"should not pass").is_empty(),
        "revoked r1 got through: {}",
        server.logs()
    );
    let deadline = Instant::now() + DEADLINE;
    while !server.logs().contains("certificate revoked") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.logs().contains("certificate revoked"), "server log: {}", server.logs());
    drop(r1);
}
