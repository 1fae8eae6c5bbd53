#!/usr/bin/env python3
"""The transformers side of the Florence-2-base benchmark (run by run.sh): load the model folder,
then caption every image of DIR as `lorakit caption florence` does (open, processor, generate,
decode, post-process), timing the load and each image. Prints one JSON object on stdout.

    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python bench_hf.py MODEL DIR [BEAMS MAX_NEW]

Versions: transformers 5.25.0, torch 2.6.0 (CPU, default threads = cores).
"""

import json
import os
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPImageProcessorPil, Florence2ForConditionalGeneration, Florence2Processor  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

model_dir, image_dir = sys.argv[1], sys.argv[2]
beams = int(sys.argv[3]) if len(sys.argv) > 3 else 3
max_new = int(sys.argv[4]) if len(sys.argv) > 4 else 64
t_import = time.perf_counter() - t0

t1 = time.perf_counter()
model = Florence2ForConditionalGeneration.from_pretrained(model_dir).eval()
# The PIL image path (what lorakit reproduces); AutoProcessor would pick the torchvision one.
processor = Florence2Processor(
    image_processor=CLIPImageProcessorPil.from_pretrained(model_dir),
    tokenizer=AutoTokenizer.from_pretrained(model_dir),
    post_processor_config=json.load(open(os.path.join(model_dir, "processor_config.json")))["post_processor_config"],
)
t_load = time.perf_counter() - t1

task = "<CAPTION>"
images = sorted(f for f in os.listdir(image_dir) if f.rsplit(".", 1)[-1].lower() in {"jpg", "png", "webp"})
per_image, lengths, captions, ids = [], [], {}, {}
with torch.inference_mode():
    for name in images:
        t = time.perf_counter()
        image = Image.open(os.path.join(image_dir, name)).convert("RGB")
        inputs = processor(text=task, images=image, return_tensors="pt")
        out = model.generate(**inputs, num_beams=beams, max_new_tokens=max_new)
        raw = processor.batch_decode(out, skip_special_tokens=False)[0]
        text = processor.post_process_generation(raw, task=task, image_size=image.size)[task]
        per_image.append(time.perf_counter() - t)
        lengths.append(out.shape[1])
        captions[name] = text
        ids[name] = out[0].tolist()

print(json.dumps({
    "side": "transformers", "threads": torch.get_num_threads(), "import_s": t_import, "load_s": t_load,
    "per_image_s": per_image, "decoder_lengths": lengths, "captions": captions, "ids": ids,
}))
