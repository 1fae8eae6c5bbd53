#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's SDXL support (tiny widths, SDXL structure).

What SDXL changes against SD 1.5 / SD 2, and what this fixture pins down:

* UNet: three levels (`DownBlock2D`, then two `CrossAttnDownBlock2D`), several transformer layers
  per attention block (`transformer_layers_per_block`), linear proj_in/proj_out, per-level head
  counts, and the "text_time" added conditioning: `add_time_proj` (sinusoidal embedding of the six
  size/crop numbers) + `add_embedding` (stored as `label_emb.0.{0,2}` in single files);
* two text encoders: CLIP ViT-L (`hidden_states[11]`, no final norm) and OpenCLIP bigG
  (`hidden_states[-2]`, no final norm; pooled output at the first EOS through the final norm and
  `text_projection`); single files hold the second one under OpenCLIP's names
  (`conditioner.embedders.1.model.*`, fused q/k/v, `text_projection` as a (width, proj) matrix);
* the VAE scaling factor 0.13025 (`force_upcast`), Euler scheduler config, and sd-scripts' own
  SDXL text encoding (225-token prompts as three 77-token chunks per encoder).

Writes tests/fixtures/reference/sdxl_tiny/ (see tools/reference/README.md, section "SDXL"):

* diffusers/ - StableDiffusionXLPipeline folder: unet, vae, text_encoder, text_encoder_2, scheduler;
* single_file.safetensors - the same model in the SGM single-file layout (our mapping, verified
  against diffusers' single_file_utils converters and sd-scripts' sdxl_model_util converters);
* io_unet / io_text_encoders / io_vae .safetensors - float32 inputs and outputs;
* lora/ - an sd-scripts networks/lora.py LoRA on the tiny diffusers UNet + both text encoders,
  its outputs and gradients, and each UNet module's SGM (sd-scripts-native) name;
* sdxl_full_lora_names.json, sdxl_full_configs.json, sdxl_full_shapes.json - full-size SDXL facts
  computed on the meta device (LoRA module set and block indices, configs, key/shape maps).

Run (from the repository root, sd-scripts at 48d368f on SD_SCRIPTS as for make_sd15_tiny.py):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_sdxl_tiny.py

Deterministic: fixed seeds, float32 CPU compute, one thread, torch.use_deterministic_algorithms.
"""
import argparse
import json
import math
import os
import shutil
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd15_tiny as base  # noqa: E402  (helpers, LDM key mapping, sd-scripts imports)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline  # noqa: E402
from diffusers.models.embeddings import Timesteps  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from library import sdxl_model_util as kohya_sdxl_model_util  # noqa: E402
from library import sdxl_original_unet as kohya_sdxl_unet  # noqa: E402
from library import sdxl_train_util as kohya_sdxl_train_util  # noqa: E402
from library import strategy_sdxl as kohya_strategy_sdxl  # noqa: E402

kohya_lora = base.kohya_lora
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"

# ----------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------

# sd-scripts' copy of stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, sizes made tiny.
UNET_FULL = dict(kohya_sdxl_model_util.DIFFUSERS_SDXL_UNET_CONFIG)
UNET_TINY = dict(
    UNET_FULL,
    sample_size=16,
    # (32, 48, 64) was the first choice: 3.38 M parameters, 6.8 MB per F16 copy, and the two copies
    # (diffusers folder + single file) alone would take the fixture over its ~15 MB budget; (24, 32, 40)
    # keeps every structural feature at 1.47 M parameters. Head dims: 32/4 = 8, 40/4 = 10.
    block_out_channels=(24, 32, 40),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 3),  # SDXL: (1, 2, 10); level 0 has no attention
    attention_head_dim=(2, 4, 4),  # diffusers' name; these are HEAD COUNTS (SDXL: 5, 10, 20)
    use_linear_projection=True,
    cross_attention_dim=72,  # = TE1 hidden 32 + TE2 hidden 40
    addition_embed_type="text_time",
    addition_time_embed_dim=8,  # SDXL: 256
    projection_class_embeddings_input_dim=72,  # = TE2 projection_dim 24 + 6 * 8
    norm_num_groups=8,
    upcast_attention=False,
)
for _k in ("attention_head_dim", "block_out_channels", "down_block_types", "up_block_types", "transformer_layers_per_block"):
    UNET_TINY[_k] = tuple(UNET_TINY[_k])
    UNET_FULL[_k] = tuple(UNET_FULL[_k])
SDXL_UNET_PARAM_COUNT = 2_567_463_684

# TE1: CLIP ViT-L/14 structure (12 layers, so sd-scripts' hard-coded hidden_states[11] is the
# penultimate layer as for real SDXL). TE2: OpenCLIP bigG structure (GELU, projection).
TE1_TINY = dict(base.CLIP_COMMON, vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=12,
                num_attention_heads=4, projection_dim=32, hidden_act="quick_gelu", bos_token_id=998, eos_token_id=999,
                pad_token_id=999)
TE2_TINY = dict(base.CLIP_COMMON, vocab_size=1000, hidden_size=40, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=5, projection_dim=24, hidden_act="gelu", bos_token_id=998, eos_token_id=999,
                pad_token_id=0)  # real SDXL TE2 pads with "!" (id 0): sd-scripts sets tokenizer2.pad_token_id = 0
# sd-scripts' load_models_from_sdxl_checkpoint configs (token ids are transformers' placeholders,
# as in stabilityai/stable-diffusion-xl-base-1.0 text_encoder*/config.json)
TE1_FULL = dict(base.CLIP_COMMON, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
                pad_token_id=1)
TE2_FULL = dict(base.CLIP_COMMON, vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=20, projection_dim=1280, hidden_act="gelu", bos_token_id=0, eos_token_id=2,
                pad_token_id=1)

VAE_TINY = dict(base.VAE_COMMON, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=32, scaling_factor=0.13025,
                force_upcast=True)
VAE_FULL = dict(base.VAE_FULL, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json (as published; the keys
# EulerDiscreteScheduler does not use - clip_sample, set_alpha_to_one, skip_prk_steps,
# sample_max_value - are kept: a loader must ignore them)
SCHEDULER = OrderedDict([
    ("_class_name", "EulerDiscreteScheduler"),
    ("_diffusers_version", "0.19.0.dev0"),
    ("beta_end", 0.012),
    ("beta_schedule", "scaled_linear"),
    ("beta_start", 0.00085),
    ("clip_sample", False),
    ("interpolation_type", "linear"),
    ("num_train_timesteps", 1000),
    ("prediction_type", "epsilon"),
    ("sample_max_value", 1.0),
    ("set_alpha_to_one", False),
    ("skip_prk_steps", True),
    ("steps_offset", 1),
    ("timestep_spacing", "leading"),
    ("trained_betas", None),
    ("use_karras_sigmas", False),
])

SEEDS = dict(unet=5001, vae=5002, text_encoder=5003, text_encoder_2=5004, io_text=5101, io_unet=5102, io_vae=5103,
             lora_init=5201, lora_io=5202)
LORA = dict(network_dim=4, network_alpha=2.0, conv_dim=2, conv_alpha=1.0)
FULL_LORA = dict(network_dim=16, network_alpha=8.0, conv_dim=8)  # conv_alpha defaults to 1.0 in create_network
UNET_LORA_TARGETS = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
SDXL_NUM_BLOCKS = 1 + kohya_lora.LoRANetwork.SDXL_NUM_OF_BLOCKS * 2 + kohya_lora.LoRANetwork.SDXL_NUM_OF_MID_BLOCKS + 1


def build_te2(cfg):
    return CLIPTextModelWithProjection(base.make_clip_config(cfg))


# ----------------------------------------------------------------------------------------------
# diffusers -> SGM single-file key mapping (ours)
# ----------------------------------------------------------------------------------------------

SGM_UNET = "model.diffusion_model."
SGM_VAE = "first_stage_model."
SGM_TE1 = "conditioner.embedders.0.transformer."
SGM_TE2 = "conditioner.embedders.1.model."


def unet_key_to_sgm(k, cfg):
    """diffusers SDXL UNet key -> key under `model.diffusion_model.`. The SD1 mapping of
    make_sd15_tiny (input_blocks/middle_block/output_blocks numbering, upsampler at `.2.conv` after an
    attention and `.1.conv` without) plus SDXL's added-conditioning MLP `add_embedding.linear_{1,2}` ->
    `label_emb.0.{0,2}`."""
    for j, idx in ((1, 0), (2, 2)):
        p = f"add_embedding.linear_{j}."
        if k.startswith(p):
            return f"label_emb.0.{idx}." + k[len(p):]
    return base.unet_key_to_ldm(k, cfg)


OPEN_CLIP_RENAME = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def te2_to_open_clip(sd, layers, logit_scale):
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP keys (without the
    `conditioner.embedders.1.model.` prefix). q/k/v are concatenated into attn.in_proj_{weight,bias}
    and text_projection is stored as OpenCLIP's (width, projection_dim) matrix, i.e. transposed."""
    out = OrderedDict()
    tm = "text_model."
    out["token_embedding.weight"] = sd[tm + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[tm + "embeddings.position_embedding.weight"]
    for i in range(layers):
        src, dst = f"{tm}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for n in ("weight", "bias"):
            out[dst + f"attn.in_proj_{n}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{n}"] for p in ("q", "k", "v")], 0)
        for a, b in OPEN_CLIP_RENAME.items():
            for n in ("weight", "bias"):
                out[dst + f"{b}.{n}"] = sd[src + f"{a}.{n}"]
    for n in ("weight", "bias"):
        out["ln_final." + n] = sd[tm + "final_layer_norm." + n]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["logit_scale"] = logit_scale
    return out


def to_sgm(unet_sd, vae_sd, te1_sd, te2_sd, unet_cfg, vae_cfg, te2_layers):
    """Our diffusers/transformers -> SGM single-file mapping (model keys only). Real or meta tensors."""
    out = OrderedDict()
    for k, v in unet_sd.items():
        out[SGM_UNET + unet_key_to_sgm(k, unet_cfg)] = v
    for k, v in vae_sd.items():
        lk, conv = base.vae_key_to_ldm(k, vae_cfg)
        out[SGM_VAE + lk] = v.reshape(*v.shape, 1, 1) if conv else v
    for k, v in te1_sd.items():
        out[SGM_TE1 + k] = v
    logit_scale = torch.tensor(math.log(100.0), device=te2_sd["text_projection.weight"].device)  # OpenCLIP's init value
    for k, v in te2_to_open_clip(te2_sd, te2_layers, logit_scale).items():
        out[SGM_TE2 + k] = v
    # per TE2 layer 6 q/k/v tensors become 2 in_proj ones; logit_scale is added
    assert len(out) == len(unet_sd) + len(vae_sd) + len(te1_sd) + len(te2_sd) - 4 * te2_layers + 1, "key collision"
    return out


def sgm_extras(n_pos=77):
    """Non-model keys SGM-layout files carry that a loader must skip."""
    import numpy as np

    ex = OrderedDict()
    # real sd_xl_base_1.0.safetensors has it (I64 [1,77]); sd-scripts' loader pops it
    ex[SGM_TE1 + "text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    # SGM's DiscreteDenoiser buffer (files saved from SGM, e.g. the Turbo models, have it): the
    # ascending sigmas sqrt((1 - a_cumprod) / a_cumprod) of the scaled_linear 0.00085-0.012 schedule
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    ex["denoiser.sigmas"] = torch.tensor(((1 - ac) / ac) ** 0.5, dtype=torch.float32)
    return ex


def verify_sgm_mapping(sgm, unet_sd, vae_sd, te1_sd, te2_sd, unet_cfg, vae_cfg, te2_model, values=True):
    """Convert our single-file dict back with diffusers' and sd-scripts' converters and compare.
    Returns (report, quirks)."""
    rep, quirks = OrderedDict(), OrderedDict()
    sgm = dict(sgm)
    cmp = base.compare_sd
    pos_ids = ("text_model.embeddings.position_ids",)
    # diffusers 0.32.1 loaders.single_file_utils
    rep["diffusers.convert_ldm_unet_checkpoint"] = cmp(
        "diffusers unet", base.dsf.convert_ldm_unet_checkpoint(dict(sgm), dict(unet_cfg)), unet_sd, values=values)
    rep["diffusers.convert_ldm_vae_checkpoint"] = cmp(
        "diffusers vae", base.dsf.convert_ldm_vae_checkpoint(dict(sgm), dict(vae_cfg)), vae_sd, values=values)
    rep["diffusers.convert_ldm_clip_checkpoint"] = cmp(
        "diffusers clip (TE1)", base.dsf.convert_ldm_clip_checkpoint(dict(sgm)), te1_sd, ignore=pos_ids, values=values)
    rep["diffusers.convert_open_clip_checkpoint"] = cmp(
        "diffusers open_clip (TE2)", base.dsf.convert_open_clip_checkpoint(te2_model, dict(sgm), prefix=SGM_TE2), te2_sd,
        ignore=pos_ids, values=values)
    # sd-scripts library/sdxl_model_util.py (what sdxl_train*.py load and save single files with)
    unet_part = {k[len(SGM_UNET):]: v for k, v in sgm.items() if k.startswith(SGM_UNET)}
    rep["sd-scripts.convert_sdxl_unet_state_dict_to_diffusers"] = cmp(
        "sd-scripts unet load", kohya_sdxl_model_util.convert_sdxl_unet_state_dict_to_diffusers(unet_part), unet_sd,
        values=values)
    rep["sd-scripts.convert_diffusers_unet_state_dict_to_sdxl"] = cmp(
        "sd-scripts unet save", kohya_sdxl_model_util.convert_diffusers_unet_state_dict_to_sdxl(dict(unet_sd)), unet_part,
        values=values)
    rep["sd-scripts.model_util.convert_ldm_vae_checkpoint"] = cmp(
        "sd-scripts vae load", base.kohya_model_util.convert_ldm_vae_checkpoint(dict(sgm), dict(vae_cfg)), vae_sd,
        values=values)
    vae_part = {k[len(SGM_VAE):]: v for k, v in sgm.items() if k.startswith(SGM_VAE)}
    if len(vae_cfg["block_out_channels"]) == 4:
        rep["sd-scripts.model_util.convert_vae_state_dict"] = cmp(
            "sd-scripts vae save", base.kohya_model_util.convert_vae_state_dict(dict(vae_sd)), vae_part, values=values)
    else:  # it hard-codes four levels (decoder.up_blocks.i -> decoder.up.{3-i}); checked on the full-size VAE
        rep["sd-scripts.model_util.convert_vae_state_dict"] = "skipped: hard-codes 4 VAE levels"
    # TE2: sd-scripts maps text_projection WITHOUT transposing it (both directions)
    te2_part = {k: v for k, v in sgm.items() if k.startswith(SGM_TE2)}
    te2_loaded, logit_scale = kohya_sdxl_model_util.convert_sdxl_text_encoder_2_checkpoint(dict(te2_part), 77)
    tp_loaded = te2_loaded.pop("text_projection.weight")
    rep["sd-scripts.convert_sdxl_text_encoder_2_checkpoint (all but text_projection)"] = cmp(
        "sd-scripts te2 load", te2_loaded, {k: v for k, v in te2_sd.items() if k != "text_projection.weight"},
        values=values)
    assert tuple(tp_loaded.shape) == tuple(te2_part[SGM_TE2 + "text_projection"].shape)
    assert logit_scale is te2_part[SGM_TE2 + "logit_scale"]
    saved = kohya_sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(dict(te2_sd), logit_scale)
    tp_saved = saved.pop("text_projection")
    rep["sd-scripts.convert_text_encoder_2_state_dict_to_sdxl (all but text_projection)"] = cmp(
        "sd-scripts te2 save", saved, {k[len(SGM_TE2):]: v for k, v in te2_part.items() if not k.endswith("text_projection")},
        values=values)
    assert tuple(tp_saved.shape) == tuple(te2_sd["text_projection.weight"].shape)
    if values:
        assert torch.equal(tp_loaded, te2_part[SGM_TE2 + "text_projection"])
        assert torch.equal(tp_saved, te2_sd["text_projection.weight"])
    quirks["sd-scripts_text_projection_not_transposed"] = (
        f"convert_sdxl_text_encoder_2_checkpoint gives text_projection.weight {list(tp_loaded.shape)} = the stored "
        f"OpenCLIP matrix as is (transformers expects {list(te2_sd['text_projection.weight'].shape)} = its transpose); "
        f"convert_text_encoder_2_state_dict_to_sdxl writes text_projection {list(tp_saved.shape)} = the transformers "
        "weight as is. Round trip consistent, but for the square full-size bigG projection sd-scripts' single-file "
        "load silently uses the transpose of what SGM/diffusers use for the pooled embedding.")
    return rep, quirks


# ----------------------------------------------------------------------------------------------
# sd-scripts text encoding helpers
# ----------------------------------------------------------------------------------------------


def sdxl_tokenize_strategy(max_token_length):
    """sd-scripts' SdxlTokenizeStrategy without its hub tokenizers: two StubClipTokenizer (token ids in,
    CLIPTokenizer(padding="max_length", truncation=True) behaviour), TE2's padding with id 0."""
    s = kohya_strategy_sdxl.SdxlTokenizeStrategy.__new__(kohya_strategy_sdxl.SdxlTokenizeStrategy)
    s.tokenizer1 = base.StubClipTokenizer(TE1_TINY["bos_token_id"], TE1_TINY["eos_token_id"], TE1_TINY["pad_token_id"])
    s.tokenizer2 = base.StubClipTokenizer(TE2_TINY["bos_token_id"], TE2_TINY["eos_token_id"], 0)
    # what __init__ sets: model_max_length (77) for None, else max_token_length + 2
    s.max_length = s.tokenizer1.model_max_length if max_token_length is None else max_token_length + 2
    return s


def stub_full_ids(tok, content, max_length):
    return tok(content, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt").input_ids[0]


# ----------------------------------------------------------------------------------------------
# LoRA helpers
# ----------------------------------------------------------------------------------------------


def create_lora(tes, unet, network_dim, network_alpha, conv_dim=None, conv_alpha=None):
    """sd-scripts' create_network, restoring the class attribute it mutates when conv_dim is set."""
    saved = list(kohya_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    try:
        kw = {}
        if conv_dim is not None:
            kw["conv_dim"] = conv_dim
        if conv_alpha is not None:
            kw["conv_alpha"] = conv_alpha
        net = kohya_lora.create_network(1.0, network_dim, network_alpha, None, tes, unet, **kw)
    finally:
        kohya_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved
    return net


def walk_all(tes, unet):
    walked = OrderedDict()
    for i, te in enumerate(tes):
        walked.update(base.walk_targets(te, f"lora_te{i + 1}", kohya_lora.LoRANetwork.TEXT_ENCODER_TARGET_REPLACE_MODULE))
    walked.update(base.walk_targets(unet, "lora_unet", UNET_LORA_TARGETS))
    return walked


def lora_info(lora_module, walked):
    """make_sd15_tiny.lora_info, also for LoRA modules built on the meta device (alpha from scale)."""
    if lora_module.alpha.device.type != "meta":
        return base.lora_info(lora_module, walked)
    w = walked[lora_module.lora_name]
    org = w["module"]
    info = OrderedDict(name=lora_module.lora_name, module_path=w["module_path"], org_class=w["org_class"],
                       target_class=w["target_class"])
    if isinstance(org, torch.nn.Conv2d):
        info.update(in_dim=org.in_channels, out_dim=org.out_channels, kernel_size=list(org.kernel_size),
                    stride=list(org.stride), padding=list(org.padding))
    else:
        info.update(in_dim=org.in_features, out_dim=org.out_features, kernel_size=None, stride=None, padding=None)
    info.update(rank=lora_module.lora_dim, alpha=float(lora_module.scale * lora_module.lora_dim),
                scale=float(lora_module.scale), lora_down_shape=list(lora_module.lora_down.weight.shape),
                lora_up_shape=list(lora_module.lora_up.weight.shape))
    return info


def diffusers_lora_names_to_sgm(names):
    """sd-scripts' own networks/lora.py convert_diffusers_to_sai_if_needed on a dict keyed by the
    names: diffusers-layout UNet LoRA name -> SGM-layout (sd-scripts' native SDXL UNet) name."""
    d = OrderedDict((n + ".lora_down.weight", n) for n in names)
    kohya_lora.convert_diffusers_to_sai_if_needed(d)
    out = OrderedDict((v, k[: -len(".lora_down.weight")]) for k, v in d.items())
    assert len(out) == len(names)
    return out


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/reference/sdxl_tiny")
    ap.add_argument("--stage", default="all", choices=["models", "all"],
                    help="'models' stops after the weights and the model I/O files")
    args = ap.parse_args()
    base.set_determinism()
    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    summary = OrderedDict()
    quirks = OrderedDict()
    f16 = torch.float16

    # ------------------------------------------------------------------ 1. tiny models
    unet = base.reinit_(base.build_unet(UNET_TINY), SEEDS["unet"]).eval()
    vae = base.reinit_(base.build_vae(VAE_TINY), SEEDS["vae"]).eval()
    te1 = base.reinit_(base.build_clip(TE1_TINY), SEEDS["text_encoder"]).eval()
    te2 = base.reinit_(build_te2(TE2_TINY), SEEDS["text_encoder_2"]).eval()
    for m in (unet, vae, te1, te2):
        m.requires_grad_(False)
    unet_sd, vae_sd = base.state_dict_f32(unet), base.state_dict_f32(vae)
    te1_sd, te2_sd = base.state_dict_f32(te1), base.state_dict_f32(te2)
    summary["param_counts"] = OrderedDict((n, sum(p.numel() for p in m.parameters()))
                                          for n, m in (("unet", unet), ("vae", vae), ("text_encoder", te1),
                                                       ("text_encoder_2", te2)))
    summary["key_counts"] = dict(unet=len(unet_sd), vae=len(vae_sd), text_encoder=len(te1_sd), text_encoder_2=len(te2_sd))
    for name, p in unet_sd.items():
        if name.endswith(("proj_in.weight", "proj_out.weight")):
            assert p.dim() == 2, f"{name} should be a linear (use_linear_projection)"
    assert te1.text_model.eos_token_id == 999 and te2.text_model.eos_token_id == 999

    # ------------------------------------------------------------------ 2. text encoders I/O
    g = base.gen(SEEDS["io_text"])
    bos, eos = TE1_TINY["bos_token_id"], TE1_TINY["eos_token_id"]
    io_te = OrderedDict()
    contents77 = [torch.randint(1, 998, (n,), generator=g).tolist() for n in (12, 75)]  # ids 1..997: no "!"(0)
    tok77 = sdxl_tokenize_strategy(None)
    ids1 = torch.stack([stub_full_ids(tok77.tokenizer1, c, 77) for c in contents77])
    ids2 = torch.stack([stub_full_ids(tok77.tokenizer2, c, 77) for c in contents77])
    io_te["te1_input_ids"], io_te["te2_input_ids"] = ids1, ids2
    with torch.no_grad():
        o1 = te1(ids1, output_hidden_states=True, return_dict=True)
        o2 = te2(ids2, output_hidden_states=True, return_dict=True)
    for i, h in enumerate(o1.hidden_states):
        io_te[f"te1_hidden_states.{i}"] = h
    io_te["te1_last_hidden_state"] = o1.last_hidden_state
    io_te["te1_pooler_output"] = o1.pooler_output
    for i, h in enumerate(o2.hidden_states):
        io_te[f"te2_hidden_states.{i}"] = h
    io_te["te2_last_hidden_state"] = o2.last_hidden_state
    io_te["te2_text_embeds"] = o2.text_embeds
    # transformers 4.54: eos_token_id != 2 -> pooled at argmax(ids == eos) = the FIRST EOS
    first_eos2 = (ids2 == eos).int().argmax(-1)
    assert torch.equal(o2.text_embeds, te2.text_projection(o2.last_hidden_state[torch.arange(2), first_eos2]))
    first_eos1 = (ids1 == eos).int().argmax(-1)
    assert torch.equal(o1.pooler_output, o1.last_hidden_state[torch.arange(2), first_eos1])
    assert first_eos1.tolist() == [13, 76], first_eos1  # row 0: padding is EOS too (TE1), still the first one

    # sd-scripts' SDXL encoding, 77 tokens (max_token_length None)
    enc = kohya_strategy_sdxl.SdxlTextEncodingStrategy()
    t1, t2 = tok77.tokenize(contents77)
    assert t1.shape == (2, 1, 77) and torch.equal(t1[:, 0], ids1) and torch.equal(t2[:, 0], ids2)
    with torch.no_grad():
        hs1, hs2, pool2 = enc.encode_tokens(tok77, [te1, te2], [t1, t2])
    assert torch.equal(hs1, o1.hidden_states[11]) and torch.equal(hs2, o2.hidden_states[-2])
    assert torch.equal(pool2, o2.text_embeds), "sd-scripts pool_workaround != transformers text_embeds"
    io_te["sdxl77_hidden_states1"], io_te["sdxl77_hidden_states2"], io_te["sdxl77_pool2"] = hs1, hs2, pool2

    # sd-scripts' SDXL encoding, 225 tokens: three 77-token chunks per encoder
    lengths225 = [180, 40, 225]
    contents225 = [torch.randint(1, 998, (n,), generator=g).tolist() for n in lengths225]
    tok225 = sdxl_tokenize_strategy(225)
    assert tok225.max_length == 227
    c1, c2 = tok225.tokenize(contents225)
    assert c1.shape == (3, 3, 77) and c2.shape == (3, 3, 77)
    full1 = torch.stack([stub_full_ids(tok225.tokenizer1, c, 227) for c in contents225])
    full2 = torch.stack([stub_full_ids(tok225.tokenizer2, c, 227) for c in contents225])
    with torch.no_grad():
        h1, h2, p2 = enc.encode_tokens(tok225, [te1, te2], [c1, c2])
    assert h1.shape == (3, 227, 32) and h2.shape == (3, 227, 40) and p2.shape == (3, 24)
    # independent re-assembly: chunk0 pos 0, chunk k pos 1..75 (k = 0, 1, 2), chunk2 pos 76
    with torch.no_grad():
        r1 = te1(c1.reshape(-1, 77), output_hidden_states=True).hidden_states[11].reshape(3, 3, 77, 32)
        r2o = te2(c2.reshape(-1, 77), output_hidden_states=True)
    r2 = r2o.hidden_states[-2].reshape(3, 3, 77, 40)
    for r, h in ((r1, h1), (r2, h2)):
        manual = torch.cat([r[:, 0, :1]] + [r[:, k, 1:76] for k in range(3)] + [r[:, 2, 76:]], dim=1)
        assert torch.equal(manual, h), "225-token re-assembly mismatch"
    # pool2: the first chunk's pooled (first EOS) output, projected
    assert torch.equal(p2, r2o.text_embeds.reshape(3, 3, 24)[:, 0])
    # the chunk rules (strategy_base._get_input_ids): TE1 (pad == eos, "v1" branch) chunk = [BOS] +
    # ids[i:i+75] + [ids[-1]]; TE2 ("v2" branch) the same, then last := EOS if the second-to-last is a
    # real token, and [BOS, PAD, ...] -> [BOS, EOS, PAD, ...] for an empty chunk
    assert c2[1, 1].tolist()[:3] == [bos, eos, 0] and c2[1, 2].tolist()[:3] == [bos, eos, 0]
    assert c1[1, 1].tolist() == [bos] + [eos] * 76
    assert c2[0, 0, 76].item() == eos and c2[0, 1, 76].item() == eos  # forced EOS after a full chunk
    for k in range(3):
        assert torch.equal(c1[:, k, 1:76], full1[:, 1 + 75 * k: 76 + 75 * k])
    io_te["sdxl225_prompt_lengths"] = torch.tensor(lengths225, dtype=torch.int64)
    io_te["sdxl225_ids1"], io_te["sdxl225_ids2"] = full1, full2
    io_te["sdxl225_input_ids1"], io_te["sdxl225_input_ids2"] = c1, c2
    io_te["sdxl225_hidden_states1"], io_te["sdxl225_hidden_states2"], io_te["sdxl225_pool2"] = h1, h2, p2
    quirks["sd-scripts_sdxl_chunks"] = (
        "225 tokens (max_token_length=225, SdxlTokenizeStrategy.max_length 227): each encoder gets (B, 3, 77) ids, "
        "chunk k = [BOS] + ids[1+75k : 76+75k] + [ids[-1]]. TE1 (pad == eos, strategy_base 'v1' branch): nothing else, "
        "an empty chunk is [BOS, EOS x 76]. TE2 (pad 0, 'v2' branch): if the chunk's second-to-last id is a real "
        "token its last id becomes EOS; an empty chunk [BOS, PAD, ...] becomes [BOS, EOS, PAD x 75]. Empty chunks "
        "are encoded and kept: hidden states = chunk0[0], chunk0[1:76], chunk1[1:76], chunk2[1:76], chunk2[76] "
        "(B, 227, C). pool2 = the FIRST chunk's pooled output only (pool2[::3]). hidden_states1 = "
        "TE1 hidden_states[11] and hidden_states2 = TE2 hidden_states[-2], both without the final LayerNorm; pool2 "
        "is taken from last_hidden_state (after the final LayerNorm) and projected.")
    summary["te_pooled_position"] = (
        "transformers 4.54 CLIPTextTransformer: eos_token_id (999) != 2, so pooled = last_hidden_state at "
        "argmax(input_ids == eos_token_id), the FIRST EOS; sd-scripts' _pool_workaround uses the same rule; both "
        "checked equal. (Configs with eos_token_id == 2 - the published SDXL ones - use argmax(input_ids), the "
        "highest id = first EOS for real CLIP vocabularies.)")

    # ------------------------------------------------------------------ 3. UNet I/O
    g = base.gen(SEEDS["io_unet"])
    io_unet = OrderedDict()
    io_unet["sample"] = base.randn(g, 2, 4, 10, 14)  # 10x14: not divisible by 4 -> upsample output_size path
    io_unet["timestep"] = torch.tensor([7, 951], dtype=torch.int64)
    io_unet["encoder_hidden_states"] = base.randn(g, 2, 154, 72)
    io_unet["text_embeds"] = base.randn(g, 2, 24)
    # (orig_h, orig_w, crop_top, crop_left, target_h, target_w), pixels, as SDXL training feeds them
    io_unet["time_ids"] = torch.tensor([[832, 1216, 0, 0, 832, 1216], [1600, 900, 37, 12, 1024, 1024]], dtype=torch.float32)
    io_unet["sample_b"] = base.randn(g, 1, 4, 8, 12)
    io_unet["timestep_b"] = torch.tensor([499.5], dtype=torch.float32)  # float timestep, not rounded
    io_unet["encoder_hidden_states_b"] = base.randn(g, 1, 77, 72)
    io_unet["text_embeds_b"] = base.randn(g, 1, 24)
    io_unet["time_ids_b"] = torch.tensor([[512, 768, 16, 0, 1024, 1024]], dtype=torch.float32)

    def run_unet(model, sfx=""):
        return model(io_unet["sample" + sfx], io_unet["timestep" + sfx], io_unet["encoder_hidden_states" + sfx],
                     added_cond_kwargs=dict(text_embeds=io_unet["text_embeds" + sfx],
                                            time_ids=io_unet["time_ids" + sfx])).sample

    with torch.no_grad():
        io_unet["out"] = run_unet(unet)
        io_unet["out_b"] = run_unet(unet, "_b")
        # the added-conditioning path, step by step (case a)
        io_unet["t_emb"] = unet.time_embedding(unet.time_proj(io_unet["timestep"]))
        tid = unet.add_time_proj(io_unet["time_ids"].flatten()).reshape(2, -1)
        io_unet["time_ids_embeds"] = tid
        io_unet["add_embedding_input"] = torch.cat([io_unet["text_embeds"], tid], dim=-1)
        io_unet["add_emb"] = unet.add_embedding(io_unet["add_embedding_input"])
        solo = unet(io_unet["sample"][1:], io_unet["timestep"][1:], io_unet["encoder_hidden_states"][1:],
                    added_cond_kwargs=dict(text_embeds=io_unet["text_embeds"][1:], time_ids=io_unet["time_ids"][1:])).sample
    assert io_unet["out"].shape == (2, 4, 10, 14)
    summary["unet_batch_vs_single_max_abs_diff"] = float((solo - io_unet["out"][1:]).abs().max())
    # sd-scripts' size embedding (sdxl_train_util.get_size_embeddings, dim 256 each) vs diffusers'
    # add_time_proj with SDXL's addition_time_embed_dim 256 / flip_sin_to_cos / freq_shift 0
    ti = io_unet["time_ids"]
    emb_k = kohya_sdxl_train_util.get_size_embeddings(ti[:, 0:2], ti[:, 2:4], ti[:, 4:6], "cpu")
    emb_d = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(ti.flatten()).reshape(2, -1)
    summary["size_embeddings_256_sd_scripts_vs_diffusers_max_abs_diff"] = float((emb_k - emb_d).abs().max())
    assert emb_k.shape == (2, 1536) and torch.equal(emb_k, emb_d), float((emb_k - emb_d).abs().max())
    emb_k8 = torch.cat([kohya_sdxl_train_util.get_timestep_embedding(ti[:, 2 * j: 2 * j + 2], 8) for j in range(3)], 1)
    assert torch.equal(emb_k8, tid)  # the same rule at the tiny dim 8
    io_unet["size_embeddings_256"] = emb_k

    # ------------------------------------------------------------------ 4. VAE I/O
    g = base.gen(SEEDS["io_vae"])
    io_vae = OrderedDict()
    io_vae["image"] = torch.rand(1, 3, 24, 40, generator=g) * 2 - 1
    with torch.no_grad():
        post = vae.encode(io_vae["image"]).latent_dist
        io_vae["latent_mean"], io_vae["latent_logvar"] = post.mean, post.logvar
        io_vae["posterior_eps"] = base.randn(g, 1, 4, 6, 10)
        io_vae["latent_sample"] = post.mean + post.std * io_vae["posterior_eps"]
        io_vae["decoded_mean"] = vae.decode(post.mean).sample
    assert io_vae["latent_mean"].shape == (1, 4, 6, 10) and io_vae["decoded_mean"].shape == (1, 3, 24, 40)
    assert float(post.logvar.min()) > -30 and float(post.logvar.max()) < 20

    skip = ("sample", "timestep", "encoder_hidden", "text_embeds", "time_ids", "image", "posterior_eps", "add_embedding_input",
            "size_embeddings")
    for n, t in list(io_te.items()) + list(io_unet.items()) + list(io_vae.items()):
        if t.is_floating_point() and t.dim() > 0 and not n.startswith(skip):
            base.check_output(n, t)
    summary["weakest_param_grad"] = OrderedDict(
        unet=base.check_all_params_influence(unet, lambda: [run_unet(unet)], "unet"),
        vae=base.check_all_params_influence(vae, lambda: [vae.encode(io_vae["image"]).latent_dist.mean,
                                                          vae.encode(io_vae["image"]).latent_dist.logvar,
                                                          vae.decode(io_vae["latent_mean"]).sample], "vae"),
        text_encoder=base.check_all_params_influence(te1, lambda: [te1(ids1).last_hidden_state], "text_encoder"),
        text_encoder_2=base.check_all_params_influence(
            te2, lambda: [te2(ids2).last_hidden_state, te2(ids2).text_embeds], "text_encoder_2"),
    )

    base.st_save(os.path.join(out, "io_text_encoders.safetensors"), io_te)
    base.st_save(os.path.join(out, "io_unet.safetensors"), io_unet)
    base.st_save(os.path.join(out, "io_vae.safetensors"), io_vae)

    # ------------------------------------------------------------------ 5. diffusers folder
    dd = os.path.join(out, "diffusers")
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        os.makedirs(os.path.join(dd, sub))
    cast = lambda sd: OrderedDict((k, v.to(f16)) for k, v in sd.items())  # noqa: E731
    unet.save_config(os.path.join(dd, "unet"))
    base.st_save(os.path.join(dd, "unet", "diffusion_pytorch_model.safetensors"), cast(unet_sd), {"format": "pt"})
    vae.save_config(os.path.join(dd, "vae"))
    base.st_save(os.path.join(dd, "vae", "diffusion_pytorch_model.safetensors"), cast(vae_sd), {"format": "pt"})
    for sub, te, sd, arch in (("text_encoder", te1, te1_sd, "CLIPTextModel"),
                              ("text_encoder_2", te2, te2_sd, "CLIPTextModelWithProjection")):
        te.config.torch_dtype = "float16"
        te.config.architectures = [arch]
        te.config.save_pretrained(os.path.join(dd, sub))
        base.st_save(os.path.join(dd, sub, "model.safetensors"), cast(sd), {"format": "pt"})
    with open(os.path.join(dd, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
        f.write("\n")
    model_index = OrderedDict([
        ("_class_name", "StableDiffusionXLPipeline"),
        ("_diffusers_version", base.diffusers.__version__),
        ("feature_extractor", [None, None]),
        ("force_zeros_for_empty_prompt", True),
        ("image_encoder", [None, None]),
        ("scheduler", ["diffusers", "EulerDiscreteScheduler"]),
        ("text_encoder", ["transformers", "CLIPTextModel"]),
        ("text_encoder_2", ["transformers", "CLIPTextModelWithProjection"]),
        ("tokenizer", [None, None]),
        ("tokenizer_2", [None, None]),
        ("unet", ["diffusers", "UNet2DConditionModel"]),
        ("vae", ["diffusers", "AutoencoderKL"]),
    ])
    with open(os.path.join(dd, "model_index.json"), "w") as f:
        json.dump(model_index, f, indent=2)
        f.write("\n")
    # reload with the libraries' own loaders: same weights, bit-identical outputs
    u2 = base.UNet2DConditionModel.from_pretrained(os.path.join(dd, "unet"), torch_dtype=torch.float32).eval()
    v2 = base.AutoencoderKL.from_pretrained(os.path.join(dd, "vae"), torch_dtype=torch.float32).eval()
    t1r = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder"), torch_dtype=torch.float32,
                                        attn_implementation="eager").eval()
    t2r = CLIPTextModelWithProjection.from_pretrained(os.path.join(dd, "text_encoder_2"), torch_dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    sch = EulerDiscreteScheduler.from_pretrained(os.path.join(dd, "scheduler"))
    assert sch.config.timestep_spacing == "leading" and sch.config.steps_offset == 1
    with torch.no_grad():
        assert torch.equal(run_unet(u2), io_unet["out"]) and torch.equal(run_unet(u2, "_b"), io_unet["out_b"])
        assert torch.equal(v2.decode(io_vae["latent_mean"]).sample, io_vae["decoded_mean"])
        assert torch.equal(v2.encode(io_vae["image"]).latent_dist.mean, io_vae["latent_mean"])
        r1 = t1r(ids1, output_hidden_states=True)
        r2 = t2r(ids2, output_hidden_states=True)
        assert all(torch.equal(a, b) for a, b in zip(r1.hidden_states, o1.hidden_states))
        assert all(torch.equal(a, b) for a, b in zip(r2.hidden_states, o2.hidden_states))
        assert torch.equal(r2.text_embeds, o2.text_embeds)
    for n, m, sd in (("unet", u2, unet_sd), ("vae", v2, vae_sd), ("te1", t1r, te1_sd), ("te2", t2r, te2_sd)):
        base.compare_sd("reload " + n, base.state_dict_f32(m), sd)
    assert abs(v2.config.scaling_factor - 0.13025) < 1e-12 and v2.config.force_upcast
    pipe = StableDiffusionXLPipeline.from_pretrained(dd, tokenizer=None, tokenizer_2=None, torch_dtype=torch.float32)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    summary["diffusers_reload"] = "from_pretrained of each component and StableDiffusionXLPipeline: bit-identical"
    del u2, v2, t1r, t2r, pipe

    # ------------------------------------------------------------------ 6. single file (SGM layout)
    sgm = to_sgm(unet_sd, vae_sd, te1_sd, te2_sd, UNET_TINY, VAE_TINY, TE2_TINY["num_hidden_layers"])
    sgm = OrderedDict((k, v.to(f16).float() if k.endswith("logit_scale") else v) for k, v in sgm.items())  # fp16-exact
    summary["sgm_roundtrip_tiny"], q = verify_sgm_mapping(sgm, unet_sd, vae_sd, te1_sd, te2_sd, dict(unet.config),
                                                          dict(vae.config), te2)
    quirks.update(q)
    sgm_file = OrderedDict((k, v.to(f16)) for k, v in sgm.items())
    extras = sgm_extras()
    sgm_file.update(extras)
    base.st_save(os.path.join(out, "single_file.safetensors"), sgm_file, {"format": "pt"})
    back = load_file(os.path.join(out, "single_file.safetensors"))
    summary["sgm_roundtrip_tiny_from_file"], _ = verify_sgm_mapping(
        {k: (v.float() if v.is_floating_point() else v) for k, v in back.items()}, unet_sd, vae_sd, te1_sd, te2_sd,
        dict(unet.config), dict(vae.config), te2)
    summary["single_file_key_counts"] = OrderedDict(
        unet=sum(k.startswith(SGM_UNET) for k in sgm), vae=sum(k.startswith(SGM_VAE) for k in sgm),
        text_encoder=sum(k.startswith(SGM_TE1) for k in sgm), text_encoder_2=sum(k.startswith(SGM_TE2) for k in sgm),
        extras=len(extras), total=len(sgm_file))
    # the text_projection orientation matters: OpenCLIP computes pooled @ text_projection
    with torch.no_grad():
        pooled = o2.last_hidden_state[torch.arange(2), first_eos2]
        assert torch.allclose(pooled @ sgm[SGM_TE2 + "text_projection"], o2.text_embeds, atol=1e-6, rtol=0)

    if args.stage == "models":
        write_manifest(out, summary, quirks)
        return

    # ------------------------------------------------------------------ 7. LoRA on the tiny models
    lora_dir = os.path.join(out, "lora")
    os.makedirs(lora_dir)
    lunet = base.reinit_(base.build_unet(UNET_TINY), SEEDS["unet"]).eval()
    lte1 = base.reinit_(base.build_clip(TE1_TINY), SEEDS["text_encoder"]).eval()
    lte2 = base.reinit_(build_te2(TE2_TINY), SEEDS["text_encoder_2"]).eval()
    for m, sd in ((lunet, unet_sd), (lte1, te1_sd), (lte2, te2_sd)):
        base.compare_sd("lora base", base.state_dict_f32(m), sd)
        m.requires_grad_(False)
    walked = walk_all([lte1, lte2], lunet)
    net = create_lora([lte1, lte2], lunet, **LORA)
    all_loras = net.text_encoder_loras + net.unet_loras
    assert [l.lora_name for l in all_loras] == list(walked), "walk order/names differ from sd-scripts"
    unet_names = [l.lora_name for l in net.unet_loras]
    to_sgm_name = diffusers_lora_names_to_sgm(unet_names)
    infos = []
    for l in all_loras:
        info = base.lora_info(l, walked)
        if l.lora_name.startswith("lora_unet_"):
            info["sgm_name"] = to_sgm_name[l.lora_name]
            info["sdxl_block_idx"] = kohya_lora.get_block_index(info["sgm_name"], True)
        infos.append(info)
    net.apply_to([lte1, lte2], lunet, True, True)
    g = base.gen(SEEDS["lora_init"])
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if name.endswith("lora_down.weight"):
                p.copy_(base.randn(g, *p.shape) / math.sqrt(p[0].numel()))
            elif name.endswith("lora_up.weight"):
                p.copy_(0.15 * base.randn(g, *p.shape) / math.sqrt(p[0].numel()))
            else:
                raise RuntimeError(name)
    net.requires_grad_(True)
    lora_path = os.path.join(lora_dir, "lora.safetensors")
    net.save_weights(lora_path, None, {})
    base.rewrite_safetensors_deterministic(lora_path)
    # the same LoRA under SGM module names by sd-scripts' own converter on the state dict (not stored:
    # the tensors are unchanged and the names are module_names.json's sgm_name)
    lsd = load_file(lora_path)
    kohya_lora.convert_diffusers_to_sai_if_needed(lsd)
    want = set()
    for k in load_file(lora_path):
        mod, rest = k.split(".", 1)
        want.add(to_sgm_name.get(mod, mod) + "." + rest)
    assert set(lsd) == want, sorted(set(lsd) ^ want)[:5]

    lio = OrderedDict()
    with torch.no_grad():
        lio["out"] = run_unet(lunet)  # io_unet case a with the LoRA
        lio["out_b"] = run_unet(lunet, "_b")
    # one training-style step: ids -> both TEs (sd-scripts' 77-token SDXL encoding) -> UNet, all with LoRA
    g = base.gen(SEEDS["lora_io"])
    lio["te1_input_ids"], lio["te2_input_ids"] = ids1, ids2
    lio["sample"], lio["timestep"], lio["time_ids"] = io_unet["sample"], io_unet["timestep"], io_unet["time_ids"]
    lio["loss_weight"] = base.randn(g, 2, 4, 10, 14)
    hs1l, hs2l, pool2l = enc.encode_tokens(tok77, [lte1, lte2], [t1, t2])
    ctx = torch.cat([hs1l, hs2l], dim=-1)
    pred = lunet(lio["sample"], lio["timestep"], ctx,
                 added_cond_kwargs=dict(text_embeds=pool2l, time_ids=lio["time_ids"])).sample
    loss = (pred * lio["loss_weight"]).mean()
    loss.backward()
    lio["context"], lio["pool2"], lio["pred"], lio["loss"] = ctx.detach(), pool2l.detach(), pred.detach(), loss.detach()
    net.set_multiplier(0.0)
    with torch.no_grad():
        assert torch.equal(run_unet(lunet), io_unet["out"])
        hs1z, hs2z, p2z = enc.encode_tokens(tok77, [lte1, lte2], [t1, t2])
        assert torch.equal(hs1z, hs1) and torch.equal(hs2z, hs2) and torch.equal(p2z, pool2)
    net.set_multiplier(1.0)
    summary["lora_relative_effect_unet_out"] = float((lio["out"] - io_unet["out"]).norm() / io_unet["out"].norm())
    grads, no_grad = OrderedDict(), []
    sd_keys = set(load_file(lora_path).keys())
    for name, p in net.named_parameters():
        assert name in sd_keys, name
        if p.grad is None:
            no_grad.append(name)
            continue
        assert p.grad.abs().max() > 0, f"zero grad {name}"
        grads[name] = p.grad.detach().clone()
    # TE1's last layer (index 11) only feeds last_hidden_state, which SDXL does not use
    assert no_grad and all(n.startswith("lora_te1_text_model_encoder_layers_11_") for n in no_grad), no_grad
    summary["lora_params_without_grad"] = sorted(no_grad)
    base.st_save(os.path.join(lora_dir, "grads.safetensors"), grads)
    base.st_save(os.path.join(lora_dir, "io.safetensors"), lio)
    counts = OrderedDict(text_encoder_1=sum(i["name"].startswith("lora_te1_") for i in infos),
                         text_encoder_2=sum(i["name"].startswith("lora_te2_") for i in infos),
                         unet=len(unet_names), total=len(infos))
    dump_json(OrderedDict(
        description="sd-scripts networks/lora.py create_network(1.0, 4, 2.0, None, [te1, te2], unet, conv_dim=2, "
                    "conv_alpha=1.0) on the tiny diffusers UNet and transformers text encoders. is_sdxl is False here "
                    "(the UNet is diffusers', not sd-scripts' SdxlUNet2DConditionModel), so UNet modules get "
                    "diffusers-layout names (lora_unet_down_blocks_...); sgm_name is sd-scripts' "
                    "convert_diffusers_to_sai_if_needed of that name (the names sd-scripts' own SDXL training "
                    "produces) and sdxl_block_idx is get_block_index(sgm_name, is_sdxl=True).",
        **LORA, counts=counts, params_without_grad=sorted(no_grad),
        names=sorted(i["name"] for i in infos),
        modules=OrderedDict((i["name"], {k: v for k, v in i.items() if k != "name"})
                            for i in sorted(infos, key=lambda x: x["name"])),
    ), os.path.join(lora_dir, "module_names.json"), compact=True)

    # ------------------------------------------------------------------ 8. full-size SDXL (meta device)
    with torch.device("meta"):
        fu = base.build_unet(UNET_FULL)
        fk = kohya_sdxl_unet.SdxlUNet2DConditionModel()
        ft1 = base.build_clip(TE1_FULL)
        ft2 = build_te2(TE2_FULL)
        fv = base.build_vae(VAE_FULL)
    n_fu, n_fk = sum(p.numel() for p in fu.parameters()), sum(p.numel() for p in fk.parameters())
    assert n_fu == n_fk == SDXL_UNET_PARAM_COUNT, (n_fu, n_fk)
    fu_sd, fv_sd, ft1_sd, ft2_sd = fu.state_dict(), fv.state_dict(), ft1.state_dict(), ft2.state_dict()
    sgm_full = to_sgm(fu_sd, fv_sd, ft1_sd, ft2_sd, UNET_FULL, VAE_FULL, TE2_FULL["num_hidden_layers"])
    summary["sgm_roundtrip_full_shapes"], _ = verify_sgm_mapping(sgm_full, fu_sd, fv_sd, ft1_sd, ft2_sd, dict(fu.config),
                                                                 dict(fv.config), ft2, values=False)
    # our UNet keys/shapes == sd-scripts' own SGM-layout SDXL UNet's state dict
    base.compare_sd("sd-scripts SdxlUNet2DConditionModel keys", {k[len(SGM_UNET):]: v for k, v in sgm_full.items()
                                                                 if k.startswith(SGM_UNET)}, fk.state_dict(), values=False)
    summary["full_unet_keys_equal_sd_scripts_SdxlUNet2DConditionModel"] = True
    # sd-scripts' own SDXL UNet calls Upsample2D without output_size: a latent side that is not a
    # multiple of 4 fails at the skip concatenation (diffusers passes the skip's size; io_unet case a)
    with torch.device("meta"):
        fk(torch.zeros(1, 4, 8, 12), torch.tensor([5]), torch.zeros(1, 77, 2048), torch.zeros(1, 2816))
        try:
            fk(torch.zeros(1, 4, 10, 14), torch.tensor([5]), torch.zeros(1, 77, 2048), torch.zeros(1, 2816))
            raise AssertionError("sd-scripts' SdxlUNet2DConditionModel accepted a 10x14 latent")
        except RuntimeError as e:
            quirks["sd-scripts_sdxl_unet_needs_latent_multiple_of_4"] = (
                "library/sdxl_original_unet.SdxlUNet2DConditionModel (meta device) runs a 8x12 latent but fails on "
                f"10x14: {str(e).splitlines()[0]} - it upsamples by scale_factor 2 without output_size. diffusers' "
                "UNet2DConditionModel forwards the skip connection's size (io_unet case a is 10x14). sd-scripts' "
                "buckets are multiples of 64 px (latent multiples of 8), so its training never meets this.")
    shp = lambda sd: OrderedDict((k, list(v.shape)) for k, v in sd.items())  # noqa: E731
    sgm_to_diff = OrderedDict()
    for k in fu_sd:
        sgm_to_diff[SGM_UNET + unet_key_to_sgm(k, UNET_FULL)] = "unet/" + k
    for k in fv_sd:
        sgm_to_diff[SGM_VAE + base.vae_key_to_ldm(k, VAE_FULL)[0]] = "vae/" + k
    for k in ft1_sd:
        sgm_to_diff[SGM_TE1 + k] = "text_encoder/" + k
    te2_map = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
               "positional_embedding": "text_model.embeddings.position_embedding.weight",
               "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
               "text_projection": "text_projection.weight (transposed)", "logit_scale": None}
    for i in range(TE2_FULL["num_hidden_layers"]):
        for n in ("weight", "bias"):
            te2_map[f"transformer.resblocks.{i}.attn.in_proj_{n}"] = \
                f"text_model.encoder.layers.{i}.self_attn.{{q,k,v}}_proj.{n} (concatenated on dim 0)"
            for a, b in OPEN_CLIP_RENAME.items():
                te2_map[f"transformer.resblocks.{i}.{b}.{n}"] = f"text_model.encoder.layers.{i}.{a}.{n}"
    for k, v in te2_map.items():
        sgm_to_diff[SGM_TE2 + k] = None if v is None else "text_encoder_2/" + v
    assert set(sgm_to_diff) == set(sgm_full)
    dump_json(OrderedDict(
        description="Full-size SDXL base 1.0 key->shape maps built on the meta device: diffusers 0.32.1 / "
                    "transformers 4.54.1 state dicts, and the SGM single-file layout produced by "
                    "tools/reference/make_sdxl_tiny.py's mapping (verified on shapes with diffusers' and sd-scripts' "
                    "converters; its UNet part equals sd-scripts' SdxlUNet2DConditionModel state dict). sgm: SGM key -> "
                    "shape (model keys; the non-model extras are not listed); sgm_to_diffusers: SGM key -> "
                    "'component/diffusers key' (same shape unless noted; null for logit_scale, which transformers has "
                    "no parameter for).",
        param_counts=OrderedDict(unet=n_fu, vae=sum(p.numel() for p in fv.parameters()),
                                 text_encoder=sum(p.numel() for p in ft1.parameters()),
                                 text_encoder_2=sum(p.numel() for p in ft2.parameters())),
        key_counts=OrderedDict(unet=len(fu_sd), vae=len(fv_sd), text_encoder=len(ft1_sd), text_encoder_2=len(ft2_sd),
                               sgm_model=len(sgm_full)),
        sgm=shp(sgm_full),
        diffusers_text_encoder_2=shp(ft2_sd),  # the one component whose SGM shapes differ (fused q/k/v, transpose)
        sgm_to_diffusers=sgm_to_diff,
    ), os.path.join(out, "sdxl_full_shapes.json"))

    def cfg_json(model):
        d = json.loads(model.to_json_string()) if hasattr(model, "to_json_string") else dict(model.config)
        d.pop("_use_default_values", None)
        return d

    def te_cfg(d, arch):
        return OrderedDict(sorted(dict(CLIPTextConfig(**d).to_dict(), architectures=[arch]).items()))

    dump_json(OrderedDict(
        description="Full-size SDXL base 1.0 configs. unet: sd-scripts' sdxl_model_util.DIFFUSERS_SDXL_UNET_CONFIG as "
                    "the diffusers unet/config.json dict (UNet2DConditionModel(**cfg).to_json_string()); text "
                    "encoders: the CLIPTextConfig values sd-scripts' load_models_from_sdxl_checkpoint uses (token ids "
                    "are transformers' placeholders bos 0 / eos 2 / pad 1, as in the published configs); vae: SDXL's "
                    "AutoencoderKL; scheduler: the published scheduler_config.json.",
        unet=cfg_json(fu.config if hasattr(fu.config, "to_json_string") else fu),
        unet_sd_scripts_DIFFUSERS_SDXL_UNET_CONFIG=kohya_sdxl_model_util.DIFFUSERS_SDXL_UNET_CONFIG,
        text_encoder=te_cfg(TE1_FULL, "CLIPTextModel"),
        text_encoder_2=te_cfg(TE2_FULL, "CLIPTextModelWithProjection"),
        vae=cfg_json(fv),
        scheduler=SCHEDULER,
        param_counts=OrderedDict(unet=n_fu, text_encoder=sum(p.numel() for p in ft1.parameters()),
                                 text_encoder_2=sum(p.numel() for p in ft2.parameters()),
                                 vae=sum(p.numel() for p in fv.parameters())),
        sd_scripts_constants=OrderedDict(VAE_SCALE_FACTOR=kohya_sdxl_model_util.VAE_SCALE_FACTOR,
                                         ADM_IN_CHANNELS=kohya_sdxl_unet.ADM_IN_CHANNELS,
                                         CONTEXT_DIM=kohya_sdxl_unet.CONTEXT_DIM,
                                         MODEL_CHANNELS=kohya_sdxl_unet.MODEL_CHANNELS,
                                         TIME_EMBED_DIM=kohya_sdxl_unet.TIME_EMBED_DIM),
    ), os.path.join(out, "sdxl_full_configs.json"))

    # ------------------------------------------------------------------ 9. full-size LoRA module set
    full = OrderedDict()
    nets = {}
    for conv in (False, True):
        with torch.device("meta"):
            fk = kohya_sdxl_unet.SdxlUNet2DConditionModel()
            ft1 = base.build_clip(TE1_FULL)
            ft2 = build_te2(TE2_FULL)
            kw = dict(conv_dim=FULL_LORA["conv_dim"]) if conv else {}
            n = create_lora([ft1, ft2], fk, FULL_LORA["network_dim"], FULL_LORA["network_alpha"], **kw)
        w = walk_all([ft1, ft2], fk)
        assert [l.lora_name for l in n.text_encoder_loras + n.unet_loras] == [k for k in w if
                                                                               conv or not k.startswith("lora_unet") or
                                                                               w[k]["target_class"] == "Transformer2DModel"]
        infos_full = []
        for l in n.text_encoder_loras + n.unet_loras:
            i = lora_info(l, w)
            i["linear_or_conv"] = "linear" if i["org_class"] == "Linear" else "conv"
            i["block_idx"] = kohya_lora.get_block_index(l.lora_name, True) if l.lora_name.startswith("lora_unet_") else None
            infos_full.append(i)
        nets[conv] = infos_full
        full_counts = OrderedDict(text_encoder_1=len([l for l in n.text_encoder_loras if l.lora_name.startswith("lora_te1_")]),
                                  text_encoder_2=len([l for l in n.text_encoder_loras if l.lora_name.startswith("lora_te2_")]),
                                  unet=len(n.unet_loras))
        full["counts_with_conv_dim" if conv else "counts_without_conv_dim"] = full_counts
        # a diffusers-layout full SDXL UNet gives the same modules under diffusers names: converting them
        # with sd-scripts' convert_diffusers_to_sai_if_needed must give exactly these names
        with torch.device("meta"):
            fud = base.build_unet(UNET_FULL)
        wd = base.walk_targets(fud, "lora_unet", UNET_LORA_TARGETS if conv else ["Transformer2DModel"])
        conv_names = diffusers_lora_names_to_sgm(list(wd))
        assert sorted(conv_names.values()) == sorted(l.lora_name for l in n.unet_loras), "diffusers->SAI names differ"
        for dn, sn in conv_names.items():
            assert tuple(wd[dn]["module"].weight.shape) == tuple(w[sn]["module"].weight.shape), (dn, sn)
    assert nets[False][0]["rank"] == 16
    full["counts_with_conv_dim"]["unet_conv3x3"] = sum(1 for i in nets[True] if i["kernel_size"] == [3, 3])
    names_noconv = {i["name"] for i in nets[False]}
    assert names_noconv <= {i["name"] for i in nets[True]}
    blocks_used = sorted({i["block_idx"] for i in nets[True] if i["block_idx"] is not None})
    block_hist = OrderedDict((str(b), sum(1 for i in nets[True] if i["block_idx"] == b)) for b in blocks_used)
    dump_json(OrderedDict(
        description="LoRA modules sd-scripts networks/lora.py creates for full-size SDXL base: "
                    "create_network(1.0, 16, 8.0, None, [te1, te2], unet) and the same with conv_dim=8 (conv_alpha "
                    "defaults to 1.0), unet = sd-scripts' own library/sdxl_original_unet.SdxlUNet2DConditionModel "
                    "(is_sdxl True: SGM-layout names), te1 = CLIPTextModel ViT-L/14, te2 = CLIPTextModelWithProjection "
                    "bigG, all on the meta device. block_idx = get_block_index(name, is_sdxl=True): 0 time_embed/"
                    "label_emb (no LoRA there), 1-9 input_blocks.0-8, 10-12 middle_block.0-2, 13-21 output_blocks.0-8, "
                    "22 out (no LoRA) - the index into block_dims / block_alphas / conv_block_dims / block lr weights "
                    "(down_lr_weight 9, mid_lr_weight 3, up_lr_weight 9 values). Text encoder modules have no block "
                    "(null). modules: every module of the conv_dim=8 network in "
                    "sd-scripts' creation order (text encoder 1, text encoder 2, UNet), rank/alpha/scale as created "
                    "there (3x3 convs: conv_dim 8 / alpha 1; linears and 1x1 convs: 16 / 8); without_conv_dim: whether "
                    "the network without conv_dim has it too (same rank/alpha then). "
                    "Converting the names a diffusers-layout SDXL UNet gives with sd-scripts' "
                    "convert_diffusers_to_sai_if_needed yields exactly the unet names (checked, with equal shapes).",
        network_dim=FULL_LORA["network_dim"], network_alpha=FULL_LORA["network_alpha"], conv_dim=FULL_LORA["conv_dim"],
        conv_alpha=1.0,
        num_blocks=SDXL_NUM_BLOCKS,
        sd_scripts_constants=OrderedDict(SDXL_NUM_OF_BLOCKS=kohya_lora.LoRANetwork.SDXL_NUM_OF_BLOCKS,
                                         SDXL_NUM_OF_MID_BLOCKS=kohya_lora.LoRANetwork.SDXL_NUM_OF_MID_BLOCKS),
        counts_without_conv_dim=full["counts_without_conv_dim"],
        counts_with_conv_dim=full["counts_with_conv_dim"],
        unet_modules_per_block_with_conv_dim=block_hist,
        modules=OrderedDict((i["name"], OrderedDict([(k, v) for k, v in i.items() if k != "name"]
                                                    + [("without_conv_dim", i["name"] in names_noconv)]))
                            for i in nets[True]),
    ), os.path.join(out, "sdxl_full_lora_names.json"), compact=True)
    summary["full_lora_counts"] = OrderedDict(without_conv_dim=full["counts_without_conv_dim"],
                                              with_conv_dim=full["counts_with_conv_dim"])
    summary["lora_counts_tiny"] = counts

    write_manifest(out, summary, quirks)


def dump_json_compact(obj, path):
    """Like make_sd15_tiny.dump_json, but small records (dicts of at most 24 scalar / scalar-list
    values, e.g. one LoRA module) go on one line."""
    def scalar(v):
        return v is None or isinstance(v, (str, int, float, bool))

    def flat(v):
        return scalar(v) or (isinstance(v, (list, tuple)) and all(scalar(x) for x in v))

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            if len(o) <= 24 and all(flat(v) for v in o.values()):
                return json.dumps(o)
            return "{\n" + ",\n".join(f"{pad} {json.dumps(k)}: {enc(v, ind + 1)}" for k, v in o.items()) + "\n" + pad + "}"
        if isinstance(o, (list, tuple)):
            if not o:
                return "[]"
            if all(scalar(x) and not isinstance(x, str) for x in o):
                return json.dumps(list(o))
            return "[\n" + ",\n".join(f"{pad} {enc(v, ind + 1)}" for v in o) + "\n" + pad + "]"
        return json.dumps(o)

    with open(path, "w") as f:
        f.write(enc(obj, 0) + "\n")


def dump_json(obj, path, compact=False):
    (dump_json_compact if compact else base.dump_json)(obj, path)


def write_manifest(out, summary, quirks):
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("# sdxl_tiny reference fixtures\n\nGenerated by `tools/reference/make_sdxl_tiny.py`; do not edit. "
                "What each file holds and how to regenerate: `tools/reference/README.md` (section SDXL). Versions, "
                "seeds, checks and sha256 of every file: `manifest.json`.\n")
    files = OrderedDict()
    total = 0
    for root, _, fnames in os.walk(out):
        for fn in sorted(fnames):
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, out)
            if rel == "manifest.json":
                continue
            size = os.path.getsize(p)
            total += size
            entry = OrderedDict(bytes=size, sha256=base.sha256(p))
            if fn.endswith(".safetensors"):
                sd = load_file(p)
                entry["tensors"] = len(sd)
                if rel.startswith("io_") or rel == os.path.join("lora", "io.safetensors"):
                    entry["contents"] = OrderedDict(
                        (k, dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""),
                                 max_abs=float(v.float().abs().max()) if v.numel() else 0.0)) for k, v in sd.items())
            files[rel] = entry
    files = OrderedDict(sorted(files.items()))
    manifest = OrderedDict(
        generator="tools/reference/make_sdxl_tiny.py",
        versions=dict(python=sys.version.split()[0], torch=torch.__version__, diffusers=base.diffusers.__version__,
                      transformers=base.transformers.__version__, safetensors=base.safetensors.__version__,
                      sd_scripts=os.environ.get("SD_SCRIPTS_COMMIT", SD_SCRIPTS_COMMIT)),
        seeds=SEEDS,
        weights_dtype="float16",
        configs=OrderedDict(unet=UNET_TINY, vae=VAE_TINY, text_encoder=TE1_TINY, text_encoder_2=TE2_TINY,
                            scheduler=SCHEDULER, lora=LORA),
        summary=summary,
        quirks=quirks,
        total_bytes=total,
        files=files,
    )
    dump_json(manifest, os.path.join(out, "manifest.json"))
    print(f"wrote {out}: {len(files) + 1} files, {total / 1e6:.2f} MB (excluding manifest.json)")
    for rel, e in files.items():
        line = f"  {rel:60s} {e['bytes']:>10,d} B"
        if "tensors" in e:
            line += f"  {e['tensors']:4d} tensors"
        print(line)
    for k, v in summary.items():
        print(f"{k}: {json.dumps(v, default=str)[:400]}")
    for k, v in quirks.items():
        print(f"QUIRK {k}: {v}")


if __name__ == "__main__":
    main()
