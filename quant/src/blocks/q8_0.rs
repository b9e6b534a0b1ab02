//! Q8_0: blocks of 32 signed bytes with one f16 scale; 8.5 bits per weight.
//! `y = d * q` (ggml `dequantize_row_q8_0`).

use half::f16;

/// ggml `block_q8_0`.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = super::f16_at(block, 0);
        for (y, &q) in y.iter_mut().zip(&block[2..]) {
            *y = d * f32::from(q as i8);
        }
    }
}

/// ggml `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)` (half away from zero).
pub(super) fn quantize(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, &v) in block[2..].iter_mut().zip(x) {
            *o = round_half_away(v * id) as i8 as u8;
        }
    }
}

/// `f32::round` (half away from zero) for |r| < 2^31, without a libm call: truncate, then step
/// away from zero when the dropped fraction is at least one half (both steps are exact).
#[inline]
fn round_half_away(r: f32) -> i32 {
    let t = r as i32;
    let frac = r - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_away_matches_f32_round() {
        let mut v = -130.0f32;
        while v < 130.0 {
            for r in [v, v.next_up(), v.next_down()] {
                assert_eq!(super::round_half_away(r), r.round() as i32, "{r}");
            }
            v += 0.125;
        }
        assert_eq!(super::round_half_away(0.49999997), 0);
    }
}
