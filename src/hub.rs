//! `hf:OWNER/NAME[@REVISION]` model references: the files of a Hugging Face Hub repository,
//! downloaded once into a local cache (native only; the browser fetches them itself).
//!
//! `HF_ENDPOINT` overrides `https://huggingface.co` (the tests point it at a local server),
//! `HF_TOKEN` is sent for gated repositories, `DPO_WGPU_CACHE` moves the cache
//! (default `~/.cache/dpo-wgpu/hub`).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Location, Result};

/// Files of a model directory beside the weights: required, then optional.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 4] = [
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// A parsed `hf:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub revision: String,
    /// A single file (a `.gguf`) instead of a model directory.
    pub file: Option<String>,
}

impl HubRef {
    /// `hf:OWNER/NAME`, `hf:OWNER/NAME@REV`, `hf:OWNER/NAME/FILE.gguf[@REV]`; `None` when `spec`
    /// is not an `hf:` reference.
    pub fn parse(spec: &str) -> Option<Result<Self>> {
        let rest = spec.strip_prefix("hf:")?;
        let (path, revision) = match rest.split_once('@') {
            Some((p, r)) => (p, r.to_string()),
            None => (rest, "main".to_string()),
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        Some(match parts.as_slice() {
            [owner, name] => Ok(Self {
                repo: format!("{owner}/{name}"),
                revision,
                file: None,
            }),
            [owner, name, file @ ..] if !file.is_empty() => Ok(Self {
                repo: format!("{owner}/{name}"),
                revision,
                file: Some(file.join("/")),
            }),
            _ => Err(Error::Invalid(format!(
                "`{spec}`: expected hf:OWNER/NAME[@REVISION] or hf:OWNER/NAME/FILE.gguf"
            ))),
        })
    }
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPO_WGPU_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/dpo-wgpu/hub")
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

enum Fetched {
    Saved,
    Missing,
}

/// Download `file` of the repository into `dir` unless it is there already; the bytes go to a
/// temporary file renamed into place when complete.
fn fetch(hub: &HubRef, file: &str, dir: &Path) -> Result<Fetched> {
    let target = dir.join(file);
    if target.exists() {
        return Ok(Fetched::Saved);
    }
    let url = format!(
        "{}/{}/resolve/{}/{file}",
        endpoint(),
        hub.repo,
        hub.revision
    );
    let mut request = ureq::get(&url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(404)) => return Ok(Fetched::Missing),
        Err(ureq::Error::StatusCode(code @ (401 | 403))) => {
            return Err(Error::Invalid(format!(
                "{url}: HTTP {code} — a gated or private repository needs HF_TOKEN"
            )));
        }
        Err(e) => return Err(Error::Invalid(format!("{url}: {e}"))),
    };
    let total: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    }
    let partial = dir.join(format!(".{}.partial", file.replace('/', "_")));
    let mut out = fs::File::create(&partial).map_err(|e| Error::io(partial.display(), e))?;
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let mut shown = 0;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n])
            .map_err(|e| Error::io(partial.display(), e))?;
        done += n as u64;
        if done >> 26 > shown {
            shown = done >> 26;
            match total {
                Some(t) => eprintln!("  {file}: {} / {} MB", done >> 20, t >> 20),
                None => eprintln!("  {file}: {} MB", done >> 20),
            }
        }
    }
    out.sync_all()
        .map_err(|e| Error::io(partial.display(), e))?;
    fs::rename(&partial, &target).map_err(|e| Error::io(target.display(), e))?;
    Ok(Fetched::Saved)
}

/// The local path of a hub reference: a model directory, or the single file asked for.
pub fn download(hub: &HubRef) -> Result<PathBuf> {
    let dir = cache_root()
        .join(hub.repo.replace('/', "--"))
        .join(&hub.revision);
    fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    let missing = |file: &str| {
        Error::input(
            Location::file(format!("hf:{}@{}", hub.repo, hub.revision)),
            format!("the repository has no {file}"),
        )
    };
    if let Some(file) = &hub.file {
        eprintln!("fetching hf:{}/{file} into {}", hub.repo, dir.display());
        return match fetch(hub, file, &dir)? {
            Fetched::Saved => Ok(dir.join(file)),
            Fetched::Missing => Err(missing(file)),
        };
    }
    // A directory fetched completely once is used as is (delete it to refetch a moved revision).
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(dir);
    }
    eprintln!(
        "fetching hf:{}@{} into {}",
        hub.repo,
        hub.revision,
        dir.display()
    );
    for file in REQUIRED {
        if let Fetched::Missing = fetch(hub, file, &dir)? {
            return Err(missing(file));
        }
    }
    for file in OPTIONAL {
        fetch(hub, file, &dir)?;
    }
    if let Fetched::Missing = fetch(hub, "model.safetensors", &dir)? {
        let index = "model.safetensors.index.json";
        if let Fetched::Missing = fetch(hub, index, &dir)? {
            return Err(missing("model.safetensors or model.safetensors.index.json"));
        }
        let text = fs::read_to_string(dir.join(index)).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(Location::file(index).line(e.line()), e.to_string()))?;
        let mut shards: Vec<String> = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in shards {
            if let Fetched::Missing = fetch(hub, &shard, &dir)? {
                return Err(missing(&shard));
            }
        }
    }
    fs::write(&complete, b"").map_err(|e| Error::io(complete.display(), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert!(HubRef::parse("models/x").is_none());
        let r = HubRef::parse("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str(), r.file),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", None)
        );
        let r = HubRef::parse("hf:a/b@v1.0").unwrap().unwrap();
        assert_eq!(r.revision, "v1.0");
        let r = HubRef::parse("hf:a/b/sub/m.Q4_0.gguf").unwrap().unwrap();
        assert_eq!(r.file.as_deref(), Some("sub/m.Q4_0.gguf"));
        assert!(HubRef::parse("hf:onlyowner").unwrap().is_err());
    }
}
