//! f32 matrix products for dense layers: `y[m, n] = x[m, k] · B[k, n] + bias`, optionally
//! followed by GELU or QuickGELU ([`Act`]), with `B` packed once at load into panels of [`NR`]
//! columns.
//!
//! Blocking as in GotoBLAS / BLIS: `k` in slabs of [`KC`] (a panel slab, `KC × NR`, stays in L1),
//! rows in blocks of [`MC`] (an `MC × KC` block of `x` stays in L2), an `MR × NR` register tile
//! per micro-kernel call. Threads split the rows (or, for few rows, the panels). Every output
//! element is summed over `k` in the same order whatever `m` is and however the work is split,
//! so a row's result does not depend on the other rows of the batch.
//!
//! [`gemm_ref`] is the scalar reference; the AVX-512 micro-kernel is checked against it.

use super::Isa;
use super::pool::{pool, share};

/// Columns per packed panel (two 16-lane registers).
pub const NR: usize = 32;
/// Rows per register tile.
pub const MR: usize = 8;
/// Depth of one slab of `k`.
pub const KC: usize = 256;
/// Rows per L2 block.
pub const MC: usize = 64;

/// Epilogue applied after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    /// Exact (erf) GELU, as `torch.nn.functional.gelu`.
    Gelu,
    /// CLIP's QuickGELU, `x · σ(1.702 x)`.
    QuickGelu,
}

/// Floats in a packed `[k, n]` matrix.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Packs `b[k, n]` (row-major) into panels: panel `p` holds columns `p·NR..p·NR+NR` for every
/// `kk` as `NR` consecutive floats (zero past `n`).
pub fn pack_b(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(b.len(), k * n, "pack_b: [{k}, {n}] needs {} floats", k * n);
    let panels = n.div_ceil(NR);
    let mut out = vec![0f32; panels * NR * k];
    for p in 0..panels {
        let cols = NR.min(n - p * NR);
        for kk in 0..k {
            let src = &b[kk * n + p * NR..kk * n + p * NR + cols];
            out[(p * k + kk) * NR..(p * k + kk) * NR + cols].copy_from_slice(src);
        }
    }
    out
}

/// `erf` as a rational function of `x` on [-4, 4] (Eigen's `generic_fast_erf_float`; a few
/// ulp), branch-free so that loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329_2e-3);
    q = x2.mul_add(q, -1.426_473_9e-2);
    // Past |x| = 3.9, erf(x) rounds to ±1 in f32; the rational form is 3e-7 short there.
    if x.abs() >= 3.9 {
        1f32.copysign(x)
    } else {
        x * p / q
    }
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `e^x` for `x` in [-87, 88] (clamped there), Cephes' `expf`: `x = n ln 2 + r`, a degree-7
/// polynomial in `r`, scaled by `2^n` through the exponent bits. About 1 ulp; branch-free, so
/// that loops over it vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 · 2^23 trick (|x · log2 e| < 2^22).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 1.666_666_5e-1);
    p = r.mul_add(p, 0.5);
    let y = (r * r).mul_add(p, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `act` over a slice, vectorized by the compiler for the active ISA.
pub fn act_slice(isa: Isa, act: Act, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` is only non-scalar when the CPU has AVX2 and FMA (`Isa::available`).
        unsafe { act_avx2(act, x) };
        return;
    }
    let _ = isa;
    act_generic(act, x);
}

#[inline(always)]
fn act_generic(act: Act, x: &mut [f32]) {
    match act {
        Act::None => {}
        Act::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
        Act::QuickGelu => x.iter_mut().for_each(|v| *v = quick_gelu(*v)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn act_avx2(act: Act, x: &mut [f32]) {
    act_generic(act, x);
}

/// The reference: `y = x · B + bias` (then `act`), plain loops over the unpacked `b[k, n]`.
pub fn gemm_ref(
    x: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    bias: &[f32],
    act: Act,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for kk in 0..k {
                s += x[i * k + kk] * b[kk * n + j];
            }
            let v = s + bias[j];
            y[i * n + j] = match act {
                Act::None => v,
                Act::Gelu => gelu(v),
                // In f64 with std's `exp`, independent of the kernels' polynomial.
                Act::QuickGelu => (f64::from(v) / (1.0 + (-1.702 * f64::from(v)).exp())) as f32,
            };
        }
    }
    y
}

/// A raw output pointer shared by the threads, each writing its own rows or columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);

impl Out {
    /// Through a method, so that closures capture the `Sync` wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the threads write disjoint parts of the output (`share` partitions rows or panels).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// `y[m, n] = x[m, k] · B + bias`, then `act`; `packed` from [`pack_b`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[f32],
    n: usize,
    bias: &[f32],
    act: Act,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "gemm: x is not [{m}, {k}]");
    assert_eq!(
        packed.len(),
        packed_len(k, n),
        "gemm: packed B is not [{k}, {n}]"
    );
    assert_eq!(bias.len(), n, "gemm: bias is not [{n}]");
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let panels = n.div_ceil(NR);
    let pool = pool();
    let threads = pool.threads();
    let out = Out(y.as_mut_ptr());
    // Enough rows: threads take row ranges (B is shared in L3); else panel ranges.
    let by_rows = m >= threads * 2 * MR;
    let parts = if m * n * k < 1 << 16 { 1 } else { threads };
    let job = |t: usize| {
        let (rows, cols) = if parts == 1 {
            if t != 0 {
                return;
            }
            (0..m, 0..panels)
        } else if by_rows {
            // Whole register tiles per thread.
            let tiles = share(m.div_ceil(MR), parts, t);
            (tiles.start * MR..(tiles.end * MR).min(m), 0..panels)
        } else {
            (0..m, share(panels, parts, t))
        };
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        // SAFETY: this thread writes only rows `rows` × panels `cols` of `y`, disjoint from
        // every other thread's part, and `y` outlives the job.
        unsafe { gemm_part(isa, x, k, packed, n, bias, act, out.get(), rows, cols) };
    };
    if parts == 1 {
        job(0);
    } else {
        pool.run(&job);
    }
    y
}

/// Rows `rows` × panels `cols` of the product.
///
/// # Safety
/// `y` points to `m × n` floats; no other thread writes rows `rows` × panels `cols`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_part(
    isa: Isa,
    x: &[f32],
    k: usize,
    packed: &[f32],
    n: usize,
    bias: &[f32],
    act: Act,
    y: *mut f32,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let col_lo = cols.start * NR;
    let col_hi = (cols.end * NR).min(n);
    // Rows per micro-kernel call: AVX2's sixteen registers hold a 6 × 16 tile (an 8-row step
    // would leave a latency-bound 2-row tile behind every 6-row one); AVX-512's an 8 × 32.
    let mr = if isa == Isa::Avx2 { 6 } else { MR };
    let mc_full = MC / mr * mr;
    // Bias first; the slabs accumulate onto it.
    for i in rows.clone() {
        // SAFETY: row i, columns col_lo..col_hi are inside y and this thread's.
        let row = unsafe { std::slice::from_raw_parts_mut(y.add(i * n + col_lo), col_hi - col_lo) };
        row.copy_from_slice(&bias[col_lo..col_hi]);
    }
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let mut m0 = rows.start;
        while m0 < rows.end {
            let mc = mc_full.min(rows.end - m0);
            for p in cols.clone() {
                let width = NR.min(n - p * NR);
                let panel = &packed[(p * k + k0) * NR..(p * k + k0 + kc) * NR];
                let mut r0 = m0;
                while r0 < m0 + mc {
                    let r = mr.min(m0 + mc - r0);
                    let a = &x[r0 * k + k0..];
                    // SAFETY: the tile rows r0..r0+r, columns p·NR..p·NR+width are this
                    // thread's and inside y.
                    let c = unsafe { y.add(r0 * n + p * NR) };
                    unsafe { tile(isa, a, k, panel, kc, c, n, r, width) };
                    r0 += r;
                }
            }
            m0 += mc;
        }
        k0 += kc;
    }
    if act != Act::None {
        for i in rows {
            // SAFETY: as for the bias.
            let row =
                unsafe { std::slice::from_raw_parts_mut(y.add(i * n + col_lo), col_hi - col_lo) };
            act_slice(isa, act, row);
        }
    }
}

/// `c[r, width] += a[r, kc] · panel[kc, NR]` (only the first `width` columns are stored).
///
/// # Safety
/// `c` points to `r` rows of at least `width` floats, `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    isa: Isa,
    a: &[f32],
    lda: usize,
    panel: &[f32],
    kc: usize,
    c: *mut f32,
    ldc: usize,
    r: usize,
    width: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: AVX-512F is present (Avx512Vnni implies it); the caller's bounds hold.
        unsafe {
            match r {
                8 => avx512::tile::<8>(a, lda, panel, kc, c, ldc, width),
                7 => avx512::tile::<7>(a, lda, panel, kc, c, ldc, width),
                6 => avx512::tile::<6>(a, lda, panel, kc, c, ldc, width),
                5 => avx512::tile::<5>(a, lda, panel, kc, c, ldc, width),
                4 => avx512::tile::<4>(a, lda, panel, kc, c, ldc, width),
                3 => avx512::tile::<3>(a, lda, panel, kc, c, ldc, width),
                2 => avx512::tile::<2>(a, lda, panel, kc, c, ldc, width),
                _ => avx512::tile::<1>(a, lda, panel, kc, c, ldc, width),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // Sixteen 256-bit registers: tiles of up to 6 rows × 16 columns.
        let mut i = 0;
        while i < r {
            let rows = (r - i).min(6);
            let (a, c) = (&a[i * lda..], unsafe { c.add(i * ldc) });
            // SAFETY: AVX2 and FMA are present; rows i..i+rows of the caller's tile.
            unsafe {
                match rows {
                    6 => avx2::tile::<6>(a, lda, panel, kc, c, ldc, width),
                    5 => avx2::tile::<5>(a, lda, panel, kc, c, ldc, width),
                    4 => avx2::tile::<4>(a, lda, panel, kc, c, ldc, width),
                    3 => avx2::tile::<3>(a, lda, panel, kc, c, ldc, width),
                    2 => avx2::tile::<2>(a, lda, panel, kc, c, ldc, width),
                    _ => avx2::tile::<1>(a, lda, panel, kc, c, ldc, width),
                }
            }
            i += rows;
        }
        return;
    }
    let _ = isa;
    // SAFETY: the caller's bounds hold.
    unsafe { tile_generic(a, lda, panel, kc, c, ldc, r, width) };
}

/// Portable tile: the same summation order as the SIMD tiles (one product per `kk`, in order).
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_generic(
    a: &[f32],
    lda: usize,
    panel: &[f32],
    kc: usize,
    c: *mut f32,
    ldc: usize,
    r: usize,
    width: usize,
) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..kc {
        let b = &panel[kk * NR..kk * NR + NR];
        for (i, acc) in acc.iter_mut().enumerate().take(r) {
            let av = a[i * lda + kk];
            for (s, bv) in acc.iter_mut().zip(b) {
                *s = av.mul_add(*bv, *s);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(r) {
        for (j, v) in acc.iter().enumerate().take(width) {
            // SAFETY: row i < r, column j < width: inside the caller's tile.
            unsafe { *c.add(i * ldc + j) += v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::NR;
    use std::arch::x86_64::*;

    /// `R × 32` over `kc` steps in two 16-column halves (`R × 2` accumulators each),
    /// accumulated onto `c`.
    ///
    /// # Safety
    /// AVX2 and FMA present; bounds as for the AVX-512 tile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        a: &[f32],
        lda: usize,
        panel: &[f32],
        kc: usize,
        c: *mut f32,
        ldc: usize,
        width: usize,
    ) {
        assert!(a.len() > (R - 1) * lda + kc - 1 && panel.len() >= kc * NR);
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        for half in 0..2 {
            let cols = width.saturating_sub(half * 16).min(16);
            if cols == 0 {
                break;
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for kk in 0..kc {
                // SAFETY: kk < kc rows of the panel; `a` bounded by the assert.
                unsafe {
                    let b0 = _mm256_loadu_ps(bp.add(kk * NR + half * 16));
                    let b1 = _mm256_loadu_ps(bp.add(kk * NR + half * 16 + 8));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*ap.add(i * lda + kk));
                        acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: row i, columns half·16 .. half·16 + cols of the caller's tile.
                unsafe {
                    let p = c.add(i * ldc + half * 16);
                    if cols == 16 {
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[0]));
                        _mm256_storeu_ps(
                            p.add(8),
                            _mm256_add_ps(_mm256_loadu_ps(p.add(8)), acc[1]),
                        );
                    } else {
                        let mut t = [0f32; 16];
                        _mm256_storeu_ps(t.as_mut_ptr(), acc[0]);
                        _mm256_storeu_ps(t.as_mut_ptr().add(8), acc[1]);
                        for (j, v) in t.iter().enumerate().take(cols) {
                            *p.add(j) += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// `R × 32` register tile over `kc` steps, accumulated onto `c`.
    ///
    /// # Safety
    /// AVX-512F present; `a` holds `R` rows `lda` apart of at least `kc` floats; `c` points to
    /// `R` rows `ldc` apart of at least `width ≤ 32` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize>(
        a: &[f32],
        lda: usize,
        panel: &[f32],
        kc: usize,
        c: *mut f32,
        ldc: usize,
        width: usize,
    ) {
        assert!(a.len() > (R - 1) * lda + kc - 1 && panel.len() >= kc * NR);
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        for kk in 0..kc {
            // SAFETY: kk < kc: the panel holds kc rows of NR floats; the asserts bound `a`.
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(kk * NR));
                let b1 = _mm512_loadu_ps(bp.add(kk * NR + 16));
                for i in 0..R {
                    let av = _mm512_set1_ps(*ap.add(i * lda + kk));
                    acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
                    acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
                }
            }
        }
        let lo: __mmask16 = if width >= 16 {
            0xffff
        } else {
            (1u32 << width) as u16 - 1
        };
        let hi: __mmask16 = if width >= 32 {
            0xffff
        } else if width > 16 {
            ((1u32 << (width - 16)) - 1) as u16
        } else {
            0
        };
        for i in 0..R {
            // SAFETY: masked to the first `width` columns of row i, which the caller owns.
            unsafe {
                let p = c.add(i * ldc);
                let c0 = _mm512_maskz_loadu_ps(lo, p);
                _mm512_mask_storeu_ps(p, lo, _mm512_add_ps(c0, acc0[i]));
                let c1 = _mm512_maskz_loadu_ps(hi, p.add(16));
                _mm512_mask_storeu_ps(p.add(16), hi, _mm512_add_ps(c1, acc1[i]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        for i in -4000..=4000 {
            let x = i as f32 / 500.0;
            let want = libm::erf(x as f64);
            assert!(
                (erf(x) as f64 - want).abs() < 5e-7,
                "erf({x}): {} vs {want}",
                erf(x)
            );
            let g = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (gelu(x) as f64 - g).abs() < 1e-6 * (1.0 + g.abs()),
                "gelu({x})"
            );
        }
        assert_eq!(gelu(-100.0), 0.0);
        assert_eq!(gelu(100.0), 100.0);
    }

    #[test]
    fn exp_and_quick_gelu_are_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            assert!(
                ((exp(x) as f64 - want) / want).abs() < 2.5e-7,
                "exp({x}): {} vs {want}",
                exp(x)
            );
            let q = x as f64 / (1.0 + (-1.702 * x as f64).exp());
            assert!(
                (quick_gelu(x) as f64 - q).abs() < 5e-7 * (1.0 + q.abs()),
                "quick_gelu({x}): {} vs {q}",
                quick_gelu(x)
            );
        }
        assert!(quick_gelu(-1000.0).abs() < 1e-30);
        assert_eq!(quick_gelu(1000.0), 1000.0);
        assert!(exp(f32::NEG_INFINITY) > 0.0 && exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn gemm_matches_the_reference_on_every_isa() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 384, 384),
            (3, 37, 45),
            (9, 300, 33),
            (17, 513, 100),
            (70, 384, 1152),
            (130, 1536, 384),
        ] {
            let x = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            let packed = pack_b(&b, k, n);
            for act in [Act::None, Act::Gelu, Act::QuickGelu] {
                let want = gemm_ref(&x, m, k, &b, n, &bias, act);
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    let got = gemm(isa, &x, m, k, &packed, n, &bias, act);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (1.0 + k as f32).sqrt() * 4.0;
                        assert!(
                            (g - w).abs() <= tol,
                            "{isa:?} m={m} k={k} n={n} {act:?} at {i}: {g} vs {w}"
                        );
                    }
                    // A row alone gives the same bits as inside the batch.
                    let r = m / 2;
                    let one = gemm(isa, &x[r * k..(r + 1) * k], 1, k, &packed, n, &bias, act);
                    assert_eq!(one, got[r * n..(r + 1) * n], "{isa:?} row {r} alone");
                }
            }
        }
    }
}
