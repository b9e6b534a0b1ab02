//! CubeCL quantized matrix products: the weight blocks are decoded inside the kernels (no f32
//! copy of a weight is ever written).
//!
//! * [`qmatvec_kernel`], decode (`m ≤ MATVEC_MAX_M`): one cube per output row; its units stride
//!   over the row eight values at a time, decode them once and multiply them into every
//!   activation row; the cube then reduces with plane (subgroup) sums where the device has
//!   them, else with a shared-memory tree.
//! * [`qmatmul_tiled_kernel`], prompts and batches: a 64 × 64 output tile per cube of 16 × 16
//!   units, 4 × 4 outputs per unit; K steps of 32: the cube decodes a 64 × 32 weight tile and
//!   loads a 64 × 32 activation tile into shared memory, then each unit accumulates its 4 × 4
//!   outputs from registers.

// Kernel code is CubeCL's language: `%` instead of `is_multiple_of`, and a comptime `if` kept
// apart from the runtime one inside it.
#![allow(clippy::manual_is_multiple_of, clippy::collapsible_if)]

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};
use kiln_quant::GgmlType;

use super::{MATVEC_MAX_M, QMatmulOps, Reduction};
use crate::cube_blocks::{T_Q4_1, code, decode8, q4_1_min, row_bytes};
use crate::cube_util::round_to_f16;

/// Units per cube of the mat-vec kernel (a power of two: the shared-memory tree needs it).
const MATVEC_UNITS: u32 = 64;
/// Output tile of the tiled kernel (rows of x and rows of W), and its K step.
const TILE: usize = 64;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qmatvec_kernel(
    words: &[u32],
    x: &[f32],
    xsum: &[f32],
    out: &mut [f32],
    n: usize,
    k: usize,
    row_bytes: usize,
    #[comptime] m: usize,
    #[comptime] ty: u32,
    #[comptime] units: usize,
    #[comptime] use_plane: bool,
) {
    let row = CUBE_POS;
    if row >= n {
        terminate!();
    }
    let rb = row * row_bytes;
    let groups = k.div_ceil(8);
    let mut acc = Array::<f32>::new(comptime!(m));
    #[unroll]
    for r in 0..m {
        acc[r] = 0.0f32;
    }
    let mut vals = Array::<f32>::new(8usize);
    let mut g = UNIT_POS as usize;
    while g < groups {
        let j0 = g * 8;
        decode8(words, rb, j0, k, &mut vals, ty, false);
        if comptime!(ty == T_Q4_1) {
            // The block's `m · s` term, once per block (on its first group).
            if j0 % 32 == 0 {
                let bm = q4_1_min(words, rb, j0);
                #[unroll]
                for r in 0..m {
                    acc[r] += bm * xsum[r * (k / 32) + j0 / 32];
                }
            }
        }
        #[unroll]
        for r in 0..m {
            let xo = r * k + j0;
            let mut s = 0.0f32;
            #[unroll]
            for i in 0..8usize {
                if j0 + i < k {
                    s += vals[i] * x[xo + i];
                }
            }
            acc[r] += s;
        }
        g += units;
    }

    let mut smem = Shared::<[f32]>::new_slice(comptime!(units * m));
    if comptime!(use_plane) {
        let planes = (CUBE_DIM / PLANE_DIM) as usize;
        #[unroll]
        for r in 0..m {
            let total = plane_sum(acc[r]);
            if UNIT_POS_PLANE == 0 {
                smem[r * units + PLANE_POS as usize] = total;
            }
        }
        sync_cube();
        if UNIT_POS == 0 {
            #[unroll]
            for r in 0..m {
                let mut total = 0.0f32;
                for p in 0..planes {
                    total += smem[r * units + p];
                }
                out[r * n + row] = total;
            }
        }
    } else {
        let u = UNIT_POS as usize;
        #[unroll]
        for r in 0..m {
            smem[r * units + u] = acc[r];
        }
        sync_cube();
        let mut stride = (CUBE_DIM / 2) as usize;
        while stride > 0 {
            if u < stride {
                #[unroll]
                for r in 0..m {
                    let at = r * units + u;
                    smem[at] += smem[at + stride];
                }
            }
            sync_cube();
            stride /= 2;
        }
        if u < m {
            out[u * n + row] = smem[u * units];
        }
    }
}

#[cube(launch_unchecked)]
fn qmatmul_tiled_kernel(
    words: &[u32],
    x: &[f32],
    xsum: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    row_bytes: usize,
    #[comptime] ty: u32,
) {
    let tile_n = CUBE_POS_X as usize * 64;
    let tile_m = CUBE_POS_Y as usize * 64;
    let u = UNIT_POS as usize;
    let mut xs = Shared::<[f32]>::new_slice(2048usize);
    let mut ws = Shared::<[f32]>::new_slice(2048usize);
    // Q4_1: the tile's block minima (W rows) and activation block sums (x rows).
    let mut wmin = Shared::<[f32]>::new_slice(64usize);
    let mut xsums = Shared::<[f32]>::new_slice(64usize);
    let mut vals = Array::<f32>::new(8usize);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0f32;
    }
    // Loading: unit u fills 8 values of tile row u / 4, columns 8 (u % 4) ..
    let load_row = u / 4;
    let load_col = (u % 4) * 8;
    // Computing: unit (tr, tc) owns rows ty + 16 a and columns tx + 16 b of the tile.
    let tr = u / 16;
    let tc = u % 16;
    let mut kt = 0usize;
    while kt < k {
        let wr = tile_n + load_row;
        if wr < n {
            decode8(
                words,
                wr * row_bytes,
                kt + load_col,
                k,
                &mut vals,
                ty,
                false,
            );
        } else {
            #[unroll]
            for i in 0..8usize {
                vals[i] = 0.0f32;
            }
        }
        #[unroll]
        for i in 0..8usize {
            ws[load_row * 32 + load_col + i] = vals[i];
        }
        let xr = tile_m + load_row;
        if comptime!(ty == T_Q4_1) {
            if load_col == 0 {
                let mut bm = 0.0f32;
                if wr < n {
                    bm = q4_1_min(words, wr * row_bytes, kt);
                }
                wmin[load_row] = bm;
                let mut bs = 0.0f32;
                if xr < m {
                    bs = xsum[xr * (k / 32) + kt / 32];
                }
                xsums[load_row] = bs;
            }
        }
        #[unroll]
        for i in 0..8usize {
            let col = kt + load_col + i;
            let mut v = 0.0f32;
            if xr < m && col < k {
                v = x[xr * k + col];
            }
            xs[load_row * 32 + load_col + i] = v;
        }
        sync_cube();
        for kk in 0..32usize {
            let mut a = Array::<f32>::new(4usize);
            let mut b = Array::<f32>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                a[i] = xs[(tr + 16 * i) * 32 + kk];
                b[i] = ws[(tc + 16 * i) * 32 + kk];
            }
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += a[i] * b[j];
                }
            }
        }
        if comptime!(ty == T_Q4_1) {
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += xsums[tr + 16 * i] * wmin[tc + 16 * j];
                }
            }
        }
        sync_cube();
        kt += 32;
    }
    #[unroll]
    for i in 0..4usize {
        let r = tile_m + tr + 16 * i;
        #[unroll]
        for j in 0..4usize {
            let c = tile_n + tc + 16 * j;
            if r < m && c < n {
                out[r * n + c] = acc[i * 4 + j];
            }
        }
    }
}

/// Activations rounded as the CPU's dot products see them (ggml `vec_dot_type`): one unit per
/// block, `x̃ = d·q` with ggml-cpu's rounding (`FMT_Q8`: Q8_0/Q8_1, d = max|x|/127 stored as
/// f16, q = round-half-even(x·127/max); `FMT_Q8K`: d = max/-127 (signed max) kept f32,
/// q = round(x/d) ≤ 127; `FMT_F16`: each value rounded to f16).
#[cube(launch_unchecked)]
fn act_round_kernel(x: &[f32], out: &mut [f32], sums: &mut [f32], n: usize, #[comptime] fmt: u32) {
    let b = ABSOLUTE_POS;
    if comptime!(fmt == FMT_F16) {
        if b < n {
            out[b] = round_to_f16(x[b]);
        }
    } else {
        let size = comptime!(if fmt == FMT_Q8K { 256usize } else { 32usize });
        let first = b * size;
        if first < n {
            let mut amax = 0.0f32;
            let mut max = 0.0f32;
            for i in 0..size {
                let v = x[first + i];
                if f32::abs(v) > amax {
                    amax = f32::abs(v);
                    max = v;
                }
            }
            if comptime!(fmt == FMT_Q8K) {
                let mut iscale = 0.0f32;
                if amax > 0.0f32 {
                    iscale = -127.0f32 / max;
                }
                let mut d = 0.0f32;
                if amax > 0.0f32 {
                    d = 1.0f32 / iscale;
                }
                for i in 0..size {
                    let q = f32::min(f32::round(iscale * x[first + i]), 127.0f32);
                    out[first + i] = d * q;
                }
            } else {
                let d = round_to_f16(amax / 127.0f32);
                let mut id = 0.0f32;
                if amax > 0.0f32 {
                    id = 127.0f32 / amax;
                }
                let mut qsum = 0.0f32;
                for i in 0..size {
                    let q = f32::round(x[first + i] * id);
                    qsum += q;
                    out[first + i] = d * q;
                }
                if comptime!(fmt == FMT_Q8_1) {
                    sums[b] = round_to_f16(amax / 127.0f32 * qsum);
                }
            }
        }
    }
}

const FMT_Q8: u32 = 0;
const FMT_Q8_1: u32 = 3;
const FMT_Q8K: u32 = 1;
const FMT_F16: u32 = 2;

/// `x` (`n` values, whole blocks) rounded for a dot product with `ty` weights, and (Q4_1) the
/// f16 sums `s` of its blocks; `None` for f32 weights.
fn round_activations(x: &CubeTensor, ty: GgmlType) -> Option<(CubeTensor, CubeTensor)> {
    let fmt = match ty {
        GgmlType::F32 => return None,
        GgmlType::F16 => FMT_F16,
        GgmlType::Q4_K | GgmlType::Q6_K => FMT_Q8K,
        GgmlType::Q4_1 => FMT_Q8_1,
        _ => FMT_Q8,
    };
    let n = x.meta.shape().num_elements();
    let units = match fmt {
        FMT_F16 => n,
        FMT_Q8K => n / 256,
        _ => n / 32,
    };
    let client = x.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        DType::F32,
    );
    let sums = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([if fmt == FMT_Q8_1 { units.max(1) } else { 1 }]),
        DType::F32,
    );
    let dim = CubeDim::new(&client, units.max(1));
    let count = cubecl::calculate_cube_count_elemwise(&client, units.max(1), dim);
    // SAFETY: unit b reads and writes values of block b only, and only below `n` (the caller
    // checked that rows are whole blocks of the weight type, hence of its activation format);
    // `sums[b]` is written only with Q8_1, where `sums` has a slot per block.
    unsafe {
        act_round_kernel::launch_unchecked(
            &client,
            count,
            dim,
            x.clone().into_buffer_arg(),
            out.clone().into_buffer_arg(),
            sums.clone().into_buffer_arg(),
            n,
            fmt,
        );
    }
    Some((out, sums))
}

/// A cube count of `cubes` cubes that stays within every runtime's per-dimension limit.
fn count_1d(cubes: usize) -> CubeCount {
    const MAX: usize = 32_768;
    let x = cubes.clamp(1, MAX);
    CubeCount::new_2d(x as u32, cubes.div_ceil(x) as u32)
}

/// Whether the device behind `tensor` has plane (subgroup) operations.
pub(crate) fn plane_reduction_available(tensor: &CubeTensor) -> bool {
    tensor
        .client
        .properties()
        .features
        .plane
        .contains(cubecl::features::Plane::Ops)
}

pub(crate) fn launch_qmatmul(
    x: CubeTensor,
    words: CubeTensor,
    ty: GgmlType,
    n: usize,
    k: usize,
    reduction: Reduction,
) -> CubeTensor {
    let ty_code = code(ty).expect("qmatmul: caller checked the type");
    let x = into_contiguous(x);
    let (x, xsum) = match round_activations(&x, ty) {
        Some(rounded) => rounded,
        None => {
            let dummy = crate::cube_util::upload_f32(&x, &[0.0]);
            (x, dummy)
        }
    };
    let words = into_contiguous(words);
    let m = x.meta.shape().num_elements() / k;
    let client = x.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([m, n]),
        DType::F32,
    );
    let rb = row_bytes(ty, k);
    if m <= MATVEC_MAX_M {
        let use_plane = match reduction {
            Reduction::Plane => true,
            Reduction::Shared => false,
            Reduction::Auto => plane_reduction_available(&x),
        };
        // SAFETY: one cube per output row (rows ≥ n return at once); a unit reads whole
        // 8-value groups of its row (inside `words`, which holds n whole rows) and x values
        // below `m k`; only unit 0 (plane path) or units < m (tree path) write, at `r n + row`.
        unsafe {
            qmatvec_kernel::launch_unchecked(
                &client,
                count_1d(n),
                CubeDim::new_1d(MATVEC_UNITS),
                words.into_buffer_arg(),
                x.into_buffer_arg(),
                xsum.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
                k,
                rb,
                m,
                ty_code,
                MATVEC_UNITS as usize,
                use_plane,
            );
        }
    } else {
        let count = CubeCount::new_2d(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32);
        // SAFETY: weight rows ≥ n and activation rows ≥ m are not read (zeros instead);
        // columns ≥ k decode as zeros (F32/F16) or do not occur (block types: k is a multiple
        // of the block size, which is a multiple of 32); stores are bounded by m and n.
        unsafe {
            qmatmul_tiled_kernel::launch_unchecked(
                &client,
                count,
                CubeDim::new_1d(256),
                words.into_buffer_arg(),
                x.into_buffer_arg(),
                xsum.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m,
                n,
                k,
                rb,
                ty_code,
            );
        }
    }
    out
}

/// One unit per 8 values of the output `[ids.len(), k]`.
#[cube(launch_unchecked)]
fn qrows_kernel(
    words: &[u32],
    ids: &[u32],
    out: &mut [f32],
    rows: usize,
    k: usize,
    row_bytes: usize,
    #[comptime] ty: u32,
) {
    let groups = k.div_ceil(8);
    let g = ABSOLUTE_POS;
    if g >= rows * groups {
        terminate!();
    }
    let r = g / groups;
    let j0 = (g % groups) * 8;
    let mut vals = Array::<f32>::new(8usize);
    decode8(
        words,
        ids[r] as usize * row_bytes,
        j0,
        k,
        &mut vals,
        ty,
        true,
    );
    #[unroll]
    for i in 0..8usize {
        if j0 + i < k {
            out[r * k + j0 + i] = vals[i];
        }
    }
}

impl QMatmulOps for CubeBackend {
    fn qmatmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        ty: GgmlType,
        n: usize,
        k: usize,
        reduction: Reduction,
    ) -> FloatTensor<Self> {
        launch_qmatmul(x, words, ty, n, k, reduction)
    }

    fn qrows(words: IntTensor<Self>, ty: GgmlType, k: usize, ids: Vec<u32>) -> FloatTensor<Self> {
        let ty_code = code(ty).expect("qrows: caller checked the type");
        let words = into_contiguous(words);
        let client = words.client.clone();
        let rows = ids.len();
        let out = empty_device_dtype(
            client.clone(),
            words.device.clone(),
            Shape::new([rows, k]),
            DType::F32,
        );
        let ids = crate::cube_util::upload_u32(&words, &ids);
        let units = rows * k.div_ceil(8);
        let cube_dim = CubeDim::new(&client, units);
        let count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
        // SAFETY: units past the output return at once; ids were checked against the row
        // count by the caller, so every decoded group lies inside `words`; writes stay below
        // `rows k`.
        unsafe {
            qrows_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                words.into_buffer_arg(),
                ids.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows,
                k,
                row_bytes(ty, k),
                ty_code,
            );
        }
        out
    }
}
