//! ggml's block quantizations dequantized to f32, as ggml's reference `dequantize_row_*` do.

use super::reader::GgmlType;

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantize `n` elements stored as `ty` (ggml's reference formulas, in f32 as the `gguf`
/// Python package computes them).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        // d (f16), 32 × i8: x·d
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = f16(&block[0..2]);
                out.extend(block[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        // d (f16), 16 bytes: element j < 16 is the low nibble of byte j, element 16 + j the high
        // one; (q - 8)·d
        GgmlType::Q4_0 => {
            for block in raw.chunks_exact(18) {
                let d = f16(&block[0..2]);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        // d, m (f16), 16 bytes as Q4_0: q·d + m
        GgmlType::Q4_1 => {
            for block in raw.chunks_exact(20) {
                let d = f16(&block[0..2]);
                let m = f16(&block[2..4]);
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        // d (f16), qh (u32: bit j is the fifth bit of element j), 16 bytes as Q4_0: (q - 16)·d
        GgmlType::Q5_0 => {
            for block in raw.chunks_exact(22) {
                let d = f16(&block[0..2]);
                let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                let qs = &block[6..22];
                let q5 = |j: usize, nib: u8| (nib as u32 | (((qh >> j) & 1) << 4)) as i32 - 16;
                out.extend((0..16).map(|j| q5(j, qs[j] & 0x0F) as f32 * d));
                out.extend((0..16).map(|j| q5(16 + j, qs[j] >> 4) as f32 * d));
            }
        }
        // d, m (f16), qh, 16 bytes: q·d + m
        GgmlType::Q5_1 => {
            for block in raw.chunks_exact(24) {
                let d = f16(&block[0..2]);
                let m = f16(&block[2..4]);
                let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                let qs = &block[8..24];
                let q5 = |j: usize, nib: u8| nib as u32 | (((qh >> j) & 1) << 4);
                out.extend((0..16).map(|j| q5(j, qs[j] & 0x0F) as f32 * d + m));
                out.extend((0..16).map(|j| q5(16 + j, qs[j] >> 4) as f32 * d + m));
            }
        }
        // d, dmin (f16), 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes:
        // chunk c of 32 bytes holds sub-block 2c in its low nibbles, 2c + 1 in its high ones;
        // (d·scale)·q - dmin·min
        GgmlType::Q4_K => {
            for block in raw.chunks_exact(144) {
                let (dl, ml) = k_scales(block);
                let qs = &block[16..144];
                for j in 0..8 {
                    let (c, shift) = (j / 2, 4 * (j % 2));
                    out.extend(
                        qs[c * 32..(c + 1) * 32]
                            .iter()
                            .map(|&q| dl[j] * ((q >> shift) & 0x0F) as f32 - ml[j]),
                    );
                }
            }
        }
        // as Q4_K, plus 32 bytes whose bit j is the fifth bit of sub-block j's elements
        GgmlType::Q5_K => {
            for block in raw.chunks_exact(176) {
                let (dl, ml) = k_scales(block);
                let qh = &block[16..48];
                let qs = &block[48..176];
                for j in 0..8 {
                    let (c, shift) = (j / 2, 4 * (j % 2));
                    out.extend((0..32).map(|k| {
                        let q = ((qs[c * 32 + k] >> shift) & 0x0F) | (((qh[k] >> j) & 1) << 4);
                        dl[j] * q as f32 - ml[j]
                    }));
                }
            }
        }
        // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales (one per 16 elements),
        // d (f16): (d·scale)·(q - 32). Element p: half h = p / 128, then within it the low
        // nibbles of 64 bytes, their high nibbles; the 2-bit pairs of 32 bytes, shifted by 2s.
        GgmlType::Q6_K => {
            for block in raw.chunks_exact(210) {
                let (ql, qh) = (&block[0..128], &block[128..192]);
                let scales = &block[192..208];
                let d = f16(&block[208..210]);
                out.extend((0..256).map(|p| {
                    let (h, r) = (p / 128, p % 128);
                    let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
                    let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
                    let q = (low | (high << 4)) as i32 - 32;
                    (d * (scales[p / 16] as i8) as f32) * q as f32
                }));
            }
        }
    }
    debug_assert_eq!(out.len(), n);
    out
}

/// The 8 sub-block scales `d·sc` and mins `dmin·m` of a Q4_K/Q5_K block (`get_scale_min`):
/// bytes 4..16 hold six-bit values, the first four of each in the low bits of bytes 0..4 / 4..8,
/// the last four split between bytes 8..12 (low bits) and the top bits of bytes 0..8.
fn k_scales(block: &[u8]) -> ([f32; 8], [f32; 8]) {
    let d = f16(&block[0..2]);
    let dmin = f16(&block[2..4]);
    let s = &block[4..16];
    let mut dl = [0.0; 8];
    let mut ml = [0.0; 8];
    for i in 0..4 {
        dl[i] = d * (s[i] & 0x3F) as f32;
        ml[i] = dmin * (s[4 + i] & 0x3F) as f32;
        dl[4 + i] = d * ((s[8 + i] & 0x0F) | ((s[i] >> 2) & 0x30)) as f32;
        ml[4 + i] = dmin * ((s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30)) as f32;
    }
    (dl, ml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut block = h(0.5).to_vec();
        let qs: Vec<i8> = (0..32).map(|i| (i * 8 - 128) as i8).collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let out = dequantize(GgmlType::Q8_0, &block, 32);
        for (i, &q) in qs.iter().enumerate() {
            assert_eq!(out[i], q as f32 * 0.5, "element {i}");
        }
        assert_eq!(out[0], -64.0);
        assert_eq!(out[31], 60.0);
    }

    #[test]
    fn q4_0_block() {
        // byte j: low nibble j % 16, high nibble 15 - j % 16
        let mut block = h(0.25).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q4_0, &block, 32);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.25, "low nibble {j}");
            assert_eq!(
                out[16 + j],
                ((15 - j) as f32 - 8.0) * 0.25,
                "high nibble {j}"
            );
        }
    }

    #[test]
    fn q4_1_block() {
        let mut block = h(1.5).to_vec();
        block.extend(h(-3.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        // Two blocks in a row, the second with other scales.
        block.extend(h(-0.5));
        block.extend(h(2.0));
        block.extend([0xF0u8; 16]);
        let out = dequantize(GgmlType::Q4_1, &block, 64);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 1.5 - 3.0);
            assert_eq!(out[16 + j], (15 - j) as f32 * 1.5 - 3.0);
            assert_eq!(out[32 + j], 2.0);
            assert_eq!(out[48 + j], 15.0 * -0.5 + 2.0);
        }
    }

    #[test]
    fn q5_blocks() {
        // fifth bit set for odd elements
        let qh: u32 = 0xAAAA_AAAA;
        let mut q50 = h(0.5).to_vec();
        q50.extend(qh.to_le_bytes());
        q50.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q5_0, &q50, 32);
        for j in 0..16 {
            let lo = j as i32 + if j % 2 == 1 { 16 } else { 0 };
            let hi = (15 - j) as i32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(out[j], (lo - 16) as f32 * 0.5);
            assert_eq!(out[16 + j], (hi - 16) as f32 * 0.5);
        }
        let mut q51 = h(0.5).to_vec();
        q51.extend(h(1.0));
        q51.extend(qh.to_le_bytes());
        q51.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q5_1, &q51, 32);
        for j in 0..16 {
            let lo = j as u32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(out[j], lo as f32 * 0.5 + 1.0);
        }
    }

    /// Deterministic bytes for the K-quant blocks.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// ggml's `get_scale_min_k4`, as written in C.
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// Q4_K and Q5_K against ggml's `dequantize_row_q4_K` / `_q5_K` loops.
    #[test]
    fn q4_k_and_q5_k_blocks() {
        for (ty, size) in [(GgmlType::Q4_K, 144), (GgmlType::Q5_K, 176)] {
            let mut block = noise(size, size as u32);
            block[0..2].copy_from_slice(&h(0.0625));
            block[2..4].copy_from_slice(&h(-0.03125));
            let out = dequantize(ty, &block, 256);
            let (d, min) = (0.0625f32, -0.03125f32);
            let scales = &block[4..16];
            let (qh, mut ql) = if ty == GgmlType::Q5_K {
                (&block[16..48], &block[48..176])
            } else {
                (&block[0..0], &block[16..144])
            };
            let mut want = Vec::new();
            let (mut u1, mut u2) = (1u8, 2u8);
            for is in (0..8).step_by(2) {
                let (sc, m) = scale_min_k4(is, scales);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = scale_min_k4(is + 1, scales);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let high = |l: usize, u: u8| {
                    if !qh.is_empty() && qh[l] & u != 0 {
                        16
                    } else {
                        0
                    }
                };
                want.extend((0..32).map(|l| d1 * ((ql[l] & 0xF) + high(l, u1)) as f32 - m1));
                want.extend((0..32).map(|l| d2 * ((ql[l] >> 4) + high(l, u2)) as f32 - m2));
                ql = &ql[32..];
                u1 <<= 2;
                u2 <<= 2;
            }
            assert_eq!(out, want, "{ty:?}");
        }
    }

    /// Q6_K against ggml's `dequantize_row_q6_K` loop.
    #[test]
    fn q6_k_block() {
        let mut block = noise(210, 7);
        block[208..210].copy_from_slice(&h(0.01));
        let out = dequantize(GgmlType::Q6_K, &block, 256);
        let d = f16(&h(0.01));
        let mut want = vec![0.0f32; 256];
        for half in 0..2 {
            let ql = &block[half * 64..];
            let qh = &block[128 + half * 32..];
            let sc = |i: usize| block[192 + half * 8 + i] as i8 as f32;
            let y = &mut want[half * 128..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc(is) * q1 as f32;
                y[l + 32] = d * sc(is + 2) * q2 as f32;
                y[l + 64] = d * sc(is + 4) * q3 as f32;
                y[l + 96] = d * sc(is + 6) * q4 as f32;
            }
        }
        assert_eq!(out, want);
    }

    #[test]
    fn float_types() {
        let f32s: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f32s, 2), vec![1.5, -2.25]);
        let f16s: Vec<u8> = [h(0.125), h(-7.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &f16s, 2), vec![0.125, -7.0]);
        let bf16s: Vec<u8> = [half::bf16::from_f32(3.0), half::bf16::from_f32(-0.5)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &bf16s, 2), vec![3.0, -0.5]);
    }
}
