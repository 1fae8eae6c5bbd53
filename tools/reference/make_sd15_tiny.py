#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's SD1.5 model stack (tiny widths, SD1.5 structure).

Writes tests/fixtures/reference/sd15_tiny/ (see tools/reference/README.md for the file contents):

* tiny UNet / VAE / CLIP text encoder with SD1.5's structure, every parameter re-initialised
  randomly (deterministic), stored as a diffusers folder and as ONE original-layout (LDM)
  single-file checkpoint; the LDM key mapping is ours and is verified against diffusers'
  `single_file_utils` converters and sd-scripts' `library/model_util.py` converters;
* full-size SD1.5 key->shape maps (built on the meta device);
* float32 inputs/outputs of the text encoder (incl. sd-scripts' 150-token chunking), UNet, VAE;
* a kohya LoRA (sd-scripts `networks/lora.py`, conv_dim set) on the tiny models with its
  gradients for one MSE step, and a merged-weights (sd-scripts `networks/merge_lora.py`) scenario.

Run (from the repository root):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_sd15_tiny.py

Deterministic: fixed seeds, float32 CPU compute, one thread, torch.use_deterministic_algorithms.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import types
from collections import OrderedDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as dsf  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")
for p in (SD_SCRIPTS, os.path.join(SD_SCRIPTS, "networks")):
    if p not in sys.path:
        sys.path.insert(0, p)

# sd-scripts modules. `merge_lora.py` does `import lora`, so networks/ is on sys.path and we use that
# same module object (`lora`) for create_network too.
import lora as kohya_lora  # noqa: E402  (sd-scripts networks/lora.py)
import merge_lora as kohya_merge  # noqa: E402  (sd-scripts networks/merge_lora.py)
from library import model_util as kohya_model_util  # noqa: E402
from library import strategy_sd as kohya_strategy_sd  # noqa: E402
from library import original_unet as kohya_original_unet  # noqa: E402
import logging  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)  # sd-scripts' setup_logging() is chatty at INFO

# ----------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------

UNET_COMMON = dict(
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_eps=1e-5,
    attention_head_dim=8,  # diffusers' SD1.5 naming quirk: this is the number of heads (8)
    use_linear_projection=False,
    upcast_attention=False,
    dual_cross_attention=False,
)
UNET_TINY = dict(UNET_COMMON, sample_size=16, block_out_channels=(32, 64, 64, 64), norm_num_groups=8, cross_attention_dim=32)
UNET_FULL = dict(UNET_COMMON, sample_size=64, block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32, cross_attention_dim=768)

VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    act_fn="silu",
    scaling_factor=0.18215,
)
VAE_TINY = dict(VAE_COMMON, block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=32)
VAE_FULL = dict(VAE_COMMON, block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512)

CLIP_COMMON = dict(
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
)
CLIP_TINY = dict(CLIP_COMMON, vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, projection_dim=32, bos_token_id=998, eos_token_id=999, pad_token_id=999)
CLIP_FULL = dict(CLIP_COMMON, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

SD15_UNET_PARAM_COUNT = 859_520_964

# SD1 LDM noise schedule ("linear" in LDM terms == diffusers "scaled_linear")
LDM_LINEAR_START, LDM_LINEAR_END, LDM_TIMESTEPS = 0.00085, 0.0120, 1000

SEEDS = dict(unet=1001, vae=1002, text_encoder=1003, io_text=2001, io_unet=2002, io_vae=2003,
             lora_init=3001, lora_io=3002)


def set_determinism():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# model construction and re-initialisation
# ----------------------------------------------------------------------------------------------


def make_clip_config(d):
    cfg = CLIPTextConfig(**d)
    cfg._attn_implementation = "eager"
    return cfg


def build_unet(cfg):
    return UNet2DConditionModel(**cfg)


def build_vae(cfg):
    return AutoencoderKL(**cfg)


def build_clip(cfg):
    return CLIPTextModel(make_clip_config(cfg))


@torch.no_grad()
def reinit_(model, seed, round_to=torch.float16):
    """Re-initialise every parameter: norm weight 1+0.1*randn, bias 0.1*randn, linear/conv weights
    randn/sqrt(fan_in), embeddings randn (token) / 0.5*randn (position). Values are rounded to
    `round_to` (so the fp16-stored weight files hold them exactly) and kept as float32."""
    g = gen(seed)
    handled = set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                v = 1.0 + 0.1 * randn(g, *p.shape) if pname == "weight" else 0.1 * randn(g, *p.shape)
            elif isinstance(mod, torch.nn.Embedding):
                scale = 0.5 if "position" in mname else 1.0
                v = scale * randn(g, *p.shape)
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                if pname == "weight":
                    fan_in = p[0].numel()
                    v = randn(g, *p.shape) / math.sqrt(fan_in)
                else:
                    v = 0.1 * randn(g, *p.shape)
            else:
                raise RuntimeError(f"unhandled parameter {full} in {type(mod).__name__}")
            if round_to is not None:
                v = v.to(round_to).to(torch.float32)
            p.copy_(v)
            handled.add(full)
    all_names = {n for n, _ in model.named_parameters()}
    assert handled == all_names, all_names - handled
    return model


def state_dict_f32(model):
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------
# diffusers -> LDM (original Stable Diffusion) key mapping (ours)
# ----------------------------------------------------------------------------------------------

UNET_RESNET_RENAME = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP_RENAME = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_res(rest):
    head, tail = rest.split(".", 1)
    return UNET_RESNET_RENAME[head] + "." + tail


def unet_key_to_ldm(k, cfg):
    """diffusers UNet2DConditionModel key -> key under `model.diffusion_model.` (SD1/SD2 layout)."""
    L = cfg["layers_per_block"]
    for d, l in UNET_TOP_RENAME.items():
        if k.startswith(d + "."):
            return l + k[len(d):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{(L + 1) * i + j + 1}.0.{_unet_res(rest)}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{(L + 1) * i + j + 1}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k)
    if m:
        i, rest = int(m[1]), m[2]
        return f"input_blocks.{(L + 1) * (i + 1)}.0.op.{rest}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_unet_res(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{(L + 1) * i + j}.0.{_unet_res(rest)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{(L + 1) * i + j}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k)
    if m:
        i, rest = int(m[1]), m[2]
        has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        return f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}.conv.{rest}"
    raise KeyError(f"unmapped UNet key {k}")


VAE_RESNET_RENAME = {"conv_shortcut": "nin_shortcut"}  # norm1/conv1/norm2/conv2 unchanged
VAE_ATTN_RENAME = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_res(rest):
    head, tail = rest.split(".", 1)
    return VAE_RESNET_RENAME.get(head, head) + "." + tail


def vae_key_to_ldm(k, cfg):
    """diffusers AutoencoderKL key -> key under `first_stage_model.`; second value: True if the tensor
    is a mid-block attention q/k/v/proj_out weight that becomes a 1x1 conv ([C,C] -> [C,C,1,1])."""
    n = len(cfg["block_out_channels"])
    for side in ("encoder", "decoder"):
        if not k.startswith(side + "."):
            continue
        r = k[len(side) + 1:]
        if r.startswith("conv_norm_out."):
            return f"{side}.norm_out.{r[len('conv_norm_out.'):]}", False
        if r.startswith("conv_in.") or r.startswith("conv_out."):
            return k, False
        m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", r)
        if m and side == "encoder":
            return f"encoder.down.{m[1]}.block.{m[2]}.{_vae_res(m[3])}", False
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", r)
        if m and side == "encoder":
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
        m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", r)
        if m and side == "decoder":
            return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{_vae_res(m[3])}", False
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", r)
        if m and side == "decoder":
            return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}", False
        m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", r)
        if m:
            return f"{side}.mid.block_{int(m[1]) + 1}.{_vae_res(m[2])}", False
        m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", r)
        if m:
            conv = m[1] != "group_norm" and m[2] == "weight"
            return f"{side}.mid.attn_1.{VAE_ATTN_RENAME[m[1]]}.{m[2]}", conv
    if k.startswith("quant_conv.") or k.startswith("post_quant_conv."):
        return k, False
    raise KeyError(f"unmapped VAE key {k}")


def ldm_schedule_buffers():
    """The DDPM buffers an original SD1 checkpoint carries at top level (ldm DDPM.register_schedule,
    beta_schedule="linear" == diffusers "scaled_linear"), float64 math then float32."""
    import numpy as np

    betas = (np.linspace(LDM_LINEAR_START ** 0.5, LDM_LINEAR_END ** 0.5, LDM_TIMESTEPS, dtype=np.float64) ** 2)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    v_posterior = 0.0
    post_var = (1 - v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) + v_posterior * betas
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return OrderedDict(
        betas=t(betas),
        alphas_cumprod=t(ac),
        alphas_cumprod_prev=t(ac_prev),
        sqrt_alphas_cumprod=t(np.sqrt(ac)),
        sqrt_one_minus_alphas_cumprod=t(np.sqrt(1.0 - ac)),
        log_one_minus_alphas_cumprod=t(np.log(1.0 - ac)),
        sqrt_recip_alphas_cumprod=t(np.sqrt(1.0 / ac)),
        sqrt_recipm1_alphas_cumprod=t(np.sqrt(1.0 / ac - 1)),
        posterior_variance=t(post_var),
        posterior_log_variance_clipped=t(np.log(np.maximum(post_var, 1e-20))),
        posterior_mean_coef1=t(betas * np.sqrt(ac_prev) / (1.0 - ac)),
        posterior_mean_coef2=t((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
    )


def ldm_extras(n_pos):
    """Non-model keys present in real SD1.5 single files that a loader must ignore."""
    ex = OrderedDict()
    ex["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    ex.update(ldm_schedule_buffers())
    ex["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    ex["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    return ex


def to_ldm(unet_sd, vae_sd, te_sd, unet_cfg, vae_cfg):
    """Our diffusers -> single-file mapping. Works on real or meta tensors."""
    out = OrderedDict()
    for k, v in unet_sd.items():
        out["model.diffusion_model." + unet_key_to_ldm(k, unet_cfg)] = v
    for k, v in vae_sd.items():
        lk, conv = vae_key_to_ldm(k, vae_cfg)
        out["first_stage_model." + lk] = v.reshape(*v.shape, 1, 1) if conv else v
    for k, v in te_sd.items():
        out["cond_stage_model.transformer." + k] = v
    n_model = len(unet_sd) + len(vae_sd) + len(te_sd)
    assert len(out) == n_model, "key collision in LDM mapping"
    return out


def compare_sd(name, got, want, ignore=(), values=True):
    """Check key sets equal and tensors identical (values) or shapes equal (meta)."""
    gk = set(got) - set(ignore)
    wk = set(want)
    if gk != wk:
        raise AssertionError(f"{name}: key mismatch: missing {sorted(wk - gk)[:10]} extra {sorted(gk - wk)[:10]}")
    for k in wk:
        a, b = got[k], want[k]
        if tuple(a.shape) != tuple(b.shape):
            raise AssertionError(f"{name}: shape mismatch at {k}: {tuple(a.shape)} vs {tuple(b.shape)}")
        if values and not torch.equal(a.to(b.dtype), b):
            raise AssertionError(f"{name}: value mismatch at {k}")
    return len(wk)


def verify_ldm_mapping(ldm, unet_sd, vae_sd, te_sd, unet_cfg, vae_cfg, values=True):
    """Convert our single-file dict back with diffusers' and sd-scripts' converters and compare; also
    compare our mapping with sd-scripts' own diffusers->LDM savers. Returns a report dict."""
    rep = {}
    ldm = dict(ldm)
    # diffusers 0.32.1 loaders.single_file_utils
    u = dsf.convert_ldm_unet_checkpoint(dict(ldm), dict(unet_cfg))
    rep["diffusers.convert_ldm_unet_checkpoint"] = compare_sd("diffusers unet", u, unet_sd, values=values)
    v = dsf.convert_ldm_vae_checkpoint(dict(ldm), dict(vae_cfg))
    rep["diffusers.convert_ldm_vae_checkpoint"] = compare_sd("diffusers vae", v, vae_sd, values=values)
    t = dsf.convert_ldm_clip_checkpoint(dict(ldm))
    rep["diffusers.convert_ldm_clip_checkpoint"] = compare_sd(
        "diffusers clip", t, te_sd, ignore=("text_model.embeddings.position_ids",), values=values)
    # sd-scripts library/model_util.py (what sd-scripts uses to load / save SD1 single files)
    u2 = kohya_model_util.convert_ldm_unet_checkpoint(False, dict(ldm), dict(unet_cfg))
    rep["sd-scripts.convert_ldm_unet_checkpoint"] = compare_sd("sd-scripts unet", u2, unet_sd, values=values)
    v2 = kohya_model_util.convert_ldm_vae_checkpoint(dict(ldm), dict(vae_cfg))
    rep["sd-scripts.convert_ldm_vae_checkpoint"] = compare_sd("sd-scripts vae", v2, vae_sd, values=values)
    t2 = kohya_model_util.convert_ldm_clip_checkpoint_v1(dict(ldm))
    rep["sd-scripts.convert_ldm_clip_checkpoint_v1"] = compare_sd("sd-scripts clip", t2, te_sd, values=values)
    # forward direction: sd-scripts' savers (diffusers -> LDM) must give exactly our keys
    fu = {"model.diffusion_model." + k: w for k, w in kohya_model_util.convert_unet_state_dict_to_sd(False, dict(unet_sd)).items()}
    fv = {"first_stage_model." + k: w for k, w in kohya_model_util.convert_vae_state_dict(dict(vae_sd)).items()}
    ours_u = {k: w for k, w in ldm.items() if k.startswith("model.diffusion_model.")}
    ours_v = {k: w for k, w in ldm.items() if k.startswith("first_stage_model.")}
    rep["sd-scripts.convert_unet_state_dict_to_sd"] = compare_sd("sd-scripts save unet", fu, ours_u, values=values)
    rep["sd-scripts.convert_vae_state_dict"] = compare_sd("sd-scripts save vae", fv, ours_v, values=values)
    return rep


# ----------------------------------------------------------------------------------------------
# LoRA helpers (sd-scripts networks/lora.py)
# ----------------------------------------------------------------------------------------------


def create_kohya_network(vae, te, unet, conv):
    """sd-scripts' create_network. NB: LoRANetwork.__init__ does
    `target_modules = UNET_TARGET_REPLACE_MODULE; target_modules += CONV2D_3X3`, i.e. it mutates the
    class attribute in place when conv_dim is set; we restore it so later calls are not affected."""
    saved = list(kohya_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    try:
        kw = dict(conv_dim=4, conv_alpha=1.0) if conv else {}
        net = kohya_lora.create_network(1.0, 4, 2.0, vae, te, unet, **kw)
    finally:
        kohya_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved
    return net


def walk_targets(root, prefix, classes):
    """Our transliteration of the create_modules walk: lora_name -> info."""
    out = OrderedDict()
    for name, module in root.named_modules():
        if module.__class__.__name__ in classes:
            for child_name, child in module.named_modules():
                cls = child.__class__.__name__
                if cls in ("Linear", "Conv2d"):
                    lora_name = (prefix + "." + name + "." + child_name).replace(".", "_")
                    out[lora_name] = dict(module_path=name + "." + child_name, org_class=cls,
                                          target_class=module.__class__.__name__, module=child)
    return out


def lora_info(lora_module, walked):
    org = walked[lora_module.lora_name]["module"]
    d = lora_module.lora_down
    info = OrderedDict(
        name=lora_module.lora_name,
        module_path=walked[lora_module.lora_name]["module_path"],
        org_class=walked[lora_module.lora_name]["org_class"],
        target_class=walked[lora_module.lora_name]["target_class"],
    )
    if isinstance(org, torch.nn.Conv2d):
        info.update(in_dim=org.in_channels, out_dim=org.out_channels, kernel_size=list(org.kernel_size),
                    stride=list(org.stride), padding=list(org.padding))
    else:
        info.update(in_dim=org.in_features, out_dim=org.out_features, kernel_size=None, stride=None, padding=None)
    info.update(rank=lora_module.lora_dim, alpha=float(lora_module.alpha), scale=float(lora_module.scale),
                lora_down_shape=list(d.weight.shape), lora_up_shape=list(lora_module.lora_up.weight.shape))
    return info


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def st_save(path, tensors, metadata=None):
    tensors = OrderedDict((k, v.detach().contiguous().cpu()) for k, v in tensors.items())
    save_file(tensors, path, metadata=metadata)


ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}


def rewrite_safetensors_deterministic(path):
    """Re-serialise a .safetensors file byte-deterministically (same tensors, same metadata). The
    safetensors library keeps `__metadata__` in a Rust HashMap, so files with >1 metadata entry
    (sd-scripts' sshs_* hashes) come out in a random key order from run to run."""
    import struct
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header, blobs, offset = OrderedDict(), [], 0
    if metadata:
        header["__metadata__"] = OrderedDict(sorted(metadata.items()))
    # largest alignment first so every tensor's data offset is aligned to its element size
    for k in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[k].contiguous()
        b = t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
        header[k] = OrderedDict(dtype=ST_DTYPES[t.dtype], shape=list(t.shape), data_offsets=[offset, offset + len(b)])
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    with safe_open(path, "pt") as f:
        assert (f.metadata() or {}) == metadata
        for k, v in tensors.items():
            w = f.get_tensor(k)
            assert w.dtype == v.dtype and w.shape == v.shape and torch.equal(w, v), k


def clean_config(cfg):
    """Config dict without diffusers' bookkeeping (`_use_default_values` is set-ordered)."""
    return OrderedDict((k, v) for k, v in dict(cfg).items() if k != "_use_default_values")


def stats(t):
    t = t.detach().float()
    return dict(shape=list(t.shape), max_abs=float(t.abs().max()), std=float(t.std()) if t.numel() > 1 else 0.0,
                mean=float(t.mean()))


def check_output(name, t, lo=0.05, hi=20.0):
    assert torch.isfinite(t).all(), f"{name}: non-finite values"
    s = t.float().std().item()
    assert lo < s < hi, f"{name}: degenerate std {s}"
    return s


# Parameters whose true gradient is exactly zero: a key bias adds q.b_k to every logit of a query row,
# which softmax ignores. (diffusers' UNet attention has no k bias; CLIP and the VAE mid attention do.)
SOFTMAX_INVARIANT = re.compile(r"(self_attn\.k_proj|attentions\.0\.to_k)\.bias$")


def check_all_params_influence(model, fn, name):
    """Backprop a random projection of the outputs; every parameter must receive a clearly nonzero
    gradient, except attention key biases (softmax-invariant; their gradient is rounding noise)."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    outs = fn()
    g = gen(12345)
    loss = sum((o * randn(g, *o.shape)).sum() for o in outs)
    loss.backward()
    dead, weakest, invariant = [], (None, float("inf")), []
    for n, p in model.named_parameters():
        gn = p.grad.norm().item() if p.grad is not None else 0.0
        if SOFTMAX_INVARIANT.search(n):
            invariant.append(n)
            assert gn < 1e-4, f"{name}: {n} expected softmax-invariant, grad norm {gn}"
            continue
        if gn < 1e-3:
            dead.append((n, gn))
        elif gn < weakest[1]:
            weakest = (n, gn)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    assert not dead, f"{name}: parameters without influence: {dead[:10]}"
    return dict(weakest=weakest, softmax_invariant_key_biases=len(invariant))


def dump_json(obj, path):
    """indent=1, but arrays of numbers (shapes) on one line."""
    text = json.dumps(obj, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    text = re.sub(r"\[\s+((?:-?[\d.eE+-]+|null|true|false)(?:,\s+(?:-?[\d.eE+-]+|null|true|false))*)\s+\]",
                  lambda m: "[" + " ".join(m[1].split()) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shapes(sd):
    return OrderedDict((k, list(v.shape)) for k, v in sd.items())


def make_input_ids(g, lengths, bos, eos, n=77, vocab_hi=998):
    rows = []
    for L in lengths:
        toks = torch.randint(0, vocab_hi, (L,), generator=g).tolist()
        ids = [bos] + toks + [eos]
        ids = ids + [eos] * (n - len(ids))  # SD1 pads with EOS
        assert len(ids) == n
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.int64)


class StubClipTokenizer:
    """Stands in for transformers' CLIPTokenizer inside sd-scripts' tokenize strategy: `text` is a list
    of token ids (no BPE); behaves like CLIPTokenizer(padding="max_length", truncation=True):
    [BOS] + ids[:max_length-2] + [EOS] + [PAD]*... with PAD == EOS (SD1)."""

    def __init__(self, bos, eos, pad, model_max_length=77):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos, eos, pad
        self.eos_token = "<|endoftext|>"
        self.model_max_length = model_max_length

    def __call__(self, text, padding=None, truncation=None, max_length=None, return_tensors=None):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        ids = [self.bos_token_id] + list(text)[: max_length - 2] + [self.eos_token_id]
        ids = ids + [self.pad_token_id] * (max_length - len(ids))
        return types.SimpleNamespace(input_ids=torch.tensor([ids], dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/reference/sd15_tiny")
    ap.add_argument("--weights-dtype", default="float16", choices=["float16", "float32"],
                    help="dtype of the stored model weights (values are fp16-exact either way)")
    args = ap.parse_args()
    set_determinism()

    out = args.out
    wdtype = getattr(torch, args.weights_dtype)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "lora"))
    summary = OrderedDict()

    # ------------------------------------------------------------------ 1. tiny models
    unet = reinit_(build_unet(UNET_TINY), SEEDS["unet"]).eval()
    vae = reinit_(build_vae(VAE_TINY), SEEDS["vae"]).eval()
    te = reinit_(build_clip(CLIP_TINY), SEEDS["text_encoder"]).eval()
    for m in (unet, vae, te):
        m.requires_grad_(False)
    unet_sd, vae_sd, te_sd = state_dict_f32(unet), state_dict_f32(vae), state_dict_f32(te)
    summary["param_counts"] = dict(unet=sum(p.numel() for p in unet.parameters()),
                                   vae=sum(p.numel() for p in vae.parameters()),
                                   text_encoder=sum(p.numel() for p in te.parameters()))

    # ------------------------------------------------------------------ 3. inputs / outputs
    # text encoder
    g = gen(SEEDS["io_text"])
    bos, eos = CLIP_TINY["bos_token_id"], CLIP_TINY["eos_token_id"]
    input_ids = make_input_ids(g, [9, 75], bos, eos)  # short prompt; full-length prompt (no padding)
    with torch.no_grad():
        o = te(input_ids, output_hidden_states=True, return_dict=True)
    io_te = OrderedDict(input_ids=input_ids, last_hidden_state=o.last_hidden_state)
    for i, h in enumerate(o.hidden_states):
        io_te[f"hidden_states.{i}"] = h
    io_te["pooler_output"] = o.pooler_output
    with torch.no_grad():
        io_te["clip_skip2"] = te.text_model.final_layer_norm(o.hidden_states[-2])
        assert torch.equal(te.text_model.final_layer_norm(o.hidden_states[-1]), o.last_hidden_state)

    # sd-scripts 150-token chunking, driven through its own code with a stub tokenizer
    content = torch.randint(0, 998, (100,), generator=g).tolist()
    tok_strategy = kohya_strategy_sd.SdTokenizeStrategy.__new__(kohya_strategy_sd.SdTokenizeStrategy)
    tok_strategy.tokenizer = StubClipTokenizer(bos, eos, CLIP_TINY["pad_token_id"])
    tok_strategy.max_length = 150 + 2  # what SdTokenizeStrategy.__init__ sets for max_token_length=150
    chunks = tok_strategy.tokenize([content])  # -> [tensor (1, 2, 77)]
    full_ids = tok_strategy.tokenizer(content, padding="max_length", truncation=True, max_length=152,
                                      return_tensors="pt").input_ids  # (1, 152)
    with torch.no_grad():
        chunked = kohya_strategy_sd.SdTextEncodingStrategy(clip_skip=None).encode_tokens(tok_strategy, [te], chunks)[0]
        chunked2 = kohya_strategy_sd.SdTextEncodingStrategy(clip_skip=2).encode_tokens(tok_strategy, [te], chunks)[0]
    io_te["chunked_input_ids"] = full_ids
    io_te["chunked_input_ids_chunks"] = chunks[0]
    io_te["chunked_hidden"] = chunked
    io_te["chunked_hidden_clip_skip2"] = chunked2
    # independent check of the re-assembly rule (spec §6.1)
    with torch.no_grad():
        per = te(chunks[0].reshape(-1, 77)).last_hidden_state.reshape(1, -1, 32)
    manual = torch.cat([per[:, :1], per[:, 1:76], per[:, 78:153], per[:, -1:]], dim=1)
    assert torch.equal(manual, chunked), "chunk reassembly mismatch"
    assert chunked.shape == (1, 152, 32)

    # UNet
    g = gen(SEEDS["io_unet"])
    io_unet = OrderedDict()
    io_unet["sample"] = randn(g, 2, 4, 16, 16)
    io_unet["timestep"] = torch.tensor([7, 951], dtype=torch.int64)
    io_unet["encoder_hidden_states"] = randn(g, 2, 77, 32)
    io_unet["sample_b"] = randn(g, 1, 4, 16, 24)
    io_unet["timestep_b"] = torch.tensor([500], dtype=torch.int64)
    io_unet["ehs_b"] = randn(g, 1, 77, 32)
    io_unet["sample_c"] = randn(g, 1, 4, 16, 16)
    io_unet["timestep_c"] = torch.tensor([250], dtype=torch.int64)
    io_unet["ehs_c"] = randn(g, 1, 154, 32)
    with torch.no_grad():
        io_unet["out"] = unet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample
        io_unet["out_b"] = unet(io_unet["sample_b"], io_unet["timestep_b"], io_unet["ehs_b"]).sample
        io_unet["out_c"] = unet(io_unet["sample_c"], io_unet["timestep_c"], io_unet["ehs_c"]).sample
        # batch-consistency: row 1 alone equals row 1 of the batch
        solo = unet(io_unet["sample"][1:], io_unet["timestep"][1:], io_unet["encoder_hidden_states"][1:]).sample
    summary["unet_batch_vs_single_max_abs_diff"] = float((solo - io_unet["out"][1:]).abs().max())

    # VAE
    g = gen(SEEDS["io_vae"])
    io_vae = OrderedDict()
    io_vae["image"] = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        post = vae.encode(io_vae["image"]).latent_dist
        io_vae["latent_mean"] = post.mean
        io_vae["latent_logvar"] = post.logvar  # clamped to [-30, 20] by diffusers (inactive here)
        io_vae["posterior_eps"] = randn(g, 1, 4, 4, 4)
        io_vae["latent_sample"] = post.mean + post.std * io_vae["posterior_eps"]
        io_vae["latent_in"] = randn(g, 1, 4, 4, 4)
        io_vae["decoded"] = vae.decode(io_vae["latent_in"]).sample
    assert float(post.logvar.min()) > -30 and float(post.logvar.max()) < 20

    for n, t in list(io_te.items()) + list(io_unet.items()) + list(io_vae.items()):
        if t.is_floating_point() and t.dim() > 0 and not n.startswith(("image", "sample", "ehs", "encoder_hidden", "posterior_eps", "latent_in")):
            check_output(n, t)

    # every parameter influences the outputs
    summary["weakest_param_grad"] = dict(
        unet=check_all_params_influence(unet, lambda: [unet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample], "unet"),
        vae=check_all_params_influence(vae, lambda: [vae.encode(io_vae["image"]).latent_dist.mean,
                                                     vae.encode(io_vae["image"]).latent_dist.logvar,
                                                     vae.decode(io_vae["latent_in"]).sample], "vae"),
        text_encoder=check_all_params_influence(te, lambda: [te(input_ids).last_hidden_state], "text_encoder"),
    )

    st_save(os.path.join(out, "io_text_encoder.safetensors"), io_te)
    st_save(os.path.join(out, "io_unet.safetensors"), io_unet)
    st_save(os.path.join(out, "io_vae.safetensors"), io_vae)

    # ------------------------------------------------------------------ 2a. diffusers folder
    dd = os.path.join(out, "diffusers")
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(dd, sub))
    cast = lambda sd: OrderedDict((k, v.to(wdtype)) for k, v in sd.items())  # noqa: E731
    unet.save_config(os.path.join(dd, "unet"))
    st_save(os.path.join(dd, "unet", "diffusion_pytorch_model.safetensors"), cast(unet_sd), {"format": "pt"})
    vae.save_config(os.path.join(dd, "vae"))
    st_save(os.path.join(dd, "vae", "diffusion_pytorch_model.safetensors"), cast(vae_sd), {"format": "pt"})
    te.config.torch_dtype = args.weights_dtype
    te.config.architectures = ["CLIPTextModel"]
    te.config.save_pretrained(os.path.join(dd, "text_encoder"))
    st_save(os.path.join(dd, "text_encoder", "model.safetensors"), cast(te_sd), {"format": "pt"})
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    sched.save_config(os.path.join(dd, "scheduler"))
    model_index = OrderedDict([
        ("_class_name", "StableDiffusionPipeline"),
        ("_diffusers_version", diffusers.__version__),
        ("feature_extractor", [None, None]),
        ("requires_safety_checker", False),
        ("safety_checker", [None, None]),
        ("scheduler", ["diffusers", "PNDMScheduler"]),
        ("text_encoder", ["transformers", "CLIPTextModel"]),
        ("tokenizer", [None, None]),
        ("unet", ["diffusers", "UNet2DConditionModel"]),
        ("vae", ["diffusers", "AutoencoderKL"]),
    ])
    with open(os.path.join(dd, "model_index.json"), "w") as f:
        json.dump(model_index, f, indent=2)
        f.write("\n")

    # reload with the libraries' own loaders and check outputs are bit-identical
    u2 = UNet2DConditionModel.from_pretrained(os.path.join(dd, "unet"), torch_dtype=torch.float32).eval()
    v2 = AutoencoderKL.from_pretrained(os.path.join(dd, "vae"), torch_dtype=torch.float32).eval()
    t2 = CLIPTextModel.from_pretrained(os.path.join(dd, "text_encoder"), torch_dtype=torch.float32,
                                       attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(u2(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample, io_unet["out"])
        assert torch.equal(v2.decode(io_vae["latent_in"]).sample, io_vae["decoded"])
        assert torch.equal(t2(input_ids).last_hidden_state, io_te["last_hidden_state"])
    compare_sd("reload unet", state_dict_f32(u2), unet_sd)
    compare_sd("reload vae", state_dict_f32(v2), vae_sd)
    compare_sd("reload te", state_dict_f32(t2), te_sd)
    del u2, v2, t2

    # ------------------------------------------------------------------ 2b. single-file (LDM) checkpoint
    ldm = to_ldm(unet_sd, vae_sd, te_sd, UNET_TINY, VAE_TINY)
    summary["ldm_roundtrip_tiny"] = verify_ldm_mapping(ldm, unet_sd, vae_sd, te_sd, dict(unet.config), dict(vae.config))
    ldm_file = OrderedDict((k, v.to(wdtype)) for k, v in ldm.items())
    ldm_file.update(ldm_extras(77))
    st_save(os.path.join(out, "single_file.safetensors"), ldm_file, {"format": "pt"})
    back = load_file(os.path.join(out, "single_file.safetensors"))
    summary["ldm_roundtrip_tiny_from_file"] = verify_ldm_mapping(
        {k: (v.float() if v.is_floating_point() else v) for k, v in back.items()},
        unet_sd, vae_sd, te_sd, dict(unet.config), dict(vae.config))

    # ------------------------------------------------------------------ 2c. full-size SD1.5 shapes (meta)
    with torch.device("meta"):
        unet_full = build_unet(UNET_FULL)
        vae_full = build_vae(VAE_FULL)
        te_full = build_clip(CLIP_FULL)
    n_unet_full = sum(p.numel() for p in unet_full.parameters())
    assert n_unet_full == SD15_UNET_PARAM_COUNT, n_unet_full
    fu_sd, fv_sd, ft_sd = unet_full.state_dict(), vae_full.state_dict(), te_full.state_dict()
    ldm_full = to_ldm(fu_sd, fv_sd, ft_sd, UNET_FULL, VAE_FULL)
    summary["ldm_roundtrip_full_shapes"] = verify_ldm_mapping(ldm_full, fu_sd, fv_sd, ft_sd, dict(unet_full.config),
                                                              dict(vae_full.config), values=False)
    extras_full = ldm_extras(77)
    full_shapes = OrderedDict(
        description="SD1.5 full-size key->shape maps (diffusers 0.32.1 / transformers 4.54.1 state dicts; "
                    "LDM single-file layout produced by tools/reference/make_sd15_tiny.py's mapping).",
        configs=dict(unet=clean_config(unet_full.config), vae=clean_config(vae_full.config), text_encoder=CLIP_FULL),
        param_counts=dict(unet=n_unet_full, vae=sum(p.numel() for p in vae_full.parameters()),
                          text_encoder=sum(p.numel() for p in te_full.parameters())),
        key_counts=dict(unet=len(fu_sd), vae=len(fv_sd), text_encoder=len(ft_sd), ldm_model=len(ldm_full),
                        ldm_extras=len(extras_full)),
        diffusers=dict(unet=shapes(fu_sd), vae=shapes(fv_sd), text_encoder=shapes(ft_sd)),
        ldm=shapes(ldm_full),
        ldm_extras=OrderedDict((k, dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""))) for k, v in extras_full.items()),
        ldm_to_diffusers=OrderedDict(),
    )
    # explicit LDM -> diffusers key table (component/key)
    for k in fu_sd:
        full_shapes["ldm_to_diffusers"]["model.diffusion_model." + unet_key_to_ldm(k, UNET_FULL)] = "unet/" + k
    for k in fv_sd:
        full_shapes["ldm_to_diffusers"]["first_stage_model." + vae_key_to_ldm(k, VAE_FULL)[0]] = "vae/" + k
    for k in ft_sd:
        full_shapes["ldm_to_diffusers"]["cond_stage_model.transformer." + k] = "text_encoder/" + k
    dump_json(full_shapes, os.path.join(out, "sd15_full_shapes.json"))

    # ------------------------------------------------------------------ 4. LoRA + gradients
    lunet = reinit_(build_unet(UNET_TINY), SEEDS["unet"]).train()
    lte = reinit_(build_clip(CLIP_TINY), SEEDS["text_encoder"]).train()
    compare_sd("lora base unet", state_dict_f32(lunet), unet_sd)
    compare_sd("lora base te", state_dict_f32(lte), te_sd)
    lunet.requires_grad_(False)
    lte.requires_grad_(False)
    te_walk = walk_targets(lte, "lora_te", kohya_lora.LoRANetwork.TEXT_ENCODER_TARGET_REPLACE_MODULE)
    un_walk = walk_targets(lunet, "lora_unet", ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"])
    walked = OrderedDict(list(te_walk.items()) + list(un_walk.items()))
    net = create_kohya_network(vae, lte, lunet, conv=True)
    kohya_names = [l.lora_name for l in net.text_encoder_loras + net.unet_loras]
    assert set(kohya_names) == set(walked), (set(kohya_names) ^ set(walked))
    infos = [lora_info(l, walked) for l in net.text_encoder_loras + net.unet_loras]
    net.apply_to(lte, lunet, True, True)
    # random (non-zero) lora_up / lora_down
    g = gen(SEEDS["lora_init"])
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if name.endswith("lora_down.weight"):
                p.copy_(randn(g, *p.shape) / math.sqrt(p[0].numel()))
            elif name.endswith("lora_up.weight"):
                p.copy_(0.15 * randn(g, *p.shape) / math.sqrt(p[0].numel()))
            else:
                raise RuntimeError(name)
    net.requires_grad_(True)
    lora_path = os.path.join(out, "lora", "lora.safetensors")
    net.save_weights(lora_path, None, {})  # sd-scripts' own writer (adds sshs_* hashes to metadata)
    rewrite_safetensors_deterministic(lora_path)

    g = gen(SEEDS["lora_io"])
    lio = OrderedDict()
    lio["input_ids"] = make_input_ids(g, [20, 50], bos, eos)
    lio["noisy"] = randn(g, 2, 4, 16, 16)
    lio["timestep"] = torch.tensor([100, 800], dtype=torch.int64)
    lio["target"] = randn(g, 2, 4, 16, 16)
    ehs = lte(lio["input_ids"]).last_hidden_state
    pred = lunet(lio["noisy"], lio["timestep"], ehs).sample
    loss = F.mse_loss(pred.float(), lio["target"].float(), reduction="mean")
    loss.backward()
    lio["loss"] = loss.detach()
    lio["pred"] = pred.detach()
    lio["ehs"] = ehs.detach()
    net.set_multiplier(0.0)
    with torch.no_grad():
        ehs0 = lte(lio["input_ids"]).last_hidden_state
        lio["pred_multiplier0"] = lunet(lio["noisy"], lio["timestep"], ehs0).sample
        lio["loss_multiplier0"] = F.mse_loss(lio["pred_multiplier0"], lio["target"])
    net.set_multiplier(1.0)
    with torch.no_grad():
        base_unet_pred = unet(lio["noisy"], lio["timestep"], te(lio["input_ids"]).last_hidden_state).sample
    assert torch.allclose(base_unet_pred, lio["pred_multiplier0"], atol=1e-5, rtol=0)
    summary["lora_relative_effect"] = float((lio["pred"] - lio["pred_multiplier0"]).norm() / lio["pred_multiplier0"].norm())

    grads = OrderedDict()
    sd_keys = set(load_file(lora_path).keys())
    for name, p in net.named_parameters():
        assert name in sd_keys, name
        assert p.grad is not None and p.grad.abs().max() > 0, f"zero grad {name}"
        grads[name] = p.grad.detach().clone()
    st_save(os.path.join(out, "lora", "grads.safetensors"), grads)
    st_save(os.path.join(out, "lora", "io.safetensors"), lio)

    te_names = [i["name"] for i in infos if i["name"].startswith("lora_te")]
    un_names = [i["name"] for i in infos if i["name"].startswith("lora_unet")]
    module_names = OrderedDict(
        description="sd-scripts networks/lora.py create_network(multiplier=1.0, network_dim=4, network_alpha=2.0, "
                    "conv_dim=4, conv_alpha=1.0) on the tiny diffusers UNet / transformers CLIPTextModel",
        network_dim=4, network_alpha=2.0, conv_dim=4, conv_alpha=1.0,
        counts=dict(text_encoder=len(te_names), unet=len(un_names), total=len(infos)),
        names=sorted(i["name"] for i in infos),
        modules=OrderedDict((i["name"], i) for i in sorted(infos, key=lambda x: x["name"])),
    )
    dump_json(module_names, os.path.join(out, "lora", "module_names.json"))

    # full-size SD1.5 LoRA names (meta build); cross-checked against sd-scripts' own SD1 UNet
    full_names = OrderedDict()
    nets = {}
    for conv in (False, True):
        with torch.device("meta"):
            fu = build_unet(UNET_FULL)
            ft = build_clip(CLIP_FULL)
        n = create_kohya_network(None, ft, fu, conv=conv)
        walked_full = OrderedDict(list(walk_targets(ft, "lora_te", kohya_lora.LoRANetwork.TEXT_ENCODER_TARGET_REPLACE_MODULE).items())
                                  + list(walk_targets(fu, "lora_unet", ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]).items()))
        nets[conv] = [lora_info(l, walked_full) for l in n.text_encoder_loras + n.unet_loras]
    te_full_names = sorted(i["name"] for i in nets[False] if i["name"].startswith("lora_te"))
    unet_noconv = sorted(i["name"] for i in nets[False] if i["name"].startswith("lora_unet"))
    unet_conv = sorted(i["name"] for i in nets[True] if i["name"].startswith("lora_unet"))
    assert len(te_full_names) == 72 and len(unet_noconv) == 192 and len(unet_conv) == 278, (
        len(te_full_names), len(unet_noconv), len(unet_conv))
    # sd-scripts trains SD1 on its own library/original_unet.py UNet: same names?
    with torch.device("meta"):
        ku = kohya_original_unet.UNet2DConditionModel(sample_size=64, attention_head_dim=8, cross_attention_dim=768,
                                                      use_linear_projection=False, upcast_attention=False)
    k_noconv = sorted(walk_targets(ku, "lora_unet", ["Transformer2DModel"]).keys())
    k_conv = sorted(walk_targets(ku, "lora_unet", ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]).keys())
    summary["full_names_match_sd_scripts_original_unet"] = (k_noconv == unet_noconv and k_conv == unet_conv)
    assert summary["full_names_match_sd_scripts_original_unet"]
    full_names.update(
        description="LoRA module names sd-scripts networks/lora.py creates for full-size SD1.5 (diffusers UNet + "
                    "transformers CLIPTextModel ViT-L/14 text, built on the meta device). Identical UNet names come "
                    "from sd-scripts' own library/original_unet.py UNet (checked).",
        counts=dict(text_encoder=len(te_full_names), unet_without_conv_dim=len(unet_noconv), unet_with_conv_dim=len(unet_conv)),
        text_encoder=te_full_names,
        unet_without_conv_dim=unet_noconv,
        unet_with_conv_dim=unet_conv,
        modules_with_conv_dim=OrderedDict((i["name"], {k: v for k, v in i.items() if k != "name"})
                                          for i in sorted(nets[True], key=lambda x: x["name"])),
    )
    dump_json(full_names, os.path.join(out, "lora", "sd15_full_names.json"))

    # ------------------------------------------------------------------ 5. merged LoRA at 0.7
    munet = reinit_(build_unet(UNET_TINY), SEEDS["unet"]).eval()
    mte = reinit_(build_clip(CLIP_TINY), SEEDS["text_encoder"]).eval()
    kohya_merge.merge_to_sd_model(mte, munet, [lora_path], [0.7], torch.float32)
    merged = OrderedDict()
    with torch.no_grad():
        merged["out"] = munet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample
        merged["te_out_merged_0p7"] = mte(input_ids).last_hidden_state
    st_save(os.path.join(out, "lora", "unet_out_merged_0p7.safetensors"), merged)
    # cross-check: the un-merged LoRA forward at multiplier 0.7 gives the same
    lunet.eval()
    lte.eval()
    net.set_multiplier(0.7)
    with torch.no_grad():
        dyn_u = lunet(io_unet["sample"], io_unet["timestep"], io_unet["encoder_hidden_states"]).sample
        dyn_t = lte(input_ids).last_hidden_state
    summary["merged_vs_dynamic_0p7_max_abs_diff"] = dict(unet=float((dyn_u - merged["out"]).abs().max()),
                                                         text_encoder=float((dyn_t - merged["te_out_merged_0p7"]).abs().max()))
    assert summary["merged_vs_dynamic_0p7_max_abs_diff"]["unet"] < 1e-4
    assert summary["merged_vs_dynamic_0p7_max_abs_diff"]["text_encoder"] < 1e-4
    summary["merged_effect_vs_base"] = dict(
        unet=float((merged["out"] - io_unet["out"]).abs().max()),
        text_encoder=float((merged["te_out_merged_0p7"] - io_te["last_hidden_state"]).abs().max()))

    # ------------------------------------------------------------------ manifest + summary
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("# sd15_tiny reference fixtures\n\nGenerated by `tools/reference/make_sd15_tiny.py`; do not edit. "
                "What each file holds and how to regenerate: `tools/reference/README.md`. Versions, seeds, checks "
                "and sha256 of every file: `manifest.json`.\n")
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
            entry = OrderedDict(bytes=size, sha256=sha256(p))
            if fn.endswith(".safetensors"):
                sd = load_file(p)
                entry["tensors"] = len(sd)
                if rel.startswith("io_") or rel in ("lora/io.safetensors", "lora/unet_out_merged_0p7.safetensors"):
                    entry["contents"] = OrderedDict(
                        (k, dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""),
                                 max_abs=float(v.abs().max()) if v.numel() else 0.0)) for k, v in sd.items())
            files[rel] = entry
    files = OrderedDict(sorted(files.items()))
    manifest = OrderedDict(
        generator="tools/reference/make_sd15_tiny.py",
        versions=dict(python=sys.version.split()[0], torch=torch.__version__, diffusers=diffusers.__version__,
                      transformers=transformers.__version__, safetensors=safetensors.__version__,
                      sd_scripts=open(os.path.join(SD_SCRIPTS, ".sd_scripts_commit")).read().strip()
                      if os.path.exists(os.path.join(SD_SCRIPTS, ".sd_scripts_commit")) else "unknown"),
        seeds=SEEDS,
        weights_dtype=args.weights_dtype,
        configs=dict(unet=clean_config(unet.config), vae=clean_config(vae.config), text_encoder=CLIP_TINY),
        summary=summary,
        total_bytes=total,
        files=files,
    )
    dump_json(manifest, os.path.join(out, "manifest.json"))

    print(f"wrote {out}: {len(files) + 1} files, {total / 1e6:.2f} MB (excluding manifest.json)")
    for rel, e in files.items():
        line = f"  {rel:55s} {e['bytes']:>10,d} B"
        if "tensors" in e:
            line += f"  {e['tensors']:4d} tensors"
        print(line)
    print("param counts (tiny):", summary["param_counts"])
    print("LDM mapping round trips:", json.dumps(summary["ldm_roundtrip_tiny"]))
    for name, group in (("io_text_encoder", io_te), ("io_unet", io_unet), ("io_vae", io_vae), ("lora/io", lio),
                        ("lora/unet_out_merged_0p7", merged)):
        print(f"{name}:")
        for k, t in group.items():
            s = stats(t)
            print(f"  {k:28s} {str(tuple(t.shape)):18s} {str(t.dtype).replace('torch.', ''):8s} max_abs={s['max_abs']:.4g} std={s['std']:.4g}")
    g_max = max(float(v.abs().max()) for v in grads.values())
    g_min = min(float(v.abs().max()) for v in grads.values())
    print(f"lora/grads: {len(grads)} tensors, per-tensor max_abs in [{g_min:.3g}, {g_max:.3g}]")
    print("LoRA modules (tiny):", module_names["counts"], " full SD1.5:", full_names["counts"])
    for k in ("unet_batch_vs_single_max_abs_diff", "lora_relative_effect", "merged_vs_dynamic_0p7_max_abs_diff",
              "merged_effect_vs_base", "weakest_param_grad", "full_names_match_sd_scripts_original_unet"):
        print(f"{k}: {summary[k]}")


if __name__ == "__main__":
    main()
