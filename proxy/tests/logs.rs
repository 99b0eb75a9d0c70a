//! The text log is logfmt, line by line: after `TIME LEVEL target: phrase`, only `key=value` fields,
//! each value a bare token or a quoted string with its quotes escaped. Checked on everything the demo
//! logs (tunnels opened and closed, a refusal with identity and serial, drain).

use std::process::Command;

/// The fields of one line, or why it is not logfmt.
fn fields(line: &str) -> Result<Vec<(String, String)>, String> {
    let (_time, rest) = line.trim_start().split_once(' ').ok_or("no time")?;
    let (level, rest) = rest.trim_start().split_once(' ').ok_or("no level")?;
    if !matches!(level, "INFO" | "WARN" | "ERROR" | "DEBUG" | "TRACE") {
        return Err("no level".into());
    }
    let rest = rest.trim_start();
    let (_target, rest) = rest.split_once(": ").ok_or("no target")?;
    // The phrase ends where the first `key=` starts.
    let start = rest
        .match_indices(' ')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].split_once('=').is_some_and(|(k, _)| is_key(k)))
        .unwrap_or(rest.len());
    let mut s = &rest[start.min(rest.len())..];
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, after) = s.split_once('=').ok_or_else(|| format!("no '=' in {s:?}"))?;
        if !is_key(key) {
            return Err(format!("bad key {key:?}"));
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let close = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map(|(i, _)| i)
                .ok_or_else(|| format!("unterminated quote in {after:?}"))?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let v = &after[..end];
            if v.is_empty() || v.contains('"') {
                return Err(format!("bad bare value {v:?}"));
            }
            (v.to_owned(), &after[end..])
        };
        out.push((key.to_owned(), value));
        s = match after.strip_prefix(' ') {
            Some(next) => next,
            None if after.is_empty() => "",
            None => return Err(format!("no space after a value: {after:?}")),
        };
    }
    Ok(out)
}

fn is_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn every_line_the_demo_logs_parses_as_logfmt() {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy")).arg("demo").output().expect("demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    let mut checked = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let fields = fields(line).unwrap_or_else(|e| panic!("not logfmt ({e}): {line}"));
        checked += 1;
        if line.contains("connection refused") && line.contains("reason=\"unknown-ca\"") {
            let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert!(
                keys.contains(&"reason") && keys.contains(&"identity") && keys.contains(&"serial"),
                "{line}"
            );
        }
    }
    assert!(checked >= 8, "too few lines: {log}");
    assert!(log.contains("reason=\"unknown-ca\""), "{log}");
}

#[test]
fn the_logfmt_reader_of_this_test_refuses_what_is_not_logfmt() {
    assert!(fields("2026-12-07T00:00:00Z  INFO x: phrase a=1 b=\"two words\"").is_ok());
    assert!(fields("2026-12-07T00:00:00Z  INFO x: phrase end=error: read: reset").is_err());
    assert!(fields("2026-12-07T00:00:00Z  INFO x: phrase a=\"unterminated").is_err());
}
