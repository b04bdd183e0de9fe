//! Native file access: model directories in, atomic model directories and logs out.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::bundle::{CARRIED_FILES, ExportedFiles, ModelBundle, ModelTexts};
use crate::data::{PreferencePair, parse_jsonl};
use crate::error::{Error, Location, Result};
use crate::weights::{FileBytes, SafetensorsSource, WithParamIds};

pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    if path.exists() {
        read_text(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The safetensors weights of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Files are memory-mapped, not copied.
pub fn weights_in(dir: &Path) -> Result<SafetensorsSource> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let label = dir.display().to_string();
    if single.exists() {
        let bytes = FileBytes::map(&single)?;
        return SafetensorsSource::new(label, vec![(single.display().to_string(), bytes)]);
    }
    if index.exists() {
        let text = read_text(&index)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::input(
                Location::file(index.display().to_string()).line(e.line()),
                format!("invalid JSON: {e}"),
            )
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::input(
                    Location::file(index.display().to_string()).field("weight_map"),
                    "missing or not an object",
                )
            })?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        let files = shards
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
        "no model.safetensors or model.safetensors.index.json in this directory",
    ))
}

/// One safetensors file, memory-mapped.
pub fn weights_file(path: &Path) -> Result<SafetensorsSource> {
    let label = path.display().to_string();
    SafetensorsSource::new(label.clone(), vec![(label, FileBytes::map(path)?)])
}

/// Load a Hugging Face model directory (`config.json`, safetensors weights, `tokenizer.json`), or
/// a `.gguf` file (memory-mapped; config and tokenizer rebuilt from its metadata).
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<ModelBundle> {
    load_model_dir_with_ids(dir, &HashMap::new(), device)
}

/// `load_model_dir`, giving parameters the ids a checkpoint recorded (see `checkpoint.rs`).
pub fn load_model_dir_with_ids(
    dir: &Path,
    ids: &HashMap<String, u64>,
    device: &Device,
) -> Result<ModelBundle> {
    if let Some(hub) = dir.to_str().and_then(crate::hub::HubRef::parse) {
        return load_model_dir_with_ids(&crate::hub::download(&hub?)?, ids, device);
    }
    if dir.is_file()
        && dir
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let label = dir.display().to_string();
        let (texts, weights) =
            crate::gguf::gguf_model_texts_and_weights(&label, FileBytes::map(dir)?)?;
        return ModelBundle::load(
            texts,
            &WithParamIds {
                inner: &weights,
                ids,
            },
            device,
        );
    }
    if !dir.is_dir() {
        return Err(Error::input(
            Location::file(dir.display().to_string()),
            "not a directory (expected a Hugging Face model directory or a .gguf file)",
        ));
    }
    let config_path = dir.join("config.json");
    let config_json = read_text(&config_path)?;
    // Report a bad config before complaining about the files it implies.
    crate::config::ModelConfig::from_json(&config_json, &config_path.display().to_string())?;
    let texts = ModelTexts {
        label: dir.display().to_string(),
        config_json,
        tokenizer_json: read_text(&dir.join("tokenizer.json"))?,
        tokenizer_config_json: read_optional(&dir.join("tokenizer_config.json"))?,
        extra_files: CARRIED_FILES
            .iter()
            .filter_map(|name| match read_optional(&dir.join(name)) {
                Ok(Some(text)) => Some(Ok((name.to_string(), text))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_>>()?,
    };
    let weights = weights_in(dir)?;
    ModelBundle::load(
        texts,
        &WithParamIds {
            inner: &weights,
            ids,
        },
        device,
    )
}

/// Load a PEFT LoRA adapter directory onto `model`.
pub fn load_adapter_dir(
    model: crate::model::CausalLm,
    dir: &Path,
    device: &Device,
) -> Result<(crate::model::CausalLm, crate::peft::LoraSettings)> {
    let config = read_text(&dir.join("adapter_config.json"))?;
    let weights = weights_file(&dir.join("adapter_model.safetensors"))?;
    crate::peft::load(model, &config, &weights, &dir.display().to_string(), device)
}

pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    parse_jsonl(&read_text(path)?, &path.display().to_string())
}

/// Write `files` into directory `dir`, each atomically: written to a temporary file beside it,
/// synced, then renamed over the old one. The weights go last; the other files do not change
/// during a run, so an interrupted save leaves the previous complete model in place.
pub fn write_files_atomically(dir: &Path, files: &ExportedFiles) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let mut ordered: Vec<&(String, Vec<u8>)> = files.files.iter().collect();
    ordered.sort_by_key(|(name, _)| name.ends_with(".safetensors"));
    for (name, bytes) in ordered {
        let path = dir.join(name);
        let staging = dir.join(format!(".{name}.partial-{}", std::process::id()));
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
