//! dpo-wgpu: Direct Preference Optimization for language models on wgpu, natively and in the
//! browser. Layers, each depending only on those above it in this list (see ARCHITECTURE.md):
//! `model` (configs, families, LoRA layers, scoring, generation) · `text` (tokenizer, chat
//! templates, rows, TRL tokenization and collation) · `io` (safetensors, GGUF, PEFT, exports;
//! `io::native` for files and the Hub) · `train` (options, objectives, the loop, checkpoints,
//! runs). The shells sit on top: the CLI (`src/cli/`, the binary) and the wasm-bindgen layer
//! (`wasm`). Nothing below the shells prints or names a CLI flag.

pub mod backend;
pub mod error;
/// Fuzz targets over the parsers of untrusted bytes (see `fuzz/README.md`).
#[doc(hidden)]
pub mod fuzz;
pub mod io;
pub mod model;
pub mod text;
pub mod train;

#[cfg(target_arch = "wasm32")]
pub mod wasm;
