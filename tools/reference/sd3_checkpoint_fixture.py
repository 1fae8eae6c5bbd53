#!/usr/bin/env python3
"""Reference fixtures for lorakit's SD3 checkpoint loading (`checkpoint/sd3.rs`): tiny SD3 Medium
and SD3.5 Medium (MMDiT-X) models in the layouts users have, all holding the same weights.

Written by diffusers 0.42.1 / transformers 5.25 (the releases users run now):

* `sd3m_diffusers/`: `StableDiffusion3Pipeline.save_pretrained` of a tiny pipeline with random
  weights (f16; tokenizers left out — loading never reads them).
* `sd35m_diffusers/`: the same for the sd35m transformer, saved with no VAE and no text encoders
  (`model_index.json` lists them as null): SD3.5 uses SD3's VAE and encoders, and repeating
  sd3m's bytes would only grow the fixtures; the tests pass sd3m's parts as separate files.
* `sd3m_sai.safetensors`: SAI's single-file layout (`sd3_medium_incl_clips_t5xxlfp16`-style) of
  the sd3m pipeline: `model.diffusion_model.*` (the inverse of diffusers'
  `convert_sd3_transformer_checkpoint_to_diffusers`), `first_stage_model.*` (LDM VAE keys), and
  `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*` (HF layouts; CLIP-L without
  `text_projection`, as in SAI's files — diffusers and sd-scripts use an identity there, so the
  pipeline's CLIP-L projection is an identity too).
* `sd35m_sai.safetensors`: the sd35m transformer and the VAE only (`sd3.5_medium.safetensors`
  style); its text encoders come as separate files.

Before anything is written, diffusers' own single-file loaders must read the SAI files back to the
pipelines' tensors (`SD3Transformer2DModel.from_single_file`, `AutoencoderKL.from_single_file`,
`convert_ldm_clip_checkpoint` / `convert_sd3_t5_checkpoint_to_diffusers`).

`io.safetensors`: reference outputs, f32 compute on the f16-rounded weights:
`mmdit.{x,t,pooled,context}` and `<variant>.out` (diffusers' `SD3Transformer2DModel`);
`vae.image`, `vae.mean`, `vae.logvar` (posterior), `vae.latents` (`(mean − shift)·scale`),
`vae.decoded` (decode of `latents/scale + shift`); `clip.ids`, `clip_l.hidden`, `clip_l.embeds`,
`clip_g.hidden`, `clip_g.embeds` (transformers' last hidden state and projected pooled output);
`t5.ids`, `t5.hidden`.

Sizes: sd3m 1 joint block of width 64 (one head of SAI's 64 — a file without q/k norms cannot say
otherwise), sd35m 2 blocks of width 32 (two heads of 16, read from the q/k norms; block 0 has the
second attention), patch 2, position grid 4×4, pooled 64 (CLIP-L 32 + CLIP-G 32), context 32
(T5's width); VAE 2 levels of 8 channels (8 groups), 16 latent channels, SD3's scale 1.5305 and
shift 0.0609; CLIPs 2 layers of width 32 (one head), 16 positions, vocabulary 100; T5 2 blocks, width 32, 4
heads of 8, 8 buckets.

Run from the repository root:

    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/sd3_checkpoint_fixture.py

Deterministic: fixed seeds, float32 CPU compute, one thread.
"""
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.join("tests", "fixtures", "reference", "sd3_checkpoint")
VOCAB, CLIP_W, T5_W, POS_MAX = 100, 32, 32, 4
POOLED = 2 * CLIP_W


def randomize(model: torch.nn.Module, seed: int, keep=()):
    """Random everywhere (zero-initialised layers must matter), rounded to f16 (buffers too)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in keep):
                continue
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() > 1:
                p.copy_(torch.randn_like(p) * 0.7 / max(p[0].numel(), 1) ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1)
            p.copy_(p.half().float())
        for name, buf in model.named_buffers():
            if name.endswith("pos_embed.pos_embed"):
                # SD3's sin-cos table is a buffer; random values make the centre crop matter.
                buf.copy_(torch.randn_like(buf) * 0.5)
            if buf.is_floating_point():
                buf.copy_(buf.half().float())
    return model.float().eval()


def transformer(variant: str) -> SD3Transformer2DModel:
    if variant == "sd3m":
        kw = dict(num_layers=1, attention_head_dim=64, num_attention_heads=1, caption_projection_dim=64)
    else:
        kw = dict(
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_projection_dim=32,
            qk_norm="rms_norm",
            dual_attention_layers=(0,),
        )
    m = SD3Transformer2DModel(
        sample_size=POS_MAX * 2,
        patch_size=2,
        in_channels=16,
        joint_attention_dim=T5_W,
        pooled_projection_dim=POOLED,
        out_channels=16,
        pos_embed_max_size=POS_MAX,
        **kw,
    )
    return randomize(m, 1 if variant == "sd3m" else 2)


def vae() -> AutoencoderKL:
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return randomize(m, 3)


def clip(act: str, seed: int, identity_projection: bool) -> CLIPTextModelWithProjection:
    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=CLIP_W,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=16,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=CLIP_W,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    m = randomize(CLIPTextModelWithProjection(cfg), seed, keep=("text_projection",) if identity_projection else ())
    if identity_projection:
        with torch.no_grad():
            m.text_projection.weight.copy_(torch.eye(CLIP_W))
    return m


def t5() -> T5EncoderModel:
    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=T5_W,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return randomize(T5EncoderModel(cfg), 6)


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sai_from_diffusers(sd: dict, depth: int) -> dict:
    """The inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`."""
    sd = dict(sd)
    out = {}

    def move(src, dst):
        for s in ("weight", "bias"):
            if f"{src}.{s}" in sd:
                out[f"{dst}.{s}"] = sd.pop(f"{src}.{s}")

    out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    move("pos_embed.proj", "x_embedder.proj")
    move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    move("context_embedder", "context_embedder")
    for i in range(depth):
        d, b = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for parts, dst in (
            (("attn.to_q", "attn.to_k", "attn.to_v"), "x_block.attn.qkv"),
            (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "context_block.attn.qkv"),
            (("attn2.to_q", "attn2.to_k", "attn2.to_v"), "x_block.attn2.qkv"),
        ):
            for s in ("weight", "bias"):
                if f"{d}.{parts[0]}.{s}" in sd:
                    out[f"{b}.{dst}.{s}"] = torch.cat([sd.pop(f"{d}.{p}.{s}") for p in parts], 0)
        for src, dst in (
            ("attn.norm_q", "x_block.attn.ln_q"),
            ("attn.norm_k", "x_block.attn.ln_k"),
            ("attn.norm_added_q", "context_block.attn.ln_q"),
            ("attn.norm_added_k", "context_block.attn.ln_k"),
            ("attn2.norm_q", "x_block.attn2.ln_q"),
            ("attn2.norm_k", "x_block.attn2.ln_k"),
            ("attn.to_out.0", "x_block.attn.proj"),
            ("attn.to_add_out", "context_block.attn.proj"),
            ("attn2.to_out.0", "x_block.attn2.proj"),
            ("norm1.linear", "x_block.adaLN_modulation.1"),
            ("ff.net.0.proj", "x_block.mlp.fc1"),
            ("ff.net.2", "x_block.mlp.fc2"),
            ("ff_context.net.0.proj", "context_block.mlp.fc1"),
            ("ff_context.net.2", "context_block.mlp.fc2"),
        ):
            move(f"{d}.{src}", f"{b}.{dst}")
        for s in ("weight", "bias"):
            t = sd.pop(f"{d}.norm1_context.linear.{s}")
            out[f"{b}.context_block.adaLN_modulation.1.{s}"] = swap_halves(t) if i == depth - 1 else t
    move("proj_out", "final_layer.linear")
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = swap_halves(sd.pop(f"norm_out.linear.{s}"))
    assert not sd, f"left over: {list(sd)}"
    return out


def ldm_vae_from_diffusers(sd: dict, levels: int) -> dict:
    """diffusers AutoencoderKL keys → LDM (`first_stage_model.` less), the inverse of diffusers'
    `convert_ldm_vae_checkpoint`."""
    out = {}
    res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        side, rest = k.split(".", 1)
        if rest.startswith("conv_norm_out."):
            out[f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"] = v
        elif rest.startswith("mid_block.resnets."):
            j, tail = rest[len("mid_block.resnets.") :].split(".", 1)
            mod, s = tail.rsplit(".", 1)
            out[f"{side}.mid.block_{int(j) + 1}.{res.get(mod, mod)}.{s}"] = v
        elif rest.startswith("mid_block.attentions.0."):
            mod, s = rest[len("mid_block.attentions.0.") :].rsplit(".", 1)
            out[f"{side}.mid.attn_1.{attn[mod]}.{s}"] = v[:, :, None, None] if (s == "weight" and v.dim() == 2) else v
        elif rest.startswith("down_blocks.") or rest.startswith("up_blocks."):
            kind, i, sub, tail = rest.split(".", 3)
            level = int(i) if kind == "down_blocks" else levels - 1 - int(i)
            name = "down" if kind == "down_blocks" else "up"
            if sub == "resnets":
                j, tail = tail.split(".", 1)
                mod, s = tail.rsplit(".", 1)
                out[f"{side}.{name}.{level}.block.{j}.{res.get(mod, mod)}.{s}"] = v
            else:
                sampler = "downsample" if sub == "downsamplers" else "upsample"
                out[f"{side}.{name}.{level}.{sampler}.{tail[len('0.'):]}"] = v
        else:
            out[k] = v
    return out


def same(a: dict, b: dict, what: str):
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:6]}"
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), f"{what}: {k} differs"


def half(sd: dict) -> dict:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    models = {"sd3m": transformer("sd3m"), "sd35m": transformer("sd35m")}
    ae = vae()
    clip_l = clip("quick_gelu", 4, identity_projection=True)
    clip_g = clip("gelu", 5, identity_projection=False)
    t5xxl = t5()
    io = {}

    # Reference outputs.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 16, 6, 4, generator=g)
    t = torch.tensor([250.0, 937.5])
    pooled = torch.randn(2, POOLED, generator=g)
    context = torch.randn(2, 5, T5_W, generator=g)
    io.update({"mmdit.x": x, "mmdit.t": t, "mmdit.pooled": pooled, "mmdit.context": context})
    with torch.no_grad():
        for name, m in models.items():
            io[f"{name}.out"] = m(
                hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t
            ).sample
        image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
        post = ae.encode(image).latent_dist
        latents = (post.mean - ae.config.shift_factor) * ae.config.scaling_factor
        decoded = ae.decode(latents / ae.config.scaling_factor + ae.config.shift_factor).sample
        io.update({"vae.image": image, "vae.mean": post.mean, "vae.logvar": post.logvar})
        io.update({"vae.latents": latents, "vae.decoded": decoded})
        # CLIP rows: BOS, words, EOS (the largest id, where transformers' eos_token_id = 2 rule pools).
        ids = torch.randint(3, VOCAB - 1, (2, 16), generator=g)
        ids[:, 0] = 0
        ids[0, 9:] = VOCAB - 1
        ids[1, 13] = VOCAB - 1
        ids[1, 14:] = 1
        io["clip.ids"] = ids.to(torch.int64)
        for name, m in (("clip_l", clip_l), ("clip_g", clip_g)):
            o = m(input_ids=ids)
            io[f"{name}.hidden"], io[f"{name}.embeds"] = o.last_hidden_state, o.text_embeds
        t5_ids = torch.randint(2, VOCAB, (2, 12), generator=g)
        t5_ids[:, -1] = 1
        io["t5.ids"] = t5_ids.to(torch.int64)
        io["t5.hidden"] = t5xxl(input_ids=t5_ids).last_hidden_state

    # Diffusers folders, written by diffusers.
    for name, m in models.items():
        # The sd35m folder holds its transformer only (its VAE and encoders are sd3m's, given as
        # separate files): the other parts would only repeat sd3m's bytes.
        full = name == "sd3m"
        pipe = StableDiffusion3Pipeline(
            transformer=m,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=ae if full else None,
            text_encoder=clip_l if full else None,
            tokenizer=None,
            text_encoder_2=clip_g if full else None,
            tokenizer_2=None,
            text_encoder_3=t5xxl if full else None,
            tokenizer_3=None,
        )
        folder = os.path.join(OUT, f"{name}_diffusers")
        pipe.to(torch.float16).save_pretrained(folder)
        pipe.to(torch.float32)

    # SAI single files from the same weights.
    vae_ldm = ldm_vae_from_diffusers(ae.state_dict(), levels=2)
    for name, m in models.items():
        sd = {f"model.diffusion_model.{k}": v for k, v in sai_from_diffusers(m.state_dict(), len(m.transformer_blocks)).items()}
        sd.update({f"first_stage_model.{k}": v for k, v in vae_ldm.items()})
        if name == "sd3m":
            clip_l_sd = {k: v for k, v in clip_l.state_dict().items() if not k.startswith("text_projection")}
            sd.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_l_sd.items()})
            sd.update({f"text_encoders.clip_g.transformer.{k}": v for k, v in clip_g.state_dict().items()})
            t5_sd = {k: v for k, v in t5xxl.state_dict().items() if k != "encoder.embed_tokens.weight"}
            sd.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5_sd.items()})
        path = os.path.join(OUT, f"{name}_sai.safetensors")
        save_file(half(sd), path)

        # diffusers' single-file loaders must read the SAI file back to the pipeline's tensors.
        folder = os.path.join(OUT, f"{name}_diffusers")
        back = SD3Transformer2DModel.from_single_file(
            path, config=folder, subfolder="transformer", torch_dtype=torch.float32, local_files_only=True
        )
        same(back.state_dict(), m.state_dict(), f"{name} transformer")
        back_vae = AutoencoderKL.from_single_file(
            path, config=os.path.join(OUT, "sd3m_diffusers"), subfolder="vae", torch_dtype=torch.float32,
            local_files_only=True,
        )
        same(back_vae.state_dict(), ae.state_dict(), f"{name} vae")
        if name == "sd3m":
            ckpt = load_file(path)
            l_sd = sfu.convert_ldm_clip_checkpoint(ckpt, "text_encoders.clip_l.transformer.")
            l_sd["text_projection.weight"] = torch.eye(CLIP_W)
            same(l_sd, clip_l.state_dict(), "clip_l")
            same(sfu.convert_ldm_clip_checkpoint(ckpt, "text_encoders.clip_g.transformer."), clip_g.state_dict(), "clip_g")
            t5_back = sfu.convert_sd3_t5_checkpoint_to_diffusers(ckpt)
            t5_back["encoder.embed_tokens.weight"] = t5_back["shared.weight"]
            same(t5_back, t5xxl.state_dict(), "t5xxl")

    save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v for k, v in io.items()},
              os.path.join(OUT, "io.safetensors"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
