#!/usr/bin/env python3
"""Reference data for sd-scripts' `--weighted_captions` on SD1.x (spec §6.2), for
crates/lorakit-dataset/src/prompt_weights.rs and the weighted tokenisation / encoding in
lorakit-models (tests: crates/lorakit-dataset/tests/prompt_weights.rs,
crates/lorakit-models/tests/weighted_captions.rs).

Everything is computed by sd-scripts' own code (48d368fa, `library/strategy_base.py` and
`library/strategy_sd.py`):

* `parser.json`: `TokenizeStrategy._get_weighted_input_ids.parse_prompt_attention` (a nested
  function, called through its code object) on ~45 tricky captions: pieces with their f64 weights
  (as IEEE bits, so the Rust test compares exactly), or the exception sd-scripts raises. Also the
  first code point of every run of ten Unicode decimal digits in this Python's database, which
  `\\d` and `float()` use (the Rust port carries the same table).
* `tokens.json` + `weighted_captions.safetensors`: `SdTokenizeStrategy.tokenize_with_weights` and
  `SdTextEncodingStrategy.encode_tokens_with_weights` for a few captions with
  max_token_length None / 150 / 225 and clip_skip None / 2, on the tiny SD1.5-shaped text encoder
  of examples/quickstart/tiny-sd15 (random weights, CLIP's 49,408-token vocabulary, run in float32)
  with the HF `CLIPTokenizer` built from the vocabulary lorakit ships (as
  clip_tokenizer_fixture.py does). Keys `<config>.ids` (int64, B×n×77), `<config>.weights`
  (float32, B×n×77), `<config>.hidden` (float32, B×(2+75n)×32); `sd2_150.*` holds ids and weights
  of the SD2 tokenizer configuration (pad "!") at 150 tokens.

The script also asserts what sd-scripts does that the Rust side relies on: a caption without
brackets, backslashes or weights encodes bit-identically with and without weighting; the weight
multiplies the states per token with no mean renormalisation; BOS/EOS/padding weights are 1.0.

Run from the repository root (a few seconds, no network):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/weighted_captions_fixture.py
"""

import json
import os
import struct
import sys
import tempfile
import types
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from clip_tokenizer_fixture import ROOT, load_tokenizers  # noqa: E402  (puts sd-scripts on sys.path)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

import logging  # noqa: E402

from library import strategy_base  # noqa: E402
from library.strategy_sd import SdTextEncodingStrategy, SdTokenizeStrategy  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)  # sd-scripts warns on every truncated caption

OUT_DIR = os.path.join(ROOT, "tests/fixtures/reference/weighted_captions")
TEXT_ENCODER = os.path.join(ROOT, "examples/quickstart/tiny-sd15/text_encoder")

PARSER_CASES = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    r"\(literal\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "",
    "()",
    "[]",
    "(:1.5)",
    "(a:1.5",
    "a:1.5) b",
    "(a:-0.5), (b:+2), (c:.5), (d:1.), (e:007)",
    "(a:1.2.3)",
    "(a:.)",
    "(a:+.)",
    "b:1.2.3) without an open bracket",
    "(a: 1.5)",
    "(a:1.5 )",
    "(a:1e5)",
    "[a:1.5)",
    "([a:1.5)]",
    "((a) b",
    "[[a] b",
    "(a [b] c)",
    "[a (b) c]",
    "([mixed] unclosed",
    "[(mixed] unclosed",
    r"a\b",
    r"a\\b",
    "trailing\\",
    r"\\(a)",
    r"\[not weighted\], \(nor this\)",
    "a]b)c",
    "(x:\uff11.\uff15)",
    "(x:\u0661.\u0665)",
    "(x:1.5)(y:1.5)",
    "(x:1.1)(y)",
    "BREAK a BREAK (b)",
    "(tag, other tag:1.3), third",
    "a\n(b)\tc",
    "(((((((((((deep)))))))))))",
    "[[[[[[[[shallow]]]]]]]]",
    "(huge:1" + "0" * 400 + ")",
    "a (b:0) c",
    "\U0001f600 (\uff57:1.2) \u00fc, caf\u00e9 [na\u00efve]",
    "beau(ti)ful",
]

# Captions encoded with weights (also through the parser above).
CAPTIONS = [
    "a photo of (sks:1.5) dog, [blurry], ((masterpiece))",
    "a photo of a cat sitting on a table",
    r"1girl, solo, \(artist\), (long hair:1.2), [[simple background]], beau(ti)ful",
    "",
    ", ".join(f"(tag{i}:{1 + i / 20})" if i % 3 == 0 else f"[word{i}]" if i % 3 == 1 else f"plain{i}" for i in range(40)),
    "(unclosed bracket, " + "many words in a long caption " * 30,
]

CONFIGS = [  # name, max_token_length, clip_skip
    ("mtl75_skip1", None, None),
    ("mtl150_skip1", 150, None),
    ("mtl150_skip2", 150, 2),
    ("mtl225_skip2", 225, 2),
]


def sd_scripts_parser():
    """sd-scripts' nested `parse_prompt_attention`, rebuilt from its code object (it uses no
    variable of the enclosing method, only the module global `TokenizeStrategy`)."""
    outer = strategy_base.TokenizeStrategy._get_weighted_input_ids.__code__
    code = next(c for c in outer.co_consts if isinstance(c, types.CodeType) and c.co_name == "parse_prompt_attention")
    assert not code.co_freevars, code.co_freevars
    return types.FunctionType(code, vars(strategy_base))


def bits(x):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", x))[0]


def parser_fixture(parse):
    cases = []
    for text in PARSER_CASES + CAPTIONS:
        try:
            pieces = parse(text)
        except ValueError as e:
            cases.append({"text": text, "error": f"ValueError: {e}"})
            continue
        cases.append({"text": text, "pieces": [[t, repr(w), bits(w)] for t, w in pieces]})
    zeros = [
        cp for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Nd" and unicodedata.decimal(chr(cp)) == 0
    ]
    for z in zeros:  # every Nd digit is in a run of ten starting at its zero
        assert all(unicodedata.decimal(chr(z + i)) == i for i in range(10))
    assert sum(unicodedata.category(chr(cp)) == "Nd" for cp in range(0x110000)) == 10 * len(zeros)
    return {"unicode_version": unicodedata.unidata_version, "digit_zeros": zeros, "cases": cases}


def check_parser_is_what_tokenisation_uses(tokenizer, parse):
    """The pieces the tokenizer sees inside `_get_weighted_input_ids` are the parser's, one call each."""
    seen = []

    class Recorder:
        model_max_length = 77
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

        def __call__(self, word):
            seen.append(word)
            return tokenizer(word)

    strategy = SdTokenizeStrategy.__new__(SdTokenizeStrategy)
    for text in CAPTIONS[:3]:
        seen.clear()
        strategy._get_weighted_input_ids(Recorder(), text, 77)
        assert seen == [t for t, _ in parse(text)], (seen, text)


def strategy_for(tokenizer, max_token_length):
    strategy = SdTokenizeStrategy.__new__(SdTokenizeStrategy)
    strategy.tokenizer = tokenizer
    strategy.max_length = tokenizer.model_max_length if max_token_length is None else max_token_length + 2
    return strategy


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)
    parse = sd_scripts_parser()

    with tempfile.TemporaryDirectory() as tmp:
        sd1, sd2 = load_tokenizers(tmp)
        check_parser_is_what_tokenisation_uses(sd1, parse)
        text_encoder = CLIPTextModel.from_pretrained(
            TEXT_ENCODER, torch_dtype=torch.float32, attn_implementation="eager"
        ).eval()
        assert text_encoder.config.vocab_size == 49408

        tensors = {}
        configs = []
        with torch.no_grad():
            for name, mtl, skip in CONFIGS:
                strategy = strategy_for(sd1, mtl)
                encoding = SdTextEncodingStrategy(skip)
                (ids,), (weights,) = strategy.tokenize_with_weights(CAPTIONS)
                assert weights.dtype == torch.float32
                (hidden,) = encoding.encode_tokens_with_weights(strategy, [text_encoder], [ids], [weights])
                (plain,) = encoding.encode_tokens(strategy, [text_encoder], [ids])
                n = ids.shape[1]
                # The stitched weight vector: 1.0 at BOS and the last position, the chunks' inner weights.
                inner = weights[:, :, 1:-1].reshape(len(CAPTIONS), -1) if n > 1 else weights[:, 0, 1:-1]
                full = torch.cat([weights[:, 0, :1], inner, weights[:, -1, -1:]], 1)
                assert torch.all(weights[:, :, 0] == 1) and torch.all(weights[:, :, -1] == 1)
                assert torch.equal(hidden, plain * full.unsqueeze(-1)), "not a plain per-token product"
                # Unweighted tokenisation of the plain caption gives the same ids, so the same states.
                (plain_ids,) = strategy.tokenize(CAPTIONS[1:2])
                assert torch.equal(plain_ids, ids[1:2]) and torch.all(weights[1] == 1)
                assert torch.equal(hidden[1], plain[1])
                tensors[f"{name}.ids"] = ids.contiguous()
                tensors[f"{name}.weights"] = weights.contiguous()
                tensors[f"{name}.hidden"] = hidden.contiguous()
                configs.append({"name": name, "max_token_length": mtl, "clip_skip": skip, "chunks": n})
            (ids2,), (weights2,) = strategy_for(sd2, 150).tokenize_with_weights(CAPTIONS)
            tensors["sd2_150.ids"] = ids2.contiguous()
            tensors["sd2_150.weights"] = weights2.contiguous()

    save_file(tensors, os.path.join(OUT_DIR, "weighted_captions.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT_DIR, "parser.json"), "w", encoding="utf-8") as f:
        json.dump(parser_fixture(parse), f, ensure_ascii=False, indent=1)
        f.write("\n")
    doc = {
        "generator": "tools/reference/weighted_captions_fixture.py",
        "sd_scripts": "48d368fa557731ad0488c07304dfeba8c07910eb",
        "text_encoder": "examples/quickstart/tiny-sd15/text_encoder (float32)",
        "captions": CAPTIONS,
        "configs": configs,
    }
    with open(os.path.join(OUT_DIR, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT_DIR}: {len(PARSER_CASES) + len(CAPTIONS)} parser cases, {len(configs)} encodings")


if __name__ == "__main__":
    main()
