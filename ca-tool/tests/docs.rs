//! The certificate docs cannot rot: every `ca-tool` command in a `sh` block of
//! docs/certificates.md and docs/migrating-from-stunnel.md parses against the real flags
//! (proxy/tests/docs.rs does the same for the proxy's commands and the README).

use std::path::Path;

use clap::CommandFactory;

/// `ca-tool` command lines in the `sh` blocks of a Markdown text, continuation lines joined.
fn ca_tool_commands(text: &str) -> Vec<Vec<String>> {
    let mut in_sh = false;
    let mut sh = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
        } else if in_sh {
            sh.push_str(line);
            sh.push('\n');
        }
    }
    sh.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ca-tool "))
        .map(|l| {
            // Plain words: these docs quote only with double quotes, and never redirect ca-tool.
            let mut words = Vec::new();
            let mut word = String::new();
            let mut quoted = false;
            for c in l.chars() {
                match c {
                    '"' => quoted = !quoted,
                    '#' if !quoted && word.is_empty() => break,
                    c if c.is_whitespace() && !quoted => {
                        if !word.is_empty() {
                            words.push(std::mem::take(&mut word));
                        }
                    }
                    c => word.push(c),
                }
            }
            if !word.is_empty() {
                words.push(word);
            }
            words
        })
        .collect()
}

#[test]
fn every_ca_tool_command_in_the_certificate_docs_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = 0;
    for doc in ["docs/certificates.md", "docs/migrating-from-stunnel.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for argv in ca_tool_commands(&text) {
            seen += 1;
            if let Err(e) = ca_tool::cli::Cli::command().try_get_matches_from(&argv) {
                panic!("{doc}: {argv:?} does not parse:\n{e}");
            }
        }
    }
    assert!(seen >= 25, "only {seen} commands found: is the extraction broken?");
}
