#!/usr/bin/env bash
# Interleaved CPU benchmark of one UNet LoRA training step: lorakit vs PyTorch (+ sd-scripts'
# LoRA network) on the same machine, one process after the other (never at once).
#
#   tools/bench/train_step/run.sh [rounds] [steps] [bench options...]
#
# Bench options go to both sides unchanged: `--model sd15` (default) or `--model sdxl`,
# `--latent N` (default 64), `--conv-dim N`, `--attention-only` (see
# crates/lorakit-models/benches/train_step.rs). Each round runs lorakit, PyTorch, then both with
# gradient checkpointing (MODES="plain" or MODES="checkpointing" for one of them).
# Needs: a Python with torch + diffusers (PYTHON, default /work/bench/venv/bin/python) and
# sd-scripts (SD_SCRIPTS, default /work/bench/sd-scripts).
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
    [ "$WAIT_IDLE" -gt 0 ] && wait_idle
    PYTHONPATH="$SD_SCRIPTS" "$PYTHON" tools/bench/train_step/torch_step.py "$STEPS" $flag --threads "$(nproc)" "$@" | tee -a "$OUT"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys, statistics as st
rows = [r for r in (json.loads(l) for l in open(sys.argv[1])) if "seconds" in r]
for model in sorted({r.get("model", "sd15") for r in rows}):
    for ck in (False, True):
        r = {i: [x for x in rows if x["impl"] == i and x["checkpointing"] == ck and x.get("model", "sd15") == model]
             for i in ("lorakit", "pytorch")}
        if not all(r.values()): continue
        m = {i: st.median(x["seconds"] for x in v) for i, v in r.items()}
        mem = {i: max(x["peak_rss_mb"] for x in v) for i, v in r.items()}
        print(f"{model} checkpointing={ck}: lorakit {m['lorakit']:.2f} s/step (peak {mem['lorakit']} MB), "
              f"pytorch {m['pytorch']:.2f} s/step (peak {mem['pytorch']} MB), ratio {m['lorakit']/m['pytorch']:.2f}")
        quiet = {i: [x["seconds"] for x in v if x.get("other_cpu_s", 0) < 0.05 * x["seconds"]] for i, v in r.items()}
        if all(quiet.values()) and any(len(quiet[i]) < len(r[i]) for i in r):
            q = {i: st.median(v) for i, v in quiet.items()}
            print(f"  steps without other load: lorakit {q['lorakit']:.2f} s/step ({len(quiet['lorakit'])} of {len(r['lorakit'])}), "
                  f"pytorch {q['pytorch']:.2f} s/step ({len(quiet['pytorch'])} of {len(r['pytorch'])}), ratio {q['lorakit']/q['pytorch']:.2f}")
PY
