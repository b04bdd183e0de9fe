//! Llama (`LlamaForCausalLM`): RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention,
//! tied or untied lm_head. SmolLM/SmolLM2 and TinyLlama are this architecture, and Qwen2 is it
//! with biases on the q/k/v projections (see `qwen2.rs`).
//!
//! Hugging Face stores `nn.Linear` weights as `[out, in]`; burn's `Linear` wants `[in, out]`, so
//! projections are transposed on load and back on export.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::silu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::attention::{merge_heads, scaled_dot_product, split_heads};
use super::cache::KvCache;
use super::config::LlamaConfig;
use super::lora::Projection;
use super::packing::Layout;
use super::weights::WeightSource;
use super::{NamedParam, ParamRole};
use crate::error::Result;

#[derive(Module, Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `[vocab, hidden]` like Hugging Face; `None` when tied to `embed_tokens`.
    lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    config: LlamaConfig,
    /// Apply the config's attention dropout while training (off unless a run asks).
    #[module(skip)]
    dropout: bool,
}

#[derive(Module, Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    post_attention_layernorm: RmsNorm,
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

/// Which projections carry a bias: Llama's `attention_bias`/`mlp_bias`, or Qwen2's q/k/v only.
#[derive(Debug, Clone, Copy)]
pub struct Biases {
    pub qkv: bool,
    pub o: bool,
    pub mlp: bool,
}

impl Biases {
    pub fn llama(config: &LlamaConfig) -> Self {
        Self {
            qkv: config.attention_bias,
            o: config.attention_bias,
            mlp: config.mlp_bias,
        }
    }
}

impl Llama {
    pub fn load(
        config: &LlamaConfig,
        biases: Biases,
        src: &dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        let hidden = config.hidden_size;
        let q_width = config.num_attention_heads * config.head_dim();
        let kv_width = config.num_kv_heads() * config.head_dim();
        let rms = |n: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                gamma: src.vector(n, hidden, device)?,
                epsilon: config.rms_norm_eps,
            })
        };
        let linear = |n: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Projection> {
            let bias = if bias {
                Some(src.vector(&format!("{n}.bias"), d_out, device)?)
            } else {
                None
            };
            Ok(Projection::new(Linear {
                weight: src.projection_weight(
                    &format!("{n}.weight"),
                    [d_in, d_out],
                    true,
                    device,
                )?,
                bias,
            }))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let (qkv, o, mb) = (biases.qkv, biases.o, biases.mlp);
            let inter = config.intermediate_size;
            layers.push(Layer {
                input_layernorm: rms(&format!("{l}.input_layernorm.weight"))?,
                q_proj: linear(&format!("{l}.self_attn.q_proj"), hidden, q_width, qkv)?,
                k_proj: linear(&format!("{l}.self_attn.k_proj"), hidden, kv_width, qkv)?,
                v_proj: linear(&format!("{l}.self_attn.v_proj"), hidden, kv_width, qkv)?,
                o_proj: linear(&format!("{l}.self_attn.o_proj"), q_width, hidden, o)?,
                post_attention_layernorm: rms(&format!("{l}.post_attention_layernorm.weight"))?,
                gate_proj: linear(&format!("{l}.mlp.gate_proj"), hidden, inter, mb)?,
                up_proj: linear(&format!("{l}.mlp.up_proj"), hidden, inter, mb)?,
                down_proj: linear(&format!("{l}.mlp.down_proj"), inter, hidden, mb)?,
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(src.matrix("lm_head.weight", [config.vocab_size, hidden], false, device)?)
        };
        Ok(Self {
            embed_tokens: Embedding {
                weight: src.matrix(
                    "model.embed_tokens.weight",
                    [config.vocab_size, hidden],
                    false,
                    device,
                )?,
            },
            layers,
            norm: rms("model.norm.weight")?,
            lm_head,
            config: config.clone(),
            dropout: false,
        })
    }

    /// Final hidden states for `input_ids` at positions `cache.len()..`, extending the cache.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        mask: Option<&Tensor<4, Bool>>,
        cache: &mut KvCache,
        layout: Layout,
    ) -> Tensor<3> {
        let seq = layout.grid_seq(input_ids.dims()[1]);
        let device = input_ids.device();
        let heads = self.config.num_attention_heads;
        let kv_heads = self.config.num_kv_heads();
        let head_dim = self.config.head_dim();
        let (cos, sin) =
            rotary_tables(cache.len(), seq, head_dim, &self.config.inv_freq(), &device);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut x = self.embed_tokens.forward(input_ids.clone());
        if let Some(pad) = self.config.pad_token_id {
            // `nn.Embedding(padding_idx=pad_token_id)`: the pad row (often also BOS or EOS)
            // receives no gradient in transformers, so it gets none here either.
            let dims = x.dims();
            let is_pad = input_ids
                .equal_elem(pad as i64)
                .unsqueeze_dim::<3>(2)
                .expand(dims);
            x = x.clone().mask_where(is_pad, x.detach());
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&layer.input_layernorm, x.clone());
            let q = split_heads(layout.to_grid(layer.q_proj.forward(h.clone())), heads);
            let k = split_heads(layout.to_grid(layer.k_proj.forward(h.clone())), kv_heads);
            let v = split_heads(layout.to_grid(layer.v_proj.forward(h)), kv_heads);
            let q = apply_rotary(q, &cos, &sin);
            let k = apply_rotary(k, &cos, &sin);
            let (k, v) = cache.extend(index, k, v);
            let attn_p = if self.dropout {
                self.config.attention_dropout
            } else {
                0.0
            };
            let attn = scaled_dot_product(q, k, v, mask, scale, attn_p);
            x = x + layer.o_proj.forward(layout.from_grid(merge_heads(attn)));
            let h = rms_norm(&layer.post_attention_layernorm, x.clone());
            let gated = swiglu(layer.gate_proj.forward(h.clone()), layer.up_proj.forward(h));
            x = x + layer.down_proj.forward(gated);
        }
        cache.advance(seq);
        rms_norm(&self.norm, x)
    }

    pub fn layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    /// Whether dropout is on and some probability is not zero.
    pub fn dropout_active(&self) -> bool {
        self.dropout && (self.config.attention_dropout > 0.0)
    }

    /// Turn the config's dropout on or off for training.
    pub fn with_dropout(mut self, on: bool) -> Self {
        self.dropout = on;
        self
    }

    /// Freeze the token embedding and every layer but the top `top` ones (the final norm and
    /// the head stay trainable; a head tied to the embedding keeps both trainable).
    pub fn freeze_lower_blocks(mut self, top: usize) -> Self {
        if self.lm_head.is_some() {
            self.embed_tokens = self.embed_tokens.no_grad();
        }
        let frozen = self.layers.len().saturating_sub(top);
        for layer in &mut self.layers[..frozen] {
            *layer = layer.clone().no_grad();
        }
        self
    }

    /// Every projection with its Hugging Face module name (what PEFT's `target_modules` match).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                let p = format!("model.layers.{i}");
                [
                    (format!("{p}.self_attn.q_proj"), &mut l.q_proj),
                    (format!("{p}.self_attn.k_proj"), &mut l.k_proj),
                    (format!("{p}.self_attn.v_proj"), &mut l.v_proj),
                    (format!("{p}.self_attn.o_proj"), &mut l.o_proj),
                    (format!("{p}.mlp.gate_proj"), &mut l.gate_proj),
                    (format!("{p}.mlp.up_proj"), &mut l.up_proj),
                    (format!("{p}.mlp.down_proj"), &mut l.down_proj),
                ]
            })
            .collect()
    }

    /// `[vocab, hidden]`
    pub fn lm_head(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed_tokens.weight.val(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    pub fn named_params(&self) -> Vec<NamedParam> {
        let mut out = vec![NamedParam::matrix(
            "model.embed_tokens.weight",
            &self.embed_tokens.weight,
            ParamRole::Embedding,
        )];
        let linear = |out: &mut Vec<NamedParam>, n: String, l: &Projection| {
            out.push(NamedParam::projection(format!("{n}.weight"), l, true));
            if let Some(b) = &l.linear.bias {
                out.push(NamedParam::vector(format!("{n}.bias"), b, ParamRole::Bias));
            }
        };
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push(NamedParam::vector(
                format!("{p}.input_layernorm.weight"),
                &l.input_layernorm.gamma,
                ParamRole::Norm,
            ));
            linear(&mut out, format!("{p}.self_attn.q_proj"), &l.q_proj);
            linear(&mut out, format!("{p}.self_attn.k_proj"), &l.k_proj);
            linear(&mut out, format!("{p}.self_attn.v_proj"), &l.v_proj);
            linear(&mut out, format!("{p}.self_attn.o_proj"), &l.o_proj);
            out.push(NamedParam::vector(
                format!("{p}.post_attention_layernorm.weight"),
                &l.post_attention_layernorm.gamma,
                ParamRole::Norm,
            ));
            linear(&mut out, format!("{p}.mlp.gate_proj"), &l.gate_proj);
            linear(&mut out, format!("{p}.mlp.up_proj"), &l.up_proj);
            linear(&mut out, format!("{p}.mlp.down_proj"), &l.down_proj);
        }
        out.push(NamedParam::vector(
            "model.norm.weight",
            &self.norm.gamma,
            ParamRole::Norm,
        ));
        if let Some(w) = &self.lm_head {
            out.push(NamedParam::matrix("lm_head.weight", w, ParamRole::Weight));
        }
        out
    }
}

/// cos/sin tables `[1, 1, seq, head_dim]` for positions `start..start + seq`, in Hugging Face's
/// "rotate half" layout: the frequency vector is repeated, `cat(freqs, freqs)`. Computed on the
/// host in f32 as transformers does.
fn rotary_tables(
    start: usize,
    seq: usize,
    head_dim: usize,
    inv_freq: &[f32],
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for pos in start..start + seq {
        for j in 0..head_dim {
            let angle = pos as f32 * inv_freq[j % half];
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let table = |v: Vec<f32>| {
        Tensor::<2>::from_data(TensorData::new(v, [seq, head_dim]), device).unsqueeze::<4>()
    };
    (table(cos), table(sin))
}

/// q·cos + rotate_half(q)·sin, with rotate_half(x) = cat(-x₂, x₁): one kernel on wgpu, burn's
/// operations elsewhere.
fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    if super::wgpu_kernels::supported_on(&x.device()) {
        return super::wgpu_kernels::rotary::rotary(x, cos, sin);
    }
    rotary_composed(x, cos, sin)
}

/// [`apply_rotary`] in burn's operations.
pub(crate) fn rotary_composed(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [_, _, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// silu(`gate`) · `up`: one kernel on the CPU backend and on wgpu, burn's operations elsewhere.
fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    #[cfg(not(target_arch = "wasm32"))]
    if super::cpu_kernels::supported_on(&gate.device()) {
        return super::cpu_kernels::swiglu::swiglu(gate, up);
    }
    if super::wgpu_kernels::supported_on(&gate.device()) {
        return super::wgpu_kernels::swiglu::swiglu(gate, up);
    }
    silu(gate) * up
}

/// `norm.forward(x)`: one kernel on the CPU backend, burn's operations elsewhere.
fn rms_norm(norm: &RmsNorm, x: Tensor<3>) -> Tensor<3> {
    #[cfg(not(target_arch = "wasm32"))]
    if super::cpu_kernels::supported_on(&x.device()) {
        return super::cpu_kernels::rms_norm::rms_norm(norm, x);
    }
    norm.forward(x)
}
