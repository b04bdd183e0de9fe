//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod hub;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::Device;
use dpo_wgpu::backend::{BackendChoice, SelectedDevice, select};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn cpu() -> Device {
    select(BackendChoice::Cpu).unwrap().device
}

/// The wgpu device, initialized once per test binary (a runtime cannot be initialized twice).
/// `None` when the machine has no adapter, unless `DPO_REQUIRE_WGPU=1` (CI) makes that a failure.
pub fn wgpu() -> Option<Device> {
    wgpu_selected().map(|s| s.device)
}

/// `wgpu()` with its description.
pub fn wgpu_selected() -> Option<SelectedDevice> {
    static DEVICE: OnceLock<Option<SelectedDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match select(BackendChoice::Wgpu) {
            Ok(selected) => {
                eprintln!("{}", selected.description);
                Some(selected)
            }
            Err(e) => {
                if std::env::var("DPO_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                    panic!("DPO_REQUIRE_WGPU=1 but {e}");
                }
                eprintln!("skipping wgpu: {e}");
                None
            }
        })
        .clone()
}

/// Every device to check numbers on: the CPU backend, and wgpu when present.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("cpu", cpu())];
    if let Some(d) = wgpu() {
        out.push(("wgpu", d));
    }
    out
}

/// `devices()` with their descriptions, for building runs.
pub fn selected_devices() -> Vec<(&'static str, SelectedDevice)> {
    let mut out = vec![("cpu", select(BackendChoice::Cpu).unwrap())];
    if let Some(d) = wgpu_selected() {
        out.push(("wgpu", d));
    }
    out
}

/// The logits of one sequence, `[seq * vocab]` row-major, read back as f32.
pub fn logits_of(model: &dpo_wgpu::model::CausalLm, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    model
        .logits(&ids, 1, ids.len(), device)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// `|actual - expected| <= rel * |expected| + abs`, with a message naming what differs.
#[track_caller]
pub fn assert_close(what: &str, actual: f64, expected: f64, rel: f64, abs: f64) {
    let err = (actual - expected).abs();
    assert!(
        err <= rel * expected.abs() + abs,
        "{what}: got {actual}, expected {expected} (|diff| {err:.3e}, rel {:.3e})",
        err / expected.abs().max(1e-30)
    );
}

/// The largest absolute difference between `model`'s weights and a safetensors file of the same
/// tensor names (for example weights TRL saved after a step).
pub fn worst_weight_difference(model: &dpo_wgpu::model::CausalLm, path: &Path) -> f64 {
    use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
    use dpo_wgpu::model::weights::WeightSource;
    let theirs = SafetensorsSource::new(
        "theirs",
        vec![("theirs".into(), FileBytes::map(path).unwrap())],
    )
    .unwrap();
    let ours = pollster::block_on(dpo_wgpu::io::bundle::export_weights(model)).unwrap();
    let ours = SafetensorsSource::new(
        "ours",
        vec![("ours".into(), FileBytes::Owned(ours.to_bytes().unwrap()))],
    )
    .unwrap();
    let mut worst: f64 = 0.0;
    for name in theirs.names() {
        let (a, b) = (ours.read(name).unwrap(), theirs.read(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        for (x, y) in a.data.iter().zip(&b.data) {
            worst = worst.max((*x as f64 - *y as f64).abs());
        }
    }
    worst
}

/// A DPO trainer on a fixture family's policy and reference with `data.jsonl` as both training
/// and evaluation pairs (tokenized as `Run` does: only `keep_start` drops pairs).
pub fn fixture_dpo_trainer(
    family: &str,
    options: dpo_wgpu::train::options::TrainOptions,
    device: &Device,
) -> dpo_wgpu::train::trainer::Trainer {
    use dpo_wgpu::io::native::files::{load_model, read_pairs};
    use dpo_wgpu::text::collate::TruncationMode;
    use dpo_wgpu::train::trainer::{TaskData, Trainer};
    let policy = load_model(&fixtures().join(family).join("policy"), device).unwrap();
    let reference = load_model(&fixtures().join(family).join("reference"), device)
        .unwrap()
        .model;
    let rows = read_pairs(&fixtures().join("data.jsonl")).unwrap();
    let drop_limit = match options.truncation_mode {
        TruncationMode::KeepStart => options.max_length,
        TruncationMode::KeepEnd => None,
    };
    let pairs = dpo_wgpu::text::tokenize::tokenize_pairs(&rows, &policy.tokenizer, drop_limit)
        .unwrap()
        .rows;
    let task = TaskData::Dpo {
        train: pairs.clone(),
        eval: pairs,
        reference,
    };
    Trainer::new(policy.model, task, policy.tokenizer.pad_id, options, device).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Assert a tokenized pair equals TRL's `prompt_ids`/`chosen_ids`/`rejected_ids`.
pub fn assert_pair_ids(
    what: &str,
    ours: &dpo_wgpu::text::tokenize::TokenizedPair,
    theirs: &serde_json::Value,
) {
    assert_eq!(ours.prompt_ids, ids(&theirs["prompt_ids"]), "{what} prompt");
    assert_eq!(ours.chosen_ids, ids(&theirs["chosen_ids"]), "{what} chosen");
    assert_eq!(
        ours.rejected_ids,
        ids(&theirs["rejected_ids"]),
        "{what} rejected"
    );
}
