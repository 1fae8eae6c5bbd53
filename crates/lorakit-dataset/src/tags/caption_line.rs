//! A caption file's text split into the first line (the tags sd-scripts reads)
//! and the rest, which is kept exactly as it was.

/// Splits `text` at its first line break (`\n`, `\r\n` or a lone `\r`, as
/// Python's universal newlines). The second part starts with that line break,
/// so `first + rest == text` and line endings survive a rewrite untouched.
pub fn split_first_line(text: &str) -> (&str, &str) {
    match text.find(['\n', '\r']) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    }
}

/// The tags of a caption line: split on `,`, trimmed, empty ones dropped.
pub fn split_tags(line: &str) -> Vec<String> {
    line.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// Joins tags the way lorakit writes them: `a, b, c`.
pub fn join_tags(tags: &[String]) -> String {
    tags.join(", ")
}

/// Collapses every run of whitespace to one space and trims the ends.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_keeps_the_line_break_with_the_rest() {
        assert_eq!(split_first_line("a, b\r\nmore\r\n"), ("a, b", "\r\nmore\r\n"));
        assert_eq!(split_first_line("a\rb"), ("a", "\rb"));
        assert_eq!(split_first_line("a, b"), ("a, b", ""));
        assert_eq!(split_first_line(""), ("", ""));
    }

    #[test]
    fn tags_are_trimmed_and_empties_dropped() {
        assert_eq!(split_tags(" a ,, b c ,"), vec!["a", "b c"]);
        assert_eq!(join_tags(&split_tags("a,b")), "a, b");
    }
}
