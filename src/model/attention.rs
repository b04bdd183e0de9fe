//! Pieces shared by the transformer families: masks, scaled dot-product attention, GELU.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// Fill value for masked attention scores: exp() of it underflows to exactly 0 after the softmax
/// max-subtraction, and unlike -inf it never turns a fully masked row into NaN.
const MASKED_SCORE: f32 = -1e9;

/// Boolean mask `[batch, 1, new, past + new]`, `true` where a query must not see a key: keys in
/// the future, and padding keys. Padding never changes a real token's value this way, whichever
/// side it is on. `None` when nothing is masked (one new token, no padding).
pub fn attention_mask(
    batch: usize,
    new: usize,
    past: usize,
    padding: Option<&PaddingMask>,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let total = past + new;
    let padding = padding.filter(|p| !p.all_real());
    if new == 1 && padding.is_none() {
        return None;
    }
    // Query i (absolute position past + i) sees keys j <= past + i.
    let causal = Tensor::<2, Bool>::tril_mask([new, total], past as i64, device)
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([batch, 1, new, total]);
    let Some(padding) = padding else {
        return Some(causal);
    };
    assert_eq!(padding.seq_len, total, "padding covers every key position");
    let pad_keys = Tensor::<2, Bool>::from_data(
        TensorData::new(padding.is_pad.clone(), [batch, total]),
        device,
    )
    .unsqueeze_dims::<4>(&[1, 2])
    .expand([batch, 1, new, total]);
    Some(causal.bool_or(pad_keys))
}

/// Which positions of a `[batch, seq]` token grid are padding (host-side; built by the collator).
#[derive(Debug, Clone)]
pub struct PaddingMask {
    pub batch: usize,
    pub seq_len: usize,
    pub is_pad: Vec<bool>,
}

impl PaddingMask {
    pub fn none(batch: usize, seq_len: usize) -> Self {
        Self {
            batch,
            seq_len,
            is_pad: vec![false; batch * seq_len],
        }
    }

    pub fn all_real(&self) -> bool {
        !self.is_pad.iter().any(|&p| p)
    }
}

/// Zero each element with probability `prob` and scale the rest by 1/(1 − prob), as
/// `nn.Dropout` in training mode; only while training (on an autodiff device), so evaluation,
/// generation and the reference are never affected.
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    if prob <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - prob;
    let mask = x.random_like(burn::tensor::Distribution::Bernoulli(keep));
    (x * mask).mul_scalar(1.0 / keep)
}

/// softmax(q·kᵀ·scale + mask)·v for `[batch, heads, queries|keys, head_dim]` inputs, with
/// `attn_dropout` on the probabilities while training.
///
/// `k` and `v` may have fewer heads than `q` (grouped-query attention): query head `h` reads
/// key/value head `h / (heads / kv_heads)`, as after transformers' `repeat_kv`, but nothing is
/// repeated. Each key head's group of query heads is stacked along the queries, so one product
/// per key head serves the whole group, and the backward pass sums the group's gradients inside
/// that product instead of keeping (and reducing) repeated copies.
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    scale: f64,
    attn_dropout: f64,
) -> Tensor<4> {
    let [batch, heads, queries, head_dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    // `ModelConfig::from_json` refuses head counts that do not divide.
    debug_assert_eq!(
        heads % kv_heads,
        0,
        "query heads are a multiple of key/value heads"
    );
    let group = heads / kv_heads;
    // Only when grouped: burn's CPU backend copies a strided view on any reshape, even to its
    // own shape, and split heads are one.
    let q = match group {
        1 => q,
        _ => q.reshape([batch, kv_heads, group * queries, head_dim]),
    };
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(mask) = mask {
        let shape = [batch, kv_heads, group, queries, keys];
        scores = scores
            .reshape(shape)
            .mask_fill(
                mask.clone().unsqueeze_dim::<5>(1).expand(shape),
                MASKED_SCORE,
            )
            .reshape([batch, kv_heads, group * queries, keys]);
    }
    dropout(softmax(scores, 3), attn_dropout)
        .matmul(v)
        .reshape([batch, heads, queries, head_dim])
}

/// `[batch, seq, heads*head_dim]` -> `[batch, heads, seq, head_dim]`
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` -> `[batch, seq, heads*head_dim]`
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// GELU with the tanh approximation (`gelu_new` in transformers): one kernel on the CPU backend
/// (`cpu_kernels/gelu.rs`), burn's operations elsewhere.
///
/// The tanh argument is clamped: tanh(±10) is ±1 in f32 already, and WebGPU on SwiftShader
/// returns NaN for tanh of large arguments. The cube is a product, not `powf`, which is NaN for
/// negative bases on some GPU backends.
pub fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    #[cfg(not(target_arch = "wasm32"))]
    if super::cpu_kernels::supported_on(&x.device()) {
        return super::cpu_kernels::gelu::gelu_tanh(x);
    }
    gelu_tanh_composed(x)
}

/// [`gelu_tanh`] in burn's operations (any backend).
pub fn gelu_tanh_composed(x: Tensor<3>) -> Tensor<3> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044715)).mul_scalar(SQRT_2_OVER_PI);
    let tanh = inner.clamp(-10.0, 10.0).tanh();
    (x * (tanh + 1.0)).mul_scalar(0.5)
}

/// Token ids `[batch, seq]` as an Int tensor.
pub fn token_tensor(ids: &[i32], batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [batch, seq]), device)
}
