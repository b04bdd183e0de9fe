//! RMSNorm (Llama, Qwen2), y = x / √(mean(x²) + ε) · γ over the last dimension, in one pass
//! forward and one backward (burn's `RmsNorm` is ~7 operations forward and twice that backward).
//!
//! With r = √(mean(x²) + ε) per row, d the row's length and g = dy·γ:
//! ∂L/∂x_j = (g_j − x_j · Σ_k g_k x_k / (d·r²)) / r;  ∂L/∂γ_j = Σ_rows dy_j · x_j / r.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::nn::RmsNorm;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::contiguous_f32;

#[backend_extension(Flex, Autodiff)]
pub trait RmsNormKernel: Backend {
    /// `x` `[.., d]` normalized over its last dimension and scaled by `gamma` `[d]`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self>;
}

/// `norm.forward(x)` as one kernel; only where [`super::supported_on`].
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RmsNormKernel>::rms_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.epsilon,
    ))
}

impl RmsNormKernel for Flex {
    fn rms_norm(x: FlexTensor, gamma: FlexTensor, epsilon: f64) -> FlexTensor {
        forward(&x, &gamma, epsilon).0
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// The input, γ, and each row's r.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, rms) = ops.state;
        binary::<Flex, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| input_gradient(&x, &gamma, &rms, &dy),
            |dy| gamma_gradient(&x, &rms, &dy),
        );
    }
}

impl<C: CheckpointStrategy> RmsNormKernel for Autodiff<Flex, C> {
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        let (output, rms) = forward(x.primitive(), gamma.primitive(), epsilon);
        match RmsNormBackward
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((x.into_primitive(), gamma.into_primitive(), rms), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

fn forward(x: &FlexTensor, gamma: &FlexTensor, epsilon: f64) -> (FlexTensor, Vec<f32>) {
    let (xs, gamma) = (contiguous_f32(x), contiguous_f32(gamma));
    let d = gamma.len();
    let mut out = vec![0f32; xs.len()];
    let mut rms = vec![0f32; xs.len() / d];
    out.par_chunks_mut(d)
        .zip(rms.par_iter_mut())
        .zip(xs.par_chunks(d))
        .for_each(|((out, r), row)| {
            // The mean of squares accumulated in f64 (a long f32 sum drifts ~1e-4 from
            // transformers' pairwise one), ε added, the root; x / r, then · γ as burn does.
            let mean = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / d as f64;
            *r = (mean + epsilon).sqrt() as f32;
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(gamma.iter()) {
                *o = v / *r * g;
            }
        });
    let shape = x.layout().shape().clone();
    (FlexTensor::from_data(TensorData::new(out, shape)), rms)
}

fn input_gradient(x: &FlexTensor, gamma: &FlexTensor, rms: &[f32], dy: &FlexTensor) -> FlexTensor {
    let (xs, gamma, dy) = (contiguous_f32(x), contiguous_f32(gamma), contiguous_f32(dy));
    let d = gamma.len();
    let mut dx = vec![0f32; xs.len()];
    dx.par_chunks_mut(d)
        .zip(xs.par_chunks(d).zip(dy.par_chunks(d)))
        .zip(rms.par_iter())
        .for_each(|((dx, (x, dy)), &r)| {
            let dot: f64 = x
                .iter()
                .zip(dy)
                .zip(gamma.iter())
                .map(|((&x, &dy), &g)| f64::from(dy * g) * f64::from(x))
                .sum();
            let k = (dot / (d as f64 * f64::from(r) * f64::from(r))) as f32;
            for (((dx, &x), &dy), &g) in dx.iter_mut().zip(x).zip(dy).zip(gamma.iter()) {
                *dx = (dy * g - x * k) / r;
            }
        });
    let shape = x.layout().shape().clone();
    FlexTensor::from_data(TensorData::new(dx, shape))
}

/// Σ over rows of dy·x / r: partial sums over fixed blocks of rows, added in order, so that the
/// result does not depend on how rayon splits the work.
fn gamma_gradient(x: &FlexTensor, rms: &[f32], dy: &FlexTensor) -> FlexTensor {
    const ROWS: usize = 64;
    let (xs, dy) = (contiguous_f32(x), contiguous_f32(dy));
    let d = xs.len() / rms.len().max(1);
    let partials: Vec<Vec<f32>> = xs
        .par_chunks(d * ROWS)
        .zip(dy.par_chunks(d * ROWS))
        .zip(rms.par_chunks(ROWS))
        .map(|((x, dy), rms)| {
            let mut acc = vec![0f32; d];
            for ((x, dy), &r) in x.chunks(d).zip(dy.chunks(d)).zip(rms) {
                for ((a, &x), &dy) in acc.iter_mut().zip(x).zip(dy) {
                    *a += dy * x / r;
                }
            }
            acc
        })
        .collect();
    let mut d_gamma = vec![0f32; d];
    for partial in partials {
        d_gamma.iter_mut().zip(&partial).for_each(|(a, p)| *a += p);
    }
    FlexTensor::from_data(TensorData::new(d_gamma, [d]))
}

#[cfg(test)]
mod tests {
    use burn::nn::RmsNormConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::rms_norm;

    /// Values and the gradients of x and γ against burn's `RmsNorm`.
    #[test]
    fn the_kernel_matches_burns_rms_norm() {
        let device = Device::flex().autodiff();
        let host = Device::flex();
        let (shape, d) = ([2, 37, 96], 96);
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &host);
        let gamma = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.3), &host);
        let weights = Tensor::<3>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
        let run = |fused: bool| {
            let mut norm = RmsNormConfig::new(d).with_epsilon(1e-5).init(&device);
            norm.gamma = norm
                .gamma
                .map(|_| Tensor::from_data(gamma.to_data(), &device).require_grad());
            let x = Tensor::<3>::from_data(x.to_data(), &device).require_grad();
            let y = match fused {
                true => rms_norm(&norm, x.clone()),
                false => norm.forward(x.clone()),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
            let d_gamma = norm.gamma.val().grad(&grads).unwrap();
            [
                host(y),
                host(x.grad(&grads).unwrap()),
                d_gamma.into_data().try_to_vec::<f32>().unwrap(),
            ]
        };
        let (fused, composed) = (run(true), run(false));
        super::super::assert_all_close(&["value", "∂x", "∂γ"], &fused, &composed, 1e-5);
    }
}
