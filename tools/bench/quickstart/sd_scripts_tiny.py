"""Run sd-scripts' train_network.py on a tiny SD1.5-shaped diffusers folder.

    python sd_scripts_tiny.py SD_SCRIPTS_DIR train_network.py-arguments...

sd-scripts loads an SD 1.x diffusers folder into its own U-Net class, whose sizes are module
constants of library/original_unet.py fixed at full-size SD1.5 (320/640/1280/1280 channels,
32 norm groups). This sets those constants from the folder's unet/config.json (the block layout
itself, SD1.5's, is unchanged) and then runs train_network.py as its own `__main__`. Nothing else
of sd-scripts is touched.
"""
import json
import os
import runpy
import sys

sd_scripts = os.path.abspath(sys.argv[1])
args = sys.argv[2:]
model = args[args.index("--pretrained_model_name_or_path") + 1]
with open(os.path.join(model, "unet", "config.json")) as f:
    cfg = json.load(f)
assert cfg["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "not SD1.5's block layout"

sys.path.insert(0, sd_scripts)
os.chdir(sd_scripts)
import library.original_unet as unet  # noqa: E402

unet.BLOCK_OUT_CHANNELS = tuple(cfg["block_out_channels"])
unet.TIMESTEP_INPUT_DIM = unet.BLOCK_OUT_CHANNELS[0]
unet.TIME_EMBED_DIM = unet.BLOCK_OUT_CHANNELS[0] * 4
unet.LAYERS_PER_BLOCK = cfg["layers_per_block"]
unet.LAYERS_PER_BLOCK_UP = unet.LAYERS_PER_BLOCK + 1
unet.NORM_GROUPS = cfg["norm_num_groups"]
unet.TRANSFORMER_NORM_NUM_GROUPS = cfg["norm_num_groups"]
unet.NORM_EPS = cfg["norm_eps"]

sys.argv = [os.path.join(sd_scripts, "train_network.py")] + args
runpy.run_path(sys.argv[0], run_name="__main__")
