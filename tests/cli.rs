//! The `dpo-wgpu` command line: the contract scripts rely on, and errors a user can act on.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::fixtures;

fn dpo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_writes_a_loadable_hugging_face_directory() {
    let out = tempfile::tempdir().unwrap();
    let model = fixtures().join("llama/policy");
    let data = fixtures().join("data.jsonl");
    let result = dpo(&[
        "train",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--output",
        path(out.path()),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--backend",
        "cpu",
    ]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.path().join(file).is_file(), "{file} missing");
    }
    // config.json keeps exactly the keys it was loaded with.
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        read(&out.path().join("config.json")),
        read(&model.join("config.json"))
    );
    // One JSON line per step, with TRL's metric names.
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("rewards/accuracies").is_some())
        .collect();
    assert_eq!(steps.len(), 2);
    // The export loads back, and its weights moved away from the start.
    let device = common::cpu();
    let trained = dpo_wgpu::io::native::files::load_model(out.path(), &device).unwrap();
    let start = dpo_wgpu::io::native::files::load_model(&model, &device).unwrap();
    let ids = [1, 2, 3, 4];
    let a = trained
        .model
        .logits(&ids, 1, 4, &device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b = start
        .model
        .logits(&ids, 1, 4, &device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4),
        "training changed nothing"
    );
}

#[test]
fn eval_json_prints_trl_metric_names() {
    let result = dpo(&[
        "eval",
        "--model",
        path(&fixtures().join("gpt2/policy")),
        "--ref-model",
        path(&fixtures().join("gpt2/reference")),
        "--data",
        path(&fixtures().join("data.jsonl")),
        "--batch-size",
        "3",
        "--max-length",
        "64",
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    let metrics: serde_json::Value = serde_json::from_str(text(&result.stdout).trim()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gpt2/expected.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
    ] {
        let ours = metrics[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"));
        let trl = expected["eval"][format!("eval_{key}")].as_f64().unwrap();
        common::assert_close(key, ours, trl, 1e-4, 1e-6);
    }
}

#[test]
fn bad_data_names_file_line_and_field_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\",\"chosen\":3,\"rejected\":\"c\"}\n",
    )
    .unwrap();
    let output = dir.path().join("out");
    let result = dpo(&[
        "train",
        "--model",
        path(&fixtures().join("gpt2/policy")),
        "--data",
        path(&data),
        "--output",
        path(&output),
        "--backend",
        "cpu",
    ]);
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.jsonl:2 (field `chosen`)"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_model_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\", \"vocab_size\": 3}",
    )
    .unwrap();
    let result = dpo(&[
        "eval",
        "--model",
        path(dir.path()),
        "--data",
        path(&fixtures().join("data.jsonl")),
        "--backend",
        "cpu",
    ]);
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("config.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_reaches_high_held_out_accuracy() {
    let out = tempfile::tempdir().unwrap();
    let result = dpo(&[
        "train",
        "--backend",
        "cpu",
        "--output",
        path(out.path()),
        "--log-every",
        "1000",
    ]);
    let stderr = text(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("held-out reward accuracy"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    // "held-out reward accuracy 0.000 -> 1.000, loss ..."
    let after: f64 = line
        .split("-> ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after > 0.9, "{line}");
}

/// `--backend auto` takes a hardware adapter, never a software renderer (llvmpipe, lavapipe,
/// SwiftShader): with only one of those (this project's CI) it runs on the CPU backend and
/// says why; `--backend wgpu` still takes the software adapter.
#[test]
fn auto_backend_passes_over_a_software_adapter() {
    let Some(wgpu) = common::wgpu_selected() else {
        return;
    };
    let software = ["llvmpipe", "lavapipe", "SwiftShader"]
        .iter()
        .any(|name| wgpu.description.contains(name));
    let run = |backend: &str| {
        let out = tempfile::tempdir().unwrap();
        let result = dpo(&[
            "train",
            "--max-steps",
            "1",
            "--backend",
            backend,
            "--output",
            path(out.path()),
        ]);
        assert!(result.status.success(), "{}", text(&result.stderr));
        text(&result.stderr)
    };
    let auto = run("auto");
    if software {
        assert!(
            auto.contains("device: cpu (flex")
                && auto.contains(&format!(
                    "the only wgpu adapter is a software renderer ({})",
                    wgpu.description
                ))
                && auto.contains("falling back to the CPU backend"),
            "{auto}"
        );
        let forced = run("wgpu");
        assert!(
            forced.contains(&format!("device: {}", wgpu.description)),
            "{forced}"
        );
    } else {
        assert!(
            auto.contains(&format!("device: {}", wgpu.description)),
            "{auto}"
        );
    }
}
