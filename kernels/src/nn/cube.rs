//! CubeCL transformer ops (wgpu, CUDA: one source), computing what the Flex implementations
//! compute, operation for operation (tested bit for bit against them on llvmpipe):
//!
//! * RMSNorm: one cube per row; the sum of squares in f64 as ggml sums it, serially, with
//!   integer arithmetic ([`crate::cube_softfloat`]), then the scaled row.
//! * RoPE: one unit per rotated pair, in place when the tensor's buffer is not shared; the
//!   angles' cosines and sines come from the host ([`super::rope_table`], once per forward pass).
//! * SwiGLU: ggml's `expf` and SiLU.
//! * Attention: K/V appended to the cache (f32 holding f16-rounded values, as the CPU's f16
//!   cache; queries rounded to f16 likewise), then one cube per (query, head):
//!   [`Softmax::Rounded`] sweeps the visible slots three times in tiles of 64 — the maximum
//!   score, the normalizer (16-lane chunk sums added in f64), the f16-rounded probabilities
//!   against V — with every dot product in llama.cpp's lane order (tinyBLAS for batches,
//!   `ggml_vec_dot_f16` for one token); [`Softmax::OnePass`] walks them once in tiles of 32
//!   with an online softmax (flash-attention style). GQA maps head `h` to KV head
//!   `h / (heads / kv_heads)`.
//!
//! Where the device's `fma` does not round once (llvmpipe), the kernels use
//! [`crate::cube_softfloat::soft_fma`].

use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::{NnOps, Positions, Rope, Softmax, Visibility};

// The attention kernel spells out `super::sees` with this shift.
const _: () = assert!(super::SEQ_GROUP_SHIFT == 16);
use crate::cube_softfloat::{fmadd, ggml_expf, native_fma, opaque, wide_add, wide_div};
use crate::cube_util::{round_to_f16, upload_u32};

const NORM_UNITS: usize = 64;
const ATTN_UNITS: usize = 32;
/// Units (and slots per tile) of the exact attention kernel.
const EXACT_UNITS: usize = 64;

/// ggml_compute_forward_rms_norm_f32: `scale = 1 / sqrt(f32(Σ x² / d) + eps)` with the squares
/// (f32 products) summed in f64 in index order — by unit 0, in integer arithmetic — then
/// `x · scale · w`.
#[cube(launch_unchecked)]
fn rms_norm_kernel(x: &[f32], w: &[f32], out: &mut [f32], d: usize, eps: f32) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let base = row * d;
    let mut smem = Shared::<[f32]>::new_slice(1usize);
    if u == 0 {
        let mut h = 0u32;
        let mut l = 0u32;
        let mut e = 0i32;
        for j in 0..d {
            let v = x[base + j];
            let (h2, l2, e2) = wide_add(h, l, e, v * v);
            h = h2;
            l = l2;
            e = e2;
        }
        let mut mean = 0.0f32;
        if (h | l) != 0u32 {
            let (dh, dl, de) = wide_add(0u32, 0u32, 0i32, f32::cast_from(d));
            mean = wide_div(h, l, e, dh, dl, de);
        }
        smem[0] = 1.0f32 / f32::sqrt(mean + eps);
    }
    sync_cube();
    let scale = smem[0];
    let mut j = u;
    while j < d {
        out[base + j] = x[base + j] * scale * w[j];
        j += 64usize;
    }
}

/// One unit per (token, head, pair): `x0·c − x1·s` and `x0·s + x1·c` as ggml's rotate_pairs is
/// compiled (each as one fused multiply-add of the other, rounded, product), `(c, s)` from the
/// host's table (`[t][half][2]`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel(
    x: &mut [f32],
    table: &[f32],
    heads: usize,
    d: usize,
    half: usize,
    total: usize,
    #[comptime] neox: bool,
    #[comptime] soft: bool,
) {
    let idx = ABSOLUTE_POS;
    if idx >= total {
        terminate!();
    }
    let i = idx % half;
    let th = idx / half;
    let tok = th / heads;
    let at = (tok * half + i) * 2;
    let c = table[at];
    let s = table[at + 1];
    let base = th * d;
    let mut a = base + 2 * i;
    let mut b = base + 2 * i + 1;
    if comptime!(neox) {
        a = base + i;
        b = base + i + half;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = fmadd(x0, c, -(x1 * s), soft);
    x[b] = fmadd(x0, s, x1 * c, soft);
}

/// `silu(g) · u` as the CPU computes it: `g / (1 + expf(-g)) · u` with ggml's `expf`.
#[cube(launch_unchecked)]
fn swiglu_kernel(g: &[f32], u: &[f32], out: &mut [f32], n: usize, #[comptime] soft: bool) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let gv = g[i];
    out[i] = gv / (1.0f32 + ggml_expf(-gv, soft)) * u[i];
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

/// Whether cache slot `s < n` is visible to a query at position `qp` of sequence `qseq`
/// (`super::sees`, with SEQ_GROUP_SHIFT = 16). `vis` holds
/// `[query_pos; t][query_seq; t][key_pos; n][key_seq; n]`.
#[cube]
fn visible(vis: &[u32], s: usize, n: usize, t: usize, qp: u32, qseq: u32) -> bool {
    let kp = vis[2 * t + s];
    let ks = vis[2 * t + n + s];
    let group_prefix = (ks & 0xFFFFu32) == 0u32 && (ks >> 16u32) == (qseq >> 16u32);
    kp <= qp && (ks == 0u32 || ks == qseq || group_prefix)
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
    // (CubeCL's `&&` short-circuits: `visible` reads slot `s` only when it exists.)
    if s < n && visible(vis, s, n, t, qp, qseq) {
        let mut dot = 0.0f32;
        for e in 0..hd {
            dot += qs[e] * kc[k_at + e];
        }
        score = dot * scale;
    }
    score
}

/// GCC's `_mm512_reduce_add_ps` of `a[at..at + 16]`: halves added lane-wise (8, then 4), then
/// (0 + 2) + (1 + 3).
#[cube]
fn reduce16(a: &Array<f32>, #[comptime] at: usize) -> f32 {
    let mut t8 = Array::<f32>::new(8usize);
    #[unroll]
    for l in 0..8usize {
        t8[l] = a[at + l + 8] + a[at + l];
    }
    let mut t4 = Array::<f32>::new(4usize);
    #[unroll]
    for l in 0..4usize {
        t4[l] = t8[l + 4] + t8[l];
    }
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// The lanes of one of llama.cpp's f16 dot products (`a[at..at + lanes]`), added up as it adds
/// them: `ggml_vec_dot_f16` (`vec_dot`, 64 lanes: GGML_F32x16_REDUCE's 0+2, 1+3, then 0+1 of
/// its four 16-lane accumulators, then [`reduce16`]) or tinyBLAS (16 lanes, [`reduce16`]).
#[cube]
#[allow(unused_assignments)]
fn finish_lanes(a: &Array<f32>, #[comptime] at: usize, #[comptime] vec_dot: bool) -> f32 {
    let mut out = 0.0f32;
    if comptime!(vec_dot) {
        let mut x = Array::<f32>::new(16usize);
        #[unroll]
        for l in 0..16usize {
            x[l] = (a[at + l] + a[at + 32 + l]) + (a[at + 16 + l] + a[at + 48 + l]);
        }
        out = reduce16(&x, 0usize);
    } else {
        out = reduce16(a, at);
    }
    out
}

/// `qs · k` for the key at `k_at` in llama.cpp's order: lane `e % lanes` sums its products in
/// index order from 0 (products of f16 values are exact), then [`finish_lanes`].
#[cube]
fn dot_lanes(
    qs: &Shared<[f32]>,
    kc: &[f32],
    k_at: usize,
    zero: u32,
    #[comptime] hd: usize,
    #[comptime] vec_dot: bool,
) -> f32 {
    let lanes = comptime!(if vec_dot { 64usize } else { 16usize });
    let mut acc = Array::<f32>::new(lanes);
    #[unroll]
    for l in 0..lanes {
        acc[l] = 0.0f32;
    }
    #[unroll]
    for e in 0..hd {
        let l = comptime!(e % lanes);
        acc[l] += opaque(qs[e] * kc[k_at + e], zero);
    }
    finish_lanes(&acc, 0usize, vec_dot)
}

/// Cube `(i, h)`: query `i`, head `h`, [`EXACT_UNITS`] units; the CPU's attention
/// (`nn/flex.rs`), operation for operation. Three sweeps over the visible slots, a tile of 64
/// at a time, unit `u` taking slot `64·tile + u`:
/// 1. the maximum score (`q · k` in llama.cpp's lane order, times `scale`);
/// 2. `e = expf(score − max)` (ggml's `expf`), each 16-slot chunk reduced in f32 and the chunks
///    added in f64 (integer arithmetic) by unit 0; `inv = f32(1 / sum)`;
/// 3. `p = f16(e · inv)`, and each output value `Σ p · v` in the same lane order (unit `u` owns
///    values `u, u + 64, …`).
///
/// `vec_dot`: one new token (`ggml_vec_dot_f16`'s order), else a batch (tinyBLAS's).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_exact_kernel(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    out: &mut [f32],
    vis: &[u32],
    n: usize,
    heads: usize,
    kv_heads: usize,
    scale: f32,
    zero: u32,
    #[comptime] hd: usize,
    #[comptime] vec_dot: bool,
    #[comptime] soft: bool,
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
    let mut ps = Shared::<[f32]>::new_slice(64usize);
    let mut red = Shared::<[f32]>::new_slice(64usize);
    let mut e = u;
    while e < hd {
        qs[e] = round_to_f16(q[q_at + e]);
        e += 64usize;
    }
    sync_cube();
    let qp = vis[i];
    let qseq = vis[t + i];
    let tiles = n.div_ceil(64usize);

    // 1. The maximum: each unit over its slots, then a tree (below any real score: WGSL has no
    // infinity literal).
    let mut umax = f32::new(-3.0e38f32);
    for tile in 0..tiles {
        let s = tile * 64 + u;
        if s < n && visible(vis, s, n, t, qp, qseq) {
            umax = f32::max(
                umax,
                dot_lanes(&qs, kc, s * row + kv_off, zero, hd, vec_dot) * scale,
            );
        }
    }
    red[u] = umax;
    sync_cube();
    let mut stride = 32usize;
    while stride > 0 {
        if u < stride {
            red[u] = f32::max(red[u], red[u + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let max = red[0];
    sync_cube();

    // 2. The normalizer. The score goes through shared memory before `score − max`, so that no
    // compiler fuses the product into the subtraction.
    let mut sh = 0u32;
    let mut sl = 0u32;
    let mut se = 0i32;
    for tile in 0..tiles {
        let s = tile * 64 + u;
        let mut seen = false;
        if s < n {
            seen = visible(vis, s, n, t, qp, qseq);
        }
        if seen {
            ps[u] = dot_lanes(&qs, kc, s * row + kv_off, zero, hd, vec_dot) * scale;
        }
        sync_cube();
        let mut ev = 0.0f32;
        if seen {
            ev = ggml_expf(ps[u] - max, soft);
        }
        sync_cube();
        ps[u] = ev;
        sync_cube();
        if u < 4 {
            let mut lanes = Array::<f32>::new(16usize);
            #[unroll]
            for l in 0..16usize {
                lanes[l] = ps[u * 16 + l];
            }
            red[u] = reduce16(&lanes, 0usize);
        }
        sync_cube();
        if u == 0 {
            #[unroll]
            for c in 0..4usize {
                let (h2, l2, e2) = wide_add(sh, sl, se, red[c]);
                sh = h2;
                sl = l2;
                se = e2;
            }
        }
        sync_cube();
    }
    if u == 0 {
        let (oh, ol, oe) = wide_add(0u32, 0u32, 0i32, 1.0f32);
        red[0] = wide_div(oh, ol, oe, sh, sl, se);
    }
    sync_cube();
    let inv = red[0];

    // 3. f16-rounded probabilities against V.
    let lanes = comptime!(if vec_dot { 64usize } else { 16usize });
    let per_unit = comptime!(hd.div_ceil(64usize));
    let mut acc = Array::<f32>::new(comptime!(per_unit * lanes));
    #[unroll]
    for a in 0..comptime!(per_unit * lanes) {
        acc[a] = 0.0f32;
    }
    for tile in 0..tiles {
        let s = tile * 64 + u;
        let mut seen = false;
        if s < n {
            seen = visible(vis, s, n, t, qp, qseq);
        }
        if seen {
            ps[u] = dot_lanes(&qs, kc, s * row + kv_off, zero, hd, vec_dot) * scale;
        }
        sync_cube();
        let mut p = 0.0f32;
        if seen {
            p = round_to_f16(ggml_expf(ps[u] - max, soft) * inv);
        }
        sync_cube();
        ps[u] = p;
        sync_cube();
        let slots = usize::min(64usize, n - tile * 64);
        #[unroll]
        for c in 0..per_unit {
            let e = u + c * 64;
            if e < hd {
                for j in 0..slots {
                    let pj = ps[j];
                    // A zero probability adds +0 or -0: nothing (the lanes never hold -0).
                    if pj != 0.0f32 {
                        let l = c * lanes + j % lanes;
                        acc[l] += opaque(pj * vc[(tile * 64 + j) * row + kv_off + e], zero);
                    }
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for c in 0..per_unit {
        let e = u + c * 64;
        if e < hd {
            out[q_at + e] = finish_lanes(&acc, comptime!(c * lanes), vec_dot);
        }
    }
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

/// Cube `(i, h)`: query `i`, head `h`, 32 units ([`Softmax::OnePass`]). One sweep, online
/// softmax: each tile of 32 slots rescales the running sum and output by
/// `exp(m_old − m_new)`; the output is divided by the sum at the end.
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
        accumulate_v(&mut acc, &ps, vc, tile, row, kv_off, alpha, hd);
        m_run = m_new;
        sync_cube();
    }
    let mut inv = 0.0f32;
    if l_run > 0.0f32 {
        inv = 1.0f32 / l_run;
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

    fn rope(x: FloatTensor<Self>, positions: Positions, rope: Rope) -> FloatTensor<Self> {
        let x = writable(x);
        let shape = x.meta.shape().clone();
        let (t, heads, d) = (shape[0], shape[1], shape[2]);
        let half = rope.n_rot / 2;
        let total = t * heads * half;
        let client = x.client.clone();
        // Uploaded once per forward pass: every layer's q and k share the positions' copy.
        let (_, table) = positions.device_copy.get_or(
            |made: &(Rope, CubeTensor)| made.0 == rope && made.1.device == x.device,
            || {
                let table = super::rope_table(&positions.pos, &rope);
                let bits: Vec<u32> = table.iter().map(|v| v.to_bits()).collect();
                (rope.clone(), upload_u32(&x, &bits))
            },
        );
        let soft = !native_fma(&client, &x.device);
        let (count, dim) = elementwise(&client, total);
        // SAFETY: units past `t · heads · half` return; the others touch two values of their
        // own head (indices below `t · heads · d`, as n_rot ≤ d was checked) and read their
        // token's pair of the table (`t · half · 2` values).
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
                total,
                rope.neox,
                soft,
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
        let soft = !native_fma(&client, &g.device);
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
                soft,
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
        let count = CubeCount::new_2d(t as u32, heads as u32);
        if mask.softmax == Softmax::Rounded {
            let soft = !native_fma(&client, &q.device);
            // SAFETY: cube (i, h) for i < t, h < heads reads q's row (i, h), cache slots below
            // `n ≤ capacity` of KV head h / group, and the visibility table (2t + 2n entries);
            // it writes only its own `hd` outputs.
            unsafe {
                attention_exact_kernel::launch_unchecked(
                    &client,
                    count,
                    CubeDim::new_1d(EXACT_UNITS as u32),
                    q.into_buffer_arg(),
                    kc.clone().into_buffer_arg(),
                    vc.clone().into_buffer_arg(),
                    out.clone().into_buffer_arg(),
                    vis.into_buffer_arg(),
                    n,
                    heads,
                    kv_heads,
                    mask.scale,
                    0u32,
                    hd,
                    t == 1,
                    soft,
                );
            }
        } else {
            // SAFETY: as above.
            unsafe {
                attention_kernel::launch_unchecked(
                    &client,
                    count,
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
                );
            }
        }
        (out, kc, vc)
    }
}
