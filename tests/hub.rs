//! `--model hf:OWNER/NAME`: files come from the Hub endpoint (here a local server standing in for
//! huggingface.co via HF_ENDPOINT; tests never use the network) into a cache reused offline.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Serves `/test/tiny-gpt2/resolve/main/<file>` from the GPT-2 fixture; 404 otherwise. Counts
/// requests; stops after `limit` of them.
fn serve(root: PathBuf, limit: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            // Drain the headers.
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap_or(0) > 2 {
                header.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = path
                .strip_prefix("/test/tiny-gpt2/resolve/main/")
                .map(|f| root.join(f));
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
                None => {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    (address, count)
}

fn eval(endpoint: &str, cache: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"))
        .args(["eval", "--model", "hf:test/tiny-gpt2", "--data"])
        .arg(common::fixtures().join("data.jsonl"))
        .args(["--backend", "cpu", "--batch-size", "3", "--json"])
        .env("HF_ENDPOINT", endpoint)
        .env("DPO_WGPU_CACHE", cache)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn hub_models_download_once_and_load() {
    let cache = tempfile::tempdir().unwrap();
    let (endpoint, requests) = serve(common::fixtures().join("gpt2/policy"), 64);
    let first = eval(&endpoint, cache.path());
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
    let fetched = requests.load(Ordering::SeqCst);

    // Cached: a second run works with the endpoint gone.
    let second = eval("http://127.0.0.1:9", cache.path());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(first.stdout, second.stdout);
    assert!(requests.load(Ordering::SeqCst) == fetched);

    // A repository without weights is an error naming what is missing.
    let empty = tempfile::tempdir().unwrap();
    let (endpoint, _) = serve(empty.path().to_path_buf(), 16);
    let out = eval(&endpoint, tempfile::tempdir().unwrap().path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hf:test/tiny-gpt2@main") && stderr.contains("config.json"),
        "{stderr}"
    );
}
