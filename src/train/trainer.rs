//! The one training loop, `async` so the same code runs under `pollster::block_on` natively and
//! under the browser's event loop in a Web Worker. Every device readback here is asynchronous.
//! It trains DPO (preference pairs against a frozen reference) or SFT (completions); everything
//! but the batch and the loss is shared. It knows nothing of files: `checkpoint.rs` saves and
//! restores it, `run.rs` builds it.

use std::collections::HashMap;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, Transaction};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::dpo::{DpoMetrics, dpo_loss};
use super::losses::PreferenceLoss;
use super::metrics::{Metrics, MetricsAccumulator, StepReport};
use super::optim::{ParamInfo, clip_grad_norm, param_infos};
use super::optimizer::Optimizer;
use super::options::TrainOptions;
use super::reference_free::{ReferenceFreeMetrics, prepare, reference_free_loss};
use super::sft::{SftMetrics, sft_loss};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::model::scoring::{
    ScoreOptions, ScoringBatch, score_completions, score_completions_with,
};
use crate::text::collate::{collate_completions, collate_pairs, collate_split_pairs};
use crate::text::tokenize::{SplitPair, TokenizedCompletion, TokenizedPair};

/// Training and evaluation examples, and what is learned from them. (Which model is the
/// reference is decided in `run.rs`.)
pub enum TaskData {
    /// DPO against a frozen `reference`.
    Dpo {
        train: Vec<TokenizedPair>,
        eval: Vec<TokenizedPair>,
        reference: CausalLm,
    },
    Sft {
        train: Vec<TokenizedCompletion>,
        eval: Vec<TokenizedCompletion>,
    },
    /// SimPO or ORPO (`options.loss`): pairs tokenized per answer, no reference model.
    ReferenceFree {
        train: Vec<SplitPair>,
        eval: Vec<SplitPair>,
    },
}

enum Objective {
    Dpo {
        train: Vec<TokenizedPair>,
        eval: Vec<TokenizedPair>,
        test: Vec<TokenizedPair>,
        /// `None` once every example's reference log-probs are known (precomputed).
        reference: Option<CausalLm>,
        /// The reference is frozen, so each pair's reference log-probs are computed once
        /// (TRL's `precompute_ref_log_probs`, done lazily).
        ref_logps: HashMap<(Split, usize), (f32, f32)>,
    },
    Sft {
        train: Vec<TokenizedCompletion>,
        eval: Vec<TokenizedCompletion>,
        test: Vec<TokenizedCompletion>,
    },
    ReferenceFree {
        train: Vec<SplitPair>,
        eval: Vec<SplitPair>,
        test: Vec<SplitPair>,
        method: PreferenceLoss,
    },
}

/// Held-out test examples, tokenized like the run's training examples: evaluated only when
/// asked (`Trainer::evaluate_test`), never used to choose anything.
pub enum TestData {
    Pairs(Vec<TokenizedPair>),
    SplitPairs(Vec<SplitPair>),
    Completions(Vec<TokenizedCompletion>),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Split {
    Train,
    Eval,
    Test,
}

/// Where the examples are in the schedule: what a resumed run needs besides weights and
/// optimizer state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub epoch: usize,
    pub cursor: usize,
    pub order: Vec<usize>,
    /// Seed for the next epoch's shuffle.
    pub next_seed: u64,
}

/// A training run in progress: the policy, optimizer state and data order (plus the frozen
/// reference for DPO). Drive it with `step()` / `evaluate()`, or `run()`.
pub struct Trainer {
    /// Always `Some` between calls; taken by value for the optimizer step.
    policy: Option<CausalLm>,
    objective: Objective,
    optimizer: Optimizer,
    params: Vec<ParamInfo>,
    options: TrainOptions,
    pad_id: u32,
    device: Device,
    total_steps: usize,
    progress: Progress,
    /// Steps in a row whose loss or gradient was not finite (their updates were skipped).
    non_finite_in_a_row: usize,
}

/// After this many non-finite steps in a row the run stops.
const MAX_NON_FINITE_STEPS: usize = 3;

impl Trainer {
    /// `policy` starts training from its current weights. Models live on `device` (no autodiff).
    pub fn new(
        policy: CausalLm,
        task: TaskData,
        pad_id: u32,
        options: TrainOptions,
        device: &Device,
    ) -> Result<Self> {
        let train_len = match &task {
            TaskData::Dpo { train, .. } => train.len(),
            TaskData::Sft { train, .. } => train.len(),
            TaskData::ReferenceFree { train, .. } => train.len(),
        };
        if train_len == 0 {
            return Err(Error::Invalid(
                "no training examples left after tokenization".into(),
            ));
        }
        for (field, size) in [
            ("batch_size", options.batch_size),
            (
                "gradient_accumulation_steps",
                options.gradient_accumulation_steps,
            ),
            ("eval_batch_size", options.eval_batch_size),
        ] {
            if size == 0 {
                return Err(Error::setting(field, "must be at least 1"));
            }
        }
        if let (Some(max_len), Some(limit)) = (options.max_length, policy.max_positions())
            && max_len > limit
        {
            return Err(Error::setting(
                "max_length",
                format!("{max_len} exceeds the model's {limit} positions"),
            ));
        }
        let objective = match task {
            TaskData::Dpo {
                train,
                eval,
                reference,
            } => Objective::Dpo {
                train,
                eval,
                test: Vec::new(),
                reference: Some(reference),
                ref_logps: HashMap::new(),
            },
            TaskData::Sft { train, eval } => Objective::Sft {
                train,
                eval,
                test: Vec::new(),
            },
            TaskData::ReferenceFree { train, eval } => Objective::ReferenceFree {
                train,
                eval,
                test: Vec::new(),
                method: options.loss.reference_free().ok_or_else(|| {
                    Error::setting("loss", "reference-free data needs the simpo or orpo loss")
                })?,
            },
        };
        if options.dropout {
            // Dropout masks come from the device's generator: seeded, so runs repeat.
            device.seed(options.seed);
        }
        let params = param_infos(&policy.optimizer_params());
        let optimizer = Optimizer::new(
            options.optimizer,
            options.weight_decay,
            &options.optimizer_settings,
            &params,
        );
        let steps_per_epoch = train_len
            .div_ceil(options.batch_size)
            .div_ceil(options.gradient_accumulation_steps.max(1));
        let total_steps = options
            .max_steps
            .unwrap_or(steps_per_epoch * options.epochs.max(1));
        let mut trainer = Self {
            policy: Some(policy.train()),
            objective,
            optimizer,
            params,
            pad_id,
            device: device.clone(),
            total_steps,
            progress: Progress {
                step: 0,
                epoch: 0,
                cursor: 0,
                order: Vec::new(),
                next_seed: options.seed,
            },
            non_finite_in_a_row: 0,
            options,
        };
        trainer.start_epoch();
        Ok(trainer)
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn steps_done(&self) -> usize {
        self.progress.step
    }

    pub fn is_done(&self) -> bool {
        self.progress.step >= self.total_steps
    }

    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Where the models live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn train_len(&self) -> usize {
        match &self.objective {
            Objective::Dpo { train, .. } => train.len(),
            Objective::Sft { train, .. } => train.len(),
            Objective::ReferenceFree { train, .. } => train.len(),
        }
    }

    pub fn eval_len(&self) -> usize {
        match &self.objective {
            Objective::Dpo { eval, .. } => eval.len(),
            Objective::Sft { eval, .. } => eval.len(),
            Objective::ReferenceFree { eval, .. } => eval.len(),
        }
    }

    /// How many numbers training changes (counted on the training copy of the policy, where
    /// frozen weights are told apart).
    pub fn trainable_parameter_count(&self) -> usize {
        self.policy
            .as_ref()
            .expect("policy present")
            .trainable_parameter_count()
    }

    /// How many numbers the policy has (base weights and adapters).
    pub fn parameter_count(&self) -> usize {
        let policy = self.policy.as_ref().expect("policy present");
        policy
            .named_params()
            .iter()
            .chain(&policy.adapter_params())
            .map(|p| p.numel())
            .sum()
    }

    /// The policy without autodiff, for evaluation or export (shares the weights, no copy).
    pub fn policy(&self) -> CausalLm {
        self.policy.as_ref().expect("policy present").valid()
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Continue a saved run (see `checkpoint.rs`): optimizer state already loaded into an
    /// optimizer built like this trainer's, and the schedule position.
    pub fn restore(&mut self, optimizer: Optimizer, progress: Progress) -> Result<()> {
        if progress.order.len() != self.train_len() {
            return Err(Error::Invalid(format!(
                "the checkpoint was made with {} training examples, this run has {}",
                progress.order.len(),
                self.train_len()
            )));
        }
        self.optimizer = optimizer;
        self.progress = progress;
        Ok(())
    }

    fn start_epoch(&mut self) {
        let len = self.train_len();
        let p = &mut self.progress;
        p.order = (0..len).collect();
        if self.options.shuffle {
            let mut rng = StdRng::seed_from_u64(p.next_seed);
            p.order.shuffle(&mut rng);
            p.next_seed = p.next_seed.wrapping_add(1);
        }
        p.cursor = 0;
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.progress.cursor >= self.progress.order.len() {
            self.progress.epoch += 1;
            self.start_epoch();
        }
        let p = &mut self.progress;
        let end = (p.cursor + self.options.batch_size).min(p.order.len());
        let batch = p.order[p.cursor..end].to_vec();
        p.cursor = end;
        batch
    }

    /// The batch for `indices` of `split`, and its loss and statistics on `policy`. Returns the
    /// loss, the tensors to read back, and how to turn them into metrics.
    fn forward(
        &self,
        policy: &CausalLm,
        split: Split,
        indices: &[usize],
    ) -> (
        Tensor<1>,
        Vec<Tensor<1>>,
        Box<dyn FnOnce(&[Vec<f32>]) -> Metrics>,
        Option<Fresh>,
    ) {
        let n = indices.len();
        let max_length = self.options.max_length;
        match &self.objective {
            Objective::Dpo { .. } => {
                let (batch, score, ref_chosen, ref_rejected, fresh) =
                    self.dpo_batch_with_reference(split, indices);
                let tokens = batch.scored_tokens_per_row();
                let (chosen_tokens, rejected_tokens) =
                    (tokens[..n].iter().sum(), tokens[n..].iter().sum());
                let policy_score = ScoreOptions {
                    aligned: self.options.loss.use_weighting,
                    ..score
                };
                let scores = score_completions_with(policy, &batch, &policy_score, &self.device);
                let out = dpo_loss(
                    scores,
                    ref_chosen,
                    ref_rejected,
                    &batch,
                    &self.options.loss,
                    self.options.beta,
                );
                let metrics = Box::new(move |data: &[Vec<f32>]| {
                    Metrics::Dpo(DpoMetrics::from_stats(
                        &data[0],
                        chosen_tokens,
                        rejected_tokens,
                    ))
                });
                (out.loss, vec![out.stats], metrics, fresh)
            }
            Objective::Sft { train, eval, test } => {
                let set = match split {
                    Split::Train => train,
                    Split::Eval => eval,
                    Split::Test => test,
                };
                let rows: Vec<&TokenizedCompletion> = indices.iter().map(|&i| &set[i]).collect();
                let batch = collate_completions(
                    &rows,
                    max_length,
                    self.options.truncation_mode,
                    self.pad_id,
                );
                let tokens = batch.scored.len();
                let out = sft_loss(score_completions(policy, &batch, &self.device), tokens);
                let metrics = Box::new(move |data: &[Vec<f32>]| {
                    Metrics::Sft(SftMetrics::from_stats(&data[0], tokens))
                });
                (out.loss, vec![out.stats], metrics, None)
            }
            Objective::ReferenceFree {
                train,
                eval,
                test,
                method,
            } => {
                let set = match split {
                    Split::Train => train,
                    Split::Eval => eval,
                    Split::Test => test,
                };
                let pairs: Vec<&SplitPair> = indices.iter().map(|&i| &set[i]).collect();
                let method = *method;
                let prepared =
                    prepare(collate_split_pairs(&pairs, max_length, self.pad_id), method);
                let scores =
                    score_completions_with(policy, &prepared.batch, &prepared.score, &self.device);
                let out =
                    reference_free_loss(scores, &prepared, &self.options.loss, self.options.beta);
                let metrics = Box::new(move |data: &[Vec<f32>]| {
                    Metrics::ReferenceFree(ReferenceFreeMetrics::from_stats(&data[0], method))
                });
                (out.loss, vec![out.stats], metrics, None)
            }
        }
    }

    /// Read `tensors` back in one transaction, plus fresh reference log-probs, which are cached.
    /// Returns the values of `tensors` only.
    async fn read_back_and_remember(
        &mut self,
        mut tensors: Vec<Tensor<1>>,
        fresh: Vec<Fresh>,
    ) -> Result<Vec<Vec<f32>>> {
        let asked = tensors.len();
        tensors.extend(fresh.iter().map(|f| f.logps.clone()));
        let mut data = read_back(tensors).await?;
        let values = data.split_off(asked);
        if let Objective::Dpo { ref_logps, .. } = &mut self.objective {
            for (fresh, values) in fresh.into_iter().zip(values) {
                let n = fresh.indices.len();
                for (k, &i) in fresh.indices.iter().enumerate() {
                    ref_logps.insert((fresh.split, i), (values[k], values[n + k]));
                }
            }
        }
        Ok(data)
    }

    /// The micro-batches of the next step: `gradient_accumulation_steps` batches, fewer when the
    /// epoch ends first (as the Trainer does).
    fn next_micro_batches(&mut self) -> Vec<Vec<usize>> {
        let mut batches = vec![self.next_batch()];
        while batches.len() < self.options.gradient_accumulation_steps
            && self.progress.cursor < self.progress.order.len()
        {
            batches.push(self.next_batch());
        }
        batches
    }

    /// Optimizer steps per epoch (the last may have fewer examples).
    fn steps_per_epoch(&self) -> usize {
        self.train_len()
            .div_ceil(self.options.batch_size)
            .div_ceil(self.options.gradient_accumulation_steps)
    }

    /// One optimizer step on the next batch (or, with gradient accumulation, on the next few
    /// micro-batches, each weighted by its share of the step's examples so that the update is
    /// the one the whole batch would give).
    pub async fn step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let micro_batches = self.next_micro_batches();
        let examples: usize = micro_batches.iter().map(Vec::len).sum();
        let tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|&i| self.tokens_of(i))
            .sum();
        let policy = self.policy.take().expect("policy present");
        let mut accumulated = GradientsAccumulator::<CausalLm>::new();
        let (mut readback, mut to_metrics, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        for indices in &micro_batches {
            let (loss, stats, metrics, new) = self.forward(&policy, Split::Train, indices);
            let loss = if micro_batches.len() == 1 {
                loss
            } else {
                loss.mul_scalar(indices.len() as f64 / examples as f64)
            };
            accumulated.accumulate(
                &policy,
                GradientsParams::from_grads(loss.backward(), &policy),
            );
            to_metrics.push((readback.len(), stats.len(), indices.len(), metrics));
            readback.extend(stats);
            fresh.extend(new);
        }
        let mut grads = accumulated.grads();
        let grad_norm = clip_grad_norm(
            &self.params,
            &mut grads,
            self.options.max_grad_norm,
            &self.device,
        );
        let lr = self.options.lr_schedule.lr_at(
            self.options.learning_rate,
            self.progress.step,
            self.total_steps,
            self.options.warmup_steps,
        );
        // One readback per step, before the update: statistics, grad norm and (first time only)
        // reference log-probs. A non-finite loss or gradient skips the update.
        let grad_at = readback.len();
        readback.push(grad_norm);
        let data = match self.read_back_and_remember(readback, fresh).await {
            Ok(data) => data,
            Err(e) => {
                self.policy = Some(policy);
                return Err(e);
            }
        };
        // A step's metrics aggregate its micro-batches as the Trainer logs them.
        let metrics = if to_metrics.len() == 1 {
            let (at, len, _, metrics) = to_metrics.pop().expect("one micro-batch");
            metrics(&data[at..at + len])
        } else {
            let mut acc = MetricsAccumulator::default();
            let mut last = None;
            for (at, len, rows, metrics) in to_metrics {
                let m = metrics(&data[at..at + len]);
                acc.add_metrics(&m, rows);
                last = Some(m);
            }
            acc.mean_like(&last.expect("at least one micro-batch"))
        };
        let grad_norm = data[grad_at][0] as f64;
        let finite = metrics.loss().is_finite() && grad_norm.is_finite();
        self.policy = Some(if finite {
            self.optimizer.step(lr, policy, grads)
        } else {
            policy
        });
        self.progress.step += 1;
        if self.options.sync_ref_model
            && self
                .progress
                .step
                .is_multiple_of(self.options.ref_model_sync_steps)
        {
            self.sync_reference();
        }
        self.non_finite_in_a_row = if finite {
            0
        } else {
            self.non_finite_in_a_row + 1
        };
        if self.non_finite_in_a_row >= MAX_NON_FINITE_STEPS {
            return Err(Error::Numeric {
                step: self.progress.step,
                message: format!(
                    "the loss or the gradient norm was NaN or infinite in {MAX_NON_FINITE_STEPS} \
                     steps in a row (loss {}, gradient norm {grad_norm}; those updates were \
                     skipped). Likely causes: a learning rate too high for this model \
                     (learning_rate {}), or NaN/infinite values in the model's weights",
                    metrics.loss(),
                    self.options.learning_rate
                ),
            });
        }
        Ok(StepReport {
            step: self.progress.step,
            total_steps: self.total_steps,
            epoch: self.progress.step as f64 / self.steps_per_epoch() as f64,
            metrics,
            grad_norm,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
            tokens,
            skipped: !finite,
        })
    }

    /// Tokens the policy reads for training example `index` (both sequences of a pair, each cut
    /// at `max_length`), for throughput.
    fn tokens_of(&self, index: usize) -> usize {
        let limit = self.options.max_length.unwrap_or(usize::MAX);
        let seq = |a: usize, b: usize| (a + b).min(limit);
        match &self.objective {
            Objective::Dpo { train, .. } => {
                let p = &train[index];
                seq(p.prompt_ids.len(), p.chosen_ids.len())
                    + seq(p.prompt_ids.len(), p.rejected_ids.len())
            }
            Objective::ReferenceFree { train, .. } => {
                let p = &train[index];
                seq(p.chosen.prompt_ids.len(), p.chosen.completion_ids.len())
                    + seq(p.rejected.prompt_ids.len(), p.rejected.completion_ids.len())
            }
            Objective::Sft { train, .. } => {
                let c = &train[index];
                seq(c.prompt_ids.len(), c.completion_ids.len())
            }
        }
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

    /// The DPO pairs of `split` at `indices`, collated, how they are scored (LD-DPO's token
    /// weights), and their reference log-probs: cached, or computed now (`Fresh`, to cache once
    /// read back).
    fn dpo_batch_with_reference(
        &self,
        split: Split,
        indices: &[usize],
    ) -> (
        ScoringBatch,
        ScoreOptions,
        Tensor<1>,
        Tensor<1>,
        Option<Fresh>,
    ) {
        let Objective::Dpo {
            reference,
            ref_logps,
            ..
        } = &self.objective
        else {
            unreachable!("only DPO runs have a reference")
        };
        let pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &self.pairs(split)[i]).collect();
        let batch = collate_pairs(
            &pairs,
            self.options.max_length,
            self.options.truncation_mode,
            self.pad_id,
        );
        let score = ScoreOptions {
            token_weights: self
                .options
                .loss
                .ld_alpha
                .map(|alpha| ld_token_weights(&batch, alpha)),
            ..ScoreOptions::default()
        };
        let (chosen, rejected, fresh) = reference_logps(
            reference.as_ref(),
            ref_logps,
            split,
            indices,
            &batch,
            &score,
            &self.device,
        );
        (batch, score, chosen, rejected, fresh)
    }

    /// The reference model, while the run holds one (DPO, until released).
    pub fn reference_model(&self) -> Option<&CausalLm> {
        match &self.objective {
            Objective::Dpo { reference, .. } => reference.as_ref(),
            _ => None,
        }
    }

    /// TR-DPO: reference ← α·policy + (1 − α)·reference; its cached log-probs are stale then.
    fn sync_reference(&mut self) {
        let policy = self.policy();
        let alpha = self.options.ref_model_mixup_alpha;
        if let Objective::Dpo {
            reference: Some(reference),
            ref_logps,
            ..
        } = &mut self.objective
        {
            *reference = reference.clone().blended_with(&policy, alpha);
            ref_logps.clear();
        }
    }

    /// The DPO examples of a split.
    fn pairs(&self, split: Split) -> &[TokenizedPair] {
        match &self.objective {
            Objective::Dpo {
                train, eval, test, ..
            } => match split {
                Split::Train => train,
                Split::Eval => eval,
                Split::Test => test,
            },
            _ => &[],
        }
    }

    /// What the reference log-probs of this run depend on besides the reference model: every
    /// example's token ids and the settings that change how they are scored. A hex SHA-256;
    /// `None` when the run has no reference (SFT, SimPO, ORPO).
    pub fn reference_data_fingerprint(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        if !matches!(self.objective, Objective::Dpo { .. }) {
            return None;
        }
        let mut h = Sha256::new();
        let mut put = |x: u64| h.update(x.to_le_bytes());
        put(1); // format version
        put(self.options.max_length.map_or(0, |m| m as u64));
        put(self.options.truncation_mode as u64);
        put(self.options.loss.ld_alpha.map_or(u64::MAX, f64::to_bits));
        for split in [Split::Train, Split::Eval, Split::Test] {
            let pairs = self.pairs(split);
            put(pairs.len() as u64);
            for pair in pairs {
                for ids in [&pair.prompt_ids, &pair.chosen_ids, &pair.rejected_ids] {
                    put(ids.len() as u64);
                    for &id in ids.iter() {
                        put(id as u64);
                    }
                }
            }
        }
        Some(format!("{:x}", h.finalize()))
    }

    /// Compute the reference log-probs of every example not yet known, in batches of
    /// `eval_batch_size` without gradients (TRL's `precompute_ref_log_probs`).
    pub async fn precompute_reference_logps(&mut self) -> Result<()> {
        for split in [Split::Train, Split::Eval, Split::Test] {
            let len = self.pairs(split).len();
            let missing: Vec<usize> = match &self.objective {
                Objective::Dpo { ref_logps, .. } => (0..len)
                    .filter(|i| !ref_logps.contains_key(&(split, *i)))
                    .collect(),
                _ => return Ok(()),
            };
            for indices in missing.chunks(self.options.eval_batch_size.max(1)) {
                let (.., fresh) = self.dpo_batch_with_reference(split, indices);
                self.read_back_and_remember(Vec::new(), fresh.into_iter().collect())
                    .await?;
            }
        }
        Ok(())
    }

    /// Every example's reference log-probs, `(chosen, rejected)` per split (train, eval, test),
    /// once all are known.
    pub fn reference_logps_table(&self) -> Option<[Vec<(f32, f32)>; 3]> {
        let Objective::Dpo { ref_logps, .. } = &self.objective else {
            return None;
        };
        let column = |split: Split| -> Option<Vec<(f32, f32)>> {
            (0..self.pairs(split).len())
                .map(|i| ref_logps.get(&(split, i)).copied())
                .collect()
        };
        Some([
            column(Split::Train)?,
            column(Split::Eval)?,
            column(Split::Test)?,
        ])
    }

    /// Use reference log-probs computed earlier (`reference_logps_table`'s layout).
    pub fn load_reference_logps(&mut self, table: [Vec<(f32, f32)>; 3]) -> Result<()> {
        let sizes = [Split::Train, Split::Eval, Split::Test].map(|s| self.pairs(s).len());
        if table.iter().map(Vec::len).ne(sizes) {
            return Err(Error::Invalid(
                "the reference log-probs were computed for other examples".into(),
            ));
        }
        let Objective::Dpo { ref_logps, .. } = &mut self.objective else {
            return Err(Error::Invalid("this run has no reference model".into()));
        };
        for (split, values) in [Split::Train, Split::Eval, Split::Test]
            .into_iter()
            .zip(table)
        {
            for (i, v) in values.into_iter().enumerate() {
                ref_logps.insert((split, i), v);
            }
        }
        Ok(())
    }

    /// Free the reference model once every example's reference log-probs are known.
    pub fn release_reference(&mut self) -> Result<()> {
        if self.reference_logps_table().is_none() {
            return Err(Error::Invalid(
                "the reference is still needed: not every reference log-prob is known".into(),
            ));
        }
        if let Objective::Dpo { reference, .. } = &mut self.objective {
            *reference = None;
        }
        Ok(())
    }

    /// Metrics of the current policy on the evaluation examples, in order, aggregated as the
    /// Trainer's `evaluate()` does. `None` without evaluation examples.
    pub async fn evaluate(&mut self) -> Result<Option<Metrics>> {
        self.evaluate_split(Split::Eval).await
    }

    /// [`Trainer::evaluate`] on the test examples (`None` without any).
    pub async fn evaluate_test(&mut self) -> Result<Option<Metrics>> {
        self.evaluate_split(Split::Test).await
    }

    /// Attach held-out test examples of the same kind as the training examples.
    pub fn set_test_data(&mut self, data: TestData) -> Result<()> {
        match (&mut self.objective, data) {
            (Objective::Dpo { test, .. }, TestData::Pairs(rows)) => *test = rows,
            (Objective::ReferenceFree { test, .. }, TestData::SplitPairs(rows)) => *test = rows,
            (Objective::Sft { test, .. }, TestData::Completions(rows)) => *test = rows,
            _ => {
                return Err(Error::Invalid(
                    "test examples of another kind than the training examples".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn test_len(&self) -> usize {
        match &self.objective {
            Objective::Dpo { test, .. } => test.len(),
            Objective::Sft { test, .. } => test.len(),
            Objective::ReferenceFree { test, .. } => test.len(),
        }
    }

    async fn evaluate_split(&mut self, split: Split) -> Result<Option<Metrics>> {
        let len = match split {
            Split::Test => self.test_len(),
            _ => self.eval_len(),
        };
        if len == 0 {
            return Ok(None);
        }
        let policy = self.policy();
        let mut acc = MetricsAccumulator::default();
        let batch_size = self.options.eval_batch_size;
        let mut last = None;
        for start in (0..len).step_by(batch_size) {
            let indices: Vec<usize> = (start..(start + batch_size).min(len)).collect();
            let (_, readback, to_metrics, fresh) = self.forward(&policy, split, &indices);
            let data = self
                .read_back_and_remember(readback, fresh.into_iter().collect())
                .await?;
            let metrics = to_metrics(&data);
            acc.add_metrics(&metrics, indices.len());
            last = Some(metrics);
        }
        Ok(last.map(|m| acc.mean_like(&m)))
    }
}

/// Reference log-probs computed this step, to cache once read back.
struct Fresh {
    split: Split,
    indices: Vec<usize>,
    /// `[2n]`: chosen then rejected.
    logps: Tensor<1>,
}

/// LD-DPO's weight of each scored token of a pair batch: 1 within the length of the shorter of
/// the pair's two completions, `alpha` past it.
fn ld_token_weights(batch: &ScoringBatch, alpha: f64) -> Vec<f32> {
    let pairs = batch.rows / 2;
    let lengths = batch.scored_tokens_per_row();
    let mut seen = vec![0usize; batch.rows];
    batch
        .scored
        .iter()
        .map(|&(row, _)| {
            seen[row] += 1;
            let pair = row % pairs;
            let shared = lengths[pair].min(lengths[pair + pairs]);
            if seen[row] <= shared {
                1.0
            } else {
                alpha as f32
            }
        })
        .collect()
}

/// Reference log-probs of `indices` as device tensors (chosen, rejected), plus what to read back
/// into the cache when they were not cached yet.
fn reference_logps(
    reference: Option<&CausalLm>,
    cache: &HashMap<(Split, usize), (f32, f32)>,
    split: Split,
    indices: &[usize],
    batch: &ScoringBatch,
    score: &ScoreOptions,
    device: &Device,
) -> (Tensor<1>, Tensor<1>, Option<Fresh>) {
    let n = indices.len();
    let cached: Option<Vec<(f32, f32)>> = indices
        .iter()
        .map(|&i| cache.get(&(split, i)).copied())
        .collect();
    match cached {
        Some(values) => {
            let column = |pick: fn(&(f32, f32)) -> f32| {
                let v: Vec<f32> = values.iter().map(pick).collect();
                Tensor::<1>::from_data(TensorData::new(v, [n]), device)
            };
            (column(|v| v.0), column(|v| v.1), None)
        }
        None => {
            let reference = reference.expect("a released reference has every log-prob cached");
            let score = ScoreOptions {
                log_probs_only: true,
                ..score.clone()
            };
            let logps = score_completions_with(reference, batch, &score, device).logps;
            (
                logps.clone().narrow(0, 0, n),
                logps.clone().narrow(0, n, n),
                Some(Fresh {
                    split,
                    indices: indices.to_vec(),
                    logps,
                }),
            )
        }
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
