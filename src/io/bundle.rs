//! A model with its config and tokenizer, built from file contents (so the browser, which has
//! bytes rather than paths, uses the same code as the CLI), and exported back to files.

use burn::tensor::Device;

use super::model_dir::{
    CONFIG_FILE, ModelTexts, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use super::peft::{self, AdapterFiles};
use super::safetensors::TensorWriter;
use crate::error::{Error, Location, Result};
use crate::model::CausalLm;
use crate::model::config::ModelConfig;
use crate::model::lora::LoraSettings;
use crate::model::weights::WeightSource;
use crate::text::tokenizer::TextTokenizer;

/// Everything a Hugging Face model folder holds that we use.
pub struct ModelBundle {
    pub config: ModelConfig,
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    /// Other small files of the folder (`generation_config.json`, `special_tokens_map.json`,
    /// `chat_template.jinja`), written back unchanged on export.
    pub extra_files: Vec<(String, String)>,
}

impl ModelBundle {
    pub fn load(texts: ModelTexts, weights: &dyn WeightSource, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_json(
            &texts.config_json,
            &format!("{}/{CONFIG_FILE}", texts.label),
        )?;
        let mut tokenizer = TextTokenizer::from_json(
            texts.tokenizer_json,
            texts.tokenizer_config_json,
            config.eos_token_id,
            &format!("{}/{TOKENIZER_FILE}", texts.label),
        )?;
        // transformers 5 saves the chat template beside the tokenizer config.
        if let Some((_, template)) = texts
            .extra_files
            .iter()
            .find(|(name, _)| name == "chat_template.jinja")
        {
            tokenizer.chat_template = Some(template.clone());
        }
        check_vocabulary(&config, &tokenizer, &texts.label)?;
        let model = CausalLm::load(&config, weights, device)?;
        Ok(Self {
            config,
            model,
            tokenizer,
            extra_files: texts.extra_files,
        })
    }

    /// The model with a PEFT adapter applied.
    pub fn with_adapter(mut self, adapter: &AdapterFiles, device: &Device) -> Result<Self> {
        self.model = peft::load(self.model, adapter, None, device)?.0;
        Ok(self)
    }

    /// Token ids that end generation (see [`stop_tokens`]).
    pub fn stop_tokens(&self) -> Vec<u32> {
        stop_tokens(&self.config, &self.tokenizer, &self.extra_files)
    }
}

/// Every id the tokenizer can produce, and every special token id, must have an embedding row.
fn check_vocabulary(config: &ModelConfig, tokenizer: &TextTokenizer, label: &str) -> Result<()> {
    let vocab = config.vocab_size();
    let outside = |field: &str, file: &str, what: String| {
        Err(Error::input(
            Location::file(format!("{label}/{file}")).field(field),
            format!("{what} is outside the model's vocab_size {vocab} ({CONFIG_FILE})"),
        ))
    };
    if let Some((id, token)) = tokenizer.max_token()
        && id as usize >= vocab
    {
        return outside(
            "model.vocab",
            TOKENIZER_FILE,
            format!("token {token:?} (id {id})"),
        );
    }
    for (field, id) in [
        ("eos_token_id", config.eos_token_id),
        ("bos_token_id", config.bos_token_id),
        ("pad_token_id", config.pad_token_id),
    ] {
        if let Some(id) = id
            && id as usize >= vocab
        {
            return outside(field, CONFIG_FILE, format!("id {id}"));
        }
    }
    Ok(())
}

/// Token ids that end generation: `generation_config.json`'s `eos_token_id` (one or a list)
/// when present, `config.json`'s otherwise, and the tokenizer's EOS.
pub fn stop_tokens(
    config: &ModelConfig,
    tokenizer: &TextTokenizer,
    extra_files: &[(String, String)],
) -> Vec<u32> {
    let from_generation_config = extra_files
        .iter()
        .find(|(name, _)| name == "generation_config.json")
        .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|v| v.get("eos_token_id").cloned());
    let mut ids: Vec<u32> = match from_generation_config {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => config.eos_token_id.into_iter().collect(),
    };
    ids.push(tokenizer.eos_id);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Files as bytes, by name: a Hugging Face model folder, a PEFT adapter, a checkpoint.
#[derive(Debug, Clone)]
pub struct ExportedFiles {
    pub files: Vec<(String, Vec<u8>)>,
}

/// How a trained model is written out: everything but the weights, and whether they go out as
/// a full model or a PEFT adapter. The one export rule for final models, checkpoints and the
/// browser's `exportModel`.
#[derive(Clone)]
pub struct ExportSpec {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub extra_files: Vec<(String, String)>,
    /// `Some` (and not merging): write a PEFT adapter instead of the full model.
    pub lora: Option<LoraSettings>,
    /// Fold adapters into the weights and write a full model.
    pub merge_lora: bool,
    /// `base_model_name_or_path` of adapters.
    pub base_model: String,
}

impl ExportSpec {
    /// Writes a PEFT adapter rather than a full model.
    pub fn writes_adapter(&self) -> bool {
        self.lora.is_some() && !self.merge_lora
    }

    pub fn stop_tokens(&self) -> Vec<u32> {
        stop_tokens(&self.config, &self.tokenizer, &self.extra_files)
    }

    /// `model` as files: a Hugging Face model folder (`transformers` loads it with
    /// `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`), or a PEFT
    /// adapter plus the tokenizer files. Reads every weight back from the device asynchronously.
    pub async fn model_files(&self, model: &CausalLm) -> Result<ExportedFiles> {
        self.files(model, self.merge_lora).await
    }

    /// The model part of a checkpoint: adapters are never merged there, so training resumes.
    pub async fn checkpoint_model_files(&self, model: &CausalLm) -> Result<ExportedFiles> {
        self.files(model, false).await
    }

    async fn files(&self, model: &CausalLm, merge_lora: bool) -> Result<ExportedFiles> {
        let adapter = self.lora.as_ref().filter(|_| !merge_lora);
        let mut files = match adapter {
            Some(settings) => {
                peft::export(model, settings, self.config.family(), &self.base_model)
                    .await?
                    .files
            }
            None => vec![
                (
                    CONFIG_FILE.to_string(),
                    serde_json::to_vec_pretty(&self.config.raw).expect("JSON value serializes"),
                ),
                (
                    WEIGHTS_FILE.to_string(),
                    export_weights(model).await?.to_bytes()?,
                ),
            ],
        };
        files.push((
            TOKENIZER_FILE.to_string(),
            self.tokenizer.json.clone().into_bytes(),
        ));
        if let Some(tc) = &self.tokenizer.config_json {
            files.push((TOKENIZER_CONFIG_FILE.to_string(), tc.clone().into_bytes()));
        }
        if adapter.is_none() {
            for (name, text) in &self.extra_files {
                files.push((name.clone(), text.clone().into_bytes()));
            }
        }
        Ok(ExportedFiles { files })
    }
}

/// Every parameter, named and laid out as in Hugging Face checkpoints.
pub async fn export_weights(model: &CausalLm) -> Result<TensorWriter> {
    let mut writer = TensorWriter::default();
    for param in model.named_params() {
        writer.add(param.name.clone(), param.to_host().await?);
    }
    Ok(writer)
}
