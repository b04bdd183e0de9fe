//! Training settings: TRL's defaults per task, and the one rule for how a user's settings
//! (CLI flags, JavaScript options) override them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::losses::{FDivergence, LossOptions, LossTerm, PreferenceLoss};
use super::optim::{LrSchedule, OptimizerKind, OptimizerSettings};
use crate::error::Error;
use crate::text::collate::TruncationMode;

/// What a run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Direct Preference Optimization on preference pairs (TRL's `DPOTrainer`).
    Dpo,
    /// Supervised fine-tuning on completions (TRL's `SFTTrainer`).
    Sft,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Dpo => "dpo",
            Task::Sft => "sft",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "dpo" => Ok(Task::Dpo),
            "sft" => Ok(Task::Sft),
            other => Err(Error::setting(
                "task",
                format!("unknown task `{other}` (dpo or sft)"),
            )),
        }
    }
}

/// Training hyper-parameters. Defaults follow TRL's `DPOConfig` / transformers' `TrainingArguments`
/// where a user could compare numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    /// Examples (preference pairs, or SFT sequences) per forward pass.
    pub batch_size: usize,
    /// Forward passes whose gradients make one optimizer step: a step sees
    /// `batch_size × gradient_accumulation_steps` examples with the memory of `batch_size`.
    #[serde(default = "default_one")]
    pub gradient_accumulation_steps: usize,
    pub epochs: usize,
    /// Overrides `epochs` when set.
    pub max_steps: Option<usize>,
    /// DPO's β.
    pub beta: f64,
    /// Truncation of prompt+completion (see `truncation_mode`); with `keep_start`, DPO pairs
    /// whose prompt fills it are dropped.
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncation_mode: TruncationMode,
    pub seed: u64,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub eval_batch_size: usize,
    /// Visit training examples in a new random order each epoch (off: file order).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Which preference losses, and their settings (DPO).
    #[serde(flatten)]
    pub loss: LossOptions,
    /// Shares of the training rows held out (seeded by `seed`) for evaluation and for the final
    /// test report; 0 holds out nothing.
    #[serde(default)]
    pub val_split: f64,
    #[serde(default)]
    pub test_split: f64,
    /// Stop after this many evaluations in a row without improvement of
    /// `metric_for_best_model`, and keep the best model (off when `None`).
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// A metric of the evaluation (TRL's name, with or without `eval_`); lower is better for
    /// names ending in `loss`, higher for the others, as transformers decides.
    #[serde(default = "default_best_metric")]
    pub metric_for_best_model: String,
    /// Full fine-tuning of only the top K blocks, the final norm and the head (`None`: all).
    #[serde(default)]
    pub trainable_layers: Option<usize>,
    /// AdamW's betas and epsilon, SGD's momentum.
    #[serde(flatten)]
    pub optimizer_settings: OptimizerSettings,
    /// Compute every reference log-prob before training and free the reference model (the
    /// shells decide where the values are kept).
    #[serde(default)]
    pub precompute_ref_log_probs: bool,
    /// TR-DPO (Gorbatovski et al. 2024): every `ref_model_sync_steps` steps the reference
    /// becomes `α·policy + (1 − α)·reference`, α = `ref_model_mixup_alpha`.
    #[serde(default)]
    pub sync_ref_model: bool,
    /// Train with the model config's dropout (TRL's `disable_dropout=False`); off by default,
    /// as in TRL.
    #[serde(default)]
    pub dropout: bool,
    #[serde(default = "default_mixup_alpha")]
    pub ref_model_mixup_alpha: f64,
    #[serde(default = "default_sync_steps")]
    pub ref_model_sync_steps: usize,
}

fn default_mixup_alpha() -> f64 {
    0.6
}

fn default_sync_steps() -> usize {
    512
}

fn default_best_metric() -> String {
    "loss".into()
}

/// `value` of `field` must satisfy `ok`; otherwise an error saying what would be valid.
pub(crate) fn check<T: std::fmt::Display>(
    field: &str,
    value: T,
    ok: bool,
    valid: &str,
) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::setting(
            field,
            format!("{value} is not valid (must be {valid})"),
        ))
    }
}

impl TrainOptions {
    /// Every setting in range, before any work starts. `task` decides whether β matters.
    pub fn validate(&self, task: Task) -> Result<(), Error> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        check(
            "learning_rate",
            self.learning_rate,
            positive(self.learning_rate),
            "a finite number > 0",
        )?;
        if task == Task::Dpo {
            check(
                "beta",
                self.beta,
                positive(self.beta),
                "a finite number > 0",
            )?;
            self.loss.validate()?;
            if let Some(method) = self.loss.reference_free()
                && self.truncation_mode == TruncationMode::KeepEnd
            {
                return Err(Error::setting(
                    "truncation_mode",
                    format!(
                        "keep_end does not apply to {method}: its trainer in TRL truncates only \
                         the answers"
                    ),
                ));
            }
        }
        check(
            "max_grad_norm",
            self.max_grad_norm,
            non_negative(self.max_grad_norm),
            "a finite number >= 0 (0 turns clipping off)",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            non_negative(self.weight_decay),
            "a finite number >= 0",
        )?;
        for (field, value) in [
            ("batch_size", self.batch_size),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("eval_batch_size", self.eval_batch_size),
            ("epochs", self.epochs),
        ] {
            check(field, value, value >= 1, "at least 1")?;
        }
        if let Some(steps) = self.max_steps {
            check("max_steps", steps, steps >= 1, "at least 1")?;
        }
        for (field, share) in [
            ("val_split", self.val_split),
            ("test_split", self.test_split),
        ] {
            check(field, share, (0.0..1.0).contains(&share), "in [0, 1)")?;
        }
        check(
            "test_split",
            self.val_split + self.test_split,
            self.val_split + self.test_split < 1.0,
            "less than 1 together with val_split (some rows must be left to train on)",
        )?;
        self.optimizer_settings.validate()?;
        let alpha = self.ref_model_mixup_alpha;
        check(
            "ref_model_mixup_alpha",
            alpha,
            (0.0..=1.0).contains(&alpha),
            "in [0, 1]",
        )?;
        let sync = self.ref_model_sync_steps;
        check("ref_model_sync_steps", sync, sync >= 1, "at least 1")?;
        if self.sync_ref_model {
            if self.precompute_ref_log_probs {
                return Err(Error::setting(
                    "sync_ref_model",
                    "cannot be combined with precompute_ref_log_probs: precomputed log-probs \
                     assume a fixed reference, and TR-DPO changes it during training",
                ));
            }
            if task != Task::Dpo || self.loss.reference_free().is_some() {
                return Err(Error::setting(
                    "sync_ref_model",
                    "needs a reference model (DPO losses; not SFT, SimPO or ORPO)",
                ));
            }
        }
        if let Some(patience) = self.early_stopping_patience {
            check(
                "early_stopping_patience",
                patience,
                patience >= 1,
                "at least 1",
            )?;
        }
        if let Some(max_length) = self.max_length {
            check(
                "max_length",
                max_length,
                max_length >= 2,
                "at least 2 (or 0 for no limit)",
            )?;
        }
        Ok(())
    }

    /// Lower a default `max_length` to what the model can take (GPT-2's learned positions).
    /// Returns the new limit when it changed, for a notice.
    pub fn fit_max_length(&mut self, model_limit: Option<usize>) -> Option<usize> {
        let limit = model_limit?;
        if self.max_length.is_none_or(|m| m > limit) {
            self.max_length = Some(limit);
            return Some(limit);
        }
        None
    }

    /// TRL's `SFTConfig` defaults differ from `DPOConfig`'s in the learning rate.
    pub fn sft_defaults() -> Self {
        Self {
            learning_rate: 2e-5,
            ..Self::default()
        }
    }

    /// TRL's defaults for `task`.
    pub fn defaults_for(task: Task) -> Self {
        match task {
            Task::Dpo => Self::default(),
            Task::Sft => Self::sft_defaults(),
        }
    }
}

fn default_one() -> usize {
    1
}

fn default_true() -> bool {
    true
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::AdamW,
            learning_rate: 1e-6,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            epochs: 1,
            max_steps: None,
            beta: 0.1,
            max_length: Some(1024),
            truncation_mode: TruncationMode::KeepStart,
            seed: 42,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            lr_schedule: LrSchedule::Linear,
            warmup_steps: 0,
            eval_batch_size: 8,
            shuffle: true,
            loss: LossOptions::default(),
            val_split: 0.0,
            test_split: 0.0,
            early_stopping_patience: None,
            metric_for_best_model: default_best_metric(),
            trainable_layers: None,
            optimizer_settings: OptimizerSettings::default(),
            precompute_ref_log_probs: false,
            sync_ref_model: false,
            dropout: false,
            ref_model_mixup_alpha: default_mixup_alpha(),
            ref_model_sync_steps: default_sync_steps(),
        }
    }
}

/// The settings a user gave; `None` keeps the default. Both shells fill this and nothing else
/// decides how options override defaults. It deserializes from the browser API's option names
/// (camelCase, with `lr` and `lrScheduler`), so the wasm layer takes it as it comes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OptionOverrides {
    pub optimizer: Option<OptimizerKind>,
    #[serde(rename = "lr")]
    pub learning_rate: Option<f64>,
    #[serde(rename = "lrScheduler")]
    pub lr_schedule: Option<LrSchedule>,
    pub warmup_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub gradient_accumulation_steps: Option<usize>,
    /// Giving epochs without max_steps lets the epochs decide the length of the run.
    pub epochs: Option<usize>,
    pub max_steps: Option<usize>,
    pub beta: Option<f64>,
    /// `Some(0)`: no limit. `None`: the default, lowered to the model's positions if needed.
    pub max_length: Option<usize>,
    pub seed: Option<u64>,
    pub max_grad_norm: Option<f64>,
    pub weight_decay: Option<f64>,
    pub eval_batch_size: Option<usize>,
    pub truncation_mode: Option<TruncationMode>,
    pub val_split: Option<f64>,
    pub test_split: Option<f64>,
    pub early_stopping_patience: Option<usize>,
    pub metric_for_best_model: Option<String>,
    pub trainable_layers: Option<usize>,
    pub adam_beta1: Option<f64>,
    pub adam_beta2: Option<f64>,
    pub adam_epsilon: Option<f64>,
    pub sgd_momentum: Option<f64>,
    pub sgd_nesterov: Option<bool>,
    pub precompute_ref_log_probs: Option<bool>,
    pub sync_ref_model: Option<bool>,
    pub dropout: Option<bool>,
    pub ref_model_mixup_alpha: Option<f64>,
    pub ref_model_sync_steps: Option<usize>,
    /// Preference losses (TRL's `loss_type`), weighted by `loss_weights` (default 1 each).
    pub loss: Option<Vec<PreferenceLoss>>,
    pub loss_weights: Option<Vec<f64>>,
    pub label_smoothing: Option<f64>,
    pub discopop_tau: Option<f64>,
    pub f_divergence_type: Option<FDivergence>,
    pub f_alpha_divergence_coef: Option<f64>,
    pub ld_alpha: Option<f64>,
    pub use_weighting: Option<bool>,
    pub simpo_gamma: Option<f64>,
}

impl OptionOverrides {
    pub fn apply(&self, o: &mut TrainOptions) -> Result<(), Error> {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field {
                    o.$field = v;
                }
            )*};
        }
        set!(
            optimizer,
            learning_rate,
            lr_schedule,
            warmup_steps,
            batch_size,
            gradient_accumulation_steps,
            epochs,
            beta,
            seed,
            max_grad_norm,
            weight_decay,
            eval_batch_size,
            truncation_mode,
            val_split,
            test_split,
            sync_ref_model,
            dropout,
            ref_model_mixup_alpha,
            ref_model_sync_steps
        );
        if let Some(patience) = self.early_stopping_patience {
            o.early_stopping_patience = Some(patience);
        }
        if let Some(metric) = &self.metric_for_best_model {
            o.metric_for_best_model = metric.clone();
        }
        if let Some(layers) = self.trainable_layers {
            o.trainable_layers = Some(layers);
        }
        let opt = &mut o.optimizer_settings;
        for (value, field) in [
            (self.adam_beta1, &mut opt.adam_beta1),
            (self.adam_beta2, &mut opt.adam_beta2),
            (self.adam_epsilon, &mut opt.adam_epsilon),
            (self.sgd_momentum, &mut opt.sgd_momentum),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(v) = self.sgd_nesterov {
            opt.sgd_nesterov = v;
        }
        if let Some(v) = self.precompute_ref_log_probs {
            o.precompute_ref_log_probs = v;
        }
        if let Some(max_steps) = self.max_steps {
            o.max_steps = Some(max_steps);
        } else if self.epochs.is_some() {
            o.max_steps = None;
        }
        if let Some(max_length) = self.max_length {
            o.max_length = (max_length > 0).then_some(max_length);
        }
        let l = &mut o.loss;
        if self.loss.is_some() || self.loss_weights.is_some() {
            let losses: Vec<PreferenceLoss> = match &self.loss {
                Some(losses) => losses.clone(),
                None => l.losses.iter().map(|t| t.loss).collect(),
            };
            let weights = self
                .loss_weights
                .clone()
                .unwrap_or_else(|| vec![1.0; losses.len()]);
            if weights.len() != losses.len() {
                return Err(Error::setting(
                    "loss_weights",
                    format!(
                        "must have the same length as loss when combining losses: {} weights for \
                         {} losses",
                        weights.len(),
                        losses.len()
                    ),
                ));
            }
            l.losses = losses
                .into_iter()
                .zip(weights)
                .map(|(loss, weight)| LossTerm { loss, weight })
                .collect();
        }
        if let Some(v) = self.label_smoothing {
            l.label_smoothing = v;
        }
        if let Some(v) = self.discopop_tau {
            l.discopop_tau = v;
        }
        if let Some(v) = self.f_divergence_type {
            l.f_divergence_type = v;
        }
        if let Some(v) = self.f_alpha_divergence_coef {
            l.f_alpha_divergence_coef = v;
        }
        if let Some(v) = self.ld_alpha {
            l.ld_alpha = Some(v);
        }
        if let Some(v) = self.use_weighting {
            l.use_weighting = v;
        }
        if let Some(v) = self.simpo_gamma {
            l.simpo_gamma = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_follow_one_rule() {
        let mut o = TrainOptions {
            max_steps: Some(120),
            ..TrainOptions::default()
        };
        OptionOverrides {
            epochs: Some(3),
            max_length: Some(0),
            learning_rate: Some(0.5),
            ..Default::default()
        }
        .apply(&mut o)
        .unwrap();
        assert_eq!((o.epochs, o.max_steps, o.max_length), (3, None, None));
        assert_eq!(o.learning_rate, 0.5);
        OptionOverrides {
            epochs: Some(2),
            max_steps: Some(7),
            max_length: Some(64),
            ..Default::default()
        }
        .apply(&mut o)
        .unwrap();
        assert_eq!(
            (o.epochs, o.max_steps, o.max_length),
            (2, Some(7), Some(64))
        );
        assert!("SFT".parse::<Task>().unwrap() == Task::Sft && "x".parse::<Task>().is_err());
        // MPO, and TRL's length rule for weights.
        let mpo = OptionOverrides {
            loss: Some(vec![
                PreferenceLoss::Sigmoid,
                PreferenceLoss::BcoPair,
                PreferenceLoss::Sft,
            ]),
            loss_weights: Some(vec![0.8, 0.2, 1.0]),
            ..Default::default()
        };
        mpo.apply(&mut o).unwrap();
        assert_eq!(o.loss.losses[1].loss, PreferenceLoss::BcoPair);
        assert_eq!(o.loss.losses[1].weight, 0.2);
        let mismatched = OptionOverrides {
            loss_weights: Some(vec![1.0]),
            ..Default::default()
        };
        assert!(mismatched.apply(&mut o).is_err());
    }

    /// The browser's option names (camelCase, `lr`, `lrScheduler`) read straight into overrides.
    #[test]
    fn browser_option_names_deserialize() {
        let o: OptionOverrides = serde_json::from_str(
            r#"{"lr": 0.001, "lrScheduler": "Cosine", "batchSize": 4, "maxSteps": 3,
                "loss": ["sigmoid", "bco_pair"], "lossWeights": [0.8, 0.2],
                "labelSmoothing": 0.1, "fDivergenceType": "js_divergence", "ldAlpha": 0.5,
                "useWeighting": true, "discopopTau": 0.1, "fAlphaDivergenceCoef": 0.5}"#,
        )
        .unwrap();
        let mut options = TrainOptions::default();
        o.apply(&mut options).unwrap();
        assert_eq!(options.learning_rate, 0.001);
        assert_eq!(options.lr_schedule, LrSchedule::Cosine);
        assert_eq!(options.loss.losses[1].loss, PreferenceLoss::BcoPair);
        assert_eq!(options.loss.f_divergence_type, FDivergence::JsDivergence);
        assert_eq!(options.loss.ld_alpha, Some(0.5));
        assert!(options.loss.use_weighting);
        assert!(serde_json::from_str::<OptionOverrides>(r#"{"loss": ["dpo"]}"#).is_err());
    }
}
