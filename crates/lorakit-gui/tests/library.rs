//! The LoRA library scan: LoRA files under the roots with their metadata, other safetensors
//! files counted apart, hidden folders skipped, symlinks out of a root not followed.

use std::path::{Path, PathBuf};

use lorakit_gui::library::scan;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/reference/trained_lora").join(name)
}

#[test]
fn scan_lists_loras_with_metadata_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("runs/a")).unwrap();
    std::fs::copy(fixture("tiny_sdxl_trained.safetensors"), root.join("runs/a/sdxl.safetensors")).unwrap();
    std::fs::copy(fixture("tiny_flux_trained.safetensors"), root.join("flux.safetensors")).unwrap();
    // A U-Net checkpoint is not a LoRA; a truncated file cannot be read; both are counted.
    std::fs::copy(
        repo().join("examples/quickstart/shapes-sd15/unet/diffusion_pytorch_model.safetensors"),
        root.join("unet.safetensors"),
    )
    .unwrap();
    std::fs::write(root.join("broken.safetensors"), b"\x10\0\0\0\0\0\0\0{").unwrap();
    // Hidden folders (the GUI's own state, .git) are skipped.
    std::fs::create_dir(root.join(".state")).unwrap();
    std::fs::copy(fixture("tiny_flux_trained.safetensors"), root.join(".state/hidden.safetensors")).unwrap();
    // A symlink to a LoRA outside the root is not followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny_flux_trained.safetensors"), outside.path().join("out.safetensors")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("out.safetensors"), root.join("link.safetensors")).unwrap();

    let library = scan(std::slice::from_ref(&root));
    let mut paths: Vec<&str> = library.loras.iter().map(|l| l.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["flux.safetensors", "runs/a/sdxl.safetensors"]);
    let sdxl = library.loras.iter().find(|l| l.path.ends_with("sdxl.safetensors")).unwrap();
    assert_eq!(sdxl.base_model, "SDXL");
    // The ranks `lorakit inspect` finds (modules narrower than the rank keep fewer).
    let inspected = lorakit_lora::inspect::inspect_file(&fixture("tiny_sdxl_trained.safetensors")).unwrap();
    assert_eq!(sdxl.ranks, inspected.ranks.keys().copied().collect::<Vec<_>>());
    assert_eq!(sdxl.alpha.as_deref(), Some("4.0"));
    assert_eq!(sdxl.resolution, Some((64, 64)));
    assert_eq!((sdxl.epoch, sdxl.steps), (Some(2), Some(8)));
    assert_eq!(sdxl.title.as_deref(), Some("tiny_sdxl_trained"));
    assert_eq!(sdxl.size, std::fs::metadata(fixture("tiny_sdxl_trained.safetensors")).unwrap().len());
    let flux = library.loras.iter().find(|l| l.path == "flux.safetensors").unwrap();
    assert!(flux.base_model.starts_with("Flux"), "{}", flux.base_model);
    let mut other: Vec<&str> = library.other.iter().map(|(_, p, _)| p.as_str()).collect();
    other.sort_unstable();
    assert_eq!(other, ["broken.safetensors", "unet.safetensors"]);
    let broken = library.other.iter().find(|(_, p, _)| p == "broken.safetensors").unwrap();
    assert_ne!(broken.2, "not a LoRA", "an unreadable file says why");
    assert!(!library.truncated);
}

/// SD3 LoRAs in every published layout are listed with SD3 as their base model (the Loras page's
/// base-model filter offers what these say); an SD3 checkpoint is not a LoRA.
#[test]
fn sd3_loras_are_listed_with_their_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let sd3 = repo().join("tests/fixtures/reference/sd3_lora");
    let layouts = ["kohya", "kohya_split_qkv", "diffusers", "comfy", "onetrainer"];
    for layout in layouts {
        std::fs::copy(sd3.join(format!("{layout}.safetensors")), root.join(format!("{layout}.safetensors"))).unwrap();
    }
    std::fs::copy(
        repo().join("tests/fixtures/reference/sd3_checkpoint/sd35m_sai.safetensors"),
        root.join("checkpoint.safetensors"),
    )
    .unwrap();
    let library = scan(std::slice::from_ref(&root));
    assert_eq!(library.loras.len(), layouts.len(), "{:?}", library.loras.iter().map(|l| &l.path).collect::<Vec<_>>());
    for lora in &library.loras {
        // What `lorakit inspect` says, read from the header alone.
        let inspected = lorakit_lora::inspect::inspect_file(&root.join(&lora.path)).unwrap();
        assert_eq!(lora.base_model, inspected.base_model, "{}", lora.path);
        assert_eq!(lora.base_model, "SD3 (3.5 Medium)", "{}", lora.path);
    }
    let other: Vec<&str> = library.other.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(other, ["checkpoint.safetensors"]);
}
