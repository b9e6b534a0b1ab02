//! CPU: each tap of each branch is a matrix product over the rows it reaches ([`gemm`], packed
//! f32), so the point form (centre taps only) is one GEMM for all branches.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;

use super::DreamOps;
use crate::cpu::Isa;
use crate::cpu::gemm::{self, Act};

impl DreamOps for Flex {
    fn dilated_conv(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        taps: Vec<u32>,
        dilations: Vec<u32>,
        c_out: usize,
        max_taps: usize,
    ) -> FloatTensor<Self> {
        let (x, w, b) = (
            x.to_contiguous(),
            weights.to_contiguous(),
            bias.to_contiguous(),
        );
        let dims = x.layout().shape().clone();
        let (batch, s, c_in) = (dims[0], dims[1], dims[2]);
        let xs: &[f32] = x.as_slice().expect("dilated_conv: f32 input");
        let ws: &[f32] = w.as_slice().expect("dilated_conv: f32 weights");
        let bs: &[f32] = b.as_slice().expect("dilated_conv: f32 bias");
        let out = conv(
            xs, batch, s, c_in, ws, bs, &taps, &dilations, c_out, max_taps,
        );
        let c_total = taps.len() * c_out;
        FlexTensor::from_data(TensorData::new(out, [batch, s, c_total]))
    }
}

/// `[c_in, n]` (row-major, as [`gemm::pack_b`] takes it) from `weights[branch, c_out, tap, c_in]`
/// for the branches in `branches` at tap offset `t` from their centre.
fn tap_matrix(
    ws: &[f32],
    branches: &[usize],
    taps: &[u32],
    t: i64,
    c_in: usize,
    c_out: usize,
    max_taps: usize,
) -> Vec<f32> {
    let n = branches.len() * c_out;
    let mut m = vec![0f32; c_in * n];
    for (j, &br) in branches.iter().enumerate() {
        let tap = ((taps[br] as i64 - 1) / 2 + t) as usize;
        for co in 0..c_out {
            let row = &ws[((br * c_out + co) * max_taps + tap) * c_in..][..c_in];
            for (ci, &v) in row.iter().enumerate() {
                m[ci * n + j * c_out + co] = v;
            }
        }
    }
    m
}

#[allow(clippy::too_many_arguments)]
fn conv(
    xs: &[f32],
    batch: usize,
    s: usize,
    c_in: usize,
    ws: &[f32],
    bs: &[f32],
    taps: &[u32],
    dilations: &[u32],
    c_out: usize,
    max_taps: usize,
) -> Vec<f32> {
    let isa = Isa::best();
    let branches = taps.len();
    let c_total = branches * c_out;
    let rows = batch * s;
    // Centre taps of every branch, bias included: one product.
    let all: Vec<usize> = (0..branches).collect();
    let centre = tap_matrix(ws, &all, taps, 0, c_in, c_out, max_taps);
    let mut out = gemm::gemm(
        isa,
        xs,
        rows,
        c_in,
        &gemm::pack_b(&centre, c_in, c_total),
        c_total,
        bs,
        Act::None,
    );
    // Off-centre taps: output position `pos` reads `pos + t·dilation`; per batch row the
    // positions that stay inside the sequence are one contiguous block.
    let zero = vec![0f32; c_out];
    for br in 0..branches {
        let half = (taps[br] as i64 - 1) / 2;
        let d = dilations[br] as i64;
        for t in (-half..=half).filter(|&t| t != 0) {
            let off = t * d;
            let (lo, hi) = ((-off).max(0), (s as i64 - off).min(s as i64));
            if lo >= hi {
                continue;
            }
            let (lo, hi) = (lo as usize, hi as usize);
            let wt = tap_matrix(ws, &[br], taps, t, c_in, c_out, max_taps);
            let packed = gemm::pack_b(&wt, c_in, c_out);
            for bb in 0..batch {
                let src = (bb * s) as i64 + lo as i64 + off;
                let src = &xs[src as usize * c_in..][..(hi - lo) * c_in];
                let y = gemm::gemm(isa, src, hi - lo, c_in, &packed, c_out, &zero, Act::None);
                for (i, yr) in y.chunks_exact(c_out).enumerate() {
                    let o = &mut out[(bb * s + lo + i) * c_total + br * c_out..][..c_out];
                    o.iter_mut().zip(yr).for_each(|(a, b)| *a += b);
                }
            }
        }
    }
    out.iter_mut().for_each(|v| *v = v.max(0.0));
    out
}
