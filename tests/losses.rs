//! Every preference loss of TRL's `DPOTrainer` against TRL itself
//! (`tests/fixtures/make_loss_fixtures.py`): `evaluate()` metrics for each loss configuration on
//! the tiny GPT-2 and Llama (policy != reference), and one SGD step for some of them.

mod common;

use common::{assert_close, devices, fixtures, worst_weight_difference};
use dpo_wgpu::io::native::files::{load_model, read_pairs};
use dpo_wgpu::text::tokenize::tokenize_pairs;
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::{OptionOverrides, TrainOptions};
use dpo_wgpu::train::trainer::{TaskData, Trainer};
use serde_json::Value;

const REL: f64 = 1e-4;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("losses/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// TRL's `DPOConfig` settings as our options.
fn options(config: &Value, base: TrainOptions) -> TrainOptions {
    let mut o = base;
    let get = |k: &str| config.get(k).filter(|v| !v.is_null());
    OptionOverrides {
        loss: get("loss_type").map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().parse().unwrap())
                .collect()
        }),
        loss_weights: get("loss_weights").map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .collect()
        }),
        label_smoothing: get("label_smoothing").and_then(Value::as_f64),
        discopop_tau: get("discopop_tau").and_then(Value::as_f64),
        f_divergence_type: get("f_divergence_type").map(|v| v.as_str().unwrap().parse().unwrap()),
        f_alpha_divergence_coef: get("f_alpha_divergence_coef").and_then(Value::as_f64),
        ld_alpha: get("ld_alpha").and_then(Value::as_f64),
        use_weighting: get("use_weighting").and_then(Value::as_bool),
        ..OptionOverrides::default()
    }
    .apply(&mut o)
    .unwrap();
    o.validate(dpo_wgpu::train::options::Task::Dpo).unwrap();
    o
}

fn trainer(family: &str, options: TrainOptions, device: &burn::tensor::Device) -> Trainer {
    let policy = load_model(&fixtures().join(family).join("policy"), device).unwrap();
    let reference = load_model(&fixtures().join(family).join("reference"), device)
        .unwrap()
        .model;
    let rows = read_pairs(&fixtures().join("data.jsonl")).unwrap();
    let pairs = tokenize_pairs(&rows, &policy.tokenizer, options.max_length)
        .unwrap()
        .rows;
    Trainer::new(
        policy.model,
        TaskData::Dpo {
            train: pairs.clone(),
            eval: pairs,
            reference,
        },
        policy.tokenizer.pad_id,
        options,
        device,
    )
    .unwrap()
}

fn base(exp: &Value) -> TrainOptions {
    TrainOptions {
        beta: exp["beta"].as_f64().unwrap(),
        max_length: Some(exp["max_length"].as_u64().unwrap() as usize),
        eval_batch_size: exp["eval_batch_size"].as_u64().unwrap() as usize,
        shuffle: false,
        ..TrainOptions::default()
    }
}

#[test]
fn every_loss_evaluates_as_trl() {
    let exp = expected();
    let mut table = Vec::new();
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            for (name, config) in exp["configs"].as_object().unwrap() {
                let mut trainer = trainer(family, options(config, base(&exp)), &device);
                let ours = pollster::block_on(trainer.evaluate()).unwrap().unwrap();
                let ours = serde_json::to_value(ours).unwrap();
                let theirs = &exp["eval"][family][name];
                let (mut worst, mut loss_error): (f64, f64) = (0.0, 0.0);
                for (key, value) in ours.as_object().unwrap() {
                    let trl = theirs[format!("eval_{key}")]
                        .as_f64()
                        .unwrap_or_else(|| panic!("TRL has no eval_{key}"));
                    let got = value.as_f64().unwrap();
                    assert_close(
                        &format!("{backend} {family} {name} {key}"),
                        got,
                        trl,
                        REL,
                        1e-6,
                    );
                    let error = (got - trl).abs() / trl.abs().max(1e-6);
                    worst = worst.max(error);
                    if key == "loss" {
                        loss_error = error;
                    }
                }
                table.push(format!(
                    "{backend:<5} {family:<6} {name:<17} {loss_error:.1e}  {worst:.1e}"
                ));
            }
        }
    }
    eprintln!(
        "backend family loss  relative error: eval loss, worst eval metric\n{}",
        table.join("\n")
    );
}

#[test]
fn one_sgd_step_matches_trl_for_several_losses() {
    let exp = expected();
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            for (name, step) in exp["sgd_step"][family].as_object().unwrap() {
                let options = TrainOptions {
                    optimizer: OptimizerKind::Sgd,
                    learning_rate: exp["sgd_lr"].as_f64().unwrap(),
                    batch_size: 8,
                    max_steps: Some(1),
                    max_grad_norm: 0.0,
                    lr_schedule: LrSchedule::Constant,
                    weight_decay: 0.0,
                    ..options(&exp["configs"][name], base(&exp))
                };
                let mut trainer = trainer(family, options, &device);
                let report = pollster::block_on(trainer.step()).unwrap();
                let what = format!("{backend} {family} {name} sgd");
                assert_close(
                    &format!("{what} loss"),
                    report.metrics.loss(),
                    step["loss"].as_f64().unwrap(),
                    REL,
                    1e-7,
                );
                assert_close(
                    &format!("{what} grad norm"),
                    report.grad_norm,
                    step["grad_norm"].as_f64().unwrap(),
                    REL,
                    1e-7,
                );
                let path = fixtures()
                    .join("losses")
                    .join(format!("{family}-{name}.safetensors"));
                let worst = worst_weight_difference(&trainer.policy(), &path);
                eprintln!("{what}: worst weight difference {worst:.2e}");
                assert!(worst < 1e-5, "{what}: {worst}");
            }
        }
    }
}
