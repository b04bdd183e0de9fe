//! AdamW's update of one parameter, as one pass where a backend lets us write it. Composed of
//! tensor operations (`optimizer.rs`), one update is ~15 operations over the parameter, its
//! gradient and both moments. On the CPU backend each is a single-threaded pass (`flex.rs` makes
//! it one parallel pass); on wgpu each is a kernel launch, and a small model's step is mostly
//! launches (`wgpu_kernels/adamw.rs` makes it one kernel, which also applies the clipping
//! coefficient). Each computes the same `f32` operations in the same order as the composed update.

#[cfg(not(target_arch = "wasm32"))]
mod flex;

use burn::tensor::Tensor;

use super::clipping::scaled;
use super::optimizer::{AdamWScalars, adamw_composed};

/// A parameter, its gradient and its moments (`None` before the first step).
pub type AdamWInputs<const D: usize> = (Tensor<D>, Tensor<D>, Option<(Tensor<1>, Tensor<1>)>);

/// burn 0.22's `AdamW::step` of one parameter: the updated parameter and its moments.
/// `grad_scale` (a one-element tensor: the clipping coefficient) multiplies the gradient first.
/// One kernel on wgpu and one parallel pass on the CPU backend when the tensors are dense `f32`;
/// tensor operations otherwise (a transposed projection, another backend).
pub fn adamw_update<const D: usize>(
    inputs: AdamWInputs<D>,
    grad_scale: Option<&Tensor<1>>,
    s: &AdamWScalars,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (param, grad, moments) = match super::wgpu_kernels::adamw::adamw_step(inputs, grad_scale, s)
    {
        Ok(updated) => return updated,
        Err(inputs) => inputs,
    };
    // The scale stays on the device: a tensor operation keeps the step free of reads.
    let grad = scaled(grad, grad_scale);
    #[cfg(not(target_arch = "wasm32"))]
    let (param, grad, moments) = match flex::adamw_step((param, grad, moments), s) {
        Ok(updated) => return updated,
        Err(inputs) => inputs,
    };
    adamw_composed(param, grad, moments, s)
}
