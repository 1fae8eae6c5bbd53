#!/usr/bin/env bash
# The quick start, lorakit vs sd-scripts, on this machine in one run: the same base model folder
# (examples/quickstart/shapes-sd15), dataset (examples/shapes) and settings (examples/quickstart.toml,
# without its per-epoch samples and resumable state, which sd-scripts is not asked for either),
# trained by `lorakit train` and by sd-scripts' train_network.py (through sd_scripts_tiny.py, which
# sizes sd-scripts' SD1.5 U-Net class to the tiny model). Records wall time and peak memory of each,
# then draws the same probe prompts and seeds with each LoRA and with none (`lorakit-world compare`:
# `lorakit generate`, then the model-free shape reader) and records how often the concept appears.
#
# usage: tools/bench/quickstart/run.sh
# env:   PYTHON (/work/bench/venv/bin/python: torch 2.6, diffusers 0.32.1, transformers 4.54.1,
#        accelerate 1.6, torchvision 0.21), SD_SCRIPTS (/work/bench/sd-scripts, commit 48d368f), WORK
#        (/work/bench/tmp/quickstart), THREADS (2), SEEDS (8 per probe prompt), RESULTS
#        (this folder's results-<date>.jsonl)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
PYTHON=${PYTHON:-/work/bench/venv/bin/python}
SD_SCRIPTS=${SD_SCRIPTS:-/work/bench/sd-scripts}
WORK=${WORK:-/work/bench/tmp/quickstart}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-8}
IMPLS=${IMPLS:-"lorakit sd-scripts"}
RESULTS=${RESULTS:-$HERE/results-$(date +%F).jsonl}
MODEL=$REPO/examples/quickstart/shapes-sd15
DATA=$REPO/examples/shapes/img
REG=$REPO/examples/shapes/reg
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install -y time)" >&2; exit 1; }

(cd "$REPO" && cargo build --release -p lorakit -p lorakit-world)
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
rm -rf "$WORK/tokenizer_cache"; mkdir -p "$WORK/tokenizer_cache"
# sd-scripts loads SD1's tokenizer by its Hub name from --tokenizer_cache_dir.
cp -r "$MODEL/tokenizer" "$WORK/tokenizer_cache/openai_clip-vit-large-patch14"

peak_mb() { awk -F': ' '/Maximum resident/ {printf "%d", $2/1024}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.1f", s}' "$1"; }

run_lorakit() {
out=$WORK/lorakit; rm -rf "$out"; mkdir -p "$out"
/usr/bin/time -v -o "$out/time.txt" "$BIN/lorakit" train "$REPO/examples/quickstart.toml" \
  --set "folders.output_dir=$out" --set samples.sample_every_n_epochs=0 --set save.save_state=false \
  --set "accelerate.cpu_threads=$THREADS" > "$out/stdout.log" 2>&1 || { tail -20 "$out/stdout.log"; exit 1; }
}

run_sd_scripts() {
out=$WORK/sd-scripts; rm -rf "$out"; mkdir -p "$out"
/usr/bin/time -v -o "$out/time.txt" "$PYTHON" "$HERE/sd_scripts_tiny.py" "$SD_SCRIPTS" \
  --pretrained_model_name_or_path "$MODEL" --tokenizer_cache_dir "$WORK/tokenizer_cache" \
  --train_data_dir "$DATA" --reg_data_dir "$REG" --resolution 64 --caption_extension .txt \
  --network_module networks.lora --network_dim 32 --network_alpha 32 --network_args conv_dim=32 conv_alpha=32 \
  --train_batch_size 4 --max_train_epochs 8 --seed 42 --cache_latents \
  --optimizer_type AdamW --learning_rate 1e-3 --unet_lr 1e-3 --text_encoder_lr 5e-4 \
  --lr_scheduler cosine --lr_warmup_steps 0.05 --mixed_precision no \
  --save_model_as safetensors --save_precision fp16 --save_every_n_epochs 1 \
  --output_dir "$out" --output_name quickstart --max_data_loader_n_workers 0 \
  > "$out/stdout.log" 2>&1 || { tail -30 "$out/stdout.log"; exit 1; }
}

for impl in $IMPLS; do
  case $impl in lorakit) run_lorakit ;; sd-scripts) run_sd_scripts ;; esac
done

for impl in $IMPLS; do
  out=$WORK/$impl
  rates=$("$BIN/lorakit-world" compare --lorakit "$BIN/lorakit" --model "$MODEL" --lora "$out/quickstart.safetensors" \
    --out "$out/probe" --seeds "$SEEDS")
  echo "{\"impl\":\"$impl\",\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git -C "$REPO" rev-parse --short HEAD)\",\"wall_s\":$(wall_s "$out/time.txt"),\"peak_rss_mb\":$(peak_mb "$out/time.txt"),\"seeds\":$SEEDS,\"rates\":$rates}" \
    | tee -a "$RESULTS"
done
