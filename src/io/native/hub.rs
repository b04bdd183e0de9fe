//! Downloading `hf:` references (see `io/hub_ref.rs`) once into a local cache.
//!
//! `HF_ENDPOINT` overrides `https://huggingface.co` (the tests point it at a local server),
//! `HF_TOKEN` is sent for gated repositories, `DPO_WGPU_CACHE` moves the cache
//! (default `~/.cache/dpo-wgpu/hub`). Progress goes to a callback: this layer prints nothing.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Location, Result};
use crate::io::hub_ref::{DEFAULT_ENDPOINT, HubRef};
use crate::io::model_dir::{self, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};

/// What a download reports as it goes.
#[derive(Debug, Clone)]
pub enum HubProgress<'a> {
    /// Fetching starts into `into` (a file, or a model folder's files).
    Started { reference: &'a str, into: &'a Path },
    /// `done` bytes of `file` so far (`total` when the server said).
    Bytes {
        file: &'a str,
        done: u64,
        total: Option<u64>,
    },
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPO_WGPU_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/dpo-wgpu/hub")
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into())
}

enum Fetched {
    Saved,
    Missing,
}

/// Download `file` of the reference into `dir` unless it is there already; the bytes go to a
/// temporary file renamed into place when complete.
fn fetch(
    hub: &HubRef,
    file: &str,
    dir: &Path,
    progress: &mut dyn FnMut(HubProgress),
) -> Result<Fetched> {
    let target = dir.join(file);
    if target.exists() {
        return Ok(Fetched::Saved);
    }
    let url = hub.file_url(&endpoint(), file);
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
        // Every 64 MiB.
        if done >> 26 > shown {
            shown = done >> 26;
            progress(HubProgress::Bytes { file, done, total });
        }
    }
    out.sync_all()
        .map_err(|e| Error::io(partial.display(), e))?;
    fs::rename(&partial, &target).map_err(|e| Error::io(target.display(), e))?;
    Ok(Fetched::Saved)
}

/// The local path of a hub reference: a model folder, or the single file asked for.
pub fn download(hub: &HubRef, progress: &mut dyn FnMut(HubProgress)) -> Result<PathBuf> {
    let mut dir = cache_root()
        .join(hub.repo.replace('/', "--"))
        .join(&hub.revision);
    let file = if hub.is_file() {
        hub.path.clone()
    } else {
        if let Some(sub) = &hub.path {
            dir = dir.join(sub);
        }
        None
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    let label = format!("hf:{}@{}", hub.repo, hub.revision);
    let missing = |file: &str| {
        Error::input(
            Location::file(label.clone()),
            format!("the repository has no {file}"),
        )
    };
    if let Some(file) = file {
        let name = file.rsplit('/').next().unwrap_or(&file).to_string();
        progress(HubProgress::Started {
            reference: &format!("hf:{}/{file}", hub.repo),
            into: &dir,
        });
        return match fetch(hub, &name, &dir, progress)? {
            Fetched::Saved => Ok(dir.join(name)),
            Fetched::Missing => Err(missing(&file)),
        };
    }
    // A folder fetched completely once is used as is (delete it to refetch a moved revision).
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(dir);
    }
    progress(HubProgress::Started {
        reference: &label,
        into: &dir,
    });
    let layout = model_dir::layout();
    for file in layout.required {
        if let Fetched::Missing = fetch(hub, file, &dir, progress)? {
            return Err(missing(file));
        }
    }
    for file in layout.optional {
        fetch(hub, file, &dir, progress)?;
    }
    if let Fetched::Missing = fetch(hub, WEIGHTS_FILE, &dir, progress)? {
        if let Fetched::Missing = fetch(hub, WEIGHTS_INDEX_FILE, &dir, progress)? {
            return Err(missing(&format!("{WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}")));
        }
        let index = dir.join(WEIGHTS_INDEX_FILE);
        let text = fs::read_to_string(&index).map_err(|e| Error::io(index.display(), e))?;
        for shard in model_dir::shard_names(&text, &index.display().to_string())? {
            if let Fetched::Missing = fetch(hub, &shard, &dir, progress)? {
                return Err(missing(&shard));
            }
        }
    }
    fs::write(&complete, b"").map_err(|e| Error::io(complete.display(), e))?;
    Ok(dir)
}
