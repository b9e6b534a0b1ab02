//! The CPU's (ggml's) floating-point steps inside CubeCL kernels, exactly: a fused multiply-add
//! where the device's own `fma` is not fused, ggml's `expf`, and the f64 sums ggml makes of
//! f32 terms (RMSNorm's sum of squares, the softmax's normalizer) — all with integer
//! operations, which no shader compiler rewrites.
//!
//! Why integers: Mesa's llvmpipe (CI's GPU) lowers WGSL `fma` to a multiply and an add (two
//! roundings), has no f64 in WGSL, and simplifies float expressions such as `(p + c) - p` to
//! `c`, which defeats the usual compensated-sum tricks. Measured by `tests/tests/cube_exact.rs`.
//! On a device whose `fma` is fused (every GPU with hardware FMA: [`native_fma`] checks it once
//! per device) the kernels use it instead of [`soft_fma`].

use std::collections::HashMap;
use std::sync::Mutex;

use burn_cubecl::CubeDevice;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use crate::cube_util::{read_f32, upload_f32};

/// `(hi, lo) >> s` (any `s`), and whether a 1 bit was shifted out.
#[cube]
#[allow(unused_assignments)]
pub fn shr64(hi: u32, lo: u32, s: u32) -> (u32, u32, bool) {
    let mut rh = hi;
    let mut rl = lo;
    let mut lost = 0u32;
    if s >= 64u32 {
        rh = 0u32;
        rl = 0u32;
        lost = hi | lo;
    } else if s >= 32u32 {
        let t = s - 32u32;
        rh = 0u32;
        rl = hi >> t;
        lost = lo;
        if t > 0u32 {
            lost |= hi << (32u32 - t);
        }
    } else if s > 0u32 {
        rh = hi >> s;
        rl = (lo >> s) | (hi << (32u32 - s));
        lost = lo << (32u32 - s);
    }
    (rh, rl, lost != 0u32)
}

/// `(hi, lo) << s` for `s < 64`.
#[cube]
pub fn shl64(hi: u32, lo: u32, s: u32) -> (u32, u32) {
    let mut rh = hi;
    let mut rl = lo;
    if s >= 32u32 {
        rh = lo << (s - 32u32);
        rl = 0u32;
    } else if s > 0u32 {
        rh = (hi << s) | (lo >> (32u32 - s));
        rl = lo << s;
    }
    (rh, rl)
}

/// Leading zero bits of `(hi, lo)` (64 for zero).
#[cube]
pub fn clz64(hi: u32, lo: u32) -> u32 {
    let mut z = u32::leading_zeros(hi);
    if hi == 0u32 {
        z = 32u32 + u32::leading_zeros(lo);
    }
    z
}

#[cube]
fn add64(ah: u32, al: u32, bh: u32, bl: u32) -> (u32, u32) {
    let lo = al + bl;
    (ah + bh + u32::cast_from(lo < al), lo)
}

#[cube]
fn sub64(ah: u32, al: u32, bh: u32, bl: u32) -> (u32, u32) {
    (ah - bh - u32::cast_from(al < bl), al - bl)
}

#[cube]
fn ge64(ah: u32, al: u32, bh: u32, bl: u32) -> bool {
    ah > bh || (ah == bh && al >= bl)
}

/// A finite `x` as its sign bit and `|x| = m · 2^e` (`m < 2^24`, subnormals included).
#[cube]
#[allow(unused_assignments)]
fn unpack(x: f32) -> (u32, u32, i32) {
    let b = u32::reinterpret(x);
    let ef = (b >> 23u32) & 0xFFu32;
    let mut m = b & 0x7F_FFFFu32;
    let mut e = i32::new(-149);
    if ef != 0u32 {
        m |= 0x80_0000u32;
        e = i32::cast_from(ef) - 150i32;
    }
    (b & 0x8000_0000u32, m, e)
}

/// `±(hi, lo) · 2^e` rounded to the nearest f32 (ties to even), `sticky` saying that nonzero
/// bits lie below `(hi, lo)` (callers keep at least two bits below the rounding position when
/// it can be set). Subnormal results and overflow to infinity as IEEE.
#[cube]
#[allow(unused_assignments)]
pub fn round_pack(sign: u32, hi: u32, lo: u32, e: i32, sticky: bool) -> f32 {
    let lead = 63i32 - i32::cast_from(clz64(hi, lo));
    let mut er = e + lead - 23i32;
    if er < i32::new(-149) {
        er = i32::new(-149);
    }
    let rs = er - e;
    let mut sig = 0u32;
    let mut up = false;
    if rs <= 0i32 {
        let (_h, l) = shl64(hi, lo, u32::cast_from(-rs));
        sig = l;
    } else {
        let r = u32::cast_from(rs);
        let (_h, l, _lost) = shr64(hi, lo, r);
        sig = l;
        let (_gh, gl, below) = shr64(hi, lo, r - 1u32);
        let guard = (gl & 1u32) != 0u32;
        up = guard && (below || sticky || (sig & 1u32) != 0u32);
    }
    if up {
        sig += 1u32;
        if sig == 0x100_0000u32 {
            sig = 0x80_0000u32;
            er += 1i32;
        }
    }
    let mut bits = sign | sig;
    if sig >= 0x80_0000u32 {
        let ef = er + 150i32;
        bits = sign | (u32::cast_from(ef) << 23u32) | (sig & 0x7F_FFFFu32);
        if ef >= 255i32 {
            bits = sign | 0x7F80_0000u32;
        }
    }
    f32::reinterpret(bits)
}

/// `a · b + c` with one rounding (IEEE fused multiply-add, ties to even) for finite inputs,
/// from integer operations. Infinite or NaN inputs give `a · b + c` as the device computes it.
#[cube]
#[allow(unused_assignments)]
pub fn soft_fma(a: f32, b: f32, c: f32) -> f32 {
    let special = (u32::reinterpret(a) & 0x7F80_0000u32) == 0x7F80_0000u32
        || (u32::reinterpret(b) & 0x7F80_0000u32) == 0x7F80_0000u32
        || (u32::reinterpret(c) & 0x7F80_0000u32) == 0x7F80_0000u32;
    let (sa, ma, ea) = unpack(a);
    let (sb, mb, eb) = unpack(b);
    let (sc, mc, ec) = unpack(c);
    let mut out = 0.0f32;
    if special || ma == 0u32 || mb == 0u32 {
        // A zero product: c (with IEEE's signed-zero rule) is the exact result.
        out = a * b + c;
    } else if mc == 0u32 {
        // One rounding of the exact product.
        out = a * b;
    } else {
        // The exact product ma·mb < 2^48 from 16-bit halves.
        let a0 = ma & 0xFFFFu32;
        let a1 = ma >> 16u32;
        let b0 = mb & 0xFFFFu32;
        let b1 = mb >> 16u32;
        let p00 = a0 * b0;
        let mid = a1 * b0 + a0 * b1;
        let lo = p00 + (mid << 16u32);
        let hi = a1 * b1 + (mid >> 16u32) + u32::cast_from(lo < p00);
        // Both terms with their leading bit at 61 (room for a carry; sticky bits far below).
        let zp = clz64(hi, lo) - 2u32;
        let (ph, pl) = shl64(hi, lo, zp);
        let ep = ea + eb - i32::cast_from(zp);
        let zc = clz64(0u32, mc) - 2u32;
        let (ch, cl) = shl64(0u32, mc, zc);
        let ec2 = ec - i32::cast_from(zc);
        let sp = sa ^ sb;
        let p_big = ep > ec2 || (ep == ec2 && ge64(ph, pl, ch, cl));
        let mut bh = ph;
        let mut bl = pl;
        let mut be = ep;
        let mut bs = sp;
        let mut xh = ch;
        let mut xl = cl;
        let mut xe = ec2;
        let mut xs = sc;
        if !p_big {
            bh = ch;
            bl = cl;
            be = ec2;
            bs = sc;
            xh = ph;
            xl = pl;
            xe = ep;
            xs = sp;
        }
        // The smaller term aligned, its lost bits kept as a sticky bit 0: the product has 13
        // and c 37 zero bits at the bottom, so a sticky bit only arises from a shift of 14 or
        // more, and then the result keeps its leading bit at 60 or above.
        let (sh, sl, lost) = shr64(xh, xl, u32::cast_from(be - xe));
        let sl = sl | u32::cast_from(lost);
        let mut wh = 0u32;
        let mut wl = 0u32;
        if bs == xs {
            let (h, l) = add64(bh, bl, sh, sl);
            wh = h;
            wl = l;
        } else {
            let (h, l) = sub64(bh, bl, sh, sl);
            wh = h;
            wl = l;
        }
        if (wh | wl) != 0u32 {
            out = round_pack(bs, wh, wl, be, false);
        }
    }
    out
}

/// `x`, hidden from the shader compiler: `zero` is a kernel argument that is always 0, so the
/// compiler cannot tell that the result is `x`, nor merge the operation that made it into the
/// addition that takes it. Mesa's NIR turns a sum of products into a chain of fused
/// multiply-adds, which adds the terms in another order (seen on llvmpipe: a 64-lane
/// `ggml_vec_dot_f16` tree came out 1 ulp off); terms of an ordered sum go through this.
#[cube]
pub fn opaque(x: f32, zero: u32) -> f32 {
    f32::reinterpret(u32::reinterpret(x) | zero)
}

/// `a · b + c`: the device's fused `fma`, or [`soft_fma`] where that is not fused.
#[cube]
#[allow(unused_assignments)]
pub fn fmadd(a: f32, b: f32, c: f32, #[comptime] soft: bool) -> f32 {
    let mut out = 0.0f32;
    if comptime!(soft) {
        out = soft_fma(a, b, c);
    } else {
        out = fma(a, b, c);
    }
    out
}

/// `S + x` rounded to f64 (53 bits, ties to even, as an f64 `+=`), for `x ≥ 0` finite. `S`, an
/// f64 sum of non-negative f32 terms, is `(hi, lo, e)`: `hi:lo · 2^e` with a 53-bit significand
/// (`hi` in `[2^20, 2^21)`), or `(0, 0, _)` for zero.
#[cube]
#[allow(unused_assignments)]
pub fn wide_add(hi: u32, lo: u32, e: i32, x: f32) -> (u32, u32, i32) {
    let (_s, m, ex) = unpack(x);
    let mut rh = hi;
    let mut rl = lo;
    let mut re = e;
    if m != 0u32 {
        // x with its leading bit at 52.
        let zx = clz64(0u32, m) - 11u32;
        let (xh, xl) = shl64(0u32, m, zx);
        let xe = ex - i32::cast_from(zx);
        if (hi | lo) == 0u32 {
            rh = xh;
            rl = xl;
            re = xe;
        } else {
            // Ten guard bits: leading bits at 62, the larger exponent first.
            let (ah, al) = shl64(hi, lo, 10u32);
            let (bh, bl) = shl64(xh, xl, 10u32);
            let mut uh = ah;
            let mut ul = al;
            let mut ue = e - 10i32;
            let mut vh = bh;
            let mut vl = bl;
            let mut ve = xe - 10i32;
            if ve > ue {
                uh = bh;
                ul = bl;
                ue = xe - 10i32;
                vh = ah;
                vl = al;
                ve = e - 10i32;
            }
            let (sh, sl, lost) = shr64(vh, vl, u32::cast_from(ue - ve));
            let (wh, wl) = add64(uh, ul, sh, sl | u32::cast_from(lost));
            // Round to 53 bits at the leading bit 62 or 63.
            let rs = 63u32 - clz64(wh, wl) - 52u32;
            let (qh, ql, _l) = shr64(wh, wl, rs);
            let (_gh, gl, below) = shr64(wh, wl, rs - 1u32);
            let mut fh = qh;
            let mut fl = ql;
            let mut fe = ue + i32::cast_from(rs);
            if (gl & 1u32) != 0u32 && (below || (ql & 1u32) != 0u32) {
                let (h, l) = add64(qh, ql, 0u32, 1u32);
                fh = h;
                fl = l;
                if fh == 0x20_0000u32 {
                    fh = 0x10_0000u32;
                    fl = 0u32;
                    fe += 1i32;
                }
            }
            rh = fh;
            rl = fl;
            re = fe;
        }
    }
    (rh, rl, re)
}

/// `N / D` rounded to the nearest f32, both non-zero wide values ([`wide_add`]).
#[cube]
#[allow(unused_assignments)]
pub fn wide_div(nh: u32, nl: u32, ne: i32, dh: u32, dl: u32, de: i32) -> f32 {
    let mut rh = nh;
    let mut rl = nl;
    let mut e = ne - de;
    if !ge64(rh, rl, dh, dl) {
        let (h, l) = shl64(rh, rl, 1u32);
        rh = h;
        rl = l;
        e -= 1i32;
    }
    // 26 quotient bits by restoring division (the first is 1), the remainder as sticky.
    let mut q = 0u32;
    for _ in 0..26u32 {
        q <<= 1u32;
        if ge64(rh, rl, dh, dl) {
            let (h, l) = sub64(rh, rl, dh, dl);
            rh = h;
            rl = l;
            q |= 1u32;
        }
        let (h, l) = shl64(rh, rl, 1u32);
        rh = h;
        rl = l;
    }
    round_pack(0u32, 0u32, q, e - 25i32, (rh | rl) != 0u32)
}

/// ggml's vectorized `expf` (`ggml_v_expf`, its AVX-512 form), operation for operation as the
/// CPU's `ggml_expf` (`nn/flex.rs`).
#[cube]
#[allow(unused_assignments)]
pub fn ggml_expf(x: f32, #[comptime] soft: bool) -> f32 {
    let r = f32::reinterpret(0x4b40_0000u32);
    let z = fmadd(x, f32::reinterpret(0x3fb8_aa3bu32), r, soft);
    let n = z - r;
    let b = fmadd(
        -n,
        f32::reinterpret(0x35bf_be8eu32),
        fmadd(-n, f32::reinterpret(0x3f31_7200u32), x, soft),
        soft,
    );
    let u = b * b;
    let p5 = fmadd(
        f32::reinterpret(0x3c07_2010u32),
        b,
        f32::reinterpret(0x3d2b_9f17u32),
        soft,
    );
    let p3 = fmadd(
        f32::reinterpret(0x3e2a_af33u32),
        b,
        f32::reinterpret(0x3eff_fedbu32),
        soft,
    );
    let p1 = fmadd(f32::reinterpret(0x3f7f_fff6u32), b, 1.0f32, soft);
    let j = fmadd(fmadd(p5, u, p3, soft), u, p1, soft);
    let mut out = 0.0f32;
    if f32::abs(n) > 192.0f32 {
        if n > 0.0f32 {
            out = f32::reinterpret(0x7F80_0000u32);
        }
    } else {
        let ni = i32::cast_from(n);
        if ni >= i32::new(-126) && ni <= 127i32 {
            out = j * f32::reinterpret(u32::cast_from(ni + 127i32) << 23u32);
        } else if ni > 127i32 {
            // 2^n overflows f32, as `powi` does.
            out = j * f32::reinterpret(0x7F80_0000u32);
        } else {
            // `powi` squares its way to 2^|n| and takes the reciprocal: 2^-127 is the only
            // power below 2^-126 it reaches (2^128 overflows, so smaller ones are 0).
            let mut p = 0.0f32;
            if ni == i32::new(-127) {
                p = f32::reinterpret(0x40_0000u32);
            }
            out = j * p;
        }
    }
    out
}

#[cube(launch_unchecked)]
fn fma_probe_kernel(x: &[f32], out: &mut [f32]) {
    if ABSOLUTE_POS == 0 {
        out[0] = fma(x[0], x[1], x[2]);
    }
}

/// Whether `fma` in a kernel on `client`'s device rounds once (checked by running it once per
/// device on operands where one and two roundings differ; the answer is kept).
pub fn native_fma(client: &cubecl::client::Client, device: &CubeDevice) -> bool {
    static KNOWN: Mutex<Option<HashMap<CubeDevice, bool>>> = Mutex::new(None);
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&v) = known.get_or_insert_with(HashMap::new).get(device) {
        return v;
    }
    // (1 + 2^-12)² - (1 + 2^-11) = 2^-24 exactly; rounded first, the product loses that bit.
    let a = 1.0f32 + f32::EPSILON * 2048.0;
    let c = -(1.0f32 + f32::EPSILON * 4096.0);
    let input = upload_f32(client, &[a, a, c]);
    let output = client.empty(4);
    // SAFETY: one cube; unit 0 reads three values of `input` and writes one of `output`.
    unsafe {
        fma_probe_kernel::launch_unchecked(
            client,
            CubeCount::new_1d(1),
            CubeDim::new_1d(1),
            BufferArg::from_raw_parts(input, 3),
            BufferArg::from_raw_parts(output.clone(), 1),
        );
    }
    let fused = read_f32(client, output).is_some_and(|v| v[0] == a.mul_add(a, c));
    known
        .get_or_insert_with(HashMap::new)
        .insert(device.clone(), fused);
    fused
}
