//! Kernels with their own backward for the CPU backend (burn-flex), through burn's backend
//! extensions (`#[backend_extension(Flex, Autodiff)]`). burn-flex runs element-wise operations one
//! at a time, single-threaded, with libm's scalar `expf`, and its autodiff saves and recomputes
//! what each operation needs: a chain of them over a big tensor costs a pass per operation and
//! per backward step. These kernels make one pass forward and one backward, on every core, with
//! a vectorized exponential. They apply only where [`supported_on`] says so; every other backend
//! (wgpu, the browser) computes the same formulas with burn's operations, and the tests hold the
//! two to each other.
//!
//! To add one: a trait with `#[backend_extension(Flex, Autodiff)]`, its `Flex` impl (forward
//! without gradients), its `Autodiff<Flex, C>` impl (the forward, and a `Backward` whose state
//! keeps what the gradient needs), a tensor-API wrapper, and a test against the composed
//! operations (values and gradients).

pub mod gelu;
pub mod label_log_softmax;
pub mod linear;
pub mod rms_norm;
pub mod swiglu;

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::Device;

/// Whether tensors on `device` run on the CPU backend, where these kernels apply.
pub fn supported_on(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// A tensor's elements as a contiguous `f32` slice (copied only when it is a strided view).
fn contiguous_f32(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => slice.into(),
        None => tensor
            .to_contiguous()
            .as_slice::<f32>()
            .expect("a contiguous f32 tensor")
            .to_vec()
            .into(),
    }
}

/// Lanes of the vectorized loops: independent accumulators that the compiler maps onto SIMD
/// registers (a single float accumulator cannot be vectorized without reordering the sum).
const LANES: usize = 16;

/// `fn name(args) -> R` that runs `portable(args)` compiled for AVX2 when the CPU has it (chosen
/// at run time: the crate's baseline is SSE2, where the compiler vectorizes 4 lanes wide at most),
/// as is otherwise. `portable` is `#[inline(always)]` so that it is compiled into both.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:ident;) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            $portable($($arg),*)
        }
    };
}
use avx2_dispatch;

/// e^x for x ≤ 0 (a logit minus its row's max, −|x| for a sigmoid), written so that it
/// vectorizes: Cephes' `expf` (x = n ln 2 + r, |r| ≤ ln 2 / 2, a degree-6 polynomial for e^r, 2^n
/// from the exponent bits), within 2 ulp of libm. Below −87.3 it returns ~1e-38 instead of a
/// subnormal or zero (a difference far below a sum's rounding); NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // n = the low bits of t's mantissa (two's complement within the 2²² offset).
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits(((n + 127) as u32) << 23)
}

/// Tests: every value of each of `fused`'s outputs within `rel` (relative to max(1, |x|)) of
/// `composed`'s, named by `what`.
#[cfg(test)]
fn assert_all_close(what: &[&str], fused: &[Vec<f32>], composed: &[Vec<f32>], rel: f32) {
    for ((what, a), b) in what.iter().zip(fused).zip(composed) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= rel * y.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp_nonpositive;

    #[test]
    fn exp_matches_libm_within_two_ulp() {
        let mut worst = 0i32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (ours, libm) = (exp_nonpositive(x), x.exp());
            worst = worst.max((ours.to_bits() as i32 - libm.to_bits() as i32).abs());
            x += 0.000_37;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }
}
