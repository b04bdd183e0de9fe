//! RMSNorm (Llama, Qwen2), y = x / √(mean(x²) + ε) · γ over the last dimension, on wgpu: the
//! mean of squares by burn's own operations, the rest one kernel forward and two backward
//! (burn's `RmsNorm` is ~6 launches forward and ~15 backward).
//!
//! The mean is left to burn's reduction so that the forward is bit-identical to
//! `RmsNorm::forward`: a row sum in another order moves SmolLM2's logits (30 layers) by more
//! than the 1e-4 its transformers parity test allows (a one-thread-per-row sum did).
//!
//! With r = √(mean(x²) + ε) per row, d the row's length and g = dy·γ:
//! ∂L/∂x_j = (g_j − x_j · Σ_k g_k x_k / (d·r²)) / r;  ∂L/∂γ_j = Σ_rows dy_j · x_j / r.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeTensor;
use burn::backend::{Autodiff, Backend, Wgpu, backend_extension};
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::nn::RmsNorm;
use burn::tensor::{Shape, Tensor};

use super::{Elementwise, LinearView, LinearViewMut, check_f32, empty_like, view};

#[backend_extension(Cube, Autodiff)]
pub trait RmsNormWgpu: Backend {
    /// `x` `[.., d]` normalized over its last dimension and scaled by `gamma` `[d]`, given each
    /// row's mean of squares `mean_square` `[.., 1]` (not differentiated: the backward
    /// accounts for it).
    fn rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean_square: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// `norm.forward(x)`; only where [`super::supported_on`].
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    // As `RmsNorm::forward` computes it (the same two launches), outside the graph.
    let mean_square = x.clone().detach().square().mean_dim(D - 1);
    Tensor::from_dispatch(<burn::backend::Dispatch as RmsNormWgpu>::rms_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        mean_square.into_dispatch(),
        norm.epsilon,
    ))
}

impl RmsNormWgpu for Wgpu {
    fn rms_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        mean_square: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        Norm {
            x,
            gamma,
            mean_square,
            epsilon: epsilon as f32,
        }
        .forward()
    }
}

/// The forward's inputs, which its backward reads again.
#[derive(Debug, Clone)]
struct Norm {
    x: CubeTensor,
    gamma: CubeTensor,
    mean_square: CubeTensor,
    epsilon: f32,
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Wgpu, 2> for RmsNormBackward {
    type State = Norm;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let norm = ops.state;
        let grad = grads.consume::<Wgpu>(&ops.node);
        let [x_node, gamma_node] = ops.parents;
        if let Some(node) = gamma_node {
            grads.register::<Wgpu>(node.id, norm.gamma_gradient(&grad));
        }
        if let Some(node) = x_node {
            grads.register::<Wgpu>(node.id, norm.input_gradient(&grad));
        }
    }
}

impl<C: CheckpointStrategy> RmsNormWgpu for Autodiff<Wgpu, C> {
    fn rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean_square: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let norm = Norm {
            x: x.primitive().clone(),
            gamma: gamma.primitive().clone(),
            mean_square: mean_square.into_primitive(),
            epsilon: epsilon as f32,
        };
        let output = norm.forward();
        match RmsNormBackward
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(norm, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

impl Norm {
    /// Rows and row length.
    fn rows(&self) -> (usize, usize) {
        check_f32(&[&self.x, &self.gamma, &self.mean_square], "rms_norm");
        let shape = self.x.meta.shape();
        let d = *shape
            .as_slice()
            .last()
            .expect("rms_norm: a tensor of rank 1 or more");
        let rows = shape.num_elements() / d.max(1);
        assert!(
            self.gamma.meta.shape().as_slice() == [d]
                && self.mean_square.meta.shape().num_elements() == rows,
            "rms_norm: γ of the rows' length {d} and one mean square a row"
        );
        (rows, d)
    }

    fn forward(&self) -> CubeTensor {
        let (rows, d) = self.rows();
        let out = empty_like(&self.x, self.x.meta.shape().clone());
        let launch = Elementwise::with_vector_size(&self.x.client, rows * d, 1);
        // SAFETY: the views carry their tensors' shapes and strides; threads stop at rows·d,
        // and read row i / d of the means and element i % d of γ.
        unsafe {
            rms_norm_forward_kernel::launch_unchecked(
                &self.x.client,
                launch.cube_count,
                launch.cube_dim,
                view(&self.x),
                view(&self.gamma),
                view(&self.mean_square),
                view(&out),
                d,
                self.epsilon,
            );
        }
        out
    }

    fn input_gradient(&self, grad: &CubeTensor) -> CubeTensor {
        let (rows, d) = self.rows();
        check_f32(&[grad], "rms_norm backward");
        let dx = empty_like(&self.x, self.x.meta.shape().clone());
        let launch = Elementwise::with_vector_size(&self.x.client, rows, 1);
        // SAFETY: as in `forward`; a thread takes one row, below `rows`.
        unsafe {
            rms_norm_input_gradient_kernel::launch_unchecked(
                &self.x.client,
                launch.cube_count,
                launch.cube_dim,
                view(&self.x),
                view(&self.gamma),
                view(&self.mean_square),
                view(grad),
                view(&dx),
                rows,
                d,
                self.epsilon,
            );
        }
        dx
    }

    fn gamma_gradient(&self, grad: &CubeTensor) -> CubeTensor {
        let (rows, d) = self.rows();
        let d_gamma = empty_like(&self.x, Shape::from([d]));
        let launch = Elementwise::with_vector_size(&self.x.client, d, 1);
        // SAFETY: as in `forward`; a thread takes one column, below `d`.
        unsafe {
            rms_norm_gamma_gradient_kernel::launch_unchecked(
                &self.x.client,
                launch.cube_count,
                launch.cube_dim,
                view(&self.x),
                view(&self.mean_square),
                view(grad),
                view(&d_gamma),
                rows,
                d,
                self.epsilon,
            );
        }
        d_gamma
    }
}

/// x / √(mean + ε) · γ, in the order `RmsNorm::forward` computes it.
#[cube(launch_unchecked)]
fn rms_norm_forward_kernel(
    x: LinearView<'_, f32>,
    gamma: LinearView<'_, f32>,
    mean_square: LinearView<'_, f32>,
    mut out: LinearViewMut<'_, f32>,
    d: usize,
    epsilon: f32,
) {
    let i = ABSOLUTE_POS;
    if !out.is_in_bounds(i) {
        terminate!();
    }
    let r = (mean_square.read(i / d) + epsilon).sqrt();
    out.write(i, x.read(i) / r * gamma.read(i % d));
}

/// One thread per row: Σ g·x, then the row's ∂x.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_input_gradient_kernel(
    x: LinearView<'_, f32>,
    gamma: LinearView<'_, f32>,
    mean_square: LinearView<'_, f32>,
    grad: LinearView<'_, f32>,
    mut dx: LinearViewMut<'_, f32>,
    rows: usize,
    d: usize,
    epsilon: f32,
) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let start = row * d;
    let r = (mean_square.read(row) + epsilon).sqrt();
    let mut dot = 0.0f32;
    for k in 0..d {
        dot += grad.read(start + k) * gamma.read(k) * x.read(start + k);
    }
    let scale = dot / (d as f32 * r * r);
    for k in 0..d {
        let g = grad.read(start + k) * gamma.read(k);
        dx.write(start + k, (g - x.read(start + k) * scale) / r);
    }
}

/// One thread per column: Σ over rows of dy·x / r.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_gamma_gradient_kernel(
    x: LinearView<'_, f32>,
    mean_square: LinearView<'_, f32>,
    grad: LinearView<'_, f32>,
    mut d_gamma: LinearViewMut<'_, f32>,
    rows: usize,
    d: usize,
    epsilon: f32,
) {
    let column = ABSOLUTE_POS;
    if column >= d {
        terminate!();
    }
    let mut sum = 0.0f32;
    for row in 0..rows {
        let at = row * d + column;
        let r = (mean_square.read(row) + epsilon).sqrt();
        sum += grad.read(at) * (x.read(at) / r);
    }
    d_gamma.write(column, sum);
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::nn::RmsNormConfig;
    use burn::tensor::{Distribution, Tensor};

    use super::super::tests::{assert_close, wgpu_or_skip};
    use super::rms_norm;

    /// Values (bit for bit) and the gradients of x and γ against burn's `RmsNorm`, for a
    /// row-major x and for one read through a transposed view.
    #[test]
    fn the_kernel_matches_burns_rms_norm() {
        let Some(host) = wgpu_or_skip() else {
            return;
        };
        let device = host.clone().autodiff();
        let d = 96;
        let gamma = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.3), &host);
        let weights = Tensor::<3>::random([2, 37, d], Distribution::Uniform(-1.0, 1.0), &device);
        for transposed in [false, true] {
            let leaf_shape = if transposed { [2, d, 37] } else { [2, 37, d] };
            let x = Tensor::<3>::random(leaf_shape, Distribution::Normal(0.5, 2.0), &host);
            let run = |fused: bool| {
                let mut norm = RmsNormConfig::new(d).with_epsilon(1e-5).init(&device);
                norm.gamma = norm
                    .gamma
                    .map(|_| Tensor::from_data(gamma.to_data(), &device).require_grad());
                let leaf = Tensor::<3>::from_data(x.to_data(), &device).require_grad();
                let input = match transposed {
                    true => leaf.clone().swap_dims(1, 2),
                    false => leaf.clone(),
                };
                let y = match fused {
                    true => rms_norm(&norm, input),
                    false => norm.forward(input),
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                let d_gamma = norm.gamma.val().grad(&grads).unwrap();
                (y.inner(), leaf.grad(&grads).unwrap(), d_gamma)
            };
            let ((y, dx, dg), (y0, dx0, dg0)) = (run(true), run(false));
            let what = |w: &str| format!("{w} (transposed {transposed})");
            assert_close(&what("value"), y, y0, 0.0);
            assert_close(&what("∂x"), dx, dx0, 1e-5);
            assert_close(&what("∂γ"), dg, dg0, 1e-5);
        }
    }
}
