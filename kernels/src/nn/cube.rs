//! CubeCL transformer ops (wgpu, CUDA: one source), tested against the Flex implementations.
//!
//! * RMSNorm: one cube per row, a shared-memory tree for the sum of squares, then the scaled
//!   row in the same pass.
//! * RoPE: one unit per rotated pair, in place when the tensor's buffer is not shared.
//! * Attention: K/V appended to the cache, then one cube per (query, head) walks the visible
//!   cache slots in tiles of 32 with an online softmax (running max and sum, flash-attention
//!   style): one pass over K and V, no score matrix in memory ([`Softmax::OnePass`]); or, to
//!   follow the CPU's (ggml's) arithmetic, a first sweep for the max and sum and a second that
//!   weighs V by f16-rounded probabilities ([`Softmax::Rounded`]). GQA maps head `h` to KV head
//!   `h / (heads / kv_heads)`. The cache is f32 on the device, holding values rounded to f16 as
//!   the CPU's f16 cache does (no shader f16 needed); queries are rounded to f16 likewise.

use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::{NnOps, Rope, Softmax, Visibility};

// The attention kernel spells out `super::sees` with this shift.
const _: () = assert!(super::SEQ_GROUP_SHIFT == 16);
use crate::cube_util::{round_to_f16, tree_sum, upload_u32};

const NORM_UNITS: usize = 64;
const ATTN_UNITS: usize = 32;

#[cube(launch_unchecked)]
fn rms_norm_kernel(x: &[f32], w: &[f32], out: &mut [f32], d: usize, eps: f32) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let base = row * d;
    let mut s = 0.0f32;
    let mut j = u;
    while j < d {
        let v = x[base + j];
        s += v * v;
        j += 64usize;
    }
    let mut smem = Shared::<[f32]>::new_slice(64usize);
    smem[u] = s;
    tree_sum(&mut smem);
    let scale = 1.0f32 / f32::sqrt(smem[0] / f32::cast_from(d) + eps);
    let mut j = u;
    while j < d {
        out[base + j] = x[base + j] * scale * w[j];
        j += 64usize;
    }
}

/// One unit per (token, head, pair). θ follows the CPU: `pos · scale^i` by repeated products.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel(
    x: &mut [f32],
    table: &[u32],
    heads: usize,
    d: usize,
    half: usize,
    theta_scale: f32,
    freq_scale: f32,
    total: usize,
    #[comptime] has_factors: bool,
    #[comptime] neox: bool,
) {
    let idx = ABSOLUTE_POS;
    if idx >= total {
        terminate!();
    }
    let i = idx % half;
    let th = idx / half;
    let tok = th / heads;
    // table: [positions; t][frequency factors as f32 bits; half] (factors only if any).
    let mut theta = f32::cast_from(table[tok]);
    for _ in 0..i {
        theta *= theta_scale;
    }
    let mut ff = 1.0f32;
    if comptime!(has_factors) {
        ff = f32::reinterpret(table[total / half / heads + i]);
    }
    let t = freq_scale * (theta / ff);
    let c = f32::cos(t);
    let s = f32::sin(t);
    let base = th * d;
    let mut a = base + 2 * i;
    let mut b = base + 2 * i + 1;
    if comptime!(neox) {
        a = base + i;
        b = base + i + half;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}

#[cube(launch_unchecked)]
fn swiglu_kernel(g: &[f32], u: &[f32], out: &mut [f32], n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let gv = g[i];
    out[i] = gv / (1.0f32 + f32::exp(-gv)) * u[i];
}

/// `cache[offset + i] = round_f16(new[i])`.
#[cube(launch_unchecked)]
fn append_kernel(new: &[f32], cache: &mut [f32], offset: usize, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    cache[offset + i] = round_to_f16(new[i]);
}

/// The score of query `(i, h)` (its f16-rounded values in `qs`) against cache slot `s`, or
/// `neg` when the slot is not visible to the query (or past `n`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn score_at(
    qs: &Shared<[f32]>,
    kc: &[f32],
    vis: &[u32],
    s: usize,
    n: usize,
    t: usize,
    qp: u32,
    qseq: u32,
    k_at: usize,
    scale: f32,
    neg: f32,
    #[comptime] hd: usize,
) -> f32 {
    let mut score = neg;
    if s < n {
        let kp = vis[2 * t + s];
        let ks = vis[2 * t + n + s];
        // `super::sees`, with SEQ_GROUP_SHIFT = 16.
        let group_prefix = (ks & 0xFFFFu32) == 0u32 && (ks >> 16u32) == (qseq >> 16u32);
        if kp <= qp && (ks == 0u32 || ks == qseq || group_prefix) {
            let mut dot = 0.0f32;
            for e in 0..hd {
                dot += qs[e] * kc[k_at + e];
            }
            score = dot * scale;
        }
    }
    score
}

/// One 32-slot tile of an online softmax, each unit bringing its slot's `score` (`neg` when the
/// slot is masked). Returns `(m_new, alpha, l_new)`: the running maximum with this tile,
/// `exp(m_run − m_new)` to rescale what was accumulated, and the rescaled running sum with the
/// tile's terms; `ps` then holds the tile's `exp(score − m_new)` (0 for masked slots).
#[cube]
pub(crate) fn softmax_tile(
    ps: &mut Shared<[f32]>,
    score: f32,
    m_run: f32,
    l_run: f32,
    neg: f32,
) -> (f32, f32, f32) {
    let u = UNIT_POS as usize;
    ps[u] = score;
    sync_cube();
    let mut tmax = neg;
    for j in 0..32usize {
        tmax = f32::max(tmax, ps[j]);
    }
    let m_new = f32::max(m_run, tmax);
    sync_cube();
    let mut p = 0.0f32;
    if score > neg {
        p = f32::exp(score - m_new);
    }
    ps[u] = p;
    sync_cube();
    let mut alpha = 1.0f32;
    if m_run > neg {
        alpha = f32::exp(m_run - m_new);
    }
    let mut tsum = 0.0f32;
    for j in 0..32usize {
        tsum += ps[j];
    }
    (m_new, alpha, l_run * alpha + tsum)
}

/// Adds `Σ_j ps[j] · v[slot tile·32 + j]` to this unit's dimensions of `acc`, after scaling
/// them by `alpha`.
#[cube]
pub(crate) fn accumulate_v(
    acc: &mut Shared<[f32]>,
    ps: &Shared<[f32]>,
    vc: &[f32],
    tile: usize,
    row: usize,
    v_off: usize,
    alpha: f32,
    #[comptime] hd: usize,
) {
    let mut e = UNIT_POS as usize;
    while e < hd {
        let mut a = acc[e] * alpha;
        for j in 0..32usize {
            let pj = ps[j];
            if pj != 0.0f32 {
                a += pj * vc[(tile * 32 + j) * row + v_off + e];
            }
        }
        acc[e] = a;
        e += 32usize;
    }
}

/// Cube `(i, h)`: query `i`, head `h`, 32 units. `vis` holds
/// `[query_pos; t][query_seq; t][key_pos; n][key_seq; n]`.
///
/// One sweep (`rounded` false): online softmax, each tile of 32 slots rescales the running
/// sum and output by `exp(m_old − m_new)`; the output is divided by the sum at the end.
/// `rounded` true (ggml's arithmetic, the CPU path's): the sweep finds the maximum and sum
/// only, and a second sweep weighs V by the normalized probabilities rounded to f16, as ggml's
/// f16 `mul_mat` of the softmax with V does. Same memory, K read twice.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    out: &mut [f32],
    vis: &[u32],
    n: usize,
    heads: usize,
    kv_heads: usize,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] rounded: bool,
) {
    let i = CUBE_POS_X as usize;
    let h = CUBE_POS_Y as usize;
    let t = CUBE_COUNT_X as usize;
    let u = UNIT_POS as usize;
    let kvh = h / (heads / kv_heads);
    let row = kv_heads * hd;
    let kv_off = kvh * hd;
    let q_at = (i * heads + h) * hd;
    let mut qs = Shared::<[f32]>::new_slice(hd);
    let mut acc = Shared::<[f32]>::new_slice(hd);
    let mut ps = Shared::<[f32]>::new_slice(32usize);
    let mut e = u;
    while e < hd {
        qs[e] = round_to_f16(q[q_at + e]);
        acc[e] = 0.0f32;
        e += 32usize;
    }
    sync_cube();
    let qp = vis[i];
    let qseq = vis[t + i];
    // Below any real score: WGSL has no infinity literal.
    let neg = f32::new(-3.0e38f32);
    let mut m_run = neg;
    let mut l_run = 0.0f32;
    let tiles = n.div_ceil(32usize);
    for tile in 0..tiles {
        let s = tile * 32 + u;
        let score = score_at(
            &qs,
            kc,
            vis,
            s,
            n,
            t,
            qp,
            qseq,
            s * row + kv_off,
            scale,
            neg,
            hd,
        );
        let (m_new, alpha, l_new) = softmax_tile(&mut ps, score, m_run, l_run, neg);
        l_run = l_new;
        if comptime!(!rounded) {
            accumulate_v(&mut acc, &ps, vc, tile, row, kv_off, alpha, hd);
        }
        m_run = m_new;
        sync_cube();
    }
    let mut inv = 0.0f32;
    if l_run > 0.0f32 {
        inv = 1.0f32 / l_run;
    }
    if comptime!(rounded) {
        for tile in 0..tiles {
            let s = tile * 32 + u;
            let score = score_at(
                &qs,
                kc,
                vis,
                s,
                n,
                t,
                qp,
                qseq,
                s * row + kv_off,
                scale,
                neg,
                hd,
            );
            let mut p = 0.0f32;
            if score > neg {
                p = round_to_f16(f32::exp(score - m_run) * inv);
            }
            ps[u] = p;
            sync_cube();
            accumulate_v(&mut acc, &ps, vc, tile, row, kv_off, 1.0f32, hd);
            sync_cube();
        }
        inv = 1.0f32;
    }
    let mut e = u;
    while e < hd {
        out[q_at + e] = acc[e] * inv;
        e += 32usize;
    }
}

fn elementwise(client: &cubecl::client::Client, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n.max(1));
    (calculate_cube_count_elemwise(client, n.max(1), dim), dim)
}

/// `t` with a buffer of its own, contiguous, that a kernel may write.
fn writable(t: CubeTensor) -> CubeTensor {
    let t = into_contiguous(t);
    if t.can_mut() { t } else { t.copy() }
}

fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, DType::F32)
}

impl NnOps for CubeBackend {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let w = into_contiguous(weight);
        let shape = x.meta.shape().clone();
        let d = w.meta.shape().num_elements();
        let rows = shape.num_elements() / d;
        let out = empty_like(&x, shape);
        let client = x.client.clone();
        // SAFETY: one cube per row (`rows` cubes); units read and write indices below
        // `rows · d` and read `w` below `d`.
        unsafe {
            rms_norm_kernel::launch_unchecked(
                &client,
                CubeCount::new_1d(rows as u32),
                CubeDim::new_1d(NORM_UNITS as u32),
                x.into_buffer_arg(),
                w.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                d,
                eps,
            );
        }
        out
    }

    fn rope(x: FloatTensor<Self>, positions: Vec<u32>, rope: Rope) -> FloatTensor<Self> {
        let x = writable(x);
        let shape = x.meta.shape().clone();
        let (t, heads, d) = (shape[0], shape[1], shape[2]);
        let half = rope.n_rot / 2;
        let total = t * heads * half;
        let client = x.client.clone();
        // One upload per call: the positions, then the factors' bits.
        let table: Vec<u32> = positions
            .iter()
            .copied()
            .chain(rope.freq_factors.iter().map(|f| f.to_bits()))
            .collect();
        let table = upload_u32(&x, &table);
        let theta_scale = rope.freq_base.powf(-2.0 / rope.n_rot as f32);
        let (count, dim) = elementwise(&client, total);
        // SAFETY: units past `t · heads · half` return; the others touch two values of their
        // own head (indices below `t · heads · d`, as n_rot ≤ d was checked) and read
        // `table[token]` (t positions) and, with factors, `table[t + i]` (half factors).
        unsafe {
            rope_kernel::launch_unchecked(
                &client,
                count,
                dim,
                x.clone().into_buffer_arg(),
                table.into_buffer_arg(),
                heads,
                d,
                half,
                theta_scale,
                rope.freq_scale,
                total,
                !rope.freq_factors.is_empty(),
                rope.neox,
            );
        }
        x
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let g = into_contiguous(gate);
        let u = into_contiguous(up);
        let shape = g.meta.shape().clone();
        let n = shape.num_elements();
        let out = empty_like(&g, shape);
        let client = g.client.clone();
        let (count, dim) = elementwise(&client, n);
        // SAFETY: units at or past `n` return; `g`, `u` and `out` hold `n` values.
        unsafe {
            swiglu_kernel::launch_unchecked(
                &client,
                count,
                dim,
                g.into_buffer_arg(),
                u.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
            );
        }
        out
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
        mask: Visibility,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let q = into_contiguous(q);
        let qshape = q.meta.shape().clone();
        let (t, heads, hd) = (qshape[0], qshape[1], qshape[2]);
        let kv_heads = k.meta.shape()[1];
        let row = kv_heads * hd;
        let n = start + t;
        let client = q.client.clone();
        let mut caches = Vec::with_capacity(2);
        for (cache, new) in [(k_cache, k), (v_cache, v)] {
            assert_eq!(
                cache.dtype,
                DType::F32,
                "attention: Cube K/V caches are f32"
            );
            let cache = writable(cache);
            let new = into_contiguous(new);
            let len = t * row;
            let (count, dim) = elementwise(&client, len);
            // SAFETY: units at or past `t · row` return; the others write cache slots
            // `start .. start + t` (the caller checked `start + t ≤ capacity`).
            unsafe {
                append_kernel::launch_unchecked(
                    &client,
                    count,
                    dim,
                    new.into_buffer_arg(),
                    cache.clone().into_buffer_arg(),
                    start * row,
                    len,
                );
            }
            caches.push(cache);
        }
        let vc = caches.pop().expect("two caches");
        let kc = caches.pop().expect("two caches");
        // Uploaded once per forward pass: the layers share the mask's device copy.
        let vis = mask.device_copy.get_or(
            |t: &CubeTensor| t.device == q.device,
            || {
                let vis: Vec<u32> = mask
                    .query_pos
                    .iter()
                    .chain(mask.query_seq.iter())
                    .chain(mask.key_pos.iter())
                    .chain(mask.key_seq.iter())
                    .copied()
                    .collect();
                upload_u32(&q, &vis)
            },
        );
        let out = empty_like(&q, Shape::new([t, heads * hd]));
        // SAFETY: cube (i, h) for i < t, h < heads reads q's row (i, h), cache slots below
        // `n ≤ capacity` of KV head h / group, and the visibility table (2t + 2n entries);
        // it writes only its own `hd` outputs.
        unsafe {
            attention_kernel::launch_unchecked(
                &client,
                CubeCount::new_2d(t as u32, heads as u32),
                CubeDim::new_1d(ATTN_UNITS as u32),
                q.into_buffer_arg(),
                kc.clone().into_buffer_arg(),
                vc.clone().into_buffer_arg(),
                out.clone().into_buffer_arg(),
                vis.into_buffer_arg(),
                n,
                heads,
                kv_heads,
                mask.scale,
                hd,
                mask.softmax == Softmax::Rounded,
            );
        }
        (out, kc, vc)
    }
}
