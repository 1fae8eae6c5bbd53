#!/usr/bin/env python3
"""Reference fixtures for lorakit's SD3 text conditioning (crates/lorakit-models/src/sd3_text.rs).

Writes tests/fixtures/reference/sd3_text/ (deleted and rewritten on every run):

  clip_l/{config.json,model.safetensors}  tiny random `CLIPTextModelWithProjection` as sd-scripts'
                                          `sd3_utils.load_clip_l` configures it (quick_gelu,
                                          eos_token_id 2, projection = hidden), hidden 16, 3 layers
  clip_g/{config.json,model.safetensors}  the same as `load_clip_g` (gelu), hidden 24 (≠ CLIP-L's)
  t5/{config.json,model.safetensors}      tiny random T5 v1.1 `T5EncoderModel` (gated GELU), d_model
                                          48 > 16 + 24, so concat_encodings' zero padding is used
  cases.json                              prompts, sizes, the dropout rates and the random.random()
                                          values sd-scripts drew, which rows it dropped
  io.safetensors                          see below

All three use the real vocabularies (CLIP 49,408 ids, T5 32,128 rows), so the real tokenizers'
ids index them. Weights are rounded to float16 and stored so; the references are float32 from
those values. Token-embedding rows no prompt uses are zero (the files stay small in git: only
the rows that are read are random).

Tokenizers are built as sd-scripts' `Sd3TokenizeStrategy` loads them, without the hub:
CLIP-L = `CLIPTokenizer` on the vocabulary lorakit embeds (openai/clip-vit-large-patch14: pad
`<|endoftext|>`); CLIP-G = the same, then `pad_token_id = 0` exactly as sd-scripts does after
loading laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (whose pad token is not `!` — diffusers'
convert_from_ckpt loads it with an explicit pad_token="!" — so `!` in the text stays an ordinary
character and only the padding is id 0); T5 = `T5TokenizerFast` on
lorakit's embedded google/t5-v1_1-xxl tokenizer.json. diffusers' SD3 folders ship a
`tokenizer_2` whose pad token is `!`, which also splits the text at every `!`: built here the
same way (`pad_token="!"`) for diffusers' encode_prompt.

io.safetensors (float32; ids and masks int64):
  l_ids, g_ids, t5_ids, l_mask, g_mask, t5_mask     `Sd3TokenizeStrategy.tokenize(prompts)`
  lg{a}t5{b}.{lg_out,t5_out,lg_pooled}
                                    `Sd3TextEncodingStrategy.encode_tokens(..., apply_lg_attn_mask=a,
                                    apply_t5_attn_mask=b, enable_dropout=False)` for a, b in {0, 1}
  lg0t5{b}.context                  `concat_encodings` of those (its pooled output is lg_pooled)
  diffusers.{prompt_embeds,pooled}  `StableDiffusion3Pipeline.encode_prompt(prompts,
                                    max_sequence_length=T5_LEN)` on the same weights (no masks)
  diffusers_bang.{prompt_embeds,pooled}  the same for BANG_PROMPTS (text with `!`), and
  bang.{lg_out,lg_pooled}           sd-scripts' for them: CLIP-G differs (diffusers' tokenizer_2
                                    splits at `!`); CLIP-L and T5 agree
  no_t5.context                     sd-scripts with t5xxl None: `concat_encodings` puts (B, 77, 4096)
                                    zeros (here d_model) after the CLIP part
  diffusers_no_t5.prompt_embeds     diffusers with text_encoder_3 None: zeros of max_sequence_length
  drop.{lg_out,t5_out,lg_pooled,l_mask,g_mask,t5_mask}
                                    encode_tokens with enable_dropout=True, rates DROP_RATES and
                                    `random.seed(DROP_SEED)` (no masks applied)
  drop.{l_ids,...,t5_mask_in}       the DROP_PROMPTS tokens
  drop_cached.{lg_out,...,t5_mask}  `drop_cached_text_encoder_outputs` on encode_tokens' outputs
                                    for DROP_PROMPTS (no dropout, no masks) with the tokenizer's
                                    masks, after `random.seed(DROP_CACHED_SEED)`

sd-scripts hard-codes SD3's widths (768, 1280, 4096) in encode_tokens' zero fill,
drop_cached_text_encoder_outputs and concat_encodings; with tiny widths those methods are run from
their own source with the three numbers replaced by the tiny models' widths (nothing else changed).

Run from the repository root (CPU, no network; diffusers 0.42.1 / transformers 5.25 first on the
path, sd-scripts 48d368f after):

    PYTHONPATH=/work/bench/py42:/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/sd3_text_fixture.py

Deterministic: fixed seeds, float32 CPU compute, one thread.
"""
import gzip
import inspect
import json
import os
import random
import shutil
import sys
import tempfile
import textwrap
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from diffusers import StableDiffusion3Pipeline  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "sd3_text")
ASSETS = os.path.join(ROOT, "crates", "lorakit-models", "assets")
SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# sd-scripts' train_util / sd3_utils / sd3_models pull in pipelines that do not import with
# transformers 5 (CLIPFeatureExtractor is gone); strategy_sd3 needs none of them at run time.
for name in ("library.train_util", "library.sd3_utils", "library.sd3_models"):
    sys.modules[name] = types.ModuleType(name)
if SD_SCRIPTS not in sys.path:
    sys.path.append(SD_SCRIPTS)
import library  # noqa: E402

for name in ("train_util", "sd3_utils", "sd3_models"):
    setattr(library, name, sys.modules["library." + name])
from library import strategy_sd3  # noqa: E402

DL, DG, DT = 16, 24, 48  # CLIP-L hidden, CLIP-G hidden, T5 d_model
T5_LEN = 40
PROMPTS = [
    "",
    "a photo of a cat sitting on a red chair, soft light, 35mm",
    " ".join(["a very detailed painting of a lighthouse on a rocky coast at dusk with waves"] * 8),
]
BANG_PROMPTS = ["wow! a cat!!", "hello!world"]
DROP_RATES = (0.5, 0.4, 0.6)  # clip_l, clip_g, t5
DROP_SEED = 7
DROP_CACHED_SEED = 11
DROP_PROMPTS = PROMPTS + ["a dog", "two birds on a wire"]

CLIP_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    layer_norm_eps=1e-05,
    dropout=0.0,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
CLIP_L = dict(CLIP_COMMON, hidden_size=DL, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2,
              hidden_act="quick_gelu", projection_dim=DL)
CLIP_G = dict(CLIP_COMMON, hidden_size=DG, intermediate_size=56, num_hidden_layers=3, num_attention_heads=3,
              hidden_act="gelu", projection_dim=DG)
T5 = dict(vocab_size=32128, d_model=DT, d_kv=8, d_ff=72, num_layers=2, num_heads=4,
          relative_attention_num_buckets=32, relative_attention_max_distance=20, dropout_rate=0.0,
          layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
          pad_token_id=0, eos_token_id=1)


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


def tokenizers(tmp):
    """sd-scripts' three tokenizers and diffusers' tokenizer_2, from the vocabularies lorakit embeds."""
    text = gzip.open(os.path.join(ASSETS, "bpe_simple_vocab_16e6.txt.gz")).read().decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split(" ")) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    vf, mf = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
    with open(vf, "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(mf, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    clip_l = CLIPTokenizer(vf, mf, model_max_length=77)
    clip_g = CLIPTokenizer(vf, mf, model_max_length=77)
    clip_g.pad_token_id = 0  # sd-scripts: "use 0 as pad token for clip_g"
    diffusers_g = CLIPTokenizer(vf, mf, pad_token="!", model_max_length=77)
    t5_json = os.path.join(tmp, "t5_tokenizer.json")
    with open(t5_json, "wb") as f:
        f.write(gzip.open(os.path.join(ASSETS, "t5_tokenizer.json.gz")).read())
    t5 = T5TokenizerFast(tokenizer_file=t5_json)
    assert clip_l("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    return clip_l, clip_g, diffusers_g, t5


def used_rows(tok_lists):
    rows = set()
    for ids in tok_lists:
        rows.update(int(i) for i in ids.flatten())
    return sorted(rows)


def randomise(model, seed, embed_key, rows):
    """Seeded random weights rounded to f16; embedding rows outside `rows` zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight") or name.endswith("layer_norm1.weight") \
                    or name.endswith("layer_norm2.weight") or name.endswith("final_layer_norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5)
            if name == embed_key:
                keep = torch.zeros(p.shape[0], dtype=torch.bool)
                keep[rows] = True
                v = torch.where(keep[:, None], torch.randn(p.shape, generator=g), torch.zeros(()))
            p.copy_(v.half().float())


def save_model(model, folder, drop=()):
    os.makedirs(folder, exist_ok=True)
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()
          if k not in drop and not k.endswith("position_ids")}
    save_file(sd, os.path.join(folder, "model.safetensors"))
    model.config.to_json_file(os.path.join(folder, "config.json"))


def patched_strategy(rates=(0.0, 0.0, 0.0)):
    """Sd3TextEncodingStrategy with its SD3 widths replaced by the tiny models' (see the doc)."""
    src = textwrap.dedent(inspect.getsource(strategy_sd3.Sd3TextEncodingStrategy))
    for big, small in (("768", DL), ("1280", DG), ("4096", DT)):
        src = src.replace(big, str(small))
    ns = dict(vars(strategy_sd3))
    exec(compile(src, "strategy_sd3(patched)", "exec"), ns)
    return ns["Sd3TextEncodingStrategy"](None, None, *rates)


def main():
    tmp = tempfile.mkdtemp()
    tok_l, tok_g, diff_g, tok_t5 = tokenizers(tmp)
    ts = object.__new__(strategy_sd3.Sd3TokenizeStrategy)
    ts.t5xxl_max_length, ts.clip_l, ts.clip_g, ts.t5xxl = T5_LEN, tok_l, tok_g, tok_t5

    all_prompts = PROMPTS + BANG_PROMPTS + DROP_PROMPTS
    toks = ts.tokenize(all_prompts)
    dg = diff_g(BANG_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    clip_rows = used_rows([toks[0], toks[1], dg])
    t5_rows = used_rows([toks[2]])

    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)).eval()
    randomise(clip_l, 1, "text_model.embeddings.token_embedding.weight", clip_rows)
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)).eval()
    randomise(clip_g, 2, "text_model.embeddings.token_embedding.weight", clip_rows)
    t5 = T5EncoderModel(T5Config(**T5)).eval()
    randomise(t5, 3, "shared.weight", t5_rows)
    models = [clip_l, clip_g, t5]

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    save_model(clip_l, os.path.join(OUT, "clip_l"))
    save_model(clip_g, os.path.join(OUT, "clip_g"))
    save_model(t5, os.path.join(OUT, "t5"), drop=("encoder.embed_tokens.weight",))

    io = {}
    tokens = ts.tokenize(PROMPTS)
    for name, t in zip(("l_ids", "g_ids", "t5_ids", "l_mask", "g_mask", "t5_mask"), tokens):
        io[name] = t.long()
    assert tokens[0].shape == (3, 77) and tokens[2].shape == (3, T5_LEN)
    assert int(tokens[3][2].sum()) == 77 and int(tokens[3][0].sum()) == 2  # long prompt cut, empty one
    assert int(tokens[4][0, 2:].sum()) == 0 and int(tokens[1][0, 2]) == 0  # CLIP-G pads with id 0

    plain = patched_strategy()
    with torch.no_grad():
        for a in (0, 1):
            for b in (0, 1):
                lg_out, t5_out, lg_pooled, lm, gm, tm = plain.encode_tokens(
                    ts, models, tokens, apply_lg_attn_mask=bool(a), apply_t5_attn_mask=bool(b), enable_dropout=False)
                context, pooled = plain.concat_encodings(lg_out, t5_out, lg_pooled)
                key = f"lg{a}t5{b}"
                io.update({f"{key}.lg_out": lg_out, f"{key}.t5_out": t5_out, f"{key}.lg_pooled": lg_pooled})
                assert pooled is lg_pooled
                if a == 0:  # the context is the same function of the parts for every combination
                    io[f"{key}.context"] = context
                assert torch.equal(lm, tokens[3]) and torch.equal(tm, tokens[5])
        assert not torch.allclose(io["lg0t50.lg_out"], io["lg1t50.lg_out"])
        assert not torch.allclose(io["lg0t50.t5_out"], io["lg0t51.t5_out"])
        assert context.shape == (3, 77 + T5_LEN, DT)

        # T5 absent: t5_out None, concat_encodings fills (B, 77, 4096) zeros.
        lg_out, t5_out, lg_pooled, *_ = plain.encode_tokens(ts, [clip_l, clip_g, None], tokens, enable_dropout=False)
        assert t5_out is None
        io["no_t5.context"] = plain.concat_encodings(lg_out, None, lg_pooled)[0]

        # diffusers' encode_prompt on the same weights.
        pipe = StableDiffusion3Pipeline(
            transformer=None, scheduler=None, vae=None, text_encoder=clip_l, tokenizer=tok_l,
            text_encoder_2=clip_g, tokenizer_2=diff_g, text_encoder_3=t5, tokenizer_3=tok_t5)
        pe, _, pp, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, device=torch.device("cpu"),
                                          do_classifier_free_guidance=False, max_sequence_length=T5_LEN)
        io["diffusers.prompt_embeds"], io["diffusers.pooled"] = pe, pp
        pe, _, pp, _ = pipe.encode_prompt(BANG_PROMPTS, BANG_PROMPTS, BANG_PROMPTS, device=torch.device("cpu"),
                                          do_classifier_free_guidance=False, max_sequence_length=T5_LEN)
        io["diffusers_bang.prompt_embeds"], io["diffusers_bang.pooled"] = pe, pp
        bang = plain.encode_tokens(ts, models, ts.tokenize(BANG_PROMPTS), enable_dropout=False)
        io["bang.lg_out"], io["bang.lg_pooled"] = bang[0], bang[2]
        pipe.text_encoder_3 = None
        pipe.transformer = types.SimpleNamespace(config=types.SimpleNamespace(joint_attention_dim=DT))
        pe, _, _, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, device=torch.device("cpu"),
                                         do_classifier_free_guidance=False, max_sequence_length=T5_LEN)
        io["diffusers_no_t5.prompt_embeds"] = pe

        # Dropout while encoding: record the draws sd-scripts makes, in its order.
        dropper = patched_strategy(DROP_RATES)
        drop_tokens = ts.tokenize(DROP_PROMPTS)
        random.seed(DROP_SEED)
        draws = [random.random() for _ in range(3 * len(DROP_PROMPTS))]
        random.seed(DROP_SEED)
        out = dropper.encode_tokens(ts, models, drop_tokens)
        for name, t in zip(("lg_out", "t5_out", "lg_pooled", "l_mask", "g_mask", "t5_mask"), out):
            io[f"drop.{name}"] = t if t.dtype.is_floating_point else t.long()
        for name, t in zip(("l_ids", "g_ids", "t5_ids", "l_mask_in", "g_mask_in", "t5_mask_in"), drop_tokens):
            io[f"drop.{name}"] = t.long()

        # Dropout of cached outputs (masks as the cache stores them: the tokenizer's).
        full = plain.encode_tokens(ts, models, drop_tokens, enable_dropout=False)
        cached = [full[0].clone(), full[1].clone(), full[2].clone(),
                  drop_tokens[3].clone(), drop_tokens[4].clone(), drop_tokens[5].clone()]
        random.seed(DROP_CACHED_SEED)
        cached_draws = [random.random() for _ in range(3 * len(DROP_PROMPTS))]
        random.seed(DROP_CACHED_SEED)
        out = dropper.drop_cached_text_encoder_outputs(*cached)
        for name, t in zip(("lg_out", "t5_out", "lg_pooled", "l_mask", "g_mask", "t5_mask"), out):
            io[f"drop_cached.{name}"] = t if t.dtype.is_floating_point else t.long()

    def dropped(draws, n, rates):
        """Rows each encoder drops for sd-scripts' order of draws: per row CLIP-L then CLIP-G, then
        per row T5 (a draw only where the rate is > 0)."""
        it = iter(draws)
        l, g, t = [], [], []
        for _ in range(n):
            l.append(rates[0] > 0 and next(it) < rates[0])
            g.append(rates[1] > 0 and next(it) < rates[1])
        for _ in range(n):
            t.append(rates[2] > 0 and next(it) < rates[2])
        return dict(clip_l=l, clip_g=g, t5=t)

    n = len(DROP_PROMPTS)
    drop_rows = dropped(draws, n, DROP_RATES)
    cached_rows = dropped(cached_draws, n, DROP_RATES)
    for rows in (drop_rows, cached_rows):
        assert any(rows["clip_l"]) and not all(rows["clip_l"]) and any(rows["t5"]) and not all(rows["t5"])
    # The recorded zero rows are the ones the draws say.
    for i in range(n):
        assert bool(io["drop.lg_out"][i, :, :DL].abs().sum() == 0) == drop_rows["clip_l"][i]
        assert bool(io["drop.lg_out"][i, :, DL:].abs().sum() == 0) == drop_rows["clip_g"][i]
        assert bool(io["drop.t5_out"][i].abs().sum() == 0) == drop_rows["t5"][i]
        assert bool(io["drop_cached.t5_out"][i].abs().sum() == 0) == cached_rows["t5"][i]

    io = {k: (v.detach().float() if v.dtype.is_floating_point else v).clone().contiguous() for k, v in io.items()}
    save_file(io, os.path.join(OUT, "io.safetensors"))
    cases = dict(
        prompts=PROMPTS,
        bang_prompts=BANG_PROMPTS,
        drop_prompts=DROP_PROMPTS,
        t5_max_length=T5_LEN,
        widths=dict(clip_l=DL, clip_g=DG, t5=DT),
        dropout_rates=dict(clip_l=DROP_RATES[0], clip_g=DROP_RATES[1], t5=DROP_RATES[2]),
        drop_draws=draws,
        drop_rows=drop_rows,
        drop_cached_draws=cached_draws,
        drop_cached_rows=cached_rows,
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      diffusers=diffusers.__version__, sd_scripts="48d368fa"),
    )
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    shutil.rmtree(tmp)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
