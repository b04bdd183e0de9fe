//! Model families, KV-cache generation and PEFT LoRA adapters against transformers/PEFT numbers
//! (fixtures by tests/fixtures/make_model_fixtures.py), on the CPU backend and wgpu.

mod common;

use burn::tensor::Device;
use common::{assert_close, devices, fixtures, ids};
use dpo_wgpu::io::bundle::{ExportSpec, ModelBundle};
use dpo_wgpu::io::native::files::{load_adapter, load_model};
use dpo_wgpu::io::peft;
use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource};
use dpo_wgpu::model::CausalLm;
use dpo_wgpu::model::generate::{SamplingOptions, generate};
use dpo_wgpu::model::weights::WeightSource;
use serde_json::Value;

const FAMILIES: [&str; 3] = ["gpt2", "llama", "qwen2"];

fn expected(family: &str) -> Value {
    let path = fixtures().join(family).join("model_expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn policy(family: &str, device: &Device) -> ModelBundle {
    load_model(&fixtures().join(family).join("policy"), device).unwrap()
}

/// Logits of `input` compared with transformers' `[seq][vocab]` values, 1e-4 relative.
fn assert_logits(what: &str, model: &CausalLm, input: &[u32], values: &Value, device: &Device) {
    let ours = common::logits_of(model, input, device);
    let vocab = model.vocab_size();
    let mut worst: f64 = 0.0;
    for (t, row) in values.as_array().unwrap().iter().enumerate() {
        for (v, x) in row.as_array().unwrap().iter().enumerate() {
            let (a, b) = (ours[t * vocab + v] as f64, x.as_f64().unwrap());
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
            assert_close(&format!("{what} [{t},{v}]"), a, b, 1e-4, 1e-5);
        }
    }
    eprintln!("{what}: worst logit error {worst:.2e}");
}

#[test]
fn logits_match_transformers_for_every_family() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let bundle = policy(family, &device);
            assert_eq!(bundle.config.family().as_str(), family);
            assert_logits(
                &format!("{backend} {family}"),
                &bundle.model,
                &ids(&exp["logits"]["input_ids"]),
                &exp["logits"]["values"],
                &device,
            );
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let bundle = policy(family, &device);
            for case in exp["greedy"].as_array().unwrap() {
                let prompt = ids(&case["prompt_ids"]);
                let want = ids(&case["new_ids"]);
                let options = SamplingOptions {
                    max_new_tokens: want.len(),
                    ..SamplingOptions::default()
                };
                let mut streamed = Vec::new();
                // The fixture ran without an EOS stop: a random model may emit it anywhere.
                let got = pollster::block_on(generate(
                    &bundle.model,
                    &prompt,
                    &[],
                    &options,
                    &device,
                    |t| {
                        streamed.push(t);
                        true
                    },
                ))
                .unwrap();
                assert_eq!(got, want, "{backend} {family} greedy after {prompt:?}");
                assert_eq!(streamed, got);
            }
        }
    }
}

#[test]
fn peft_adapters_load_and_reproduce_peft_logits() {
    for (backend, device) in devices() {
        for family in FAMILIES {
            let exp = expected(family);
            let base = policy(family, &device).model;
            let dir = fixtures().join(family).join("lora_adapter");
            let (model, settings) = load_adapter(base, &dir, &device).unwrap();
            assert_eq!(settings.rank, 4);
            assert_logits(
                &format!("{backend} {family} + LoRA"),
                &model,
                &ids(&exp["lora"]["input_ids"]),
                &exp["lora"]["logits"],
                &device,
            );
        }
    }
}

#[test]
fn adapter_export_round_trips_peft_files() {
    let device = common::cpu();
    for family in FAMILIES {
        let dir = fixtures().join(family).join("lora_adapter");
        let bundle = policy(family, &device);
        let model_family = bundle.config.family();
        let (model, settings) = load_adapter(bundle.model, &dir, &device).unwrap();
        let files =
            pollster::block_on(peft::export(&model, &settings, model_family, "base")).unwrap();
        let (_, config) = files
            .files
            .iter()
            .find(|(n, _)| n == "adapter_config.json")
            .unwrap();
        let config = std::str::from_utf8(config).unwrap();
        assert_eq!(peft::parse_config(config, "exported").unwrap(), settings);
        let (_, weights) = files
            .files
            .iter()
            .find(|(n, _)| n == "adapter_model.safetensors")
            .unwrap();
        let ours = SafetensorsSource::new(
            "ours",
            vec![("ours".into(), FileBytes::Owned(weights.clone()))],
        )
        .unwrap();
        let path = dir.join("adapter_model.safetensors");
        let theirs = SafetensorsSource::new(
            "peft",
            vec![("peft".into(), FileBytes::map(&path).unwrap())],
        )
        .unwrap();
        let mut names: Vec<&str> = theirs.names().collect();
        names.sort_unstable();
        let mut our_names: Vec<&str> = ours.names().collect();
        our_names.sort_unstable();
        assert_eq!(our_names, names, "{family}: PEFT's tensor names");
        for name in names {
            let (a, b) = (ours.read(name).unwrap(), theirs.read(name).unwrap());
            assert_eq!((a.shape, a.data), (b.shape, b.data), "{family} {name}");
        }
    }
}

#[test]
fn merged_adapter_export_equals_adapter_logits() {
    let device = common::cpu();
    for family in FAMILIES {
        let exp = expected(family);
        let dir = fixtures().join(family).join("lora_adapter");
        let (model, _) = load_adapter(policy(family, &device).model, &dir, &device).unwrap();
        // Fold the adapter into the weights, reload the dense export, compare with PEFT's logits.
        let bundle = policy(family, &device);
        let spec = ExportSpec {
            config: bundle.config,
            tokenizer: bundle.tokenizer,
            extra_files: Vec::new(),
            lora: None,
            merge_lora: false,
            base_model: "base".into(),
        };
        let files = pollster::block_on(spec.model_files(&model)).unwrap();
        let out = tempfile::tempdir().unwrap();
        dpo_wgpu::io::native::files::write_files_atomically(out.path(), &files).unwrap();
        let merged = load_model(out.path(), &device).unwrap();
        assert!(!merged.model.has_adapters());
        assert_logits(
            &format!("cpu {family} merged LoRA"),
            &merged.model,
            &ids(&exp["lora"]["input_ids"]),
            &exp["lora"]["logits"],
            &device,
        );
    }
}

/// A checkpoint split into shards (`model.safetensors.index.json`) with f16 or bf16 weights loads,
/// each weight the f32 value of its half-precision original.
#[test]
fn sharded_half_precision_checkpoints_load() {
    use safetensors::Dtype;
    let device = common::cpu();
    let source_dir = fixtures().join("llama/policy");
    let original = dpo_wgpu::io::native::files::weights_in(&source_dir).unwrap();
    let mut names: Vec<String> = original.names().map(str::to_string).collect();
    names.sort();
    for (dtype, to_half) in [
        (
            Dtype::F16,
            (|v: f32| half::f16::from_f32(v).to_bits()) as fn(f32) -> u16,
        ),
        (Dtype::BF16, |v: f32| half::bf16::from_f32(v).to_bits()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(source_dir.join(file), dir.path().join(file)).unwrap();
        }
        let mut weight_map = serde_json::Map::new();
        let halves: Vec<(String, Vec<usize>, Vec<u8>)> = names
            .iter()
            .map(|n| {
                let t = original.read(n).unwrap();
                let bytes = t
                    .data
                    .iter()
                    .flat_map(|&v| to_half(v).to_le_bytes())
                    .collect();
                (n.clone(), t.shape, bytes)
            })
            .collect();
        for (shard, chunk) in halves.chunks(halves.len().div_ceil(2)).enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
            let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = chunk
                .iter()
                .map(|(n, shape, bytes)| {
                    (
                        n.as_str(),
                        safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
                    )
                })
                .collect();
            std::fs::write(
                dir.path().join(&file),
                safetensors::serialize(views, None).unwrap(),
            )
            .unwrap();
            for (n, _, _) in chunk {
                weight_map.insert(n.clone(), file.clone().into());
            }
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();

        let loaded = load_model(dir.path(), &device).unwrap();
        let exported =
            pollster::block_on(dpo_wgpu::io::bundle::export_weights(&loaded.model)).unwrap();
        let exported = SafetensorsSource::new(
            "e",
            vec![("e".into(), FileBytes::Owned(exported.to_bytes().unwrap()))],
        )
        .unwrap();
        for n in &names {
            let want: Vec<f32> = original
                .read(n)
                .unwrap()
                .data
                .iter()
                .map(|&v| match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_f32(),
                    _ => half::bf16::from_f32(v).to_f32(),
                })
                .collect();
            assert_eq!(exported.read(n).unwrap().data, want, "{dtype:?} {n}");
        }
    }
}

/// Rope scaling (`linear`, Llama 3.1's `llama3`): the tiny Llama with scaled rotary frequencies
/// gives transformers' inverse frequencies and logits (`tests/fixtures/rope_scaling/`); a kind we
/// do not compute (`dynamic`) is refused naming the field.
#[test]
fn rope_scaling_matches_transformers() {
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("rope_scaling/expected.json")).unwrap(),
    )
    .unwrap();
    let source = fixtures().join("llama/policy");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    let write_dir = |config: &Value| {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
        }
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    };
    for (name, variant) in exp["variants"].as_object().unwrap() {
        config["rope_parameters"] = variant["rope_parameters"].clone();
        let dir = write_dir(&config);
        for (backend, device) in devices() {
            let bundle = load_model(dir.path(), &device).unwrap();
            let dpo_wgpu::model::config::Architecture::Llama(llama) = &bundle.config.architecture
            else {
                panic!("not a Llama")
            };
            for (i, (ours, theirs)) in llama
                .inv_freq()
                .iter()
                .zip(variant["inv_freq"].as_array().unwrap())
                .enumerate()
            {
                // f32 in both (JSON parsing may be an f64 ulp off, never an f32 one)
                assert_eq!(
                    *ours,
                    theirs.as_f64().unwrap() as f32,
                    "{name} inv_freq[{i}]"
                );
            }
            // transformers' values cover the first 64 ids of every position
            let ours = common::logits_of(&bundle.model, &ids(&exp["ids"]), &device);
            let vocab = bundle.model.vocab_size();
            for (t, row) in variant["logits_first64"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                for (v, x) in row.as_array().unwrap().iter().enumerate() {
                    let what = format!("{backend} {name} [{t},{v}]");
                    assert_close(
                        &what,
                        ours[t * vocab + v] as f64,
                        x.as_f64().unwrap(),
                        1e-4,
                        1e-5,
                    );
                }
            }
        }
    }

    // Unscaled frequencies give different logits: the fixture does test the scaling.
    config["rope_parameters"] = serde_json::json!({"rope_theta": 10000.0, "rope_type": "default"});
    let dir = write_dir(&config);
    let device = common::cpu();
    let bundle = load_model(dir.path(), &device).unwrap();
    let plain = common::logits_of(&bundle.model, &ids(&exp["ids"]), &device);
    let last = ids(&exp["ids"]).len() - 1;
    let scaled = exp["variants"]["llama3"]["logits_first64"][last][0]
        .as_f64()
        .unwrap();
    assert!((plain[last * bundle.model.vocab_size()] as f64 - scaled).abs() > 1e-3);

    config["rope_parameters"] =
        serde_json::json!({"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0});
    let dir = write_dir(&config);
    let err = load_model(dir.path(), &device)
        .err()
        .expect("dynamic is refused")
        .to_string();
    assert!(
        err.contains("rope_parameters.rope_type") && err.contains("dynamic"),
        "{err}"
    );
}
