use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use half::f16;
use half::slice::HalfFloatSliceExt;

use std::sync::Arc;

use super::{NnOps, Positions, Rope, Visibility};

fn f32s(x: &FlexTensor) -> FlexTensor {
    x.to_contiguous()
}

/// Runs `f(first_row, rows)` over `out` (rows of `row` values) split among the kernel pool's
/// threads when it is large enough to be worth it (prompts), else on the caller (decode).
fn par_rows(out: &mut [f32], row: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let pool = crate::cpu::pool::pool();
    let threads = pool.threads();
    let rows = out.len() / row.max(1);
    if threads == 1 || out.len() < 1 << 15 || rows < threads {
        f(0, out);
        return;
    }
    let parts: Vec<_> = crate::cpu::split_rows(out, row, rows, threads)
        .into_iter()
        .enumerate()
        .map(|(t, part)| {
            let first = crate::cpu::pool::share(rows, threads, t).start;
            std::sync::Mutex::new((first, part))
        })
        .collect();
    pool.run(&|t: usize| {
        let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
        let (first, rows) = &mut *part;
        f(*first, rows);
    });
}

impl NnOps for Flex {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let (x, w) = (f32s(&x), f32s(&weight));
        let w: &[f32] = w.as_slice().expect("rms_norm: f32 weight");
        let shape = x.layout().shape().clone();
        let xs: &[f32] = x.as_slice().expect("rms_norm: f32 input");
        let d = w.len();
        let mut out = vec![0.0f32; xs.len()];
        par_rows(&mut out, d, &|first, out| {
            for (o, x) in out.chunks_exact_mut(d).zip(xs[first * d..].chunks_exact(d)) {
                // ggml_compute_forward_rms_norm_f32: the mean of squares summed in double.
                let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
                let scale = 1.0 / ((sum / d as f64) as f32 + eps).sqrt();
                for ((o, &v), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = v * scale * w;
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn rope(x: FloatTensor<Self>, positions: Positions, rope: Rope) -> FloatTensor<Self> {
        // Rotated in place when the caller's tensor is the only owner of its buffer.
        let mut x = if x.layout().contiguous_offsets().is_some_and(|(a, _)| a == 0) {
            x
        } else {
            x.to_contiguous()
        };
        let shape = x.layout().shape().clone();
        let (heads, d) = (shape[1], shape[2]);
        let half = rope.n_rot / 2;
        // Every layer's q and k share one table per forward pass.
        let table = positions.device_copy.get_or::<Arc<(Rope, Vec<f32>)>>(
            |made| made.0 == rope,
            || Arc::new((rope.clone(), super::rope_table(&positions.pos, &rope))),
        );
        let data: &mut [f32] = x.storage_mut();
        rotate(data, &table.1, heads * d, d, half, rope.neox);
        x.with_layout(burn_flex::Layout::contiguous(shape))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (g, u) = (f32s(&gate), f32s(&up));
        let shape = g.layout().shape().clone();
        let gs: &[f32] = g.as_slice().expect("swiglu: f32 gate");
        let us: &[f32] = u.as_slice().expect("swiglu: f32 up");
        let mut out = vec![0.0f32; gs.len()];
        let row = *shape.last().unwrap_or(&1);
        par_rows(&mut out, row, &|first, out| {
            let at = first * row;
            swiglu_slice(&gs[at..at + out.len()], &us[at..at + out.len()], out)
        });
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mut k_cache: FloatTensor<Self>,
        mut v_cache: FloatTensor<Self>,
        start: usize,
        mask: Visibility,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k, v) = (f32s(&q), f32s(&k), f32s(&v));
        let qshape = q.layout().shape().clone();
        let (t, heads, d) = (qshape[0], qshape[1], qshape[2]);
        let kv_heads = k.layout().shape()[1];
        let row = kv_heads * d;
        for (cache, new) in [(&mut k_cache, &k), (&mut v_cache, &v)] {
            if !cache.is_contiguous() {
                *cache = cache.to_contiguous();
            }
            let new: &[f32] = new.as_slice().expect("attention: f32 k/v");
            let c: &mut [f16] = cache.storage_mut();
            for (c, &x) in c[start * row..(start + t) * row].iter_mut().zip(new) {
                *c = f16::from_f32(x);
            }
        }
        let kc: &[f16] = k_cache.storage();
        let vc: &[f16] = v_cache.storage();
        let qs: &[f32] = q.as_slice().expect("attention: f32 q");
        let n = start + t;
        let group = heads / kv_heads;
        // The cache's f16 values once as f32: K as [slot][kv head][d], V transposed as
        // [kv head][d][slot] so that the probability-weighted sums read contiguously.
        let mut kf = vec![0.0f32; n * row];
        kc[..n * row].convert_to_f32_slice(&mut kf);
        let mut vf = vec![0.0f32; n * row];
        vc[..n * row].convert_to_f32_slice(&mut vf);
        let mut vt = vec![0.0f32; kv_heads * d * n];
        for s in 0..n {
            for (j, v) in vf[s * row..(s + 1) * row].iter().enumerate() {
                vt[j * n + s] = *v;
            }
        }

        let mut out = vec![0.0f32; t * heads * d];
        // llama.cpp multiplies with tinyBLAS when a batch has several tokens, with
        // ggml_vec_dot_f16 for one: the two sum in different orders (see `SumOrder`).
        let order = if t > 1 {
            SumOrder::TinyBlas
        } else {
            SumOrder::VecDot
        };
        // Every layer of a forward pass shares the mask: the block lists are made once.
        let blocks = mask.device_copy.get_or::<std::sync::Arc<Vec<Vec<u32>>>>(
            |b| b.len() == t,
            || std::sync::Arc::new(visible_blocks(&mask, t, n)),
        );
        let ctx = AttnCtx {
            qs,
            kf: &kf,
            vt: &vt,
            mask: &mask,
            blocks: &blocks,
            heads,
            group,
            d,
            row,
            n,
            order,
        };
        let pool = crate::cpu::pool::pool();
        let threads = pool.threads();
        if t * heads * n * d >= 1 << 12 && threads > 1 {
            // Batches: causal queries grow with the position, so each thread takes every
            // `threads`-th query (all its heads). One token: the heads in even shares.
            let per = if t > 1 { heads } else { 1 };
            let units: Vec<std::sync::Mutex<&mut [f32]>> =
                out.chunks_mut(per * d).map(std::sync::Mutex::new).collect();
            let n_units = units.len();
            pool.run(&|p: usize| {
                let mut scratch = Scratch::default();
                let mine: Vec<usize> = if t > 1 {
                    (p..n_units).step_by(threads).collect()
                } else {
                    crate::cpu::pool::share(n_units, threads, p).collect()
                };
                for u in mine {
                    let mut unit = units[u].lock().unwrap_or_else(|e| e.into_inner());
                    for (j, o) in unit.chunks_mut(d).enumerate() {
                        ctx.head(u * per + j, o, &mut scratch);
                    }
                }
            });
        } else {
            let mut scratch = Scratch::default();
            for (idx, o) in out.chunks_mut(d).enumerate() {
                ctx.head(idx, o, &mut scratch);
            }
        }
        let out = FlexTensor::from_data(TensorData::new(out, [t, heads * d]));
        (out, k_cache, v_cache)
    }
}

/// RoPE over `data` (tokens of `row` values, heads of `d`) with the `[t][half][2]` cos/sin
/// `table`, compiled with FMA where the CPU has it (`mul_add` is otherwise a libm call per value).
fn rotate(data: &mut [f32], table: &[f32], row: usize, d: usize, half: usize, neox: bool) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { rotate_fma(data, table, row, d, half, neox) };
    }
    rotate_body(data, table, row, d, half, neox)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rotate_fma(data: &mut [f32], table: &[f32], row: usize, d: usize, half: usize, neox: bool) {
    rotate_body(data, table, row, d, half, neox)
}

#[inline(always)]
fn rotate_body(data: &mut [f32], table: &[f32], row: usize, d: usize, half: usize, neox: bool) {
    for (tok, cos_sin) in data.chunks_exact_mut(row).zip(table.chunks_exact(2 * half)) {
        for head in tok.chunks_exact_mut(d) {
            for (i, cs) in cos_sin.chunks_exact(2).enumerate() {
                let (c, s) = (cs[0], cs[1]);
                let (a, b) = if neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                // ggml's rotate_pairs as GCC compiles it (-ffp-contract=fast): each product
                // pair becomes one fused multiply-add. Written plainly, positions past 2
                // drifted from llama.cpp by up to 1.0 in a logit.
                head[a] = x0.mul_add(c, -(x1 * s));
                head[b] = x0.mul_add(s, x1 * c);
            }
        }
    }
}

/// `out = silu(g) * u`, compiled with FMA where the CPU has it.
fn swiglu_slice(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_x86::swiglu(g, u, out) };
    }
    swiglu_body(g, u, out)
}

#[inline(always)]
fn swiglu_body(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + ggml_expf(-g)) * u;
    }
}

/// ggml_vec_soft_max_f32: `exp(x - max)` in place, by 16-lane chunks each reduced in f32, the
/// chunks summed in f64.
fn softmax_exp(scores: &mut [f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_x86::softmax_exp(scores, max) };
    }
    softmax_exp_body(scores, max)
}

#[inline(always)]
fn softmax_exp_body(scores: &mut [f32], max: f32) -> f64 {
    let mut sum = 0.0f64;
    for chunk in scores.chunks_mut(16) {
        let mut lanes = [0.0f32; 16];
        for (l, sc) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *sc = ggml_expf(*sc - max);
            *l = *sc;
        }
        sum += f64::from(reduce16(&lanes));
    }
    sum
}

/// ggml's vectorized `expf` (`ggml_v_expf`, AVX-512 form, from ARM's optimized routines: at most
/// 1.5 ulp off), lane by lane. llama.cpp's softmax and SiLU use it; using it too keeps Kiln's
/// activations on the same side of every quantization step as llama.cpp's.
#[inline(always)]
pub fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    // _mm512_scalef_ps(j, n) = j · 2^n; 2^n built from its exponent bits where it is normal.
    let n = n as i32;
    if (-126..=127).contains(&n) {
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else {
        j * 2f32.powi(n)
    }
}

/// What every (query, head) of one attention call reads.
struct AttnCtx<'a> {
    qs: &'a [f32],
    /// K as f32, `[slot][kv head][d]`.
    kf: &'a [f32],
    /// V as f32, transposed: `[kv head][d][slot]`.
    vt: &'a [f32],
    mask: &'a Visibility,
    /// Per query, the 64-slot blocks holding a slot it sees ([`visible_blocks`]).
    blocks: &'a [Vec<u32>],
    heads: usize,
    group: usize,
    d: usize,
    row: usize,
    n: usize,
    order: SumOrder,
}

/// Buffers reused across the (query, head) pairs a thread computes.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    /// (probability offset, slot offset, length) of the used blocks.
    pairs: Vec<(usize, usize, usize)>,
}

impl AttnCtx<'_> {
    /// Output `o` (`d` values) of query `idx / heads`, head `idx % heads`; compiled with AVX2
    /// where the CPU has it (the loops below are written to vectorize).
    fn head(&self, idx: usize, o: &mut [f32], sc: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::has_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.head_avx2(idx, o, sc) };
        }
        self.head_body(idx, o, sc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn head_avx2(&self, idx: usize, o: &mut [f32], sc: &mut Scratch) {
        self.head_body(idx, o, sc)
    }

    #[inline(always)]
    fn head_body(&self, idx: usize, o: &mut [f32], sc: &mut Scratch) {
        let (heads, d, row, n) = (self.heads, self.d, self.row, self.n);
        let (i, h) = (idx / heads, idx % heads);
        let kvh = h / self.group;
        let mask = self.mask;
        // ggml's f16 mul_mat converts the f32 operand to f16.
        sc.q.clear();
        sc.q.extend(
            self.qs[(i * heads + h) * d..][..d]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32()),
        );
        let (qp, qseq) = (mask.query_pos[i], mask.query_seq[i]);
        let visible = |s: usize| mask.key_pos[s] <= qp && super::sees(qseq, mask.key_seq[s]);
        // Scores of every slot (masked: -inf), as ggml's soft_max sees its row — but only in
        // the 64-slot blocks holding a visible slot, laid side by side. Every other block
        // holds probability 0, and 64 is a multiple of the 16 lanes of every sum below, so
        // each slot keeps its lane and the results are bit-identical to summing the whole
        // row; other sequences of a batch cost nothing.
        let blocks = &self.blocks[i];
        let m = blocks.len() * 64;
        sc.scores.clear();
        sc.scores.resize(m, f32::NEG_INFINITY);
        let mut max = f32::NEG_INFINITY;
        let keys = &self.kf[kvh * d..];
        for (j, &b) in blocks.iter().enumerate() {
            let s0 = b as usize * 64;
            let slots = s0..(s0 + 64).min(n);
            let mut put = |s: usize, dot: f32| {
                let score = dot * mask.scale;
                sc.scores[j * 64 + s - s0] = score;
                max = max.max(score);
            };
            #[cfg(target_arch = "x86_64")]
            if d == 64 && crate::cpu::has_fma() {
                // SAFETY: the CPU has AVX2 and FMA; q holds 64 values and every slot's key row
                // (slots below n) 64 values at `s * row` in `keys`.
                unsafe {
                    dot_x86::scores64(&sc.q, keys, row, slots, &visible, self.order, &mut put)
                };
                continue;
            }
            for s in slots.filter(|&s| visible(s)) {
                put(
                    s,
                    ggml_dot(&[(&keys[s * row..][..d], &sc.q[..])], self.order),
                );
            }
        }
        // ggml_vec_soft_max_f32: exp by 16-lane chunks, each chunk reduced in f32 and summed
        // in f64; then the probabilities are rounded to f16 as ggml's f16 mul_mat does.
        let sum = softmax_exp(&mut sc.scores, max);
        let inv = (1.0 / sum) as f32;
        for p in sc.scores.iter_mut() {
            *p = f16::from_f32(*p * inv).to_f32();
        }
        let probs = &sc.scores;
        // Slots after the last visible one hold probability 0 and add nothing.
        let used = probs.iter().rposition(|&p| p != 0.0).map_or(0, |i| i + 1);
        // The probabilities of each used 64-slot block against its slots' values.
        sc.pairs.clear();
        for (j, &b) in blocks.iter().enumerate() {
            let (s0, c0) = (b as usize * 64, j * 64);
            if c0 >= used {
                break;
            }
            let len = (used - c0).min(64).min(n - s0);
            sc.pairs.push((c0, s0, len));
        }
        let values = &self.vt[kvh * d * n..][..d * n];
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::has_fma() {
            // SAFETY: the CPU has AVX2 and FMA; every pair lies inside `probs` and a row of n.
            unsafe { dot_x86::weighted_sums(probs, values, n, &sc.pairs, self.order, o) };
            return;
        }
        for (e, o) in o.iter_mut().enumerate() {
            let vr = &values[e * n..][..n];
            let segments = sc
                .pairs
                .iter()
                .map(|&(c0, s0, len)| (&probs[c0..c0 + len], &vr[s0..s0 + len]));
            *o = ggml_dot_iter(segments, self.order);
        }
    }
}

/// Per query, the 64-slot blocks (`slot / 64`) that hold at least one slot it sees. Queries of
/// one sequence share what they see but for the position cut-off, so each sequence's blocks
/// are found once (with the smallest position each block offers it).
fn visible_blocks(mask: &Visibility, t: usize, n: usize) -> Vec<Vec<u32>> {
    let nb = n.div_ceil(64);
    let mut per_seq: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    (0..t)
        .map(|i| {
            let (qp, qseq) = (mask.query_pos[i], mask.query_seq[i]);
            let first = per_seq.entry(qseq).or_insert_with(|| {
                let mut first = vec![u32::MAX; nb];
                for s in 0..n {
                    if super::sees(qseq, mask.key_seq[s]) {
                        first[s / 64] = first[s / 64].min(mask.key_pos[s]);
                    }
                }
                first
            });
            (0..nb as u32)
                .filter(|&b| first[b as usize] <= qp)
                .collect()
        })
        .collect()
}

/// The summation orders of llama.cpp's f16 products (AVX-512 build), which Kiln follows so that
/// its attention scores are llama.cpp's to the last bit: SmolLM-class models have scores large
/// enough that summing 64 exact products in another order moved logits by 0.2.
#[derive(Clone, Copy)]
enum SumOrder {
    /// llamafile `tinyBLAS<16>::gemm_bloc`: lane `i % 16` accumulates by FMA in index order,
    /// then `_mm512_reduce_add_ps`.
    TinyBlas,
    /// `ggml_vec_dot_f16`: four 16-lane accumulators over steps of 64, `GGML_F32x16_REDUCE`
    /// (0+2, 1+3, then 0+1) and `_mm512_reduce_add_ps`.
    VecDot,
}

/// Σ a[i]·b[i] over `segments` (each product exact: both factors are f16 values, so a product
/// then a sum rounds as the FMA llama.cpp uses) in llama.cpp's order. Each segment starts at a
/// multiple of 64 of the row llama.cpp sums (a 64-slot block), so it starts at lane 0; what
/// lies between segments is zero and adds nothing.
#[inline(always)]
fn ggml_dot(segments: &[(&[f32], &[f32])], order: SumOrder) -> f32 {
    ggml_dot_iter(segments.iter().copied(), order)
}

#[inline(always)]
fn ggml_dot_iter<'a>(
    segments: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    order: SumOrder,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_x86::ggml_dot(segments, order) };
    }
    ggml_dot_portable(segments, order)
}

/// [`ggml_dot_iter`] without SIMD (the reference the AVX2 code is tested against).
#[inline(always)]
fn ggml_dot_portable<'a>(
    segments: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    order: SumOrder,
) -> f32 {
    match order {
        SumOrder::TinyBlas => {
            let mut acc = [0.0f32; 16];
            for (a, b) in segments {
                accumulate(&mut acc, a, b);
            }
            reduce16(&acc)
        }
        SumOrder::VecDot => {
            // Four 16-lane accumulators over steps of 64: lane i % 64 of one 64-lane array.
            let mut acc = [0.0f32; 64];
            for (a, b) in segments {
                accumulate(&mut acc, a, b);
            }
            reduce64(&acc)
        }
    }
}

/// `GGML_F32x16_REDUCE` of four 16-lane accumulators (0+2, 1+3, then 0+1), then [`reduce16`].
#[inline(always)]
fn reduce64(acc: &[f32; 64]) -> f32 {
    let mut x = [0.0f32; 16];
    for l in 0..16 {
        x[l] = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    }
    reduce16(&x)
}

/// [`ggml_dot_iter`] in AVX2 registers: the same lanes, the same order of additions (a product
/// of two f16 values is exact, so an FMA rounds as a product then a sum).
#[cfg(target_arch = "x86_64")]
mod dot_x86 {
    use core::arch::x86_64::*;

    use super::SumOrder;

    /// `acc` (lanes `8v..8v + 8` in vector `v`) `+= a[i]·b[i]` for `i < len`, lane `i % (8·V)`, in
    /// index order; a partial last chunk is loaded with a mask, so its other lanes add +0 (as
    /// the reference's zero padding does).
    ///
    /// # Safety
    /// `a` and `b` point at `len` readable floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate(acc: &mut [__m256], a: *const f32, b: *const f32, len: usize) {
        let width = 8 * acc.len();
        let full = len / width * width;
        let mut i = 0;
        while i < full {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8v + 8 <= full <= len.
                unsafe {
                    let x = _mm256_loadu_ps(a.add(i + 8 * v));
                    let y = _mm256_loadu_ps(b.add(i + 8 * v));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
            }
            i += width;
        }
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (v, acc) in acc.iter_mut().enumerate() {
            let left = len as i32 - (full + 8 * v) as i32;
            if left <= 0 {
                break;
            }
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left.min(8)), lanes);
            // SAFETY: the unmasked lanes are below len; masked-off lanes are not read.
            unsafe {
                let x = _mm256_maskload_ps(a.add(full + 8 * v), mask);
                let y = _mm256_maskload_ps(b.add(full + 8 * v), mask);
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
        }
    }

    /// [`accumulate`] with 16 lanes (two vectors) for four rows `b`, `b + stride`, … at once,
    /// against the same `a`.
    ///
    /// # Safety
    /// `a` points at `len` readable floats, each `b + j·stride` (j < 4) too.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_x4(
        acc: &mut [[__m256; 2]; 4],
        a: *const f32,
        b: *const f32,
        stride: usize,
        len: usize,
    ) {
        let full = len / 16 * 16;
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= full <= len.
            unsafe {
                let x = [_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(a.add(i + 8))];
                for (j, acc) in acc.iter_mut().enumerate() {
                    let bj = b.add(j * stride + i);
                    acc[0] = _mm256_fmadd_ps(x[0], _mm256_loadu_ps(bj), acc[0]);
                    acc[1] = _mm256_fmadd_ps(x[1], _mm256_loadu_ps(bj.add(8)), acc[1]);
                }
            }
            i += 16;
        }
        if full < len {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the masked tail of `accumulate` reads below len.
                unsafe { accumulate(acc, a.add(full), b.add(j * stride + full), len - full) };
            }
        }
    }

    /// [`super::ggml_expf`] of eight lanes, lane by lane the same operations; `None` where a
    /// lane needs the scalar function's rare branches (a power of two outside the normal
    /// floats but not below 2^-192, or NaN).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn expf8(x: __m256) -> Option<__m256> {
        let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let r = c(0x4b40_0000);
        let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm256_sub_ps(z, r);
        let in_range = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-126.0)),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_set1_ps(127.0)),
        );
        // The scalar function's result 0 (its first branch, taken for -inf too).
        let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(n, _mm256_set1_ps(-192.0));
        if _mm256_movemask_ps(_mm256_or_ps(in_range, zero)) != 0xff {
            return None;
        }
        let neg_n = _mm256_xor_ps(n, _mm256_set1_ps(-0.0));
        let b = _mm256_fmadd_ps(
            neg_n,
            c(0x35bf_be8e),
            _mm256_fmadd_ps(neg_n, c(0x3f31_7200), x),
        );
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                u,
                _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            u,
            _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
        );
        let ni = _mm256_cvttps_epi32(n);
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        Some(_mm256_andnot_ps(zero, _mm256_mul_ps(j, pow2)))
    }

    /// `out = silu(g) · u` as [`super::swiglu_body`] computes it, eight lanes at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
        let len = out.len().min(g.len()).min(u.len());
        let full = len / 8 * 8;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= len values in each slice.
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(i));
                if let Some(e) = expf8(_mm256_xor_ps(gv, _mm256_set1_ps(-0.0))) {
                    let s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                    let y = _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr().add(i)));
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
                    continue;
                }
            }
            super::swiglu_body(&g[i..i + 8], &u[i..i + 8], &mut out[i..i + 8]);
        }
        super::swiglu_body(&g[full..len], &u[full..len], &mut out[full..len]);
    }

    /// [`super::softmax_exp_body`], sixteen lanes at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_exp(scores: &mut [f32], max: f32) -> f64 {
        let mut sum = 0.0f64;
        let m = _mm256_set1_ps(max);
        for chunk in scores.chunks_mut(16) {
            if chunk.len() == 16 {
                let p = chunk.as_mut_ptr();
                // SAFETY: 16 values at p.
                unsafe {
                    let lo = _mm256_sub_ps(_mm256_loadu_ps(p), m);
                    let hi = _mm256_sub_ps(_mm256_loadu_ps(p.add(8)), m);
                    if let (Some(lo), Some(hi)) = (expf8(lo), expf8(hi)) {
                        _mm256_storeu_ps(p, lo);
                        _mm256_storeu_ps(p.add(8), hi);
                        sum += f64::from(reduce16(lo, hi));
                        continue;
                    }
                }
            }
            sum += super::softmax_exp_body(chunk, max);
        }
        sum
    }

    /// The 16 lanes of `ggml_vec_dot_f16`'s four accumulators (eight vectors) folded as
    /// `GGML_F32x16_REDUCE` does, then reduced.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce64(acc: &[__m256; 8]) -> f32 {
        // Lanes l and 32 + l, 16 + l and 48 + l, for l in 0..16 (two vectors each).
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        reduce16(lo, hi)
    }

    /// `_mm512_reduce_add_ps` of the 16 lanes `lo ++ hi`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce16(lo: __m256, hi: __m256) -> f32 {
        let t8 = _mm256_add_ps(hi, lo);
        let t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
        let r = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
    }

    /// `put(s, q · k_s)` for each slot `s` of `slots` that is `visible`, `k_s` the 64 values at
    /// `keys[s * row..]`, summed as [`ggml_dot`] sums one 64-value row (one step of 64 for
    /// `VecDot`, 16-lane chunks for `TinyBlas`), with `q` held in registers across the slots.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q` has 64 values, `keys` 64 from every `s * row`, `s` in
    /// `slots`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores64(
        q: &[f32],
        keys: &[f32],
        row: usize,
        slots: std::ops::Range<usize>,
        visible: &impl Fn(usize) -> bool,
        order: SumOrder,
        put: &mut impl FnMut(usize, f32),
    ) {
        assert!(q.len() >= 64);
        assert!(slots.is_empty() || (slots.end - 1) * row + 64 <= keys.len());
        let mut first = slots.start;
        if let SumOrder::TinyBlas = order {
            // Eight slots at a time, their sums reduced side by side (`reduce16_x8`); the
            // invisible ones are computed and dropped.
            while first + 8 <= slots.end {
                // SAFETY: the slots' key rows are in bounds (asserted above).
                let dots = unsafe { tiny_blas_x8(q, keys.as_ptr().add(first * row), row) };
                for (i, &dot) in dots.iter().enumerate() {
                    if visible(first + i) {
                        put(first + i, dot);
                    }
                }
                first += 8;
            }
        }
        // SAFETY: q has 64 values.
        let qv: [__m256; 8] =
            std::array::from_fn(|v| unsafe { _mm256_loadu_ps(q.as_ptr().add(8 * v)) });
        for s in (first..slots.end).filter(|&s| visible(s)) {
            let k = &keys[s * row..][..64];
            // SAFETY: k has 64 values.
            let kv = |v: usize| unsafe { _mm256_loadu_ps(k.as_ptr().add(8 * v)) };
            let dot = match order {
                SumOrder::TinyBlas => {
                    // Lanes 0..8 take vectors 0, 2, 4, 6; lanes 8..16 vectors 1, 3, 5, 7.
                    // From +0, as the reference sums (a -0 product then gives +0).
                    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    for c in 0..4 {
                        lo = _mm256_fmadd_ps(qv[2 * c], kv(2 * c), lo);
                        hi = _mm256_fmadd_ps(qv[2 * c + 1], kv(2 * c + 1), hi);
                    }
                    reduce16(lo, hi)
                }
                SumOrder::VecDot => {
                    // One step of 64: each lane holds one product.
                    let p: [__m256; 8] =
                        std::array::from_fn(|v| _mm256_fmadd_ps(qv[v], kv(v), _mm256_setzero_ps()));
                    reduce64(&p)
                }
            };
            put(s, dot);
        }
    }

    /// The `TinyBlas` dots of `q` (64 values) with the eight 64-value keys at `k`, `k + row`, …:
    /// per key, lanes 0..8 and 8..16 accumulated from +0 by FMA over the four 16-value chunks,
    /// then `_mm512_reduce_add_ps`'s additions — the halves added (`hi + lo`), then lanes
    /// `i + 4` and `i`, then `(0 + 2) + (1 + 3)` — done for the eight keys at once.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q` has 64 values, `k + j·row` 64 readable floats for j < 8.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiny_blas_x8(q: &[f32], k: *const f32, row: usize) -> [f32; 8] {
        let qp = q.as_ptr();
        // t8[j]: key j's 16 lanes folded to 8 (hi + lo).
        let t8: [__m256; 8] = std::array::from_fn(|j| {
            // SAFETY: the caller's bounds.
            unsafe {
                let kj = k.add(j * row);
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for c in 0..4 {
                    lo = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(16 * c)),
                        _mm256_loadu_ps(kj.add(16 * c)),
                        lo,
                    );
                    hi = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(16 * c + 8)),
                        _mm256_loadu_ps(kj.add(16 * c + 8)),
                        hi,
                    );
                }
                _mm256_add_ps(hi, lo)
            }
        });
        // Keys (2p, 2p + 1): lanes 0..4 key 2p's t4 (lanes i + 4 and i), lanes 4..8 key 2p + 1's.
        let t4: [__m256; 4] = std::array::from_fn(|p| {
            let (a, b) = (t8[2 * p], t8[2 * p + 1]);
            _mm256_add_ps(
                _mm256_permute2f128_ps(a, b, 0x31),
                _mm256_permute2f128_ps(a, b, 0x20),
            )
        });
        // Per 128-bit lane: t4[0] + t4[2], t4[1] + t4[3] of two keys.
        let t2: [__m256; 2] = std::array::from_fn(|p| {
            let (a, b) = (t4[2 * p], t4[2 * p + 1]);
            _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x44), _mm256_shuffle_ps(a, b, 0xEE))
        });
        // (0 + 2) + (1 + 3): lanes hold keys 0, 2, 4, 6, 1, 3, 5, 7.
        let r = _mm256_add_ps(
            _mm256_shuffle_ps(t2[0], t2[1], 0x88),
            _mm256_shuffle_ps(t2[0], t2[1], 0xDD),
        );
        let mut lanes = [0.0f32; 8];
        // SAFETY: lanes holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), r) };
        [
            lanes[0], lanes[4], lanes[1], lanes[5], lanes[2], lanes[6], lanes[3], lanes[7],
        ]
    }

    /// `out[e] = Σ probs[c0 + i] · values[e·n + s0 + i]` over the `(c0, s0, len)` segments, summed
    /// as [`ggml_dot`] sums them: the same lanes and order, a partial last chunk loaded with a
    /// mask (its other lanes add +0, as the reference's zero padding does).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every segment lies inside `probs` and inside a row of `n` of
    /// `values` (`out.len()` rows).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sums(
        probs: &[f32],
        values: &[f32],
        n: usize,
        segments: &[(usize, usize, usize)],
        order: SumOrder,
        out: &mut [f32],
    ) {
        assert!(values.len() >= out.len() * n);
        assert!(
            segments
                .iter()
                .all(|&(c0, s0, len)| c0 + len <= probs.len() && s0 + len <= n)
        );
        let run = |acc: &mut [__m256], e: usize| {
            for &(c0, s0, len) in segments {
                // SAFETY: the asserts above.
                unsafe {
                    accumulate(
                        acc,
                        probs.as_ptr().add(c0),
                        values.as_ptr().add(e * n + s0),
                        len,
                    )
                };
            }
        };
        let mut e0 = 0;
        if let SumOrder::TinyBlas = order {
            // Four outputs at a time: each chunk of probabilities loaded once for four rows of
            // values, every output in its own two accumulators (the same lanes and order).
            while e0 + 4 <= out.len() {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for &(c0, s0, len) in segments {
                    // SAFETY: the asserts above.
                    unsafe {
                        accumulate_x4(
                            &mut acc,
                            probs.as_ptr().add(c0),
                            values.as_ptr().add(e0 * n + s0),
                            n,
                            len,
                        )
                    };
                }
                for (o, acc) in out[e0..e0 + 4].iter_mut().zip(&acc) {
                    *o = reduce16(acc[0], acc[1]);
                }
                e0 += 4;
            }
        }
        for (e, o) in out.iter_mut().enumerate().skip(e0) {
            *o = match order {
                SumOrder::TinyBlas => {
                    let mut acc = [_mm256_setzero_ps(); 2];
                    run(&mut acc, e);
                    reduce16(acc[0], acc[1])
                }
                SumOrder::VecDot => {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    run(&mut acc, e);
                    reduce64(&acc)
                }
            };
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn ggml_dot<'a>(
        segments: impl Iterator<Item = (&'a [f32], &'a [f32])>,
        order: SumOrder,
    ) -> f32 {
        let run = |acc: &mut [__m256]| {
            for (a, b) in segments {
                // SAFETY: both slices hold the lengths passed.
                unsafe { accumulate(acc, a.as_ptr(), b.as_ptr(), a.len().min(b.len())) };
            }
        };
        match order {
            SumOrder::TinyBlas => {
                let mut acc = [_mm256_setzero_ps(); 2];
                run(&mut acc);
                reduce16(acc[0], acc[1])
            }
            SumOrder::VecDot => {
                let mut acc = [_mm256_setzero_ps(); 8];
                run(&mut acc);
                reduce64(&acc)
            }
        }
    }
}

/// `acc[i % L] += a[i]·b[i]` in index order (whole chunks of `L` vectorize).
#[inline(always)]
fn accumulate<const L: usize>(acc: &mut [f32; L], a: &[f32], b: &[f32]) {
    let len = a.len().min(b.len());
    let full = len / L * L;
    for (ac, bc) in a[..full].chunks_exact(L).zip(b[..full].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += ac[l] * bc[l];
        }
    }
    for i in full..len {
        acc[i % L] += a[i] * b[i];
    }
}

/// GCC's `_mm512_reduce_add_ps`: halves added lane-wise (8, then 4), then (0+2) + (1+3).
#[inline(always)]
fn reduce16(a: &[f32; 16]) -> f32 {
    let mut t8 = [0.0f32; 8];
    for i in 0..8 {
        t8[i] = a[i + 8] + a[i];
    }
    let mut t4 = [0.0f32; 4];
    for i in 0..4 {
        t4[i] = t8[i + 4] + t8[i];
    }
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn f16s(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale;
                f16::from_f32(x).to_f32()
            })
            .collect()
    }

    fn portable(segments: &[(&[f32], &[f32])], order: SumOrder) -> f32 {
        ggml_dot_portable(segments.iter().copied(), order)
    }

    /// The eight-lane exp, SwiGLU and softmax are the scalar functions to the bit, over the
    /// whole range of inputs (the branches of ggml_expf included: lanes that need them send
    /// their chunk to the scalar code).
    #[test]
    fn simd_exp_swiglu_and_softmax_are_the_scalar_ones() {
        if !crate::cpu::has_fma() {
            return;
        }
        let mut s = 7u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 32) as u32
        };
        // Random floats of every magnitude, values around the branch points, and specials.
        let mut xs: Vec<f32> = (0..40_000)
            .map(|i| match i % 4 {
                0 => f32::from_bits(next()),
                1 => (next() as f32 / u32::MAX as f32 - 0.5) * 250.0,
                2 => (next() as f32 / u32::MAX as f32 - 0.5) * 20.0,
                _ => (next() as f32 / u32::MAX as f32 - 0.5) * 1e-3,
            })
            .collect();
        for b in [
            -134.0f32, -133.0, -88.0, -87.5, 87.5, 88.5, 89.0, 133.5, 134.0,
        ] {
            for d in -40..40 {
                xs.push(b + d as f32 * 0.01);
            }
        }
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            f32::MIN,
            f32::MAX,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(1.0);
        }
        for (i, c) in xs.chunks_exact(8).enumerate() {
            // SAFETY: the CPU has AVX2 and FMA (checked); 8 values.
            let got = unsafe {
                use core::arch::x86_64::*;
                dot_x86::expf8(_mm256_loadu_ps(c.as_ptr())).map(|v| {
                    let mut o = [0.0f32; 8];
                    _mm256_storeu_ps(o.as_mut_ptr(), v);
                    o
                })
            };
            if let Some(got) = got {
                for (g, &x) in got.iter().zip(c) {
                    assert_eq!(g.to_bits(), ggml_expf(x).to_bits(), "exp({x}) chunk {i}");
                }
            }
        }
        let us: Vec<f32> = xs.iter().rev().map(|x| x.clamp(-3.0, 3.0)).collect();
        let mut want = vec![0.0f32; xs.len() - 3];
        swiglu_body(&xs[..want.len()], &us[..want.len()], &mut want);
        let mut got = vec![0.0f32; want.len()];
        swiglu_slice(&xs[..want.len()], &us[..want.len()], &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "swiglu at {i}: g {}", xs[i]);
        }
        // Softmax rows as attention makes them: scores, -inf for hidden slots, a row maximum.
        for (r, row) in xs.chunks(16 * 7).enumerate() {
            let mut row: Vec<f32> = row
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    if j % 11 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        x.clamp(-50.0, 50.0)
                    }
                })
                .collect();
            row.truncate(row.len() - r % 5);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut want = row.clone();
            let want_sum = softmax_exp_body(&mut want, max);
            let got_sum = softmax_exp(&mut row, max);
            assert_eq!(got_sum.to_bits(), want_sum.to_bits(), "row {r}");
            assert!(
                row.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits())
            );
        }
    }

    /// The AVX2 attention sums (scores eight keys at a time, weighted sums four outputs at a
    /// time) are the portable sums to the bit, invisible slots skipped, odd lengths included.
    #[test]
    fn simd_attention_sums_are_the_portable_ones() {
        if !crate::cpu::has_fma() {
            return;
        }
        let (row, d) = (3 * 64, 64);
        for order in [SumOrder::TinyBlas, SumOrder::VecDot] {
            for n in [1usize, 7, 8, 19, 64, 77] {
                let q = f16s(d, n as u64, 8.0);
                let keys = f16s(n * row, 99 + n as u64, 8.0);
                let visible = |s: usize| s % 5 != 3;
                let mut got = vec![None; n];
                // SAFETY: the test CPU has AVX2 and FMA (checked); q has 64 values, keys n rows.
                unsafe {
                    dot_x86::scores64(&q, &keys, row, 0..n, &visible, order, &mut |s, v| {
                        got[s] = Some(v)
                    })
                };
                for (s, got) in got.iter().enumerate() {
                    let want =
                        visible(s).then(|| portable(&[(&keys[s * row..][..64], &q[..])], order));
                    assert_eq!(
                        got.map(f32::to_bits),
                        want.map(f32::to_bits),
                        "slot {s} of {n}"
                    );
                }
                // Weighted sums: 6 outputs (a group of four and two alone), two segments.
                let probs = f16s(n + 64, 5, 0.1);
                let values = f16s(6 * (n + 64), 6, 4.0);
                let m = n + 64;
                let segments = [(0usize, 0usize, n.min(64)), (64, 64, n)];
                let mut out = vec![0.0f32; 6];
                // SAFETY: as above; every segment lies inside probs and a row of m.
                unsafe { dot_x86::weighted_sums(&probs, &values, m, &segments, order, &mut out) };
                for (e, o) in out.iter().enumerate() {
                    let segs: Vec<(&[f32], &[f32])> = segments
                        .iter()
                        .map(|&(c0, s0, len)| (&probs[c0..c0 + len], &values[e * m + s0..][..len]))
                        .collect();
                    assert_eq!(o.to_bits(), portable(&segs, order).to_bits(), "output {e}");
                }
            }
        }
    }
}
