//! CubeCL quantized matrix products: the weight blocks are decoded inside the kernels (no f32
//! copy of a weight is ever written).
//!
//! * [`qmatvec_kernel`], decode (`m ≤ MATVEC_MAX_M`): cubes of 64 units, `upr` units per output
//!   row ([`Reduction`]); a row's units stride over it eight values at a time, decode them
//!   once and multiply them into every activation row, then reduce with plane (subgroup) sums
//!   where the device has them, else with a shared-memory tree (or not at all: one unit per
//!   row).
//! * prompts and batches ([`Tiling`]): K steps of 32 (one block of the 32-value types); the
//!   cube decodes a 64 × 32 weight tile and loads an activation tile into shared memory, then
//!   each unit accumulates its outputs in registers. [`qmatmul_tiled_vec4_kernel`]: 128 × 64
//!   tiles stored as vec4 (8 × 8 units, 16 × 8 outputs each, 6 vector loads per 128
//!   multiply-adds); [`qmatmul_tiled_kernel`]: scalar tiles of 32 × 64 for 16 KiB devices.

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

use super::{Arithmetic, CubeKernel, MATVEC_MAX_M, QMatmulOps, Reduction, Tiling};
use crate::cube_blocks::{block_min, code, decode8, has_block_min, row_bytes};
use crate::cube_util::round_to_f16;

/// Units per cube of the mat-vec kernel (a power of two: the shared-memory tree needs it).
use super::MATVEC_CUBE_UNITS as MATVEC_UNITS;
/// Output tile of the tiled kernel (rows of x and rows of W), and its K step.
const TILE: usize = 64;

/// A cube of `units` units serves `units / upr` output rows, `upr` units per row. A row's
/// units stride over it eight values at a time, decode them once and multiply them into every
/// activation row; then the row's partial sums are reduced: nothing to do with `upr = 1`, plane
/// sums (`use_plane`, one row per cube: `upr = units`), else a shared-memory tree of
/// `log2(upr)` steps.
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
    #[comptime] upr: usize,
    #[comptime] use_plane: bool,
) {
    let u = UNIT_POS as usize;
    let row = CUBE_POS * (units / upr) + u / upr;
    let lane = u % upr;
    // No early return: every unit must reach the barriers of the reduction.
    let live = row < n;
    let rb = row * row_bytes;
    let groups = k.div_ceil(8);
    let mut acc = Array::<f32>::new(comptime!(m));
    #[unroll]
    for r in 0..m {
        acc[r] = 0.0f32;
    }
    let mut vals = Array::<f32>::new(8usize);
    let mut g = lane;
    if !live {
        g = groups;
    }
    while g < groups {
        let j0 = g * 8;
        decode8(words, rb, j0, k, &mut vals, ty, false);
        if comptime!(has_block_min(ty)) {
            // The block's `m · s` term, once per block (on its first group).
            if j0 % 32 == 0 {
                let bm = block_min(words, rb, j0, ty);
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
        g += upr;
    }

    if comptime!(upr == 1) {
        if live {
            #[unroll]
            for r in 0..m {
                out[r * n + row] = acc[r];
            }
        }
    } else if comptime!(use_plane) {
        let mut smem = Shared::<[f32]>::new_slice(comptime!(units * m));
        let planes = (CUBE_DIM / PLANE_DIM) as usize;
        #[unroll]
        for r in 0..m {
            let total = plane_sum(acc[r]);
            if UNIT_POS_PLANE == 0 {
                smem[r * units + PLANE_POS as usize] = total;
            }
        }
        sync_cube();
        if u == 0 && live {
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
        let mut smem = Shared::<[f32]>::new_slice(comptime!(units * m));
        #[unroll]
        for r in 0..m {
            smem[r * units + u] = acc[r];
        }
        sync_cube();
        // A runtime value: a comptime one would unroll the loop at expansion.
        let mut stride = (CUBE_DIM as usize / units) * (upr / 2);
        while stride > 0 {
            if lane < stride {
                #[unroll]
                for r in 0..m {
                    let at = r * units + u;
                    smem[at] += smem[at + stride];
                }
            }
            sync_cube();
            stride /= 2;
        }
        if lane == 0 && live {
            #[unroll]
            for r in 0..m {
                out[r * n + row] = smem[r * units + u];
            }
        }
    }
}

/// The scalar tiled kernel, for devices whose shared memory cannot hold the vec4 tiles: a
/// `side · pm` × 64 output tile per cube of `side × side` units (launched as 8 × 8 units,
/// pm = 4: 32 × 64 tiles), each unit owning `pm` activation rows and `64 / side` weight rows
/// (strided by `side`). K steps of 32: the cube decodes a 64 × 32 weight tile and loads a
/// `side · pm` × 32 activation tile into shared memory, K-major, then accumulates in
/// registers.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
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
    #[comptime] side: usize,
    #[comptime] pm: usize,
) {
    let per = comptime!(64 / side);
    let tm = comptime!(side * pm);
    let units = comptime!(side * side);
    // 8-value groups each unit loads per step, per matrix: 64 rows × 4 groups / units.
    let loads = comptime!(256 / (side * side));
    let tile_n = CUBE_POS_X as usize * 64;
    let tile_m = CUBE_POS_Y as usize * tm;
    let u = UNIT_POS as usize;
    let mut xs = Shared::<[f32]>::new_slice(comptime!(tm * 32));
    let mut ws = Shared::<[f32]>::new_slice(2048usize);
    // Q4_1/Q5_1: the tile's block minima (W rows) and activation block sums (x rows).
    let mut wmin = Shared::<[f32]>::new_slice(64usize);
    let mut xsums = Shared::<[f32]>::new_slice(comptime!(tm));
    let mut vals = Array::<f32>::new(8usize);
    let mut acc = Array::<f32>::new(comptime!(pm * per));
    #[unroll]
    for i in 0..pm * per {
        acc[i] = 0.0f32;
    }
    let tr = u / side;
    let tc = u % side;
    let mut kt = 0usize;
    while kt < k {
        #[unroll]
        for l in 0..loads {
            let gi = u + l * units;
            let load_row = gi / 4;
            let load_col = (gi % 4) * 8;
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
                ws[(load_col + i) * 64 + load_row] = vals[i];
            }
            if comptime!(has_block_min(ty)) {
                if load_col == 0 {
                    let mut bm = 0.0f32;
                    if wr < n {
                        bm = block_min(words, wr * row_bytes, kt, ty);
                    }
                    wmin[load_row] = bm;
                }
            }
        }
        #[unroll]
        for l in 0..comptime!(tm * 4 / units) {
            let gi = u + l * units;
            let load_row = gi / 4;
            let load_col = (gi % 4) * 8;
            let xr = tile_m + load_row;
            #[unroll]
            for i in 0..8usize {
                let col = kt + load_col + i;
                let mut v = 0.0f32;
                if xr < m && col < k {
                    v = x[xr * k + col];
                }
                xs[(load_col + i) * tm + load_row] = v;
            }
            if comptime!(has_block_min(ty)) {
                if load_col == 0 {
                    let mut bs = 0.0f32;
                    if xr < m {
                        bs = xsum[xr * (k / 32) + kt / 32];
                    }
                    xsums[load_row] = bs;
                }
            }
        }
        sync_cube();
        for kk in 0..32usize {
            let mut a = Array::<f32>::new(comptime!(pm));
            let mut b = Array::<f32>::new(comptime!(per));
            #[unroll]
            for i in 0..pm {
                a[i] = xs[kk * tm + tr + side * i];
            }
            #[unroll]
            for i in 0..per {
                b[i] = ws[kk * 64 + tc + side * i];
            }
            #[unroll]
            for i in 0..pm {
                #[unroll]
                for j in 0..per {
                    acc[i * per + j] += a[i] * b[j];
                }
            }
        }
        if comptime!(has_block_min(ty)) {
            #[unroll]
            for i in 0..pm {
                #[unroll]
                for j in 0..per {
                    acc[i * per + j] += xsums[tr + side * i] * wmin[tc + side * j];
                }
            }
        }
        sync_cube();
        kt += 32;
    }
    #[unroll]
    for i in 0..pm {
        let r = tile_m + tr + side * i;
        #[unroll]
        for j in 0..per {
            let c = tile_n + tc + side * j;
            if r < m && c < n {
                out[r * n + c] = acc[i * per + j];
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

/// `x` (`n` values, whole blocks) rounded for a dot product with `ty` weights, and (Q4_1, Q5_1) the
/// f16 sums `s` of its blocks; `None` for f32 weights.
fn round_activations(x: &CubeTensor, ty: GgmlType) -> Option<(CubeTensor, CubeTensor)> {
    let fmt = match ty {
        GgmlType::F32 => return None,
        GgmlType::F16 => FMT_F16,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => FMT_Q8K,
        GgmlType::Q4_1 | GgmlType::Q5_1 => FMT_Q8_1,
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

type V4 = Vector<f32, Const<4>>;

/// The tiled kernel with vec4 shared tiles: a 128 × 64 output tile per cube of 8 × 8 units; unit
/// `(tr, tc)` owns activation rows `32 a + 4 tr + i` (a, i < 4) and weight rows
/// `32 g + 4 tc + j` (g < 2, j < 4). Per K value a unit loads 4 + 2 vectors from shared memory
/// for 128 multiply-adds (vec4 FMAs into 32 vector accumulators).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn qmatmul_tiled_vec4_kernel(
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
    let tile_m = CUBE_POS_Y as usize * 128;
    let u = UNIT_POS as usize;
    let tr = u / 8;
    let tc = u % 8;
    // K-major: xs4[kk · 32 + row group] holds activation rows 4 rg .. 4 rg + 3 at kk.
    let mut xs4 = Shared::<[V4]>::new_slice(1024usize);
    let mut ws4 = Shared::<[V4]>::new_slice(512usize);
    let mut wmin = Shared::<[f32]>::new_slice(64usize);
    let mut xsums = Shared::<[f32]>::new_slice(128usize);
    let mut acc = Array::<V4>::new(32usize);
    #[unroll]
    for i in 0..32usize {
        acc[i] = V4::broadcast(0.0f32);
    }
    let mut vals = Array::<f32>::new(8usize);
    let mut kt = 0usize;
    while kt < k {
        // Weights: unit u decodes rows 4 (u / 4) .. + 3, values 8 (u % 4) .. + 7.
        let rg = u / 4;
        let kg = (u % 4) * 8;
        let mut wv = Array::<V4>::new(8usize);
        #[unroll]
        for j in 0..4usize {
            let wr = tile_n + rg * 4 + j;
            if wr < n {
                decode8(words, wr * row_bytes, kt + kg, k, &mut vals, ty, false);
            } else {
                #[unroll]
                for i in 0..8usize {
                    vals[i] = 0.0f32;
                }
            }
            #[unroll]
            for i in 0..8usize {
                let mut v = wv[i];
                v.insert(j, vals[i]);
                wv[i] = v;
            }
            if comptime!(has_block_min(ty)) {
                if kg == 0 {
                    let mut bm = 0.0f32;
                    if wr < n {
                        bm = block_min(words, wr * row_bytes, kt, ty);
                    }
                    wmin[rg * 4 + j] = bm;
                }
            }
        }
        #[unroll]
        for i in 0..8usize {
            ws4[(kg + i) * 16 + rg] = wv[i];
        }
        // Activations: two tasks per unit, rows 4 (t / 4) .. + 3, values 8 (t % 4) .. + 7.
        #[unroll]
        for l in 0..2usize {
            let t = u + l * 64;
            let xg = t / 4;
            let kx = (t % 4) * 8;
            let mut xv = Array::<V4>::new(8usize);
            #[unroll]
            for j in 0..4usize {
                let xr = tile_m + xg * 4 + j;
                #[unroll]
                for i in 0..8usize {
                    let col = kt + kx + i;
                    let mut v = 0.0f32;
                    if xr < m && col < k {
                        v = x[xr * k + col];
                    }
                    let mut vv = xv[i];
                    vv.insert(j, v);
                    xv[i] = vv;
                }
                if comptime!(has_block_min(ty)) {
                    if kx == 0 {
                        let mut bs = 0.0f32;
                        if xr < m {
                            bs = xsum[xr * (k / 32) + kt / 32];
                        }
                        xsums[xg * 4 + j] = bs;
                    }
                }
            }
            #[unroll]
            for i in 0..8usize {
                xs4[(kx + i) * 32 + xg] = xv[i];
            }
        }
        sync_cube();
        for kk in 0..32usize {
            let b0 = ws4[kk * 16 + tc];
            let b1 = ws4[kk * 16 + 8 + tc];
            #[unroll]
            for a in 0..4usize {
                let av = xs4[kk * 32 + a * 8 + tr];
                #[unroll]
                for i in 0..4usize {
                    let s = V4::broadcast(av.extract(i));
                    acc[(a * 4 + i) * 2] += s * b0;
                    acc[(a * 4 + i) * 2 + 1] += s * b1;
                }
            }
        }
        if comptime!(has_block_min(ty)) {
            #[unroll]
            for a in 0..4usize {
                #[unroll]
                for i in 0..4usize {
                    let xsv = V4::broadcast(xsums[a * 32 + tr * 4 + i]);
                    #[unroll]
                    for g in 0..2usize {
                        let mut mv = V4::broadcast(0.0f32);
                        #[unroll]
                        for j in 0..4usize {
                            mv.insert(j, wmin[g * 32 + tc * 4 + j]);
                        }
                        acc[(a * 4 + i) * 2 + g] += xsv * mv;
                    }
                }
            }
        }
        sync_cube();
        kt += 32;
    }
    #[unroll]
    for a in 0..4usize {
        #[unroll]
        for i in 0..4usize {
            let r = tile_m + a * 32 + tr * 4 + i;
            #[unroll]
            for g in 0..2usize {
                let v = acc[(a * 4 + i) * 2 + g];
                #[unroll]
                for j in 0..4usize {
                    let c = tile_n + g * 32 + tc * 4 + j;
                    if r < m && c < n {
                        out[r * n + c] = v.extract(j);
                    }
                }
            }
        }
    }
}

/// A cube count of `cubes` cubes that stays within every runtime's per-dimension limit.
pub(crate) fn count_1d(cubes: usize) -> CubeCount {
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
    tiling: Tiling,
) -> CubeTensor {
    let ty_code = code(ty).expect("qmatmul: caller checked the type");
    let x = into_contiguous(x);
    // Without block sums (every type but Q4_1 and Q5_1) the kernels never read `xsum`: bind `x` there
    // rather than upload a placeholder per call.
    let (x, xsum) = match round_activations(&x, ty) {
        Some(rounded) => rounded,
        None => (x.clone(), x),
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
        let reduction = match reduction {
            Reduction::Auto => Reduction::default_for(plane_reduction_available(&x)),
            r => r,
        };
        let (upr, use_plane) = match reduction {
            Reduction::Plane => (MATVEC_UNITS as usize, true),
            Reduction::Shared(upr) => (upr as usize, false),
            Reduction::PerUnit | Reduction::Auto => (1, false),
        };
        let rows_per_cube = MATVEC_UNITS as usize / upr;
        // SAFETY: cube c serves rows c·rows_per_cube ..; units of rows ≥ n read nothing and
        // write nothing (they only take part in barriers); a unit reads whole 8-value groups of
        // its row (inside `words`, which holds n whole rows) and x values below `m k`; one unit
        // per row writes, at `r n + row`.
        unsafe {
            qmatvec_kernel::launch_unchecked(
                &client,
                count_1d(n.div_ceil(rows_per_cube)),
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
                upr,
                use_plane,
            );
        }
    } else {
        let tiling = match tiling {
            Tiling::Auto => {
                Tiling::for_shared_memory(client.properties().hardware.max_shared_memory_size)
            }
            t => t,
        };
        if tiling == Tiling::Vec4 {
            let count = CubeCount::new_2d(n.div_ceil(64) as u32, m.div_ceil(128) as u32);
            // SAFETY: weight rows ≥ n and activation rows ≥ m are not read (zeros instead),
            // columns ≥ k decode as zeros (F32/F16) or do not occur; stores are bounded by m
            // and n.
            unsafe {
                qmatmul_tiled_vec4_kernel::launch_unchecked(
                    &client,
                    count,
                    CubeDim::new_1d(64),
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
            return out;
        }
        let (side, pm) = (8, 4);
        let count = CubeCount::new_2d(n.div_ceil(TILE) as u32, m.div_ceil(side * pm) as u32);
        // SAFETY: weight rows ≥ n and activation rows ≥ m are not read (zeros instead);
        // columns ≥ k decode as zeros (F32/F16) or do not occur (block types: k is a multiple
        // of the block size, which is a multiple of 32); stores are bounded by m and n.
        unsafe {
            qmatmul_tiled_kernel::launch_unchecked(
                &client,
                count,
                CubeDim::new_1d((side * side) as u32),
                words.into_buffer_arg(),
                x.into_buffer_arg(),
                xsum.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m,
                n,
                k,
                rb,
                ty_code,
                side,
                pm,
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
        layout: crate::Layout,
        n: usize,
        k: usize,
        kernel: CubeKernel,
    ) -> FloatTensor<Self> {
        assert_eq!(
            layout,
            crate::Layout::Gguf,
            "Cube weights are never repacked"
        );
        if kernel.arithmetic == Arithmetic::Cpu && crate::cpu::x8::supported(ty) {
            return super::cube_exact::launch(x, words, ty, n, k);
        }
        launch_qmatmul(x, words, ty, n, k, kernel.reduction, kernel.tiling)
    }

    fn qrows(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: crate::Layout,
        k: usize,
        ids: Vec<u32>,
    ) -> FloatTensor<Self> {
        assert_eq!(
            layout,
            crate::Layout::Gguf,
            "Cube weights are never repacked"
        );
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
