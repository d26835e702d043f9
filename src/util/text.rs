//! Text from outside, made safe to put on one line of a protocol reply, a
//! header or a log: [`printable_ascii`] and [`cut`].

/// At most `max` characters of `s`, each printable ASCII or a space;
/// anything else (controls, line breaks, non-ASCII) becomes `?`. The result
/// is ASCII, so its length in bytes is its length in characters.
pub fn printable_ascii(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_replaces_and_bounds_and_cut_keeps_characters_whole() {
        // (input, limit, printable_ascii, cut): printable_ascii counts
        // characters (a multi-byte one becomes one `?`), cut counts bytes
        // and never splits a character.
        let cases = [
            ("a b\r\nc\u{e9}\t~", 100, "a b??c??~", "a b\r\nc\u{e9}\t~"),
            ("abcdef", 3, "abc", "abc"),
            ("abc", 3, "abc", "abc"),
            ("", 3, "", ""),
            ("\u{1F600}\u{1F600}x", 2, "??", ""),
            ("ab\u{e9}", 3, "ab?", "ab"),
            ("ab\u{e9}", 4, "ab?", "ab\u{e9}"),
            ("abc", 0, "", ""),
        ];
        for (s, max, printable, cutted) in cases {
            assert_eq!(printable_ascii(s, max), printable, "{s:?} {max}");
            assert_eq!(cut(s, max), cutted, "{s:?} {max}");
        }
    }
}
