#!/usr/bin/env python3
"""Compare sd-scripts' reading of a dataset with lorakit's, image by image.

    compare_images.py SD_DUMP.json LORAKIT_REPORT.json

SD_DUMP.json comes from `sd_scripts_prep.py --dump-images`, LORAKIT_REPORT.json from
`lorakit dataset check DIR --json` (same DIR, same settings). Prints mismatches of size, bucket,
repeats and caption and exits 1 if there are any.

One difference is known and not counted: for extended-format WebP files (VP8X: alpha, EXIF or
ICC) the `imagesize` library sd-scripts uses forgets the +1 in the stored canvas size, so
sd-scripts sees them 1 px smaller in each side. lorakit reads the true size (as Pillow does).
"""
import json
import sys


def main() -> int:
    sd = {i["path"]: i for i in json.load(open(sys.argv[1], encoding="utf-8"))["images"]}
    report = json.load(open(sys.argv[2], encoding="utf-8"))
    lk = {i["path"]: i for d in report["datasets"] for i in d["images"] if i["used"]}
    problems = []
    known_webp = 0
    for path in sorted(set(sd) | set(lk)):
        a, b = sd.get(path), lk.get(path)
        if a is None or b is None:
            problems.append(f"{path}: only in {'lorakit' if a is None else 'sd-scripts'}")
            continue
        for key in ("size", "bucket", "repeats", "caption"):
            if key == "size" and path.lower().endswith(".webp") and [y - x for x, y in zip(a[key], b[key])] == [1, 1]:
                known_webp += 1
                continue
            if a[key] != b[key]:
                problems.append(f"{path}: {key} sd-scripts={a[key]!r} lorakit={b[key]!r}")
    for p in problems[:50]:
        print(p)
    print(
        f"{len(sd)} images from sd-scripts, {len(lk)} from lorakit, {len(problems)} mismatch(es); "
        f"{known_webp} VP8X WebP size(s) 1 px short in sd-scripts (imagesize bug, not counted)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
