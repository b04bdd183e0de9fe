//! The corpus of bad inputs in `tests/fixtures/bad_inputs/cases.json`, each run through the CLI:
//! it must exit with the expected code (2: bad input), print a message naming the problem, never
//! panic, and leave an earlier run's output folder byte-for-byte as it was.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::hub::{Repo, serve};
use serde_json::Value;

fn corpus() -> PathBuf {
    common::fixtures().join("bad_inputs")
}

/// A fixture folder copied to `into`, with `config.json` keys replaced (null removes one) and
/// files written, copied from the corpus, copied within the folder, or removed.
fn materialize(spec: &Value, into: &Path) {
    let base = common::fixtures().join(spec["base"].as_str().unwrap());
    std::fs::create_dir_all(into).unwrap();
    for entry in std::fs::read_dir(&base).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, into.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config_name = if into.join("adapter_config.json").exists() {
        "adapter_config.json"
    } else {
        "config.json"
    };
    if let Some(patch) = spec.get("config").and_then(Value::as_object) {
        let path = into.join(config_name);
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (key, value) in patch {
            if value.is_null() {
                config.as_object_mut().unwrap().remove(key);
            } else {
                config[key] = value.clone();
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }
    for (to, from) in spec["copy_base"].as_object().into_iter().flatten() {
        std::fs::copy(into.join(from.as_str().unwrap()), into.join(to)).unwrap();
    }
    for (to, from) in spec["copy"].as_object().into_iter().flatten() {
        std::fs::copy(corpus().join(from.as_str().unwrap()), into.join(to)).unwrap();
    }
    for (name, text) in spec["write"].as_object().into_iter().flatten() {
        std::fs::write(into.join(name), text.as_str().unwrap()).unwrap();
    }
    for name in spec["remove"].as_array().into_iter().flatten() {
        std::fs::remove_file(into.join(name.as_str().unwrap())).unwrap();
    }
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn every_bad_input_is_refused_cleanly() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("cases.json")).unwrap())
            .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut models = BTreeMap::new();
    for (section, dir) in [("models", "models"), ("adapters", "adapters")] {
        for (name, spec) in manifest[section].as_object().unwrap() {
            let path = work.path().join(dir).join(name);
            materialize(spec, &path);
            models.insert(
                format!("{{{}:{name}}}", &section[..section.len() - 1]),
                path,
            );
        }
    }
    let mut repos = Vec::new();
    for (name, spec) in manifest["repos"].as_object().unwrap() {
        let path = work.path().join("repos").join(name);
        materialize(spec, &path);
        repos.push((format!("test/{name}"), path));
    }
    let hub = serve(
        repos
            .iter()
            .map(|(name, path)| (name.as_str(), Repo::Dir(path.clone())))
            .collect(),
    );

    // An earlier run's output: it must survive every failed run untouched.
    let out = work.path().join("out");
    std::fs::create_dir_all(out.join("checkpoint-2")).unwrap();
    std::fs::write(out.join("model.safetensors"), b"an earlier good model").unwrap();
    std::fs::write(out.join("checkpoint-2/trainer_state.json"), b"{}").unwrap();
    let before = snapshot(&out);

    let fixtures = common::fixtures();
    let places = [
        ("{gpt2}", fixtures.join("gpt2/policy")),
        ("{llama}", fixtures.join("llama/policy")),
        ("{gpt2_adapter}", fixtures.join("gpt2/lora_adapter")),
        ("{data}", fixtures.join("data.jsonl")),
        ("{bad}", corpus()),
        ("{out}", out.clone()),
    ];
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let mut a = a.as_str().unwrap().to_string();
                let named = places.iter().map(|(k, p)| (*k, p));
                for (key, path) in named.chain(models.iter().map(|(k, p)| (k.as_str(), p))) {
                    a = a.replace(key, path.to_str().unwrap());
                }
                a
            })
            .collect();
        let result = Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("HF_ENDPOINT", &hub.url)
            .env("DPO_WGPU_CACHE", work.path().join("cache"))
            .env_remove("HF_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
        let mut problems = Vec::new();
        let code = case["code"].as_i64().unwrap() as i32;
        if result.status.code() != Some(code) {
            problems.push(format!(
                "exit code {:?}, expected {code}",
                result.status.code()
            ));
        }
        for expect in case["expect"].as_array().unwrap() {
            let expect = expect.as_str().unwrap();
            let expect = places.iter().fold(expect.to_string(), |e, (k, p)| {
                e.replace(k, p.to_str().unwrap())
            });
            if !stderr.contains(&expect) {
                problems.push(format!("the message does not mention {expect:?}"));
            }
        }
        if stderr.contains("panicked") || stderr.contains("internal error") {
            problems.push("it panicked".into());
        }
        if snapshot(&out) != before {
            problems.push("the earlier output folder changed".into());
        }
        if work.path().join("out.partial").exists() {
            problems.push("a partial output folder was left behind".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name}: {}\n    {}",
                problems.join("; "),
                stderr.trim()
            ));
        }
    }
    let written: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !["models", "adapters", "repos", "out", "cache"].contains(&n.as_str()))
        .collect();
    assert!(
        written.is_empty(),
        "files written beside the output: {written:?}"
    );
    assert!(
        !Path::new("/tmp/dpo-wgpu-rooted.safetensors").exists(),
        "a hostile shard name was written"
    );
    eprintln!("{} bad inputs refused", cases.len() - failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
