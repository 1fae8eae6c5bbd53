//! Exact and near-duplicate images: equal file hashes, and perceptual hashes a
//! few bits apart. Near duplicates are found without comparing every pair:
//! two 64-bit hashes within 7 bits of each other agree on at least one of
//! their eight bytes (pigeonhole), so only images sharing a byte are compared.

use std::collections::HashMap;

/// The largest Hamming distance the byte index can find.
pub const MAX_NEAR_DISTANCE: u32 = 7;

/// A duplicate found for image `later`, pointing at an earlier image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicatePair {
    /// Index of the earlier image (kept).
    pub earlier: usize,
    /// Index of the later image (reported).
    pub later: usize,
    /// 0 for byte-identical files, else the perceptual hash distance.
    pub distance: u32,
    /// Byte-identical files.
    pub exact: bool,
}

/// Finds duplicates among `(content_hash, phash)` fingerprints (`None` = not
/// fingerprinted). Each later image is paired with its closest earlier one.
pub fn find_duplicates(fingerprints: &[Option<(u128, u64)>], max_distance: u32) -> Vec<DuplicatePair> {
    let max_distance = max_distance.min(MAX_NEAR_DISTANCE);
    let mut by_content: HashMap<u128, usize> = HashMap::new();
    let mut by_byte: Vec<HashMap<u8, Vec<usize>>> = vec![HashMap::new(); 8];
    let mut out = Vec::new();
    for (i, fp) in fingerprints.iter().enumerate() {
        let Some((content, phash)) = *fp else { continue };
        if let Some(&j) = by_content.get(&content) {
            out.push(DuplicatePair { earlier: j, later: i, distance: 0, exact: true });
            continue;
        }
        by_content.insert(content, i);
        let mut best: Option<(u32, usize)> = None;
        for (pos, index) in by_byte.iter().enumerate() {
            let byte = (phash >> (pos * 8)) as u8;
            for &j in index.get(&byte).into_iter().flatten() {
                let Some((_, other)) = fingerprints[j] else { continue };
                let d = (phash ^ other).count_ones();
                if d <= max_distance && best.is_none_or(|(bd, bj)| (d, j) < (bd, bj)) {
                    best = Some((d, j));
                }
            }
        }
        if let Some((distance, earlier)) = best {
            out.push(DuplicatePair { earlier, later: i, distance, exact: false });
        }
        for (pos, index) in by_byte.iter_mut().enumerate() {
            index.entry((phash >> (pos * 8)) as u8).or_default().push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_and_near_pairs_like_brute_force() {
        // Deterministic pseudo-random hashes plus planted near copies.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fps: Vec<Option<(u128, u64)>> = (0..300).map(|i| Some((i as u128, next()))).collect();
        let base = fps[10].unwrap().1;
        fps.push(Some((1000, base ^ 0b1011))); // 3 bits from #10
        fps.push(Some((1001, base ^ 0x8000_0000_0000_0001 ^ (1 << 20) ^ (1 << 33) ^ (1 << 50) ^ (1 << 61)))); // 6 bits
        fps.push(Some((5, 0))); // same file as #5
        fps.push(None);
        let found = find_duplicates(&fps, 6);
        // Brute force over the same data.
        let mut want = Vec::new();
        for i in 0..fps.len() {
            let Some((c, p)) = fps[i] else { continue };
            if let Some(j) = (0..i).find(|&j| fps[j].map(|f| f.0) == Some(c)) {
                want.push(DuplicatePair { earlier: j, later: i, distance: 0, exact: true });
                continue;
            }
            let best =
                (0..i).filter_map(|j| fps[j].map(|f| ((f.1 ^ p).count_ones(), j))).filter(|(d, _)| *d <= 6).min();
            if let Some((d, j)) = best {
                want.push(DuplicatePair { earlier: j, later: i, distance: d, exact: false });
            }
        }
        assert_eq!(found, want);
        assert!(found.iter().any(|p| p.later == 300 && p.earlier == 10 && p.distance == 3));
        assert!(found.iter().any(|p| p.later == 301 && p.distance == 6));
        assert!(found.iter().any(|p| p.later == 302 && p.exact && p.earlier == 5));
    }
}
