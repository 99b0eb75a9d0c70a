//! Process-level test helpers: the built binary as a child process (`Proc`, readiness by log line),
//! the arguments our tests start it with, and the CI rule for real peers.
//!
//! Why these tests live here and not in `tests/`: Cargo sets `CARGO_BIN_EXE_nfs-tls-proxy` only for
//! the tests of the package that builds the binary, and these tests run that binary as a process
//! next to real peers (stunnel, nfs-ganesha, libnfs, the Python RFC 9289 peers). In-process tests
//! through the library live in `tests/`. Everything else a test needs (the test PKI, the echo
//! backend, the ganesha command, the Python peers, `free_port`/`wait_port`) comes from the shared
//! test support, `tests/support` (`test_support`), re-exported below.

#![allow(dead_code, unused_imports)]

#[cfg(target_os = "linux")]
pub(crate) mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use test_support::{
    echo_through_blocking, free_port, python_peer, wait_port, EchoBackend, TestPki, CLIENT, SERVER,
};

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
        Self::spawn("nfs-tls-proxy", Command::new(proxy_bin()).args(args))
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

/// The binary under test: the one this build made, or `NFS_TLS_PROXY_BIN` (to take before/after
/// figures of an older build with the same tests; it may not know the newer flags).
pub(crate) fn proxy_bin() -> String {
    std::env::var("NFS_TLS_PROXY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_nfs-tls-proxy").to_owned())
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

/// Server flags on loopback with the [`TestPki`] material in `dir`, then `extra`.
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
pub(crate) fn our_client(dir: &Path, server: SocketAddr) -> Proc {
    our_client_with(dir, &server.to_string(), &[])
}

/// [`our_client`] towards `server` (HOST:PORT) with `extra` flags; returns it once it is listening.
pub(crate) fn our_client_with(dir: &Path, server: &str, extra: &[&str]) -> Proc {
    let (cert, ca) = (p(dir, "r0-stunnel.pem"), p(dir, "ca-cert.pem"));
    let mut args = vec!["client", "--listen", "127.0.0.1:0", "--server", server];
    args.extend(["--server-name", "f3s-storage-ha", "--cert", &cert, "--ca", &ca]);
    args.extend_from_slice(extra);
    let proxy = Proc::proxy(&args);
    proxy.listen_addr();
    proxy
}

/// nfs-ganesha serving `DIR/export/` (see [`test_support::ganesha_command`]), once it listens.
pub(crate) fn ganesha(dir: &Path) -> (Proc, SocketAddr) {
    let (mut cmd, addr) = test_support::ganesha_command(dir);
    let proc = Proc::spawn("ganesha", &mut cmd);
    wait_port(addr).unwrap_or_else(|e| panic!("ganesha: {e}\n{}", proc.log()));
    (proc, addr)
}
