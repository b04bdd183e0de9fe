//! The optimizer step's kernels on wgpu (CubeCL; natively and in the browser). Composed of
//! tensor operations, clipping and AdamW launch ~20 kernels per parameter, and a small model's
//! step (the built-in demo; LoRA's 120 adapter matrices on SmolLM2) is mostly launches. These
//! take one kernel per parameter each, with the composed operations' `f32` arithmetic; every
//! other backend, and tensors that are not dense `f32`, keep the composed path.

pub mod adamw;
pub mod squares;

use burn::backend::Wgpu;
use burn::backend::wgpu::CubeTensor;
use burn::tensor::{DType, Tensor};

/// `tensor`'s CubeCL tensor when it is a dense `f32` tensor on wgpu (row-major, not a strided
/// view; its buffer may be longer than it, so kernels stop at its length).
fn dense_f32<const D: usize>(tensor: &Tensor<D>) -> Option<CubeTensor> {
    let cube = tensor.clone().try_into_primitive::<Wgpu>().ok()?;
    (cube.dtype == DType::F32 && cube.is_contiguous() && !cube.meta.is_tiled()).then_some(cube)
}
