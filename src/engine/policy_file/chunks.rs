//! The policy file parsed a few hundred rules at a time.
//!
//! The TOML parser builds the whole document before the rules are read
//! from it, at about 38 times the file's size (a 10 MB file with 100,000
//! rules peaked at ~250 MB). Here the text is cut at its `[[rule]]` and
//! `[[sender_rule]]` header lines and parsed in groups of
//! [`TABLES_PER_PART`] tables, so only one group's document is held at a
//! time. The rules come out the same, in the same order.
//!
//! Whenever anything goes wrong in a part, the whole text is parsed as
//! one document instead, so every error is reported exactly as the whole
//! file's parse reports it (line, column, the rule it sits in). A cut in
//! the wrong place (a header-like line inside a multi-line string or an
//! array) always leaves a part that does not parse: the construct it cut
//! is unterminated there, so a wrong cut costs time, never a wrong rule.

use super::build::RawPolicy;

/// Array tables parsed together.
pub(super) const TABLES_PER_PART: usize = 512;

/// Parse policy text into its raw tables.
pub(super) fn parse(text: &str) -> Result<RawPolicy, toml::de::Error> {
    let starts = table_starts(text);
    if starts.len() <= TABLES_PER_PART {
        return toml::from_str(text);
    }
    match by_parts(text, &starts) {
        Some(raw) => Ok(raw),
        None => toml::from_str(text),
    }
}

/// The parts one after the other; `None` when any part does not parse or
/// the parts do not add up to what the whole document says.
fn by_parts(text: &str, starts: &[usize]) -> Option<RawPolicy> {
    let mut raw: RawPolicy = toml::from_str(text.get(..*starts.first()?)?).ok()?;
    // `rule = [ … ]` written inline before `[[rule]]` headers is an error
    // of the whole document (an array cannot be extended by a header):
    // let the whole parse say so.
    if !raw.has_no_tables() {
        return None;
    }
    for (n, group) in starts.chunks(TABLES_PER_PART).enumerate() {
        let start = group[0];
        let end = starts
            .get((n + 1) * TABLES_PER_PART)
            .copied()
            .unwrap_or(text.len());
        let part: RawPolicy = toml::from_str(text.get(start..end)?).ok()?;
        raw.append_tables(part);
    }
    Some(raw)
}

/// The byte offsets of the lines that are `[[rule]]` or `[[sender_rule]]`
/// headers (white space and a trailing comment allowed).
fn table_starts(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if is_array_header(line) {
            out.push(at);
        }
        at += line.len();
    }
    out
}

fn is_array_header(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix("[[") else {
        return false;
    };
    let Some((name, after)) = rest.split_once("]]") else {
        return false;
    };
    let after = after.trim();
    matches!(name.trim(), "rule" | "sender_rule") && (after.is_empty() || after.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines() {
        for yes in [
            "[[rule]]\n",
            "  [[ rule ]]  # partner\r\n",
            "[[sender_rule]]",
        ] {
            assert!(is_array_header(yes), "{yes:?}");
        }
        for no in [
            "[rule]\n",
            "[[rules]]\n",
            "[[rule]] x = 1\n",
            "# [[rule]]\n",
            "reason = \"[[rule]]\"\n",
            "[[rule]\n",
        ] {
            assert!(!is_array_header(no), "{no:?}");
        }
    }

    fn rules(n: usize, reason: impl Fn(usize) -> String) -> String {
        let mut t = String::from("default = \"forced\"\n");
        for i in 0..n {
            t.push_str(&format!(
                "[[rule]]\ndomains = [\"d{i}.example\"]\ntls = \"forced\"\nreason = {}\n",
                reason(i)
            ));
        }
        t
    }

    #[test]
    fn parts_give_the_same_rules_as_the_whole() {
        let text = rules(3 * TABLES_PER_PART + 7, |i| format!("\"r{i}\""));
        let text =
            format!("{text}[[sender_rule]]\nsenders = [\"a@b.example\"]\ntls = \"forced\"\n");
        assert!(by_parts(&text, &table_starts(&text)).is_some());
        let parts = parse(&text).unwrap();
        let whole: RawPolicy = toml::from_str(&text).unwrap();
        assert_eq!(parts.summary(), whole.summary());
        assert_eq!(parts.summary().1, 3 * TABLES_PER_PART + 7);
    }

    #[test]
    fn a_cut_inside_a_multi_line_string_falls_back_to_the_whole() {
        // One rule's reason holds a line that looks like a header: inside
        // a part it does no harm; where it is the cut between two parts,
        // the first part does not parse and the whole text is parsed.
        for (odd, cut_there) in [(3, false), (TABLES_PER_PART - 1, true)] {
            let text = rules(TABLES_PER_PART + 1, |i| {
                if i == odd {
                    "\"\"\"two\n[[rule]]\nlines\"\"\"".to_string()
                } else {
                    format!("\"r{i}\"")
                }
            });
            let starts = table_starts(&text);
            assert_eq!(starts.len(), TABLES_PER_PART + 2);
            assert_eq!(by_parts(&text, &starts).is_none(), cut_there);
            let raw = parse(&text).unwrap();
            let whole: RawPolicy = toml::from_str(&text).unwrap();
            assert_eq!(raw.summary(), whole.summary());
            assert_eq!(raw.summary().1, TABLES_PER_PART + 1);
            assert_eq!(
                raw.summary().3[odd].1.as_deref(),
                Some("two\n[[rule]]\nlines")
            );
        }
    }

    #[test]
    fn errors_are_the_whole_documents() {
        let mut text = rules(2 * TABLES_PER_PART, |i| format!("\"r{i}\""));
        text.push_str("[[rule]]\ndomains = [\"x.example\"]\ntls = \"forced\"\ncolour = 1\n");
        let e = parse(&text).err().unwrap();
        let whole = toml::from_str::<RawPolicy>(&text).err().unwrap();
        assert_eq!(e.to_string(), whole.to_string());
        assert_eq!(e.span(), whole.span());
        // An inline `rule` array before the headers.
        let text = format!(
            "rule = [{{ domains = [\"a.example\"], tls = \"forced\" }}]\n{}",
            rules(TABLES_PER_PART + 1, |i| format!("\"r{i}\""))
                .replace("default = \"forced\"\n", "")
        );
        let e = parse(&text).err().unwrap();
        assert_eq!(
            e.to_string(),
            toml::from_str::<RawPolicy>(&text)
                .err()
                .unwrap()
                .to_string()
        );
    }
}
