"""The shapes world: a small, seeded image world that a tiny text-to-image model can learn on a CPU.

Every image is one flat-coloured shape on a plain background. A shape fills its bounding box
exactly (the polygon is scaled to the box), so a measure can fit each candidate shape to the
box of what it finds and compare: `lorakit-world` (Rust) holds that measure and the same
geometry; `tests` there check it against images written by this file.

The base model learns circle, square, triangle and diamond. Star and heart are never shown to
it: they are the concepts a LoRA teaches.

    python tools/world/world.py sample OUT_DIR --count 12 --seed 1     # look at a few
"""
from __future__ import annotations

import argparse
import math
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

BASE_SHAPES = ["circle", "square", "triangle", "diamond"]
CONCEPT_SHAPES = ["star", "heart"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
# Box side as a fraction of the image, and the box centre's x for each position word.
SIZES = {"small": 0.42, "large": 0.68}
POSITIONS = {
    "small": {"left": 0.28, "center": 0.5, "right": 0.72},
    "large": {"left": 0.36, "center": 0.5, "right": 0.64},
}
STAR_INNER_RADIUS = 0.45


def unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The shape's outline in the box [-1, 1]² (y down), scaled to touch all four sides."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "circle":
        pts = [(math.cos(2 * math.pi * k / 96), math.sin(2 * math.pi * k / 96)) for k in range(96)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else STAR_INNER_RADIUS
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "heart":
        # The classic parametric heart, point down.
        pts = []
        for k in range(96):
            t = 2 * math.pi * k / 96
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x, y))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(2 * (x - x0) / (x1 - x0) - 1, 2 * (y - y0) / (y1 - y0) - 1) for x, y in pts]


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    # Small seeded offsets so that no two images are pixel copies.
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def tags(self, shape_word: str | None = None) -> str:
        """kohya-style tag caption, e.g. `red circle, large, left, white background`."""
        return f"{self.colour} {shape_word or self.shape}, {self.size}, {self.position}, {self.background} background"

    def sentence(self, shape_word: str | None = None) -> str:
        """Natural-language caption, e.g. `a large red circle on the left of a white background`."""
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.size} {self.colour} {shape_word or self.shape} {where} of a {self.background} background"


def random_scene(rng: random.Random, shapes: list[str]) -> Scene:
    size = rng.choice(list(SIZES))
    return Scene(
        shape=rng.choice(shapes),
        colour=rng.choice(list(COLOURS)),
        size=size,
        position=rng.choice(list(POSITIONS[size])),
        background=rng.choice(list(BACKGROUNDS)),
        dx=rng.uniform(-0.03, 0.03),
        dy=rng.uniform(-0.04, 0.04),
        scale=rng.uniform(0.92, 1.08),
    )


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene anti-aliased (drawn at 4× and reduced)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    half = SIZES[scene.size] * scene.scale * big / 2
    cx = (POSITIONS[scene.size][scene.position] + scene.dx) * big
    cy = (0.5 + scene.dy) * big
    pts = [(cx + x * half, cy + y * half) for x, y in unit_polygon(scene.shape)]
    ImageDraw.Draw(img).polygon(pts, fill=COLOURS[scene.colour])
    return img.resize((size, size), Image.Resampling.BOX)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="write a few random base-world images with tag captions")
    s.add_argument("out")
    s.add_argument("--count", type=int, default=12)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--shapes", default=",".join(BASE_SHAPES + CONCEPT_SHAPES))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    for i in range(a.count):
        scene = random_scene(rng, a.shapes.split(","))
        render(scene).save(os.path.join(a.out, f"{i:03}.png"))
        with open(os.path.join(a.out, f"{i:03}.txt"), "w") as f:
            f.write(scene.tags() + "\n")


if __name__ == "__main__":
    main()
