//! Scalar dot products of one weight row (GGML blocks) with one activation row (its
//! [`ActFormat`](super::act::ActFormat)): the reference every SIMD kernel is tested against, and
//! the fallback on CPUs without one. Integer sums per block, then one float multiply per block,
//! as ggml's `ggml_vec_dot_*_generic`.

use half::f16;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub fn f32(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let w = w[..4 * k].chunks_exact(4);
    let a = a[..4 * k].chunks_exact(4);
    w.zip(a)
        .map(|(w, a)| {
            f32::from_le_bytes(w.try_into().unwrap()) * f32::from_le_bytes(a.try_into().unwrap())
        })
        .sum()
}

pub fn f16(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for i in 0..k {
        sum += f64::from(f16_at(w, 2 * i)) * f64::from(f16_at(a, 2 * i));
    }
    sum as f32
}

pub fn q4_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)).take(k / 32) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(x[2 + j] & 0x0F) - 8;
            let hi = i32::from(x[2 + j] >> 4) - 8;
            sumi += lo * i32::from(y[2 + j] as i8) + hi * i32::from(y[2 + j + 16] as i8);
        }
        sum += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

pub fn q4_1(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)).take(k / 32) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(x[4 + j] & 0x0F);
            let hi = i32::from(x[4 + j] >> 4);
            sumi += lo * i32::from(y[4 + j] as i8) + hi * i32::from(y[4 + j + 16] as i8);
        }
        sum += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0)) + f16_at(x, 2) * f16_at(y, 2);
    }
    sum
}

/// Q5_0: `q = nibble | bit << 4`, `y = d (q - 16)`; the bits of element i are bit i of `qh`.
pub fn q5_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)).take(k / 32) {
        let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(x[6 + j] & 0x0F) | (((qh >> j) & 1) << 4) as i32;
            let hi = i32::from(x[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
            sumi +=
                (lo - 16) * i32::from(y[2 + j] as i8) + (hi - 16) * i32::from(y[2 + j + 16] as i8);
        }
        sum += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

/// Q5_1: `y = d q + m` with the 5-bit `q` of Q5_0.
pub fn q5_1(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)).take(k / 32) {
        let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(x[8 + j] & 0x0F) | (((qh >> j) & 1) << 4) as i32;
            let hi = i32::from(x[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
            sumi += lo * i32::from(y[4 + j] as i8) + hi * i32::from(y[4 + j + 16] as i8);
        }
        sum += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0)) + f16_at(x, 2) * f16_at(y, 2);
    }
    sum
}

pub fn q8_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)).take(k / 32) {
        let sumi: i32 = x[2..]
            .iter()
            .zip(&y[2..])
            .map(|(&p, &q)| i32::from(p as i8) * i32::from(q as i8))
            .sum();
        sum += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

/// Q8_K activation block: (d, qs, bsums).
pub(crate) fn q8k_parts(y: &[u8]) -> (f32, &[u8], [i16; 16]) {
    let d = f32::from_le_bytes(y[..4].try_into().unwrap());
    let mut bsums = [0i16; 16];
    for (s, b) in bsums.iter_mut().zip(y[260..292].chunks_exact(2)) {
        *s = i16::from_le_bytes([b[0], b[1]]);
    }
    (d, &y[4..260], bsums)
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

pub fn q4_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(k / 256) {
        let (dy, q8, bsums) = q8k_parts(y);
        let (sc, mins) = q4k_scales_mins(&x[4..16]);
        let qs = &x[16..144];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * j + l];
                lo += i32::from(q & 0x0F) * i32::from(q8[64 * j + l] as i8);
                hi += i32::from(q >> 4) * i32::from(q8[64 * j + 32 + l] as i8);
            }
            sumi += i32::from(sc[2 * j]) * lo + i32::from(sc[2 * j + 1]) * hi;
        }
        for (s, m) in mins.iter().enumerate() {
            summ += i32::from(*m) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
        }
        sum += dy * f16_at(x, 0) * sumi as f32 - dy * f16_at(x, 2) * summ as f32;
    }
    sum
}

/// Q5_K: Q4_K's nibbles and scales, and a fifth bit per value: bit `s` of `qh[l]` for value `l`
/// of sub-block `s`.
pub fn q5_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(176).zip(a.chunks_exact(292)).take(k / 256) {
        let (dy, q8, bsums) = q8k_parts(y);
        let (sc, mins) = q4k_scales_mins(&x[4..16]);
        let (qh, qs) = (&x[16..48], &x[48..176]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * j + l];
                let h = qh[l] >> (2 * j);
                lo += i32::from((q & 0x0F) | ((h & 1) << 4)) * i32::from(q8[64 * j + l] as i8);
                hi += i32::from((q >> 4) | ((h & 2) << 3)) * i32::from(q8[64 * j + 32 + l] as i8);
            }
            sumi += i32::from(sc[2 * j]) * lo + i32::from(sc[2 * j + 1]) * hi;
        }
        for (s, m) in mins.iter().enumerate() {
            summ += i32::from(*m) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
        }
        sum += dy * f16_at(x, 0) * sumi as f32 - dy * f16_at(x, 2) * summ as f32;
    }
    sum
}

pub fn q6_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(k / 256) {
        let (dy, q8, _) = q8k_parts(y);
        let (ql, qh, scales) = (&x[..128], &x[128..192], &x[192..208]);
        let mut sumi = 0i32;
        for n in 0..2 {
            let (ql, qh, q8) = (&ql[64 * n..], &qh[32 * n..], &q8[128 * n..]);
            let sc = &scales[8 * n..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                let s = |i: usize| i32::from(sc[i] as i8);
                sumi += s(is) * q1 * i32::from(q8[l] as i8)
                    + s(is + 2) * q2 * i32::from(q8[l + 32] as i8)
                    + s(is + 4) * q3 * i32::from(q8[l + 64] as i8)
                    + s(is + 6) * q4 * i32::from(q8[l + 96] as i8);
            }
        }
        sum += dy * f16_at(x, 208) * sumi as f32;
    }
    sum
}
