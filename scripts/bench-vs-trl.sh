#!/usr/bin/env bash
# dpo-wgpu against TRL's DPOTrainer on this machine, side by side in one run (bench/vs_trl.py):
# W1 (GPT-2-shaped, full fine-tuning) and W2 (SmolLM2-135M GGUF, LoRA), the same pairs, one
# epoch of STEPS steps; prints a table and writes target/bench/vs_trl.json.
#
#   scripts/bench-vs-trl.sh                       # CPU backend vs TRL on the CPU (~3 min + setup)
#   STEPS=20 ROUNDS=2 scripts/bench-vs-trl.sh
#   BACKEND=wgpu TRL_DEVICE=cuda scripts/bench-vs-trl.sh   # a GPU machine (see scripts/bench-gpu.sh)
#
# TRL runs in a venv this script creates (~/.cache/dpo-wgpu/bench-venv: trl 1.16, peft, gguf,
# datasets; torch comes with them, a large download) unless BENCH_PYTHON names a Python that has
# them already.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dpo-wgpu/target}"

PY=${BENCH_PYTHON:-}
if [ -z "$PY" ]; then
  venv="$HOME/.cache/dpo-wgpu/bench-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "trl==1.16.0" "transformers==5.24.0" "peft==0.21.2" gguf datasets
  fi
  PY="$venv/bin/python"
fi

BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$CARGO_TARGET_DIR/release/dpo-wgpu"
fi

exec "$PY" bench/vs_trl.py --steps "${STEPS:-10}" --rounds "${ROUNDS:-1}" \
  --workloads "${WORKLOADS:-W1,W2}" --backend "${BACKEND:-cpu}" --trl-device "${TRL_DEVICE:-cpu}" \
  --bin "$BIN" "$@"
