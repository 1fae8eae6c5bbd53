//! A small deterministic mutation fuzzer for stable Rust: starting from seed inputs, each round
//! applies a few random edits (bit flips, boundary bytes, dictionary tokens — keys, numbers that
//! overflow, NaN, quotes, brackets —, deletions, duplications, splices with another seed,
//! truncation) and runs the target. The same seed gives the same inputs, so a CI failure is
//! reproduced by rerunning the test; a panicking input is also written to a file and named in
//! the failure.
//!
//! It finds less than libFuzzer (no coverage feedback) but runs everywhere `cargo test` does;
//! `fuzz/README.md` says how to run the coverage-guided targets.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long and from where a run goes.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Mutated inputs to try.
    pub iterations: usize,
    /// Stop early after this long (whatever `iterations` says).
    pub time_limit: Duration,
    /// Seed of the mutation stream.
    pub seed: u64,
}

impl Budget {
    /// `iterations` inputs from seed 0, unless `LORAKIT_FUZZ_ITERATIONS`, `LORAKIT_FUZZ_SECONDS`
    /// or `LORAKIT_FUZZ_SEED` say otherwise (for long runs by hand).
    pub fn from_env(iterations: usize) -> Budget {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Budget {
            iterations: var("LORAKIT_FUZZ_ITERATIONS").map_or(iterations, |v| v as usize),
            time_limit: Duration::from_secs(var("LORAKIT_FUZZ_SECONDS").unwrap_or(600)),
            seed: var("LORAKIT_FUZZ_SEED").unwrap_or(0),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Inputs run (seeds included).
    pub inputs: usize,
    /// Distinct input lengths seen (a rough sign the mutations vary).
    pub distinct_lengths: usize,
}

/// Runs `target` on every seed, then on `budget.iterations` mutated inputs. Panics (naming the
/// file the input was saved to) when the target panics.
pub fn run(name: &str, target: crate::Target, seeds: &[Vec<u8>], dictionary: &[&[u8]], budget: &Budget) -> Summary {
    assert!(!seeds.is_empty(), "{name}: no seed inputs");
    let mut rng = StdRng::seed_from_u64(budget.seed ^ fnv(name.as_bytes()));
    let started = Instant::now();
    let mut lengths = std::collections::BTreeSet::new();
    let mut inputs = 0;
    let mut check = |input: &[u8], inputs: &mut usize| {
        *inputs += 1;
        lengths.insert(input.len());
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let path = save_failure(name, input);
            panic!(
                "fuzz target {name} panicked on input {} (saved to {}; rerun with LORAKIT_FUZZ_SEED={})",
                *inputs,
                path.display(),
                budget.seed
            );
        }
    };
    for seed in seeds {
        check(seed, &mut inputs);
    }
    for _ in 0..budget.iterations {
        if started.elapsed() > budget.time_limit {
            break;
        }
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate_once(&mut input, seeds, dictionary, &mut rng);
        }
        check(&input, &mut inputs);
    }
    Summary { inputs, distinct_lengths: lengths.len() }
}

/// Numbers and tokens that break parsers: overflow, NaN, negative, empty, quotes, brackets.
const GENERIC_TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e309",
    b"-1e309",
    b"nan",
    b"inf",
    b"NaN",
    b"99999999999999999999",
    b"18446744073709551616",
    b"9223372036854775807",
    b"0.5",
    b"\"\"",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\\",
    b"true",
    b"false",
    b"null",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
];

fn mutate_once(input: &mut Vec<u8>, seeds: &[Vec<u8>], dictionary: &[&[u8]], rng: &mut StdRng) {
    let pos = |rng: &mut StdRng, len: usize| if len == 0 { 0 } else { rng.random_range(0..=len) };
    match rng.random_range(0..8) {
        0 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] = [0x00, 0xFF, 0x7F, 0x80, b'"', b'\n', b'9', b'='][rng.random_range(0..8)];
        }
        2 | 3 => {
            let tokens = if dictionary.is_empty() || rng.random_bool(0.4) { GENERIC_TOKENS } else { dictionary };
            let token = tokens[rng.random_range(0..tokens.len())];
            let at = pos(rng, input.len());
            input.splice(at..at, token.iter().copied());
        }
        4 if !input.is_empty() => {
            let start = rng.random_range(0..input.len());
            let end = (start + rng.random_range(1..=16)).min(input.len());
            input.drain(start..end);
        }
        5 if !input.is_empty() && input.len() < 1 << 16 => {
            let start = rng.random_range(0..input.len());
            let end = (start + rng.random_range(1..=32)).min(input.len());
            let copy: Vec<u8> = input[start..end].to_vec();
            let at = pos(rng, input.len());
            input.splice(at..at, copy);
        }
        6 => {
            let other = &seeds[rng.random_range(0..seeds.len())];
            if !other.is_empty() {
                let from = rng.random_range(0..other.len());
                let at = pos(rng, input.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
        _ => {
            let at = pos(rng, input.len());
            input.truncate(at);
        }
    }
}

/// Saves a failing input where a developer finds it.
fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("lorakit-fuzz-failures");
    let path = dir.join(format!("{name}-{:016x}.bin", fnv(input)));
    let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, input));
    path
}

/// FNV-1a: a stable hash for naming (std's hasher may change between releases).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_is_caught_and_its_input_saved() {
        fn target(data: &[u8]) {
            assert!(!data.windows(3).any(|w| w == b"nan"), "found it");
        }
        let budget = Budget { iterations: 5000, time_limit: Duration::from_secs(60), seed: 7 };
        let result = catch_unwind(|| run("self_test", target, &[b"x = 1".to_vec()], &[], &budget));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("self_test") && message.contains("saved to"), "{message}");
        let path = message.split("saved to ").nth(1).unwrap().split(';').next().unwrap();
        assert!(std::fs::read(path).unwrap().windows(3).any(|w| w == b"nan"));
    }

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let seen = |seed| {
            let budget = Budget { iterations: 200, time_limit: Duration::from_secs(60), seed };
            run("same", |_| {}, &[b"abc = [1, 2]".to_vec()], &[b"key"], &budget)
        };
        assert_eq!(seen(3), seen(3));
        assert!(seen(3).distinct_lengths > 10, "mutations vary the input");
    }
}
