//! Masked scaled dot-product attention, softmax(q·kᵀ·scale, masked)·v, as one kernel forward
//! and two backward on wgpu. Composed, it is two batched products, a scale, a mask fill and a
//! softmax forward (~10 launches a layer) and ~20 backward; and on a software adapter the
//! batched products of small heads are the slowest kernels of a step (lavapipe: 3–4 ms each
//! for the built-in demo's 32 × 16 × 16 heads, a third of its step).
//!
//! One thread takes one query row of one head: the scores, the softmax and the weighted sum
//! of the values, without materializing the `[queries, keys]` scores. The backward recomputes
//! the probabilities from each row's max and sum (saved by the forward): one kernel per query
//! row (∂q, and D = ∂out·out), one per key row (∂k, ∂v; a key head's whole group of query heads).
//!
//! Masked scores are set to `masked_score`, as `mask_fill` does, so a fully masked row (a
//! padding query that sees only padding) is uniform over its keys and never NaN. With
//! P = softmax(S), S = q·kᵀ·scale: ∂S = P ⊙ (∂P − D) with ∂P = ∂out·vᵀ, D = rowsum(∂out ⊙ out).
//!
//! Outputs are written as `[batch, seq, heads, head_dim]` and returned as the
//! `[batch, heads, seq, head_dim]` view the model expects: merging the heads afterwards (and
//! splitting them, in the backward) is then free.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeTensor;
use burn::backend::{Autodiff, Backend, Wgpu, backend_extension};
use burn::cubecl;
use burn::cubecl::prelude::*;
// A kernel's strided argument (`burn::tensor::Tensor` is the model's).
use burn::cubecl::prelude::Tensor as KernelTensor;
use burn::tensor::{Bool, Shape, Tensor};

use super::{Elementwise, check_f32, empty_like};

#[backend_extension(Cube, Autodiff)]
pub trait AttentionWgpu: Backend {
    /// softmax(`q`·`k`ᵀ·`scale`, with `masked_score` where `blocked` ≠ 0)·`v`. `q`
    /// `[batch, heads, queries, d]`; `k`, `v` `[batch, kv_heads, keys, d]` (query head h reads
    /// key head h / (heads / kv_heads)); `blocked` `[batch, 1, queries, keys]`.
    fn masked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        blocked: FloatTensor<Self>,
        scale: f64,
        masked_score: f64,
    ) -> FloatTensor<Self>;
}

/// [`AttentionWgpu::masked_attention`] on the tensor API, with `mask` `true` where a query must
/// not see a key; only where [`super::supported_on`].
pub fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
    masked_score: f64,
) -> Tensor<4> {
    let blocked = mask.clone().float();
    Tensor::from_dispatch(
        <burn::backend::Dispatch as AttentionWgpu>::masked_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            blocked.into_dispatch(),
            scale,
            masked_score,
        ),
    )
}

impl AttentionWgpu for Wgpu {
    fn masked_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        blocked: CubeTensor,
        scale: f64,
        masked_score: f64,
    ) -> CubeTensor {
        let inputs = Inputs {
            q,
            k,
            v,
            blocked,
            scale: scale as f32,
            masked_score: masked_score as f32,
        };
        inputs.forward().out
    }
}

/// The forward's inputs, which its backward reads again.
#[derive(Debug, Clone)]
struct Inputs {
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    blocked: CubeTensor,
    scale: f32,
    masked_score: f32,
}

/// The forward's output and each query row's softmax max and sum.
#[derive(Debug, Clone)]
struct Forward {
    out: CubeTensor,
    row_max: CubeTensor,
    row_sum: CubeTensor,
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.batch * self.heads * self.queries
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Wgpu, 3> for AttentionBackward {
    type State = (Inputs, Forward);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (inputs, forward) = ops.state;
        let grad = grads.consume::<Wgpu>(&ops.node);
        let (dq, delta) = inputs.query_gradient(&forward, &grad);
        let [q_node, k_node, v_node] = ops.parents;
        if let Some(node) = q_node {
            grads.register::<Wgpu>(node.id, dq);
        }
        if k_node.is_some() || v_node.is_some() {
            let (dk, dv) = inputs.key_value_gradients(&forward, &grad, &delta);
            if let Some(node) = k_node {
                grads.register::<Wgpu>(node.id, dk);
            }
            if let Some(node) = v_node {
                grads.register::<Wgpu>(node.id, dv);
            }
        }
    }
}

impl<C: CheckpointStrategy> AttentionWgpu for Autodiff<Wgpu, C> {
    fn masked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        blocked: FloatTensor<Self>,
        scale: f64,
        masked_score: f64,
    ) -> FloatTensor<Self> {
        let inputs = Inputs {
            q: q.primitive().clone(),
            k: k.primitive().clone(),
            v: v.primitive().clone(),
            blocked: blocked.into_primitive(),
            scale: scale as f32,
            masked_score: masked_score as f32,
        };
        let forward = inputs.forward();
        match AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = forward.out.clone();
                prep.finish((inputs, forward), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward.out),
        }
    }
}

/// A fresh `[batch, seq, heads, head_dim]` tensor viewed as `[batch, heads, seq, head_dim]`.
fn heads_view(like: &CubeTensor, batch: usize, heads: usize, seq: usize, d: usize) -> CubeTensor {
    let mut tensor = empty_like(like, Shape::from([batch, seq, heads, d]));
    tensor.meta.swap(1, 2);
    tensor
}

impl Inputs {
    fn dims(&self) -> Dims {
        check_f32(
            &[&self.q, &self.k, &self.v, &self.blocked],
            "masked_attention",
        );
        let [batch, heads, queries, head_dim] = dims4(&self.q);
        let [kv_batch, kv_heads, keys, kv_dim] = dims4(&self.k);
        assert!(
            kv_batch == batch
                && kv_dim == head_dim
                && kv_heads > 0
                && heads % kv_heads == 0
                && self.v.meta.shape() == self.k.meta.shape()
                && self.blocked.meta.shape().as_slice() == [batch, 1, queries, keys],
            "masked_attention: q [{batch}, {heads}, {queries}, {head_dim}], k and v \
             [{batch}, a divisor of {heads}, keys, {head_dim}], a mask [{batch}, 1, {queries}, keys]"
        );
        Dims {
            batch,
            heads,
            kv_heads,
            queries,
            keys,
            head_dim,
        }
    }

    fn forward(&self) -> Forward {
        let d = self.dims();
        let out = heads_view(&self.q, d.batch, d.heads, d.queries, d.head_dim);
        let row_max = empty_like(&self.q, Shape::from([d.rows()]));
        let row_sum = empty_like(&self.q, Shape::from([d.rows()]));
        let launch = Elementwise::with_vector_size(&self.q.client, d.rows(), 1);
        // SAFETY: the views carry their tensors' shapes and strides; threads stop at the row
        // count and index q, k, v and the mask within the shapes `dims` checked; the outputs
        // are fresh buffers of rows·head_dim and rows elements.
        unsafe {
            attention_forward_kernel::launch_unchecked(
                &self.q.client,
                launch.cube_count,
                launch.cube_dim,
                self.q.clone().into_tensor_arg(),
                self.k.clone().into_tensor_arg(),
                self.v.clone().into_tensor_arg(),
                self.blocked.clone().into_tensor_arg(),
                out.clone().into_buffer_arg(),
                row_max.clone().into_buffer_arg(),
                row_sum.clone().into_buffer_arg(),
                d.batch,
                d.heads,
                d.kv_heads,
                d.queries,
                d.keys,
                self.scale,
                self.masked_score,
                d.head_dim,
            );
        }
        Forward {
            out,
            row_max,
            row_sum,
        }
    }

    /// ∂q, and each query row's D = ∂out·out (which the key rows' gradients need).
    fn query_gradient(&self, forward: &Forward, grad: &CubeTensor) -> (CubeTensor, CubeTensor) {
        let d = self.dims();
        check_f32(&[grad], "masked_attention backward");
        let dq = heads_view(&self.q, d.batch, d.heads, d.queries, d.head_dim);
        let delta = empty_like(&self.q, Shape::from([d.rows()]));
        let launch = Elementwise::with_vector_size(&self.q.client, d.rows(), 1);
        // SAFETY: as in `forward`; the gradient and the output have q's shape.
        unsafe {
            attention_query_gradient_kernel::launch_unchecked(
                &self.q.client,
                launch.cube_count,
                launch.cube_dim,
                self.q.clone().into_tensor_arg(),
                self.k.clone().into_tensor_arg(),
                self.v.clone().into_tensor_arg(),
                self.blocked.clone().into_tensor_arg(),
                forward.out.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                forward.row_max.clone().into_buffer_arg(),
                forward.row_sum.clone().into_buffer_arg(),
                dq.clone().into_buffer_arg(),
                delta.clone().into_buffer_arg(),
                d.batch,
                d.heads,
                d.kv_heads,
                d.queries,
                d.keys,
                self.scale,
                self.masked_score,
                d.head_dim,
            );
        }
        (dq, delta)
    }

    /// ∂k and ∂v, each key row summing over its group's query heads.
    fn key_value_gradients(
        &self,
        forward: &Forward,
        grad: &CubeTensor,
        delta: &CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let d = self.dims();
        let dk = heads_view(&self.k, d.batch, d.kv_heads, d.keys, d.head_dim);
        let dv = heads_view(&self.k, d.batch, d.kv_heads, d.keys, d.head_dim);
        let key_rows = d.batch * d.kv_heads * d.keys;
        let launch = Elementwise::with_vector_size(&self.q.client, key_rows, 1);
        // SAFETY: as in `forward`; threads stop at the key row count.
        unsafe {
            attention_key_value_gradient_kernel::launch_unchecked(
                &self.q.client,
                launch.cube_count,
                launch.cube_dim,
                self.q.clone().into_tensor_arg(),
                self.k.clone().into_tensor_arg(),
                self.v.clone().into_tensor_arg(),
                self.blocked.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                forward.row_max.clone().into_buffer_arg(),
                forward.row_sum.clone().into_buffer_arg(),
                delta.clone().into_buffer_arg(),
                dk.clone().into_buffer_arg(),
                dv.clone().into_buffer_arg(),
                d.batch,
                d.heads,
                d.kv_heads,
                d.queries,
                d.keys,
                self.scale,
                self.masked_score,
                d.head_dim,
            );
        }
        (dk, dv)
    }
}

fn dims4(tensor: &CubeTensor) -> [usize; 4] {
    let dims = tensor.meta.shape().as_slice();
    assert_eq!(dims.len(), 4, "masked_attention: rank-4 tensors");
    [dims[0], dims[1], dims[2], dims[3]]
}

/// Where element `[a, b, c, 0]` of `t` is (the kernels read their inputs through their strides,
/// so the views the model passes, transposed or expanded, need no copy).
#[cube]
fn offset(t: &KernelTensor<f32>, a: usize, b: usize, c: usize) -> usize {
    a * t.stride(0) + b * t.stride(1) + c * t.stride(2)
}

/// `head_dim` elements of `t` from `at`, `step` apart, into a local array.
#[cube]
fn load_row(
    t: &KernelTensor<f32>,
    at: usize,
    step: usize,
    #[comptime] head_dim: usize,
) -> Array<f32> {
    let mut row = Array::<f32>::new(head_dim);
    for x in 0..head_dim {
        row[x] = t[at + x * step];
    }
    row
}

/// `row` · the `head_dim` elements of `t` from `at`, `step` apart.
#[cube]
fn dot(
    row: &Array<f32>,
    t: &KernelTensor<f32>,
    at: usize,
    step: usize,
    #[comptime] head_dim: usize,
) -> f32 {
    let mut sum = 0.0f32;
    for x in 0..head_dim {
        sum += row[x] * t[at + x * step];
    }
    sum
}

#[cube]
fn zeros(#[comptime] head_dim: usize) -> Array<f32> {
    let mut row = Array::<f32>::new(head_dim);
    for x in 0..head_dim {
        row[x] = 0.0;
    }
    row
}

/// Where row `row` (of `[batch, heads, seq]`) starts in a `[batch, seq, heads, d]` buffer.
#[cube]
fn heads_view_at(row: usize, heads: usize, seq: usize, #[comptime] head_dim: usize) -> usize {
    let i = row % seq;
    let head = (row / seq) % heads;
    let b = row / (seq * heads);
    ((b * seq + i) * heads + head) * head_dim
}

/// The score of a query row and the key at `k_at`: q·k·scale, or `masked_score` where blocked
/// (what `mask_fill` leaves).
#[cube]
#[allow(clippy::too_many_arguments)]
fn score(
    q_row: &Array<f32>,
    k: &KernelTensor<f32>,
    k_at: usize,
    k_step: usize,
    is_blocked: f32,
    scale: f32,
    masked_score: f32,
    #[comptime] head_dim: usize,
) -> f32 {
    let mut s = masked_score;
    if is_blocked == 0.0 {
        s = dot(q_row, k, k_at, k_step, head_dim) * scale;
    }
    s
}

/// One thread per query row: Σ_j P_j·v_j with P = exp(s − max) / Σ exp(s − max), in one pass
/// over the keys; the row's max and sum are kept for the backward.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_forward_kernel(
    q: &KernelTensor<f32>,
    k: &KernelTensor<f32>,
    v: &KernelTensor<f32>,
    blocked: &KernelTensor<f32>,
    out: &mut [f32],
    row_max: &mut [f32],
    row_sum: &mut [f32],
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    scale: f32,
    masked_score: f32,
    #[comptime] head_dim: usize,
) {
    let row = ABSOLUTE_POS;
    if row >= batch * heads * queries {
        terminate!();
    }
    let i = row % queries;
    let head = (row / queries) % heads;
    let b = row / (queries * heads);
    let kv_head = head / (heads / kv_heads);
    let q_row = load_row(q, offset(q, b, head, i), q.stride(3), head_dim);
    let (k_at, k_next, k_step) = (offset(k, b, kv_head, 0), k.stride(2), k.stride(3));
    let (v_at, v_next, v_step) = (offset(v, b, kv_head, 0), v.stride(2), v.stride(3));
    let (mask_at, mask_step) = (offset(blocked, b, 0, i), blocked.stride(3));

    let mut max = masked_score;
    for j in 0..keys {
        let s = score(
            &q_row,
            k,
            k_at + j * k_next,
            k_step,
            blocked[mask_at + j * mask_step],
            scale,
            masked_score,
            head_dim,
        );
        if j == 0 || s > max {
            max = s;
        }
    }
    let mut sum = 0.0f32;
    for j in 0..keys {
        let s = score(
            &q_row,
            k,
            k_at + j * k_next,
            k_step,
            blocked[mask_at + j * mask_step],
            scale,
            masked_score,
            head_dim,
        );
        sum += (s - max).exp();
    }
    let mut acc = zeros(head_dim);
    for j in 0..keys {
        let s = score(
            &q_row,
            k,
            k_at + j * k_next,
            k_step,
            blocked[mask_at + j * mask_step],
            scale,
            masked_score,
            head_dim,
        );
        let p = (s - max).exp() / sum;
        if p != 0.0 {
            let at = v_at + j * v_next;
            for x in 0..head_dim {
                acc[x] += p * v[at + x * v_step];
            }
        }
    }
    let out_at = heads_view_at(row, heads, queries, head_dim);
    for x in 0..head_dim {
        out[out_at + x] = acc[x];
    }
    row_max[row] = max;
    row_sum[row] = sum;
}

/// One thread per query row: D = ∂out·out, and ∂q = Σ_j ∂S_ij·scale·k_j over unmasked keys.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_query_gradient_kernel(
    q: &KernelTensor<f32>,
    k: &KernelTensor<f32>,
    v: &KernelTensor<f32>,
    blocked: &KernelTensor<f32>,
    out: &KernelTensor<f32>,
    grad: &KernelTensor<f32>,
    row_max: &[f32],
    row_sum: &[f32],
    dq: &mut [f32],
    delta: &mut [f32],
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    scale: f32,
    masked_score: f32,
    #[comptime] head_dim: usize,
) {
    let row = ABSOLUTE_POS;
    if row >= batch * heads * queries {
        terminate!();
    }
    let i = row % queries;
    let head = (row / queries) % heads;
    let b = row / (queries * heads);
    let kv_head = head / (heads / kv_heads);
    let q_row = load_row(q, offset(q, b, head, i), q.stride(3), head_dim);
    let grad_row = load_row(grad, offset(grad, b, head, i), grad.stride(3), head_dim);
    let d = dot(
        &grad_row,
        out,
        offset(out, b, head, i),
        out.stride(3),
        head_dim,
    );
    let (k_at, k_next, k_step) = (offset(k, b, kv_head, 0), k.stride(2), k.stride(3));
    let (v_at, v_next, v_step) = (offset(v, b, kv_head, 0), v.stride(2), v.stride(3));
    let (mask_at, mask_step) = (offset(blocked, b, 0, i), blocked.stride(3));
    let (max, sum) = (row_max[row], row_sum[row]);
    let mut acc = zeros(head_dim);
    for j in 0..keys {
        let is_blocked = blocked[mask_at + j * mask_step];
        // A masked score is a constant: nothing flows back through it.
        if is_blocked == 0.0 {
            let at = k_at + j * k_next;
            let s = score(
                &q_row,
                k,
                at,
                k_step,
                is_blocked,
                scale,
                masked_score,
                head_dim,
            );
            let p = (s - max).exp() / sum;
            let dp = dot(&grad_row, v, v_at + j * v_next, v_step, head_dim);
            let ds = p * (dp - d) * scale;
            for x in 0..head_dim {
                acc[x] += ds * k[at + x * k_step];
            }
        }
    }
    let dq_at = heads_view_at(row, heads, queries, head_dim);
    for x in 0..head_dim {
        dq[dq_at + x] = acc[x];
    }
    delta[row] = d;
}

/// One thread per key row of a key head: ∂v = Σ_i P_ij·∂out_i and ∂k = Σ_i ∂S_ij·scale·q_i over
/// the query rows of every query head in the key head's group.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_key_value_gradient_kernel(
    q: &KernelTensor<f32>,
    k: &KernelTensor<f32>,
    v: &KernelTensor<f32>,
    blocked: &KernelTensor<f32>,
    grad: &KernelTensor<f32>,
    row_max: &[f32],
    row_sum: &[f32],
    delta: &[f32],
    dk: &mut [f32],
    dv: &mut [f32],
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    scale: f32,
    masked_score: f32,
    #[comptime] head_dim: usize,
) {
    let key_row = ABSOLUTE_POS;
    if key_row >= batch * kv_heads * keys {
        terminate!();
    }
    let j = key_row % keys;
    let kv_head = (key_row / keys) % kv_heads;
    let b = key_row / (keys * kv_heads);
    let group = heads / kv_heads;
    let k_row = load_row(k, offset(k, b, kv_head, j), k.stride(3), head_dim);
    let v_row = load_row(v, offset(v, b, kv_head, j), v.stride(3), head_dim);
    let (q_step, grad_step) = (q.stride(3), grad.stride(3));
    let mask_at = offset(blocked, b, 0, 0) + j * blocked.stride(3);
    let mask_next = blocked.stride(2);
    let mut dk_acc = zeros(head_dim);
    let mut dv_acc = zeros(head_dim);
    for g in 0..group {
        let head = kv_head * group + g;
        for i in 0..queries {
            let row = (b * heads + head) * queries + i;
            let q_at = offset(q, b, head, i);
            let grad_at = offset(grad, b, head, i);
            let (max, sum) = (row_max[row], row_sum[row]);
            if blocked[mask_at + i * mask_next] == 0.0 {
                let p = (dot(&k_row, q, q_at, q_step, head_dim) * scale - max).exp() / sum;
                let dp = dot(&v_row, grad, grad_at, grad_step, head_dim);
                let ds = p * (dp - delta[row]) * scale;
                for x in 0..head_dim {
                    dv_acc[x] += p * grad[grad_at + x * grad_step];
                    dk_acc[x] += ds * q[q_at + x * q_step];
                }
            } else {
                // Zero unless the whole row is masked (then uniform, as after `mask_fill`).
                let p = (masked_score - max).exp() / sum;
                if p != 0.0 {
                    for x in 0..head_dim {
                        dv_acc[x] += p * grad[grad_at + x * grad_step];
                    }
                }
            }
        }
    }
    let out_at = heads_view_at(key_row, kv_heads, keys, head_dim);
    for x in 0..head_dim {
        dk[out_at + x] = dk_acc[x];
        dv[out_at + x] = dv_acc[x];
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::tensor::{Bool, Distribution, Tensor, TensorData};

    use super::super::tests::{assert_close, wgpu_or_skip};
    use super::masked_attention;
    use crate::model::attention::{
        MASKED_SCORE, PaddingMask, attention_mask, scaled_dot_product_composed,
    };

    /// Values and the gradients of q, k and v against burn's operations: grouped heads, left
    /// padding (a fully masked query row), a cached prefix (more keys than queries), and q read
    /// through the transposed view the model makes.
    #[test]
    fn the_kernel_matches_burns_operations() {
        let Some(host) = wgpu_or_skip() else {
            return;
        };
        let device = host.clone().autodiff();
        let (batch, heads, kv_heads, d) = (3, 6, 2, 16);
        for (queries, past) in [(9, 0), (5, 4)] {
            let keys = past + queries;
            // Row 0 is left-padded (two pads), row 1 right-padded, row 2 has none.
            let mut is_pad = vec![false; batch * keys];
            is_pad[0] = true;
            is_pad[1] = true;
            is_pad[keys + keys - 1] = true;
            let padding = PaddingMask {
                batch,
                seq_len: keys,
                is_pad,
            };
            let mask: Tensor<4, Bool> =
                attention_mask(batch, queries, past, Some(&padding), &device).unwrap();
            let q = Tensor::<4>::random(
                [batch, queries, heads, d],
                Distribution::Normal(0.0, 1.0),
                &host,
            );
            let kv = |seed: u64| {
                let values: Vec<f32> = (0..batch * kv_heads * keys * d)
                    .map(|n| (((n as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
                    .collect();
                Tensor::<4>::from_data(TensorData::new(values, [batch, kv_heads, keys, d]), &host)
            };
            let (k, v) = (kv(7), kv(11));
            let weights = Tensor::<4>::random(
                [batch, heads, queries, d],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            );
            let scale = 1.0 / (d as f64).sqrt();
            let run = |fused: bool| {
                let leaf = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &device);
                let (lq, lk, lv) = (
                    leaf(&q).require_grad(),
                    leaf(&k).require_grad(),
                    leaf(&v).require_grad(),
                );
                let q_in = lq.clone().swap_dims(1, 2);
                let y = match fused {
                    true => {
                        masked_attention(q_in, lk.clone(), lv.clone(), &mask, scale, MASKED_SCORE)
                    }
                    false => scaled_dot_product_composed(
                        q_in,
                        lk.clone(),
                        lv.clone(),
                        Some(&mask),
                        scale,
                        0.0,
                    ),
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                (
                    y.inner(),
                    lq.grad(&grads).unwrap(),
                    lk.grad(&grads).unwrap(),
                    lv.grad(&grads).unwrap(),
                )
            };
            let ((y, dq, dk, dv), (y0, dq0, dk0, dv0)) = (run(true), run(false));
            let what = |w: &str| format!("{w} ({queries} queries after {past})");
            assert_close(&what("value"), y, y0, 1e-5);
            assert_close(&what("∂q"), dq, dq0, 1e-5);
            assert_close(&what("∂k"), dk, dk0, 1e-5);
            assert_close(&what("∂v"), dv, dv0, 1e-5);
        }
    }
}
