//! Decoding GGML blocks inside CubeCL kernels, eight values at a time.
//!
//! Every Cube kernel that reads quantized weights (dequantize, row lookup, mat-vec, tiled
//! mat-mul) goes through [`decode8`], so a format is written once. Eight consecutive values
//! always share one scale (the smallest scale group, Q6_K's, is 16), so a group decodes its
//! scale once. The arithmetic is ggml's `dequantize_row_*`, term for term.

use cubecl::prelude::*;
use kiln_quant::GgmlType;

use crate::cube_util::{byte_at, f16_bits_to_f32, sbyte_at, u16_at};

// ggml type ids, as comptime kernel parameters.
pub const T_F32: u32 = 0;
pub const T_F16: u32 = 1;
pub const T_Q4_0: u32 = 2;
pub const T_Q4_1: u32 = 3;
pub const T_Q5_0: u32 = 6;
pub const T_Q5_1: u32 = 7;
pub const T_Q8_0: u32 = 8;
pub const T_Q4_K: u32 = 12;
pub const T_Q5_K: u32 = 13;
pub const T_Q6_K: u32 = 14;

/// The comptime code of a type [`decode8`] knows.
pub fn code(ty: GgmlType) -> Option<u32> {
    crate::CUBE_TYPES.contains(&ty).then(|| ty.id())
}

/// Whether blocks of type code `ty` carry a minimum `m` (`y = d·q + m`: Q4_1, Q5_1), which the
/// matmul kernels add per block as `m · s` (see [`decode8`]'s `with_min`).
pub fn has_block_min(ty: u32) -> bool {
    ty == T_Q4_1 || ty == T_Q5_1
}

/// Bytes one row of `k` values of `ty` takes (`k` a multiple of the block size).
pub fn row_bytes(ty: GgmlType, k: usize) -> usize {
    k / ty.block_size() * ty.block_bytes()
}

/// Bytes `first .. first + 8` as two little-endian u32 words (2 or 3 word loads instead of 8
/// byte extractions). Reads no word past the one holding byte `first + 7`.
#[cube]
#[allow(unused_assignments)] // CubeCL variables need a value before a branch assigns them.
pub fn bytes8(words: &[u32], first: usize) -> (u32, u32) {
    let w = first / 4;
    let off = u32::cast_from(first % 4) * 8u32;
    let w0 = words[w];
    let w1 = words[w + 1];
    let mut lo = w0;
    let mut hi = w1;
    if off != 0u32 {
        let w2 = words[w + 2];
        lo = (w0 >> off) | (w1 << (32u32 - off));
        hi = (w1 >> off) | (w2 << (32u32 - off));
    }
    (lo, hi)
}

/// Byte `i` (0..8) of the pair `bytes8` returns.
#[cube]
pub fn byte_of(pair: (u32, u32), #[comptime] i: usize) -> u32 {
    let (lo, hi) = pair;
    let word = if comptime!(i < 4) { lo } else { hi };
    (word >> comptime!(((i % 4) * 8) as u32)) & 0xFFu32
}

/// Values `j0..j0 + 8` of the row starting at byte `row_byte` (`j0` a multiple of 8), into
/// `out[0..8]`. Values at or past `k` (only possible for F32/F16 rows) read as 0.
/// With `with_min` false, Q4_1 and Q5_1 values leave out the block minimum (`q·d` only): the matmul
/// kernels add `m · s` per block themselves, `s` being the activation block's f16 sum, as
/// ggml's `vec_dot_q4_1_q8_1` does.
#[cube]
#[allow(unused_assignments)] // CubeCL variables need a value before a branch assigns them.
pub fn decode8(
    words: &[u32],
    row_byte: usize,
    j0: usize,
    k: usize,
    out: &mut Array<f32>,
    #[comptime] ty: u32,
    #[comptime] with_min: bool,
) {
    if comptime!(ty == T_F32) {
        let w0 = row_byte / 4 + j0;
        #[unroll]
        for i in 0..8usize {
            let mut v = 0.0f32;
            if j0 + i < k {
                v = f32::reinterpret(words[w0 + i]);
            }
            out[i] = v;
        }
    }
    if comptime!(ty == T_F16) {
        #[unroll]
        for i in 0..8usize {
            let mut v = 0.0f32;
            if j0 + i < k {
                v = f16_bits_to_f32(u16_at(words, row_byte + (j0 + i) * 2));
            }
            out[i] = v;
        }
    }
    if comptime!(ty == T_Q4_0) {
        // 18 bytes: f16 d, 16 bytes of nibbles (value l low, l + 16 high).
        let base = row_byte + (j0 / 32) * 18;
        let within = j0 % 32;
        let d = f16_bits_to_f32(u16_at(words, base));
        let shift = u32::cast_from(within / 16) * 4u32;
        let b = bytes8(words, base + 2 + within % 16);
        #[unroll]
        for i in 0..8usize {
            let q = (byte_of(b, i) >> shift) & 0xFu32;
            out[i] = f32::cast_from(i32::cast_from(q) - 8i32) * d;
        }
    }
    if comptime!(ty == T_Q4_1) {
        // 20 bytes: f16 d, f16 m, 16 bytes of nibbles.
        let base = row_byte + (j0 / 32) * 20;
        let within = j0 % 32;
        let d = f16_bits_to_f32(u16_at(words, base));
        let mut m = 0.0f32;
        if comptime!(with_min) {
            m = f16_bits_to_f32(u16_at(words, base + 2));
        }
        let shift = u32::cast_from(within / 16) * 4u32;
        let b = bytes8(words, base + 4 + within % 16);
        #[unroll]
        for i in 0..8usize {
            let q = (byte_of(b, i) >> shift) & 0xFu32;
            out[i] = f32::cast_from(q) * d + m;
        }
    }
    if comptime!(ty == T_Q5_0 || ty == T_Q5_1) {
        // Q5_0, 22 bytes: f16 d, u32 qh, 16 bytes of nibbles; Q5_1, 24 bytes: f16 d, f16 m,
        // u32 qh, nibbles. Value l's fifth bit is bit l of qh: q = nibble | bit << 4, and
        // y = d (q - 16) (Q5_0) or d q + m (Q5_1).
        let size = comptime!(if ty == T_Q5_0 { 22usize } else { 24usize });
        let qh_at = comptime!(if ty == T_Q5_0 { 2usize } else { 4usize });
        let base = row_byte + (j0 / 32) * size;
        let within = j0 % 32;
        let d = f16_bits_to_f32(u16_at(words, base));
        let mut m = 0.0f32;
        let mut offset = 0i32;
        if comptime!(ty == T_Q5_1) {
            if comptime!(with_min) {
                m = f16_bits_to_f32(u16_at(words, base + 2));
            }
        } else {
            offset = 16i32;
        }
        let qh = u16_at(words, base + qh_at) | (u16_at(words, base + qh_at + 2) << 16u32);
        let bits = qh >> u32::cast_from(within);
        let shift = u32::cast_from(within / 16) * 4u32;
        let b = bytes8(words, base + qh_at + 4 + within % 16);
        #[unroll]
        for i in 0..8usize {
            let lo = (byte_of(b, i) >> shift) & 0xFu32;
            let hi = (bits >> comptime!(i as u32)) & 1u32;
            let q = i32::cast_from(lo | (hi << 4u32)) - offset;
            out[i] = f32::cast_from(q) * d + m;
        }
    }
    if comptime!(ty == T_Q8_0) {
        // 34 bytes: f16 d, 32 signed bytes.
        let base = row_byte + (j0 / 32) * 34;
        let d = f16_bits_to_f32(u16_at(words, base));
        let b = bytes8(words, base + 2 + j0 % 32);
        #[unroll]
        for i in 0..8usize {
            let raw = byte_of(b, i);
            let q = i32::cast_from(raw) - i32::cast_from(raw >= 128u32) * 256;
            out[i] = f32::cast_from(q) * d;
        }
    }
    if comptime!(ty == T_Q4_K || ty == T_Q5_K) {
        // Q4_K, 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of
        // nibbles. Sub-block s (32 values) uses nibble bytes 32 (s / 2) .., low nibbles when s
        // is even. Q5_K, 176 bytes: the same with qh[32] before the nibbles, whose bit s of byte
        // `within % 32` is the value's fifth bit.
        let five = comptime!(ty == T_Q5_K);
        let size = comptime!(if five { 176usize } else { 144usize });
        let ql_at = comptime!(if five { 48usize } else { 16usize });
        let base = row_byte + (j0 / 256) * size;
        let within = j0 % 256;
        let s = within / 32;
        let d = f16_bits_to_f32(u16_at(words, base));
        let dmin = f16_bits_to_f32(u16_at(words, base + 2));
        let (sc, mn) = scale_min_k4(words, base + 4, s);
        let d1 = d * f32::cast_from(sc);
        let m1 = dmin * f32::cast_from(mn);
        let shift = u32::cast_from(s % 2) * 4u32;
        let ql = bytes8(words, base + ql_at + (within / 64) * 32 + within % 32);
        // (Q4_K reads nibble bytes here and ignores them: one load, no divergent branch.)
        let qh = bytes8(words, base + 16 + within % 32);
        let hshift = u32::cast_from(s);
        #[unroll]
        for i in 0..8usize {
            let mut q = (byte_of(ql, i) >> shift) & 0xFu32;
            if comptime!(five) {
                q |= ((byte_of(qh, i) >> hshift) & 1u32) << 4u32;
            }
            out[i] = d1 * f32::cast_from(q) - m1;
        }
    }
    if comptime!(ty == T_Q6_K) {
        // 210 bytes: ql[128], qh[64], int8 scales[16], f16 d. Each half of 128 values takes
        // 64 ql bytes and 32 qh bytes; quarter `qd` of a half reads ql byte `l` (+32 for odd
        // quarters; high nibble for quarters 2, 3) and bits 2 qd of qh byte `l`.
        let base = row_byte + (j0 / 256) * 210;
        let within = j0 % 256;
        let half = within / 128;
        let qd = (within % 128) / 32;
        let l = within % 32;
        let d = f16_bits_to_f32(u16_at(words, base + 208));
        let sc = sbyte_at(words, base + 192 + half * 8 + l / 16 + qd * 2);
        let dd = d * f32::cast_from(sc);
        let ql_first = base + half * 64 + l + (qd % 2) * 32;
        let ql_shift = u32::cast_from(qd / 2) * 4u32;
        let qh_first = base + 128 + half * 32 + l;
        let qh_shift = u32::cast_from(qd) * 2u32;
        let ql = bytes8(words, ql_first);
        let qh = bytes8(words, qh_first);
        #[unroll]
        for i in 0..8usize {
            let lo = (byte_of(ql, i) >> ql_shift) & 0xFu32;
            let hi = (byte_of(qh, i) >> qh_shift) & 3u32;
            let q = i32::cast_from(lo | (hi << 4u32)) - 32i32;
            out[i] = dd * f32::cast_from(q);
        }
    }
}

/// The 6-bit scale and min of sub-block `s` of a Q4_K/Q5_K block whose 12 scale bytes start at
/// byte `at` (ggml `get_scale_min_k4`).
#[cube]
#[allow(unused_assignments)] // CubeCL variables need a value before a branch assigns them.
pub fn scale_min_k4(words: &[u32], at: usize, s: usize) -> (u32, u32) {
    let mut sc = 0u32;
    let mut mn = 0u32;
    if s < 4 {
        sc = byte_at(words, at + s) & 63u32;
        mn = byte_at(words, at + s + 4) & 63u32;
    } else {
        let hi = byte_at(words, at + s + 4);
        sc = (hi & 0xFu32) | ((byte_at(words, at + s - 4) >> 6u32) << 4u32);
        mn = (hi >> 4u32) | ((byte_at(words, at + s) >> 6u32) << 4u32);
    }
    (sc, mn)
}

/// The minimum `m` of the Q4_1 or Q5_1 block holding value `j` of the row at byte `row_byte`.
#[cube]
pub fn block_min(words: &[u32], row_byte: usize, j: usize, #[comptime] ty: u32) -> f32 {
    let size = comptime!(if ty == T_Q4_1 { 20usize } else { 24usize });
    f16_bits_to_f32(u16_at(words, row_byte + (j / 32) * size + 2))
}
