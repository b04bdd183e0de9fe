//! dpo-wgpu: Direct Preference Optimization for language models on wgpu, natively and in the
//! browser. The core (model, data, loss, training loop) is written once and knows nothing of
//! terminals or tabs; `main.rs` (CLI) and `web.rs` (wasm-bindgen) are thin shells over it.

pub mod backend;
pub mod bundle;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demo;
pub mod dpo;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod optim;
pub mod peft;
pub mod sft;
pub mod tokenizer;
pub mod train;
pub mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;

#[cfg(target_arch = "wasm32")]
pub mod web;
