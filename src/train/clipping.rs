//! Gradient clipping by the global L2 norm, as `torch.nn.utils.clip_grad_norm_` does it (burn's
//! own clipping is per tensor). The coefficient is applied by `Optimizer::step`, which on wgpu
//! folds it into its one kernel per parameter.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::optim::ParamInfo;
use super::wgpu_kernels::squares::partial_squares;

/// A step's gradient clipping: the global L2 norm of the gradients and, when clipping is on, the
/// coefficient the optimizer multiplies every gradient by (both on the device).
pub struct GradClip {
    pub norm: Tensor<1>,
    pub scale: Option<Tensor<1>>,
}

/// The global norm of `params`' gradients before clipping, and the coefficient min(1, max_norm
/// / (norm + 1e-6)) unless `max_norm <= 0` (then it only measures).
pub fn clip_grad_norm(
    params: &[ParamInfo],
    grads: &GradientsParams,
    max_norm: f64,
    device: &Device,
) -> GradClip {
    let matrices: Vec<Tensor<2>> = params
        .iter()
        .filter_map(|p| match p.rank {
            1 => grads.get::<1>(p.id).map(|g| g.unsqueeze()),
            2 => grads.get::<2>(p.id),
            _ => unreachable!("parameters are vectors or matrices"),
        })
        .collect();
    if matrices.is_empty() {
        return GradClip {
            norm: Tensor::zeros([1], device),
            scale: None,
        };
    }
    // One kernel per gradient on wgpu; a square, a sum and a concatenation elsewhere.
    let squares = partial_squares(&matrices).unwrap_or_else(|| {
        Tensor::cat(matrices.into_iter().map(|g| g.square().sum()).collect(), 0)
    });
    let norm = squares.sum().sqrt();
    let scale =
        (max_norm > 0.0).then(|| (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0));
    GradClip { norm, scale }
}

/// `grad` times a one-element `scale` when there is one, as torch's clipping multiplies each
/// gradient in place.
pub fn scaled<const D: usize>(grad: Tensor<D>, scale: Option<&Tensor<1>>) -> Tensor<D> {
    match scale {
        Some(scale) => grad * scale.clone().unsqueeze::<D>(),
        None => grad,
    }
}
