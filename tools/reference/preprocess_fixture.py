#!/usr/bin/env python3
"""Reference data for lorakit-dataset's image preprocessing (crates/lorakit-dataset/src/preprocess.rs).

Makes a few small deterministic images, runs them through sd-scripts' own pipeline and records what
training would see. Everything is written to tests/fixtures/reference/preprocess/:

* inputs: `rgb_67x43.png`, `rgb_37x23.png`, `rgb_96x66.png`, `rgb_9x3.png` (smooth gradients plus noise),
  `rgba_37x23.png`, `la_37x23.png`, `l_37x23.png`, `p_37x23.png` (other PIL modes, converted
  with `convert("RGB")`), `exif6_40x24.jpg` (a JPEG stored 40x24 with EXIF orientation 6);
* `expected/<case>.png`: the uint8 RGB image after sd-scripts' `load_image` (PIL `convert("RGB")`),
  `trim_and_resize_if_required` (PIL LANCZOS / BOX or OpenCV resize via `library.utils.resize_image`,
  then the center crop) and the horizontal flip of `BaseDataset.__getitem__`;
* `cases.json`: one entry per case (input, interpolation or null for sd-scripts' automatic choice,
  `resized` and `bucket` sizes, flip, the expected file, `original_size`, sd-scripts' float
  `crop_ltrb` and the `crop_top_left` it conditions SDXL on, flipped variant included), plus
  `crop_ltrb_cases`: `BucketManager.get_crop_ltrb` for many (bucket, image size) pairs, and
  `normalize`: torchvision's `IMAGE_TRANSFORMS` (ToTensor + Normalize(0.5, 0.5)) of every byte value.

sd-scripts does not apply EXIF orientation; lorakit does (see probe.rs). The EXIF case is therefore
PIL's `ImageOps.exif_transpose` followed by sd-scripts' pipeline, i.e. what sd-scripts would give for
an upright copy of the photo. Its pixels depend on the JPEG decoder (libjpeg-turbo here), so the Rust
test compares it with a tolerance; every PNG case is exact up to resize rounding.

Run from the repository root (about 6 s; no network, no GPU):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/preprocess_fixture.py

Versions: Pillow 13.0.0, opencv-python-headless 4.10.0.84, numpy 2.4.6, torch 2.6.0, sd-scripts
48d368fa557731ad0488c07304dfeba8c07910eb. The output is byte-identical from run to run.
"""

import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image, ImageOps

try:
    import library.train_util as train_util
except ImportError:
    sys.exit("put kohya-ss/sd-scripts on PYTHONPATH (PYTHONPATH=/work/bench/sd-scripts)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "preprocess")


def gradient_noise(w, h, seed, channels=3, noise=12):
    """Smooth diagonal gradients per channel plus uniform noise: exercises every rounding path."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        base = 128 + 100 * np.sin(x / (w / (2.0 + c)) + y / (h / (1.5 + 0.5 * c)) + c)
        planes.append(base + rng.uniform(-noise, noise, size=(h, w)))
    img = np.stack(planes, axis=-1)
    # a few hard edges and saturated pixels (ringing of Lanczos must be clipped)
    img[h // 3, :, :] = 255
    img[:, w // 4, :] = 0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def save_inputs():
    inputs = {}

    def put(name, pil):
        pil.save(os.path.join(OUT_DIR, name), optimize=False)
        inputs[name] = pil

    put("rgb_67x43.png", Image.fromarray(gradient_noise(67, 43, 1)))
    put("rgb_37x23.png", Image.fromarray(gradient_noise(37, 23, 2)))
    put("rgb_96x66.png", Image.fromarray(gradient_noise(96, 66, 3)))
    put("rgb_9x3.png", Image.fromarray(gradient_noise(9, 3, 9)))
    rgba = gradient_noise(37, 23, 4, channels=4)
    rgba[:, :, 3] = np.linspace(0, 255, 37 * 23).reshape(23, 37).astype(np.uint8)  # varied alpha
    put("rgba_37x23.png", Image.fromarray(rgba, "RGBA"))
    put("la_37x23.png", Image.fromarray(gradient_noise(37, 23, 5, channels=2), "LA"))
    put("l_37x23.png", Image.fromarray(gradient_noise(37, 23, 6, channels=1)[:, :, 0], "L"))
    # palette image with a transparent index (convert("RGB") ignores the transparency)
    pal = Image.fromarray(gradient_noise(37, 23, 7)).quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=0)
    pal.info["transparency"] = 3
    put("p_37x23.png", pal)

    # EXIF orientation 6 ("rotate 90 CW to view"): stored 40x24, upright 24x40
    stored = Image.fromarray(gradient_noise(40, 24, 8, noise=4))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = os.path.join(OUT_DIR, "exif6_40x24.jpg")
    stored.save(path, quality=95, subsampling=0, exif=exif.tobytes())
    inputs["exif6_40x24.jpg"] = Image.open(path)
    return inputs


def load_like_sd_scripts(path, exif_transpose=False):
    """train_util.load_image (PIL -> convert("RGB") -> uint8 HWC), with EXIF applied if asked."""
    if not exif_transpose:
        return train_util.load_image(path)
    with Image.open(path) as im:
        return np.array(ImageOps.exif_transpose(im).convert("RGB"), np.uint8)


CASES = [
    # name, input, interpolation (None = sd-scripts' auto choice), resized (W,H), bucket (W,H), flip
    ("auto_up", "rgb_37x23.png", None, (64, 40), (64, 40), False),  # auto -> lanczos
    ("auto_up_crop", "rgb_37x23.png", None, (71, 44), (64, 40), False),
    ("auto_up_crop_flip", "rgb_37x23.png", None, (71, 44), (64, 40), True),
    ("auto_down", "rgb_67x43.png", None, (50, 32), (48, 32), False),  # auto -> area (fractional)
    ("auto_down_flip", "rgb_67x43.png", None, (50, 32), (48, 32), True),
    ("auto_mixed", "rgb_67x43.png", None, (70, 40), (64, 40), False),  # one side up -> lanczos
    ("lanczos_down", "rgb_67x43.png", "lanczos", (50, 32), (48, 32), False),
    ("lanczos_down_odd", "rgb_67x43.png", "lanczos", (29, 19), (29, 19), False),
    # Pillow 13 runs the vertical pass first when the height loses > 2x the pixels the width does
    ("lanczos_vertical_first", "rgb_96x66.png", "lanczos", (90, 40), (88, 40), False),
    ("area_down_2x", "rgb_96x66.png", None, (48, 33), (48, 32), False),  # integer factor (fast path)
    ("area_down_3x", "rgb_96x66.png", "area", (32, 22), (32, 22), False),
    ("area_down_odd", "rgb_96x66.png", "area", (41, 29), (40, 28), False),
    ("area_up", "rgb_37x23.png", "area", (50, 31), (48, 31), False),  # OpenCV: bilinear-like
    ("area_mixed", "rgb_67x43.png", "area", (70, 40), (64, 40), False),
    ("no_resize", "rgb_67x43.png", None, (67, 43), (64, 40), False),  # crop only
    ("nearest_up", "rgb_37x23.png", "nearest", (50, 31), (48, 31), False),
    ("nearest_down", "rgb_67x43.png", "nearest", (50, 32), (48, 32), False),
    ("bilinear_up", "rgb_37x23.png", "bilinear", (50, 31), (48, 31), False),
    ("linear_down", "rgb_67x43.png", "linear", (50, 32), (48, 32), False),
    ("bicubic_up", "rgb_37x23.png", "bicubic", (50, 31), (48, 31), False),
    ("cubic_down", "rgb_67x43.png", "cubic", (50, 32), (48, 32), False),  # >= 4x4: Intel IPP
    ("cubic_tiny", "rgb_9x3.png", "bicubic", (13, 5), (12, 4), False),  # < 4 rows: OpenCV's own
    ("linear_tiny", "rgb_9x3.png", "bilinear", (13, 5), (12, 4), False),
    ("box_up", "rgb_37x23.png", "box", (50, 31), (48, 31), False),
    ("box_down", "rgb_67x43.png", "box", (50, 32), (48, 32), False),
    ("rgba", "rgba_37x23.png", None, (32, 20), (32, 20), False),
    ("la", "la_37x23.png", None, (32, 20), (32, 20), False),
    ("l", "l_37x23.png", None, (32, 20), (32, 20), False),
    ("p", "p_37x23.png", None, (32, 20), (32, 20), False),
    ("exif6", "exif6_40x24.jpg", None, (24, 40), (24, 40), False),
    ("exif6_resized", "exif6_40x24.jpg", None, (30, 50), (28, 48), True),
]


def crop_top_left(crop_ltrb, bucket, flipped):
    """BaseDataset.__getitem__: the (left, top) SDXL is conditioned on."""
    if not flipped:
        return int(crop_ltrb[0]), int(crop_ltrb[1])
    return int(bucket[0] - crop_ltrb[2]), int(crop_ltrb[1])


def run_case(name, inp, interp, resized, bucket, flip):
    path = os.path.join(OUT_DIR, inp)
    img = load_like_sd_scripts(path, exif_transpose=inp.startswith("exif"))
    out, original_size, crop_ltrb = train_util.trim_and_resize_if_required(
        False, img, bucket, resized, resize_interpolation=interp
    )
    if flip:
        out = out[:, ::-1, :].copy()
    assert out.shape == (bucket[1], bucket[0], 3), out.shape
    Image.fromarray(out).save(os.path.join(OUT_DIR, "expected", f"{name}.png"), optimize=False)
    return {
        "name": name,
        "input": inp,
        "interpolation": interp,
        "resized": list(resized),
        "bucket": list(bucket),
        "flip": flip,
        "expected": f"expected/{name}.png",
        "original_size": [int(v) for v in original_size],
        "crop_ltrb": [float(v) for v in crop_ltrb],
        "crop_top_left": list(crop_top_left(crop_ltrb, bucket, flip)),
    }


def crop_ltrb_cases():
    rng = np.random.default_rng(11)
    pairs = [((512, 512), (512, 512)), ((512, 512), (1000, 700)), ((832, 1216), (3000, 4000)),
             ((1024, 1024), (1023, 1025)), ((640, 1536), (100, 3000)), ((1536, 640), (4000, 97))]
    for _ in range(40):
        bucket = (int(rng.integers(4, 33)) * 32, int(rng.integers(4, 33)) * 32)
        image = (int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        pairs.append((bucket, image))
    out = []
    for bucket, image in pairs:
        ltrb = train_util.BucketManager.get_crop_ltrb(bucket, image)
        out.append({
            "bucket": list(bucket), "image": list(image), "crop_ltrb": [float(v) for v in ltrb],
            "crop_top_left": list(crop_top_left(ltrb, bucket, False)),
            "crop_top_left_flipped": list(crop_top_left(ltrb, bucket, True)),
        })
    return out


def normalize_table():
    arr = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    t = train_util.IMAGE_TRANSFORMS(arr)  # ToTensor + Normalize([0.5], [0.5]) -> float32
    return [float(v) for v in t.reshape(-1).tolist()]


def main():
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(os.path.join(OUT_DIR, "expected"))
    save_inputs()
    cases = [run_case(*c) for c in CASES]
    doc = {
        "generator": "tools/reference/preprocess_fixture.py",
        "versions": {"pillow": Image.__version__, "opencv": train_util.cv2.__version__, "numpy": np.__version__},
        "cases": cases,
        "crop_ltrb_cases": crop_ltrb_cases(),
        "normalize": normalize_table(),
    }
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT_DIR) for n in ns)
    print(f"wrote {len(cases)} cases to {OUT_DIR} ({total} bytes)")


if __name__ == "__main__":
    main()
