//! The client's `--redirect` (Linux): local TCP connections to the storage server's NFS port are sent
//! to the client's own listener by an nftables DNAT rule, so NFS clients that skip the mount's
//! `port=` (Fedora 42+ opens its later connections straight to the server's port 2049) still go
//! through the tunnel. This replaces the blog's hand-made
//! `iptables -t nat -A OUTPUT -d VIP -p tcp --dport 2049 -j DNAT --to-destination 127.0.0.1:2323`
//! and the start-up script that kept it alive.
//!
//! The rules live in a table of their own, named after the listener they point at
//! (`inet nfs_tls_proxy_127_0_0_1_2323`), so two clients on one host never touch each other's rules
//! and a table left by a crashed run is the one the next run replaces. Nothing else in the host's
//! ruleset is read or changed.
//!
//! Why the `nft` program and not a netlink library: the pure-Rust nf_tables crates are either
//! GPL-3.0 (rustables; this project is MIT/Apache-2.0), need the C libraries libnftnl and libmnl
//! (nftnl, which would break the static musl build), or are at 0.1 (nf_tables); the `nftables`
//! crate runs `nft` itself. `nft -f -` applies a whole file as one kernel transaction, so the table
//! is replaced atomically (no moment without the rule, no half-made table), and `nft list table`
//! shows the operator exactly what we installed. The cost is a runtime dependency on `nft`
//! (Debian/Fedora package `nftables`), which the start-up error names when it is missing.
//!
//! A leaf: nothing from the rest of the crate is imported.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// One DNAT rule: TCP to `from` goes to `to` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Why the redirect could not be installed, checked or removed; one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("--redirect: the nft program was not found (install the nftables package): {0}")]
    NoNft(std::io::Error),
    #[error("--redirect: nft {action} table inet {table} failed: {detail}")]
    Nft { action: &'static str, table: String, detail: String },
}

/// The client's table of redirect rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) rules: Vec<Rule>,
}

impl Table {
    /// The rules for `redirect`, each towards the first of `listen` of its IP version (an unspecified
    /// listen address stands for the loopback address). None if a redirect has no such listener.
    pub(crate) fn new(redirect: &[SocketAddr], listen: &[SocketAddr]) -> Option<Self> {
        // No --redirect: no table at all (a client without it needs neither nft nor CAP_NET_ADMIN).
        if redirect.is_empty() {
            return None;
        }
        let target = |from: &SocketAddr| {
            let mut to = *listen.iter().find(|l| l.is_ipv4() == from.is_ipv4())?;
            if to.ip().is_unspecified() {
                to.set_ip(if to.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            Some(to)
        };
        let rules: Option<Vec<Rule>> =
            redirect.iter().map(|from| Some(Rule { from: *from, to: target(from)? })).collect();
        let name = table_name(*listen.first()?);
        Some(Self { name, rules: rules? })
    }

    /// The nft script that replaces our table (if any) by one with exactly our rules, as one
    /// transaction: declaring the table first makes the delete succeed when there was none.
    pub(crate) fn script(&self) -> String {
        let mut s = format!(
            "table inet {name} {{}}\ndelete table inet {name}\ntable inet {name} {{\n  chain output {{\n    \
             type nat hook output priority -100; policy accept;\n",
            name = self.name
        );
        for r in &self.rules {
            let (fam, to) = match r.to {
                SocketAddr::V4(to) => ("ip", to.to_string()),
                SocketAddr::V6(to) => ("ip6", format!("[{}]:{}", to.ip(), to.port())),
            };
            let daddr = if r.from.is_ipv4() { "ip" } else { "ip6" };
            s.push_str(&format!(
                "    {daddr} daddr {} tcp dport {} dnat {fam} to {to} comment \"nfs-tls-proxy --redirect {}\"\n",
                r.from.ip(),
                r.from.port(),
                r.from
            ));
        }
        s.push_str("  }\n}\n");
        s
    }

    /// Installs the table, replacing a stale one of the same name.
    pub(crate) fn install(&self) -> Result<(), RedirectError> {
        nft(&["-f", "-"], Some(&self.script())).map(|_| ()).map_err(|e| e.about("install", &self.name))
    }

    /// Whether the kernel would take the table, without changing anything (`nft -c`: needs the same
    /// privileges as installing it).
    pub(crate) fn dry_run(&self) -> Result<(), RedirectError> {
        nft(&["-c", "-f", "-"], Some(&self.script())).map(|_| ()).map_err(|e| e.about("check", &self.name))
    }

    /// The rules that are not in place now (all of them when the table is gone).
    pub(crate) fn missing(&self) -> Result<Vec<Rule>, RedirectError> {
        let listed = match nft(&["-j", "list", "table", "inet", &self.name], None) {
            Ok(json) => json,
            Err(Failure::Failed(detail)) if detail.contains("No such file or directory") => {
                return Ok(self.rules.clone())
            }
            Err(e) => return Err(e.about("list", &self.name)),
        };
        let present = dnat_rules(&listed);
        Ok(self.rules.iter().filter(|r| !present.contains(r)).copied().collect())
    }

    /// Removes the table; a table that is already gone is not an error.
    pub(crate) fn remove(&self) -> Result<(), RedirectError> {
        match nft(&["delete", "table", "inet", &self.name], None) {
            Ok(_) => Ok(()),
            Err(Failure::Failed(detail)) if detail.contains("No such file or directory") => Ok(()),
            Err(e) => Err(e.about("delete", &self.name)),
        }
    }
}

/// `nfs_tls_proxy_` and the listener's address with every other character as `_`.
fn table_name(listen: SocketAddr) -> String {
    let addr: String = format!("{}_{}", listen.ip(), listen.port())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("nfs_tls_proxy_{addr}")
}

enum Failure {
    NotFound(std::io::Error),
    Failed(String),
}

impl Failure {
    fn about(self, action: &'static str, table: &str) -> RedirectError {
        match self {
            Self::NotFound(e) => RedirectError::NoNft(e),
            Self::Failed(detail) => {
                RedirectError::Nft { action, table: table.to_owned(), detail: explain(&detail) }
            }
        }
    }
}

/// nft's own error, on one line, with the likely cause named.
fn explain(stderr: &str) -> String {
    let first = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output").to_owned();
    if stderr.contains("Operation not permitted") {
        format!("{first} (needs root or CAP_NET_ADMIN)")
    } else if stderr.contains("Protocol not supported")
        || stderr.contains("Could not process rule: No such file")
    {
        format!("{first} (is the kernel's nf_tables / nft_nat support available?)")
    } else {
        first
    }
}

/// Runs `nft ARGS` (feeding `input` on stdin); its stdout, or what went wrong.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, Failure> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Failure::NotFound)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A failed write shows up as nft's own error below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Failure::Failed(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Failure::Failed(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// The `daddr X tcp dport P dnat to Y:Q` rules in `nft -j list table` output.
fn dnat_rules(json: &str) -> Vec<Rule> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let items = doc.get("nftables").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|item| {
            let expr = item.get("rule")?.get("expr")?.as_array()?;
            let (mut daddr, mut dport, mut to) = (None, None, None);
            for e in expr {
                if let Some(m) = e.get("match") {
                    let field =
                        m.get("left")?.get("payload").and_then(|p| p.get("field")).and_then(|f| f.as_str());
                    match (field, m.get("right")) {
                        (Some("daddr"), Some(v)) => daddr = v.as_str().and_then(|a| a.parse().ok()),
                        (Some("dport"), Some(v)) => dport = v.as_u64().and_then(|p| u16::try_from(p).ok()),
                        _ => {}
                    }
                } else if let Some(d) = e.get("dnat") {
                    let addr: std::net::IpAddr = d.get("addr")?.as_str()?.parse().ok()?;
                    let port = u16::try_from(d.get("port")?.as_u64()?).ok()?;
                    to = Some(SocketAddr::new(addr, port));
                }
            }
            Some(Rule { from: SocketAddr::new(daddr?, dport?), to: to? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn each_redirect_points_at_the_first_listener_of_its_ip_version() {
        let t = Table::new(
            &[a("192.0.2.138:2049"), a("[2001:db8::138]:2049")],
            &[a("127.0.0.1:2323"), a("0.0.0.0:2049"), a("[::]:2323")],
        )
        .expect("table");
        assert_eq!(t.name, "nfs_tls_proxy_127_0_0_1_2323");
        assert_eq!(
            t.rules,
            [
                Rule { from: a("192.0.2.138:2049"), to: a("127.0.0.1:2323") },
                Rule { from: a("[2001:db8::138]:2049"), to: a("[::1]:2323") },
            ]
        );
        assert!(Table::new(&[a("[2001:db8::138]:2049")], &[a("127.0.0.1:2323")]).is_none());
    }

    #[test]
    fn a_client_without_redirect_has_no_table_and_needs_no_nft() {
        assert!(Table::new(&[], &[a("127.0.0.1:2323")]).is_none());
    }

    #[test]
    fn the_script_replaces_the_table_in_one_go() {
        let t = Table::new(
            &[a("192.0.2.138:2049"), a("[2001:db8::138]:2049")],
            &[a("127.0.0.1:2323"), a("[::1]:2323")],
        )
        .expect("table");
        let s = t.script();
        assert!(s.starts_with(
            "table inet nfs_tls_proxy_127_0_0_1_2323 {}\ndelete table inet nfs_tls_proxy_127_0_0_1_2323\n"
        ));
        assert!(s.contains("type nat hook output priority -100; policy accept;"));
        assert!(s.contains("ip daddr 192.0.2.138 tcp dport 2049 dnat ip to 127.0.0.1:2323"));
        assert!(s.contains("ip6 daddr 2001:db8::138 tcp dport 2049 dnat ip6 to [::1]:2323"));
    }

    #[test]
    fn listed_rules_are_read_back_from_nft_json() {
        // `nft -j list table` output of nftables 1.0.6 for the table above.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "nfs_tls_proxy_x", "handle": 2}},
          {"chain": {"family": "inet", "table": "nfs_tls_proxy_x", "name": "output", "handle": 1, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "nfs_tls_proxy_x", "chain": "output", "handle": 2, "comment": "c", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.138"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2049}},
            {"dnat": {"family": "ip", "addr": "127.0.0.1", "port": 2323}}]}},
          {"rule": {"family": "inet", "table": "nfs_tls_proxy_x", "chain": "output", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8::138"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2049}},
            {"dnat": {"family": "ip6", "addr": "::1", "port": 2323}}]}}]}"#;
        assert_eq!(
            dnat_rules(json),
            [
                Rule { from: a("192.0.2.138:2049"), to: a("127.0.0.1:2323") },
                Rule { from: a("[2001:db8::138]:2049"), to: a("[::1]:2323") },
            ]
        );
        assert!(dnat_rules("not json").is_empty());
    }
}
