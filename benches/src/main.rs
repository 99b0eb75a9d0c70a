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
//!
//! | file | what |
//! | --- | --- |
//! | `main.rs` | the settings and the run: which figure is measured through which path, in what order |
//! | `paths.rs` | the paths: stunnel's pair, ours, the socat floor; child processes tied to the harness |
//! | `measure.rs` | the measurements: bulk, iperf3, latency, connection rate, CPU and memory |
//! | `nfs.rs` | real NFS through each path: nfs-ganesha, `nfs-cat` and `nfs-ls -R` |
//! | `report.rs` | the table, the ratios against the targets, target/bench-results.json |
//!
//! The test PKI, the echo backend and the ganesha command come from the shared test support
//! (`tests/support`).

mod measure;
mod nfs;
mod paths;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use test_support::{free_port, wait_port, EchoBackend, TestPki};

use crate::measure::{
    bulk, bulk_streams, conn_rate, cpu_ticks, iperf, latency, on_one_cpu, raise_fd_limit, rss_per_tunnel,
    Figures,
};
use crate::paths::{spawn, tunnels, Guard};

/// How much each measurement moves and how often it is repeated (`--quick` or the full run).
pub(crate) struct Settings {
    pub(crate) reps: usize,
    pub(crate) bulk_bytes: usize,
    pub(crate) latency_rounds: usize,
    /// Bytes iperf3 sends one way per measurement.
    pub(crate) iperf_bytes: usize,
    pub(crate) conn_window: Duration,
    pub(crate) idle_tunnels: usize,
    pub(crate) nfs_file_mib: usize,
    pub(crate) nfs_tree_files: usize,
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
    let test_pki = TestPki::new();
    let pki = test_pki.root();
    let echo_backend = EchoBackend::start();
    let echo = echo_backend.addr;
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
    let iperf_port = free_port();
    let _iperf_server =
        spawn(Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]))
            .context("iperf3 (apt-get install iperf3)")?;
    let iperf_backend: SocketAddr = format!("127.0.0.1:{iperf_port}").parse()?;
    wait_port(iperf_backend)?;
    let iperf_paths = tunnels(&proxy_bin, pki, "iperf", iperf_backend, false, floor)?;
    let pids = |guards: &[Guard]| guards.iter().map(|g| g.id()).collect::<Vec<u32>>();
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
    let nfs_note = match nfs::measure(&proxy_bin, pki, &s, &mut results) {
        Ok(()) => String::new(),
        Err(e) => {
            eprintln!("!!! NFS figures skipped: {e:#}");
            format!("NFS figures skipped: {e:#}")
        }
    };
    let suites = paths::negotiated(pki)?;
    report::report(&names, &results, &root, &s, &suites, &nfs_note)
}
