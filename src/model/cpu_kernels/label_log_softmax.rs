//! The label's log-softmax and its statistics in one pass over a row of logits, with its own
//! backward, for the CPU backend (burn-flex). Composed of burn's operations, the same numbers
//! take ~6 passes over `[tokens, vocab]` forward and ~8 backward, every one single-threaded and
//! with libm's scalar `expf` (the exponential is also recomputed in the backward); this kernel
//! makes one max pass and one exp pass forward (rows in parallel, a vectorized `exp`) and one
//! pass backward. Other backends (wgpu) keep the composed operations in `scoring.rs`.
//!
//! Per row, with m the row max, e_v = exp(x_v − m), S = Σ e_v, the output's columns are:
//! 0. log p(label) = (x_label − m) − ln S — the only column with a gradient;
//! 1. x_label − m (≥ 0 exactly when the label is a top-1 token);
//! 2. ln S;
//! 3. the entropy −Σ p ln p = ln S − Σ e_v (x_v − m) / S;
//! 4. ln Σ p_v² = ln Σ e_v² − 2 ln S (WPO's alignment term).
//!
//! A row holding NaN yields NaN in every column (as the composed operations would), so a
//! non-finite model still shows up in the loss.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{DType, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::{LANES, avx2_dispatch, contiguous_f32, exp_nonpositive};

/// Columns of [`label_log_softmax`]'s output.
pub const COLUMNS: usize = 5;

#[backend_extension(Flex, Autodiff)]
pub trait LabelLogSoftmax: Backend {
    /// `logits` `[n, vocab]`, `labels` `[n, 1]` → `[n, COLUMNS]` (see the module's doc).
    fn label_log_softmax(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self>;
}

/// [`LabelLogSoftmax::label_log_softmax`] on the tensor API; only where [`super::supported_on`].
pub fn label_log_softmax(logits: Tensor<2>, labels: Tensor<2, Int>) -> Tensor<2> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as LabelLogSoftmax>::label_log_softmax(
            logits.into_dispatch(),
            labels.into_dispatch(),
        ),
    )
}

impl LabelLogSoftmax for Flex {
    fn label_log_softmax(logits: FlexTensor, labels: FlexTensor) -> FlexTensor {
        forward(&logits, &labels).0
    }
}

/// The backward's state: the logits, the labels and each row's log-sum-exp (m + ln S).
#[derive(Debug)]
struct LabelLogSoftmaxBackward;

impl Backward<Flex, 1> for LabelLogSoftmaxBackward {
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, labels, lse) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            backward(&logits, &labels, &lse, &grad)
        });
    }
}

impl<C: CheckpointStrategy> LabelLogSoftmax for Autodiff<Flex, C> {
    fn label_log_softmax(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        let (output, lse) = forward(logits.primitive(), &labels);
        match LabelLogSoftmaxBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((logits.into_primitive(), labels, lse), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

fn labels_of(labels: &FlexTensor) -> Vec<usize> {
    let labels = labels.to_contiguous();
    match labels.dtype() {
        DType::I64 => labels
            .as_slice::<i64>()
            .expect("contiguous")
            .iter()
            .map(|&l| l as usize)
            .collect(),
        DType::I32 => labels
            .as_slice::<i32>()
            .expect("contiguous")
            .iter()
            .map(|&l| l as usize)
            .collect(),
        other => panic!("label_log_softmax: labels of dtype {other:?} (an i32 or i64 tensor)"),
    }
}

fn forward(logits: &FlexTensor, labels: &FlexTensor) -> (FlexTensor, Vec<f32>) {
    let shape = logits.layout().shape();
    let (n, vocab) = (shape[0], shape[1]);
    let x = contiguous_f32(logits);
    let labels = labels_of(labels);
    assert_eq!(labels.len(), n, "label_log_softmax: one label per row");
    let mut output = vec![0f32; n * COLUMNS];
    let mut lse = vec![0f32; n];
    output
        .par_chunks_mut(COLUMNS)
        .zip(lse.par_iter_mut())
        .zip(x.par_chunks(vocab).zip(labels.par_iter()))
        .for_each(|((out, lse), (row, &label))| {
            let stats = row_stats(row);
            let shifted_label = row[label] - stats.max;
            let log_sum = stats.sum.ln();
            out.copy_from_slice(&[
                shifted_label - log_sum,
                shifted_label,
                log_sum,
                log_sum - stats.weighted / stats.sum,
                stats.sum_sq.ln() - 2.0 * log_sum,
            ]);
            *lse = stats.max + log_sum;
        });
    let output = FlexTensor::from_data(TensorData::new(output, [n, COLUMNS]));
    (output, lse)
}

/// d log p(label) / dx_v = [v = label] − p_v, scaled by the output's column-0 gradient.
fn backward(
    logits: &FlexTensor,
    labels: &FlexTensor,
    lse: &[f32],
    grad: &FlexTensor,
) -> FlexTensor {
    let shape = logits.layout().shape();
    let (n, vocab) = (shape[0], shape[1]);
    let x = contiguous_f32(logits);
    let labels = labels_of(labels);
    let grad = contiguous_f32(grad);
    let mut dx = vec![0f32; n * vocab];
    dx.par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .enumerate()
        .for_each(|(i, (out, row))| {
            let g = grad[i * COLUMNS];
            softmax_times(row, lse[i], -g, out);
            out[labels[i]] += g;
        });
    FlexTensor::from_data(TensorData::new(dx, [n, vocab]))
}

/// One row's max and, with e_v = exp(x_v − max): Σ e, Σ e², Σ e·(x − max).
struct RowStats {
    max: f32,
    sum: f32,
    sum_sq: f32,
    weighted: f32,
}

avx2_dispatch! {
    fn row_stats(row: &[f32]) -> RowStats = row_stats_portable;
}

#[inline(always)]
fn row_stats_portable(row: &[f32]) -> RowStats {
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    for chunk in chunks {
        for k in 0..LANES {
            nan[k] |= chunk[k].is_nan();
            max[k] = if chunk[k] > max[k] { chunk[k] } else { max[k] };
        }
    }
    let mut m = max.into_iter().fold(f32::NEG_INFINITY, f32::max);
    let mut has_nan = nan.contains(&true);
    for &v in tail {
        has_nan |= v.is_nan();
        m = m.max(v);
    }
    if has_nan {
        return RowStats {
            max: f32::NAN,
            sum: f32::NAN,
            sum_sq: f32::NAN,
            weighted: f32::NAN,
        };
    }
    let (mut sum, mut sum_sq, mut weighted) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for chunk in chunks {
        for k in 0..LANES {
            let shifted = chunk[k] - m;
            let e = exp_nonpositive(shifted);
            sum[k] += e;
            sum_sq[k] += e * e;
            weighted[k] += e * shifted;
        }
    }
    let (mut s, mut s2, mut w) = (
        sum.iter().sum::<f32>(),
        sum_sq.iter().sum::<f32>(),
        weighted.iter().sum::<f32>(),
    );
    for &v in tail {
        let shifted = v - m;
        let e = exp_nonpositive(shifted);
        s += e;
        s2 += e * e;
        w += e * shifted;
    }
    RowStats {
        max: m,
        sum: s,
        sum_sq: s2,
        weighted: w,
    }
}

avx2_dispatch! {
    /// `out_v = scale · exp(x_v − lse)`.
    fn softmax_times(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) = softmax_times_portable;
}

#[inline(always)]
fn softmax_times_portable(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = scale * exp_nonpositive(v - lse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_stats_propagate_nan() {
        let mut row = vec![0.5f32; 40];
        row[33] = f32::NAN;
        assert!(row_stats(&row).sum.is_nan());
    }
}
