//! Logs go to stderr through tracing, as logfmt text or JSON lines. Text lines are valid logfmt:
//! `TIME LEVEL target: phrase key=value ...`, where every value with a space, a quote or an `=` is
//! quoted (so `end="error: read: Connection reset by peer"` parses as one value).

use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::debug_fn;
use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber; a second call (tests, demo) is a no-op.
pub(crate) fn init(args: &LogArgs) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&args.log_level).map_err(|e| format!("--log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match args.log_format {
        LogFormat::Text => builder
            .fmt_fields(
                debug_fn(|w, field, value| {
                    let text = format!("{value:?}");
                    if field.name() == "message" {
                        w.write_str(&text)
                    } else {
                        write!(w, "{}={}", field.name(), logfmt_value(&text))
                    }
                })
                .delimited(" "),
            )
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// A value as logfmt wants it: bare when it is one plain token, else quoted with `"`, `\\` and
/// control characters escaped. A value tracing already quoted (a `&str` field, shown with Debug, so
/// every inner quote escaped) is kept as it is; anything else that merely looks quoted (a Display
/// value such as a certificate's CN `"x" reason="accepted"`) is quoted again, so a peer cannot forge
/// fields.
fn logfmt_value(text: &str) -> String {
    if is_escaped_string(text)
        || (!text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '='))
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `text` is one quoted string whose inner quotes and backslashes are all escaped (what
/// Debug makes of a `&str`), and holds no raw control character.
fn is_escaped_string(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else { return false };
    let mut escaped = false;
    for c in inner.chars() {
        if c.is_control() {
            return false;
        }
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            _ => escaped = false,
        }
    }
    !escaped
}

#[cfg(test)]
mod tests {
    use super::logfmt_value;

    #[test]
    fn values_with_spaces_quotes_or_equals_are_quoted_and_tokens_are_not() {
        for (raw, want) in [
            ("closed", "closed"),
            ("127.0.0.1:2049", "127.0.0.1:2049"),
            ("error: read: Connection reset by peer", "\"error: read: Connection reset by peer\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("\"already quoted\"", "\"already quoted\""),
            ("\"with \\\"escaped\\\" quotes\"", "\"with \\\"escaped\\\" quotes\""),
            // A certificate CN that tries to forge a field is quoted and escaped.
            ("\"x\" reason=\"accepted\"", "\"\\\"x\\\" reason=\\\"accepted\\\"\""),
            ("a\rb", "\"a\\rb\""),
            ("", "\"\""),
        ] {
            assert_eq!(logfmt_value(raw), want, "{raw}");
        }
    }
}
