//! A1111-style attention weights in captions, parsed exactly as sd-scripts does for
//! `--weighted_captions` (`TokenizeStrategy._get_weighted_input_ids.parse_prompt_attention`,
//! spec §6.2): `(x)` multiplies x's weight by 1.1, `[x]` by 1/1.1, `(x:w)` by w; brackets nest
//! and multiply; `\(`, `\)`, `\[`, `\]`, `\\` are literal characters. There is no `BREAK`
//! keyword in sd-scripts (it stays plain text).
//!
//! The scanner below reproduces sd-scripts' regex alternation
//! `\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:` token by token,
//! including its corner cases, because every one of them changes which words get which weight:
//! - a lone backslash becomes an empty piece (the backslash disappears);
//! - an unmatched `)` or `]` is literal text; unclosed `(` / `[` apply 1.1 / 1/1.1 to the rest,
//!   all round ones first, then the square ones (the order decides the last bits of the f64);
//! - `:w)` closes the innermost `(` even inside `[…]`, and is literal text when no `(` is open;
//! - `\d` is Python's Unicode `\d` (`Nd`, Unicode 14.0 as in Python 3.11), and the weight is
//!   read as Python's `float()` reads it, so `(x:１.５)` is 1.5;
//! - adjacent pieces whose weights are exactly equal are merged; an empty result is `[("", 1.0)]`.
//!
//! Weights are f64 products in sd-scripts' order, so merges and values are bit-identical; they
//! become f32 only per token (see `lorakit_models::clip_tokenizer`), as `torch.tensor` does.

use std::fmt;

/// sd-scripts' `round_bracket_multiplier`.
const ROUND: f64 = 1.1;

/// A weight sd-scripts' `float()` would reject (`(x:1.2.3)`, `(x:.)`): training stops there
/// with a `ValueError`, so this is an error too, naming the caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptWeightError {
    /// The whole caption.
    pub text: String,
    /// The weight as written (between `:` and `)`).
    pub weight: String,
}

impl fmt::Display for PromptWeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "caption {:?}: `:{})` is not a number; write the weight like `(word:1.2)`, or escape the bracket as `\\)`",
            self.text,
            crate::caption::escape_controls(&self.weight)
        )
    }
}

impl std::error::Error for PromptWeightError {}

/// The caption as (text, weight) pieces in order; see the module docs for the syntax.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<(String, f64)>, PromptWeightError> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let square_multiplier = 1.0 / ROUND;
    let multiply = |res: &mut [(String, f64)], start: usize, m: f64| {
        for piece in &mut res[start..] {
            piece.1 *= m;
        }
    };

    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let consumed = match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(e @ ('(' | ')' | '[' | ']' | '\\')) => {
                        res.push((e.to_string(), 1.0));
                        2
                    }
                    _ => {
                        res.push((String::new(), 1.0));
                        1
                    }
                }
            }
            '(' => {
                round.push(res.len());
                1
            }
            '[' => {
                square.push(res.len());
                1
            }
            ':' => match explicit_weight(&rest[1..]) {
                Some(weight) => {
                    let len = 1 + weight.len() + 1;
                    match round.pop() {
                        Some(start) => {
                            let w = python_float(weight)
                                .ok_or_else(|| PromptWeightError { text: text.into(), weight: weight.into() })?;
                            multiply(&mut res, start, w);
                        }
                        None => res.push((rest[..len].to_string(), 1.0)),
                    }
                    len
                }
                None => {
                    res.push((":".into(), 1.0));
                    1
                }
            },
            ')' => {
                match round.pop() {
                    Some(start) => multiply(&mut res, start, ROUND),
                    None => res.push((")".into(), 1.0)),
                }
                1
            }
            ']' => {
                match square.pop() {
                    Some(start) => multiply(&mut res, start, square_multiplier),
                    None => res.push(("]".into(), 1.0)),
                }
                1
            }
            _ => {
                let end = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                res.push((rest[..end].to_string(), 1.0));
                end
            }
        };
        rest = &rest[consumed..];
    }
    for start in round {
        multiply(&mut res, start, ROUND);
    }
    for start in square {
        multiply(&mut res, start, square_multiplier);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (piece, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&piece),
            _ => merged.push((piece, weight)),
        }
    }
    Ok(merged)
}

/// After a `:`, the text of `[+-]?[.\d]+` when a `)` follows it (regex backtracking cannot
/// find a shorter match: the run would then be followed by a digit or dot, not `)`).
fn explicit_weight(after_colon: &str) -> Option<&str> {
    let sign = usize::from(after_colon.starts_with(['+', '-']));
    let run: usize =
        after_colon[sign..].chars().take_while(|&c| c == '.' || decimal_digit(c).is_some()).map(char::len_utf8).sum();
    (run > 0 && after_colon[sign + run..].starts_with(')')).then(|| &after_colon[..sign + run])
}

/// Python's `float()` of a `[+-]?[.\d]+` string: Unicode decimal digits read as ASCII ones,
/// then the usual decimal syntax (at most one dot, at least one digit), correctly rounded.
fn python_float(s: &str) -> Option<f64> {
    let ascii: String = s.chars().map(|c| decimal_digit(c).map_or(c, |d| char::from(b'0' + d))).collect();
    let digits = ascii.trim_start_matches(['+', '-']);
    if digits.matches('.').count() > 1 || !digits.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    ascii.parse().ok()
}

/// The first code point of every run of ten Unicode decimal digits (`Nd`) in Unicode 14.0,
/// Python 3.11's database (`tools/reference/weighted_captions_fixture.py` checks the list).
/// Newer Unicode versions add digits Python does not know, so Rust's tables are not used.
pub const UNICODE_14_DIGIT_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6, 0xe50, 0xed0,
    0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90, 0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620,
    0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10, 0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0,
    0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60,
    0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
];

/// The value of `c` if it is a decimal digit (Python's `\d` / `unicodedata.decimal`).
fn decimal_digit(c: char) -> Option<u8> {
    let cp = u32::from(c);
    let i = UNICODE_14_DIGIT_ZEROS.partition_point(|&zero| zero <= cp);
    let zero = *UNICODE_14_DIGIT_ZEROS.get(i.checked_sub(1)?)?;
    (cp - zero < 10).then(|| (cp - zero) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text).unwrap()
    }

    fn p(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    #[test]
    fn sd_scripts_docstring_examples() {
        assert_eq!(parse("normal text"), p(&[("normal text", 1.0)]));
        assert_eq!(parse("an (important) word"), p(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)]));
        assert_eq!(parse("(unbalanced"), p(&[("unbalanced", 1.1)]));
        assert_eq!(parse(r"\(literal\]"), p(&[("(literal]", 1.0)]));
        assert_eq!(parse("(unnecessary)(parens)"), p(&[("unnecessaryparens", 1.1)]));
        assert_eq!(
            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            p(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn corner_cases() {
        assert_eq!(parse(""), p(&[("", 1.0)]));
        assert_eq!(parse("()"), p(&[("", 1.0)]));
        assert_eq!(parse(r"a\b"), p(&[("ab", 1.0)]));
        assert_eq!(parse("a:1.5) b"), p(&[("a:1.5) b", 1.0)]));
        assert_eq!(parse("(x:１.５)"), p(&[("x", 1.5)]));
    }

    #[test]
    fn bad_weight_names_the_caption() {
        let err = parse_prompt_attention("a, (b:1.2.3), c").unwrap_err();
        assert_eq!(err.weight, "1.2.3");
        assert!(err.to_string().contains("a, (b:1.2.3), c"), "{err}");
        assert!(parse_prompt_attention("(b:.)").is_err());
        // Without an open `(`, sd-scripts never calls float(): literal text.
        assert_eq!(parse("b:1.2.3)"), p(&[("b:1.2.3)", 1.0)]));
    }

    #[test]
    fn digit_table_is_runs_of_ten() {
        assert!(UNICODE_14_DIGIT_ZEROS.windows(2).all(|w| w[1] >= w[0] + 10));
        assert_eq!(decimal_digit('7'), Some(7));
        assert_eq!(decimal_digit('\u{669}'), Some(9));
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(decimal_digit('\u{11f50}'), None, "Kawi digits are Unicode 15, unknown to Python 3.11");
    }
}
