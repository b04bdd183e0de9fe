//! Kernels with their own backward for wgpu (CubeCL, natively and in the browser), through
//! burn's backend extensions (`#[backend_extension(Cube, Autodiff)]`). burn 0.22 launches one
//! kernel per tensor operation and its autodiff one or more per operation's backward, so a
//! small model's step on wgpu is mostly launches (~650 for the built-in demo's 2 layers, 6300
//! for SmolLM2-135M with LoRA). Each kernel here replaces a chain of element-wise operations
//! with one launch forward and one backward. They apply only where [`supported_on`] says so;
//! other backends compute the same formulas with burn's operations, and the tests hold the two
//! to each other on the wgpu device.
//!
//! To add one: as in `cpu_kernels/` (a trait, its `Wgpu` impl, its `Autodiff<Wgpu, C>` impl
//! with a `Backward`, a tensor-API wrapper, a test against the composed operations, values
//! and gradients), with `#[cube(launch_unchecked)]` kernels that read their inputs through
//! [`LinearView`]s (any strides) and write fresh row-major outputs.

pub mod rotary;
pub mod swiglu;

use burn::backend::DispatchDevice;
use burn::backend::wgpu::CubeTensor;
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::cubecl::std::tensor::layout::linear::LinearViewLaunch;
use burn::tensor::{DType, Device, Shape};

pub use burn::cubecl::std::tensor::layout::linear::{LinearView, LinearViewMut};

/// Whether tensors on `device` run on wgpu, where these kernels apply.
pub fn supported_on(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Cube(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Cube(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A new row-major `f32` tensor of `shape` on `like`'s device (its contents undefined).
pub(crate) fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let handle = like.client.empty(shape.num_elements() * size_of::<f32>());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

/// How an element-wise kernel over `tensors` (of `elements` each) is launched: four elements
/// a thread when every tensor is row-major and the count allows, one otherwise.
pub(crate) struct Elementwise {
    pub cube_dim: CubeDim,
    pub cube_count: CubeCount,
    pub vector_size: usize,
}

impl Elementwise {
    fn new(tensors: &[&CubeTensor], elements: usize) -> Self {
        let vector_size = if elements.is_multiple_of(4) && tensors.iter().all(|t| t.is_contiguous())
        {
            4
        } else {
            1
        };
        Self::with_vector_size(&tensors[0].client, elements, vector_size)
    }

    /// `elements / vector_size` threads, `vector_size` elements each.
    pub(crate) fn with_vector_size(client: &Client, elements: usize, vector_size: usize) -> Self {
        let units = elements / vector_size;
        let cube_dim = CubeDim::new(client, units);
        let cube_count = cubecl::calculate_cube_count_elemwise(client, units, cube_dim);
        Self {
            cube_dim,
            cube_count,
            vector_size,
        }
    }
}

/// `tensor` as a kernel's linear view (any strides).
fn view(tensor: &CubeTensor) -> LinearViewLaunch {
    tensor.clone().into_linear_view()
}

/// `f32` tensors only: the kernels are written for them.
fn check_f32(tensors: &[&CubeTensor], op: &str) {
    for tensor in tensors {
        assert_eq!(tensor.dtype, DType::F32, "{op}: an f32 tensor");
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use burn::tensor::{Device, Tensor};

    use crate::backend::{BackendChoice, select};

    /// The wgpu device, or `None` without an adapter (a failure under `DPO_REQUIRE_WGPU=1`, as
    /// CI sets it).
    pub fn wgpu_or_skip() -> Option<Device> {
        match select(BackendChoice::Wgpu) {
            Ok(selected) => Some(selected.device),
            Err(e) if std::env::var("DPO_REQUIRE_WGPU").is_ok_and(|v| v == "1") => {
                panic!("DPO_REQUIRE_WGPU=1 but {e}")
            }
            Err(_) => None,
        }
    }

    /// Every element of `a` within `tolerance` (relative, absolute below 1) of `b`'s.
    pub fn assert_close<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>, tolerance: f32) {
        let values = |t: Tensor<D>| t.into_data().try_to_vec::<f32>().unwrap();
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m });
        assert!(
            worst <= tolerance,
            "{what}: off by {worst:e} (tolerance {tolerance:e})"
        );
    }
}
