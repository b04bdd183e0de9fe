"""Check that an adapter written by `dpo-wgpu train --lora-rank ...` loads in PEFT and scores like
we do.

    python scripts/check_peft.py BASE_MODEL_DIR ADAPTER_DIR PAIRS.jsonl [path/to/dpo-wgpu]

Loads BASE_MODEL_DIR with transformers, applies the adapter with `peft.PeftModel.from_pretrained`,
runs TRL's `DPOTrainer.evaluate()` (the adapted model as its own reference), runs
`dpo-wgpu eval --lora-adapter` on the same files and compares logps/* and logits/*. Needs a venv
with torch, transformers, trl, peft, datasets. Exits 1 on a mismatch above 1e-4 relative.
"""
import json
import subprocess
import sys
import tempfile

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

base_dir, adapter_dir, pairs_path = sys.argv[1:4]
binary = sys.argv[4] if len(sys.argv) > 4 else "target/release/dpo-wgpu"
rows = [json.loads(line) for line in open(pairs_path) if line.strip()]
tokenizer = AutoTokenizer.from_pretrained(base_dir)


def adapted():
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


max_length = getattr(AutoModelForCausalLM.from_pretrained(base_dir).config, "n_positions", 1024)
args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_eval_batch_size=8, report_to=[], bf16=False,
                 use_cpu=True, gradient_checkpointing=False, max_length=max_length)
trainer = DPOTrainer(model=adapted(), ref_model=adapted(), args=args, processing_class=tokenizer,
                     train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows))
trl = trainer.evaluate()
ours = json.loads(subprocess.run(
    [binary, "eval", "--model", base_dir, "--lora-adapter", adapter_dir, "--data", pairs_path,
     "--batch-size", "8", "--backend", "cpu", "--json"], check=True, capture_output=True, text=True).stdout)
worst = 0.0
for key in ["logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]:
    a, b = ours[key], trl[f"eval_{key}"]
    err = abs(a - b) / max(abs(b), 1e-3)
    worst = max(worst, err)
    print(f"{key:16} ours {a:.8f}  transformers+peft+trl {b:.8f}  rel {err:.1e}")
sys.exit(0 if worst < 1e-4 else 1)
