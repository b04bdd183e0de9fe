//! The reference-free preference methods, SimPO and ORPO, with the metrics TRL's `CPOTrainer`
//! and `ORPOTrainer` log. No reference model exists in these runs: the implicit reward is the
//! policy's own mean token log-prob, r(y) = β·(1/|y|)·log π(y|x).
//!
//! Both trainers tokenize with their own (pre-1.0 DPO) rules (`text::tokenize::tokenize_split_pairs`)
//! and average `logits/*` over the whole padded logits tensor, prompt and padding included.

use std::f64::consts::LN_2;

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::losses::{LossOptions, PreferenceLoss};
use crate::model::scoring::{RowScores, ScoreOptions, ScoringBatch};

/// A batch ready to score, and what the loss needs to know about its layout.
pub struct Prepared {
    pub batch: ScoringBatch,
    pub score: ScoreOptions,
    method: PreferenceLoss,
    pairs: usize,
    /// Scored completion tokens per row (the mean log-prob's denominator).
    completion_counts: Vec<usize>,
    /// ORPO: every next-token prediction of the chosen rows, prompt included (its NLL term).
    nll_tokens: usize,
    /// Positions per row that `logits/*` average over.
    logit_positions: usize,
}

/// Lay out the scoring of a collated batch (chosen rows, then rejected rows) for `method`.
pub fn prepare(mut batch: ScoringBatch, method: PreferenceLoss) -> Prepared {
    let pairs = batch.rows / 2;
    let completion_counts = batch.scored_tokens_per_row();
    let mut nll_tokens = 0;
    let mut token_weights = None;
    if method == PreferenceLoss::Orpo {
        // ORPO's NLL covers the chosen rows' prompt tokens too: they are scored with weight 0 in
        // the preference log-prob (`logps`) and weight 1 in the plain sum (`plain_logps`).
        let seq = batch.seq_len;
        let mut weights = vec![1.0; batch.scored.len()];
        for row in 0..pairs {
            let real = (0..seq)
                .filter(|&p| !batch.padding.is_pad[row * seq + p])
                .count();
            nll_tokens += real.saturating_sub(1);
            let first_scored = batch
                .scored
                .iter()
                .find(|&&(r, _)| r == row)
                .map_or(real.saturating_sub(1), |&(_, p)| p);
            for pos in 0..first_scored {
                batch.scored.push((row, pos));
                weights.push(0.0);
            }
        }
        token_weights = Some(weights);
    }
    let logit_positions = match method {
        // ORPO drops the last position (`all_logits[:, :-1]`), CPO averages all of them.
        PreferenceLoss::Orpo => batch.seq_len - 1,
        _ => batch.seq_len,
    };
    Prepared {
        score: ScoreOptions {
            token_weights,
            aligned: false,
            position_logit_sums: Some(logit_positions),
            log_probs_only: false,
            max_logits_rows: None,
        },
        batch,
        method,
        pairs,
        completion_counts,
        nll_tokens,
        logit_positions,
    }
}

/// Positions in `ReferenceFreeOutput::stats`.
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
    LogitsChosen,
    LogitsRejected,
    Nll,
    LogOddsRatio,
    LogOddsChosen,
}
pub const STATS: usize = 12;

/// Device-side results of one batch: the loss to differentiate and the statistics to read back.
pub struct ReferenceFreeOutput {
    pub loss: Tensor<1>,
    pub stats: Tensor<1>,
}

/// The loss and statistics of a scored batch.
pub fn reference_free_loss(
    scores: RowScores,
    prepared: &Prepared,
    options: &LossOptions,
    beta: f64,
) -> ReferenceFreeOutput {
    let n = prepared.pairs;
    let device = scores.logps.device();
    let counts: Vec<f32> = prepared
        .completion_counts
        .iter()
        .map(|&c| c as f32)
        .collect();
    let counts = Tensor::<1>::from_data(TensorData::new(counts, [2 * n]), &device);
    // Mean log-prob per completion token (TRL's `average_log_prob=True`).
    let mean_logps = scores.logps.clone() / counts;
    let chosen = mean_logps.clone().narrow(0, 0, n);
    let rejected = mean_logps.narrow(0, n, n);
    let zero = || Tensor::<1>::zeros([1], &device);
    let (loss, nll, log_odds_ratio, log_odds_chosen) = match prepared.method {
        PreferenceLoss::Simpo => {
            let loss = simpo(chosen.clone(), rejected.clone(), options, beta);
            (loss, zero(), None, None)
        }
        PreferenceLoss::Orpo => {
            let nll = scores
                .plain_logps
                .clone()
                .narrow(0, 0, n)
                .sum()
                .div_scalar(prepared.nll_tokens.max(1) as f64)
                .neg();
            let (log_odds, ratio) = orpo_log_odds(chosen.clone(), rejected.clone());
            let loss = nll.clone() - ratio.clone().mul_scalar(beta).mean();
            (
                loss,
                nll,
                Some(ratio.detach().mean()),
                Some(log_odds.detach().mean()),
            )
        }
        other => unreachable!("{other} is not reference-free"),
    };
    let chosen = chosen.detach();
    let rejected = rejected.detach();
    let chosen_rewards = chosen.clone().mul_scalar(beta);
    let rejected_rewards = rejected.clone().mul_scalar(beta);
    let positions = (n * prepared.logit_positions).max(1) as f64;
    let logit_sums = scores
        .position_logit_sums
        .expect("prepared with position_logit_sums");
    let mut stats = vec![zero(); STATS];
    stats[Stat::Loss as usize] = loss.clone().detach();
    stats[Stat::RewardChosen as usize] = chosen_rewards.clone().mean();
    stats[Stat::RewardRejected as usize] = rejected_rewards.clone().mean();
    stats[Stat::Accuracy as usize] = chosen_rewards
        .clone()
        .greater(rejected_rewards.clone())
        .float()
        .mean();
    stats[Stat::Margin as usize] = (chosen_rewards - rejected_rewards).mean();
    stats[Stat::LogpChosen as usize] = chosen.mean();
    stats[Stat::LogpRejected as usize] = rejected.mean();
    stats[Stat::LogitsChosen as usize] = logit_sums
        .clone()
        .narrow(0, 0, n)
        .sum()
        .div_scalar(positions);
    stats[Stat::LogitsRejected as usize] = logit_sums.narrow(0, n, n).sum().div_scalar(positions);
    stats[Stat::Nll as usize] = nll.detach();
    if let (Some(ratio), Some(odds)) = (log_odds_ratio, log_odds_chosen) {
        stats[Stat::LogOddsRatio as usize] = ratio;
        stats[Stat::LogOddsChosen as usize] = odds;
    }
    ReferenceFreeOutput {
        loss,
        stats: Tensor::cat(stats, 0),
    }
}

/// SimPO (Meng et al. 2024, "Simple Preference Optimization with a Reference-Free Reward"):
/// −(1−ε)·log σ(β·(m_w − m_l) − γ) − ε·log σ(−(β·(m_w − m_l) − γ)) with m the mean token
/// log-probs, averaged over pairs. TRL writes it as β·(m_w − m_l − γ/β).
fn simpo(chosen: Tensor<1>, rejected: Tensor<1>, options: &LossOptions, beta: f64) -> Tensor<1> {
    let logits = (chosen - rejected).sub_scalar(options.simpo_gamma / beta);
    let eps = options.label_smoothing;
    let scaled = logits.mul_scalar(beta);
    (log_sigmoid(scaled.clone()).mul_scalar(-(1.0 - eps))
        - log_sigmoid(scaled.neg()).mul_scalar(eps))
    .mean()
}

/// ORPO (Hong et al. 2024, "Monolithic Preference Optimization without Reference Model"): the
/// chosen rows' NLL − β·mean log σ(log odds), with log odds = (m_w − m_l) − (log(1 − e^{m_w}) −
/// log(1 − e^{m_l})). Returns the log odds and log σ(log odds) per pair.
fn orpo_log_odds(chosen: Tensor<1>, rejected: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    let log_odds = (chosen.clone() - rejected.clone()) - (log1mexp(chosen) - log1mexp(rejected));
    let ratio = log_sigmoid(log_odds.clone());
    (log_odds, ratio)
}

/// log(1 − eˣ) for x ≤ 0 without cancellation, branching at −ln 2 as TRL does: log1p(−eˣ) below,
/// log(−expm1(x)) above, where −expm1(x) = −x·(1 + x/2! + x²/3! + …) (nine terms: exact in f32
/// on [−ln 2, 0]). Each branch sees only inputs in its own range, so neither yields NaN gradients.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let far = x.clone().clamp_max(-LN_2).exp().neg().log1p();
    let near_x = x.clone().clamp(-LN_2, -1e-20);
    let mut series = near_x.ones_like();
    for k in (2..=10).rev() {
        series = (series * near_x.clone())
            .div_scalar(k as f64)
            .add_scalar(1.0);
    }
    let near = near_x.neg().log() + series.log();
    near.mask_where(x.lower_elem(-LN_2), far)
}

/// TRL's CPO/ORPO metrics for one batch (or an aggregate), under TRL's names when serialized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceFreeMetrics {
    pub loss: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Mean token log-probs (not sums, unlike DPO's).
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    #[serde(rename = "logits/chosen")]
    pub logits_chosen: f64,
    #[serde(rename = "logits/rejected")]
    pub logits_rejected: f64,
    /// The chosen rows' NLL (ORPO); 0 for SimPO, as CPOTrainer logs with `cpo_alpha=0`.
    pub nll_loss: f64,
    /// ORPO only: mean log σ(log odds) and mean log odds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_odds_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_odds_chosen: Option<f64>,
}

impl ReferenceFreeMetrics {
    pub fn from_stats(stats: &[f32], method: PreferenceLoss) -> Self {
        let s = |k: Stat| stats[k as usize] as f64;
        let orpo = method == PreferenceLoss::Orpo;
        Self {
            loss: s(Stat::Loss),
            rewards_chosen: s(Stat::RewardChosen),
            rewards_rejected: s(Stat::RewardRejected),
            rewards_accuracies: s(Stat::Accuracy),
            rewards_margins: s(Stat::Margin),
            logps_chosen: s(Stat::LogpChosen),
            logps_rejected: s(Stat::LogpRejected),
            logits_chosen: s(Stat::LogitsChosen),
            logits_rejected: s(Stat::LogitsRejected),
            nll_loss: s(Stat::Nll),
            log_odds_ratio: orpo.then(|| s(Stat::LogOddsRatio)),
            log_odds_chosen: orpo.then(|| s(Stat::LogOddsChosen)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn log1mexp_matches_f64_on_both_branches() {
        // The CPU backend: a default device would initialize wgpu's runtime outside
        // `backend::select`, which the wgpu kernel tests in this binary go through.
        let device = Device::flex();
        let xs = [-30.0f32, -5.0, -0.7, -0.69, -0.3, -1e-3, -1e-6];
        let t = Tensor::<1>::from_data(TensorData::new(xs.to_vec(), [xs.len()]), &device);
        let got: Vec<f32> = log1mexp(t).into_data().try_into_vec::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let want = (-(*x as f64).exp_m1()).ln();
            assert!(
                ((g as f64) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "log1mexp({x}) = {g}, want {want}"
            );
        }
    }
}
