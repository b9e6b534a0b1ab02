//! Activations quantized on the fly to the block format a weight type's dot product reads
//! (ggml `type_traits_cpu[..].vec_dot_type`): Q8_0 for Q4_0 and Q8_0, Q8_1 for Q4_1, Q8_K for the
//! K-quants, f16 for F16 weights. Rounding follows ggml-cpu's x86 quantizers, so the integer dot
//! products see the same bytes as llama.cpp's.

use half::f16;
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
                for (o, v) in out.chunks_exact_mut(2).zip(x) {
                    o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn q8_block_avx2(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    q8_block_body(x, qs)
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
