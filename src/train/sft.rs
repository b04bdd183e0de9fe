//! Supervised fine-tuning: mean negative log-likelihood of the completion tokens, as TRL's
//! `SFTTrainer` computes it (a token-weighted mean over the batch).

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::scoring::RowScores;

/// Positions in `SftOutput::stats`.
const NLL: usize = 0;
const TOP1: usize = 1;
const ENTROPY: usize = 2;
const TOKENS: usize = 3;
pub const STATS: usize = 4;

pub struct SftOutput {
    /// Shape `[1]`.
    pub loss: Tensor<1>,
    /// `[Σ NLL, Σ top-1 hits, Σ entropy, scored tokens]`: sums, so a batch split between
    /// processes adds up to the whole batch's.
    pub stats: Tensor<1>,
}

/// `tokens`: the batch's scored tokens (known on the host). `normalizer`: the tokens the loss is
/// a mean over: `tokens`, or the whole batch's when this is a share of it.
pub fn sft_loss(scores: RowScores, tokens: usize, normalizer: usize) -> SftOutput {
    let nll = scores.logps.sum().neg();
    let loss = nll.clone().div_scalar(normalizer.max(1) as f64);
    let device = nll.device();
    let stats = Tensor::cat(
        vec![
            nll.detach(),
            scores.top1_hits.sum(),
            scores.entropy_sums.sum(),
            Tensor::<1>::from_data(TensorData::new(vec![tokens as f32], [1]), &device),
        ],
        0,
    );
    SftOutput { loss, stats }
}

/// TRL's SFT metrics for one batch (or an aggregate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    pub loss: f64,
    pub mean_token_accuracy: f64,
    pub entropy: f64,
}

impl SftMetrics {
    pub fn from_stats(stats: &[f32]) -> Self {
        let tokens = stats[TOKENS] as f64;
        let per_token = |v: f32| {
            if tokens > 0.0 { v as f64 / tokens } else { 0.0 }
        };
        Self {
            loss: per_token(stats[NLL]),
            mean_token_accuracy: per_token(stats[TOP1]),
            entropy: per_token(stats[ENTROPY]),
        }
    }
}
