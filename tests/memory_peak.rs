//! The memory estimate (`train/memory.rs`) against what runs actually allocate, on small models
//! of every family, full fine-tuning, LoRA and an explicit reference, several batch sizes and
//! lengths. On the CPU backend every tensor is a heap allocation, so a counting allocator sees
//! the run's true peak: the estimate must bound it from above and stay within 1.35× of it, and
//! what the run keeps between steps must contain the exact parts (weights, the reference's own
//! copy, optimizer state). On wgpu the memory pools' own report is read: the bytes in use between
//! steps contain the same exact parts, and what the pools reserve (whole pages) stays within
//! 1.35× of the estimate (measured on lavapipe: 0.93–1.28×). `DPO_MEMORY_REPORT=1` prints the table.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::fixtures;
use dpo_wgpu::backend::{BackendChoice, SelectedDevice, select};
use dpo_wgpu::io::bundle::ModelBundle;
use dpo_wgpu::io::model_dir::ModelTexts;
use dpo_wgpu::model::weights::RandomInit;
use dpo_wgpu::text::rows::Jsonl;
use dpo_wgpu::train::memory::MemoryEstimate;
use dpo_wgpu::train::options::{OptionOverrides, Task};
use dpo_wgpu::train::run::{LoraRequest, Run, RunSpec, planned_memory};
use serde_json::{Value, json};

/// The system allocator, counting the bytes live now and the most live since `reset_peak`.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes live now; the peak restarts from here.
fn reset_peak() -> usize {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

#[derive(Debug, Clone, Copy)]
struct Case {
    family: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
    lora: bool,
    explicit_reference: bool,
    batch: usize,
    max_length: usize,
}

/// The family's fixture config with this case's sizes (and the fixture's tokenizer).
fn texts(case: &Case) -> ModelTexts {
    let dir = fixtures().join(case.family).join("policy");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let mut config: Value = serde_json::from_str(&read("config.json")).unwrap();
    let sizes = if case.family == "gpt2" {
        json!({"n_embd": case.hidden, "n_layer": case.layers, "n_head": case.heads,
               "n_positions": 512, "vocab_size": case.vocab})
    } else {
        json!({"hidden_size": case.hidden, "intermediate_size": case.hidden * 3,
               "num_hidden_layers": case.layers, "num_attention_heads": case.heads,
               "num_key_value_heads": case.heads / 2, "head_dim": case.hidden / case.heads,
               "max_position_embeddings": 512, "vocab_size": case.vocab,
               "layer_types": vec!["full_attention"; case.layers]})
    };
    for (key, value) in sizes.as_object().unwrap() {
        config[key] = value.clone();
    }
    ModelTexts {
        label: case.family.into(),
        config_json: config.to_string(),
        tokenizer_json: read("tokenizer.json"),
        tokenizer_config_json: Some(read("tokenizer_config.json")),
        extra_files: Vec::new(),
    }
}

/// Pairs whose answers are longer than any case's max_length, so every batch is as long as the
/// estimate assumes.
fn rows(n: usize) -> Jsonl {
    let words = [
        "alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "green",
    ];
    let text = |seed: usize, len: usize| -> String {
        (0..len)
            .map(|i| words[(seed * 7 + i * 3) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"prompt": text(i, 3), "chosen": format!(" {}", text(i + 1, 150)),
                   "rejected": format!(" {}", text(i + 2, 150))})
            .to_string()
        })
        .collect();
    Jsonl::from_bytes("rows.jsonl", lines.join("\n").into_bytes()).unwrap()
}

/// What one run allocated, by the backend's own count.
struct Measured {
    estimate: MemoryEstimate,
    /// The most heap bytes live at once, from before loading to after three steps.
    peak: usize,
    /// Heap bytes live after the steps: what the run keeps from one step to the next.
    kept: usize,
    /// wgpu: bytes its memory pools reserve, and bytes in use, after the steps.
    pools: Option<(u64, u64)>,
}

fn measure(case: &Case, selected: &SelectedDevice) -> Measured {
    let data = rows(8);
    let before = reset_peak();
    let load = |seed| {
        ModelBundle::load(
            texts(case),
            &RandomInit { seed, std: 0.02 },
            &selected.device,
        )
        .unwrap()
    };
    let bundle = load(1);
    let reference = case.explicit_reference.then(|| load(2));
    let lora = case.lora.then_some(LoraRequest {
        rank: 8,
        alpha: None,
        targets: None,
    });
    let overrides = OptionOverrides {
        batch_size: Some(case.batch),
        max_steps: Some(3),
        max_length: Some(case.max_length),
        ..OptionOverrides::default()
    };
    let estimate = planned_memory(
        Task::Dpo,
        &bundle.config,
        &overrides,
        lora.as_ref(),
        reference.as_ref().map(|r| &r.config),
        &selected.device,
    )
    .unwrap();
    let spec = RunSpec {
        model: Some(bundle),
        reference: reference.map(|r| r.model),
        rows: Some(data),
        overrides,
        lora,
        ..RunSpec::new(Task::Dpo)
    };
    let mut run = Run::new(spec, selected).unwrap();
    assert_eq!(
        run.summary.memory, estimate,
        "{case:?}: planned = the run's own estimate"
    );
    for _ in 0..3 {
        pollster::block_on(run.trainer.step()).unwrap();
    }
    let pools = selected
        .device
        .memory_pool_usage()
        .map(|u| (u.bytes_reserved, u.bytes_in_use));
    let (peak, kept) = (PEAK.load(Relaxed) - before, LIVE.load(Relaxed) - before);
    drop(run);
    selected.device.memory_cleanup();
    Measured {
        estimate,
        peak,
        kept,
        pools,
    }
}

fn cases() -> Vec<Case> {
    let case = |family, hidden, layers, heads, vocab, lora, batch, max_length| Case {
        family,
        hidden,
        layers,
        heads,
        vocab,
        lora,
        explicit_reference: false,
        batch,
        max_length,
    };
    vec![
        case("llama", 128, 2, 4, 400, true, 2, 128),
        case("llama", 128, 4, 4, 400, true, 2, 128),
        case("llama", 128, 2, 4, 400, true, 2, 256),
        case("llama", 128, 2, 4, 400, true, 4, 128),
        case("llama", 128, 2, 4, 4000, true, 2, 128),
        case("llama", 256, 2, 4, 400, true, 2, 128),
        case("llama", 128, 2, 8, 400, true, 2, 128),
        case("llama", 128, 4, 4, 400, false, 2, 128),
        case("llama", 256, 2, 4, 4000, false, 1, 64),
        Case {
            explicit_reference: true,
            ..case("llama", 128, 2, 4, 4000, true, 2, 128)
        },
        case("gpt2", 128, 2, 4, 400, true, 2, 128),
        case("gpt2", 128, 4, 4, 400, false, 2, 128),
        case("gpt2", 256, 2, 8, 400, true, 2, 256),
        case("qwen2", 128, 2, 4, 400, true, 2, 128),
        case("qwen2", 128, 4, 4, 4000, false, 2, 128),
    ]
}

fn mib(bytes: impl Into<u64>) -> String {
    format!("{:.1}", bytes.into() as f64 / 1_048_576.0)
}

fn report(line: String) {
    if std::env::var("DPO_MEMORY_REPORT").is_ok_and(|v| v == "1") {
        eprintln!("{line}");
    }
}

/// Weights, the reference's own copy and the optimizer state: what a run holds between steps.
fn kept_exactly(e: &MemoryEstimate) -> u64 {
    e.weights + e.reference + e.optimizer
}

/// One test, CPU first: the counts are process-wide, and a wgpu device's threads would be
/// counted with a CPU run's allocations.
#[test]
fn estimates_bound_what_runs_allocate() {
    estimate_bounds_the_cpu_backends_peak();
    estimate_bounds_what_wgpu_reserves();
}

fn estimate_bounds_the_cpu_backends_peak() {
    let selected = select(BackendChoice::Cpu).unwrap();
    // The first run allocates what a process keeps (thread pools, kernels' tables).
    measure(&cases()[0], &selected);
    report("case | estimate MiB | peak MiB | estimate/peak | kept MiB | exact parts MiB".into());
    for case in cases() {
        let Measured {
            estimate: e,
            peak,
            kept,
            ..
        } = measure(&case, &selected);
        let ratio = e.total as f64 / peak as f64;
        report(format!(
            "{case:?} | {} | {} | {ratio:.2} | {} | {}",
            mib(e.total),
            mib(peak as u64),
            mib(kept as u64),
            mib(kept_exactly(&e))
        ));
        assert!(
            (1.0..=1.35).contains(&ratio),
            "{case:?}: estimate {} bytes ({e:?}) against a measured peak of {peak}",
            e.total
        );
        // The tokenized rows, tokenizer and caches are the rest (well under 2 MiB here).
        let exact = kept_exactly(&e) as usize;
        assert!(
            (exact..exact + 2 * 1_048_576).contains(&kept),
            "{case:?}: the run keeps {kept} bytes between steps; weights, reference and \
             optimizer are {exact} ({e:?})"
        );
    }
}

fn estimate_bounds_what_wgpu_reserves() {
    let Some(selected) = common::wgpu_selected() else {
        return;
    };
    report(
        "case | estimate MiB | reserved MiB | reserved/estimate | in use MiB | exact parts MiB"
            .into(),
    );
    // Lavapipe is slow: each family, full and LoRA, and an explicit reference.
    let cases = cases();
    for case in [0, 7, 9, 10, 11, 13, 14].map(|i| cases[i]) {
        let Measured {
            estimate: e, pools, ..
        } = measure(&case, &selected);
        let (reserved, in_use) = pools.expect("wgpu reports its memory pools");
        let ratio = reserved as f64 / e.total as f64;
        report(format!(
            "{case:?} | {} | {} | {ratio:.2} | {} | {}",
            mib(e.total),
            mib(reserved),
            mib(in_use),
            mib(kept_exactly(&e))
        ));
        assert!(
            ratio <= 1.35,
            "{case:?}: wgpu reserves {reserved} bytes, the estimate is {} ({e:?})",
            e.total
        );
        let exact = kept_exactly(&e);
        assert!(
            (exact..exact + 1_048_576).contains(&in_use),
            "{case:?}: wgpu holds {in_use} bytes between steps; weights, reference and \
             optimizer are {exact} ({e:?})"
        );
    }
}
