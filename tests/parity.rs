//! Numbers checked against TRL / transformers (fixtures made by tests/fixtures/make_fixtures.py):
//! logits, tokenization, `DPOTrainer.evaluate()` metrics, one SGD step and two AdamW steps.
//! Each check runs on the CPU backend and, when an adapter exists, on wgpu.

mod common;

use burn::tensor::Device;
use common::{assert_close, assert_pair_ids, devices, fixtures, ids};
use dpo_wgpu::io::bundle::{ModelBundle, export_weights};
use dpo_wgpu::io::native::files::{load_model, read_pairs};
use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
use dpo_wgpu::model::weights::WeightSource;
use dpo_wgpu::text::tokenize::{TokenizedPair, tokenize_pairs};
use dpo_wgpu::train::dpo::DpoMetrics;
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::TrainOptions;
use dpo_wgpu::train::trainer::{TaskData, Trainer};
use serde_json::Value;

const FAMILIES: [&str; 2] = ["gpt2", "llama"];
/// The bar for logits and metrics.
const REL: f64 = 1e-4;

fn expected(family: &str) -> Value {
    let path = fixtures().join(family).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(family: &str, which: &str, device: &Device) -> ModelBundle {
    load_model(&fixtures().join(family).join(which), device).unwrap()
}

fn tokenized(bundle: &ModelBundle, max_length: usize) -> (Vec<TokenizedPair>, usize) {
    let rows = read_pairs(&fixtures().join("data.jsonl")).unwrap();
    let set = tokenize_pairs(&rows, &bundle.tokenizer, Some(max_length)).unwrap();
    (set.rows, set.dropped)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// Compare our metrics with a TRL dict whose keys carry `prefix` (`eval_` or none).
fn assert_metrics(what: &str, ours: &DpoMetrics, trl: &Value, prefix: &str) {
    let ours = serde_json::to_value(ours).unwrap();
    for (key, value) in ours.as_object().unwrap() {
        let expected = trl
            .get(format!("{prefix}{key}"))
            .unwrap_or_else(|| panic!("{what}: TRL has no {prefix}{key}"));
        // logits/* are means of ~0 over the vocabulary: a relative bar on a tiny number is
        // meaningless, so they get an absolute floor of 1e-6 (still far below one logit's scale).
        assert_close(&format!("{what} {key}"), f(value), f(expected), REL, 1e-6);
    }
}

fn options(max_length: usize) -> TrainOptions {
    TrainOptions {
        beta: 0.1,
        max_length: Some(max_length),
        eval_batch_size: 3,
        shuffle: false,
        ..TrainOptions::default()
    }
}

#[test]
fn tokenization_matches_trl() {
    let device = common::cpu();
    for family in FAMILIES {
        let exp = expected(family);
        let bundle = load(family, "policy", &device);
        let (pairs, dropped) = tokenized(&bundle, 64);
        assert_eq!(dropped, 0);
        let trl = exp["tokenized"].as_array().unwrap();
        assert_eq!(pairs.len(), trl.len());
        for (i, (ours, theirs)) in pairs.iter().zip(trl).enumerate() {
            assert_pair_ids(&format!("{family} pair {i}"), ours, theirs);
        }
        // The fixture has pairs whose BPE merges across the prompt/completion boundary.
        assert!(!exp["boundary_merge_pairs"].as_array().unwrap().is_empty());

        let truncated = &exp["eval_truncated"];
        let (kept, dropped) =
            tokenized(&bundle, truncated["max_length"].as_u64().unwrap() as usize);
        assert_eq!(kept.len() as u64, truncated["num_pairs"].as_u64().unwrap());
        assert_eq!(dropped, 8 - kept.len());
    }
}

#[test]
fn logits_match_transformers() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let bundle = load(family, "policy", &device);
            let input = ids(&exp["logits"]["input_ids"]);
            let input_i32: Vec<i32> = input.iter().map(|&x| x as i32).collect();
            let logits = bundle
                .model
                .logits(&input_i32, 1, input.len(), &device)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            let rows = exp["logits"]["values"].as_array().unwrap();
            let vocab = bundle.model.vocab_size();
            let mut worst: f64 = 0.0;
            for (t, row) in rows.iter().enumerate() {
                for (v, value) in row.as_array().unwrap().iter().enumerate() {
                    let ours = logits[t * vocab + v] as f64;
                    let theirs = f(value);
                    worst = worst.max((ours - theirs).abs() / theirs.abs().max(1.0));
                    assert_close(
                        &format!("{backend} {family} logit[{t},{v}]"),
                        ours,
                        theirs,
                        REL,
                        1e-5,
                    );
                }
            }
            eprintln!("{backend} {family}: worst logit error {worst:.2e} (relative, floor 1)");
        }
    }
}

#[test]
fn evaluate_matches_trl() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            for (label, max_length, trl) in [
                ("eval", 64, &exp["eval"]),
                (
                    "eval_truncated",
                    exp["eval_truncated"]["max_length"].as_u64().unwrap() as usize,
                    &exp["eval_truncated"]["metrics"],
                ),
            ] {
                let policy = load(family, "policy", &device);
                let reference = load(family, "reference", &device).model;
                let (pairs, _) = tokenized(&policy, max_length);
                let mut trainer = Trainer::new(
                    policy.model,
                    TaskData::Dpo {
                        train: pairs.clone(),
                        eval: pairs,
                        reference,
                    },
                    policy.tokenizer.pad_id,
                    options(max_length),
                    &device,
                )
                .unwrap();
                let metrics = pollster::block_on(trainer.evaluate()).unwrap().unwrap();
                assert_metrics(
                    &format!("{backend} {family} {label}"),
                    metrics.dpo().unwrap(),
                    trl,
                    "eval_",
                );
            }
        }
    }
}

/// Our weights after training vs the safetensors TRL saved; returns the largest difference.
fn assert_weights(
    what: &str,
    trainer: &Trainer,
    path: &std::path::Path,
    abs: f64,
    skip: &Value,
) -> f64 {
    let theirs = SafetensorsSource::new(
        path.display().to_string(),
        vec![(path.display().to_string(), FileBytes::map(path).unwrap())],
    )
    .unwrap();
    let ours = pollster::block_on(export_weights(&trainer.policy())).unwrap();
    assert_eq!(ours.len(), theirs.names().count(), "{what}: tensor count");
    let ours = SafetensorsSource::new(
        "ours",
        vec![(
            "ours".to_string(),
            FileBytes::Owned(ours.to_bytes().unwrap()),
        )],
    )
    .unwrap();
    let skipped = |name: &str, i: usize| -> bool {
        let Some(tensors) = skip.get("tensors").and_then(Value::as_array) else {
            return false;
        };
        let range = skip["slice"].as_array().unwrap();
        let (lo, hi) = (
            range[0].as_u64().unwrap() as usize,
            range[1].as_u64().unwrap() as usize,
        );
        tensors.iter().any(|t| t.as_str() == Some(name)) && (lo..hi).contains(&i)
    };
    let mut worst: f64 = 0.0;
    for name in theirs.names() {
        let a = ours.read(name).unwrap();
        let b = theirs.read(name).unwrap();
        assert_eq!(a.shape, b.shape, "{what}: {name} shape");
        for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
            if skipped(name, i) {
                continue;
            }
            let err = (*x as f64 - *y as f64).abs();
            worst = worst.max(err);
            assert!(
                err <= abs,
                "{what}: {name}[{i}] = {x}, TRL {y} (|diff| {err:.2e} > {abs:.0e})"
            );
        }
    }
    worst
}

#[test]
fn one_sgd_step_matches_trl() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let sgd = &exp["sgd_step"];
            let policy = load(family, "policy", &device);
            let reference = load(family, "reference", &device).model;
            let (pairs, _) = tokenized(&policy, 64);
            let mut trainer = Trainer::new(
                policy.model,
                TaskData::Dpo {
                    train: pairs,
                    eval: Vec::new(),
                    reference,
                },
                policy.tokenizer.pad_id,
                TrainOptions {
                    optimizer: OptimizerKind::Sgd,
                    learning_rate: f(&sgd["lr"]),
                    batch_size: 8,
                    max_steps: Some(1),
                    max_grad_norm: f(&sgd["max_grad_norm"]),
                    lr_schedule: LrSchedule::Constant,
                    weight_decay: 0.0,
                    ..options(64)
                },
                &device,
            )
            .unwrap();
            let report = pollster::block_on(trainer.step()).unwrap();
            let what = format!("{backend} {family} sgd");
            assert_metrics(&what, report.metrics.dpo().unwrap(), &sgd["log"], "");
            assert_close(
                &format!("{what} grad_norm"),
                report.grad_norm,
                f(&sgd["grad_norm"]),
                REL,
                0.0,
            );
            let worst = assert_weights(
                &what,
                &trainer,
                &fixtures().join(family).join("after_sgd.safetensors"),
                1e-5,
                &Value::Null,
            );
            eprintln!("{what}: worst weight difference {worst:.2e}");
        }
    }
}

#[test]
fn two_adamw_steps_match_trl() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let adamw = &exp["adamw_steps"];
            let policy = load(family, "policy", &device);
            let reference = load(family, "reference", &device).model;
            let (pairs, _) = tokenized(&policy, 64);
            let mut trainer = Trainer::new(
                policy.model,
                TaskData::Dpo {
                    train: pairs,
                    eval: Vec::new(),
                    reference,
                },
                policy.tokenizer.pad_id,
                TrainOptions {
                    optimizer: OptimizerKind::AdamW,
                    learning_rate: f(&adamw["lr"]),
                    batch_size: 4,
                    max_steps: Some(2),
                    max_grad_norm: f(&adamw["max_grad_norm"]),
                    weight_decay: f(&adamw["weight_decay"]),
                    lr_schedule: LrSchedule::Constant,
                    ..options(64)
                },
                &device,
            )
            .unwrap();
            for (step, log) in adamw["log"].as_array().unwrap().iter().enumerate() {
                let report = pollster::block_on(trainer.step()).unwrap();
                let what = format!("{backend} {family} adamw step {}", step + 1);
                assert_metrics(&what, report.metrics.dpo().unwrap(), log, "");
                assert_close(
                    &format!("{what} grad_norm"),
                    report.grad_norm,
                    f(&log["grad_norm"]),
                    REL,
                    0.0,
                );
            }
            // Adam divides by sqrt(v): round-off in near-zero gradients moves weights by up to
            // ~lr. TRL itself differs from a plain-PyTorch replay by 3e-5 here; 1e-4 = 1% of lr.
            let worst = assert_weights(
                &format!("{backend} {family} adamw"),
                &trainer,
                &fixtures().join(family).join("after_adamw.safetensors"),
                1e-4,
                &adamw["noise_dominated"],
            );
            eprintln!("{backend} {family} adamw: worst weight difference {worst:.2e}");
        }
    }
}

#[test]
fn export_round_trips_checkpoint_tensors_exactly() {
    let device = common::cpu();
    for family in FAMILIES {
        let bundle = load(family, "policy", &device);
        let dir = fixtures().join(family).join("policy");
        let original = dpo_wgpu::io::native::files::weights_in(&dir).unwrap();
        let exported = pollster::block_on(export_weights(&bundle.model)).unwrap();
        let exported = SafetensorsSource::new(
            "exported",
            vec![(
                "exported".into(),
                FileBytes::Owned(exported.to_bytes().unwrap()),
            )],
        )
        .unwrap();
        let mut names: Vec<&str> = original.names().collect();
        names.sort_unstable();
        let mut ours: Vec<&str> = exported.names().collect();
        ours.sort_unstable();
        assert_eq!(
            names, ours,
            "{family}: same tensor names as transformers saves"
        );
        for name in names {
            let a = original.read(name).unwrap();
            let b = exported.read(name).unwrap();
            assert_eq!(a.shape, b.shape, "{family} {name}");
            assert_eq!(a.data, b.data, "{family} {name}: bit-exact round trip");
        }
    }
}
