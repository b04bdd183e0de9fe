#!/usr/bin/env python3
"""Data-parallel scaling on this machine: dpo-wgpu under `mpirun -n N` against TRL under
`torchrun --nproc_per_node N` (PyTorch DDP over gloo), the same pairs and global batch.

    python bench/mpi_scaling.py [--ranks 1,2,3] [--steps 6] [--workloads demo,W2,W2full]
                                [--trl] [--bin PATH] [--out target/bench/mpi_scaling.json]

Needs a binary built with `--features mpi` and Open MPI's mpirun. Workloads:
  demo    the built-in demo (16 pairs a step; ours only: TRL cannot load it)
  W2      SmolLM2-135M-Instruct (GGUF), LoRA r8 α16 on q,v, 6 pairs a step, max_length 128
  W2full  the same model, every weight trained, 6 pairs a step
A global batch of 6 splits evenly over 1, 2 and 3 ranks. One rank runs without mpirun (the whole
machine, as a user would run it). Per row: the mean step after 2 warm-up steps (rank 0's own
timings), the speed-up over one rank and the scaling efficiency (speed-up / N), and for ours the
time a step spends in the all-reduce (waiting for the slowest rank included) and how many MiB it
sums. With `--trl`, TRL runs the same workload under DDP (it needs `vs_trl.py`'s venv:
BENCH_PYTHON or --trl-python). Writes the table's numbers as JSON.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402  (the pairs, the model and the TRL side)

ROOT = vs_trl.ROOT
PAIRS = {"demo": 16, "W2": 6, "W2full": 6}
WHAT = {
    "demo": "built-in demo (tiny Llama), full fine-tune, 16 pairs a step",
    "W2": "SmolLM2-135M (GGUF), LoRA r8 on q,v, 6 pairs a step",
    "W2full": "SmolLM2-135M (GGUF), full fine-tune, 6 pairs a step",
}


def mpirun(ranks: int) -> list[str]:
    if ranks == 1:
        return []
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", *root, "--oversubscribe", "-n", str(ranks)]


def ours(bin_path: Path, workload: str, ranks: int, model: Path, data: Path, steps: int,
         work: Path) -> dict:
    out = work / f"ours-{workload}-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*mpirun(ranks), str(bin_path), "train", "--backend", "cpu", "--output", str(out),
           "--max-steps", str(steps), "--log-every", str(steps)]
    if workload != "demo":
        cmd += ["--model", str(model), "--data", str(data), "--batch-size", str(PAIRS[workload]),
                "--max-length", str(vs_trl.MAX_LENGTH), "--lr", str(vs_trl.LR),
                "--beta", str(vs_trl.BETA)]
    if workload == "W2":
        cmd += ["--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q_proj,v_proj"]
    code, rss, tail = vs_trl.run_measured(cmd)
    if code != 0:
        raise RuntimeError(f"dpo-wgpu on {ranks} ranks failed ({code}): {tail}")
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps_seen = [r for r in records if "seconds" in r and "loss" in r]
    mib = re.search(r"([0-9.]+) MiB summed over them per step", tail)
    threads = re.search(r"cpu \(flex, (\d+) threads\)", tail)
    return {"seconds": [r["seconds"] for r in steps_seen],
            "exchange_seconds": [r.get("exchange_seconds", 0.0) for r in steps_seen],
            "loss": [r["loss"] for r in steps_seen],
            "allreduce_mib": float(mib.group(1)) if mib else 0.0,
            "threads_per_rank": int(threads.group(1)) if threads else None,
            "peak_rss_mib_mpirun_or_rank": rss}


def theirs(python: str, workload: str, ranks: int, model: Path, data: Path, steps: int,
           work: Path) -> dict:
    out = work / f"trl-{workload}-{ranks}.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    launcher = [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={ranks}"] if ranks > 1 else [python]
    cmd = [*launcher, str(ROOT / "bench/vs_trl.py"), "trl", "--workload", "W2",
           "--model", str(model), "--data", str(data), "--steps", str(steps), "--device", "cpu",
           "--json", str(out), "--max-length", str(vs_trl.MAX_LENGTH),
           "--per-device-batch", str(PAIRS[workload] // ranks)]
    if workload == "W2full":
        cmd.append("--full")
    code, _, tail = vs_trl.run_measured(cmd, env=env)
    if code != 0:
        raise RuntimeError(f"TRL on {ranks} ranks failed ({code}): {tail}")
    return json.loads(out.read_text())


def mean_after_warmup(values: list[float]) -> float:
    return statistics.mean(values[2:] or values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workloads", default="demo,W2,W2full")
    ap.add_argument("--trl", action="store_true")
    ap.add_argument("--trl-python", default=os.environ.get("BENCH_PYTHON", sys.executable))
    ap.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
                                      / "release/dpo-wgpu"))
    ap.add_argument("--work", default=str(ROOT / "target/bench/mpi_scaling"))
    ap.add_argument("--out", default=str(ROOT / "target/bench/mpi_scaling.json"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ranks_list = [int(r) for r in a.ranks.split(",")]
    workloads = a.workloads.split(",")
    model = data = None
    if any(w != "demo" for w in workloads):
        model = vs_trl.make_w2()
        pairs = vs_trl.make_pairs(work, 6 * a.steps)
        data = work / "pairs.jsonl"
        data.write_text("".join(open(pairs).readlines()[:6 * a.steps]))
    rows = []
    for workload in workloads:
        sides = ["ours"] + (["trl"] if a.trl and workload != "demo" else [])
        for side in sides:
            base = None
            for ranks in ranks_list:
                vs_trl.log(f"{workload}: {side} on {ranks} rank(s)")
                if side == "ours":
                    run = ours(Path(a.bin), workload, ranks, model, data, a.steps, work)
                else:
                    run = theirs(a.trl_python, workload, ranks, model, data, a.steps, work)
                step = mean_after_warmup(run["seconds"])
                base = base or (step if ranks == 1 else None)
                row = {"workload": workload, "side": side, "ranks": ranks, "mean_step_s": step,
                       "loss": run["loss"], **{k: v for k, v in run.items() if k not in ("loss",)}}
                if base:
                    row["speedup"] = base / step
                    row["efficiency"] = base / step / ranks
                if side == "ours" and ranks > 1:
                    row["mean_exchange_s"] = mean_after_warmup(run["exchange_seconds"])
                rows.append(row)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "steps": a.steps,
              "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print("| workload | tool | ranks | threads/rank | step | speed-up | efficiency | all-reduce "
          "time (share of step) | MiB per all-reduce |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tool = "dpo-wgpu (MPI)" if r["side"] == "ours" else "TRL (DDP, gloo)"
        exchange = r.get("mean_exchange_s")
        ex = f"{exchange:.3f} s ({exchange / r['mean_step_s']:.0%})" if exchange is not None else "–"
        mib = f"{r['allreduce_mib']:.2f}" if r.get("allreduce_mib") else "–"
        speed = f"{r['speedup']:.2f}×" if "speedup" in r else "–"
        eff = f"{r['efficiency']:.0%}" if "efficiency" in r else "–"
        threads = r.get("threads_per_rank") or "–"
        print(f"| {WHAT[r['workload']]} | {tool} | {r['ranks']} | {threads} | "
              f"{r['mean_step_s']:.3f} s | {speed} | {eff} | {ex} | {mib} |")
    vs_trl.log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
