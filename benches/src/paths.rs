//! The paths measured in front of a backend: stunnel's client and server, our client and server,
//! and the floor of any relay (two plain socat relays); every child process tied to the harness's
//! life.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use test_support::{free_port, wait_port, CLIENT, SERVER};

/// Kills the child on drop.
pub(crate) struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

pub(crate) fn spawn(cmd: &mut Command) -> anyhow::Result<Guard> {
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
pub(crate) struct Tunnels {
    pub(crate) stunnel: (Vec<Guard>, SocketAddr),
    pub(crate) ours: (Vec<Guard>, SocketAddr),
    pub(crate) floor: Option<(Vec<Guard>, SocketAddr)>,
}

impl Tunnels {
    /// The paths in report order: direct (the backend itself), stunnel, ours, the relay floor.
    pub(crate) fn addrs(&self, backend: SocketAddr) -> Vec<SocketAddr> {
        [backend, self.stunnel.1, self.ours.1].into_iter().chain(self.floor.as_ref().map(|f| f.1)).collect()
    }
}

/// stunnel's pair, ours and (with `floor`) two socat relays in front of `backend`, all started on
/// CPU 0 only when `cpu0`.
pub(crate) fn tunnels(
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
    let (sp, cp) = (free_port(), free_port());
    let relay = |from: u16, to: String| {
        spawn(command("socat", cpu0).args([
            "-b65536".to_owned(),
            format!("TCP-LISTEN:{from},bind=127.0.0.1,reuseaddr,fork,nodelay"),
            format!("TCP:{to},nodelay"),
        ]))
        .context("socat (apt-get install socat)")
    };
    listening(vec![relay(sp, backend.to_string())?, relay(cp, format!("127.0.0.1:{sp}"))?], sp, cp)
}

pub(crate) fn stunnel_pair(
    pki: &Path,
    tag: &str,
    backend: SocketAddr,
    cpu0: bool,
) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port(), free_port());
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
        p(&format!("{SERVER}-stunnel.pem")),
        p("ca-cert.pem")
    );
    let client = format!(
        "foreground = yes\npid =\n[c]\nclient = yes\naccept = 127.0.0.1:{cp}\nconnect = 127.0.0.1:{sp}\ncert = {}\n\
         CAfile = {}\nverifyChain = yes\nsslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
        p(&format!("{CLIENT}-stunnel.pem")),
        p("ca-cert.pem")
    );
    let (s_conf, c_conf) = (pki.join(format!("s-{tag}.conf")), pki.join(format!("c-{tag}.conf")));
    std::fs::write(&s_conf, server)?;
    std::fs::write(&c_conf, client)?;
    let guards = vec![
        spawn(command("stunnel4", cpu0).arg(&s_conf)).context("stunnel4 (apt-get install stunnel4)")?,
        spawn(command("stunnel4", cpu0).arg(&c_conf))?,
    ];
    listening(guards, sp, cp)
}

pub(crate) fn our_pair(
    bin: &Path,
    pki: &Path,
    tag: &str,
    backend: SocketAddr,
    cpu0: bool,
) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let (sp, cp) = (free_port(), free_port());
    // BENCH_THREADS=N passes --threads N to both proxies (to compare runtime flavours).
    let threads: Vec<String> =
        std::env::var("BENCH_THREADS").map(|t| vec!["--threads".into(), t]).unwrap_or_default();
    // One mode of our binary: `mode`, its listener, where it forwards to, its certificate.
    let ours = |mode: &str, listen: u16, to: String, cert: &str| {
        let mut cmd = command(bin, cpu0);
        cmd.args([mode, "--listen", &format!("127.0.0.1:{listen}")])
            .args([if mode == "server" { "--backend" } else { "--server" }, &to])
            .arg("--cert")
            .arg(pki.join(format!("{cert}-stunnel.pem")))
            .arg("--ca")
            .arg(pki.join("ca-cert.pem"))
            .args(["--log-level", "info"])
            .args(&threads);
        cmd
    };
    let server = spawn_logged(
        &mut ours("server", sp, backend.to_string(), SERVER),
        &pki.join(format!("ours-{tag}-server.log")),
    )?;
    let client = spawn(&mut ours("client", cp, format!("127.0.0.1:{sp}"), CLIENT))?;
    listening(vec![server, client], sp, cp)
}

/// A pair's processes once its server end (`server_port`) and its client end (`client_port`, the
/// address returned) both accept connections.
fn listening(
    guards: Vec<Guard>,
    server_port: u16,
    client_port: u16,
) -> anyhow::Result<(Vec<Guard>, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], client_port));
    wait_port(SocketAddr::from(([127, 0, 0, 1], server_port)))?;
    wait_port(addr)?;
    Ok((guards, addr))
}

/// `program`, or `program` started on CPU 0 only (`taskset -c 0`) when `cpu0`: it then sees one CPU,
/// as on a one-core host (our proxy then runs one worker thread).
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>, cpu0: bool) -> Command {
    if cpu0 {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The TLS version and suite each tunnel negotiated, from the servers' logs.
pub(crate) fn negotiated(pki: &Path) -> anyhow::Result<(String, String)> {
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
