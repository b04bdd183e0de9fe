//! Supervised fine-tuning: mean negative log-likelihood of the completion tokens, as TRL's
//! `SFTTrainer` computes it (a token-weighted mean over the batch).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::scoring::RowScores;

/// Positions in `SftOutput::stats`.
const LOSS: usize = 0;
const TOP1: usize = 1;
const ENTROPY: usize = 2;

pub struct SftOutput {
    /// Shape `[1]`.
    pub loss: Tensor<1>,
    /// `[loss, Σ top-1 hits, Σ entropy]`.
    pub stats: Tensor<1>,
}

/// `tokens`: the batch's scored tokens (known on the host).
pub fn sft_loss(scores: RowScores, tokens: usize) -> SftOutput {
    let loss = scores.logps.sum().neg().div_scalar(tokens.max(1) as f64);
    let stats = Tensor::cat(
        vec![
            loss.clone().detach(),
            scores.top1_hits.sum(),
            scores.entropy_sums.sum(),
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
    pub fn from_stats(stats: &[f32], tokens: usize) -> Self {
        let per_token = |v: f32| {
            if tokens > 0 {
                v as f64 / tokens as f64
            } else {
                0.0
            }
        };
        Self {
            loss: stats[LOSS] as f64,
            mean_token_accuracy: per_token(stats[TOP1]),
            entropy: per_token(stats[ENTROPY]),
        }
    }
}
