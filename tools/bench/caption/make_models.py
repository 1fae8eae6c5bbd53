"""Full-size WD v3 tagger folders with random weights, for `tools/bench/caption/run.py`.

For each model, writes OUT/<name>/ as SmilingWolf's repos lay it out:
- model.safetensors (timm keys), config.json (timm hub layout: architecture, num_classes,
  model_args, pretrained_cfg) and selected_tags.csv (10,861 synthetic rows: 4 ratings, 10,000
  general, 857 character) — what `lorakit caption wd14 --model` reads;
- model.onnx: the same network in the WD ONNX interface that kohya_ss and the official Space
  feed — input (N, 448, 448, 3) float32 BGR 0..255, `/127.5 - 1` inside, sigmoid outputs;
  opset 17, dynamic batch (captioning.md §1.1–1.2).

Models (captioning.md §1.1, Appendix):
- vit:   timm `vit_base_patch16_224`, img_size 448, class_token False, global_pool avg,
         fc_norm False, act_layer gelu_tanh (wd-vit-tagger-v3);
- eva02: timm `eva02_large_patch14_448`, img_size 448, ref_feat_shape (32, 32)
         (wd-eva02-large-tagger-v3).

Every parameter is re-initialised (norm weights 1 + 0.1·randn, weights randn/sqrt(fan_in),
biases 0.1·randn, the head's bias 1.5·randn) so the probabilities spread over 0..1 and the
parity check compares something (timm's own init leaves them all near 0.5).

Environment: /work/bench/venv — torch 2.6.0 (CPU), timm 1.0.31, onnx 1.23.2, onnxscript 0.7.2,
onnxruntime 1.32.0, safetensors 0.8.0. Several GB of output; keep OUT outside the repository.

Run: /work/bench/venv/bin/python tools/bench/caption/make_models.py [OUT] [vit eva02]
     (OUT defaults to /work/scratch/wd_bench/models)
"""

import json
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import timm
import torch
from safetensors.torch import save_file

CLASSES = 10861
SIZE = 448

MODELS = {
    "vit": dict(architecture="vit_base_patch16_224", model_args=dict(
        img_size=SIZE, class_token=False, global_pool="avg", fc_norm=False, act_layer="gelu_tanh")),
    "eva02": dict(architecture="eva02_large_patch14_448", model_args=dict(
        img_size=SIZE, ref_feat_shape=[32, 32])),
}


def reinit(model, gen):
    for name, p in model.named_parameters():
        with torch.no_grad():
            shape = p.shape
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(shape, generator=gen))
            elif p.dim() >= 2 and "pos_embed" not in name:
                p.copy_(torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:])))
            else:
                p.copy_(0.5 * torch.randn(shape, generator=gen))
    with torch.no_grad():
        model.get_classifier().bias.copy_(1.5 * torch.randn(CLASSES, generator=gen))


class WdInterface(torch.nn.Module):
    """x (N, H, W, 3) BGR 0..255 → sigmoid(model(x as NCHW / 127.5 − 1)), as the WD ONNX files."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.sigmoid(self.model(x.permute(0, 3, 1, 2) / 127.5 - 1.0))


def tags_csv():
    rows = ["general", "sensitive", "questionable", "explicit"]
    lines = [f"{9999990 + i},{n},9,{1000000 - i}" for i, n in enumerate(rows)]
    lines += [f"{i},tag_{i:05d},0,{900000 - i}" for i in range(10000)]
    lines += [f"{20000 + i},character_{i:03d}_(series_{i % 37}),4,{5000 - i}" for i in range(CLASSES - 10004)]
    return "tag_id,name,category,count\n" + "\n".join(lines) + "\n"


def make(out, key):
    spec = MODELS[key]
    d = os.path.join(out, key)
    os.makedirs(d, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(0)
    model = timm.create_model(spec["architecture"], pretrained=False, num_classes=CLASSES, **spec["model_args"]).eval()
    reinit(model, torch.Generator().manual_seed(1234))
    params = sum(p.numel() for p in model.parameters())
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "model.safetensors"))
    config = dict(architecture=spec["architecture"], num_classes=CLASSES, num_features=model.num_features,
                  global_pool=spec["model_args"].get("global_pool", "avg"), model_args=spec["model_args"],
                  pretrained_cfg=dict(tag="bench-random", input_size=[3, SIZE, SIZE], fixed_input_size=True,
                                      interpolation="bicubic", crop_pct=1.0, crop_mode="center",
                                      mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], num_classes=CLASSES))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(d, "selected_tags.csv"), "w") as f:
        f.write(tags_csv())

    wrapped = WdInterface(model).eval()
    x = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(5)) * 255
    onnx_path = os.path.join(d, "model.onnx")
    torch.onnx.export(wrapped, (x,), onnx_path, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    # The export must compute what torch does.
    with torch.no_grad():
        want = wrapped(x).numpy()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    dp = float(np.abs(got - want).max())
    print(f"{key}: {spec['architecture']} {params / 1e6:.1f} M parameters, p in [{want.min():.3f}, {want.max():.3f}], "
          f"onnxruntime vs torch max |dp| {dp:.2e}, {time.time() - t0:.0f} s → {d}", flush=True)
    assert dp < 1e-4, dp


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/work/scratch/wd_bench/models"
    keys = sys.argv[2:] or list(MODELS)
    torch.set_num_threads(os.cpu_count())
    for key in keys:
        make(out, key)


if __name__ == "__main__":
    main()
