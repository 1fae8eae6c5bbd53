"""Random-weight, full-size SD1.5 diffusers folder (fp32) plus a CLIP tokenizer for sd-scripts.

usage: python make_model.py OUT_DIR TOKENIZER_CACHE_DIR [BPE_GZ]

- OUT_DIR: StableDiffusionPipeline folder (unet/, vae/, text_encoder/, scheduler/,
  model_index.json; tokenizer/ too), SD1.5 configs, weights from torch.manual_seed(0).
- TOKENIZER_CACHE_DIR: gets `openai_clip-vit-large-patch14/`, the folder sd-scripts'
  `--tokenizer_cache_dir` looks for, so sd-scripts runs offline.
- BPE_GZ: OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz (default: the copy lorakit embeds,
  crates/lorakit-models/assets/). vocab.json/merges.txt are built from it exactly as
  openai/CLIP's SimpleTokenizer builds its vocabulary (the same 49,408 entries and 48,894 merges
  as the Hub's openai/clip-vit-large-patch14 tokenizer).
"""
import gzip, json, os, sys

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

out, tok_cache = sys.argv[1], sys.argv[2]
bpe = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), "../../../crates/lorakit-models/assets/bpe_simple_vocab_16e6.txt.gz")
torch.manual_seed(0)


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
    os.makedirs(folder, exist_ok=True)
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(merges) == 48894
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    ids = tok("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids  # the Hub tokenizer's ids
    return tok


unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
n_unet = sum(p.numel() for p in unet.parameters())
del unet
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215)
vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
n_vae = sum(p.numel() for p in vae.parameters())
del vae
te = CLIPTextModel(CLIPTextConfig(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1))
te.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
n_te = sum(p.numel() for p in te.parameters())
del te
PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1).save_pretrained(os.path.join(out, "scheduler"))
write_tokenizer(os.path.join(out, "tokenizer"))
write_tokenizer(os.path.join(tok_cache, "openai_clip-vit-large-patch14"))
with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.32.1",
               "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
               "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
print(json.dumps({"unet_params": n_unet, "vae_params": n_vae, "text_encoder_params": n_te}))
