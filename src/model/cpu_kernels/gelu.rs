//! GPT-2's GELU (the tanh approximation, `gelu_new`) in one pass forward and one backward.
//! Composed, it is ~7 operations (a cube, products, a clamp, libm's scalar `tanhf`) and their
//! backward passes over `[tokens, 4·d]` per layer.
//!
//! With a = √(2/π)(x + 0.044715x³) clamped to ±10 and t = tanh(a): y = x(1 + t)/2;
//! dy/dx = (1 + t)/2 + x(1 − t²)·√(2/π)(1 + 3·0.044715x²)/2 (the clamp passes no gradient
//! outside ±10, where 1 − t² is 0 in f32 anyway).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{avx2_dispatch, contiguous_f32, exp_nonpositive};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CUBIC: f32 = 0.044_715;
const CHUNK: usize = 1 << 14;

#[backend_extension(Flex, Autodiff)]
pub trait GeluTanh: Backend {
    /// `gelu_new`, element-wise.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`GeluTanh::gelu_tanh`] on the tensor API; only where [`super::supported_on`].
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as GeluTanh>::gelu_tanh(
        x.into_dispatch(),
    ))
}

impl GeluTanh for Flex {
    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        map(&x, None)
    }
}

#[derive(Debug)]
struct GeluTanhBackward;

impl Backward<Flex, 1> for GeluTanhBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| map(&x, Some(&dy)));
    }
}

impl<C: CheckpointStrategy> GeluTanh for Autodiff<Flex, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let output = map(x.primitive(), None);
        match GeluTanhBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(x.into_primitive(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The activation (`dy` `None`) or `dy` times its derivative, element-wise over `x`.
fn map(x: &FlexTensor, dy: Option<&FlexTensor>) -> FlexTensor {
    let xs = contiguous_f32(x);
    let dy = dy.map(contiguous_f32);
    let mut out = vec![0f32; xs.len()];
    match &dy {
        None => out
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(out, x)| chunk(out, x, None)),
        Some(dy) => out
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(out, (x, dy))| chunk(out, x, Some(dy))),
    }
    FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
}

avx2_dispatch! {
    fn chunk(out: &mut [f32], x: &[f32], dy: Option<&[f32]>) = chunk_portable;
}

#[inline(always)]
fn chunk_portable(out: &mut [f32], x: &[f32], dy: Option<&[f32]>) {
    match dy {
        None => {
            for (y, &x) in out.iter_mut().zip(x) {
                *y = 0.5 * x * (1.0 + tanh(inner(x)));
            }
        }
        Some(dy) => {
            for ((d, &x), &dy) in out.iter_mut().zip(x).zip(dy) {
                let t = tanh(inner(x));
                let da = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
                *d = dy * 0.5 * ((1.0 + t) + x * (1.0 - t * t) * da);
            }
        }
    }
}

/// √(2/π)(x + 0.044715x³), clamped to ±10 as the composed operations do.
#[inline(always)]
fn inner(x: f32) -> f32 {
    (SQRT_2_OVER_PI * (x + CUBIC * x * x * x)).clamp(-10.0, 10.0)
}

/// tanh(a) = sign(a)·(1 − e^{−2|a|}) / (1 + e^{−2|a|}).
#[inline(always)]
fn tanh(a: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * a.abs());
    ((1.0 - e) / (1.0 + e)).copysign(a)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::gelu_tanh;
    use crate::model::attention::gelu_tanh_composed as composed;

    /// Values and the gradient against the composed operations, over a range that reaches the
    /// clamp.
    #[test]
    fn the_kernel_matches_the_composed_operations() {
        let device = Device::flex().autodiff();
        let host = Device::flex();
        let shape = [2, 53, 301];
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 4.0), &host);
        let weights = Tensor::<3>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(x.to_data(), &device).require_grad();
            let y = match fused {
                true => gelu_tanh(x.clone()),
                false => composed(x.clone()),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
            [host(y), host(x.grad(&grads).unwrap())]
        };
        let (fused, composed) = (run(true), run(false));
        super::super::assert_all_close(&["value", "∂x"], &fused, &composed, 2e-6);
    }
}
