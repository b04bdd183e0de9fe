//! Text generation with a KV cache: the prompt is run once, then one token per step.
//! `async` (one small readback per token), so the same code streams tokens in a browser tab.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use super::CausalLm;
use crate::error::{Error, Result};

/// How the next token is chosen. `temperature <= 0` is greedy decoding (transformers'
/// `do_sample=False`); otherwise logits are divided by the temperature, filtered by `top_k` and
/// `top_p` as transformers' logits warpers do, and sampled from a generator seeded with `seed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingOptions {
    /// Every option in range (checked before a model is loaded).
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::setting(
                "top_p",
                format!("{p} is not valid (must be in (0, 1])"),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::setting(
                "top_k",
                "0 is not valid (must be at least 1)",
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::setting(
                "temperature",
                format!(
                    "{} is not valid (must be a finite number >= 0; 0 is greedy)",
                    self.temperature
                ),
            ));
        }
        Ok(())
    }
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// Chooses next tokens from logits on the host.
pub struct Sampler {
    options: SamplingOptions,
    rng: StdRng,
}

impl Sampler {
    pub fn new(options: SamplingOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(options.seed),
            options,
        })
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.options.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.options.temperature as f32;
        let mut scores: Vec<f32> = logits.iter().map(|l| l / t).collect();
        if let Some(k) = self.options.top_k
            && k < scores.len()
        {
            // transformers' TopKLogitsWarper: drop everything below the k-th largest score.
            let mut sorted = scores.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            scores
                .iter_mut()
                .filter(|s| **s < kth)
                .for_each(|s| *s = f32::NEG_INFINITY);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f64> = scores.iter().map(|s| ((s - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.options.top_p {
            // transformers' TopPLogitsWarper: in ascending order, drop tokens while the mass of
            // what is dropped stays <= 1 - top_p; the most likely token always survives.
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
            let mut dropped_mass = 0.0;
            for &i in &order[..order.len() - 1] {
                dropped_mass += probs[i];
                if dropped_mass > 1.0 - top_p {
                    break;
                }
                probs[i] = 0.0;
            }
        }
        let weights = rand_distr::weighted::WeightedIndex::new(&probs)
            .expect("at least one token keeps probability");
        weights.sample(&mut self.rng) as u32
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits `[vocab]` of the token after the last position of a forward pass.
async fn last_logits(model: &CausalLm, hidden: Tensor<3>) -> Result<Vec<f32>> {
    let [_, seq, d] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1).reshape([1, d]);
    let logits = last.matmul(model.lm_head().transpose());
    logits
        .into_data_async()
        .await
        .map_err(|e| Error::Readback(format!("{e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))
}

/// Generate after `prompt`; `on_token` sees every new token as it is chosen and may stop early by
/// returning `false`. Stops after a token in `stop` (which is included in the result) or after
/// `max_new_tokens`.
pub async fn generate(
    model: &CausalLm,
    prompt: &[u32],
    stop: &[u32],
    options: &SamplingOptions,
    device: &Device,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::setting("prompt", "has no tokens"));
    }
    if let Some(limit) = model.max_positions()
        && prompt.len() + options.max_new_tokens > limit
    {
        return Err(Error::setting(
            "max_new_tokens",
            format!(
                "the prompt ({}) + {} new tokens exceed the model's {limit} positions",
                prompt.len(),
                options.max_new_tokens
            ),
        ));
    }
    let mut sampler = Sampler::new(options.clone())?;
    let mut cache = model.new_cache();
    let ids = |tokens: &[u32]| {
        let data: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [1, tokens.len()]), device)
    };
    let mut hidden = model.forward(ids(prompt), None, &mut cache);
    let mut out = Vec::new();
    while out.len() < options.max_new_tokens {
        let token = sampler.next(&last_logits(model, hidden).await?);
        out.push(token);
        if !on_token(token) || stop.contains(&token) {
            break;
        }
        hidden = model.forward(ids(&[token]), None, &mut cache);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_best() {
        let logits = [0.1f32, 3.0, 0.2, 2.9];
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| s.next(&logits) == 1));
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_p: Some(0.01),
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| s.next(&logits) == 1));
        // top_p 0.9 over [0.1, 3.0, 0.2, 2.9] keeps only ids 1 and 3.
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_p: Some(0.9),
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let seen: std::collections::BTreeSet<u32> = (0..200).map(|_| s.next(&logits)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
    }
}
