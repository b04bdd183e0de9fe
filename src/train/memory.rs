//! How much device memory a training run needs, from the model's shapes and the run's settings,
//! before anything is allocated: the browser refuses a run that cannot fit instead of crashing
//! the tab. Weights, the reference's own copy, gradients and optimizer state are counted exactly
//! (f32, as the run holds them); activations are an upper estimate of what one micro-batch's
//! forward and backward pass hold at once. Checked against what runs allocate in
//! `tests/memory_peak.rs`: the total bounds the CPU backend's measured peak from above (by
//! 1.07–1.32× on small GPT-2, Llama and Qwen2 runs); wgpu holds exactly the weights, reference
//! and optimizer state between steps, and its pools, which reserve whole pages, reserved
//! 0.93–1.28× the total there.

use serde::Serialize;

use super::optim::OptimizerKind;
use super::options::{Task, TrainOptions};
use crate::error::{Error, Result};
use crate::model::Kernels;
use crate::model::config::{Architecture, ModelConfig};
use crate::model::lora::LoraSettings;

const F32: u64 = 4;

/// Bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEstimate {
    /// Every parameter of the model.
    pub weights: u64,
    /// What the reference model holds apart from the policy: nothing with LoRA (the frozen base
    /// is the reference) or without a reference, the original of every trained weight otherwise
    /// (the policy's are replaced at the first step), a whole model when it is explicit or
    /// TR-DPO blends it.
    pub reference: u64,
    /// One gradient per trained parameter.
    pub gradients: u64,
    /// AdamW's two moments, or SGD's velocity, per trained parameter.
    pub optimizer: u64,
    /// What the backward pass keeps for one micro-batch (both answers of each pair).
    pub activations: u64,
    /// The biggest single buffer: WebGPU refuses one above `maxStorageBufferBindingSize`.
    pub largest_buffer: u64,
    pub total: u64,
    /// Numbers in the model and numbers trained.
    pub parameters: u64,
    pub trained_parameters: u64,
}

/// The shapes the estimate needs.
struct Shapes {
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_width: u64,
    positions: Option<u64>,
    tied: bool,
    /// Bias and normalization numbers of one block, and after the last block.
    block_vectors: u64,
    final_vectors: u64,
}

fn shapes(config: &ModelConfig) -> Shapes {
    match &config.architecture {
        Architecture::Gpt2(c) => {
            let (h, i) = (c.n_embd as u64, c.n_inner.unwrap_or(4 * c.n_embd) as u64);
            Shapes {
                vocab: c.vocab_size as u64,
                hidden: h,
                intermediate: i,
                layers: c.n_layer as u64,
                heads: c.n_head as u64,
                kv_width: h,
                positions: Some(c.n_positions as u64),
                tied: true,
                // ln_1, ln_2 (weight and bias); c_attn, c_proj, c_fc, mlp.c_proj biases
                block_vectors: 4 * h + 3 * h + h + i + h,
                final_vectors: 2 * h,
            }
        }
        Architecture::Llama(c) | Architecture::Qwen2(c) => {
            let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
            let kv = (c.num_kv_heads() * c.head_dim()) as u64;
            let q = (c.num_attention_heads * c.head_dim()) as u64;
            let qwen2 = matches!(config.architecture, Architecture::Qwen2(_));
            let attention_biases = match (qwen2, c.attention_bias) {
                (true, _) => q + 2 * kv,
                (false, true) => q + 2 * kv + h,
                (false, false) => 0,
            };
            let mlp_biases = if c.mlp_bias && !qwen2 { 2 * i + h } else { 0 };
            Shapes {
                vocab: c.vocab_size as u64,
                hidden: h,
                intermediate: i,
                layers: c.num_hidden_layers as u64,
                heads: c.num_attention_heads as u64,
                kv_width: kv,
                positions: Some(c.max_position_embeddings as u64),
                tied: c.tie_word_embeddings,
                block_vectors: 2 * h + attention_biases + mlp_biases,
                final_vectors: h,
            }
        }
    }
}

/// The projections of one block as `(name, in, out)`, Hugging Face names (LoRA targets).
fn projections(config: &ModelConfig, s: &Shapes) -> Vec<(&'static str, u64, u64)> {
    match config.architecture {
        Architecture::Gpt2(_) => vec![
            ("c_attn", s.hidden, 3 * s.hidden),
            ("c_proj", s.hidden, s.hidden),
            ("c_fc", s.hidden, s.intermediate),
            ("mlp.c_proj", s.intermediate, s.hidden),
        ],
        Architecture::Llama(ref c) | Architecture::Qwen2(ref c) => vec![
            (
                "q_proj",
                s.hidden,
                (c.num_attention_heads * c.head_dim()) as u64,
            ),
            ("k_proj", s.hidden, s.kv_width),
            ("v_proj", s.hidden, s.kv_width),
            (
                "o_proj",
                (c.num_attention_heads * c.head_dim()) as u64,
                s.hidden,
            ),
            ("gate_proj", s.hidden, s.intermediate),
            ("up_proj", s.hidden, s.intermediate),
            ("down_proj", s.intermediate, s.hidden),
        ],
    }
}

/// Numbers in a model of `config`, LoRA adapters aside.
pub fn parameter_count(config: &ModelConfig) -> u64 {
    let s = shapes(config);
    let block_matrices: u64 = projections(config, &s).iter().map(|(_, i, o)| i * o).sum();
    let embeddings = s.vocab * s.hidden
        + match config.architecture {
            Architecture::Gpt2(_) => s.positions.unwrap_or(0) * s.hidden,
            _ => 0,
        };
    let head = if s.tied { 0 } else { s.vocab * s.hidden };
    embeddings + head + s.layers * (block_matrices + s.block_vectors) + s.final_vectors
}

/// The estimate for `task` on `config` with `options` (and `lora` adapters, or every weight),
/// with an explicit reference model of `explicit_reference` parameters when the run has one, on
/// a device that runs `kernels`.
pub fn estimate(
    task: Task,
    config: &ModelConfig,
    options: &TrainOptions,
    lora: Option<&LoraSettings>,
    explicit_reference: Option<u64>,
    kernels: Kernels,
) -> MemoryEstimate {
    let s = shapes(config);
    let blocks = projections(config, &s);
    let block_matrices: u64 = blocks.iter().map(|(_, i, o)| i * o).sum();
    let block_vectors = s.block_vectors;
    let parameters = parameter_count(config);
    let adapters = |settings: &LoraSettings| -> u64 {
        let per_block: u64 = blocks
            .iter()
            .filter(|(name, _, _)| {
                settings
                    .targets
                    .iter()
                    .any(|t| name == t || name.ends_with(&format!(".{t}")))
            })
            .map(|(_, i, o)| settings.rank as u64 * (i + o))
            .sum();
        s.layers * per_block
    };
    let (parameters, trained) = match lora {
        Some(settings) => {
            let a = adapters(settings);
            (parameters + a, a)
        }
        None => match options.trainable_layers {
            // The top blocks, the final norm and the head (the embedding when tied).
            Some(top) => (
                parameters,
                (top as u64).min(s.layers) * (block_matrices + block_vectors)
                    + s.final_vectors
                    + s.vocab * s.hidden,
            ),
            None => (parameters, parameters),
        },
    };
    let optimizer_copies = match options.optimizer {
        OptimizerKind::AdamW => 2,
        OptimizerKind::Sgd if options.optimizer_settings.sgd_momentum > 0.0 => 1,
        OptimizerKind::Sgd => 0,
    };
    let has_reference = task == Task::Dpo && options.loss.reference_free().is_none();
    let reference = match explicit_reference {
        Some(reference) if has_reference => reference,
        _ if !has_reference => 0,
        _ if options.sync_ref_model => parameters,
        // Reference log-probs computed up front: the reference is gone before the first step.
        _ if options.precompute_ref_log_probs || lora.is_some() => 0,
        _ => trained,
    };
    // One micro-batch: both answers of each pair (one sequence per SFT example), padded to at
    // most max_length.
    let seq = options
        .max_length
        .map(|m| m as u64)
        .or(s.positions)
        .unwrap_or(1024)
        .min(s.positions.unwrap_or(u64::MAX));
    let per_example = if task == Task::Sft { 1 } else { 2 };
    let sequences = per_example * options.batch_size as u64;
    let tokens = sequences * seq;
    // Per token and block: the norms' inputs and statistics, the projections' inputs and
    // outputs, rotary embeddings, the MLP's gate, activation and product, and the gradients
    // of one block during backward; per sequence and block: attention scores, probabilities
    // and their gradient (seq²·heads, three times). The coefficients bound what the CPU
    // backend measurably holds (tests/memory_peak.rs).
    // The CPU kernels' SwiGLU keeps its two inputs and their GELU its one where burn's
    // operations keep several intermediate tensors.
    let intermediate_copies = match (kernels, &config.architecture) {
        (Kernels::Composed, _) => 6,
        (Kernels::Cpu, Architecture::Llama(_) | Architecture::Qwen2(_)) => 4,
        (Kernels::Cpu, Architecture::Gpt2(_)) => 3,
    };
    // Keys and values are kept at their own width: grouped-query attention reads them without
    // repeating them for each query head (`model/attention.rs`).
    let per_token_block = 7 * s.hidden + 5 * s.kv_width + intermediate_copies * s.intermediate;
    let attention = 3 * s.heads * seq * seq;
    // Scored positions' logits and what the backward keeps of them: their gradient, and with
    // burn's operations the log-softmax's saved input.
    let logits_copies = match kernels {
        Kernels::Cpu => 2,
        Kernels::Composed => 3,
    };
    let logits = tokens * s.vocab * logits_copies;
    let activations = F32
        * (s.layers * (tokens * per_token_block + sequences * attention)
            + tokens * s.hidden * 2
            + logits);
    let largest_buffer = F32
        * [
            s.vocab * s.hidden,
            blocks.iter().map(|(_, i, o)| i * o).max().unwrap_or(0),
            sequences * s.heads * seq * seq,
            // the scoring's logits chunk (model/scoring.rs: 16 Mi elements at most)
            (tokens * s.vocab).min(16 * 1024 * 1024),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
    let weights = F32 * parameters;
    let reference = F32 * reference;
    let gradients = F32 * trained;
    let optimizer = F32 * trained * optimizer_copies;
    MemoryEstimate {
        weights,
        reference,
        gradients,
        optimizer,
        activations,
        largest_buffer,
        total: weights + reference + gradients + optimizer + activations,
        parameters,
        trained_parameters: trained,
    }
}

/// What a device allows: the biggest buffer it binds, and optionally a budget for the whole run.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemoryLimits {
    /// WebGPU's `maxStorageBufferBindingSize` (and `maxBufferSize`, the smaller of the two).
    pub max_buffer: Option<u64>,
    /// Bytes the run may use in all.
    pub budget: Option<u64>,
}

/// Bytes for a person: KiB, MiB or GiB with one decimal.
fn mib(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

impl MemoryEstimate {
    /// An error naming what does not fit and what would help, or `Ok` when it fits `limits`.
    pub fn check(&self, limits: &MemoryLimits) -> Result<()> {
        if let Some(max) = limits.max_buffer
            && self.largest_buffer > max
        {
            return Err(Error::setting(
                "memory_limits",
                format!(
                    "this run needs a {} buffer (the largest of the embedding, a projection, the \
                     attention scores, or a logits chunk) but the device binds at most {}: choose \
                     a smaller model, or lower max_length or batch_size",
                    mib(self.largest_buffer),
                    mib(max)
                ),
            ));
        }
        if let Some(budget) = limits.budget
            && self.total > budget
        {
            let parts = [
                ("weights", self.weights),
                ("reference", self.reference),
                ("gradients", self.gradients),
                ("optimizer", self.optimizer),
                ("activations", self.activations),
            ]
            .into_iter()
            .filter(|&(_, bytes)| bytes > 0)
            .map(|(what, bytes)| format!("{what} {}", mib(bytes)))
            .collect::<Vec<_>>()
            .join(", ");
            return Err(Error::setting(
                "memory_limits",
                format!(
                    "this run needs about {} ({parts}) but {} are available: use LoRA \
                     (lora_rank), lower batch_size or max_length, or choose a smaller model",
                    mib(self.total),
                    mib(budget)
                ),
            ));
        }
        Ok(())
    }
}

/// The most a WebAssembly (wasm32) heap can grow to: its 32-bit address space.
pub const WASM32_HEAP: u64 = 4 << 30;

/// Room kept free for everything else the host side holds while loading (tokenizer, rows, the
/// allocator's own slack).
const HOST_HEADROOM: u64 = 64 << 20;

/// `needed` more bytes on the host side (`what`: model files copied in, a tensor decoded on its
/// way to the device) against a heap of at most `limit` bytes with `used` taken: an error that
/// says what would help, before the allocation that would abort the tab.
pub fn check_host_room(what: &str, needed: u64, used: u64, limit: u64) -> Result<()> {
    if needed.saturating_add(used).saturating_add(HOST_HEADROOM) <= limit {
        return Ok(());
    }
    Err(Error::setting(
        "model",
        format!(
            "{what} needs {} in WebAssembly's memory, which holds at most {} ({} taken): choose \
             a smaller model, or a quantized GGUF file of it",
            mib(needed),
            mib(limit),
            mib(used)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_room_refuses_what_the_heap_cannot_take() {
        assert!(check_host_room("the model's files", 1 << 30, 100 << 20, WASM32_HEAP).is_ok());
        let refused = check_host_room("the model's files", 4 << 30, 100 << 20, WASM32_HEAP)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("4.00 GiB in WebAssembly's memory, which holds at most 4.00 GiB")
                && refused.contains("100.0 MiB taken")
                && refused.contains("quantized GGUF"),
            "{refused}"
        );
        // The headroom counts: exactly the limit does not fit.
        assert!(check_host_room("x", WASM32_HEAP - (1 << 20), 0, WASM32_HEAP).is_err());
        assert!(check_host_room("x", u64::MAX, u64::MAX, WASM32_HEAP).is_err());
    }
}
