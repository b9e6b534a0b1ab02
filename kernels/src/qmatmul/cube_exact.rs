//! Quantized matrix products on the Cube backend in the CPU kernels' arithmetic
//! ([`super::Arithmetic::Cpu`]): bit-identical to the Flex path for the types the CPU repacks
//! ([`crate::cpu::x8::TYPES`], whose kernels sum in one order on every instruction set).
//!
//! Activations are quantized as the CPU quantizes them (`cpu::act`: the same bytes, four to a
//! word), and each output follows the x8 kernels (`cpu/x8.rs`, module docs): exact integer dot
//! products per block (`dp4a` on words of four 8-bit values), then the block scale's fused
//! multiply-add into the accumulator, block after block (Q4_1: ggml's eight lane accumulators,
//! one word each, and their `hsum_float_8` tree). The fused multiply-add is the device's `fma`
//! where it rounds once, else [`soft_fma`](crate::cube_softfloat::soft_fma).
//!
//! Two kernels, one order: below [`TILED_FROM`] activation rows one unit per output
//! ([`qmatmul_exact_kernel`]); above, 32 × 32 output tiles ([`qmatmul_exact_tiled_kernel`])
//! whose values for one 32-value step sit in shared memory, each unit owning 4 × 4 outputs and
//! summing the integer products exactly with f32 vec4 FMAs (WGSL has no 8-bit dot product:
//! CubeCL's `dp4a` is a byte-by-byte polyfill there).

// Kernel code is CubeCL's language: `%` instead of `is_multiple_of`.
#![allow(clippy::manual_is_multiple_of)]

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};
use kiln_quant::GgmlType;

use crate::cpu::ActFormat;
use crate::cube_blocks::{
    T_Q4_0, T_Q4_1, T_Q4_K, T_Q5_0, T_Q6_K, T_Q8_0, code, row_bytes, scale_min_k4,
};
use crate::cube_softfloat::{fmadd, native_fma, opaque};
use crate::cube_util::{f16_bits_to_f32, round_to_f16, sbyte_at, u16_at};

/// Activation formats (ggml `vec_dot_type`) of the exact kernels.
const Q8_0: u32 = 0;
const Q8_1: u32 = 1;
const Q8_K: u32 = 2;

/// Units per cube of the decode kernel: consecutive weight rows against one activation row.
const UNITS: u32 = 64;
/// Output tile of the prompt kernel (activation rows × weight rows), 8 × 8 units.
const TILE: usize = 32;
/// Activation rows from which the tiled kernel runs. Measured on llvmpipe (SmolLM2's FFN up,
/// 1536 × 576): one unit per output costs ~1 ms per row for Q4_0 and ~1.5 ms for Q4_1, a 32-row
/// tile ~13 and ~37 ms, so the tile pays from ~16 rows.
pub const TILED_FROM: usize = 16;

/// Packs four values (each in `-128..=127`) into a word, value `i` in byte `i`.
#[cube]
fn pack4(a: i32, b: i32, c: i32, d: i32) -> u32 {
    (u32::cast_from(a) & 0xFFu32)
        | ((u32::cast_from(b) & 0xFFu32) << 8u32)
        | ((u32::cast_from(c) & 0xFFu32) << 16u32)
        | ((u32::cast_from(d) & 0xFFu32) << 24u32)
}

/// One unit per block: `cpu::act`'s quantizers, the quants packed four to a word. Q8_0/Q8_1:
/// `d = max|x| / 127` stored as f16, `q = round-half-even(x · 127 / max|x|)`, Q8_1's
/// `s = f16(d · Σq)`, and `Σq`; Q8_K: the signed value of largest magnitude (first in index
/// order) gives `iscale = -127 / max`, `q = min(round-half-even(iscale · x), 127)`,
/// `d = 1 / iscale` (f32), and the sixteen sums of 16 quants.
#[cube(launch_unchecked)]
fn act_quant_kernel(
    x: &[f32],
    q: &mut [u32],
    d: &mut [f32],
    s: &mut [f32],
    sums: &mut [i32],
    blocks: usize,
    #[comptime] fmt: u32,
) {
    let b = ABSOLUTE_POS;
    if b >= blocks {
        terminate!();
    }
    if comptime!(fmt == Q8_K) {
        let first = b * 256;
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for i in 0..256usize {
            let v = x[first + i];
            if f32::abs(v) > amax {
                amax = f32::abs(v);
                max = v;
            }
        }
        let mut iscale = 0.0f32;
        let mut scale = 0.0f32;
        if amax > 0.0f32 {
            iscale = -127.0f32 / max;
            scale = 1.0f32 / iscale;
        }
        for g in 0..16usize {
            let mut t = 0i32;
            for w in 0..4usize {
                let at = first + g * 16 + w * 4;
                let mut v = Array::<i32>::new(4usize);
                #[unroll]
                for i in 0..4usize {
                    v[i] = i32::cast_from(f32::min(f32::round(iscale * x[at + i]), 127.0f32));
                    t += v[i];
                }
                q[at / 4] = pack4(v[0], v[1], v[2], v[3]);
            }
            sums[b * 16 + g] = t;
        }
        d[b] = scale;
    } else {
        let first = b * 32;
        let mut amax = 0.0f32;
        for i in 0..32usize {
            amax = f32::max(amax, f32::abs(x[first + i]));
        }
        let scale = amax / 127.0f32;
        let mut id = 0.0f32;
        if amax != 0.0f32 {
            id = 127.0f32 / amax;
        }
        let mut t = 0i32;
        for w in 0..8usize {
            let mut v = Array::<i32>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                v[i] = i32::cast_from(f32::round(x[first + w * 4 + i] * id));
                t += v[i];
            }
            q[first / 4 + w] = pack4(v[0], v[1], v[2], v[3]);
        }
        d[b] = round_to_f16(scale);
        sums[b] = t;
        if comptime!(fmt == Q8_1) {
            s[b] = round_to_f16(scale * f32::cast_from(t));
        }
    }
}

/// Bytes `first .. first + 4` as a little-endian word (any alignment).
#[cube]
fn bytes4(words: &[u32], first: usize) -> u32 {
    let w = first / 4;
    let off = u32::cast_from(first % 4) * 8u32;
    let mut out = words[w];
    if off != 0u32 {
        out = (out >> off) | (words[w + 1] << (32u32 - off));
    }
    out
}

/// Values `j .. j + 4` (`j` a multiple of 4) of the weight row at byte `rb`, packed four to a
/// word, as the CPU's integer dot products take them: Q4_0/Q4_1/Q4_K the nibble (0..15), Q5_0
/// the 5-bit value (0..31), Q8_0 the signed byte, Q6_K the 6-bit value (0..63). The offsets
/// (−8, −16, −32) are taken off through the activations' sums, as the x8 kernels do.
#[cube]
#[allow(unused_assignments)]
fn qword(words: &[u32], rb: usize, j: usize, #[comptime] ty: u32) -> u32 {
    let mut out = 0u32;
    if comptime!(ty == T_Q4_0 || ty == T_Q4_1 || ty == T_Q5_0) {
        let size = comptime!(if ty == T_Q4_0 {
            18usize
        } else if ty == T_Q4_1 {
            20usize
        } else {
            22usize
        });
        let qs_at = comptime!(if ty == T_Q4_0 {
            2usize
        } else if ty == T_Q4_1 {
            4usize
        } else {
            6usize
        });
        let base = rb + (j / 32) * size;
        let within = j % 32;
        let shift = u32::cast_from(within / 16) * 4u32;
        out = (bytes4(words, base + qs_at + within % 16) >> shift) & 0x0F0F_0F0Fu32;
        if comptime!(ty == T_Q5_0) {
            let qh = u16_at(words, base + 2) | (u16_at(words, base + 4) << 16u32);
            let h = (qh >> u32::cast_from(within)) & 0xFu32;
            out |= ((h & 1u32) << 4u32)
                | ((h & 2u32) << 11u32)
                | ((h & 4u32) << 18u32)
                | ((h & 8u32) << 25u32);
        }
    }
    if comptime!(ty == T_Q8_0) {
        out = bytes4(words, rb + (j / 32) * 34 + 2 + j % 32);
    }
    if comptime!(ty == T_Q4_K) {
        let within = j % 256;
        let s = within / 32;
        let at = rb + (j / 256) * 144 + 16 + (s / 2) * 32 + within % 32;
        out = (words[at / 4] >> (u32::cast_from(s % 2) * 4u32)) & 0x0F0F_0F0Fu32;
    }
    if comptime!(ty == T_Q6_K) {
        let base = rb + (j / 256) * 210;
        let within = j % 256;
        let h = within / 128;
        let s = (within % 128) / 32;
        let l = within % 32;
        let ql = bytes4(words, base + 64 * h + 32 * (s % 2) + l);
        let qh = bytes4(words, base + 128 + 32 * h + l);
        out = ((ql >> (u32::cast_from(s / 2) * 4u32)) & 0x0F0F_0F0Fu32)
            | (((qh >> (u32::cast_from(s) * 2u32)) & 0x0303_0303u32) << 4u32);
    }
    out
}

/// `Σ` of the four products of two packed words.
#[cube]
fn dot4(a: u32, b: u32) -> i32 {
    dp4a(i32::cast_from(a), i32::cast_from(b), 0i32)
}

/// One 32-value step's integer terms for the types summed per block, `(to isum, to mins)`, from
/// the step's dot products `lo` (values 0..16) and `hi` (16..32): Q4_0/Q5_0/Q8_0 `Σ w·y` minus the
/// offset (8, 16, 0) times the block's `Σ y` (`y0`); Q4_K the sub-block's `sc·Σ q·y`
/// (`s0 = sc`) and `m·Σ y` (`s1 = m`, `y0 + y1` its two 16-value sums); Q6_K
/// `Σ sc_g·(Σ q·y − 32·Σ y)` over its two 16-value groups (`s0`, `s1`; `y0`, `y1`).
#[cube]
#[allow(unused_assignments, clippy::too_many_arguments)]
fn sums_from_dots(
    lo: i32,
    hi: i32,
    s0: i32,
    s1: i32,
    y0: i32,
    y1: i32,
    #[comptime] ty: u32,
) -> (i32, i32) {
    let mut isum = lo + hi;
    let mut mins = 0i32;
    if comptime!(ty == T_Q4_0) {
        isum -= 8i32 * y0;
    }
    if comptime!(ty == T_Q5_0) {
        isum -= 16i32 * y0;
    }
    if comptime!(ty == T_Q4_K) {
        isum *= s0;
        mins = s1 * (y0 + y1);
    }
    if comptime!(ty == T_Q6_K) {
        isum = s0 * (lo - 32i32 * y0) + s1 * (hi - 32i32 * y1);
    }
    (isum, mins)
}

/// [`sums_from_dots`] of one step's words (`dp4a` on each pair).
#[cube]
fn step_sums(
    w: &Array<u32>,
    x: &Array<u32>,
    s0: i32,
    s1: i32,
    y0: i32,
    y1: i32,
    #[comptime] ty: u32,
) -> (i32, i32) {
    let mut lo = 0i32;
    let mut hi = 0i32;
    #[unroll]
    for l in 0..4usize {
        lo += dot4(w[l], x[l]);
        hi += dot4(w[l + 4], x[l + 4]);
    }
    sums_from_dots(lo, hi, s0, s1, y0, y1, ty)
}

/// Q4_1's step (one block): each lane's word product into its accumulator
/// (`lanes[at + l] = fma(scale, Σ, lanes[at + l])`).
#[cube]
fn q4_1_step(
    lanes: &mut Array<f32>,
    #[comptime] at: usize,
    w: &Array<u32>,
    x: &Array<u32>,
    scale: f32,
    #[comptime] soft: bool,
) {
    #[unroll]
    for l in 0..8usize {
        lanes[at + l] = fmadd(scale, f32::cast_from(dot4(w[l], x[l])), lanes[at + l], soft);
    }
}

/// The block scalars of weight row `rb` for block `b` (step `t` of it): `(d, m or dmin, s0, s1)`,
/// `s0`/`s1` as [`step_sums`] takes them.
#[cube]
#[allow(unused_assignments)]
fn weight_scalars(
    words: &[u32],
    rb: usize,
    b: usize,
    t: usize,
    block_bytes: usize,
    #[comptime] ty: u32,
) -> (f32, f32, i32, i32) {
    let base = rb + b * block_bytes;
    let mut d = 0.0f32;
    let mut m = 0.0f32;
    let mut s0 = 0i32;
    let mut s1 = 0i32;
    if comptime!(ty == T_Q4_K) {
        let (sc, mn) = scale_min_k4(words, base + 4, t);
        s0 = i32::cast_from(sc);
        s1 = i32::cast_from(mn);
        d = f16_bits_to_f32(u16_at(words, base));
        m = f16_bits_to_f32(u16_at(words, base + 2));
    } else if comptime!(ty == T_Q6_K) {
        s0 = sbyte_at(words, base + 192 + 2 * t);
        s1 = sbyte_at(words, base + 192 + 2 * t + 1);
        d = f16_bits_to_f32(u16_at(words, base + 208));
    } else {
        d = f16_bits_to_f32(u16_at(words, base));
        if comptime!(ty == T_Q4_1) {
            m = f16_bits_to_f32(u16_at(words, base + 2));
        }
    }
    (d, m, s0, s1)
}

/// The block's multiply-adds after its integer sums (every type but Q4_1, whose lanes take
/// theirs per step): `acc = fma(d·d_a, isum, acc)`, Q4_K also
/// `acc_m = fma(-(dmin·d_a), mins, acc_m)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_fma(
    acc: f32,
    acc_m: f32,
    isum: i32,
    mins: i32,
    d: f32,
    dmin: f32,
    ad: f32,
    #[comptime] ty: u32,
    #[comptime] soft: bool,
) -> (f32, f32) {
    let a = fmadd(d * ad, f32::cast_from(isum), acc, soft);
    let mut am = acc_m;
    if comptime!(ty == T_Q4_K) {
        am = fmadd(-(dmin * ad), f32::cast_from(mins), acc_m, soft);
    }
    (a, am)
}

/// Output `(r, o)` per unit — activation row `r = CUBE_POS_Y`, weight row
/// `o = CUBE_POS_X · UNITS + UNIT_POS` — the blocks in order (decode).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn qmatmul_exact_kernel(
    words: &[u32],
    xq: &[u32],
    xd: &[f32],
    xs: &[f32],
    xsums: &[i32],
    out: &mut [f32],
    n: usize,
    k: usize,
    row_bytes: usize,
    zero: u32,
    #[comptime] ty: u32,
    #[comptime] soft: bool,
) {
    let o = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS as usize;
    let r = CUBE_POS_Y as usize;
    if o >= n {
        terminate!();
    }
    let rb = o * row_bytes;
    let k_quant = comptime!(ty == T_Q4_K || ty == T_Q6_K);
    let bs = comptime!(if k_quant { 256usize } else { 32usize });
    let nb = k / bs;
    let block_bytes = row_bytes / nb;
    let mut lanes = Array::<f32>::new(8usize);
    #[unroll]
    for l in 0..8usize {
        lanes[l] = 0.0f32;
    }
    let mut acc = 0.0f32;
    let mut acc_m = 0.0f32;
    let mut summs = 0.0f32;
    let mut w = Array::<u32>::new(8usize);
    let mut x = Array::<u32>::new(8usize);
    for b in 0..nb {
        let ab = r * nb + b;
        let ad = xd[ab];
        let mut isum = 0i32;
        let mut mins = 0i32;
        let mut d = 0.0f32;
        let mut dm = 0.0f32;
        // 32-value steps of the block (one for the 32-value types, eight for the K-quants).
        for t in 0..comptime!(bs / 32) {
            let j0 = b * bs + t * 32;
            #[unroll]
            for l in 0..8usize {
                w[l] = qword(words, rb, j0 + 4 * l, ty);
                x[l] = xq[(r * k + j0) / 4 + l];
            }
            let (wd, wm, s0, s1) = weight_scalars(words, rb, b, t, block_bytes, ty);
            d = wd;
            dm = wm;
            if comptime!(ty == T_Q4_1) {
                summs += wm * xs[ab];
                q4_1_step(&mut lanes, 0usize, &w, &x, wd * ad, soft);
            } else {
                let mut y0 = xsums[ab];
                let mut y1 = 0i32;
                if comptime!(k_quant) {
                    y0 = xsums[ab * 16 + 2 * t];
                    y1 = xsums[ab * 16 + 2 * t + 1];
                }
                let (di, dmi) = step_sums(&w, &x, s0, s1, y0, y1, ty);
                isum += di;
                mins += dmi;
            }
        }
        if comptime!(ty != T_Q4_1) {
            let (a, am) = block_fma(acc, acc_m, isum, mins, d, dm, ad, ty, soft);
            acc = a;
            acc_m = am;
        }
    }
    out[r * n + o] = finish(&lanes, acc, acc_m, summs, zero, ty);
}

/// An output from its accumulators: Q4_1's `hsum_float_8` tree of the lanes plus the minima's
/// sum, Q4_K's `acc + acc_m`, else `acc` (each term made opaque: see
/// [`opaque`](crate::cube_softfloat::opaque)).
#[cube]
#[allow(unused_assignments)]
fn finish(
    lanes: &Array<f32>,
    acc: f32,
    acc_m: f32,
    summs: f32,
    zero: u32,
    #[comptime] ty: u32,
) -> f32 {
    let mut y = acc;
    if comptime!(ty == T_Q4_1) {
        let mut v = Array::<f32>::new(8usize);
        #[unroll]
        for l in 0..8usize {
            v[l] = opaque(lanes[l], zero);
        }
        y = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])) + opaque(summs, zero);
    }
    if comptime!(ty == T_Q4_K) {
        y = opaque(acc, zero) + opaque(acc_m, zero);
    }
    y
}

type V4 = Vector<f32, Const<4>>;

/// The four 8-bit values of a packed word as floats (`signed`: two's complement).
#[cube]
fn unpack4(word: u32, #[comptime] signed: bool) -> Array<f32> {
    let mut out = Array::<f32>::new(4usize);
    #[unroll]
    for i in 0..4usize {
        let byte = (word >> comptime!((8 * i) as u32)) & 0xFFu32;
        let mut v = i32::cast_from(byte);
        if comptime!(signed) {
            v -= i32::cast_from(byte >= 128u32) * 256;
        }
        out[i] = f32::cast_from(v);
    }
    out
}

/// 32 × 32 outputs per cube of 8 × 8 units; unit `(tr, tc)` owns activation rows `4tr .. 4tr + 3`
/// and weight rows `4tc .. 4tc + 3`. Per 32-value step the cube stages both sides' values in
/// shared memory as vec4s of four rows, and each unit sums their products with f32 vec4 FMAs:
/// the values are small integers and every partial sum stays below 2^24 (a step's 32 products of
/// at most 127 · 127), so those sums are exact in any order. The step's partial sums — one per
/// step, Q6_K two (its 16-value groups), Q4_1 eight (ggml's lanes) — then take the same integer
/// terms and fused multiply-adds, in the same order, as [`qmatmul_exact_kernel`].
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn qmatmul_exact_tiled_kernel(
    words: &[u32],
    xq: &[u32],
    xd: &[f32],
    xs: &[f32],
    xsums: &[i32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    row_bytes: usize,
    zero: u32,
    #[comptime] ty: u32,
    #[comptime] soft: bool,
) {
    let tile_n = CUBE_POS_X as usize * 32;
    let tile_m = CUBE_POS_Y as usize * 32;
    let u = UNIT_POS as usize;
    let tr = u / 8;
    let tc = u % 8;
    let k_quant = comptime!(ty == T_Q4_K || ty == T_Q6_K);
    let bs = comptime!(if k_quant { 256usize } else { 32usize });
    let nb = k / bs;
    // Partial sums per step and the values each covers.
    let parts = comptime!(if ty == T_Q4_1 {
        8usize
    } else if ty == T_Q6_K {
        2usize
    } else {
        1usize
    });
    let span = comptime!(32 / parts);
    // Values of the step, K-major: [kk][row group] (vec4 of 4 rows).
    let mut ws = Shared::<[V4]>::new_slice(256usize);
    let mut xw = Shared::<[V4]>::new_slice(256usize);
    // Weight rows: d, and Q4_1's m or Q4_K's dmin; [`step_sums`]' s0, s1.
    let mut wd = Shared::<[f32]>::new_slice(32usize);
    let mut wm = Shared::<[f32]>::new_slice(32usize);
    let mut wsub = Shared::<[i32]>::new_slice(64usize);
    // Activation rows: d, Q8_1's s, [`step_sums`]' y0, y1.
    let mut xdv = Shared::<[f32]>::new_slice(32usize);
    let mut xsv = Shared::<[f32]>::new_slice(32usize);
    let mut xsub = Shared::<[i32]>::new_slice(64usize);

    let lanes_per = comptime!(if ty == T_Q4_1 { 8usize } else { 1usize });
    let mut lanes = Array::<f32>::new(comptime!(16 * lanes_per));
    #[unroll]
    for a in 0..comptime!(16 * lanes_per) {
        lanes[a] = 0.0f32;
    }
    let mut acc = Array::<f32>::new(16usize);
    let mut acc_m = Array::<f32>::new(16usize);
    let mut summs = Array::<f32>::new(16usize);
    let mut isum = Array::<i32>::new(16usize);
    let mut mins = Array::<i32>::new(16usize);
    #[unroll]
    for a in 0..16usize {
        acc[a] = 0.0f32;
        acc_m[a] = 0.0f32;
        summs[a] = 0.0f32;
        isum[a] = 0i32;
        mins[a] = 0i32;
    }
    let mut part = Array::<V4>::new(comptime!(4 * parts));
    // Unit u stages values 4(u % 8) .. + 3 of the step for row group u / 8 of both sides.
    let sg = u / 8;
    let sk = (u % 8) * 4;
    for b in 0..nb {
        for t in 0..comptime!(bs / 32) {
            let j0 = b * bs + t * 32;
            let mut wv = Array::<V4>::new(4usize);
            let mut xv = Array::<V4>::new(4usize);
            #[unroll]
            for q in 0..4usize {
                wv[q] = V4::broadcast(0.0f32);
                xv[q] = V4::broadcast(0.0f32);
            }
            #[unroll]
            for rr in 0..4usize {
                let wr = tile_n + sg * 4 + rr;
                if wr < n {
                    let word = qword(words, wr * row_bytes, j0 + sk, ty);
                    let vals = unpack4(word, comptime!(ty == T_Q8_0));
                    #[unroll]
                    for q in 0..4usize {
                        let mut v = wv[q];
                        v.insert(rr, vals[q]);
                        wv[q] = v;
                    }
                }
                let xr = tile_m + sg * 4 + rr;
                if xr < m {
                    let vals = unpack4(xq[(xr * k + j0 + sk) / 4], true);
                    #[unroll]
                    for q in 0..4usize {
                        let mut v = xv[q];
                        v.insert(rr, vals[q]);
                        xv[q] = v;
                    }
                }
            }
            #[unroll]
            for q in 0..4usize {
                ws[(sk + q) * 8 + sg] = wv[q];
                xw[(sk + q) * 8 + sg] = xv[q];
            }
            if u < 32 {
                let row = tile_n + u;
                if row < n {
                    let (d, m2, s0, s1) =
                        weight_scalars(words, row * row_bytes, b, t, row_bytes / nb, ty);
                    wd[u] = d;
                    wm[u] = m2;
                    wsub[2 * u] = s0;
                    wsub[2 * u + 1] = s1;
                }
            } else {
                let v = u - 32;
                let row = tile_m + v;
                if row < m {
                    let ab = row * nb + b;
                    xdv[v] = xd[ab];
                    if comptime!(ty == T_Q4_1) {
                        xsv[v] = xs[ab];
                    }
                    if comptime!(k_quant) {
                        xsub[2 * v] = xsums[ab * 16 + 2 * t];
                        xsub[2 * v + 1] = xsums[ab * 16 + 2 * t + 1];
                    } else {
                        xsub[2 * v] = xsums[ab];
                    }
                }
            }
            sync_cube();
            // The step's exact partial sums, 4 × 4 outputs.
            #[unroll]
            for a in 0..comptime!(4 * parts) {
                part[a] = V4::broadcast(0.0f32);
            }
            #[unroll]
            for kk in 0..32usize {
                let p = comptime!(kk / span);
                let xv = xw[kk * 8 + tr];
                let wv = ws[kk * 8 + tc];
                #[unroll]
                for i in 0..4usize {
                    part[p * 4 + i] += V4::broadcast(xv.extract(i)) * wv;
                }
            }
            #[unroll]
            for i in 0..4usize {
                let r = 4 * tr + i;
                #[unroll]
                for j in 0..4usize {
                    let c = 4 * tc + j;
                    let a = i * 4 + j;
                    if comptime!(ty == T_Q4_1) {
                        summs[a] += wm[c] * xsv[r];
                        let scale = wd[c] * xdv[r];
                        #[unroll]
                        for l in 0..8usize {
                            let at = a * 8 + l;
                            lanes[at] = fmadd(scale, part[l * 4 + i].extract(j), lanes[at], soft);
                        }
                    } else {
                        let lo = i32::cast_from(part[i].extract(j));
                        let mut hi = 0i32;
                        if comptime!(ty == T_Q6_K) {
                            hi = i32::cast_from(part[4 + i].extract(j));
                        }
                        let (di, dmi) = sums_from_dots(
                            lo,
                            hi,
                            wsub[2 * c],
                            wsub[2 * c + 1],
                            xsub[2 * r],
                            xsub[2 * r + 1],
                            ty,
                        );
                        isum[a] += di;
                        mins[a] += dmi;
                    }
                }
            }
            sync_cube();
        }
        if comptime!(ty != T_Q4_1) {
            // The block's fused multiply-adds (its scalars are still staged: the last step's).
            #[unroll]
            for i in 0..4usize {
                let r = 4 * tr + i;
                #[unroll]
                for j in 0..4usize {
                    let c = 4 * tc + j;
                    let a = i * 4 + j;
                    let (f, fm) = block_fma(
                        acc[a], acc_m[a], isum[a], mins[a], wd[c], wm[c], xdv[r], ty, soft,
                    );
                    acc[a] = f;
                    acc_m[a] = fm;
                    isum[a] = 0i32;
                    mins[a] = 0i32;
                }
            }
            sync_cube();
        }
    }
    #[unroll]
    for i in 0..4usize {
        let r = tile_m + 4 * tr + i;
        #[unroll]
        for j in 0..4usize {
            let c = tile_n + 4 * tc + j;
            let a = i * 4 + j;
            let mut l8 = Array::<f32>::new(8usize);
            #[unroll]
            for l in 0..8usize {
                l8[l] = 0.0f32;
                if comptime!(ty == T_Q4_1) {
                    l8[l] = lanes[a * 8 + l];
                }
            }
            if r < m && c < n {
                out[r * n + c] = finish(&l8, acc[a], acc_m[a], summs[a], zero, ty);
            }
        }
    }
}

/// `x[m, k] · W[n, k]ᵀ` in the CPU's arithmetic (`ty` one of the CPU's x8 types,
/// [`crate::cpu::x8::supported`]; `k` whole blocks).
pub(crate) fn launch(
    x: CubeTensor,
    words: CubeTensor,
    ty: GgmlType,
    n: usize,
    k: usize,
) -> CubeTensor {
    let ty_code = code(ty).expect("exact qmatmul: caller checked the type");
    let x = into_contiguous(x);
    let words = into_contiguous(words);
    let client = x.client.clone();
    let m = x.meta.shape().num_elements() / k;
    // The activation format the CPU pairs with these weights.
    let act = ActFormat::for_weights(ty).expect("exact qmatmul: an x8 type");
    let fmt = match act {
        ActFormat::Q8_1 => Q8_1,
        ActFormat::Q8K => Q8_K,
        _ => Q8_0,
    };
    let block = act.block().0;
    let blocks = m * k / block;
    let buffer = |len: usize, dtype: DType| {
        empty_device_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([len.max(1)]),
            dtype,
        )
    };
    let xq = buffer(m * k / 4, DType::U32);
    let xd = buffer(blocks, DType::F32);
    let xs = buffer(if fmt == Q8_1 { blocks } else { 1 }, DType::F32);
    let xsums = buffer(if fmt == Q8_K { blocks * 16 } else { blocks }, DType::I32);
    let dim = CubeDim::new(&client, blocks.max(1));
    let count = cubecl::calculate_cube_count_elemwise(&client, blocks.max(1), dim);
    // SAFETY: unit b reads the values of activation block b (below m·k: rows are whole blocks)
    // and writes its words, its scale, its sums, and — only with Q8_1, whose buffer holds a slot
    // per block — its `s`.
    unsafe {
        act_quant_kernel::launch_unchecked(
            &client,
            count,
            dim,
            x.clone().into_buffer_arg(),
            xq.clone().into_buffer_arg(),
            xd.clone().into_buffer_arg(),
            xs.clone().into_buffer_arg(),
            xsums.clone().into_buffer_arg(),
            blocks,
            fmt,
        );
    }
    let out = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([m, n]),
        DType::F32,
    );
    let soft = !native_fma(&client, &x.device);
    let rb = row_bytes(ty, k);
    if m < TILED_FROM {
        // SAFETY: unit (r, o) with o < n reads weight row o (n whole rows of `rb` in `words`),
        // activation row r < m of the quantized buffers, and writes output (r, o) only.
        unsafe {
            qmatmul_exact_kernel::launch_unchecked(
                &client,
                CubeCount::new_2d(n.div_ceil(UNITS as usize) as u32, m as u32),
                CubeDim::new_1d(UNITS),
                words.into_buffer_arg(),
                xq.into_buffer_arg(),
                xd.into_buffer_arg(),
                xs.into_buffer_arg(),
                xsums.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
                k,
                rb,
                0u32,
                ty_code,
                soft,
            );
        }
    } else {
        // SAFETY: weight rows ≥ n and activation rows ≥ m are never read (zero words staged
        // instead, their scalars left unread); stores are bounded by m and n.
        unsafe {
            qmatmul_exact_tiled_kernel::launch_unchecked(
                &client,
                CubeCount::new_2d(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32),
                CubeDim::new_1d(64),
                words.into_buffer_arg(),
                xq.into_buffer_arg(),
                xd.into_buffer_arg(),
                xs.into_buffer_arg(),
                xsums.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m,
                n,
                k,
                rb,
                0u32,
                ty_code,
                soft,
            );
        }
    }
    out
}
