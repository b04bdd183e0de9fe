//! GGUF (llama.cpp's single-file format, v2/v3) as a model source: the file's metadata becomes the
//! Hugging Face `config.json`, `tokenizer.json` and `tokenizer_config.json` that transformers
//! builds from it, and its tensors are handed out under Hugging Face names and layouts, one
//! tensor dequantized to f32 at a time.
//!
//! The file is parsed once (header, metadata, tensor table); tensor data is only touched when a
//! tensor is read, so natively the bytes stay a memory map.
//!
//! What transformers (5.24, `modeling_gguf_pytorch_utils.py`) does with a `llama` or `qwen2`
//! file, and this module mirrors:
//! * GGUF lists dimensions fastest first (`ne[0]` is the row length), so a GGUF `[in, out]` is a
//!   row-major Hugging Face `[out, in]`: the data needs no transposition, only the shape reversed.
//! * llama.cpp's converter interleaves the two rotary halves of every q/k head of a `llama` file
//!   (not of a `qwen2` one); the rows are put back as `LlamaTensorProcessor._reverse_permute_weights` does (see [`unpermute_rope_rows`]).
//! * The tokenizer is byte-level BPE (`tokenizer.ggml.model = gpt2`) or sentencepiece BPE with
//!   byte fallback (`llama`, merges recovered from the scores), with control tokens as special
//!   added tokens and the pre-tokenizer chosen from `tokenizer.ggml.pre`
//!   (`integrations/gguf/gguf_tokenizer_mapping.py`).

mod config;
pub mod quant;
pub mod reader;
pub mod tensors;
mod tokenizer;

use super::model_dir::ModelTexts;
use super::safetensors::FileBytes;
use crate::error::Result;
pub use reader::{GgmlType, GgufFile, MetaValue, TensorInfo};
pub use tensors::{GgufWeights, gguf_tensor_name, hf_tensor_name, unpermute_rope_rows};

/// Read a GGUF file's metadata into the Hugging Face text files transformers builds from it, and
/// its tensors as a [`WeightSource`](crate::model::weights::WeightSource) for
/// [`crate::io::bundle::ModelBundle::load`].
pub fn model_texts_and_weights(label: &str, bytes: FileBytes) -> Result<(ModelTexts, GgufWeights)> {
    let file = GgufFile::parse(label, bytes)?;
    let (config_json, heads) = config::config_json(&file)?;
    let tokenizer_json = tokenizer::tokenizer_json(&file)?;
    let tokenizer_config_json = tokenizer::tokenizer_config_json(&file)?;
    let texts = ModelTexts {
        label: label.to_string(),
        config_json,
        tokenizer_json,
        tokenizer_config_json: Some(tokenizer_config_json),
        extra_files: Vec::new(),
    };
    let mut file = file;
    // The vocabulary and merges are in the texts now; the weights keep only what reads tensors.
    file.metadata.clear();
    let index = file
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok((texts, GgufWeights::new(file, index, heads)))
}
