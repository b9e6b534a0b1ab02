//! The K-quants: 256-element super-blocks with per-sub-block scales (ggml `ggml-common.h`
//! `block_q2_K` … `block_q8_K`, `dequantize_row_q*_K`). The arithmetic order follows gguf-py's
//! `gguf.quants`, which is bit-exact with ggml.

use half::f16;

pub const QK_K: usize = 256;

/// ggml `block_q2_K`: 16 sub-blocks of 16, 4-bit scale and min each; 2.625 bits per weight.
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// ggml `block_q3_K`: 16 sub-blocks of 16, 6-bit signed scales; 3.4375 bits per weight.
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// ggml `block_q4_K`: 8 sub-blocks of 32, 6-bit scale and min each; 4.5 bits per weight.
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// ggml `block_q5_K`: as Q4_K plus a fifth bit per weight; 5.5 bits per weight.
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// ggml `block_q6_K`: 16 sub-blocks of 16, 8-bit signed scales; 6.5625 bits per weight.
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// ggml `block_q8_K` (the activation format of K-quant dot products): f32 scale, 256 signed
/// bytes, and the sums of each 16; 9.125 bits per weight.
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

use super::f16_at;

pub(super) fn dequantize_q2_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(84).zip(out.chunks_exact_mut(QK_K)) {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let d = f16_at(b, 80);
        let dmin = f16_at(b, 82);
        for (e, y) in y.iter_mut().enumerate() {
            let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
            let q = (qs[half * 32 + l] >> (2 * shift)) & 3;
            let sc = scales[e / 16];
            let dl = d * f32::from(sc & 0x0F);
            let ml = dmin * f32::from(sc >> 4);
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// The 16 six-bit Q3_K scales, minus 32.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let low = (s[j % 8] >> (4 * (j / 8))) & 0x0F;
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        ((low | (high << 4)) as i8) - 32
    })
}

pub(super) fn dequantize_q3_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(110).zip(out.chunks_exact_mut(QK_K)) {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let scales = q3_k_scales(&b[96..108]);
        let d = f16_at(b, 108);
        for (e, y) in y.iter_mut().enumerate() {
            let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = i32::from((qs[half * 32 + l] >> (2 * shift)) & 3);
            let high_clear = i32::from(((hmask[l] >> (e / 32)) & 1) ^ 1);
            let dl = d * f32::from(scales[e / 16]);
            *y = dl * (low - (high_clear << 2)) as f32;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes (ggml `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub(super) fn dequantize_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (scales, qs) = (&b[4..16], &b[16..]);
        for (sub, y) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(sub, scales);
            let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
            let (chunk, nibble) = (sub / 2, sub % 2);
            for (l, y) in y.iter_mut().enumerate() {
                let q = (qs[chunk * 32 + l] >> (4 * nibble)) & 0x0F;
                *y = dl * f32::from(q) - ml;
            }
        }
    }
}

pub(super) fn dequantize_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..]);
        for (sub, y) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(sub, scales);
            let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
            let (chunk, nibble) = (sub / 2, sub % 2);
            for (l, y) in y.iter_mut().enumerate() {
                let low = (qs[chunk * 32 + l] >> (4 * nibble)) & 0x0F;
                let high = (qh[l] >> sub) & 1;
                *y = dl * f32::from(low | (high << 4)) - ml;
            }
        }
    }
}

pub(super) fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for (e, y) in y.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
            let q = ((low | (high << 4)) as i8) - 32;
            let dl = d * f32::from(scales[e / 16] as i8);
            *y = dl * f32::from(q);
        }
    }
}

pub(super) fn dequantize_q8_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(292).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (y, &q) in y.iter_mut().zip(&b[4..260]) {
            *y = d * f32::from(q as i8);
        }
    }
}

#[cfg(test)]
mod tests {
    /// gguf-py has no Q8_K codec; ggml `dequantize_row_q8_K` is `y = d * q`.
    #[test]
    fn q8_k_is_scale_times_byte() {
        let mut block = vec![0u8; 292];
        block[..4].copy_from_slice(&0.5f32.to_le_bytes());
        for (i, b) in block[4..260].iter_mut().enumerate() {
            *b = (i as i8).wrapping_sub(100) as u8;
        }
        let mut y = vec![0.0f32; 256];
        super::dequantize_q8_k(&block, &mut y);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * f32::from((i as i8).wrapping_sub(100)), "{i}");
        }
    }
}
