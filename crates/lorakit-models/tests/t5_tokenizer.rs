//! The T5 tokenizer against transformers' `T5TokenizerFast` (4.54.1, tokenizers 0.21.4) built
//! from the same embedded tokenizer.json and called as sd-scripts' `FluxTokenizeStrategy` calls
//! it (fixture: `tools/reference/make_t5_tiny.py` → `tests/fixtures/reference/t5_tokenizer/`).

use std::path::PathBuf;

use candle_core::{DType, Device};
use lorakit_models::t5_tokenizer::{T5Tokenizer, T5_MAX_LENGTH_DEV, T5_MAX_LENGTH_SCHNELL};

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/t5_tokenizer/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tricky_prompts_match_transformers() {
    let tok = T5Tokenizer::new().unwrap();
    let doc = fixture();
    assert_eq!(tok.vocab_size() as u64, doc["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.vocab_size(), 32100);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let mut lengths: Vec<u64> = cases.iter().map(|c| c["max_length"].as_u64().unwrap()).collect();
    lengths.dedup();
    let (mut truncated, mut with_unk) = (0, 0);
    for max_length in lengths {
        let batch: Vec<&serde_json::Value> = cases.iter().filter(|c| c["max_length"] == max_length).collect();
        let prompts: Vec<&str> = batch.iter().map(|c| c["prompt"].as_str().unwrap()).collect();
        let out = tok.tokenize(&prompts, max_length as usize).unwrap();
        assert_eq!((out.batch, out.max_length), (prompts.len(), max_length as usize));
        for (i, case) in batch.iter().enumerate() {
            let (ids, mask) = (u32s(&case["input_ids"]), u32s(&case["attention_mask"]));
            let prompt = prompts[i];
            assert_eq!(out.row(i), ids.as_slice(), "ids of {prompt:?} at max_length {max_length}");
            let our_mask = &out.attention_mask[i * max_length as usize..(i + 1) * max_length as usize];
            assert_eq!(our_mask, mask.as_slice(), "mask of {prompt:?} at max_length {max_length}");
            let full = case["untruncated_len"].as_u64().unwrap() as usize;
            assert_eq!(out.dropped[i], full.saturating_sub(max_length as usize), "dropped count of {prompt:?}");
            assert_eq!(tok.encode(prompt).unwrap().len(), full, "untruncated length of {prompt:?}");
            truncated += usize::from(out.dropped[i] > 0);
            with_unk += usize::from(ids.contains(&T5Tokenizer::UNK));
        }
    }
    // The fixture exercises what it claims to: truncation (EOS kept) and characters T5 cannot spell.
    assert!(truncated >= 4 && with_unk >= 4, "truncated {truncated}, with <unk> {with_unk}");
}

#[test]
fn truncation_keeps_eos_and_padding_is_masked() {
    let tok = T5Tokenizer::new().unwrap();
    let long = "word ".repeat(1000);
    let out = tok.tokenize(&[long.as_str(), "a photo of a cat", ""], T5_MAX_LENGTH_SCHNELL).unwrap();
    assert_eq!(out.row(0)[T5_MAX_LENGTH_SCHNELL - 1], T5Tokenizer::EOS);
    assert!(out.dropped[0] > 700);
    assert_eq!(&out.row(1)[..8], &[3, 9, 1202, 13, 3, 9, 1712, 1]);
    assert!(out.row(1)[8..].iter().all(|&t| t == T5Tokenizer::PAD));
    assert_eq!(out.row(2)[0], T5Tokenizer::EOS);
    let mask_sum: Vec<u32> = (0..3).map(|i| out.attention_mask[i * 256..(i + 1) * 256].iter().sum()).collect();
    assert_eq!(mask_sum, vec![256, 8, 1]);
    assert_eq!(out.dropped[1..], [0, 0]);

    let dev = Device::Cpu;
    let ids = out.ids_tensor(&dev).unwrap();
    assert_eq!((ids.dims(), ids.dtype()), (&[3, 256][..], DType::U32));
    assert_eq!(out.mask_tensor(&dev).unwrap().sum_all().unwrap().to_scalar::<u32>().unwrap(), 265);

    // max_length 1: only room for </s>, as transformers gives.
    let one = tok.tokenize(&["a photo"], 1).unwrap();
    assert_eq!((one.input_ids.clone(), one.attention_mask.clone()), (vec![1], vec![1]));
    assert_eq!(one.dropped, vec![3]);
    // An empty batch is an empty result.
    let none = tok.tokenize::<&str>(&[], T5_MAX_LENGTH_DEV).unwrap();
    assert_eq!((none.batch, none.input_ids.len()), (0, 0));
    assert!(tok.tokenize(&["x"], 0).unwrap_err().to_string().contains("max_length"));
}

#[test]
fn decode_matches_transformers() {
    let tok = T5Tokenizer::new().unwrap();
    for case in fixture()["decodes"].as_array().unwrap() {
        let ids = u32s(&case["input_ids"]);
        assert_eq!(tok.decode(&ids, true).unwrap(), case["skip_special_tokens"].as_str().unwrap(), "{ids:?}");
    }
}

#[test]
fn a_tokenizer_file_from_disk_works_and_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded JSON written out, as a user's tokenizer_2/tokenizer.json would be.
    let mut json = Vec::new();
    let gz = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/t5_tokenizer.json.gz")).unwrap();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut json).unwrap();
    let good = dir.path().join("tokenizer.json");
    std::fs::write(&good, &json).unwrap();
    let from_file = T5Tokenizer::from_file(&good).unwrap();
    assert!(from_file.source().contains("tokenizer.json"));
    let embedded = T5Tokenizer::new().unwrap();
    let prompts = ["Café naïve 🐱, 12345", "a photo of a cat"];
    assert_eq!(from_file.tokenize(&prompts, 64).unwrap(), embedded.tokenize(&prompts, 64).unwrap());

    // A file that configures its own truncation/padding (as some exports do) still gives
    // sd-scripts' layout: the per-call settings win.
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value["truncation"] =
        serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
    value["padding"] = serde_json::json!({"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
    let configured = dir.path().join("configured.json");
    std::fs::write(&configured, serde_json::to_vec(&value).unwrap()).unwrap();
    let c = T5Tokenizer::from_file(&configured).unwrap();
    assert_eq!(c.tokenize(&prompts, 64).unwrap(), embedded.tokenize(&prompts, 64).unwrap());

    let check = |name: &str, bytes: &[u8], expect: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = T5Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: error does not name the file: {err}");
        assert!(err.contains(expect), "{name}: {err}");
    };
    check("truncated.json", &json[..json.len() / 2], "not a usable tokenizer.json");
    check("garbage.json", b"\x1f\x8b\x08\x00 not json", "not a usable tokenizer.json");
    check("empty.json", b"", "not a usable tokenizer.json");
    check("object.json", b"{}", "not a usable tokenizer.json");
    // A valid tokenizer.json of another model: refused by its special ids.
    let word_level = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "</s>": 5, "<pad>": 1, "a": 2}, "unk_token": "[UNK]"}
    });
    check("other_model.json", &serde_json::to_vec(&word_level).unwrap(), "not a T5 tokenizer");
    // Right ids, but nothing appends </s>.
    let mut no_eos = word_level.clone();
    no_eos["model"]["vocab"] = serde_json::json!({"<pad>": 0, "</s>": 1, "[UNK]": 2, "a": 3});
    check("no_eos.json", &serde_json::to_vec(&no_eos).unwrap(), "</s>");
    // The T5 file with its charsmap corrupted.
    let mut bad_map = value.clone();
    bad_map["normalizer"]["normalizers"][0]["precompiled_charsmap"] = serde_json::json!("!!not base64!!");
    check("bad_charsmap.json", &serde_json::to_vec(&bad_map).unwrap(), "not a usable tokenizer.json");

    let missing = dir.path().join("missing.json");
    let err = T5Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
}
