//! Keys and values of past positions, per layer, so generation feeds one new token per step.

use burn::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct KvCache {
    /// `[batch, kv_heads, past, head_dim]` keys and values per layer.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            len: 0,
        }
    }

    /// Positions already cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append this step's keys and values for `layer`; returns all keys and values so far.
    pub fn extend(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Called once per forward, after every layer extended: the new length.
    pub fn advance(&mut self, new_tokens: usize) {
        self.len += new_tokens;
    }
}
