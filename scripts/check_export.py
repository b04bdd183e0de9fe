"""Check that a directory written by `dpo-wgpu train` loads in transformers and scores like we do.

    python scripts/check_export.py OUTPUT_DIR PAIRS.jsonl [path/to/dpo-wgpu]

Loads OUTPUT_DIR with AutoModelForCausalLM/AutoTokenizer, runs TRL's DPOTrainer.evaluate() with the
model as its own reference, runs `dpo-wgpu eval` on the same files, and compares logps/* and
logits/* (rewards are 0 by construction). Needs a venv with torch, transformers, trl, datasets.
Exits 1 on a mismatch above 1e-4 relative.
"""
import json
import subprocess
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model_dir, pairs_path = sys.argv[1], sys.argv[2]
binary = sys.argv[3] if len(sys.argv) > 3 else "target/release/dpo-wgpu"
rows = [json.loads(line) for line in open(pairs_path) if line.strip()]

tokenizer = AutoTokenizer.from_pretrained(model_dir)
load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_eval_batch_size=8, report_to=[],
                 bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=1024)
trainer = DPOTrainer(model=load(), ref_model=load(), args=args, processing_class=tokenizer,
                     train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows))
trl = trainer.evaluate()

ours = json.loads(subprocess.run(
    [binary, "eval", "--model", model_dir, "--data", pairs_path, "--batch-size", "8",
     "--backend", "cpu", "--json"], check=True, capture_output=True, text=True).stdout)

worst = 0.0
for key in ["logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]:
    a, b = ours[key], trl[f"eval_{key}"]
    err = abs(a - b) / max(abs(b), 1e-3)
    worst = max(worst, err)
    print(f"{key:16} ours {a:.8f}  transformers+trl {b:.8f}  rel {err:.1e}")
sys.exit(0 if worst < 1e-4 else 1)
