//! 64-bit ARM kernels for x8-packed weights ([`super::x8`]): NEON with the dot-product extension
//! (ARMv8.2 `SDOT`, in every ARM server core and Apple core of the last years). Each 32-byte
//! vector of the x8 layout is two NEON registers: weight rows 0–3 and rows 4–7, four values of a
//! row per 32-bit lane. `SDOT` against one 32-bit lane of the activations (four bytes) gives four
//! rows' partial dot products; everything after the integer sums is the scalar kernels'
//! arithmetic in the same order, so results are bit-identical to them (and to the x86 kernels).
//!
//! `SDOT` is written as inline assembly: Rust's `vdotq_laneq_s32` is not stable yet.

use core::arch::aarch64::*;
use core::arch::asm;

use super::x8::{ActRow, GROUP};

/// `acc + Σ` of each lane's four `w` bytes times the four bytes of lane `L` of `y` (signed).
macro_rules! sdot {
    ($acc:expr, $w:expr, $y:expr, $lane:literal) => {{
        let mut acc: int32x4_t = $acc;
        let (w, y): (int8x16_t, int8x16_t) = ($w, $y);
        // SAFETY: `sdot` reads and writes registers only; the enclosing function is compiled
        // with the dotprod feature, which its callers checked.
        unsafe {
            asm!(
                concat!("sdot {acc:v}.4s, {w:v}.16b, {y:v}.4b[", $lane, "]"),
                acc = inout(vreg) acc,
                w = in(vreg) w,
                y = in(vreg) y,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }};
}

/// Four f16 values (bits) as f32, exactly (`FCVTL`; Rust's `vcvt_f32_f16` needs Rust 1.94).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn f16_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` reads and writes registers only.
    unsafe {
        asm!(
            "fcvtl {o:v}.4s, {h:v}.4h",
            o = out(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// `sdot!` with the lane as a runtime index below 4.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot_lane(acc: int32x4_t, w: int8x16_t, y: int8x16_t, lane: usize) -> int32x4_t {
    match lane {
        0 => sdot!(acc, w, y, "0"),
        1 => sdot!(acc, w, y, "1"),
        2 => sdot!(acc, w, y, "2"),
        _ => sdot!(acc, w, y, "3"),
    }
}

/// Eight f16 values at `p` as two f32 vectors (rows 0–3, 4–7).
///
/// # Safety
/// `p` points at 16 readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn f16x8(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: the caller's guarantee.
    unsafe {
        let h = vreinterpretq_u16_u8(vld1q_u8(p));
        [f16_to_f32(vget_low_u16(h)), f16_to_f32(vget_high_u16(h))]
    }
}

/// Eight bytes at `p` as two i32 vectors (rows 0–3, 4–7), unsigned or signed.
///
/// # Safety
/// `p` points at 8 readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn bytes_i32(p: *const u8, signed: bool) -> [int32x4_t; 2] {
    // SAFETY: the caller's guarantee.
    let w = unsafe { vld1_u8(p) };
    let h = if signed {
        vmovl_s8(vreinterpret_s8_u8(w))
    } else {
        vreinterpretq_s16_u16(vmovl_u8(w))
    };
    [vmovl_s16(vget_low_s16(h)), vmovl_s16(vget_high_s16(h))]
}

/// 32 bytes at `p` as two registers (rows 0–3, 4–7).
///
/// # Safety
/// `p` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn load32(p: *const u8) -> [uint8x16_t; 2] {
    // SAFETY: the caller's guarantee.
    unsafe { [vld1q_u8(p), vld1q_u8(p.add(16))] }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// Each row's eight group outputs.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn lanes<const R: usize>(acc: &[[float32x4_t; 2]; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0.0f32; GROUP]; R];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` holds 8 floats.
        unsafe {
            vst1q_f32(o.as_mut_ptr(), a[0]);
            vst1q_f32(o.as_mut_ptr().add(4), a[1]);
        }
    }
    out
}

/// `acc + d·isum` per lane (one rounding), `d = dw · d_act`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn fma_block(
    acc: [float32x4_t; 2],
    dw: [float32x4_t; 2],
    da: f32,
    isum: [int32x4_t; 2],
) -> [float32x4_t; 2] {
    std::array::from_fn(|h| {
        let d = vmulq_n_f32(dw[h], da);
        vfmaq_f32(acc[h], d, vcvtq_f32_s32(isum[h]))
    })
}

/// The exact integer dot products of one 32-value activation block at `y` (signed bytes)
/// with the block's 8 register pairs of weight values `q` (`q[l]`: values `4l..4l + 4`,
/// `q[l + 4]`: `16 + 4l..`), lanes 0..4 and 4..8 in the two halves.
///
/// # Safety
/// `y` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn block_dots(q: &[[int8x16_t; 2]; 8], y: *const u8) -> [int32x4_t; 2] {
    // SAFETY: the caller's bounds.
    let (yl, yh) = unsafe { (vld1q_s8(y as *const i8), vld1q_s8(y.add(16) as *const i8)) };
    std::array::from_fn(|h| {
        let mut s = vdupq_n_s32(0);
        for l in 0..4 {
            s = sdot_lane(s, q[l][h], yl, l);
            s = sdot_lane(s, q[l + 4][h], yh, l);
        }
        s
    })
}

/// The 8 registers-pairs of unsigned nibbles of a packed Q4 block's quants at `p`: `q[v]` the
/// low nibbles of vector `v` (values `4v + t`), `q[v + 4]` the high ones (`16 + 4v + t`).
///
/// # Safety
/// `p` points at 128 readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn nibbles(p: *const u8) -> [[int8x16_t; 2]; 8] {
    let m4 = vdupq_n_u8(0x0F);
    let mut q = [[vdupq_n_s8(0); 2]; 8];
    for v in 0..4 {
        // SAFETY: the caller's guarantee.
        let c = unsafe { load32(p.add(32 * v)) };
        for h in 0..2 {
            q[v][h] = s8(vandq_u8(c[h], m4));
            q[v + 4][h] = s8(vshrq_n_u8::<4>(c[h]));
        }
    }
    q
}

/// Q4_0 weights (`nb` packed blocks of one group) against `R` Q8_0 activation rows.
///
/// # Safety
/// `w` holds `nb` packed Q4_0 blocks, every row of `a` `nb` Q8_0 blocks and their scalars; the
/// CPU has NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    // SAFETY: the caller's guarantees.
    unsafe { q4_or_5::<R, false>(nb, w, a) }
}

/// Q5_0 weights against `R` Q8_0 activation rows.
///
/// # Safety
/// As [`q4_0`], with `nb` packed Q5_0 blocks.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q5_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    // SAFETY: the caller's guarantees.
    unsafe { q4_or_5::<R, true>(nb, w, a) }
}

/// Bit `v` of every byte moved to bit 4.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn fifth_bit(bits: uint8x16_t, v: usize) -> uint8x16_t {
    let b = vandq_u8(bits, vdupq_n_u8(1 << v));
    match v {
        0 => vshlq_n_u8::<4>(b),
        1 => vshlq_n_u8::<3>(b),
        2 => vshlq_n_u8::<2>(b),
        3 => vshlq_n_u8::<1>(b),
        4 => b,
        5 => vshrq_n_u8::<1>(b),
        6 => vshrq_n_u8::<2>(b),
        _ => vshrq_n_u8::<3>(b),
    }
}

/// Q4_0 (`FIVE = false`) or Q5_0: unsigned 4- or 5-bit values, the offset (8 or 16 times each
/// activation block's sum, in `ActRow::c`) taken out of the integer sum.
///
/// # Safety
/// As [`q4_0`] / [`q5_0`].
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q4_or_5<const R: usize, const FIVE: bool>(
    nb: usize,
    w: &[u8],
    a: &[ActRow; R],
) -> [[f32; GROUP]; R] {
    let (bb, qat) = if FIVE { (176, 48) } else { (144, 16) };
    assert!(w.len() >= bb * nb);
    assert!(
        a.iter()
            .all(|a| a.q.len() >= 34 * nb && a.c.len() >= nb && a.d.len() >= nb)
    );
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    for b in 0..nb {
        // SAFETY: block b of the group and of every activation row is in bounds (asserted).
        unsafe {
            let blk = w.as_ptr().add(bb * b);
            let dx = f16x8(blk);
            let mut q = nibbles(blk.add(qat));
            if FIVE {
                let bits = load32(blk.add(16));
                for (v, q) in q.iter_mut().enumerate() {
                    for h in 0..2 {
                        q[h] = s8(vorrq_u8(vreinterpretq_u8_s8(q[h]), fifth_bit(bits[h], v)));
                    }
                }
            }
            for r in 0..R {
                let dots = block_dots(&q, a[r].q.as_ptr().add(34 * b + 2));
                // Σ (q - 8)·y = Σ q·y - 8·Σ y (Q5_0: 16).
                let isum = dots.map(|s| vsubq_s32(s, vdupq_n_s32(a[r].c[b])));
                acc[r] = fma_block(acc[r], dx, a[r].d[b], isum);
            }
        }
    }
    lanes(&acc)
}

/// Q8_0 weights against `R` Q8_0 activation rows.
///
/// # Safety
/// As [`q4_0`], with `nb` packed Q8_0 blocks.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q8_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    assert!(w.len() >= 272 * nb);
    assert!(a.iter().all(|a| a.q.len() >= 34 * nb && a.d.len() >= nb));
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    for b in 0..nb {
        // SAFETY: block b of the group and of every activation row is in bounds (asserted).
        unsafe {
            let blk = w.as_ptr().add(272 * b);
            let dx = f16x8(blk);
            let q: [[int8x16_t; 2]; 8] = std::array::from_fn(|l| {
                let c = load32(blk.add(16 + 32 * l));
                [s8(c[0]), s8(c[1])]
            });
            for r in 0..R {
                let isum = block_dots(&q, a[r].q.as_ptr().add(34 * b + 2));
                acc[r] = fma_block(acc[r], dx, a[r].d[b], isum);
            }
        }
    }
    lanes(&acc)
}

/// Q4_K weights (`nb` packed 256-value blocks of one group) against `R` Q8_K activation rows.
///
/// # Safety
/// As [`q4_0`], with `nb` packed Q4_K blocks, Q8_K rows and their sub-block sums.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4_k<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    assert!(w.len() >= 1184 * nb);
    assert!(
        a.iter()
            .all(|a| a.q.len() >= 292 * nb && a.c.len() >= 8 * nb && a.d.len() >= nb)
    );
    let m4 = vdupq_n_u8(0x0F);
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut acc_m = [[vdupq_n_f32(0.0); 2]; R];
    for b in 0..nb {
        // SAFETY: block b of the group and of every activation row is in bounds (asserted).
        unsafe {
            let blk = w.as_ptr().add(1184 * b);
            let dx = f16x8(blk);
            let dmx = f16x8(blk.add(16));
            let mut tot = [[vdupq_n_s32(0); 2]; R];
            for pair in 0..4 {
                // Sub-blocks 2·pair (low nibbles) and 2·pair + 1 (high).
                let mut lo = [[vdupq_n_s32(0); 2]; R];
                let mut hi = [[vdupq_n_s32(0); 2]; R];
                for v in 0..8 {
                    let c = load32(blk.add(160 + 256 * pair + 32 * v));
                    let ql = [s8(vandq_u8(c[0], m4)), s8(vandq_u8(c[1], m4))];
                    let qh = [s8(vshrq_n_u8::<4>(c[0])), s8(vshrq_n_u8::<4>(c[1]))];
                    for r in 0..R {
                        // Values 4v.. of sub-blocks 2·pair and 2·pair + 1.
                        let y = a[r].q.as_ptr().add(292 * b + 4 + 64 * pair + 16 * (v / 4));
                        let (yl, yh) = (vld1q_s8(y as *const i8), vld1q_s8(y.add(32) as *const i8));
                        for h in 0..2 {
                            lo[r][h] = sdot_lane(lo[r][h], ql[h], yl, v % 4);
                            hi[r][h] = sdot_lane(hi[r][h], qh[h], yh, v % 4);
                        }
                    }
                }
                let sl = bytes_i32(blk.add(32 + 8 * (2 * pair)), false);
                let sh = bytes_i32(blk.add(32 + 8 * (2 * pair + 1)), false);
                for r in 0..R {
                    for h in 0..2 {
                        let t = vaddq_s32(vmulq_s32(sl[h], lo[r][h]), vmulq_s32(sh[h], hi[r][h]));
                        tot[r][h] = vaddq_s32(tot[r][h], t);
                    }
                }
            }
            for r in 0..R {
                let mut mins = [vdupq_n_s32(0); 2];
                for j in 0..8 {
                    let m = bytes_i32(blk.add(96 + 8 * j), false);
                    let s = vdupq_n_s32(a[r].c[8 * b + j]);
                    for h in 0..2 {
                        mins[h] = vaddq_s32(mins[h], vmulq_s32(m[h], s));
                    }
                }
                let dy = a[r].d[b];
                acc[r] = fma_block(acc[r], dx, dy, tot[r]);
                acc_m[r] = std::array::from_fn(|h| {
                    let dmin = vnegq_f32(vmulq_n_f32(dmx[h], dy));
                    vfmaq_f32(acc_m[r][h], dmin, vcvtq_f32_s32(mins[h]))
                });
            }
        }
    }
    lanes(&std::array::from_fn(|r| {
        [
            vaddq_f32(acc[r][0], acc_m[r][0]),
            vaddq_f32(acc[r][1], acc_m[r][1]),
        ]
    }))
}

/// Q6_K weights (`nb` packed 256-value blocks of one group) against `R` Q8_K activation rows.
///
/// # Safety
/// As [`q4_0`], with `nb` packed Q6_K blocks, Q8_K rows and their 16-value sums.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q6_k<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    assert!(w.len() >= 1680 * nb);
    assert!(
        a.iter()
            .all(|a| a.q.len() >= 292 * nb && a.c.len() >= 16 * nb && a.d.len() >= nb)
    );
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    for b in 0..nb {
        // SAFETY: block b of the group and of every activation row is in bounds (asserted).
        unsafe {
            let blk = w.as_ptr().add(1680 * b);
            let dx = f16x8(blk);
            let mut tot = [[vdupq_n_s32(0); 2]; R];
            for h in 0..2 {
                for half in 0..2 {
                    // Sums of the 16-value groups 8h + 2s + half, s = 0..4.
                    let mut part = [[[vdupq_n_s32(0); 2]; 4]; R];
                    for c in 4 * half..4 * half + 4 {
                        // ql of values 4c.., ql of 32 + 4c.., their qh (x8.rs).
                        let v = blk.add(144 + 96 * (8 * h + c));
                        let (l0, l1, hb) = (load32(v), load32(v.add(32)), load32(v.add(64)));
                        let q: [[int8x16_t; 2]; 4] = std::array::from_fn(|sx| {
                            std::array::from_fn(|x| {
                                let (lo, hi) = match sx {
                                    0 => {
                                        (vandq_u8(l0[x], m4), vandq_u8(vshlq_n_u8::<4>(hb[x]), m30))
                                    }
                                    1 => {
                                        (vandq_u8(l1[x], m4), vandq_u8(vshlq_n_u8::<2>(hb[x]), m30))
                                    }
                                    2 => (vshrq_n_u8::<4>(l0[x]), vandq_u8(hb[x], m30)),
                                    _ => (
                                        vshrq_n_u8::<4>(l1[x]),
                                        vandq_u8(vshrq_n_u8::<2>(hb[x]), m30),
                                    ),
                                };
                                s8(vorrq_u8(lo, hi))
                            })
                        });
                        for r in 0..R {
                            for (sx, qs) in q.iter().enumerate() {
                                let y = a[r]
                                    .q
                                    .as_ptr()
                                    .add(292 * b + 4 + 128 * h + 32 * sx + 16 * half);
                                let yv = vld1q_s8(y as *const i8);
                                for x in 0..2 {
                                    part[r][sx][x] = sdot_lane(part[r][sx][x], qs[x], yv, c % 4);
                                }
                            }
                        }
                    }
                    for (r, part) in part.iter().enumerate() {
                        for (sx, part) in part.iter().enumerate() {
                            let g = 8 * h + 2 * sx + half;
                            let sc = bytes_i32(blk.add(16 + 8 * g), true);
                            let off = vdupq_n_s32(a[r].c[16 * b + g]);
                            for x in 0..2 {
                                let v = vsubq_s32(part[x], off);
                                tot[r][x] = vaddq_s32(tot[r][x], vmulq_s32(sc[x], v));
                            }
                        }
                    }
                }
            }
            for r in 0..R {
                acc[r] = fma_block(acc[r], dx, a[r].d[b], tot[r]);
            }
        }
    }
    lanes(&acc)
}

/// Q4_1 weights against `R` Q8_1 activation rows, in `ggml_vec_dot_q4_1_q8_1`'s order: lane
/// accumulator `l` of row `q` is lane `q` of `acc[l]`.
///
/// # Safety
/// As [`q4_0`], with `nb` packed Q4_1 blocks and each row's `s`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4_1<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
    assert!(w.len() >= 160 * nb);
    assert!(
        a.iter()
            .all(|a| a.q.len() >= 36 * nb && a.s.len() >= nb && a.d.len() >= nb)
    );
    let mut out = [[0.0f32; GROUP]; R];
    for r in 0..R {
        let mut acc = [[vdupq_n_f32(0.0); 2]; 8];
        let mut summs = [vdupq_n_f32(0.0); 2];
        for b in 0..nb {
            // SAFETY: block b of the group and of the activation row is in bounds (asserted).
            unsafe {
                let blk = w.as_ptr().add(160 * b);
                let dx = f16x8(blk);
                let mx = f16x8(blk.add(16));
                let y = a[r].q.as_ptr().add(36 * b + 4);
                let (yl, yh) = (vld1q_s8(y as *const i8), vld1q_s8(y.add(16) as *const i8));
                let (s, da) = (a[r].s[b], a[r].d[b]);
                let q = nibbles(blk.add(32));
                for h in 0..2 {
                    summs[h] = vaddq_f32(summs[h], vmulq_n_f32(mx[h], s));
                    let d = vmulq_n_f32(dx[h], da);
                    for l in 0..8 {
                        let yv = if l < 4 { yl } else { yh };
                        let p = sdot_lane(vdupq_n_s32(0), q[l][h], yv, l % 4);
                        acc[l][h] = vfmaq_f32(acc[l][h], d, vcvtq_f32_s32(p));
                    }
                }
            }
        }
        // hsum_float_8's order, eight rows at once.
        let sum: [float32x4_t; 2] = std::array::from_fn(|h| {
            let t0 = vaddq_f32(acc[0][h], acc[4][h]);
            let t1 = vaddq_f32(acc[1][h], acc[5][h]);
            let t2 = vaddq_f32(acc[2][h], acc[6][h]);
            let t3 = vaddq_f32(acc[3][h], acc[7][h]);
            vaddq_f32(vaddq_f32(vaddq_f32(t0, t2), vaddq_f32(t1, t3)), summs[h])
        });
        out[r] = lanes(&[sum])[0];
    }
    out
}
