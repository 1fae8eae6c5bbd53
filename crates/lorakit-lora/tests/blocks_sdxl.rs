//! SDXL block slots (block_dims, block_alphas, block LR weights) equal sd-scripts'
//! `get_block_index(name, is_sdxl=True)` for every module sd-scripts creates on full-size SDXL
//! (tests/fixtures/reference/sdxl_tiny/sdxl_full_lora_names.json, written from sd-scripts' own
//! SGM U-Net by tools/reference/make_sdxl_tiny.py).

use lorakit_lora::blocks::BlockLayout;
use std::path::Path;

#[test]
fn every_full_size_sdxl_module_gets_sd_scripts_block_index() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference/sdxl_tiny/sdxl_full_lora_names.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let modules = doc["modules"].as_object().unwrap();
    let unet: Vec<&String> = modules.keys().filter(|n| n.starts_with("lora_unet_")).collect();
    assert_eq!(unet.len(), 788);
    assert_eq!(BlockLayout::detect(unet.iter().map(|s| s.as_str())), BlockLayout::Sdxl);
    assert_eq!(BlockLayout::Sdxl.slots(), doc["num_blocks"].as_u64().unwrap() as usize);
    for name in unet {
        let expected = modules[name]["block_idx"].as_u64().map(|i| i as usize);
        assert_eq!(BlockLayout::Sdxl.slot(name), expected, "{name}");
    }
}
