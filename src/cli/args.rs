//! The command line: clap's definitions, and how flags become the core's settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dpo_wgpu::backend::BackendChoice;
use dpo_wgpu::model::generate::SamplingOptions;
use dpo_wgpu::text::collate::TruncationMode;
use dpo_wgpu::train::losses::{FDivergence, PreferenceLoss};
use dpo_wgpu::train::optim::{LrSchedule, OptimizerKind};
use dpo_wgpu::train::options::OptionOverrides;
use dpo_wgpu::train::run::LoraRequest;

#[derive(Parser)]
#[command(
    name = "dpo-wgpu",
    version,
    about = "Direct Preference Optimization on any GPU",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fine-tune a model with DPO. With no --model and --data, trains the built-in demo.
    Train(TrainArgs),
    /// Supervised fine-tuning on prompt/completion, messages or text rows (before DPO).
    Sft(RunArgs),
    /// Print DPO metrics of a model on preference pairs.
    Eval(EvalArgs),
    /// Generate text, streaming tokens as they come.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Reference model directory; default: the starting policy (base weights with LoRA).
    #[arg(long)]
    pub ref_model: Option<String>,
    #[arg(long)]
    pub beta: Option<f64>,
    /// Compute the reference's log-probs of every pair before training, keep them in
    /// ref-logps/ beside --output (reused by later runs with the same reference and data), and
    /// free the reference model.
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
    /// TR-DPO: blend the policy into the reference every --ref-model-sync-steps steps.
    #[arg(long)]
    pub sync_ref_model: bool,
    /// TR-DPO's α: reference ← α·policy + (1 − α)·reference (default 0.6).
    #[arg(long)]
    pub ref_model_mixup_alpha: Option<f64>,
    /// TR-DPO's interval in steps (default 512).
    #[arg(long)]
    pub ref_model_sync_steps: Option<usize>,
    #[command(flatten)]
    pub loss: LossArgs,
}

/// The preference losses and their options, named as TRL's `DPOConfig` fields.
#[derive(Args, Default)]
pub struct LossArgs {
    /// Preference losses, comma-separated to combine (TRL's loss_type): sigmoid (DPO), hinge,
    /// ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero,
    /// apo_down, discopop, sft, sigmoid_norm; or alone, a reference-free method: simpo
    /// (TRL's CPOTrainer, cpo_alpha 0) or orpo (TRL's ORPOTrainer; --beta is its λ).
    #[arg(long, value_delimiter = ',')]
    pub loss: Option<Vec<PreferenceLoss>>,
    /// Weights of the losses in --loss (default 1 each); MPO: sigmoid,bco_pair,sft with 0.8,0.2,1.0.
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Option<Vec<f64>>,
    /// ε of the robust, exo_pair and aot losses, in [0, 0.5).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// τ of the discopop loss (default 0.05).
    #[arg(long)]
    pub discopop_tau: Option<f64>,
    /// reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence (f-DPO).
    #[arg(long)]
    pub f_divergence_type: Option<FDivergence>,
    /// α of alpha_divergence (default 1).
    #[arg(long)]
    pub f_alpha_divergence_coef: Option<f64>,
    /// LD-DPO: weight of the tokens past the shorter completion of a pair, in [0, 1].
    #[arg(long)]
    pub ld_alpha: Option<f64>,
    /// WPO: weight each pair by its completions' probabilities under the policy.
    #[arg(long)]
    pub use_weighting: bool,
    /// SimPO's target reward margin γ (default 0.5).
    #[arg(long)]
    pub simpo_gamma: Option<f64>,
}

impl LossArgs {
    /// Put the loss settings into `o`.
    pub fn fill(&self, o: &mut OptionOverrides) {
        o.loss = self.loss.clone();
        o.loss_weights = self.loss_weights.clone();
        o.label_smoothing = self.label_smoothing;
        o.discopop_tau = self.discopop_tau;
        o.f_divergence_type = self.f_divergence_type;
        o.f_alpha_divergence_coef = self.f_alpha_divergence_coef;
        o.ld_alpha = self.ld_alpha;
        o.use_weighting = self.use_weighting.then_some(true);
        o.simpo_gamma = self.simpo_gamma;
    }
}

/// What `train` and `sft` share.
#[derive(Args)]
pub struct RunArgs {
    /// A TOML file of settings under these flags' names (`lr = 1e-5`, `loss = ["sigmoid"]`);
    /// flags on the command line override it. Every run writes its effective settings as
    /// run.toml beside the model.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json), a .gguf
    /// file, or hf:OWNER/NAME[@REVISION].
    #[arg(long)]
    pub model: Option<String>,
    /// Training rows, JSONL.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out rows evaluated before, during (--eval-every) and after training.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Held-out rows for the final test report: the starting and the trained model side by side.
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Hold out this share of --data (seeded by --seed) as the evaluation set.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Hold out this share of --data (seeded by --seed) as the test set.
    #[arg(long)]
    pub test_split: Option<f64>,
    /// Stop after N evaluations (--eval-every) in a row without improvement of
    /// --metric-for-best-model, and keep the best model.
    #[arg(long)]
    pub early_stopping_patience: Option<usize>,
    /// The evaluation metric early stopping watches (TRL's names; default loss: lower is better
    /// for names ending in loss, higher for the others).
    #[arg(long)]
    pub metric_for_best_model: Option<String>,
    /// Output directory: the model (or adapter), metrics.jsonl, checkpoint-N/ directories.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate (TRL's defaults: DPO 1e-6, SFT 2e-5; the demo uses 3e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub lr_scheduler: Option<LrSchedule>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Examples per forward pass (per step without accumulation).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Forward passes per optimizer step: steps of batch-size × N examples in the memory of
    /// batch-size.
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Truncate prompt+completion to this many tokens; 0 = no limit.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// keep_start (cut the end; the default) or keep_end (cut the beginning).
    #[arg(long)]
    pub truncation_mode: Option<TruncationMode>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Global gradient-norm clipping; 0 = off.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Pairs per evaluation batch (default 8); also how many pairs the reference scores at
    /// once during training (the step's and the next steps').
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Evaluate every N steps (0 = only before and after).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Write a resumable checkpoint-N/ every N steps (0 = only the final model).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Print metrics every N steps.
    #[arg(long, default_value_t = 1)]
    pub log_every: usize,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Which discrete GPU wgpu takes (0 = the first); under mpirun, by default each rank takes
    /// the GPU of its rank on its host, or wgpu's default adapter if there is no such GPU.
    #[arg(long)]
    pub device_index: Option<usize>,
    /// AdamW's β₁ (default 0.9).
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// AdamW's β₂ (default 0.999).
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// AdamW's ε (default 1e-8).
    #[arg(long)]
    pub adam_epsilon: Option<f64>,
    /// SGD momentum (default 0), torch's rule.
    #[arg(long)]
    pub sgd_momentum: Option<f64>,
    /// Nesterov momentum for SGD.
    #[arg(long)]
    pub sgd_nesterov: bool,
    /// Train with the model config's dropout (off by default, as TRL's disable_dropout).
    #[arg(long)]
    pub dropout: bool,
    /// Full fine-tuning of only the top K blocks plus the final norm and the head.
    #[arg(long)]
    pub trainable_layers: Option<usize>,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scaling numerator (default: 2 × rank).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Comma-separated module names to adapt (default: q_proj,v_proj; GPT-2: c_attn).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Start from an existing PEFT adapter (its settings are kept).
    #[arg(long)]
    pub lora_adapter: Option<PathBuf>,
    /// Save a full model with the adapters folded in, instead of the adapter.
    #[arg(long)]
    pub merge_lora: bool,
    /// Continue from a checkpoint-N directory written by --save-every.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
}

impl RunArgs {
    /// The settings that are not training options, as given (for the run's `run.toml`).
    pub fn given_settings(&self, dpo: Option<&TrainArgs>) -> toml::Table {
        use toml::Value;
        let mut t = toml::Table::new();
        let mut text = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                t.insert(key.into(), Value::String(v));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        text("model", self.model.clone());
        text("data", path(&self.data));
        text("eval-data", path(&self.eval_data));
        text("test-data", path(&self.test_data));
        text("lora-adapter", path(&self.lora_adapter));
        text("ref-model", dpo.and_then(|d| d.ref_model.clone()));
        text("backend", Some(self.backend.to_string()));
        if let Some(rank) = self.lora_rank {
            t.insert("lora-rank".into(), Value::Integer(rank as i64));
        }
        if let Some(alpha) = self.lora_alpha {
            t.insert("lora-alpha".into(), Value::Float(alpha));
        }
        if let Some(targets) = &self.lora_targets {
            let list = targets.iter().map(|s| Value::String(s.clone())).collect();
            t.insert("lora-targets".into(), Value::Array(list));
        }
        for (key, n) in [
            ("eval-every", self.eval_every),
            ("save-every", self.save_every),
            ("log-every", self.log_every),
        ] {
            t.insert(key.into(), Value::Integer(n as i64));
        }
        if self.merge_lora {
            t.insert("merge-lora".into(), Value::Boolean(true));
        }
        t
    }

    /// The settings these flags give (`dpo`: `train`'s own flags).
    pub fn overrides(&self, dpo: Option<&TrainArgs>) -> OptionOverrides {
        let mut o = OptionOverrides {
            optimizer: self.optimizer,
            learning_rate: self.lr,
            lr_schedule: self.lr_scheduler,
            warmup_steps: self.warmup_steps,
            batch_size: self.batch_size,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            epochs: self.epochs,
            max_steps: self.max_steps,
            beta: dpo.and_then(|d| d.beta),
            max_length: self.max_length,
            seed: self.seed,
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            eval_batch_size: self.eval_batch_size,
            truncation_mode: self.truncation_mode,
            val_split: self.val_split,
            test_split: self.test_split,
            early_stopping_patience: self.early_stopping_patience,
            metric_for_best_model: self.metric_for_best_model.clone(),
            trainable_layers: self.trainable_layers,
            dropout: self.dropout.then_some(true),
            adam_beta1: self.adam_beta1,
            adam_beta2: self.adam_beta2,
            adam_epsilon: self.adam_epsilon,
            sgd_momentum: self.sgd_momentum,
            sgd_nesterov: self.sgd_nesterov.then_some(true),
            ..OptionOverrides::default()
        };
        if let Some(dpo) = dpo {
            o.precompute_ref_log_probs = dpo.precompute_ref_log_probs.then_some(true);
            o.sync_ref_model = dpo.sync_ref_model.then_some(true);
            o.ref_model_mixup_alpha = dpo.ref_model_mixup_alpha;
            o.ref_model_sync_steps = dpo.ref_model_sync_steps;
            dpo.loss.fill(&mut o);
        }
        o
    }

    pub fn lora(&self) -> Option<LoraRequest> {
        self.lora_rank.map(|rank| LoraRequest {
            rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
        })
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter to apply to --model.
    #[arg(long)]
    pub lora_adapter: Option<PathBuf>,
    #[arg(long)]
    pub ref_model: Option<String>,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Truncation limit; default 1024 or the model's positions; 0 = no limit.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// keep_start (the default) or keep_end.
    #[arg(long)]
    pub truncation_mode: Option<TruncationMode>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Print one JSON object with TRL's metric names.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub loss: LossArgs,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory, a .gguf file, or hf:OWNER/NAME[@REVISION].
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter to apply to --model.
    #[arg(long)]
    pub lora_adapter: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
}

impl GenerateArgs {
    pub fn sampling(&self) -> SamplingOptions {
        SamplingOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

/// The flag that sets a core setting (`Error::Setting`'s field), for messages.
pub fn flag(field: &str) -> String {
    let name = match field {
        "learning_rate" => "lr",
        "lr_schedule" => "lr-scheduler",
        "reference" => "ref-model",
        other => return format!("--{}", other.replace('_', "-")),
    };
    format!("--{name}")
}
