#!/usr/bin/env bash
# Benchmark: `lorakit dataset check` vs. kohya-ss/sd-scripts' DreamBooth dataset preparation
# on the same synthetic dataset (default 10,000 mixed-format images), same machine, same run.
#
# Steps: (a) sd-scripts export + Python venv, (b) dataset generation, (c) cargo build --release,
# (d) sanity runs, in-process sd-scripts timing, one hyperfine invocation with all three
# commands, and an interleaved round-robin pass, (e) images/second and ratios.
#
# Everything heavy lives outside the repo (default /work/bench). Environment overrides:
#   BENCH_ROOT=/work/bench        root for venv, sd-scripts export, data and results
#   DATA=$BENCH_ROOT/data10k      dataset dir (generated if missing or empty)
#   COUNT=10000  SEED=20240601    dataset size / generator seed (only used when generating)
#   VENV=$BENCH_ROOT/venv         Python venv with sd-scripts' dependencies
#   SD_SCRIPTS=$BENCH_ROOT/sd-scripts          sd-scripts tree (exported from SD_SCRIPTS_GIT_DIR if missing)
#   SD_SCRIPTS_GIT_DIR=/work/.mirror/kohya-ss+sd-scripts/repo   bare repo to export from
#   RESULTS_DIR=$BENCH_ROOT/results
#   RESOLUTION=512  BATCH_SIZE=1  passed to both tools
#   RUNS=5  WARMUP=1              hyperfine --runs / --warmup
#   INPROC_REPEAT=5               repeats of the in-process sd-scripts timing
#   ROUNDS=3                      interleaved round-robin rounds (0 = skip)
#   COLD=0                        1 = drop the page cache before every timed run (needs root)
#   SKIP_BUILD=0                  1 = do not run cargo build
#   LORAKIT=<target>/release/lorakit   binary to benchmark
#   NO_SETUP=0                    1 = never create the venv / export sd-scripts, just fail
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

BENCH_ROOT="${BENCH_ROOT:-/work/bench}"
DATA="${DATA:-$BENCH_ROOT/data10k}"
COUNT="${COUNT:-10000}"
SEED="${SEED:-20240601}"
VENV="${VENV:-$BENCH_ROOT/venv}"
SD_SCRIPTS="${SD_SCRIPTS:-$BENCH_ROOT/sd-scripts}"
SD_SCRIPTS_GIT_DIR="${SD_SCRIPTS_GIT_DIR:-/work/.mirror/kohya-ss+sd-scripts/repo}"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_ROOT/results}"
RESOLUTION="${RESOLUTION:-512}"
BATCH_SIZE="${BATCH_SIZE:-1}"
RUNS="${RUNS:-5}"
WARMUP="${WARMUP:-1}"
INPROC_REPEAT="${INPROC_REPEAT:-5}"
ROUNDS="${ROUNDS:-3}"
COLD="${COLD:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
NO_SETUP="${NO_SETUP:-0}"
LORAKIT="${LORAKIT:-${CARGO_TARGET_DIR:-$REPO/target}/release/lorakit}"

PY="$VENV/bin/python"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_DIR/dataset_check-$STAMP"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case "$DATA" in "$REPO"|"$REPO"/*) die "DATA must be outside the repo ($REPO)";; esac
case "$RESULTS_DIR" in "$REPO"|"$REPO"/*) die "RESULTS_DIR must be outside the repo ($REPO)";; esac

# ---------------------------------------------------------------------------------------------
# (a) sd-scripts tree + Python environment
# ---------------------------------------------------------------------------------------------
setup_hint() {
	cat >&2 <<EOF
Setup commands (run once):
  mkdir -p "$SD_SCRIPTS"
  git --git-dir="$SD_SCRIPTS_GIT_DIR" archive HEAD -- library networks train_network.py requirements.txt setup.py LICENSE.md \\
      | tar -x -C "$SD_SCRIPTS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -r "$HERE/requirements-sd-scripts.txt"
  apt-get install -y hyperfine
EOF
}

if [ ! -f "$SD_SCRIPTS/train_network.py" ]; then
	[ "$NO_SETUP" = 1 ] && { setup_hint; die "sd-scripts not found at $SD_SCRIPTS"; }
	[ -d "$SD_SCRIPTS_GIT_DIR" ] || { setup_hint; die "no sd-scripts at $SD_SCRIPTS and no git dir at $SD_SCRIPTS_GIT_DIR"; }
	log "exporting sd-scripts from $SD_SCRIPTS_GIT_DIR to $SD_SCRIPTS"
	mkdir -p "$SD_SCRIPTS"
	# only the parts train_network.py needs: the mirror lacks some large binary blobs elsewhere
	# (git may print "invalid object ... bitsandbytes_windows/..." here; harmless)
	git --git-dir="$SD_SCRIPTS_GIT_DIR" archive HEAD -- library networks train_network.py requirements.txt setup.py LICENSE.md |
		tar -x -C "$SD_SCRIPTS"
	[ -f "$SD_SCRIPTS/train_network.py" ] || die "sd-scripts export failed"
	git --git-dir="$SD_SCRIPTS_GIT_DIR" rev-parse HEAD >"$SD_SCRIPTS/.sd_scripts_commit"
fi
SD_COMMIT="$(cat "$SD_SCRIPTS/.sd_scripts_commit" 2>/dev/null ||
	git --git-dir="$SD_SCRIPTS_GIT_DIR" rev-parse HEAD 2>/dev/null || echo unknown)"

if ! "$PY" -c 'import torch, accelerate, transformers, diffusers, imagesize, voluptuous, toml, cv2' 2>/dev/null; then
	[ "$NO_SETUP" = 1 ] && { setup_hint; die "venv $VENV is missing or incomplete"; }
	log "creating venv $VENV and installing sd-scripts' dependencies (torch is large)"
	[ -x "$PY" ] || python3 -m venv "$VENV"
	"$VENV/bin/pip" install --upgrade pip
	"$VENV/bin/pip" install -r "$HERE/requirements-sd-scripts.txt"
fi

command -v hyperfine >/dev/null || { setup_hint; die "hyperfine not found (apt-get install -y hyperfine)"; }

# ---------------------------------------------------------------------------------------------
# (b) dataset
# ---------------------------------------------------------------------------------------------
if [ ! -d "$DATA" ] || [ -z "$(ls -A "$DATA" 2>/dev/null)" ]; then
	log "generating $COUNT images into $DATA"
	"$PY" "$HERE/gen_dataset.py" "$DATA" --count "$COUNT" --seed "$SEED" --workers 2
fi
# refuse stale sd-scripts caches: they would let sd-scripts skip reading image headers
if [ -n "$(find "$DATA" -mindepth 2 -maxdepth 2 \( -name metadata_cache.json -o -name '*.npz' \) -print -quit)" ]; then
	die "cache files (metadata_cache.json / *.npz) found in $DATA; delete them first"
fi
N_IMAGES="$(find "$DATA" -mindepth 2 -maxdepth 2 -type f \
	\( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.webp' -o -iname '*.bmp' \) | wc -l)"
N_IMAGES="${N_IMAGES// /}"
[ "$N_IMAGES" -gt 0 ] || die "no images in $DATA"
DATA_BYTES="$(du -sb "$DATA" | cut -f1)"

# ---------------------------------------------------------------------------------------------
# (c) build lorakit
# ---------------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
	log "cargo build --release -p lorakit"
	(cd "$REPO" && cargo build --release -p lorakit)
fi
[ -x "$LORAKIT" ] || die "lorakit binary not found at $LORAKIT (set LORAKIT=... or drop SKIP_BUILD)"

mkdir -p "$OUT"
log "results go to $OUT"

# ---------------------------------------------------------------------------------------------
# environment record
# ---------------------------------------------------------------------------------------------
CPU_MODEL="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
{
	echo "date: $(date -Iseconds)"
	echo "cpu: $CPU_MODEL"
	echo "nproc: $(nproc)"
	echo "mem: $(free -g | awk '/^Mem:/{print $2 " GiB"}')"
	echo "kernel: $(uname -sr)"
	echo "python: $("$PY" -c 'import platform; print(platform.python_version())')"
	echo "torch: $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
	echo "sd-scripts: $SD_COMMIT ($SD_SCRIPTS)"
	echo "lorakit: $LORAKIT ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
	echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
	echo "hyperfine: $(hyperfine --version)"
	echo "data: $DATA ($N_IMAGES images, $DATA_BYTES bytes)"
	echo "settings: resolution=$RESOLUTION batch_size=$BATCH_SIZE runs=$RUNS warmup=$WARMUP cold=$COLD"
} | tee "$OUT/environment.txt" >&2
lscpu >"$OUT/lscpu.txt"
"$VENV/bin/pip" freeze >"$OUT/pip-freeze.txt" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# (d) commands
# ---------------------------------------------------------------------------------------------
q() { printf '%q' "$1"; }
LK_ARGS="--resolution $RESOLUTION --batch-size $BATCH_SIZE"
CMD_QUICK="$(q "$LORAKIT") dataset check $(q "$DATA") $LK_ARGS --quick --json > /dev/null"
# lorakit's decode cache goes to the results folder, never the user's cache.
export LORAKIT_CACHE_DIR="$OUT/lorakit-cache"
CMD_FULL="$(q "$LORAKIT") dataset check $(q "$DATA") $LK_ARGS --no-cache --json > /dev/null"
CMD_CACHED="$(q "$LORAKIT") dataset check $(q "$DATA") $LK_ARGS --json > /dev/null"
SD_ARGS="--sd-scripts $(q "$SD_SCRIPTS") --train-data-dir $(q "$DATA") --resolution $RESOLUTION --batch-size $BATCH_SIZE"
CMD_SD="$(q "$PY") $(q "$HERE/sd_scripts_prep.py") $SD_ARGS > /dev/null 2>&1"

# sanity runs (untimed): keep lorakit's reports, note exit codes (non-zero is not fatal)
log "sanity run: lorakit dataset check --quick"
set +e
"$LORAKIT" dataset check "$DATA" $LK_ARGS --quick --json >"$OUT/lorakit-quick.json" 2>"$OUT/lorakit-quick.stderr"
RC_QUICK=$?
log "sanity run: lorakit dataset check (full)"
"$LORAKIT" dataset check "$DATA" $LK_ARGS --json >"$OUT/lorakit-full.json" 2>"$OUT/lorakit-full.stderr"
RC_FULL=$?
set -e
echo "lorakit exit status: quick=$RC_QUICK full=$RC_FULL" | tee -a "$OUT/environment.txt" >&2

log "sd-scripts in-process timing ($INPROC_REPEAT repeats, imports excluded)"
# shellcheck disable=SC2086
"$PY" "$HERE/sd_scripts_prep.py" --sd-scripts "$SD_SCRIPTS" --train-data-dir "$DATA" \
	--resolution "$RESOLUTION" --batch-size "$BATCH_SIZE" --repeat "$INPROC_REPEAT" \
	--out "$OUT/sdscripts-inprocess.json" >/dev/null 2>"$OUT/sdscripts-inprocess.stderr" ||
	die "sd_scripts_prep.py failed, see $OUT/sdscripts-inprocess.stderr"

log "per-image parity: sd-scripts' size/bucket/repeats/caption vs lorakit's report"
"$PY" "$HERE/sd_scripts_prep.py" --sd-scripts "$SD_SCRIPTS" --train-data-dir "$DATA" \
	--resolution "$RESOLUTION" --batch-size "$BATCH_SIZE" --quiet --dump-images "$OUT/sdscripts-images.json" \
	>/dev/null 2>&1 || die "sd_scripts_prep.py --dump-images failed"
python3 "$HERE/compare_images.py" "$OUT/sdscripts-images.json" "$OUT/lorakit-quick.json" | tee "$OUT/parity.txt" >&2 ||
	log "PARITY MISMATCHES: see $OUT/parity.txt"

PREPARE=()
if [ "$COLD" = 1 ]; then
	PREPARE=(--prepare 'sync; echo 3 > /proc/sys/vm/drop_caches')
fi

log "hyperfine (warmup $WARMUP, runs $RUNS)"
hyperfine -i --warmup "$WARMUP" --runs "$RUNS" "${PREPARE[@]}" \
	--export-json "$OUT/hyperfine.json" --export-markdown "$OUT/hyperfine.md" \
	-n "lorakit dataset check --quick" "$CMD_QUICK" \
	-n "lorakit dataset check (full, first run)" "$CMD_FULL" \
	-n "lorakit dataset check (full, re-check from cache)" "$CMD_CACHED" \
	-n "sd-scripts dataset prep (process)" "$CMD_SD"

# interleaved round-robin: A B C A B C ... so drift (thermal, noisy neighbours) hits all alike
if [ "$ROUNDS" -gt 0 ]; then
	log "interleaved round-robin, $ROUNDS rounds"
	echo "round,command,seconds,exit_status" >"$OUT/interleaved.csv"
	for ((r = 1; r <= ROUNDS; r++)); do
		for name in quick full cached sd; do
			case $name in
			quick) cmd="$CMD_QUICK" ;;
			full) cmd="$CMD_FULL" ;;
			cached) cmd="$CMD_CACHED" ;;
			sd) cmd="$CMD_SD" ;;
			esac
			[ "$COLD" = 1 ] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
			t0=$EPOCHREALTIME
			set +e
			bash -c "$cmd"
			rc=$?
			set -e
			t1=$EPOCHREALTIME
			secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')"
			echo "$r,$name,$secs,$rc" >>"$OUT/interleaved.csv"
			printf '  round %d  %-6s %8.3f s  (exit %d)\n' "$r" "$name" "$secs" "$rc" >&2
		done
	done
fi

# ---------------------------------------------------------------------------------------------
# (e) images/second and ratios
# ---------------------------------------------------------------------------------------------
python3 - "$OUT" "$N_IMAGES" >"$OUT/summary.md" <<'PYEOF'
import csv, json, os, statistics, sys

out, n = sys.argv[1], int(sys.argv[2])
hf = json.load(open(os.path.join(out, "hyperfine.json")))["results"]
inproc = json.load(open(os.path.join(out, "sdscripts-inprocess.json")))
env = open(os.path.join(out, "environment.txt")).read().strip()

rows = []
for r in hf:
    rows.append((r["command"], r["mean"], r["stddev"] or 0.0, r["median"], r["min"]))
sd_med = inproc["median_seconds"]
by = {name: med for name, _, _, med, _ in rows}
sd_proc = by.get("sd-scripts dataset prep (process)")

print(f"## lorakit dataset check vs sd-scripts dataset preparation ({n} images)\n")
print("```\n" + env + "\n```\n")
print("| what | mean ± σ (s) | median (s) | images/s (median) | speed-up vs sd-scripts process | vs sd-scripts in-process |")
print("|---|---|---|---|---|---|")
for name, mean, sd, med, mn in rows:
    sp = f"{sd_proc / med:.1f}×" if sd_proc else "-"
    si = f"{sd_med / med:.1f}×"
    print(f"| {name} | {mean:.3f} ± {sd:.3f} | {med:.3f} | {n / med:,.0f} | {sp} | {si} |")
print(
    f"| sd-scripts dataset prep (in-process, imports excluded, {len(inproc['seconds'])} repeats) "
    f"| {statistics.mean(inproc['seconds']):.3f} ± {statistics.pstdev(inproc['seconds']):.3f} | {sd_med:.3f} "
    f"| {n / sd_med:,.0f} | - | 1.0× |"
)
print()
print(f"sd-scripts import time (torch, diffusers, ...): {inproc['import_seconds']:.2f} s; "
      f"sd-scripts saw {inproc['images']} images in {inproc['bucket_count']} buckets.")
if inproc["images"] != n:
    print(f"\n**warning**: sd-scripts counted {inproc['images']} images, find counted {n}.")

p = os.path.join(out, "interleaved.csv")
if os.path.exists(p):
    per = {}
    for row in csv.DictReader(open(p)):
        per.setdefault(row["command"], []).append(float(row["seconds"]))
    if per:
        print("\nInterleaved round-robin (median of rounds):\n")
        print("| command | rounds | median (s) | images/s |")
        print("|---|---|---|---|")
        for k, v in per.items():
            m = statistics.median(v)
            print(f"| {k} | {len(v)} | {m:.3f} | {n / m:,.0f} |")
PYEOF

log "summary ($OUT/summary.md)"
cat "$OUT/summary.md"
echo
echo "hyperfine JSON: $OUT/hyperfine.json"
