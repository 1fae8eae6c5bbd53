"""kohya's WD14 tagging pipeline on onnxruntime, timed by phase: what
`finetune/tag_images_by_wd14_tagger.py --onnx` (sd-scripts @48d368f, the script kohya_ss runs)
does per image at its defaults, without writing the caption files.

- imports: kohya's module itself (so torch, library.train_util, … load as in kohya's process);
- model load: `onnx.load` to read the input name, then `ort.InferenceSession` on the
  CPUExecutionProvider, intra-op threads = the machine's cores (kohya leaves onnxruntime's
  default, one thread per physical core: the same here, where every core is a physical one);
- per image, batch 1 (kohya's default `--batch_size 1`): `Image.open`, kohya's own
  `preprocess_image` (alpha on white, pad white, INTER_AREA / LANCZOS to 448, BGR float32),
  `np.stack`, `session.run`, then kohya's tag loop (general/character threshold 0.35, CSV
  order).

Prints one JSON object: import_s, load_s, prep_s, run_s, select_s, per_image_s, total_s, and
images_cpu_s (the process's user + system CPU time over the image loop, all threads).
With --probs OUT.npz also saves each image's probabilities (for run.py --check).

Run: /work/bench/venv/bin/python tools/bench/caption/ort_kohya.py MODEL_DIR IMAGE_DIR [--probs OUT.npz]
Environment: SD_SCRIPTS (/work/bench/sd-scripts), onnxruntime 1.32.0, onnx 1.23.2.
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def process_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("image_dir")
    ap.add_argument("--probs")
    ap.add_argument("--thresh", type=float, default=0.35)
    args = ap.parse_args()

    sys.path.insert(0, SD_SCRIPTS)
    import numpy as np
    import onnx
    import onnxruntime as ort
    from PIL import Image

    import finetune.tag_images_by_wd14_tagger as kohya

    t_import = time.perf_counter()

    onnx_path = os.path.join(args.model_dir, "model.onnx")
    model = onnx.load(onnx_path)
    input_name = model.graph.input[0].name
    del model
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    with open(os.path.join(args.model_dir, "selected_tags.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    general_tags = [r[1] for r in rows if r[2] == "0"]
    character_tags = [r[1] for r in rows if r[2] == "4"]
    t_load = time.perf_counter()

    cpu_start = process_cpu()
    paths = sorted(os.path.join(args.image_dir, n) for n in os.listdir(args.image_dir) if n.lower().endswith(EXTENSIONS))
    prep = run = select = 0.0
    per_image = []
    probs_out = {}
    for path in paths:
        a = time.perf_counter()
        image = Image.open(path)
        imgs = np.stack([kohya.preprocess_image(image)])
        b = time.perf_counter()
        probs = sess.run(None, {input_name: imgs})[0]
        c = time.perf_counter()
        for prob in probs:  # kohya's run_batch tag loop
            combined_tags = []
            for i, p in enumerate(prob[4:]):
                if i < len(general_tags) and p >= args.thresh:
                    combined_tags.append(general_tags[i])
                elif i >= len(general_tags) and p >= args.thresh:
                    combined_tags.append(character_tags[i - len(general_tags)])
            ", ".join(combined_tags)
        d = time.perf_counter()
        prep += b - a
        run += c - b
        select += d - c
        per_image.append(round(d - a, 4))
        if args.probs:
            probs_out[os.path.basename(path)] = probs[0]
    if args.probs:
        np.savez(args.probs, **probs_out)
    images_cpu = process_cpu() - cpu_start
    end = time.perf_counter()
    print(json.dumps(dict(images=len(paths), import_s=round(t_import - T0, 3), load_s=round(t_load - t_import, 3),
                          prep_s=round(prep, 3), run_s=round(run, 3), select_s=round(select, 3),
                          per_image_s=per_image, total_s=round(end - T0, 3), images_cpu_s=round(images_cpu, 3), threads=os.cpu_count(),
                          onnxruntime=ort.__version__)))


if __name__ == "__main__":
    main()
