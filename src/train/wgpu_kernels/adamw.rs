//! AdamW's update as one kernel per parameter. Composed, one update launches ~15 kernels (and
//! clipping's coefficient one more): on the built-in demo that was ~280 of every step's ~990
//! launches. The kernel reads the parameter, the gradient, both moments and the clipping
//! coefficient once and writes the parameter and the moments, with the composed update's `f32`
//! operations in its order.

use burn::backend::Wgpu;
use burn::backend::wgpu::CubeTensor;
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::{Shape, Tensor};

use super::dense_f32;
use crate::model::wgpu_kernels::{Elementwise, empty_like};
use crate::train::fused_adamw::AdamWInputs;
use crate::train::optimizer::AdamWScalars;

/// One AdamW update over `param` (burn 0.22's `AdamW::step`; see `adamw_composed`). `first`:
/// no moments yet (`moment_1`/`moment_2` are not read). `scaled`: multiply the gradient by
/// `grad_scale[0]` first. `decay`: multiply the parameter by `decay_factor` first.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel<N: Size>(
    param: &[Vector<f32, N>],
    grad: &[Vector<f32, N>],
    moment_1: &[Vector<f32, N>],
    moment_2: &[Vector<f32, N>],
    grad_scale: &[f32],
    param_out: &mut [Vector<f32, N>],
    moment_1_out: &mut [Vector<f32, N>],
    moment_2_out: &mut [Vector<f32, N>],
    vectors: usize,
    scalars: AdamWScalarArgs,
    #[comptime] first: bool,
    #[comptime] scaled: bool,
    #[comptime] decay: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= vectors {
        terminate!();
    }
    let mut g = grad[i];
    if scaled {
        g *= Vector::new(grad_scale[0]);
    }
    let factor_1 = Vector::new(scalars.factor_1);
    let factor_2 = Vector::new(scalars.factor_2);
    let mut m1 = g * factor_1;
    let mut m2 = (g * g) * factor_2;
    if !first {
        m1 = moment_1[i] * Vector::new(scalars.beta_1) + m1;
        m2 = moment_2[i] * Vector::new(scalars.beta_2) + m2;
    }
    moment_1_out[i] = m1;
    moment_2_out[i] = m2;
    let corrected_1 = m1 / Vector::new(scalars.correction_1);
    let corrected_2 = m2 / Vector::new(scalars.correction_2);
    let delta = corrected_1 / (corrected_2.sqrt() + Vector::new(scalars.epsilon));
    let mut p = param[i];
    if decay {
        p *= Vector::new(scalars.decay_factor);
    }
    param_out[i] = p - delta * Vector::new(scalars.lr);
}

/// The update's scalars as the kernel takes them.
#[derive(CubeLaunch, CubeType)]
struct AdamWScalarArgs {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    lr: f32,
    decay_factor: f32,
}

/// The updated parameter and moments, or the inputs back when the tensors are not dense `f32`
/// tensors on wgpu.
pub fn adamw_step<const D: usize>(
    inputs: AdamWInputs<D>,
    grad_scale: Option<&Tensor<1>>,
    s: &AdamWScalars,
) -> Result<(Tensor<D>, Tensor<1>, Tensor<1>), AdamWInputs<D>> {
    let shape = inputs.0.shape();
    match Kernel::inputs(&inputs, grad_scale) {
        Some(kernel) => Ok(kernel.launch(shape, s)),
        None => Err(inputs),
    }
}

/// The kernel's inputs as CubeCL tensors.
struct Kernel {
    param: CubeTensor,
    grad: CubeTensor,
    moments: Option<(CubeTensor, CubeTensor)>,
    grad_scale: Option<CubeTensor>,
}

impl Kernel {
    /// The inputs' CubeCL tensors when every one is a dense `f32` tensor on wgpu.
    fn inputs<const D: usize>(
        (param, grad, moments): &AdamWInputs<D>,
        grad_scale: Option<&Tensor<1>>,
    ) -> Option<Self> {
        let numel = param.shape().num_elements();
        if numel == 0 || grad.shape() != param.shape() {
            return None;
        }
        Some(Kernel {
            param: dense_f32(param)?,
            grad: dense_f32(grad)?,
            moments: match moments {
                Some((m1, m2)) => Some((dense_f32(m1)?, dense_f32(m2)?)),
                None => None,
            },
            grad_scale: match grad_scale {
                Some(scale) => Some(dense_f32(scale)?),
                None => None,
            },
        })
    }

    fn launch<const D: usize>(
        self,
        shape: Shape,
        s: &AdamWScalars,
    ) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
        let numel = shape.num_elements();
        let client = self.param.client.clone();
        // Buffers, not strided views: four at a time whenever the length allows.
        let vector_size = if numel.is_multiple_of(4) { 4 } else { 1 };
        let launch = Elementwise::with_vector_size(&client, numel, vector_size);
        let vectors = numel / vector_size;
        let (param_out, moment_1_out, moment_2_out) = (
            empty_like(&self.param, shape.clone()),
            empty_like(&self.param, [numel].into()),
            empty_like(&self.param, [numel].into()),
        );
        let first = self.moments.is_none();
        let (moment_1, moment_2) = self
            .moments
            .unwrap_or_else(|| (self.grad.clone(), self.grad.clone()));
        let scaled = self.grad_scale.is_some();
        let grad_scale = self.grad_scale.unwrap_or_else(|| self.grad.clone());
        let scalars = AdamWScalarArgsLaunch::new(
            s.beta_1,
            s.beta_2,
            1.0 - s.beta_1,
            1.0 - s.beta_2,
            s.correction_1,
            s.correction_2,
            s.epsilon,
            s.lr,
            s.decay.unwrap_or(1.0),
        );
        // SAFETY: every buffer holds `numel` f32 (checked dense above, allocated so here), and the
        // kernel touches only indices below `vectors`.
        unsafe {
            adamw_kernel::launch_unchecked(
                &client,
                launch.cube_count,
                launch.cube_dim,
                vector_size,
                self.param.into_buffer_arg(),
                self.grad.into_buffer_arg(),
                moment_1.into_buffer_arg(),
                moment_2.into_buffer_arg(),
                grad_scale.into_buffer_arg(),
                param_out.clone().into_buffer_arg(),
                moment_1_out.clone().into_buffer_arg(),
                moment_2_out.clone().into_buffer_arg(),
                vectors,
                scalars,
                first,
                scaled,
                s.decay.is_some(),
            );
        }
        (
            Tensor::from_primitive::<Wgpu>(param_out),
            Tensor::from_primitive::<Wgpu>(moment_1_out),
            Tensor::from_primitive::<Wgpu>(moment_2_out),
        )
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::adamw_step;
    use crate::model::wgpu_kernels::tests::wgpu_or_skip;
    use crate::train::clipping::scaled;
    use crate::train::optimizer::{AdamWScalars, adamw_composed};

    /// Three steps (the first without moments), with and without decay and a clipping scale,
    /// for a length the kernel reads four at a time and one it reads one by one: the kernel's
    /// parameter and moments against the composed tensor operations on the same device.
    #[test]
    fn one_kernel_update_matches_the_composed_one() {
        let Some(device) = wgpu_or_skip() else {
            return;
        };
        for shape in [[300, 516], [7, 13]] {
            let random = || Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            for (decay, scale) in [(None, None), (Some(0.999f32), Some(0.25f32))] {
                let scale = scale.map(|s| Tensor::<1>::from_floats([s], &device));
                let mut fused = random();
                let mut composed = fused.clone();
                let (mut fused_moments, mut composed_moments) = (None, None);
                for time in 1..=3 {
                    let grad = random().mul_scalar(1e-3);
                    let s = AdamWScalars::at_step(time, decay);
                    let composed_grad = scaled(grad.clone(), scale.as_ref());
                    let (p, m1, m2) =
                        adamw_composed(composed, composed_grad, composed_moments.take(), &s);
                    composed = p;
                    composed_moments = Some((m1, m2));
                    let inputs = (fused, grad, fused_moments.take());
                    let Ok((p, m1, m2)) = adamw_step(inputs, scale.as_ref(), &s) else {
                        panic!("a dense wgpu parameter takes the kernel");
                    };
                    fused = p;
                    fused_moments = Some((m1, m2));
                }
                let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
                let (f1, f2) = fused_moments.unwrap();
                let (c1, c2) = composed_moments.unwrap();
                for (what, a, b) in [
                    ("parameter", values(fused), values(composed)),
                    (
                        "first moment",
                        values(f1.reshape(shape)),
                        values(c1.reshape(shape)),
                    ),
                    (
                        "second moment",
                        values(f2.reshape(shape)),
                        values(c2.reshape(shape)),
                    ),
                ] {
                    // Bit-identical on lavapipe; a GPU's shader compiler may fuse a product and
                    // a sum into one rounding, which the composed kernels cannot.
                    let close = |x: f32, y: f32| (x - y).abs() <= 1e-6 * y.abs();
                    let off = a.iter().zip(&b).filter(|(x, y)| !close(**x, **y)).count();
                    assert_eq!(off, 0, "{shape:?} decay {decay:?}: {what} differs");
                }
            }
        }
    }

    #[test]
    fn a_transposed_parameter_is_given_back() {
        let Some(device) = wgpu_or_skip() else {
            return;
        };
        let param = Tensor::<2>::ones([8, 4], &device).transpose();
        let grad = Tensor::<2>::ones([4, 8], &device);
        let s = AdamWScalars::at_step(1, None);
        assert!(adamw_step((param, grad, None), None, &s).is_err());
    }
}
