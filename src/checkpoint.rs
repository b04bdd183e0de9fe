//! Checkpoints a run can resume from: the model (full, or a PEFT adapter), the optimizer state,
//! and where the schedule is. burn keys optimizer state by parameter id, so the ids of every
//! parameter are recorded by name and given back to the reloaded model.

use std::collections::HashMap;

use burn::optim::ModuleOptimizer;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use crate::bundle::{ExportedFiles, export_files};
use crate::config::ModelConfig;
use crate::error::{Error, Location, Result};
use crate::model::CausalLm;
use crate::peft::{self, LoraSettings};
use crate::tokenizer::TextTokenizer;
use crate::train::{Progress, TrainOptions, Trainer};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// `dpo` or `sft`.
    pub task: String,
    pub progress: Progress,
    pub options: TrainOptions,
    /// Set when the checkpoint holds an adapter rather than a full model.
    pub lora: Option<LoraSettings>,
    /// Parameter name (Hugging Face / PEFT) -> burn parameter id at save time.
    pub param_ids: HashMap<String, u64>,
}

/// Names and ids of every parameter, adapters included.
pub fn param_ids(model: &CausalLm) -> HashMap<String, u64> {
    model
        .named_params()
        .into_iter()
        .chain(peft::adapter_params(model))
        .map(|p| (p.name, p.id.val()))
        .collect()
}

/// What the model part of a save looks like.
#[derive(Clone, Copy)]
pub struct ModelFiles<'a> {
    pub config: &'a ModelConfig,
    pub tokenizer: &'a TextTokenizer,
    pub extra_files: &'a [(String, String)],
    /// `Some` (and not merging): write a PEFT adapter instead of the full model.
    pub lora: Option<&'a LoraSettings>,
    /// Fold adapters into the weights and write a full model.
    pub merge_lora: bool,
    /// `base_model_name_or_path` for adapters.
    pub base_model: &'a str,
}

/// The model as files: a Hugging Face directory, or a PEFT adapter plus the tokenizer files.
pub async fn model_files(model: &CausalLm, how: &ModelFiles<'_>) -> Result<ExportedFiles> {
    match how.lora.filter(|_| !how.merge_lora) {
        None => export_files(model, how.config, how.tokenizer, how.extra_files).await,
        Some(settings) => {
            let mut files =
                peft::export(model, settings, how.config.family(), how.base_model).await?;
            files.files.push((
                "tokenizer.json".into(),
                how.tokenizer.json.clone().into_bytes(),
            ));
            if let Some(tc) = &how.tokenizer.config_json {
                files
                    .files
                    .push(("tokenizer_config.json".into(), tc.clone().into_bytes()));
            }
            Ok(files)
        }
    }
}

/// Everything to resume `trainer`: model files, optimizer state, trainer state.
pub async fn checkpoint_files(
    trainer: &Trainer,
    task: &str,
    how: &ModelFiles<'_>,
) -> Result<ExportedFiles> {
    let policy = trainer.policy();
    let mut files = model_files(
        &policy,
        &ModelFiles {
            merge_lora: false,
            ..*how
        },
    )
    .await?;
    let optimizer = trainer
        .optimizer()
        .into_bytes()
        .map_err(|e| Error::Invalid(format!("serializing optimizer state: {e:?}")))?;
    files
        .files
        .push((OPTIMIZER_FILE.into(), optimizer.to_vec()));
    let state = TrainerState {
        task: task.into(),
        progress: trainer.progress().clone(),
        options: trainer.options().clone(),
        lora: how.lora.cloned(),
        param_ids: param_ids(&policy),
    };
    files.files.push((
        STATE_FILE.into(),
        serde_json::to_vec_pretty(&state).expect("state serializes"),
    ));
    Ok(files)
}

pub fn parse_state(text: &str, source: &str) -> Result<TrainerState> {
    serde_json::from_str(text).map_err(|e| {
        Error::input(
            Location::file(source).line(e.line()),
            format!("invalid trainer state: {e}"),
        )
    })
}

/// Optimizer state bytes loaded into an optimizer built for the same parameters.
pub fn load_optimizer(
    optimizer: ModuleOptimizer,
    bytes: Vec<u8>,
    source: &str,
) -> Result<ModuleOptimizer> {
    optimizer
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| {
            Error::input(
                Location::file(source),
                format!("unreadable optimizer state: {e:?}"),
            )
        })
}
