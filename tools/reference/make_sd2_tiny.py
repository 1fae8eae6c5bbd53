#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's SD 2.x support (tiny widths, SD 2.x structure).

What SD 2.x changes against SD1.5, and what this fixture pins down:

* UNet: `use_linear_projection` (proj_in/proj_out of every transformer are linears, stored as
  2-D in single files too) and a different head count per level (`attention_head_dim` as a list);
* text encoder: OpenCLIP ViT-H, i.e. GELU instead of quick-GELU, conditioning on the penultimate
  layer; diffusers' SD 2 folders hold the encoder already cut to 23 of its 24 layers, single files
  hold all 24 under `cond_stage_model.model.*` with q/k/v fused in `attn.in_proj_weight`;
* v-prediction (`prediction_type = "v_prediction"` in the scheduler config).

Writes tests/fixtures/reference/sd2_tiny/:

* diffusers/ — tiny UNet, VAE (SD1.5 tiny's), text encoder cut to `layers` of `layers + 1`, and a
  v-prediction scheduler config; weights f16 (values fp16-exact);
* single_file.safetensors — the same model as one LDM file with OpenCLIP text-encoder keys and the
  full `layers + 1` encoder; our mapping is verified here against diffusers' and sd-scripts' own
  SD 2 converters (which both hard-code dropping layer 23 of real SD 2 files, so the tiny file's
  last layer is compared by hand);
* io_unet.safetensors, io_text_encoder.safetensors — float32 inputs and outputs.

Run (from the repository root, sd-scripts at 48d368f on SD_SCRIPTS as for make_sd15_tiny.py):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_sd2_tiny.py
"""
import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd15_tiny as base  # noqa: E402  (helpers, SD1.5 tiny VAE, LDM key mapping)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

UNET_SD2_TINY = dict(
    base.UNET_COMMON,
    sample_size=16,
    block_out_channels=(16, 32, 32, 32),
    norm_num_groups=8,
    cross_attention_dim=48,  # != every block width, so a transposed linear cannot pass by accident
    attention_head_dim=(2, 2, 4, 4),  # heads per level (diffusers' name); SD 2: (5, 10, 20, 20)
    use_linear_projection=True,
)
# OpenCLIP's text tower: GELU (erf). LAYERS + 1 are built; SD 2 conditions on the output of LAYERS.
LAYERS = 3
CLIP_SD2_TINY = dict(base.CLIP_TINY, hidden_act="gelu", hidden_size=48, intermediate_size=96,
                     num_attention_heads=4, projection_dim=48, num_hidden_layers=LAYERS + 1)
SEEDS = dict(unet=4001, text_encoder=4003, io_text=4101, io_unet=4102, text_projection=4201)
# stabilityai/stable-diffusion-2-1: unet/config.json and text_encoder/config.json (the encoder cut to
# 23 of OpenCLIP-H's 24 layers; its token ids are transformers' placeholders, as published).
UNET_SD2_FULL = dict(base.UNET_COMMON, sample_size=96, block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
                     cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                     upcast_attention=True)
CLIP_SD2_FULL = dict(base.CLIP_COMMON, hidden_act="gelu", vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                     num_hidden_layers=23, num_attention_heads=16, projection_dim=512, bos_token_id=0, eos_token_id=2,
                     pad_token_id=1)
SD2_UNET_PARAM_COUNT = 865_910_724
SCHEDULER = dict(_class_name="DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, prediction_type="v_prediction", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)


def open_clip_keys(full_te_sd, layers, hidden, prefix="cond_stage_model.model."):
    """HF CLIPTextModel state dict (all `layers`) -> OpenCLIP (LDM SD 2 single file) keys (ours).
    Works on real or meta tensors."""
    out = OrderedDict()
    tm = "text_model."
    out[prefix + "token_embedding.weight"] = full_te_sd[tm + "embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = full_te_sd[tm + "embeddings.position_embedding.weight"]
    for n in ("weight", "bias"):
        out[prefix + "ln_final." + n] = full_te_sd[tm + "final_layer_norm." + n]
    rename = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
              "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(layers):
        src = f"{tm}encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for a, b in rename.items():
            for n in ("weight", "bias"):
                out[dst + f"{b}.{n}"] = full_te_sd[src + f"{a}.{n}"]
        for n in ("weight", "bias"):
            out[dst + f"attn.in_proj_{n}"] = torch.cat(
                [full_te_sd[src + f"self_attn.{p}_proj.{n}"] for p in ("q", "k", "v")], dim=0)
    # Present in real files, unused by SD 2 conditioning: a loader must skip them.
    device = full_te_sd[tm + "final_layer_norm.weight"].device
    out[prefix + "text_projection"] = base.randn(base.gen(SEEDS["text_projection"]), hidden, hidden).half().float().to(device)
    out[prefix + "logit_scale"] = torch.tensor(4.6052, device=device)
    return out


def verify_text_encoder_mapping(ldm, te_sd):
    """diffusers' and sd-scripts' SD 2 converters must give back the cut encoder's weights from
    our keys. Both drop `resblocks.23` by name (real SD 2 has 24 layers), so here the tiny file's
    extra last layer is removed first and checked to be exactly that layer's keys."""
    last = f".resblocks.{LAYERS}."
    extra = sorted(k for k in ldm if last in k)
    assert len(extra) == 12, extra  # ln_1/ln_2/attn.in_proj/attn.out_proj/mlp.c_fc/mlp.c_proj, w+b
    cut = {k: v for k, v in ldm.items() if last not in k}
    rep = {}
    t = base.dsf.convert_open_clip_checkpoint(base.build_clip(dict(CLIP_SD2_TINY, num_hidden_layers=LAYERS)), cut)
    rep["diffusers.convert_open_clip_checkpoint"] = base.compare_sd(
        "diffusers open_clip", t, te_sd, ignore=("text_model.embeddings.position_ids",))
    t2 = base.kohya_model_util.convert_ldm_clip_checkpoint_v2(cut, 77)
    rep["sd-scripts.convert_ldm_clip_checkpoint_v2"] = base.compare_sd(
        "sd-scripts clip v2", t2, te_sd, ignore=("text_model.embeddings.position_ids",))
    return rep


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/reference/sd2_tiny")
    args = ap.parse_args()
    base.set_determinism()
    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    summary = OrderedDict()

    unet = base.reinit_(base.build_unet(UNET_SD2_TINY), SEEDS["unet"]).eval()
    vae = base.reinit_(base.build_vae(base.VAE_TINY), base.SEEDS["vae"]).eval()
    full_te = base.reinit_(base.build_clip(CLIP_SD2_TINY), SEEDS["text_encoder"]).eval()
    # The cut encoder of a diffusers SD 2 folder: the first LAYERS layers, same weights.
    te = base.build_clip(dict(CLIP_SD2_TINY, num_hidden_layers=LAYERS)).eval()
    missing, unexpected = te.load_state_dict(full_te.state_dict(), strict=False)
    assert not missing and all(f"layers.{LAYERS}." in k for k in unexpected), (missing, unexpected)
    for m in (unet, vae, full_te, te):
        m.requires_grad_(False)
    unet_sd, vae_sd, te_sd = base.state_dict_f32(unet), base.state_dict_f32(vae), base.state_dict_f32(te)
    summary["param_counts"] = dict(unet=sum(p.numel() for p in unet.parameters()),
                                   text_encoder=sum(p.numel() for p in te.parameters()))
    for name, p in unet_sd.items():
        if name.endswith(("proj_in.weight", "proj_out.weight")):
            assert p.dim() == 2, f"{name} should be a linear in SD 2"

    # ---------------------------------------------------------------- inputs / outputs
    g = base.gen(SEEDS["io_text"])
    bos, eos = CLIP_SD2_TINY["bos_token_id"], CLIP_SD2_TINY["eos_token_id"]
    input_ids = base.make_input_ids(g, [9, 75], bos, eos)
    with torch.no_grad():
        cut = te(input_ids, return_dict=True).last_hidden_state
        full = full_te(input_ids, output_hidden_states=True, return_dict=True)
        penultimate = full_te.text_model.final_layer_norm(full.hidden_states[-2])
    # What SD 2 conditions on, two ways: the cut encoder's output == the full encoder's
    # penultimate layer through the final norm (sd-scripts' v2 path).
    assert torch.equal(cut, penultimate), float((cut - penultimate).abs().max())
    io_te = OrderedDict(input_ids=input_ids, last_hidden_state=cut)

    g = base.gen(SEEDS["io_unet"])
    io_unet = OrderedDict()
    io_unet["sample"] = base.randn(g, 2, 4, 16, 16)
    io_unet["timestep"] = torch.tensor([7, 951], dtype=torch.int64)
    io_unet["encoder_hidden_states"] = base.randn(g, 2, 77, 48)
    io_unet["sample_b"] = base.randn(g, 1, 4, 16, 24)
    io_unet["timestep_b"] = torch.tensor([500], dtype=torch.int64)
    io_unet["ehs_b"] = base.randn(g, 1, 154, 48)
    with torch.no_grad():
        io_unet["out"] = unet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample
        io_unet["out_b"] = unet(io_unet["sample_b"], io_unet["timestep_b"], io_unet["ehs_b"]).sample
    for k in ("out", "out_b"):
        base.check_output(k, io_unet[k])
    base.check_output("text last_hidden_state", cut)
    base.check_all_params_influence(
        unet, lambda: [unet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample], "unet")

    # ---------------------------------------------------------------- single file
    ldm = OrderedDict()
    for k, v in base.to_ldm(unet_sd, vae_sd, {}, UNET_SD2_TINY, base.VAE_TINY).items():
        ldm[k] = v
    ldm.update(open_clip_keys(base.state_dict_f32(full_te), LAYERS + 1, CLIP_SD2_TINY["hidden_size"]))
    rep = OrderedDict()
    u = base.dsf.convert_ldm_unet_checkpoint(dict(ldm), dict(UNET_SD2_TINY))
    rep["diffusers.convert_ldm_unet_checkpoint"] = base.compare_sd("diffusers unet", u, unet_sd)
    u2 = base.kohya_model_util.convert_ldm_unet_checkpoint(True, dict(ldm), dict(UNET_SD2_TINY))
    rep["sd-scripts.convert_ldm_unet_checkpoint(v2)"] = base.compare_sd("sd-scripts unet v2", u2, unet_sd)
    v = base.dsf.convert_ldm_vae_checkpoint(dict(ldm), dict(base.VAE_TINY))
    rep["diffusers.convert_ldm_vae_checkpoint"] = base.compare_sd("diffusers vae", v, vae_sd)
    rep.update(verify_text_encoder_mapping(ldm, te_sd))
    summary["converter_checks"] = rep  # tensors each converter gave back identical to ours
    half = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in ldm.items())
    base.st_save(os.path.join(out, "single_file.safetensors"), half)

    # ---------------------------------------------------------------- diffusers folder
    d = os.path.join(out, "diffusers")
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(d, sub))
    cast = lambda sd: OrderedDict((k, v.half()) for k, v in sd.items())  # noqa: E731
    unet.save_config(os.path.join(d, "unet"))
    base.st_save(os.path.join(d, "unet", "diffusion_pytorch_model.safetensors"), cast(unet_sd), {"format": "pt"})
    vae.save_config(os.path.join(d, "vae"))
    base.st_save(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors"), cast(vae_sd), {"format": "pt"})
    te.config.torch_dtype = "float16"
    te.config.architectures = ["CLIPTextModel"]
    te.config.save_pretrained(os.path.join(d, "text_encoder"))
    base.st_save(os.path.join(d, "text_encoder", "model.safetensors"), cast(te_sd), {"format": "pt"})
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
        f.write("\n")
    model_index = OrderedDict([
        ("_class_name", "StableDiffusionPipeline"),
        ("scheduler", ["diffusers", "DDIMScheduler"]),
        ("text_encoder", ["transformers", "CLIPTextModel"]),
        ("unet", ["diffusers", "UNet2DConditionModel"]),
        ("vae", ["diffusers", "AutoencoderKL"]),
    ])
    with open(os.path.join(d, "model_index.json"), "w") as f:
        json.dump(model_index, f, indent=2)
        f.write("\n")
    # The folder reloads with the libraries' own loaders to the same outputs.
    u3 = base.UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), torch_dtype=torch.float32).eval()
    t3 = base.CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), torch_dtype=torch.float32,
                                            attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(u3(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample,
                           io_unet["out"])
        assert torch.equal(t3(input_ids).last_hidden_state, cut)

    # ---------------------------------------------------------------- full-size SD 2.1 shapes
    with torch.device("meta"):
        unet_full = base.build_unet(UNET_SD2_FULL)
        te_full = base.build_clip(CLIP_SD2_FULL)
        te_full_24 = base.build_clip(dict(CLIP_SD2_FULL, num_hidden_layers=24))
    n_unet = sum(p.numel() for p in unet_full.parameters())
    assert n_unet == SD2_UNET_PARAM_COUNT, n_unet
    unet_full_sd, te_full_sd = unet_full.state_dict(), te_full.state_dict()
    ldm_full = OrderedDict()
    for k, v in unet_full_sd.items():
        ldm_full["model.diffusion_model." + base.unet_key_to_ldm(k, UNET_SD2_FULL)] = v
    ldm_full.update(open_clip_keys(te_full_24.state_dict(), 24, 1024))
    # The same converters as for the tiny file, on shapes (they drop layer 23 themselves here).
    base.compare_sd("diffusers unet (full)", base.dsf.convert_ldm_unet_checkpoint(dict(ldm_full), dict(UNET_SD2_FULL)),
                    unet_full_sd, values=False)
    base.compare_sd("diffusers open_clip (full)", base.dsf.convert_open_clip_checkpoint(te_full, dict(ldm_full)),
                    te_full_sd, ignore=("text_model.embeddings.position_ids",), values=False)
    shapes = lambda sd: OrderedDict((k, list(v.shape)) for k, v in sd.items() if k != "text_model.embeddings.position_ids")  # noqa: E731
    base.dump_json(OrderedDict(
        source="stabilityai/stable-diffusion-2-1 unet/ and text_encoder/ config.json, built on the meta device",
        unet_params=n_unet,
        configs=OrderedDict(unet=base.clean_config(unet_full.config), text_encoder=CLIP_SD2_FULL),
        diffusers=OrderedDict(unet=shapes(unet_full_sd), text_encoder=shapes(te_full_sd)),
        ldm=shapes(ldm_full),
    ), os.path.join(out, "sd2_full_shapes.json"))

    base.st_save(os.path.join(out, "io_unet.safetensors"), io_unet)
    base.st_save(os.path.join(out, "io_text_encoder.safetensors"), io_te)
    summary["versions"] = dict(torch=torch.__version__, diffusers=base.diffusers.__version__,
                               transformers=base.transformers.__version__)
    summary["configs"] = dict(unet=UNET_SD2_TINY, text_encoder_full=CLIP_SD2_TINY, scheduler=SCHEDULER)
    base.dump_json(summary, os.path.join(out, "manifest.json"))
    for k, v in summary.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
