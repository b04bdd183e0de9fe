#!/usr/bin/env bash
# Builds the browser version of dpo-wgpu into dist/ with trunk (see Trunk.toml).
#
# Idempotent: installs only what is missing (wasm32 target, wasm-bindgen-cli at the version in
# Cargo.lock, trunk 0.21.14, npm packages for the browser tests), then `trunk build --release`.
# Needs only the package registries (crates.io, npm). Works locally and on CI (CI=true).
#
#   scripts/build-web.sh            # build dist/
#   SKIP_NPM=1 scripts/build-web.sh # skip `npm ci` (only needed for tests/browser/*.mjs)
#
# CARGO_TARGET_DIR defaults to $HOME/.cache/dpo-wgpu/target (shared with the native build, so a
# machine that already built dpo-wgpu reuses the compiled dependencies).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dpo-wgpu/target}"
export PATH="$HOME/.cargo/bin:$PATH"
TRUNK_VERSION=0.21.14

log() { printf '\n==> %s\n' "$*"; }

# The wasm-bindgen CLI must match the wasm-bindgen crate exactly.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [[ -z "$WB_VERSION" ]]; then
  echo "error: wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi
if ! grep -q "^wasm_bindgen = \"$WB_VERSION\"" Trunk.toml; then
  echo "error: Trunk.toml [tools] wasm_bindgen must be \"$WB_VERSION\" (the version in Cargo.lock)" >&2
  exit 1
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

if [[ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $WB_VERSION" ]]; then
  log "cargo install wasm-bindgen-cli $WB_VERSION"
  # Not --locked: with its own lock file it fails to build (webpki-roots).
  cargo install wasm-bindgen-cli --version "$WB_VERSION" --force
fi

if [[ "$(trunk --version 2>/dev/null || true)" != "trunk $TRUNK_VERSION" ]]; then
  log "cargo install trunk $TRUNK_VERSION"
  # 0.22 needs a newer rustc; 0.21.14 builds with its lock file.
  cargo install trunk --version "$TRUNK_VERSION" --locked --force
fi

if [[ -z "${SKIP_NPM:-}" ]]; then
  # Every devDependency (playwright-core, typescript) at its pinned version, or `npm ci`.
  stale=$(node -p 'Object.entries(require("./package.json").devDependencies).filter(([name, want]) => {
    try { return require(`./node_modules/${name}/package.json`).version !== want; } catch { return true; }
  }).map(([name]) => name).join(" ")')
  if [[ -n "$stale" ]]; then
    log "npm ci (missing or other version: $stale)"
    npm ci --no-audit --no-fund
  fi
fi

# Trunk.toml sets offline = true (trunk must never download tools), which also makes trunk call
# cargo with --offline: fetch the crates first.
log "cargo fetch"
cargo fetch --target wasm32-unknown-unknown

log "trunk build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
trunk build --release

wasm=dist/dpo-wgpu_bg.wasm
log "built dist/: $(du -h "$wasm" | cut -f1) wasm ($(gzip -c "$wasm" | wc -c | awk '{printf "%.1f MB", $1/1e6}') gzipped)"
