//! Scoring without padding and without computing a shared prefix twice.
//!
//! A preference batch is right-padded rows of prompt + completion, and a pair's two rows (often
//! every row of a batch) start with the same prompt. In a causal model the hidden state at a
//! position depends only on the tokens up to it, so two rows that agree on positions `0..=p` have
//! the same hidden states there. [`Packing`] keeps each distinct prefix once (a trie over the
//! rows) and no padding at all: the position-wise work (embeddings, norms, projections, MLPs,
//! the head), which is almost all of the FLOPs, runs on those unique tokens only. Attention
//! alone needs the `[rows, seq]` grid: the unique tokens are gathered into it before and back out
//! after, and the gather's backward adds the gradients of a shared token from every row that
//! reads it.

use std::collections::HashMap;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::attention::{PaddingMask, attention_mask};

/// Host-side plan: which unique token each grid cell reads, and where each unique token is.
#[derive(Debug, Clone)]
pub struct PackingPlan {
    /// The grid's padding (what attention masks).
    pub padding: PaddingMask,
    /// Token id of each unique token.
    pub tokens: Vec<i32>,
    /// Absolute position of each unique token in its rows.
    pub positions: Vec<i32>,
    /// `rows * seq_len`: the unique token a grid cell holds (padding cells: `None`).
    pub grid_to_unique: Vec<Option<u32>>,
    /// The first grid cell (`row * seq_len + position`) of each unique token.
    pub unique_to_grid: Vec<u32>,
}

impl PackingPlan {
    /// `share_prefixes`: keep a prefix common to several rows once (off while dropout is on,
    /// where each row must draw its own masks).
    pub fn new(input_ids: &[i32], padding: &PaddingMask, share_prefixes: bool) -> Self {
        let (rows, seq_len) = (padding.batch, padding.seq_len);
        // Trie node of a prefix → (parent node, token or padding) → child; node 0 is the root.
        // Padding is part of the key so that positions line up, but is never a unique token.
        let mut children: HashMap<(u32, Option<i32>), u32> = HashMap::new();
        let mut node_unique: Vec<Option<u32>> = vec![None];
        let mut plan = PackingPlan {
            padding: padding.clone(),
            tokens: Vec::new(),
            positions: Vec::new(),
            grid_to_unique: vec![None; rows * seq_len],
            unique_to_grid: Vec::new(),
        };
        for row in 0..rows {
            let mut node = 0u32;
            for pos in 0..seq_len {
                let cell = row * seq_len + pos;
                let token = (!padding.is_pad[cell]).then_some(input_ids[cell]);
                let next = node_unique.len() as u32;
                let child = if share_prefixes {
                    *children.entry((node, token)).or_insert(next)
                } else {
                    next
                };
                if child == next {
                    let unique = token.map(|id| {
                        plan.tokens.push(id);
                        plan.positions.push(pos as i32);
                        plan.unique_to_grid.push(cell as u32);
                        (plan.tokens.len() - 1) as u32
                    });
                    node_unique.push(unique);
                }
                plan.grid_to_unique[cell] = node_unique[child as usize];
                node = child;
            }
        }
        plan
    }

    pub fn unique_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The unique token at `(row, position)`; `None` for padding.
    pub fn unique_at(&self, row: usize, position: usize) -> Option<usize> {
        self.grid_to_unique[row * self.padding.seq_len + position].map(|u| u as usize)
    }
}

/// A [`PackingPlan`] on the device.
pub struct Packing {
    pub rows: usize,
    pub seq_len: usize,
    /// The grid's causal and padding mask.
    pub mask: Option<Tensor<4, Bool>>,
    /// `[1, unique]` token ids and positions: the packed "batch" the layers see.
    pub tokens: Tensor<2, Int>,
    pub positions: Tensor<2, Int>,
    to_grid: Tensor<1, Int>,
    from_grid: Tensor<1, Int>,
}

impl Packing {
    pub fn new(plan: &PackingPlan, device: &Device) -> Self {
        let n = plan.unique_tokens();
        let ints = |v: Vec<i32>, shape: Vec<usize>| TensorData::new(v, shape);
        // A padding cell reads unique token 0: its key is masked and its query's output is
        // never read back, so any finite value will do.
        let to_grid: Vec<i32> = plan
            .grid_to_unique
            .iter()
            .map(|u| u.unwrap_or(0) as i32)
            .collect();
        let from_grid: Vec<i32> = plan.unique_to_grid.iter().map(|&c| c as i32).collect();
        let (rows, seq_len) = (plan.padding.batch, plan.padding.seq_len);
        Self {
            rows,
            seq_len,
            mask: attention_mask(rows, seq_len, 0, Some(&plan.padding), device),
            tokens: Tensor::from_data(ints(plan.tokens.clone(), vec![1, n]), device),
            positions: Tensor::from_data(ints(plan.positions.clone(), vec![1, n]), device),
            to_grid: Tensor::from_data(ints(to_grid, vec![rows * seq_len]), device),
            from_grid: Tensor::from_data(ints(from_grid, vec![n]), device),
        }
    }
}

/// How a forward pass lays out its tokens: the usual `[batch, seq]` grid, or packed unique
/// tokens (`[1, unique]`) that only attention spreads over the grid.
#[derive(Clone, Copy)]
pub enum Layout<'a> {
    Grid,
    Packed(&'a Packing),
}

impl Layout<'_> {
    /// Sequence length of the grid attention runs on (`input_seq`: the input's second axis).
    pub fn grid_seq(&self, input_seq: usize) -> usize {
        match self {
            Layout::Grid => input_seq,
            Layout::Packed(p) => p.seq_len,
        }
    }

    /// Absolute positions of the input tokens, shaped like them; the grid starts at `start`.
    pub fn positions(&self, input_ids: &Tensor<2, Int>, start: usize) -> Tensor<2, Int> {
        match self {
            Layout::Grid => {
                let [batch, seq] = input_ids.dims();
                let start = start as i64;
                Tensor::<1, Int>::arange(start..start + seq as i64, &input_ids.device())
                    .unsqueeze::<2>()
                    .expand([batch, seq])
            }
            Layout::Packed(p) => p.positions.clone(),
        }
    }

    /// `[1, unique, width]` → `[rows, seq, width]` (the grid layout passes through).
    pub fn to_grid(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Layout::Grid => x,
            Layout::Packed(p) => {
                let [_, n, width] = x.dims();
                x.reshape([n, width])
                    .select(0, p.to_grid.clone())
                    .reshape([p.rows, p.seq_len, width])
            }
        }
    }

    /// `[rows, seq, width]` → `[1, unique, width]`, each unique token read from its first cell.
    pub fn from_grid(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Layout::Grid => x,
            Layout::Packed(p) => {
                let [rows, seq, width] = x.dims();
                let n = p.from_grid.dims()[0];
                x.reshape([rows * seq, width])
                    .select(0, p.from_grid.clone())
                    .reshape([1, n, width])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ids: &[i32], pads: &[bool], rows: usize, share: bool) -> PackingPlan {
        let padding = PaddingMask {
            batch: rows,
            seq_len: ids.len() / rows,
            is_pad: pads.to_vec(),
        };
        PackingPlan::new(ids, &padding, share)
    }

    #[test]
    fn shared_prompts_and_padding_are_stored_once() {
        // Two rows: prompt [5, 6], completions [7, 8] and [9] (+1 pad); a third row [5, 1, 2].
        let ids = [5, 6, 7, 8, 5, 6, 9, 0, 5, 1, 2, 0];
        let pads = [
            false, false, false, false, false, false, false, true, false, false, false, true,
        ];
        let p = plan(&ids, &pads, 3, true);
        assert_eq!(p.tokens, vec![5, 6, 7, 8, 9, 1, 2]);
        assert_eq!(p.positions, vec![0, 1, 2, 3, 2, 1, 2]);
        assert_eq!(p.unique_at(1, 1), Some(1));
        assert_eq!(p.unique_at(1, 2), Some(4));
        assert_eq!(p.unique_at(1, 3), None);
        assert_eq!(p.unique_at(2, 0), Some(0));
        assert_eq!(p.unique_at(2, 1), Some(5));
        assert_eq!(p.unique_to_grid, vec![0, 1, 2, 3, 6, 9, 10]);
        // Without sharing only the padding goes.
        let p = plan(&ids, &pads, 3, false);
        assert_eq!(p.unique_tokens(), 10);
        assert_eq!(p.unique_at(1, 0), Some(4));
    }

    #[test]
    fn a_token_after_padding_is_not_shared_with_one_after_a_real_token() {
        // Left padding: [pad, 5] and [5, 5]: the second position differs in what precedes it.
        let p = plan(&[0, 5, 5, 5], &[true, false, false, false], 2, true);
        assert_eq!(p.unique_tokens(), 3);
        assert_ne!(p.unique_at(0, 1), p.unique_at(1, 1));
    }
}
