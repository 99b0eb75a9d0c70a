//! Network namespaces of a test's own (Linux): TEST-NET addresses inside them, our binary run
//! inside with `ip netns exec`, and the test's own sockets made inside by a thread that joined one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{EchoBackend, Proc};

/// A network namespace of this test's own, deleted on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("ntp-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub(crate) fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` on a thread that joined this namespace: sockets it makes live in the namespace.
    pub(crate) fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
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

    /// Our binary, running inside this namespace.
    pub(crate) fn proxy(&self, name: &str, args: &[&str]) -> Proc {
        Proc::spawn(
            name,
            Command::new("ip").args(["netns", "exec", &self.name, &super::proxy_bin()]).args(args),
        )
    }

    /// An echo backend on 127.0.0.1 inside this namespace.
    pub(crate) fn echo(&self) -> EchoBackend {
        EchoBackend::on_listener(self.enter(|| TcpListener::bind("127.0.0.1:0").expect("bind")))
    }

    pub(crate) fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().expect("addr");
        self.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub(crate) fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("run");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
