//! `--model hf:OWNER/NAME`: files come from the Hub endpoint (here a local server standing in for
//! huggingface.co via HF_ENDPOINT; tests never use the network) into a cache reused offline.

mod common;

use std::path::Path;
use std::process::Command;

use common::hub::{Repo, serve};

fn eval(endpoint: &str, cache: &Path, model: &str, token: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"));
    command
        .args(["eval", "--model", model, "--data"])
        .arg(common::fixtures().join("data.jsonl"))
        .args(["--backend", "cpu", "--batch-size", "3", "--json"])
        .env("HF_ENDPOINT", endpoint)
        .env("DPO_WGPU_CACHE", cache)
        .env_remove("HF_TOKEN");
    if let Some(token) = token {
        command.env("HF_TOKEN", token);
    }
    command.output().unwrap()
}

#[test]
fn hub_models_download_once_and_load() {
    let cache = tempfile::tempdir().unwrap();
    let hub = serve(vec![(
        "test/tiny-gpt2",
        Repo::Dir(common::fixtures().join("gpt2/policy")),
    )]);
    let first = eval(&hub.url, cache.path(), "hf:test/tiny-gpt2", None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert!(metrics["logps/chosen"].as_f64().unwrap() < 0.0);
    let dir = cache.path().join("test--tiny-gpt2/main");
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(dir.join(file).is_file(), "{file} not cached");
    }
    let fetched = hub.requests().len();

    // Cached: a second run works with the endpoint gone.
    let second = eval(
        "http://127.0.0.1:9",
        cache.path(),
        "hf:test/tiny-gpt2",
        None,
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(first.stdout, second.stdout);
    assert!(hub.requests().len() == fetched);

    // A repository without weights is an error naming what is missing.
    let empty = tempfile::tempdir().unwrap();
    let hub = serve(vec![(
        "test/tiny-gpt2",
        Repo::Dir(empty.path().to_path_buf()),
    )]);
    let out = eval(
        &hub.url,
        tempfile::tempdir().unwrap().path(),
        "hf:test/tiny-gpt2",
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("hf:test/tiny-gpt2@main") && stderr.contains("config.json"),
        "{stderr}"
    );
}

/// A repository whose shard index names files outside the model folder cannot make the
/// download write anywhere but the cache.
#[test]
fn hostile_shard_names_never_leave_the_cache() {
    let sandbox = tempfile::tempdir().unwrap();
    let cache = sandbox.path().join("a/b/c/cache");
    for (shard, repo) in [
        ("../../../../escaped.safetensors", "test/dotdot"),
        (
            &*sandbox
                .path()
                .join("absolute.safetensors")
                .display()
                .to_string(),
            "test/rooted",
        ),
    ] {
        let files = tempfile::tempdir().unwrap();
        let fixture = common::fixtures().join("gpt2/policy");
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture.join(name), files.path().join(name)).unwrap();
        }
        std::fs::write(
            files.path().join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": { "wte.weight": shard } }).to_string(),
        )
        .unwrap();
        // The server would hand out these bytes under the hostile name.
        std::fs::copy(
            fixture.join("model.safetensors"),
            files.path().join("escaped.safetensors"),
        )
        .unwrap();
        let hub = serve(vec![(repo, Repo::Dir(files.path().to_path_buf()))]);
        let out = eval(&hub.url, &cache, &format!("hf:{repo}"), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{shard}: {stderr}");
        assert!(
            stderr.contains("not a plain file name") && stderr.contains("weight_map"),
            "{shard}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            hub.requests()
                .iter()
                .all(|r| !r.path.contains("escaped") && !r.path.contains("absolute")),
            "{shard}: the hostile shard was requested: {:?}",
            hub.requests()
        );
    }
    let written: Vec<_> = walk(sandbox.path())
        .into_iter()
        .filter(|p| !p.starts_with(&cache))
        .collect();
    assert!(written.is_empty(), "written outside the cache: {written:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// HF_TOKEN goes to the Hub endpoint only: not along a redirect to another host, never into
/// what the tool prints or writes.
#[test]
fn the_token_goes_to_the_hub_only() {
    const TOKEN: &str = "hf_sekrit_0123456789";
    let files = serve(vec![(
        "test/tiny-gpt2",
        Repo::Dir(common::fixtures().join("gpt2/policy")),
    )]);
    // The same server under another host name: `localhost` instead of `127.0.0.1`.
    let elsewhere = files.url.replace("127.0.0.1", "localhost");
    let hub = serve(vec![("test/tiny-gpt2", Repo::RedirectTo(elsewhere))]);
    let cache = tempfile::tempdir().unwrap();
    let out = eval(&hub.url, cache.path(), "hf:test/tiny-gpt2", Some(TOKEN));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let at_hub = hub.requests();
    assert!(
        !at_hub.is_empty()
            && at_hub
                .iter()
                .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{at_hub:?}"
    );
    let redirected = files.requests();
    assert!(!redirected.is_empty(), "the redirect was not followed");
    assert!(
        redirected.iter().all(|r| r.authorization.is_none()),
        "the token followed a redirect to another host: {redirected:?}"
    );
    let printed = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(!String::from_utf8_lossy(&printed).contains(TOKEN));
    for file in walk(cache.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            file.display()
        );
    }
}
