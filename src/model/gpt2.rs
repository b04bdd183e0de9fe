//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks, tanh-GELU MLP, tied lm_head.
//!
//! Hugging Face's GPT-2 uses `Conv1D` layers whose weights are already `[in, out]`, the layout
//! burn's `Linear` wants, so they load without a transpose.

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Bool, Device, Int, Tensor};

use super::attention::{dropout, gelu_tanh, merge_heads, scaled_dot_product, split_heads};
use super::cache::KvCache;
use super::config::Gpt2Config;
use super::lora::Projection;
use super::packing::Layout;
use super::weights::WeightSource;
use super::{NamedParam, ParamRole};
use crate::error::Result;

#[derive(Module, Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    #[module(skip)]
    config: Gpt2Config,
    /// Apply the config's dropout while training (off unless a run asks: TRL turns it off).
    #[module(skip)]
    dropout: bool,
    /// Name prefix found in the checkpoint (`transformer.` for GPT2LMHeadModel, empty for the
    /// original OpenAI export); kept so an export uses the same names.
    #[module(skip)]
    prefix: String,
}

#[derive(Module, Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Projection,
    attn_proj: Projection,
    ln_2: LayerNorm,
    c_fc: Projection,
    mlp_proj: Projection,
}

impl Gpt2 {
    pub fn load(config: &Gpt2Config, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        let prefix = if src.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let d = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * d);
        let eps = config.layer_norm_epsilon;
        let name = |n: &str| format!("{prefix}{n}");
        let embedding = |n: &str, rows: usize| -> Result<Embedding> {
            Ok(Embedding {
                weight: src.matrix(&name(n), [rows, d], false, device)?,
            })
        };
        let layer_norm = |n: &str| -> Result<LayerNorm> {
            let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
            ln.gamma = src.vector(&name(&format!("{n}.weight")), d, device)?;
            ln.beta = Some(src.vector(&name(&format!("{n}.bias")), d, device)?);
            Ok(ln)
        };
        let conv1d = |n: &str, d_in: usize, d_out: usize| -> Result<Projection> {
            Ok(Projection::new(Linear {
                weight: src.projection_weight(
                    &name(&format!("{n}.weight")),
                    [d_in, d_out],
                    false,
                    device,
                )?,
                bias: Some(src.vector(&name(&format!("{n}.bias")), d_out, device)?),
            }))
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let h = format!("h.{i}");
            blocks.push(Block {
                ln_1: layer_norm(&format!("{h}.ln_1"))?,
                c_attn: conv1d(&format!("{h}.attn.c_attn"), d, 3 * d)?,
                attn_proj: conv1d(&format!("{h}.attn.c_proj"), d, d)?,
                ln_2: layer_norm(&format!("{h}.ln_2"))?,
                c_fc: conv1d(&format!("{h}.mlp.c_fc"), d, inner)?,
                mlp_proj: conv1d(&format!("{h}.mlp.c_proj"), inner, d)?,
            });
        }
        Ok(Self {
            wte: embedding("wte.weight", config.vocab_size)?,
            wpe: embedding("wpe.weight", config.n_positions)?,
            blocks,
            ln_f: layer_norm("ln_f")?,
            config: config.clone(),
            dropout: false,
            prefix: prefix.to_string(),
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
        let positions = layout.positions(&input_ids, cache.len());
        let p = |prob: f64| if self.dropout { prob } else { 0.0 };
        let (attn_p, resid_p) = (p(self.config.attn_pdrop), p(self.config.resid_pdrop));
        let mut x = dropout(
            self.wte.forward(input_ids) + self.wpe.forward(positions),
            p(self.config.embd_pdrop),
        );
        let heads = self.config.n_head;
        let head_dim = self.config.n_embd / heads;
        for (layer, block) in self.blocks.iter().enumerate() {
            let mut scale = if self.config.scale_attn_weights {
                1.0 / (head_dim as f64).sqrt()
            } else {
                1.0
            };
            if self.config.scale_attn_by_inverse_layer_idx {
                scale /= (layer + 1) as f64;
            }
            let qkv = layout.to_grid(block.c_attn.forward(block.ln_1.forward(x.clone())));
            let [q, k, v]: [Tensor<3>; 3] = qkv
                .chunk(3, 2)
                .try_into()
                .expect("c_attn output splits in three");
            let (k, v) = cache.extend(layer, split_heads(k, heads), split_heads(v, heads));
            let attn = scaled_dot_product(split_heads(q, heads), k, v, mask, scale, attn_p);
            let attn = layout.from_grid(merge_heads(attn));
            x = x + dropout(block.attn_proj.forward(attn), resid_p);
            let mlp = block
                .mlp_proj
                .forward(gelu_tanh(block.c_fc.forward(block.ln_2.forward(x.clone()))));
            x = x + dropout(mlp, resid_p);
        }
        cache.advance(seq);
        self.ln_f.forward(x)
    }

    pub fn layers(&self) -> usize {
        self.config.n_layer
    }

    /// Whether dropout is on and some probability is not zero.
    pub fn dropout_active(&self) -> bool {
        self.dropout
            && (self.config.attn_pdrop > 0.0
                || self.config.resid_pdrop > 0.0
                || self.config.embd_pdrop > 0.0)
    }

    /// Turn the config's dropout on or off for training.
    pub fn with_dropout(mut self, on: bool) -> Self {
        self.dropout = on;
        self
    }

    /// Freeze the embeddings and every block but the top `top` ones. The head is the token
    /// embedding (tied), so it stays trainable, and with it the input embedding.
    pub fn freeze_lower_blocks(mut self, top: usize) -> Self {
        self.wpe = self.wpe.no_grad();
        let frozen = self.blocks.len().saturating_sub(top);
        for block in &mut self.blocks[..frozen] {
            *block = block.clone().no_grad();
        }
        self
    }

    /// `[vocab, d_model]`: GPT-2 always ties the output projection to the token embedding.
    pub fn lm_head(&self) -> Tensor<2> {
        self.wte.weight.val()
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    pub fn max_positions(&self) -> usize {
        self.config.n_positions
    }

    /// Every projection with its Hugging Face module name (what PEFT's `target_modules` match).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let p = self.prefix.clone();
        self.blocks
            .iter_mut()
            .enumerate()
            .flat_map(|(i, b)| {
                let h = format!("{p}h.{i}");
                [
                    (format!("{h}.attn.c_attn"), &mut b.c_attn),
                    (format!("{h}.attn.c_proj"), &mut b.attn_proj),
                    (format!("{h}.mlp.c_fc"), &mut b.c_fc),
                    (format!("{h}.mlp.c_proj"), &mut b.mlp_proj),
                ]
            })
            .collect()
    }

    /// Every base parameter with its Hugging Face name and layout (adapters folded in).
    pub fn named_params(&self) -> Vec<NamedParam> {
        let p = &self.prefix;
        let mut out = vec![
            NamedParam::matrix(
                format!("{p}wte.weight"),
                &self.wte.weight,
                ParamRole::Embedding,
            ),
            NamedParam::matrix(
                format!("{p}wpe.weight"),
                &self.wpe.weight,
                ParamRole::Embedding,
            ),
        ];
        let ln = |out: &mut Vec<NamedParam>, n: String, ln: &LayerNorm| {
            out.push(NamedParam::vector(
                format!("{n}.weight"),
                &ln.gamma,
                ParamRole::Norm,
            ));
            let beta = ln.beta.as_ref().expect("GPT-2 LayerNorms have a bias");
            out.push(NamedParam::vector(
                format!("{n}.bias"),
                beta,
                ParamRole::Bias,
            ));
        };
        let conv = |out: &mut Vec<NamedParam>, n: String, l: &Projection| {
            out.push(NamedParam::projection(format!("{n}.weight"), l, false));
            let bias: &Param<Tensor<1>> = l.linear.bias.as_ref().expect("GPT-2 Conv1D has a bias");
            out.push(NamedParam::vector(
                format!("{n}.bias"),
                bias,
                ParamRole::Bias,
            ));
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let h = format!("{p}h.{i}");
            ln(&mut out, format!("{h}.ln_1"), &b.ln_1);
            conv(&mut out, format!("{h}.attn.c_attn"), &b.c_attn);
            conv(&mut out, format!("{h}.attn.c_proj"), &b.attn_proj);
            ln(&mut out, format!("{h}.ln_2"), &b.ln_2);
            conv(&mut out, format!("{h}.mlp.c_fc"), &b.c_fc);
            conv(&mut out, format!("{h}.mlp.c_proj"), &b.mlp_proj);
        }
        ln(&mut out, format!("{p}ln_f"), &self.ln_f);
        out
    }
}
