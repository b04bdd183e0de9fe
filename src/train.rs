//! The one training loop, `async` so the same code runs under `pollster::block_on` natively and
//! under the browser's event loop in a Web Worker. Every device readback here is asynchronous.

use std::collections::HashMap;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData, Transaction};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::data::{TokenizedPair, collate_pairs};
use crate::dpo::{DpoMetrics, MetricsAccumulator, dpo_loss};
use crate::error::{Error, Result};
use crate::model::{CausalLm, ScoringBatch, score_completions};
use crate::optim::{
    LrSchedule, OptimizerKind, ParamInfo, build_optimizer, clip_grad_norm, param_infos,
};

/// Training hyper-parameters. Defaults follow TRL's `DPOConfig` / transformers' `TrainingArguments`
/// where a user could compare numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    /// Preference pairs per optimizer step.
    pub batch_size: usize,
    pub epochs: usize,
    /// Overrides `epochs` when set.
    pub max_steps: Option<usize>,
    pub beta: f64,
    /// `keep_start` truncation of prompt+completion; pairs whose prompt fills it are dropped.
    pub max_length: Option<usize>,
    pub seed: u64,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub eval_batch_size: usize,
    /// Visit training pairs in a new random order each epoch (off: file order, for parity runs).
    #[serde(default = "default_true")]
    pub shuffle: bool,
}

impl TrainOptions {
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
            epochs: 1,
            max_steps: None,
            beta: 0.1,
            max_length: Some(1024),
            seed: 42,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            lr_schedule: LrSchedule::Linear,
            warmup_steps: 0,
            eval_batch_size: 8,
            shuffle: true,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    #[serde(flatten)]
    pub metrics: DpoMetrics,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub seconds: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Split {
    Train,
    Eval,
}

/// A DPO run in progress: the policy being trained, the frozen reference, optimizer state and
/// data order. Drive it with `step()` / `evaluate()`, or `run()`.
pub struct DpoTrainer {
    /// Always `Some` between calls; taken by value for the optimizer step.
    policy: Option<CausalLm>,
    reference: CausalLm,
    optimizer: ModuleOptimizer,
    params: Vec<ParamInfo>,
    options: TrainOptions,
    train: Vec<TokenizedPair>,
    eval: Vec<TokenizedPair>,
    pad_id: u32,
    device: Device,
    step: usize,
    total_steps: usize,
    order: Vec<usize>,
    cursor: usize,
    epoch: usize,
    rng: StdRng,
    /// The reference is frozen, so each pair's reference log-probs are computed once
    /// (TRL's `precompute_ref_log_probs`, done lazily).
    ref_logps: HashMap<(Split, usize), (f32, f32)>,
}

impl DpoTrainer {
    /// `policy` starts training from its current weights; `reference` defaults to a frozen copy
    /// of it (sharing memory until the first update). Models live on `device` (no autodiff).
    pub fn new(
        policy: CausalLm,
        reference: Option<CausalLm>,
        train: Vec<TokenizedPair>,
        eval: Vec<TokenizedPair>,
        pad_id: u32,
        options: TrainOptions,
        device: &Device,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::Invalid(
                "no training pairs left after tokenization".into(),
            ));
        }
        if options.batch_size == 0 || options.eval_batch_size == 0 {
            return Err(Error::Invalid("batch sizes must be at least 1".into()));
        }
        if let (Some(max_len), Some(limit)) = (options.max_length, policy.max_positions()) {
            if max_len > limit {
                return Err(Error::Invalid(format!(
                    "--max-length {max_len} exceeds the model's {limit} positions"
                )));
            }
        }
        let reference = reference.unwrap_or_else(|| policy.valid());
        let params = param_infos(&policy.named_params());
        let optimizer = build_optimizer(options.optimizer, options.weight_decay, &params);
        let steps_per_epoch = train.len().div_ceil(options.batch_size);
        let total_steps = options
            .max_steps
            .unwrap_or(steps_per_epoch * options.epochs.max(1));
        let mut trainer = Self {
            policy: Some(policy.train()),
            reference,
            optimizer,
            params,
            train,
            eval,
            pad_id,
            device: device.clone(),
            step: 0,
            total_steps,
            order: Vec::new(),
            cursor: 0,
            epoch: 0,
            rng: StdRng::seed_from_u64(options.seed),
            ref_logps: HashMap::new(),
            options,
        };
        trainer.reshuffle();
        Ok(trainer)
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.total_steps
    }

    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    pub fn train_pairs(&self) -> usize {
        self.train.len()
    }

    pub fn eval_pairs(&self) -> usize {
        self.eval.len()
    }

    /// The policy without autodiff, for evaluation or export (shares the weights, no copy).
    pub fn policy(&self) -> CausalLm {
        self.policy.as_ref().expect("policy present").valid()
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.train.len()).collect();
        if self.options.shuffle {
            self.order.shuffle(&mut self.rng);
        }
        self.cursor = 0;
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.cursor >= self.order.len() {
            self.epoch += 1;
            self.reshuffle();
        }
        let end = (self.cursor + self.options.batch_size).min(self.order.len());
        let batch = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        batch
    }

    /// Reference log-probs of `pairs` as device tensors (chosen, rejected), plus a tensor to read
    /// back into the cache when they were not cached yet.
    fn reference_logps(
        &self,
        split: Split,
        indices: &[usize],
        batch: &ScoringBatch,
    ) -> (Tensor<1>, Tensor<1>, Option<Tensor<1>>) {
        let n = indices.len();
        let cached: Option<Vec<(f32, f32)>> = indices
            .iter()
            .map(|&i| self.ref_logps.get(&(split, i)).copied())
            .collect();
        match cached {
            Some(values) => {
                let chosen: Vec<f32> = values.iter().map(|v| v.0).collect();
                let rejected: Vec<f32> = values.iter().map(|v| v.1).collect();
                let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [n]), &self.device);
                (t(chosen), t(rejected), None)
            }
            None => {
                let logps = score_completions(&self.reference, batch, &self.device).logps;
                (
                    logps.clone().narrow(0, 0, n),
                    logps.clone().narrow(0, n, n),
                    Some(logps),
                )
            }
        }
    }

    fn remember_reference(&mut self, split: Split, indices: &[usize], values: &[f32]) {
        let n = indices.len();
        for (k, &i) in indices.iter().enumerate() {
            self.ref_logps
                .insert((split, i), (values[k], values[n + k]));
        }
    }

    /// One optimizer step on the next batch.
    pub async fn step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let indices = self.next_batch();
        let pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &self.train[i]).collect();
        let batch = collate_pairs(&pairs, self.options.max_length, self.pad_id);
        let tokens = batch.scored_tokens_per_row();
        let n = indices.len();
        let (ref_chosen, ref_rejected, ref_fresh) =
            self.reference_logps(Split::Train, &indices, &batch);

        let policy = self.policy.take().expect("policy present");
        let scores = score_completions(&policy, &batch, &self.device);
        let out = dpo_loss(scores, ref_chosen, ref_rejected, n, self.options.beta);
        let mut grads = GradientsParams::from_grads(out.loss.backward(), &policy);
        let grad_norm = clip_grad_norm(
            &self.params,
            &mut grads,
            self.options.max_grad_norm,
            &self.device,
        );
        let lr = self.options.lr_schedule.lr_at(
            self.options.learning_rate,
            self.step,
            self.total_steps,
            self.options.warmup_steps,
        );
        self.policy = Some(self.optimizer.step(lr, policy, grads));

        // One readback per step: statistics, grad norm and (first time only) reference log-probs.
        let mut tensors = vec![out.stats, grad_norm];
        tensors.extend(ref_fresh.clone());
        let data = read_back(tensors).await?;
        if ref_fresh.is_some() {
            self.remember_reference(Split::Train, &indices, &data[2]);
        }
        let metrics =
            DpoMetrics::from_stats(&data[0], tokens[..n].iter().sum(), tokens[n..].iter().sum());
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            total_steps: self.total_steps,
            epoch: self.step as f64 * self.options.batch_size as f64 / self.train.len() as f64,
            metrics,
            grad_norm: data[1][0] as f64,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Train to the end, calling `on_step` after every step; it returns `false` to stop early.
    pub async fn run(&mut self, mut on_step: impl FnMut(&StepReport) -> bool) -> Result<()> {
        while !self.is_done() {
            let report = self.step().await?;
            if !on_step(&report) {
                break;
            }
        }
        Ok(())
    }

    /// Metrics of the current policy on the evaluation pairs, in order, aggregated as TRL's
    /// `evaluate()` does. `None` without evaluation pairs.
    pub async fn evaluate(&mut self) -> Result<Option<DpoMetrics>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let policy = self.policy();
        let mut acc = MetricsAccumulator::default();
        let batch_size = self.options.eval_batch_size;
        for start in (0..self.eval.len()).step_by(batch_size) {
            let indices: Vec<usize> = (start..(start + batch_size).min(self.eval.len())).collect();
            let pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &self.eval[i]).collect();
            let batch = collate_pairs(&pairs, self.options.max_length, self.pad_id);
            let tokens = batch.scored_tokens_per_row();
            let n = indices.len();
            let (ref_chosen, ref_rejected, ref_fresh) =
                self.reference_logps(Split::Eval, &indices, &batch);
            let scores = score_completions(&policy, &batch, &self.device);
            let out = dpo_loss(scores, ref_chosen, ref_rejected, n, self.options.beta);
            let mut tensors = vec![out.stats];
            tensors.extend(ref_fresh.clone());
            let data = read_back(tensors).await?;
            if ref_fresh.is_some() {
                self.remember_reference(Split::Eval, &indices, &data[1]);
            }
            let metrics = DpoMetrics::from_stats(
                &data[0],
                tokens[..n].iter().sum(),
                tokens[n..].iter().sum(),
            );
            acc.add(&metrics, n);
        }
        Ok(Some(acc.mean()))
    }
}

/// Read small tensors back in one transaction (one device sync), as f32 vectors.
async fn read_back(tensors: Vec<Tensor<1>>) -> Result<Vec<Vec<f32>>> {
    // A transaction takes tensors of one backend: drop the autodiff wrapper where there is one.
    let transaction = tensors.into_iter().fold(Transaction::default(), |t, x| {
        t.register(x.without_autodiff())
    });
    let data = transaction
        .execute_async()
        .await
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    data.into_iter()
        .map(|d| {
            d.convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| Error::Readback(format!("{e:?}")))
        })
        .collect()
}
