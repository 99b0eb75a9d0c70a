//! The measurements, each through one path's listening address: bulk echo on one and on several
//! streams, one-way bulk with iperf3, request/response latency (also with everything on one CPU),
//! the new-connection rate, the CPU the tunnel processes spend and their memory per idle tunnel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths::Guard;

#[derive(Default, Clone)]
pub(crate) struct Figures {
    pub(crate) bulk_mib_s: Vec<f64>,
    pub(crate) bulk4_mib_s: Vec<f64>,
    /// iperf3 one way, towards the backend and back from it (`-R`), one stream, MiB/s.
    pub(crate) iperf_up_mib_s: Vec<f64>,
    pub(crate) iperf_down_mib_s: Vec<f64>,
    /// CPU seconds both tunnel processes spent per GiB moved by iperf3 (both directions).
    pub(crate) cpu_s_per_gib: Vec<f64>,
    pub(crate) p50_us: Vec<f64>,
    pub(crate) p99_us: Vec<f64>,
    /// The same latency probe with the harness and the path's processes all on CPU 0.
    pub(crate) p50_one_cpu_us: Vec<f64>,
    pub(crate) p99_one_cpu_us: Vec<f64>,
    pub(crate) conns_per_s: Vec<f64>,
    pub(crate) nfs_cat_s: Vec<f64>,
    pub(crate) nfs_ls_s: Vec<f64>,
    pub(crate) rss_kib_per_tunnel: Option<f64>,
}

/// 1000 idle tunnels need more than the usual 1024 descriptors in this process and in the proxies
/// (children inherit the limit).
pub(crate) fn raise_fd_limit() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 16384, 16384);
}

/// VmRSS of a process, KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// Opens `n` tunnels (each proves itself with one echoed byte) and leaves them idle; returns the
/// growth of the tunnel processes' RSS per tunnel, KiB.
pub(crate) fn rss_per_tunnel(procs: &[Guard], addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
    let total = || -> anyhow::Result<f64> { procs.iter().map(|g| rss_kib(g.id())).sum() };
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

pub(crate) fn open_idle(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(s)
}

/// Four concurrent bulk echoes of `bytes` each; total MiB/s of one direction.
pub(crate) fn bulk_streams(addr: SocketAddr, bytes: usize, streams: usize) -> anyhow::Result<f64> {
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
pub(crate) fn iperf(addr: SocketAddr, bytes: usize, reverse: bool) -> anyhow::Result<f64> {
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
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
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

/// Sends `bytes` while reading the echo; MiB/s of one direction.
pub(crate) fn bulk(addr: SocketAddr, bytes: usize) -> anyhow::Result<f64> {
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
pub(crate) fn latency(addr: SocketAddr, rounds: usize) -> anyhow::Result<(f64, f64)> {
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
/// them run anywhere again; the tunnels it probes were started on CPU 0 (see [`crate::paths::command`]). On this
/// VM a wake-up that crosses to an idle vCPU costs ~50 us (an IPI through the hypervisor) against
/// ~4 us on the same CPU, and where the scheduler puts the processes varies from run to run; on one
/// CPU the probe measures what each tunnel itself adds per hop.
pub(crate) fn on_one_cpu<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
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

/// New connections per second, each with one 200-byte request/response, for `window`.
pub(crate) fn conn_rate(addr: SocketAddr, window: Duration) -> anyhow::Result<f64> {
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
