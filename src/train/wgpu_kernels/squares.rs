//! The sum of squares of many tensors (clipping's global norm) as one kernel per tensor.
//! Composed, each tensor costs a square, a zero-filled output, a sum and a slot of a
//! concatenation: ~500 launches a step for LoRA's 120 adapter matrices on SmolLM2. Here each
//! tensor's threads write their partial sums into one shared buffer, which one sum adds up.

use burn::backend::Wgpu;
use burn::backend::wgpu::CubeTensor;
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::Tensor;

use super::dense_f32;
use crate::model::wgpu_kernels::{Elementwise, empty_like};

/// Threads a tensor of `len` elements gets: ~64 elements each, at most 64 Ki threads.
fn threads_for(len: usize) -> usize {
    len.div_ceil(64).clamp(1, 64 * 1024)
}

/// A buffer whose sum is the sum of the squares of every element of `tensors`, or `None`
/// unless each is a dense `f32` tensor on wgpu.
pub fn partial_squares(tensors: &[Tensor<2>]) -> Option<Tensor<1>> {
    let cubes: Vec<CubeTensor> = tensors.iter().map(dense_f32).collect::<Option<_>>()?;
    let first = cubes.first()?;
    let client = first.client.clone();
    let lens: Vec<usize> = tensors.iter().map(|t| t.shape().num_elements()).collect();
    let total: usize = lens.iter().map(|&len| threads_for(len)).sum();
    let partials = empty_like(first, [total].into());
    let mut offset = 0;
    for (cube, len) in cubes.into_iter().zip(lens) {
        let threads = threads_for(len);
        let launch = Elementwise::with_vector_size(&client, threads, 1);
        // SAFETY: `cube` holds `len` f32 (dense, checked above) and the kernel reads below
        // `len`; it writes `partials` at `offset..offset + threads`, inside its `total`.
        unsafe {
            partial_squares_kernel::launch_unchecked(
                &client,
                launch.cube_count,
                launch.cube_dim,
                cube.into_buffer_arg(),
                partials.clone().into_buffer_arg(),
                len,
                offset,
                threads,
            );
        }
        offset += threads;
    }
    Some(Tensor::from_primitive::<Wgpu>(partials))
}

/// Thread `t` of `threads` writes the sum of `values[i]²` over i = t, t + threads, … below
/// `len` to `partials[offset + t]`.
#[cube(launch_unchecked)]
fn partial_squares_kernel(
    values: &[f32],
    partials: &mut [f32],
    len: usize,
    offset: usize,
    threads: usize,
) {
    let thread = ABSOLUTE_POS;
    if thread >= threads {
        terminate!();
    }
    let mut sum = 0.0f32;
    for i in range_stepped(thread, len, threads) {
        let value = values[i];
        sum += value * value;
    }
    partials[offset + thread] = sum;
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::partial_squares;
    use crate::model::wgpu_kernels::tests::wgpu_or_skip;

    /// Lengths around a thread's share (64) and past the thread cap (64 Ki threads): the sum of
    /// the partial sums against the composed squares and sums, in f64 on the host.
    #[test]
    fn partial_sums_add_up_to_the_sum_of_squares() {
        let Some(device) = wgpu_or_skip() else {
            return;
        };
        let shapes = [
            [1, 1],
            [1, 63],
            [1, 64],
            [1, 65],
            [7, 13],
            [300, 517],
            [2048, 2100],
        ];
        let tensors: Vec<Tensor<2>> = shapes
            .iter()
            .map(|&shape| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device))
            .collect();
        let host: f64 = tensors
            .iter()
            .flat_map(|t| t.to_data().try_to_vec::<f32>().unwrap())
            .map(|v| f64::from(v) * f64::from(v))
            .sum();
        let Some(partials) = partial_squares(&tensors) else {
            panic!("dense wgpu tensors take the kernel");
        };
        let total = f64::from(partials.sum().into_scalar::<f32>());
        assert!(
            (total - host).abs() <= 1e-5 * host,
            "sum of squares {total} vs {host} on the host"
        );
        // A transposed view is not dense: the composed path takes it.
        assert!(partial_squares(&[tensors[4].clone().transpose()]).is_none());
    }
}
