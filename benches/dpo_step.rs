//! DPO step time and peak memory on SmolLM2-135M (GGUF): full fine-tuning, our LoRA
//! (`x·W + s·(x·A)·B`), and burn's built-in `apply_lora` (dense `W + s·A·B` rebuilt every forward).
//!
//!     cargo bench --bench dpo_step -- [--backend cpu|wgpu] [--steps N] [--out FILE.json]
//!
//! Each configuration runs in its own process so its peak resident memory (VmHWM) is its own;
//! on a CPU "GPU" (lavapipe) device memory is host memory too. Prints a table, writes JSON
//! (default `target/bench/dpo_step.json`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::module::{Lora, Module, ParamGroup};
use dpo_wgpu::backend::{BackendChoice, select};
use dpo_wgpu::io::native::files::load_model;
use dpo_wgpu::text::rows::{Jsonl, PreferencePair};
use dpo_wgpu::text::tokenize::tokenize_pairs;
use dpo_wgpu::train::options::{OptionOverrides, Task};
use dpo_wgpu::train::run::{LoraRequest, Run, RunSpec};

/// `lora`/`burn-lora` adapt q and v (PEFT's default); `-all` every projection.
const CONFIGS: [&str; 5] = ["full", "lora", "burn-lora", "lora-all", "burn-lora-all"];
const GGUF: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Peak resident set size of this process, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Preference pairs of realistic length: ~50-token prompts, ~40-token completions.
fn pairs() -> Vec<PreferencePair> {
    let topics = [
        "the ocean",
        "a city at night",
        "learning to cook",
        "an old library",
        "winter mornings",
        "a long train ride",
        "the first day of school",
        "a mountain hike",
    ];
    topics
        .iter()
        .map(|t| PreferencePair {
            prompt: format!(
                "Write a short, warm paragraph about {t}. Use vivid but simple language, mention one sound and one smell, \
                 and end with a sentence that invites the reader to imagine being there."
            )
            .into(),
            chosen: format!(
                " There is something quietly wonderful about {t}. The air carries a faint, familiar scent, and a soft sound \
                 drifts by as if the world were humming to itself. Close your eyes and you are there."
            )
            .into(),
            rejected: format!(" {t} is a thing. It exists. Some people like it and some do not. That is all there is to say.").into(),
        })
        .collect()
}

fn run_one(config: &str, backend: BackendChoice, steps: usize) {
    let selected = select(backend).unwrap();
    let device = selected.device.clone();
    let loaded = Instant::now();
    let mut bundle = load_model(Path::new(GGUF), &device).unwrap();
    let load_seconds = loaded.elapsed().as_secs_f64();
    // Tokens in one step's batch: 4 pairs, chosen and rejected rows each with the prompt.
    let tokens: usize = tokenize_pairs(&pairs(), &bundle.tokenizer, Some(256))
        .unwrap()
        .rows
        .iter()
        .take(4)
        .map(|p| 2 * p.prompt_ids.len() + p.chosen_ids.len() + p.rejected_ids.len())
        .sum();
    let jsonl = pairs()
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let targets: Vec<String> = if config.ends_with("-all") {
        vec!["all-linear".into()]
    } else {
        vec!["q_proj".into(), "v_proj".into()]
    };
    let mut lora = None;
    let mut reference = None;
    match config {
        "full" => {}
        "lora" | "lora-all" => {
            lora = Some(LoraRequest {
                rank: 8,
                alpha: Some(16.0),
                targets: Some(targets),
            })
        }
        "burn-lora" | "burn-lora-all" => {
            // burn's own adapters, with the frozen base as the explicit reference.
            let mut m = bundle.model.clone();
            let all = config.ends_with("-all");
            let ids = m
                .projections_mut()
                .into_iter()
                .filter(|(name, _)| all || name.ends_with("q_proj") || name.ends_with("v_proj"))
                .map(|(_, p)| p.linear.weight.id)
                .collect();
            reference = Some(bundle.model.valid());
            bundle.model = bundle
                .model
                .apply_lora(Lora::new(8, 16.0).set_param_group(ParamGroup::from_ids(ids)));
        }
        other => panic!("unknown config {other}"),
    }
    let spec = RunSpec {
        model: Some(bundle),
        model_label: GGUF.into(),
        rows: Some(Jsonl {
            source: "bench pairs".into(),
            text: jsonl,
        }),
        overrides: OptionOverrides {
            learning_rate: Some(1e-5),
            batch_size: Some(4),
            max_steps: Some(steps),
            max_length: Some(256),
            ..OptionOverrides::default()
        },
        lora,
        reference,
        ..RunSpec::new(Task::Dpo)
    };
    let mut trainer = Run::new(spec, &selected).unwrap().trainer;
    let mut seconds = Vec::new();
    let mut loss = f64::NAN;
    pollster::block_on(trainer.run(|r| {
        seconds.push(r.seconds);
        loss = r.metrics.loss();
        true
    }))
    .unwrap();
    let steady: Vec<f64> = seconds.iter().skip(1).copied().collect();
    let mean = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "config": config,
            "backend": format!("{backend:?}").to_lowercase(),
            "steps": steps,
            "pairs_per_step": 4,
            "tokens_per_step": tokens,
            "first_step_s": seconds.first(),
            "step_s": mean,
            "peak_rss_mib": peak_rss_mib(),
            "load_s": load_seconds,
            "last_loss": loss,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend: BackendChoice = arg(&args, "--backend")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .unwrap();
    let steps: usize = arg(&args, "--steps").map_or(4, |s| s.parse().unwrap());
    if let Some(config) = arg(&args, "--config") {
        run_one(&config, backend, steps);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it,
    // and a test run should not spend minutes benchmarking.
    if !args.iter().any(|a| a == "--bench") {
        println!("dpo_step: a benchmark; run it with `cargo bench --bench dpo_step`");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join(GGUF).exists() {
        let ok = Command::new(root.join("scripts/fetch-smollm2.sh"))
            .current_dir(root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not fetch {GGUF}");
    }
    let out: PathBuf =
        arg(&args, "--out").map_or_else(|| root.join("target/bench/dpo_step.json"), PathBuf::from);
    let mut rows = Vec::new();
    println!(
        "SmolLM2-135M DPO step, 4 pairs/step, backend {backend:?}, {steps} steps (time: mean of steps 2..)"
    );
    println!(
        "{:<14} {:>10} {:>12} {:>14} {:>10}",
        "config", "s/step", "first step s", "peak RSS MiB", "tokens"
    );
    for config in CONFIGS {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--config",
                config,
                "--steps",
                &steps.to_string(),
                "--backend",
                &format!("{backend:?}").to_lowercase(),
            ])
            .current_dir(root)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let Ok(row) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!(
                "{config} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            continue;
        };
        println!(
            "{:<14} {:>10.3} {:>12.3} {:>14.0} {:>10}",
            config,
            row["step_s"].as_f64().unwrap_or(f64::NAN),
            row["first_step_s"].as_f64().unwrap_or(f64::NAN),
            row["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            row["tokens_per_step"]
        );
        rows.push(row);
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
