"""8 training images, 512x512 (centre-cropped and resized from examples/dataset/img), with captions.

usage: python make_data.py OUT_DIR   (writes OUT_DIR/img/1_bench/NN.png + NN.txt)
"""
import glob, os, sys

from PIL import Image

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../examples/dataset/img")
out = os.path.join(sys.argv[1], "img", "1_bench")
os.makedirs(out, exist_ok=True)
srcs = sorted(p for p in glob.glob(os.path.join(root, "*", "*")) if not p.endswith(".txt"))[:8]
assert len(srcs) == 8, srcs
for i, p in enumerate(srcs):
    im = Image.open(p).convert("RGB")
    s = min(im.size)
    l, t = (im.width - s) // 2, (im.height - s) // 2
    im.crop((l, t, l + s, t + s)).resize((512, 512), Image.LANCZOS).save(os.path.join(out, f"{i:02d}.png"))
    cap = os.path.splitext(p)[0] + ".txt"
    text = open(cap).read().strip() if os.path.exists(cap) else "a photo"
    open(os.path.join(out, f"{i:02d}.txt"), "w").write(f"bench, {text}\n")
print(out)
