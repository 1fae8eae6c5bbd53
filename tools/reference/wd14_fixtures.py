"""Fixtures for `lorakit caption wd14` (ViT and ConvNeXt): tiny WD-style timm models, kohya's
preprocessing on real image files, and kohya's tag selection on saved probabilities.

Environment: /work/bench/venv — torch 2.6.0 (CPU), timm 1.0.31, numpy 2.4, Pillow 13.0,
opencv-python-headless 4.10.0.84 (kohya's pin; `pip install --no-deps --target
/work/bench/cv2-4.10 opencv-python-headless==4.10.0.84`, put first on sys.path below — its
INTER_AREA output equals 5.1's); kohya-ss/sd-scripts at /work/bench/sd-scripts (@48d368f).

Writes tests/fixtures/reference/wd14/:
- vit/ and convnext/: model.safetensors + config.json (the HF timm hub layout of the WD v3
  repos, tiny sizes) + selected_tags.csv (synthetic: 4 ratings, general and character rows
  incl. kaomojis and name_(series) tags);
- images/: a transparent PNG, an odd-sized JPEG, a grey PNG, a large and a 2×-integer PNG, a tiny
  PNG (enlarged), and an exact-size PNG;
- reference.safetensors: fixed inputs and both models' logits on them; for every image kohya's
  `preprocess_image` output (uint8 HWC BGR, kohya's own function with IMAGE_SIZE set to the
  model's 64) and the Space rule (PIL BICUBIC), and both models' logits on kohya's input;
- postprocess.json: captions kohya's tag selection writes for saved probability vectors under
  option sets covering its quirks;
- area.safetensors: `cv2.resize(…, INTER_AREA)` of generated images (`pattern`: hash noise,
  a gradient and flat blocks, reproducible in Rust) at non-integer, mixed and integer factors,
  1/3/4 channels, and kohya's `preprocess_image` at 448 on a 997×613 pattern (uint8).

Every parameter is re-initialised (norm weights 1 + 0.1·randn, weights randn/sqrt(fan_in),
biases 0.1·randn, ConvNeXt gamma 0.5 + 0.1·randn) so no branch is dead (timm zero-inits
some; captioning.md §1.6).

Run: /work/bench/venv/bin/python tools/reference/wd14_fixtures.py
"""

import json
import math
import os
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file

SD_SCRIPTS = "/work/bench/sd-scripts"
sys.path.insert(0, "/work/bench/cv2-4.10")
import cv2  # noqa: E402

assert cv2.__version__ == "4.10.0", cv2.__version__
sys.path.insert(0, SD_SCRIPTS)
import finetune.tag_images_by_wd14_tagger as kohya  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference", "wd14")
SIZE = 64

TAGS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("long_hair", 0), ("^_^", 0), ("(o)_(o)", 0), ("||_||", 0),
    ("blue_eyes", 0), ("1boy", 0), ("smile", 0),
    ("hatsune_miku", 4), ("saber_(fate)", 4), ("kafuu_chino_(gochuumon_wa_usagi_desu_ka?)", 4),
]
N = len(TAGS)

MODELS = {
    "vit": dict(architecture="vit_base_patch16_224", model_args=dict(
        img_size=SIZE, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="avg",
        fc_norm=False, act_layer="gelu_tanh")),
    "convnext": dict(architecture="convnext_base", model_args=dict(
        depths=[1, 1, 2, 1], dims=[8, 16, 32, 64], act_layer="gelu_tanh")),
}


def reinit(model, gen):
    for name, p in model.named_parameters():
        with torch.no_grad():
            shape = p.shape
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(shape, generator=gen))
            elif name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * torch.randn(shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(shape, generator=gen))
            elif p.dim() >= 2 and "pos_embed" not in name:
                fan_in = math.prod(shape[1:])
                p.copy_(torch.randn(shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(0.5 * torch.randn(shape, generator=gen))
    # Spread the head's bias so the probabilities cross the thresholds.
    head = model.get_classifier()
    with torch.no_grad():
        head.bias.copy_(1.5 * torch.randn(head.bias.shape, generator=gen))


def make_images(d):
    rng = np.random.default_rng(7)
    os.makedirs(d, exist_ok=True)
    yy, xx = np.mgrid[0:37, 0:50]
    rgba = np.stack([xx * 5, yy * 6, (xx + yy) * 3, np.clip(xx * 6, 0, 255)], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(f"{d}/transparent.png")
    rgb = rng.integers(0, 256, (77, 101, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(f"{d}/odd.jpg", quality=90)
    Image.fromarray(np.full((90, 40), 128, np.uint8), "L").save(f"{d}/grey.png")
    big = np.stack([np.mgrid[0:130, 0:150][1] % 256, np.mgrid[0:130, 0:150][0] * 2 % 256,
                    rng.integers(0, 256, (130, 150))], -1).astype(np.uint8)
    Image.fromarray(big).save(f"{d}/large.png")
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(f"{d}/double.png")
    Image.fromarray(rng.integers(0, 256, (13, 20, 3), dtype=np.uint8)).save(f"{d}/tiny.png")
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(f"{d}/exact.png")
    return sorted(os.listdir(d))


def space_prepare(image):
    """kohya's compositing and padding (preprocess_image) with the Space's resize: PIL BICUBIC,
    none at the exact size (SmilingWolf/wd-tagger app.py `prepare_image`)."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    w, h = image.size
    s = max(w, h)
    padded = Image.new("RGB", (s, s), (255, 255, 255))
    padded.paste(image, ((s - w) // 2, (s - h) // 2))
    if s != SIZE:
        padded = padded.resize((SIZE, SIZE), Image.BICUBIC)
    return np.array(padded)[:, :, ::-1].copy()


# --- kohya's tag selection, verbatim from finetune/tag_images_by_wd14_tagger.py @48d368f:
# main() lines 210-226 (expand/underscore), 248-259 (CSV → tag lists), 296-307 (separator,
# undesired, always-first) and run_batch() lines 366-398 and 483-489 (default format).
# process_tag_replacement is the working version of 26db64be (the @48d368f one is a no-op:
# it rebinds `tags` and the caller drops the result; lorakit implements the documented rule).
def kohya_select(rows, probs, args):
    def expand_character_tags(char_tags):
        for i, tag in enumerate(char_tags):
            if tag.endswith(")"):
                tags = tag.split("(")
                character_tag = "(".join(tags[:-1])
                if character_tag.endswith("_"):
                    character_tag = character_tag[:-1]
                series_tag = tags[-1].replace(")", "")
                char_tags[i] = character_tag + args["caption_separator"] + series_tag

    def remove_underscore(tags):
        return [tag.replace("_", " ") if len(tag) > 3 else tag for tag in tags]

    def process_tag_replacement(tags, arg):
        escaped = arg.replace("\\,", "@@@@").replace("\\;", "####")
        for pair in escaped.split(";"):
            st = pair.split(",")
            assert len(st) == 2
            source, target = [t.replace("@@@@", ",").replace("####", ";") for t in st]
            if source in tags:
                tags[tags.index(source)] = target

    rating_tags = [r[0] for r in rows if r[1] == 9]
    general_tags = [r[0] for r in rows if r[1] == 0]
    character_tags = [r[0] for r in rows if r[1] == 4]
    if args["character_tag_expand"]:
        expand_character_tags(character_tags)
    if args["remove_underscore"]:
        rating_tags = remove_underscore(rating_tags)
        character_tags = remove_underscore(character_tags)
        general_tags = remove_underscore(general_tags)
    if args["tag_replacement"] is not None:
        process_tag_replacement(rating_tags, args["tag_replacement"])
        process_tag_replacement(general_tags, args["tag_replacement"])
        process_tag_replacement(character_tags, args["tag_replacement"])

    caption_separator = args["caption_separator"]
    stripped_caption_separator = caption_separator.strip()
    undesired_tags = args["undesired_tags"].split(stripped_caption_separator)
    undesired_tags = set([tag.strip() for tag in undesired_tags if tag.strip() != ""])
    always_first_tags = None
    if args["always_first_tags"] is not None:
        always_first_tags = [tag for tag in args["always_first_tags"].split(stripped_caption_separator) if tag.strip() != ""]

    tag_freq = {}
    captions = []
    for prob in probs:
        combined_tags = []
        for i, p in enumerate(prob[4:]):
            if i < len(general_tags) and p >= args["general_threshold"]:
                tag_name = general_tags[i]
                if tag_name not in undesired_tags:
                    tag_freq[tag_name] = tag_freq.get(tag_name, 0) + 1
                    combined_tags.append(tag_name)
            elif i >= len(general_tags) and p >= args["character_threshold"]:
                tag_name = character_tags[i - len(general_tags)]
                if tag_name not in undesired_tags:
                    tag_freq[tag_name] = tag_freq.get(tag_name, 0) + 1
                    if args["character_tags_first"]:
                        combined_tags.insert(0, tag_name)
                    else:
                        combined_tags.append(tag_name)
        if args["use_rating_tags"] or args["use_rating_tags_as_last_tag"]:
            ratings_probs = prob[:4]
            rating_index = ratings_probs.argmax()
            found_rating = rating_tags[rating_index]
            if found_rating not in undesired_tags:
                tag_freq[found_rating] = tag_freq.get(found_rating, 0) + 1
                if args["use_rating_tags"]:
                    combined_tags.insert(0, found_rating)
                else:
                    combined_tags.append(found_rating)
        if always_first_tags is not None:
            for tag in always_first_tags:
                if tag in combined_tags:
                    combined_tags.remove(tag)
                    combined_tags.insert(0, tag)
        captions.append(caption_separator.join(combined_tags))
    freq = sorted(tag_freq.items(), key=lambda x: x[1], reverse=True)
    return captions, freq


DEFAULTS = dict(thresh=0.35, general_threshold=None, character_threshold=None, character_tags_first=False,
                use_rating_tags=False, use_rating_tags_as_last_tag=False, remove_underscore=False,
                undesired_tags="", always_first_tags=None, caption_separator=", ", tag_replacement=None,
                character_tag_expand=False)

CASES = {
    "defaults": {},
    "thresholds": dict(general_threshold=0.5, character_threshold=0.2),
    "character_tags_first": dict(character_tags_first=True, character_threshold=0.1),
    "rating_first": dict(use_rating_tags=True),
    "rating_last": dict(use_rating_tags_as_last_tag=True),
    "remove_underscore": dict(remove_underscore=True, character_threshold=0.1),
    "undesired": dict(undesired_tags="solo,^_^, smile", use_rating_tags=True),
    "always_first": dict(always_first_tags="1girl,1boy", general_threshold=0.2),
    "separator": dict(caption_separator="; ", always_first_tags="smile;solo", undesired_tags="long_hair"),
    "tag_replacement": dict(tag_replacement="1girl,1woman;^_^,happy\\, smiling;hatsune_miku,miku", character_threshold=0.1),
    "character_tag_expand": dict(character_tag_expand=True, remove_underscore=True, character_threshold=0.1),
    "everything": dict(character_tag_expand=True, remove_underscore=True, character_tags_first=True,
                       use_rating_tags_as_last_tag=True, always_first_tags="solo,blue eyes",
                       undesired_tags="long hair", tag_replacement="1girl,girl", character_threshold=0.2,
                       general_threshold=0.3),
}


def pattern(h, w, c):
    """uint8 (h, w, c) test image: hash noise in the top half, a gradient bottom-left, 7×5
    blocks bottom-right (flat areas are where float sums land next to .5). Rust: same formula."""
    y, x, ch = [a.astype(np.uint64) for a in np.mgrid[0:h, 0:w, 0:c]]
    i = (y * w + x) * c + ch
    noise = ((i * 2654435761) % 2**32) >> 24
    grad = (x + 2 * y + 50 * ch) % 256
    blocks = np.where((x // 7 + y // 5) % 2 == 0, 255, 17 + 40 * ch)
    return np.where(y < h // 2, noise, np.where(x < w // 2, grad, blocks)).astype(np.uint8)


# (name, height, width, channels, to_height, to_width)
AREA_CASES = [
    ("square_1024_448", 1024, 1024, 3, 448, 448),
    ("odd_613x997_c1", 613, 997, 1, 150, 250),
    ("odd_203x301_c4", 203, 301, 4, 64, 97),
    ("mixed_150x200", 150, 200, 3, 64, 100),
    ("triple_192", 192, 192, 3, 64, 64),
    ("half_odd_c3", 130, 66, 3, 65, 33),
]


def area_fixtures():
    out = {}
    for name, h, w, c, th, tw in AREA_CASES:
        img = pattern(h, w, c)
        src = img[:, :, 0] if c == 1 else img
        out[name] = np.ascontiguousarray(cv2.resize(src, (tw, th), interpolation=cv2.INTER_AREA).reshape(th, tw, c))
    saved = kohya.IMAGE_SIZE
    kohya.IMAGE_SIZE = 448
    out["kohya_997x613_448"] = kohya.preprocess_image(Image.fromarray(pattern(613, 997, 3), "RGB")).astype(np.uint8)
    kohya.IMAGE_SIZE = saved
    save_np(out, os.path.join(OUT, "area.safetensors"))


def main():
    area_fixtures()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    os.makedirs(OUT, exist_ok=True)
    csv = "tag_id,name,category,count\n" + "".join(f"{1000 + i},{n},{c},{100 - i}\n" for i, (n, c) in enumerate(TAGS))
    images = make_images(os.path.join(OUT, "images"))
    ref = {}
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    ref["x"] = x.numpy()
    kohya.IMAGE_SIZE = SIZE  # kohya's preprocess_image reads this module global
    for name in images:
        with Image.open(os.path.join(OUT, "images", name)) as im:
            ref[f"kohya/{name}"] = kohya.preprocess_image(im).astype(np.uint8)
        with Image.open(os.path.join(OUT, "images", name)) as im:
            ref[f"bicubic/{name}"] = space_prepare(im)
    for key, spec in MODELS.items():
        d = os.path.join(OUT, key)
        os.makedirs(d, exist_ok=True)
        model = timm.create_model(spec["architecture"], pretrained=False, num_classes=N, **spec["model_args"]).eval()
        reinit(model, gen)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "model.safetensors"))
        config = dict(architecture=spec["architecture"], num_classes=N, num_features=model.num_features,
                      global_pool=spec["model_args"].get("global_pool", "avg"), model_args=spec["model_args"],
                      pretrained_cfg=dict(tag="tiny", input_size=[3, SIZE, SIZE], fixed_input_size=True,
                                          interpolation="bicubic", crop_pct=1.0, crop_mode="center",
                                          mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], num_classes=N))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(d, "selected_tags.csv"), "w") as f:
            f.write(csv)
        with torch.no_grad():
            ref[f"{key}/logits"] = model(x).numpy()
            for name in images:
                bgr = torch.from_numpy(ref[f"kohya/{name}"].astype(np.float32)).permute(2, 0, 1)[None]
                ref[f"{key}/image/{name}"] = model(bgr / 127.5 - 1).numpy()
    save_np({k: np.ascontiguousarray(v) for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))

    # Probabilities for the selection cases: the ViT's on the images, plus hand-made vectors on
    # the thresholds (float32, as the model emits them).
    probs = [1 / (1 + np.exp(-ref[f"vit/image/{n}"][0].astype(np.float32))) for n in images]
    edge = np.full(N, 0.1, np.float32)
    edge[[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = [0.35, 0.3499999, 0.9, 0.6, 0.95, 0.5, 0.36, 0.8, 0.4, 0.9, 0.86, 0.5]
    edge[:4] = [0.2, 0.7, 0.1, 0.05]
    probs.append(edge)
    probs.append(np.where(np.arange(N) < 4, np.float32(0.3), np.float32(0.99)).astype(np.float32))
    probs = np.stack(probs).astype(np.float32)
    rows = [(n, c) for n, c in TAGS]
    cases = []
    for name, over in CASES.items():
        args = dict(DEFAULTS, **over)
        if args["general_threshold"] is None:
            args["general_threshold"] = args["thresh"]
        if args["character_threshold"] is None:
            args["character_threshold"] = args["thresh"]
        captions, freq = kohya_select(rows, probs, args)
        cases.append(dict(name=name, options=over, captions=captions, frequency=freq))
    with open(os.path.join(OUT, "postprocess.json"), "w") as f:
        json.dump(dict(probabilities=probs.tolist(), cases=cases), f, indent=1, ensure_ascii=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
