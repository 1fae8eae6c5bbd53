#!/usr/bin/env python3
"""Reference fixture for lorakit-dataset's `ColorAug` (sd-scripts' `AugHelper.color_aug`).

sd-scripts' hue branch is `cv2.cvtColor(img, COLOR_BGR2HSV)`, `(h + shift) % 180` stored back into
the uint8 array, `cv2.cvtColor(hsv, COLOR_HSV2BGR)`; its gamma branch is
`np.clip(img ** gamma, 0, 255).astype(np.uint8)`. This script runs exactly those lines (with the
random draws replaced by fixed values) on every 8-bit colour cube corner plus random pixels.

Writes tests/fixtures/reference/color_aug/color_aug.json, read by
crates/lorakit-dataset/tests/color_aug.rs.

Run:  /work/bench/venv/bin/python tools/reference/color_aug_fixture.py   (opencv-python-headless, numpy)
"""

import json
import os

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "color_aug", "color_aug.json")


def hue(image, hue_shift):
    hsv_img = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if hue_shift < 0:
        hue_shift = 180 + hue_shift
    hsv_img[:, :, 0] = (hsv_img[:, :, 0] + hue_shift) % 180
    return cv2.cvtColor(hsv_img, cv2.COLOR_HSV2BGR)


def gamma(image, g):
    return np.clip(image**g, 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(5)
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], np.uint8)
    grays = np.array([[v, v, v] for v in (1, 17, 128, 254)], np.uint8)
    randoms = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    pixels = np.concatenate([corners, grays, randoms])[None, :, :]  # 1 × N × 3 image
    cases = []
    for shift in (-8.0, -3.7, -0.2, 0.0, 0.6, 4.25, 7.99):
        cases.append({"kind": "hue", "value": shift, "out": hue(pixels.copy(), shift).reshape(-1).tolist()})
    for g in (0.95, 0.987, 1.0, 1.013, 1.05):
        cases.append({"kind": "gamma", "value": g, "out": gamma(pixels.copy(), g).reshape(-1).tolist()})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"opencv": cv2.__version__, "pixels": pixels.reshape(-1).tolist(), "cases": cases}, f)
    print("wrote", OUT, "opencv", cv2.__version__)


if __name__ == "__main__":
    main()
