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

use super::clipping::clip_grad_norm;
use super::collective::{Collective, check_agreement, shard};
use super::dpo::{DpoMetrics, WholeBatch, dpo_loss};
use super::losses::{LossTerm, PreferenceLoss};
use super::metrics::{Metrics, MetricsAccumulator, StepReport};
use super::optim::{ParamInfo, param_infos};
use super::optimizer::Optimizer;
use super::options::TrainOptions;
use super::reference_free::{ReferenceFreeMetrics, prepare, reference_free_loss};
use super::sft::{SftMetrics, sft_loss};
use crate::error::{Error, Result};
use crate::model::scoring::{
    ScoreOptions, ScoringBatch, score_completions, score_completions_with,
};
use crate::model::{CausalLm, ParamTensor};
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
    /// The other processes of a data-parallel job (`collective.rs`); `None` trains alone.
    group: Option<Box<dyn Collective>>,
    /// In a group: the tensors training changes (each once), whose gradients are summed.
    exchanged: Vec<ParamInfo>,
    /// Seconds the last exchange with the group took.
    exchange_seconds: f64,
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
            group: None,
            exchanged: Vec::new(),
            exchange_seconds: 0.0,
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

    /// The batch for `indices` of `split`, and its loss and statistics on `policy`: the loss,
    /// the statistics to read back (sums, see `metrics_of`) and fresh reference log-probs.
    /// `whole` is the batch `indices` are this process's share of (the same slice when alone):
    /// SFT's loss is a mean over all of its tokens.
    fn forward(
        &self,
        policy: &CausalLm,
        split: Split,
        indices: &[usize],
        whole: &[usize],
    ) -> (Tensor<1>, Tensor<1>, Option<Fresh>) {
        let max_length = self.options.max_length;
        match &self.objective {
            Objective::Dpo { .. } => {
                let (batch, score, ref_chosen, ref_rejected, fresh) =
                    self.dpo_batch_with_reference(split, indices);
                let policy_score = ScoreOptions {
                    aligned: self.options.loss.use_weighting,
                    ..score
                };
                let scores = score_completions_with(policy, &batch, &policy_score, &self.device);
                // The SFT term is a mean over the whole batch's chosen tokens.
                let whole = (whole.len() != indices.len()).then(|| {
                    let whole_batch = self.collate_pairs(split, whole);
                    WholeBatch {
                        pairs: whole.len(),
                        chosen_tokens: whole_batch.scored_tokens_per_row()[..whole.len()]
                            .iter()
                            .sum(),
                    }
                });
                let out = dpo_loss(
                    scores,
                    ref_chosen,
                    ref_rejected,
                    &batch,
                    whole,
                    &self.options.loss,
                    self.options.beta,
                );
                (out.loss, out.stats, fresh)
            }
            Objective::Sft { .. } => {
                let collate = |indices: &[usize]| {
                    let set = self.completions(split);
                    let rows: Vec<&TokenizedCompletion> =
                        indices.iter().map(|&i| &set[i]).collect();
                    collate_completions(
                        &rows,
                        max_length,
                        self.options.truncation_mode,
                        self.pad_id,
                    )
                };
                let batch = collate(indices);
                let tokens = batch.scored.len();
                let normalizer = if whole.len() == indices.len() {
                    tokens
                } else {
                    collate(whole).scored.len()
                };
                let out = sft_loss(
                    score_completions(policy, &batch, &self.device),
                    tokens,
                    normalizer,
                );
                (out.loss, out.stats, None)
            }
            Objective::ReferenceFree { method, .. } => {
                let set = self.split_pairs(split);
                let pairs: Vec<&SplitPair> = indices.iter().map(|&i| &set[i]).collect();
                let prepared = prepare(
                    collate_split_pairs(&pairs, max_length, self.pad_id),
                    *method,
                );
                let scores =
                    score_completions_with(policy, &prepared.batch, &prepared.score, &self.device);
                let out =
                    reference_free_loss(scores, &prepared, &self.options.loss, self.options.beta);
                (out.loss, out.stats, None)
            }
        }
    }

    /// The SFT examples of a split.
    fn completions(&self, split: Split) -> &[TokenizedCompletion] {
        match &self.objective {
            Objective::Sft { train, eval, test } => pick(split, [train, eval, test]),
            _ => &[],
        }
    }

    /// The SimPO/ORPO examples of a split.
    fn split_pairs(&self, split: Split) -> &[SplitPair] {
        match &self.objective {
            Objective::ReferenceFree {
                train, eval, test, ..
            } => pick(split, [train, eval, test]),
            _ => &[],
        }
    }

    /// How many statistics `forward` returns for a batch.
    fn stats_len(&self) -> usize {
        match &self.objective {
            Objective::Dpo { .. } => super::dpo::STATS,
            Objective::Sft { .. } => super::sft::STATS,
            Objective::ReferenceFree { .. } => super::reference_free::STATS,
        }
    }

    /// A batch's metrics from its statistics (one process's, or the sum of every rank's shares).
    fn metrics_of(&self, stats: &[f32]) -> Metrics {
        match &self.objective {
            Objective::Dpo { .. } => Metrics::Dpo(DpoMetrics::from_stats(stats)),
            Objective::Sft { .. } => Metrics::Sft(SftMetrics::from_stats(stats)),
            Objective::ReferenceFree { method, .. } => {
                Metrics::ReferenceFree(ReferenceFreeMetrics::from_stats(stats, *method))
            }
        }
    }

    /// [`Trainer::forward`] on this process's share of the batch `whole`: its loss (`None` for an
    /// empty share: more ranks than the batch has examples), statistics (zeros for an empty share,
    /// so the sums still line up) and fresh reference log-probs, and the share itself.
    fn forward_share<'a>(
        &self,
        policy: &CausalLm,
        split: Split,
        whole: &'a [usize],
    ) -> (Option<Tensor<1>>, Tensor<1>, Option<Fresh>, &'a [usize]) {
        let share = self.local_share(split, whole);
        if share.is_empty() {
            let zeros = Tensor::zeros([self.stats_len()], &self.device);
            return (None, zeros, None, share);
        }
        let (loss, stats, fresh) = self.forward(policy, split, share, whole);
        (Some(loss), stats, fresh, share)
    }

    /// This process's share of a batch of `split`: all of it when training alone.
    fn local_share<'a>(&self, split: Split, whole: &'a [usize]) -> &'a [usize] {
        match &self.group {
            Some(group) => {
                let costs: Vec<usize> = whole.iter().map(|&i| self.tokens_in(split, i)).collect();
                shard(whole, &costs, group.rank(), group.size())
            }
            None => whole,
        }
    }

    /// What a share's loss is multiplied by so that the gradients of every share of every
    /// micro-batch of a step add up to the gradient of the step's whole batch: its share of the
    /// step's examples (a per-pair mean), or for SFT (whose loss is already a mean over the whole
    /// micro-batch's tokens) the micro-batch's.
    fn loss_weight(&self, share: &[usize], whole: &[usize], examples: usize) -> f64 {
        let rows = match self.objective {
            Objective::Sft { .. } => whole.len(),
            _ => share.len(),
        };
        rows as f64 / examples as f64
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

    /// Read back one batch's `stats` and its fresh reference log-probs (cached): this process's
    /// alone, or in a group every rank's summed (`whole` is the batch they share).
    async fn read_back_shared(
        &mut self,
        split: Split,
        stats: Vec<Tensor<1>>,
        fresh: Option<Fresh>,
        whole: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        let fresh: Vec<Fresh> = fresh.into_iter().collect();
        match self.group {
            Some(_) => {
                let wholes = [whole.to_vec()];
                self.read_back_summed(split, stats, fresh, &wholes, None)
                    .await
            }
            None => self.read_back_and_remember(stats, fresh).await,
        }
    }

    /// In a group: read back `stats` (one vector per batch in `wholes`), fresh reference
    /// log-probs and, when given, the gradients, then sum all of it over the ranks in one
    /// exchange. Every rank then holds the whole batches' statistics (returned), every pair's
    /// fresh reference log-probs (cached) and the summed gradients (put back in `grads`).
    async fn read_back_summed(
        &mut self,
        split: Split,
        mut stats: Vec<Tensor<1>>,
        fresh: Vec<Fresh>,
        wholes: &[Vec<usize>],
        grads: Option<&mut GradientsParams>,
    ) -> Result<Vec<Vec<f32>>> {
        let batches = stats.len();
        stats.extend(fresh.iter().map(|f| f.logps.clone()));
        // Each trainable tensor flattened; `None` where this rank has no gradient for it.
        let mut flat = Vec::new();
        if let Some(grads) = grads.as_deref() {
            for p in &self.exchanged {
                let g = match p.rank {
                    1 => grads.get::<1>(p.id),
                    _ => grads.get::<2>(p.id).map(|g| g.reshape([p.numel()])),
                };
                flat.push(g.is_some());
                stats.extend(g);
            }
        }
        let mut data = read_back(stats).await?.into_iter();
        // Layout: the batches' statistics; per pair of `wholes`, (chosen, rejected, provided);
        // per trainable tensor, (present, its values).
        let slots: usize = wholes.iter().map(Vec::len).sum();
        // Sized once: the gradients can be most of a model.
        let mut buffer: Vec<f32> =
            Vec::with_capacity(self.exchange_len(batches, slots, !flat.is_empty()));
        let mut lengths = Vec::with_capacity(batches);
        for d in data.by_ref().take(batches) {
            lengths.push(d.len());
            buffer.extend(d);
        }
        let slots_at = buffer.len();
        let slot_of: HashMap<usize, usize> = wholes
            .iter()
            .flatten()
            .enumerate()
            .map(|(slot, &i)| (i, slot))
            .collect();
        buffer.resize(slots_at + 3 * slot_of.len(), 0.0);
        for (f, values) in fresh.iter().zip(data.by_ref()) {
            let n = f.indices.len();
            for (k, i) in f.indices.iter().enumerate() {
                let at = slots_at + 3 * slot_of[i];
                buffer[at..at + 3].copy_from_slice(&[values[k], values[n + k], 1.0]);
            }
        }
        let grads_at = buffer.len();
        for (p, &present) in self.exchanged.iter().zip(&flat) {
            if present {
                buffer.push(1.0);
                buffer.extend(data.next().expect("a gradient was read"));
            } else {
                buffer.push(0.0);
                buffer.resize(buffer.len() + p.numel(), 0.0);
            }
        }
        let group = self.group.as_ref().expect("only called in a group");
        let started = Instant::now();
        group.sum(&mut buffer)?;
        self.exchange_seconds = started.elapsed().as_secs_f64();
        if let Objective::Dpo { ref_logps, .. } = &mut self.objective {
            for (&i, &slot) in &slot_of {
                let at = slots_at + 3 * slot;
                if buffer[at + 2] > 0.0 {
                    ref_logps.insert((split, i), (buffer[at], buffer[at + 1]));
                }
            }
        }
        if let Some(grads) = grads {
            let mut at = grads_at;
            for p in &self.exchanged {
                let present = buffer[at] > 0.0;
                let values = &buffer[at + 1..at + 1 + p.numel()];
                at += 1 + p.numel();
                // A tensor no rank has a gradient for stays without one (as it would alone).
                if !present {
                    continue;
                }
                if p.rank == 1 {
                    grads.remove::<1>(p.id);
                    let g = TensorData::new(values.to_vec(), [p.numel()]);
                    grads.register(p.id, Tensor::<1>::from_data(g, &self.device));
                } else {
                    grads.remove::<2>(p.id);
                    let g = TensorData::new(values.to_vec(), p.dims);
                    grads.register(p.id, Tensor::<2>::from_data(g, &self.device));
                }
            }
        }
        let mut out = Vec::with_capacity(batches);
        let mut at = 0;
        for len in lengths {
            out.push(buffer[at..at + len].to_vec());
            at += len;
        }
        Ok(out)
    }

    /// Join a data-parallel group: from now on each batch is split between its ranks and what
    /// they compute is summed. Fails unless every rank has the same data, settings, position in
    /// the schedule and weights (a sample of each tensor), or when the loss cannot be split
    /// exactly. A group of one is ignored.
    pub async fn join_group(&mut self, group: Box<dyn Collective>) -> Result<()> {
        if group.size() <= 1 {
            return Ok(());
        }
        let ranks = group.size();
        match &self.objective {
            Objective::ReferenceFree { method, .. } => {
                return Err(Error::setting(
                    "loss",
                    format!(
                        "{method} cannot be split over {ranks} processes: its logits metrics \
                         average over each batch's padded length, which depends on the split; \
                         run it in one process"
                    ),
                ));
            }
            Objective::Dpo { .. } => {
                // AOT sorts the batch's margins; the SFT term's token mean splits exactly, but
                // not once WPO weights each pair.
                let use_weighting = self.options.loss.use_weighting;
                let coupled = |t: &LossTerm| match t.loss {
                    PreferenceLoss::Aot | PreferenceLoss::AotUnpaired => true,
                    PreferenceLoss::Sft => use_weighting,
                    _ => false,
                };
                if let Some(term) = self.options.loss.losses.iter().find(|t| coupled(t)) {
                    return Err(Error::setting(
                        "loss",
                        format!(
                            "{} cannot be split over {ranks} processes: it sorts or averages \
                             across the whole batch, so a share of it gives another loss; run it \
                             in one process",
                            term.loss
                        ),
                    ));
                }
            }
            Objective::Sft { .. } => {}
        }
        check_agreement(
            group.as_ref(),
            self.schedule_fingerprint(),
            "data, settings or checkpoint",
        )?;
        check_agreement(
            group.as_ref(),
            self.weights_fingerprint().await?,
            "model weights (other model files, or another checkpoint)",
        )?;
        let policy = self.policy.as_ref().expect("policy present");
        let adapters = policy.adapter_params();
        let trainable = match adapters.is_empty() {
            true => policy
                .named_params()
                .into_iter()
                .filter(|p| p.requires_grad())
                .collect(),
            false => adapters,
        };
        let mut seen = std::collections::HashSet::new();
        let trainable: Vec<_> = trainable
            .into_iter()
            .filter(|p| seen.insert(p.id))
            .collect();
        self.exchanged = param_infos(&trainable);
        self.group = Some(group);
        Ok(())
    }

    /// A hash of what every rank of a group must share: the examples' token ids, the options and
    /// the position in the schedule.
    fn schedule_fingerprint(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.options).expect("options serialize"));
        h.update(serde_json::to_vec(&self.progress).expect("progress serializes"));
        self.hash_examples(&mut h);
        let digest = h.finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    /// Feed every split's examples into `h`: per split their count, then each token-id list
    /// (a pair's prompt, chosen and rejected ids; an SFT row's prompt and completion; a SimPO/ORPO
    /// pair's chosen then rejected prompt and answer) as its length and its ids.
    fn hash_examples(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        let mut put = |x: u64| h.update(x.to_le_bytes());
        for split in [Split::Train, Split::Eval, Split::Test] {
            let lists: Vec<Vec<&[u32]>> = match &self.objective {
                Objective::Dpo { .. } => self
                    .pairs(split)
                    .iter()
                    .map(|p| vec![&p.prompt_ids[..], &p.chosen_ids, &p.rejected_ids])
                    .collect(),
                Objective::Sft { .. } => self
                    .completions(split)
                    .iter()
                    .map(|c| vec![&c.prompt_ids[..], &c.completion_ids])
                    .collect(),
                Objective::ReferenceFree { .. } => self
                    .split_pairs(split)
                    .iter()
                    .map(|p| {
                        vec![
                            &p.chosen.prompt_ids[..],
                            &p.chosen.completion_ids,
                            &p.rejected.prompt_ids,
                            &p.rejected.completion_ids,
                        ]
                    })
                    .collect(),
            };
            put(lists.len() as u64);
            for ids in lists.iter().flatten() {
                put(ids.len() as u64);
                for &id in ids.iter() {
                    put(id as u64);
                }
            }
        }
    }

    /// How many f32 values a step sums over the ranks in its one exchange (×4 bytes): every
    /// trainable value and a flag per tensor, each micro-batch's statistics, and a slot of three
    /// per example for reference log-probs.
    pub fn all_reduce_values(&self) -> usize {
        let micro = self.options.gradient_accumulation_steps;
        self.exchange_len(micro, micro * self.options.batch_size, true)
    }

    /// Values in an exchange of `batches` batches' statistics, `slots` examples' reference
    /// log-prob slots and, `with_grads`, the gradients (`read_back_summed`'s layout).
    fn exchange_len(&self, batches: usize, slots: usize, with_grads: bool) -> usize {
        let grads: usize = match with_grads {
            true => self.exchanged.iter().map(|p| 1 + p.numel()).sum(),
            false => 0,
        };
        batches * self.stats_len() + 3 * slots + grads
    }

    /// A hash of the first values of every tensor of the policy (and the reference, while there
    /// is one): enough to tell other model files apart without reading every weight back.
    async fn weights_fingerprint(&self) -> Result<u64> {
        use sha2::{Digest, Sha256};
        const SAMPLE: usize = 64;
        let policy = self.policy.as_ref().expect("policy present");
        let mut params = policy.optimizer_params();
        if let Some(reference) = self.reference_model() {
            params.extend(reference.named_params());
        }
        let samples: Vec<Tensor<1>> = params
            .iter()
            .map(|p| {
                let flat: Tensor<1> = match &p.tensor {
                    ParamTensor::Vector(t) => t.clone(),
                    ParamTensor::Matrix { tensor, .. } => tensor.clone().reshape([p.numel()]),
                };
                flat.narrow(0, 0, p.numel().min(SAMPLE)).detach()
            })
            .collect();
        let mut h = Sha256::new();
        for values in read_back(samples).await? {
            for v in values {
                h.update(v.to_bits().to_le_bytes());
            }
        }
        let digest = h.finalize();
        Ok(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
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
            .map(|&i| self.tokens_in(Split::Train, i))
            .sum();
        self.score_reference_ahead(&micro_batches).await?;
        let policy = self.policy.take().expect("policy present");
        let mut accumulated = GradientsAccumulator::<CausalLm>::new();
        let (mut readback, mut fresh) = (Vec::new(), Vec::new());
        for whole in &micro_batches {
            let (loss, stats, new, share) = self.forward_share(&policy, Split::Train, whole);
            readback.push(stats);
            fresh.extend(new);
            let Some(loss) = loss else { continue };
            let weight = self.loss_weight(share, whole, examples);
            let loss = if weight == 1.0 {
                loss
            } else {
                loss.mul_scalar(weight)
            };
            accumulated.accumulate(
                &policy,
                GradientsParams::from_grads(loss.backward(), &policy),
            );
        }
        let mut grads = accumulated.grads();
        let lr = self.options.lr_schedule.lr_at(
            self.options.learning_rate,
            self.progress.step,
            self.total_steps,
            self.options.warmup_steps,
        );
        // One readback per step, before the update: statistics, grad norm and (first time only)
        // reference log-probs. In a group, the gradients and statistics are read back and summed
        // over the ranks first (one exchange), and the norm of the summed gradient after.
        let read = match self.group {
            None => {
                let clip = clip_grad_norm(
                    &self.params,
                    &grads,
                    self.options.max_grad_norm,
                    &self.device,
                );
                readback.push(clip.norm);
                self.read_back_and_remember(readback, fresh)
                    .await
                    .map(|mut data| {
                        let norm = data.pop().expect("the norm was read");
                        (data, norm, clip.scale)
                    })
            }
            Some(_) => {
                match self
                    .read_back_summed(
                        Split::Train,
                        readback,
                        fresh,
                        &micro_batches,
                        Some(&mut grads),
                    )
                    .await
                {
                    Ok(data) => {
                        let clip = clip_grad_norm(
                            &self.params,
                            &grads,
                            self.options.max_grad_norm,
                            &self.device,
                        );
                        read_back(vec![clip.norm])
                            .await
                            .map(|mut norm| (data, norm.remove(0), clip.scale))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let (data, grad_norm, grad_scale) = match read {
            Ok(read) => read,
            Err(e) => {
                self.policy = Some(policy);
                return Err(e);
            }
        };
        // A step's metrics aggregate its micro-batches as the Trainer logs them.
        let metrics = if micro_batches.len() == 1 {
            self.metrics_of(&data[0])
        } else {
            let mut acc = MetricsAccumulator::default();
            let mut last = None;
            for (stats, whole) in data.iter().zip(&micro_batches) {
                let m = self.metrics_of(stats);
                acc.add_metrics(&m, whole.len());
                last = Some(m);
            }
            acc.mean_like(&last.expect("at least one micro-batch"))
        };
        let grad_norm = grad_norm[0] as f64;
        let finite = metrics.loss().is_finite() && grad_norm.is_finite();
        self.policy = Some(if finite {
            self.optimizer.step(lr, policy, grads, grad_scale.as_ref())
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
            exchange_seconds: self.group.as_ref().map(|_| self.exchange_seconds),
        })
    }

    /// Tokens the policy reads for example `index` of `split` (both sequences of a pair, each
    /// cut at `max_length`): for throughput, and what a group balances its shares by.
    fn tokens_in(&self, split: Split, index: usize) -> usize {
        let limit = self.options.max_length.unwrap_or(usize::MAX);
        let seq = |a: usize, b: usize| (a + b).min(limit);
        match &self.objective {
            Objective::Dpo { .. } => {
                let p = &self.pairs(split)[index];
                seq(p.prompt_ids.len(), p.chosen_ids.len())
                    + seq(p.prompt_ids.len(), p.rejected_ids.len())
            }
            Objective::ReferenceFree { .. } => {
                let p = &self.split_pairs(split)[index];
                seq(p.chosen.prompt_ids.len(), p.chosen.completion_ids.len())
                    + seq(p.rejected.prompt_ids.len(), p.rejected.completion_ids.len())
            }
            Objective::Sft { .. } => {
                let c = &self.completions(split)[index];
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
        let batch = self.collate_pairs(split, indices);
        let score = ScoreOptions {
            token_weights: self
                .options
                .loss
                .ld_alpha
                .map(|alpha| ld_token_weights(&batch, alpha)),
            ..ScoreOptions::default()
        };
        // A reference batch can hold more pairs than a training step (`score_reference_ahead`):
        // its logits stay within what a step's take.
        let step_rows = 2 * self.options.batch_size * self.options.max_length.unwrap_or(1024);
        let reference_score = ScoreOptions {
            max_logits_rows: Some(step_rows),
            ..score.clone()
        };
        let (chosen, rejected, fresh) = reference_logps(
            reference.as_ref(),
            ref_logps,
            split,
            indices,
            &batch,
            &reference_score,
            &self.device,
        );
        (batch, score, chosen, rejected, fresh)
    }

    /// The DPO pairs of `split` at `indices`, collated.
    fn collate_pairs(&self, split: Split, indices: &[usize]) -> ScoringBatch {
        let pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &self.pairs(split)[i]).collect();
        collate_pairs(
            &pairs,
            self.options.max_length,
            self.options.truncation_mode,
            self.pad_id,
        )
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
            } => pick(split, [train, eval, test]),
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
        self.hash_examples(&mut h);
        Some(format!("{:x}", h.finalize()))
    }

    /// Compute the reference log-probs of every example not yet known, in batches of
    /// `eval_batch_size` without gradients (TRL's `precompute_ref_log_probs`).
    pub async fn precompute_reference_logps(&mut self) -> Result<()> {
        for split in [Split::Train, Split::Eval, Split::Test] {
            let missing: Vec<usize> = (0..self.pairs(split).len())
                .filter(|&i| self.reference_logps_missing(split, i))
                .collect();
            let batch = self.options.eval_batch_size.max(1);
            self.score_reference(split, &missing, batch).await?;
        }
        Ok(())
    }

    /// Whether example `i` of `split` still needs the reference (a DPO run, not yet scored).
    fn reference_logps_missing(&self, split: Split, i: usize) -> bool {
        match &self.objective {
            Objective::Dpo { ref_logps, .. } => !ref_logps.contains_key(&(split, i)),
            _ => false,
        }
    }

    /// The reference's log-probs of `indices`, `batch` pairs at a time without gradients, kept
    /// for the steps and evaluations that need them.
    async fn score_reference(
        &mut self,
        split: Split,
        indices: &[usize],
        batch: usize,
    ) -> Result<()> {
        for whole in indices.chunks(batch) {
            let share = self.local_share(split, whole);
            let fresh = match share.is_empty() {
                true => None,
                false => self.dpo_batch_with_reference(split, share).4,
            };
            self.read_back_shared(split, Vec::new(), fresh, whole)
                .await?;
        }
        Ok(())
    }

    /// Before a step that needs reference log-probs: score its pairs together with the pairs
    /// the next steps take, in batches of at least `eval_batch_size` pairs. A frozen reference
    /// is cheaper per pair in large batches (each weight is read once for all of their tokens,
    /// and their shared prompts are packed once), and its log-probs do not depend on when they
    /// are computed. Not with TR-DPO, whose reference changes every few steps.
    async fn score_reference_ahead(&mut self, micro_batches: &[Vec<usize>]) -> Result<()> {
        if self.options.sync_ref_model || self.reference_model().is_none() {
            return Ok(());
        }
        // A step's examples and the ones after the cursor are distinct: one epoch's order.
        let missing = |i: &usize| self.reference_logps_missing(Split::Train, *i);
        let mut wanted: Vec<usize> = micro_batches
            .iter()
            .flatten()
            .copied()
            .filter(missing)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let largest = micro_batches.iter().map(Vec::len).max().unwrap_or(1);
        let batch = self.options.eval_batch_size.max(largest);
        // Fill the last batch with the examples this epoch takes next.
        let room = wanted.len().next_multiple_of(batch) - wanted.len();
        let upcoming = self.progress.order[self.progress.cursor..]
            .iter()
            .copied()
            .filter(missing);
        wanted.extend(upcoming.take(room));
        self.score_reference(Split::Train, &wanted, batch).await
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
            let whole: Vec<usize> = (start..(start + batch_size).min(len)).collect();
            let (_, stats, fresh, _) = self.forward_share(&policy, split, &whole);
            let data = self
                .read_back_shared(split, vec![stats], fresh, &whole)
                .await?;
            let metrics = self.metrics_of(&data[0]);
            acc.add_metrics(&metrics, whole.len());
            last = Some(metrics);
        }
        Ok(last.map(|m| acc.mean_like(&m)))
    }
}

/// The examples of `split` among a run's `[train, eval, test]`.
fn pick<T>(split: Split, [train, eval, test]: [&Vec<T>; 3]) -> &[T] {
    match split {
        Split::Train => train,
        Split::Eval => eval,
        Split::Test => test,
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
