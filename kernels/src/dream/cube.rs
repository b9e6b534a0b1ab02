//! CubeCL kernel: one unit per output value `(b, s, branch, co)`.

use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::DreamOps;
use crate::cube_util::upload_u32;

/// `meta`: per branch `[taps, dilation]`. With `point` (S = 1) only the centre tap is read:
/// every other tap falls in the zero padding.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dilated_conv_kernel(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    meta: &[u32],
    out: &mut [f32],
    s: usize,
    c_in: usize,
    c_out: usize,
    branches: usize,
    max_taps: usize,
    total: usize,
    #[comptime] point: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= total {
        terminate!();
    }
    let c_total = branches * c_out;
    let ch = i % c_total;
    let row = i / c_total; // b · s + pos
    let pos = row % s;
    let br = ch / c_out;
    let co = ch % c_out;
    let taps = meta[2 * br] as usize;
    let d = meta[2 * br + 1] as usize;
    let half = (taps - 1) / 2;
    let w_row = (br * c_out + co) * max_taps;
    let mut acc = bias[br * c_out + co];
    if comptime!(point) {
        let xr = row * c_in;
        let wr = (w_row + half) * c_in;
        for ci in 0..c_in {
            acc += x[xr + ci] * w[wr + ci];
        }
    } else {
        for t in 0..taps {
            // p = pos + (t − half) · d, kept in range without signed arithmetic.
            let back = half * d;
            let fwd = t * d;
            if pos + fwd >= back && pos + fwd - back < s {
                let p = pos + fwd - back;
                let xr = (row - pos + p) * c_in;
                let wr = (w_row + t) * c_in;
                for ci in 0..c_in {
                    acc += x[xr + ci] * w[wr + ci];
                }
            }
        }
    }
    out[i] = f32::max(acc, 0.0f32);
}

impl DreamOps for CubeBackend {
    fn dilated_conv(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        taps: Vec<u32>,
        dilations: Vec<u32>,
        c_out: usize,
        max_taps: usize,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let (w, b) = (into_contiguous(weights), into_contiguous(bias));
        let dims = x.meta.shape().clone();
        let (batch, s, c_in) = (dims[0], dims[1], dims[2]);
        let branches = taps.len();
        let total = batch * s * branches * c_out;
        let meta: Vec<u32> = taps
            .iter()
            .zip(&dilations)
            .flat_map(|(&t, &d)| [t, d])
            .collect();
        let meta = upload_u32(&x, &meta);
        let client = x.client.clone();
        let out = empty_device_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([batch, s, branches * c_out]),
            DType::F32,
        );
        let dim = CubeDim::new(&client, total.max(1));
        let count = calculate_cube_count_elemwise(&client, total.max(1), dim);
        // SAFETY: units at or past `total` return; a unit reads input rows of its own sequence
        // at in-range positions, its branch's weight rows (`max_taps · c_in` per output
        // channel, taps ≤ max_taps) and bias, and writes `out[i]`, `i < total`.
        unsafe {
            dilated_conv_kernel::launch_unchecked(
                &client,
                count,
                dim,
                x.into_buffer_arg(),
                w.into_buffer_arg(),
                b.into_buffer_arg(),
                meta.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                s,
                c_in,
                c_out,
                branches,
                max_taps,
                total,
                s == 1,
            );
        }
        out
    }
}
