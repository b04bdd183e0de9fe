#!/usr/bin/env python3
"""Preference pairs from human sentiment ratings, with nothing from a model hub.

The movie-review snippets of the PyPI sdist vaderSentiment==3.3.2
(additional_resources/hutto_ICWSM_2014.tar.gz; each line: id, mean rating of ~20 people on
-4..+4, text). A pair is a prompt, a snippet rated >= 2 as "chosen" and one rated <= -2 as
"rejected" (both 6..30 words); training and held-out pairs use disjoint snippets.

    python3 scripts/sentiment_pairs.py OUT_DIR --train 400 --eval 48 [--format chat|plain]

writes OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl (TRL's conversational format with --format chat,
the default; the standard format with a plain-text prompt otherwise). Used by
scripts/smollm2-sentiment-dpo.sh and bench/vs_trl.py.
"""
import argparse
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PLAIN_PROMPT = "Write a positive movie review:\n"
CHAT_PROMPT = "Write a one-sentence movie review."


def snippets(work: Path) -> Path:
    """Downloads the sdist into `work` and returns the ratings file's path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "vaderSentiment==3.3.2", "-d", str(work)],
        check=True,
    )
    with tarfile.open(work / "vaderSentiment-3.3.2.tar.gz") as sdist:
        sdist.extractall(work, filter="data")
    with tarfile.open(work / "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz") as t:
        t.extractall(work, filter="data")
    return work / "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--format", choices=["chat", "plain"], default="chat")
    args = ap.parse_args()
    positive, negative = [], []
    with tempfile.TemporaryDirectory() as tmp:
        with open(snippets(Path(tmp)), encoding="utf-8", errors="replace") as f:
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
    total = args.train + args.eval
    if min(len(positive), len(negative)) < total:
        sys.exit(f"only {len(positive)} positive / {len(negative)} negative snippets for {total} pairs")

    def row(chosen: str, rejected: str) -> dict:
        if args.format == "plain":
            return {"prompt": PLAIN_PROMPT, "chosen": chosen, "rejected": rejected}
        return {
            "prompt": [{"role": "user", "content": CHAT_PROMPT}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, lo, hi in (("train", 0, args.train), ("eval", args.train, total)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for p, n in zip(positive[lo:hi], negative[lo:hi]):
                f.write(json.dumps(row(p, n), ensure_ascii=False) + "\n")
    print(f"{len(positive)} positive, {len(negative)} negative snippets -> "
          f"{args.train} train / {args.eval} eval pairs in {out}")


if __name__ == "__main__":
    main()
