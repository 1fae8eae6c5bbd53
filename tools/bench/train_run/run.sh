#!/usr/bin/env bash
# Whole training run on the CPU: `lorakit train` vs sd-scripts' `train_network.py`, full-size
# SD1.5 (random weights), 512 px, batch 1, LoRA rank 16 / alpha 8, AdamW 1e-4, 6 steps, cached
# latents, fp32. Two variants: UNet + text encoder (default) and UNet only. Interleaved per round:
# lorakit, sd-scripts (UNet+TE), lorakit, sd-scripts (UNet only).
#
# usage: tools/bench/train_run/run.sh [rounds] [variants]     (defaults: 2 "te unet")
#        FIRST_ROUND=3 IMPLS=lorakit tools/bench/train_run/run.sh 3 te   (one more lorakit run)
# env:   PYTHON (/work/bench/venv/bin/python: torch, diffusers, transformers, tensorboard),
#        SD_SCRIPTS (/work/bench/sd-scripts, commit 48d368f), WORK (/work/bench/tmp: model,
#        data and outputs, ~5 GB), RESULTS (this folder's results-<date>.jsonl, date at start), STEPS (6),
#        THREADS (2), IMPLS ("lorakit sd-scripts"), FIRST_ROUND (1), SD_EXTRA (extra sd-scripts
#        arguments, e.g. --sdpa; such runs are recorded as variant "<variant>+sdpa"),
#        LORAKIT (a lorakit binary to use instead of building ${CARGO_TARGET_DIR:-target}/release/lorakit)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ROUNDS=${1:-2}
VARIANTS=${2:-"te unet"}
PYTHON=${PYTHON:-/work/bench/venv/bin/python}
SD_SCRIPTS=${SD_SCRIPTS:-/work/bench/sd-scripts}
WORK=${WORK:-/work/bench/tmp}
STEPS=${STEPS:-6}
THREADS=${THREADS:-2}
IMPLS=${IMPLS:-"lorakit sd-scripts"}
FIRST_ROUND=${FIRST_ROUND:-1}
SD_EXTRA=${SD_EXTRA:-}
RESULTS=${RESULTS:-$HERE/results-$(date +%F).jsonl}
MODEL=$WORK/sd15-random
TOKCACHE=$WORK/tokenizer_cache
DATA=$WORK/train_run_data
OUTROOT=$WORK/train_run_out
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

[ -f "$MODEL/model_index.json" ] || "$PYTHON" "$HERE/make_model.py" "$MODEL" "$TOKCACHE"
[ -d "$DATA/img/1_bench" ] || "$PYTHON" "$HERE/make_data.py" "$DATA"
if [ -z "${LORAKIT:-}" ]; then
  (cd "$REPO" && cargo build --release -p lorakit)
  LORAKIT=${CARGO_TARGET_DIR:-$REPO/target}/release/lorakit
fi
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install -y time)" >&2; exit 1; }

run_lorakit() { # variant round
  local out=$OUTROOT/lorakit-$1-r$2; rm -rf "$out"; mkdir -p "$out"
  local extra=(); if [ "$1" = unet ]; then extra=(--set network.network_train_unet_only=true); fi
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  /usr/bin/time -v -o "$out/time.txt" "$LORAKIT" train "$HERE/lorakit.toml" \
    --set "model.pretrained_model_name_or_path=$MODEL" --set "dataset.train_data_dir=$DATA/img" \
    --set "folders.output_dir=$out" --set "folders.logging_dir=$out/logs" \
    --set "training.max_train_steps=$STEPS" --set "accelerate.cpu_threads=$THREADS" "${extra[@]}" \
    > "$out/stdout.log" 2>&1 || { tail -20 "$out/stdout.log"; return 1; }
  "$PYTHON" "$HERE/parse_run.py" lorakit "$1" "$2" "$out/logs" "$out/time.txt" "$load" | tee -a "$RESULTS"
}

run_sd_scripts() { # variant round
  local tag=$1; if [ -n "$SD_EXTRA" ]; then tag="$1+${SD_EXTRA//[- ]/}"; fi
  local out=$OUTROOT/sd-scripts-$tag-r$2; rm -rf "$out"; mkdir -p "$out"
  local extra=($SD_EXTRA); if [ "$1" = unet ]; then extra+=(--network_train_unet_only); fi
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  (cd "$SD_SCRIPTS" && PYTHONPATH="$SD_SCRIPTS" /usr/bin/time -v -o "$out/time.txt" "$PYTHON" train_network.py \
    --pretrained_model_name_or_path "$MODEL" --tokenizer_cache_dir "$TOKCACHE" \
    --train_data_dir "$DATA/img" --resolution 512 --caption_extension .txt \
    --network_module networks.lora --network_dim 16 --network_alpha 8 \
    --train_batch_size 1 --max_train_steps "$STEPS" --cache_latents \
    --optimizer_type AdamW --learning_rate 1e-4 --mixed_precision no \
    --save_model_as safetensors --output_dir "$out" --output_name bench --seed 42 \
    --max_data_loader_n_workers 0 --logging_dir "$out/logs" "${extra[@]}" \
    > "$out/stdout.log" 2>&1) || { tail -20 "$out/stdout.log"; return 1; }
  "$PYTHON" "$HERE/parse_run.py" sd-scripts "$tag" "$2" "$out/logs" "$out/time.txt" "$load" | tee -a "$RESULTS"
}

for round in $(seq "$FIRST_ROUND" "$ROUNDS"); do
  for variant in $VARIANTS; do
    for impl in $IMPLS; do
      case $impl in
        lorakit) run_lorakit "$variant" "$round" ;;
        sd-scripts) run_sd_scripts "$variant" "$round" ;;
      esac
    done
  done
done

"$PYTHON" - "$RESULTS" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [x for x in rows if not x.get("excluded")]  # runs disturbed by other jobs (see "note")
for v in ("te", "unet"):
    r = {i: [x for x in rows if x["impl"] == i and x["variant"] == v] for i in ("lorakit", "sd-scripts")}
    if not all(r.values()): continue
    m = {i: st.median(x["s_per_step_median"] for x in xs) for i, xs in r.items()}
    mem = {i: max(x["peak_rss_mb"] for x in xs) for i, xs in r.items()}
    print(f"{v}: lorakit {m['lorakit']:.2f} s/step (peak {mem['lorakit']} MB), sd-scripts {m['sd-scripts']:.2f} s/step "
          f"(peak {mem['sd-scripts']} MB), lorakit/sd-scripts time {m['lorakit']/m['sd-scripts']:.2f}")
PY
