//! Q5_0 and Q5_1: 32 five-bit values; the low nibbles pack like Q4 (elements j and j + 16 share
//! a byte), the fifth bits sit in a little-endian u32 `qh`, bit j for element j.

use half::f16;

/// ggml `block_q5_0`: `y = d * (q - 16)`; 5.5 bits per weight.
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// ggml `block_q5_1`: `y = d * q + m`; 6 bits per weight.
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// The 32 five-bit values of a block from its `qh` and `qs` bytes.
fn unpack(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        low | ((((qh >> j) & 1) as u8) << 4)
    })
}

/// Packs 32 five-bit values into `qh` (4 bytes) then `qs` (16 bytes).
fn pack(q: &[u8; 32], out: &mut [u8]) {
    let qh = (0..32).fold(0u32, |acc, j| acc | (u32::from(q[j] >> 4) << j));
    out[..4].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        out[4 + j] = (q[j] & 0x0F) | (q[j + 16] << 4);
    }
}

pub(super) fn dequantize_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let d = super::f16_at(block, 0);
        for (y, q) in y.iter_mut().zip(unpack(&block[2..6], &block[6..])) {
            *y = d * (i32::from(q) - 16) as f32;
        }
    }
}

pub(super) fn dequantize_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let d = super::f16_at(block, 0);
        let m = super::f16_at(block, 2);
        for (y, q) in y.iter_mut().zip(unpack(&block[4..8], &block[8..])) {
            *y = d * f32::from(q) + m;
        }
    }
}

/// ggml `quantize_row_q5_0_ref`: `d = max / -16` (max: the value of largest magnitude, first
/// if tied), `q = min(trunc(x / d + 16.5), 31)`.
pub(super) fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
        let max = super::signed_absmax(x);
        let d = max / -16.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q: [u8; 32] = std::array::from_fn(|j| ((x[j] * id + 16.5) as u8).min(31));
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        pack(&q, &mut block[2..]);
    }
}

/// ggml `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `q = min(trunc((x - min) / d + 0.5), 31)`.
pub(super) fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(24)) {
        let (min, max) = super::min_max(x);
        let d = (max - min) / 31.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q: [u8; 32] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as u8).min(31));
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
        pack(&q, &mut block[4..]);
    }
}
