//! Scoring completions: per-row sums of the completion tokens' log-probs (and the statistics TRL
//! reports), computed without ever building the full `[batch·seq, vocab]` logits.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::CausalLm;
use super::attention::{PaddingMask, token_tensor};
use super::packing::{Packing, PackingPlan};

/// Rows of tokens, right-padded, with the positions whose *next* token is scored.
#[derive(Debug, Clone)]
pub struct ScoringBatch {
    pub rows: usize,
    pub seq_len: usize,
    /// `rows * seq_len` token ids (padding included).
    pub input_ids: Vec<i32>,
    pub padding: PaddingMask,
    /// `(row, position)`: the token at `position + 1` of `row` is a completion token and is scored
    /// from the hidden state at `position` (Hugging Face's label shift).
    pub scored: Vec<(usize, usize)>,
    /// Completion tokens of each row within the row (TRL's unshifted `completion_mask` sums).
    pub completion_tokens: Vec<usize>,
}

/// What to compute beyond the sequence log-probs.
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// A weight per scored token (aligned with `ScoringBatch::scored`): `logps` becomes the
    /// weighted sum (LD-DPO), `plain_logps` stays the plain one.
    pub token_weights: Option<Vec<f32>>,
    /// Also Σ (log p(token) − log Σ_v p_v²) per row, detached (WPO's aligned log-probs).
    pub aligned: bool,
    /// Also Σ over the first `n` positions of each row (padding included) of the mean logit over
    /// the vocabulary, detached: TRL's CPO/ORPO `logits/*` average the whole logits tensor.
    pub position_logit_sums: Option<usize>,
    /// Only the log-prob sums (`logps`, `plain_logps`, `aligned_logp_sums`): the statistics
    /// (mean logit, top-1 hits, entropy) come back as zeros. What a reference needs; it saves
    /// passes over `[tokens, vocab]`.
    pub log_probs_only: bool,
    /// At most this many scored positions' logits at once (below the 16 Mi-element bound):
    /// the reference scores larger batches than a training step, without letting its logits
    /// outgrow the step's.
    pub max_logits_rows: Option<usize>,
}

impl ScoringBatch {
    pub fn scored_tokens_per_row(&self) -> Vec<usize> {
        let mut counts = vec![0; self.rows];
        for &(row, _) in &self.scored {
            counts[row] += 1;
        }
        counts
    }
}

/// Per-row sums over scored tokens, still on the device.
pub struct RowScores {
    /// Σ log p(token) over each row's completion: the sequence log-prob, `[rows]` (weighted per
    /// token when `ScoreOptions::token_weights` is set).
    pub logps: Tensor<1>,
    /// The unweighted Σ log p(token) (the same tensor as `logps` without token weights).
    pub plain_logps: Tensor<1>,
    /// Σ (log p(token) − log Σ_v p_v²), `[rows]`, detached; with `ScoreOptions::aligned`.
    pub aligned_logp_sums: Option<Tensor<1>>,
    /// Σ over each row's completion tokens of the mean logit over the vocabulary, `[rows]`
    /// (TRL's `logits/chosen` is this divided by the token count). Detached.
    pub mean_logit_sums: Tensor<1>,
    /// Number of each row's completion tokens that are the argmax prediction, `[rows]`. Detached.
    pub top1_hits: Tensor<1>,
    /// Σ of the predictive entropy at each completion token, `[rows]`. Detached.
    pub entropy_sums: Tensor<1>,
    /// With `ScoreOptions::position_logit_sums`: `[rows]`, detached.
    pub position_logit_sums: Option<Tensor<1>>,
}

/// The mean logit over the vocabulary of each hidden state in `hidden` (`[n, d]` → `[n, 1]`),
/// detached. The head is linear without bias, so that is the hidden state times the mean of the
/// head's rows: no pass over `[n, vocab]` logits. (Summed hidden states give summed means.)
fn mean_logits(model: &CausalLm, hidden: Tensor<2>) -> Tensor<2> {
    let d_model = hidden.dims()[1];
    hidden
        .detach()
        .matmul(model.lm_head().detach().mean_dim(0).reshape([d_model, 1]))
}

/// Most logits elements materialized at once. 16 Mi f32 = 64 MiB stays under the smallest storage
/// binding limit we know of (lavapipe: 128 MiB) and bounds peak memory for big vocabularies.
const MAX_LOGITS_ELEMENTS: usize = 16 * 1024 * 1024;

/// Per scored token (`[n, 1]` each): log p(label), the only one with a gradient, and detached
/// statistics.
struct LabelStats {
    picked: Tensor<2>,
    /// x_label − max_v x_v (≥ 0 exactly when the label is a top-1 token).
    shifted_label: Tensor<2>,
    /// −Σ p log p, when asked for.
    entropy: Option<Tensor<2>>,
    /// log Σ_v p_v² (WPO), when asked for.
    log_sum_sq: Option<Tensor<2>>,
}

/// [`LabelStats`] of `[n, vocab]` logits: one fused kernel on the CPU backend, burn's operations
/// elsewhere (the same formulas; see `cpu_kernels/label_log_softmax.rs`).
fn label_stats(
    logits: Tensor<2>,
    labels: Tensor<2, Int>,
    entropy: bool,
    aligned: bool,
) -> LabelStats {
    #[cfg(not(target_arch = "wasm32"))]
    if super::cpu_kernels::supported_on(&logits.device()) {
        let out = super::cpu_kernels::label_log_softmax::label_log_softmax(logits, labels);
        let column = |i: usize| out.clone().narrow(1, i, 1);
        return LabelStats {
            picked: column(0),
            shifted_label: column(1).detach(),
            entropy: entropy.then(|| column(3).detach()),
            log_sum_sq: aligned.then(|| column(4).detach()),
        };
    }
    label_stats_composed(logits, labels, entropy, aligned)
}

/// [`label_stats`] in burn's operations (any backend).
fn label_stats_composed(
    logits: Tensor<2>,
    labels: Tensor<2, Int>,
    entropy: bool,
    aligned: bool,
) -> LabelStats {
    // log p(label) = (x_label − m) − log Σ_v exp(x_v − m), m the detached row max: the same
    // operations as burn's `log_softmax` followed by the gather (so the same bits), without
    // materializing `[tokens, vocab]` log-probs; the statistics reuse the exponentials and the
    // shifted logits.
    let max = logits.clone().detach().max_dim(1);
    let shifted = logits - max;
    let exps = shifted.clone().exp();
    let sums = exps.clone().sum_dim(1);
    let log_sums = sums.clone().log();
    let shifted_label = shifted.clone().gather(1, labels);
    let picked = shifted_label.clone() - log_sums.clone();
    // Statistics only: computed off the autodiff graph.
    let (exps, sums, log_sums) = (exps.detach(), sums.detach(), log_sums.detach());
    // log Σ_v p_v² = log Σ_v exp(x_v − m)² − 2 log Σ_v exp(x_v − m).
    let log_sum_sq = aligned
        .then(|| (exps.clone() * exps.clone()).sum_dim(1).log() - log_sums.clone().mul_scalar(2.0));
    // H = −Σ p log p = log Σ e − Σ e·(x − m) / Σ e, with e = exp(x − m).
    let entropy = entropy.then(|| log_sums - (exps * shifted.detach()).sum_dim(1) / sums);
    LabelStats {
        picked,
        shifted_label: shifted_label.detach(),
        entropy,
        log_sum_sq,
    }
}

/// Sequence log-probs of the completions: the lm_head, log-softmax and gather run only on scored
/// positions, in row chunks, so `[batch*seq, vocab]` logits are never built.
pub fn score_completions(model: &CausalLm, batch: &ScoringBatch, device: &Device) -> RowScores {
    score_completions_with(model, batch, &ScoreOptions::default(), device)
}

/// [`score_completions`] with per-token weights or the aligned sums.
pub fn score_completions_with(
    model: &CausalLm,
    batch: &ScoringBatch,
    options: &ScoreOptions,
    device: &Device,
) -> RowScores {
    // Packed (no padding, shared prefixes once) unless a statistic needs the padding's hidden
    // states too.
    let (hidden, flat_index, position_logit_sums): (Tensor<2>, Vec<i32>, _) = match options
        .position_logit_sums
    {
        Some(n) => {
            let input = token_tensor(&batch.input_ids, batch.rows, batch.seq_len, device);
            let hidden = model.hidden_states(input, &batch.padding);
            let [rows, seq, d_model] = hidden.dims();
            let summed = mean_logits(
                model,
                hidden
                    .clone()
                    .narrow(1, 0, n.min(seq))
                    .sum_dim(1)
                    .reshape([rows, d_model]),
            )
            .reshape([rows]);
            let index = batch
                .scored
                .iter()
                .map(|&(row, pos)| (row * seq + pos) as i32)
                .collect();
            (hidden.reshape([rows * seq, d_model]), index, Some(summed))
        }
        None => {
            let plan = PackingPlan::new(&batch.input_ids, &batch.padding, !model.dropout_active());
            let hidden = model.packed_hidden_states(&Packing::new(&plan, device));
            let index = batch
                .scored
                .iter()
                .map(|&(row, pos)| {
                    plan.unique_at(row, pos)
                        .expect("a scored position is a real token") as i32
                })
                .collect();
            (hidden, index, None)
        }
    };
    let rows = batch.rows;
    let n = batch.scored.len();
    if n == 0 {
        // Nothing to score (every completion is a lone first token, or empty): sums of zero
        // terms, as in TRL, but still functions of the weights so that a backward pass works
        // (with zero gradients) instead of finding no graph.
        let tracked = hidden.sum().mul_scalar(0.0).expand([rows]);
        let zeros = Tensor::<1>::zeros([rows], device);
        return RowScores {
            logps: tracked.clone(),
            plain_logps: tracked,
            aligned_logp_sums: options.aligned.then(|| zeros.clone()),
            mean_logit_sums: zeros.clone(),
            top1_hits: zeros.clone(),
            entropy_sums: zeros,
            position_logit_sums,
        };
    }
    let labels: Vec<i32> = batch
        .scored
        .iter()
        .map(|&(row, pos)| batch.input_ids[row * batch.seq_len + pos + 1])
        .collect();
    let selected = hidden.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(flat_index, [n]), device),
    );
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
    let head = model.lm_head().transpose();
    let vocab = model.vocab_size();
    let chunk = (MAX_LOGITS_ELEMENTS / vocab)
        .min(options.max_logits_rows.unwrap_or(usize::MAX))
        .max(1);
    let mean_logits = (!options.log_probs_only).then(|| mean_logits(model, selected.clone()));
    let (mut token_logps, mut hits, mut entropies, mut aligned) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let chunk_labels = labels.clone().narrow(0, start, len);
        let logits = super::matrix_product(selected.clone().narrow(0, start, len), head.clone());
        let stats = label_stats(
            logits,
            chunk_labels,
            !options.log_probs_only,
            options.aligned,
        );
        token_logps.push(stats.picked.clone());
        if let Some(log_sum_sq) = stats.log_sum_sq {
            aligned.push(stats.picked.detach() - log_sum_sq);
        }
        if !options.log_probs_only {
            // The label is the argmax when its logit is the row's maximum.
            hits.push(stats.shifted_label.greater_equal_elem(0.0).float());
            entropies.extend(stats.entropy);
        }
        start += len;
    }
    // Sum tokens into their rows with a 0/1 membership matrix: one small matmul, differentiable.
    let mut membership = vec![0f32; rows * n];
    for (i, &(row, _)) in batch.scored.iter().enumerate() {
        membership[row * n + i] = 1.0;
    }
    let membership = Tensor::<2>::from_data(TensorData::new(membership, [rows, n]), device);
    let sum_rows = |membership: &Tensor<2>, parts: Vec<Tensor<2>>| {
        membership
            .clone()
            .matmul(Tensor::cat(parts, 0))
            .reshape([rows])
    };
    let per_row = |parts: Vec<Tensor<2>>| {
        if parts.is_empty() {
            Tensor::<1>::zeros([rows], device)
        } else {
            sum_rows(&membership, parts)
        }
    };
    let plain_logps = per_row(token_logps.clone());
    let logps = match &options.token_weights {
        Some(weights) => {
            let mut weighted = vec![0f32; rows * n];
            for (i, (&(row, _), &w)) in batch.scored.iter().zip(weights).enumerate() {
                weighted[row * n + i] = w;
            }
            let weighted = Tensor::<2>::from_data(TensorData::new(weighted, [rows, n]), device);
            sum_rows(&weighted, token_logps)
        }
        None => plain_logps.clone(),
    };
    RowScores {
        logps,
        plain_logps,
        aligned_logp_sums: options.aligned.then(|| per_row(aligned)),
        mean_logit_sums: per_row(mean_logits.into_iter().collect()),
        top1_hits: per_row(hits),
        entropy_sums: per_row(entropies),
        position_logit_sums,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    use super::{label_stats, label_stats_composed};

    /// The CPU backend's fused kernel against burn's operations: every statistic and the
    /// logits' gradient, on rows with a spread like a language model's (and a vocabulary that
    /// is not a multiple of the kernel's lanes).
    #[test]
    fn the_fused_kernel_matches_the_composed_operations() {
        let device = Device::flex().autodiff();
        let (n, vocab) = (37, 1003);
        let logits =
            Tensor::<2>::random([n, vocab], Distribution::Normal(0.0, 4.0), &Device::flex());
        let labels: Vec<i32> = (0..n as i32).map(|i| (i * 389) % vocab as i32).collect();
        let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
        let weights = Tensor::<2>::random([n, 1], Distribution::Uniform(-1.0, 1.0), &device);
        let run = |fused: bool| {
            let x = Tensor::<2>::from_data(logits.to_data(), &device).require_grad();
            let stats = match fused {
                true => label_stats(x.clone(), labels.clone(), true, true),
                false => label_stats_composed(x.clone(), labels.clone(), true, true),
            };
            let grads = (stats.picked.clone() * weights.clone()).sum().backward();
            let values = [
                stats.picked,
                stats.shifted_label,
                stats.entropy.unwrap(),
                stats.log_sum_sq.unwrap(),
            ]
            .map(|t| t.into_data().try_to_vec::<f32>().unwrap());
            (
                values,
                x.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            )
        };
        let ((fused, fused_grad), (composed, composed_grad)) = (run(true), run(false));
        for (what, (a, b)) in ["log p", "x − max", "entropy", "log Σp²"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 2e-5 * y.abs().max(1.0),
                    "{what}: {x} vs {y}"
                );
            }
        }
        for (x, y) in fused_grad.iter().zip(&composed_grad) {
            assert!((x - y).abs() <= 1e-6, "gradient: {x} vs {y}");
        }
    }
}
