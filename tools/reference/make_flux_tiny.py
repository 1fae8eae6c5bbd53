#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's Flux.1 transformer and autoencoder (tiny widths, Flux
structure).

The reference implementation is BFL's own code as sd-scripts carries it (`library/flux_models.py`:
`Flux`, `DoubleStreamBlock`, `SingleStreamBlock`, `EmbedND`, `AutoEncoder`); diffusers'
`FluxTransformer2DModel` / `AutoencoderKL` run the same weights after diffusers' own single-file
converters, and both must agree here before anything is written. Sizes are deliberately unusual:
hidden 48 = 3 heads x 16, RoPE axes (4, 6, 6), T5 width 40, pooled width 24, 2 double + 3 single
blocks; the autoencoder has 32 channels at three levels (latent factor 4) and Flux's 16 latent channels.

Writes tests/fixtures/reference/flux_tiny/:

* dev_bfl.safetensors, schnell_bfl.safetensors - the transformers in BFL's single-file layout
  (`double_blocks.N.img_attn.qkv.weight`, ...);
* dev_diffusers/transformer/ - the dev transformer as a diffusers folder (config.json +
  diffusion_pytorch_model.safetensors), converted by diffusers' own converter;
* io_transformer.safetensors - inputs (packed latents, ids, T5 and pooled CLIP states, timesteps in
  [0, 1] as sd-scripts passes them, guidance), the rotary table, the modulation vector, every
  block's outputs and the final output for dev, schnell and dev with a T5 attention mask;
* lora.safetensors - an sd-scripts `networks/lora_flux.py` LoRA (rank 4, alpha 2, random up
  weights) on the dev model under kohya names, its output and the gradients of
  sum(output * probe) for every lora_down / lora_up;
* schedules.json - sd-scripts' `get_schedule` noise levels (checked against diffusers'
  `FlowMatchEulerDiscreteScheduler` with dynamic shifting); sample.safetensors - sd-scripts'
  Euler `denoise` loop (3 steps, guidance 3.5) on the dev model from given noise;
* pipeline/ - a whole tiny FluxPipeline folder in f16 (the dev transformer and autoencoder, a
  tiny CLIP-L of width 24 and T5 of width 40, random weights) for end-to-end tests;
* ae_bfl.safetensors, ae_diffusers/vae/ - the autoencoder in BFL's `ae.safetensors` layout and as a
  diffusers folder; io_ae.safetensors - an image, the posterior mean and log-variance, the scaled
  latents `0.3611 * (mean - 0.1159)`, the decoded image of those latents, and the 2x2 packing.

Run from the repository root (sd-scripts at 48d368f on PYTHONPATH):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_flux_tiny.py

Deterministic: fixed seeds, float32 CPU compute, one thread.
"""
import inspect
import json
import os
import shutil

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.loaders import single_file_utils as sfu
from diffusers import FlowMatchEulerDiscreteScheduler
from library import flux_models, flux_train_utils
from networks import lora_flux

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.join("tests", "fixtures", "reference", "flux_tiny")
HIDDEN, HEADS, AXES = 48, 3, [4, 6, 6]
T5_DIM, POOLED_DIM = 40, 24
DEPTH, DEPTH_SINGLE = 2, 3
LATENT_CH, LAT_H, LAT_W = 16, 8, 6
TXT_LEN, BATCH = 7, 2
AE_CH, AE_MULT, AE_RES_BLOCKS = 32, [1, 1, 1], 1
AE_SCALE, AE_SHIFT = 0.3611, 0.1159


def params(guidance: bool) -> flux_models.FluxParams:
    return flux_models.FluxParams(
        in_channels=4 * LATENT_CH,
        vec_in_dim=POOLED_DIM,
        context_in_dim=T5_DIM,
        hidden_size=HIDDEN,
        mlp_ratio=4.0,
        num_heads=HEADS,
        depth=DEPTH,
        depth_single_blocks=DEPTH_SINGLE,
        axes_dim=AXES,
        theta=10000,
        qkv_bias=True,
        guidance_embed=guidance,
    )


def make_flux(guidance: bool, seed: int) -> flux_models.Flux:
    torch.manual_seed(seed)
    model = flux_models.Flux(params(guidance)).float().eval()
    # RMSNorm scales start at one; make them matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def to_diffusers(sd: dict) -> dict:
    """diffusers' own BFL -> diffusers converter, with its hard-coded width (3072) replaced."""
    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    src = src.replace("inner_dim = 3072", f"inner_dim = {HIDDEN}")
    namespace = dict(sfu.__dict__)
    exec(src, namespace)  # noqa: S102 - diffusers' source, patched for the tiny width
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"](dict(sd))


def diffusers_transformer(guidance: bool) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CH,
        num_layers=DEPTH,
        num_single_layers=DEPTH_SINGLE,
        attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=POOLED_DIM,
        guidance_embeds=guidance,
        axes_dims_rope=tuple(AXES),
    ).float().eval()


def pack(latents: torch.Tensor) -> torch.Tensor:
    """sd-scripts' flux_utils.pack_latents: (B, C, H, W) -> (B, H/2*W/2, C*4)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int) -> torch.Tensor:
    """sd-scripts' flux_utils.prepare_img_ids for one sample: (h/2*w/2, 3) rows (0, y, x)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def run_flux(model, inputs, guidance, mask=None, hooks=None):
    ids = inputs["img_ids"].unsqueeze(0).expand(BATCH, -1, -1)
    txt_ids = inputs["txt_ids"].unsqueeze(0).expand(BATCH, -1, -1)
    return model(
        img=inputs["img"],
        img_ids=ids,
        txt=inputs["txt"],
        txt_ids=txt_ids,
        timesteps=inputs["timesteps"],
        y=inputs["y"],
        guidance=guidance,
        txt_attention_mask=mask,
    )


def transformer_fixtures():
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(BATCH, LATENT_CH, LAT_H, LAT_W, generator=g)
    inputs = {
        "latents": latents,
        "img": pack(latents),
        "img_ids": image_ids(LAT_H, LAT_W),
        "txt": torch.randn(BATCH, TXT_LEN, T5_DIM, generator=g),
        "txt_ids": torch.zeros(TXT_LEN, 3),
        "timesteps": torch.tensor([0.3, 0.875]),
        "y": torch.randn(BATCH, POOLED_DIM, generator=g),
        "guidance": torch.tensor([3.5, 1.0]),
        "txt_mask": torch.tensor([[1] * TXT_LEN, [1] * (TXT_LEN - 3) + [0] * 3], dtype=torch.float32),
    }
    out = dict(inputs)

    dev = make_flux(True, 1)
    schnell = make_flux(False, 2)
    captured = {}

    def grab(name):
        def hook(_module, _args, output):
            if isinstance(output, tuple):
                captured[f"{name}.img"], captured[f"{name}.txt"] = output[0].detach(), output[1].detach()
            else:
                captured[name] = output.detach()

        return hook

    handles = [dev.pe_embedder.register_forward_hook(grab("pe"))]
    handles += [b.register_forward_hook(grab(f"double_blocks.{i}")) for i, b in enumerate(dev.double_blocks)]
    handles += [b.register_forward_hook(grab(f"single_blocks.{i}")) for i, b in enumerate(dev.single_blocks)]
    with torch.no_grad():
        out["dev.out"] = run_flux(dev, inputs, inputs["guidance"])
        for h in handles:
            h.remove()
        out["dev.vec"] = (
            dev.time_in(flux_models.timestep_embedding(inputs["timesteps"], 256))
            + dev.guidance_in(flux_models.timestep_embedding(inputs["guidance"], 256))
            + dev.vector_in(inputs["y"])
        )
        # The rotary table as (L, D/2, 2, 2), batch and head axes dropped.
        out["dev.pe"] = captured.pop("pe")[0, 0]
        for k, v in captured.items():
            out[f"dev.{k}"] = v
        out["dev.out_masked"] = run_flux(dev, inputs, inputs["guidance"], mask=inputs["txt_mask"])
        out["schnell.out"] = run_flux(schnell, inputs, None)

    # diffusers runs the same weights after its own converter.
    for name, model, guidance in (("dev", dev, True), ("schnell", schnell, False)):
        converted = to_diffusers(model.state_dict())
        dm = diffusers_transformer(guidance)
        dm.load_state_dict(converted, strict=True)
        with torch.no_grad():
            d_out = dm(
                hidden_states=inputs["img"],
                encoder_hidden_states=inputs["txt"],
                pooled_projections=inputs["y"],
                timestep=inputs["timesteps"],
                img_ids=inputs["img_ids"],
                txt_ids=inputs["txt_ids"],
                guidance=inputs["guidance"] if guidance else None,
                return_dict=False,
            )[0]
        diff = (d_out - out[f"{name}.out"]).abs().max().item()
        print(f"{name}: BFL vs diffusers max |diff| = {diff:.3g}")
        assert diff < 1e-5, diff
        if name == "dev":
            folder = os.path.join(OUT, "dev_diffusers", "transformer")
            os.makedirs(folder, exist_ok=True)
            dm.save_pretrained(folder, safe_serialization=True)

    save_file({k: v.contiguous() for k, v in dev.state_dict().items()}, os.path.join(OUT, "dev_bfl.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in schnell.state_dict().items()}, os.path.join(OUT, "schnell_bfl.safetensors")
    )
    save_file({k: v.contiguous().float() for k, v in out.items()}, os.path.join(OUT, "io_transformer.safetensors"))
    return dev, inputs


def lora_fixture(dev, inputs):
    torch.manual_seed(11)
    network = lora_flux.LoRANetwork([None], dev, multiplier=1.0, lora_dim=4, alpha=2.0)
    network.apply_to([None], dev, apply_text_encoder=False, apply_unet=True)
    with torch.no_grad():
        for lora in network.unet_loras:
            lora.lora_up.weight.normal_(0.0, 0.05)
    network.train()
    dev.train()
    g = torch.Generator().manual_seed(12)
    out = run_flux(dev, inputs, inputs["guidance"])
    probe = torch.randn(out.shape, generator=g)
    (out * probe).sum().backward()
    tensors = {"out": out.detach(), "probe": probe}
    for lora in network.unet_loras:
        tensors[f"{lora.lora_name}.lora_down.weight"] = lora.lora_down.weight.detach().clone()
        tensors[f"{lora.lora_name}.lora_up.weight"] = lora.lora_up.weight.detach().clone()
        tensors[f"{lora.lora_name}.alpha"] = torch.tensor(float(lora.alpha))
        tensors[f"{lora.lora_name}.lora_down.grad"] = lora.lora_down.weight.grad.detach().clone()
        tensors[f"{lora.lora_name}.lora_up.grad"] = lora.lora_up.weight.grad.detach().clone()
    print(f"lora: {len(network.unet_loras)} modules")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "lora.safetensors"))


def sampler_fixtures(dev, inputs):
    """sd-scripts' sampling schedule (with diffusers' dynamic-shift scheduler as a cross-check) and
    its Euler `denoise` loop on the tiny dev model, first sample of the inputs."""
    schedules = []
    for steps, seq_len, shift in [(20, 1024, True), (4, 4096, True), (7, 12, True), (28, 256, False), (1, 300, True)]:
        sigmas = flux_train_utils.get_schedule(steps, seq_len, shift=shift)
        if shift:
            sched = FlowMatchEulerDiscreteScheduler(
                use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
            )
            mu = flux_train_utils.get_lin_function(y1=0.5, y2=1.15)(seq_len)
            sched.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)], mu=mu)
            diff = max(abs(a - b) for a, b in zip(sched.sigmas.tolist(), sigmas))
            assert diff < 1e-6, diff
        schedules.append({"steps": steps, "image_seq_len": seq_len, "shift": shift, "sigmas": sigmas})
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(schedules, f, indent=1)
    g = torch.Generator().manual_seed(31)
    noise = torch.randn(1, inputs["img"].shape[1], inputs["img"].shape[2], generator=g)
    sigmas = flux_train_utils.get_schedule(3, noise.shape[1], shift=True)
    with torch.no_grad():
        out = flux_train_utils.denoise(
            dev,
            noise,
            inputs["img_ids"].unsqueeze(0),
            inputs["txt"][:1],
            inputs["txt_ids"].unsqueeze(0),
            inputs["y"][:1],
            sigmas,
            guidance=3.5,
        )
    save_file({"noise": noise, "out": out, "sigmas": torch.tensor(sigmas)}, os.path.join(OUT, "sample.safetensors"))


def ae_fixtures():
    torch.manual_seed(21)
    ae_params = flux_models.AutoEncoderParams(
        resolution=64,
        in_channels=3,
        ch=AE_CH,
        out_ch=3,
        ch_mult=AE_MULT,
        num_res_blocks=AE_RES_BLOCKS,
        z_channels=LATENT_CH,
        scale_factor=AE_SCALE,
        shift_factor=AE_SHIFT,
    )
    ae = flux_models.AutoEncoder(ae_params).float().eval()
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "norm" in name and name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(22)
    image = torch.rand(1, 3, 24, 32, generator=g) * 2 - 1
    with torch.no_grad():
        moments = ae.encoder(image)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        latents = AE_SCALE * (mean - AE_SHIFT)
        decoded = ae.decode(latents)
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(AE_MULT),
        "up_block_types": ["UpDecoderBlock2D"] * len(AE_MULT),
        "block_out_channels": [AE_CH * m for m in AE_MULT],
        "layers_per_block": AE_RES_BLOCKS,
        "latent_channels": LATENT_CH,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": AE_SCALE,
        "shift_factor": AE_SHIFT,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
        "force_upcast": True,
    }
    vae = AutoencoderKL(**config).float().eval()
    converted = sfu.convert_ldm_vae_checkpoint(dict(ae.state_dict()), vae.config)
    vae.load_state_dict(converted, strict=True)
    with torch.no_grad():
        d_mean = vae.encode(image).latent_dist.mean
        d_dec = vae.decode(latents / AE_SCALE + AE_SHIFT).sample
    diff = max((d_mean - mean).abs().max().item(), (d_dec - decoded).abs().max().item())
    print(f"ae: BFL vs diffusers max |diff| = {diff:.3g}")
    assert diff < 1e-5, diff
    folder = os.path.join(OUT, "ae_diffusers", "vae")
    os.makedirs(folder, exist_ok=True)
    vae.save_pretrained(folder, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, os.path.join(OUT, "ae_bfl.safetensors"))
    save_file(
        {
            "image": image,
            "mean": mean,
            "logvar": logvar,
            "latents": latents,
            "decoded": decoded,
            "packed": pack(latents),
        },
        os.path.join(OUT, "io_ae.safetensors"),
    )


def pipeline_fixture():
    """A whole tiny Flux pipeline as a diffusers folder in f16 (random weights; the tiny dev
    transformer and autoencoder above, a tiny CLIP-L and T5 of the widths they expect), for
    end-to-end tests of loading, generating and training."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = os.path.join(OUT, "pipeline")
    dev = make_flux(True, 1)
    dm = diffusers_transformer(True)
    dm.load_state_dict(to_diffusers(dev.state_dict()), strict=True)
    dm.half().save_pretrained(os.path.join(root, "transformer"), safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(OUT, "ae_diffusers", "vae"))
    vae.half().save_pretrained(os.path.join(root, "vae"), safe_serialization=True)

    torch.manual_seed(41)
    clip_cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=POOLED_DIM,
        intermediate_size=2 * POOLED_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=POOLED_DIM,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    clip = CLIPTextModel(clip_cfg).eval()
    clip.half().save_pretrained(os.path.join(root, "text_encoder"), safe_serialization=True)

    torch.manual_seed(42)
    t5_cfg = T5Config(
        vocab_size=32128,
        d_model=T5_DIM,
        d_kv=12,
        d_ff=56,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=3,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    t5 = T5EncoderModel(t5_cfg).eval()
    with torch.no_grad():
        for name, p in t5.named_parameters():
            if name.endswith(".weight") and p.ndim == 2 and "relative_attention_bias" not in name and "shared" not in name:
                p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
    t5.half().save_pretrained(os.path.join(root, "text_encoder_2"), safe_serialization=True)
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(
            {
                "_class_name": "FlowMatchEulerDiscreteScheduler",
                "num_train_timesteps": 1000,
                "shift": 3.0,
                "use_dynamic_shifting": True,
                "base_shift": 0.5,
                "max_shift": 1.15,
                "base_image_seq_len": 256,
                "max_image_seq_len": 4096,
            },
            f,
            indent=1,
        )
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(
            {
                "_class_name": "FluxPipeline",
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            f,
            indent=1,
        )


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    dev, inputs = transformer_fixtures()
    sampler_fixtures(make_flux(True, 1), inputs)
    lora_fixture(dev, inputs)
    ae_fixtures()
    pipeline_fixture()
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "Made by tools/reference/make_flux_tiny.py (see its docstring); do not edit by hand.\n\n"
            + json.dumps(
                {
                    "hidden": HIDDEN,
                    "heads": HEADS,
                    "axes_dim": AXES,
                    "context_in_dim": T5_DIM,
                    "vec_in_dim": POOLED_DIM,
                    "depth": DEPTH,
                    "depth_single_blocks": DEPTH_SINGLE,
                    "ae": {"ch": AE_CH, "ch_mult": AE_MULT, "num_res_blocks": AE_RES_BLOCKS},
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
