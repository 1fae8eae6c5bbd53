#!/usr/bin/env bash
# The LoRA-step benchmark on a GPU: lorakit (candle, `--features cuda`) against PyTorch +
# sd-scripts' LoRA network, interleaved on the same card, plain and with gradient checkpointing:
# SD1.5 (64×64 latent) in f32 and bf16, then SDXL (full-size UNet, 128×128 latent = 1024 px,
# attention-group LoRA, see train_step.rs) in bf16, then Flux (the full-size FLUX.1-dev
# transformer against sd-scripts' own flux_models.Flux + networks/lora_flux.py; bf16 and fp8 base,
# 512 and 1024 px, with gradient checkpointing), then SD3 (SD3.5 Large's MMDiT at full width
# against sd-scripts' own sd3_models.MMDiT + networks/lora_sd3.py; bf16 and fp8 base, 1024 px).
# Two halves, because the GPU machine has no Rust toolchain and the build machine has no GPU:
#
#   tools/bench/train_step/gpu.sh build
#       Here (no GPU, no system CUDA): nvcc from PyPI (CUDA 13.0, what the GPU machine's driver
#       and PyTorch use), link stubs for the CUDA libraries (resolved on the GPU machine at run
#       time), a release build of the bench, then everything the run needs in
#       tools/bench/train_step/gpu/ (git-ignored, ~8 MB): the binary (xz; one binary for both
#       models, `--model sd15|sdxl|flux|sd3`), sd-scripts' files the PyTorch side imports (networks/lora.py
#       imports library/sdxl_original_unet.py for its SDXL check, so SDXL needs nothing more; Flux
#       adds networks/lora_flux.py and library/{flux_models,device_utils,custom_offloading_utils}.py
#       — einops is in the GPU image; SD3 adds networks/lora_sd3.py and library/sd3_models.py, which
#       imports transformers' tokenizers, also in the image), and the wheels the GPU machine lacks (diffusers). First
#       build ~15 min on 2 cores. Needs SD_SCRIPTS (default /work/bench/sd-scripts, commit 48d368f).
#
#   tools/bench/train_step/gpu.sh run [rounds] [steps]
#       On the GPU machine (device tool: carry ["tools/bench/train_step/gpu"]). Writes JSON lines to
#       $OUT/train_step_gpu.jsonl (or ./train_step_gpu.jsonl) — after the CUDA tests (lorakit-nn's
#       checkpoint_offload, to $OUT/cuda_tests.txt) — the peak GPU memory of each
#       process as nvidia-smi saw it, and a summary. MODELS="sd15 sdxl flux sd3" (default) picks the
#       cases. Not yet run on a GPU: 1 round × 3 steps is 8 SD1.5, 4 SDXL and 8 Flux processes,
#       each mostly start-up and weight setup (both sides generate SDXL's 2.57 G random weights on
#       the card, in bf16 for PyTorch; estimate: 5–8 minutes on an H100 for SD1.5 + SDXL, ~3–4
#       more for Flux — over the device tool's 10 minutes a call, run `MODELS="sd15 sdxl"` and
#       `MODELS=flux` as two calls; results go to $OUT line by line, so a cut run keeps what ran).
#
#       Flux (issue 16): FLUX_DEPTH="19 38" (double, single blocks: the full 11.9 G-parameter
#       model), FLUX_CASES="bf16:64 bf16:128 fp8:64 fp8:128" (frozen storage : latent side; 64 =
#       512 px, 128 = 1024 px), 512 T5 tokens, compute in bf16, LoRA rank 16 on lora_flux's default
#       304 modules on both sides, each side in its own process with gradient checkpointing only
#       (how Flux LoRAs are trained; plain full-size bf16 at 1024 px would not fit an 80 GB card).
#       fp8 = fp8_base: lorakit stores the linear weights as F8E4M3 (made directly in f8), sd-scripts
#       casts its whole model to float8_e4m3fn as its fp8_base does; both upcast per layer.
#       FLUX_BLOCK_SWAP=N adds both sides with blocks_to_swap N (fp8, 1024 px): peak VRAM with
#       swapping against the fp8:128 case without it (lorakit copies blocks synchronously;
#       sd-scripts prefetches on a side stream). FLUX_CPU_OFFLOAD=1 adds both sides with
#       cpu_offload_checkpointing (fp8, 1024 px).
#       SD3 (issue 19): SD3_MMDIT=sd35l (SD3.5 Large: width 2432, 38 heads, RMS q/k norms; sd3m =
#       SD3 Medium, 1536) at SD3_DEPTH joint blocks (default 38: the full 8.1 G-parameter model),
#       SD3_CASES="bf16 fp8" (frozen storage; compute in bf16), a 128×128 latent (1024 px, 4096
#       image tokens) + 333 text tokens (77 CLIP + 256 T5), LoRA rank 16 on lora_sd3's default
#       modules (377 for SD3.5 Large), forward + backward + AdamW step, gradient checkpointing on
#       both sides (SD3_CHECKPOINTING=0 for plain steps, which at full depth and 1024 px need more
#       than an 80 GB card: lower SD3_DEPTH). fp8 = fp8_base: lorakit stores the linear weights as
#       F8E4M3, sd-scripts casts the whole model as sd3_train_network.py does. SD3_BLOCK_SWAP=N
#       adds both sides with blocks_to_swap N (fp8). `MODELS=sd3` alone: 4 processes, each mostly
#       making 8 G random weights on the card; estimate 3–5 minutes on an H100.
#       Smoke-tested here with a stand-in nvidia-smi: a side that fails is recorded as failed and
#       the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=tools/bench/train_step
PACK=$HERE/gpu

build() {
  local cuda_pip=${CUDA_PIP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda-pip-cu130}
  if [ ! -x "$cuda_pip/nvidia/cu13/bin/nvcc" ]; then
    # Pinned to 13.0 so the PTX ISA is one a CUDA-13.0 driver can JIT.
    pip install --target "$cuda_pip" "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" \
      "nvidia-cuda-crt==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl<13.1"
  fi
  export CUDA_HOME="$cuda_pip/nvidia/cu13"
  export CUDA_ROOT="$CUDA_HOME" CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} # H100/H200; there is no GPU here to ask
  ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
  local target=${CARGO_TARGET_DIR:-target}-cuda
  local cargo_build=(cargo build --release --locked -p lorakit-models --features cuda --bench train_step)
  # candle links the CUDA libraries dynamically; the linker only needs their names and symbols.
  # The symbols are read from cudarc's bindings (every `pub unsafe fn cu…` wraps one), not from
  # the compiled rlib: with the release profile's LTO its objects are bitcode nm cannot read.
  cargo fetch --locked
  local cudarc work
  cudarc=$(awk '/^name = "cudarc"/{getline; gsub(/[" ]/, "", $0); sub("version=", "", $0); print; exit}' Cargo.lock)
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc" | head -1)
  work=$(mktemp -d)
  grep -rhoE 'pub unsafe fn [A-Za-z0-9_]+' "$cudarc/src" | awk '{print $4}' | sort -u > "$work/undefined.txt"
  stub() { # library soname symbol-regex [exclude-regex]
    { grep -E "$3" "$work/undefined.txt" || true; } | { if [ -n "${4:-}" ]; then grep -vE "$4" || true; else cat; fi; } \
      | awk '{print "void " $1 "(void) {}"}' > "$work/$1.c"
    gcc -shared -fPIC -o "$CUDA_HOME/lib/lib$1.so" -Wl,-soname,"$2" "$work/$1.c"
  }
  stub cuda libcuda.so.1 '^cu[A-Z]'
  stub cublas libcublas.so.13 '^cublas[A-Z]' '^cublasLt'
  stub cublasLt libcublasLt.so.13 '^cublasLt'
  stub curand libcurand.so.10 '^curand'
  stub nvrtc libnvrtc.so.13 '^nvrtc'
  CARGO_TARGET_DIR=$target "${cargo_build[@]}"
  local bin
  bin=$(ls -t "$target"/release/deps/train_step-* | grep -v '\.d$' | head -1)
  rm -rf "$PACK" && mkdir -p "$PACK/wheels" "$PACK/sd-scripts/networks" "$PACK/sd-scripts/library"
  xz -T0 -6 -c "$bin" > "$PACK/train_step.xz"
  # The CUDA tests (run before the benchmark): checkpoint offload on the card.
  # lorakit-nn's one integration-test binary; run below filtered to its checkpoint_offload module.
  bin=$(CARGO_TARGET_DIR=$target cargo test --release --locked -p lorakit-nn --features cuda --test integration \
    --no-run --message-format=json | python3 -c 'import json, sys
print([m["executable"] for m in map(json.loads, sys.stdin)
       if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration"][-1])')
  xz -T0 -6 -c "$bin" > "$PACK/checkpoint_offload.xz"
  local sd=${SD_SCRIPTS:-/work/bench/sd-scripts}
  cp "$sd/networks/lora.py" "$PACK/sd-scripts/networks/"
  cp "$sd/networks/lora_flux.py" "$sd/networks/lora_sd3.py" "$PACK/sd-scripts/networks/"
  cp "$sd/library/__init__.py" "$sd/library/utils.py" "$sd/library/sdxl_original_unet.py" "$sd/library/flux_models.py" \
    "$sd/library/sd3_models.py" "$sd/library/device_utils.py" "$sd/library/custom_offloading_utils.py" \
    "$PACK/sd-scripts/library/"
  # The GPU image has torch 2.11, transformers, huggingface-hub 1.x and safetensors 0.8 but no
  # diffusers (KINDS.md); diffusers 0.42 is the release that works with those.
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$PACK/wheels" \
    "diffusers==0.42.1" "importlib_metadata==8.7.0"
  du -sh "$PACK"
}

run() {
  local rounds=${1:-1} steps=${2:-3}
  local out=${OUT:-.}/train_step_gpu.jsonl
  local site=/tmp/lorakit-bench-site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$PACK"/wheels/*.whl
  # The CUDA libraries candle opens at run time: those of PyTorch's wheels.
  local nvidia
  nvidia=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
  export LD_LIBRARY_PATH="$nvidia/cu13/lib:$nvidia/cublas/lib:$nvidia/cuda_runtime/lib:$nvidia/curand/lib:$nvidia/cuda_nvrtc/lib:${LD_LIBRARY_PATH:-}"
  xz -dc "$PACK/train_step.xz" > /tmp/train_step && chmod +x /tmp/train_step
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "${OUT:-.}/gpu.txt"
  PYTHONPATH=$site python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' \
    | tee -a "${OUT:-.}/gpu.txt" || true
  : > "$out"
  # CUDA tests first (seconds): their result lands in $OUT/cuda_tests.txt whatever the bench does.
  xz -dc "$PACK/checkpoint_offload.xz" > /tmp/checkpoint_offload && chmod +x /tmp/checkpoint_offload
  /tmp/checkpoint_offload checkpoint_offload:: --nocapture 2>&1 | tee "${OUT:-.}/cuda_tests.txt" || true
  # Peak GPU memory of one process: nvidia-smi's used memory, sampled every 50 ms, minus the idle
  # reading (the same measure for both sides; PyTorch's own counters are in its lines too).
  measured() { # impl command...
    local impl=$1; shift
    local idle samples
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    samples=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$samples" &
    local smi=$!
    # A failed side is recorded and the rest still runs.
    "$@" | tee -a "$out" || echo "{\"impl\":\"$impl\",\"failed\":true,\"args\":\"$*\"}" | tee -a "$out"
    kill "$smi" 2>/dev/null || true
    wait "$smi" 2>/dev/null || true
    local peak
    peak=$(sort -n "$samples" | tail -1)
    echo "{\"impl\":\"$impl\",\"gpu_peak_used_mb\":$((peak - idle)),\"args\":\"$*\"}" | tee -a "$out"
  }
  # (model, dtype, latent) cases: SD1.5 at 512 px in both dtypes, SDXL at 1024 px in bf16.
  local cases=()
  local models=" ${MODELS:-sd15 sdxl flux sd3} "
  case "$models" in *" sd15 "*) cases+=("sd15 bf16 64" "sd15 f32 64") ;; esac
  case "$models" in *" sdxl "*) cases+=("sdxl bf16 128") ;; esac
  # Flux: (storage:latent) cases at FLUX_DEPTH, checkpointed, lorakit vs sd-scripts (see above).
  local flux_cases=() flux_depth
  case "$models" in *" flux "*) read -r -a flux_cases <<< "${FLUX_CASES:-bf16:64 bf16:128 fp8:64 fp8:128}" ;; esac
  read -r -a flux_depth <<< "${FLUX_DEPTH:-19 38}"
  local flux_args=(--model flux --double "${flux_depth[0]}" --single "${flux_depth[1]}" --device cuda --dtype bf16 --checkpointing)
  # SD3: (storage) cases at SD3_DEPTH, 1024 px, lorakit vs sd-scripts (see above).
  local sd3_cases=()
  case "$models" in *" sd3 "*) read -r -a sd3_cases <<< "${SD3_CASES:-bf16 fp8}" ;; esac
  local sd3_args=(--model sd3 --mmdit "${SD3_MMDIT:-sd35l}" --depth "${SD3_DEPTH:-38}" --latent 128 --device cuda
    --dtype bf16 --adamw)
  [ "${SD3_CHECKPOINTING:-1}" = 1 ] && sd3_args+=(--checkpointing)
  for round in $(seq "$rounds"); do
    for c in "${flux_cases[@]}"; do
      local storage=${c%%:*} latent=${c#*:} fp8=()
      [ "$storage" = fp8 ] && fp8=(--fp8)
      measured lorakit /tmp/train_step "$steps" "${flux_args[@]}" --latent "$latent" "${fp8[@]}"
      PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
        python3 "$HERE/torch_step.py" "$steps" "${flux_args[@]}" --latent "$latent" "${fp8[@]}" --impl sd-scripts
    done
    if [ ${#flux_cases[@]} -gt 0 ] && [ "${FLUX_BLOCK_SWAP:-0}" -gt 0 ]; then
      measured lorakit /tmp/train_step "$steps" "${flux_args[@]}" --latent 128 --fp8 --block-swap "$FLUX_BLOCK_SWAP"
      PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
        python3 "$HERE/torch_step.py" "$steps" "${flux_args[@]}" --latent 128 --fp8 --impl sd-scripts --block-swap "$FLUX_BLOCK_SWAP"
    fi
    if [ ${#flux_cases[@]} -gt 0 ] && [ "${FLUX_CPU_OFFLOAD:-0}" = 1 ]; then
      measured lorakit /tmp/train_step "$steps" "${flux_args[@]}" --latent 128 --fp8 --offload
      PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
        python3 "$HERE/torch_step.py" "$steps" "${flux_args[@]}" --latent 128 --fp8 --impl sd-scripts --cpu-offload
    fi
    for storage in "${sd3_cases[@]}"; do
      local fp8=()
      [ "$storage" = fp8 ] && fp8=(--fp8)
      measured lorakit /tmp/train_step "$steps" "${sd3_args[@]}" "${fp8[@]}"
      PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
        python3 "$HERE/torch_step.py" "$steps" "${sd3_args[@]}" "${fp8[@]}"
    done
    if [ ${#sd3_cases[@]} -gt 0 ] && [ "${SD3_BLOCK_SWAP:-0}" -gt 0 ]; then
      measured lorakit /tmp/train_step "$steps" "${sd3_args[@]}" --fp8 --block-swap "$SD3_BLOCK_SWAP"
      PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
        python3 "$HERE/torch_step.py" "$steps" "${sd3_args[@]}" --fp8 --block-swap "$SD3_BLOCK_SWAP"
    fi
    for c in "${cases[@]}"; do
      read -r model dtype latent <<< "$c"
      for mode in "" --checkpointing; do
        measured lorakit /tmp/train_step "$steps" --model "$model" --latent "$latent" --device cuda --dtype "$dtype" $mode
        PYTHONPATH="$site:$PACK/sd-scripts" measured pytorch \
          python3 "$HERE/torch_step.py" "$steps" --model "$model" --latent "$latent" --device cuda --dtype "$dtype" $mode
      done
    done
  done
  python3 - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
steps = [r for r in rows if "seconds" in r]
side = lambda r: "lorakit" if r["impl"] == "lorakit" else f"pytorch/{r.get('lora_impl', 'sd-scripts')}"
case = lambda r: (r.get("model", "sd15") + (f" {r['mmdit']} depth {r['depth']}" if "mmdit" in r else ""), r["dtype"], r.get("fp8", False), r["latent"], r.get("block_swap", 0), r.get("cpu_offload", False), r["checkpointing"])
groups = {}
for r in steps:
    groups.setdefault(case(r), {}).setdefault(side(r), []).append(r["seconds"])
for (model, dtype, fp8, latent, swap, offload, ck), g in groups.items():
    m = {i: st.median(v) for i, v in g.items()}
    line = f"{model} {dtype}{' fp8 base' if fp8 else ''} latent {latent}{f' block swap {swap}' if swap else ''}{' cpu offload' if offload else ''} checkpointing={ck}: " + \
        ", ".join(f"{i} {m[i]:.3f} s/step" for i in sorted(m))
    if "lorakit" in m and len(m) > 1:
        line += ", ratio " + ", ".join(f"{m['lorakit'] / m[i]:.2f} vs {i}" for i in sorted(m) if i != "lorakit")
    print(line)
for r in rows:
    if "gpu_peak_used_mb" in r:
        print(r["impl"], r["args"], "peak GPU memory", r["gpu_peak_used_mb"], "MB")
PY
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run [rounds] [steps]" >&2; exit 2 ;;
esac
