//! The BERT encoder's ops as CubeCL kernels (wgpu, CUDA), the Flex ops as their reference.
//!
//! * `dense`: the f32 weight, stored `[n, k]` (a row per output), through the quantized
//!   matmul's kernels (their F32 block decoder: mat-vec or tiled), then bias and GELU (the
//!   CPU's erf approximation) in one elementwise pass.
//! * `self_attention`: one cube per (token row, head) over the fused QKV rows, keys limited
//!   to the row's sequence length, one-pass online softmax in f32.
//! * `add_layer_norm`: one cube per row, mean then variance by shared-memory trees.

use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};
use kiln_quant::GgmlType;

use super::EncoderOps;
use crate::cpu::gemm::Act;
use crate::cube_util::{tree_sum, upload_u32};
use crate::nn::cube::{accumulate_v, softmax_tile};
use crate::qmatmul::cube::launch_qmatmul;
use crate::qmatmul::{Reduction, Tiling};

/// The CPU's rational erf (Eigen's), ±1 past |x| = 3.9.
#[cube]
fn erf(x: f32) -> f32 {
    let x = f32::clamp(x, -4.0f32, 4.0f32);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10f32 + 2.770_681_4e-8f32;
    p = x2 * p + -2.101_024e-6f32;
    p = x2 * p + -5.692_506_4e-5f32;
    p = x2 * p + -7.349_906_3e-4f32;
    p = x2 * p + -2.954_6e-3f32;
    p = x2 * p + -1.609_603_3e-2f32;
    let mut q = x2 * -1.456_607_2e-5f32 + -2.133_740_6e-4f32;
    q = x2 * q + -1.682_827e-3f32;
    q = x2 * q + -7.373_329_2e-3f32;
    q = x2 * q + -1.426_473_9e-2f32;
    let mut out = x * p / q;
    if f32::abs(x) >= 3.9f32 {
        out = 1.0f32;
        if x < 0.0f32 {
            out = -1.0f32;
        }
    }
    out
}

/// `act` as a comptime code for [`bias_act_kernel`].
fn act_code(act: Act) -> u32 {
    match act {
        Act::None => 0,
        Act::Gelu => 1,
        Act::QuickGelu => 2,
    }
}

/// `y[i] += bias[i % n]`, then the activation `act` ([`act_code`]).
#[cube(launch_unchecked)]
fn bias_act_kernel(y: &mut [f32], bias: &[f32], n: usize, total: usize, #[comptime] act: u32) {
    let i = ABSOLUTE_POS;
    if i >= total {
        terminate!();
    }
    let mut v = y[i] + bias[i % n];
    if comptime!(act == 1) {
        v = 0.5f32 * v * (1.0f32 + erf(v * 0.707_106_77f32));
    }
    if comptime!(act == 2) {
        v /= 1.0f32 + f32::exp(-1.702f32 * v);
    }
    y[i] = v;
}

#[cube(launch_unchecked)]
fn encoder_attention_kernel(
    qkv: &[f32],
    lengths: &[u32],
    out: &mut [f32],
    seq: usize,
    heads: usize,
    total: usize,
    scale: f32,
    #[comptime] hd: usize,
) {
    let idx = CUBE_POS;
    if idx >= total {
        terminate!();
    }
    let r = idx / heads;
    let h = idx % heads;
    let b = r / seq;
    let len = lengths[b] as usize;
    let hh = heads * hd;
    let h3 = 3 * hh;
    let u = UNIT_POS as usize;
    let mut qs = Shared::<[f32]>::new_slice(hd);
    let mut acc = Shared::<[f32]>::new_slice(hd);
    let mut ps = Shared::<[f32]>::new_slice(32usize);
    let mut e = u;
    while e < hd {
        qs[e] = qkv[r * h3 + h * hd + e];
        acc[e] = 0.0f32;
        e += 32usize;
    }
    sync_cube();
    let neg = f32::new(-3.0e38f32);
    let mut m_run = neg;
    let mut l_run = 0.0f32;
    let base = b * seq;
    let tiles = len.div_ceil(32usize);
    for tile in 0..tiles {
        let j = tile * 32 + u;
        let mut score = neg;
        if j < len {
            let k_at = (base + j) * h3 + hh + h * hd;
            let mut dot = 0.0f32;
            for e in 0..hd {
                dot += qs[e] * qkv[k_at + e];
            }
            score = dot * scale;
        }
        let (m_new, alpha, l_new) = softmax_tile(&mut ps, score, m_run, l_run, neg);
        l_run = l_new;
        accumulate_v(
            &mut acc,
            &ps,
            qkv,
            tile,
            h3,
            base * h3 + 2 * hh + h * hd,
            alpha,
            hd,
        );
        m_run = m_new;
        sync_cube();
    }
    let mut inv = 0.0f32;
    if l_run > 0.0f32 {
        inv = 1.0f32 / l_run;
    }
    let mut e = u;
    while e < hd {
        out[r * hh + h * hd + e] = acc[e] * inv;
        e += 32usize;
    }
}

#[cube(launch_unchecked)]
fn add_layer_norm_kernel(
    x: &[f32],
    res: &[f32],
    gamma: &[f32],
    beta: &[f32],
    out: &mut [f32],
    d: usize,
    eps: f32,
    #[comptime] has_res: bool,
) {
    let base = CUBE_POS * d;
    let u = UNIT_POS as usize;
    let mut smem = Shared::<[f32]>::new_slice(64usize);
    let mut s = 0.0f32;
    let mut j = u;
    while j < d {
        let mut v = x[base + j];
        if comptime!(has_res) {
            v += res[base + j];
        }
        out[base + j] = v;
        s += v;
        j += 64usize;
    }
    smem[u] = s;
    tree_sum(&mut smem);
    let mean = smem[0] / f32::cast_from(d);
    sync_cube();
    let mut s2 = 0.0f32;
    let mut j = u;
    while j < d {
        let c = out[base + j] - mean;
        s2 += c * c;
        j += 64usize;
    }
    smem[u] = s2;
    tree_sum(&mut smem);
    let inv = 1.0f32 / f32::sqrt(smem[0] / f32::cast_from(d) + eps);
    let mut j = u;
    while j < d {
        out[base + j] = (out[base + j] - mean) * inv * gamma[j] + beta[j];
        j += 64usize;
    }
}

fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, DType::F32)
}

impl EncoderOps for CubeBackend {
    fn dense(
        x: FloatTensor<Self>,
        packed: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        k: usize,
        n: usize,
        act: Act,
    ) -> FloatTensor<Self> {
        // The weight's f32 bits, read as the F32 "blocks" of the quantized matmul.
        let mut words = into_contiguous(packed);
        words.dtype = DType::U32;
        let y = launch_qmatmul(x, words, GgmlType::F32, n, k, Reduction::Auto, Tiling::Auto);
        let bias = into_contiguous(bias);
        let total = y.meta.shape().num_elements();
        let client = y.client.clone();
        let dim = CubeDim::new(&client, total.max(1));
        let count = calculate_cube_count_elemwise(&client, total.max(1), dim);
        // SAFETY: units at or past `total` return; `y` holds `total` values (a fresh tensor of
        // its own), `bias` `n`.
        unsafe {
            bias_act_kernel::launch_unchecked(
                &client,
                count,
                dim,
                y.clone().into_buffer_arg(),
                bias.into_buffer_arg(),
                n,
                total,
                act_code(act),
            );
        }
        y
    }

    fn self_attention(
        qkv: FloatTensor<Self>,
        lengths: Vec<u32>,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) -> FloatTensor<Self> {
        let qkv = into_contiguous(qkv);
        let rows = lengths.len() * seq;
        let out = empty_like(&qkv, Shape::new([rows, heads * head_dim]));
        let lens = upload_u32(&qkv, &lengths);
        let client = qkv.client.clone();
        let total = rows * heads;
        // SAFETY: cubes past `rows · heads` return; cube (r, h) reads row r's query, the keys
        // and values of rows of its sequence below its length (≤ seq), and writes its own
        // `head_dim` outputs.
        unsafe {
            encoder_attention_kernel::launch_unchecked(
                &client,
                crate::qmatmul::cube::count_1d(total),
                CubeDim::new_1d(32),
                qkv.into_buffer_arg(),
                lens.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                seq,
                heads,
                total,
                1.0 / (head_dim as f32).sqrt(),
                head_dim,
            );
        }
        out
    }

    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        norm(x, Some(residual), gamma, beta, eps)
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        norm(x, None, gamma, beta, eps)
    }
}

fn norm(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    gamma: CubeTensor,
    beta: CubeTensor,
    eps: f32,
) -> CubeTensor {
    let x = into_contiguous(x);
    let has_res = residual.is_some();
    // Without a residual the kernel never reads `res`; `x` is bound in its place.
    let r = residual.map_or_else(|| x.clone(), into_contiguous);
    let (g, b) = (into_contiguous(gamma), into_contiguous(beta));
    let shape = x.meta.shape().clone();
    let d = g.meta.shape().num_elements();
    let rows = shape.num_elements() / d;
    let out = empty_like(&x, shape);
    let client = x.client.clone();
    // SAFETY: one cube per row; units touch indices below `rows · d` and `d`.
    unsafe {
        add_layer_norm_kernel::launch_unchecked(
            &client,
            CubeCount::new_1d(rows as u32),
            CubeDim::new_1d(64),
            x.into_buffer_arg(),
            r.into_buffer_arg(),
            g.into_buffer_arg(),
            b.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            d,
            eps,
            has_res,
        );
    }
    out
}
