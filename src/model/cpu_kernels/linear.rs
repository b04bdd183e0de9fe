//! A projection's product x·W (`[rows, in]` · `[in, out]`; the LM head's too) and its backward
//! as calls to gemm that pick the operands' layout. burn-flex's matmul zero-fills each output
//! and then copies it into place, and hands gemm whatever layout the backward's transposed
//! operand has. Here gemm writes into an uninitialized buffer; a product whose right operand is
//! a transposed view (dX = dY·Wᵀ for a weight kept `[in, out]`) is computed column by column,
//! where gemm packs that operand with vector loads instead of one float at a time (measured at
//! 115 rows × 576 → 576: 130 → 230 GFLOP/s), and transposed back. Measured with
//! bench/vs_trl.py: W2 step −12 %, W1 −15 % (its head is a third of its multiply-adds).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

#[backend_extension(Flex, Autodiff)]
pub trait LinearKernel: Backend {
    /// `x` `[rows, in]` · `weight` `[in, out]` (either may be a strided view).
    fn linear_product(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`LinearKernel::linear_product`] on the tensor API; only where [`super::supported_on`].
pub fn linear_product(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as LinearKernel>::linear_product(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

impl LinearKernel for Flex {
    fn linear_product(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        product(&Operand::of(&x), &Operand::of(&weight))
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// The weight (kept when x needs a gradient) and x (kept when the weight needs one).
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (weight, x) = ops.state;
        binary::<Flex, _, _>(
            ops.parents,
            ops.node,
            grads,
            // dX = dY·Wᵀ
            |dy| {
                let weight = weight.as_ref().expect("the weight is kept for dX");
                product(&Operand::of(&dy), &Operand::of(weight).transposed())
            },
            // dW = Xᵀ·dY
            |dy| {
                let x = x.as_ref().expect("x is kept for dW");
                product(&Operand::of(x).transposed(), &Operand::of(&dy))
            },
        );
    }
}

impl<C: CheckpointStrategy> LinearKernel for Autodiff<Flex, C> {
    fn linear_product(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let output = product(
            &Operand::of(x.primitive()),
            &Operand::of(weight.primitive()),
        );
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        match LinearBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    x_tracked.then(|| weight.into_primitive()),
                    weight_tracked.then(|| x.into_primitive()),
                );
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// One operand as gemm reads it: `rows × cols` elements at `data[offset + i·row_stride +
/// j·col_stride]`.
struct Operand<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Operand<'a> {
    fn of(tensor: &'a FlexTensor) -> Self {
        let layout = tensor.layout();
        let shape = layout.shape();
        assert_eq!(shape.num_dims(), 2, "linear_product takes matrices");
        Self {
            data: tensor.storage::<f32>(),
            offset: layout.start_offset(),
            rows: shape[0],
            cols: shape[1],
            row_stride: layout.strides()[0],
            col_stride: layout.strides()[1],
        }
    }

    fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.offset..].as_ptr()
    }
}

/// Products below this many multiply-adds run on one thread (burn-flex's threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// Widest output computed column by column and transposed back.
const MAX_TRANSPOSED_WIDTH: usize = 16 * 1024;

/// `lhs · rhs` as a contiguous `[lhs.rows, rhs.cols]` tensor.
fn product(lhs: &Operand, rhs: &Operand) -> FlexTensor {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "linear_product: inner dimensions");
    let parallelism = if m * n * k >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // A right operand stored column by column is packed fastest when the output is too; a
    // vocabulary-wide output (the LM head's logits) costs more to transpose back than that saves.
    let column_major =
        rhs.row_stride == 1 && rhs.col_stride != 1 && m > 1 && n <= MAX_TRANSPOSED_WIDTH;
    let (dst_col_stride, dst_row_stride) = match column_major {
        true => (m as isize, 1),
        false => (1, n as isize),
    };
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the operands' strides and offsets come from their layouts, which address only
    // their own storage; gemm writes all m·n outputs (`read_dst` false: never reads them)
    // before `set_len`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            dst_col_stride,
            dst_row_stride,
            false,
            lhs.ptr(),
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr(),
            rhs.col_stride,
            rhs.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    if column_major {
        out = transpose(&out, n, m);
    }
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// A row-major `[rows, cols]` matrix as row-major `[cols, rows]`: blocks of output rows on
/// every core, each filled a tile at a time (contiguous writes, reads within cache).
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 16;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * TILE;
            for r0 in (0..rows).step_by(TILE) {
                let r1 = (r0 + TILE).min(rows);
                for (c, out_row) in out.chunks_exact_mut(rows).enumerate() {
                    let column = &data[r0 * cols + c0 + c..];
                    for (i, o) in out_row[r0..r1].iter_mut().enumerate() {
                        *o = column[i * cols];
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::linear_product;

    /// Values and both gradients against burn's matmul, for a weight stored `[in, out]` and
    /// for one that is a transposed view of `[out, in]` (widening projections), at a size on
    /// one thread and one split over threads.
    #[test]
    fn the_kernel_matches_burns_matmul() {
        let device = Device::flex().autodiff();
        let host = Device::flex();
        for (rows, d_in, d_out) in [(7, 13, 5), (117, 203, 389)] {
            for weight_transposed in [false, true] {
                let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &host);
                let w_shape = match weight_transposed {
                    true => [d_out, d_in],
                    false => [d_in, d_out],
                };
                let w = Tensor::<2>::random(w_shape, Distribution::Normal(0.0, 1.0), &host);
                let weights =
                    Tensor::<2>::random([rows, d_out], Distribution::Uniform(-1.0, 1.0), &device);
                let run = |fused: bool| {
                    let x = Tensor::<2>::from_data(x.to_data(), &device).require_grad();
                    let w_stored = Tensor::<2>::from_data(w.to_data(), &device).require_grad();
                    let w_used = match weight_transposed {
                        true => w_stored.clone().transpose(),
                        false => w_stored.clone(),
                    };
                    let out = match fused {
                        true => linear_product(x.clone(), w_used),
                        false => x.clone().matmul(w_used),
                    };
                    let grads = (out.clone() * weights.clone()).sum().backward();
                    let host = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
                    (
                        host(out),
                        host(x.grad(&grads).unwrap()),
                        host(w_stored.grad(&grads).unwrap()),
                    )
                };
                let ((a, b, c), (d, e, f)) = (run(true), run(false));
                super::super::assert_all_close(
                    &["value", "∂x", "∂w"],
                    &[a, b, c],
                    &[d, e, f],
                    2e-5,
                );
            }
        }
    }
}
