//! The client's side of the promise, as processes in network namespaces (issue 20): `--redirect`
//! catches connections the NFS client makes straight to the storage address's port 2049 and sends
//! them through the tunnel (never to the plaintext port), lives exactly as long as the client, and
//! is put back when something removes it; `check` on a storage host warns when the NFS port answers
//! around the tunnel. Each test builds its own namespaces with TEST-NET-1 addresses (192.0.2.0/24)
//! and needs root and `nft` (Debian's nftables): required in CI, a loud skip elsewhere.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{p, require, require_root, EchoBackend, Proc, TestPki};

/// A network namespace of this test's own, deleted on drop (its nftables tables go with it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("ntp-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// `nft ARGS` inside the namespace: whether it succeeded, and its output.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft"]).args(args);
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("nft");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.unwrap_or("").as_bytes()).expect("write");
        drop(input);
        let out = child.wait_with_output().expect("nft");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_nfs-tls-proxy")]).args(args);
        cmd
    }

    fn proxy(&self, name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, &mut self.command(args))
    }

    fn echo_on(&self, addr: &str) -> EchoBackend {
        let addr: SocketAddr = addr.parse().expect("addr");
        EchoBackend::on_listener(self.enter(|| TcpListener::bind(addr).expect("bind")))
    }

    fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().expect("addr");
        self.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
    }

    /// A plain HTTP GET inside the namespace; the body.
    fn get(&self, addr: &str, path: &str) -> String {
        let mut s = self.connect(addr).expect("connect to the ops endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("run");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn need_root_and_nft() -> bool {
    require_root() && require("nft")
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const VIP: &str = "192.0.2.138";
/// Where the storage host's proxy listens, and the plaintext NFS port the redirect must keep clients from.
const VIP_TLS: &str = "192.0.2.138:2323";
const VIP_NFS: &str = "192.0.2.138:2049";
const CLIENT_LISTEN: &str = "127.0.0.1:2323";
/// The table a client listening on [`CLIENT_LISTEN`] owns.
const TABLE: &str = "nfs_tls_proxy_127_0_0_1_2323";

/// A storage namespace (the VIP, our server proxy in front of an echo backend on loopback, and a
/// plaintext "nfsd" on the VIP's port 2049 that nothing should reach) and a client namespace joined
/// to it by a veth pair.
struct Site {
    storage: Netns,
    client: Netns,
    backend: EchoBackend,
    plaintext_nfsd: EchoBackend,
    _server: Proc,
    pki: TestPki,
}

impl Site {
    fn new() -> Self {
        let storage = Netns::new("stor");
        let client = Netns::new("cli");
        // Made straight inside the two namespaces, so the names cannot clash with other tests'.
        let (a, b) = ("storage0", "client0");
        run(
            "ip",
            &[
                "link",
                "add",
                a,
                "netns",
                &storage.name,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                &client.name,
            ],
        );
        storage.ip(&["addr", "add", "192.0.2.1/24", "dev", a]);
        storage.ip(&["addr", "add", &format!("{VIP}/32"), "dev", a]);
        storage.ip(&["link", "set", a, "up"]);
        client.ip(&["addr", "add", "192.0.2.2/24", "dev", b]);
        client.ip(&["link", "set", b, "up"]);
        let pki = TestPki::new();
        let backend = storage.echo_on("127.0.0.1:0");
        let plaintext_nfsd = storage.echo_on(VIP_NFS);
        let dir = pki.root();
        let server = storage.proxy(
            "server",
            &[
                "server",
                "--listen",
                VIP_TLS,
                "--backend",
                &backend.addr.to_string(),
                "--cert",
                &p(dir, "f3s-storage-ha-stunnel.pem"),
                "--ca",
                &p(dir, "ca-cert.pem"),
            ],
        );
        server.wait_line(&["listening", VIP_TLS]);
        Self { storage, client, backend, plaintext_nfsd, _server: server, pki }
    }

    /// The client proxy in the client namespace with `--redirect VIP` and `extra` flags.
    fn client_args(&self, extra: &[&str]) -> Vec<String> {
        let dir = self.pki.root();
        let mut args: Vec<String> = [
            "client",
            "--listen",
            CLIENT_LISTEN,
            "--server",
            VIP_TLS,
            "--server-name",
            "localhost",
            "--cert",
            &p(dir, "r0-stunnel.pem"),
            "--ca",
            &p(dir, "ca-cert.pem"),
            "--redirect",
            VIP,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start_client(&self, extra: &[&str]) -> Proc {
        let args = self.client_args(extra);
        let client = self.client.proxy("client", &args.iter().map(String::as_str).collect::<Vec<_>>());
        client.wait_line(&["redirect in place", "192.0.2.138:2049"]);
        client
    }

    /// A round trip to the storage address's NFS port from the client namespace.
    fn echo_via_nfs_port(&self, data: &[u8]) -> Vec<u8> {
        let mut s = self.client.connect(VIP_NFS).expect("connect to the storage address's port 2049");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(data).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        back
    }

    fn table_present(&self) -> bool {
        self.client.nft(&["list", "table", "inet", TABLE], None).0
    }
}

#[test]
fn a_connection_to_the_storage_nfs_port_goes_through_the_tunnel_and_the_redirect_lives_as_long_as_the_client()
{
    if !need_root_and_nft() {
        return;
    }
    let site = Site::new();
    let mut client = site.start_client(&["--metrics", "127.0.0.1:9469", "--redirect-check-every", "200ms"]);
    assert!(site.table_present());

    // A connection straight to VIP:2049, as Fedora's NFS client makes it, arrives via the tunnel.
    let mut open = site.client.connect(VIP_NFS).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    open.write_all(b"first").expect("write");
    let mut back = [0u8; 5];
    open.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"first");
    let opened = client.wait_line(&["tunnel opened", "original_dst=192.0.2.138:2049"]);
    assert!(opened.contains("upstream=192.0.2.138:2323"), "{opened}");
    let tunnels = site.client.get("127.0.0.1:9469", "/tunnels");
    assert!(tunnels.contains(r#""original_dst":"192.0.2.138:2049""#), "{tunnels}");
    drop(open);
    assert_eq!(site.echo_via_nfs_port(b"second"), b"second");
    assert_eq!(site.backend.connections(), 2, "both through the server proxy");
    assert_eq!(site.plaintext_nfsd.connections(), 0, "nothing reached the plaintext port");
    let metrics = site.client.get("127.0.0.1:9469", "/metrics");
    assert!(metrics.contains(r#"redirected_tunnels_total{original_dst="192.0.2.138:2049"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"redirect_in_place{redirect="192.0.2.138:2049"} 1"#), "{metrics}");

    // A firewall reload that drops our table: it is back within the check period.
    assert!(site.client.nft(&["delete", "table", "inet", TABLE], None).0);
    assert!(eventually(Duration::from_secs(5), || site.table_present()), "{}", client.log());
    client.wait_line(&["redirect rule was missing", "put it back"]);
    assert_eq!(site.echo_via_nfs_port(b"third"), b"third");
    assert_eq!(site.plaintext_nfsd.connections(), 0);
    let metrics = site.client.get("127.0.0.1:9469", "/metrics");
    assert!(metrics.contains("nfs_tls_proxy_redirect_restored_total 1"), "{metrics}");

    // SIGTERM: the table goes with the client.
    client.signal("TERM");
    assert_eq!(client.wait_exit(), Some(0), "{}", client.log());
    assert!(!site.table_present(), "{}", site.client.nft(&["list", "ruleset"], None).1);
    assert!(client.log().contains("redirect removed"), "{}", client.log());
}

#[test]
fn a_stale_table_left_by_a_killed_client_is_replaced_at_start() {
    if !need_root_and_nft() {
        return;
    }
    let site = Site::new();
    // What a client killed with SIGKILL leaves behind, pointing at a port nobody serves.
    let stale = format!(
        "table inet {TABLE} {{\n chain output {{\n type nat hook output priority -100; policy accept;\n \
         ip daddr {VIP} tcp dport 2049 dnat ip to 127.0.0.1:9\n }}\n}}\n"
    );
    let (ok, out) = site.client.nft(&["-f", "-"], Some(&stale));
    assert!(ok, "{out}");
    let _client = site.start_client(&[]);
    let (_, listed) = site.client.nft(&["list", "table", "inet", TABLE], None);
    assert!(!listed.contains("127.0.0.1:9 "), "{listed}");
    assert_eq!(listed.matches("dnat ip to").count(), 1, "{listed}");
    assert_eq!(site.echo_via_nfs_port(b"after a crash"), b"after a crash");
    assert_eq!(site.plaintext_nfsd.connections(), 0);
}

#[test]
fn a_redirect_that_cannot_be_installed_keeps_the_client_from_starting_with_one_line() {
    if !need_root_and_nft() {
        return;
    }
    let site = Site::new();
    let args = site.client_args(&[]);
    // No nft on the PATH.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &site.client.name, "/usr/bin/env", "PATH=/nonexistent"]);
    cmd.arg(env!("CARGO_BIN_EXE_nfs-tls-proxy")).args(&args);
    let mut client = Proc::spawn("client", &mut cmd);
    assert_ne!(client.wait_exit(), Some(0));
    let log = client.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("nft program was not found (install the nftables package)"), "{log}");
    assert!(!site.table_present());
}

#[test]
fn check_on_a_storage_host_warns_when_the_nfs_port_also_answers_outside_loopback() {
    if !need_root_and_nft() {
        return;
    }
    let site = Site::new();
    let dir = site.pki.root();
    let config = |backend: SocketAddr| {
        let text = format!(
            "listen = [\"{VIP_TLS}\"]\nbackend = \"127.0.0.1:{}\"\ncert = \"{}\"\nca = \"{}\"\ncrl = \"{}\"\nallow-cn = [\"r0\"]\n",
            backend.port(),
            p(dir, "f3s-storage-ha-stunnel.pem"),
            p(dir, "ca-cert.pem"),
            p(dir, "crl.pem"),
        );
        support::write(dir, &format!("server-{}.toml", backend.port()), &text)
    };
    // nfsd on every address: plaintext NFS reachable around the tunnel.
    let everywhere = site.storage.echo_on("0.0.0.0:0");
    let out =
        site.storage.command(&["check", "--config", &config(everywhere.addr).display().to_string()]).output();
    let stderr = String::from_utf8_lossy(&out.expect("check").stderr).into_owned();
    let warning = format!(
        "backend port {} also answers on 192.0.2.1:{}",
        everywhere.addr.port(),
        everywhere.addr.port()
    );
    assert!(stderr.contains(&warning), "{stderr}");
    // nfsd on loopback only, as the migration guide says: no such warning.
    let out = site
        .storage
        .command(&["check", "--config", &config(site.backend.addr).display().to_string()])
        .output();
    let stderr = String::from_utf8_lossy(&out.expect("check").stderr).into_owned();
    assert!(!stderr.contains("also answers on"), "{stderr}");
}
