//! CPU kernels of the BERT encoder besides its matrix products: multi-head self-attention over
//! padded rows with a key mask, and residual + LayerNorm.
//!
//! Plain loops in one fixed order, compiled once per ISA (`target_feature`) so the compiler
//! vectorizes them; the scalar build is the reference. Results do not depend on the batch:
//! a row's attention reads only its own keys, and padded query rows are written as zeros.

use super::Isa;
use super::pool::{pool, share};

/// `e^x` for `x ≤ 0`, branch-free (relative error ≈ 2e-7; 0 below -87).
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by the 1.5·2²³ trick: vectorizes where `round` does not.
    const MAGIC: f32 = 12_582_912.0;
    let i = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let f = x - i * 0.693_359_4 + i * 2.121_944_4e-4;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (0.166_666_67 + f * (0.041_666_45 + f * (0.008_333_38 + f * 0.001_392_9)))));
    p * f32::from_bits(((i as i32 + 127) as u32) << 23)
}

const LANES: usize = 16;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

#[derive(Clone, Copy)]
struct Out(*mut f32);

impl Out {
    /// Through a method, so that closures capture the `Sync` wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: each (row, head) task writes only its own columns of its own rows.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// Self-attention: `qkv` is `[batch·seq, 3·hidden]` (Q | K | V, heads side by side in each),
/// row `b` has `lengths[b]` real tokens; returns `[batch·seq, hidden]`, softmax(QKᵀ/√d)·V per
/// head over the real keys, zeros on padded rows.
pub fn attention(isa: Isa, qkv: &[f32], lengths: &[usize], s: AttnShape) -> Vec<f32> {
    let h = s.heads * s.head_dim;
    assert_eq!(qkv.len(), s.batch * s.seq * 3 * h, "attention: qkv shape");
    assert_eq!(lengths.len(), s.batch, "attention: lengths");
    assert!(
        lengths.iter().all(|&l| l <= s.seq),
        "attention: length past seq"
    );
    let mut out = vec![0f32; s.batch * s.seq * h];
    let tasks = s.batch * s.heads;
    let ptr = Out(out.as_mut_ptr());
    let work: usize = lengths.iter().map(|&l| l * l).sum::<usize>() * s.heads * s.head_dim;
    let pool = pool();
    let parts = if work < 1 << 15 { 1 } else { pool.threads() };
    let job = |t: usize| {
        if t >= parts {
            return;
        }
        let mut scratch = Scratch::default();
        // Interleaved (row, head) tasks: rows are length-sorted, so neighbours cost alike.
        for task in (0..tasks).skip(t).step_by(parts) {
            let (b, head) = (task / s.heads, task % s.heads);
            // SAFETY: task (b, head) writes rows of batch b, columns of `head` only.
            unsafe { one_head(isa, qkv, lengths[b], b, head, s, ptr.get(), &mut scratch) };
        }
    };
    if parts == 1 {
        job(0);
    } else {
        pool.run(&job);
    }
    out
}

#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    /// Packs one head of batch row `b`: Kᵀ as `[hd, stride]` (zero past `len`) and V as
    /// `[len, hd]`, from the fused QKV rows; `scores` sized for `queries` rows of `stride`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn pack(
        &mut self,
        qkv: &[f32],
        s: AttnShape,
        b: usize,
        head: usize,
        len: usize,
        stride: usize,
        queries: usize,
    ) {
        let hd = s.head_dim;
        let h = s.heads * hd;
        let base = b * s.seq * 3 * h;
        self.kt.clear();
        self.kt.resize(hd * stride, 0.0);
        self.v.clear();
        for j in 0..len {
            let r = &qkv[base + j * 3 * h..base + (j + 1) * 3 * h];
            for (d, &kv) in r[h + head * hd..h + head * hd + hd].iter().enumerate() {
                self.kt[d * stride + j] = kv;
            }
            self.v
                .extend_from_slice(&r[2 * h + head * hd..2 * h + head * hd + hd]);
        }
        self.scores.clear();
        self.scores.resize(queries * stride, 0.0);
    }
}

/// # Safety
/// `out` points to `[batch·seq, hidden]` floats; no other thread writes (b, head).
#[allow(clippy::too_many_arguments)]
unsafe fn one_head(
    isa: Isa,
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA's features are present (`Isa::available`); bounds as the caller's.
        Isa::Avx512Vnni => return unsafe { one_head_avx512(qkv, len, b, head, s, out, scratch) },
        Isa::Avx2 => return unsafe { one_head_avx2(qkv, len, b, head, s, out, scratch) },
        Isa::Scalar | Isa::Neon => {}
    }
    let _ = isa;
    // SAFETY: as the caller's.
    unsafe { one_head_generic(qkv, len, b, head, s, out, scratch) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn one_head_avx512(
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    // SAFETY (all): AVX-512F is enabled here; bounds forwarded from the caller.
    match s.head_dim {
        32 => unsafe { avx512::head::<32, 2, 8>(qkv, len, b, head, s, out, scratch) },
        64 => unsafe { avx512::head::<64, 4, 4>(qkv, len, b, head, s, out, scratch) },
        // InterBERT's image layers: v_hidden_size 768 in 8 heads.
        96 => unsafe { avx512::head::<96, 6, 4>(qkv, len, b, head, s, out, scratch) },
        _ => unsafe { one_head_generic(qkv, len, b, head, s, out, scratch) },
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{AttnShape, LANES, Scratch};
    use std::arch::x86_64::*;

    /// `e^x` for `x ≤ 0` in 16 lanes (as `exp_nonpos`; `vscalefps` applies the exponent).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let i = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let f = _mm512_fnmadd_ps(i, _mm512_set1_ps(0.693_359_4), x);
        let f = _mm512_fmadd_ps(i, _mm512_set1_ps(2.121_944_4e-4), f);
        let mut p = _mm512_set1_ps(0.001_392_9);
        for c in [0.008_333_38, 0.041_666_45, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, i)
    }

    /// One head, `HD = 16·V` floats per head, `QB` queries per block.
    ///
    /// # Safety
    /// AVX-512F present; `out` as for `one_head`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn head<const HD: usize, const V: usize, const QB: usize>(
        qkv: &[f32],
        len: usize,
        b: usize,
        head: usize,
        s: AttnShape,
        out: *mut f32,
        scratch: &mut Scratch,
    ) {
        debug_assert_eq!(HD, 16 * V);
        let h = s.heads * HD;
        let base = b * s.seq * 3 * h;
        assert!(qkv.len() >= base + len * 3 * h);
        let stride = len.next_multiple_of(LANES);
        scratch.pack(qkv, s, b, head, len, stride, QB);
        let scale = _mm512_set1_ps(1.0 / (HD as f32).sqrt());
        let kt = scratch.kt.as_ptr();
        let vp = scratch.v.as_ptr();
        let sp = scratch.scores.as_mut_ptr();
        let q_at = |i: usize| qkv.as_ptr().wrapping_add(base + i * 3 * h + head * HD);
        let mut i0 = 0;
        while i0 < len {
            let qn = QB.min(len - i0);
            // SAFETY: every pointer below stays inside kt (HD·stride), v (len·HD), scores
            // (QB·stride) or the rows i0..i0+qn of qkv (asserted above).
            unsafe {
                // Scores: 16 keys × QB queries, summed over d in order.
                let mut jc = 0;
                while jc < stride {
                    let mut acc = [_mm512_setzero_ps(); QB];
                    for d in 0..HD {
                        let k = _mm512_loadu_ps(kt.add(d * stride + jc));
                        for (qi, a) in acc.iter_mut().enumerate().take(qn) {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*q_at(i0 + qi).add(d)), k, *a);
                        }
                    }
                    for (qi, a) in acc.iter().enumerate().take(qn) {
                        _mm512_storeu_ps(sp.add(qi * stride + jc), _mm512_mul_ps(*a, scale));
                    }
                    jc += LANES;
                }
                // Softmax over the real keys (padded ones set to -inf first).
                let mut inv = [0f32; QB];
                for (qi, inv) in inv.iter_mut().enumerate().take(qn) {
                    let row = sp.add(qi * stride);
                    for j in len..stride {
                        *row.add(j) = f32::NEG_INFINITY;
                    }
                    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
                    for c in (0..stride).step_by(LANES) {
                        m = _mm512_max_ps(m, _mm512_loadu_ps(row.add(c)));
                    }
                    let m = _mm512_set1_ps(_mm512_reduce_max_ps(m));
                    let mut sum = _mm512_setzero_ps();
                    for c in (0..stride).step_by(LANES) {
                        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row.add(c)), m));
                        _mm512_storeu_ps(row.add(c), e);
                        sum = _mm512_add_ps(sum, e);
                    }
                    *inv = 1.0 / _mm512_reduce_add_ps(sum);
                }
                // P·V: QB × V accumulators.
                let mut acc = [[_mm512_setzero_ps(); V]; QB];
                for j in 0..len {
                    let mut vj = [_mm512_setzero_ps(); V];
                    for (c, v) in vj.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(vp.add(j * HD + c * 16));
                    }
                    for (qi, a) in acc.iter_mut().enumerate().take(qn) {
                        let p = _mm512_set1_ps(*sp.add(qi * stride + j));
                        for (x, v) in a.iter_mut().zip(&vj) {
                            *x = _mm512_fmadd_ps(p, *v, *x);
                        }
                    }
                }
                for (qi, a) in acc.iter().enumerate().take(qn) {
                    let dst = out.add((b * s.seq + i0 + qi) * h + head * HD);
                    let iv = _mm512_set1_ps(inv[qi]);
                    for (c, x) in a.iter().enumerate() {
                        _mm512_storeu_ps(dst.add(c * 16), _mm512_mul_ps(*x, iv));
                    }
                }
            }
            i0 += qn;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_head_avx2(
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    // SAFETY (all): AVX2 and FMA are enabled here; bounds forwarded from the caller.
    match s.head_dim {
        32 => unsafe { avx2::head::<32, 4, 2>(qkv, len, b, head, s, out, scratch) },
        64 => unsafe { avx2::head::<64, 8, 1>(qkv, len, b, head, s, out, scratch) },
        _ => unsafe { one_head_generic(qkv, len, b, head, s, out, scratch) },
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{AttnShape, LANES, Scratch};
    use std::arch::x86_64::*;

    /// Queries per score block.
    const QB: usize = 4;

    /// `e^x` for `x ≤ 0` in 8 lanes (as `exp_nonpos`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let i = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let f = _mm256_fnmadd_ps(i, _mm256_set1_ps(0.693_359_4), x);
        let f = _mm256_fmadd_ps(i, _mm256_set1_ps(2.121_944_4e-4), f);
        let mut p = _mm256_set1_ps(0.001_392_9);
        for c in [0.008_333_38, 0.041_666_45, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
        }
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(i),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(e))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// One head, `HD = 8·V` floats per head; P·V for `G` queries at a time.
    ///
    /// # Safety
    /// AVX2 and FMA present; `out` as for `one_head`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head<const HD: usize, const V: usize, const G: usize>(
        qkv: &[f32],
        len: usize,
        b: usize,
        head: usize,
        s: AttnShape,
        out: *mut f32,
        scratch: &mut Scratch,
    ) {
        debug_assert_eq!(HD, 8 * V);
        let h = s.heads * HD;
        let base = b * s.seq * 3 * h;
        assert!(qkv.len() >= base + len * 3 * h);
        let stride = len.next_multiple_of(LANES);
        scratch.pack(qkv, s, b, head, len, stride, QB);
        let scale = _mm256_set1_ps(1.0 / (HD as f32).sqrt());
        let kt = scratch.kt.as_ptr();
        let vp = scratch.v.as_ptr();
        let sp = scratch.scores.as_mut_ptr();
        let q_at = |i: usize| qkv.as_ptr().wrapping_add(base + i * 3 * h + head * HD);
        let mut i0 = 0;
        while i0 < len {
            let qn = QB.min(len - i0);
            // SAFETY: pointers stay inside kt (HD·stride), v (len·HD), scores (QB·stride) and
            // rows i0..i0+qn of qkv (asserted above).
            unsafe {
                let mut jc = 0;
                while jc < stride {
                    let mut acc = [[_mm256_setzero_ps(); 2]; QB];
                    for d in 0..HD {
                        let k0 = _mm256_loadu_ps(kt.add(d * stride + jc));
                        let k1 = _mm256_loadu_ps(kt.add(d * stride + jc + 8));
                        for (qi, a) in acc.iter_mut().enumerate().take(qn) {
                            let q = _mm256_broadcast_ss(&*q_at(i0 + qi).add(d));
                            a[0] = _mm256_fmadd_ps(q, k0, a[0]);
                            a[1] = _mm256_fmadd_ps(q, k1, a[1]);
                        }
                    }
                    for (qi, a) in acc.iter().enumerate().take(qn) {
                        let row = sp.add(qi * stride + jc);
                        _mm256_storeu_ps(row, _mm256_mul_ps(a[0], scale));
                        _mm256_storeu_ps(row.add(8), _mm256_mul_ps(a[1], scale));
                    }
                    jc += LANES;
                }
                let mut inv = [0f32; QB];
                for (qi, inv) in inv.iter_mut().enumerate().take(qn) {
                    let row = sp.add(qi * stride);
                    for j in len..stride {
                        *row.add(j) = f32::NEG_INFINITY;
                    }
                    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
                    for c in (0..stride).step_by(8) {
                        m = _mm256_max_ps(m, _mm256_loadu_ps(row.add(c)));
                    }
                    let m = _mm256_set1_ps(hmax(m));
                    let mut sum = _mm256_setzero_ps();
                    for c in (0..stride).step_by(8) {
                        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row.add(c)), m));
                        _mm256_storeu_ps(row.add(c), e);
                        sum = _mm256_add_ps(sum, e);
                    }
                    *inv = 1.0 / hsum(sum);
                }
                let mut q0 = 0;
                while q0 < qn {
                    let g = G.min(qn - q0);
                    let mut acc = [[_mm256_setzero_ps(); V]; G];
                    for j in 0..len {
                        for (gi, a) in acc.iter_mut().enumerate().take(g) {
                            let p = _mm256_broadcast_ss(&*sp.add((q0 + gi) * stride + j));
                            for (c, x) in a.iter_mut().enumerate() {
                                *x =
                                    _mm256_fmadd_ps(p, _mm256_loadu_ps(vp.add(j * HD + c * 8)), *x);
                            }
                        }
                    }
                    for (gi, a) in acc.iter().enumerate().take(g) {
                        let qi = q0 + gi;
                        let dst = out.add((b * s.seq + i0 + qi) * h + head * HD);
                        let iv = _mm256_set1_ps(inv[qi]);
                        for (c, x) in a.iter().enumerate() {
                            _mm256_storeu_ps(dst.add(c * 8), _mm256_mul_ps(*x, iv));
                        }
                    }
                    q0 += g;
                }
            }
            i0 += qn;
        }
    }
}

#[inline(always)]
unsafe fn one_head_generic(
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    // SAFETY (all three): forwarded from the caller.
    match s.head_dim {
        32 => unsafe { head_fixed::<32>(qkv, len, b, head, s, out, scratch) },
        64 => unsafe { head_fixed::<64>(qkv, len, b, head, s, out, scratch) },
        96 => unsafe { head_fixed::<96>(qkv, len, b, head, s, out, scratch) },
        _ => unsafe { head_any(qkv, len, b, head, s, out, scratch) },
    }
}

/// Queries per block in [`head_fixed`]: each key chunk loaded once serves all of them.
const QB: usize = 4;

/// One head with a compile-time head size: scores for [`QB`] queries at a time against
/// 16-key chunks of Kᵀ, then P·V with the accumulators in registers.
#[inline(always)]
unsafe fn head_fixed<const HD: usize>(
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let h = s.heads * HD;
    let row = |i: usize| &qkv[(b * s.seq + i) * 3 * h..(b * s.seq + i + 1) * 3 * h];
    let stride = len.next_multiple_of(LANES);
    scratch.pack(qkv, s, b, head, len, stride, QB);
    let scale = 1.0 / (HD as f32).sqrt();
    let kt = &scratch.kt;
    let v = &scratch.v;
    let mut i0 = 0;
    while i0 < len {
        let qn = QB.min(len - i0);
        let mut q = [[0f32; HD]; QB];
        for (qi, qrow) in q.iter_mut().enumerate().take(qn) {
            qrow.copy_from_slice(&row(i0 + qi)[head * HD..head * HD + HD]);
        }
        // Scores, 16 keys × QB queries at a time, summed over d in order.
        for jc in (0..stride).step_by(LANES) {
            let mut acc = [[0f32; LANES]; QB];
            for d in 0..HD {
                let k = &kt[d * stride + jc..d * stride + jc + LANES];
                for (a, qrow) in acc.iter_mut().zip(&q) {
                    let qd = qrow[d];
                    for (x, &kv) in a.iter_mut().zip(k) {
                        *x = qd.mul_add(kv, *x);
                    }
                }
            }
            for (qi, a) in acc.iter().enumerate() {
                scratch.scores[qi * stride + jc..qi * stride + jc + LANES].copy_from_slice(a);
            }
        }
        // Softmax per query over its real keys.
        let mut inv = [0f32; QB];
        for (qi, inv) in inv.iter_mut().enumerate().take(qn) {
            let sc = &mut scratch.scores[qi * stride..qi * stride + stride];
            // Padded keys (j ≥ len) must not win the max: -inf, then e^-87 ≈ 1e-38 in the sum.
            sc[len..].fill(f32::NEG_INFINITY);
            let mut lanes = [f32::NEG_INFINITY; LANES];
            for chunk in sc.chunks_exact_mut(LANES) {
                for (m, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
                    *x *= scale;
                    *m = m.max(*x);
                }
            }
            let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sums = [0f32; LANES];
            for chunk in sc.chunks_exact_mut(LANES) {
                for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
                    *x = exp_nonpos(*x - max);
                    *s += *x;
                }
            }
            *inv = 1.0 / sums.iter().sum::<f32>();
        }
        // P·V with QB × HD accumulators.
        let mut acc = [[0f32; HD]; QB];
        for j in 0..len {
            let vj = &v[j * HD..(j + 1) * HD];
            for (qi, a) in acc.iter_mut().enumerate() {
                let p = scratch.scores[qi * stride + j];
                for (x, &vv) in a.iter_mut().zip(vj) {
                    *x = p.mul_add(vv, *x);
                }
            }
        }
        for qi in 0..qn {
            // SAFETY: row (b, i0 + qi), columns of `head`: inside `out`, owned by this task.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.add((b * s.seq + i0 + qi) * h + head * HD), HD)
            };
            for (o, a) in dst.iter_mut().zip(&acc[qi]) {
                *o = a * inv[qi];
            }
        }
        i0 += qn;
    }
}

#[inline(always)]
unsafe fn head_any(
    qkv: &[f32],
    len: usize,
    b: usize,
    head: usize,
    s: AttnShape,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let (hd, h) = (s.head_dim, s.heads * s.head_dim);
    let row = |i: usize| &qkv[(b * s.seq + i) * 3 * h..(b * s.seq + i + 1) * 3 * h];
    scratch.pack(qkv, s, b, head, len, len, 1);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut acc = vec![0f32; hd];
    for i in 0..len {
        let q = &row(i)[head * hd..head * hd + hd];
        let scores = &mut scratch.scores[..len];
        scores.fill(0.0);
        for (d, &qd) in q.iter().enumerate() {
            let kt = &scratch.kt[d * len..(d + 1) * len];
            for (sc, &kv) in scores.iter_mut().zip(kt) {
                *sc = qd.mul_add(kv, *sc);
            }
        }
        // Max and sum in 16 lanes (a fixed order the compiler can vectorize).
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let (body, tail) = scores.split_at_mut(len - len % LANES);
        for chunk in body.chunks_exact_mut(LANES) {
            for (m, sc) in lanes.iter_mut().zip(chunk.iter_mut()) {
                *sc *= scale;
                *m = m.max(*sc);
            }
        }
        for (m, sc) in lanes.iter_mut().zip(tail.iter_mut()) {
            *sc *= scale;
            *m = m.max(*sc);
        }
        let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sums = [0f32; LANES];
        for chunk in body.chunks_exact_mut(LANES) {
            for (s, sc) in sums.iter_mut().zip(chunk.iter_mut()) {
                *sc = exp_nonpos(*sc - max);
                *s += *sc;
            }
        }
        for (s, sc) in sums.iter_mut().zip(tail.iter_mut()) {
            *sc = exp_nonpos(*sc - max);
            *s += *sc;
        }
        let sum: f32 = sums.iter().sum();
        let inv = 1.0 / sum;
        acc.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let v = &scratch.v[j * hd..(j + 1) * hd];
            for (a, &vv) in acc.iter_mut().zip(v) {
                *a = p.mul_add(vv, *a);
            }
        }
        // SAFETY: row (b, i), columns of `head`: inside `out`, owned by this task.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(out.add((b * s.seq + i) * h + head * hd), hd) };
        for (o, a) in dst.iter_mut().zip(&acc) {
            *o = a * inv;
        }
    }
}

/// `LayerNorm(x + residual)` over rows of `hidden` (biased variance, as `torch.nn.LayerNorm`);
/// `LayerNorm(x)` without a residual.
pub fn add_layer_norm(
    isa: Isa,
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    let h = gamma.len();
    assert!(residual.is_none_or(|r| r.len() == x.len()));
    assert!(x.len().is_multiple_of(h) && beta.len() == h);
    let mut out = vec![0f32; x.len()];
    let rows = x.len() / h;
    let pool = pool();
    let parts = if x.len() < 1 << 15 { 1 } else { pool.threads() };
    let ptr = Out(out.as_mut_ptr());
    let job = |t: usize| {
        if t >= parts {
            return;
        }
        for r in share(rows, parts, t) {
            // SAFETY: row r belongs to this thread only.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * h), h) };
            let xs = &x[r * h..(r + 1) * h];
            let rs = residual.map(|res| &res[r * h..(r + 1) * h]);
            norm_row(isa, xs, rs, gamma, beta, eps, dst);
        }
    };
    if parts == 1 {
        job(0);
    } else {
        pool.run(&job);
    }
    out
}

fn norm_row(
    isa: Isa,
    x: &[f32],
    r: Option<&[f32]>,
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: AVX2 and FMA are present whenever the ISA is not scalar.
        return unsafe { norm_row_avx2(x, r, g, b, eps, out) };
    }
    let _ = isa;
    norm_row_generic(x, r, g, b, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn norm_row_avx2(x: &[f32], r: Option<&[f32]>, g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    norm_row_generic(x, r, g, b, eps, out)
}

/// Sums in [`LANES`] partial sums (a fixed order the compiler vectorizes), then across them.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    for (l, &x) in lanes.iter_mut().zip(tail) {
        *l += f(x);
    }
    lanes.iter().sum()
}

#[inline(always)]
fn norm_row_generic(x: &[f32], r: Option<&[f32]>, g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    match r {
        Some(r) => {
            for ((o, &a), &c) in out.iter_mut().zip(x).zip(r) {
                *o = a + c;
            }
        }
        None => out.copy_from_slice(x),
    }
    let mean = lane_sum(out, |v| v) / n;
    let var = lane_sum(out, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, &gv), &bv) in out.iter_mut().zip(g).zip(b) {
        *o = (*o - mean) * inv * gv + bv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Attention in f64 with the textbook formula.
    fn attention_ref(qkv: &[f32], lengths: &[usize], s: AttnShape) -> Vec<f32> {
        let (hd, h) = (s.head_dim, s.heads * s.head_dim);
        let mut out = vec![0f32; s.batch * s.seq * h];
        for b in 0..s.batch {
            let at = |i: usize, part: usize, head: usize, d: usize| {
                qkv[(b * s.seq + i) * 3 * h + part * h + head * hd + d] as f64
            };
            for head in 0..s.heads {
                for i in 0..lengths[b] {
                    let scores: Vec<f64> = (0..lengths[b])
                        .map(|j| {
                            (0..hd)
                                .map(|d| at(i, 0, head, d) * at(j, 1, head, d))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (0..lengths[b])
                            .map(|j| e[j] / sum * at(j, 2, head, d))
                            .sum();
                        out[(b * s.seq + i) * h + head * hd + d] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_reference_and_ignores_padding() {
        for &(batch, seq, heads, hd, ref lengths) in &[
            (1usize, 1usize, 1usize, 4usize, vec![1usize]),
            (2, 7, 3, 5, vec![7, 2]),
            (3, 40, 12, 32, vec![40, 33, 1]),
            (2, 130, 4, 16, vec![130, 129]),
            (2, 21, 2, 64, vec![21, 5]),
            (2, 38, 2, 96, vec![38, 11]),
            (1, 33, 1, 32, vec![16]),
        ] {
            let s = AttnShape {
                batch,
                seq,
                heads,
                head_dim: hd,
            };
            let qkv = data(batch * seq * 3 * heads * hd, seq as u32);
            let want = attention_ref(&qkv, lengths, s);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let got = attention(isa, &qkv, lengths, s);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 2e-5, "{isa:?} {s:?} at {i}: {g} vs {w}");
                }
                // Row 0 alone, unpadded, gives the same bits.
                let h = heads * hd;
                let alone = AttnShape {
                    batch: 1,
                    seq: lengths[0],
                    ..s
                };
                let one = attention(isa, &qkv[..lengths[0] * 3 * h], &lengths[..1], alone);
                assert_eq!(one, got[..lengths[0] * h], "{isa:?} row alone");
            }
        }
    }

    #[test]
    fn layer_norm_matches_the_formula() {
        let (rows, h) = (37, 384);
        let (x, r, g, b) = (data(rows * h, 1), data(rows * h, 2), data(h, 3), data(h, 4));
        let zero = vec![0f32; rows * h];
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            for residual in [Some(&r[..]), None] {
                let got = add_layer_norm(isa, &x, residual, &g, &b, 1e-12);
                for row in 0..rows {
                    let v: Vec<f64> = (0..h)
                        .map(|j| (x[row * h + j] + residual.map_or(0.0, |r| r[row * h + j])) as f64)
                        .collect();
                    let mean = v.iter().sum::<f64>() / h as f64;
                    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
                    for j in 0..h {
                        let want = (v[j] - mean) / (var + 1e-12).sqrt() * g[j] as f64 + b[j] as f64;
                        let gotv = got[row * h + j] as f64;
                        assert!((gotv - want).abs() < 1e-5, "{isa:?} row {row} col {j}");
                    }
                }
            }
            // No residual is bit-identical to a zero one.
            let none = add_layer_norm(isa, &x, None, &g, &b, 1e-12);
            assert_eq!(none, add_layer_norm(isa, &x, Some(&zero), &g, &b, 1e-12));
        }
    }
}
