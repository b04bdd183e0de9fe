#!/usr/bin/env bash
# Builds the npm package of the browser module from an existing trunk build (dist/):
#
#   scripts/build-web.sh && scripts/build-package.sh [OUT_DIR]
#
# pkg/ (the package folder, recreated on every run):
#   package.json          name dpo-wgpu, version from Cargo.toml, "exports" (types + module)
#   README.md             how to use the installed package
#   dpo-wgpu.js           wasm-bindgen glue        } at the package root: web/dpo-trainer.js finds
#   dpo-wgpu_bg.wasm      the WebAssembly module   } them at new URL("../", import.meta.url)
#   web/dpo-trainer.js    the ES module (the package's main entry)
#   web/dpo-trainer.d.ts  its TypeScript declarations (from web/, the source tree)
#   web/worker.js         the module Web Worker it spawns
#   web/*.js              every other module of dist/web/ (model-source.js, ...: imported by both)
# then `npm pack` writes dpo-wgpu-<version>.tgz into OUT_DIR (default: pkg/) and the last line
# printed is "<tarball path> <size in bytes>". Idempotent; needs only node and npm (no network:
# the package has no dependencies).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${DPO_DIST:-$ROOT/dist}
PKG=$ROOT/pkg
OUT=${1:-$PKG}

log() { printf '==> %s\n' "$*" >&2; }

for f in dpo-wgpu.js dpo-wgpu_bg.wasm web/dpo-trainer.js web/worker.js web/model-source.js; do
  if [[ ! -f "$DIST/$f" ]]; then
    echo "error: $DIST/$f is missing: run scripts/build-web.sh first" >&2
    exit 1
  fi
done
if [[ ! -f web/dpo-trainer.d.ts ]]; then
  echo "error: web/dpo-trainer.d.ts is missing" >&2
  exit 1
fi
# dist/ is what gets packed; say so when it is older than the source.
for src in web/*.js; do
  if [[ ! -f "$DIST/$src" ]]; then
    log "warning: $src is not in $DIST/ (rebuild with scripts/build-web.sh)"
  elif ! cmp -s "$src" "$DIST/$src"; then
    log "warning: $src differs from $DIST/$src (rebuild with scripts/build-web.sh); packing dist/'s copy"
  fi
done

# [package] fields of Cargo.toml (the first `key = "value"` after [package]).
cargo_field() {
  awk -v key="$1" '
    /^\[/ { in_pkg = ($0 == "[package]") }
    in_pkg && $0 ~ "^" key "[[:space:]]*=" {
      sub(/^[^=]*=[[:space:]]*"/, ""); sub(/"[[:space:]]*$/, ""); print; exit
    }' Cargo.toml
}
VERSION=$(cargo_field version)
DESCRIPTION=$(cargo_field description)
LICENSE=$(cargo_field license)
if [[ -z "$VERSION" ]]; then
  echo "error: no version in Cargo.toml's [package]" >&2
  exit 1
fi

log "assembling $PKG (dpo-wgpu $VERSION) from $DIST"
rm -rf "$PKG"
mkdir -p "$PKG/web"
cp "$DIST/dpo-wgpu.js" "$DIST/dpo-wgpu_bg.wasm" "$PKG/"
cp "$DIST"/web/*.js "$PKG/web/"
cp web/dpo-trainer.d.ts "$PKG/web/"

VERSION=$VERSION DESCRIPTION=$DESCRIPTION LICENSE=$LICENSE node --input-type=module -e '
import fs from "node:fs";
const { VERSION, DESCRIPTION, LICENSE } = process.env;
const pkg = {
  name: "dpo-wgpu",
  version: VERSION,
  description: DESCRIPTION || "DPO fine-tuning of language models on WebGPU, in a Web Worker",
  keywords: ["dpo", "direct-preference-optimization", "rlhf", "trl", "fine-tuning", "lora", "llm",
    "webgpu", "wgpu", "webassembly", "wasm", "burn", "browser"],
  ...(LICENSE ? { license: LICENSE } : {}),
  type: "module",
  main: "./web/dpo-trainer.js",
  types: "./web/dpo-trainer.d.ts",
  exports: {
    ".": { types: "./web/dpo-trainer.d.ts", default: "./web/dpo-trainer.js" },
    "./worker": "./web/worker.js",
    "./model-source": "./web/model-source.js",
    "./dpo-wgpu.js": "./dpo-wgpu.js",
    "./dpo-wgpu_bg.wasm": "./dpo-wgpu_bg.wasm",
    "./web/*": "./web/*",
    "./package.json": "./package.json",
  },
  files: ["web/", "dpo-wgpu.js", "dpo-wgpu_bg.wasm"],
  sideEffects: ["./web/worker.js"],
};
fs.writeFileSync("pkg/package.json", JSON.stringify(pkg, null, 2) + "\n");
'

cat > "$PKG/README.md" <<EOF
# dpo-wgpu

${DESCRIPTION}

DPO (Direct Preference Optimization) and SFT fine-tuning of language models in the browser, on
WebGPU: an ES module that runs training and generation in a Web Worker (Rust + burn compiled to
WebAssembly). Metrics follow Hugging Face TRL's names. No dependencies.

\`\`\`js
import { DpoTrainer } from "dpo-wgpu"; // or "./node_modules/dpo-wgpu/web/dpo-trainer.js" without a bundler

// No model and no trainData: the built-in demo (a tiny Llama and a word-level preference task).
const trainer = await DpoTrainer.create({ lr: 3e-3, maxSteps: 20 });
await trainer.train({ onStep: (r) => console.log(r.step, r.loss, r["rewards/accuracies"]) });
console.log(await trainer.evaluate());
const out = await trainer.generate("write a happy line about the park :", {
  maxNewTokens: 16,
  onToken: (delta) => document.body.append(delta),
});
const files = await trainer.exportModel(); // { "config.json": Uint8Array, "model.safetensors": ..., ... }
trainer.terminate();

// A real model: a Hugging Face folder URL, "hf:OWNER/NAME", or a .gguf URL; your own pairs.
const t2 = await DpoTrainer.create({
  modelUrl: "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
  trainData: [{ prompt: "2+2?", chosen: "4", rejected: "5" }], // or JSONL text
  loraRank: 8, lr: 5e-6, batchSize: 4, maxSteps: 100,
});
\`\`\`

- The page must be served over http(s) (a secure context: https or localhost) in a browser with
  WebGPU. \`DpoTrainer.create\` rejects with a \`WebGpuUnavailableError\` otherwise.
- Serve the package folder as static files: \`web/dpo-trainer.js\` starts \`web/worker.js\`, which
  loads \`dpo-wgpu.js\` and \`dpo-wgpu_bg.wasm\` from the package root
  (\`new URL("../", import.meta.url)\`). Serve \`.wasm\` as \`application/wasm\`.
- With a bundler that copies or renames files, pass their URLs: \`DpoTrainer.create({ baseUrl })\`
  (the folder holding dpo-wgpu.js and the wasm), or \`jsUrl\`, \`wasmUrl\`, \`workerUrl\` one by one.
- Every option, method and report is typed in \`web/dpo-trainer.d.ts\` (and documented in the header
  of \`web/dpo-trainer.js\`).
EOF

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TARBALL="$OUT/dpo-wgpu-$VERSION.tgz"
rm -f "$TARBALL"
log "npm pack -> $OUT"
(cd "$PKG" && npm pack --pack-destination "$OUT" --json >"$PKG/.pack.json")
node -e '
const [info] = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const f of info.files) console.error(`    ${String(f.size).padStart(10)}  ${f.path}`);
console.error(`    ${info.entryCount} files, ${info.unpackedSize} bytes unpacked, ${info.size} bytes packed`);
' "$PKG/.pack.json"
rm -f "$PKG/.pack.json"
if [[ ! -f "$TARBALL" ]]; then
  echo "error: npm pack did not write $TARBALL" >&2
  exit 1
fi
SIZE=$(stat -c %s "$TARBALL")
log "$TARBALL: $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
echo "$TARBALL $SIZE"
