//! `lorakit resize` refuses LyCORIS LoHa/LoKr files by name (their weight change is no up·down
//! pair it could truncate), and writes nothing.

use std::path::PathBuf;

use lorakit_lora::keys::Scheme;
use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
use lorakit_lora::resize_file::{resize_file, ResizeFileError};
use lorakit_lora::safetensors_file::{serialize, Precision, Tensor};

#[test]
fn loha_and_lokr_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/lycoris/lycoris.safetensors");
    // A LoKr-only file, written here from two factors.
    let lokr = dir.path().join("lokr.safetensors");
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("lora_unet_a.lokr_w1".to_string(), Tensor::new(vec![2, 2], vec![0.1; 4]));
    tensors.insert("lora_unet_a.lokr_w2".to_string(), Tensor::new(vec![3, 3], vec![0.1; 9]));
    tensors.insert("lora_unet_a.alpha".to_string(), Tensor::scalar(1.0));
    std::fs::write(&lokr, serialize(&tensors, &Default::default(), Precision::F32).unwrap()).unwrap();
    let settings = ResizeSettings::new(ResizeMethod::Fixed, 2, None).unwrap();
    for (input, scheme, word) in [(fixture, Scheme::LoHa, "LoHa"), (lokr, Scheme::LoKr, "LoKr")] {
        let output = dir.path().join("out.safetensors");
        let err = resize_file(&input, &output, &settings, Precision::F32).unwrap_err();
        assert!(matches!(&err, ResizeFileError::Lycoris { scheme: s, .. } if *s == scheme), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(word) && text.contains("resize does not support"), "{text}");
        assert!(!output.exists(), "nothing is written");
    }
}
