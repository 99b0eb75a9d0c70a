//! Side-by-side benchmark on loopback: `direct` (no tunnel), `stunnel` (stunnel client + server,
//! mutual TLS 1.3) and `nfs-tls-proxy` (our client + server), same ECDSA P-256 certificates from
//! ca-tool, measured in interleaved repetitions in one run.
//!
//!   cargo build --release -p nfs-tls-proxy && cargo run --release -p nfs-tls-proxy-benches [-- --quick]
//!
//! Figures: bulk echo throughput on one and on four streams (MiB/s each way), 200-byte
//! request/response latency (p50, p99), new connections per second (handshake + one request/response),
//! memory of the two tunnel processes per idle tunnel (1000 open), and real NFS through each path
//! (nfs-ganesha as the backend, libnfs `nfs-cat` of a 64 MiB file with its checksum compared, and
//! `nfs-ls -R` of a 500-file tree). The negotiated TLS version and suite of both tunnels are read from
//! their logs and must agree. Results are printed as a table and written to target/bench-results.json.

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
    /// Bytes iperf3 sends one way per measurement.
    iperf_bytes: usize,
    conn_window: Duration,
    idle_tunnels: usize,
    nfs_file_mib: usize,
    nfs_tree_files: usize,
}

#[derive(Default, Clone)]
struct Figures {
    bulk_mib_s: Vec<f64>,
    bulk4_mib_s: Vec<f64>,
    /// iperf3 one way, towards the backend and back from it (`-R`), one stream, MiB/s.
    iperf_up_mib_s: Vec<f64>,
    iperf_down_mib_s: Vec<f64>,
    /// CPU seconds both tunnel processes spent per GiB moved by iperf3 (both directions).
    cpu_s_per_gib: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// The same latency probe with the harness and the path's processes all on CPU 0.
    p50_one_cpu_us: Vec<f64>,
    p99_one_cpu_us: Vec<f64>,
    conns_per_s: Vec<f64>,
    nfs_cat_s: Vec<f64>,
    nfs_ls_s: Vec<f64>,
    rss_kib_per_tunnel: Option<f64>,
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
            iperf_bytes: 64 << 20,
            conn_window: Duration::from_millis(500),
            idle_tunnels: 100,
            nfs_file_mib: 8,
            nfs_tree_files: 50,
        }
    } else {
        Settings {
            reps: 5,
            bulk_bytes: 128 << 20,
            latency_rounds: 5000,
            iperf_bytes: 1 << 30,
            conn_window: Duration::from_secs(3),
            idle_tunnels: 1000,
            nfs_file_mib: 64,
            nfs_tree_files: 500,
        }
    };
    raise_fd_limit();
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
    // The floor of any two-process relay on this machine: two plain socat relays, no TLS at all.
    let floor = Command::new("socat").arg("-V").output().is_ok_and(|o| o.status.success());
    if !floor {
        eprintln!("!!! no socat floor: socat not found (apt-get install socat)");
    }
    let mut names = vec!["direct", "stunnel", "nfs-tls-proxy"];
    if floor {
        names.push("relay floor (2x socat, no TLS)");
    }
    let echo_paths = tunnels(&proxy_bin, pki, "echo", echo, false, floor)?;
    // The same paths started on CPU 0 only, as on a one-core host, for the latency probe on one CPU.
    let one_cpu_paths = tunnels(&proxy_bin, pki, "echo1", echo, true, floor)?;
    // One-way bulk: iperf3 behind the same kinds of paths.
    let iperf_port = free_port()?;
    let _iperf_server =
        spawn(Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]))
            .context("iperf3 (apt-get install iperf3)")?;
    let iperf_backend: SocketAddr = format!("127.0.0.1:{iperf_port}").parse()?;
    wait_port(iperf_backend)?;
    let iperf_paths = tunnels(&proxy_bin, pki, "iperf", iperf_backend, false, floor)?;
    let pids = |guards: &[Guard]| guards.iter().map(|g| g.0.id()).collect::<Vec<u32>>();
    // Whose CPU is counted per GiB: the two tunnels' processes (socat forks a relay per connection,
    // so its CPU is not the listening process's).
    let tunnel_pids = [vec![], pids(&iperf_paths.stunnel.0), pids(&iperf_paths.ours.0), vec![]];
    let (paths, one_cpu_addrs, iperf_addrs) =
        (echo_paths.addrs(echo), one_cpu_paths.addrs(echo), iperf_paths.addrs(iperf_backend));
    let mut results: Vec<Figures> = vec![Figures::default(); paths.len()];
    for rep in 0..s.reps {
        for (i, (name, addr)) in names.iter().zip(&paths).enumerate() {
            let f = &mut results[i];
            f.bulk_mib_s.push(bulk(*addr, s.bulk_bytes).with_context(|| format!("{name}: bulk"))?);
            f.bulk4_mib_s.push(
                bulk_streams(*addr, s.bulk_bytes / 4, 4).with_context(|| format!("{name}: 4 streams"))?,
            );
            let ticks = cpu_ticks(&tunnel_pids[i]);
            f.iperf_up_mib_s.push(
                iperf(iperf_addrs[i], s.iperf_bytes, false).with_context(|| format!("{name}: iperf3"))?,
            );
            f.iperf_down_mib_s.push(
                iperf(iperf_addrs[i], s.iperf_bytes, true).with_context(|| format!("{name}: iperf3 -R"))?,
            );
            if !tunnel_pids[i].is_empty() {
                // USER_HZ is 100 on Linux; two transfers of iperf_bytes each.
                let gib = 2.0 * s.iperf_bytes as f64 / f64::from(1u32 << 30);
                f.cpu_s_per_gib.push((cpu_ticks(&tunnel_pids[i]) - ticks) as f64 / 100.0 / gib);
            }
            let (p50, p99) = latency(*addr, s.latency_rounds).with_context(|| format!("{name}: latency"))?;
            f.p50_us.push(p50);
            f.p99_us.push(p99);
            let (p50, p99) = on_one_cpu(|| latency(one_cpu_addrs[i], s.latency_rounds))
                .and_then(|r| r)
                .with_context(|| format!("{name}: latency on one CPU"))?;
            f.p50_one_cpu_us.push(p50);
            f.p99_one_cpu_us.push(p99);
            if i < 3 {
                // socat forks per connection: its connection rate says nothing about relaying.
                f.conns_per_s
                    .push(conn_rate(*addr, s.conn_window).with_context(|| format!("{name}: connections"))?);
            }
            eprintln!("rep {rep}: {name} done");
        }
    }
    drop((one_cpu_paths, iperf_paths, echo_paths.floor));
    // Memory: the two processes of each tunnel, holding `idle_tunnels` open idle tunnels.
    let (stunnel, ours) = (echo_paths.stunnel, echo_paths.ours);
    results[1].rss_kib_per_tunnel = Some(rss_per_tunnel(&stunnel.0, stunnel.1, s.idle_tunnels)?);
    results[2].rss_kib_per_tunnel = Some(rss_per_tunnel(&ours.0, ours.1, s.idle_tunnels)?);
    drop((stunnel, ours));
    // Real NFS: nfs-ganesha behind each path.
    let nfs_note = match nfs(&proxy_bin, pki, &s, &mut results) {
        Ok(()) => String::new(),
        Err(e) => {
            eprintln!("!!! NFS figures skipped: {e:#}");
            format!("NFS figures skipped: {e:#}")
        }
    };
    let suites = negotiated(pki)?;
    report(&names, &results, &root, &s, &suites, &nfs_note)
}

/// 1000 idle tunnels need more than the usual 1024 descriptors in this process and in the proxies
/// (children inherit the limit).
fn raise_fd_limit() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 16384, 16384);
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// Opens `n` tunnels (each proves itself with one echoed byte) and leaves them idle; returns the
/// growth of the tunnel processes' RSS per tunnel, KiB.
fn rss_per_tunnel(procs: &[Guard], addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
    let total = || -> anyhow::Result<f64> { procs.iter().map(|g| rss_kib(g.0.id())).sum() };
    // Warm up allocator pools with a first batch, so the figure is per tunnel, not start-up.
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(open_idle(addr)?);
    }
    let before = total()?;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(open_idle(addr)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = total()?;
    drop(open);
    Ok((after - before) / n as f64)
}

fn open_idle(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(s)
}

/// Four concurrent bulk echoes of `bytes` each; total MiB/s of one direction.
fn bulk_streams(addr: SocketAddr, bytes: usize, streams: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let workers: Vec<_> =
        (0..streams).map(|_| std::thread::spawn(move || bulk(addr, bytes).map(|_| ()))).collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("stream panicked"))??;
    }
    Ok((bytes * streams) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

/// iperf3 sending `bytes` one way through `addr` (`reverse`: from the server's side); MiB/s as the
/// receiver counted it.
fn iperf(addr: SocketAddr, bytes: usize, reverse: bool) -> anyhow::Result<f64> {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "300",
        "iperf3",
        "-J",
        "-c",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-n",
        &bytes.to_string(),
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().context("iperf3 (apt-get install iperf3)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    let bits = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3: no received rate in its report: {}", json["error"]))?;
    Ok(bits / 8.0 / f64::from(1u32 << 20))
}

/// User + system clock ticks (USER_HZ) the processes `pids` have used so far, all threads.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            num(11) + num(12)
        })
        .sum()
}

/// nfs-ganesha serving a file and a tree; `nfs-cat` and `nfs-ls -R` timed through each path.
fn nfs(bin: &Path, pki: &Path, s: &Settings, results: &mut [Figures]) -> anyhow::Result<()> {
    let export = pki.join("export");
    std::fs::create_dir_all(export.join("tree"))?;
    let data: Vec<u8> =
        (0..(s.nfs_file_mib << 20) as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(export.join("big.bin"), &data)?;
    for i in 0..s.nfs_tree_files {
        let sub = export.join("tree").join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:04}.txt")), format!("file {i}\n"))?;
    }
    let port = free_port()?;
    let conf = pki.join("ganesha.conf");
    std::fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; Enable_NLM = false; \
             Enable_RQUOTA = false; Enable_UDP = false; }}\nNFSV4 {{ Graceless = true; Only_Numeric_Owners = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash; \
             FSAL {{ Name = VFS; }} CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }} }}\n",
            export.display()
        ),
    )?;
    let _ganesha = spawn(
        Command::new("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(pki.join("ganesha.log"))
            .arg("-p")
            .arg(pki.join("ganesha.pid")),
    )
    .context("ganesha.nfsd (apt-get install nfs-ganesha nfs-ganesha-vfs)")?;
    let nfs: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_port(nfs)?;
    let (_st, st_addr) = stunnel_pair(pki, "nfs", nfs, false)?;
    let (_ours, ours_addr) = our_pair(bin, pki, "nfs", nfs, false)?;
    let want = digest(&data);
    for _ in 0..s.reps {
        for (i, addr) in [nfs, st_addr, ours_addr].into_iter().enumerate() {
            let t = Instant::now();
            let url = format!("nfs://127.0.0.1/export/big.bin?version=4&nfsport={}", addr.port());
            let out = Command::new("timeout")
                .args(["300", "nfs-cat", &url])
                .output()
                .context("nfs-cat (libnfs-utils)")?;
            let took = t.elapsed().as_secs_f64();
            if !out.status.success() || digest(&out.stdout) != want {
                bail!("nfs-cat through path {i}: wrong data ({} bytes)", out.stdout.len());
            }
            results[i].nfs_cat_s.push(took);
            let t = Instant::now();
            let url = format!("nfs://127.0.0.1/export/tree?version=4&nfsport={}", addr.port());
            let out =
                Command::new("timeout").args(["300", "nfs-ls", "-R", &url]).output().context("nfs-ls")?;
            let took = t.elapsed().as_secs_f64();
            let listed = String::from_utf8_lossy(&out.stdout).matches(".txt").count();
            if listed < s.nfs_tree_files {
                bail!("nfs-ls -R through path {i} listed {listed} of {} files", s.nfs_tree_files);
            }
            results[i].nfs_ls_s.push(took);
        }
    }
    Ok(())
}

/// A cheap checksum to compare what nfs-cat returned with the file (not a security measure).
fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The TLS version and suite each tunnel negotiated, from the servers' logs.
fn negotiated(pki: &Path) -> anyhow::Result<(String, String)> {
    let stunnel_log = std::fs::read_to_string(pki.join("stunnel-nfs-server.log")).unwrap_or_default();
    let stunnel = stunnel_log
        .lines()
        .find_map(|l| {
            l.split_once("ciphersuite: ").map(|(_, s)| s.split_whitespace().next().unwrap_or("").to_owned())
        })
        .map(|suite| format!("TLSv1.3 {suite}"))
        .unwrap_or_else(|| "unknown (no ciphersuite line in stunnel's log)".into());
    let ours_log = std::fs::read_to_string(pki.join("ours-nfs-server.log")).unwrap_or_default();
    let ours = ours_log
        .lines()
        .find_map(|l| l.split_once("tls=").map(|(_, s)| s.split_whitespace().next().unwrap_or("").to_owned()))
        .map(|t| t.replace("TLSv1_3/TLS13_", "TLSv1.3 TLS_"))
        .unwrap_or_else(|| "unknown (no tls= in our log)".into());
    Ok((stunnel, ours))
}

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(
    names: &[&str],
    r: &[Figures],
    root: &Path,
    s: &Settings,
    suites: &(String, String),
    nfs_note: &str,
) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let opt = |v: &[f64], digits: usize| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.*} ({})", digits, med(v), range_digits(v, digits))
        }
    };
    println!("{cpu}, {cores} cores, {} repetitions; medians (min-max)\n", s.reps);
    println!(
        "| path | bulk MiB/s, 1 stream | bulk MiB/s, 4 streams | iperf3 up / down MiB/s | CPU s per GiB | added p50 us | added p99 us | p50 us | p99 us | added p50 / p99 us, one CPU | conn/s | RSS KiB per idle tunnel | nfs-cat {} MiB s | nfs-ls -R {} files s |",
        s.nfs_file_mib, s.nfs_tree_files
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut json = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let f = &r[i];
        println!(
            "| {name} | {} | {} | {} / {} | {} | {:.0} | {:.0} | {} | {} | {:.0} / {:.0} | {} | {} | {} | {} |",
            opt(&f.bulk_mib_s, 0),
            opt(&f.bulk4_mib_s, 0),
            opt(&f.iperf_up_mib_s, 0),
            opt(&f.iperf_down_mib_s, 0),
            opt(&f.cpu_s_per_gib, 2),
            med(&f.p50_us) - med(&r[0].p50_us),
            med(&f.p99_us) - med(&r[0].p99_us),
            opt(&f.p50_us, 0),
            opt(&f.p99_us, 0),
            med(&f.p50_one_cpu_us) - med(&r[0].p50_one_cpu_us),
            med(&f.p99_one_cpu_us) - med(&r[0].p99_one_cpu_us),
            opt(&f.conns_per_s, 0),
            f.rss_kib_per_tunnel.map(|k| format!("{k:.1}")).unwrap_or_else(|| "-".into()),
            opt(&f.nfs_cat_s, 2),
            opt(&f.nfs_ls_s, 2),
        );
        let m = |v: &[f64]| if v.is_empty() { serde_json::Value::Null } else { serde_json::json!(med(v)) };
        json.insert(
            (*name).to_owned(),
            serde_json::json!({
                "bulk_mib_s": m(&f.bulk_mib_s), "bulk4_mib_s": m(&f.bulk4_mib_s),
                "iperf_up_mib_s": m(&f.iperf_up_mib_s), "iperf_down_mib_s": m(&f.iperf_down_mib_s),
                "cpu_s_per_gib": m(&f.cpu_s_per_gib),
                "p50_us": m(&f.p50_us), "p99_us": m(&f.p99_us),
                "p50_one_cpu_us": m(&f.p50_one_cpu_us), "p99_one_cpu_us": m(&f.p99_one_cpu_us), "conns_per_s": m(&f.conns_per_s),
                "rss_kib_per_tunnel": f.rss_kib_per_tunnel, "nfs_cat_s": m(&f.nfs_cat_s), "nfs_ls_s": m(&f.nfs_ls_s),
            }),
        );
    }
    let (st, o, d) = (&r[1], &r[2], &r[0]);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let added = |f: &Figures, d: &Figures, p: fn(&Figures) -> &Vec<f64>| med(p(f)) - med(p(d));
    // Latency added over direct, ours against stunnel's; lower is better, target half.
    let latency_target =
        |what, p: fn(&Figures) -> &Vec<f64>| (what, ratio(added(o, d, p), added(st, d, p)), 0.5, false);
    println!("\nTLS: stunnel {}, nfs-tls-proxy {}", suites.0, suites.1);
    if suites.0 != suites.1 {
        println!("!!! the two tunnels negotiated different suites; the comparison is not like for like");
    }
    let targets = [
        ("bulk, 1 stream (>= 2x)", ratio(med(&o.bulk_mib_s), med(&st.bulk_mib_s)), 2.0, true),
        ("bulk, 4 streams (>= 2x)", ratio(med(&o.bulk4_mib_s), med(&st.bulk4_mib_s)), 2.0, true),
        ("bulk, iperf3 up (>= 2x)", ratio(med(&o.iperf_up_mib_s), med(&st.iperf_up_mib_s)), 2.0, true),
        ("bulk, iperf3 down (>= 2x)", ratio(med(&o.iperf_down_mib_s), med(&st.iperf_down_mib_s)), 2.0, true),
        latency_target("added latency p50 (<= 0.5x)", |f| &f.p50_us),
        latency_target("added latency p99 (<= 0.5x)", |f| &f.p99_us),
        latency_target("added latency p50, all on one CPU (<= 0.5x)", |f| &f.p50_one_cpu_us),
        latency_target("added latency p99, all on one CPU (<= 0.5x)", |f| &f.p99_one_cpu_us),
        ("connections/s (>= 1.5x)", ratio(med(&o.conns_per_s), med(&st.conns_per_s)), 1.5, true),
        (
            "RSS per idle tunnel (<= 0.5x)",
            ratio(o.rss_kib_per_tunnel.unwrap_or(f64::NAN), st.rss_kib_per_tunnel.unwrap_or(f64::NAN)),
            0.5,
            false,
        ),
        (
            "nfs-cat time (<= 0.6x)",
            if o.nfs_cat_s.is_empty() { f64::NAN } else { ratio(med(&o.nfs_cat_s), med(&st.nfs_cat_s)) },
            0.6,
            false,
        ),
    ];
    println!("\nnfs-tls-proxy / stunnel:");
    let mut verdicts = serde_json::Map::new();
    for (what, x, target, higher) in targets {
        let met = if higher { x >= target } else { x <= target };
        println!(
            "- {what}: x{x:.2} {}",
            if x.is_nan() {
                "(not measured)"
            } else if met {
                "met"
            } else {
                "MISSED"
            }
        );
        verdicts.insert(what.to_owned(), serde_json::json!({ "ratio": x, "met": met }));
    }
    let cpu_ratio = ratio(med(&o.cpu_s_per_gib), med(&st.cpu_s_per_gib));
    println!("- CPU of both tunnel processes per GiB through iperf3: x{cpu_ratio:.2} (no target)");
    verdicts.insert("CPU per GiB".to_owned(), serde_json::json!({ "ratio": cpu_ratio }));
    if !nfs_note.is_empty() {
        println!("\n{nfs_note}");
    }
    json.insert("tls".into(), serde_json::json!({ "stunnel": suites.0, "nfs-tls-proxy": suites.1 }));
    json.insert("targets".into(), serde_json::Value::Object(verdicts));
    json.insert("machine".into(), serde_json::json!({ "cpu": cpu, "cores": cores, "reps": s.reps }));
    let out = root.join("target/bench-results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&serde_json::Value::Object(json))?)
        .with_context(|| out.display().to_string())?;
    println!("written: {}", out.display());
    Ok(())
}

fn range_digits(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$}-{max:.digits$}")
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
    Ok(Guard(die_with_us(cmd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
}

/// Like [`spawn`], with stderr (the log) going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Guard> {
    let file = std::fs::File::create(log)?;
    Ok(Guard(die_with_us(cmd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn()?))
}

/// The child gets SIGTERM when the harness dies, however it dies (a signal, a panic that aborts):
/// [`Guard`]'s clean-up only runs on an orderly exit, and a stopped run must not leave stunnel,
/// socat or proxies behind. Linux only (the harness runs on the Linux test machines; elsewhere the
/// children are only cleaned up on an orderly exit).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_us(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe system
    // call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_us(cmd: &mut Command) -> &mut Command {
    cmd
}

/// The tunnels measured in front of one backend, each its processes and its listening address.
struct Tunnels {
    stunnel: (Vec<Guard>, SocketAddr),
    ours: (Vec<Guard>, SocketAddr),
    floor: Option<(Vec<Guard>, SocketAddr)>,
}

impl Tunnels {
    /// The paths in report order: direct (the backend itself), stunnel, ours, the relay floor.
    fn addrs(&self, backend: SocketAddr) -> Vec<SocketAddr> {
        [backend, self.stunnel.1, self.ours.1].into_iter().chain(self.floor.as_ref().map(|f| f.1)).collect()
    }
}

/// stunnel's pair, ours and (with `floor`) two socat relays in front of `backend`, all started on
/// CPU 0 only when `cpu0`.
fn tunnels(
    bin: &Path,
    pki: &Path,
    tag: &str,
    backend: SocketAddr,
    cpu0: bool,
    floor: bool,
) -> anyhow::Result<Tunnels> {
    Ok(Tunnels {
        stunnel: stunnel_pair(pki, tag, backend, cpu0)?,
        ours: our_pair(bin, pki, tag, backend, cpu0)?,
        floor: if floor { Some(socat_pair(backend, cpu0)?) } else { None },
    })
}

/// Two chained plain-TCP socat relays in front of `backend`.
fn socat_pair(backend: SocketAddr, cpu0: bool) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port()?, free_port()?);
    let relay = |from: u16, to: String| {
        spawn(command("socat", cpu0).args([
            "-b65536".to_owned(),
            format!("TCP-LISTEN:{from},bind=127.0.0.1,reuseaddr,fork,nodelay"),
            format!("TCP:{to},nodelay"),
        ]))
        .context("socat (apt-get install socat)")
    };
    let guards = vec![relay(sp, backend.to_string())?, relay(cp, format!("127.0.0.1:{sp}"))?];
    let addr: SocketAddr = format!("127.0.0.1:{cp}").parse()?;
    wait_port(format!("127.0.0.1:{sp}").parse()?)?;
    wait_port(addr)?;
    Ok((guards, addr))
}

fn stunnel_pair(
    pki: &Path,
    tag: &str,
    backend: SocketAddr,
    cpu0: bool,
) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port()?, free_port()?);
    let p = |n: &str| pki.join(n).display().to_string();
    // The NFS pair's server logs at info to a file, where the negotiated suite is read; the echo pair
    // (latency, connection rate) keeps stunnel's default logging.
    let logging = if tag == "nfs" {
        format!("debug = info\noutput = {}\n", p(&format!("stunnel-{tag}-server.log")))
    } else {
        String::new()
    };
    let server = format!(
        "foreground = yes\npid =\n{logging}[s]\naccept = 127.0.0.1:{sp}\nconnect = {backend}\ncert = {}\nCAfile = {}\n\
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
    let (s_conf, c_conf) = (pki.join(format!("s-{tag}.conf")), pki.join(format!("c-{tag}.conf")));
    std::fs::write(&s_conf, server)?;
    std::fs::write(&c_conf, client)?;
    let guards = vec![
        spawn(command("stunnel4", cpu0).arg(&s_conf)).context("stunnel4 (apt-get install stunnel4)")?,
        spawn(command("stunnel4", cpu0).arg(&c_conf))?,
    ];
    let addr: SocketAddr = format!("127.0.0.1:{cp}").parse()?;
    wait_port(format!("127.0.0.1:{sp}").parse()?)?;
    wait_port(addr)?;
    Ok((guards, addr))
}

fn our_pair(
    bin: &Path,
    pki: &Path,
    tag: &str,
    backend: SocketAddr,
    cpu0: bool,
) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port()?, free_port()?);
    // BENCH_THREADS=N passes --threads N to both proxies (to compare runtime flavours).
    let threads: Vec<String> =
        std::env::var("BENCH_THREADS").map(|t| vec!["--threads".into(), t]).unwrap_or_default();
    let p = |n: &str| pki.join(n).display().to_string();
    let server = spawn_logged(
        command(bin, cpu0)
            .args([
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
                "info",
            ])
            .args(&threads),
        &pki.join(format!("ours-{tag}-server.log")),
    )?;
    let client = spawn(
        command(bin, cpu0)
            .args([
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
                "info",
            ])
            .args(&threads),
    )?;
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

/// Runs `f` with every thread of this process (the probe and the echo backend) on CPU 0, then lets
/// them run anywhere again; the tunnels it probes were started on CPU 0 (see [`command`]). On this
/// VM a wake-up that crosses to an idle vCPU costs ~50 us (an IPI through the hypervisor) against
/// ~4 us on the same CPU, and where the scheduler puts the processes varies from run to run; on one
/// CPU the probe measures what each tunnel itself adds per hop.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let set_all = |set: &CpuSet| -> anyhow::Result<()> {
        for task in std::fs::read_dir("/proc/self/task")? {
            if let Ok(tid) = task?.file_name().to_string_lossy().parse::<i32>() {
                // A thread may end between listing and pinning.
                let _ = sched_setaffinity(Pid::from_raw(tid), set);
            }
        }
        Ok(())
    };
    let mut one = CpuSet::new();
    one.set(0)?;
    let mut every = CpuSet::new();
    for cpu in 0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
        every.set(cpu)?;
    }
    set_all(&one)?;
    let out = f();
    set_all(&every)?;
    Ok(out)
}

/// `program`, or `program` started on CPU 0 only (`taskset -c 0`) when `cpu0`: it then sees one CPU,
/// as on a one-core host (our proxy then runs one worker thread).
fn command(program: impl AsRef<std::ffi::OsStr>, cpu0: bool) -> Command {
    if cpu0 {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
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
