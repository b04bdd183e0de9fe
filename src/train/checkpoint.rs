//! Checkpoints a run can resume from: the model (full, or a PEFT adapter), the optimizer state,
//! and where the schedule is. burn keys optimizer state by parameter id, so the ids of every
//! parameter are recorded by name and given back to the reloaded model.
//!
//! Saving turns a [`Trainer`] into files; resuming decodes them into a [`SavedRun`] that
//! `run.rs` builds the model from and [`restore`]s into the new trainer. The trainer itself never
//! sees a checkpoint.

use std::collections::HashMap;

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
/// The optimizer state (`train/optimizer.rs`): moments or velocity per parameter id.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
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
    let optimizer = trainer.optimizer().to_bytes().await?;
    files.files.push((OPTIMIZER_FILE.into(), optimizer));
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
    let mut optimizer = trainer.optimizer().clone();
    optimizer.load_bytes(
        saved.optimizer.clone(),
        &format!("{}/{OPTIMIZER_FILE}", saved.label),
        trainer.device(),
    )?;
    trainer.restore(optimizer, saved.state.progress.clone())
}

/// A checkpoint folder written by a run's `save_every` (weights memory-mapped).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_dir(dir: &std::path::Path) -> Result<SavedRun> {
    use crate::io::safetensors::FileBytes;
    let open = |name: &str| {
        let path = dir.join(name);
        if name.ends_with(".safetensors") {
            FileBytes::map(&path)
        } else {
            std::fs::read(&path)
                .map(FileBytes::Owned)
                .map_err(|e| Error::io(path.display(), e))
        }
    };
    let best_dir = dir.join(BEST_MODEL_DIR);
    let best_model = || {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&best_dir).map_err(|e| Error::io(best_dir.display(), e))?;
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
        Ok(ExportedFiles { files })
    };
    decode(&dir.display().to_string(), open, best_model)
}

/// A checkpoint handed over as files (name -> bytes, names as [`checkpoint_files`] gives
/// them: `best-model/...` and `reference/...` inside), as the browser keeps them.
pub fn from_files(label: &str, files: Vec<(String, Vec<u8>)>) -> Result<SavedRun> {
    use crate::io::safetensors::FileBytes;
    let mut files: HashMap<String, Vec<u8>> = files.into_iter().collect();
    let best_prefix = format!("{BEST_MODEL_DIR}/");
    let best: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter_map(|(name, bytes)| {
            let rest = name.strip_prefix(&best_prefix)?;
            Some((rest.to_string(), bytes.clone()))
        })
        .collect();
    let open = |name: &str| {
        files.remove(name).map(FileBytes::Owned).ok_or_else(|| {
            Error::input(
                Location::file(format!("{label}/{name}")),
                "missing from the checkpoint",
            )
        })
    };
    decode(label, open, || Ok(ExportedFiles { files: best }))
}

/// The one rule for what a checkpoint holds: `trainer_state.json` says whether the model is a
/// full one or an adapter, and whether early stopping's best model and TR-DPO's reference are
/// there. `open` gives a file's bytes by its name inside the checkpoint.
fn decode(
    label: &str,
    mut open: impl FnMut(&str) -> Result<crate::io::safetensors::FileBytes>,
    best_model: impl FnOnce() -> Result<ExportedFiles>,
) -> Result<SavedRun> {
    use crate::io::model_dir::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, WEIGHTS_FILE};
    use crate::io::safetensors::SafetensorsSource;
    let text = |bytes: crate::io::safetensors::FileBytes, name: &str| {
        String::from_utf8(bytes.as_ref().to_vec()).map_err(|_| {
            Error::input(
                Location::file(format!("{label}/{name}")),
                "is not UTF-8 text",
            )
        })
    };
    let safetensors = |name: &str, bytes| {
        let path = format!("{label}/{name}");
        SafetensorsSource::new(path.clone(), vec![(path, bytes)])
    };
    let state_bytes = open(STATE_FILE)?;
    let state = parse_state(
        &text(state_bytes, STATE_FILE)?,
        &format!("{label}/{STATE_FILE}"),
    )?;
    let weights = match state.lora {
        Some(_) => SavedWeights::Adapter(AdapterFiles {
            label: label.to_string(),
            config_json: text(open(ADAPTER_CONFIG_FILE)?, ADAPTER_CONFIG_FILE)?,
            weights: Box::new(safetensors(
                ADAPTER_WEIGHTS_FILE,
                open(ADAPTER_WEIGHTS_FILE)?,
            )?),
        }),
        None => SavedWeights::Full(Box::new(safetensors(WEIGHTS_FILE, open(WEIGHTS_FILE)?)?)),
    };
    let reference: Option<Box<dyn WeightSource>> = match state.options.sync_ref_model {
        true => Some(Box::new(safetensors(
            REFERENCE_WEIGHTS,
            open(REFERENCE_WEIGHTS)?,
        )?)),
        false => None,
    };
    let optimizer = open(OPTIMIZER_FILE)?.as_ref().to_vec();
    let best_model = match state.early_stopping {
        Some(_) => Some(best_model()?),
        None => None,
    };
    Ok(SavedRun {
        label: label.to_string(),
        state,
        optimizer,
        weights,
        best_model,
        reference,
    })
}
