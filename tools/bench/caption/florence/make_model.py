#!/usr/bin/env python3
"""A full-size Florence-2-base-shaped model with random weights, for the timing benchmark
(tools/bench/caption/florence/run.sh). Not a reference for correctness: the weights are random.

    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/bench/caption/florence/make_model.py [OUT]

OUT defaults to /work/scratch/florence_bench/model (kept out of the repository: ~1 GB).
Versions used: transformers 5.25.0, tokenizers 0.23.3, torch 2.6.0 (CPU).

Where the shape comes from:

* Vision (DaViT): `Florence2VisionConfig()` defaults of transformers 5.25, whose docstring names
  the checkpoint florence-community/Florence-2-base — embed_dim (128, 256, 512, 1024), depths
  (1, 1, 9, 1), num_heads = num_groups (4, 8, 16, 32), window 12, patch 7/3/3/3 stride 4/2/2/2,
  mlp_ratio 4, max_position_embeddings 50, max_temporal_embeddings 100.
  `projection_dim` is set to 768 (the default 1024 is Florence-2-large's; base projects to its
  BART width, microsoft/Florence-2-base config.json `projection_dim: 768`).
* Text: BART-base as in microsoft/Florence-2-base config.json `text_config` — d_model 768,
  6 encoder + 6 decoder layers, 12 heads, FFN 3072, max_position_embeddings 1024, gelu, no
  embedding scaling. `BartConfig()` defaults are bart-large, so these are set explicitly.
* Vocabulary: 51289 tokens (BART's 50265 + Florence's location/task tokens) with `<image>` added
  last as id 51289 (= `Florence2Config.image_token_id` default), so the embedding has 51290 rows.
* Image processor: 768×768 bicubic, rescale, ImageNet mean/std; image_seq_length 577 (24² + 1).
* Generation: microsoft/Florence-2-base generation_config.json (num_beams 3, no_repeat_ngram_size
  3, early_stopping, forced BOS 0 / EOS 2, decoder start 2) plus `min_length` = 1 + MAX_NEW so
  EOS is banned until the token limit: both transformers and lorakit read `min_length` from
  generation_config.json, so every image decodes exactly MAX_NEW tokens on both sides.

Tokenizer: no real BART vocabulary is available offline, so a byte-level BPE is trained on a few
sentences (BART's special tokens at 0..4) and its vocab.json is padded with dummy entries
`<bench_N>` up to 51289. Only token ids matter for timing (the prompt is a handful of
tokens; decoding random ids yields text either way).

Weights: every parameter re-initialised (norm weights 1 + 0.1·randn, biases 0.1·randn, weights
randn/√fan_in, embeddings 0.5·randn, the shared token embedding 0.3·randn), as the tiny fixture
tools/reference/florence2_fixture.py does, so activations stay finite through the full depth.
"""

import json
import os
import shutil
import sys

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BartConfig,
    BartTokenizer,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    GenerationConfig,
)

OUT = sys.argv[1] if len(sys.argv) > 1 else "/work/scratch/florence_bench/model"
MAX_NEW = int(os.environ.get("MAX_NEW", "64"))
VOCAB = 51289
IMG = 768

torch.manual_seed(0)
shutil.rmtree(OUT, ignore_errors=True)
os.makedirs(OUT)

# --- tokenizer -----------------------------------------------------------------------------------
sentences = [
    "What does the image describe?",
    "Describe in detail what is shown in the image.",
    "Describe with a paragraph what is shown in the image.",
    "A green car parked in front of a yellow building.",
    "a photo of a cat sitting on a red sofa next to a window",
] * 4
bpe = ByteLevelBPETokenizer()
bpe.train_from_iterator(sentences, vocab_size=400, min_frequency=1,
                        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
tmp = os.path.join(OUT, "_bpe")
os.makedirs(tmp)
bpe.save_model(tmp)
with open(os.path.join(tmp, "vocab.json")) as f:
    vocab = json.load(f)
with open(os.path.join(tmp, "merges.txt")) as f:
    merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
shutil.rmtree(tmp)
for i in range(len(vocab), VOCAB):
    vocab[f"<bench_{i}>"] = i
tok = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
assert tok.bos_token_id == 0 and tok.pad_token_id == 1 and tok.eos_token_id == 2
image_token_id = tok.convert_tokens_to_ids("<image>")
assert image_token_id == VOCAB, image_token_id
vocab_size = len(tok)

# --- model ---------------------------------------------------------------------------------------
vision = Florence2VisionConfig(projection_dim=768, drop_path_rate=0.0)
text = BartConfig(
    vocab_size=vocab_size, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
    scale_embedding=False, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    forced_eos_token_id=2, tie_word_embeddings=True,
)
config = Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)
model = Florence2ForConditionalGeneration(config).eval()

with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif "shared" in name:
            p.copy_(0.3 * torch.randn_like(p))
        elif "embed" in name:
            p.copy_(0.5 * torch.randn_like(p))
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn_like(p) / fan_in**0.5)

model.generation_config = GenerationConfig(
    bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, forced_bos_token_id=0,
    forced_eos_token_id=2, num_beams=3, no_repeat_ngram_size=3, early_stopping=True,
    max_length=1 + MAX_NEW, min_length=1 + MAX_NEW,
)
model.save_pretrained(OUT, safe_serialization=True)

image_processor = CLIPImageProcessorPil(
    do_resize=True, size={"height": IMG, "width": IMG}, resample=3, do_center_crop=False,
    crop_size={"height": IMG, "width": IMG}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
)
image_processor.image_seq_length = 1 + (IMG // 32) ** 2
processor = Florence2Processor(image_processor=image_processor, tokenizer=tok, post_processor_config={"pure_text": {}})
processor.save_pretrained(OUT)
image_processor.save_pretrained(OUT)
if os.path.exists(os.path.join(OUT, "chat_template.jinja")):
    os.remove(os.path.join(OUT, "chat_template.jinja"))
n_params = sum(p.numel() for p in model.parameters())
print(f"wrote {OUT}: {sorted(os.listdir(OUT))}, {n_params / 1e6:.1f} M parameters, vocab {vocab_size}")
