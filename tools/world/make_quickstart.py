"""Write the quick start's dataset: a concept the base model never saw, in kohya's folder layout.

    python tools/world/make_quickstart.py examples/shapes

OUT/img/10_lkstar/: 18 images of a star (the concept; trigger word `lkstar`, which takes the
shape word's place in the world's tag captions: `red lkstar, large, left, white background`), in
three colours (red, blue, yellow) on two backgrounds (white, black), on the left or in the
center. OUT/reg/1_shape/: 18 images of the base world with their captions, kohya's
regularisation images. The quick start's prompts ask for it in other colours (green, purple, orange), on the
right and on gray: what it learned must generalise, not copy.
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import world  # noqa: E402

TRIGGER = "lkstar"
COLOURS = ["red", "blue", "yellow"]
BACKGROUNDS = ["white", "black"]
PLACEMENTS = [("small", "center"), ("large", "left"), ("large", "center")]


def main():
    out = os.path.join(sys.argv[1], "img", f"10_{TRIGGER}")
    os.makedirs(out, exist_ok=True)
    k = 0
    for colour in COLOURS:
        for background in BACKGROUNDS:
            for size, position in PLACEMENTS:
                # Small seeded-looking offsets, fixed so the files never change.
                scene = world.Scene("star", colour, size, position, background,
                                    dx=0.02 * ((k % 3) - 1), dy=0.03 * (((k // 3) % 3) - 1), scale=1.0 + 0.04 * ((k % 2) * 2 - 1))
                name = f"{k:02}_{colour}_{background}_{size}_{position}"
                world.render(scene).save(os.path.join(out, name + ".png"), optimize=True)
                with open(os.path.join(out, name + ".txt"), "w") as f:
                    f.write(scene.tags(TRIGGER) + "\n")
                k += 1
    print(f"{k} images in {out}")
    # Regularisation images (kohya's prior preservation): the base world as the base model knows
    # it, so that prompts without the trigger word keep drawing what they drew.
    reg = os.path.join(sys.argv[1], "reg", "1_shape")
    os.makedirs(reg, exist_ok=True)
    rng = random.Random(7)
    for i in range(18):
        scene = world.random_scene(rng, world.BASE_SHAPES)
        name = f"{i:02}_{scene.colour}_{scene.shape}"
        world.render(scene).save(os.path.join(reg, name + ".png"), optimize=True)
        with open(os.path.join(reg, name + ".txt"), "w") as f:
            f.write(scene.tags() + "\n")
    print(f"18 images in {reg}")


if __name__ == "__main__":
    main()
