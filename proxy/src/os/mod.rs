//! Everything that differs between Linux and FreeBSD, in one place.
//!
//! - [`owns_address`]: whether this host currently *owns* an address, i.e. should serve on it. On
//!   Linux (keepalived, `ip addr add/del`) that is the address being assigned to an interface. On
//!   FreeBSD a CARP address stays configured on the BACKUP node as well, so there it means: assigned,
//!   and if it belongs to a CARP vhid, that vhid is MASTER on the interface holding it (`SIOCGVH`).
//! - [`Privileges`]: the user and group to run as after binding.
//! - [`ktls`]: kernel TLS (the `tls` ULP, splice(2), records that are not application data).
//!
//! The FreeBSD part is type-checked in CI (`cargo check --target x86_64-unknown-freebsd`) but could not
//! be run here: there is no FreeBSD host and no CARP on the test machines.

#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;

use nix::unistd::{Gid, Group, Uid, User};

pub(crate) mod ktls;

/// Whether a server listen address follows ownership: every address but wildcard and loopback ones,
/// which are always this host's.
pub(crate) fn is_followed(addr: std::net::SocketAddr) -> bool {
    !addr.ip().is_unspecified() && !addr.ip().is_loopback()
}

/// Whether this host owns `ip` now. Unspecified and loopback addresses are always owned.
pub(crate) fn owns_address(ip: IpAddr) -> io::Result<bool> {
    if ip.is_unspecified() || ip.is_loopback() {
        return Ok(true);
    }
    imp::owns_address(ip)
}

#[cfg(not(target_os = "freebsd"))]
mod imp {
    use std::io;
    use std::net::IpAddr;

    /// Linux and others: the address is assigned to some interface.
    pub(super) fn owns_address(ip: IpAddr) -> io::Result<bool> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        Ok(addrs.filter_map(|a| a.address).any(|sa| {
            sa.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                || sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
        }))
    }
}

#[cfg(target_os = "freebsd")]
mod imp {
    use std::ffi::CStr;
    use std::io;
    use std::net::IpAddr;

    /// `struct carpreq` from <netinet/ip_carp.h>.
    #[repr(C)]
    struct CarpReq {
        count: libc::c_int,
        vhid: libc::c_int,
        state: libc::c_int,
        advskew: libc::c_int,
        advbase: libc::c_int,
        key: [libc::c_uchar; 20],
    }

    /// `_IOWR('i', 246, struct ifreq)`.
    const SIOCGVH: libc::c_ulong = 0xc000_0000
        | ((std::mem::size_of::<libc::ifreq>() as libc::c_ulong & 0x1fff) << 16)
        | (0x69 << 8)
        | 246;
    const CARP_MASTER: libc::c_int = 2;

    /// FreeBSD: the address is assigned, and if it carries a CARP vhid, that vhid is MASTER.
    pub(super) fn owns_address(ip: IpAddr) -> io::Result<bool> {
        let Some((ifname, vhid)) = find(ip)? else { return Ok(false) };
        if vhid == 0 {
            return Ok(true); // a plain address, not CARP
        }
        Ok(carp_state(&ifname, vhid)? == CARP_MASTER)
    }

    /// The interface holding `ip`, and the address's CARP vhid (0: none).
    fn find(ip: IpAddr) -> io::Result<Option<([libc::c_char; libc::IFNAMSIZ], u8)>> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut found = None;
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: ifa_addr points to a sockaddr whose family says how long it is.
            let addr = unsafe { sockaddr_ip(ifa.ifa_addr) };
            if addr != Some(ip) {
                continue;
            }
            // For AF_INET/AF_INET6 entries FreeBSD points ifa_data at a struct if_data whose
            // ifi_vhid is the address's CARP vhid (ifconfig prints it the same way).
            let vhid = if ifa.ifa_data.is_null() {
                0
            } else {
                // SAFETY: as above; the pointer is valid until freeifaddrs.
                unsafe { (*(ifa.ifa_data as *const libc::if_data)).ifi_vhid }
            };
            let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
            // SAFETY: ifa_name is a NUL-terminated interface name.
            let bytes = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes();
            for (dst, src) in name.iter_mut().zip(bytes.iter().take(libc::IFNAMSIZ - 1)) {
                *dst = *src as libc::c_char;
            }
            found = Some((name, vhid));
            break;
        }
        // SAFETY: `head` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(found)
    }

    unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }

    /// The CARP state (0 INIT, 1 BACKUP, 2 MASTER) of `vhid` on interface `ifname`.
    fn carp_state(ifname: &[libc::c_char; libc::IFNAMSIZ], vhid: u8) -> io::Result<libc::c_int> {
        let mut req = CarpReq {
            count: 1,
            vhid: libc::c_int::from(vhid),
            state: 0,
            advskew: 0,
            advbase: 0,
            key: [0; 20],
        };
        // SAFETY: an all-zero ifreq is valid; we set its name and data pointer.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = *ifname;
        ifr.ifr_ifru.ifru_data = (&mut req as *mut CarpReq).cast();
        // SAFETY: plain socket, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGVH reads ifr and writes one carpreq (count = 1, vhid set) through ifru_data.
        let rc = unsafe { libc::ioctl(fd, SIOCGVH, &mut ifr) };
        let err = io::Error::last_os_error();
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        if rc < 0 {
            return Err(err);
        }
        Ok(req.state)
    }
}

/// Tells systemd (`Type=notify`) about a state change, e.g. `READY=1`; does nothing when not run by
/// systemd (no `NOTIFY_SOCKET`), e.g. on FreeBSD.
pub(crate) fn sd_notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        return Err(io::Error::other(format!("abstract NOTIFY_SOCKET {:?} needs Linux", name)));
    }
    socket.send_to(state.as_bytes(), &path)?;
    Ok(())
}

/// A listening socket handed over by systemd socket activation (sd_listen_fds(3): `LISTEN_PID` is
/// us, `LISTEN_FDS` sockets from fd 3), taken for `addr`. systemd keeps its own copy open, so while
/// the service restarts new connections wait in the kernel's queue instead of being refused.
pub(crate) fn activated_listener(addr: std::net::SocketAddr) -> Option<std::net::TcpListener> {
    use std::sync::{Mutex, OnceLock};
    static SOCKETS: OnceLock<Mutex<Vec<std::net::TcpListener>>> = OnceLock::new();
    let sockets = SOCKETS.get_or_init(|| Mutex::new(inherited_listeners()));
    let sockets = sockets.lock().unwrap_or_else(|p| p.into_inner());
    // A copy: the original stays here, so a listener dropped later (a VIP lost) can be taken again.
    let found = sockets.iter().find(|l| l.local_addr().is_ok_and(|a| a == addr))?;
    found.try_clone().ok()
}

/// The TCP listening sockets systemd passed to this process (none when not socket-activated).
fn inherited_listeners() -> Vec<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    const SD_LISTEN_FDS_START: i32 = 3;
    let ours =
        std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !ours || !(1..=64).contains(&count) {
        return Vec::new();
    }
    (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count)
        .filter(|&fd| {
            // Only listening TCP sockets: anything else systemd passed is left alone.
            // SAFETY: fds from LISTEN_FDS are open for the life of the process (sd_listen_fds(3)).
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&borrowed);
            sock.is_listener().unwrap_or(false) && sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
        })
        // SAFETY: the fd was passed to us by systemd for exactly this (LISTEN_PID is us), is a
        // listening stream socket (checked above), and is owned by nothing else in this process.
        .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) })
        .inspect(|l| {
            // Not inherited further (e.g. by the `nft` the redirect runs), as sd_listen_fds(3) does.
            let _ = nix::fcntl::fcntl(l, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        })
        .collect()
}

/// CLOCK_MONOTONIC in microseconds, for sd_notify's `MONOTONIC_USEC` with `RELOADING=1`.
pub(crate) fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// The user and group to switch to after binding, resolved at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl Privileges {
    /// Resolves `--user` / `--group` (names or numbers). The group defaults to the user's own.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self, String> {
        let u = match user.parse::<u32>() {
            Ok(id) => User::from_uid(Uid::from_raw(id)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| format!("--user {user}: cannot look it up: {e}"))?
        .ok_or_else(|| format!("--user {user}: no such user"))?;
        let gid = match group {
            None => u.gid,
            Some(g) => {
                match g.parse::<u32>() {
                    Ok(id) => Group::from_gid(Gid::from_raw(id)),
                    Err(_) => Group::from_name(g),
                }
                .map_err(|e| format!("--group {g}: cannot look it up: {e}"))?
                .ok_or_else(|| format!("--group {g}: no such group"))?
                .gid
            }
        };
        Ok(Self { user: u.name, uid: u.uid.as_raw(), gid: gid.as_raw() })
    }

    /// Switches the whole process to this user and group for good (supplementary groups dropped).
    pub fn drop_to(&self) -> io::Result<()> {
        let gid = Gid::from_raw(self.gid);
        nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
        nix::unistd::setgid(gid).map_err(io::Error::from)?;
        nix::unistd::setuid(Uid::from_raw(self.uid)).map_err(io::Error::from)?;
        if self.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(io::Error::other("could regain root after dropping privileges"));
        }
        Ok(())
    }
}

/// Where a redirected connection was going before NAT sent it to us (`SO_ORIGINAL_DST`, Linux
/// conntrack), if that differs from the address it arrived at. None for connections made to our
/// listener directly, and everywhere but Linux.
pub(crate) fn original_dst(
    tcp: &impl std::os::fd::AsFd,
    local: std::net::SocketAddr,
) -> Option<std::net::SocketAddr> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{getsockopt, sockopt};
        let dst = if local.is_ipv4() {
            let sin = getsockopt(tcp, sockopt::OriginalDst).ok()?;
            std::net::SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        } else {
            let sin6 = getsockopt(tcp, sockopt::Ip6tOriginalDst).ok()?;
            std::net::SocketAddr::from((
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        };
        (dst != local).then_some(dst)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tcp, local);
        None
    }
}

/// Every address assigned to this host's interfaces.
pub(crate) fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            sa.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    out.dedup();
    Ok(out)
}

/// The effective uid of the process at the other end of a connected Unix stream socket (Linux
/// SO_PEERCRED, FreeBSD getpeereid(3)).
pub(crate) fn peer_uid(sock: &impl std::os::fd::AsFd) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
            .map(|c| c.uid())
            .map_err(io::Error::from)
    }
    #[cfg(target_os = "freebsd")]
    {
        nix::unistd::getpeereid(sock).map(|(uid, _)| uid.as_raw()).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = sock;
        Err(io::Error::new(io::ErrorKind::Unsupported, "no peer credentials on this system"))
    }
}

/// A descriptor that arrived in an SCM_RIGHTS message (the listener hand-over), owned from now on.
pub(crate) fn owned_received_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed this descriptor in our table for this message (SCM_RIGHTS); it
    // is open and nothing else in the process refers to it (nix returns received descriptors raw).
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_wildcard_are_always_owned() {
        for ip in ["127.0.0.1", "127.0.0.77", "::1", "0.0.0.0", "::"] {
            assert!(owns_address(ip.parse().expect("ip")).expect("check"), "{ip}");
        }
    }

    #[test]
    fn a_test_net_address_nobody_assigned_is_not_owned() {
        assert!(!owns_address("192.0.2.253".parse().expect("ip")).expect("check"));
    }

    #[test]
    fn unknown_users_and_groups_are_named_in_the_error() {
        let e = Privileges::resolve("no-such-user-xyz", None).expect_err("unknown");
        assert_eq!(e, "--user no-such-user-xyz: no such user");
        let e = Privileges::resolve("root", Some("no-such-group-xyz")).expect_err("unknown");
        assert_eq!(e, "--group no-such-group-xyz: no such group");
        assert_eq!(Privileges::resolve("0", None).expect("root").uid, 0);
    }
}
