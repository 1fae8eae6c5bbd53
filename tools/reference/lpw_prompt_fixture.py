#!/usr/bin/env python3
"""Reference data for prompt encoding at sampling time: sd-scripts' sample images (and A1111's
emphasis) go through `library/lpw_stable_diffusion.get_weighted_text_embeddings` with
max_embeddings_multiples = 3 and no_boseos_middle = False: `(word:1.2)` weights parsed, every
75-token chunk encoded with its own BOS/EOS and kept whole (77 positions a chunk), prompt and
negative padded with EOS to the same chunk count, each position multiplied by its token's weight
and the result rescaled to the unweighted mean. For crates/lorakit-models/tests/weighted_captions.rs.

Computed by sd-scripts' own function (48d368fa) on the tiny SD1.5-shaped text encoder of
examples/quickstart/tiny-sd15 (CLIP's 49,408-token vocabulary, float32) with the HF
CLIPTokenizer built from the vocabulary lorakit ships. Writes
tests/fixtures/reference/prompt_emphasis/{cases.json, embeddings.safetensors} (`<i>.cond`,
`<i>.uncond`: (1, 77·n, 32)).

Run from the repository root (a few seconds, no network):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/lpw_prompt_fixture.py
"""

import json
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from clip_tokenizer_fixture import ROOT, load_tokenizers  # noqa: E402  (puts sd-scripts on sys.path)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

import logging  # noqa: E402

from library import lpw_stable_diffusion as lpw  # noqa: E402
from weighted_captions_fixture import sd_scripts_parser  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)

OUT_DIR = os.path.join(ROOT, "tests/fixtures/reference/prompt_emphasis")
TEXT_ENCODER = os.path.join(ROOT, "examples/quickstart/tiny-sd15/text_encoder")

LONG = ", ".join(f"(tag{i}:1.{i % 10})" if i % 3 == 0 else f"word{i}" for i in range(40))
CASES = [
    # (prompt, negative, clip_skip)
    ("a (red:1.3) cat, [blurry] background, ((detailed))", "lowres, (bad hands:1.2)", None),
    ("a photo of a cat", "", None),  # no weights: the rescale changes nothing
    ("masterpiece, (best quality:1.4), 1girl, solo", "(worst quality, low quality:1.4)", 2),
    (LONG, "(ugly:1.5)", None),  # two chunks
    (LONG + ", " + LONG + ", " + LONG, "", 2),  # over 225 tokens: truncated to three chunks
    ("", "", None),  # empty prompts still make one chunk
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sd1, _ = load_tokenizers(tmp)
        text_encoder = CLIPTextModel.from_pretrained(TEXT_ENCODER, torch_dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        pipe = types.SimpleNamespace(tokenizer=sd1, text_encoder=text_encoder, device=torch.device("cpu"))
        tensors, cases = {}, []
        parse = sd_scripts_parser()
        for i, (prompt, negative, clip_skip) in enumerate(CASES):
            # sd-scripts keeps two copies of A1111's parser (sampling and weighted captions);
            # lorakit has one, so they must agree.
            for text in (prompt, negative):
                assert lpw.parse_prompt_attention(text) == parse(text), text
            with torch.no_grad():
                cond, uncond = lpw.get_weighted_text_embeddings(
                    pipe, prompt, uncond_prompt=negative, max_embeddings_multiples=3, no_boseos_middle=False,
                    clip_skip=clip_skip)
            tensors[f"{i}.cond"] = cond.contiguous()
            tensors[f"{i}.uncond"] = uncond.contiguous()
            cases.append(dict(prompt=prompt, negative=negative, clip_skip=clip_skip, positions=cond.shape[1]))
    os.makedirs(OUT_DIR, exist_ok=True)
    save_file(tensors, os.path.join(OUT_DIR, "embeddings.safetensors"))
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    for c in cases:
        print(c["positions"], c["clip_skip"], c["prompt"][:60])


if __name__ == "__main__":
    main()
