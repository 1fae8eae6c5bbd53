//! A LoRA trained by lorakit, loaded by diffusers (`pipe.load_lora_weights`, see
//! tools/reference/diffusers_lora_compat.py, which also checks that no key was missing or
//! unexpected), gives the same text-encoder and UNet outputs as lorakit with that LoRA applied.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::lora_inject::{load_lora_file, sets_from_files, ComponentTargets};
use lorakit_models::pipeline::StableDiffusion;
use lorakit_nn::ForwardCtx;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f32 {
    let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / scale
}

#[test]
fn lorakit_lora_in_diffusers_matches_lorakit() {
    let sd = StableDiffusion::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(
        repo("tests/fixtures/reference/trained_lora/diffusers_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let components = [
        ComponentTargets { prefix: "lora_unet", targets: sd.unet_targets() },
        ComponentTargets { prefix: "lora_te", targets: &sd.text_encoder_targets()[0] },
    ];
    let lora = repo("tests/fixtures/reference/trained_lora/tiny_trained.safetensors");
    let loaded = load_lora_file(&lora, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], 2, &Device::Cpu).unwrap();

    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let te = sd
        .clip_text_encoder()
        .unwrap()
        .forward(&ids, &ForwardCtx::with_lora(sets[1].clone()))
        .unwrap()
        .last_hidden_state;
    let te_err = rel_err(&te, &io["text_encoder_out"]);
    assert!(te_err <= 1e-4, "text encoder: relative error {te_err}");

    let unet = sd
        .unet
        .forward(&io["sample"], &io["timestep"], &io["text_encoder_out"], &ForwardCtx::with_lora(sets[0].clone()))
        .unwrap();
    let unet_err = rel_err(&unet, &io["unet_out"]);
    assert!(unet_err <= 1e-4, "UNet: relative error {unet_err}");

    // The LoRA matters: without it the outputs differ clearly.
    let plain =
        sd.unet.forward(&io["sample"], &io["timestep"], &io["text_encoder_out"], &ForwardCtx::default()).unwrap();
    assert!(rel_err(&plain, &io["unet_out"]) > 1e-3);
}

/// The SDXL case (tools/reference/diffusers_lora_compat_sdxl.py): a LoRA lorakit trained on the
/// tiny SDXL model (SGM U-Net names, lora_te1/lora_te2) loaded by `StableDiffusionXLPipeline`.
#[test]
fn lorakit_sdxl_lora_in_diffusers_matches_lorakit() {
    use lorakit_models::pipeline::TextEncoders;
    use lorakit_models::sdxl_text::SdxlTokens;
    use lorakit_models::unet_2d::AddedConditions;

    let sd = StableDiffusion::load(&repo("examples/quickstart/tiny-sdxl"), DType::F32, &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(
        repo("tests/fixtures/reference/trained_lora/diffusers_io_sdxl.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let lora = repo("tests/fixtures/reference/trained_lora/tiny_sdxl_trained.safetensors");
    let components = sd.lora_components();
    let loaded = load_lora_file(&lora, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], components.len(), &Device::Cpu).unwrap();

    let TextEncoders::Sdxl(te) = &sd.text else { panic!("an SDXL model") };
    let ids = |k: &str| io[k].to_dtype(DType::U32).unwrap().unsqueeze(1).unwrap();
    let tokens = SdxlTokens { ids1: ids("input_ids1"), ids2: ids("input_ids2") };
    let (c1, c2) = (ForwardCtx::with_lora(sets[1].clone()), ForwardCtx::with_lora(sets[2].clone()));
    let out = te.encode_tokens(&tokens, [&c1, &c2]).unwrap();
    let context = Tensor::cat(&[&out.hidden_states1, &out.hidden_states2], 2).unwrap();
    let err = rel_err(&context, &io["context"]);
    assert!(err <= 1e-4, "text encoders: relative error {err}");
    let err = rel_err(&out.pool2, &io["pooled"]);
    assert!(err <= 1e-4, "pooled: relative error {err}");

    let added = AddedConditions { text_embeds: io["pooled"].clone(), time_ids: io["time_ids"].clone() };
    let unet_ctx = ForwardCtx::with_lora(sets[0].clone());
    let unet = sd.unet.forward_with(&io["sample"], &io["timestep"], &io["context"], Some(&added), &unet_ctx).unwrap();
    let err = rel_err(&unet, &io["unet_out"]);
    assert!(err <= 1e-4, "UNet: relative error {err}");
    let plain = sd
        .unet
        .forward_with(&io["sample"], &io["timestep"], &io["context"], Some(&added), &ForwardCtx::default())
        .unwrap();
    assert!(rel_err(&plain, &io["unet_out"]) > 1e-3, "the LoRA matters");
}

/// The Flux case (tools/reference/diffusers_lora_compat_flux.py, diffusers 0.42.1 / peft 0.21.2):
/// a LoRA lorakit trained on the tiny Flux pipeline (kohya names: fused `img_attn_qkv` and
/// `single_blocks_N_linear1`, `lora_te1_…` for CLIP-L) loaded by `FluxPipeline.load_lora_weights`
/// with no key left over; the transformer and CLIP-L with the LoRA compute what lorakit computes.
#[test]
fn lorakit_flux_lora_in_diffusers_matches_lorakit() {
    use lorakit_models::dit::flux::{image_ids, pack_latents, FluxInputs};
    use lorakit_models::flux_pipeline::{FluxOptions, FluxPaths, FluxPipeline};

    let paths = FluxPaths { model: repo("tests/fixtures/reference/flux_tiny/pipeline"), ..Default::default() };
    let flux = FluxPipeline::load(&paths, &FluxOptions::default(), &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(
        repo("tests/fixtures/reference/trained_lora/diffusers_io_flux.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let lora = repo("tests/fixtures/reference/trained_lora/tiny_flux_trained.safetensors");
    let components = flux.lora_components();
    let loaded = load_lora_file(&lora, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], components.len(), &Device::Cpu).unwrap();

    let latents = &io["latents"];
    let (h, w) = (latents.dim(2).unwrap(), latents.dim(3).unwrap());
    assert_eq!(
        image_ids(h, w, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap(),
        io["img_ids"].to_vec2::<f32>().unwrap()
    );
    let img = pack_latents(latents).unwrap();
    let run = |ctx: &ForwardCtx| {
        flux.transformer()
            .forward(
                &FluxInputs {
                    img: &img,
                    img_ids: &io["img_ids"],
                    txt: &io["txt"],
                    txt_ids: &io["txt_ids"],
                    timesteps: &io["timesteps"],
                    y: &io["pooled"],
                    guidance: Some(&io["guidance"]),
                    txt_mask: None,
                },
                ctx,
            )
            .unwrap()
    };
    let out = run(&ForwardCtx::with_lora(sets[0].clone()));
    let err = rel_err(&out, &io["out"]);
    assert!(err <= 1e-4, "transformer: relative error {err}");
    assert!(rel_err(&run(&ForwardCtx::default()), &io["out"]) > 1e-3, "the LoRA matters");

    let ids = io["clip_ids"].to_dtype(DType::U32).unwrap();
    let clip = flux.clip_l().expect("CLIP-L loaded");
    let pooled = clip.forward(&ids, &ForwardCtx::with_lora(sets[1].clone())).unwrap().pooler_output;
    let err = rel_err(&pooled, &io["clip_pooled"]);
    assert!(err <= 1e-4, "CLIP-L pooled: relative error {err}");
}

/// The SD3 case (tools/reference/diffusers_lora_compat_sd3.py, diffusers 0.42.1 / peft 0.21.2): a
/// LoRA lorakit trained on the tiny SD3 pipeline (kohya names: the MMDiT's fused `attn_qkv`,
/// `lora_te1_…` CLIP-L, `lora_te2_…` CLIP-G; alpha 2 ≠ rank 4). diffusers loads nothing from the
/// kohya file; `lorakit convert --to diffusers` makes the file it loads with no key left over, and
/// the transformer and both CLIPs with that file compute what lorakit computes with the kohya one.
#[test]
fn lorakit_sd3_lora_in_diffusers_matches_lorakit() {
    use lorakit_lora::convert::{convert_file, Target};
    use lorakit_models::checkpoint::sd3::Sd3Paths;
    use lorakit_models::dit::mmdit::MmditInputs;
    use lorakit_models::sd3_pipeline::{Sd3Options, Sd3Pipeline};
    use sha2::{Digest, Sha256};

    let dir = repo("tests/fixtures/reference/trained_lora");
    let io_path = dir.join("diffusers_io_sd3.safetensors");
    let io = candle_core::safetensors::load(&io_path, &Device::Cpu).unwrap();
    let meta = lorakit_lora::safetensors_file::LoraFile::open(&io_path).unwrap().metadata().clone();
    assert!(meta["diffusers"].starts_with("0.42"), "{}", meta["diffusers"]);
    // What users of diffusers get from the kohya file as lorakit writes it: nothing.
    assert_eq!(meta["kohya_as_written"], "loaded 0 LoRA layers");

    let lora = dir.join("tiny_sd3_trained.safetensors");
    // The file diffusers loaded is the one lorakit's conversion writes.
    let tmp = tempfile::tempdir().unwrap();
    let converted = tmp.path().join("diffusers.safetensors");
    convert_file(&lora, &converted, Target::Peft, None, None).unwrap();
    let sha: String = Sha256::digest(std::fs::read(&converted).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, meta["converted_sha256"], "not the file diffusers loaded; rerun the script");

    let paths = Sd3Paths { model: repo("tests/fixtures/reference/sd3_tiny/pipeline"), ..Default::default() };
    let sd3 = Sd3Pipeline::load(&paths, &Sd3Options::default(), &Device::Cpu).unwrap();
    let components = sd3.lora_components();
    let loaded = load_lora_file(&lora, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], components.len(), &Device::Cpu).unwrap();

    let run = |ctx: &ForwardCtx| {
        let inputs = MmditInputs::new(&io["latents"], &io["timesteps"], &io["pooled"], &io["context"]);
        sd3.transformer().forward(&inputs, ctx).unwrap()
    };
    let out = run(&ForwardCtx::with_lora(sets[0].clone()));
    let err = rel_err(&out, &io["out"]);
    eprintln!("transformer: relative error {err:.2e}");
    assert!(err <= 1e-4, "transformer: relative error {err}");
    assert!(rel_err(&run(&ForwardCtx::default()), &io["out"]) > 1e-3, "the LoRA matters");

    let ids = io["clip_ids"].to_dtype(DType::U32).unwrap();
    let te = sd3.text_encoders();
    for (name, clip, set) in [("clip_l", te.clip_l(), &sets[1]), ("clip_g", te.clip_g(), &sets[2])] {
        let clip = clip.expect("CLIP loaded");
        let forward = |ctx: &ForwardCtx| {
            let o = clip.forward(&ids, ctx).unwrap();
            let penultimate = o.text.hidden_states[o.text.hidden_states.len() - 2].clone();
            (penultimate, o.text_embeds)
        };
        let (penultimate, embeds) = forward(&ForwardCtx::with_lora(set.clone()));
        let err = rel_err(&penultimate, &io[&format!("{name}_penultimate")]);
        eprintln!("{name} penultimate layer: relative error {err:.2e}");
        assert!(err <= 1e-4, "{name} penultimate layer: relative error {err}");
        let err = rel_err(&embeds, &io[&format!("{name}_text_embeds")]);
        eprintln!("{name} text_embeds: relative error {err:.2e}");
        assert!(err <= 1e-4, "{name} text_embeds: relative error {err}");
        let (_, plain) = forward(&ForwardCtx::default());
        assert!(rel_err(&plain, &io[&format!("{name}_text_embeds")]) > 1e-3, "{name}: the LoRA matters");
    }
}
