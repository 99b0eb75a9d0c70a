//! The OPTIONS of a page, walked from the clap definition (names, value names, help, possible
//! values), each with its default. Most defaults of `server` and `client` are not clap defaults but
//! are applied when the flags are resolved ([`crate::config::Server::resolve`]), so they are taken
//! from a resolved minimal configuration: what the page says is what the proxy does.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Arg, ArgAction};

use super::roff::{escape, inline};
use crate::config::{self, Command, Keepalive, SourcePort, TlsVersion};

/// The flags `server` cannot start without (on the command line or as keys of the `--config` file).
pub(super) const SERVER_REQUIRED: &[&str] = &["listen", "backend", "cert", "ca"];
/// The same for `client`.
pub(super) const CLIENT_REQUIRED: &[&str] = &["server", "cert", "ca"];

/// What an option without a value means, where neither clap nor the resolved configuration has a
/// value to show and the help text does not say.
const UNSET: &[(&str, &str)] = &[
    ("config", "none"),
    ("crl", "none: revocation is not checked"),
    ("allow-cn", "none: every certificate the CA signed is admitted"),
    ("reload-every", "off: only SIGHUP reloads"),
    ("user", "keep running as the user that started the proxy"),
    ("metrics", "off"),
    ("pid-file", "none"),
    ("handover-socket", "off: a restart stops the proxy, then starts it"),
    ("redirect", "none"),
];

/// Defaults by long flag name, per mode.
#[derive(Debug, Default)]
pub(super) struct Defaults {
    values: BTreeMap<String, String>,
    /// Flags the mode cannot start without, from the command line or the `--config` file.
    required: &'static [&'static str],
}

impl Defaults {
    /// For a command without resolved defaults (clap's own and the help text still apply).
    pub(super) fn none() -> Self {
        Self::default()
    }

    /// Resolves a minimal `server` or `client` command line and reads its defaults back.
    pub(super) fn of(mode: &str) -> anyhow::Result<Self> {
        let (argv, required): (&[&str], _) = match mode {
            "server" => (&["--listen", "127.0.0.1:2323", "--backend", "127.0.0.1:2049"], SERVER_REQUIRED),
            _ => (&["--server", "storage:2323"], CLIENT_REQUIRED),
        };
        let args = ["nfs-tls-proxy", mode]
            .iter()
            .chain(argv)
            .chain(&["--cert", "cert.pem", "--ca", "ca.pem"])
            .map(|s| std::ffi::OsString::from(*s))
            .collect();
        let cli = config::parse_args(args).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        let mut map = BTreeMap::new();
        let common = match cli.command {
            Command::Server(args) => {
                let server = config::Server::resolve(&args)?;
                map.insert("rpc-tls", on_off(server.rpc_tls).to_owned());
                map.insert("backend-source-port", source_port(server.backend_source_port));
                server.common
            }
            Command::Client(args) => {
                let client = config::Client::resolve(&args)?;
                let listen: Vec<_> = client.listen.iter().map(ToString::to_string).collect();
                map.insert("listen", listen.join(", "));
                map.insert("upstream-protocol", client.upstream_protocol.word().to_owned());
                map.insert("upstream-source-port", source_port(client.upstream_source_port));
                map.insert("upstream-retry-for", duration(client.upstream_retry_for));
                client.common
            }
            _ => anyhow::bail!("{mode}: not a tunnel mode"),
        };
        let min_tls = match common.min_tls {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        };
        map.insert("min-tls", min_tls.to_owned());
        map.insert("handshake-timeout", duration(common.handshake_timeout));
        map.insert("connect-timeout", duration(common.connect_timeout));
        map.insert("max-connections", common.max_connections.to_string());
        let keepalive = match common.keepalive {
            Keepalive::Off => "off".to_owned(),
            Keepalive::After(d) => duration(d),
        };
        map.insert("keepalive", keepalive);
        map.insert("drain-timeout", duration(common.drain_timeout));
        Ok(Self { values: map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(), required })
    }

    /// The sentence stating `arg`'s default, or None when its help text already says it, it is a
    /// plain on/off flag (off unless given), or it is required.
    pub(super) fn statement(&self, arg: &Arg) -> Option<String> {
        if !arg.get_num_args().is_some_and(|n| n.takes_values()) {
            return None;
        }
        let clap_defaults: Vec<_> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        match clap_defaults.join(" ").as_str() {
            "" => {}
            "." => return Some("Default: `.`, the current directory.".to_owned()),
            value => return Some(format!("Default: `{value}`.")),
        }
        let long = arg.get_long()?;
        let says_default = help(arg).to_lowercase().contains("default");
        if let Some(value) = self.values.get(long) {
            // The help text's own "default 10s" is enough when it names the value start-up applies.
            return (!(says_default && help(arg).contains(value.as_str())))
                .then(|| format!("Default: `{value}`."));
        }
        if says_default {
            return None;
        }
        UNSET.iter().find(|(name, _)| *name == long).map(|(_, what)| format!("Default: {what}."))
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn source_port(port: SourcePort) -> String {
    use clap::ValueEnum;
    port.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// As the flags take them: `10s`, `500ms`.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `text` ending as a sentence does, so that what is appended after it reads as a new one.
pub(super) fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.ends_with(['.', ')', ':', ']']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The help text of an argument, long form when there is one, on one line.
pub(super) fn help(arg: &Arg) -> String {
    let text = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `--listen ADDR`, `-h, --help`, `FILE`: the roff heading of one option.
pub(super) fn heading(arg: &Arg) -> String {
    let values = || {
        arg.get_value_names()
            .map(|names| names.iter().map(|n| format!("\\fI{}\\fR", escape(n))).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| format!("\\fI{}\\fR", escape(&arg.get_id().as_str().to_uppercase())))
    };
    if arg.is_positional() {
        return values();
    }
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("\\fB\\-{short}\\fR"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", escape(long)));
    }
    let mut out = names.join(", ");
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        out.push(' ');
        out.push_str(&values());
        if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
            out.push_str("...");
        }
    }
    out
}

/// The `.TP` entries for the visible arguments of `cmd` (positionals first), in definition order.
pub(super) fn render(cmd: &clap::Command, defaults: &Defaults) -> String {
    let mut out = String::new();
    let args = cmd.get_arguments().filter(|a| !a.is_hide_set());
    let (positionals, flags): (Vec<&Arg>, Vec<&Arg>) = args.partition(|a| a.is_positional());
    for arg in positionals.into_iter().chain(flags) {
        out.push_str(".TP\n");
        out.push_str(&heading(arg));
        out.push('\n');
        let text = sentence(&help(arg));
        let repeatable = text.to_lowercase().contains("repeatable");
        let mut body = vec![text];
        if matches!(arg.get_action(), ArgAction::Append) && !repeatable {
            body.push("Repeatable.".to_owned());
        }
        if arg.is_required_set() {
            body.push("Required.".to_owned());
        } else if arg.get_long().is_some_and(|l| defaults.required.contains(&l)) {
            body.push("Required, as a flag or in the configuration file.".to_owned());
        }
        if let Some(statement) = defaults.statement(arg) {
            body.push(statement);
        }
        out.push_str(&inline(&body.join(" ")));
        out.push('\n');
        let values: Vec<_> = if arg.get_num_args().is_some_and(|n| n.takes_values()) {
            arg.get_possible_values().into_iter().filter(|v| !v.is_hide_set()).collect()
        } else {
            Vec::new()
        };
        if values.iter().any(|v| v.get_help().is_some()) {
            out.push_str(".RS\n");
            for v in &values {
                out.push_str(&format!(".TP\n\\fB{}\\fR\n", escape(v.get_name())));
                let text = v.get_help().map(ToString::to_string).unwrap_or_default();
                out.push_str(&inline(&text));
                out.push('\n');
            }
            out.push_str(".RE\n");
        } else if !values.is_empty() {
            let names: Vec<_> = values.iter().map(|v| format!("`{}`", v.get_name())).collect();
            out.push_str(&inline(&format!("Values: {}.", names.join(", "))));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn sub(name: &str) -> clap::Command {
        let mut cli = crate::config::Cli::command();
        cli.build();
        cli.find_subcommand(name).expect("subcommand").clone()
    }

    #[test]
    fn every_server_and_client_option_states_its_default() {
        for (mode, required) in [("server", SERVER_REQUIRED), ("client", CLIENT_REQUIRED)] {
            let defaults = Defaults::of(mode).expect("resolves");
            for arg in sub(mode).get_arguments().filter(|a| !a.is_hide_set()) {
                let long = arg.get_long().unwrap_or_default();
                let takes_values = arg.get_num_args().is_some_and(|n| n.takes_values());
                let said = defaults.statement(arg).is_some() || help(arg).to_lowercase().contains("default");
                assert!(
                    !takes_values || said || required.contains(&long),
                    "{mode} --{long}: neither clap, the resolved configuration, its help nor UNSET gives a default"
                );
            }
        }
    }

    #[test]
    fn the_required_flags_are_exactly_those_start_up_cannot_do_without() {
        let full = |mode: &'static str| -> Vec<&'static str> {
            let mut argv = vec!["nfs-tls-proxy", mode, "--cert", "c.pem", "--ca", "ca.pem"];
            match mode {
                "server" => argv.extend(["--listen", "127.0.0.1:1", "--backend", "127.0.0.1:2"]),
                _ => argv.extend(["--server", "storage:2323"]),
            }
            argv
        };
        for (mode, required) in [("server", SERVER_REQUIRED), ("client", CLIENT_REQUIRED)] {
            let resolves = |argv: Vec<&str>| {
                let cli =
                    crate::config::parse_args(argv.into_iter().map(Into::into).collect()).expect("parses");
                match cli.command {
                    Command::Server(a) => config::Server::resolve(&a).is_ok(),
                    Command::Client(a) => config::Client::resolve(&a).is_ok(),
                    _ => unreachable!(),
                }
            };
            assert!(resolves(full(mode)), "{mode}: the minimal command line resolves");
            for flag in required {
                let argv = full(mode);
                let at = argv.iter().position(|a| *a == format!("--{flag}")).expect("in argv");
                let without: Vec<_> = argv[..at].iter().chain(&argv[at + 2..]).copied().collect();
                assert!(
                    !resolves(without),
                    "{mode} starts without --{flag}, yet the page says it is required"
                );
            }
        }
    }

    #[test]
    fn durations_are_written_as_the_flags_take_them() {
        assert_eq!(duration(Duration::from_secs(10)), "10s");
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
    }
}
