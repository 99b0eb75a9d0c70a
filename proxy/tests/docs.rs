//! The docs cannot rot: every `nfs-tls-proxy` and `ca-tool` command in the README, the migration
//! guide and the service files is parsed against the real flag definitions, and every TOML example
//! is merged as start-up merges a --config file.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The fenced blocks of `lang` in a Markdown text.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut current {
            None if t == format!("```{lang}") => current = Some(String::new()),
            Some(block) if t.starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Shell words of one command line: comments, redirections and pipes dropped, quotes honoured.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, '>' | '|' | ';') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// Commands of `program` in shell text (continuation lines joined).
fn commands(text: &str, program: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.trim().trim_start_matches("sudo ").trim_start_matches("doas "))
        .filter(|l| l.starts_with(&format!("{program} ")))
        .map(words)
        .collect()
}

fn parse_all(source: &str, text: &str, seen: &mut usize) {
    for argv in commands(text, "nfs-tls-proxy") {
        *seen += 1;
        if let Err(e) = nfs_tls_proxy::config::Cli::command().try_get_matches_from(&argv) {
            panic!("{source}: {argv:?} does not parse:\n{e}");
        }
    }
    for argv in commands(text, "ca-tool") {
        *seen += 1;
        if let Err(e) = ca_tool::cli::Cli::command().try_get_matches_from(&argv) {
            panic!("{source}: {argv:?} does not parse:\n{e}");
        }
    }
}

#[test]
fn every_command_in_the_readme_and_the_migration_guide_parses() {
    let mut seen = 0;
    for doc in ["README.md", "docs/migrating-from-stunnel.md"] {
        for block in blocks(&read(doc), "sh") {
            parse_all(doc, &block, &mut seen);
        }
    }
    assert!(seen >= 15, "only {seen} commands found: is the extraction broken?");
}

#[test]
fn the_service_files_run_commands_that_parse() {
    let mut seen = 0;
    for unit in ["dist/systemd/nfs-tls-proxy-server.service", "dist/systemd/nfs-tls-proxy-client.service"] {
        let text: String = read(unit)
            .lines()
            .filter_map(|l| l.split_once('=').filter(|(k, _)| k.starts_with("ExecStart")).map(|(_, v)| v))
            .map(|cmd| format!("{}\n", cmd.trim_start_matches("/usr/local/bin/")))
            .collect();
        parse_all(unit, &text, &mut seen);
    }
    assert_eq!(seen, 4);
    let rc =
        std::process::Command::new("sh").arg("-n").arg(root().join("dist/freebsd/nfs_tls_proxy")).status();
    assert!(rc.expect("sh").success(), "the rc.d script is not valid sh");
}

#[test]
fn every_toml_example_is_a_configuration_start_up_accepts() {
    let dir = tempfile::tempdir().expect("dir");
    let mut seen = 0;
    for doc in ["README.md", "docs/migrating-from-stunnel.md"] {
        for (i, block) in blocks(&read(doc), "toml").into_iter().enumerate() {
            let table: toml::Table = block.parse().unwrap_or_else(|e| panic!("{doc} toml block {i}: {e}"));
            let mode = if table.contains_key("backend") { "server" } else { "client" };
            let file = dir.path().join(format!("{i}.toml"));
            std::fs::write(&file, &block).expect("write");
            let argv = ["nfs-tls-proxy", mode, "--config", file.to_str().expect("utf8")];
            if let Err(e) = nfs_tls_proxy::config::parse_args(argv.iter().map(Into::into).collect()) {
                panic!("{doc} toml block {i} ({mode}):\n{block}\n{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "only {seen} TOML examples found");
}
