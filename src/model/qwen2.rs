//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): the Llama architecture with biases on the q, k and v
//! projections (none on o_proj or the MLP), usually with tied embeddings. Same tensor names as
//! Llama, so it shares `llama.rs`; sliding-window attention is refused (see `config.rs`).

use burn::tensor::Device;

use super::config::LlamaConfig;
use super::llama::{Biases, Llama};
use super::weights::WeightSource;
use crate::error::Result;

pub const BIASES: Biases = Biases {
    qkv: true,
    o: false,
    mlp: false,
};

pub fn load(config: &LlamaConfig, src: &dyn WeightSource, device: &Device) -> Result<Llama> {
    Llama::load(config, BIASES, src, device)
}
