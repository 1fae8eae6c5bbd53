"""PIL-decoded JPEGs for lorakit-caption's image loader (crates/lorakit-caption/src/pil_decode.rs).

Environment: /work/bench/venv — Pillow 13.0 (bundled libjpeg-turbo 3.2.0), numpy 2.4.

Writes tests/fixtures/reference/jpeg/: small JPEGs saved by PIL covering the decoder's paths
(4:2:0, 4:2:2, 4:4:4, greyscale, progressive, optimized Huffman tables, restart markers, odd
sizes down to 9×1, quality 75 and 95, a CMYK file) and pil.safetensors: for each file,
`np.asarray(Image.open(f).convert("RGB"))` (uint8 HWC), what kohya's tagger and transformers'
processors start from.

Run: /work/bench/venv/bin/python tools/reference/jpeg_fixtures.py
"""

import os

import numpy as np
from PIL import Image, features
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference", "jpeg")


def natural(h, w, rng):
    """Smooth colour waves, a checkerboard, noise and a sharp disc: chroma edges are where
    upsampling and IDCT rounding differ between decoders."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 128 + 90 * np.sin((x + y) / 17.0)
    b = np.where((x // 40 + y // 40) % 2 == 0, 200, 40).astype(np.float64)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    img[(x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(h, w) / 4) ** 2] = [250, 30, 90]
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    print("libjpeg-turbo", features.version("libjpeg_turbo"))
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(3)
    nat = natural(97, 131, rng)
    noise = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    files = {}
    for q in (75, 95):
        for ss, tag in ((2, "420"), (1, "422"), (0, "444")):
            files[f"nat_{tag}_q{q}.jpg"] = (nat, dict(quality=q, subsampling=ss))
        files[f"noise_420_q{q}.jpg"] = (noise, dict(quality=q, subsampling=2))
        files[f"gray_q{q}.jpg"] = (Image.fromarray(nat[..., 1].copy(), "L"), dict(quality=q))
    files["progressive_420.jpg"] = (nat, dict(quality=90, subsampling=2, progressive=True))
    files["optimized_422.jpg"] = (nat, dict(quality=90, subsampling=1, optimize=True))
    files["restart_420.jpg"] = (nat, dict(quality=90, subsampling=2, restart_marker_blocks=3))
    files["odd_9x1_420.jpg"] = (natural(1, 9, rng), dict(quality=90, subsampling=2))
    files["odd_17x33_422.jpg"] = (natural(33, 17, rng), dict(quality=90, subsampling=1))
    files["odd_31x45_420.jpg"] = (natural(45, 31, rng), dict(quality=90, subsampling=2))
    files["cmyk.jpg"] = (Image.fromarray(nat).convert("CMYK"), dict(quality=90))
    ref = {}
    for name, (src, kw) in files.items():
        im = src if isinstance(src, Image.Image) else Image.fromarray(src, "RGB")
        im.save(os.path.join(OUT, name), **kw)
        with Image.open(os.path.join(OUT, name)) as f:
            ref[name] = np.ascontiguousarray(np.asarray(f.convert("RGB")))
    save_file(ref, os.path.join(OUT, "pil.safetensors"))
    print("wrote", len(ref), "files to", OUT)


if __name__ == "__main__":
    main()
