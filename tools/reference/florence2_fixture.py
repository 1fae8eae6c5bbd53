#!/usr/bin/env python3
"""Reference data for Florence-2 captioning (crates/lorakit-caption/src/florence2/, tested by
crates/lorakit-caption/tests/florence2.rs).

Run with the transformers-5 reference environment (the project's fixture venv pins 4.54.1, which
has no native Florence-2):

    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/florence2_fixture.py

Versions used: transformers 5.25.0, tokenizers 0.23.3, torch 2.6.0 (CPU), Pillow from the venv.

Writes tests/fixtures/reference/florence2/:

* `model/`: a tiny random `Florence2ForConditionalGeneration` in the florence-community folder
  layout — `config.json`, `generation_config.json`, `model.safetensors` (float32, the keys
  transformers saves), `tokenizer.json` + `tokenizer_config.json` (+ vocab/merges, a byte-level
  BPE trained here on a few sentences, BART's special tokens at 0..4 and `<image>` added last),
  `preprocessor_config.json` (CLIPImageProcessor: 96×96 bicubic, rescale, ImageNet mean/std,
  `image_seq_length`) and `processor_config.json`.
  Vision: DaViT with 4 stages, embed (16, 24, 32, 40), depths (1, 2, 1, 1), heads/groups
  (2, 2, 4, 4), window 5 (stage grids 24/12/6/3: every stage pads its windows). BART: d_model 32, 2 + 2 layers, 4 heads, scale_embedding on.
  Every parameter re-initialised (norm weights 1 + 0.1·randn, biases 0.1·randn, weights
  randn/√fan_in, embeddings 0.5·randn) so no branch is dead; the `</s>` embedding row is scaled
  so that beam search meets EOS before the token limit.
* `reference.safetensors`: for image `images/photo.png` (a 70×50 RGB image written here):
  `pixel_values` (the processor's PIL path), `vision_features` (vision tower NCHW),
  `image_features` (after the projector), `input_ids_<task>` and `inputs_embeds_<task>` (merged),
  `encoder_<task>` (encoder last hidden state), `decoder_ids` (a forced decoder sequence) and
  `logits_caption` (its logits for the `<CAPTION>` input),
  `greedy_<task>` / `beam_<task>` (generate's token ids).
* `reference.json`: the prompt texts, token ids and post-processed texts per task.
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
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

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference", "florence2")
MODEL = os.path.join(ROOT, "model")
TASKS = ["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"]
NAMES = {"<CAPTION>": "caption", "<DETAILED_CAPTION>": "detailed", "<MORE_DETAILED_CAPTION>": "more_detailed"}
MAX_NEW = 24
SHARED_SCALE = float(os.environ.get('SHARED_SCALE', '0.3'))
EOS_SCALE = float(os.environ.get('EOS_SCALE', '2.5'))

torch.manual_seed(0)
shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(MODEL)
os.makedirs(os.path.join(ROOT, "images"))

# --- tokenizer -----------------------------------------------------------------------------------
sentences = [
    "What does the image describe?",
    "Describe in detail what is shown in the image.",
    "Describe with a paragraph what is shown in the image.",
    "A green car parked in front of a yellow building.",
    "a photo of a cat sitting on a red sofa next to a window",
    "The woman wears a blue dress and holds an umbrella in the rain.",
    "Two dogs run across the grass; the sky is bright, clear and wide.",
] * 4
bpe = ByteLevelBPETokenizer()
bpe.train_from_iterator(sentences, vocab_size=320, min_frequency=1,
                        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
tmp = os.path.join(ROOT, "_bpe")
os.makedirs(tmp)
bpe.save_model(tmp)
with open(os.path.join(tmp, "vocab.json")) as f:
    vocab = json.load(f)
with open(os.path.join(tmp, "merges.txt")) as f:
    merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
tok = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
shutil.rmtree(tmp)
assert tok.bos_token_id == 0 and tok.pad_token_id == 1 and tok.eos_token_id == 2
image_token_id = tok.convert_tokens_to_ids("<image>")
vocab_size = len(tok)

# --- model ---------------------------------------------------------------------------------------
IMG = 96
vision = Florence2VisionConfig(
    depths=[1, 2, 1, 1], embed_dim=[16, 24, 32, 40], num_heads=[2, 2, 4, 4], num_groups=[2, 2, 4, 4],
    window_size=5, projection_dim=32, max_position_embeddings=8, max_temporal_embeddings=10,
    drop_path_rate=0.0,
)
text = BartConfig(
    vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=128,
    scale_embedding=True, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
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
            p.copy_(SHARED_SCALE * torch.randn_like(p))
        elif "embed" in name:
            p.copy_(0.5 * torch.randn_like(p))
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn_like(p) / fan_in**0.5)
    # A stronger </s> row (the LM head is tied to it) so beams finish before MAX_NEW.
    model.model.language_model.shared.weight[2] *= EOS_SCALE

gen = GenerationConfig(
    bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, forced_bos_token_id=0,
    forced_eos_token_id=2, num_beams=3, no_repeat_ngram_size=3, early_stopping=True, max_length=MAX_NEW + 1,
)
model.generation_config = gen
model.save_pretrained(MODEL, safe_serialization=True)

n_tokens = 1 + (IMG // 32) ** 2
image_processor = CLIPImageProcessorPil(
    do_resize=True, size={"height": IMG, "width": IMG}, resample=3, do_center_crop=False,
    crop_size={"height": IMG, "width": IMG}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
)
image_processor.image_seq_length = n_tokens
post_cfg = {"pure_text": {}}
processor = Florence2Processor(image_processor=image_processor, tokenizer=tok, post_processor_config=post_cfg)
processor.save_pretrained(MODEL)
# florence-community's repos keep the image processor in its own file, as older transformers saved it.
image_processor.save_pretrained(MODEL)
for stray in ["chat_template.jinja"]:
    if os.path.exists(os.path.join(MODEL, stray)):
        os.remove(os.path.join(MODEL, stray))

# --- reference -----------------------------------------------------------------------------------
model = Florence2ForConditionalGeneration.from_pretrained(MODEL).eval()
# The processor object above is kept: it is the PIL image path (CLIPImageProcessorPil), whose
# 8-bit resampling lorakit reproduces; AutoProcessor would pick the torchvision one.

rng = np.random.default_rng(1)
yy, xx = np.mgrid[0:50, 0:70]
photo = np.stack([xx * 3.5, yy * 5.0, 128 + 60 * np.sin(xx / 5.0 + yy / 7.0)], -1)
photo = np.clip(photo + rng.normal(0, 20, photo.shape), 0, 255).astype(np.uint8)
Image.fromarray(photo).save(os.path.join(ROOT, "images", "photo.png"))
image = Image.open(os.path.join(ROOT, "images", "photo.png")).convert("RGB")

out = {}
meta = {"image": "images/photo.png", "max_new_tokens": MAX_NEW, "num_image_tokens": n_tokens, "tasks": {}}
with torch.no_grad():
    for task in TASKS:
        name = NAMES[task]
        inputs = processor(text=task, images=image, return_tensors="pt")
        pv = inputs["pixel_values"]
        ids = inputs["input_ids"]
        out["pixel_values"] = pv.contiguous()
        vis = model.model.vision_tower(pv).last_hidden_state
        out["vision_features"] = vis.contiguous()
        feats = model.model.get_image_features(pv).pooler_output
        out["image_features"] = feats.contiguous()
        embeds = model.get_input_embeddings()(ids)
        mask = model.model.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=feats)
        embeds = embeds.masked_scatter(mask, feats)
        out[f"input_ids_{name}"] = ids.to(torch.int64).contiguous()
        out[f"inputs_embeds_{name}"] = embeds.contiguous()
        enc = model.model.language_model.encoder(inputs_embeds=embeds).last_hidden_state
        out[f"encoder_{name}"] = enc.contiguous()
        if task == "<CAPTION>":
            dec = torch.tensor([[2, 0, 17, 60, 5, 99, 250, 31, 2]])
            out["decoder_ids"] = dec
            logits = model(input_ids=ids, pixel_values=pv, decoder_input_ids=dec).logits
            out["logits_caption"] = logits.contiguous()
        greedy = model.generate(**inputs, num_beams=1, max_new_tokens=MAX_NEW)
        beam = model.generate(**inputs, num_beams=3, max_new_tokens=MAX_NEW)
        out[f"greedy_{name}"] = greedy.contiguous()
        out[f"beam_{name}"] = beam.contiguous()
        texts = {}
        for kind, seq in [("greedy", greedy), ("beam", beam)]:
            raw = processor.batch_decode(seq, skip_special_tokens=False)[0]
            texts[kind] = processor.post_process_generation(raw, task=task, image_size=image.size)[task]
            texts[kind + "_ids"] = seq[0].tolist()
        meta["tasks"][task] = {
            "name": name,
            "prompt_ids": ids[0].tolist(),
            **texts,
        }
        print(task, "greedy", greedy[0].tolist(), "beam", beam[0].tolist(), repr(texts["beam"]))

save_file(out, os.path.join(ROOT, "reference.safetensors"))
with open(os.path.join(ROOT, "reference.json"), "w") as f:
    json.dump(meta, f, indent=1, ensure_ascii=False)
print("files:", sorted(os.listdir(MODEL)), "vocab", vocab_size, "image token", image_token_id)
