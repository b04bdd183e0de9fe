//! Every preference loss of TRL's `DPOTrainer` against TRL itself
//! (`tests/fixtures/make_loss_fixtures.py`): `evaluate()` metrics for each loss configuration on
//! the tiny GPT-2 and Llama (policy != reference), and one SGD step for some of them.

mod common;

use common::{assert_close, devices, fixtures, worst_weight_difference};
use dpo_wgpu::io::native::files::{load_model, read_pairs};
use dpo_wgpu::text::tokenize::tokenize_split_pairs;
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
    common::fixture_dpo_trainer(family, options, device)
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

/// Our evaluation against TRL's `eval_` metrics; returns the loss's and the worst relative error.
fn eval_as_trl(what: &str, trainer: &mut Trainer, theirs: &Value) -> (f64, f64) {
    let ours = pollster::block_on(trainer.evaluate()).unwrap().unwrap();
    let ours = serde_json::to_value(ours).unwrap();
    let (mut worst, mut loss_error): (f64, f64) = (0.0, 0.0);
    for (key, value) in ours.as_object().unwrap() {
        let trl = theirs[format!("eval_{key}")]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: TRL has no eval_{key}"));
        let got = value.as_f64().unwrap();
        assert_close(&format!("{what} {key}"), got, trl, REL, 1e-6);
        let error = (got - trl).abs() / trl.abs().max(1e-6);
        worst = worst.max(error);
        if key == "loss" {
            loss_error = error;
        }
    }
    // Every metric TRL logs is ours too (but the run's counters: time, epoch, tokens seen).
    for key in theirs.as_object().unwrap().keys() {
        let key = key.trim_start_matches("eval_");
        if !["model_preparation_time", "epoch", "num_tokens"].contains(&key) {
            assert!(ours.get(key).is_some(), "{what}: no {key}");
        }
    }
    (loss_error, worst)
}

/// `options` for one SGD step over all 8 pairs, clipping off (as the fixtures' TRL step).
fn sgd_step_options(exp: &Value, options: TrainOptions) -> TrainOptions {
    TrainOptions {
        optimizer: OptimizerKind::Sgd,
        learning_rate: exp["sgd_lr"].as_f64().unwrap(),
        batch_size: 8,
        max_steps: Some(1),
        max_grad_norm: 0.0,
        lr_schedule: LrSchedule::Constant,
        weight_decay: 0.0,
        ..options
    }
}

/// One step of `trainer` against TRL's (`step`: loss and grad norm; the weights after it in
/// `losses/<weights>.safetensors`); returns the worst weight difference.
fn step_as_trl(what: &str, mut trainer: Trainer, step: &Value, weights: &str) -> f64 {
    let report = pollster::block_on(trainer.step()).unwrap();
    let expect = |key: &str| step[key].as_f64().unwrap();
    assert_close(
        &format!("{what} loss"),
        report.metrics.loss(),
        expect("loss"),
        REL,
        1e-7,
    );
    let norm = report.grad_norm;
    assert_close(
        &format!("{what} grad norm"),
        norm,
        expect("grad_norm"),
        REL,
        1e-7,
    );
    let path = fixtures()
        .join("losses")
        .join(format!("{weights}.safetensors"));
    let worst = worst_weight_difference(&trainer.policy(), &path);
    assert!(worst < 1e-5, "{what}: weights differ by {worst}");
    worst
}

#[test]
fn every_loss_evaluates_as_trl() {
    let exp = expected();
    let mut table = Vec::new();
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            for (name, config) in exp["configs"].as_object().unwrap() {
                let mut trainer = trainer(family, options(config, base(&exp)), &device);
                let what = format!("{backend} {family} {name}");
                let (loss_error, worst) =
                    eval_as_trl(&what, &mut trainer, &exp["eval"][family][name]);
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
                let options = sgd_step_options(&exp, options(&exp["configs"][name], base(&exp)));
                let trainer = trainer(family, options, &device);
                let what = format!("{backend} {family} {name} sgd");
                let worst = step_as_trl(&what, trainer, step, &format!("{family}-{name}"));
                eprintln!("{what}: worst weight difference {worst:.2e}");
            }
        }
    }
}

fn reference_free_expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("losses/reference_free.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// SimPO/ORPO settings as our options.
fn reference_free_options(name: &str, config: &Value, base: TrainOptions) -> TrainOptions {
    let mut o = base;
    let method = if config["trainer"] == "orpo" {
        "orpo"
    } else {
        "simpo"
    };
    OptionOverrides {
        loss: Some(vec![method.parse().unwrap()]),
        simpo_gamma: config.get("simpo_gamma").and_then(Value::as_f64),
        label_smoothing: config.get("label_smoothing").and_then(Value::as_f64),
        ..OptionOverrides::default()
    }
    .apply(&mut o)
    .unwrap();
    o.validate(dpo_wgpu::train::options::Task::Dpo)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    o
}

fn reference_free_trainer(
    family: &str,
    options: TrainOptions,
    device: &burn::tensor::Device,
) -> Trainer {
    let policy = load_model(&fixtures().join(family).join("policy"), device).unwrap();
    let rows = read_pairs(&fixtures().join("data.jsonl")).unwrap();
    let pairs = tokenize_split_pairs(&rows, &policy.tokenizer, options.max_length)
        .unwrap()
        .rows;
    Trainer::new(
        policy.model,
        TaskData::ReferenceFree {
            train: pairs.clone(),
            eval: pairs,
        },
        policy.tokenizer.pad_id,
        options,
        device,
    )
    .unwrap()
}

#[test]
fn reference_free_tokenization_is_trls() {
    let exp = reference_free_expected();
    let bundle = load_model(&fixtures().join("gpt2").join("policy"), &devices()[0].1).unwrap();
    let rows = read_pairs(&fixtures().join("data.jsonl")).unwrap();
    let ours = tokenize_split_pairs(&rows, &bundle.tokenizer, Some(64)).unwrap();
    assert_eq!(ours.dropped, 0);
    let theirs = exp["tokens"].as_array().unwrap();
    assert_eq!(ours.rows.len(), theirs.len());
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as u32)
            .collect()
    };
    let mut split_differs = 0;
    for (i, (pair, trl)) in ours.rows.iter().zip(theirs).enumerate() {
        for (answer, key) in [(&pair.chosen, "chosen"), (&pair.rejected, "rejected")] {
            let full: Vec<u32> = answer
                .prompt_ids
                .iter()
                .chain(&answer.completion_ids)
                .copied()
                .collect();
            assert_eq!(
                full,
                ids(&trl[format!("{key}_input_ids")]),
                "pair {i} {key}"
            );
            let labels = trl[format!("{key}_labels")].as_array().unwrap();
            let masked = labels.iter().filter(|l| l.as_i64() == Some(-100)).count();
            assert_eq!(
                answer.prompt_ids.len(),
                masked,
                "pair {i} {key} prompt split"
            );
        }
        split_differs += usize::from(pair.chosen.prompt_ids != pair.rejected.prompt_ids);
    }
    // The fixture has a pair whose answers merge differently with the prompt's last token.
    assert!(split_differs > 0);
}

#[test]
fn simpo_and_orpo_evaluate_and_step_as_trl() {
    let exp = reference_free_expected();
    let mut table = Vec::new();
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            for (name, config) in exp["configs"].as_object().unwrap() {
                let options = reference_free_options(name, config, base(&exp));
                let mut trainer = reference_free_trainer(family, options.clone(), &device);
                let what = format!("{backend} {family} {name}");
                let (_, worst) = eval_as_trl(&what, &mut trainer, &exp["eval"][family][name]);
                let step = &exp["sgd_step"][family][name];
                let trainer =
                    reference_free_trainer(family, sgd_step_options(&exp, options), &device);
                let what = format!("{backend} {family} {name} sgd");
                let weights = step_as_trl(&what, trainer, step, &format!("{family}-{name}"));
                table.push(format!(
                    "{backend:<5} {family:<6} {name:<13} eval {worst:.1e}  step weights {weights:.1e}"
                ));
            }
        }
    }
    eprintln!(
        "reference-free methods vs TRL (worst relative eval error, worst weight difference after one SGD step)\n{}",
        table.join("\n")
    );
}
