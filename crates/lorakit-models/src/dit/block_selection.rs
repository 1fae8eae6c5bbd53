//! sd-scripts' `parse_block_selection` (`networks/lora_flux.py` and `networks/lora_sd3.py` each
//! have a copy): which blocks `train_*_block_indices` selects.

/// Parses a block selection over `total` blocks: `all`, `none` or `""` (nothing), or indices and
/// inclusive ranges separated by commas (`0-3,7`; spaces around a number are allowed, as
/// Python's `int` allows them). An index at or past `total`, a backwards range or anything that
/// is not a number is an error naming `key` and `value` (sd-scripts asserts or raises there).
pub fn parse_block_selection(key: &str, value: &str, total: usize) -> Result<Vec<bool>, String> {
    match value {
        "all" => return Ok(vec![true; total]),
        "none" | "" => return Ok(vec![false; total]),
        _ => {}
    }
    let mut selected = vec![false; total];
    let index = |s: &str| {
        s.trim().parse::<usize>().ok().filter(|&i| i < total).ok_or_else(|| {
            format!("{key} = {value:?}: `{}` is not a block index (0 to {})", s.trim(), total.saturating_sub(1))
        })
    };
    for part in value.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return Err(format!("{key} = {value:?}: range {a}-{b} runs backwards"));
                }
                selected[a..=b].iter_mut().for_each(|s| *s = true);
            }
            None => selected[index(part)?] = true,
        }
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::parse_block_selection;

    #[test]
    fn selections_parse_as_sd_scripts_does() {
        let on = |v: &str, n| {
            parse_block_selection("k", v, n)
                .map(|m| m.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect())
        };
        assert_eq!(on("all", 3), Ok(vec![0, 1, 2]));
        assert_eq!(on("none", 3), Ok(vec![]));
        assert_eq!(on("", 3), Ok(vec![]));
        assert_eq!(on("0-2, 5 ,7-7", 8), Ok(vec![0, 1, 2, 5, 7]));
        for bad in ["8", "3-1", "x", "1,,2", "-1", "1-2-3", " all"] {
            let err = parse_block_selection("train_block_indices", bad, 8).unwrap_err();
            assert!(err.contains("train_block_indices") && err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
