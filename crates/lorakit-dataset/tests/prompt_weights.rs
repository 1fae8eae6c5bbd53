//! The A1111 caption-weight parser against sd-scripts' own `parse_prompt_attention`
//! (fixture: `tools/reference/weighted_captions_fixture.py` →
//! `tests/fixtures/reference/weighted_captions/parser.json`): same pieces, weights bit-identical,
//! an error exactly where sd-scripts raises one.

use std::path::PathBuf;

use lorakit_dataset::prompt_weights::{parse_prompt_attention, UNICODE_14_DIGIT_ZEROS};

fn fixture() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/weighted_captions/parser.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn f64_from_bits(hex: &str) -> f64 {
    f64::from_bits(u64::from_str_radix(hex, 16).unwrap())
}

#[test]
fn pieces_and_weights_match_sd_scripts() {
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = parse_prompt_attention(text);
        if let Some(error) = case.get("error") {
            let err = got.expect_err(&format!("{text:?}: sd-scripts raises {error}"));
            assert!(err.to_string().contains(text), "the error names the caption: {err}");
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let want: Vec<(String, f64)> = case["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), f64_from_bits(p[2].as_str().unwrap())))
            .collect();
        assert_eq!(got.len(), want.len(), "{text:?}: {got:?} vs {want:?}");
        for ((gt, gw), (wt, ww)) in got.iter().zip(&want) {
            assert_eq!(gt, wt, "{text:?}: {got:?} vs {want:?}");
            assert_eq!(gw.to_bits(), ww.to_bits(), "{text:?}: piece {gt:?} weight {gw:e} vs {ww:e}");
        }
    }
}

#[test]
fn digit_table_is_pythons() {
    let doc = fixture();
    assert_eq!(doc["unicode_version"], "14.0.0");
    let zeros: Vec<u32> = doc["digit_zeros"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(zeros, UNICODE_14_DIGIT_ZEROS.to_vec());
}
