#!/usr/bin/env python3
"""A whole tiny SD3.5-shaped pipeline for lorakit's end-to-end tests (load, generate, train),
and diffusers' generation with it as the reference for `Sd3Pipeline`'s sampler.

Writes tests/fixtures/reference/sd3_tiny/pipeline/ (a diffusers `StableDiffusion3Pipeline`
folder, f16, tokenizers left out: lorakit has its own) and
tests/fixtures/reference/sd3_tiny/generate.safetensors:

* `init` (1, 16, 32, 32): the starting latents handed to diffusers (`latents=`);
* `cfg.final`: diffusers' latents after 3 steps at guidance 5.0 for PROMPT / empty negative
  (`output_type="latent"`, 64×64 px);
* `cfg.image`: the decoded image of those latents in [0, 1] (B, 3, 64, 64).

Shapes: the transformer has RMS q/k norms (SD3.5 Large's layout, so the head width is read from
the weights), 2 joint blocks of width 32 (2 heads of 16), patch 2, a 32×32 position grid;
the VAE has 2 levels (8, 16 channels, a factor of 2), 16 latent channels and SD3's scale
1.5305 / shift 0.0609; CLIP-L and CLIP-G are 2 layers of width 32 with 77 positions and the real
vocabulary (49,408), CLIP-L with quick-GELU, CLIP-G with GELU, both with a projection to 32
(pooled 64); T5 has 2 blocks of width 64 (4 heads of 16) and the real vocabulary (32,128).
Embedding rows of ids ≥ 2,000 (but the specials) are zero, so git stores them cheaply.

Run from the repository root:

    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/make_sd3_tiny_pipeline.py

diffusers 0.42.1, transformers 5.25, torch 2.6 CPU; deterministic (fixed seeds, one thread).
"""
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd3_text_fixture import tokenizers  # noqa: E402  (the real vocabularies lorakit embeds)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.join("tests", "fixtures", "reference", "sd3_tiny")
PROMPT = "a photo of a cat"
KEEP_ROWS = 2000


def randomize(model, seed):
    """Random weights rounded to f16; embedding rows ≥ KEEP_ROWS (but the last two) zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name \
                    or "layer_norm" in name.split(".")[-2]:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("weight") \
                    else 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() > 1:
                v = torch.randn(p.shape, generator=g) * 0.7 / max(p[0].numel(), 1) ** 0.5
            else:
                v = torch.randn(p.shape, generator=g) * 0.1
            if "token_embedding" in name or name in ("shared.weight", "encoder.embed_tokens.weight"):
                v[KEEP_ROWS:-2] = 0
                v = v * 8  # so the few kept tokens are not drowned by the position embeddings
            p.copy_(v.half().float())
        for name, buf in model.named_buffers():
            if name.endswith("pos_embed.pos_embed"):
                buf.copy_((torch.randn(buf.shape, generator=g) * 0.5).half().float())
    return model.float().eval()


def build():
    transformer = randomize(SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm"), 1)
    vae = randomize(AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False), 2)

    def clip(act, seed):
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=32,
                             bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        return randomize(CLIPTextModelWithProjection(cfg), seed)

    t5 = randomize(T5EncoderModel(T5Config(
        vocab_size=32128, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=0, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False)), 5)
    return transformer, vae, clip("quick_gelu", 3), clip("gelu", 4), t5


def main():
    transformer, vae, clip_l, clip_g, t5 = build()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    with tempfile.TemporaryDirectory() as tmp:
        tok_l, _tok_g, diffusers_g, tok_t5 = tokenizers(tmp)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip_l, tokenizer=tok_l,
            text_encoder_2=clip_g, tokenizer_2=diffusers_g, text_encoder_3=t5, tokenizer_3=tok_t5)
        init = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            out = pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=3, guidance_scale=5.0, height=64,
                       width=64, latents=init.clone(), output_type="latent", max_sequence_length=256).images
            z = out / vae.config.scaling_factor + vae.config.shift_factor
            image = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        folder = os.path.join(OUT, "pipeline")
        for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            getattr(pipe, part).half().save_pretrained(os.path.join(folder, part), safe_serialization=True)
        pipe.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            f.write(
                '{\n "_class_name": "StableDiffusion3Pipeline",\n "_diffusers_version": "0.42.1",\n'
                ' "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],\n'
                ' "text_encoder": ["transformers", "CLIPTextModelWithProjection"],\n'
                ' "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],\n'
                ' "text_encoder_3": ["transformers", "T5EncoderModel"],\n'
                ' "tokenizer": [null, null],\n "tokenizer_2": [null, null],\n "tokenizer_3": [null, null],\n'
                ' "transformer": ["diffusers", "SD3Transformer2DModel"],\n'
                ' "vae": ["diffusers", "AutoencoderKL"]\n}\n')
    save_file({"init": init.contiguous(), "cfg.final": out.contiguous(), "cfg.image": image.contiguous()},
              os.path.join(OUT, "generate.safetensors"))
    print("final latents |mean|", out.abs().mean().item())


if __name__ == "__main__":
    main()
