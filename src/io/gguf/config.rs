//! The Hugging Face `config.json` transformers builds from a GGUF file's metadata.

use serde_json::{Map, Value, json};

use super::reader::{GgufFile, MetaValue};
use crate::error::Result;

/// The GGUF architectures read, with their Hugging Face model type and class.
const ARCHITECTURES: [(&str, &str, &str); 2] = [
    ("llama", "llama", "LlamaForCausalLM"),
    ("qwen2", "qwen2", "Qwen2ForCausalLM"),
];

/// `config.json` for `LlamaForCausalLM` or `Qwen2ForCausalLM`, with the keys transformers' GGUF
/// loader sets, and the (query, key/value) head counts when q/k rows carry llama.cpp's rotary
/// permutation (only its `llama` architecture does).
pub(super) fn config_json(file: &GgufFile) -> Result<(String, Option<(usize, usize)>)> {
    let arch_key = "general.architecture";
    let arch = file
        .meta_str(arch_key)?
        .ok_or_else(|| file.meta_err(arch_key, "missing from the GGUF metadata"))?;
    let Some(&(_, model_type, class)) = ARCHITECTURES.iter().find(|(a, _, _)| *a == arch) else {
        return Err(file.meta_err(
            arch_key,
            format!(
                "architecture `{arch}` is not supported (only `llama` and `qwen2` GGUF files are)"
            ),
        ));
    };
    let is_llama = arch == "llama";
    let key = |k: &str| format!("{arch}.{k}");
    let heads = file.meta_usize_required(&key("attention.head_count"))?;
    let kv_heads = file
        .meta_u64(&key("attention.head_count_kv"))?
        .map_or(heads, |v| v as usize);
    let hidden = file.meta_usize_required(&key("embedding_length"))?;
    let vocab_size = match file.meta_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => file
            .meta("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .map(<[MetaValue]>::len)
            .ok_or_else(|| {
                file.meta_err(
                    &key("vocab_size"),
                    "missing, and there is no `tokenizer.ggml.tokens` to count",
                )
            })?,
    };
    let mut config = Map::new();
    config.insert("architectures".into(), json!([class]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("vocab_size".into(), json!(vocab_size));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(file.meta_usize_required(&key("feed_forward_length"))?),
    );
    config.insert(
        "num_hidden_layers".into(),
        json!(file.meta_usize_required(&key("block_count"))?),
    );
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert("num_key_value_heads".into(), json!(kv_heads));
    // transformers reads `rope.dimension_count` as a Llama's head size (Qwen2's is implied).
    if is_llama {
        let head_dim = file
            .meta_u64(&key("rope.dimension_count"))?
            .map_or(hidden / heads.max(1), |v| v as usize);
        config.insert("head_dim".into(), json!(head_dim));
    }
    config.insert("hidden_act".into(), json!("silu"));
    config.insert(
        "max_position_embeddings".into(),
        json!(file.meta_u64(&key("context_length"))?.unwrap_or(2048)),
    );
    config.insert(
        "rms_norm_eps".into(),
        json!(
            file.meta_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6)
        ),
    );
    config.insert(
        "rope_parameters".into(),
        json!({
            "rope_theta": file.meta_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            "rope_type": "default",
        }),
    );
    config.insert("attention_dropout".into(), json!(0.0));
    config.insert("initializer_range".into(), json!(0.02));
    config.insert("use_cache".into(), json!(true));
    if is_llama {
        config.insert("attention_bias".into(), json!(false));
        config.insert("mlp_bias".into(), json!(false));
        config.insert("pretraining_tp".into(), json!(1));
    } else {
        // Qwen2's q/k/v biases are part of the architecture; llama.cpp has no sliding window.
        config.insert("use_sliding_window".into(), json!(false));
        config.insert("sliding_window".into(), Value::Null);
    }
    // llama.cpp writes the output projection only when it is not the embedding matrix.
    config.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    for (gguf, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.unknown_token_id", "unk_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = file.meta_u64(gguf)? {
            config.insert(hf.into(), json!(id));
        }
    }
    let text = serde_json::to_string_pretty(&Value::Object(config)).expect("JSON serializes");
    Ok((text, is_llama.then_some((heads, kv_heads))))
}
