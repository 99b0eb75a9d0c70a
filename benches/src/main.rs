//! Side-by-side benchmark on loopback: `direct` (no tunnel), `stunnel` (stunnel client + server,
//! mutual TLS 1.3) and `nfs-tls-proxy` (our client + server), same ECDSA P-256 certificates from
//! ca-tool, measured in interleaved repetitions in one run.
//!
//!   cargo build --release -p nfs-tls-proxy && cargo run --release -p nfs-tls-proxy-benches [-- --quick]
//!
//! Figures: bulk echo throughput on one stream (MiB/s each way), 200-byte request/response latency
//! (p50, p99) and new connections per second (handshake + one request/response). Results are printed
//! as a table and written to target/bench-results.json.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

struct Settings {
    reps: usize,
    bulk_bytes: usize,
    latency_rounds: usize,
    conn_window: Duration,
}

#[derive(Default, Clone)]
struct Figures {
    bulk_mib_s: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    conns_per_s: Vec<f64>,
}

/// Kills the child on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            reps: 1,
            bulk_bytes: 16 << 20,
            latency_rounds: 300,
            conn_window: Duration::from_millis(500),
        }
    } else {
        Settings { reps: 3, bulk_bytes: 128 << 20, latency_rounds: 5000, conn_window: Duration::from_secs(3) }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let proxy_bin = std::env::var_os("NFS_TLS_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/nfs-tls-proxy"));
    if !proxy_bin.exists() {
        bail!("{}: not built; run `cargo build --release -p nfs-tls-proxy` first", proxy_bin.display());
    }
    let dir = tempfile::tempdir()?;
    let pki = dir.path();
    let ca = ca_tool::ca::CaDir::new(pki);
    ca.init("bench CA", 30, false)?;
    for (name, kind) in
        [("server", ca_tool::index::CertKind::Server), ("client", ca_tool::index::CertKind::Client)]
    {
        ca.issue(&ca_tool::ca::LeafRequest {
            name: name.into(),
            kind,
            dns: vec![],
            ips: vec!["127.0.0.1".parse()?],
            days: 30,
            combined: true,
            force: false,
        })?;
    }
    let echo = echo_server()?;
    let (_stunnel, stunnel_addr) = stunnel_pair(pki, echo)?;
    let (_ours, ours_addr) = our_pair(&proxy_bin, pki, echo)?;
    let paths = [("direct", echo), ("stunnel", stunnel_addr), ("nfs-tls-proxy", ours_addr)];
    let mut results: Vec<Figures> = vec![Figures::default(); paths.len()];
    for rep in 0..s.reps {
        for (i, (name, addr)) in paths.iter().enumerate() {
            let f = &mut results[i];
            f.bulk_mib_s.push(bulk(*addr, s.bulk_bytes).with_context(|| format!("{name}: bulk"))?);
            let (p50, p99) = latency(*addr, s.latency_rounds).with_context(|| format!("{name}: latency"))?;
            f.p50_us.push(p50);
            f.p99_us.push(p99);
            f.conns_per_s
                .push(conn_rate(*addr, s.conn_window).with_context(|| format!("{name}: connections"))?);
            eprintln!("rep {rep}: {name} done");
        }
    }
    report(&paths.iter().map(|p| p.0).collect::<Vec<_>>(), &results, &root)
}

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.0}-{max:.0}")
}

fn report(names: &[&str], r: &[Figures], root: &Path) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("{cpu}, {cores} cores; medians (min-max)\n");
    println!("| path | bulk echo MiB/s each way | added p50 us | added p99 us | p50 us | p99 us | conn/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut json = String::from("{\n");
    for (i, name) in names.iter().enumerate() {
        let f = &r[i];
        println!(
            "| {name} | {:.0} ({}) | {:.0} | {:.0} | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) |",
            med(&f.bulk_mib_s),
            range(&f.bulk_mib_s),
            med(&f.p50_us) - med(&r[0].p50_us),
            med(&f.p99_us) - med(&r[0].p99_us),
            med(&f.p50_us),
            range(&f.p50_us),
            med(&f.p99_us),
            range(&f.p99_us),
            med(&f.conns_per_s),
            range(&f.conns_per_s)
        );
        json.push_str(&format!(
            "  \"{name}\": {{\"bulk_mib_s\": {:.1}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"conns_per_s\": {:.1}}}{}\n",
            med(&f.bulk_mib_s),
            med(&f.p50_us),
            med(&f.p99_us),
            med(&f.conns_per_s),
            if i + 1 < names.len() { "," } else { "" }
        ));
    }
    json.push_str("}\n");
    let (s, o) = (&r[1], &r[2]);
    println!(
        "\nnfs-tls-proxy vs stunnel: bulk x{:.2}, added p50 x{:.2}, added p99 x{:.2}, conn/s x{:.2}",
        med(&o.bulk_mib_s) / med(&s.bulk_mib_s),
        (med(&o.p50_us) - med(&r[0].p50_us)) / (med(&s.p50_us) - med(&r[0].p50_us)),
        (med(&o.p99_us) - med(&r[0].p99_us)) / (med(&s.p99_us) - med(&r[0].p99_us)),
        med(&o.conns_per_s) / med(&s.conns_per_s),
    );
    let out = root.join("target/bench-results.json");
    std::fs::write(&out, json).with_context(|| out.display().to_string())?;
    println!("written: {}", out.display());
    Ok(())
}

fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = (stream.try_clone().expect("clone"), stream);
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(addr)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Guard> {
    Ok(Guard(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
}

fn stunnel_pair(pki: &Path, backend: SocketAddr) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port()?, free_port()?);
    let p = |n: &str| pki.join(n).display().to_string();
    let server = format!(
        "foreground = yes\npid =\n[s]\naccept = 127.0.0.1:{sp}\nconnect = {backend}\ncert = {}\nCAfile = {}\n\
         verify = 2\nrequireCert = yes\nsslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
        p("server-stunnel.pem"),
        p("ca-cert.pem")
    );
    let client = format!(
        "foreground = yes\npid =\n[c]\nclient = yes\naccept = 127.0.0.1:{cp}\nconnect = 127.0.0.1:{sp}\ncert = {}\n\
         CAfile = {}\nverifyChain = yes\nsslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
        p("client-stunnel.pem"),
        p("ca-cert.pem")
    );
    std::fs::write(pki.join("s.conf"), server)?;
    std::fs::write(pki.join("c.conf"), client)?;
    let guards = vec![
        spawn(Command::new("stunnel4").arg(pki.join("s.conf")))
            .context("stunnel4 (apt-get install stunnel4)")?,
        spawn(Command::new("stunnel4").arg(pki.join("c.conf")))?,
    ];
    let addr: SocketAddr = format!("127.0.0.1:{cp}").parse()?;
    wait_port(format!("127.0.0.1:{sp}").parse()?)?;
    wait_port(addr)?;
    Ok((guards, addr))
}

fn our_pair(bin: &Path, pki: &Path, backend: SocketAddr) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port()?, free_port()?);
    let p = |n: &str| pki.join(n).display().to_string();
    let server = spawn(Command::new(bin).args([
        "server",
        "--listen",
        &format!("127.0.0.1:{sp}"),
        "--backend",
        &backend.to_string(),
        "--cert",
        &p("server-stunnel.pem"),
        "--ca",
        &p("ca-cert.pem"),
        "--log-level",
        "warn",
    ]))?;
    let client = spawn(Command::new(bin).args([
        "client",
        "--listen",
        &format!("127.0.0.1:{cp}"),
        "--server",
        &format!("127.0.0.1:{sp}"),
        "--cert",
        &p("client-stunnel.pem"),
        "--ca",
        &p("ca-cert.pem"),
        "--log-level",
        "warn",
    ]))?;
    let addr: SocketAddr = format!("127.0.0.1:{cp}").parse()?;
    wait_port(format!("127.0.0.1:{sp}").parse()?)?;
    wait_port(addr)?;
    Ok((vec![server, client], addr))
}

/// Sends `bytes` while reading the echo; MiB/s of one direction.
fn bulk(addr: SocketAddr, bytes: usize) -> anyhow::Result<f64> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = stream.try_clone()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 256 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        // No half-close here: stunnel drops in-flight data when one side shuts down (seen with
        // stunnel 5.68), which would make the figure about that, not about throughput.
        Ok(())
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0usize;
    let mut r = &stream;
    while got < bytes {
        let n = r.read(&mut buf[..(bytes - got).min(256 << 10)])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if got != bytes {
        bail!("echoed {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

/// 200-byte request, 200-byte reply, `rounds` times on one connection; p50 and p99 in µs.
fn latency(addr: SocketAddr, rounds: usize) -> anyhow::Result<(f64, f64)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = [0x42u8; 200];
    let mut rep = [0u8; 200];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + 50 {
        let t = Instant::now();
        stream.write_all(&req)?;
        stream.read_exact(&mut rep)?;
        if i >= 50 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples[samples.len() * 99 / 100]))
}

/// New connections per second, each with one 200-byte request/response, for `window`.
fn conn_rate(addr: SocketAddr, window: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    let mut rep = [0u8; 200];
    while start.elapsed() < window {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&[7u8; 200])?;
        stream.read_exact(&mut rep)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
