//! The pipeline around DPO: SFT against TRL's `SFTTrainer`, LoRA training that leaves the base
//! untouched, and checkpoints that resume to bit-identical weights.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_close, cpu, devices, fixtures};
use dpo_wgpu::backend::{BackendChoice, select};
use dpo_wgpu::io::bundle::export_weights;
use dpo_wgpu::io::native::files::{load_adapter, load_model, read_jsonl, read_text};
use dpo_wgpu::io::peft;
use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
use dpo_wgpu::model::config::Family;
use dpo_wgpu::model::lora;
use dpo_wgpu::model::weights::WeightSource;
use dpo_wgpu::text::rows::parse_sft_jsonl;
use dpo_wgpu::text::tokenize::tokenize_sft;
use dpo_wgpu::train::metrics::Metrics;
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::{OptionOverrides, Task, TrainOptions};
use dpo_wgpu::train::run::{LoraRequest, Run, RunSpec};
use dpo_wgpu::train::trainer::{TaskData, Trainer};
use serde_json::Value;

fn sft_expected(family: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(family).join("sft_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sft_rows(
    bundle: &dpo_wgpu::io::bundle::ModelBundle,
) -> Vec<dpo_wgpu::text::tokenize::TokenizedCompletion> {
    let path = fixtures().join("sft.jsonl");
    let rows = parse_sft_jsonl(&read_text(&path).unwrap(), "sft.jsonl").unwrap();
    tokenize_sft(&rows, &bundle.tokenizer, Some(64))
        .unwrap()
        .rows
}

#[test]
fn sft_tokenization_metrics_and_step_match_trl() {
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            let exp = sft_expected(family);
            let bundle = load_model(&fixtures().join(family).join("policy"), &device).unwrap();
            let rows = sft_rows(&bundle);
            // TRL's input_ids, and which positions its labels score.
            for (ours, theirs) in rows.iter().zip(exp["tokenized"].as_array().unwrap()) {
                let ids: Vec<u32> = serde_json::from_value(theirs["input_ids"].clone()).unwrap();
                let labels: Vec<i64> = serde_json::from_value(theirs["labels"].clone()).unwrap();
                let all: Vec<u32> = ours
                    .prompt_ids
                    .iter()
                    .chain(&ours.completion_ids)
                    .copied()
                    .collect();
                assert_eq!(all, ids, "{family}");
                assert_eq!(
                    labels.iter().filter(|&&l| l == -100).count(),
                    ours.prompt_ids.len(),
                    "{family}"
                );
            }
            let options = TrainOptions {
                optimizer: OptimizerKind::Sgd,
                learning_rate: 0.5,
                batch_size: 8,
                max_steps: Some(1),
                max_grad_norm: 0.0,
                lr_schedule: LrSchedule::Constant,
                max_length: Some(64),
                eval_batch_size: 3,
                shuffle: false,
                ..TrainOptions::sft_defaults()
            };
            let task = TaskData::Sft {
                train: rows.clone(),
                eval: rows,
            };
            let mut trainer = Trainer::new(
                bundle.model,
                task,
                bundle.tokenizer.pad_id,
                options,
                &device,
            )
            .unwrap();
            let what = format!("{backend} {family} sft");
            let Metrics::Sft(eval) = pollster::block_on(trainer.evaluate()).unwrap().unwrap()
            else {
                panic!("SFT metrics")
            };
            assert_close(
                &format!("{what} eval loss"),
                eval.loss,
                exp["eval"]["eval_loss"].as_f64().unwrap(),
                1e-4,
                0.0,
            );
            assert_close(
                &format!("{what} eval entropy"),
                eval.entropy,
                exp["eval"]["eval_entropy"].as_f64().unwrap(),
                1e-4,
                0.0,
            );
            assert_close(
                &format!("{what} eval token accuracy"),
                eval.mean_token_accuracy,
                exp["eval"]["eval_mean_token_accuracy"].as_f64().unwrap(),
                1e-6,
                1e-9,
            );
            let report = pollster::block_on(trainer.step()).unwrap();
            let log = &exp["sgd_step"]["log"];
            assert_close(
                &format!("{what} step loss"),
                report.metrics.loss(),
                log["loss"].as_f64().unwrap(),
                1e-4,
                0.0,
            );
            assert_close(
                &format!("{what} grad norm"),
                report.grad_norm,
                log["grad_norm"].as_f64().unwrap(),
                1e-4,
                0.0,
            );
            // Weights after the step, tensor by tensor.
            let path = fixtures().join(family).join("after_sft_sgd.safetensors");
            let worst = common::worst_weight_difference(&trainer.policy(), &path);
            eprintln!("{what}: worst weight difference after one SGD step {worst:.2e}");
            assert!(worst < 1e-5, "{what}: {worst}");
        }
    }
}

#[test]
fn lora_dpo_trains_only_the_adapters() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let spec = lora_fixture_spec(4, 4);
    let original = pollster::block_on(export_weights(&spec.model.as_ref().unwrap().model))
        .unwrap()
        .to_bytes()
        .unwrap();
    let spec = RunSpec {
        eval_rows: spec.rows.clone(),
        ..spec
    };
    let run = Run::new(spec, &selected).unwrap();
    let settings = run.export.lora.clone().unwrap();
    assert_eq!(
        run.trainer.policy().adapter_params().len(),
        2 * 2 * 2,
        "A and B on q and v of 2 layers"
    );
    let mut trainer = run.trainer;
    let before = pollster::block_on(trainer.evaluate())
        .unwrap()
        .unwrap()
        .loss();
    assert_close(
        "untrained LoRA = reference",
        before,
        std::f64::consts::LN_2,
        1e-6,
        0.0,
    );
    pollster::block_on(trainer.run(|_| true)).unwrap();
    let after = pollster::block_on(trainer.evaluate())
        .unwrap()
        .unwrap()
        .loss();
    assert!(after < before, "{after} >= {before}");

    // The base is bit-identical; the adapters moved.
    let trained = trainer.policy();
    let base = pollster::block_on(export_weights(&lora::strip(trained.clone())))
        .unwrap()
        .to_bytes()
        .unwrap();
    assert!(base == original, "a base weight changed");
    let b_norm: f32 = pollster::block_on(peft::export(&trained, &settings, Family::Llama, "base"))
        .unwrap()
        .files
        .into_iter()
        .find(|(n, _)| n == "adapter_model.safetensors")
        .map(|(_, bytes)| {
            let src =
                SafetensorsSource::new("a", vec![("a".into(), FileBytes::Owned(bytes))]).unwrap();
            let names: Vec<String> = src.names().map(str::to_string).collect();
            names
                .iter()
                .filter(|n| n.contains("lora_B"))
                .map(|n| {
                    src.read(n)
                        .unwrap()
                        .data
                        .iter()
                        .map(|v| v.abs())
                        .sum::<f32>()
                })
                .sum()
        })
        .unwrap();
    assert!(b_norm > 0.0, "lora_B stayed zero");
}

fn dpo(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} != {}",
        a.display(),
        b.display()
    );
}

#[test]
fn resuming_a_checkpoint_reproduces_the_uninterrupted_run() {
    let model = fixtures().join("gpt2/policy");
    let data = fixtures().join("data.jsonl");
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    for (extra, weights) in [
        (&[][..], "model.safetensors"),
        (
            &["--lora-rank", "2", "--lora-targets", "c_attn,c_fc"][..],
            "adapter_model.safetensors",
        ),
    ] {
        let straight = tempfile::tempdir().unwrap();
        let resumed = tempfile::tempdir().unwrap();
        let s = straight.path().to_str().unwrap();
        let common = [
            "train",
            "--model",
            model,
            "--data",
            data,
            "--backend",
            "cpu",
            "--max-steps",
            "4",
            "--batch-size",
            "3",
            "--lr",
            "1e-2",
            "--weight-decay",
            "0.1",
        ];
        let args: Vec<&str> = common
            .iter()
            .copied()
            .chain(["--output", s, "--save-every", "2"])
            .chain(extra.iter().copied())
            .collect();
        dpo(&args);
        let checkpoint = straight.path().join("checkpoint-2");
        assert!(checkpoint.join("trainer_state.json").is_file());
        let c = checkpoint.to_str().unwrap();
        let r = resumed.path().to_str().unwrap();
        let args: Vec<&str> = common
            .iter()
            .copied()
            .chain(["--output", r, "--resume-from", c])
            .chain(extra.iter().copied())
            .collect();
        let out = dpo(&args);
        assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"));
        same_file(
            &straight.path().join(weights),
            &resumed.path().join(weights),
        );
        if weights.starts_with("adapter") {
            // The adapter loads with the base into the same model transformers+PEFT would build.
            let device = cpu();
            let base = load_model(Path::new(model), &device).unwrap().model;
            load_adapter(base, resumed.path(), &device).unwrap();
        }
    }
}

/// The LoRA run of the tests above, on the fixture pairs.
fn lora_fixture_spec(steps: usize, batch_size: usize) -> RunSpec {
    let bundle = load_model(&fixtures().join("llama/policy"), &cpu()).unwrap();
    let data = read_jsonl(&fixtures().join("data.jsonl")).unwrap();
    RunSpec {
        model: Some(bundle),
        rows: Some(data),
        overrides: OptionOverrides {
            learning_rate: Some(1e-2),
            batch_size: Some(batch_size),
            max_steps: Some(steps),
            lr_schedule: Some(LrSchedule::Constant),
            max_length: Some(64),
            seed: Some(0),
            ..OptionOverrides::default()
        },
        lora: Some(LoraRequest {
            rank: 4,
            alpha: Some(8.0),
            targets: Some(vec!["q_proj".into(), "v_proj".into()]),
        }),
        ..RunSpec::new(Task::Dpo)
    }
}

/// The browser keeps checkpoints as bytes (OPFS): decoded from memory, they resume to the same
/// next step as the uninterrupted run.
#[test]
fn a_checkpoint_in_memory_resumes_to_the_same_next_step() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let mut run = Run::new(lora_fixture_spec(4, 2), &selected).unwrap();
    for _ in 0..2 {
        pollster::block_on(run.trainer.step()).unwrap();
    }
    let files = pollster::block_on(run.checkpoint_files()).unwrap();
    let uninterrupted = pollster::block_on(run.trainer.step()).unwrap();

    let saved = dpo_wgpu::train::checkpoint::from_files("saved", files.files).unwrap();
    let resumed_spec = RunSpec {
        resume: Some(saved),
        ..lora_fixture_spec(4, 2)
    };
    let mut resumed = Run::new(resumed_spec, &selected).unwrap();
    assert_eq!(resumed.trainer.steps_done(), 2);
    let next = pollster::block_on(resumed.trainer.step()).unwrap();
    assert_eq!(next.step, uninterrupted.step);
    assert_eq!(
        next.metrics.loss().to_bits(),
        uninterrupted.metrics.loss().to_bits(),
        "resumed {} vs uninterrupted {}",
        next.metrics.loss(),
        uninterrupted.metrics.loss()
    );
}

/// A new round (teach-it-yourself in the page) starts from the current model, which is its
/// reference: its first loss is ln 2 however far the first round moved, the adapters keep
/// their trained values, and training on the round's pairs raises their margin.
#[test]
fn a_new_round_starts_from_the_current_model_as_its_reference() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let mut run = Run::new(lora_fixture_spec(3, 2), &selected).unwrap();
    pollster::block_on(run.trainer.run(|_| true)).unwrap();
    let trained = pollster::block_on(run.model_files_merged(true)).unwrap();

    let rows = read_jsonl(&fixtures().join("data.jsonl")).unwrap();
    let overrides = OptionOverrides {
        max_steps: Some(4),
        ..OptionOverrides::default()
    };
    let mut spec = pollster::block_on(run.next_round(rows.clone(), overrides)).unwrap();
    spec.eval_rows = Some(rows);
    let mut round = Run::new(spec, &selected).unwrap();
    assert_eq!(round.trainer.steps_done(), 0);
    assert_eq!(round.trainer.total_steps(), 4);
    assert_eq!(
        round.summary.lora, run.summary.lora,
        "the adapters carry on"
    );
    let start = pollster::block_on(round.model_files_merged(true)).unwrap();
    assert!(
        start.files == trained.files,
        "the round starts from the trained model"
    );
    let first = pollster::block_on(round.trainer.step()).unwrap();
    assert_close(
        "policy = reference at the round's start",
        first.metrics.loss(),
        std::f64::consts::LN_2,
        1e-6,
        0.0,
    );
    for _ in 1..4 {
        pollster::block_on(round.trainer.step()).unwrap();
    }
    let after = pollster::block_on(round.trainer.evaluate()).unwrap();
    let margin = match after {
        Some(Metrics::Dpo(m)) => m.rewards_margins,
        other => panic!("not DPO metrics: {other:?}"),
    };
    assert!(margin > 0.0, "the round's margin on its pairs is {margin}");
}

/// Pairs with nothing to score (an empty prompt: a completion's lone first token has no position
/// predicting it, so TRL scores none of it) train as in TRL: loss ln 2, zero gradients, no panic
/// (a backward pass once found no graph here). Full fine-tuning and LoRA.
#[test]
fn a_batch_with_nothing_to_score_takes_a_step() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let rows = dpo_wgpu::text::rows::Jsonl::from_bytes(
        "empty.jsonl",
        b"{\"prompt\": \"\", \"chosen\": \"\", \"rejected\": \"\"}\n".repeat(2),
    )
    .unwrap();
    for lora in [false, true] {
        let spec = RunSpec {
            rows: Some(rows.clone()),
            lora: if lora {
                lora_fixture_spec(1, 2).lora
            } else {
                None
            },
            ..lora_fixture_spec(1, 2)
        };
        let mut run = Run::new(spec, &selected).unwrap();
        let report = pollster::block_on(run.trainer.step()).unwrap();
        assert!(
            (report.metrics.loss() - std::f64::consts::LN_2).abs() < 1e-6,
            "LoRA {lora}: loss {}",
            report.metrics.loss()
        );
        assert_eq!(report.grad_norm, 0.0, "LoRA {lora}");
        // Nothing was scored: a sum of no log-probs (a scored EOS would be negative).
        let dpo = report.metrics.dpo().expect("DPO metrics");
        assert_eq!(
            (dpo.logps_chosen, dpo.logps_rejected),
            (0.0, 0.0),
            "LoRA {lora}"
        );
    }
}
