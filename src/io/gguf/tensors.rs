//! llama.cpp's tensor names and layouts mapped to Hugging Face's: names, the rotary row
//! permutation llama.cpp applies to q/k of `llama` files, and the tensors as a `WeightSource`.

use std::collections::HashMap;

use super::reader::GgufFile;
use crate::error::{Error, Location, Result};
use crate::model::weights::{HostTensor, WeightSource};

/// Undo llama.cpp's rotary permutation of q/k projection rows (`[out, in]`, row-major), as
/// transformers' `LlamaTensorProcessor._reverse_permute_weights` does: within each head of
/// `head_dim` rows, llama.cpp stores the rows of the two rotary halves interleaved (row `2i + j`
/// is row `j·head_dim/2 + i` of the Hugging Face head).
pub fn unpermute_rope_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let dst = h * head_dim + j * half + i;
                let src = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The llama.cpp name of a Hugging Face Llama tensor name.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let base = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, module) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let leaf = match module {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{layer}.{leaf}")
        }
    };
    Some(format!("{base}.{suffix}"))
}

/// The tensors of a GGUF Llama or Qwen2 under Hugging Face names, in Hugging Face layout.
pub struct GgufWeights {
    file: GgufFile,
    /// GGUF tensor name -> index into `file.tensors`
    index: HashMap<String, usize>,
    /// (query heads, key/value heads), for undoing the rotary permutation of a `llama` file.
    rope_permuted_heads: Option<(usize, usize)>,
}

impl GgufWeights {
    pub(super) fn new(
        file: GgufFile,
        index: HashMap<String, usize>,
        rope_permuted_heads: Option<(usize, usize)>,
    ) -> Self {
        Self {
            file,
            index,
            rope_permuted_heads,
        }
    }

    /// Tensor names in Hugging Face terms (those this source can map).
    pub fn names(&self) -> Vec<String> {
        self.file
            .tensors
            .iter()
            .filter_map(|t| hf_tensor_name(&t.name))
            .collect()
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// The Hugging Face name of a llama.cpp Llama tensor name (inverse of [`gguf_tensor_name`]).
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    let base = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, leaf) = rest.split_once('.')?;
            let module = match leaf {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{module}")
        }
    };
    let hf = format!("{base}.{suffix}");
    (gguf_tensor_name(&hf).as_deref() == Some(gguf)).then_some(hf)
}

impl WeightSource for GgufWeights {
    fn label(&self) -> &str {
        &self.file.label
    }

    fn contains(&self, name: &str) -> bool {
        gguf_tensor_name(name).is_some_and(|g| self.index.contains_key(&g))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let missing = |gguf: &str| {
            Error::input(
                Location::file(&self.file.label).field(name),
                format!("tensor missing from the GGUF file (looked for `{gguf}`)"),
            )
        };
        let gguf = gguf_tensor_name(name).ok_or_else(|| missing("?"))?;
        let &i = self.index.get(&gguf).ok_or_else(|| missing(&gguf))?;
        let info = &self.file.tensors[i];
        let mut tensor = self.file.dequantize(info).map_err(|e| match e {
            Error::Input { location, message } => {
                Error::input(location, format!("{message} (Hugging Face name `{name}`)"))
            }
            other => other,
        })?;
        let n_head = match self.rope_permuted_heads {
            Some((q_heads, _)) if gguf.contains(".attn_q.") => Some(q_heads),
            Some((_, kv_heads)) if gguf.contains(".attn_k.") => Some(kv_heads),
            _ => None,
        };
        if let Some(n_head) = n_head {
            let rows = tensor.shape[0];
            let cols = tensor.data.len() / rows.max(1);
            if n_head == 0 || rows % (2 * n_head) != 0 {
                return Err(Error::input(
                    Location::file(&self.file.label).field(&gguf),
                    format!("{rows} rows cannot be split into {n_head} rotary heads"),
                ));
            }
            tensor.data = unpermute_rope_rows(&tensor.data, rows, cols, n_head);
        }
        Ok(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same as transformers' numpy `w.reshape(n_head, dim, 2, -1).swapaxes(2, 1)`.
    #[test]
    fn rope_unpermute_matches_reshape_swapaxes() {
        let (n_head, head_dim, cols) = (3, 8, 2);
        let rows = n_head * head_dim;
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let out = unpermute_rope_rows(&data, rows, cols, n_head);
        let half = head_dim / 2;
        for h in 0..n_head {
            for a in 0..2 {
                for b in 0..half {
                    // output index (h, a, b) reads input (h, b, a) of shape (n_head, half, 2)
                    let src_row = h * head_dim + b * 2 + a;
                    let dst_row = h * head_dim + a * half + b;
                    for c in 0..cols {
                        assert_eq!(out[dst_row * cols + c], data[src_row * cols + c]);
                    }
                }
            }
        }
        // rows 0..4 of head 0 are the even rows
        assert_eq!(out[0..8], [0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
    }

    #[test]
    fn tensor_names_round_trip() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            (
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf));
            assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf));
        }
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }
}
