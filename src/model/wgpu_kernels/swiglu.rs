//! Llama's gated MLP activation, silu(gate) · up: one kernel forward and one backward on wgpu.
//! Composed, the sigmoid, the two products and their backward are ~14 launches per layer.
//!
//! With s = σ(g): out = g·s·u; ∂out/∂u = g·s; ∂out/∂g = u·s·(1 + g·(1 − s)).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeTensor;
use burn::backend::{Autodiff, Backend, Wgpu, backend_extension};
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::Tensor;

use super::{Elementwise, LinearView, LinearViewMut, check_f32, empty_like, view};

#[backend_extension(Cube, Autodiff)]
pub trait SwiGluWgpu: Backend {
    /// silu(`gate`) · `up`, element-wise (the same shapes).
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`SwiGluWgpu::swiglu`] on the tensor API; only where [`super::supported_on`].
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as SwiGluWgpu>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

impl SwiGluWgpu for Wgpu {
    fn swiglu(gate: CubeTensor, up: CubeTensor) -> CubeTensor {
        forward(&gate, &up)
    }
}

#[derive(Debug)]
struct SwiGluBackward;

impl Backward<Wgpu, 2> for SwiGluBackward {
    /// The gate and the up projection's output.
    type State = (CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let grad = grads.consume::<Wgpu>(&ops.node);
        // Both gradients in one launch, registered for the parents that need them.
        let (d_gate, d_up) = backward(&gate, &up, &grad);
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Wgpu>(node.id, d_gate);
        }
        if let Some(node) = up_node {
            grads.register::<Wgpu>(node.id, d_up);
        }
    }
}

impl<C: CheckpointStrategy> SwiGluWgpu for Autodiff<Wgpu, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let output = forward(gate.primitive(), up.primitive());
        match SwiGluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((gate.into_primitive(), up.into_primitive()), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

fn forward(gate: &CubeTensor, up: &CubeTensor) -> CubeTensor {
    check_f32(&[gate, up], "swiglu");
    assert_eq!(
        gate.meta.shape(),
        up.meta.shape(),
        "swiglu: gate and up of the same shape"
    );
    let shape = gate.meta.shape().clone();
    let out = empty_like(gate, shape.clone());
    let launch = Elementwise::new(&[gate, up], shape.num_elements());
    // SAFETY: the views carry their tensors' shapes and strides; the kernel stops at the
    // output's length, which all three share.
    unsafe {
        swiglu_forward_kernel::launch_unchecked(
            &gate.client,
            launch.cube_count,
            launch.cube_dim,
            launch.vector_size,
            view(gate),
            view(up),
            view(&out),
        );
    }
    out
}

fn backward(gate: &CubeTensor, up: &CubeTensor, grad: &CubeTensor) -> (CubeTensor, CubeTensor) {
    check_f32(&[gate, up, grad], "swiglu backward");
    let shape = gate.meta.shape().clone();
    let (d_gate, d_up) = (
        empty_like(gate, shape.clone()),
        empty_like(gate, shape.clone()),
    );
    let launch = Elementwise::new(&[gate, up, grad], shape.num_elements());
    // SAFETY: as in `forward`.
    unsafe {
        swiglu_backward_kernel::launch_unchecked(
            &gate.client,
            launch.cube_count,
            launch.cube_dim,
            launch.vector_size,
            view(gate),
            view(up),
            view(grad),
            view(&d_gate),
            view(&d_up),
        );
    }
    (d_gate, d_up)
}

/// σ(g) as burn's `sigmoid` computes it: 1 / (1 + e^(−g)).
#[cube]
fn sigmoid<N: Size>(g: Vector<f32, N>) -> Vector<f32, N> {
    let one = Vector::new(1.0f32);
    one / (one + (-g).exp())
}

#[cube(launch_unchecked)]
fn swiglu_forward_kernel<N: Size>(
    gate: LinearView<'_, Vector<f32, N>>,
    up: LinearView<'_, Vector<f32, N>>,
    mut out: LinearViewMut<'_, Vector<f32, N>>,
) {
    let i = ABSOLUTE_POS;
    if !out.is_in_bounds(i) {
        terminate!();
    }
    let g = gate.read(i);
    out.write(i, g * sigmoid(g) * up.read(i));
}

#[cube(launch_unchecked)]
fn swiglu_backward_kernel<N: Size>(
    gate: LinearView<'_, Vector<f32, N>>,
    up: LinearView<'_, Vector<f32, N>>,
    grad: LinearView<'_, Vector<f32, N>>,
    mut d_gate: LinearViewMut<'_, Vector<f32, N>>,
    mut d_up: LinearViewMut<'_, Vector<f32, N>>,
) {
    let i = ABSOLUTE_POS;
    if !d_gate.is_in_bounds(i) {
        terminate!();
    }
    let (g, u, dy) = (gate.read(i), up.read(i), grad.read(i));
    let s = sigmoid(g);
    let one = Vector::new(1.0f32);
    d_up.write(i, dy * g * s);
    d_gate.write(i, dy * u * s * (one + g * (one - s)));
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, Tensor};

    use super::super::tests::{assert_close, wgpu_or_skip};
    use super::swiglu;

    /// Values and the gradients of both inputs against burn's operations, for a row-major pair
    /// (four elements a thread) and a gate that is a transposed view (one at a time).
    #[test]
    fn the_kernel_matches_burns_operations() {
        let Some(host) = wgpu_or_skip() else {
            return;
        };
        let device = host.clone().autodiff();
        let weights = Tensor::<3>::random([3, 37, 64], Distribution::Uniform(-1.0, 1.0), &device);
        let up = Tensor::<3>::random([3, 37, 64], Distribution::Normal(0.0, 3.0), &host);
        for transposed in [false, true] {
            // The gate's leaf is [3, 64, 37] when it is read through a transposed view.
            let gate_shape = if transposed { [3, 64, 37] } else { [3, 37, 64] };
            let gate = Tensor::<3>::random(gate_shape, Distribution::Normal(0.5, 3.0), &host);
            let run = |fused: bool| {
                let leaf = |t: &Tensor<3>| Tensor::<3>::from_data(t.to_data(), &device);
                let (g, u) = (leaf(&gate).require_grad(), leaf(&up).require_grad());
                let g_in = match transposed {
                    true => g.clone().swap_dims(1, 2),
                    false => g.clone(),
                };
                let y = match fused {
                    true => swiglu(g_in, u.clone()),
                    false => silu(g_in) * u.clone(),
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                (y.inner(), g.grad(&grads).unwrap(), u.grad(&grads).unwrap())
            };
            let ((y, dg, du), (y0, dg0, du0)) = (run(true), run(false));
            let what = |w: &str| format!("{w} (transposed gate: {transposed})");
            assert_close(&what("value"), y, y0, 1e-5);
            assert_close(&what("∂gate"), dg, dg0, 1e-5);
            assert_close(&what("∂up"), du, du0, 1e-5);
        }
    }
}
