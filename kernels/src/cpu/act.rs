//! Activations quantized on the fly to the block format a weight type's dot product reads
//! (ggml `type_traits_cpu[..].vec_dot_type`): Q8_0 for Q4_0 and Q8_0, Q8_1 for Q4_1, Q8_K for the
//! K-quants, f16 for F16 weights. Rounding follows ggml-cpu's x86 quantizers, so the integer dot
//! products see the same bytes as llama.cpp's.

use half::f16;
use half::slice::HalfFloatSliceExt;
use kiln_quant::GgmlType;

/// The format activations take for a dot product with weights of one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    F32,
    F16,
    /// ggml `block_q8_0`: f16 d, 32 × i8. 34 bytes.
    Q8_0,
    /// ggml `block_q8_1`: f16 d, f16 s = d·Σq, 32 × i8. 36 bytes.
    Q8_1,
    /// ggml `block_q8_K`: f32 d, 256 × i8, 16 × i16 sums of 16. 292 bytes.
    Q8K,
}

impl ActFormat {
    /// The activation format for weights of `ty`, or `None` when Kiln has no CPU dot for it.
    pub fn for_weights(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::F32 => ActFormat::F32,
            GgmlType::F16 => ActFormat::F16,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => ActFormat::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => ActFormat::Q8_1,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => ActFormat::Q8K,
            _ => return None,
        })
    }

    pub fn block(self) -> (usize, usize) {
        match self {
            ActFormat::F32 => (1, 4),
            ActFormat::F16 => (1, 2),
            ActFormat::Q8_0 => (32, 34),
            ActFormat::Q8_1 => (32, 36),
            ActFormat::Q8K => (256, 292),
        }
    }

    /// Bytes of one quantized row of `k` activations (`k` a multiple of the block size).
    pub fn row_bytes(self, k: usize) -> usize {
        let (elems, bytes) = self.block();
        k / elems * bytes
    }

    /// Quantizes one row `x` into `out` (`row_bytes(x.len())` bytes).
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        match self {
            ActFormat::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(x) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            ActFormat::F16 => {
                // By slices of 64: `half` converts a slice with F16C where the CPU has it (the
                // same round-to-nearest-even as one value at a time).
                let mut h = [f16::ZERO; 64];
                for (o, x) in out.chunks_mut(128).zip(x.chunks(64)) {
                    let h = &mut h[..x.len()];
                    h.convert_from_f32_slice(x);
                    for (o, v) in o.chunks_exact_mut(2).zip(h.iter()) {
                        o.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            ActFormat::Q8_0 => {
                for (o, x) in out.chunks_exact_mut(34).zip(x.chunks_exact(32)) {
                    let (d, _) = q8_block(x, &mut o[2..]);
                    o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                }
            }
            ActFormat::Q8_1 => {
                for (o, x) in out.chunks_exact_mut(36).zip(x.chunks_exact(32)) {
                    let (d, sum) = q8_block(x, &mut o[4..]);
                    o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    o[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
                }
            }
            ActFormat::Q8K => {
                for (o, x) in out.chunks_exact_mut(292).zip(x.chunks_exact(256)) {
                    q8k_block(x, o);
                }
            }
        }
    }
}

/// ggml-cpu x86 `quantize_row_q8_0`/`_q8_1`: d = max|x|/127, q = round-half-even(x·127/max).
/// Returns d (f32, before the f16 store) and Σq.
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { q8_block_avx2(x, qs) };
    }
    q8_block_body(x, qs)
}

/// [`q8_block_body`] in AVX2 registers for a whole 32-value block (the same maximum, the same
/// `round_ties_even` of the same products: bit-identical); other lengths take the portable code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn q8_block_avx2(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    use core::arch::x86_64::*;
    if x.len() != 32 || qs.len() < 32 {
        return q8_block_body(x, qs);
    }
    // SAFETY: x holds 32 floats, qs 32 bytes (checked above).
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let a = |i: usize| _mm256_and_ps(v[i], abs);
        let m = _mm256_max_ps(_mm256_max_ps(a(0), a(1)), _mm256_max_ps(a(2), a(3)));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = max / 127.0;
        let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let r = _mm256_round_ps(
                _mm256_mul_ps(v[i], id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            _mm256_cvtps_epi32(r)
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b00_00_00_01)));
        // |q| ≤ 127: the packs do not saturate. Packed per 128-bit lane, the 32-bit groups come
        // out as q0[0..4], q1[0..4], q2[0..4], q3[0..4], q0[4..8], ...: put back in order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, p);
        (d, sum)
    }
}

#[inline(always)]
fn q8_block_body(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let id = if max != 0.0 { 127.0 / max } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        sum += r;
        *q = r as i8 as u8;
    }
    (d, sum)
}

/// ggml `quantize_row_q8_K_ref`: the signed maximum maps to -127, rounding by ggml's
/// `nearest_int` (half away from zero via the 1.5·2²³ trick), clamped at 127.
fn q8k_block(x: &[f32], out: &mut [u8]) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        out.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let qs = &mut out[4..260];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let mut sums = [0i16; 16];
    for (s, chunk) in sums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = chunk.iter().map(|&q| i16::from(q as i8)).sum();
    }
    for (o, s) in out[260..292].chunks_exact_mut(2).zip(sums) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F16 rows (converted by slices) hold each value's own round-to-nearest-even, any length.
    #[test]
    fn f16_rows_round_each_value() {
        let mut x: Vec<f32> = (0..203)
            .map(|i| (i as f32 * 0.7311).sin() * 70000.0)
            .collect();
        x.extend([
            f32::INFINITY,
            -0.0,
            1e-8,
            65519.0,
            65520.0,
            f32::NAN,
            2049.0,
            2051.0,
        ]);
        let mut out = vec![0u8; 2 * x.len()];
        ActFormat::F16.quantize_row(&x, &mut out);
        for (o, v) in out.chunks_exact(2).zip(&x) {
            assert_eq!(
                u16::from_le_bytes([o[0], o[1]]),
                f16::from_f32(*v).to_bits(),
                "{v}"
            );
        }
    }

    /// The AVX2 block quantizer gives the portable one's bytes, d and sum: random blocks, ties,
    /// an all-zero block, one with a single value, negative maxima.
    #[test]
    fn simd_q8_block_is_the_portable_one() {
        let mut s = 12345u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut blocks: Vec<[f32; 32]> = (0..2000)
            .map(|i| std::array::from_fn(|_| rnd() * (1.0 + (i % 7) as f32 * 10.0)))
            .collect();
        blocks.push([0.0; 32]);
        let mut one = [0.0; 32];
        one[17] = -3.0;
        blocks.push(one);
        // Ties: max 127 makes id 1, so halves are exact ties.
        blocks.push(std::array::from_fn(|j| {
            if j == 0 { -127.0 } else { j as f32 - 15.5 }
        }));
        for x in &blocks {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            let r = q8_block(x, &mut a);
            let e = q8_block_body(x, &mut b);
            assert_eq!((r.0.to_bits(), r.1, a), (e.0.to_bits(), e.1, b), "{x:?}");
        }
    }
}
