//! `nfs-tls-proxy manual`: every page renders with man(1) and carries its sections; the refusal
//! words and the metrics on the pages are the ones the code logs and registers; the options show
//! their defaults; and the completions complete flags in real bash, fish and zsh.
//!
//! Needs man-db (with groff-base), bash, fish and zsh: `apt-get install man-db fish zsh`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

/// The tunnel pages (and the overview) carry every section an operator looks for.
const FULL: &[&str] = &[
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "CONFIGURATION FILE",
    "SIGNALS",
    "FILES",
    "EXIT STATUS",
    "REFUSAL REASONS",
    "METRICS",
    "EXAMPLES",
    "SEE ALSO",
];
/// The one-shot commands carry what applies to them.
const HELPER: &[&str] =
    &["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"];
const CA_TOOL: &[&str] = &[
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "COMMANDS",
    "OPTIONS",
    "FILES",
    "EXIT STATUS",
    "EXAMPLES",
    "SEE ALSO",
];

fn pages() -> Vec<(&'static str, Vec<&'static str>)> {
    let with = |extra: &[&'static str]| HELPER.iter().chain(extra).copied().collect::<Vec<_>>();
    vec![
        ("nfs-tls-proxy", FULL.iter().chain(&["COMMANDS"]).copied().collect()),
        ("nfs-tls-proxy-server", FULL.to_vec()),
        ("nfs-tls-proxy-client", FULL.to_vec()),
        ("nfs-tls-proxy-check", with(&["CONFIGURATION FILE", "FILES"])),
        ("nfs-tls-proxy-reload", with(&["SIGNALS", "FILES"])),
        ("nfs-tls-proxy-convert-stunnel", with(&[])),
        ("nfs-tls-proxy-demo", with(&[])),
        ("nfs-tls-proxy-manual", with(&["FILES"])),
        ("ca-tool", CA_TOOL.to_vec()),
    ]
}

/// `nfs-tls-proxy manual --out DIR`, into a fresh directory.
fn generate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy"))
        .args(["manual", "--out"])
        .arg(dir.path())
        .output()
        .expect("run nfs-tls-proxy manual");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// A page as man(1) shows it (plain text, wide, no hyphenation surprises); groff's warnings fail.
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8")
        .env("MAN_KEEP_FORMATTING", "")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "man -l {}: {stderr}", page.display());
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The lines of one section of a rendered page (up to the next heading).
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != heading);
    lines.next();
    lines.take_while(|l| l.is_empty() || l.starts_with(' ')).collect()
}

fn source(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn man_renders_every_page_and_each_has_its_sections() {
    if !support::require("man") {
        return;
    }
    let dir = generate();
    let mut written: Vec<String> = std::fs::read_dir(dir.path().join("man"))
        .expect("man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = pages().iter().map(|(p, _)| format!("{p}.1")).collect();
    expected.sort();
    assert_eq!(written, expected, "the pages manual writes (pkg-plist and the RPM list them)");
    for (page, headings) in pages() {
        let text = render(&dir.path().join(format!("man/{page}.1")));
        for heading in headings {
            assert!(text.lines().any(|l| l == heading), "{page}.1 has no {heading} section:\n{text}");
            assert!(
                section(&text, heading).iter().any(|l| !l.trim().is_empty()),
                "{page}.1: {heading} is empty"
            );
        }
    }
}

#[test]
fn the_refusal_reasons_on_the_pages_are_the_words_refuse_rs_logs() {
    if !support::require("man") {
        return;
    }
    let refuse = source("src/tunnel/refuse.rs");
    let words: Vec<&str> = refuse
        .lines()
        .filter(|l| l.trim_start().starts_with("Self::") && l.contains("=> \""))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(words.len() > 15, "the words of RefuseReason::word: {words:?}");
    let dir = generate();
    for page in ["nfs-tls-proxy", "nfs-tls-proxy-server", "nfs-tls-proxy-client"] {
        let text = render(&dir.path().join(format!("man/{page}.1")));
        let table = section(&text, "REFUSAL REASONS");
        let items: Vec<&str> = table
            .iter()
            .filter(|l| l.starts_with("       ") && !l.starts_with("        "))
            .map(|l| l.trim())
            .collect();
        for word in &words {
            assert!(items.contains(word), "{page}.1: refusal reason {word} is not in the table: {items:?}");
        }
    }
}

#[test]
fn the_metrics_on_the_pages_are_the_ones_metrics_rs_registers() {
    if !support::require("man") {
        return;
    }
    let metrics = source("src/metrics.rs");
    let documented: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|row| row.split('`').next())
        .collect();
    let registered: Vec<&str> =
        metrics.split("registry.register(").skip(1).filter_map(|call| call.split('"').nth(1)).collect();
    assert!(registered.len() >= 10, "register calls: {registered:?}");
    let dir = generate();
    for page in ["nfs-tls-proxy", "nfs-tls-proxy-server", "nfs-tls-proxy-client"] {
        let text = render(&dir.path().join(format!("man/{page}.1"))).replace('\u{2010}', "-");
        let table = section(&text, "METRICS").join("\n");
        for name in &documented {
            assert!(table.contains(name), "{page}.1: {name} (metrics.rs's table) is not under METRICS");
        }
        for name in &registered {
            let full = format!("nfs_tls_proxy_{name}");
            assert!(table.contains(&full), "{page}.1: registered metric {full} is not under METRICS");
        }
    }
}

#[test]
fn every_option_of_the_tunnel_modes_is_on_its_page_with_the_default_start_up_applies() {
    if !support::require("man") {
        return;
    }
    let dir = generate();
    let mut cli = nfs_tls_proxy::config::Cli::command();
    cli.build();
    for mode in ["server", "client"] {
        let text = render(&dir.path().join(format!("man/nfs-tls-proxy-{mode}.1")));
        let options = section(&text, "OPTIONS").join("\n");
        let sub = cli.find_subcommand(mode).expect("mode");
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let long = arg.get_long().expect("long flag");
            assert!(options.contains(&format!("--{long}")), "{mode}: --{long} is not under OPTIONS");
        }
    }
    // The defaults that are applied when the flags are resolved, not by clap.
    let server = render(&dir.path().join("man/nfs-tls-proxy-server.1"));
    let client = render(&dir.path().join("man/nfs-tls-proxy-client.1"));
    for (text, flag, default) in [
        (&server, "--handshake-timeout DURATION", "Default: 10s."),
        (&server, "--connect-timeout DURATION", "Default: 5s."),
        (&server, "--max-connections N", "Default: 1024."),
        (&server, "--keepalive DURATION|off", "Default: 60s."),
        (&server, "--drain-timeout DURATION", "Default: 5s."),
        (&server, "--rpc-tls on|off", "Default: on."),
        (&server, "--log-format FORMAT", "Default: text."),
        (&server, "--listen ADDR", "Required, as a flag or in the configuration file."),
        (&client, "--upstream-protocol tls|rpc-tls", "Default: tls."),
        (&client, "--listen ADDR", "127.0.0.1:2323"),
    ] {
        let options = section(text, "OPTIONS");
        let at = options.iter().position(|l| l.trim() == flag).unwrap_or_else(|| panic!("{flag} not found"));
        let body: String = options[at + 1..]
            .iter()
            .take_while(|l| l.starts_with("          "))
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(body.contains(default), "{flag}: {default:?} not in {body:?}");
    }
}

/// What bash's programmable completion offers for `line` (the cursor at its end), with the
/// completion file for the line's program sourced, as bash-completion would load it.
fn bash_complete(file: &Path, line: &str) -> Vec<String> {
    let script = r#"
        source "$FILE" || exit 1
        program=${LINE%% *}
        fn=$(complete -p "$program" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        [ -n "$fn" ] || { echo "no completion function for $program" >&2; exit 1; }
        COMP_LINE=$LINE
        COMP_POINT=${#COMP_LINE}
        read -r -a COMP_WORDS <<<"$COMP_LINE"
        case $COMP_LINE in *' ') COMP_WORDS+=("") ;; esac
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        "$fn" "$program" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .env("FILE", file)
        .env("LINE", line)
        .output()
        .expect("run bash");
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn completions(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join("completions").join(name);
    assert!(path.is_file(), "{} not written", path.display());
    path
}

#[test]
fn bash_completes_flags_of_subcommands_of_both_hyphenated_binaries() {
    let dir = generate();
    let proxy = completions(dir.path(), "nfs-tls-proxy.bash");
    let ca = completions(dir.path(), "ca-tool.bash");
    for (file, line, want) in [
        (&proxy, "nfs-tls-proxy server --log-f", vec!["--log-format"]),
        (&proxy, "nfs-tls-proxy cli", vec!["client"]),
        (&proxy, "nfs-tls-proxy client --upstream-protocol ", vec!["tls", "rpc-tls"]),
        (&proxy, "nfs-tls-proxy convert-stunnel --serv", vec!["--service"]),
        (&proxy, "nfs-tls-proxy reload --pid", vec!["--pid-file"]),
        (&ca, "ca-tool iss", vec!["issue"]),
        (&ca, "ca-tool issue r0 --comb", vec!["--combined"]),
        (&ca, "ca-tool revoke r0 --ser", vec!["--serial"]),
    ] {
        let offered = bash_complete(file, line);
        for w in want {
            assert!(offered.iter().any(|o| o == w), "{line}<TAB>: {w} not offered, got {offered:?}");
        }
    }
}

#[test]
fn fish_completes_flags_of_subcommands() {
    if !support::require("fish") {
        return;
    }
    let dir = generate();
    for (file, line, want) in [
        ("nfs-tls-proxy.fish", "nfs-tls-proxy server --log-f", "--log-format"),
        ("nfs-tls-proxy.fish", "nfs-tls-proxy client --upstream-pro", "--upstream-protocol"),
        ("ca-tool.fish", "ca-tool iss", "issue"),
        ("ca-tool.fish", "ca-tool issue r0 --comb", "--combined"),
    ] {
        let out = Command::new("fish")
            .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .arg(completions(dir.path(), file))
            .arg(line)
            .output()
            .expect("run fish");
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(
            offered.lines().any(|l| l.split('\t').next() == Some(want)),
            "fish, {line}<TAB>: {want} not offered: {offered}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn zsh_completion_scripts_parse_and_define_the_subcommand_flags() {
    if !support::require("zsh") {
        return;
    }
    let dir = generate();
    for (file, flag) in [("_nfs-tls-proxy", "--log-format"), ("_ca-tool", "--combined")] {
        let path = completions(dir.path(), file);
        let out = Command::new("zsh").arg("-n").arg(&path).output().expect("run zsh");
        assert!(out.status.success(), "zsh -n {file}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(&format!("#compdef {}", &file[1..])), "{file}: no #compdef line");
        assert!(text.contains(flag), "{file}: {flag} missing");
    }
}
