//! Decoder-only language models, one file per family, behind one `CausalLm` type: configs,
//! layers, LoRA adapters, scoring and generation. This layer knows nothing of text, files or
//! training loops: weights come in through [`weights::WeightSource`].

pub mod attention;
pub mod cache;
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod cpu_kernels;
pub mod generate;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod packing;
pub mod qwen2;
pub mod scoring;
pub mod weights;
pub mod wgpu_kernels;

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::error::Result;
use attention::{PaddingMask, attention_mask, token_tensor};
use cache::KvCache;
use config::{Architecture, ModelConfig};
use lora::Projection;
use packing::{Layout, Packing};
use weights::{HostTensor, WeightSource};

/// How a device computes the operations that have a fused kernel (the label's log-softmax,
/// SwiGLU, RMSNorm, GPT-2's GELU): with `cpu_kernels` on the CPU backend, with burn's operations
/// elsewhere. The memory estimate depends on it (the kernels keep less for the backward pass).
/// `wgpu_kernels` (SwiGLU, rotary embeddings) keep no more than the operations they
/// replace, so wgpu's estimate stays the composed one, an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Composed,
    Cpu,
}

impl Kernels {
    pub fn on(device: &Device) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        if cpu_kernels::supported_on(device) {
            return Self::Cpu;
        }
        let _ = device;
        Self::Composed
    }
}

/// `x · w` for matrices (the projections, the LM head): one gemm call each way on the CPU backend
/// (`cpu_kernels/linear.rs`), burn's matmul elsewhere.
pub fn matrix_product(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(not(target_arch = "wasm32"))]
    if cpu_kernels::supported_on(&x.device()) {
        return cpu_kernels::linear::linear_product(x, w);
    }
    x.matmul(w)
}

/// A causal language model of any supported family (Qwen2 is the Llama type with q/k/v biases).
#[derive(Module, Debug)]
pub enum CausalLm {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
}

/// What a parameter is, for choices such as weight decay (Hugging Face's Trainer decays neither
/// biases nor normalization weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    Embedding,
    Weight,
    Bias,
    Norm,
}

impl ParamRole {
    pub fn decays(self) -> bool {
        matches!(self, ParamRole::Embedding | ParamRole::Weight)
    }
}

/// A parameter tensor in our layout, and how to turn it into Hugging Face's.
#[derive(Debug, Clone)]
pub enum ParamTensor {
    Vector(Tensor<1>),
    /// `transpose`: Hugging Face stores the transpose of ours (`nn.Linear` vs burn `Linear`).
    Matrix {
        tensor: Tensor<2>,
        transpose: bool,
    },
}

/// A parameter with its Hugging Face name.
#[derive(Debug, Clone)]
pub struct NamedParam {
    pub name: String,
    pub id: ParamId,
    pub tensor: ParamTensor,
    pub role: ParamRole,
}

impl NamedParam {
    pub fn vector(name: impl Into<String>, p: &Param<Tensor<1>>, role: ParamRole) -> Self {
        Self {
            name: name.into(),
            id: p.id,
            tensor: ParamTensor::Vector(p.val()),
            role,
        }
    }

    /// A matrix stored the same way as in Hugging Face checkpoints.
    pub fn matrix(name: impl Into<String>, p: &Param<Tensor<2>>, role: ParamRole) -> Self {
        Self {
            name: name.into(),
            id: p.id,
            tensor: ParamTensor::Matrix {
                tensor: p.val(),
                transpose: false,
            },
            role,
        }
    }

    /// A projection's weight with any adapter folded in; `transpose` when Hugging Face stores it
    /// as an `nn.Linear` (`[out, in]`) rather than a `Conv1D` (`[in, out]`, burn's layout).
    pub fn projection(name: impl Into<String>, p: &Projection, transpose: bool) -> Self {
        Self {
            name: name.into(),
            id: p.linear.weight.id,
            tensor: ParamTensor::Matrix {
                tensor: p.effective_weight(),
                transpose,
            },
            role: ParamRole::Weight,
        }
    }

    /// Whether training changes it (frozen weights and LoRA's base weights do not).
    pub fn requires_grad(&self) -> bool {
        match &self.tensor {
            ParamTensor::Vector(t) => t.is_require_grad(),
            ParamTensor::Matrix { tensor, .. } => tensor.is_require_grad(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match &self.tensor {
            ParamTensor::Vector(t) => t.dims()[0],
            ParamTensor::Matrix { tensor, .. } => tensor.dims().iter().product(),
        }
    }

    /// Read back to the host in Hugging Face's layout.
    pub async fn to_host(&self) -> Result<HostTensor> {
        match &self.tensor {
            ParamTensor::Vector(t) => weights::to_host(t.clone()).await,
            ParamTensor::Matrix { tensor, transpose } => {
                let host = weights::to_host(tensor.clone()).await?;
                Ok(if *transpose { host.transposed() } else { host })
            }
        }
    }
}

impl CausalLm {
    /// Build the model described by `config` from named Hugging Face tensors.
    pub fn load(config: &ModelConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        Ok(match &config.architecture {
            Architecture::Gpt2(c) => CausalLm::Gpt2(gpt2::Gpt2::load(c, src, device)?),
            Architecture::Llama(c) => {
                CausalLm::Llama(llama::Llama::load(c, llama::Biases::llama(c), src, device)?)
            }
            Architecture::Qwen2(c) => CausalLm::Llama(qwen2::load(c, src, device)?),
        })
    }

    /// Final hidden states `[batch, seq, d_model]` (after the last norm) of a whole sequence.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>, padding: &PaddingMask) -> Tensor<3> {
        let mut cache = self.new_cache();
        self.forward(input_ids, Some(padding), &mut cache)
    }

    /// Final hidden states `[unique, d_model]` of a packed batch's unique tokens (see
    /// [`packing`]).
    pub fn packed_hidden_states(&self, packing: &Packing) -> Tensor<2> {
        let hidden = self.forward_in(
            packing.tokens.clone(),
            packing.mask.as_ref(),
            &mut self.new_cache(),
            Layout::Packed(packing),
        );
        let [_, n, d] = hidden.dims();
        hidden.reshape([n, d])
    }

    /// Whether training applies dropout (then rows must not share a prefix's hidden states).
    pub fn dropout_active(&self) -> bool {
        match self {
            CausalLm::Gpt2(m) => m.dropout_active(),
            CausalLm::Llama(m) => m.dropout_active(),
        }
    }

    /// Hidden states of `input_ids` placed after the `cache.len()` positions already cached,
    /// extending the cache. `padding` (if any) covers cached and new positions.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        padding: Option<&PaddingMask>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let [batch, new] = input_ids.dims();
        let mask = attention_mask(batch, new, cache.len(), padding, &input_ids.device());
        self.forward_in(input_ids, mask.as_ref(), cache, Layout::Grid)
    }

    /// The family's forward pass over tokens laid out as `layout` says.
    fn forward_in(
        &self,
        input_ids: Tensor<2, Int>,
        mask: Option<&Tensor<4, Bool>>,
        cache: &mut KvCache,
        layout: Layout,
    ) -> Tensor<3> {
        match self {
            CausalLm::Gpt2(m) => m.forward(input_ids, mask, cache, layout),
            CausalLm::Llama(m) => m.forward(input_ids, mask, cache, layout),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(match self {
            CausalLm::Gpt2(m) => m.layers(),
            CausalLm::Llama(m) => m.layers(),
        })
    }

    /// Every projection with its Hugging Face module name.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        match self {
            CausalLm::Gpt2(m) => m.projections_mut(),
            CausalLm::Llama(m) => m.projections_mut(),
        }
    }

    /// Output projection `[vocab, d_model]`.
    pub fn lm_head(&self) -> Tensor<2> {
        match self {
            CausalLm::Gpt2(m) => m.lm_head(),
            CausalLm::Llama(m) => m.lm_head(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            CausalLm::Gpt2(m) => m.vocab_size(),
            CausalLm::Llama(m) => m.vocab_size(),
        }
    }

    /// Longest sequence the model can take, when the architecture has a hard limit.
    /// Transformer blocks.
    pub fn num_layers(&self) -> usize {
        match self {
            CausalLm::Gpt2(m) => m.layers(),
            CausalLm::Llama(m) => m.layers(),
        }
    }

    /// Apply the config's dropout probabilities while training (TRL's `disable_dropout=False`).
    pub fn with_dropout(self, on: bool) -> Self {
        match self {
            CausalLm::Gpt2(m) => CausalLm::Gpt2(m.with_dropout(on)),
            CausalLm::Llama(m) => CausalLm::Llama(m.with_dropout(on)),
        }
    }

    /// Train only the top `top` blocks, the final norm and the head: everything below (and the
    /// input embeddings, unless tied to the head) is frozen.
    pub fn freeze_lower_blocks(self, top: usize) -> crate::error::Result<Self> {
        let layers = self.num_layers();
        if top > layers {
            return Err(crate::error::Error::setting(
                "trainable_layers",
                format!("{top} is more than the model's {layers} blocks"),
            ));
        }
        Ok(match self {
            CausalLm::Gpt2(m) => CausalLm::Gpt2(m.freeze_lower_blocks(top)),
            CausalLm::Llama(m) => CausalLm::Llama(m.freeze_lower_blocks(top)),
        })
    }

    pub fn max_positions(&self) -> Option<usize> {
        match self {
            CausalLm::Gpt2(m) => Some(m.max_positions()),
            CausalLm::Llama(_) => None,
        }
    }

    pub fn named_params(&self) -> Vec<NamedParam> {
        match self {
            CausalLm::Gpt2(m) => m.named_params(),
            CausalLm::Llama(m) => m.named_params(),
        }
    }

    /// Full logits `[batch, seq, vocab]` (for checks and small inputs; training never builds them).
    pub fn logits(&self, ids: &[i32], batch: usize, seq: usize, device: &Device) -> Tensor<3> {
        let input = token_tensor(ids, batch, seq, device);
        let hidden = self.hidden_states(input, &PaddingMask::none(batch, seq));
        let [b, t, d] = hidden.dims();
        hidden
            .reshape([b * t, d])
            .matmul(self.lm_head().transpose())
            .reshape([b, t, self.vocab_size()])
    }
}

/// The parameters of a module, flattened, in visiting order.
struct CollectParams(Vec<Tensor<1>>);

impl burn::module::ModuleVisitor for CollectParams {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// Replace each parameter `r` with `(1 − α)·r + α·p`, `p` the same parameter of another model.
struct Blend {
    others: std::vec::IntoIter<Tensor<1>>,
    alpha: f64,
}

impl burn::module::ModuleMapper for Blend {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let other = self.others.next().expect("models of one architecture");
        let alpha = self.alpha;
        param.map(|r| {
            let shape = r.shape();
            r.mul_scalar(1.0 - alpha) + other.reshape(shape).mul_scalar(alpha)
        })
    }
}

impl CausalLm {
    /// `(1 − α)·self + α·other`, parameter by parameter (TR-DPO's reference update, as TRL's
    /// `SyncRefModelCallback`). Both models must have the same architecture and no adapters.
    pub fn blended_with(self, other: &CausalLm, alpha: f64) -> CausalLm {
        let mut collected = CollectParams(Vec::new());
        other.visit(&mut collected);
        let mut blend = Blend {
            others: collected.0.into_iter(),
            alpha,
        };
        self.map(&mut blend)
    }
}
