//! The built-in demo: a tiny Llama, a word-level tokenizer and a preference task, generated in
//! code so it runs with no download, natively and in a browser tab.
//!
//! The task: prompts ask for a `happy` or `sad` line about a subject; the chosen answer uses
//! adjectives of the requested mood, the rejected one the opposite mood, in the same sentence
//! template. A policy only wins on held-out pairs (unseen subjects) by reading the mood word in
//! the prompt, so rising held-out reward accuracy shows DPO learning a prompt-conditioned
//! preference, not a token bias.
//!
//! The model starts pretrained (`assets/demo_model.safetensors`, 0.4 MB, compiled in): SFT from
//! random weights on lines of either mood whatever the prompt asks ([`pretraining_rows`],
//! [`pretraining_options`]), so it writes well-formed lines before DPO and DPO only has to
//! teach it which mood to pick. `tests/demo_model.rs` reruns that SFT and checks the file is
//! exactly its result (and rewrites it with `DPO_WRITE_DEMO_MODEL=1`).

use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::losses::{LossOptions, LossTerm, PreferenceLoss};
use super::optim::{LrSchedule, OptimizerKind};
use super::options::TrainOptions;
use crate::error::Result;
use crate::io::bundle::ModelBundle;
use crate::io::model_dir::ModelTexts;
use crate::io::safetensors::{FileBytes, SafetensorsSource};
use crate::model::weights::RandomInit;
use crate::text::rows::Jsonl;
use crate::text::rows::PreferencePair;

const SPECIALS: [&str; 3] = ["<pad>", "<eos>", "<unk>"];

const SUBJECTS: [&str; 30] = [
    "garden", "morning", "movie", "city", "trip", "song", "letter", "meal", "weather", "book",
    "party", "job", "game", "river", "house", "show", "coffee", "town", "lesson", "road", "beach",
    "team", "market", "concert", "park", "train", "story", "room", "forest", "week",
];
/// Subjects never seen in training; the held-out pairs use only these.
const HELD_OUT_SUBJECTS: usize = 6;

/// Adjectives of each mood (the chosen or rejected side of a pair).
pub const HAPPY: [&str; 12] = [
    "bright",
    "lovely",
    "warm",
    "cheerful",
    "wonderful",
    "calm",
    "sweet",
    "great",
    "kind",
    "fun",
    "gentle",
    "joyful",
];
pub const SAD: [&str; 12] = [
    "dull", "awful", "cold", "gloomy", "terrible", "tense", "bitter", "poor", "harsh", "boring",
    "grim", "dreary",
];
const DETERMINERS: [&str; 4] = ["the", "my", "our", "this"];
const FILLER: [&str; 13] = [
    "write", "a", "line", "about", ":", "is", "and", "was", "so", "i", "found", "happy", "sad",
];

fn vocabulary() -> Vec<&'static str> {
    SPECIALS
        .iter()
        .chain(&FILLER)
        .chain(&DETERMINERS)
        .chain(&SUBJECTS)
        .chain(&HAPPY)
        .chain(&SAD)
        .copied()
        .collect()
}

/// `tokenizer.json` for a lower-casing, whitespace/punctuation-splitting word-level tokenizer.
fn tokenizer_json() -> String {
    let vocab = vocabulary();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(id, w)| (w.to_string(), json!(id)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": "<unk>"}
    })
    .to_string()
}

fn tokenizer_config_json() -> String {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 64,
        "clean_up_tokenization_spaces": false
    })
    .to_string()
}

fn config_json() -> String {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocabulary().len(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "torch_dtype": "float32"
    })
    .to_string()
}

fn texts() -> ModelTexts {
    ModelTexts {
        label: "built-in demo".into(),
        config_json: config_json(),
        tokenizer_json: tokenizer_json(),
        tokenizer_config_json: Some(tokenizer_config_json()),
        extra_files: Vec::new(),
    }
}

/// The pretrained demo weights (see the module docs).
pub const PRETRAINED: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/demo_model.safetensors"
));

/// The demo model, pretrained (identical on every backend: the weights come from the file).
pub fn model(device: &Device) -> Result<ModelBundle> {
    let source = SafetensorsSource::new(
        "built-in demo",
        vec![(
            "demo_model.safetensors".into(),
            FileBytes::Owned(PRETRAINED.to_vec()),
        )],
    )?;
    ModelBundle::load(texts(), &source, device)
}

/// The demo model with fresh random weights from `seed` (drawn on the host): where pretraining
/// starts.
pub fn random_model(seed: u64, device: &Device) -> Result<ModelBundle> {
    ModelBundle::load(texts(), &RandomInit { seed, std: 0.02 }, device)
}

/// SFT rows that teach the sentence templates but not the mood: each prompt's completion uses
/// adjectives of a mood drawn independently of the one the prompt asks for. Every subject is
/// there (pretraining knows the words); the preference pairs' held-out subjects stay unseen by
/// DPO, which is what the held-out accuracy measures.
pub fn pretraining_rows(rows: usize, seed: u64) -> Jsonl {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5f7);
    let text = (0..rows)
        .map(|_| {
            let subject = SUBJECTS.choose(&mut rng).expect("non-empty");
            let asked = if rng.random_bool(0.5) { "happy" } else { "sad" };
            let det = DETERMINERS.choose(&mut rng).expect("non-empty");
            let words = if rng.random_bool(0.5) { &HAPPY } else { &SAD };
            let line = sentence(&mut rng, det, subject, words);
            json!({
                "prompt": format!("write a {asked} line about {det} {subject} :"),
                "completion": line,
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    Jsonl {
        source: "demo pretraining rows".into(),
        text,
    }
}

/// How the demo model was pretrained (rows: [`PRETRAINING_ROWS`] of [`pretraining_rows`] with
/// seed 0, from [`random_model`] with seed 42).
pub fn pretraining_options() -> TrainOptions {
    TrainOptions {
        learning_rate: 3e-3,
        loss: LossOptions::default(),
        batch_size: 32,
        epochs: 4,
        max_steps: None,
        max_length: Some(32),
        seed: 0,
        lr_schedule: LrSchedule::Linear,
        ..train_options()
    }
}

/// Rows in the demo's pretraining set.
pub const PRETRAINING_ROWS: usize = 4096;

const TEMPLATES: usize = 3;

/// Line `template` of the demo's sentence templates about `subject` (`b` unused by the second).
fn render(template: usize, det: &str, subject: &str, a: &str, b: &str) -> String {
    match template {
        0 => format!(" {det} {subject} is {a} and {b}"),
        1 => format!(" {det} {subject} was so {a}"),
        _ => format!(" i found {det} {subject} {a} and {b}"),
    }
}

/// A line of a random template about `subject`, with adjectives from `words`.
fn sentence(rng: &mut StdRng, det: &str, subject: &str, words: &[&str; 12]) -> String {
    let mut w: Vec<&str> = words.to_vec();
    w.shuffle(rng);
    render(rng.random_range(0..TEMPLATES), det, subject, w[0], w[1])
}

fn pair(rng: &mut StdRng, subject: &str) -> PreferencePair {
    let happy = rng.random_bool(0.5);
    let (good, bad) = if happy {
        (&HAPPY, &SAD)
    } else {
        (&SAD, &HAPPY)
    };
    let det = DETERMINERS.choose(rng).expect("non-empty");
    let mood = if happy { "happy" } else { "sad" };
    let prompt = format!("write a {mood} line about {det} {subject} :");
    let pick2 = |rng: &mut StdRng, words: &[&'static str; 12]| {
        let mut w: Vec<&str> = words.to_vec();
        w.shuffle(rng);
        (w[0], w[1])
    };
    let (g1, g2) = pick2(rng, good);
    let (b1, b2) = pick2(rng, bad);
    let template = rng.random_range(0..TEMPLATES);
    let line = |a: &str, b: &str| render(template, det, subject, a, b);
    PreferencePair {
        prompt: prompt.into(),
        chosen: line(g1, g2).into(),
        rejected: line(b1, b2).into(),
    }
}

/// `(train, held_out)` preference pairs; held-out pairs use subjects absent from training.
pub fn pairs(
    seed: u64,
    train: usize,
    held_out: usize,
) -> (Vec<PreferencePair>, Vec<PreferencePair>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd0_0d);
    let (eval_subjects, train_subjects) = SUBJECTS.split_at(HELD_OUT_SUBJECTS);
    let mut make = |n: usize, subjects: &[&str]| -> Vec<PreferencePair> {
        (0..n)
            .map(|_| {
                let s = subjects.choose(&mut rng).expect("non-empty");
                pair(&mut rng, s)
            })
            .collect()
    };
    let train_pairs = make(train, train_subjects);
    let eval_pairs = make(held_out, eval_subjects);
    (train_pairs, eval_pairs)
}

/// Settings under which DPO visibly works on the demo in seconds natively and minutes in a
/// browser tab. The loss is DPO plus the chosen answers' NLL (TRL's `loss_type=["sigmoid",
/// "sft"]`, RPO): pure DPO on a model this small drives the rejected answers' log-probs down
/// until the lines fall apart ("trip trip trip"); the NLL term keeps them well-formed while
/// the mood moves to the one asked for (`tests/demo_model.rs`).
pub fn train_options() -> TrainOptions {
    TrainOptions {
        optimizer: OptimizerKind::AdamW,
        learning_rate: 1e-3,
        batch_size: 16,
        max_steps: Some(60),
        loss: LossOptions {
            losses: vec![
                LossTerm {
                    loss: PreferenceLoss::Sigmoid,
                    weight: 1.0,
                },
                LossTerm {
                    loss: PreferenceLoss::Sft,
                    weight: 1.0,
                },
            ],
            ..LossOptions::default()
        },
        beta: 0.1,
        max_length: Some(32),
        seed: 42,
        max_grad_norm: 1.0,
        weight_decay: 0.0,
        lr_schedule: LrSchedule::Constant,
        warmup_steps: 0,
        eval_batch_size: 64,
        shuffle: true,
        ..TrainOptions::default()
    }
}

/// Number of demo pairs (training, held out).
pub const DEMO_PAIRS: (usize, usize) = (1024, 128);
