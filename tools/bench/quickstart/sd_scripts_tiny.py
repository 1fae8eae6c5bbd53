"""Run sd-scripts' train_network.py on a tiny SD1.5-shaped diffusers folder.

    python sd_scripts_tiny.py SD_SCRIPTS_DIR train_network.py-arguments...

sd-scripts loads an SD 1.x diffusers folder into its own U-Net class, whose sizes are module
constants of library/original_unet.py fixed at full-size SD1.5 (320/640/1280/1280 channels,
32 norm groups), and scales latents by SD's 0.18215 whatever the VAE's config says
(`NetworkTrainer.vae_scale_factor`). This sets those constants from the folder's
unet/config.json (the block layout itself, SD1.5's, is unchanged) and the latent scale from its
vae/config.json, then runs what train_network.py's `__main__` runs. Nothing else of sd-scripts
is touched. (Without the latent scale, sd-scripts trains on latents 2.25× too small for this
model and its LoRA draws noise.)
"""
import json
import os
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

with open(os.path.join(model, "vae", "config.json")) as f:
    scaling_factor = json.load(f)["scaling_factor"]

sys.argv = [os.path.join(sd_scripts, "train_network.py")] + args
import train_network  # noqa: E402
from library import train_util  # noqa: E402

original_init = train_network.NetworkTrainer.__init__


def init_with_model_scale(self):
    original_init(self)
    self.vae_scale_factor = scaling_factor


train_network.NetworkTrainer.__init__ = init_with_model_scale
parser = train_network.setup_parser()
parsed = parser.parse_args(args)
train_util.verify_command_line_training_args(parsed)
parsed = train_util.read_config_from_file(parsed, parser)
train_network.NetworkTrainer().train(parsed)
