//! Decoder-only language models, one file per family, behind one `CausalLm` type.

pub mod attention;
pub mod cache;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod qwen2;

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{Architecture, ModelConfig};
use crate::error::Result;
use crate::weights::{HostTensor, WeightSource};
use attention::{PaddingMask, attention_mask, token_tensor};
use cache::KvCache;
use lora::Projection;

/// A causal language model of any supported family (Qwen2 is the Llama type with q/k/v biases).
#[derive(Module, Debug)]
pub enum CausalLm {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
}

/// What a parameter is, for choices such as weight decay (Hugging Face's Trainer decays neither
/// biases nor normalization weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    Embedding,
    Weight,
    Bias,
    Norm,
}

impl ParamRole {
    pub fn decays(self) -> bool {
        matches!(self, ParamRole::Embedding | ParamRole::Weight)
    }
}

/// A parameter tensor in our layout, and how to turn it into Hugging Face's.
#[derive(Debug, Clone)]
pub enum ParamTensor {
    Vector(Tensor<1>),
    /// `transpose`: Hugging Face stores the transpose of ours (`nn.Linear` vs burn `Linear`).
    Matrix {
        tensor: Tensor<2>,
        transpose: bool,
    },
}

/// A parameter with its Hugging Face name.
#[derive(Debug, Clone)]
pub struct NamedParam {
    pub name: String,
    pub id: ParamId,
    pub tensor: ParamTensor,
    pub role: ParamRole,
}

impl NamedParam {
    pub fn vector(name: impl Into<String>, p: &Param<Tensor<1>>, role: ParamRole) -> Self {
        Self {
            name: name.into(),
            id: p.id,
            tensor: ParamTensor::Vector(p.val()),
            role,
        }
    }

    /// A matrix stored the same way as in Hugging Face checkpoints.
    pub fn matrix(name: impl Into<String>, p: &Param<Tensor<2>>, role: ParamRole) -> Self {
        Self {
            name: name.into(),
            id: p.id,
            tensor: ParamTensor::Matrix {
                tensor: p.val(),
                transpose: false,
            },
            role,
        }
    }

    /// A projection's weight with any adapter folded in; `transpose` when Hugging Face stores it
    /// as an `nn.Linear` (`[out, in]`) rather than a `Conv1D` (`[in, out]`, burn's layout).
    pub fn projection(name: impl Into<String>, p: &Projection, transpose: bool) -> Self {
        Self {
            name: name.into(),
            id: p.linear.weight.id,
            tensor: ParamTensor::Matrix {
                tensor: p.effective_weight(),
                transpose,
            },
            role: ParamRole::Weight,
        }
    }

    /// Read back to the host in Hugging Face's layout.
    pub async fn to_host(&self) -> Result<HostTensor> {
        match &self.tensor {
            ParamTensor::Vector(t) => crate::weights::to_host(t.clone()).await,
            ParamTensor::Matrix { tensor, transpose } => {
                let host = crate::weights::to_host(tensor.clone()).await?;
                Ok(if *transpose { host.transposed() } else { host })
            }
        }
    }
}

impl CausalLm {
    /// Build the model described by `config` from named Hugging Face tensors.
    pub fn load(config: &ModelConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        Ok(match &config.architecture {
            Architecture::Gpt2(c) => CausalLm::Gpt2(gpt2::Gpt2::load(c, src, device)?),
            Architecture::Llama(c) => {
                CausalLm::Llama(llama::Llama::load(c, llama::Biases::llama(c), src, device)?)
            }
            Architecture::Qwen2(c) => CausalLm::Llama(qwen2::load(c, src, device)?),
        })
    }

    /// Final hidden states `[batch, seq, d_model]` (after the last norm) of a whole sequence.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>, padding: &PaddingMask) -> Tensor<3> {
        let mut cache = self.new_cache();
        self.forward(input_ids, Some(padding), &mut cache)
    }

    /// Hidden states of `input_ids` placed after the `cache.len()` positions already cached,
    /// extending the cache. `padding` (if any) covers cached and new positions.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        padding: Option<&PaddingMask>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let [batch, new] = input_ids.dims();
        let mask = attention_mask(batch, new, cache.len(), padding, &input_ids.device());
        match self {
            CausalLm::Gpt2(m) => m.forward(input_ids, mask.as_ref(), cache),
            CausalLm::Llama(m) => m.forward(input_ids, mask.as_ref(), cache),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(match self {
            CausalLm::Gpt2(m) => m.layers(),
            CausalLm::Llama(m) => m.layers(),
        })
    }

    /// Every projection with its Hugging Face module name.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        match self {
            CausalLm::Gpt2(m) => m.projections_mut(),
            CausalLm::Llama(m) => m.projections_mut(),
        }
    }

    /// Output projection `[vocab, d_model]`.
    pub fn lm_head(&self) -> Tensor<2> {
        match self {
            CausalLm::Gpt2(m) => m.lm_head(),
            CausalLm::Llama(m) => m.lm_head(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            CausalLm::Gpt2(m) => m.vocab_size(),
            CausalLm::Llama(m) => m.vocab_size(),
        }
    }

    /// Longest sequence the model can take, when the architecture has a hard limit.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            CausalLm::Gpt2(m) => Some(m.max_positions()),
            CausalLm::Llama(_) => None,
        }
    }

    pub fn named_params(&self) -> Vec<NamedParam> {
        match self {
            CausalLm::Gpt2(m) => m.named_params(),
            CausalLm::Llama(m) => m.named_params(),
        }
    }

    /// Full logits `[batch, seq, vocab]` (for checks and small inputs; training never builds them).
    pub fn logits(&self, ids: &[i32], batch: usize, seq: usize, device: &Device) -> Tensor<3> {
        let input = token_tensor(ids, batch, seq, device);
        let hidden = self.hidden_states(input, &PaddingMask::none(batch, seq));
        let [b, t, d] = hidden.dims();
        hidden
            .reshape([b * t, d])
            .matmul(self.lm_head().transpose())
            .reshape([b, t, self.vocab_size()])
    }
}

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
    /// Σ log p(token) over each row's completion: the sequence log-prob, `[rows]`.
    pub logps: Tensor<1>,
    /// Σ over each row's completion tokens of the mean logit over the vocabulary, `[rows]`
    /// (TRL's `logits/chosen` is this divided by the token count). Detached.
    pub mean_logit_sums: Tensor<1>,
    /// Number of each row's completion tokens that are the argmax prediction, `[rows]`. Detached.
    pub top1_hits: Tensor<1>,
    /// Σ of the predictive entropy at each completion token, `[rows]`. Detached.
    pub entropy_sums: Tensor<1>,
}

/// Most logits elements materialized at once. 16 Mi f32 = 64 MiB stays under the smallest storage
/// binding limit we know of (lavapipe: 128 MiB) and bounds peak memory for big vocabularies.
const MAX_LOGITS_ELEMENTS: usize = 16 * 1024 * 1024;

/// Sequence log-probs of the completions: the lm_head, log-softmax and gather run only on scored
/// positions, in row chunks, so `[batch*seq, vocab]` logits are never built.
pub fn score_completions(model: &CausalLm, batch: &ScoringBatch, device: &Device) -> RowScores {
    let input = token_tensor(&batch.input_ids, batch.rows, batch.seq_len, device);
    let hidden = model.hidden_states(input, &batch.padding);
    let [rows, seq, d_model] = hidden.dims();
    let n = batch.scored.len();
    if n == 0 {
        let zeros = Tensor::<1>::zeros([rows], device);
        return RowScores {
            logps: zeros.clone(),
            mean_logit_sums: zeros.clone(),
            top1_hits: zeros.clone(),
            entropy_sums: zeros,
        };
    }
    let flat_positions: Vec<i32> = batch
        .scored
        .iter()
        .map(|&(row, pos)| (row * seq + pos) as i32)
        .collect();
    let labels: Vec<i32> = batch
        .scored
        .iter()
        .map(|&(row, pos)| batch.input_ids[row * seq + pos + 1])
        .collect();
    let selected = hidden.reshape([rows * seq, d_model]).select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(flat_positions, [n]), device),
    );
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
    let head = model.lm_head().transpose();
    let vocab = model.vocab_size();
    let chunk = (MAX_LOGITS_ELEMENTS / vocab).max(1);
    let (mut token_logps, mut mean_logits, mut hits, mut entropies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let chunk_labels = labels.clone().narrow(0, start, len);
        let logits = selected.clone().narrow(0, start, len).matmul(head.clone());
        let log_probs = log_softmax(logits.clone(), 1);
        token_logps.push(log_probs.clone().gather(1, chunk_labels.clone()));
        // Statistics only: computed off the autodiff graph.
        let logits = logits.detach();
        let log_probs = log_probs.detach();
        mean_logits.push(logits.clone().mean_dim(1));
        hits.push(logits.argmax(1).equal(chunk_labels).float());
        entropies.push((log_probs.clone().exp() * log_probs).sum_dim(1).neg());
        start += len;
    }
    // Sum tokens into their rows with a 0/1 membership matrix: one small matmul, differentiable.
    let mut membership = vec![0f32; rows * n];
    for (i, &(row, _)) in batch.scored.iter().enumerate() {
        membership[row * n + i] = 1.0;
    }
    let membership = Tensor::<2>::from_data(TensorData::new(membership, [rows, n]), device);
    let per_row = |parts: Vec<Tensor<2>>| {
        membership
            .clone()
            .matmul(Tensor::cat(parts, 0))
            .reshape([rows])
    };
    RowScores {
        logps: per_row(token_logps),
        mean_logit_sums: per_row(mean_logits),
        top1_hits: per_row(hits),
        entropy_sums: per_row(entropies),
    }
}
