#!/usr/bin/env bash
# Interleaved CPU benchmark of one SD1.5 LoRA training step: lorakit vs PyTorch (+ sd-scripts'
# LoRA network) on the same machine. Usage: tools/bench/train_step/run.sh [rounds] [steps]
# Needs: a Python with torch + diffusers (PYTHON, default /work/bench/venv/bin/python) and
# sd-scripts (SD_SCRIPTS, default /work/bench/sd-scripts).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${1:-2}
STEPS=${2:-3}
PYTHON=${PYTHON:-/work/bench/venv/bin/python}
SD_SCRIPTS=${SD_SCRIPTS:-/work/bench/sd-scripts}
cargo build --release -p lorakit-models --bench train_step 2>/dev/null
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/train_step-* | grep -v "\.d$" | head -1)
OUT=${OUT:-/tmp/train_step_results.jsonl}
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for mode in "" "--checkpointing"; do
    "$BIN" "$STEPS" $mode | tee -a "$OUT"
    PYTHONPATH="$SD_SCRIPTS" "$PYTHON" tools/bench/train_step/torch_step.py "$STEPS" $mode --threads "$(nproc)" | tee -a "$OUT"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
for ck in (False, True):
    r = {i: [x for x in rows if x["impl"] == i and x["checkpointing"] == ck] for i in ("lorakit", "pytorch")}
    if not all(r.values()): continue
    m = {i: st.median(x["seconds"] for x in v) for i, v in r.items()}
    mem = {i: max(x["peak_rss_mb"] for x in v) for i, v in r.items()}
    print(f"checkpointing={ck}: lorakit {m['lorakit']:.2f} s/step (peak {mem['lorakit']} MB), "
          f"pytorch {m['pytorch']:.2f} s/step (peak {mem['pytorch']} MB), ratio {m['lorakit']/m['pytorch']:.2f}")
PY
