//! The DPO objective and TRL's metrics.
//!
//! r(y) = β·(log π(y|x) − log π_ref(y|x)); the loss is `losses.rs`'s (by default
//! −log σ(r(y_w) − r(y_l)), averaged over pairs). The metrics are the same for every loss.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::losses::{LossOptions, PairInputs, preference_loss};
use crate::model::scoring::{RowScores, ScoringBatch};

/// Device-side results of one batch: the loss to differentiate and a small vector of statistics
/// read back once per step.
pub struct DpoOutput {
    /// Mean loss over the batch's pairs, shape `[1]`.
    pub loss: Tensor<1>,
    /// `[STATS]`: see `Stat`. Every entry is a sum over the batch's pairs or tokens, so the
    /// statistics of a batch split between processes add up to the whole batch's.
    pub stats: Tensor<1>,
}

/// Positions in `DpoOutput::stats`.
#[derive(Clone, Copy)]
#[repr(usize)]
enum Stat {
    Loss,
    RewardChosen,
    RewardRejected,
    Accuracy,
    Margin,
    LogpChosen,
    LogpRejected,
    MeanLogitSumChosen,
    MeanLogitSumRejected,
    Top1Chosen,
    EntropySum,
    // Counted on the host: the denominators.
    Pairs,
    ChosenTokens,
    RejectedTokens,
}
pub const STATS: usize = 14;

/// The batch a share was cut from (a data-parallel process's part of it, `collective.rs`).
#[derive(Debug, Clone, Copy)]
pub struct WholeBatch {
    pub pairs: usize,
    /// Scored tokens of all its chosen completions.
    pub chosen_tokens: usize,
}

/// Rows `0..pairs` of `policy` (scored on `batch`) are chosen completions, rows
/// `pairs..2*pairs` rejected ones. `whole`: the batch this one is a share of, if it is one.
pub fn dpo_loss(
    policy: RowScores,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    batch: &ScoringBatch,
    whole: Option<WholeBatch>,
    options: &LossOptions,
    beta: f64,
) -> DpoOutput {
    let pairs = batch.rows / 2;
    let device = policy.logps.device();
    let chosen = policy.logps.clone().narrow(0, 0, pairs);
    let rejected = policy.logps.clone().narrow(0, pairs, pairs);
    let host = |values: Vec<f32>| {
        let n = values.len();
        Tensor::<1>::from_data(TensorData::new(values, [n]), &device)
    };
    let lengths = |range: std::ops::Range<usize>| {
        host(
            batch.completion_tokens[range]
                .iter()
                .map(|&t| t.max(1) as f32)
                .collect(),
        )
    };
    let scored = batch.scored_tokens_per_row();
    let pair_weights = policy.aligned_logp_sums.clone().map(|sums| {
        // WPO: exp(mean aligned log-prob) per completion, chosen × rejected per pair.
        let counts = host(scored.iter().map(|&t| t.max(1) as f32).collect());
        let weights = (sums / counts).exp();
        weights.clone().narrow(0, 0, pairs) * weights.narrow(0, pairs, pairs)
    });
    let inputs = PairInputs {
        chosen_logps: chosen.clone(),
        rejected_logps: rejected.clone(),
        ref_chosen_logps: ref_chosen.clone(),
        ref_rejected_logps: ref_rejected.clone(),
        chosen_lengths: lengths(0..pairs),
        rejected_lengths: lengths(pairs..2 * pairs),
        chosen_token_logp_sum: policy.plain_logps.clone().narrow(0, 0, pairs).sum(),
        chosen_token_normalizer: match whole {
            Some(whole) => whole.chosen_tokens as f64 * pairs as f64 / whole.pairs as f64,
            None => scored[..pairs].iter().sum::<usize>() as f64,
        },
        pair_weights,
    };
    let loss = preference_loss(&inputs, options, beta);
    let chosen_rewards = (chosen.clone() - ref_chosen).mul_scalar(beta);
    let rejected_rewards = (rejected.clone() - ref_rejected).mul_scalar(beta);
    let margins = chosen_rewards.clone() - rejected_rewards.clone();

    let detached = |t: Tensor<1>| t.detach();
    let accuracy = chosen_rewards
        .clone()
        .detach()
        .greater(rejected_rewards.clone().detach())
        .float()
        .sum();
    let mean_logits = policy.mean_logit_sums;
    let mut stats = vec![Tensor::<1>::zeros([1], &loss.device()); Stat::Pairs as usize];
    // The loss is a mean over pairs: times the pairs, it adds up over a split batch.
    stats[Stat::Loss as usize] = loss.clone().detach().mul_scalar(pairs as f64);
    stats[Stat::RewardChosen as usize] = detached(chosen_rewards).sum();
    stats[Stat::RewardRejected as usize] = detached(rejected_rewards).sum();
    stats[Stat::Accuracy as usize] = accuracy;
    stats[Stat::Margin as usize] = detached(margins).sum();
    stats[Stat::LogpChosen as usize] = detached(chosen).sum();
    stats[Stat::LogpRejected as usize] = detached(rejected).sum();
    stats[Stat::MeanLogitSumChosen as usize] = mean_logits.clone().narrow(0, 0, pairs).sum();
    stats[Stat::MeanLogitSumRejected as usize] = mean_logits.narrow(0, pairs, pairs).sum();
    stats[Stat::Top1Chosen as usize] = policy.top1_hits.narrow(0, 0, pairs).sum();
    stats[Stat::EntropySum as usize] = policy.entropy_sums.sum();
    let counts = [
        pairs,
        scored[..pairs].iter().sum(),
        scored[pairs..].iter().sum(),
    ];
    stats.push(host(counts.iter().map(|&c| c as f32).collect()));
    DpoOutput {
        loss,
        stats: Tensor::cat(stats, 0),
    }
}

/// TRL's DPO metrics for one batch (or an aggregate), under TRL's names when serialized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoMetrics {
    pub loss: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    #[serde(rename = "logits/chosen")]
    pub logits_chosen: f64,
    #[serde(rename = "logits/rejected")]
    pub logits_rejected: f64,
    /// Share of chosen completion tokens that are the policy's argmax prediction.
    pub mean_token_accuracy: f64,
    /// Mean predictive entropy over all completion tokens (chosen and rejected).
    pub entropy: f64,
}

impl DpoMetrics {
    /// From the `stats` read back (`DpoOutput::stats`, or several batches' summed).
    pub fn from_stats(stats: &[f32]) -> Self {
        let s = |k: Stat| stats[k as usize] as f64;
        let per = |sum: f64, n: f64| if n > 0.0 { sum / n } else { 0.0 };
        let per_pair = |k: Stat| per(s(k), s(Stat::Pairs));
        let (chosen_tokens, rejected_tokens) = (s(Stat::ChosenTokens), s(Stat::RejectedTokens));
        Self {
            loss: per_pair(Stat::Loss),
            rewards_chosen: per_pair(Stat::RewardChosen),
            rewards_rejected: per_pair(Stat::RewardRejected),
            rewards_accuracies: per_pair(Stat::Accuracy),
            rewards_margins: per_pair(Stat::Margin),
            logps_chosen: per_pair(Stat::LogpChosen),
            logps_rejected: per_pair(Stat::LogpRejected),
            logits_chosen: per(s(Stat::MeanLogitSumChosen), chosen_tokens),
            logits_rejected: per(s(Stat::MeanLogitSumRejected), rejected_tokens),
            mean_token_accuracy: per(s(Stat::Top1Chosen), chosen_tokens),
            entropy: per(s(Stat::EntropySum), chosen_tokens + rejected_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_trl_names() {
        let json = serde_json::to_value(DpoMetrics::default()).unwrap();
        for key in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
