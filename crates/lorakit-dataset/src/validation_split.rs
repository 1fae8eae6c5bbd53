//! sd-scripts' validation split (`validation_split` / `validation_seed`), bit for bit.
//!
//! sd-scripts (library/train_util.py:142-178, `split_train_val`) holds images out for validation by
//! shuffling each non-regularisation subset's image list with Python's `random` module and cutting
//! it: the training dataset keeps `paths[0:ceil(n * (1 - split))]`, the validation dataset keeps
//! `paths[n - round(n * split):]`. Which images land where therefore depends on CPython's Mersenne
//! Twister and on how many shuffles came before, so this module carries:
//!
//! - [`PyRandom`]: CPython's `random.Random` (MT19937, `seed(int)`, `getrandbits`, `_randbelow`,
//!   `shuffle`, `random`), exact, so the same seed gives the same permutation as sd-scripts.
//! - [`split_counts`]: the two cut points, with Python's float arithmetic and `round` (ties to even).
//! - [`ValidationSplitter`] → [`ValidationPass`]: the order of shuffles across a whole run.
//!
//! sd-scripts builds every training dataset first and every validation dataset afterwards
//! (library/config_util.py, `generate_dataset_group_by_blueprint`), all drawing from the global
//! `random` state that accelerate's `set_seed(seed)` seeded just before. So, without a
//! `validation_seed`, a subset's validation shuffle is *not* its training shuffle: it continues the
//! global state after all training shuffles. An image can then be in both sets or in neither;
//! this module reproduces that (the caller warns). With a `validation_seed`, each shuffle uses a
//! fresh `random.seed(validation_seed)` and restores the global state afterwards, so training and
//! validation use the same permutation — yet the two cut points still overlap by one image when
//! `n * split` has a fractional part above one half, or exactly one half rounded up (`ceil` on one
//! side, `round` on the other).
//!
//! What the caller decides (these follow sd-scripts' `DreamBoothDataset.__init__`): subsets with
//! `num_repeats < 1` and duplicate `image_dir`s are skipped in the training pass before any shuffle,
//! but the validation dataset uses `num_repeats = 1`, so a `num_repeats = 0` subset *is* shuffled
//! (and held out) in the validation pass; a subset whose folder is missing is skipped in both passes.

use std::fmt;

/// Mersenne Twister state size (words).
const N: usize = 624;
/// Mersenne Twister middle word offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's `random.Random`: MT19937 seeded the way `random.seed(int)` seeds it.
///
/// Matches CPython 3.9–3.13 (`Modules/_randommodule.c` and `Lib/random.py`) bit for bit, which is
/// what sd-scripts' `random.shuffle` runs on. Cloning it is `random.getstate()`.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    /// Next word of `mt` to temper; `N` means "twist first".
    index: usize,
}

impl fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 624 words of state say nothing useful in a log line.
        f.debug_struct("PyRandom").field("index", &self.index).finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative int: `init_by_array` with the integer's 32-bit
    /// little-endian words as key (one word at least, so 0 gives `[0]`).
    ///
    /// Python takes `abs()` of negative ints; callers holding one pass its magnitude.
    pub fn seed(seed: u64) -> Self {
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        if high == 0 {
            Self::from_key(&[low])
        } else {
            Self::from_key(&[low, high])
        }
    }

    /// `init_genrand(19650218)` then `init_by_array(key)`, as `_randommodule.c` does.
    fn from_key(key: &[u32]) -> Self {
        let mut mt = [0u32; N];
        mt[0] = 19_650_218;
        for i in 1..N {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        // An empty key would divide the walk below by zero in C; `seed` never builds one.
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Self { mt, index: N }
    }

    /// Regenerates all `N` words (the reference `genrand_int32` refill, done in place).
    fn twist(&mut self) {
        for kk in 0..N {
            let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// One tempered 32-bit output (`genrand_uint32`).
    pub fn genrand_uint32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for `k <= 64`: `Some` of a value below `2^k`.
    ///
    /// `k = 0` gives 0 without drawing (CPython 3.9+). Wider `k` are assembled from 32-bit words,
    /// least significant first, the last word shifted right, as CPython does. `k > 64` returns
    /// `None` without drawing: nothing here needs it (subsets have far fewer than 2^64 images).
    pub fn getrandbits(&mut self, k: u32) -> Option<u64> {
        match k {
            0 => Some(0),
            1..=32 => Some(u64::from(self.genrand_uint32() >> (32 - k))),
            33..=64 => {
                let low = u64::from(self.genrand_uint32());
                let high = u64::from(self.genrand_uint32() >> (64 - k));
                Some(low | (high << 32))
            }
            _ => None,
        }
    }

    /// `random._randbelow(n)` (`_randbelow_with_getrandbits`): a uniform value in `[0, n)` by
    /// rejection sampling on `n.bit_length()` bits, so it consumes exactly what CPython consumes.
    ///
    /// `n = 0` returns 0 without drawing (CPython would loop forever; `shuffle` never asks).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = u64::BITS - n.leading_zeros();
        loop {
            // k is 1..=64, so getrandbits always answers.
            let r = self.getrandbits(k).unwrap_or(0);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`: Fisher–Yates from the end, `j = _randbelow(i + 1)`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `random.random()`: a 53-bit float in `[0, 1)` from two draws.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.genrand_uint32() >> 5);
        let b = f64::from(self.genrand_uint32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// `(training count, validation count)` for a subset of `n` images, as sd-scripts cuts it:
/// `ceil(n * (1 - split))` and `round(n * split)` (ties to even), in f64 with Python's order of
/// operations. The two can sum to `n + 1` (one image in both sets), e.g. `n = 6, split = 0.25`
/// gives `(5, 2)`.
///
/// Never panics: a NaN split counts as 0, other splits are clamped into `[0, 1]`, and both counts
/// are at most `n`. (sd-scripts' own behaviour outside `[0, 1]` is not reproduced: use
/// [`SplitSettings::new`] to refuse such values.)
pub fn split_counts(n: usize, validation_split: f64) -> (usize, usize) {
    let split = if validation_split.is_nan() { 0.0 } else { validation_split.clamp(0.0, 1.0) };
    let len = n as f64;
    // `as` saturates (and maps NaN to 0); `min` guards n beyond 2^53, where `len` may round up.
    let train = ((len * (1.0 - split)).ceil() as usize).min(n);
    let validation = ((len * split).round_ties_even() as usize).min(n);
    (train, validation)
}

/// A `validation_split` outside `[0, 1]` (or NaN).
///
/// sd-scripts only warns about these and then misbehaves (a split above 1 still shuffles and
/// truncates the training subsets; NaN makes a validation set of every image, regularisation
/// images included), so they are refused here instead.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("`validation_split` must be a number from 0 to 1 (got {0})")]
pub struct InvalidValidationSplit(pub f64);

/// One dataset's `validation_split` and `validation_seed`, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitSettings {
    validation_split: f64,
    validation_seed: Option<u64>,
}

impl SplitSettings {
    /// No split: every image trains, nothing is held out, no randomness is drawn.
    pub const NONE: Self = Self { validation_split: 0.0, validation_seed: None };

    /// `validation_split` in `[0, 1]` (0 = no split); `validation_seed` `None` = use the run's
    /// global random state, as sd-scripts does.
    pub fn new(validation_split: f64, validation_seed: Option<u64>) -> Result<Self, InvalidValidationSplit> {
        if (0.0..=1.0).contains(&validation_split) {
            Ok(Self { validation_split, validation_seed })
        } else {
            Err(InvalidValidationSplit(validation_split))
        }
    }

    /// The fraction held out.
    pub fn validation_split(&self) -> f64 {
        self.validation_split
    }

    /// The dataset's own shuffle seed, if any.
    pub fn validation_seed(&self) -> Option<u64> {
        self.validation_seed
    }

    /// Whether this dataset is split at all (`validation_split > 0.0`, sd-scripts' test): only then
    /// are its subsets shuffled, and only then does it get a validation dataset.
    pub fn is_split(&self) -> bool {
        self.validation_split > 0.0
    }
}

/// Shuffles `0..n` the way `split_train_val` shuffles a subset's list: with a fresh
/// `random.seed(validation_seed)` (global state untouched, as sd-scripts' getstate/setstate) or
/// with the global state.
fn shuffled_positions(global: &mut PyRandom, n: usize, seed: Option<u64>) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..n).collect();
    match seed {
        Some(seed) => PyRandom::seed(seed).shuffle(&mut positions),
        None => global.shuffle(&mut positions),
    }
    positions
}

/// The training pass of a run: which images of each subset train.
///
/// Create it with the run's seed (sd-scripts' `set_seed(seed)` = `random.seed(seed)`), call
/// [`training_indices`](Self::training_indices) for every subset of every dataset in config order
/// (regularisation and unsplit ones included: they draw nothing), then
/// [`validation_pass`](Self::validation_pass) for the held-out images. The two passes cannot
/// interleave, because sd-scripts builds all training datasets before any validation dataset.
///
/// Indices are positions in the subset's image list as sd-scripts orders it (sorted paths, or the
/// `cache_info` file's order), returned in the shuffled order sd-scripts keeps; sort them if the
/// order does not matter.
#[derive(Debug, Clone)]
pub struct ValidationSplitter {
    global: PyRandom,
}

impl ValidationSplitter {
    /// A run seeded with `run_seed`.
    pub fn new(run_seed: u64) -> Self {
        Self { global: PyRandom::seed(run_seed) }
    }

    /// The positions of a subset of `n` images that train.
    ///
    /// Unsplit datasets and regularisation subsets keep every image in order and draw nothing.
    /// `n = 0` gives nothing (sd-scripts crashes there: `zip(*[])` cannot unpack).
    pub fn training_indices(&mut self, n: usize, is_reg: bool, settings: SplitSettings) -> Vec<usize> {
        if !settings.is_split() || is_reg {
            return (0..n).collect();
        }
        let mut positions = shuffled_positions(&mut self.global, n, settings.validation_seed);
        let (train, _) = split_counts(n, settings.validation_split);
        positions.truncate(train);
        positions
    }

    /// Ends the training pass; the global random state carries on into the validation pass.
    pub fn validation_pass(self) -> ValidationPass {
        ValidationPass { global: self.global }
    }
}

/// The validation pass of a run, after every training subset (see [`ValidationSplitter`]).
#[derive(Debug, Clone)]
pub struct ValidationPass {
    global: PyRandom,
}

impl ValidationPass {
    /// The positions of a subset of `n` images held out for validation.
    ///
    /// Call it for every subset of every *split* dataset in config order (unsplit datasets have no
    /// validation dataset and draw nothing; calling it for them gives nothing). Regularisation
    /// subsets give nothing and draw nothing. Without a `validation_seed` this shuffle is a new
    /// permutation, not the training one.
    pub fn validation_indices(&mut self, n: usize, is_reg: bool, settings: SplitSettings) -> Vec<usize> {
        if !settings.is_split() || is_reg {
            return Vec::new();
        }
        let positions = shuffled_positions(&mut self.global, n, settings.validation_seed);
        let (_, held_out) = split_counts(n, settings.validation_split);
        positions[n - held_out..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Cases {
        rng: Vec<RngCase>,
        shuffle: Vec<ShuffleCase>,
        split_counts: Vec<CountCase>,
        scenarios: Vec<Scenario>,
    }

    #[derive(Deserialize)]
    struct RngCase {
        seed: u64,
        getrandbits32: Vec<u64>,
        random_bits: Vec<u64>,
        randbelow: Vec<(u64, u64)>,
        getrandbits: Vec<(u32, u64)>,
        then_getrandbits32: u64,
    }

    #[derive(Deserialize)]
    struct ShuffleCase {
        seed: u64,
        n: usize,
        shuffled: Vec<usize>,
        next_getrandbits32: u64,
    }

    #[derive(Deserialize)]
    struct CountCase {
        n: usize,
        split_bits: u64,
        train: usize,
        validation: usize,
    }

    #[derive(Deserialize)]
    struct Scenario {
        name: String,
        seed: u64,
        datasets: Vec<DatasetCase>,
        /// Per dataset, per subset.
        train: Vec<Vec<Vec<usize>>>,
        /// Per dataset: `None` when sd-scripts builds no validation dataset for it.
        validation: Vec<Option<Vec<Vec<usize>>>>,
    }

    #[derive(Deserialize)]
    struct DatasetCase {
        validation_split_bits: u64,
        validation_seed: Option<u64>,
        subsets: Vec<SubsetCase>,
    }

    #[derive(Deserialize)]
    struct SubsetCase {
        n: usize,
        is_reg: bool,
    }

    fn cases() -> Cases {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/validation_split/cases.json");
        let text = std::fs::read_to_string(path).expect("read validation_split fixture");
        serde_json::from_str(&text).expect("parse validation_split fixture")
    }

    #[test]
    fn rng_matches_cpython() {
        let cases = cases();
        assert!(cases.rng.len() >= 6);
        for case in &cases.rng {
            let mut rng = PyRandom::seed(case.seed);
            for &want in &case.getrandbits32 {
                assert_eq!(rng.getrandbits(32), Some(want), "seed {}", case.seed);
            }
            for &want in &case.random_bits {
                assert_eq!(rng.random().to_bits(), want, "random() seed {}", case.seed);
            }
            for &(n, want) in &case.randbelow {
                assert_eq!(rng.randbelow(n), want, "randbelow({n}) seed {}", case.seed);
            }
            for &(k, want) in &case.getrandbits {
                assert_eq!(rng.getrandbits(k), Some(want), "getrandbits({k}) seed {}", case.seed);
            }
            assert_eq!(u64::from(rng.genrand_uint32()), case.then_getrandbits32, "seed {}", case.seed);
        }
    }

    #[test]
    fn shuffle_matches_cpython() {
        let cases = cases();
        assert!(cases.shuffle.len() >= 36);
        for case in &cases.shuffle {
            let mut rng = PyRandom::seed(case.seed);
            let mut x: Vec<usize> = (0..case.n).collect();
            rng.shuffle(&mut x);
            assert_eq!(x, case.shuffled, "seed {} n {}", case.seed, case.n);
            // Same number of draws consumed as CPython.
            assert_eq!(u64::from(rng.genrand_uint32()), case.next_getrandbits32, "seed {} n {}", case.seed, case.n);
        }
    }

    #[test]
    fn split_counts_match_python() {
        let cases = cases();
        assert!(cases.split_counts.len() >= 21 * 8);
        for case in &cases.split_counts {
            let split = f64::from_bits(case.split_bits);
            assert_eq!(split_counts(case.n, split), (case.train, case.validation), "n {} split {split}", case.n);
        }
        // The ties the brief names: 2.5 → 2, 1.5 → 2.
        assert_eq!(split_counts(10, 0.25), (8, 2));
        assert_eq!(split_counts(6, 0.25), (5, 2));
    }

    #[test]
    fn whole_runs_match_sd_scripts() {
        let cases = cases();
        assert!(cases.scenarios.len() >= 6);
        for sc in &cases.scenarios {
            let settings: Vec<SplitSettings> = sc
                .datasets
                .iter()
                .map(|d| SplitSettings::new(f64::from_bits(d.validation_split_bits), d.validation_seed).unwrap())
                .collect();
            let mut splitter = ValidationSplitter::new(sc.seed);
            for ((d, s), want) in sc.datasets.iter().zip(&settings).zip(&sc.train) {
                let got: Vec<Vec<usize>> =
                    d.subsets.iter().map(|sub| splitter.training_indices(sub.n, sub.is_reg, *s)).collect();
                assert_eq!(&got, want, "{}: training", sc.name);
            }
            let mut pass = splitter.validation_pass();
            for ((d, s), want) in sc.datasets.iter().zip(&settings).zip(&sc.validation) {
                match want {
                    None => assert!(!s.is_split(), "{}: a dataset without validation set is split", sc.name),
                    Some(want) => {
                        let got: Vec<Vec<usize>> =
                            d.subsets.iter().map(|sub| pass.validation_indices(sub.n, sub.is_reg, *s)).collect();
                        assert_eq!(&got, want, "{}: validation", sc.name);
                    }
                }
            }
        }
    }

    #[test]
    fn seeded_split_uses_one_permutation_and_leaves_global_state() {
        let settings = SplitSettings::new(0.2, Some(9)).unwrap();
        let mut a = ValidationSplitter::new(1);
        let train = a.training_indices(10, false, settings);
        // The global state is untouched: it still gives seed 1's first word.
        assert_eq!(a.global.genrand_uint32(), PyRandom::seed(1).genrand_uint32());
        let held_out = ValidationSplitter::new(1).validation_pass().validation_indices(10, false, settings);
        let mut all: Vec<usize> = train.iter().chain(&held_out).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn no_input_panics() {
        for split in [f64::NAN, -1.0, -0.0, 0.0, 1e-300, 0.5, 1.0, 1.5, f64::INFINITY, f64::NEG_INFINITY] {
            for n in [0, 1, 7, usize::MAX] {
                let (t, v) = split_counts(n, split);
                assert!(t <= n && v <= n, "n {n} split {split}");
            }
        }
        assert_eq!(split_counts(10, f64::NAN), (10, 0));
        assert_eq!(split_counts(10, -3.0), (10, 0));
        assert_eq!(split_counts(10, 7.0), (0, 10));
        for bad in [f64::NAN, -0.1, 1.0000001, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(SplitSettings::new(bad, None).is_err(), "{bad}");
        }
        assert!(SplitSettings::new(-0.0, None).is_ok_and(|s| !s.is_split()));

        let mut rng = PyRandom::seed(u64::MAX);
        assert_eq!(rng.getrandbits(0), Some(0));
        assert_eq!(rng.getrandbits(65), None);
        assert_eq!(rng.getrandbits(u32::MAX), None);
        assert_eq!(rng.randbelow(0), 0);
        assert_eq!(rng.randbelow(1), 0);
        assert!(rng.randbelow(u64::MAX) < u64::MAX);
        let mut empty: [u8; 0] = [];
        rng.shuffle(&mut empty);

        let mut big: Vec<u32> = (0..1_000_000).collect();
        rng.shuffle(&mut big);
        big.sort_unstable();
        assert!(big.iter().enumerate().all(|(i, &v)| i as u32 == v));

        for seed in [None, Some(0), Some(u64::MAX)] {
            for split in [1e-300, 0.5, 1.0] {
                let s = SplitSettings::new(split, seed).unwrap();
                let mut splitter = ValidationSplitter::new(0);
                for n in [0, 1, 2, 1000] {
                    for is_reg in [false, true] {
                        assert!(splitter.training_indices(n, is_reg, s).len() <= n);
                    }
                }
                let mut pass = splitter.validation_pass();
                for n in [0, 1, 2, 1000] {
                    for is_reg in [false, true] {
                        assert!(pass.validation_indices(n, is_reg, s).len() <= n);
                    }
                    assert!(pass.validation_indices(n, false, SplitSettings::NONE).is_empty());
                }
            }
        }
    }
}
