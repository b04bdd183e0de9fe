#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing, then runs
#   1. native tests (unit, TRL parity on CPU and on wgpu/lavapipe, CLI, demo training, data-parallel
#      training under mpirun: built with the `mpi` feature),
#   2. the wasm build of the page (trunk) and the headless-Chromium WebGPU tests.
# Usage: scripts/test.sh            (everything)
#        scripts/test.sh --native   (skip the browser part)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dpo-wgpu/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
native_only=false
[ "${1:-}" = "--native" ] && native_only=true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

# --- system packages: Vulkan on the CPU (lavapipe), Open MPI (and clang, which the mpi crate's
# bindings are generated with) and, for the browser tests, Chromium ----------------------------
packages=(mesa-vulkan-drivers libvulkan1 libopenmpi-dev openmpi-bin clang libclang-dev)
$native_only || packages+=(chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- native tests --------------------------------------------------------------------------------
step "native tests (cargo test --release --features mpi)"
# CI must exercise wgpu: with lavapipe installed, a missing adapter is a failure, not a skip.
DPO_REQUIRE_WGPU=1 cargo test --release --all-targets --features mpi

$native_only && exit 0

# --- browser ---------------------------------------------------------------------------------------
step "web build (trunk)"
scripts/build-web.sh

step "browser tests (headless Chromium, WebGPU on SwiftShader)"
node tests/browser/run.mjs
