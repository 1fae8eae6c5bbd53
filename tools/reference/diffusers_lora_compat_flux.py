"""Does a Flux LoRA written by lorakit load in diffusers, and compute what lorakit computes?

Loads the tiny Flux pipeline (tests/fixtures/reference/flux_tiny/pipeline) as a diffusers
FluxPipeline in float32, applies a kohya-format Flux LoRA (`--lora`, default the file
`lorakit train` writes from tests/fixtures/reference/trained_lora/tiny_flux_trained.toml) with
`pipe.load_lora_weights`, and checks:
  * diffusers reports no unexpected or missing LoRA keys (its loader logs them as warnings);
  * every module of the file became adapters, and nothing else did: diffusers splits kohya's fused
    `img_attn_qkv` into to_q/to_k/to_v and `single_blocks_N_linear1` into to_q/to_k/to_v/proj_mlp,
    so the expected adapter count is 3 per qkv, 4 per linear1 and 1 per other module (CLIP-L's
    `lora_te1_…` modules one each);
then runs the transformer (with LoRA) on fixed inputs and CLIP-L (with LoRA) on fixed ids, and
saves inputs and outputs to `--out` (default
tests/fixtures/reference/trained_lora/diffusers_io_flux.safetensors), which
crates/lorakit-train/tests/diffusers_compat.rs compares with lorakit's outputs (<= 1e-4).

Run with the diffusers release users have (0.42.1 / transformers 5.25 / peft 0.21.2 here):
    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/diffusers_lora_compat_flux.py
"""
import argparse
import inspect
import logging
import pathlib

import torch
from diffusers import FluxPipeline
from diffusers.loaders import lora_conversion_utils, lora_pipeline
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests/fixtures/reference/flux_tiny/pipeline"
TRAINED = ROOT / "tests/fixtures/reference/trained_lora"

parser = argparse.ArgumentParser()
parser.add_argument("--lora", type=pathlib.Path, default=TRAINED / "tiny_flux_trained.safetensors")
parser.add_argument("--out", type=pathlib.Path, default=TRAINED / "diffusers_io_flux.safetensors")
args = parser.parse_args()

warnings = []


class Capture(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


for name in ("diffusers", "peft"):
    logging.getLogger(name).addHandler(Capture())

torch.manual_seed(0)
pipe = FluxPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, tokenizer=None, tokenizer_2=None)

# diffusers' kohya → diffusers converter splits single blocks' linear1 at FLUX.1's widths
# (3072 × 3 + 12288); substitute the tiny model's, leaving the rest of its code as it is.
hidden = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
source = inspect.getsource(lora_conversion_utils._convert_kohya_flux_lora_to_diffusers)
assert "dims=[3072, 3072, 3072, 12288]" in source
source = source.replace("dims=[3072, 3072, 3072, 12288]", f"dims=[{hidden}, {hidden}, {hidden}, {4 * hidden}]")
namespace = dict(lora_conversion_utils.__dict__)
exec(source, namespace)  # noqa: S102 - diffusers' own source with the widths substituted
for module in (lora_conversion_utils, lora_pipeline):
    if hasattr(module, "_convert_kohya_flux_lora_to_diffusers"):
        module._convert_kohya_flux_lora_to_diffusers = namespace["_convert_kohya_flux_lora_to_diffusers"]
lora = load_file(args.lora)
modules = sorted({k.split(".")[0] for k in lora})
assert all(m.startswith(("lora_unet_", "lora_te1_")) for m in modules), "modules outside lora_unet / lora_te1"
expected = {"transformer": 0, "text_encoder": 0}
for m in modules:
    if m.startswith("lora_te1_"):
        expected["text_encoder"] += 1
    elif m.endswith("_attn_qkv"):
        expected["transformer"] += 3
    elif m.endswith("_linear1"):
        expected["transformer"] += 4
    else:
        expected["transformer"] += 1

pipe.load_lora_weights(str(args.lora.parent), weight_name=args.lora.name, adapter_name="lorakit")
lora_warnings = [w for w in warnings if "lora" in w.lower() or "unexpected" in w.lower() or "missing" in w.lower()]
if expected["text_encoder"] == 0:
    # diffusers notes that a transformer-only file has nothing for CLIP: that is not a problem.
    lora_warnings = [w for w in lora_warnings if "No LoRA keys associated to CLIPTextModel" not in w]
print("diffusers warnings:", lora_warnings)
assert not lora_warnings, "diffusers reported LoRA keys it could not place"


def lora_layers(model):
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "lorakit" in getattr(m, "lora_A", {})]


got = {"transformer": len(lora_layers(pipe.transformer)), "text_encoder": len(lora_layers(pipe.text_encoder))}
print("expected:", expected)
print("diffusers:", got)
assert got == expected, "modules missing or unexpected"

gen = torch.Generator().manual_seed(0)
cfg = pipe.transformer.config
latents = torch.randn(2, cfg.in_channels // 4, 8, 6, generator=gen)
b, c, h, w = latents.shape
packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
img_ids = torch.zeros(h // 2, w // 2, 3)
img_ids[..., 1] += torch.arange(h // 2)[:, None]
img_ids[..., 2] += torch.arange(w // 2)[None, :]
img_ids = img_ids.reshape(-1, 3)
txt = torch.randn(2, 7, cfg.joint_attention_dim, generator=gen)
txt_ids = torch.zeros(7, 3)
pooled = torch.randn(2, cfg.pooled_projection_dim, generator=gen)
timesteps = torch.tensor([0.25, 0.9])
guidance = torch.tensor([1.0, 3.5])
ids = torch.randint(0, 49406, (2, 77), generator=gen)
ids[:, 0] = 49406
ids[:, 12:] = 49407
with torch.no_grad():
    out = pipe.transformer(
        hidden_states=packed,
        encoder_hidden_states=txt,
        pooled_projections=pooled,
        timestep=timesteps,
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance,
        return_dict=False,
    )[0]
    clip_pooled = pipe.text_encoder(ids, output_hidden_states=False).pooler_output
save_file(
    {
        "latents": latents,
        "img_ids": img_ids,
        "txt": txt,
        "txt_ids": txt_ids,
        "pooled": pooled,
        "timesteps": timesteps,
        "guidance": guidance,
        "out": out.contiguous(),
        "clip_ids": ids.to(torch.int64),
        "clip_pooled": clip_pooled.contiguous(),
    },
    args.out,
)
print("wrote", args.out)
