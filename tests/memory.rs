//! The memory estimate the browser refuses runs by (`train/memory.rs`), against what a run
//! actually holds: its parameters, the ones it trains, and the optimizer state after a step are
//! counted exactly, for full fine-tuning, LoRA and the top layers only, on GPT-2, Llama and
//! Qwen2; a budget below the estimate is refused with a message that says what would help.

mod common;

use common::fixtures;
use dpo_wgpu::backend::{BackendChoice, select};
use dpo_wgpu::io::native::files::{load_model, read_jsonl};
use dpo_wgpu::train::memory::MemoryLimits;
use dpo_wgpu::train::options::{OptionOverrides, Task};
use dpo_wgpu::train::run::{LoraRequest, Run, RunSpec, planned_memory};

fn check(model: &str, lora: Option<LoraRequest>, trainable_layers: Option<usize>) {
    let selected = select(BackendChoice::Cpu).unwrap();
    let bundle = load_model(&fixtures().join(model), &selected.device).unwrap();
    let config = bundle.config.clone();
    let overrides = OptionOverrides {
        batch_size: Some(2),
        max_steps: Some(1),
        max_length: Some(64),
        trainable_layers,
        ..OptionOverrides::default()
    };
    let planned = planned_memory(
        Task::Dpo,
        &config,
        &overrides,
        lora.as_ref(),
        None,
        &selected.device,
    )
    .unwrap();
    let spec = RunSpec {
        model: Some(bundle),
        rows: Some(read_jsonl(&fixtures().join("data.jsonl")).unwrap()),
        overrides,
        lora,
        ..RunSpec::new(Task::Dpo)
    };
    let mut run = Run::new(spec, &selected).unwrap();
    let what = format!(
        "{model} (LoRA {}, top layers {trainable_layers:?})",
        run.summary.lora.is_some()
    );
    assert_eq!(
        run.summary.memory, planned,
        "{what}: planned = the run's own estimate"
    );
    assert_eq!(
        planned.parameters as usize,
        run.trainer.parameter_count(),
        "{what}: parameters"
    );
    assert_eq!(
        planned.weights,
        4 * planned.parameters,
        "{what}: f32 weights"
    );
    assert_eq!(
        planned.trained_parameters as usize,
        run.trainer.trainable_parameter_count(),
        "{what}: trained parameters"
    );
    pollster::block_on(run.trainer.step()).unwrap();
    assert_eq!(
        planned.optimizer as usize,
        4 * run.trainer.optimizer().state_len(),
        "{what}: AdamW state after a step"
    );
    assert!(planned.activations > 0 && planned.largest_buffer > 0);
    assert!(planned.check(&MemoryLimits::default()).is_ok());
    let refused = planned
        .check(&MemoryLimits {
            budget: Some(planned.total - 1),
            ..MemoryLimits::default()
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("lower batch_size"), "{what}: {refused}");
    let refused = planned
        .check(&MemoryLimits {
            max_buffer: Some(planned.largest_buffer - 1),
            ..MemoryLimits::default()
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("buffer"), "{what}: {refused}");
}

#[test]
fn estimates_count_what_runs_hold() {
    let lora = || {
        Some(LoraRequest {
            rank: 4,
            alpha: None,
            targets: None,
        })
    };
    for model in ["llama/policy", "gpt2/policy", "qwen2/policy"] {
        check(model, None, None);
        check(model, lora(), None);
    }
    check("llama/policy", None, Some(1));
    check("gpt2/policy", None, Some(1));
}
