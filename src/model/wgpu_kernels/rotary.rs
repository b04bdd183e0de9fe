//! Rotary position embeddings in Hugging Face's "rotate half" layout, x·cos + rotate_half(x)·sin
//! with rotate_half(x) = cat(−x₂, x₁): one kernel forward and one backward on wgpu. Composed,
//! each of q and k costs a negation, a concatenation (two slice writes), two products and a
//! sum, and the backward the slices' zero-filled gradients and their writes: ~30 launches per
//! layer.
//!
//! With h = d/2 and j the position in a head: y_j = x_j·c_j − x_{j+h}·s_j (j < h),
//! x_j·c_j + x_{j−h}·s_j (j ≥ h); so ∂L/∂x_j = g_j·c_j + g_{j+h}·s_{j+h} (j < h),
//! g_j·c_j − g_{j−h}·s_{j−h} (j ≥ h).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeTensor;
use burn::backend::{Autodiff, Backend, Wgpu, backend_extension};
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::Tensor;

use super::{Elementwise, LinearView, LinearViewMut, check_f32, empty_like, view};

#[backend_extension(Cube, Autodiff)]
pub trait RotaryWgpu: Backend {
    /// `x` `[batch, heads, seq, head_dim]` rotated by the tables `cos`, `sin`
    /// `[1, 1, seq, head_dim]` (constants: no gradient flows to them).
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// [`RotaryWgpu::rotary`] on the tensor API; only where [`super::supported_on`].
pub fn rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RotaryWgpu>::rotary(
        x.into_dispatch(),
        cos.clone().into_dispatch(),
        sin.clone().into_dispatch(),
    ))
}

impl RotaryWgpu for Wgpu {
    fn rotary(x: CubeTensor, cos: CubeTensor, sin: CubeTensor) -> CubeTensor {
        launch(&x, &cos, &sin, Direction::Forward)
    }
}

#[derive(Debug)]
struct RotaryBackward;

impl Backward<Wgpu, 1> for RotaryBackward {
    /// The tables.
    type State = (CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        unary::<Wgpu, _>(ops.parents, ops.node, grads, |grad| {
            launch(&grad, &cos, &sin, Direction::Backward)
        });
    }
}

impl<C: CheckpointStrategy> RotaryWgpu for Autodiff<Wgpu, C> {
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let output = launch(
            x.primitive(),
            cos.primitive(),
            sin.primitive(),
            Direction::Forward,
        );
        match RotaryBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((cos.into_primitive(), sin.into_primitive()), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Forward,
    Backward,
}

/// The rotation of `x` (forward) or its transpose applied to a gradient (backward).
fn launch(x: &CubeTensor, cos: &CubeTensor, sin: &CubeTensor, direction: Direction) -> CubeTensor {
    check_f32(&[x, cos, sin], "rotary");
    let shape = x.meta.shape().clone();
    let dims = shape.as_slice();
    let (seq, head_dim) = (dims[2], dims[3]);
    assert!(
        cos.meta.shape().as_slice() == [1, 1, seq, head_dim]
            && sin.meta.shape() == cos.meta.shape()
            && head_dim % 2 == 0,
        "rotary: tables [1, 1, {seq}, {head_dim}] for an even head dimension"
    );
    let out = empty_like(x, shape.clone());
    // One element a thread: each reads its partner half a head away.
    let launch = Elementwise::with_vector_size(&x.client, shape.num_elements(), 1);
    // SAFETY: the views carry their tensors' shapes and strides; the kernel stops at the
    // output's length and reads the tables at positions below seq·head_dim.
    unsafe {
        rotary_kernel::launch_unchecked(
            &x.client,
            launch.cube_count,
            launch.cube_dim,
            view(x),
            view(cos),
            view(sin),
            view(&out),
            seq,
            head_dim,
            direction == Direction::Backward,
        );
    }
    out
}

/// Forward: y = x·c + rotate_half(x)·s. Backward (`transpose`): the same with the table's
/// sine read at the partner's position and the partner's sign flipped.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rotary_kernel(
    x: LinearView<'_, f32>,
    cos: LinearView<'_, f32>,
    sin: LinearView<'_, f32>,
    mut out: LinearViewMut<'_, f32>,
    seq: usize,
    head_dim: usize,
    #[comptime] transpose: bool,
) {
    let i = ABSOLUTE_POS;
    if !out.is_in_bounds(i) {
        terminate!();
    }
    let half = head_dim / 2;
    let j = i % head_dim;
    let row = ((i / head_dim) % seq) * head_dim;
    let first = j < half;
    let partner = if first { i + half } else { i - half };
    let partner_j = if first { j + half } else { j - half };
    let own = x.read(i) * cos.read(row + j);
    if transpose {
        let rotated = x.read(partner) * sin.read(row + partner_j);
        out.write(i, if first { own + rotated } else { own - rotated });
    } else {
        let sine = sin.read(row + j);
        let rotated = x.read(partner);
        out.write(
            i,
            if first {
                own + (-rotated) * sine
            } else {
                own + rotated * sine
            },
        );
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::super::tests::{assert_close, wgpu_or_skip};
    use super::rotary;
    use crate::model::llama::rotary_composed;

    /// Values and the input's gradient against burn's operations, for q as the model makes it
    /// (`[batch, seq, heads, d]` viewed as `[batch, heads, seq, d]`) and for a row-major input.
    #[test]
    fn the_kernel_matches_burns_operations() {
        let Some(host) = wgpu_or_skip() else {
            return;
        };
        let device = host.clone().autodiff();
        let (batch, heads, seq, d) = (3, 4, 11, 16);
        let table =
            || Tensor::<4>::random([1, 1, seq, d], Distribution::Uniform(-1.0, 1.0), &device);
        let (cos, sin) = (table(), table());
        let weights = Tensor::<4>::random(
            [batch, heads, seq, d],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        for strided in [true, false] {
            let leaf_shape = if strided {
                [batch, seq, heads, d]
            } else {
                [batch, heads, seq, d]
            };
            let x = Tensor::<4>::random(leaf_shape, Distribution::Normal(0.0, 2.0), &host);
            let run = |fused: bool| {
                let leaf = Tensor::<4>::from_data(x.to_data(), &device).require_grad();
                let input = match strided {
                    true => leaf.clone().swap_dims(1, 2),
                    false => leaf.clone(),
                };
                let y = match fused {
                    true => rotary(input, &cos, &sin),
                    false => rotary_composed(input, &cos, &sin),
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                (y.inner(), leaf.grad(&grads).unwrap())
            };
            let ((y, dx), (y0, dx0)) = (run(true), run(false));
            assert_close(&format!("value (strided {strided})"), y, y0, 1e-6);
            assert_close(&format!("∂x (strided {strided})"), dx, dx0, 1e-6);
        }
    }
}
