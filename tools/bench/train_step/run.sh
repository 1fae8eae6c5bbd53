#!/usr/bin/env bash
# Interleaved CPU benchmark of one UNet LoRA training step: lorakit vs PyTorch (+ sd-scripts'
# LoRA network) on the same machine, one process after the other (never at once).
#
#   tools/bench/train_step/run.sh [rounds] [steps] [bench options...]
#
# Bench options go to both sides unchanged: `--model sd15` (default), `--model sdxl`,
# `--model flux` or `--model sd3`, `--latent N` (default 64), `--conv-dim N`, `--attention-only`;
# for Flux `--double N --single N` (default 2 and 4), `--txt-len N`; for SD3 `--mmdit sd35l|sd3m`,
# `--depth N` (default 2), `--txt-len N` (default 333); `--adamw` adds an AdamW step (see
# crates/lorakit-models/benches/train_step.rs). Each round runs lorakit, PyTorch, then both with
# gradient checkpointing (MODES="plain" or MODES="checkpointing" for one of them).
# Needs: a Python with torch + diffusers (PYTHON, default /work/bench/venv/bin/python) and
# sd-scripts (SD_SCRIPTS, default /work/bench/sd-scripts); for Flux also peft (0.14.0, with
# diffusers 0.32.1: `$PYTHON -m pip install --no-deps peft==0.14.0`).
#
# Flux's PyTorch side is diffusers' FluxTransformer2DModel + PEFT (`--impl peft`, what issue 16
# names); TORCH_IMPLS="peft sd-scripts" also runs sd-scripts' own Flux + lora_flux.py (kohya's
# fused modules, as lorakit) after it in each round. The summary keeps the implementations apart.
#
#   tools/bench/train_step/run.sh 1 3 --model flux --latent 64              # the CPU comparison
#   tools/bench/train_step/run.sh 1 1 --model flux --double 1 --single 1 --latent 16   # smoke test
#
# SD3 (issue 19): sd-scripts' own library/sd3_models.MMDiT + networks/lora_sd3.py on the PyTorch
# side. After the rounds, the same-loss check: torch_step.py --make-weights writes one random model, LoRA and
# inputs to SD3_WEIGHTS (default /tmp/lorakit-sd3-weights, ~1.9 GB for SD3.5 Large at depth 2,
# removed afterwards unless KEEP_WEIGHTS=1), both sides run CHECK_STEPS (default 2) steps on them
# and the summary compares their losses and gradient norms step by step (SD3_CHECK=0 skips it).
#
#   MODES=plain tools/bench/train_step/run.sh 2 3 --model sd3 --latent 128 --adamw   # the CPU comparison
#   tools/bench/train_step/run.sh 1 1 --model sd3 --mmdit sd3m --latent 16 --txt-len 20 --adamw   # smoke test
#
# Every step's JSON line has `other_cpu_s`, the CPU time other processes took from the machine
# during that step, and `loadavg_1m`. WAIT_IDLE=S waits up to S seconds before each process
# until no rustc/clippy/cargo build runs and the cores are idle (under 10% busy over 5 s), for
# machines shared with builds; the summary also gives the medians of the steps that ran with
# other_cpu_s under 5% of the step's wall time.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${1:-2}
STEPS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
PYTHON=${PYTHON:-/work/bench/venv/bin/python}
SD_SCRIPTS=${SD_SCRIPTS:-/work/bench/sd-scripts}
MODES=${MODES:-plain checkpointing}
TORCH_IMPLS=${TORCH_IMPLS:-peft}
is_flux=false
is_sd3=false
prev=
for a in "$@"; do
  [ "$prev" = --model ] && [ "$a" = flux ] && is_flux=true
  [ "$prev" = --model ] && [ "$a" = sd3 ] && is_sd3=true
  prev=$a
done
if $is_flux; then
  case " $TORCH_IMPLS " in *" peft "*)
    "$PYTHON" -c 'import peft' 2>/dev/null \
      || { echo "run.sh: --model flux needs peft in $PYTHON: $PYTHON -m pip install --no-deps peft==0.14.0" >&2; exit 1; } ;;
  esac
else
  TORCH_IMPLS=default
fi
WAIT_IDLE=${WAIT_IDLE:-0}
cargo build --release -p lorakit-models --bench train_step 2>/dev/null
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/train_step-* | grep -v "\.d$" | head -1)
OUT=${OUT:-/tmp/train_step_results.jsonl}
: > "$OUT"

# pgrep matches at most 15 characters of a name, so one name at a time.
build_running() {
  local n
  for n in rustc clippy-driver cargo cc1 cc1plus ld rust-lld; do pgrep -x "$n" > /dev/null && return 0; done
  return 1
}
busy_jiffies() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
wait_idle() {
  local deadline=$((SECONDS + WAIT_IDLE)) a b
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! build_running; then
      a=$(busy_jiffies); sleep 5; b=$(busy_jiffies)
      # under 10% of the cores over 5 s (jiffies at 100 Hz)
      [ $((b - a)) -lt $((50 * $(nproc) / 10)) ] && return 0
    else
      sleep 5
    fi
  done
  echo "run.sh: the machine is still busy after ${WAIT_IDLE}s; measuring anyway ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
}

for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    flag=$([ "$mode" = checkpointing ] && echo --checkpointing || true)
    [ "$WAIT_IDLE" -gt 0 ] && wait_idle
    "$BIN" "$STEPS" $flag "$@" | tee -a "$OUT"
    for impl in $TORCH_IMPLS; do
      [ "$WAIT_IDLE" -gt 0 ] && wait_idle
      impl_flag=$([ "$impl" = default ] || echo "--impl $impl")
      PYTHONPATH="$SD_SCRIPTS" "$PYTHON" tools/bench/train_step/torch_step.py "$STEPS" $flag --threads "$(nproc)" $impl_flag "$@" \
        | tee -a "$OUT"
    done
  done
done
# SD3's same-loss check: one set of weights and inputs, loaded by both sides.
if $is_sd3 && [ "${SD3_CHECK:-1}" != 0 ]; then
  WEIGHTS=${SD3_WEIGHTS:-/tmp/lorakit-sd3-weights}
  CHECK_STEPS=${CHECK_STEPS:-2}
  PYTHONPATH="$SD_SCRIPTS" "$PYTHON" tools/bench/train_step/torch_step.py 1 "$@" --make-weights "$WEIGHTS"
  [ "$WAIT_IDLE" -gt 0 ] && wait_idle
  "$BIN" "$CHECK_STEPS" "$@" --weights "$WEIGHTS" | tee -a "$OUT"
  [ "$WAIT_IDLE" -gt 0 ] && wait_idle
  PYTHONPATH="$SD_SCRIPTS" "$PYTHON" tools/bench/train_step/torch_step.py "$CHECK_STEPS" --threads "$(nproc)" "$@" \
    --weights "$WEIGHTS" | tee -a "$OUT"
  [ "${KEEP_WEIGHTS:-0}" = 1 ] || rm -rf "$WEIGHTS"
fi
"$PYTHON" - "$OUT" <<'PY'
import json, sys, statistics as st
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")) if "seconds" in r]
# The same-loss check's steps (shared weights) are compared below, not timed.
checks = [r for r in rows if r.get("shared_weights")]
rows = [r for r in rows if not r.get("shared_weights")]
side = lambda x: "lorakit" if x["impl"] == "lorakit" else f"pytorch/{x.get('lora_impl', 'sd-scripts')}"
for model in sorted({r.get("model", "sd15") for r in rows}):
    for ck in (False, True):
        r = {}
        for x in rows:
            if x["checkpointing"] == ck and x.get("model", "sd15") == model:
                r.setdefault(side(x), []).append(x)
        if "lorakit" not in r or len(r) < 2: continue
        m = {i: st.median(x["seconds"] for x in v) for i, v in r.items()}
        mem = {i: max(x["peak_rss_mb"] for x in v) for i, v in r.items()}
        lora = {i: f"{v[0].get('lora_modules')} modules, {v[0].get('lora_params')} LoRA params" for i, v in r.items()}
        for i in sorted(r):
            if i == "lorakit": continue
            print(f"{model} checkpointing={ck}: lorakit {m['lorakit']:.2f} s/step (peak {mem['lorakit']} MB; {lora['lorakit']}), "
                  f"{i} {m[i]:.2f} s/step (peak {mem[i]} MB; {lora[i]}), ratio {m['lorakit']/m[i]:.2f}")
            if all("cpu_s" in x for v in r.values() for x in v):
                cpu = {j: st.median(x["cpu_s"] for x in v) for j, v in r.items()}
                print(f"  CPU time (user + system) per step: lorakit {cpu['lorakit']:.2f} s, {i} {cpu[i]:.2f} s, "
                      f"ratio {cpu['lorakit'] / cpu[i]:.2f}")
        quiet = {i: [x["seconds"] for x in v if x.get("other_cpu_s", 0) < 0.05 * x["seconds"]] for i, v in r.items()}
        if all(quiet.values()) and any(len(quiet[i]) < len(r[i]) for i in r):
            q = {i: st.median(v) for i, v in quiet.items()}
            print("  steps without other load: " + ", ".join(
                f"{i} {q[i]:.2f} s/step ({len(quiet[i])} of {len(r[i])})" for i in sorted(r)) + "; ratio " + ", ".join(
                f"{q['lorakit'] / q[i]:.2f} vs {i}" for i in sorted(r) if i != "lorakit"))
if checks:
    by_step = {}
    for r in checks:
        by_step.setdefault(r["step"], {})[side(r)] = r
    worst_loss = worst_norm = 0.0
    for step, g in sorted(by_step.items()):
        if "lorakit" not in g or len(g) < 2:
            continue
        for i, o in g.items():
            if i == "lorakit":
                continue
            a, b = g["lorakit"], o
            dl = abs(a["loss"] - b["loss"]) / abs(b["loss"])
            dn = abs(a["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"])
            worst_loss, worst_norm = max(worst_loss, dl), max(worst_norm, dn)
            print(f"same weights, step {step}: loss lorakit {a['loss']:.7f} {i} {b['loss']:.7f} (rel. diff {dl:.1e}); "
                  f"grad norm {a['grad_norm']:.7f} vs {b['grad_norm']:.7f} (rel. diff {dn:.1e})")
    print(f"same weights: largest relative difference {worst_loss:.1e} in the loss, {worst_norm:.1e} in the gradient norm")
PY
