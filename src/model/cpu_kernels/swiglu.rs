//! Llama's gated MLP activation, silu(gate) · up, in one pass forward and one backward. Composed,
//! it is a sigmoid (libm `expf`), two products, and in the backward the products' and the
//! sigmoid's own passes (~10 over `[tokens, intermediate]` per layer, single-threaded).
//!
//! With s = σ(g): out = g·s·u; ∂out/∂u = g·s; ∂out/∂g = u·s·(1 + g·(1 − s)).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{avx2_dispatch, contiguous_f32, exp_nonpositive};

#[backend_extension(Flex, Autodiff)]
pub trait SwiGlu: Backend {
    /// silu(`gate`) · `up`, element-wise (the same shapes).
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`SwiGlu::swiglu`] on the tensor API; only where [`super::supported_on`].
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as SwiGlu>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

impl SwiGlu for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        forward(&gate, &up)
    }
}

#[derive(Debug)]
struct SwiGluBackward;

impl Backward<Flex, 2> for SwiGluBackward {
    /// The gate and the up projection's output.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        binary::<Flex, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| gradient(&gate, &up, &grad, Wrt::Gate),
            |grad| gradient(&gate, &up, &grad, Wrt::Up),
        );
    }
}

impl<C: CheckpointStrategy> SwiGlu for Autodiff<Flex, C> {
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

/// σ(g) from an exponential of a non-positive number (no overflow for either sign).
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    let s = 1.0 / (1.0 + e);
    if g >= 0.0 { s } else { e * s }
}

fn output_like(tensor: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, tensor.layout().shape().clone()))
}

const CHUNK: usize = 1 << 14;

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (g, u) = (contiguous_f32(gate), contiguous_f32(up));
    assert_eq!(g.len(), u.len(), "swiglu: gate and up of the same shape");
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(out, (g, u))| forward_chunk(out, g, u));
    output_like(gate, out)
}

avx2_dispatch! {
    fn forward_chunk(out: &mut [f32], g: &[f32], u: &[f32]) = forward_chunk_portable;
}

#[inline(always)]
fn forward_chunk_portable(out: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

#[derive(Clone, Copy)]
enum Wrt {
    Gate,
    Up,
}

/// `grad` · ∂out/∂gate or ∂out/∂up.
fn gradient(gate: &FlexTensor, up: &FlexTensor, grad: &FlexTensor, wrt: Wrt) -> FlexTensor {
    let (g, u, grad) = (
        contiguous_f32(gate),
        contiguous_f32(up),
        contiguous_f32(grad),
    );
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|((out, (g, u)), grad)| gradient_chunk(out, g, u, grad, wrt));
    output_like(gate, out)
}

avx2_dispatch! {
    fn gradient_chunk(out: &mut [f32], g: &[f32], u: &[f32], grad: &[f32], wrt: Wrt) = gradient_chunk_portable;
}

#[inline(always)]
fn gradient_chunk_portable(out: &mut [f32], g: &[f32], u: &[f32], grad: &[f32], wrt: Wrt) {
    let terms = out.iter_mut().zip(g).zip(u).zip(grad);
    match wrt {
        Wrt::Gate => terms.for_each(|(((d, &g), &u), &dy)| {
            let s = sigmoid(g);
            *d = dy * u * s * (1.0 + g * (1.0 - s));
        }),
        Wrt::Up => terms.for_each(|(((d, &g), _), &dy)| *d = dy * g * sigmoid(g)),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::swiglu;

    /// Values and both gradients against silu(gate) · up in burn's operations, over a range of
    /// gates wide enough for both tails of the sigmoid.
    #[test]
    fn the_kernel_matches_the_composed_operations() {
        let device = Device::flex().autodiff();
        let host = Device::flex();
        let shape = [3, 41, 389];
        let gate = Tensor::<3>::random(shape, Distribution::Normal(0.0, 6.0), &host);
        let up = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &host);
        let weights = Tensor::<3>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
        let run = |fused: bool| {
            let g = Tensor::<3>::from_data(gate.to_data(), &device).require_grad();
            let u = Tensor::<3>::from_data(up.to_data(), &device).require_grad();
            let out = match fused {
                true => swiglu(g.clone(), u.clone()),
                false => silu(g.clone()) * u.clone(),
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
            [out, g.grad(&grads).unwrap(), u.grad(&grads).unwrap()].map(host)
        };
        let (fused, composed) = (run(true), run(false));
        super::super::assert_all_close(&["value", "∂gate", "∂up"], &fused, &composed, 2e-6);
    }
}
