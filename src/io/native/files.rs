//! Native file access: model folders and `.gguf` files in (memory-mapped), atomic folders and
//! logs out.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{Error, Location, Result};
use crate::io::bundle::{ExportedFiles, ModelBundle};
use crate::io::model_dir::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CARRIED_FILES, CONFIG_FILE, ModelTexts,
    TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, shard_names,
};
use crate::io::peft::AdapterFiles;
use crate::io::safetensors::{FileBytes, SafetensorsSource};
use crate::model::config::ModelConfig;
use crate::text::rows::{Jsonl, PreferencePair, parse_jsonl, text_of};

/// A text file (UTF-8, a byte-order mark dropped; invalid UTF-8 names its line).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    text_of(bytes, &path.display().to_string())
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    if path.exists() {
        read_text(path).map(Some)
    } else {
        Ok(None)
    }
}

/// A JSONL data file, named by its path in errors.
pub fn read_jsonl(path: &Path) -> Result<Jsonl> {
    let bytes = fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    Jsonl::from_bytes(path.display().to_string(), bytes)
}

pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let jsonl = read_jsonl(path)?;
    parse_jsonl(&jsonl.text, &jsonl.source)
}

/// The safetensors weights of a model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Files are memory-mapped, not copied.
pub fn weights_in(dir: &Path) -> Result<SafetensorsSource> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    let label = dir.display().to_string();
    if single.exists() {
        let bytes = FileBytes::map(&single)?;
        return SafetensorsSource::new(label, vec![(single.display().to_string(), bytes)]);
    }
    if index.exists() {
        let files = shard_names(&read_text(&index)?, &index.display().to_string())?
            .into_iter()
            .map(|name| {
                let path = dir.join(name);
                Ok((path.display().to_string(), FileBytes::map(&path)?))
            })
            .collect::<Result<Vec<_>>>()?;
        return SafetensorsSource::new(label, files);
    }
    Err(Error::input(
        Location::file(label),
        format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in this directory"),
    ))
}

/// One safetensors file, memory-mapped.
pub fn weights_file(path: &Path) -> Result<SafetensorsSource> {
    let label = path.display().to_string();
    SafetensorsSource::new(label.clone(), vec![(label, FileBytes::map(path)?)])
}

fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Load a Hugging Face model folder (`config.json`, safetensors weights, `tokenizer.json`), or
/// a `.gguf` file (memory-mapped; config and tokenizer rebuilt from its metadata). `hf:`
/// references are resolved to a local path first (`io::native::resolve_model`).
pub fn load_model(path: &Path, device: &Device) -> Result<ModelBundle> {
    if is_gguf(path) {
        let label = path.display().to_string();
        let (texts, weights) =
            crate::io::gguf::model_texts_and_weights(&label, FileBytes::map(path)?)?;
        return ModelBundle::load(texts, &weights, device);
    }
    if !path.is_dir() {
        return Err(Error::input(
            Location::file(path.display().to_string()),
            "not a directory (expected a Hugging Face model directory or a .gguf file)",
        ));
    }
    let config_path = path.join(CONFIG_FILE);
    let config_json = read_text(&config_path)?;
    // Report a bad config before complaining about the files it implies.
    ModelConfig::from_json(&config_json, &config_path.display().to_string())?;
    let texts = ModelTexts {
        label: path.display().to_string(),
        config_json,
        tokenizer_json: read_text(&path.join(TOKENIZER_FILE))?,
        tokenizer_config_json: read_optional(&path.join(TOKENIZER_CONFIG_FILE))?,
        extra_files: CARRIED_FILES
            .iter()
            .filter_map(|name| match read_optional(&path.join(name)) {
                Ok(Some(text)) => Some(Ok((name.to_string(), text))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_>>()?,
    };
    ModelBundle::load(texts, &weights_in(path)?, device)
}

/// A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
pub fn read_adapter(dir: &Path) -> Result<AdapterFiles> {
    Ok(AdapterFiles {
        label: dir.display().to_string(),
        config_json: read_text(&dir.join(ADAPTER_CONFIG_FILE))?,
        weights: Box::new(weights_file(&dir.join(ADAPTER_WEIGHTS_FILE))?),
    })
}

/// Write `files` into directory `dir`, each atomically: written to a temporary file beside it,
/// synced, then renamed over the old one. The weights go last; the other files do not change
/// during a run, so an interrupted save leaves the previous complete model in place.
pub fn write_files_atomically(dir: &Path, files: &ExportedFiles) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let mut ordered: Vec<&(String, Vec<u8>)> = files.files.iter().collect();
    ordered.sort_by_key(|(name, _)| name.ends_with(".safetensors"));
    for (name, bytes) in ordered {
        // A name may sit in a subfolder (a checkpoint's `best-model/`).
        let (folder, file) = match name.rsplit_once('/') {
            Some((folder, file)) => (dir.join(folder), file),
            None => (dir.to_path_buf(), name.as_str()),
        };
        fs::create_dir_all(&folder).map_err(|e| Error::io(folder.display(), e))?;
        let path = folder.join(file);
        let staging = folder.join(format!(".{file}.partial-{}", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&staging)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&staging, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&staging);
            return Err(Error::io(path.display(), e));
        }
    }
    Ok(())
}

/// Write `files` as the directory `dir`, all at once: they go into a temporary directory beside
/// it (each file synced), which is then renamed to `dir`. Interrupted at any moment (even by
/// `kill -9`), this leaves either no `dir` or a complete one. An existing `dir` is replaced.
pub fn write_dir_atomically(dir: &Path, files: &ExportedFiles) -> Result<()> {
    let staging = sibling(dir, &format!("partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(staging.display(), e))?;
    }
    write_files_atomically(&staging, files)?;
    replace_dir(&staging, dir)
}

/// `path` with `.{suffix}` appended to its last component, hidden (`out/.checkpoint-4.tmp`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().map_or_else(
        || "output".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Move directory `from` to `to`, replacing what was at `to` (moved aside first, deleted after),
/// and sync the parent so the rename survives a crash.
pub fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    let aside = sibling(to, &format!("old-{}", std::process::id()));
    let had_old = to.exists();
    if had_old {
        fs::rename(to, &aside).map_err(|e| Error::io(to.display(), e))?;
    }
    if let Err(e) = fs::rename(from, to) {
        if had_old {
            let _ = fs::rename(&aside, to);
        }
        return Err(Error::io(to.display(), e));
    }
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    if had_old {
        fs::remove_dir_all(&aside).map_err(|e| Error::io(aside.display(), e))?;
    }
    Ok(())
}

/// An append-only JSON-lines log, flushed after every record so nothing written is lost.
pub struct JsonLog {
    path: PathBuf,
    file: fs::File,
}

impl JsonLog {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(self.path.display(), e))
    }
}

/// `model` with the PEFT adapter of folder `dir` applied.
pub fn load_adapter(
    model: crate::model::CausalLm,
    dir: &Path,
    device: &Device,
) -> Result<(crate::model::CausalLm, crate::model::lora::LoraSettings)> {
    crate::io::peft::load(model, &read_adapter(dir)?, None, device)
}

/// A hex SHA-256 of `label` and the contents of `paths` (a folder counts as its files, sorted by
/// name): what a model is, independent of where it lies.
pub fn hash_files(paths: &[PathBuf], label: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    hasher.update(label.as_bytes());
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = fs::read_dir(path)
                .map_err(|e| Error::io(path.display(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    let mut buffer = vec![0u8; 1 << 20];
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        hasher.update(name.as_bytes());
        let mut f = fs::File::open(&file).map_err(|e| Error::io(file.display(), e))?;
        loop {
            let n = f
                .read(&mut buffer)
                .map_err(|e| Error::io(file.display(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}
