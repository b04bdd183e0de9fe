//! The built-in demo's model is what its pretraining recipe produces, and the demo does what it
//! is for: before DPO the model writes well-formed lines of either mood; after the demo's DPO run
//! its greedy lines about subjects it never saw use the mood the prompt asks for.
//!
//! `DPO_WRITE_DEMO_MODEL=1 cargo test --release --test demo_model` rewrites
//! `assets/demo_model.safetensors` from the recipe (CPU backend, deterministic).

mod common;

use dpo_wgpu::backend::{BackendChoice, select};
use dpo_wgpu::io::bundle::export_weights;
use dpo_wgpu::model::generate::SamplingOptions;
use dpo_wgpu::text::stream::{Prompt, generate_text};
use dpo_wgpu::train::demo;
use dpo_wgpu::train::options::Task;
use dpo_wgpu::train::run::{Run, RunSpec};

#[test]
fn the_built_in_model_is_its_pretraining_run() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let spec = RunSpec {
        task: Task::Sft,
        model: Some(demo::random_model(42, &selected.device).unwrap()),
        model_label: "built-in demo".into(),
        rows: Some(demo::pretraining_rows(demo::PRETRAINING_ROWS, 0)),
        base_options: Some(demo::pretraining_options()),
        ..RunSpec::new(Task::Sft)
    };
    let mut run = Run::new(spec, &selected).unwrap();
    pollster::block_on(run.trainer.run(|_| true)).unwrap();
    let bytes = pollster::block_on(export_weights(&run.trainer.policy()))
        .unwrap()
        .to_bytes()
        .unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo_model.safetensors");
    if std::env::var_os("DPO_WRITE_DEMO_MODEL").is_some() {
        std::fs::write(path, &bytes).unwrap();
        eprintln!("wrote {path} ({} bytes)", bytes.len());
        return;
    }
    // Not bitwise: gemm picks its kernel (AVX2, AVX-512, NEON) by the CPU it runs on, and each
    // rounds sums differently; over the whole recipe that moves weights by ~1e-5 (6e-5 measured
    // between AVX2 and AVX-512). A recipe change moves them by far more than the bound.
    let worst = max_difference(&bytes, demo::PRETRAINED);
    assert!(
        worst <= 1e-3,
        "{path} is not the result of the pretraining recipe: a weight differs by {worst} \
         (rewrite it with DPO_WRITE_DEMO_MODEL=1)"
    );
}

/// Largest absolute difference between two safetensors files' tensors of the same names.
fn max_difference(a: &[u8], b: &[u8]) -> f32 {
    use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
    use dpo_wgpu::model::weights::WeightSource;
    let open = |bytes: &[u8]| {
        SafetensorsSource::new("w", vec![("w".into(), FileBytes::Owned(bytes.to_vec()))]).unwrap()
    };
    let (a, b) = (open(a), open(b));
    let mut names: Vec<&str> = a.names().collect();
    names.sort();
    let mut b_names: Vec<&str> = b.names().collect();
    b_names.sort();
    assert_eq!(names, b_names, "the same tensors");
    let mut worst = 0f32;
    for name in names {
        let (x, y) = (a.read(name).unwrap(), b.read(name).unwrap());
        assert_eq!(x.shape, y.shape, "{name}");
        for (p, q) in x.data.iter().zip(&y.data) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

const HAPPY_WORDS: [&str; 12] = demo::HAPPY;
const SAD_WORDS: [&str; 12] = demo::SAD;

/// Greedy lines for each (mood, held-out subject) prompt.
fn lines(run: &Run) -> Vec<(String, String, String)> {
    let policy = run.trainer.policy();
    let mut out = Vec::new();
    for mood in ["happy", "sad"] {
        for subject in ["garden", "morning", "movie", "city", "trip", "song"] {
            let prompt = format!("write a {mood} line about the {subject} :");
            let generated = pollster::block_on(generate_text(
                &policy,
                &run.export.tokenizer,
                &Prompt {
                    text: prompt.clone(),
                    chat: false,
                    system: None,
                },
                &run.export.stop_tokens(),
                &SamplingOptions {
                    max_new_tokens: 10,
                    ..SamplingOptions::default()
                },
                run.trainer.device(),
                |_, _| true,
            ))
            .unwrap();
            out.push((mood.to_string(), subject.to_string(), generated.text));
        }
    }
    out
}

/// A line of one of the demo's templates about `subject`; returns its adjectives.
fn adjectives(line: &str, subject: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let det = ["the", "my", "our", "this"];
    let adjs = match words.as_slice() {
        [d, s, "is", a, "and", b] | ["i", "found", d, s, a, "and", b] => {
            (det.contains(d) && *s == subject).then(|| vec![a.to_string(), b.to_string()])
        }
        [d, s, "was", "so", a] => (det.contains(d) && *s == subject).then(|| vec![a.to_string()]),
        _ => None,
    }?;
    adjs.iter()
        .all(|a| HAPPY_WORDS.contains(&a.as_str()) || SAD_WORDS.contains(&a.as_str()))
        .then_some(adjs)
}

#[test]
fn the_demo_writes_sensible_lines_and_dpo_moves_them_to_the_asked_mood() {
    let selected = select(BackendChoice::Cpu).unwrap();
    let mut run = Run::new(RunSpec::new(Task::Dpo), &selected).unwrap();
    let before = lines(&run);
    for (mood, subject, line) in &before {
        assert!(
            adjectives(line, subject).is_some(),
            "before DPO, {mood}/{subject}: {line:?} is not a well-formed line"
        );
    }
    pollster::block_on(run.trainer.run(|_| true)).unwrap();
    let accuracy = pollster::block_on(run.trainer.evaluate())
        .unwrap()
        .and_then(|m| m.dpo().map(|m| m.rewards_accuracies))
        .unwrap();
    assert!(accuracy >= 0.95, "held-out reward accuracy {accuracy}");
    let after = lines(&run);
    let mut report = Vec::new();
    for ((mood, subject, line), (_, _, old)) in after.iter().zip(&before) {
        let adjs = adjectives(line, subject)
            .unwrap_or_else(|| panic!("after DPO, {mood}/{subject}: {line:?} is not well-formed"));
        let wanted = if mood == "happy" {
            &HAPPY_WORDS
        } else {
            &SAD_WORDS
        };
        assert!(
            adjs.iter().all(|a| wanted.contains(&a.as_str())),
            "after DPO, {mood}/{subject}: {line:?} (before: {old:?}) has an adjective of the wrong mood"
        );
        report.push(format!("{mood}/{subject}: {old:?} -> {line:?}"));
    }
    eprintln!("{}", report.join("\n"));
}
