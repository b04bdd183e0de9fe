#!/usr/bin/env bash
# The side-by-side benchmark (bench/vs_trl.py) on an NVIDIA GPU: dpo-wgpu natively on wgpu
# (Vulkan) against TRL on CUDA fp32, the same table as scripts/bench-vs-trl.sh. Workloads W1
# (GPT-2-shaped, full fine-tuning), W2r and W3r (random Llamas of SmolLM2-135M's and -360M's
# shapes, LoRA); random weights are made on the GPU machine, so nothing large travels.
#
# 1. Here (network, Rust):         scripts/bench-gpu.sh prepare
#    fills .gpu-bench/ (git-ignored, ~25 MB): the release binary stripped and gzipped, the pairs
#    and GPT-2's tokenizer files, and the wheels a GPU image usually lacks (trl, datasets, dill,
#    multiprocess; Python 3.12). Vulkan's loader: see below.
# 2. On the GPU machine (no network needed):   scripts/bench-gpu.sh run [STEPS]
#    prints the table and writes $OUT/vs_trl_gpu.json (or target/bench/vs_trl_gpu.json).
#
# With this workplace's device tool (the loader packages in .gl/, as its README says):
#   run(command="scripts/bench-gpu.sh run", carry=[".gpu-bench", ".gl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu-bench
WORKLOADS=${WORKLOADS:-W1,W2r,W3r}

prepare() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dpo-wgpu/target}"
  grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
  mkdir -p "$DIR/work" "$DIR/whl"
  cargo build --release --quiet
  strip -o "$DIR/dpo-wgpu" "$CARGO_TARGET_DIR/release/dpo-wgpu"
  gzip -f -9 "$DIR/dpo-wgpu"
  # The pairs and GPT-2's tokenizer files (bench/vs_trl.py reuses them when present).
  python3 - "$DIR/work" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
import vs_trl
work = Path(sys.argv[1])
vs_trl.make_pairs(work, 4 * 20)
vs_trl.fetch_gpt2_tokenizer_files(work)
PY
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR/whl" \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  du -sh "$DIR"
}

run() {
  local steps=${1:-10}
  [ -f "$DIR/dpo-wgpu.gz" ] || { echo "no $DIR/dpo-wgpu.gz: run 'scripts/bench-gpu.sh prepare' first" >&2; exit 2; }
  if ! ldconfig -p | grep -q libvulkan && compgen -G ".gl/*.deb" > /dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  if ! python3 -c "import trl, datasets" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$DIR"/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  gunzip -c "$DIR/dpo-wgpu.gz" > /tmp/dpo-wgpu
  chmod +x /tmp/dpo-wgpu
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  local out=${OUT:-target/bench}/vs_trl_gpu.json
  PYTHONUNBUFFERED=1 python3 bench/vs_trl.py --steps "$steps" --workloads "$WORKLOADS" \
    --backend "${BACKEND:-wgpu}" --trl-device "${TRL_DEVICE:-cuda}" --bin /tmp/dpo-wgpu \
    --work "$DIR/work" --out "$out"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/bench-gpu.sh prepare | run [STEPS]" >&2; exit 2 ;;
esac
