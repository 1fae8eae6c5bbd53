//! Telling natural-language captions ("a photo of a dog on grass.") from tag
//! captions ("dog, grass, outdoors"), so that operations which would mangle a
//! sentence (remove, sort, dedupe, …) leave such captions alone.
//!
//! The rule, applied to each comma-separated segment of the first line; one
//! matching segment makes the whole caption natural language:
//!
//! 1. the segment has [`MAX_TAG_WORDS`] + 1 (5) or more words: booru tags almost
//!    never do (`looking at viewer` has 3), sentences almost always do;
//! 2. the segment has 3 or more words and ends with `.`, `!` or `?`
//!    (`a dog sleeping.`); tags such as `...`, `!?` or `st. louis` do not;
//! 3. the segment contains a sentence break (`. `, `! ` or `? ` with more text
//!    after it) preceded by at least 2 words (`a dog. it sleeps`); an
//!    abbreviation like `st. louis (azur lane)` has one word before its dot.

/// The most words a segment may have and still be read as a tag.
pub const MAX_TAG_WORDS: usize = 4;

/// Whether a caption line reads like sentences rather than tags (see the module docs).
pub fn is_natural_language(line: &str) -> bool {
    line.split(',').any(segment_is_prose)
}

fn segment_is_prose(segment: &str) -> bool {
    let segment = segment.trim();
    let words = segment.split_whitespace().count();
    if words > MAX_TAG_WORDS {
        return true;
    }
    if words >= 3 && segment.ends_with(['.', '!', '?']) {
        return true;
    }
    has_sentence_break(segment)
}

fn has_sentence_break(segment: &str) -> bool {
    let mut search_from = 0;
    while let Some(offset) = segment[search_from..].find(['.', '!', '?']) {
        let at = search_from + offset;
        let after = &segment[at + 1..];
        let before = &segment[..at];
        if after.starts_with(char::is_whitespace) && !after.trim().is_empty() && before.split_whitespace().count() >= 2
        {
            return true;
        }
        search_from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_not_prose() {
        for line in [
            "",
            "1girl, solo, long hair, looking at viewer",
            "sks, hand on another's shoulder",
            "st. louis (azur lane), ..., !?",
            "sks dog, on grass.",
        ] {
            assert!(!is_natural_language(line), "{line:?}");
        }
    }

    #[test]
    fn sentences_are_prose() {
        for line in [
            "a photo of sks dog sitting on the grass",
            "sks, a photo of a dog",
            "a dog sleeping.",
            "a dog. it sleeps",
            "A red car! parked outside",
        ] {
            assert!(is_natural_language(line), "{line:?}");
        }
    }
}
