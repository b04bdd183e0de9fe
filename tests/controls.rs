//! Training controls: gradient accumulation gives the update of the whole batch.

mod common;

use common::{devices, worst_weight_difference};
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::TrainOptions;
use dpo_wgpu::train::trainer::Trainer;

/// Train to the end; the loss and gradient norm of each step.
fn train(trainer: &mut Trainer) -> Vec<(f64, f64)> {
    let mut steps = Vec::new();
    while !trainer.is_done() {
        let report = pollster::block_on(trainer.step()).unwrap();
        steps.push((report.metrics.loss(), report.grad_norm));
    }
    steps
}

#[test]
fn accumulated_micro_batches_give_the_whole_batch_update() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, device) in devices() {
        for optimizer in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
            let options = |batch_size, accumulation| TrainOptions {
                optimizer,
                learning_rate: if optimizer == OptimizerKind::Sgd {
                    0.5
                } else {
                    1e-2
                },
                batch_size,
                gradient_accumulation_steps: accumulation,
                epochs: 2,
                max_length: Some(64),
                lr_schedule: LrSchedule::Linear,
                shuffle: true,
                weight_decay: 0.1,
                ..TrainOptions::default()
            };
            // One step per epoch over all 8 pairs, as one batch and as micro-batches, the
            // uneven 3 + 3 + 2 included (each weighted by its share of the step).
            let mut whole = common::fixture_dpo_trainer("gpt2", options(8, 1), &device);
            let whole_losses = train(&mut whole);
            assert_eq!(whole_losses.len(), 2);
            let path = dir.path().join("whole.safetensors");
            let weights =
                pollster::block_on(dpo_wgpu::io::bundle::export_weights(&whole.policy())).unwrap();
            std::fs::write(&path, weights.to_bytes().unwrap()).unwrap();
            for (batch, accumulation) in [(2, 4), (3, 3), (4, 2)] {
                let what = format!("{backend} {optimizer:?} {batch}×{accumulation}");
                let mut micro =
                    common::fixture_dpo_trainer("gpt2", options(batch, accumulation), &device);
                assert_eq!(micro.total_steps(), 2, "{what}: steps");
                let losses = train(&mut micro);
                for ((loss, norm), (whole_loss, whole_norm)) in losses.iter().zip(&whole_losses) {
                    // The step's loss is the mean over its pairs either way.
                    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
                    assert!(
                        close(*loss, *whole_loss),
                        "{what}: loss {loss} vs {whole_loss}"
                    );
                    assert!(
                        close(*norm, *whole_norm),
                        "{what}: grad norm {norm} vs {whole_norm}"
                    );
                }
                let worst = worst_weight_difference(&micro.policy(), &path);
                eprintln!("{what}: worst weight difference to one batch of 8: {worst:.1e}");
                // SGD's update is linear in the gradient: only summation order differs. Adam
                // divides by √v, which turns round-off in gradients near zero into visible
                // weight differences (up to ~0.2 lr here), so there the losses and gradient
                // norms of both steps are the check.
                if optimizer == OptimizerKind::Sgd {
                    assert!(worst < 1e-6, "{what}: {worst}");
                }
            }
        }
    }
}

/// `(step, value)` of every `eval_<metric>` record in a metrics.jsonl.
fn eval_curve(metrics_jsonl: &std::path::Path, metric: &str) -> Vec<(usize, f64)> {
    std::fs::read_to_string(metrics_jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| {
            let value = r.get(format!("eval_{metric}"))?.as_f64()?;
            Some((r["step"].as_u64().unwrap() as usize, value))
        })
        .collect()
}

#[test]
fn early_stopping_stops_where_the_validation_curve_says_and_keeps_the_best_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let bin = env!("CARGO_BIN_EXE_dpo-wgpu");
    let patience = 2;
    // The demo with a high learning rate: its validation loss falls, then rises.
    let run = std::process::Command::new(bin)
        .args([
            "train",
            "--backend",
            "cpu",
            "--eval-every",
            "4",
            "--lr",
            "0.03",
        ])
        .args(["--early-stopping-patience", &patience.to_string()])
        .args(["--max-steps", "120", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let curve = eval_curve(&out.join("metrics.jsonl"), "loss");
    // Replay the rule on the evaluations during training (step 0 is the starting model).
    let during: Vec<(usize, f64)> = curve[1..].to_vec();
    let (mut best, mut since, mut stop) = ((0, f64::INFINITY), 0, None);
    for &(step, loss) in &during {
        if loss < best.1 {
            (best, since) = ((step, loss), 0);
        } else {
            since += 1;
        }
        if since >= patience {
            stop = Some(step);
            break;
        }
    }
    let stop = stop.expect("the curve turns up within 120 steps at this learning rate");
    assert!(
        stderr.contains(&format!("early stopping after step {stop}"))
            && stderr.contains(&format!("keeping the model of step {}", best.0)),
        "stop {stop}, best {best:?}:\n{stderr}"
    );
    // The exported model is the best one: evaluating it gives the best step's loss.
    let eval_data = dir.path().join("eval.jsonl");
    let (_, eval_pairs) = dpo_wgpu::train::demo::pairs(42, 1024, 128);
    let lines: Vec<String> = eval_pairs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(&eval_data, lines.join("\n")).unwrap();
    let eval = std::process::Command::new(bin)
        .args([
            "eval",
            "--backend",
            "cpu",
            "--json",
            "--max-length",
            "32",
            "--batch-size",
            "64",
        ])
        .arg("--model")
        .arg(&out)
        .arg("--data")
        .arg(&eval_data)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    // `eval` compares the model with itself (no --ref-model), so its rewards are 0: the policy's
    // own log-probs identify it.
    for key in ["logps/chosen", "logps/rejected"] {
        let theirs = eval_curve(&out.join("metrics.jsonl"), key)
            .into_iter()
            .find(|&(step, _)| step == best.0)
            .unwrap()
            .1;
        let ours = metrics[key].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 1e-5 * theirs.abs(),
            "exported model's {key} {ours}, best step {}'s {theirs}",
            best.0
        );
    }
}

#[test]
fn the_test_report_evaluates_the_starting_and_the_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = common::fixtures().join("data.jsonl");
    let model = common::fixtures().join("gpt2/policy");
    // The same file as eval and test data: the test records must equal the evaluations before
    // and after training.
    let test_data = data.display().to_string();
    let (stderr, records) = train_on_fixture_pairs(
        &model,
        &out,
        true,
        &[
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--test-data",
            &test_data,
        ],
    );
    assert!(stderr.contains("test set: metric"), "{stderr}");
    let with = |prefix: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r.get(format!("{prefix}_loss")).is_some())
            .collect()
    };
    let (evals, tests) = (with("eval"), with("test"));
    assert_eq!(tests.len(), 2, "before and after");
    for (eval, test) in [(evals[0], tests[0]), (evals[evals.len() - 1], tests[1])] {
        assert_eq!(eval["step"], test["step"]);
        assert_eq!(eval["eval_loss"], test["test_loss"]);
        assert_eq!(eval["eval_rewards/margins"], test["test_rewards/margins"]);
    }
    assert_ne!(
        tests[0]["test_loss"], tests[1]["test_loss"],
        "training changed the model"
    );
    // The curves are drawn beside metrics.jsonl, with labelled axes.
    let svg = std::fs::read_to_string(out.join("metrics.svg")).unwrap();
    for text in [
        "<svg",
        "loss",
        "reward accuracy",
        "reward margin",
        "step",
        "evaluation",
    ] {
        assert!(svg.contains(text), "metrics.svg has no {text:?}");
    }
    assert!(
        svg.matches("<polyline").count() >= 3,
        "a training curve per panel"
    );
}

#[test]
fn a_terminal_gets_a_progress_bar_with_eta_and_metrics() {
    // `script` (util-linux, part of every Debian) gives the run a terminal.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let command = format!(
        "{} train --backend cpu --max-steps 6 --output {}",
        env!("CARGO_BIN_EXE_dpo-wgpu"),
        out.display()
    );
    let run = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .expect("util-linux's script");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}");
    assert!(text.contains("6/6 steps"), "no progress bar in:\n{text}");
    assert!(text.contains("loss") && text.contains("acc"), "{text}");
    assert!(
        !text.contains("step    1/6 |"),
        "no per-step lines under a bar:\n{text}"
    );
}

/// Names of the tensors of `a` that differ from `b` (both `model.safetensors` files).
fn changed_tensors(a: &std::path::Path, b: &std::path::Path) -> Vec<String> {
    use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
    use dpo_wgpu::model::weights::WeightSource;
    let open = |p: &std::path::Path| {
        SafetensorsSource::new("w", vec![("w".into(), FileBytes::map(p).unwrap())]).unwrap()
    };
    let (a, b) = (open(a), open(b));
    let mut names: Vec<String> = a
        .names()
        .into_iter()
        .filter(|n| a.read(n).unwrap().data != b.read(n).unwrap().data)
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn trainable_layers_freezes_everything_below_the_top_blocks() {
    let dir = tempfile::tempdir().unwrap();
    for (family, expected) in [
        // Llama (untied head): the top layer, the final norm and the head.
        ("llama", vec!["lm_head.", "model.layers.1.", "model.norm."]),
        // GPT-2's head is its token embedding, so that trains too; positions stay frozen.
        ("gpt2", vec!["h.1.", "ln_f.", "wte."]),
    ] {
        let model = common::fixtures().join(family).join("policy");
        let out = dir.path().join(family);
        let args = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-2"];
        train_on_fixture_pairs(
            &model,
            &out,
            false,
            &[&args[..], &["--trainable-layers", "1"]].concat(),
        );
        let changed = changed_tensors(
            &out.join("model.safetensors"),
            &model.join("model.safetensors"),
        );
        assert!(!changed.is_empty(), "{family}: nothing trained");
        for name in &changed {
            assert!(
                expected.iter().any(|p| name.contains(p)),
                "{family}: {name} changed though frozen ({changed:?})"
            );
        }
        for prefix in &expected {
            assert!(
                changed.iter().any(|n| n.contains(prefix)),
                "{family}: nothing under {prefix} trained ({changed:?})"
            );
        }
    }
}

#[test]
fn sgd_momentum_adam_settings_and_tr_dpo_step_as_trl() {
    use dpo_wgpu::train::optim::OptimizerSettings;
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("optimizers/expected.json")).unwrap(),
    )
    .unwrap();
    for (backend, device) in devices() {
        for family in ["gpt2", "llama"] {
            for (name, config) in exp["configs"].as_object().unwrap() {
                let get = |k: &str| config[k].as_f64();
                let sgd = config["optim"] == "sgd";
                let defaults = OptimizerSettings::default();
                let options = TrainOptions {
                    optimizer: if sgd {
                        OptimizerKind::Sgd
                    } else {
                        OptimizerKind::AdamW
                    },
                    learning_rate: get("learning_rate").unwrap(),
                    weight_decay: get("weight_decay").unwrap(),
                    optimizer_settings: OptimizerSettings {
                        adam_beta1: get("adam_beta1").unwrap_or(defaults.adam_beta1),
                        adam_beta2: get("adam_beta2").unwrap_or(defaults.adam_beta2),
                        adam_epsilon: get("adam_epsilon").unwrap_or(defaults.adam_epsilon),
                        sgd_momentum: config["optim_args"]
                            .as_str()
                            .and_then(|a| a.strip_prefix("momentum="))
                            .map_or(0.0, |m| m.parse().unwrap()),
                        sgd_nesterov: false,
                    },
                    batch_size: 4,
                    max_steps: Some(2),
                    max_grad_norm: 0.0,
                    lr_schedule: LrSchedule::Constant,
                    max_length: Some(64),
                    shuffle: false,
                    sync_ref_model: config["sync_ref_model"].as_bool().unwrap_or(false),
                    ref_model_mixup_alpha: get("ref_model_mixup_alpha").unwrap_or(0.6),
                    ref_model_sync_steps: config["ref_model_sync_steps"].as_u64().unwrap_or(512)
                        as usize,
                    ..TrainOptions::default()
                };
                let mut trainer = common::fixture_dpo_trainer(family, options, &device);
                let what = format!("{backend} {family} {name}");
                for (step, theirs) in train(&mut trainer)
                    .iter()
                    .zip(exp["steps"][family][name].as_array().unwrap())
                {
                    let loss = theirs["loss"].as_f64().unwrap();
                    assert!(
                        (step.0 - loss).abs() <= 1e-5 * loss.abs(),
                        "{what}: {step:?} {theirs}"
                    );
                }
                let path = common::fixtures()
                    .join("optimizers")
                    .join(format!("{family}-{name}.safetensors"));
                let worst = worst_weight_difference(&trainer.policy(), &path);
                eprintln!("{what}: two steps, worst weight difference {worst:.1e}");
                // Adam's step is lr-sized wherever a gradient is non-zero, so round-off near
                // zero gradients shows (as in tests/parity.rs): 1e-4 there, 1e-6 for SGD.
                assert!(worst < if sgd { 1e-6 } else { 1e-4 }, "{what}: {worst}");
            }
        }
    }
}

#[test]
fn a_config_file_sets_flags_the_command_line_overrides_and_run_toml_reproduces_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ndata = {:?}\nbackend = \"cpu\"\nlr = 1e-3\nbatch_size = 4\n\
             max-steps = 3\nloss = [\"sigmoid\", \"sft\"]\nloss-weights = [1.0, 0.5]\n",
            common::fixtures()
                .join("llama/policy")
                .display()
                .to_string(),
            common::fixtures().join("data.jsonl").display().to_string(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_dpo-wgpu");
    let train = |config: &std::path::Path, out: &std::path::Path, extra: &[&str]| {
        let run = std::process::Command::new(bin)
            .arg("train")
            .arg("--config")
            .arg(config)
            .args(extra)
            .arg("--output")
            .arg(out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    };
    let first = dir.path().join("first");
    train(&config, &first, &["--lr", "2e-3"]);
    let effective: toml::Table = std::fs::read_to_string(first.join("run.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(effective["lr"].as_float(), Some(2e-3), "the flag wins");
    assert_eq!(
        effective["batch-size"].as_integer(),
        Some(4),
        "from the file"
    );
    assert_eq!(effective["loss-weights"].as_array().unwrap().len(), 2);
    assert_eq!(
        effective["adam-beta2"].as_float(),
        Some(0.999),
        "defaults are written too"
    );
    // The written settings alone give the same run, bit for bit on the CPU backend.
    let second = dir.path().join("second");
    train(&first.join("run.toml"), &second, &[]);
    assert_eq!(
        std::fs::read(first.join("model.safetensors")).unwrap(),
        std::fs::read(second.join("model.safetensors")).unwrap()
    );
}

#[test]
fn precomputed_reference_log_probs_match_the_live_reference_and_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("llama/policy");
    let train = |out: &str, extra: &[&str]| {
        let args = [
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--eval-every",
            "2",
        ];
        train_on_fixture_pairs(
            &model,
            &dir.path().join(out),
            true,
            &[&args[..], extra].concat(),
        )
    };
    let (first, precomputed) = train("first", &["--precompute-ref-log-probs"]);
    assert!(
        first.contains("saved to") && first.contains("released"),
        "{first}"
    );
    let (_, live) = train("live", &[]);
    // Every loss and reward, step and evaluation, as with the reference model in memory.
    assert_eq!(precomputed.len(), live.len());
    for (a, b) in precomputed.iter().zip(&live) {
        for key in [
            "loss",
            "rewards/margins",
            "eval_loss",
            "eval_rewards/chosen",
        ] {
            if let (Some(x), Some(y)) = (a.get(key), b.get(key)) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
                    "{key}: {x} vs {y}"
                );
            }
        }
    }
    // A second run with the same reference and data reads the file: the same run, bit for bit.
    let (second, reused) = train("second", &["--precompute-ref-log-probs"]);
    assert!(second.contains("read from"), "{second}");
    let strip = |records: &[serde_json::Value]| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("seconds");
                r.to_string()
            })
            .collect()
    };
    assert_eq!(strip(&reused), strip(&precomputed));
    let files: Vec<_> = std::fs::read_dir(dir.path().join("ref-logps"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1, "one file for one reference and data set");
}

#[test]
fn dropout_is_off_unless_asked_seeded_when_on_and_never_touches_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    // The GPT-2 fixture with transformers' default dropout (0.1 everywhere).
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(common::fixtures().join("gpt2/policy")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    for key in ["attn_pdrop", "resid_pdrop", "embd_pdrop"] {
        config[key] = 0.1.into();
    }
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let args = ["--max-steps", "3", "--batch-size", "4", "--lr", "1e-2"];
        let (_, records) = train_on_fixture_pairs(&model, &out, true, &[&args[..], extra].concat());
        (
            std::fs::read(out.join("model.safetensors")).unwrap(),
            records,
        )
    };
    let (off, off_records) = run("off", &[]);
    let (on, on_records) = run("on", &["--dropout"]);
    let (again, _) = run("again", &["--dropout"]);
    assert!(
        off != on,
        "with dropout 0.1 in the config, training must differ"
    );
    assert!(on == again, "dropout masks are seeded");
    // The evaluation before training sees no dropout.
    assert_eq!(off_records[0]["eval_loss"], on_records[0]["eval_loss"]);
    assert_eq!(
        off_records[0]["eval_logps/chosen"],
        on_records[0]["eval_logps/chosen"]
    );
}

/// `dpo-wgpu train --backend cpu --model MODEL --data data.jsonl ARGS --output OUT` on the
/// fixture pairs (also as `--eval-data` when `eval`); fails the test with the run's stderr if
/// the run fails. Returns stderr and the records of `metrics.jsonl`.
fn train_on_fixture_pairs(
    model: &std::path::Path,
    out: &std::path::Path,
    eval: bool,
    args: &[&str],
) -> (String, Vec<serde_json::Value>) {
    let data = common::fixtures().join("data.jsonl");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"));
    command
        .args(["train", "--backend", "cpu", "--model"])
        .arg(model);
    command.arg("--data").arg(&data);
    if eval {
        command.arg("--eval-data").arg(&data);
    }
    let run = command
        .args(args)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let records = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (stderr, records)
}

#[test]
fn a_resumed_run_keeps_early_stoppings_best_model_and_patience() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_dpo-wgpu");
    let args = [
        "train",
        "--backend",
        "cpu",
        "--eval-every",
        "4",
        "--save-every",
        "4",
        "--lr",
        "0.03",
        "--early-stopping-patience",
        "2",
        "--max-steps",
        "120",
    ];
    let whole = dir.path().join("whole");
    let run = std::process::Command::new(bin)
        .args(args)
        .arg("--output")
        .arg(&whole)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let number_after = |text: &str, key: &str| -> usize {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {text}"))
            + key.len();
        text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let stop = number_after(&stderr, "early stopping after step ");
    let best = number_after(&stderr, "keeping the model of step ");
    // Resume from the checkpoint after the best evaluation but before the stop: only the saved
    // state knows the best model then.
    let from = (best + 4..stop)
        .step_by(4)
        .next()
        .expect("a checkpoint between best and stop");
    let resumed = dir.path().join("resumed");
    let run = std::process::Command::new(bin)
        .args(args)
        .arg("--resume-from")
        .arg(whole.join(format!("checkpoint-{from}")))
        .arg("--output")
        .arg(&resumed)
        .output()
        .unwrap();
    let resumed_stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{resumed_stderr}");
    assert_eq!(
        number_after(&resumed_stderr, "early stopping after step "),
        stop
    );
    assert_eq!(
        number_after(&resumed_stderr, "keeping the model of step "),
        best
    );
    assert!(
        std::fs::read(whole.join("model.safetensors")).unwrap()
            == std::fs::read(resumed.join("model.safetensors")).unwrap(),
        "the resumed run exports the same best model"
    );
}

#[test]
fn a_resumed_tr_dpo_run_continues_with_the_synced_reference() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("gpt2/policy");
    let args = [
        "--optimizer",
        "sgd",
        "--lr",
        "0.5",
        "--batch-size",
        "2",
        "--max-steps",
        "6",
        "--sync-ref-model",
        "--ref-model-sync-steps",
        "2",
        "--save-every",
        "3",
    ];
    let whole = dir.path().join("whole");
    train_on_fixture_pairs(&model, &whole, false, &args);
    let checkpoint = whole.join("checkpoint-3").display().to_string();
    let resumed = dir.path().join("resumed");
    train_on_fixture_pairs(
        &model,
        &resumed,
        false,
        &[&args[..], &["--resume-from", &checkpoint]].concat(),
    );
    assert!(
        std::fs::read(whole.join("model.safetensors")).unwrap()
            == std::fs::read(resumed.join("model.safetensors")).unwrap(),
        "resumed at step 3 (after a sync at step 2) != uninterrupted"
    );
}
