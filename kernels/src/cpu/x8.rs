//! Weights repacked for the CPU: eight rows interleaved per block ("x8"), llama.cpp's
//! `block_q4_0x8` idea cut to what `vpdpbusd` wants.
//!
//! In GGUF order a matrix–vector product walks one row at a time, 18 or 34 bytes per block, and
//! spends a dozen instructions per row and block on unpacking, scale conversion and one FMA chain.
//! Repacked, one block column of eight rows is one contiguous run: the eight f16 scales (and Q4_1
//! minima), then the quants arranged so that 32-bit lane `r` of each 32-byte vector holds four
//! consecutive values of row `r`. A broadcast of four activation bytes against such a vector gives
//! eight rows' partial dot products in one instruction, and the eight rows' scales are one f16
//! vector. Loads are one sequential stream per thread.
//!
//! Block `b` of group `g` (rows `8g..8g+8`) sits at `(g·nb + b)·packed_block` (`8·block_bytes`,
//! Q4_K 32 more):
//! - Q4_0: `d[8]` f16, then 4 × 32 bytes; byte `4r + t` of vector `v` is byte `4v + t` of row
//!   `r`'s `qs` (low nibble: value `4v + t`, high nibble: value `16 + 4v + t`);
//! - Q4_1: `d[8]`, `m[8]` f16, then the same 128 bytes;
//! - Q5_0: `d[8]` f16, then the fifth bits as one vector (bit `v` of byte `4r + t`: value
//!   `4(v % 4) + t + 16(v / 4)` of row `r`, so vector `v` of the nibbles takes its bits with a
//!   mask and a shift), then Q4_0's 128 bytes of nibbles;
//! - Q8_0: `d[8]` f16, then 8 × 32 bytes; byte `4r + t` of vector `l` is value `4l + t` of row `r`;
//! - Q4_K (256-value blocks): `d[8]`, `dmin[8]` f16, the 6-bit scales and minima decoded to
//!   bytes (`sc[sub-block][row]`, then `m[sub-block][row]`), then for each pair `p` of 32-value
//!   sub-blocks 8 × 32 bytes: byte `4r + t` of vector `v` is byte `32p + 4v + t` of row `r`'s
//!   `qs` (low nibble: sub-block `2p`, high nibble: `2p + 1`, value `4v + t`);
//! - Q6_K (256-value blocks): `d[8]` f16, `scales[16][8]` i8, then for each half `h` and
//!   `c = 0..8` three vectors in the order the kernel reads them: `ql` bytes `64h + 4c + t`,
//!   `ql` bytes `64h + 32 + 4c + t` and `qh` bytes `32h + 4c + t` of row `r` at `4r + t`.
//!
//! The sizes are those of the GGUF blocks, so a repacked model takes no more memory — except
//! Q4_K, whose decoded scales add 32 bytes per 8 × 144 (2.8%).
//!
//! Summation orders (every kernel — scalar, AVX2, AVX-512 VNNI, one row or a batch — computes
//! each output with the same operations in the same order, so results are bit-identical across
//! them):
//! - Q4_0, Q5_0, Q8_0: per block the exact integer dot product of the row, then
//!   `acc = fma(d_w·d_a, isum, acc)` block by block;
//! - Q4_K: per block the exact integer sums `Σ sc·(q·y)` and `Σ m·Σy` of the row, then
//!   `acc = fma(d·d_a, sums, acc)`, `acc_m = fma(-dmin·d_a, mins, acc_m)`, `acc + acc_m`;
//! - Q6_K: per block the exact integer `Σ sc·(Σ q·y - 32·Σ y)` over its 16-value groups, then
//!   `acc = fma(d·d_a, sum, acc)`;
//! - Q4_1: ggml's `ggml_vec_dot_q4_1_q8_1` order kept exactly (the fixture's logits are
//!   bit-identical to llama.cpp's): eight lane accumulators of four-value partial sums, its
//!   `hsum_float_8` order, plus the minima's sum accumulated block by block.

use std::ops::Range;
use std::sync::Mutex;

use half::f16;
use kiln_quant::GgmlType;

use super::{ActFormat, Isa, pool};

/// Rows per interleaved group.
pub const GROUP: usize = 8;

/// The weight types with an x8 layout and kernels.
pub const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Whether weights of `ty` have an x8 layout and kernels.
pub fn supported(ty: GgmlType) -> bool {
    TYPES.contains(&ty)
}

/// Whether an `[n, k]` matrix of `ty` can be repacked: whole groups of rows, whole blocks.
pub fn applies(ty: GgmlType, n: usize, k: usize) -> bool {
    supported(ty) && n > 0 && n.is_multiple_of(GROUP) && k > 0 && k.is_multiple_of(ty.block_size())
}

/// Bytes of one packed block (eight rows).
fn packed_block(ty: GgmlType) -> usize {
    if ty == GgmlType::Q4_K {
        GROUP * ty.block_bytes() + 32
    } else {
        // Q6_K included: the same bytes, rearranged.
        GROUP * ty.block_bytes()
    }
}

/// Bytes of an x8-packed `[n, k]` matrix.
pub fn packed_bytes(ty: GgmlType, n: usize, k: usize) -> usize {
    n / GROUP * (k / ty.block_size()) * packed_block(ty)
}

/// Where Q4_K's packed block holds the decoded scales, minima and the quants.
const K_SC: usize = 32;
const K_M: usize = 96;
const K_QS: usize = 160;

fn repack_q4_k(dst: &mut [u8], q: usize, s: &[u8]) {
    dst[2 * q..2 * q + 2].copy_from_slice(&s[..2]);
    dst[16 + 2 * q..18 + 2 * q].copy_from_slice(&s[2..4]);
    let (sc, m) = super::dot_scalar::q4k_scales_mins(&s[4..16]);
    for j in 0..8 {
        dst[K_SC + 8 * j + q] = sc[j];
        dst[K_M + 8 * j + q] = m[j];
    }
    for p in 0..4 {
        for v in 0..8 {
            dst[K_QS + 256 * p + 32 * v + 4 * q..][..4]
                .copy_from_slice(&s[16 + 32 * p + 4 * v..][..4]);
        }
    }
}

fn repack_q5_0(dst: &mut [u8], q: usize, s: &[u8]) {
    dst[2 * q..2 * q + 2].copy_from_slice(&s[..2]);
    let qh = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
    for t in 0..4 {
        let mut byte = 0u8;
        for v in 0..8 {
            let j = 4 * (v % 4) + t + 16 * (v / 4);
            byte |= (((qh >> j) & 1) as u8) << v;
        }
        dst[16 + 4 * q + t] = byte;
    }
    for c in 0..4 {
        dst[48 + 32 * c + 4 * q..][..4].copy_from_slice(&s[6 + 4 * c..][..4]);
    }
}

fn unpack_q5_0(src: &[u8], q: usize, d: &mut [u8]) {
    d[..2].copy_from_slice(&src[2 * q..2 * q + 2]);
    let mut qh = 0u32;
    for t in 0..4 {
        let byte = src[16 + 4 * q + t];
        for v in 0..8 {
            let j = 4 * (v % 4) + t + 16 * (v / 4);
            qh |= u32::from((byte >> v) & 1) << j;
        }
    }
    d[2..6].copy_from_slice(&qh.to_le_bytes());
    for c in 0..4 {
        d[6 + 4 * c..][..4].copy_from_slice(&src[48 + 32 * c + 4 * q..][..4]);
    }
}

/// Where Q6_K's packed block holds the scales, and the vectors of `ql` (`c` in 0..16) and `qh`
/// (`c` in 0..8) of half `h`.
const K6_SC: usize = 16;
const fn k6_ql(h: usize, c: usize) -> usize {
    144 + 96 * (8 * h + c % 8) + 32 * (c / 8)
}
const fn k6_qh(h: usize, c: usize) -> usize {
    144 + 96 * (8 * h + c) + 64
}

fn repack_q6_k(dst: &mut [u8], q: usize, s: &[u8]) {
    dst[2 * q..2 * q + 2].copy_from_slice(&s[208..210]);
    for g in 0..16 {
        dst[K6_SC + 8 * g + q] = s[192 + g];
    }
    for c in 0..32 {
        dst[k6_ql(c / 16, c % 16) + 4 * q..][..4].copy_from_slice(&s[4 * c..][..4]);
    }
    for c in 0..16 {
        dst[k6_qh(c / 8, c % 8) + 4 * q..][..4].copy_from_slice(&s[128 + 4 * c..][..4]);
    }
}

fn unpack_q6_k(src: &[u8], q: usize, d: &mut [u8]) {
    d[208..210].copy_from_slice(&src[2 * q..2 * q + 2]);
    for g in 0..16 {
        d[192 + g] = src[K6_SC + 8 * g + q];
    }
    for c in 0..32 {
        d[4 * c..][..4].copy_from_slice(&src[k6_ql(c / 16, c % 16) + 4 * q..][..4]);
    }
    for c in 0..16 {
        d[128 + 4 * c..][..4].copy_from_slice(&src[k6_qh(c / 8, c % 8) + 4 * q..][..4]);
    }
}

/// The inverse of [`repack_q4_k`] for row `q`: the 6-bit scales packed back as ggml packs them
/// (every bit of the 12 bytes is a bit of a scale or minimum, so this is exact).
fn unpack_q4_k(src: &[u8], q: usize, d: &mut [u8]) {
    d[..2].copy_from_slice(&src[2 * q..2 * q + 2]);
    d[2..4].copy_from_slice(&src[16 + 2 * q..18 + 2 * q]);
    let sc = |j: usize| src[K_SC + 8 * j + q];
    let m = |j: usize| src[K_M + 8 * j + q];
    for j in 0..4 {
        d[4 + j] = sc(j) | ((sc(j + 4) >> 4) << 6);
        d[8 + j] = m(j) | ((m(j + 4) >> 4) << 6);
        d[12 + j] = (sc(j + 4) & 0x0F) | ((m(j + 4) & 0x0F) << 4);
    }
    for p in 0..4 {
        for v in 0..8 {
            d[16 + 32 * p + 4 * v..][..4]
                .copy_from_slice(&src[K_QS + 256 * p + 32 * v + 4 * q..][..4]);
        }
    }
}

/// Bytes before the quants in a packed block: the scales (and Q4_1's minima).
fn header(ty: GgmlType) -> usize {
    if ty == GgmlType::Q4_1 { 32 } else { 16 }
}

/// Bytes of one row's quants in a GGUF block, and where they start.
fn quants(ty: GgmlType) -> (usize, usize) {
    match ty {
        GgmlType::Q8_0 => (32, 2),
        GgmlType::Q4_1 => (16, 4),
        _ => (16, 2),
    }
}

/// The GGUF blocks of an `[n, k]` matrix (`src`) in the x8 layout. `applies(ty, n, k)` must hold.
pub fn repack(ty: GgmlType, src: &[u8], n: usize, k: usize) -> Vec<u8> {
    assert!(applies(ty, n, k), "x8 repack of [{n}, {k}] {ty}");
    let (bb, nb) = (ty.block_bytes(), k / ty.block_size());
    assert_eq!(
        src.len(),
        n * nb * bb,
        "x8 repack: bytes of [{n}, {k}] {ty}"
    );
    let (qlen, qat) = quants(ty);
    let h = header(ty);
    let pb = packed_block(ty);
    let mut out = vec![0u8; packed_bytes(ty, n, k)];
    for (g, dst_g) in out.chunks_exact_mut(nb * pb).enumerate() {
        for (b, dst) in dst_g.chunks_exact_mut(pb).enumerate() {
            for q in 0..GROUP {
                let s = &src[((g * GROUP + q) * nb + b) * bb..][..bb];
                match ty {
                    GgmlType::Q4_K => repack_q4_k(dst, q, s),
                    GgmlType::Q6_K => repack_q6_k(dst, q, s),
                    GgmlType::Q5_0 => repack_q5_0(dst, q, s),
                    _ => {
                        dst[2 * q..2 * q + 2].copy_from_slice(&s[..2]);
                        if ty == GgmlType::Q4_1 {
                            dst[16 + 2 * q..18 + 2 * q].copy_from_slice(&s[2..4]);
                        }
                        for c in 0..qlen / 4 {
                            dst[h + 32 * c + 4 * q..][..4].copy_from_slice(&s[qat + 4 * c..][..4]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The GGUF blocks of rows `rows` of an x8-packed `[n, k]` matrix, appended to `out`.
pub fn unpack_rows(ty: GgmlType, packed: &[u8], k: usize, rows: Range<usize>, out: &mut Vec<u8>) {
    let (bb, nb) = (ty.block_bytes(), k / ty.block_size());
    let (qlen, qat) = quants(ty);
    let h = header(ty);
    let pb = packed_block(ty);
    for row in rows {
        let (g, q) = (row / GROUP, row % GROUP);
        for b in 0..nb {
            let src = &packed[(g * nb + b) * pb..][..pb];
            let at = out.len();
            out.resize(at + bb, 0);
            let dst = &mut out[at..];
            match ty {
                GgmlType::Q4_K => unpack_q4_k(src, q, dst),
                GgmlType::Q6_K => unpack_q6_k(src, q, dst),
                GgmlType::Q5_0 => unpack_q5_0(src, q, dst),
                _ => {
                    dst[..2].copy_from_slice(&src[2 * q..2 * q + 2]);
                    if ty == GgmlType::Q4_1 {
                        dst[2..4].copy_from_slice(&src[16 + 2 * q..18 + 2 * q]);
                    }
                    for c in 0..qlen / 4 {
                        dst[qat + 4 * c..][..4].copy_from_slice(&src[h + 32 * c + 4 * q..][..4]);
                    }
                }
            }
        }
    }
}

/// One quantized activation row and its per-block scalars, read by the x8 kernels.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    /// The row in its [`ActFormat`] (Q8_0 for Q4_0/Q8_0 weights, Q8_1 for Q4_1).
    pub q: &'a [u8],
    /// Each block's scale as f32.
    pub d: &'a [f32],
    /// Q4_0: 8·Σq of each block, Q5_0: 16·Σq, Q8_0: 128·Σq (the offsets the unsigned products carry);
    /// Q4_K: the eight 32-value sub-block sums of each block; Q6_K: 32 × its sixteen 16-value
    /// sums.
    pub c: &'a [i32],
    /// Q4_1: each block's `s` (d·Σq, as stored in f16) as f32.
    pub s: &'a [f32],
}

/// `R` activation rows against the weights of one call: `[row][W outputs]`.
pub type RowsFn<const W: usize, const R: usize> = fn(usize, &[u8], &[ActRow; R]) -> [[f32; W]; R];

/// `R` activation rows against one group: `[row][8 outputs]`.
pub type X8Fn<const R: usize> = RowsFn<GROUP, R>;

/// Activation rows per call of the batched kernel.
pub const ROWS: usize = 4;

/// `R` activation rows against two consecutive groups (`w` holds both): `[row][16 outputs]`,
/// the first group's eight, then the second's.
pub type PairFn<const R: usize> = RowsFn<{ 2 * GROUP }, R>;

struct Kernels {
    one: X8Fn<1>,
    /// `None`: batches run row by row (Q4_1, whose eight lane accumulators per row fill the
    /// registers).
    rows: Option<X8Fn<ROWS>>,
    /// Kernels over two groups at once (512-bit vectors), bit-identical to the above, for one
    /// row and for [`ROWS`] rows.
    pair: Option<(PairFn<1>, PairFn<ROWS>)>,
}

fn kernels(isa: Isa, ty: GgmlType) -> Kernels {
    macro_rules! pick {
        ($m:path) => {{
            use $m as m;
            match ty {
                GgmlType::Q4_0 => Kernels {
                    one: m::q4_0::<1>,
                    rows: Some(m::q4_0::<ROWS>),
                    pair: None,
                },
                GgmlType::Q5_0 => Kernels {
                    one: m::q5_0::<1>,
                    rows: Some(m::q5_0::<ROWS>),
                    pair: None,
                },
                GgmlType::Q8_0 => Kernels {
                    one: m::q8_0::<1>,
                    rows: Some(m::q8_0::<ROWS>),
                    pair: None,
                },
                GgmlType::Q4_K => Kernels {
                    one: m::q4_k::<1>,
                    rows: Some(m::q4_k::<ROWS>),
                    pair: None,
                },
                GgmlType::Q6_K => Kernels {
                    one: m::q6_k::<1>,
                    rows: Some(m::q6_k::<ROWS>),
                    pair: None,
                },
                _ => Kernels {
                    one: m::q4_1::<1>,
                    rows: None,
                    pair: None,
                },
            }
        }};
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => pick!(safe_x86::avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.available() => {
            use safe_x86::zmm;
            let pair: Option<(PairFn<1>, PairFn<ROWS>)> = match ty {
                GgmlType::Q4_0 => Some((zmm::q4_0::<1>, zmm::q4_0::<ROWS>)),
                GgmlType::Q5_0 => Some((zmm::q5_0::<1>, zmm::q5_0::<ROWS>)),
                GgmlType::Q8_0 => Some((zmm::q8_0::<1>, zmm::q8_0::<ROWS>)),
                _ => None,
            };
            Kernels {
                pair,
                ..pick!(safe_x86::avx512vnni)
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.available() => pick!(safe_neon::neon),
        _ => pick!(scalar),
    }
}

/// The per-block scalars of every activation row ([`ActRow`]'s `d`, `c`, `s`): `per_c` and
/// `per_s` values per block.
struct Scalars {
    d: Vec<f32>,
    c: Vec<i32>,
    s: Vec<f32>,
    per_c: usize,
    per_s: usize,
}

impl Scalars {
    /// Read from the `m` quantized rows `a`, the rows shared among the pool's threads.
    fn of(ty: GgmlType, act: ActFormat, a: &[u8], m: usize, nb: usize) -> Self {
        let per_c = match ty {
            GgmlType::Q4_1 => 0,
            GgmlType::Q4_K => 8,
            GgmlType::Q6_K => 16,
            _ => 1,
        };
        let per_s = usize::from(ty == GgmlType::Q4_1);
        let mut sc = Scalars {
            d: vec![0.0; m * nb],
            c: vec![0; m * nb * per_c],
            s: vec![0.0; m * nb * per_s],
            per_c,
            per_s,
        };
        let a_row = act.row_bytes(nb * ty.block_size());
        // Bytes per block; Q8_0/Q8_1 quants start after d (and s).
        let (ab, qat) = (act.block().1, act.block().1 - 32);
        let offset = match ty {
            GgmlType::Q4_0 => 8,
            GgmlType::Q5_0 => 16,
            _ => 128,
        };
        // Rows `first..` of `a` into their slices of d, c, s.
        let fill = |first: usize, d: &mut [f32], c: &mut [i32], s: &mut [f32]| {
            let rows = d.len() / nb;
            let blocks = a[first * a_row..(first + rows) * a_row].chunks_exact(ab);
            for (i, blk) in blocks.enumerate() {
                if matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
                    // Q8_K: f32 d, 256 quants, 16 sums of 16.
                    d[i] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                    let sum = |h: usize| {
                        i32::from(i16::from_le_bytes([blk[260 + 2 * h], blk[261 + 2 * h]]))
                    };
                    for (j, c) in c[per_c * i..per_c * (i + 1)].iter_mut().enumerate() {
                        *c = if ty == GgmlType::Q6_K {
                            32 * sum(j)
                        } else {
                            sum(2 * j) + sum(2 * j + 1)
                        };
                    }
                } else {
                    // Q8_0 (d, 32 quants) or Q8_1 (d, s, 32 quants).
                    d[i] = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    if ty == GgmlType::Q4_1 {
                        s[i] = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                    } else {
                        c[i] = offset * blk[qat..].iter().map(|&q| i32::from(q as i8)).sum::<i32>();
                    }
                }
            }
        };
        let pool = pool::pool();
        let threads = pool.threads();
        if m == 1 || threads == 1 {
            fill(0, &mut sc.d, &mut sc.c, &mut sc.s);
            return sc;
        }
        let ds = super::split_rows(&mut sc.d, nb, m, threads);
        let cs = super::split_rows(&mut sc.c, nb * per_c, m, threads);
        let ss = super::split_rows(&mut sc.s, nb * per_s, m, threads);
        let parts: Vec<_> = ds.into_iter().zip(cs).zip(ss).map(Mutex::new).collect();
        pool.run(&|t: usize| {
            let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            let ((d, c), s) = &mut *part;
            fill(pool::share(m, threads, t).start, d, c, s);
        });
        sc
    }
}

/// Activation rows `rows` of `act` against the weights `w` (`nb` blocks per row of them):
/// [`ROWS`] rows per call of `four` where there is one, the rest through `one`; each row's `W`
/// outputs to `put`.
fn by_rows<const W: usize>(
    nb: usize,
    w: &[u8],
    act: &[ActRow],
    rows: Range<usize>,
    four: Option<RowsFn<W, ROWS>>,
    one: RowsFn<W, 1>,
    put: &mut dyn FnMut(usize, &[f32; W]),
) {
    let mut i = rows.start;
    if let Some(f) = four {
        while i + ROWS <= rows.end {
            let y = f(nb, w, act[i..i + ROWS].try_into().expect("ROWS rows"));
            for (r, y) in y.iter().enumerate() {
                put(i + r, y);
            }
            i += ROWS;
        }
    }
    for i in i..rows.end {
        put(
            i,
            &one(nb, w, act[i..i + 1].try_into().expect("one row"))[0],
        );
    }
}

/// Activation rows a thread runs against all weight groups before the next rows (they stay in
/// the core's L2 while the weights stream past).
const ROW_CHUNK: usize = 64;

/// `y[m, n] = x[m, k] · W[n, k]ᵀ` with `W` x8-packed ([`repack`]). Same contract as
/// [`super::qmatmul`].
pub fn qmatmul(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    assert!(applies(ty, n, k), "x8 qmatmul of [{n}, {k}] {ty}");
    assert_eq!(w.len(), packed_bytes(ty, n, k), "x8 qmatmul: weight bytes");
    assert_eq!(x.len(), m * k, "x8 qmatmul: activations for [{m}, {k}]");
    let nb = k / ty.block_size();
    let act = ActFormat::for_weights(ty).expect("x8 types have an activation format");
    let a_row = act.row_bytes(k);
    let a = super::quantize_acts(act, x, m, k);
    let sc = Scalars::of(ty, act, &a, m, nb);
    // Every row's slices once: the kernels borrow `ROWS` of them at a time.
    let act_rows: Vec<ActRow> = (0..m)
        .map(|i| ActRow {
            q: &a[i * a_row..(i + 1) * a_row],
            d: &sc.d[i * nb..(i + 1) * nb],
            c: &sc.c[i * nb * sc.per_c..(i + 1) * nb * sc.per_c],
            s: &sc.s[i * nb * sc.per_s..(i + 1) * nb * sc.per_s],
        })
        .collect();
    let kern = kernels(isa, ty);
    let group_bytes = nb * packed_block(ty);

    // Runs activation rows `rows` against groups `groups`, two at a time where the kernels
    // allow, handing each row's outputs for one or two groups to `put`.
    let run_groups = |groups: Range<usize>, rows: Range<usize>, put: super::Put| {
        let mut g = groups.start;
        if let Some((one, four)) = kern.pair {
            while g + 2 <= groups.end {
                let wg = &w[g * group_bytes..(g + 2) * group_bytes];
                by_rows(
                    nb,
                    wg,
                    &act_rows,
                    rows.clone(),
                    Some(four),
                    one,
                    &mut |i, y| put(i, g * GROUP, y),
                );
                g += 2;
            }
        }
        for g in g..groups.end {
            let wg = &w[g * group_bytes..(g + 1) * group_bytes];
            by_rows(
                nb,
                wg,
                &act_rows,
                rows.clone(),
                kern.rows,
                kern.one,
                &mut |i, y| put(i, g * GROUP, y),
            );
        }
    };

    // Activation rows ROW_CHUNK at a time against all the groups `gs`.
    let block = |gs: Range<usize>, rows: Range<usize>, put: super::Put| {
        for c0 in rows.clone().step_by(ROW_CHUNK) {
            let c1 = (c0 + ROW_CHUNK).min(rows.end);
            run_groups(gs.clone(), c0..c1, put);
        }
    };
    super::split_product(m, n, GROUP, &block)
}

/// The portable kernels, in the same order of operations as the SIMD ones (so bit-identical).
mod scalar {
    use super::{ActRow, GROUP};
    use half::f16;

    fn f16_at(p: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([p[2 * i], p[2 * i + 1]]).to_f32()
    }

    /// Value `j` (0..32) of row `q` in a packed block's quants: Q4 unsigned nibbles.
    fn nibble(quants: &[u8], q: usize, j: usize) -> i32 {
        let (v, t) = ((j % 16) / 4, j % 4);
        let byte = quants[32 * v + 4 * q + t];
        i32::from(if j < 16 { byte & 0x0F } else { byte >> 4 })
    }

    pub fn q4_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        q4_or_5::<R, false>(nb, w, a)
    }

    pub fn q5_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        q4_or_5::<R, true>(nb, w, a)
    }

    /// Q4_0 or Q5_0 (the fifth bit of value `j` is bit `v` of byte `4q + t` of the bit vector).
    fn q4_or_5<const R: usize, const FIVE: bool>(
        nb: usize,
        w: &[u8],
        a: &[ActRow; R],
    ) -> [[f32; GROUP]; R] {
        let (bb, qat) = if FIVE { (176, 48) } else { (144, 16) };
        let mut out = [[0.0f32; GROUP]; R];
        for b in 0..nb {
            let blk = &w[bb * b..bb * (b + 1)];
            for (r, a) in a.iter().enumerate() {
                let y = &a.q[34 * b + 2..34 * b + 34];
                for (q, o) in out[r].iter_mut().enumerate() {
                    let dot: i32 = (0..32)
                        .map(|j| {
                            let (v, t) = ((j % 16) / 4 + 4 * (j / 16), j % 4);
                            let hi = if FIVE {
                                i32::from((blk[16 + 4 * q + t] >> v) & 1) << 4
                            } else {
                                0
                            };
                            (nibble(&blk[qat..], q, j) | hi) * i32::from(y[j] as i8)
                        })
                        .sum();
                    let d = f16_at(blk, q) * a.d[b];
                    *o = d.mul_add((dot - a.c[b]) as f32, *o);
                }
            }
        }
        out
    }

    pub fn q8_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        let mut out = [[0.0f32; GROUP]; R];
        for b in 0..nb {
            let blk = &w[272 * b..272 * (b + 1)];
            for (r, a) in a.iter().enumerate() {
                let y = &a.q[34 * b + 2..34 * b + 34];
                for (q, o) in out[r].iter_mut().enumerate() {
                    let dot: i32 = (0..32)
                        .map(|j| {
                            let wq = blk[16 + 32 * (j / 4) + 4 * q + j % 4] as i8;
                            i32::from(wq) * i32::from(y[j] as i8)
                        })
                        .sum();
                    let d = f16_at(blk, q) * a.d[b];
                    *o = d.mul_add(dot as f32, *o);
                }
            }
        }
        out
    }

    pub fn q4_k<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        use super::{K_M, K_QS, K_SC};
        let mut acc = [[0.0f32; GROUP]; R];
        let mut acc_m = [[0.0f32; GROUP]; R];
        for b in 0..nb {
            let blk = &w[1184 * b..1184 * (b + 1)];
            for (r, a) in a.iter().enumerate() {
                let y = &a.q[292 * b + 4..292 * b + 260];
                for q in 0..GROUP {
                    let (mut sums, mut mins) = (0i32, 0i32);
                    for j in 0..8 {
                        let (p, hi) = (j / 2, j % 2 == 1);
                        let dot: i32 = (0..32)
                            .map(|l| {
                                let byte = blk[K_QS + 256 * p + 32 * (l / 4) + 4 * q + l % 4];
                                let nib = if hi { byte >> 4 } else { byte & 0x0F };
                                i32::from(nib) * i32::from(y[32 * j + l] as i8)
                            })
                            .sum();
                        sums += i32::from(blk[K_SC + 8 * j + q]) * dot;
                        mins += i32::from(blk[K_M + 8 * j + q]) * a.c[8 * b + j];
                    }
                    let d = f16_at(blk, q) * a.d[b];
                    let dmin = -(f16_at(blk, 8 + q) * a.d[b]);
                    acc[r][q] = d.mul_add(sums as f32, acc[r][q]);
                    acc_m[r][q] = dmin.mul_add(mins as f32, acc_m[r][q]);
                }
            }
        }
        for r in 0..R {
            for q in 0..GROUP {
                acc[r][q] += acc_m[r][q];
            }
        }
        acc
    }

    pub fn q6_k<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        use super::{K6_SC, k6_qh, k6_ql};
        let mut acc = [[0.0f32; GROUP]; R];
        for b in 0..nb {
            let blk = &w[1680 * b..1680 * (b + 1)];
            for (r, a) in a.iter().enumerate() {
                let y = &a.q[292 * b + 4..292 * b + 260];
                for q in 0..GROUP {
                    let mut sum = 0i32;
                    for g in 0..16 {
                        let dot: i32 = (16 * g..16 * g + 16)
                            .map(|v| {
                                // Value v = 128h + 32s + l of ggml's Q6_K order.
                                let (h, s, l) = (v / 128, (v % 128) / 32, v % 32);
                                let ql = blk[k6_ql(h, l / 4 + 8 * (s % 2)) + 4 * q + l % 4];
                                let qh = blk[k6_qh(h, l / 4) + 4 * q + l % 4];
                                let lo = if s < 2 { ql & 0x0F } else { ql >> 4 };
                                let val = lo | (((qh >> (2 * s)) & 3) << 4);
                                i32::from(val) * i32::from(y[v] as i8)
                            })
                            .sum();
                        sum += i32::from(blk[K6_SC + 8 * g + q] as i8) * (dot - a.c[16 * b + g]);
                    }
                    let d = f16_at(blk, q) * a.d[b];
                    acc[r][q] = d.mul_add(sum as f32, acc[r][q]);
                }
            }
        }
        acc
    }

    pub fn q4_1<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
        let mut out = [[0.0f32; GROUP]; R];
        for (r, a) in a.iter().enumerate() {
            let mut acc = [[0.0f32; 8]; GROUP];
            let mut summs = [0.0f32; GROUP];
            for b in 0..nb {
                let blk = &w[160 * b..160 * (b + 1)];
                let y = &a.q[36 * b + 4..36 * b + 36];
                for q in 0..GROUP {
                    summs[q] += f16_at(blk, 8 + q) * a.s[b];
                    let d = f16_at(blk, q) * a.d[b];
                    for (l, acc) in acc[q].iter_mut().enumerate() {
                        let p: i32 = (4 * l..4 * l + 4)
                            .map(|j| nibble(&blk[32..], q, j) * i32::from(y[j] as i8))
                            .sum();
                        *acc = d.mul_add(p as f32, *acc);
                    }
                }
            }
            for q in 0..GROUP {
                let x = &acc[q];
                let sum = ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]));
                out[r][q] = sum + summs[q];
            }
        }
        out
    }
}

/// Safe entry points to the SIMD kernels: [`kernels`] hands them out only after checking the
/// CPU, and [`qmatmul`] passes whole groups and rows.
#[cfg(target_arch = "x86_64")]
mod safe_x86 {
    macro_rules! wrap {
        ($isa:ident: $($f:ident),*) => {
            pub mod $isa {
                use super::super::{ActRow, GROUP};
                $(pub fn $f<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
                    // SAFETY: reached only through `kernels`, which checked the CPU's features,
                    // with a whole group of `nb` blocks and activation rows of `nb` blocks.
                    unsafe { super::super::super::x8_x86::$isa::$f::<R>(nb, w, a) }
                })*
            }
        };
    }
    wrap!(avx2: q4_0, q4_1, q5_0, q8_0, q4_k, q6_k);
    wrap!(avx512vnni: q4_0, q4_1, q5_0, q8_0, q4_k, q6_k);

    /// The two-group kernels: `w` holds two whole groups.
    pub mod zmm {
        use super::super::super::x8_x86::zmm::Pair;
        use super::super::ActRow;
        macro_rules! wrap_pair {
            ($($f:ident),*) => {
                $(pub fn $f<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> Pair<R> {
                    // SAFETY: reached only through `kernels`, which checked the CPU's features
                    // (AVX-512F/VL/VNNI), with two whole groups of `nb` blocks and activation
                    // rows of `nb` blocks.
                    unsafe { super::super::super::x8_x86::zmm::$f::<R>(nb, w, a) }
                })*
            };
        }
        wrap_pair!(q4_0, q5_0, q8_0);
    }
}

/// Safe entry points to the NEON kernels, as [`safe_x86`].
#[cfg(target_arch = "aarch64")]
mod safe_neon {
    pub mod neon {
        use super::super::{ActRow, GROUP};
        macro_rules! wrap {
            ($($f:ident),*) => {
                $(pub fn $f<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> [[f32; GROUP]; R] {
                    // SAFETY: reached only through `kernels`, which checked the CPU's features,
                    // with a whole group of `nb` blocks and activation rows of `nb` blocks.
                    unsafe { super::super::super::x8_neon::$f::<R>(nb, w, a) }
                })*
            };
        }
        wrap!(q4_0, q4_1, q5_0, q8_0, q4_k, q6_k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * (1.0 + (i % 5) as f32)
            })
            .collect()
    }

    #[test]
    fn repack_round_trips() {
        for &ty in TYPES {
            let (n, k) = (16, 3 * ty.block_size());
            let w = kiln_quant::blocks::quantize_to_vec(ty, &data(n * k, 3)).unwrap();
            let p = repack(ty, &w, n, k);
            assert_ne!(p[..w.len()], w[..], "{ty}");
            let mut back = Vec::new();
            unpack_rows(ty, &p, k, 0..n, &mut back);
            assert_eq!(back, w, "{ty}");
            let mut one = Vec::new();
            unpack_rows(ty, &p, k, 11..12, &mut one);
            let row = w.len() / n;
            assert_eq!(one, w[11 * row..12 * row], "{ty}");
        }
    }

    /// Every ISA (scalar included) gives the same bits, alone or in a batch, along both thread
    /// splits; against the GGUF-order kernels: Q4_1 bit-identical to the x86 ones (llama.cpp's
    /// order), the rest within float rounding.
    #[test]
    fn x8_kernels_agree_with_the_gguf_kernels() {
        for &ty in TYPES {
            for &(m, n, kb) in &[(1, 8, 1), (1, 24, 3), (3, 16, 2), (5, 8, 5), (21, 40, 3)] {
                let k = ty.block_size() * kb;
                let wf = data(n * k, 7 + n as u64);
                let w = kiln_quant::blocks::quantize_to_vec(ty, &wf).unwrap();
                let p = repack(ty, &w, n, k);
                let x = data(m * k, 99 + m as u64);
                let reference = qmatmul(Isa::Scalar, ty, &p, n, k, &x, m);
                let xnorm = (x.iter().map(|v| v * v).sum::<f32>() / m as f32).sqrt();
                let wnorm = (wf.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    let got = qmatmul(isa, ty, &p, n, k, &x, m);
                    assert_eq!(got, reference, "{ty} {} m{m} n{n} k{k}", isa.name());
                    // Each row alone gives the bits it gets in the batch.
                    for i in [0, m - 1] {
                        let alone = qmatmul(isa, ty, &p, n, k, &x[i * k..(i + 1) * k], 1);
                        assert_eq!(alone, reference[i * n..(i + 1) * n], "{ty} row {i}");
                    }
                    let gguf = super::super::qmatmul(isa, ty, &w, n, k, &x, m);
                    for (g, r) in gguf.iter().zip(&reference) {
                        // (ARM runs the scalar GGUF-layout Q4_1 dot, in another order.)
                        if ty == GgmlType::Q4_1 && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
                            assert_eq!(g.to_bits(), r.to_bits(), "{ty} {} m{m}", isa.name());
                        } else {
                            let tol = 1e-5 * (1.0 + r.abs()) + 1e-6 * xnorm * wnorm;
                            assert!((g - r).abs() <= tol, "{ty}: {g} vs {r}");
                        }
                    }
                }
            }
        }
    }
}
