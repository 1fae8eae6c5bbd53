#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's T5-XXL v1.1 text encoder and T5 tokenizer (Flux, SD3).

Writes two folders (deleted and rewritten on every run):

tests/fixtures/reference/t5_tiny/
  config.json, model.safetensors   a tiny transformers `T5EncoderModel` with T5 v1.1's structure
                                   (gated-GELU FFN, relative position buckets, RMS layer norm) and
                                   unusual sizes: d_model 40, d_kv 12, 3 heads (inner 36 != d_model),
                                   d_ff 56, 3 layers, 32 buckets, max distance 20, and the real
                                   vocabulary size 32128 so real token ids work. Every parameter is
                                   re-initialised (seeded) and rounded to float16; the file stores
                                   float16 (exact), the references are computed in float32 from the
                                   same values. Only `shared.weight` is stored (as save_pretrained
                                   drops the tied `encoder.embed_tokens.weight`).
  prompts.json                     the prompts and max_length of io.safetensors.
  io.safetensors                   real T5TokenizerFast ids / attention masks of `prompts` at
                                   max_length 48 (> max distance, so the log buckets and the
                                   saturated bucket are used; one prompt truncated, one empty),
                                   `last_hidden_state` with the mask and without (sd-scripts'
                                   apply_t5_attn_mask on / off), `hidden_states.{0,1,2}` of the
                                   unmasked pass (embeddings, after block 0, after block 1), and
                                   `position_bias` (1, heads, 48, 48) of block 0.
  lora/lora.safetensors            a kohya LoRA made by sd-scripts' own `networks/lora_flux.py`
                                   (`LoRANetwork(..., train_t5xxl=True)`, rank 4, alpha 2) on the tiny
                                   model, with non-zero lora_up weights.
  lora/io.safetensors              the masked pass with the LoRA applied (`last_hidden_state`), the
                                   loss weights `loss_weights` (loss = sum(out * w)) and the gradient
                                   of every LoRA factor (`<module>.lora_down.weight.grad`, ...).
  lora/module_names.json           sd-scripts' module names in creation order (a list), with in/out dims.
  relu/config.json, relu/model.safetensors, relu/io.safetensors
                                   the original T5's non-gated `relu` FFN (`DenseReluDense.wi/wo`),
                                   vocabulary 64, random ids, with and without a mask.
  t5xxl_full.json                  the full-size google/t5-v1_1-xxl encoder (sd-scripts'
                                   `flux_utils.load_t5xxl` config) built on the meta device: every
                                   state-dict key and shape, the parameter count, and sd-scripts'
                                   168 LoRA module names with dims (a list, in creation order); plus transformers'
                                   `_relative_position_bucket` for relative positions -600..600 with
                                   (32 buckets, 128) and (32, 20).

tests/fixtures/reference/t5_tokenizer/cases.json
  transformers' `T5TokenizerFast` built from lorakit's embedded tokenizer.json
  (crates/lorakit-models/assets/t5_tokenizer.json.gz), called exactly as sd-scripts'
  `FluxTokenizeStrategy` calls it (padding="max_length", truncation=True): ids and masks of tricky
  prompts (unicode, accents, emoji, CJK, numbers, special-token text, whitespace runs, control
  characters, long prompts truncated) at max_length 512, 256 and 16, plus a few decodes.

Run from the repository root (a few seconds, CPU, no network):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_t5_tiny.py

Deterministic: fixed seeds, float32 CPU compute, one thread, torch.use_deterministic_algorithms.
Versions: see tools/reference/requirements.txt (torch 2.6.0, transformers 4.54.1, tokenizers
0.21.4, sd-scripts 48d368fa).
"""
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import T5Config, T5EncoderModel, T5TokenizerFast  # noqa: E402
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402

SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")
for p in (SD_SCRIPTS, os.path.join(SD_SCRIPTS, "networks")):
    if p not in sys.path:
        sys.path.insert(0, p)
import logging  # noqa: E402

from networks import lora_flux  # noqa: E402  (sd-scripts networks/lora_flux.py)

logging.getLogger().setLevel(logging.WARNING)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASSET = os.path.join(ROOT, "crates/lorakit-models/assets/t5_tokenizer.json.gz")
OUT_MODEL = os.path.join(ROOT, "tests/fixtures/reference/t5_tiny")
OUT_TOK = os.path.join(ROOT, "tests/fixtures/reference/t5_tokenizer")

TINY = dict(
    vocab_size=32128,
    d_model=40,
    d_kv=12,
    d_ff=56,
    num_layers=3,
    num_heads=3,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
)

RELU = dict(TINY, vocab_size=64, d_model=24, d_kv=10, num_heads=2, d_ff=36, num_layers=2,
            relative_attention_max_distance=9, relative_attention_num_buckets=16, feed_forward_proj="relu")

# sd-scripts' library/flux_utils.py load_t5xxl T5_CONFIG_JSON (google/t5-v1_1-xxl).
XXL = dict(d_ff=10240, d_kv=64, d_model=4096, dense_act_fn="gelu_new", dropout_rate=0.1, eos_token_id=1,
           feed_forward_proj="gated-gelu", is_gated_act=True, layer_norm_epsilon=1e-6, num_decoder_layers=24,
           num_heads=64, num_layers=24, pad_token_id=0, relative_attention_max_distance=128,
           relative_attention_num_buckets=32, tie_word_embeddings=False, vocab_size=32128)

MODEL_PROMPTS = [
    "a photo of a cat",
    "A majestic lion standing on a rock at sunset, golden light, highly detailed fur, 8k, "
    "photorealistic, dramatic clouds in the background, wide angle lens, award winning photograph, "
    "shallow depth of field, warm colour palette, national geographic style",
    "Café naïve — émoji 🐱 日本語 3.14",
    "",
]
MODEL_MAX_LENGTH = 48

TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "",
    " ",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs\nand\nnewlines",
    "Café, naïve, résumé, jalapeño, Ærøskøbing, straße, façade",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ﬁ ligature and ① circled",
    "emoji 🐱🚀👩‍👩‍👧 and flags 🇯🇵 and skin tones 👍🏽",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ελληνικά και русский текст и עברית ו العربية",
    "numbers 0 1 12 123 1234 12345 3.14159 -42 1e10 1,000,000 50%",
    "UPPER lower MiXeD CamelCase snake_case kebab-case",
    "punctuation!!! ??? ... (brackets) [square] {curly} <angle> \"quotes\" 'single' `back`",
    "<extra_id_0> </s> <pad> <unk> special tokens as text",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, (blush:1.2), [bad hands]",
    "control\x00chars\x07and\x1b[31mescape\u200bzero width\u00a0nbsp",
    "combining e\u0301 vs é and a\u030a vs å",
    "a very long prompt " + " ".join(f"word{i}" for i in range(300)),
    "x" * 2000,
]
TOKENIZER_MAX_LENGTHS = [512, 256, 16]


def set_determinism():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tokenizer(tmp):
    path = os.path.join(tmp, "tokenizer.json")
    with gzip.open(ASSET, "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    # sd-scripts loads google/t5-v1_1-xxl's T5TokenizerFast; its tokenizer.json is this file.
    return T5TokenizerFast(tokenizer_file=path)


def tokenize(tok, prompts, max_length):
    """sd-scripts' FluxTokenizeStrategy.tokenize for the T5 part."""
    return tok(prompts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt")


def reinit_(model, seed, d_kv):
    """Every parameter re-drawn so activations are neither tiny nor saturated, then rounded to f16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            r = torch.randn(shape, generator=g)
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.2 * r
            elif name.endswith("relative_attention_bias.weight"):
                v = 1.5 * r  # comparable to the attention scores, so the buckets matter
            elif name in ("shared.weight", "encoder.embed_tokens.weight"):
                v = r
            elif name.endswith(".q.weight"):
                # T5 folds 1/sqrt(d_kv) into q's init (no scaling in attention)
                v = 1.5 * r / (shape[1] ** 0.5) / (d_kv ** 0.5)
            else:  # k, v, o, wi_0, wi_1, wi, wo: (out, in)
                v = r / (shape[1] ** 0.5)
            p.copy_(v.half().float())


def build(cfg_dict, seed):
    cfg = T5Config(**cfg_dict)
    model = T5EncoderModel(cfg).eval()
    reinit_(model, seed, cfg.d_kv)
    return cfg, model


def save_model(model, cfg, folder):
    os.makedirs(folder, exist_ok=True)
    sd = OrderedDict((k, v.detach().half().contiguous()) for k, v in model.state_dict().items()
                     if k != "encoder.embed_tokens.weight")
    assert torch.equal(model.state_dict()["encoder.embed_tokens.weight"], model.state_dict()["shared.weight"])
    save_file(sd, os.path.join(folder, "model.safetensors"))
    cfg.save_pretrained(folder)


def check_activations(name, t):
    assert torch.isfinite(t).all(), name
    std = float(t.std())
    assert 0.05 < std < 20, f"{name}: std {std}"
    return std


def model_fixture(tok, out):
    set_determinism()
    cfg, model = build(TINY, 1)
    save_model(model, cfg, out)

    enc = tokenize(tok, MODEL_PROMPTS, MODEL_MAX_LENGTH)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert int(mask[1].sum()) == MODEL_MAX_LENGTH, "the long prompt must be truncated"
    assert int(mask[3].sum()) == 1, "the empty prompt is EOS alone"
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = model(input_ids=ids, output_hidden_states=True)
        bias = model.encoder.block[0].layer[0].SelfAttention.compute_bias(MODEL_MAX_LENGTH, MODEL_MAX_LENGTH)
    io = OrderedDict(
        input_ids=ids.contiguous(),
        attention_mask=mask.contiguous(),
        last_hidden_state_masked=masked.contiguous(),
        last_hidden_state=unmasked.last_hidden_state.contiguous(),
        position_bias=bias.contiguous(),
    )
    for i in range(cfg.num_layers):
        io[f"hidden_states.{i}"] = unmasked.hidden_states[i].contiguous()
    stats = {k: check_activations(k, v) for k, v in io.items() if v.is_floating_point()}
    diff = float((masked - unmasked.last_hidden_state).abs().max())
    assert diff > 0.1, f"the mask barely matters ({diff})"
    save_file(io, os.path.join(out, "io.safetensors"))
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump(dict(prompts=MODEL_PROMPTS, max_length=MODEL_MAX_LENGTH), f, ensure_ascii=False, indent=1)

    # ---- LoRA through sd-scripts' own network class
    lora_dir = os.path.join(out, "lora")
    os.makedirs(lora_dir, exist_ok=True)
    torch.manual_seed(7)
    net = lora_flux.LoRANetwork([None, model], torch.nn.Module(), multiplier=1.0, lora_dim=4, alpha=2,
                                train_t5xxl=True)
    assert len(net.unet_loras) == 0 and len(net.text_encoder_loras) == 7 * cfg.num_layers
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for lora in net.text_encoder_loras:
            lora.lora_up.weight.copy_((0.3 * torch.randn(lora.lora_up.weight.shape, generator=g)).half().float())
            lora.lora_down.weight.copy_(lora.lora_down.weight.half().float())
    names = [dict(name=lora.lora_name, in_dim=lora.lora_down.weight.shape[1], out_dim=lora.lora_up.weight.shape[0])
             for lora in net.text_encoder_loras]
    lora_sd = OrderedDict()
    for lora in net.text_encoder_loras:
        lora_sd[f"{lora.lora_name}.lora_down.weight"] = lora.lora_down.weight.detach().clone()
        lora_sd[f"{lora.lora_name}.lora_up.weight"] = lora.lora_up.weight.detach().clone()
        lora_sd[f"{lora.lora_name}.alpha"] = lora.alpha.detach().clone().float()
    save_file(lora_sd, os.path.join(lora_dir, "lora.safetensors"))
    net.apply_to([None, model], torch.nn.Module(), apply_text_encoder=True, apply_unet=False)
    for p in model.parameters():
        p.requires_grad_(False)
    out_lora = model(input_ids=ids, attention_mask=mask).last_hidden_state
    w = torch.randn(out_lora.shape, generator=g)
    (out_lora * w).sum().backward()
    lio = OrderedDict(input_ids=ids.contiguous(), attention_mask=mask.contiguous(),
                      last_hidden_state=out_lora.detach().contiguous(), loss_weights=w.contiguous())
    for lora in net.text_encoder_loras:
        for part in ("lora_down", "lora_up"):
            grad = getattr(lora, part).weight.grad
            assert grad is not None and float(grad.abs().max()) > 1e-4, f"{lora.lora_name}.{part}: no gradient"
            lio[f"{lora.lora_name}.{part}.weight.grad"] = grad.contiguous()
    lora_effect = float((out_lora.detach() - masked).abs().max())
    assert lora_effect > 0.05, f"the LoRA barely changes the output ({lora_effect})"
    save_file(lio, os.path.join(lora_dir, "io.safetensors"))
    with open(os.path.join(lora_dir, "module_names.json"), "w") as f:
        json.dump(dict(prefix="lora_te3", rank=4, alpha=2, modules=names), f, indent=1)
    return dict(stats=stats, mask_effect=diff, lora_effect=lora_effect)


def relu_fixture(out):
    set_determinism()
    cfg, model = build(RELU, 2)
    folder = os.path.join(out, "relu")
    save_model(model, cfg, folder)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, RELU["vocab_size"], (2, 13), generator=g)
    ids[0, 9] = 1
    ids[0, 10:] = 0
    mask = (torch.arange(13)[None, :] < torch.tensor([[10], [13]])).long()
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = model(input_ids=ids).last_hidden_state
    io = OrderedDict(input_ids=ids.contiguous(), attention_mask=mask.contiguous(),
                     last_hidden_state_masked=masked.contiguous(), last_hidden_state=unmasked.contiguous())
    for k, v in io.items():
        if v.is_floating_point():
            check_activations(k, v)
    save_file(io, os.path.join(folder, "io.safetensors"))


def full_size_fixture(out):
    from accelerate import init_empty_weights

    cfg = T5Config(**XXL)
    with init_empty_weights():
        model = T5EncoderModel(cfg)
    sd = model.state_dict()
    shapes = OrderedDict((k, list(v.shape)) for k, v in sd.items())
    params = sum(p.numel() for p in model.parameters())  # `shared` counted once (tied)
    torch.manual_seed(0)
    net = lora_flux.LoRANetwork([None, model], torch.nn.Module(), lora_dim=4, alpha=1, train_t5xxl=True)
    names = [dict(name=lora.lora_name, in_dim=lora.lora_down.weight.shape[1], out_dim=lora.lora_up.weight.shape[0])
             for lora in net.text_encoder_loras]
    rel = torch.arange(-600, 601)[None, :]
    buckets = OrderedDict(
        relative_positions=[-600, 600],
        xxl=T5Attention._relative_position_bucket(rel, True, 32, 128)[0].tolist(),
        tiny=T5Attention._relative_position_bucket(rel, True, 32, 20)[0].tolist(),
    )
    doc = OrderedDict(config=XXL, state_dict=shapes, parameters=params, lora_te3=names, buckets=buckets)
    with open(os.path.join(out, "t5xxl_full.json"), "w") as f:
        json.dump(doc, f)
    return dict(keys=len(shapes), parameters=params, lora_modules=len(names))


def tokenizer_fixture(tok, out):
    os.makedirs(out, exist_ok=True)
    cases = []
    for max_length in TOKENIZER_MAX_LENGTHS:
        enc = tokenize(tok, TOKENIZER_PROMPTS, max_length)
        for prompt, ids, mask in zip(TOKENIZER_PROMPTS, enc["input_ids"].tolist(), enc["attention_mask"].tolist()):
            full = tok(prompt)["input_ids"]  # no truncation: how many tokens the prompt has with EOS
            cases.append(OrderedDict(prompt=prompt, max_length=max_length, input_ids=ids, attention_mask=mask,
                                     untruncated_len=len(full)))
    decodes = []
    for prompt in TOKENIZER_PROMPTS[:14]:
        ids = tok(prompt)["input_ids"]
        decodes.append(OrderedDict(input_ids=ids, skip_special_tokens=tok.decode(ids, skip_special_tokens=True)))
    doc = OrderedDict(
        tokenizer="crates/lorakit-models/assets/t5_tokenizer.json.gz",
        tokenizer_sha256=sha256(ASSET),
        call='T5TokenizerFast(tokenizer_file=...)(prompts, max_length=N, padding="max_length", truncation=True)',
        versions=dict(transformers=transformers.__version__, tokenizers=tokenizers.__version__),
        vocab_size=len(tok),
        cases=cases,
        decodes=decodes,
    )
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(doc, f, ensure_ascii=False, indent=0)
    return len(cases)


def write_manifest(out, summary):
    files = OrderedDict()
    for root, _, fnames in sorted(os.walk(out)):
        for fn in sorted(fnames):
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, out)
            if rel == "manifest.json":
                continue
            files[rel] = dict(bytes=os.path.getsize(p), sha256=sha256(p))
    manifest = OrderedDict(
        generator="tools/reference/make_t5_tiny.py",
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__),
        tiny_config=TINY, relu_config=RELU, summary=summary, files=files)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    return sum(v["bytes"] for v in files.values())


def main():
    for d in (OUT_MODEL, OUT_TOK):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer(tmp)
        assert len(tok) == 32100 and tok.pad_token_id == 0 and tok.eos_token_id == 1
        summary = dict(model=model_fixture(tok, OUT_MODEL))
        relu_fixture(OUT_MODEL)
        summary["full_size"] = full_size_fixture(OUT_MODEL)
        summary["tokenizer_cases"] = tokenizer_fixture(tok, OUT_TOK)
    total = write_manifest(OUT_MODEL, summary)
    print(json.dumps(summary, indent=1))
    print(f"t5_tiny: {total} bytes")


if __name__ == "__main__":
    main()
