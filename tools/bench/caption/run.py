"""WD14 tagging speed: `lorakit caption wd14` against kohya's onnxruntime pipeline, same images,
same random full-size models (make_models.py), on this machine's CPU.

Sides, interleaved (round r runs A then B when r is even, B then A when odd), each a whole
process under /usr/bin/time -v (wall time and peak RSS):
- ort:     ort_kohya.py — kohya's tag_images_by_wd14_tagger.py --onnx pipeline, batch 1
           (imports + model load + per image: PIL open, kohya's preprocess_image, session.run,
           kohya's tag loop); it also reports its own phase times;
- lorakit: `lorakit caption wd14 IMAGES --model M --dry-run --overwrite` (process start, model
           load, decode + kohya preprocessing, inference at the default --batch-size 4, tag
           selection, captions printed instead of written); its load time is a second run on
           an empty folder (process start + model load), so
           s/image = (wall − empty-folder wall) / images.
- lorakit-base (with --baseline BIN): the same command with another lorakit binary (an earlier
           commit's build), interleaved with the others, for before/after numbers under the same load.
Each line of RESULTS (jsonl) is one process run, with the 1-minute load average before it and its
user + system CPU time (cpu_s, from /usr/bin/time; ort also reports images_cpu_s, the image
loop's CPU time in process). CPU time is the steadier measure when other work shares the cores:
wall time then depends on how each side's threads compete (onnxruntime's spin, lorakit's park).

--check: once per model, lorakit's probabilities (examples/wd14_probs.rs, the same library
code path) against onnxruntime's on the same images: max |Δp|.

Run (from the repository root):
  nice cargo build --release -p lorakit
  nice cargo build --release -p lorakit-caption --example wd14_probs   # for --check
  /work/bench/venv/bin/python tools/bench/caption/make_models.py /work/scratch/wd_bench/models
  /work/bench/venv/bin/python tools/bench/caption/run.py --check --rounds 3
Environment: /work/bench/venv (torch 2.6.0, timm 1.0.31, onnxruntime 1.32.0, onnx 1.23.2,
onnxscript 0.7.2, Pillow 13.0, opencv-python-headless 5.1), sd-scripts @48d368f at SD_SCRIPTS.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
PYTHON = os.environ.get("PYTHON", "/work/bench/venv/bin/python")

# (name, width, height, mode): photo-like sizes, shrunk (INTER_AREA) except the last (LANCZOS).
IMAGES = [
    ("a_portrait.jpg", 832, 1216, "RGB"), ("b_square.png", 1024, 1024, "RGB"),
    ("c_landscape.jpg", 1216, 832, "RGB"), ("d_alpha.png", 768, 768, "RGBA"),
    ("e_wide.jpg", 1536, 1024, "RGB"), ("f_small.png", 512, 768, "RGB"),
    ("g_mid.jpg", 640, 640, "RGB"), ("h_tiny.png", 300, 400, "RGB"),
]


def make_images(d, n):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(11)
    names = []
    for i in range(n):
        name, w, h, mode = IMAGES[i % len(IMAGES)]
        if i >= len(IMAGES):
            name = f"{i:02d}_{name}"
        names.append(name)
        path = os.path.join(d, name)
        if os.path.exists(path):
            continue
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.28)]
            img[..., c] = 128 + 100 * np.sin(xx * fx + yy * fy + ph)
        for _ in range(12):  # discs of flat colour, like drawn shapes
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, min(w, h) / 4)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        if mode == "RGBA":
            alpha = np.clip(255 - np.hypot(xx - w / 2, yy - h / 2) / (w / 2) * 255, 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([img, alpha]), "RGBA").save(path)
        elif name.endswith(".jpg"):
            Image.fromarray(img).save(path, quality=90)
        else:
            Image.fromarray(img).save(path)
    return names


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def timed(cmd):
    """Runs cmd under /usr/bin/time -v; returns (wall s, peak RSS MB, stdout, user + system CPU s)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        report = tf.read().splitlines()
    field = lambda name: next(float(line.split(":")[1]) for line in report if name in line)
    cpu = field("User time (seconds)") + field("System time (seconds)")
    return wall, field("Maximum resident") / 1024, p.stdout, cpu


def check(model_dir, image_dir, names, lorakit_probs_bin):
    with tempfile.TemporaryDirectory() as td:
        npz = os.path.join(td, "probs.npz")
        subprocess.run([PYTHON, os.path.join(HERE, "ort_kohya.py"), model_dir, image_dir, "--probs", npz],
                       check=True, capture_output=True)
        ort = np.load(npz)
        out = subprocess.run([lorakit_probs_bin, model_dir] + [os.path.join(image_dir, n) for n in names],
                             check=True, capture_output=True, text=True).stdout
    ours = {os.path.basename(k): np.array(v, np.float32) for k, v in json.loads(out).items()}
    per_image = {n: float(np.abs(ours[n] - ort[n]).max()) for n in names}
    tags = {n: int(((ours[n] >= 0.35) != (ort[n] >= 0.35)).sum()) for n in names}
    return dict(max_abs_dp=max(per_image.values()), per_image=per_image, tags_differing_at_0_35=tags,
                p_range=[float(min(ort[n].min() for n in names)), float(max(ort[n].max() for n in names))])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="/work/scratch/wd_bench/models")
    ap.add_argument("--images", default="/work/scratch/wd_bench/images")
    ap.add_argument("-n", type=int, default=8, help="images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--which", nargs="+", default=["vit", "eva02"])
    ap.add_argument("--sides", nargs="+", default=["ort", "lorakit"])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--baseline", help="another lorakit binary, run as side lorakit-base")
    ap.add_argument("--results", default=os.path.join(HERE, f"results-{datetime.date.today()}.jsonl"))
    args = ap.parse_args()
    if args.baseline and "lorakit-base" not in args.sides:
        args.sides.append("lorakit-base")

    lorakit = os.path.join(TARGET, "release", "lorakit")
    probs_bin = os.path.join(TARGET, "release", "examples", "wd14_probs")
    names = make_images(args.images, args.n)
    empty = tempfile.mkdtemp(prefix="wd_bench_empty_")
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    base = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), commit=commit,
                cpus=os.cpu_count(), images=len(names))

    def record(line):
        line = dict(base, **line)
        print(json.dumps(line), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(line) + "\n")

    for key in args.which:
        model_dir = os.path.join(args.models, key)
        if args.check:
            record(dict(model=key, side="check", **check(model_dir, args.images, names, probs_bin)))
        for r in range(args.rounds):
            sides = args.sides if r % 2 == 0 else list(reversed(args.sides))
            for side in sides:
                la = loadavg()
                if side == "ort":
                    wall, rss, out, cpu = timed([PYTHON, os.path.join(HERE, "ort_kohya.py"), model_dir, args.images])
                    phases = json.loads(out.strip().splitlines()[-1])
                    record(dict(model=key, side="ort", round=r, wall_s=round(wall, 3), peak_rss_mb=round(rss),
                                cpu_s=round(cpu, 3), loadavg_1m=la, **phases))
                else:
                    binary = args.baseline if side == "lorakit-base" else lorakit
                    cmd = [binary, "caption", "wd14", "--model", model_dir, "--dry-run", "--overwrite"]
                    e_wall, e_rss, _, e_cpu = timed(cmd[:3] + [empty] + cmd[3:])
                    la2 = loadavg()
                    wall, rss, out, cpu = timed(cmd[:3] + [args.images] + cmd[3:])
                    captions = sum(1 for line in out.splitlines() if line.startswith(args.images))
                    assert captions == len(names), out[-2000:]
                    record(dict(model=key, side=side, round=r, wall_s=round(wall, 3), peak_rss_mb=round(rss),
                                cpu_s=round(cpu, 3), load_s=round(e_wall, 3), load_cpu_s=round(e_cpu, 3),
                                load_peak_rss_mb=round(e_rss), loadavg_1m=la2, loadavg_1m_empty=la, batch_size=4,
                                binary=binary))

    # Summary of this invocation's runs.
    with open(args.results) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    lines = [x for x in lines if x["date"] == base["date"] and x["side"] != "check"]
    for key in args.which:
        for side in args.sides:
            rows = [x for x in lines if x["model"] == key and x["side"] == side]
            if not rows:
                continue
            wall = [x["wall_s"] for x in rows]
            load = [x["load_s"] + (x.get("import_s", 0)) for x in rows]
            per = [(x["wall_s"] - (x["load_s"] + x.get("import_s", 0))) / x["images"] for x in rows]
            # CPU per image after load: ort's image loop in process; lorakit's run less its empty-folder run.
            cpu = [(x["images_cpu_s"] if "images_cpu_s" in x else x["cpu_s"] - x["load_cpu_s"]) / x["images"]
                   for x in rows if "cpu_s" in x]
            print(f"{key:6} {side:8} wall {statistics.median(wall):7.2f} s ({min(wall):.2f}–{max(wall):.2f})  "
                  f"start+load {statistics.median(load):6.2f} s  s/image {statistics.median(per):6.3f} "
                  f"({min(per):.3f}–{max(per):.3f})  CPU s/image "
                  f"{statistics.median(cpu) if cpu else float('nan'):6.3f}  images/s {len(names) / statistics.median(wall):.3f}  "
                  f"peak RSS {statistics.median([x['peak_rss_mb'] for x in rows]):.0f} MB  "
                  f"load avg {min(x['loadavg_1m'] for x in rows):.1f}–{max(x['loadavg_1m'] for x in rows):.1f}")


if __name__ == "__main__":
    main()
