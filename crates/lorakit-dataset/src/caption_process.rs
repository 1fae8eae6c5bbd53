//! What a caption becomes each time training loads it (sd-scripts' `process_caption`, spec §6):
//! prefix/suffix → whole-caption dropout → wildcards → tag handling (keep tokens or the keep
//! separator, token warmup, shuffle, tag dropout) → secondary separator.
//!
//! Randomness comes from the caller's RNG (training seeds it per sample and step), so the same
//! run gives the same captions; the distributions are sd-scripts', the random numbers are not
//! Python's.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::CaptionOptions;

/// Where in the run a caption is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionMoment {
    /// The current epoch, counted from 1.
    pub epoch: u64,
    /// Optimizer steps done so far.
    pub step: u64,
    /// Total optimizer steps (resolves a fractional `token_warmup_step`).
    pub max_train_steps: u64,
}

/// Processes one caption for one training sample.
pub fn process_caption(caption: &str, opts: &CaptionOptions, moment: CaptionMoment, rng: &mut impl Rng) -> String {
    // 1. Prefix / suffix, joined with one space before any splitting (a prefix fuses with the
    //    first tag, as in sd-scripts).
    let mut text = caption.to_string();
    if let Some(p) = opts.caption_prefix.as_deref().filter(|p| !p.is_empty()) {
        text = format!("{p} {text}");
    }
    if let Some(s) = opts.caption_suffix.as_deref().filter(|s| !s.is_empty()) {
        text = format!("{text} {s}");
    }

    // 2. Whole-caption dropout.
    let every = opts.caption_dropout_every_n_epochs;
    let dropped_by_epoch = every > 0 && moment.epoch % u64::from(every) == 0;
    let dropped_by_rate = opts.caption_dropout_rate > 0.0 && rng.random::<f64>() < opts.caption_dropout_rate;
    if dropped_by_epoch || dropped_by_rate {
        return String::new();
    }

    // 3. Wildcards: a random line, then a random alternative of every {a|b|c}.
    if opts.enable_wildcard {
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 1 {
            text = lines[rng.random_range(0..lines.len())].to_string();
        }
        text = expand_wildcards(&text, rng);
    }

    // 4. Tags — only when something would change them (keep_tokens alone does nothing).
    let warmup_step = if opts.token_warmup_step > 0.0 && opts.token_warmup_step < 1.0 {
        (opts.token_warmup_step * moment.max_train_steps as f64).floor()
    } else {
        opts.token_warmup_step
    };
    if opts.shuffle_caption || warmup_step > 0.0 || opts.caption_tag_dropout_rate > 0.0 {
        text = process_tags(&text, opts, warmup_step, moment.step, rng);
    }

    // 5. Secondary separator → the caption separator (after shuffling, so grouped tags moved and
    //    dropped as one).
    if let Some(sec) = opts.secondary_separator.as_deref().filter(|s| !s.is_empty()) {
        text = text.replace(sec, &opts.caption_separator);
    }
    text
}

/// Fixed / flexible / fixed-suffix split, warmup truncation, shuffle, tag dropout, re-join.
fn process_tags(text: &str, opts: &CaptionOptions, warmup_step: f64, step: u64, rng: &mut impl Rng) -> String {
    let sep = opts.caption_separator.as_str();
    let split = |s: &str, drop_empty: bool| -> Vec<String> {
        s.split(sep).map(|t| t.trim().to_string()).filter(|t| !drop_empty || !t.is_empty()).collect()
    };
    let keep_sep = opts.keep_tokens_separator.as_str();
    let (fixed, mut flex, suffix) = if !keep_sep.is_empty() && text.contains(keep_sep) {
        let (head, rest) = text.split_once(keep_sep).expect("contains the separator");
        let (flex, tail) = match rest.split_once(keep_sep) {
            Some((f, t)) => (f, t),
            None => (rest, ""),
        };
        (split(head, true), split(flex, true), split(tail, true))
    } else {
        let tokens = split(text.trim(), false);
        let k = (opts.keep_tokens as usize).min(tokens.len());
        (tokens[..k].to_vec(), tokens[k..].to_vec(), Vec::new())
    };
    if warmup_step > 0.0 && (step as f64) < warmup_step {
        let min = opts.token_warmup_min as usize;
        let n = flex.len();
        let keep = ((step as f64) * (n as f64 - min as f64) / warmup_step).floor() as i64 + min as i64;
        flex.truncate(keep.clamp(0, n as i64) as usize);
    }
    if opts.shuffle_caption {
        flex.shuffle(rng);
    }
    if opts.caption_tag_dropout_rate > 0.0 {
        let keep = 1.0 - opts.caption_tag_dropout_rate;
        flex.retain(|_| rng.random::<f64>() < keep);
    }
    // sd-scripts joins with ", " whatever the separator (upstream later used separator + " ").
    fixed.into_iter().chain(flex).chain(suffix).collect::<Vec<_>>().join(", ")
}

/// Replaces every `{a|b|c}` with one alternative; `{{` and `}}` stand for literal braces.
fn expand_wildcards(text: &str, rng: &mut impl Rng) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' if chars.get(i + 1) == Some(&'{') => {
                out.push('{');
                i += 2;
            }
            '}' if chars.get(i + 1) == Some(&'}') => {
                out.push('}');
                i += 2;
            }
            '{' => match chars[i + 1..].iter().position(|&c| c == '}') {
                Some(len) => {
                    let group: String = chars[i + 1..i + 1 + len].iter().collect();
                    let options: Vec<&str> = group.split('|').collect();
                    out.push_str(options[rng.random_range(0..options.len())]);
                    i += len + 2;
                }
                None => {
                    out.push('{');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn opts() -> CaptionOptions {
        CaptionOptions {
            shuffle_caption: false,
            keep_tokens: 0,
            keep_tokens_separator: String::new(),
            secondary_separator: None,
            caption_separator: ",".into(),
            enable_wildcard: false,
            token_warmup_min: 1,
            token_warmup_step: 0.0,
            caption_prefix: None,
            caption_suffix: None,
            caption_dropout_rate: 0.0,
            caption_dropout_every_n_epochs: 0,
            caption_tag_dropout_rate: 0.0,
        }
    }

    const AT: CaptionMoment = CaptionMoment { epoch: 1, step: 0, max_train_steps: 100 };

    fn run(caption: &str, o: &CaptionOptions, moment: CaptionMoment, seed: u64) -> String {
        process_caption(caption, o, moment, &mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn nothing_set_leaves_the_caption_alone_and_keep_tokens_alone_does_nothing() {
        let mut o = opts();
        assert_eq!(run("a,  b ,c", &o, AT, 0), "a,  b ,c");
        o.keep_tokens = 1;
        assert_eq!(run("a,  b ,c", &o, AT, 0), "a,  b ,c");
    }

    #[test]
    fn prefix_fuses_with_the_first_tag() {
        let mut o = opts();
        o.caption_prefix = Some("sks".into());
        o.caption_suffix = Some("best".into());
        o.shuffle_caption = true;
        o.keep_tokens = 1;
        for seed in 0..20 {
            let out = run("a, b, c", &o, AT, seed);
            assert!(out.starts_with("sks a, "), "{out}");
            let mut tags: Vec<&str> = out.split(", ").collect();
            tags.sort();
            assert_eq!(tags, ["b", "c best", "sks a"]);
        }
    }

    #[test]
    fn shuffle_moves_only_flexible_tags_and_varies_with_the_rng() {
        let mut o = opts();
        o.shuffle_caption = true;
        o.keep_tokens = 2;
        let outs: std::collections::BTreeSet<String> = (0..50).map(|s| run("k1, k2, a, b, c, d", &o, AT, s)).collect();
        assert!(outs.len() > 5, "{outs:?}");
        assert!(outs.iter().all(|c| c.starts_with("k1, k2, ")));
        assert_eq!(run("k1, k2, a, b, c, d", &o, AT, 3), run("k1, k2, a, b, c, d", &o, AT, 3));
    }

    #[test]
    fn keep_tokens_separator_splits_fixed_flexible_and_suffix() {
        let mut o = opts();
        o.shuffle_caption = true;
        o.keep_tokens = 5; // ignored in this mode
        o.keep_tokens_separator = "|||".into();
        for seed in 0..20 {
            let out = run("sks, girl ||| a, b, , c ||| masterpiece", &o, AT, seed);
            assert!(out.starts_with("sks, girl, ") && out.ends_with(", masterpiece"), "{out}");
            assert_eq!(out.split(", ").count(), 6, "empty tokens dropped: {out}");
        }
    }

    #[test]
    fn caption_dropout_by_rate_and_by_epoch() {
        let mut o = opts();
        o.caption_dropout_rate = 0.5;
        let dropped = (0..400).filter(|&s| run("a, b", &o, AT, s).is_empty()).count();
        assert!((150..250).contains(&dropped), "{dropped}");
        let mut o = opts();
        o.caption_dropout_every_n_epochs = 3;
        assert_eq!(run("a", &o, CaptionMoment { epoch: 3, ..AT }, 0), "");
        assert_eq!(run("a", &o, CaptionMoment { epoch: 4, ..AT }, 0), "a");
    }

    #[test]
    fn tag_dropout_never_drops_fixed_tags() {
        let mut o = opts();
        o.caption_tag_dropout_rate = 0.5;
        o.keep_tokens = 1;
        let mut lengths = std::collections::BTreeSet::new();
        for s in 0..100 {
            let out = run("fixed, a, b, c, d, e, f", &o, AT, s);
            assert!(out.starts_with("fixed"));
            lengths.insert(out.split(", ").count());
        }
        assert!(lengths.len() > 3, "{lengths:?}");
    }

    #[test]
    fn token_warmup_grows_the_caption_with_the_steps() {
        let mut o = opts();
        o.token_warmup_min = 1;
        o.token_warmup_step = 0.5; // half of 100 steps → 50
        let at = |step| run("a, b, c, d, e", &o, CaptionMoment { step, ..AT }, 0);
        assert_eq!(at(0), "a");
        assert_eq!(at(25), "a, b, c"); // floor(25·(5−1)/50)+1 = 3
        assert_eq!(at(49), "a, b, c, d");
        assert_eq!(at(50), "a, b, c, d, e");
    }

    #[test]
    fn wildcards_and_secondary_separator() {
        let mut o = opts();
        o.enable_wildcard = true;
        let outs: std::collections::BTreeSet<String> =
            (0..50).map(|s| run("a {red|blue} ball {{x}}\nsecond line", &o, AT, s)).collect();
        assert!(
            outs.contains("a red ball {x}") && outs.contains("a blue ball {x}") && outs.contains("second line"),
            "{outs:?}"
        );
        let mut o = opts();
        o.shuffle_caption = true;
        o.secondary_separator = Some(";;;".into());
        for s in 0..20 {
            let out = run("a;;;b, c", &o, AT, s);
            assert!(out == "a,b, c" || out == "c, a,b", "{out}");
        }
    }
}
