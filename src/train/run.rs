//! One run, assembled in one place for every caller (the CLI, the browser, the benchmark, the
//! tests): a [`RunSpec`] says what the user asked for, [`Run::new`] turns it into a ready
//! [`Trainer`], the [`ExportSpec`] its results are written with, and a [`Summary`] for the shell
//! to show. The rules that used to be repeated per shell live here once:
//! - which model is the reference (see [`Run::new`]);
//! - how settings override TRL's defaults ([`OptionOverrides`]) and when a checkpoint's win;
//! - how rows become tokenized training and evaluation examples;
//! - the built-in demo when there is neither a model nor data;
//! - the training loop with evaluations and checkpoints ([`Run::train`]).
//!
//! Nothing here reads a file or prints: the shells load models and data (paths, URLs, bytes)
//! and present what comes back.

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::checkpoint::{self, SavedRun, SavedWeights};
use super::demo;
use super::memory::{self, MemoryEstimate};
use super::metrics::{Metrics, StepReport};
use super::options::{OptionOverrides, Task, TrainOptions};
use super::trainer::{TaskData, TestData, Trainer};
use crate::backend::SelectedDevice;
use crate::error::{Error, Result};
use crate::io::bundle::{ExportSpec, ExportedFiles, ModelBundle};
use crate::io::peft::{self, AdapterFiles};
use crate::model::config::{Family, ModelConfig};
use crate::model::lora::{self, LoraSettings};
use crate::model::weights::WithParamIds;
use crate::model::{CausalLm, Kernels};
use crate::text::collate::TruncationMode;
use crate::text::rows::Jsonl;
use crate::text::tokenize::{tokenize_pairs, tokenize_sft, tokenize_split_pairs};
use crate::text::tokenizer::TextTokenizer;

/// Fresh LoRA adapters: PEFT's defaults fill what is `None`.
#[derive(Debug, Clone, Default)]
pub struct LoraRequest {
    pub rank: usize,
    pub alpha: Option<f64>,
    pub targets: Option<Vec<String>>,
}

/// What the user asked for. Errors about it name these fields (`model`, `data`, `eval_data`,
/// `lora_rank`, `resume_from`, and `TrainOptions`' fields).
pub struct RunSpec {
    pub task: Task,
    /// The starting model; `None` (with no `rows`, for DPO) trains the built-in demo.
    pub model: Option<ModelBundle>,
    /// Names the model in exported adapters (`base_model_name_or_path`).
    pub model_label: String,
    pub rows: Option<Jsonl>,
    pub eval_rows: Option<Jsonl>,
    /// Held-out rows for the final test report (before vs after training).
    pub test_rows: Option<Jsonl>,
    pub overrides: OptionOverrides,
    /// Train fresh adapters instead of every weight.
    pub lora: Option<LoraRequest>,
    /// Start from an existing PEFT adapter (its settings are kept; wins over `lora`).
    pub adapter: Option<AdapterFiles>,
    /// An explicit DPO reference model.
    pub reference: Option<CausalLm>,
    /// Continue a checkpoint (its options replace the overrides).
    pub resume: Option<SavedRun>,
    /// Export the model with adapters folded in rather than the PEFT adapter.
    pub merge_lora: bool,
    /// Options the overrides apply to instead of the defaults (a new round keeps its run's).
    pub base_options: Option<TrainOptions>,
}

/// The settings of a run that can be checked before anything is loaded: the shells call this
/// first, so a bad flag fails in milliseconds, not after a model download.
pub fn check_settings(
    task: Task,
    overrides: &OptionOverrides,
    lora: Option<&LoraRequest>,
    explicit_reference: bool,
) -> Result<()> {
    let mut options = TrainOptions::defaults_for(task);
    overrides.apply(&mut options)?;
    options.validate(task)?;
    if explicit_reference {
        refuse_reference(&options)?;
    }
    if let Some(request) = lora {
        LoraSettings::new(
            request.rank,
            request.alpha,
            request.targets.clone(),
            Family::Llama,
        )
        .validate()?;
    }
    Ok(())
}

/// What a fresh run of `task` on a model with `config` will hold on the device, worked out before
/// its weights are loaded (the browser refuses a run that cannot fit). Options as `Run::new`
/// resolves them for a fresh run: the task's defaults, `overrides`, `max_length` fitted to the
/// model's positions (`fresh_options`). `reference` is the config of an explicit reference model;
/// `device` the one the run will train on.
pub fn planned_memory(
    task: Task,
    config: &ModelConfig,
    overrides: &OptionOverrides,
    lora: Option<&LoraRequest>,
    reference: Option<&ModelConfig>,
    device: &Device,
) -> Result<MemoryEstimate> {
    let (options, _) = fresh_options(task, false, overrides, config)?;
    let lora = lora.map(|r| LoraSettings::new(r.rank, r.alpha, r.targets.clone(), config.family()));
    Ok(memory::estimate(
        task,
        config,
        &options,
        lora.as_ref(),
        reference.map(memory::parameter_count),
        Kernels::on(device),
    ))
}

/// The options of a fresh run (the one rule, for `Run::new` and `planned_memory`): the task's
/// defaults (or the demo's), `overrides`, and `max_length` lowered to the model's positions when
/// the user did not set it (returned when it was).
fn fresh_options(
    task: Task,
    demo: bool,
    overrides: &OptionOverrides,
    config: &ModelConfig,
) -> Result<(TrainOptions, Option<usize>)> {
    let mut options = if demo {
        demo::train_options()
    } else {
        TrainOptions::defaults_for(task)
    };
    overrides.apply(&mut options)?;
    let fitted = match overrides.max_length {
        None => options.fit_max_length(config.max_positions()),
        Some(_) => None,
    };
    Ok((options, fitted))
}

/// SimPO and ORPO load no reference model, so naming one is a mistake worth reporting.
fn refuse_reference(options: &TrainOptions) -> Result<()> {
    match options.loss.reference_free() {
        Some(method) => Err(Error::setting(
            "ref_model",
            format!("{method} is reference-free: it uses no reference model"),
        )),
        None => Ok(()),
    }
}

impl RunSpec {
    /// A spec with nothing chosen yet: the demo, TRL's defaults.
    pub fn new(task: Task) -> Self {
        Self {
            task,
            model: None,
            model_label: String::new(),
            rows: None,
            eval_rows: None,
            test_rows: None,
            overrides: OptionOverrides::default(),
            lora: None,
            adapter: None,
            reference: None,
            resume: None,
            merge_lora: false,
            base_options: None,
        }
    }
}

/// Why tokenization dropped examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// DPO (TRL's filter): the prompt alone has `max_length` tokens or more.
    PromptFillsMaxLength,
    /// SFT: no completion token lies within `max_length`.
    NoCompletionWithinMaxLength,
}

/// Examples of one data set after tokenization.
#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    pub source: String,
    pub kept: usize,
    pub dropped: usize,
}

impl DataSummary {
    /// A data set whose every example was dropped is an error that says why.
    fn check_not_all_dropped(&self, task: Task, max_length: Option<usize>) -> Result<()> {
        if self.kept > 0 || self.dropped == 0 {
            return Ok(());
        }
        let limit = max_length.map_or("no limit".to_string(), |m| m.to_string());
        let why = match task {
            Task::Dpo => format!(
                "every one of its {} pairs has a prompt of at least max_length ({limit}) tokens, \
                 and TRL drops such pairs; raise max_length or shorten the prompts",
                self.dropped
            ),
            Task::Sft => format!(
                "none of its {} rows has a completion token within max_length ({limit}); \
                 raise max_length",
                self.dropped
            ),
        };
        Err(Error::setting(
            "max_length",
            format!("nothing left of {}: {why}", self.source),
        ))
    }
}

/// What the shells report about a run before it starts.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub task: Task,
    pub family: Family,
    pub demo: bool,
    pub device: String,
    pub train: DataSummary,
    pub eval: Option<DataSummary>,
    pub test: Option<DataSummary>,
    pub drop_reason: DropReason,
    /// Set when the default `max_length` was lowered to the model's positions.
    pub max_length_fitted: Option<usize>,
    pub lora: Option<LoraSettings>,
    /// Numbers training changes (the adapters' with LoRA).
    pub trainable_parameters: usize,
    /// Numbers in the model (base weights and adapters).
    pub parameters: usize,
    /// What the run holds on the device (`train/memory.rs`).
    pub memory: MemoryEstimate,
    /// The checkpoint this run resumed from (its label) and the step it resumed at.
    pub resumed: Option<(String, usize)>,
}

/// A ready run.
pub struct Run {
    pub trainer: Trainer,
    pub export: ExportSpec,
    pub summary: Summary,
    /// With early stopping: the best evaluation so far and the model then, which is exported.
    best: Option<Best>,
    /// Evaluations since the best one (early stopping's patience count).
    without_improvement: usize,
}

/// The best model of a run that keeps it (`early_stopping_patience`).
struct Best {
    step: usize,
    value: f64,
    metrics: Metrics,
    test: Option<Metrics>,
    files: ExportedFiles,
}

/// How often [`Run::train`] evaluates and checkpoints (0: only before and after / never).
#[derive(Debug, Clone, Copy, Default)]
pub struct Schedule {
    pub eval_every: usize,
    pub save_every: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    During,
    After,
}

/// What [`Run::train`] reports as it goes.
pub enum Event {
    Stepped(StepReport),
    Evaluated {
        phase: Phase,
        step: usize,
        metrics: Metrics,
    },
    /// Files to resume from at `step` (the shell writes them).
    Checkpoint {
        step: usize,
        files: ExportedFiles,
    },
    /// The test examples, before training (the starting model) and after (the kept model).
    Tested {
        phase: Phase,
        step: usize,
        metrics: Metrics,
    },
    /// An evaluation improved on the best so far (early stopping keeps this model).
    NewBest {
        step: usize,
        value: f64,
    },
    /// Early stopping: `patience` evaluations in a row did not improve; the model of `best_step`
    /// is kept.
    StoppedEarly {
        step: usize,
        best_step: usize,
    },
}

/// What a finished [`Run::train`] measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub before: Option<Metrics>,
    /// The kept model's evaluation: the last one, or the best one with early stopping.
    pub after: Option<Metrics>,
    /// The test examples on the starting model and on the kept one.
    pub test_before: Option<Metrics>,
    pub test_after: Option<Metrics>,
    /// With early stopping: the step whose model is kept.
    pub best_step: Option<usize>,
    pub step_seconds: Vec<f64>,
    /// `stop` asked the run to end early; a checkpoint of where it stopped was reported.
    pub interrupted: bool,
}

impl Outcome {
    /// Mean seconds per step without the first (which compiles shaders), and how many steps
    /// that mean covers.
    pub fn steady_step_seconds(&self) -> Option<(f64, usize)> {
        let steady = &self.step_seconds.get(1..)?;
        (!steady.is_empty()).then(|| {
            (
                steady.iter().sum::<f64>() / steady.len() as f64,
                steady.len(),
            )
        })
    }
}

impl Run {
    /// Build the run. The reference (DPO) is the explicit `reference` if given, otherwise the
    /// model the run started from: the base model plus the starting adapter when there is one
    /// (fresh adapters start at zero, so the frozen base is it); a resumed run's reference is
    /// still its original start. It shares the base's weights, so LoRA keeps one model in memory.
    pub fn new(spec: RunSpec, device: &SelectedDevice) -> Result<Self> {
        let task = spec.task;
        let demo = spec.model.is_none();
        if spec.adapter.is_some() && spec.lora.is_some() {
            return Err(Error::setting(
                "lora_adapter",
                "an existing adapter keeps its own rank and targets: start from it or \
                 from fresh adapters of a given rank, not both",
            ));
        }
        match (&spec.model, &spec.rows) {
            (None, Some(_)) => {
                return Err(Error::setting(
                    "model",
                    "training data needs a model (give neither for the built-in demo)",
                ));
            }
            (None, None) if task == Task::Sft => {
                return Err(Error::setting(
                    "model",
                    "sft needs a model and training data",
                ));
            }
            (Some(_), None) => {
                return Err(Error::setting(
                    "data",
                    "a model needs training data (give neither for the built-in demo)",
                ));
            }
            _ => {}
        }
        if let Some(saved) = &spec.resume
            && saved.state.task != task
        {
            return Err(Error::setting(
                "resume_from",
                format!(
                    "{} holds a {} checkpoint, not {task}",
                    saved.label, saved.state.task
                ),
            ));
        }

        let bundle = match spec.model {
            Some(bundle) => bundle,
            None => demo::model(&device.device)?,
        };
        let (options, max_length_fitted) = match (&spec.resume, &spec.base_options) {
            (Some(saved), _) => (saved.state.options.clone(), None),
            (None, Some(base)) => {
                let mut options = base.clone();
                spec.overrides.apply(&mut options)?;
                (options, None)
            }
            (None, None) => fresh_options(task, demo, &spec.overrides, &bundle.config)?,
        };
        options.validate(task)?;
        if spec.reference.is_some() {
            refuse_reference(&options)?;
        }
        let reference_free = task == Task::Dpo && options.loss.reference_free().is_some();

        let ModelBundle {
            config,
            model: base,
            tokenizer,
            extra_files,
        } = bundle;
        let device_ref = &device.device;
        let (origin, start_adapter) = match &spec.adapter {
            Some(files) => {
                let (model, settings) = peft::load(base.clone(), files, None, device_ref)?;
                (model, Some(settings))
            }
            None => (base.clone(), None),
        };
        let (policy, lora) = match spec
            .resume
            .as_ref()
            .map(|s| (&s.weights, &s.state.param_ids))
        {
            Some((SavedWeights::Adapter(files), ids)) => {
                let (model, settings) = peft::load(base, files, Some(ids), device_ref)?;
                (model, Some(settings))
            }
            Some((SavedWeights::Full(weights), ids)) => {
                let with_ids = WithParamIds {
                    inner: weights.as_ref(),
                    ids,
                };
                (CausalLm::load(&config, &with_ids, device_ref)?, None)
            }
            None => match (start_adapter, &spec.lora) {
                (Some(settings), _) => (origin.clone(), Some(settings)),
                (None, Some(request)) => {
                    let settings = LoraSettings::new(
                        request.rank,
                        request.alpha,
                        request.targets.clone(),
                        config.family(),
                    );
                    let policy = lora::attach(base, &settings, options.seed, device_ref)?;
                    (policy, Some(settings))
                }
                (None, None) => (origin.clone(), None),
            },
        };
        if options.sync_ref_model && lora.is_some() {
            return Err(Error::setting(
                "sync_ref_model",
                "does not work with LoRA: the reference is the frozen base, which the adapters \
                 cannot be blended into (TRL refuses it with PEFT too); use full fine-tuning",
            ));
        }
        let policy = match options.trainable_layers {
            Some(_) if lora.is_some() => {
                return Err(Error::setting(
                    "trainable_layers",
                    "applies to full fine-tuning; LoRA already trains only its adapters (choose \
                     the modules with lora_targets)",
                ));
            }
            Some(top) => policy.freeze_lower_blocks(top)?,
            None => policy,
        }
        .with_dropout(options.dropout);

        let (mut train_rows, eval_rows, demo_label) = if demo {
            let (train, eval) = demo::pairs(options.seed, demo::DEMO_PAIRS.0, demo::DEMO_PAIRS.1);
            (Rows::Pairs(train), Some(Rows::Pairs(eval)), "built-in demo")
        } else {
            let rows = spec.rows.as_ref().expect("checked above");
            let eval = spec
                .eval_rows
                .as_ref()
                .map(|j| Rows::parse(task, j))
                .transpose()?;
            (Rows::parse(task, rows)?, eval, "")
        };
        let test_rows = spec
            .test_rows
            .as_ref()
            .map(|j| Rows::parse(task, j))
            .transpose()?;
        let source = |jsonl: Option<&Jsonl>, demo_name: &str| {
            jsonl.map_or_else(|| demo_name.to_string(), |j| j.source.clone())
        };
        let train_source = source(spec.rows.as_ref(), demo_label);
        // Held-out shares of the training rows, or separate files: one or the other.
        let (val_split, test_split) = (options.val_split, options.test_split);
        for (share, file, field, flag_field) in [
            (
                val_split,
                spec.eval_rows.is_some(),
                "val_split",
                "eval_data",
            ),
            (
                test_split,
                spec.test_rows.is_some(),
                "test_split",
                "test_data",
            ),
        ] {
            if share > 0.0 && file {
                return Err(Error::setting(
                    field,
                    format!("give either {flag_field} or {field}, not both"),
                ));
            }
        }
        let (held_val, held_test) = train_rows.hold_out(val_split, test_split, options.seed)?;
        let held_source = |field: &str, share: f64| format!("{train_source} ({field} {share})");
        let (eval_rows, eval_source) = match held_val {
            Some(rows) => (Some(rows), held_source("val_split", val_split)),
            None => (eval_rows, source(spec.eval_rows.as_ref(), demo_label)),
        };
        let (test_rows, test_source) = match held_test {
            Some(rows) => (Some(rows), held_source("test_split", test_split)),
            None => (test_rows, source(spec.test_rows.as_ref(), demo_label)),
        };
        // Only keep_start truncation can leave a row with nothing to score, so only it drops rows.
        let drop_limit = match options.truncation_mode {
            TruncationMode::KeepStart => options.max_length,
            TruncationMode::KeepEnd => None,
        };
        let train = train_rows.tokenize(&tokenizer, drop_limit, reference_free)?;
        let eval = eval_rows
            .map(|rows| rows.tokenize(&tokenizer, drop_limit, reference_free))
            .transpose()?;
        let test = test_rows
            .map(|rows| rows.tokenize(&tokenizer, drop_limit, reference_free))
            .transpose()?;
        let train_summary = train.summary(train_source.clone());
        let eval_summary = eval.as_ref().map(|e| e.summary(eval_source));
        let test_summary = test.as_ref().map(|e| e.summary(test_source));
        for data in std::iter::once(&train_summary)
            .chain(eval_summary.as_ref())
            .chain(test_summary.as_ref())
        {
            data.check_not_all_dropped(task, options.max_length)?;
        }
        let summary = Summary {
            task,
            family: config.family(),
            demo,
            device: device.description.clone(),
            train: train_summary,
            eval: eval_summary,
            test: test_summary,
            drop_reason: match task {
                Task::Dpo => DropReason::PromptFillsMaxLength,
                Task::Sft => DropReason::NoCompletionWithinMaxLength,
            },
            max_length_fitted,
            lora: lora.clone(),
            trainable_parameters: 0,
            parameters: 0,
            memory: memory::estimate(
                task,
                &config,
                &options,
                lora.as_ref(),
                spec.reference.as_ref().map(|reference| {
                    reference
                        .named_params()
                        .iter()
                        .map(|p| p.numel() as u64)
                        .sum()
                }),
                Kernels::on(&device.device),
            ),
            resumed: None,
        };
        let synced_reference = match spec.resume.as_ref().and_then(|s| s.reference.as_ref()) {
            Some(weights) => Some(CausalLm::load(&config, weights.as_ref(), device_ref)?),
            None => None,
        };
        let data = match (train, eval) {
            (Tokenized::Pairs(train, _), eval) => TaskData::Dpo {
                train,
                eval: match eval {
                    Some(Tokenized::Pairs(eval, _)) => eval,
                    _ => Vec::new(),
                },
                reference: match (spec.reference, synced_reference) {
                    (Some(reference), _) => reference,
                    // A resumed TR-DPO run continues with the reference as it had become.
                    (None, Some(synced)) => synced,
                    (None, None) => origin.valid(),
                },
            },
            (Tokenized::SplitPairs(train, _), eval) => TaskData::ReferenceFree {
                train,
                eval: match eval {
                    Some(Tokenized::SplitPairs(eval, _)) => eval,
                    _ => Vec::new(),
                },
            },
            (Tokenized::Sft(train, _), eval) => TaskData::Sft {
                train,
                eval: match eval {
                    Some(Tokenized::Sft(eval, _)) => eval,
                    _ => Vec::new(),
                },
            },
        };
        let mut trainer = Trainer::new(policy, data, tokenizer.pad_id, options, device_ref)?;
        let mut summary = summary;
        summary.trainable_parameters = trainer.trainable_parameter_count();
        summary.parameters = trainer.parameter_count();
        if let Some(test) = test {
            trainer.set_test_data(test.into_test_data())?;
        }
        if let Some(saved) = &spec.resume {
            checkpoint::restore(&mut trainer, saved)?;
            summary.resumed = Some((saved.label.clone(), trainer.steps_done()));
        }

        // Early stopping resumes where it stood: its best model and patience count.
        let (best, without_improvement) = match &spec.resume {
            Some(SavedRun {
                state:
                    checkpoint::TrainerState {
                        early_stopping: Some(state),
                        ..
                    },
                best_model: Some(files),
                ..
            }) => (
                Some(Best {
                    step: state.best_step,
                    value: state.best_value,
                    metrics: state.best_metrics,
                    test: state.best_test,
                    files: files.clone(),
                }),
                state.evaluations_without_improvement,
            ),
            _ => (None, 0),
        };
        let export = ExportSpec {
            config,
            tokenizer,
            extra_files,
            lora,
            merge_lora: spec.merge_lora,
            base_model: if demo {
                demo_label.to_string()
            } else {
                spec.model_label
            },
        };
        Ok(Self {
            trainer,
            export,
            summary,
            best,
            without_improvement,
        })
    }

    /// The model to keep as files (see [`ExportSpec::model_files`]): the best one when the run
    /// keeps its best (early stopping), otherwise the current one.
    pub async fn model_files(&self) -> Result<ExportedFiles> {
        match &self.best {
            Some(best) => Ok(best.files.clone()),
            None => self.export.model_files(&self.trainer.policy()).await,
        }
    }

    /// The current model as files, merged or not whatever the run's `merge_lora` says (the
    /// browser offers both downloads).
    pub async fn model_files_merged(&self, merge_lora: bool) -> Result<ExportedFiles> {
        let export = ExportSpec {
            merge_lora,
            ..self.export.clone()
        };
        export.model_files(&self.trainer.policy()).await
    }

    /// A new round of DPO on `rows` that starts from this run's model as it is now, which is
    /// also the round's reference (iterative DPO: pairs sampled from the current model are
    /// judged, then learned against it). Options are this run's with `overrides` applied; a
    /// LoRA run's adapters become the round's starting adapter, so they keep training.
    pub async fn next_round(&self, rows: Jsonl, overrides: OptionOverrides) -> Result<RunSpec> {
        if self.summary.task != Task::Dpo {
            return Err(Error::setting(
                "task",
                "new rounds on preference pairs need a DPO run",
            ));
        }
        let policy = self.trainer.policy();
        let (model, adapter) = match &self.export.lora {
            Some(settings) => {
                let files = peft::export(
                    &policy,
                    settings,
                    self.export.config.family(),
                    &self.export.base_model,
                )
                .await?;
                let adapter = AdapterFiles::from_files("the current adapter", files)?;
                (lora::strip(policy), Some(adapter))
            }
            None => (policy, None),
        };
        let mut base_options = self.trainer.options().clone();
        // The held-out shares and step count were the first round's; a round sets its own.
        base_options.val_split = 0.0;
        base_options.test_split = 0.0;
        base_options.max_steps = None;
        Ok(RunSpec {
            model: Some(ModelBundle {
                config: self.export.config.clone(),
                model,
                tokenizer: self.export.tokenizer.clone(),
                extra_files: self.export.extra_files.clone(),
            }),
            model_label: self.export.base_model.clone(),
            rows: Some(rows),
            overrides,
            adapter,
            merge_lora: self.export.merge_lora,
            base_options: Some(base_options),
            ..RunSpec::new(Task::Dpo)
        })
    }

    /// Everything to resume this run from where it is.
    pub async fn checkpoint_files(&self) -> Result<ExportedFiles> {
        let early_stopping = self.best.as_ref().map(|best| {
            let state = checkpoint::EarlyStoppingState {
                best_step: best.step,
                best_value: best.value,
                best_metrics: best.metrics,
                best_test: best.test,
                evaluations_without_improvement: self.without_improvement,
            };
            (state, &best.files)
        });
        checkpoint::checkpoint_files(
            &self.trainer,
            self.summary.task,
            &self.export,
            early_stopping,
        )
        .await
    }

    /// Train to the end: evaluate before, step (evaluating and checkpointing on `schedule`),
    /// evaluate after. `on_event` sees everything as it happens; an error it returns stops the
    /// run. `stop` is asked after every step: when it says yes, the run checkpoints where it is
    /// and returns (`Outcome::interrupted`).
    pub async fn train(
        &mut self,
        schedule: Schedule,
        stop: impl Fn() -> bool,
        mut on_event: impl FnMut(Event) -> Result<()>,
    ) -> Result<Outcome> {
        check_schedule(self.trainer.options(), schedule, self.trainer.eval_len())?;
        let every = |n: usize, step: usize| n > 0 && step.is_multiple_of(n);
        let test_before = self.trainer.evaluate_test().await?;
        if let Some(metrics) = test_before {
            let step = self.trainer.steps_done();
            on_event(Event::Tested {
                phase: Phase::Before,
                step,
                metrics,
            })?;
        }
        let before = self.trainer.evaluate().await?;
        if let Some(metrics) = before {
            on_event(Event::Evaluated {
                phase: Phase::Before,
                step: self.trainer.steps_done(),
                metrics,
            })?;
        }
        let mut step_seconds = Vec::new();
        let mut last_eval = None;
        let mut outcome = Outcome {
            before,
            after: None,
            test_before,
            test_after: None,
            best_step: None,
            step_seconds: Vec::new(),
            interrupted: false,
        };
        while !self.trainer.is_done() {
            let report = self.trainer.step().await?;
            let step = report.step;
            step_seconds.push(report.seconds);
            on_event(Event::Stepped(report))?;
            if every(schedule.eval_every, step)
                && !self.trainer.is_done()
                && let Some(metrics) = self.trainer.evaluate().await?
            {
                on_event(Event::Evaluated {
                    phase: Phase::During,
                    step,
                    metrics,
                })?;
                last_eval = Some((step, metrics));
                if let Some(patience) = self.trainer.options().early_stopping_patience {
                    if self.keep_if_best(step, metrics, &mut on_event).await? {
                        self.without_improvement = 0;
                    } else {
                        self.without_improvement += 1;
                    }
                    if self.without_improvement >= patience {
                        let best_step = self.best.as_ref().map_or(0, |b| b.step);
                        on_event(Event::StoppedEarly { step, best_step })?;
                        break;
                    }
                }
            }
            let saved = every(schedule.save_every, step) && !self.trainer.is_done();
            if saved {
                let files = self.checkpoint_files().await?;
                on_event(Event::Checkpoint { step, files })?;
            }
            if stop() && !self.trainer.is_done() {
                if !saved {
                    let files = self.checkpoint_files().await?;
                    on_event(Event::Checkpoint { step, files })?;
                }
                outcome.step_seconds = step_seconds;
                outcome.interrupted = true;
                return Ok(outcome);
            }
        }
        outcome.step_seconds = step_seconds;
        let step = self.trainer.steps_done();
        // A run that stopped early was just evaluated at this step.
        let (last, fresh) = match last_eval {
            Some((at, metrics)) if at == step => (Some(metrics), false),
            _ => (self.trainer.evaluate().await?, true),
        };
        if let Some(metrics) = last {
            on_event(Event::Evaluated {
                phase: Phase::After,
                step,
                metrics,
            })?;
            if fresh && self.trainer.options().early_stopping_patience.is_some() {
                self.keep_if_best(step, metrics, &mut on_event).await?;
            }
        }
        match &self.best {
            // The kept model is the best one: its evaluation and test results.
            Some(best) => {
                outcome.after = Some(best.metrics);
                outcome.test_after = best.test;
                outcome.best_step = Some(best.step);
            }
            None => {
                outcome.after = last;
                outcome.test_after = self.trainer.evaluate_test().await?;
            }
        }
        if let Some(metrics) = outcome.test_after {
            let step = outcome.best_step.unwrap_or(step);
            on_event(Event::Tested {
                phase: Phase::After,
                step,
                metrics,
            })?;
        }
        Ok(outcome)
    }

    /// Early stopping's bookkeeping: when `metrics` beat the best so far, remember them, the
    /// model as files and its test results. Returns whether they did.
    async fn keep_if_best(
        &mut self,
        step: usize,
        metrics: Metrics,
        on_event: &mut impl FnMut(Event) -> Result<()>,
    ) -> Result<bool> {
        let name = &self.trainer.options().metric_for_best_model;
        let value = best_metric_value(&metrics, name)?;
        let greater_is_better = !name.ends_with("loss");
        let improved = self.best.as_ref().is_none_or(|best| {
            if greater_is_better {
                value > best.value
            } else {
                value < best.value
            }
        });
        if improved {
            let files = self.export.model_files(&self.trainer.policy()).await?;
            let test = self.trainer.evaluate_test().await?;
            self.best = Some(Best {
                step,
                value,
                metrics,
                test,
                files,
            });
            on_event(Event::NewBest { step, value })?;
        }
        Ok(improved)
    }
}

/// The value of the metric early stopping watches (`loss`, `rewards/accuracies`, … with or
/// without `eval_`).
fn best_metric_value(metrics: &Metrics, name: &str) -> Result<f64> {
    let values = serde_json::to_value(metrics).expect("metrics serialize");
    let key = name.strip_prefix("eval_").unwrap_or(name);
    values
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| {
            let names: Vec<String> = values
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            Error::setting(
                "metric_for_best_model",
                format!(
                    "`{name}` is not a metric of this run's evaluation (one of: {})",
                    names.join(", ")
                ),
            )
        })
}

/// What a schedule needs from the run: early stopping evaluates during training, on held-out
/// examples.
pub fn check_schedule(options: &TrainOptions, schedule: Schedule, eval_len: usize) -> Result<()> {
    if options.early_stopping_patience.is_some() {
        if schedule.eval_every == 0 {
            return Err(Error::setting(
                "eval_every",
                "early stopping needs evaluations during training: set eval_every to a number \
                 of steps",
            ));
        }
        if eval_len == 0 {
            return Err(Error::setting(
                "early_stopping_patience",
                "early stopping needs evaluation examples (eval_data or val_split)",
            ));
        }
    }
    Ok(())
}

/// Parsed rows of either task.
enum Rows {
    Pairs(Vec<crate::text::rows::PreferencePair>),
    Sft(Vec<crate::text::rows::SftExample>),
}

/// Tokenized examples and how many were dropped.
enum Tokenized {
    Pairs(Vec<crate::text::tokenize::TokenizedPair>, usize),
    /// Tokenized per answer, as TRL's CPO/ORPO trainers do (SimPO, ORPO).
    SplitPairs(Vec<crate::text::tokenize::SplitPair>, usize),
    Sft(Vec<crate::text::tokenize::TokenizedCompletion>, usize),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Pairs(rows) => rows.len(),
            Rows::Sft(rows) => rows.len(),
        }
    }

    /// Take `val` and `test` shares (rounded up) of the rows out, chosen by a shuffle seeded with
    /// `seed`; each part keeps the file's order.
    fn hold_out(&mut self, val: f64, test: f64, seed: u64) -> Result<(Option<Rows>, Option<Rows>)> {
        if val <= 0.0 && test <= 0.0 {
            return Ok((None, None));
        }
        let n = self.len();
        let count = |share: f64| (share * n as f64).ceil() as usize;
        let (n_val, n_test) = (count(val), count(test));
        if n_val + n_test >= n {
            return Err(Error::setting(
                if test > 0.0 {
                    "test_split"
                } else {
                    "val_split"
                },
                format!(
                    "holding out {n_val} + {n_test} of {n} rows leaves none to train on: lower \
                     val_split/test_split or add rows"
                ),
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut part = vec![0u8; n]; // 0 train, 1 val, 2 test
        for &i in &order[..n_test] {
            part[i] = 2;
        }
        for &i in &order[n_test..n_test + n_val] {
            part[i] = 1;
        }
        fn split<T>(rows: Vec<T>, part: &[u8]) -> [Vec<T>; 3] {
            let mut out = [Vec::new(), Vec::new(), Vec::new()];
            for (row, &p) in rows.into_iter().zip(part) {
                out[p as usize].push(row);
            }
            out
        }
        let some = |rows: Rows, count: usize| (count > 0).then_some(rows);
        let (val_rows, test_rows) = match std::mem::replace(self, Rows::Pairs(Vec::new())) {
            Rows::Pairs(rows) => {
                let [train, v, t] = split(rows, &part);
                *self = Rows::Pairs(train);
                (Rows::Pairs(v), Rows::Pairs(t))
            }
            Rows::Sft(rows) => {
                let [train, v, t] = split(rows, &part);
                *self = Rows::Sft(train);
                (Rows::Sft(v), Rows::Sft(t))
            }
        };
        Ok((some(val_rows, n_val), some(test_rows, n_test)))
    }

    fn parse(task: Task, jsonl: &Jsonl) -> Result<Self> {
        Ok(match task {
            Task::Dpo => Rows::Pairs(jsonl.pairs()?),
            Task::Sft => Rows::Sft(jsonl.sft_examples()?),
        })
    }

    fn tokenize(
        self,
        tokenizer: &TextTokenizer,
        max_length: Option<usize>,
        reference_free: bool,
    ) -> Result<Tokenized> {
        Ok(match self {
            Rows::Pairs(rows) if reference_free => {
                let set = tokenize_split_pairs(&rows, tokenizer, max_length)?;
                Tokenized::SplitPairs(set.rows, set.dropped)
            }
            Rows::Pairs(rows) => {
                let set = tokenize_pairs(&rows, tokenizer, max_length)?;
                Tokenized::Pairs(set.rows, set.dropped)
            }
            Rows::Sft(rows) => {
                let set = tokenize_sft(&rows, tokenizer, max_length)?;
                Tokenized::Sft(set.rows, set.dropped)
            }
        })
    }
}

impl Tokenized {
    fn into_test_data(self) -> TestData {
        match self {
            Tokenized::Pairs(rows, _) => TestData::Pairs(rows),
            Tokenized::SplitPairs(rows, _) => TestData::SplitPairs(rows),
            Tokenized::Sft(rows, _) => TestData::Completions(rows),
        }
    }

    fn summary(&self, source: String) -> DataSummary {
        let (kept, dropped) = match self {
            Tokenized::Pairs(rows, dropped) => (rows.len(), *dropped),
            Tokenized::SplitPairs(rows, dropped) => (rows.len(), *dropped),
            Tokenized::Sft(rows, dropped) => (rows.len(), *dropped),
        };
        DataSummary {
            source,
            kept,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::rows::PreferencePair;

    fn rows(n: usize) -> Rows {
        Rows::Pairs(
            (0..n)
                .map(|i| PreferencePair {
                    prompt: format!("{i}").into(),
                    chosen: "a".into(),
                    rejected: "b".into(),
                })
                .collect(),
        )
    }

    fn prompts(rows: &Rows) -> Vec<String> {
        match rows {
            Rows::Pairs(p) => p.iter().map(|p| format!("{:?}", p.prompt)).collect(),
            Rows::Sft(_) => unreachable!(),
        }
    }

    #[test]
    fn held_out_shares_are_seeded_disjoint_and_rounded_up() {
        let mut train = rows(10);
        let (val, test) = train.hold_out(0.1, 0.25, 7).unwrap();
        let (val, test) = (val.unwrap(), test.unwrap());
        assert_eq!((train.len(), val.len(), test.len()), (6, 1, 3));
        let mut all: Vec<String> = [&train, &val, &test]
            .iter()
            .flat_map(|r| prompts(r))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10, "every row in exactly one part");
        // The same seed gives the same parts; another seed other ones.
        let mut again = rows(10);
        let (_, test_again) = again.hold_out(0.1, 0.25, 7).unwrap();
        assert_eq!(prompts(&test_again.unwrap()), prompts(&test));
        let mut other = rows(10);
        let (_, test_other) = other.hold_out(0.1, 0.25, 8).unwrap();
        assert_ne!(prompts(&test_other.unwrap()), prompts(&test));
        // Nothing left to train on is refused.
        assert!(rows(2).hold_out(0.5, 0.5, 0).is_err());
        assert!(rows(3).hold_out(0.0, 0.0, 0).unwrap().0.is_none());
    }
}
