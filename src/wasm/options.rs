//! JavaScript options, and how they become the core's settings.

use js_sys::{Object, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::error::{Error, Result};
use crate::io::gguf;
use crate::io::model_dir::{CARRIED_FILES, ModelTexts, WEIGHTS_FILE};
use crate::io::safetensors::{FileBytes, SafetensorsSource};
use crate::model::generate::SamplingOptions;
use crate::model::weights::WeightSource;
use crate::text::rows::Jsonl;
use crate::text::stream::Prompt;
use crate::train::memory::MemoryLimits;
use crate::train::options::OptionOverrides;
use crate::train::run::LoraRequest;

/// Options accepted by `Trainer.create`. Every field is optional: with no model and no
/// `trainData` the built-in demo is trained.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateOptions {
    /// The texts of an explicit reference model given as safetensors `refWeights`.
    pub ref_model: Option<ModelFilesText>,
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json` (and optionally
    /// `generation_config.json`, `special_tokens_map.json`, `chat_template.jinja`) texts for
    /// safetensors weights. Not needed for a GGUF file, which carries them.
    pub model: Option<ModelFilesText>,
    /// `dpo` (default) or `sft`.
    pub task: Option<String>,
    /// JSONL text, or an array of row objects.
    pub train_data: Option<DataInput>,
    pub eval_data: Option<DataInput>,
    /// Training settings under their option names (`lr`, `batchSize`, `maxSteps`, ...).
    #[serde(flatten)]
    pub settings: OptionOverrides,
    /// Train LoRA adapters of this rank (the reference is the frozen base).
    pub lora_rank: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_targets: Option<Vec<String>>,
    /// Export the model with adapters folded in rather than the PEFT adapter.
    pub merge_lora: bool,
    /// What the device allows (the worker fills `maxBuffer` from the adapter's limits; a page may
    /// set a `budget`): a run that would not fit is refused before its weights are loaded.
    pub memory_limits: MemoryLimits,
}

impl CreateOptions {
    pub fn lora(&self) -> Option<LoraRequest> {
        self.lora_rank.map(|rank| LoraRequest {
            rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
        })
    }
}

/// The JavaScript option that sets a core setting (`Error::Setting`'s field), for messages.
pub fn option_name(field: &str) -> String {
    match field {
        "learning_rate" => "lr".into(),
        "lr_schedule" => "lrScheduler".into(),
        "model" => "weights (or modelUrl)".into(),
        "ref_model" => "refWeights (or refModelUrl)".into(),
        "model_files" => "model".into(),
        "data" => "trainData".into(),
        other => {
            let mut out = String::new();
            let mut upper = false;
            for c in other.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFilesText {
    config: String,
    tokenizer: String,
    tokenizer_config: Option<String>,
    generation_config: Option<String>,
    special_tokens_map: Option<String>,
    chat_template: Option<String>,
}

impl ModelFilesText {
    fn into_texts(self) -> ModelTexts {
        let carried = [
            self.generation_config,
            self.special_tokens_map,
            self.chat_template,
        ];
        ModelTexts {
            label: "model".into(),
            config_json: self.config,
            tokenizer_json: self.tokenizer,
            tokenizer_config_json: self.tokenizer_config,
            extra_files: CARRIED_FILES
                .iter()
                .zip(carried)
                .filter_map(|(name, text)| Some((name.to_string(), text?)))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum DataInput {
    Jsonl(String),
    Rows(Vec<serde_json::Value>),
}

impl DataInput {
    /// As JSONL text, so rows from JS get the same checks and messages as files.
    pub fn into_jsonl(self, source: &str) -> Jsonl {
        let text = match self {
            DataInput::Jsonl(text) => text,
            DataInput::Rows(rows) => rows
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        Jsonl {
            source: source.into(),
            text,
        }
    }
}

/// `{ [fileName]: Uint8Array }` (or undefined/null) as (name, bytes), sorted by name. Names
/// never reach a file system here; they only pick files of a checkpoint or adapter.
pub fn files_from_js(
    value: &JsValue,
    field: &'static str,
) -> Result<Option<Vec<(String, Vec<u8>)>>> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let object = value
        .dyn_ref::<Object>()
        .filter(|_| !value.is_instance_of::<Uint8Array>())
        .ok_or_else(|| {
            Error::setting(field, "must be an object mapping file names to Uint8Arrays")
        })?;
    let mut files = Vec::new();
    for entry in Object::entries(object).iter() {
        let entry: js_sys::Array = entry.unchecked_into();
        let name = entry.get(0).as_string().unwrap_or_default();
        let bytes = entry
            .get(1)
            .dyn_into::<Uint8Array>()
            .map_err(|_| Error::setting(field, format!("[{name:?}] is not a Uint8Array")))?;
        files.push((name, bytes.to_vec()));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(files))
}

/// Weight bytes handed over from JavaScript: one file (safetensors or GGUF), or safetensors shards
/// by file name (as `model.safetensors.index.json` lists them).
pub enum WeightBytes {
    Single(Vec<u8>),
    Shards(Vec<(String, Vec<u8>)>),
}

impl WeightBytes {
    /// `Uint8Array` | `{ [fileName]: Uint8Array }` | undefined/null. `field` names the setting
    /// in messages (`model`, `ref_model`).
    pub fn from_js(value: &JsValue, field: &'static str) -> Result<Option<Self>> {
        if value.is_undefined() || value.is_null() {
            return Ok(None);
        }
        if let Some(bytes) = value.dyn_ref::<Uint8Array>() {
            return Ok(Some(Self::Single(bytes.to_vec())));
        }
        let not_weights = || {
            Error::setting(
                field,
                "must be a Uint8Array (model.safetensors or a .gguf file) or an object \
                 mapping safetensors shard file names to Uint8Arrays",
            )
        };
        let shards = files_from_js(value, field)?.ok_or_else(not_weights)?;
        if shards.is_empty() {
            return Err(not_weights());
        }
        Ok(Some(Self::Shards(shards)))
    }

    /// The model's texts and weights: a GGUF file on its own, or safetensors with the texts of
    /// `files`. Nothing is on the device yet.
    pub fn open(
        self,
        files: Option<ModelFilesText>,
    ) -> Result<(ModelTexts, Box<dyn WeightSource>)> {
        let shards = match self {
            WeightBytes::Single(bytes) if bytes.starts_with(b"GGUF") => {
                let (texts, source) =
                    gguf::model_texts_and_weights("model.gguf", FileBytes::Owned(bytes))?;
                return Ok((texts, Box::new(source)));
            }
            WeightBytes::Single(bytes) => vec![(WEIGHTS_FILE.to_string(), bytes)],
            WeightBytes::Shards(shards) => shards,
        };
        let files = files.ok_or_else(|| {
            Error::setting(
                "model_files",
                "the config and tokenizer texts are required with safetensors weights",
            )
        })?;
        let label = match shards.as_slice() {
            [(name, _)] => name.clone(),
            _ => format!("{} safetensors shards", shards.len()),
        };
        let source = SafetensorsSource::new(
            &label,
            shards
                .into_iter()
                .map(|(name, bytes)| (name, FileBytes::Owned(bytes)))
                .collect(),
        )?;
        Ok((files.into_texts(), Box::new(source)))
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum ModelChoice {
    #[default]
    Policy,
    Reference,
}

/// Options of `exportModel`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ExportOptions {
    /// Fold LoRA adapters into the weights (a full model) or not (a PEFT adapter).
    pub merge: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GenerateOptions {
    /// `"policy"` (default) or `"reference"`.
    pub model: ModelChoice,
    max_new_tokens: Option<usize>,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seed: Option<u64>,
    /// Wrap the prompt as a user message in the model's chat template.
    chat: bool,
    system: Option<String>,
}

impl GenerateOptions {
    pub fn prompt(&self, text: String) -> Prompt {
        Prompt {
            text,
            chat: self.chat,
            system: self.system.clone(),
        }
    }

    pub fn sampling(&self) -> SamplingOptions {
        let defaults = SamplingOptions::default();
        SamplingOptions {
            max_new_tokens: self.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(defaults.seed),
        }
    }
}
