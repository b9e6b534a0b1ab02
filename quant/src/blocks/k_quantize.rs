//! K-quant quantizers: ports of llama.cpp's reference quantizers (`ggml-quants.c`
//! `quantize_row_q{2..6}_K_ref` with `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`),
//! which is what llama-quantize runs when no importance matrix is given. The order of the float
//! operations follows the C source; llama.cpp's compiled output can still differ in the last bits
//! where the C compiler contracts multiply-adds into FMAs.

use half::f16;

use super::k_quants::QK_K;

/// ggml `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `nearest_int`: round half to even, by adding 1.5 * 2^23 and reading the mantissa (no
/// libm call on x86-64 without SSE4.1). Out of its range (|v| > 2^22) it rounds the slow way.
#[inline]
fn nearest_int(v: f32) -> i32 {
    if v.abs() > 4_194_303.0 || v.is_nan() {
        return v.round_ties_even() as i32;
    }
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

fn f16_round_trip(v: f32) -> (f32, [u8; 2]) {
    let h = f16::from_f32(v);
    (h.to_f32(), h.to_le_bytes())
}

/// ggml `make_qx_quants` with `rmse_type = 1` and no importance weights: symmetric levels in
/// `[0, 2 nmax)` (written to `levels` with the `nmax` offset), scale searched over 19 candidates.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let max = super::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (out, &v) in levels.iter_mut().zip(x) {
        *out = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (out, &v) in levels.iter_mut().zip(x) {
                *out = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` with `do_rmse`: levels in `[0, 2 nmax)`, refined coordinate-wise.
fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let max = super::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    let mut l_of: Vec<i32> = Vec::with_capacity(x.len());
    for &v in x {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_of.push(l);
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l_of[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_of[i] {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_of[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for (out, l) in levels.iter_mut().zip(l_of) {
        *out = (l + nmax) as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// ggml `make_qkx2_quants`: asymmetric levels in `[0, nmax]` with a min, weighted least squares
/// over `nstep + 1` candidate scales. Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * aux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 256 two-bit levels: byte `32 h + l` holds elements `128 h + l + 32 s` at bits `2 s`.
fn pack_2bit(levels: &[u8], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] = levels[j + l]
                | (levels[j + l + 32] << 2)
                | (levels[j + l + 64] << 4)
                | (levels[j + l + 96] << 6);
        }
    }
}

/// ggml `quantize_row_q2_K_ref`.
pub(super) fn quantize_q2_k(x: &[f32], out: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    for (x, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(84)) {
        let mut levels = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
            let (s, m) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut levels[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            max_scale = max_scale.max_c(s);
            max_min = max_min.max_c(m);
        }
        let (sc, rest) = y.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        let d = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            f16_round_trip(max_scale / Q4SCALE)
        } else {
            sc.fill(0);
            f16_round_trip(0.0)
        };
        let dmin = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            f16_round_trip(max_min / Q4SCALE)
        } else {
            f16_round_trip(0.0)
        };
        dd[..2].copy_from_slice(&d.1);
        dd[2..].copy_from_slice(&dmin.1);
        for j in 0..16 {
            let dl = d.0 * f32::from(sc[j] & 0x0F);
            if dl == 0.0 {
                continue;
            }
            let dm = dmin.0 * f32::from(sc[j] >> 4);
            for ii in 0..16 {
                levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dl).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&levels, qs);
    }
}

/// ggml `quantize_row_q3_K_ref`.
pub(super) fn quantize_q3_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(110)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for j in 0..16 {
            scales[j] =
                make_q3_quants(4, &x[16 * j..16 * j + 16], &mut levels[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let (hmask, rest) = y.split_at_mut(32);
        let (qs, rest) = rest.split_at_mut(64);
        let (sc, dbytes) = rest.split_at_mut(12);
        sc.fill(0);
        let d = if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let l = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    sc[j] = (l & 0x0F) as u8;
                } else {
                    sc[j - 8] |= ((l & 0x0F) << 4) as u8;
                }
                sc[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
            }
            f16_round_trip(1.0 / iscale)
        } else {
            f16_round_trip(0.0)
        };
        dbytes.copy_from_slice(&d.1);
        for j in 0..16 {
            let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
            let s = (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8 - 32;
            let dl = d.0 * f32::from(s);
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-4, 3) + 4) as i8;
            }
        }
        hmask.fill(0);
        let mut ul = [0u8; QK_K];
        for (j, &l) in levels.iter().enumerate() {
            let mut l = l as u8;
            if l > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                l -= 4;
            }
            ul[j] = l;
        }
        pack_2bit(&ul, qs);
    }
}

/// Shared by Q4_K and Q5_K (`nmax` 15 or 31): 8 sub-blocks of 32 with 6-bit scales and mins.
/// Returns the levels and writes d, dmin and the 12 scale bytes into `head` (16 bytes).
fn quantize_k_scale_min(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    head: &mut [u8],
) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max_c(s);
        max_min = max_min.max_c(m);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let q = &mut head[4..16];
    q.fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_round_trip(max_scale / 63.0);
    let dmin = f16_round_trip(max_min / 63.0);
    head[..2].copy_from_slice(&d.1);
    head[2..4].copy_from_slice(&dmin.1);
    for j in 0..8 {
        let (sc, m) = super::k_quants::scale_min_k4(j, &head[4..16]);
        let dl = d.0 * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.0 * f32::from(m);
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    levels
}

/// ggml `quantize_row_q4_K_ref`.
pub(super) fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
        let levels = quantize_k_scale_min(x, 15, -1.0, 20, &mut y[..16]);
        let qs = &mut y[16..];
        for (c, j) in (0..QK_K).step_by(64).enumerate() {
            for l in 0..32 {
                qs[32 * c + l] = levels[j + l] | (levels[j + l + 32] << 4);
            }
        }
    }
}

/// ggml `quantize_row_q5_K_ref`.
pub(super) fn quantize_q5_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)) {
        let levels = quantize_k_scale_min(x, 31, -0.5, 15, &mut y[..16]);
        let (qh, qs) = y[16..].split_at_mut(32);
        qh.fill(0);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for j in 0..32 {
                let (mut l1, mut l2) = (levels[n + j], levels[n + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[32 * c + j] = l1 | (l2 << 4);
            }
        }
    }
}

/// ggml `quantize_row_q6_K_ref`.
pub(super) fn quantize_q6_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            scales[ib] = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut levels[16 * ib..16 * ib + 16],
            );
            if scales[ib].abs() > max_abs_scale {
                max_abs_scale = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        y.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let (ql, rest) = y.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (sc, dbytes) = rest.split_at_mut(16);
        let iscale = -128.0 / max_scale;
        let d = f16_round_trip(1.0 / iscale);
        dbytes.copy_from_slice(&d.1);
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let dl = d.0 * f32::from(sc[j] as i8);
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-32, 31) + 32) as i8;
            }
        }
        let l = |i: usize| levels[i] as u8;
        for (c, j) in (0..QK_K).step_by(128).enumerate() {
            for i in 0..32 {
                ql[64 * c + i] = (l(j + i) & 0x0F) | ((l(j + i + 64) & 0x0F) << 4);
                ql[64 * c + i + 32] = (l(j + i + 32) & 0x0F) | ((l(j + i + 96) & 0x0F) << 4);
                qh[32 * c + i] = (l(j + i) >> 4)
                    | ((l(j + i + 32) >> 4) << 2)
                    | ((l(j + i + 64) >> 4) << 4)
                    | ((l(j + i + 96) >> 4) << 6);
            }
        }
    }
}

/// C's `if (v > m) m = v;` (keeps `m` for NaN, unlike `f32::max` which is symmetric).
trait MaxC {
    fn max_c(self, v: f32) -> f32;
}

impl MaxC for f32 {
    fn max_c(self, v: f32) -> f32 {
        if v > self { v } else { self }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_int_is_round_half_even() {
        for v in [
            -2.5f32,
            -1.5,
            -0.5,
            0.5,
            1.5,
            2.5,
            3.49,
            -3.51,
            0.0,
            4_194_303.0,
            1e7,
            -1e7,
        ] {
            assert_eq!(super::nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }
}
