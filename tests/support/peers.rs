//! Real peers the tests and the benchmark start as processes: nfs-ganesha and the independent
//! Python RFC 9289 peers; and the two port helpers they need. Starting and stopping the process is
//! the caller's (the process-level tests collect its log, the benchmark ties it to its own life).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The independent Python RFC 9289 peers (`rpc_tls_client.py`, `rpc_tls_server.py`): `tests/peers/`,
/// next to this package; [`python_peer`] runs one.
pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");

/// `python3 tests/peers/SCRIPT`, arguments to be added.
pub fn python_peer(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(PEERS).join(script));
    cmd
}

/// A free loopback port, for peers that cannot bind port 0 and report it (stunnel, ganesha, socat).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits (at most 30 s) until something accepts connections on `addr`.
pub fn wait_port(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listens on {addr} after 30 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// nfs-ganesha (NFSv4 only, VFS) exporting `DIR/export` as `/export` to 127.0.0.1 on a free port, in
/// the foreground, its config, log and pid file in `dir`; the command to start and the address it
/// will listen on (wait for it with [`wait_port`]).
pub fn ganesha_command(dir: &Path) -> (Command, SocketAddr) {
    let port = free_port();
    let conf = dir.join("ganesha.conf");
    let text = format!(
        "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; Enable_NLM = false; \
         Enable_RQUOTA = false; Enable_UDP = false; }}\n\
         NFSV4 {{ Graceless = true; Only_Numeric_Owners = true; }}\n\
         EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash; \
         FSAL {{ Name = VFS; }} CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }} }}\n",
        dir.join("export").display()
    );
    std::fs::write(&conf, text).expect("write ganesha.conf");
    let mut cmd = Command::new("ganesha.nfsd");
    cmd.args(["-F", "-f"])
        .arg(&conf)
        .arg("-L")
        .arg(dir.join("ganesha.log"))
        .arg("-p")
        .arg(dir.join("ganesha.pid"));
    (cmd, SocketAddr::from(([127, 0, 0, 1], port)))
}
