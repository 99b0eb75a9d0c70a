//! `nfs-tls-proxy convert-stunnel FILE`: a stunnel.conf (global options and one `\[service\]` section) into the
//! equivalent TOML configuration, one comment per translated line. Weak settings are warned about in
//! the output and on stderr; options that cannot be translated are errors naming their line.

use std::fmt::Write as _;
use std::path::Path;

/// The translation, and what was weak about the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Converted {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// One `key = value` of the file, with where it came from.
#[derive(Debug, Clone)]
struct Opt {
    line: usize,
    key: String,
    value: String,
    text: String,
}

/// Translates `text` (the contents of `path`). `service` picks one `[section]` when there are several.
pub(crate) fn convert(text: &str, path: &Path, service: Option<&str>) -> Result<Converted, Vec<String>> {
    let file = path.display().to_string();
    let mut errors = Vec::new();
    let err = |line: usize, msg: String| format!("{file}:{line}: {msg}");
    // Parse: global options, then sections.
    let mut global = Vec::new();
    let mut sections: Vec<(String, usize, Vec<Opt>)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), line, Vec::new()));
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            errors.push(err(line, format!("{t:?} is not `option = value`")));
            continue;
        };
        let opt = Opt { line, key: k.trim().to_owned(), value: v.trim().to_owned(), text: t.to_owned() };
        match sections.last_mut() {
            Some((_, _, opts)) => opts.push(opt),
            None => global.push(opt),
        }
    }
    let chosen = match (service, sections.len()) {
        (Some(name), _) => match sections.iter().find(|(n, _, _)| n == name) {
            Some(s) => Some(s.clone()),
            None => {
                errors.push(format!("{file}: no [{name}] section"));
                None
            }
        },
        (None, 0) => None,
        (None, 1) => Some(sections[0].clone()),
        (None, _) => {
            let names: Vec<&str> = sections.iter().map(|(n, _, _)| n.as_str()).collect();
            errors.push(err(
                sections[1].1,
                format!("several services ({}); one proxy runs one: pick with --service", names.join(", ")),
            ));
            None
        }
    };
    let mut opts = global;
    if let Some((_, _, section_opts)) = &chosen {
        opts.extend(section_opts.iter().cloned());
    }
    let client = opts
        .iter()
        .rev()
        .find(|o| o.key.eq_ignore_ascii_case("client"))
        .is_some_and(|o| o.value.eq_ignore_ascii_case("yes"));

    let mut t = Translation::default();
    for o in &opts {
        if let Err(msg) = t.option(o, client) {
            errors.push(err(o.line, msg));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(t.finish(&file, chosen.map(|(n, _, _)| n), client))
}

/// The output being built.
#[derive(Debug, Default)]
struct Translation {
    /// (key, TOML value, comment)
    keys: Vec<(String, String, String)>,
    /// Repeatable keys (listen, server, allow-cn): values in order, and their comments.
    lists: Vec<(String, Vec<String>, Vec<String>)>,
    notes: Vec<String>,
    warnings: Vec<String>,
    has_allow: bool,
    verify_seen: Option<usize>,
    /// The `verify` level given (stunnel's default is 0: no verification at all).
    verify_level: Option<String>,
    /// A client's `connect` lines: each host becomes a name the server certificate must carry.
    connects: Vec<Opt>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl Translation {
    fn set(&mut self, key: &str, value: String, o: &Opt) {
        let comment = format!("line {}: {}", o.line, o.text);
        self.keys.retain(|(k, _, _)| k != key);
        self.keys.push((key.to_owned(), value, comment));
    }

    fn push(&mut self, key: &str, value: &str, o: &Opt) {
        let comment = format!("line {}: {}", o.line, o.text);
        match self.lists.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, values, comments)) => {
                values.push(quote(value));
                comments.push(comment);
            }
            None => self.lists.push((key.to_owned(), vec![quote(value)], vec![comment])),
        }
    }

    fn note(&mut self, o: &Opt, why: &str) {
        self.notes.push(format!("line {}: {} -- {why}", o.line, o.text));
    }

    fn warn(&mut self, o: &Opt, why: String) {
        self.warnings.push(format!("line {}: {}: {why}", o.line, o.text));
    }

    fn option(&mut self, o: &Opt, client: bool) -> Result<(), String> {
        let yes = || o.value.eq_ignore_ascii_case("yes");
        match o.key.as_str() {
            "client" => self.note(o, if client { "client mode" } else { "server mode" }),
            "accept" => {
                let addr = accept_addr(&o.value).ok_or_else(|| format!("accept = {}: not a port or address:port", o.value))?;
                self.push("listen", &addr, o);
            }
            "connect" => {
                if client {
                    self.push("server", &o.value, o);
                    self.connects.push(o.clone());
                } else if self.keys.iter().any(|(k, _, _)| k == "backend") {
                    return Err("a second connect: the server forwards to one backend".into());
                } else {
                    self.set("backend", quote(&o.value), o);
                }
            }
            "cert" => self.set("cert", quote(&o.value), o),
            "key" => self.set("key", quote(&o.value), o),
            "CAfile" => self.set("ca", quote(&o.value), o),
            "CRLfile" if client => {
                return Err("CRLfile on a client: checking the server's certificate against a CRL is not supported".into())
            }
            "CRLfile" => self.set("crl", quote(&o.value), o),
            "CApath" | "CRLpath" => {
                return Err(format!("{}: hashed certificate directories are not supported; give one PEM file", o.key))
            }
            "verify" => match o.value.as_str() {
                "2" if client => {
                    self.verify_seen = Some(o.line);
                    self.verify_level = Some(o.value.clone());
                    self.note(o, "nfs-tls-proxy always verifies the server's chain, and its name too");
                }
                "2" => {
                    self.verify_seen = Some(o.line);
                    self.note(o, "nfs-tls-proxy always verifies the peer's chain");
                }
                "0" | "1" => {
                    self.verify_seen = Some(o.line);
                    self.verify_level = Some(o.value.clone());
                    self.warn(o, "stunnel did not require a verified peer certificate here; nfs-tls-proxy always does".into());
                }
                "3" | "4" => return Err(format!("verify = {}: pinning certificates is not supported; use allow-cn", o.value)),
                v => return Err(format!("verify = {v}: expected 0 to 4")),
            },
            "verifyChain" if yes() => self.note(o, "always on"),
            "verifyChain" => self.warn(o, "stunnel skipped chain verification; nfs-tls-proxy always verifies".into()),
            "verifyPeer" if yes() => {
                return Err("verifyPeer = yes: pinning the peer certificate is not supported; use allow-cn".into())
            }
            "verifyPeer" => self.note(o, "off, as here"),
            "requireCert" if yes() => self.note(o, "always on: a client without a certificate is refused"),
            "requireCert" => self.warn(o, "stunnel admitted clients without a certificate; nfs-tls-proxy never does".into()),
            "checkHost" | "checkIP" if client => self.set("server-name", quote(&o.value), o),
            "checkHost" => {
                self.has_allow = true;
                self.push("allow-cn", &o.value, o);
            }
            "sslVersionMin" | "sslVersion" => match o.value.as_str() {
                "TLSv1.3" => self.set("min-tls", quote("1.3"), o),
                "TLSv1.2" => {
                    self.set("min-tls", quote("1.2"), o);
                    self.warn(o, "TLS 1.2 is allowed; the default (and RFC 9289) is 1.3".into());
                }
                "all" | "TLSv1" | "TLSv1.1" | "SSLv3" => {
                    self.set("min-tls", quote("1.2"), o);
                    self.warn(o, "TLS below 1.2 is weak and not supported; translated to 1.2".into());
                }
                v => return Err(format!("{}: unknown version {v:?}", o.key)),
            },
            "sslVersionMax" => self.note(o, "not needed: the highest common version is used"),
            "TIMEOUTconnect" => {
                let secs: u64 = o.value.parse().map_err(|_| format!("TIMEOUTconnect = {}: not seconds", o.value))?;
                self.set("connect-timeout", quote(&format!("{secs}s")), o);
            }
            "TIMEOUTidle" => self.warn(
                o,
                "not translated: NFS connections are idle legitimately; TCP keepalive (keepalive, default 60s) finds dead peers".into(),
            ),
            "TIMEOUTclose" => self.note(o, "not needed"),
            "setuid" => self.set("user", quote(&o.value), o),
            "setgid" => self.set("group", quote(&o.value), o),
            "pid" => self.note(o, "not needed: runs in the foreground under rc.d (daemon -p) or systemd"),
            "foreground" => self.note(o, "always in the foreground; logs go to stderr"),
            "debug" => {
                let level = o.value.rsplit('.').next().unwrap_or(&o.value).to_ascii_lowercase();
                let ours = match level.as_str() {
                    "0" | "1" | "2" | "3" | "emerg" | "alert" | "crit" | "err" => "error",
                    "4" | "warning" => "warn",
                    "5" | "6" | "notice" | "info" => "info",
                    "7" | "debug" => "debug",
                    _ => return Err(format!("debug = {}: unknown level", o.value)),
                };
                self.set("log-level", quote(ours), o);
            }
            other => return Err(format!("{other}: no nfs-tls-proxy equivalent; remove it or translate it by hand")),
        }
        Ok(())
    }

    fn finish(mut self, file: &str, service: Option<String>, client: bool) -> Converted {
        if !client && !self.has_allow {
            let line = self.verify_seen.map(|l| format!("line {l}: ")).unwrap_or_default();
            self.warnings.push(format!(
                "{line}no checkHost/allow-list: any certificate the CA ever signed is admitted (stunnel's verify = 2); add allow-cn = [\"r0\", ...]"
            ));
        }
        if client && !self.keys.iter().any(|(k, _, _)| k == "server-name") {
            let verify = self.verify_level.clone().unwrap_or_else(|| "0".into());
            for o in std::mem::take(&mut self.connects) {
                let host = connect_host(&o.value);
                self.warn(&o, name_check_warning(&host, &verify));
            }
        }
        let mode = if client { "client" } else { "server" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Converted from {file}{} by nfs-tls-proxy convert-stunnel.",
            service.map(|s| format!(" [{s}]")).unwrap_or_default()
        );
        let _ = writeln!(out, "# Run: nfs-tls-proxy {mode} --config THIS_FILE   (check first: nfs-tls-proxy check --config THIS_FILE)");
        for w in &self.warnings {
            let _ = writeln!(out, "# WARNING {w}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "# {n}");
        }
        out.push('\n');
        for (key, values, comments) in &self.lists {
            for c in comments {
                let _ = writeln!(out, "# {c}");
            }
            let _ = writeln!(out, "{key} = [{}]", values.join(", "));
        }
        for (key, value, comment) in &self.keys {
            let _ = writeln!(out, "{key} = {value}   # {comment}");
        }
        Converted { toml: out, warnings: self.warnings }
    }
}

/// The host of a `connect` value (`host:port`, `[v6]:port`, `v6:port`), as the client's server name.
fn connect_host(v: &str) -> String {
    if let Ok(addr) = v.parse::<std::net::SocketAddr>() {
        return addr.ip().to_string();
    }
    let host = v.rsplit_once(':').map_or(v, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// The name check a client adds where stunnel had none: what the server certificate must carry, and
/// how to see and fix it. stunnel's `verify = 2` checks the chain only; `checkHost`/`checkIP` would
/// have checked a name. The blog's `openssl x509 -req` server certificates have no SANs at all.
fn name_check_warning(host: &str, verify: &str) -> String {
    let (san, flag) = match host.parse::<std::net::IpAddr>() {
        Ok(_) => (format!("an IP subjectAltName {host} (IP:{host})"), format!("--ip {host}")),
        Err(_) => (format!("a DNS subjectAltName {host} (DNS:{host})"), format!("--dns {host}")),
    };
    format!(
        "nfs-tls-proxy checks the server's name, which stunnel (verify = {verify}, no checkHost/checkIP) did not: \
         the server certificate must carry {san}, or set server-name to a name it carries; \
         see its names with `ca-tool show SERVER-cert.pem`, and re-issue it under the same CA after `ca-tool import`: \
         `ca-tool issue SERVER --server {flag} --combined` (SERVER: its name in the CA, e.g. f3s-storage-ha)"
    )
}

/// stunnel's `accept`: a port (all addresses), `host:port`, or `*:port`.
fn accept_addr(v: &str) -> Option<String> {
    if let Ok(port) = v.parse::<u16>() {
        return Some(format!("0.0.0.0:{port}"));
    }
    if let Some(port) = v.strip_prefix("*:") {
        return port.parse::<u16>().ok().map(|p| format!("0.0.0.0:{p}"));
    }
    if let Some(port) = v.strip_prefix(":::") {
        return port.parse::<u16>().ok().map(|p| format!("[::]:{p}"));
    }
    v.parse::<std::net::SocketAddr>().ok().map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F3S_SERVER: &str = "\
; /usr/local/etc/stunnel/stunnel.conf on f0 and f1
cert = /usr/local/etc/stunnel/server-cert.pem
key = /usr/local/etc/stunnel/server-key.pem
setuid = stunnel
setgid = stunnel

[nfs-tls]
accept = 192.168.1.138:2323
connect = 127.0.0.1:2049
CAfile = /usr/local/etc/stunnel/ca/ca-cert.pem
verify = 2
requireCert = yes
";

    const F3S_CLIENT: &str = "\
cert = /etc/stunnel/r0-stunnel.pem
CAfile = /etc/stunnel/ca-cert.pem
client = yes
verify = 2

[nfs-ha]
accept = 127.0.0.1:2323
connect = 192.168.1.138:2323
";

    #[test]
    fn the_f3s_server_config_translates_and_warns_about_verify_2_without_an_allow_list() {
        let out = convert(F3S_SERVER, Path::new("stunnel.conf"), None).expect("converts");
        let table: toml::Table = out.toml.parse().expect("valid TOML");
        assert_eq!(table["listen"].as_array().map(|a| a.len()), Some(1));
        assert_eq!(table["backend"].as_str(), Some("127.0.0.1:2049"));
        assert_eq!(table["user"].as_str(), Some("stunnel"));
        assert_eq!(table["ca"].as_str(), Some("/usr/local/etc/stunnel/ca/ca-cert.pem"));
        assert!(out.warnings.iter().any(|w| w.contains("any certificate the CA ever signed")), "{out:?}");
        assert!(out.toml.contains("# line 8: accept = 192.168.1.138:2323"), "{}", out.toml);
    }

    #[test]
    fn the_f3s_client_config_translates_to_a_client() {
        let out = convert(F3S_CLIENT, Path::new("stunnel.conf"), None).expect("converts");
        let table: toml::Table = out.toml.parse().expect("valid TOML");
        assert_eq!(table["server"].as_array().and_then(|a| a[0].as_str()), Some("192.168.1.138:2323"));
        assert_eq!(table["listen"].as_array().and_then(|a| a[0].as_str()), Some("127.0.0.1:2323"));
        assert!(out.toml.contains("nfs-tls-proxy client --config"), "{}", out.toml);
        assert!(!out.warnings.iter().any(|w| w.contains("ever signed")), "clients have no allow-list");
    }

    #[test]
    fn a_client_warns_that_it_adds_a_name_check_stunnels_verify_2_never_made() {
        let out = convert(F3S_CLIENT, Path::new("stunnel.conf"), None).expect("converts");
        let warning = out.warnings.iter().find(|w| w.contains("checks the server's name")).expect("warned");
        assert!(warning.starts_with("line 8: connect = 192.168.1.138:2323:"), "{warning}");
        assert!(warning.contains("verify = 2") && !warning.contains("  "), "{warning}");
        assert!(warning.contains("IP subjectAltName 192.168.1.138 (IP:192.168.1.138)"), "{warning}");
        assert!(warning.contains("`ca-tool show SERVER-cert.pem`"), "{warning}");
        assert!(warning.contains("after `ca-tool import`"), "{warning}");
        assert!(
            warning.contains("`ca-tool issue SERVER --server --ip 192.168.1.138 --combined`"),
            "{warning}"
        );
        // In the file too, as one comment line, so the TOML still parses.
        assert!(out
            .toml
            .lines()
            .any(|l| l.starts_with("# WARNING line 8:") && l.contains("IP:192.168.1.138")));
        assert!(out.toml.parse::<toml::Table>().is_ok(), "{}", out.toml);
    }

    #[test]
    fn a_dns_connect_host_needs_a_dns_san_and_each_connect_line_is_named() {
        let text = "client = yes\nverify = 2\n[nfs]\naccept = 127.0.0.1:2323\nconnect = f3s-storage-ha:2323\nconnect = [fd00::138]:2323\n";
        let out = convert(text, Path::new("s.conf"), None).expect("converts");
        let names: Vec<&String> =
            out.warnings.iter().filter(|w| w.contains("checks the server's name")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains("DNS subjectAltName f3s-storage-ha (DNS:f3s-storage-ha)"), "{}", names[0]);
        assert!(names[0].contains("--server --dns f3s-storage-ha"), "{}", names[0]);
        assert!(names[1].contains("IP:fd00::138") && names[1].contains("--ip fd00::138"), "{}", names[1]);
    }

    #[test]
    fn a_client_with_check_host_or_check_ip_keeps_stunnels_name_check_without_a_warning() {
        for check in ["checkHost = f3s-storage-ha", "checkIP = 192.168.1.138"] {
            let text = format!("{F3S_CLIENT}{check}\n");
            let out = convert(&text, Path::new("s.conf"), None).expect("converts");
            assert!(!out.warnings.iter().any(|w| w.contains("checks the server's name")), "{check}: {out:?}");
            let table: toml::Table = out.toml.parse().expect("valid TOML");
            let want = check.split(" = ").nth(1);
            assert_eq!(table["server-name"].as_str(), want, "{check}");
        }
    }

    #[test]
    fn a_server_adds_no_name_check_warning() {
        let out = convert(F3S_SERVER, Path::new("stunnel.conf"), None).expect("converts");
        assert!(!out.warnings.iter().any(|w| w.contains("checks the server's name")), "{out:?}");
    }

    #[test]
    fn untranslatable_options_are_errors_naming_their_line() {
        let text = "[x]\naccept = 2323\nconnect = 127.0.0.1:2049\nverify = 4\nciphers = ALL\n";
        let errors = convert(text, Path::new("s.conf"), None).expect_err("refused");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("s.conf:4: verify = 4"), "{errors:?}");
        assert!(errors[1].starts_with("s.conf:5: ciphers: no nfs-tls-proxy equivalent"), "{errors:?}");
    }

    #[test]
    fn accept_takes_the_forms_stunnel_does() {
        for (given, want) in [
            ("2323", "0.0.0.0:2323"),
            ("*:2323", "0.0.0.0:2323"),
            (":::2323", "[::]:2323"),
            ("192.168.1.138:2323", "192.168.1.138:2323"),
            ("[::1]:2323", "[::1]:2323"),
        ] {
            assert_eq!(accept_addr(given).as_deref(), Some(want), "{given}");
        }
        assert_eq!(accept_addr("f3s:2323"), None);
    }

    #[test]
    fn old_tls_versions_are_warned_about() {
        let text = "sslVersionMin = TLSv1\n[x]\naccept = 2323\nconnect = 127.0.0.1:2049\ncheckHost = r0\n";
        let out = convert(text, Path::new("s.conf"), None).expect("converts");
        assert!(out.warnings.iter().any(|w| w.contains("below 1.2")), "{out:?}");
        assert!(out.toml.contains("allow-cn = [\"r0\"]"), "{}", out.toml);
    }
}
