//! Checkpoints a run can resume from: the model (full, or a PEFT adapter), the optimizer state,
//! and where the schedule is. burn keys optimizer state by parameter id, so the ids of every
//! parameter are recorded by name and given back to the reloaded model.
//!
//! Saving turns a [`Trainer`] into files; resuming decodes them into a [`SavedRun`] that
//! `run.rs` builds the model from and [`restore`]s into the new trainer. The trainer itself never
//! sees a checkpoint.

use std::collections::HashMap;

use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::options::{Task, TrainOptions};
use super::trainer::{Progress, Trainer};
use crate::error::{Error, Location, Result};
use crate::io::bundle::{ExportSpec, ExportedFiles};
use crate::io::peft::{AdapterFiles, peft_name};
use crate::model::CausalLm;
use crate::model::lora::LoraSettings;
use crate::model::weights::WeightSource;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The folder inside a checkpoint that holds early stopping's best model so far.
pub const BEST_MODEL_DIR: &str = "best-model";
/// TR-DPO's reference weights (it changes during the run), inside a checkpoint.
pub const REFERENCE_WEIGHTS: &str = "reference/model.safetensors";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub task: Task,
    pub progress: Progress,
    pub options: TrainOptions,
    /// Set when the checkpoint holds an adapter rather than a full model.
    pub lora: Option<LoraSettings>,
    /// Parameter name (Hugging Face / PEFT) -> burn parameter id at save time.
    pub param_ids: HashMap<String, u64>,
    /// Early stopping's bookkeeping (its best model is in `best-model/`).
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingState>,
}

/// Where early stopping stands: the best evaluation so far and how many since did not beat it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlyStoppingState {
    pub best_step: usize,
    pub best_value: f64,
    pub best_metrics: Metrics,
    pub best_test: Option<Metrics>,
    pub evaluations_without_improvement: usize,
}

/// A decoded checkpoint.
pub struct SavedRun {
    /// Names the checkpoint in messages (its folder).
    pub label: String,
    pub state: TrainerState,
    pub optimizer: Vec<u8>,
    pub weights: SavedWeights,
    /// Early stopping's best model so far, as files (with `state.early_stopping`).
    pub best_model: Option<ExportedFiles>,
    /// TR-DPO's reference as it stood (with `state.options.sync_ref_model`).
    pub reference: Option<Box<dyn WeightSource>>,
}

/// The model part of a checkpoint.
pub enum SavedWeights {
    /// A full model's weights (config and tokenizer are the run's own).
    Full(Box<dyn WeightSource>),
    /// A PEFT adapter for the run's base model.
    Adapter(AdapterFiles),
}

/// Names and ids of every parameter, adapters included (under PEFT's names, as in the files).
pub fn param_ids(model: &CausalLm) -> HashMap<String, u64> {
    let base = model.named_params().into_iter().map(|p| (p.name, p.id));
    let adapters = model
        .adapter_params()
        .into_iter()
        .map(|p| (peft_name(&p.name), p.id));
    base.chain(adapters)
        .map(|(name, id)| (name, id.val()))
        .collect()
}

/// Everything to resume `trainer`: model files (never merged), optimizer state, trainer state.
pub async fn checkpoint_files(
    trainer: &Trainer,
    task: Task,
    export: &ExportSpec,
    early_stopping: Option<(EarlyStoppingState, &ExportedFiles)>,
) -> Result<ExportedFiles> {
    let policy = trainer.policy();
    let mut files = export.checkpoint_model_files(&policy).await?;
    let optimizer = trainer
        .optimizer()
        .into_bytes()
        .map_err(|e| Error::Invalid(format!("serializing optimizer state: {e:?}")))?;
    files
        .files
        .push((OPTIMIZER_FILE.into(), optimizer.to_vec()));
    let state = TrainerState {
        task,
        progress: trainer.progress().clone(),
        options: trainer.options().clone(),
        lora: export.lora.clone(),
        param_ids: param_ids(&policy),
        early_stopping: early_stopping.as_ref().map(|(state, _)| state.clone()),
    };
    files.files.push((
        STATE_FILE.into(),
        serde_json::to_vec_pretty(&state).expect("state serializes"),
    ));
    if trainer.options().sync_ref_model
        && let Some(reference) = trainer.reference_model()
    {
        let weights = crate::io::bundle::export_weights(reference).await?;
        let bytes = weights
            .to_bytes()
            .map_err(|e| Error::Invalid(format!("serializing the reference: {e}")))?;
        files.files.push((REFERENCE_WEIGHTS.into(), bytes));
    }
    if let Some((_, best)) = early_stopping {
        for (name, bytes) in &best.files {
            files
                .files
                .push((format!("{BEST_MODEL_DIR}/{name}"), bytes.clone()));
        }
    }
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

/// Put a saved run's optimizer state and schedule position into `trainer`, which was built for
/// the same parameters (with the recorded ids).
pub fn restore(trainer: &mut Trainer, saved: &SavedRun) -> Result<()> {
    let optimizer = trainer
        .optimizer()
        .clone()
        .from_bytes(Bytes::from_bytes_vec(saved.optimizer.clone()))
        .map_err(|e| {
            Error::input(
                Location::file(format!("{}/{OPTIMIZER_FILE}", saved.label)),
                format!("unreadable optimizer state: {e:?}"),
            )
        })?;
    trainer.restore(optimizer, saved.state.progress.clone())
}

/// A checkpoint folder written by a run's `save_every`.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_dir(dir: &std::path::Path) -> Result<SavedRun> {
    use crate::io::native::files::{read_adapter, read_text, weights_in};
    let path = dir.join(STATE_FILE);
    let state = parse_state(&read_text(&path)?, &path.display().to_string())?;
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let optimizer =
        std::fs::read(&optimizer_path).map_err(|e| Error::io(optimizer_path.display(), e))?;
    let weights = match state.lora {
        Some(_) => SavedWeights::Adapter(read_adapter(dir)?),
        None => SavedWeights::Full(Box::new(weights_in(dir)?)),
    };
    let best_dir = dir.join(BEST_MODEL_DIR);
    let best_model = match state.early_stopping {
        Some(_) => {
            let mut files = Vec::new();
            let entries =
                std::fs::read_dir(&best_dir).map_err(|e| Error::io(best_dir.display(), e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(best_dir.display(), e))?.path();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if path.is_file() && !name.starts_with('.') {
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
                    files.push((name, bytes));
                }
            }
            Some(ExportedFiles { files })
        }
        None => None,
    };
    let reference: Option<Box<dyn WeightSource>> = match state.options.sync_ref_model {
        true => Some(Box::new(crate::io::native::files::weights_file(
            &dir.join(REFERENCE_WEIGHTS),
        )?)),
        false => None,
    };
    Ok(SavedRun {
        label: dir.display().to_string(),
        state,
        optimizer,
        weights,
        best_model,
        reference,
    })
}
