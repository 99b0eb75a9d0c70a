//! The staged migration of docs/migrating-from-stunnel.md, walked with real processes: the blog's
//! openssl PKI (v1 leaves) under stunnel in front of nfs-ganesha, `ca-tool import` and v3 re-issue,
//! then stunnel replaced host by host with nfs-tls-proxy in every pairing (stunnel client -> our
//! server, our client -> stunnel server, ours on both sides), the allow-list and CRL turned on, and a
//! revoked client refused on both storage nodes after the documented CRL copy. At every step libnfs
//! (`nfs-cat`) reads a file through each client's port, which never changes: a host's mounts do not
//! notice the switch.
//!
//! Hosts are directories of one scratch directory (`f0/`, `f1/`, `r0/`, `earth/`), each with its own
//! copies of its files; the CA lives in `f0/ca/` as on f0. The VIP is 127.0.0.1 (the server
//! certificate carries it as an IP SAN, as 192.168.1.138 in the docs); to have stunnel and our proxy
//! serve side by side, r0 reaches the storage through f0's port and earth through f1's.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use test_support::{have_openssl, BlogPki};

/// The file every read loop reads through NFS.
const FILE: &str = "data.bin";

/// One `ca-tool` command line, run through the ca-tool library exactly as the binary parses it.
fn ca_tool(args: &[&str]) -> String {
    let cli = <ca_tool::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("ca-tool").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("ca-tool {args:?}: {e}"));
    let mut out = Vec::new();
    ca_tool::cli::run(cli, &mut out).unwrap_or_else(|e| panic!("ca-tool {args:?}: {e:#}"));
    String::from_utf8_lossy(&out).into_owned()
}

fn nfs_tls_proxy(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy")).args(args).output().expect("run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `convert-stunnel` of a host's stunnel.conf into `HOST/NAME.toml`; returns that path and the warnings.
fn convert(host: &Path, name: &str) -> (PathBuf, String) {
    let (ok, toml, warnings) = nfs_tls_proxy(&["convert-stunnel", &p(host, "stunnel.conf")]);
    assert!(ok, "{warnings}");
    (write(host, name, &toml), warnings)
}

/// `check --config FILE` must pass; returns stdout and stderr (the warnings).
fn check_ok(config: &Path) -> String {
    let (ok, out, err) = nfs_tls_proxy(&["check", "--config", &config.display().to_string()]);
    assert!(ok, "check {}:\n{out}{err}", config.display());
    format!("{out}{err}")
}

/// `nfs-tls-proxy reload --pid-file HOST/server.pid`, as `service nfs_tls_proxy reload` runs it.
fn reload(host: &Path) -> String {
    let pid = p(host, "server.pid");
    let (ok, out, err) = nfs_tls_proxy(&["reload", "--pid-file", &pid, "--timeout", "20s"]);
    assert!(ok, "reload {pid}: {out}{err}");
    out
}

/// A stunnel process on `host`'s stunnel.conf (written from `config`), waited for on `port`.
fn stunnel(host: &Path, port: u16, config: &str) -> Proc {
    let conf = write(host, "stunnel.conf", &format!("foreground = yes\npid =\ndebug = 5\n{config}"));
    let proc = Proc::spawn("stunnel", Command::new("stunnel4").arg(conf));
    wait_port(loopback(port)).unwrap_or_else(|e| panic!("stunnel on {port}: {e}\n{}", proc.log()));
    proc
}

/// A storage node's stunnel server (verify = 2, requireCert), as on f0 and f1 in the blog.
fn stunnel_server(host: &Path, port: u16, nfs: std::net::SocketAddr, cert_lines: &str) -> Proc {
    let ca = p(host, "ca-cert.pem");
    let service = format!(
        "[nfs-tls]\naccept = 127.0.0.1:{port}\nconnect = {nfs}\nCAfile = {ca}\nverify = 2\nrequireCert = yes\n"
    );
    stunnel(host, port, &format!("{cert_lines}\n{service}"))
}

/// A client's stunnel (client = yes, verify = 2, no checkHost), as on r0 and earth in the blog.
fn stunnel_client(host: &Path, port: u16, server: u16, cert_lines: &str) -> Proc {
    let ca = p(host, "ca-cert.pem");
    let service = format!("[nfs-ha]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{server}\n");
    stunnel(host, port, &format!("{cert_lines}\nCAfile = {ca}\nclient = yes\nverify = 2\n\n{service}"))
}

/// Our proxy on a converted configuration, once it listens on `port` (the port stunnel had).
fn our_proxy(mode: &str, config: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut args = vec![mode, "--config", config.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    let proc = Proc::proxy(&args);
    assert_eq!(proc.listen_addr().port(), port, "{}", proc.log());
    proc
}

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Copies `from` to `to` through `to.new` and a rename, as the docs' `scp` + `mv` do.
fn install(from: &Path, to: &Path) {
    let new = to.with_extension("new");
    std::fs::copy(from, &new).unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), new.display()));
    std::fs::rename(&new, to).expect("rename");
}

/// One `nfs-cat` of the test file through a client's port, bounded by `timeout`.
fn nfs_read(port: u16, want: &[u8], limit_secs: u32) -> Result<(), String> {
    let url = format!("nfs://127.0.0.1/export/{FILE}?version=4&nfsport={port}");
    let out = Command::new("timeout")
        .args([&limit_secs.to_string(), "nfs-cat", &url])
        .output()
        .map_err(|e| format!("nfs-cat: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nfs-cat via :{port}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout != want {
        return Err(format!(
            "nfs-cat via :{port}: {} bytes that are not the file's {}",
            out.stdout.len(),
            want.len()
        ));
    }
    Ok(())
}

/// `nfs-cat` of the test file through one client's port, over and over, in the background: the
/// mount that must never notice the migration.
struct ReadLoop {
    who: &'static str,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadLoop {
    fn start(who: &'static str, port: u16, want: Arc<Vec<u8>>) -> Self {
        let (stop, reads, failures) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let thread = std::thread::spawn({
            let (stop, reads, failures): (_, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) =
                (stop.clone(), Arc::clone(&reads), Arc::clone(&failures));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match nfs_read(port, &want, 60) {
                        Ok(()) => reads.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().expect("failures").push(e);
                            return;
                        }
                    };
                }
            }
        });
        Self { who, stop, reads, failures, thread: Some(thread) }
    }

    /// Waits (bounded) for `n` more good reads; fails on any failed read.
    fn more(&self, n: usize, step: &str) {
        let (start, deadline) =
            (self.reads.load(Ordering::Relaxed), Instant::now() + Duration::from_secs(120));
        loop {
            let failures = self.failures.lock().expect("failures").clone();
            assert!(failures.is_empty(), "{step}: {}'s NFS read failed: {failures:?}", self.who);
            if self.reads.load(Ordering::Relaxed) >= start + n {
                return;
            }
            assert!(Instant::now() < deadline, "{step}: {} did not read {n} times within 120 s", self.who);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `n` more good reads, then the loop ends (before the proxy or stunnel under it is replaced).
    fn finish(mut self, n: usize, step: &str) {
        self.more(n, step);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("read loop");
        }
        let failures = self.failures.lock().expect("failures").clone();
        assert!(failures.is_empty(), "{step}: {}'s NFS read failed: {failures:?}", self.who);
    }
}

impl Drop for ReadLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Both clients read through their unchanged ports during `step`.
fn both_read(step: &str, ports: (u16, u16), data: &Arc<Vec<u8>>, started: Instant) {
    let r0 = ReadLoop::start("r0", ports.0, data.clone());
    let earth = ReadLoop::start("earth", ports.1, data.clone());
    r0.finish(2, step);
    earth.finish(2, step);
    eprintln!("migration: {step}: both clients read ({:.1} s)", started.elapsed().as_secs_f64());
}

#[test]
fn the_blogs_stunnel_pki_migrates_host_by_host_and_a_revoked_client_is_refused_on_both_storage_nodes() {
    if !(have_openssl() && require("stunnel4") && require("ganesha.nfsd") && require("nfs-cat")) {
        return;
    }
    let t0 = Instant::now();
    let site = tempfile::tempdir().expect("dir");
    let s = site.path();
    let host = |name: &str| {
        let d = s.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    };
    let (blog, f0, f1, r0, earth) = (s.join("blog"), host("f0"), host("f1"), host("r0"), host("earth"));
    let ca_dir = f0.join("ca");
    let ca = ca_dir.display().to_string();

    // NFS: ganesha exporting the file the clients read.
    std::fs::create_dir(s.join("export")).expect("mkdir");
    let data = Arc::new(test_support::random_bytes(1 << 20, 16));
    std::fs::write(s.join("export").join(FILE), data.as_slice()).expect("write");
    let (_ganesha, nfs) = ganesha(s);
    let (s0, s1, c_r0, c_earth) = (free_port(), free_port(), free_port(), free_port());
    let ports = (c_r0, c_earth);

    // Stage 0, the blog: its openssl PKI, stunnel everywhere, v1 certificates.
    BlogPki::create(&blog, &["f3s-storage-ha", "r0", "earth"]);
    let from_blog = |to: &Path, files: &[&str]| {
        for f in files {
            std::fs::copy(blog.join(f), to.join(f)).expect("copy");
        }
    };
    from_blog(&f0, &["ca-cert.pem", "f3s-storage-ha-cert.pem", "f3s-storage-ha-key.pem"]);
    from_blog(&f1, &["ca-cert.pem", "f3s-storage-ha-cert.pem", "f3s-storage-ha-key.pem"]);
    from_blog(&r0, &["ca-cert.pem", "r0-cert.pem", "r0-key.pem"]);
    from_blog(&earth, &["ca-cert.pem", "earth-cert.pem", "earth-key.pem"]);
    let blog_cert = |host: &Path, name: &str| {
        format!(
            "cert = {}\nkey = {}",
            p(host, &format!("{name}-cert.pem")),
            p(host, &format!("{name}-key.pem"))
        )
    };
    let new_cert = |host: &Path, name: &str| format!("cert = {}", p(host, &format!("{name}-stunnel.pem")));
    let mut f0_stunnel = stunnel_server(&f0, s0, nfs, &blog_cert(&f0, "f3s-storage-ha"));
    let mut f1_stunnel = stunnel_server(&f1, s1, nfs, &blog_cert(&f1, "f3s-storage-ha"));
    let mut r0_stunnel = stunnel_client(&r0, c_r0, s0, &blog_cert(&r0, "r0"));
    let mut earth_stunnel = stunnel_client(&earth, c_earth, s1, &blog_cert(&earth, "earth"));
    both_read("stage 0 (the blog: stunnel, v1 certificates)", ports, &data, t0);
    for server in [&f0_stunnel, &f1_stunnel] {
        server.wait_line(&["Service [nfs-tls] accepted connection"]);
    }

    // Stage 1: import the CA on f0, re-issue v3 (--combined for stunnel), roll out under stunnel.
    let leaves = [p(&blog, "r0-cert.pem"), p(&blog, "earth-cert.pem")];
    let out = ca_tool(&[
        "import",
        "--cert",
        &p(&blog, "ca-cert.pem"),
        "--key",
        &p(&blog, "ca-key.pem"),
        "--dir",
        &ca,
        "--leaves",
        &leaves[0],
        &leaves[1],
        "--server-leaves",
        &p(&blog, "f3s-storage-ha-cert.pem"),
    ]);
    assert!(out.contains("legacy certificate r0") && out.contains("legacy certificate earth"), "{out}");
    let issue = ["issue", "f3s-storage-ha", "--server", "--dns", "f0", "--dns", "f1", "--ip", "127.0.0.1"];
    ca_tool(&[&issue[..], &["--combined", "--dir", &ca]].concat());
    for name in ["r0", "earth"] {
        ca_tool(&["issue", name, "--combined", "--dir", &ca]);
    }
    let list = ca_tool(&["list", "--dir", &ca]);
    assert_eq!(list.lines().filter(|l| l.contains("superseded")).count(), 3, "{list}");
    let from_ca = |to: &Path, file: &str| install(&ca_dir.join(file), &to.join(file));
    for (node, stunnel, port) in [(&f0, &mut f0_stunnel, s0), (&f1, &mut f1_stunnel, s1)] {
        from_ca(node, "f3s-storage-ha-stunnel.pem");
        stunnel.kill();
        *stunnel = stunnel_server(node, port, nfs, &new_cert(node, "f3s-storage-ha"));
    }
    both_read("stage 1a (stunnel servers on the new v3 certificate, clients still v1)", ports, &data, t0);
    for (client, name, stunnel, server) in
        [(&r0, "r0", &mut r0_stunnel, s0), (&earth, "earth", &mut earth_stunnel, s1)]
    {
        from_ca(client, &format!("{name}-stunnel.pem"));
        let port = if name == "r0" { c_r0 } else { c_earth };
        stunnel.kill();
        *stunnel = stunnel_client(client, port, server, &new_cert(client, name));
    }
    both_read("stage 1b (stunnel everywhere on v3 certificates)", ports, &data, t0);

    // Stage 2a: f0 replaces stunnel with our server (stunnel client r0 -> our server).
    let (f0_toml, warnings) = convert(&f0, "server.toml");
    assert!(warnings.contains("any certificate the CA ever signed"), "{warnings}");
    let report = check_ok(&f0_toml);
    assert!(report.contains("chains to the CA as a server certificate"), "{report}");
    f0_stunnel.kill();
    let f0_pid = p(&f0, "server.pid");
    let f0_ours = our_proxy("server", &f0_toml, s0, &["--pid-file", &f0_pid]);
    both_read("stage 2a (stunnel client r0 -> our server f0; earth all stunnel)", ports, &data, t0);
    f0_ours.wait_line(&["tunnel closed", "identity=r0"]);

    // Stage 2b: earth replaces stunnel with our client (our client -> stunnel server f1). The
    // converted file checks the server's name, the connect host: the re-issued certificate carries it.
    let (earth_toml, warnings) = convert(&earth, "client.toml");
    assert!(warnings.contains("checks the server's name") && warnings.contains("IP:127.0.0.1"), "{warnings}");
    assert!(warnings.contains("`ca-tool issue SERVER --server --ip 127.0.0.1 --combined`"), "{warnings}");
    let report = check_ok(&earth_toml);
    assert!(report.contains("is f3s-storage-ha; carries 127.0.0.1"), "{report}");
    earth_stunnel.kill();
    let earth_ours = our_proxy("client", &earth_toml, c_earth, &[]);
    both_read("stage 2b (our client earth -> stunnel server f1)", ports, &data, t0);
    earth_ours.wait_line(&["tunnel closed", "identity=f3s-storage-ha"]);

    // Stage 2c: r0 and f1 too: ours on both sides everywhere.
    let (r0_toml, _) = convert(&r0, "client.toml");
    let report = check_ok(&r0_toml);
    assert!(report.contains("is f3s-storage-ha; carries 127.0.0.1"), "{report}");
    r0_stunnel.kill();
    let r0_ours = our_proxy("client", &r0_toml, c_r0, &[]);
    let (f1_toml, _) = convert(&f1, "server.toml");
    check_ok(&f1_toml);
    f1_stunnel.kill();
    let f1_pid = p(&f1, "server.pid");
    let f1_ours = our_proxy("server", &f1_toml, s1, &["--pid-file", &f1_pid]);
    both_read("stage 2c (our client -> our server, both clients, both nodes)", ports, &data, t0);
    r0_ours.wait_line(&["tunnel closed", "identity=f3s-storage-ha"]);
    f1_ours.wait_line(&["tunnel closed", "identity=earth"]);

    // Stage 3: allow-list and CRL on f0 and f1, each with its own copy of the CRL, by reload.
    let r0_reads = ReadLoop::start("r0", c_r0, data.clone());
    let earth_reads = ReadLoop::start("earth", c_earth, data.clone());
    for node in [&f0, &f1] {
        from_ca(node, "crl.pem");
        let toml = node.join("server.toml");
        let mut text = std::fs::read_to_string(&toml).expect("read");
        text.push_str(&format!("crl = \"{}\"\nallow-cn = [\"r0\", \"earth\"]\n", p(node, "crl.pem")));
        std::fs::write(&toml, text).expect("write");
        let report = check_ok(&toml);
        assert!(!report.contains("no allow-cn") && !report.contains("no --crl"), "{report}");
        let outcome = reload(node);
        assert!(outcome.contains("allow-cn added"), "{outcome}");
    }
    r0_reads.more(2, "stage 3 (allow-list and CRL on)");
    earth_reads.finish(2, "stage 3 (allow-list and CRL on)");
    eprintln!(
        "migration: stage 3 (allow-list and CRL on both nodes): both clients read ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    // Revoke earth on f0's CA. Until the CRL is copied, f0's check says its copy is behind the
    // CA's index; f1 has no CA directory, so nothing is compared there.
    ca_tool(&["revoke", "earth", "--dir", &ca]);
    let (_, out, err) = nfs_tls_proxy(&["check", "--config", &p(&f0, "server.toml")]);
    assert!(
        err.contains("crl.pem: CRL number") && err.contains("but the CA") && err.contains("signed number"),
        "{out}{err}"
    );
    let (_, out, err) = nfs_tls_proxy(&["check", "--config", &p(&f1, "server.toml")]);
    assert!(!err.contains("signed number"), "{out}{err}");
    // The docs' copy: crl.pem to both storage hosts (through .new and mv), then reload each.
    for node in [&f0, &f1] {
        from_ca(node, "crl.pem");
        let outcome = reload(node);
        assert!(outcome.contains("CRL now"), "{outcome}");
    }
    let report = check_ok(&f0.join("server.toml"));
    assert!(!report.contains("signed number"), "{report}");

    // earth is refused by f1, its server now ...
    let refused = nfs_read(c_earth, &data, 15);
    assert!(refused.is_err(), "earth still reads through f1");
    f1_ours.wait_line(&["connection refused", "reason=\"revoked\"", "identity=earth"]);
    // ... and by f0 after a failover (earth's client pointed at f0).
    let earth_to_f0 = Proc::proxy(&[
        "client",
        "--config",
        earth_toml.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--server",
        &format!("127.0.0.1:{s0}"),
    ]);
    let refused = nfs_read(earth_to_f0.listen_addr().port(), &data, 15);
    assert!(refused.is_err(), "earth still reads through f0");
    f0_ours.wait_line(&["connection refused", "reason=\"revoked\"", "identity=earth"]);
    // r0 kept reading through all of it, and f1 admits it too.
    r0_reads.finish(2, "after revoking earth");
    let r0_to_f1 = Proc::proxy(&[
        "client",
        "--config",
        r0_toml.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
        "--server",
        &format!("127.0.0.1:{s1}"),
    ]);
    nfs_read(r0_to_f1.listen_addr().port(), &data, 60).expect("r0 reads through f1");
    eprintln!(
        "migration: earth revoked, refused on f0 and f1, r0 reads on ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn the_blogs_v1_certificate_fails_our_server_at_start_with_the_ca_tool_fix_in_one_line() {
    if !have_openssl() {
        return;
    }
    let site = tempfile::tempdir().expect("dir");
    let blog = site.path();
    BlogPki::create(blog, &["f3s-storage-ha"]);
    let cert = p(blog, "f3s-storage-ha-cert.pem");
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:2049",
        "--cert",
        &cert,
        "--key",
        &p(blog, "f3s-storage-ha-key.pem"),
        "--ca",
        &p(blog, "ca-cert.pem"),
    ];
    fails_with(
        &args,
        &format!(
            "{cert}: X.509 v1 certificate (made by `openssl x509 -req` without extensions): \
             re-issue it with `ca-tool issue f3s-storage-ha` after `ca-tool import`"
        ),
    );
}
