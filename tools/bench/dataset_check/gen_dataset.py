#!/usr/bin/env python3
"""Deterministic synthetic DreamBooth dataset generator for the `lorakit dataset check` benchmark.

Writes N images (default 10,000) into DEST laid out the way kohya-ss/sd-scripts expects
for DreamBooth-style training (``--train_data_dir DEST``)::

    DEST/10_alpha/img00000.jpg   DEST/10_alpha/img00000.txt
    DEST/5_beta/...              DEST/3_gamma/...    DEST/1_delta/...

* formats: jpg ~50% (a fifth of them named .jpeg, some progressive), png ~25%,
  webp ~20%, bmp ~5%
* sizes: 256..1600 px per side, mostly a long side of 512..1024, varied aspect ratios
  (square, 4:3, 3:2, 16:9, 2:1, both orientations, plus some arbitrary ratios)
* modes: mostly RGB; a few RGBA (png/webp) and grayscale images
* content: gradient + smooth low-frequency noise + random shapes + mild grain, so the
  files have realistic sizes without making generation slow
* captions: a ``.txt`` file with ``trigger, tag, tag, ...`` next to ~95% of the images

Everything is derived from ``--seed``: the per-image plan is drawn in the parent process
and every image gets its own RNG seed, so the output does not depend on worker scheduling.

Only Pillow and numpy are required.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# (folder name, share of the images)
SUBSETS = [("10_alpha", 0.40), ("5_beta", 0.30), ("3_gamma", 0.20), ("1_delta", 0.10)]
# (format key, share)
FORMATS = [("jpg", 0.50), ("png", 0.25), ("webp", 0.20), ("bmp", 0.05)]
# common aspect ratios (w/h >= 1; orientation is drawn separately)
ASPECTS = [1.0, 1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4, 2.0, 7 / 5]

TAGS = (
    "1girl 1boy solo smile looking_at_viewer outdoors indoors sky cloud tree grass flower "
    "water ocean beach mountain city street night day sunset snow rain forest building "
    "window chair table book cup food cat dog bird horse car bicycle train boat hat glasses "
    "long_hair short_hair blonde_hair black_hair brown_hair red_hair blue_eyes green_eyes "
    "brown_eyes dress shirt jacket skirt pants boots scarf gloves holding standing sitting "
    "walking running from_side from_behind upper_body full_body close-up portrait landscape "
    "scenery still_life simple_background white_background gradient_background blurry "
    "depth_of_field bokeh lens_flare sunlight shadow reflection monochrome greyscale sepia "
    "watercolor oil_painting sketch lineart photo realistic anime 3d pixel_art highres "
    "absurdres masterpiece best_quality detailed cinematic dramatic_lighting soft_lighting"
).split()


def build_plan(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    sub_names = [s for s, _ in SUBSETS]
    sub_p = np.array([p for _, p in SUBSETS])
    fmt_names = [f for f, _ in FORMATS]
    fmt_p = np.array([p for _, p in FORMATS])
    plan = []
    counters = {s: 0 for s in sub_names}
    for i in range(count):
        sub = sub_names[rng.choice(len(sub_names), p=sub_p / sub_p.sum())]
        fmt = fmt_names[rng.choice(len(fmt_names), p=fmt_p / fmt_p.sum())]

        # long side: mostly 512..1024, some bigger (up to 1600), some small (256..512)
        r = rng.random()
        if r < 0.70:
            long_side = int(rng.integers(512, 1025))
        elif r < 0.90:
            long_side = int(rng.integers(1025, 1601))
        else:
            long_side = int(rng.integers(256, 512))
        if rng.random() < 0.8:
            ar = ASPECTS[int(rng.integers(len(ASPECTS)))]
        else:
            ar = float(rng.uniform(1.0, 2.5))
        short_side = max(256, int(round(long_side / ar)))
        if rng.random() < 0.5:  # landscape / portrait
            w, h = long_side, short_side
        else:
            w, h = short_side, long_side
        w, h = min(w, 1600), min(h, 1600)

        mode = "RGB"
        m = rng.random()
        if m < 0.04:
            mode = "L"
        elif m < 0.10 and fmt in ("png", "webp"):
            mode = "RGBA"

        ext = fmt
        if fmt == "jpg" and rng.random() < 0.2:
            ext = "jpeg"

        caption = None
        if rng.random() < 0.95:
            n_tags = int(rng.integers(4, 21))
            tags = [TAGS[j] for j in rng.choice(len(TAGS), size=n_tags, replace=False)]
            trigger = sub.split("_", 1)[1] + "_style"
            caption = ", ".join([trigger] + tags)

        idx = counters[sub]
        counters[sub] += 1
        plan.append(
            {
                "i": i,
                "subset": sub,
                "name": f"img{idx:05d}",
                "fmt": fmt,
                "ext": ext,
                "w": w,
                "h": h,
                "mode": mode,
                "caption": caption,
                "seed": int(rng.integers(0, 2**63 - 1)),
                "quality": int(rng.integers(80, 96)),
                "progressive": bool(rng.random() < 0.15),
            }
        )
    return plan


def render(item: dict) -> Image.Image:
    rng = np.random.default_rng(item["seed"])
    w, h = item["w"], item["h"]

    # base, computed at 1/32 resolution and upsampled (cheap): a linear gradient between two
    # random colours in a random direction plus smooth low-frequency noise
    lw, lh = max(2, w // 32), max(2, h // 32)
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, lw, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, lh, dtype=np.float32)[:, None]
    t = np.clip(np.cos(angle) * xs + np.sin(angle) * ys + 0.5, 0.0, 1.0)[..., None]
    low = c0 * (1.0 - t) + c1 * t + rng.uniform(-40, 40, (lh, lw, 3)).astype(np.float32)
    base = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BILINEAR)

    # a few random shapes
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(3, 12))):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(2, 20)))

    # mild grain (+-6) so lossy/lossless encoders produce realistic file sizes
    grain = Image.fromarray(rng.integers(0, 13, (h, w), dtype=np.uint8), "L").convert("RGB")
    out = ImageChops.add(base, grain, 1.0, -6)

    if item["mode"] == "L":
        out = out.convert("L")
    elif item["mode"] == "RGBA":
        alpha = Image.linear_gradient("L").resize((w, h)).point(lambda v: 64 + v * 3 // 4)
        out.putalpha(alpha)
    return out


def write_one(args: tuple) -> tuple[int, int]:
    dest, item = args
    d = os.path.join(dest, item["subset"])
    img = render(item)
    path = os.path.join(d, item["name"] + "." + item["ext"])
    fmt = item["fmt"]
    if fmt == "jpg":
        img.save(path, "JPEG", quality=item["quality"], progressive=item["progressive"], optimize=False)
    elif fmt == "png":
        img.save(path, "PNG", compress_level=1)
    elif fmt == "webp":
        img.save(path, "WEBP", quality=item["quality"], method=0)
    elif fmt == "bmp":
        img.save(path, "BMP")
    else:
        raise ValueError(fmt)
    size = os.path.getsize(path)
    if item["caption"] is not None:
        cap = os.path.join(d, item["name"] + ".txt")
        with open(cap, "w", encoding="utf-8") as f:
            f.write(item["caption"] + "\n")
    return item["i"], size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", help="output directory (the sd-scripts --train_data_dir)")
    ap.add_argument("-n", "--count", type=int, default=10_000, help="number of images (default 10000)")
    ap.add_argument("--seed", type=int, default=20240601, help="RNG seed (default 20240601)")
    ap.add_argument("-j", "--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--force", action="store_true", help="write into DEST even if it is not empty")
    ap.add_argument("--manifest", help="optional path to write the per-image plan as JSON")
    args = ap.parse_args()

    dest = os.path.abspath(args.dest)
    if os.path.isdir(dest) and os.listdir(dest) and not args.force:
        print(f"error: {dest} exists and is not empty (use --force)", file=sys.stderr)
        return 2
    for sub, _ in SUBSETS:
        os.makedirs(os.path.join(dest, sub), exist_ok=True)

    t0 = time.perf_counter()
    plan = build_plan(args.count, args.seed)
    sizes = [0] * len(plan)
    done = 0
    work = [(dest, item) for item in plan]
    with Pool(processes=max(1, args.workers)) as pool:
        for i, size in pool.imap_unordered(write_one, work, chunksize=16):
            sizes[i] = size
            done += 1
            if done % 1000 == 0 or done == len(plan):
                el = time.perf_counter() - t0
                print(f"  {done}/{len(plan)} images  {el:.1f}s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0

    def count_by(key):
        out: dict = {}
        for it in plan:
            out[it[key]] = out.get(it[key], 0) + 1
        return dict(sorted(out.items()))

    widths = np.array([it["w"] for it in plan])
    heights = np.array([it["h"] for it in plan])
    summary = {
        "dest": dest,
        "images": len(plan),
        "seed": args.seed,
        "captions": sum(1 for it in plan if it["caption"] is not None),
        "by_subset": count_by("subset"),
        "by_format": count_by("fmt"),
        "by_extension": count_by("ext"),
        "by_mode": count_by("mode"),
        "width": {"min": int(widths.min()), "median": int(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": int(np.median(heights)), "max": int(heights.max())},
        "total_image_bytes": int(sum(sizes)),
        "generation_seconds": round(elapsed, 2),
    }
    if args.manifest:
        with open(args.manifest, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "images": plan}, f, indent=1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
