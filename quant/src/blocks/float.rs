//! Plain number types.

pub(super) fn f32_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub(super) fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

pub(super) fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

pub(super) fn f32_from_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn f16_from_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
    }
}

/// ggml `ggml_compute_fp32_to_bf16`: NaNs become quiet, everything else rounds to nearest even.
pub(super) fn bf16_from_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        let n = v.to_bits();
        let h = if n & 0x7fff_ffff > 0x7f80_0000 {
            ((n >> 16) | 64) as u16
        } else {
            ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
        };
        o.copy_from_slice(&h.to_le_bytes());
    }
}
