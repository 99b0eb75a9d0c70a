//! Roff for man(7) from a small plain-text markup, so the prose of the pages reads as text in
//! `text.rs` and comes out the same under groff (man-db, Linux) and mandoc (FreeBSD).
//!
//! The markup, line by line:
//! - a blank line starts a new paragraph;
//! - `### Title` is a subsection (`.SS`);
//! - `term:: text` is a tagged paragraph (`.TP`) with the term in bold; the text may go on over
//!   lines indented by two spaces;
//! - `- text` is a bullet item, continued the same way;
//! - lines indented by four spaces are a literal block (commands, files), shown as written;
//! - anything else is running text.
//!
//! Inside running text, `` `words` `` are set in bold (flags, commands, files).

/// Escapes text for roff: backslashes, and hyphens as `\-` so that flags and commands copied from
/// the rendered page are ASCII hyphen-minus (groff turns a bare `-` into a Unicode hyphen).
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c => out.push(c),
        }
    }
    out
}

/// A line of running text: escaped, backticked words in bold, and protected from being read as a
/// request when it starts with `.` or `'`.
pub(super) fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("\\fB");
            out.push_str(&escape(part));
            out.push_str("\\fR");
        } else {
            out.push_str(&escape(part));
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// A literal line (in a no-fill block): escaped, never a request.
fn literal(text: &str) -> String {
    let line = escape(text);
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

/// Converts the markup described in the module header to roff.
pub(super) fn markup(text: &str) -> String {
    let mut out = String::new();
    let mut in_literal = false;
    let mut paragraph_open = true; // a section heading has just started one
    for line in text.trim_matches('\n').lines() {
        if let Some(code) = line.strip_prefix("    ") {
            if !in_literal {
                // A blank line before the block, unless it opens the section.
                if !out.is_empty() {
                    out.push_str(".sp\n");
                }
                out.push_str(".RS 4\n.nf\n");
                in_literal = true;
            }
            out.push_str(&literal(code));
            out.push('\n');
            continue;
        }
        if in_literal {
            out.push_str(".fi\n.RE\n");
            in_literal = false;
            paragraph_open = false;
        }
        if line.trim().is_empty() {
            paragraph_open = false;
        } else if let Some(title) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS {}\n", escape(title)));
            paragraph_open = true;
        } else if let Some(rest) = line.strip_prefix("- ") {
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&inline(rest));
            out.push('\n');
            paragraph_open = true;
        } else if let Some((term, rest)) = line.split_once(":: ") {
            out.push_str(".TP\n");
            out.push_str(&format!("\\fB{}\\fR\n", escape(term)));
            out.push_str(&inline(rest));
            out.push('\n');
            paragraph_open = true;
        } else if let Some(more) = line.strip_prefix("  ") {
            out.push_str(&inline(more));
            out.push('\n');
        } else {
            if !paragraph_open {
                out.push_str(".PP\n");
                paragraph_open = true;
            }
            out.push_str(&inline(line));
            out.push('\n');
        }
    }
    if in_literal {
        out.push_str(".fi\n.RE\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyphens_and_backslashes_are_escaped_and_backticks_are_bold() {
        assert_eq!(inline("use `--log-format json` \\o/"), "use \\fB\\-\\-log\\-format json\\fR \\eo/");
    }

    #[test]
    fn a_line_starting_with_a_dot_is_not_a_request() {
        assert_eq!(inline(".reload is written"), "\\&.reload is written");
        assert!(markup("    .hidden").contains("\\&.hidden"));
    }

    #[test]
    fn markup_makes_paragraphs_items_and_literal_blocks() {
        let roff = markup("One.\n\nTwo.\nword:: what\n  more\n- item\n    $ cmd -x\nafter");
        assert_eq!(
            roff,
            "One.\n.PP\nTwo.\n.TP\n\\fBword\\fR\nwhat\nmore\n.IP \\(bu 2\nitem\n.sp\n.RS 4\n.nf\n$ cmd \\-x\n\
             .fi\n.RE\n.PP\nafter\n"
        );
    }
}
