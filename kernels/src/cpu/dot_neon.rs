//! 64-bit ARM dot products of GGUF-layout rows for the float weight types (F32; F16 against f16
//! activations): NEON, four 4-lane FMA chains, the tail one value at a time. The quantized types
//! run the x8 kernels ([`super::x8_neon`]); a quantized matrix whose rows cannot be repacked (a
//! row count that is not a multiple of 8) runs the scalar dots.

use core::arch::aarch64::*;

use super::x8_neon::f16_to_f32;

/// Σ of the four chains' lanes: (0 + 1) + (2 + 3), then the lanes pairwise.
#[inline]
#[target_feature(enable = "neon")]
fn hsum(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ))
}

/// F32 weights · f32 activations.
///
/// # Safety
/// The CPU has NEON (every 64-bit ARM CPU does).
#[target_feature(enable = "neon")]
pub unsafe fn f32(k: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() >= 4 * k && a.len() >= 4 * k);
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let full = k / 16;
    let mut acc = [vdupq_n_f32(0.0); 4];
    // SAFETY: 16 values per step, `full` steps are in bounds (asserted); loads are of bytes.
    unsafe {
        for i in 0..full {
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = 4 * (16 * i + 4 * r);
                let x = vreinterpretq_f32_u8(vld1q_u8(wp.add(at)));
                let y = vreinterpretq_f32_u8(vld1q_u8(ap.add(at)));
                *acc = vfmaq_f32(*acc, x, y);
            }
        }
    }
    let mut s = hsum(acc);
    let value = |p: &[u8], i: usize| {
        f32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]])
    };
    for i in 16 * full..k {
        s += value(w, i) * value(a, i);
    }
    s
}

/// F16 weights · f16 activations (products of two f16 values are exact in f32).
///
/// # Safety
/// The CPU has NEON.
#[target_feature(enable = "neon")]
pub unsafe fn f16(k: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() >= 2 * k && a.len() >= 2 * k);
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let full = k / 16;
    let mut acc = [vdupq_n_f32(0.0); 4];
    // SAFETY: 16 values per step, `full` steps are in bounds (asserted); loads are of bytes.
    unsafe {
        for i in 0..full {
            let hw = vreinterpretq_u16_u8(vld1q_u8(wp.add(32 * i)));
            let ha = vreinterpretq_u16_u8(vld1q_u8(ap.add(32 * i)));
            let hw2 = vreinterpretq_u16_u8(vld1q_u8(wp.add(32 * i + 16)));
            let ha2 = vreinterpretq_u16_u8(vld1q_u8(ap.add(32 * i + 16)));
            let halves = [
                (vget_low_u16(hw), vget_low_u16(ha)),
                (vget_high_u16(hw), vget_high_u16(ha)),
                (vget_low_u16(hw2), vget_low_u16(ha2)),
                (vget_high_u16(hw2), vget_high_u16(ha2)),
            ];
            for (acc, (x, y)) in acc.iter_mut().zip(halves) {
                let (x, y) = (f16_to_f32(x), f16_to_f32(y));
                *acc = vfmaq_f32(*acc, x, y);
            }
        }
    }
    let mut s = hsum(acc);
    let value = |p: &[u8], i: usize| half::f16::from_le_bytes([p[2 * i], p[2 * i + 1]]).to_f32();
    for i in 16 * full..k {
        s += value(w, i) * value(a, i);
    }
    s
}
