"""Pretrain the quick start's tiny SD1.5-shaped model on the shapes world (PyTorch + diffusers).

    python tools/world/pretrain.py OUT_DIR [--seed 0] [--vae-steps 1500] [--unet-steps 3000]

Writes OUT_DIR as a diffusers StableDiffusionPipeline folder in fp16 (tokenizer with CLIP's real
vocabulary, CLIPTextModel, UNet2DConditionModel with SD1.5's block layout, AutoencoderKL with
SD's 8× downsampling, SD1.5's noise schedule), and OUT_DIR/pretrain_log.json with the seed,
steps, times, losses and library versions.

1. A pool of seeded scenes of the base world (circle, square, triangle, diamond; never a star
   or a heart) is drawn by world.py.
2. The VAE learns to reconstruct them (L1 + L2, a small KL term); its scaling factor is
   1 / std of the pool's latents, as SD's was chosen.
3. The UNet and the text encoder learn together to denoise the pool's cached latents
   (ε-prediction, SD1.5's scaled-linear betas), each caption a tag line or a sentence, 10%
   empty so that classifier-free guidance works. Weights saved are an EMA of the trained ones.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import world  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BPE = os.path.join(REPO, "crates/lorakit-models/assets/bpe_simple_vocab_16e6.txt.gz")

TEXT_CONFIG = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=64, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=(32, 64, 64, 64),
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)
# Few, wide norm groups: a group norm over one or two channels removes each channel's mean, and
# with it the image's colours (a first try with 16 groups of 16 channels drew every red orange).
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64, 64, 64),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  norm_num_groups=4, mid_block_add_attention=False, sample_size=world.IMAGE_SIZE)
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(folder):
    """CLIP's tokenizer files, built from the BPE list lorakit embeds as openai/CLIP builds them."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    merges = gzip.open(BPE).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    return tok


def make_pool(n, seed):
    rng = random.Random(seed)
    scenes = [world.random_scene(rng, world.BASE_SHAPES) for _ in range(n)]
    pixels = np.stack([np.asarray(world.render(s)) for s in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return scenes, images


def train_vae(images, steps, batch, seed, log):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    t0, running = time.time(), None
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log["vae_loss"].append([step, round(running, 5)])
            print(f"vae {step}/{steps} loss {running:.4f} {time.time() - t0:.0f}s", flush=True)
    log["vae_seconds"] = round(time.time() - t0, 1)
    vae.eval()
    return vae


@torch.no_grad()
def encode_pool(vae, images):
    means = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scale = 1.0 / means.std().item()
    return means * scale, scale


def caption(scene, rng):
    r = rng.random()
    if r < 0.1:
        return ""
    return scene.tags() if r < 0.55 else scene.sentence()


def train_unet(latents, scenes, tok, steps, batch, seed, log):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    params = list(unet.parameters()) + list(te.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / steps))))
    noise_sched = DDPMScheduler(**SCHEDULE)
    acp = noise_sched.alphas_cumprod
    g = torch.Generator().manual_seed(seed + 2)
    rng = random.Random(seed + 3)
    t0, running = time.time(), None
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        ids = tok([caption(scenes[i], rng) for i in idx.tolist()], padding="max_length", max_length=77,
                  truncation=True, return_tensors="pt").input_ids
        ctx = te(ids).last_hidden_state
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, ctx).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log["unet_loss"].append([step, round(running, 5)])
            print(f"unet {step}/{steps} loss {running:.4f} {time.time() - t0:.0f}s", flush=True)
    log["unet_seconds"] = round(time.time() - t0, 1)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return unet, te


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae", help="a VAE folder trained by an earlier run: skips the VAE phase")
    ap.add_argument("--unet-steps", type=int, default=3000)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import diffusers
    import transformers
    from diffusers import PNDMScheduler

    log = {"seed": a.seed, "pool": a.pool, "vae_steps": a.vae_steps, "vae_batch": a.vae_batch,
           "unet_steps": a.unet_steps, "unet_batch": a.unet_batch, "threads": a.threads,
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "vae_loss": [], "unet_loss": []}
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    tok = write_tokenizer(os.path.join(a.out, "tokenizer"))
    scenes, images = make_pool(a.pool, a.seed)
    if a.vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(a.vae).float().eval()
        log["vae_from"] = a.vae
    else:
        vae = train_vae(images, a.vae_steps, a.vae_batch, a.seed, log)
    latents, scale = encode_pool(vae, images)
    log["scaling_factor"] = round(scale, 5)
    vae.register_to_config(scaling_factor=round(scale, 5))
    vae.save_pretrained(os.path.join(a.out, "vae"))  # fp32 first: reusable with --vae if the UNet phase stops
    unet, te = train_unet(latents, scenes, tok, a.unet_steps, a.unet_batch, a.seed, log)
    vae.to(torch.float16).save_pretrained(os.path.join(a.out, "vae"))
    unet.to(torch.float16).save_pretrained(os.path.join(a.out, "unet"))
    te.to(torch.float16).save_pretrained(os.path.join(a.out, "text_encoder"))
    PNDMScheduler(**SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1).save_pretrained(
        os.path.join(a.out, "scheduler"))
    with open(os.path.join(a.out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                   "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
                   "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    log["total_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "pretrain_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps({k: v for k, v in log.items() if not k.endswith("_loss")}))


if __name__ == "__main__":
    main()
