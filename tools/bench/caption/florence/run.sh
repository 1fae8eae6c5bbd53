#!/usr/bin/env bash
# Florence-2-base captioning: lorakit vs transformers, interleaved (A B A B …), one process per run
# under /usr/bin/time -v. Appends one JSON line per run to $JSONL.
#
#   PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/bench/caption/florence/make_model.py
#   nice cargo build --release -p lorakit
#   tools/bench/caption/florence/run.sh [ROUNDS]
#
# IMAGES: a folder of images (default /work/scratch/florence_bench/one); LOADONLY: a folder whose one
# image already has a caption, so `lorakit caption florence` loads the model and skips it (its
# wall time = process start + model load).
set -euo pipefail
ROUNDS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../../.." && pwd)
W=${W:-/work/scratch/florence_bench}
MODEL=${MODEL:-$W/model}
IMAGES=${IMAGES:-$W/one}
LOADONLY=${LOADONLY:-$W/loadonly}
BEAMS=${BEAMS:-3}
MAX_NEW=${MAX_NEW:-64}
JSONL=${JSONL:-$HERE/results.jsonl}
LORAKIT=${LORAKIT:-$ROOT/target/release/lorakit}
PY=${PY:-/work/bench/venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-/work/bench/py42}
N=$(find "$IMAGES" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.png' -o -name '*.webp' \) | wc -l)

record() { # side round kind out timefile load_before
  "$PY" - "$@" "$N" "$BEAMS" "$MAX_NEW" <<'EOF' >>"$JSONL"
import json, re, sys
side, rnd, kind, out, timef, load0, n, beams, max_new = sys.argv[1:]
t = open(timef).read()
def field(name):
    return re.search(re.escape(name) + r": (.*)", t).group(1).strip()
wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
wall_s = sum(float(x) * 60**i for i, x in enumerate(reversed(wall)))
row = {"side": side, "round": int(rnd), "kind": kind, "images": int(n), "num_beams": int(beams),
       "max_new_tokens": int(max_new), "wall_s": wall_s, "user_s": float(field("User time (seconds)")),
       "sys_s": float(field("System time (seconds)")), "max_rss_kb": int(field("Maximum resident set size (kbytes)")),
       "loadavg_before": float(load0), "loadavg_after": float(open("/proc/loadavg").read().split()[0])}
if side == "transformers":
    d = json.loads(open(out).read().strip().splitlines()[-1])
    row.update({k: d[k] for k in ["load_s", "import_s", "per_image_s", "decoder_lengths", "captions"]})
elif kind == "caption":
    caps = {}
    for line in open(out):
        m = re.match(r"(.*?): (.*)", line.rstrip("\n"))
        if m and "/" in m.group(1):
            caps[m.group(1).rsplit("/", 1)[-1]] = m.group(2)
    row["captions"] = caps
print(json.dumps(row))
EOF
}

T=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
  l0=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -v -o "$T/time" "$PY" "$HERE/bench_hf.py" "$MODEL" "$IMAGES" "$BEAMS" "$MAX_NEW" >"$T/out" 2>"$T/err"
  record transformers "$r" caption "$T/out" "$T/time" "$l0"
  l0=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -v -o "$T/time" "$LORAKIT" caption florence "$LOADONLY" --model "$MODEL" --num-beams "$BEAMS" \
    --max-new-tokens "$MAX_NEW" --dry-run >"$T/out" 2>"$T/err"
  record lorakit "$r" load_only "$T/out" "$T/time" "$l0"
  l0=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -v -o "$T/time" "$LORAKIT" caption florence "$IMAGES" --model "$MODEL" --num-beams "$BEAMS" \
    --max-new-tokens "$MAX_NEW" --dry-run --overwrite >"$T/out" 2>"$T/err"
  record lorakit "$r" caption "$T/out" "$T/time" "$l0"
  tail -n 3 "$JSONL" | cut -c1-300
done
rm -rf "$T"
