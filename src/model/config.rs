//! Model configs that mirror Hugging Face `config.json`.
//!
//! The raw JSON is kept next to the parsed fields so an exported model carries exactly the keys
//! it was loaded with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Location, Result};

/// `GPT2Config` fields we use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Dropout probabilities, used only when a run turns dropout on (TRL turns it off).
    #[serde(default = "default_gpt2_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "default_gpt2_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "default_gpt2_dropout")]
    pub embd_pdrop: f64,
}

fn default_gpt2_dropout() -> f64 {
    0.1
}

/// `LlamaConfig` fields we use (also covers Llama-shaped families such as SmolLM and TinyLlama).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta` at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers >= 5 writes `rope_parameters: {rope_theta, rope_type}`.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    /// Qwen2: sliding-window attention (refused when on).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// transformers builds the embedding with `padding_idx=pad_token_id`: that row never gets a
    /// gradient. (A list or anything else than an id is treated as no pad token.)
    #[serde(default, deserialize_with = "token_id_or_none")]
    pub pad_token_id: Option<u32>,
    /// Dropout on the attention probabilities, used only when a run turns dropout on.
    #[serde(default)]
    pub attention_dropout: f64,
}

fn token_id_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u32>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(value.as_u64().and_then(|n| u32::try_from(n).ok()))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// `linear` and `llama3`: how much longer the context is than in pretraining.
    #[serde(default)]
    pub factor: Option<f64>,
    /// `llama3` (Llama 3.1/3.2): the band of wavelengths that is interpolated.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// How rotary frequencies are derived from `1 / theta^(2i/d)` (transformers'
/// `ROPE_INIT_FUNCTIONS`); the kinds that depend on the sequence length are refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, the band between
    /// interpolated.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The rope parameters that name a type (`rope_parameters` in transformers >= 5, else the
    /// older `rope_scaling`), with the field name for errors.
    fn rope_spec(&self) -> Option<(&'static str, &RopeParameters)> {
        [
            ("rope_parameters", &self.rope_parameters),
            ("rope_scaling", &self.rope_scaling),
        ]
        .into_iter()
        .find_map(|(name, p)| {
            p.as_ref()
                .filter(|p| p.rope_type.is_some())
                .map(|p| (name, p))
        })
    }

    /// The rope scaling this config asks for. Kinds we do not compute are refused rather than
    /// silently computing different numbers than transformers.
    pub fn rope_scaling(&self) -> std::result::Result<RopeScaling, (String, String)> {
        let Some((field, p)) = self.rope_spec() else {
            return Ok(RopeScaling::Default);
        };
        let kind = p.rope_type.as_deref().unwrap_or("default");
        let need = |value: Option<f64>, name: &str| {
            value.map(|v| v as f32).ok_or_else(|| {
                (
                    format!("{field}.{name}"),
                    format!("required by rope type `{kind}`"),
                )
            })
        };
        match kind {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear {
                factor: need(p.factor, "factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    p.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            }),
            other => Err((
                format!("{field}.rope_type"),
                format!(
                    "rope type `{other}` is not supported (only `default`, `linear`, `llama3`)"
                ),
            )),
        }
    }

    /// The rotary inverse frequencies, one per pair of head dimensions, in f32 as transformers
    /// computes them (`_compute_default_rope_parameters` and the scaling functions).
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let theta = self.rope_theta() as f32;
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        match self.rope_scaling().unwrap_or(RopeScaling::Default) {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_context,
            } => {
                let low_freq_wavelen = old_context / low_freq_factor;
                let high_freq_wavelen = old_context / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_context / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_layer_norm_epsilon() -> f64 {
    1e-5
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_gelu_new() -> String {
    "gelu_new".into()
}
fn default_silu() -> String {
    "silu".into()
}
fn default_max_positions() -> usize {
    2048
}

/// A model family: one file under `model/` each (Qwen2 shares Llama's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gpt2,
    Llama,
    Qwen2,
}

impl Family {
    /// `config.json`'s `model_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which architecture a `config.json` describes, with its parsed fields.
#[derive(Debug, Clone)]
pub enum Architecture {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
    /// Llama-shaped with q/k/v biases.
    Qwen2(LlamaConfig),
}

impl Architecture {
    /// Every size the model divides by, indexes with or allocates from, checked before any
    /// weight is read: `(field, what is wrong)`.
    fn check_sizes(&self) -> std::result::Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        let at_least_1 = |pairs: &[(&str, usize)]| {
            for &(field, value) in pairs {
                if value == 0 {
                    return fail(field, "is 0 (must be at least 1)".into());
                }
            }
            Ok(())
        };
        let positive = |field: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                fail(field, format!("{value} (must be a finite number > 0)"))
            }
        };
        match self {
            Architecture::Gpt2(c) => {
                at_least_1(&[
                    ("vocab_size", c.vocab_size),
                    ("n_positions", c.n_positions),
                    ("n_embd", c.n_embd),
                    ("n_layer", c.n_layer),
                    ("n_head", c.n_head),
                    ("n_inner", c.n_inner.unwrap_or(1)),
                ])?;
                if c.n_embd % c.n_head != 0 {
                    return fail(
                        "n_head",
                        format!("{} does not divide n_embd {}", c.n_head, c.n_embd),
                    );
                }
                positive("layer_norm_epsilon", c.layer_norm_epsilon)
            }
            Architecture::Llama(c) | Architecture::Qwen2(c) => {
                at_least_1(&[
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                    ("num_key_value_heads", c.num_kv_heads()),
                    ("max_position_embeddings", c.max_position_embeddings),
                ])?;
                let heads = c.num_attention_heads;
                if c.head_dim.is_none() && c.hidden_size % heads != 0 {
                    return fail(
                        "num_attention_heads",
                        format!(
                            "{heads} does not divide hidden_size {} (or set head_dim)",
                            c.hidden_size
                        ),
                    );
                }
                if heads % c.num_kv_heads() != 0 {
                    return fail(
                        "num_key_value_heads",
                        format!(
                            "{} does not divide num_attention_heads {heads}",
                            c.num_kv_heads()
                        ),
                    );
                }
                let head_dim = c.head_dim();
                if head_dim < 2 || head_dim % 2 != 0 {
                    return fail(
                        "head_dim",
                        format!("{head_dim} (rotary embeddings need an even size >= 2)"),
                    );
                }
                positive("rms_norm_eps", c.rms_norm_eps)?;
                positive("rope_theta", c.rope_theta())?;
                match c.rope_scaling()? {
                    RopeScaling::Default => Ok(()),
                    RopeScaling::Linear { factor } => {
                        positive("rope_scaling.factor", factor as f64)
                    }
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => {
                        positive("rope_scaling.factor", factor as f64)?;
                        positive("rope_scaling.low_freq_factor", low_freq_factor as f64)?;
                        positive(
                            "rope_scaling.original_max_position_embeddings",
                            original_max_position_embeddings as f64,
                        )?;
                        if high_freq_factor.partial_cmp(&low_freq_factor)
                            != Some(std::cmp::Ordering::Greater)
                        {
                            return fail(
                                "rope_scaling.high_freq_factor",
                                format!(
                                    "{high_freq_factor} (must be greater than low_freq_factor \
                                     {low_freq_factor})"
                                ),
                            );
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

/// A parsed `config.json` plus the raw JSON it came from.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub raw: Value,
    pub eos_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// Parse `config.json` text; `source` names the file in error messages.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let loc = || Location::file(source);
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| Error::input(loc().line(e.line()), format!("invalid JSON: {e}")))?;
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::input(loc().field("model_type"), "missing or not a string"))?
            .to_string();
        let parse_err = |e: serde_json::Error| {
            // serde_json reports the missing/invalid field in its message.
            Error::input(loc(), format!("{model_type} config: {e}"))
        };
        let architecture = match model_type.as_str() {
            "gpt2" => Architecture::Gpt2(serde_json::from_value(raw.clone()).map_err(parse_err)?),
            "llama" | "qwen2" => {
                let cfg: LlamaConfig = serde_json::from_value(raw.clone()).map_err(parse_err)?;
                if let Err((field, message)) = cfg.rope_scaling() {
                    return Err(Error::input(loc().field(&field), message));
                }
                if cfg.hidden_act != "silu" {
                    return Err(Error::input(
                        loc().field("hidden_act"),
                        format!("`{}` is not supported (only `silu`)", cfg.hidden_act),
                    ));
                }
                if cfg.use_sliding_window {
                    return Err(Error::input(
                        loc().field("use_sliding_window"),
                        "sliding-window attention is not supported",
                    ));
                }
                if model_type == "qwen2" {
                    Architecture::Qwen2(cfg)
                } else {
                    Architecture::Llama(cfg)
                }
            }
            other => {
                return Err(Error::input(
                    loc().field("model_type"),
                    format!("unsupported model type `{other}` (supported: gpt2, llama, qwen2)"),
                ));
            }
        };
        if let Architecture::Gpt2(cfg) = &architecture
            && !matches!(
                cfg.activation_function.as_str(),
                "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"
            )
        {
            return Err(Error::input(
                loc().field("activation_function"),
                format!(
                    "`{}` is not supported (only the tanh GELU: gelu_new)",
                    cfg.activation_function
                ),
            ));
        }
        let token_id = |key: &str| {
            raw.get(key).and_then(|v| match v {
                Value::Number(n) => n.as_u64().map(|n| n as u32),
                // Some configs list several EOS ids; the first is the one appended to text.
                Value::Array(a) => a.first().and_then(Value::as_u64).map(|n| n as u32),
                _ => None,
            })
        };
        if let Err((field, message)) = architecture.check_sizes() {
            return Err(Error::input(loc().field(field), message));
        }
        Ok(Self {
            eos_token_id: token_id("eos_token_id"),
            bos_token_id: token_id("bos_token_id"),
            pad_token_id: token_id("pad_token_id"),
            architecture,
            raw,
        })
    }

    /// The most positions the model can take (GPT-2's learned table); `None` for RoPE models.
    pub fn max_positions(&self) -> Option<usize> {
        match &self.architecture {
            Architecture::Gpt2(c) => Some(c.n_positions),
            Architecture::Llama(_) | Architecture::Qwen2(_) => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.architecture {
            Architecture::Gpt2(c) => c.vocab_size,
            Architecture::Llama(c) | Architecture::Qwen2(c) => c.vocab_size,
        }
    }

    pub fn family(&self) -> Family {
        match &self.architecture {
            Architecture::Gpt2(_) => Family::Gpt2,
            Architecture::Llama(_) => Family::Llama,
            Architecture::Qwen2(_) => Family::Qwen2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rope_theta_from_either_place() {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,
            "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}}"#;
        for (text, theta) in [(v4, 500000.0), (v5, 100000.0)] {
            let cfg = ModelConfig::from_json(text, "config.json").unwrap();
            let Architecture::Llama(l) = cfg.architecture else {
                panic!()
            };
            assert_eq!(l.rope_theta(), theta);
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = ModelConfig::from_json(r#"{"model_type":"bert"}"#, "m/config.json").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("m/config.json"), "{text}");
        assert!(text.contains("model_type"), "{text}");
        let err = ModelConfig::from_json(r#"{"model_type":"gpt2"}"#, "x.json").unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }
}
