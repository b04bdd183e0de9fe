//! A model with its config and tokenizer, built from file contents (so the browser, which has
//! bytes rather than paths, uses the same code as the CLI), and exported back to them.

use burn::tensor::Device;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::CausalLm;
use crate::tokenizer::TextTokenizer;
use crate::weights::{TensorWriter, WeightSource};

/// Everything a Hugging Face model directory holds that we use.
pub struct ModelBundle {
    pub config: ModelConfig,
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    /// Other small files of the directory (`generation_config.json`, `special_tokens_map.json`),
    /// written back unchanged on export.
    pub extra_files: Vec<(String, String)>,
}

/// Files besides config, weights and tokenizer that an export carries over.
pub const CARRIED_FILES: [&str; 3] = [
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The text files of a model directory.
pub struct ModelTexts {
    /// Names the source in errors (a directory, a URL, "built-in demo").
    pub label: String,
    pub config_json: String,
    pub tokenizer_json: String,
    pub tokenizer_config_json: Option<String>,
    /// `(file name, contents)` of `CARRIED_FILES` present in the source.
    pub extra_files: Vec<(String, String)>,
}

impl ModelBundle {
    pub fn load(texts: ModelTexts, weights: &dyn WeightSource, device: &Device) -> Result<Self> {
        let config =
            ModelConfig::from_json(&texts.config_json, &format!("{}/config.json", texts.label))?;
        let mut tokenizer = TextTokenizer::from_json(
            texts.tokenizer_json,
            texts.tokenizer_config_json,
            config.eos_token_id,
            &format!("{}/tokenizer.json", texts.label),
        )?;
        // transformers 5 saves the chat template beside the tokenizer config.
        if let Some((_, template)) = texts
            .extra_files
            .iter()
            .find(|(name, _)| name == "chat_template.jinja")
        {
            tokenizer.chat_template = Some(template.clone());
        }
        let model = CausalLm::load(&config, weights, device)?;
        Ok(Self {
            config,
            model,
            tokenizer,
            extra_files: texts.extra_files,
        })
    }
}

impl ModelBundle {
    /// Token ids that end generation: `generation_config.json`'s `eos_token_id` (one or a list)
    /// when present, `config.json`'s otherwise, and the tokenizer's EOS.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let from_generation_config = self
            .extra_files
            .iter()
            .find(|(name, _)| name == "generation_config.json")
            .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| v.get("eos_token_id").cloned());
        let mut ids: Vec<u32> = match from_generation_config {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|n| n as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect(),
            _ => self.config.eos_token_id.into_iter().collect(),
        };
        ids.push(self.tokenizer.eos_id);
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The files of a Hugging Face model directory, as bytes: `transformers` loads them with
/// `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
pub struct ExportedFiles {
    pub files: Vec<(String, Vec<u8>)>,
}

/// Export `model` (its current weights) with `config` and `tokenizer` as Hugging Face files.
/// Reads every weight back from the device asynchronously.
pub async fn export_files(
    model: &CausalLm,
    config: &ModelConfig,
    tokenizer: &TextTokenizer,
    extra_files: &[(String, String)],
) -> Result<ExportedFiles> {
    let weights = export_weights(model).await?;
    let mut files = vec![
        (
            "config.json".to_string(),
            serde_json::to_vec_pretty(&config.raw).expect("JSON value serializes"),
        ),
        ("model.safetensors".to_string(), weights.to_bytes()?),
        (
            "tokenizer.json".to_string(),
            tokenizer.json.clone().into_bytes(),
        ),
    ];
    if let Some(tc) = &tokenizer.config_json {
        files.push(("tokenizer_config.json".to_string(), tc.clone().into_bytes()));
    }
    for (name, text) in extra_files {
        files.push((name.clone(), text.clone().into_bytes()));
    }
    Ok(ExportedFiles { files })
}

/// Every parameter, named and laid out as in Hugging Face checkpoints.
pub async fn export_weights(model: &CausalLm) -> Result<TensorWriter> {
    let mut writer = TensorWriter::default();
    for param in model.named_params() {
        writer.add(param.name.clone(), param.to_host().await?);
    }
    Ok(writer)
}
