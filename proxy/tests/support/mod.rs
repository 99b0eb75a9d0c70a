//! Process-level test helpers: the built binary, real peers (stunnel, ganesha, libnfs) as child
//! processes that are killed on drop, readiness by log line or by port, and the CI rule for peers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A peer program: in CI it must be installed (the test fails); locally its absence skips loudly.
pub(crate) fn require(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is required in CI but is not installed (see .ci/run)"
        );
        eprintln!("!!! SKIPPING: {program} is not installed (apt-get install stunnel4 nfs-ganesha nfs-ganesha-vfs libnfs-utils)");
    }
    found
}

/// Root, for tests that create network namespaces: required in CI, a loud skip elsewhere.
pub(crate) fn require_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(std::env::var_os("CI").is_none(), "this test needs root in CI (network namespaces)");
        eprintln!("!!! SKIPPING: this test needs root (it creates network namespaces)");
    }
    root && require("ip")
}

/// A child process whose stderr lines are collected; killed on drop.
pub(crate) struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> Self {
        Self::spawn_with_stdin(name, cmd.stdin(Stdio::null()))
    }

    /// [`Proc::spawn`], leaving stdin as `cmd` set it (e.g. piped, then taken with [`Proc::stdin`]).
    pub(crate) fn spawn_with_stdin(name: &str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Self { child, lines, name: name.to_owned() }
    }

    /// Our binary with `args`.
    pub(crate) fn proxy(args: &[&str]) -> Self {
        Self::spawn("nfs-tls-proxy", Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy")).args(args))
    }

    /// The child's stdin, if it was piped.
    pub(crate) fn stdin(&mut self) -> std::process::ChildStdin {
        self.child.stdin.take().expect("stdin was not piped")
    }

    pub(crate) fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits (bounded) for a line containing every part; returns it.
    pub(crate) fn wait_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) =
                self.lines.lock().expect("lines").iter().find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "{}: no line with {parts:?} in:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address our proxy bound (it logs `listening ... listen=ADDR`).
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        let line = self.wait_line(&["listening", "listen="]);
        let addr = line.split("listen=").nth(1).expect("listen=").split_whitespace().next().expect("addr");
        addr.parse().unwrap_or_else(|_| panic!("bad address in {line:?}"))
    }

    /// Waits for the process to exit by itself (bounded); returns its exit code.
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            assert!(Instant::now() < deadline, "{} did not exit:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Kills the process now and waits for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port, for peers that cannot bind port 0 and report it (stunnel, ganesha).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits (bounded) until something accepts connections on `addr`.
pub(crate) fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking echo server on loopback; counts connections.
pub(crate) struct Echo {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<Mutex<usize>>,
    /// Connections not yet closed by the peer.
    pub open: Arc<Mutex<usize>>,
}

impl Echo {
    pub(crate) fn open_now(&self) -> usize {
        *self.open.lock().expect("open")
    }

    /// Waits (bounded) until no connection is open; false if some still are after `limit`.
    pub(crate) fn all_closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.open_now() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

pub(crate) fn echo_server() -> Echo {
    echo_server_on(TcpListener::bind("127.0.0.1:0").expect("bind"))
}

/// An echo server on a listener made elsewhere (e.g. inside a network namespace).
pub(crate) fn echo_server_on(listener: TcpListener) -> Echo {
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(Mutex::new(0));
    let open = Arc::new(Mutex::new(0));
    let (count, live) = (connections.clone(), open.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            *count.lock().expect("count") += 1;
            *live.lock().expect("open") += 1;
            let live = live.clone();
            std::thread::spawn(move || {
                let mut r = stream.try_clone().expect("clone");
                let mut w = stream;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
                *live.lock().expect("open") -= 1;
            });
        }
    });
    Echo { addr, connections, open }
}

/// Sends `data`, half-closes, reads to EOF (bounded by socket timeouts).
pub(crate) fn echo_through(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut back = Vec::new();
    let _ = (&stream).read_to_end(&mut back);
    let _ = writer.join();
    back
}

/// A test CA directory made with the ca-tool library.
pub(crate) fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ca_tool::ca::CaDir::new(dir.path());
    ca.init("peer test CA", 30, false).expect("init");
    let req = |name: &str, kind| ca_tool::ca::LeafRequest {
        name: name.into(),
        kind,
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().expect("ip")],
        days: 30,
        combined: true,
        force: false,
    };
    ca.issue(&req("f3s-storage-ha", ca_tool::index::CertKind::Server)).expect("server");
    ca.issue(&req("r0", ca_tool::index::CertKind::Client)).expect("r0");
    dir
}

pub(crate) fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// Runs our binary with `args`, which must fail with exactly one error line containing `expect`.
pub(crate) fn fails_with(args: &[&str], expect: &str) {
    let mut proxy = Proc::proxy(args);
    let code = proxy.wait_exit();
    assert_ne!(code, Some(0), "{args:?} should fail");
    let log = proxy.log();
    let error_lines: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error_lines.len(), 1, "{args:?}: expected one error line in:\n{log}");
    assert!(error_lines[0].contains(expect), "{args:?}: {:?} lacks {expect:?}", error_lines[0]);
}

/// Server flags on loopback with the pki() material, then `extra`.
pub(crate) fn server_args<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = ["server", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:2049"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend([
        "--cert".to_string(),
        format!("{dir}/f3s-storage-ha-cert.pem"),
        "--key".to_string(),
        format!("{dir}/f3s-storage-ha-key.pem"),
        "--ca".to_string(),
        format!("{dir}/ca-cert.pem"),
    ]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Our client towards `server`, using stunnel's combined PEM (no --key).
pub(crate) fn our_client(dir: &std::path::Path, server: std::net::SocketAddr) -> Proc {
    our_client_with(dir, &server.to_string(), &[])
}

/// [`our_client`] towards `server` (HOST:PORT) with `extra` flags; returns it once it is listening.
pub(crate) fn our_client_with(dir: &std::path::Path, server: &str, extra: &[&str]) -> Proc {
    let (cert, ca) = (p(dir, "r0-stunnel.pem"), p(dir, "ca-cert.pem"));
    let mut args = vec!["client", "--listen", "127.0.0.1:0", "--server", server];
    args.extend(["--server-name", "f3s-storage-ha", "--cert", &cert, "--ca", &ca]);
    args.extend_from_slice(extra);
    let proxy = Proc::proxy(&args);
    proxy.listen_addr();
    proxy
}

/// nfs-ganesha serving `export/` on a free port, in the foreground.
pub(crate) fn ganesha(dir: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    let port = free_port();
    let export = dir.join("export");
    let conf = write(
        dir,
        "ganesha.conf",
        &format!(
            "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; Enable_NLM = false; \
             Enable_RQUOTA = false; Enable_UDP = false; }}\n\
             NFSV4 {{ Graceless = true; Only_Numeric_Owners = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash; \
             FSAL {{ Name = VFS; }} CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }} }}\n",
            export.display()
        ),
    );
    let proc = Proc::spawn(
        "ganesha",
        Command::new("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(dir.join("ganesha.log"))
            .arg("-p")
            .arg(dir.join("ganesha.pid")),
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_port(addr);
    (proc, addr)
}
