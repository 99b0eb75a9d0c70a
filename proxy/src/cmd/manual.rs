//! `nfs-tls-proxy manual --out DIR`: the man pages of `nfs-tls-proxy` (an overview and one page per
//! command, as git and systemd do: `man nfs-tls-proxy-server` lands on the flags of the mode being
//! run) and of `ca-tool`, and bash/zsh/fish completions for both binaries.
//!
//! What can drift is generated: names, synopses and options (with their defaults, see [`options`])
//! from the clap definitions, the metrics from the registry itself, the CA's file names from
//! `ca_tool`. The prose is in [`text`]; the refusal words there are checked against
//! `RefuseReason::word` by a test.

mod options;
mod roff;
mod text;

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use self::options::Defaults;
use self::roff::{escape, inline, markup};
use crate::config::Cli;

/// The section headings, as the tests look for them in the rendered pages.
pub(crate) mod heading {
    pub(crate) const DESCRIPTION: &str = "DESCRIPTION";
    pub(crate) const COMMANDS: &str = "COMMANDS";
    pub(crate) const OPTIONS: &str = "OPTIONS";
    pub(crate) const CONFIGURATION: &str = "CONFIGURATION FILE";
    pub(crate) const SIGNALS: &str = "SIGNALS";
    pub(crate) const FILES: &str = "FILES";
    pub(crate) const EXIT_STATUS: &str = "EXIT STATUS";
    pub(crate) const REFUSALS: &str = "REFUSAL REASONS";
    pub(crate) const METRICS: &str = "METRICS";
    pub(crate) const EXAMPLES: &str = "EXAMPLES";
    pub(crate) const SEE_ALSO: &str = "SEE ALSO";
}

/// Writes `DIR/man/*.1` and `DIR/completions/` (NAME.bash, _NAME, NAME.fish for both binaries).
pub(crate) fn write(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("{}: cannot create", man.display()))?;
    for page in pages()? {
        let path = man.join(format!("{}.1", page.name));
        std::fs::write(&path, page.render()).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("{}: cannot create", completions.display()))?;
    for (bin, cmd) in [("nfs-tls-proxy", Cli::command()), ("ca-tool", ca_tool::cli::Cli::command())] {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let path = completions.join(clap_complete::Generator::file_name(&shell, bin));
            std::fs::write(&path, completion(shell, cmd.clone(), bin))
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

/// One shell's completion script for `bin`.
///
/// clap_complete's bash generator (up to 4.6.12, the newest; clap-rs/clap#6421, #6529, fix not
/// merged) spells a subcommand's state two ways when the binary name has a hyphen: the loop over
/// the words sets `cmd="nfs__tls__proxy__subcmd__server"` (the name's `-` as `__`), while the case
/// labels that hold the subcommand's flags come from the whole path with every `-` as `__subcmd__`
/// (`nfs__subcmd__tls__subcmd__proxy__subcmd__server`). No label ever matches, so only subcommand
/// names complete. The labels are rewritten to the loop's spelling here; once clap_complete spells
/// them alike the rewrite finds nothing to do, and proxy/tests/manual.rs runs bash on the result.
/// (The dynamic `CompleteEnv` engine has neither problem but is behind clap_complete's
/// `unstable-dynamic` feature and makes every TAB run the binary; the static scripts stay.)
fn completion(shell: clap_complete::Shell, mut cmd: clap::Command, bin: &str) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut buf);
    let script = String::from_utf8_lossy(&buf).into_owned();
    if shell != clap_complete::Shell::Bash || !bin.contains('-') {
        return script;
    }
    const SEP: &str = "__subcmd__";
    let label = format!("{}{SEP}", bin.replace('-', SEP));
    let state = format!("{}{SEP}", bin.replace('-', "__"));
    script.replace(&label, &state)
}

/// One man page: its file name (without `.1`), the one-line summary and the sections after NAME.
struct Page {
    name: String,
    summary: String,
    sections: Vec<(&'static str, String)>,
}

impl Page {
    fn render(&self) -> String {
        let mut out = format!(
            ".TH \"{}\" \"1\" \"\" \"nfs-tls-proxy {}\" \"User Commands\"\n",
            escape(&self.name.to_uppercase()),
            env!("CARGO_PKG_VERSION")
        );
        // No hyphenation (it would split flags and file names), ragged right.
        out.push_str(".nh\n.ad l\n");
        out.push_str(&format!(".SH NAME\n{} \\- {}\n", escape(&self.name), inline(&self.summary)));
        for (title, body) in &self.sections {
            out.push_str(&format!(".SH \"{title}\"\n"));
            out.push_str(body);
            if !body.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// The first sentence of a clap about text, for NAME (lower case first letter, no final dot).
fn summary(cmd: &clap::Command) -> String {
    let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
    let first = about.split(". ").next().unwrap_or_default().trim_end_matches('.');
    let mut chars = first.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// A synopsis: one line per form, each `words` in bold and then the given option headings.
fn synopsis(forms: &[(String, Vec<String>)]) -> String {
    let lines: Vec<String> = forms
        .iter()
        .map(|(words, args)| {
            let mut line = format!("\\fB{}\\fR", escape(words));
            for a in args {
                line.push(' ');
                line.push_str(a);
            }
            line
        })
        .collect();
    format!("{}\n", lines.join("\n.br\n"))
}

/// The headings of `cmd`'s clap-required and positional arguments, then `[OPTION]...`.
fn usage_args(cmd: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && (a.is_required_set() || a.is_positional()))
        .map(|a| if a.is_required_set() { options::heading(a) } else { format!("[{}]", options::heading(a)) })
        .collect();
    out.push("[\\fIOPTION\\fR]...".to_owned());
    out
}

fn see_also(pages: &[&str]) -> String {
    let refs: Vec<String> = pages
        .iter()
        .map(|p| match p.rsplit_once('(') {
            Some((name, section)) => format!("\\fB{}\\fR({section}", escape(name)),
            None => format!("\\fB{}\\fR(1)", escape(p)),
        })
        .collect();
    format!("{}\n", refs.join(",\n"))
}

/// The refusal words, each with its meaning.
fn refusals() -> String {
    let mut out = markup(text::REFUSALS_INTRO);
    for (word, meaning) in text::REFUSALS {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", escape(word), inline(meaning)));
    }
    out
}

/// The metrics `metrics.rs` registers (name and help text, from its `registry.register` calls) with
/// their type and labels from the table in its module documentation.
fn metrics() -> String {
    let mut out = markup(text::METRICS_INTRO);
    for metric in registered_metrics() {
        let mut heading = format!("\\fB{}\\fR ({}", escape(&metric.name), metric.kind);
        if metric.labels != "-" && !metric.labels.starts_with("- ") {
            heading.push_str(&format!("; labels: {}", inline(&metric.labels)));
        }
        heading.push(')');
        out.push_str(&format!(".TP\n{heading}\n{}\n", inline(&metric.help)));
    }
    out
}

/// One metric as the pages show it.
#[derive(Debug)]
struct Metric {
    /// As scraped (counters with `_total`).
    name: String,
    kind: String,
    labels: String,
    help: String,
}

fn registered_metrics() -> Vec<Metric> {
    const SOURCE: &str = include_str!("../metrics.rs");
    let rows: Vec<Vec<String>> = SOURCE
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .map(|row| row.split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect())
        .collect();
    SOURCE
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| {
            let mut strings = call.split('"').skip(1).step_by(2);
            let (name, help) = (strings.next()?, strings.next()?);
            let full = format!("nfs_tls_proxy_{name}");
            let row = rows.iter().find(|r| r[0] == full || r[0] == format!("{full}_total"));
            Some(Metric {
                name: row.map_or(full, |r| r[0].clone()),
                kind: row.and_then(|r| r.get(1)).cloned().unwrap_or_else(|| "untyped".to_owned()),
                labels: row.and_then(|r| r.get(2)).cloned().unwrap_or_else(|| "-".to_owned()),
                help: help.to_owned(),
            })
        })
        .collect()
}

fn all_pages() -> Vec<&'static str> {
    vec![
        "nfs-tls-proxy-server",
        "nfs-tls-proxy-client",
        "nfs-tls-proxy-check",
        "nfs-tls-proxy-reload",
        "nfs-tls-proxy-convert-stunnel",
        "nfs-tls-proxy-demo",
        "nfs-tls-proxy-manual",
        "ca-tool",
    ]
}

/// Every page `manual` writes.
fn pages() -> anyhow::Result<Vec<Page>> {
    let mut cli = Cli::command();
    cli.build();
    let sub = |name: &str| cli.find_subcommand(name).cloned().context("subcommand exists");
    let mut pages = vec![overview(&cli)?];
    for mode in ["server", "client"] {
        pages.push(tunnel_page(&sub(mode)?)?);
    }
    let helpers: [(&str, &str, &str, &[&str]); 5] = [
        ("check", text::CHECK, text::EXAMPLES_CHECK, &["nfs-tls-proxy-server", "nfs-tls-proxy-client"]),
        ("reload", text::RELOAD, text::EXAMPLES_RELOAD, &["nfs-tls-proxy-server", "nfs-tls-proxy-client"]),
        ("convert-stunnel", text::CONVERT, text::EXAMPLES_CONVERT, &["stunnel(8)"]),
        ("demo", text::DEMO, text::EXAMPLES_DEMO, &[]),
        ("manual", text::MANUAL, text::EXAMPLES_MANUAL, &["man(1)"]),
    ];
    for (name, description, examples, related) in helpers {
        let cmd = sub(name)?;
        let mut sections = vec![
            ("SYNOPSIS", synopsis(&[(format!("nfs-tls-proxy {name}"), usage_args(&cmd))])),
            (heading::DESCRIPTION, markup(description)),
            (heading::OPTIONS, options::render(&cmd, &Defaults::none())),
        ];
        match name {
            "check" => {
                sections.push((heading::CONFIGURATION, markup(text::CONFIGURATION)));
                sections.push((heading::FILES, markup(text::FILES)));
            }
            "reload" => {
                sections.push((heading::SIGNALS, markup(text::SIGNALS)));
                sections.push((heading::FILES, markup(text::FILES)));
            }
            "manual" => sections.push((heading::FILES, markup(text::MANUAL_FILES))),
            _ => {}
        }
        sections.push((heading::EXIT_STATUS, markup(text::EXIT_STATUS_PROXY)));
        sections.push((heading::EXAMPLES, markup(examples)));
        let mut see = vec!["nfs-tls-proxy"];
        see.extend(related);
        sections.push((heading::SEE_ALSO, see_also(&see)));
        pages.push(Page { name: format!("nfs-tls-proxy-{name}"), summary: summary(&cmd), sections });
    }
    pages.push(ca_tool_page());
    Ok(pages)
}

/// The sections every tunnel page (and the overview) carries after OPTIONS.
fn operating_sections(examples: String) -> Vec<(&'static str, String)> {
    let mut configuration = markup(text::CONFIGURATION);
    configuration.push_str(&markup(text::CONFIGURATION_SERVER));
    configuration.push_str(".PP\n");
    configuration.push_str(&markup(text::CONFIGURATION_CLIENT));
    vec![
        (heading::CONFIGURATION, configuration),
        (heading::SIGNALS, markup(text::SIGNALS)),
        (heading::FILES, markup(text::FILES)),
        (heading::EXIT_STATUS, markup(text::EXIT_STATUS_PROXY)),
        (heading::REFUSALS, refusals()),
        (heading::METRICS, metrics()),
        (heading::EXAMPLES, examples),
    ]
}

const SEE_ALSO_TUNNEL: &[&str] = &[
    "ca-tool",
    "stunnel(8)",
    "nfs(5)",
    "mount_nfs(8)",
    "tlshd(8)",
    "rpc.tlsclntd(8)",
    "carp(4)",
    "daemon(8)",
    "rc.conf(5)",
    "systemd.service(5)",
];

fn overview(cli: &clap::Command) -> anyhow::Result<Page> {
    let subcommands: Vec<&clap::Command> =
        cli.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").collect();
    let forms: Vec<(String, Vec<String>)> =
        subcommands.iter().map(|c| (format!("nfs-tls-proxy {}", c.get_name()), usage_args(c))).collect();
    let mut commands = String::new();
    for c in &subcommands {
        let about = c.get_about().map(ToString::to_string).unwrap_or_default();
        commands.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{} See \\fBnfs\\-tls\\-proxy\\-{}\\fR(1).\n",
            escape(c.get_name()),
            inline(&options::sentence(&about)),
            escape(c.get_name())
        ));
    }
    // The options both tunnel modes take, once; each command's page lists all of its own.
    let server = cli.find_subcommand("server").context("server exists")?;
    let client = cli.find_subcommand("client").context("client exists")?;
    let mut shared = clap::Command::new("shared");
    for arg in server.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && client.get_arguments().any(|a| a.get_id() == arg.get_id()) {
            shared = shared.arg(arg.clone());
        }
    }
    let mut opts = options::render(cli, &Defaults::none());
    opts.push_str(".SS \"Options of both server and client\"\n");
    opts.push_str(&options::render(&shared, &Defaults::of("server")?));
    let mut examples = markup(text::EXAMPLES_SERVER);
    examples.push_str(".PP\n");
    examples.push_str(&markup(text::EXAMPLES_CLIENT));
    let mut sections = vec![
        ("SYNOPSIS", synopsis(&forms)),
        (heading::DESCRIPTION, markup(text::OVERVIEW)),
        (heading::COMMANDS, commands),
        (heading::OPTIONS, opts),
    ];
    sections.extend(operating_sections(examples));
    let mut see = all_pages();
    see.extend(&SEE_ALSO_TUNNEL[1..]);
    sections.push((heading::SEE_ALSO, see_also(&see)));
    Ok(Page { name: "nfs-tls-proxy".to_owned(), summary: summary(cli), sections })
}

fn tunnel_page(cmd: &clap::Command) -> anyhow::Result<Page> {
    let mode = cmd.get_name();
    let (required, description, examples) = match mode {
        "server" => (options::SERVER_REQUIRED, text::SERVER, text::EXAMPLES_SERVER),
        _ => (options::CLIENT_REQUIRED, text::CLIENT, text::EXAMPLES_CLIENT),
    };
    let by_long = |long: &str| cmd.get_arguments().find(|a| a.get_long() == Some(long)).map(options::heading);
    let mut flags: Vec<String> = required.iter().filter_map(|l| by_long(l)).collect();
    flags.push("[\\fIOPTION\\fR]...".to_owned());
    let config = vec![by_long("config").unwrap_or_default(), "[\\fIOPTION\\fR]...".to_owned()];
    let words = format!("nfs-tls-proxy {mode}");
    let mut options_text = markup(
        "Every option can also be a key of the `--config` file (see CONFIGURATION FILE); the required ones \
         must come from one or the other.",
    );
    options_text.push_str(&options::render(cmd, &Defaults::of(mode)?));
    let mut sections = vec![
        ("SYNOPSIS", synopsis(&[(words.clone(), flags), (words, config)])),
        (heading::DESCRIPTION, markup(description)),
        (heading::OPTIONS, options_text),
    ];
    sections.extend(operating_sections(markup(examples)));
    let other = if mode == "server" { "nfs-tls-proxy-client" } else { "nfs-tls-proxy-server" };
    let mut see = vec!["nfs-tls-proxy", other, "nfs-tls-proxy-check", "nfs-tls-proxy-reload"];
    see.extend(SEE_ALSO_TUNNEL);
    sections.push((heading::SEE_ALSO, see_also(&see)));
    Ok(Page { name: format!("nfs-tls-proxy-{mode}"), summary: summary(cmd), sections })
}

fn ca_tool_page() -> Page {
    let mut cli = ca_tool::cli::Cli::command();
    cli.build();
    let subcommands: Vec<&clap::Command> =
        cli.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").collect();
    let forms: Vec<(String, Vec<String>)> =
        subcommands.iter().map(|c| (format!("ca-tool {}", c.get_name()), usage_args(c))).collect();
    let mut commands = String::new();
    let mut opts = options::render(&cli, &Defaults::none());
    for c in &subcommands {
        let about = c.get_long_about().or(c.get_about()).map(ToString::to_string).unwrap_or_default();
        commands.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            escape(c.get_name()),
            inline(&options::sentence(&about))
        ));
        opts.push_str(&format!(".SS \"ca\\-tool {}\"\n", escape(c.get_name())));
        opts.push_str(&options::render(c, &Defaults::none()));
    }
    use ca_tool::ca;
    let files = format!(
        "The CA directory (`--dir`, default the current directory; mode 0700) holds:\n\
         {}:: The CA certificate: copy it to every host (`--ca`).\n\
         {}:: The CA's private key (0600). It never leaves the directory.\n\
         {}:: The record of every certificate issued, imported, superseded and revoked; the CRL is signed from it.\n\
         {}:: The certificate revocation list (`--crl` on the servers), re-signed by `revoke` and `crl`.\n\
         NAME-cert.pem, NAME-key.pem:: A host's certificate and key (0600); NAME-stunnel.pem both in one file (`--combined`).\n\
         {}:: Held while a command changes the directory.\n\n\
         On the hosts: /usr/local/etc/nfs-tls-proxy/ (FreeBSD) or /etc/nfs-tls-proxy/ (Linux), keys `root:nfs-tls-proxy` mode 0640 \
         (`bundle` writes an INSTALL.txt saying so).\n",
        ca::CA_CERT,
        ca::CA_KEY,
        ca_tool::index::FILE_NAME,
        ca::CRL,
        ca::LOCK
    );
    let sections = vec![
        ("SYNOPSIS", synopsis(&forms)),
        (heading::DESCRIPTION, markup(text::CA_TOOL)),
        (heading::COMMANDS, commands),
        (heading::OPTIONS, opts),
        (heading::FILES, markup(&files)),
        (heading::EXIT_STATUS, markup(text::EXIT_STATUS_CA_TOOL)),
        (heading::EXAMPLES, markup(text::CA_TOOL_EXAMPLES)),
        (
            heading::SEE_ALSO,
            see_also(&[
                "nfs-tls-proxy",
                "nfs-tls-proxy-server",
                "nfs-tls-proxy-client",
                "openssl(1)",
                "stunnel(8)",
            ]),
        ),
    ];
    Page { name: "ca-tool".to_owned(), summary: summary(&cli), sections }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_table_has_exactly_the_words_refuse_rs_logs() {
        let source = include_str!("../tunnel/refuse.rs");
        let mut logged: Vec<&str> = source
            .lines()
            .filter(|l| l.trim_start().starts_with("Self::") && l.contains("=> \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        let mut documented: Vec<&str> = text::REFUSALS.iter().map(|(w, _)| *w).collect();
        logged.sort_unstable();
        documented.sort_unstable();
        assert!(logged.len() > 15, "found the words in refuse.rs: {logged:?}");
        assert_eq!(documented, logged, "text::REFUSALS and RefuseReason::word disagree");
    }

    #[test]
    fn every_registered_metric_has_a_row_in_the_documented_table() {
        let registered = registered_metrics();
        assert!(registered.len() >= 10, "found the register calls: {registered:?}");
        for m in &registered {
            assert_ne!(m.kind, "untyped", "{}: no row in metrics.rs's module table", m.name);
        }
        let section = metrics();
        assert!(
            section.contains("nfs_tls_proxy_tunnels_total\\fR (counter; labels: identity, transport)"),
            "{section}"
        );
    }

    #[test]
    fn the_bash_labels_are_spelled_as_the_loop_sets_them() {
        let script = completion(clap_complete::Shell::Bash, Cli::command(), "nfs-tls-proxy");
        assert!(script.contains("cmd=\"nfs__tls__proxy__subcmd__server\""));
        assert!(script.contains("\n        nfs__tls__proxy__subcmd__server)\n"));
        assert!(!script.contains("nfs__subcmd__tls"));
    }
}
