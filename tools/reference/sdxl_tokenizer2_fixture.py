#!/usr/bin/env python3
"""SDXL tokenizer 2 and `!`: sd-scripts 48d368f against diffusers 0.42, transformers 4.54 and 5.25.

sd-scripts' `SdxlTokenizeStrategy` (library/strategy_sdxl.py) loads
`laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`'s tokenizer, whose pad token is `<|endoftext|>`, then
sets `tokenizer2.pad_token_id = 0`. diffusers' SDXL folders ship a `tokenizer_2` whose pad token
is `!` (diffusers' own single-file converter loads laion's tokenizer with `pad_token="!"`), and a
pad token that is `!` is an added token: the text is split at every `!`, each one id 0. This
script records what each does for prompts containing `!`, with the real CLIP vocabulary (the one
lorakit embeds, crates/lorakit-models/assets/bpe_simple_vocab_16e6.txt.gz, byte-identical to
OpenAI's; vocab.json derived from it as CLIP does). No hub access: the two tokenizer folders are
written here with the special tokens their hub files declare (laion: bos `<|startoftext|>`,
eos/unk/pad `<|endoftext|>`; SDXL `tokenizer_2`: the same but pad `!`, declared as a special
added token 0).

Writes tests/fixtures/reference/sdxl_tokenizer2/cases.json (rewritten on every run):
  prompts                    the prompts
  sd_scripts.ids1_77 / ids2_77     `SdxlTokenizeStrategy(None).tokenize(prompts)` (sd-scripts' own
                                   code on the two tokenizers): (B, 1, 77) per encoder
  sd_scripts.ids1_225 / ids2_225   the same with max_token_length 225: (B, 3, 77), sd-scripts'
                                   chunking and its pad != EOS fix-ups
  diffusers.ids2_77          `StableDiffusionXLPipeline.encode_prompt`'s call on tokenizer_2
                             (padding="max_length", max_length=77, truncation=True)
  versions                   transformers releases run (all must agree; asserted)

Run from the repository root (CPU, no network); the script runs itself once per release:

    /work/bench/venv/bin/python tools/reference/sdxl_tokenizer2_fixture.py

(/work/bench/venv: transformers 4.54.1 as sd-scripts pins it; PYTHONPATH=/work/bench/py42 puts
transformers 5.25 / diffusers 0.42.1 first; sd-scripts from SD_SCRIPTS, default
/work/bench/sd-scripts.)
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "sdxl_tokenizer2")
VOCAB_GZ = os.path.join(ROOT, "crates", "lorakit-models", "assets", "bpe_simple_vocab_16e6.txt.gz")
PYTHON = os.environ.get("BENCH_PYTHON", "/work/bench/venv/bin/python")
PY42 = os.environ.get("PY42", "/work/bench/py42")
SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")

PROMPTS = [
    "wow!! a cat!",
    "!!!",
    "a!b",
    "hello !world! ! masterpiece, 1girl, solo!",
    # 74 words, then `!` at the end of the first 75-token chunk and at the start of the second:
    # with a split `!` (id 0 = pad) sd-scripts' chunk fix-up would turn the second chunk's first
    # position into EOS.
    " ".join(["a"] * 74) + " ! ! b",
    "no bang at all",
]


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


def write_folder(folder, pad_token):
    """A tokenizer folder as the hub holds one: vocab.json, merges.txt and the special tokens."""
    os.makedirs(folder)
    text = gzip.open(VOCAB_GZ).read().decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split(" ")) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                   pad_token=pad_token)
    config = dict(special, model_max_length=77, do_lower_case=True, errors="replace", tokenizer_class="CLIPTokenizer")
    if pad_token == "!":
        config["added_tokens_decoder"] = {"0": dict(content="!", lstrip=False, normalized=False, rstrip=False,
                                                    single_word=False, special=True)}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)


def child(folders, out_path):
    """sd-scripts' and diffusers' tokenizations under the transformers on the path."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    import transformers
    from transformers import CLIPTokenizer

    sys.path.append(SD_SCRIPTS)
    from library import strategy_sdxl

    laion, sdxl2 = folders.split(",")
    res = dict(transformers=transformers.__version__)
    for max_token_length in (None, 225):
        # SdxlTokenizeStrategy.__init__ without the hub: its tokenizers loaded from the folders,
        # then exactly its own lines.
        ts = object.__new__(strategy_sdxl.SdxlTokenizeStrategy)
        ts.tokenizer1 = CLIPTokenizer.from_pretrained(laion)  # openai/clip-vit-large-patch14: same files
        ts.tokenizer2 = CLIPTokenizer.from_pretrained(laion)
        ts.tokenizer2.pad_token_id = 0  # use 0 as pad token for tokenizer2
        ts.max_length = ts.tokenizer1.model_max_length if max_token_length is None else max_token_length + 2
        ids1, ids2 = ts.tokenize(PROMPTS)
        n = 77 if max_token_length is None else 225
        if ids1.dim() == 2:  # one chunk: (B, 77)
            ids1, ids2 = ids1[:, None], ids2[:, None]
        res[f"ids1_{n}"], res[f"ids2_{n}"] = ids1.tolist(), ids2.tolist()
    tokenizer_2 = CLIPTokenizer.from_pretrained(sdxl2)
    assert tokenizer_2.pad_token == "!" and tokenizer_2.pad_token_id == 0
    res["diffusers_ids2_77"] = [
        tokenizer_2(p, padding="max_length", max_length=tokenizer_2.model_max_length, truncation=True,
                    return_tensors="pt").input_ids[0].tolist() for p in PROMPTS]
    with open(out_path, "w") as f:
        json.dump(res, f)


def run_child(pythonpath, folders, out_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    subprocess.run([PYTHON, __file__, "--child", folders, out_path], env=env, check=True)
    with open(out_path) as f:
        return json.load(f)


def main():
    tmp = tempfile.mkdtemp()
    laion, sdxl2 = os.path.join(tmp, "laion"), os.path.join(tmp, "sdxl_tokenizer_2")
    write_folder(laion, "<|endoftext|>")
    write_folder(sdxl2, "!")
    runs = [run_child(p, f"{laion},{sdxl2}", os.path.join(tmp, f"{i}.json")) for i, p in enumerate((None, PY42))]
    versions = [r.pop("transformers") for r in runs]
    assert sorted(v.split(".")[0] for v in versions) == ["4", "5"], versions
    assert runs[0] == runs[1], "transformers releases disagree"
    r = runs[0]
    # What the fixture is about: sd-scripts keeps `!` as text (256 = `!</w>`), diffusers splits.
    assert r["ids2_77"][2][0][:5] == [49406, 320, 256, 321, 49407], r["ids2_77"][2][0][:5]
    assert r["diffusers_ids2_77"][2][:5] == [49406, 320, 0, 321, 49407]
    for a, b in zip(r["ids1_77"], r["ids2_77"]):  # the two encoders' ids differ only in padding
        n = a[0].index(49407) + 1
        assert a[0][:n] == b[0][:n] and set(b[0][n:]) <= {0}, (a, b)

    os.makedirs(OUT, exist_ok=True)
    cases = dict(
        prompts=PROMPTS,
        sd_scripts=dict(ids1_77=r["ids1_77"], ids2_77=r["ids2_77"], ids1_225=r["ids1_225"], ids2_225=r["ids2_225"]),
        diffusers=dict(ids2_77=r["diffusers_ids2_77"]),
        versions=dict(transformers=versions, sd_scripts="48d368fa", diffusers="0.42.1 (its encode_prompt call)"),
    )
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
