//! Q4_0 and Q4_1: blocks of 32 four-bit values, low nibbles are elements 0..16 and high nibbles
//! 16..32 (ggml `dequantize_row_q4_0` / `_q4_1`).

use half::f16;

/// ggml `block_q4_0`: `y = d * (q - 8)`; 4.5 bits per weight.
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// ggml `block_q4_1`: `y = d * q + m`; 5 bits per weight.
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

pub(super) fn dequantize_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = super::f16_at(block, 0);
        for (j, &q) in block[2..].iter().enumerate() {
            y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
            y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

pub(super) fn dequantize_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = super::f16_at(block, 0);
        let m = super::f16_at(block, 2);
        for (j, &q) in block[4..].iter().enumerate() {
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

/// ggml `quantize_row_q4_0_ref`: `d = max / -8` (max: the value of largest magnitude, first if
/// tied), `q = min(trunc(x / d + 8.5), 15)`.
pub(super) fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let max = super::signed_absmax(x);
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            block[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `q = min(trunc((x - min) / d + 0.5), 15)`.
pub(super) fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(20)) {
        let (min, max) = super::min_max(x);
        let d = (max - min) / 15.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
        for j in 0..16 {
            block[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}
