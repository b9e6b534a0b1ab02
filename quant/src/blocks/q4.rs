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
