//! Test entry points for the exact-arithmetic helpers of the CubeCL kernels
//! ([`crate::cube_softfloat`]), run on a device and read back: `tests/tests/cube_kernels.rs`
//! checks them against Rust's own arithmetic. Not part of Kiln's API.

use burn::backend::DispatchDevice;
use burn::tensor::Device;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use crate::cube_softfloat::{ggml_expf, native_fma, soft_fma, wide_add, wide_div};
use crate::cube_util::{read_f32, upload_f32};

#[cube(launch_unchecked)]
fn fma_kernel(a: &[f32], b: &[f32], c: &[f32], out: &mut [f32], n: usize) {
    let i = ABSOLUTE_POS;
    if i < n {
        out[i] = soft_fma(a[i], b[i], c[i]);
    }
}

#[cube(launch_unchecked)]
fn expf_kernel(x: &[f32], out: &mut [f32], n: usize, #[comptime] soft: bool) {
    let i = ABSOLUTE_POS;
    if i < n {
        out[i] = ggml_expf(x[i], soft);
    }
}

/// Row `i` (`len` terms): `f32(S / divisor)` and `f32(divisor / S)`, S the f64 sum of the terms.
#[cube(launch_unchecked)]
fn wide_kernel(terms: &[f32], out: &mut [f32], rows: usize, len: usize, divisor: f32) {
    let i = ABSOLUTE_POS;
    if i < rows {
        let mut h = 0u32;
        let mut l = 0u32;
        let mut e = 0i32;
        for j in 0..len {
            let (h2, l2, e2) = wide_add(h, l, e, terms[i * len + j]);
            h = h2;
            l = l2;
            e = e2;
        }
        let (dh, dl, de) = wide_add(0u32, 0u32, 0i32, divisor);
        out[2 * i] = wide_div(h, l, e, dh, dl, de);
        out[2 * i + 1] = wide_div(dh, dl, de, h, l, e);
    }
}

fn client(device: &Device) -> (cubecl::client::Client, burn_cubecl::CubeDevice) {
    match device.as_dispatch() {
        DispatchDevice::Cube(d) => (d.client(), d.clone()),
        other => panic!("cube_check needs a CubeCL device, not {other:?}"),
    }
}

fn read(client: &cubecl::client::Client, h: cubecl::server::Handle) -> Vec<f32> {
    read_f32(client, h).expect("read back")
}

fn count(n: usize) -> CubeCount {
    CubeCount::new_1d(n.div_ceil(64).max(1) as u32)
}

/// Whether the device's own `fma` rounds once.
pub fn device_fma_is_fused(device: &Device) -> bool {
    let (client, dev) = client(device);
    native_fma(&client, &dev)
}

/// [`soft_fma`] of each triple.
pub fn soft_fma_on(device: &Device, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let (client, _) = client(device);
    let n = a.len();
    let out = client.empty(n.max(1) * 4);
    // SAFETY: units below n read one value of each input and write one output (n of each).
    unsafe {
        fma_kernel::launch_unchecked(
            &client,
            count(n),
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(upload_f32(&client, a), n),
            BufferArg::from_raw_parts(upload_f32(&client, b), n),
            BufferArg::from_raw_parts(upload_f32(&client, c), n),
            BufferArg::from_raw_parts(out.clone(), n),
            n,
        );
    }
    read(&client, out)[..n].to_vec()
}

/// [`ggml_expf`] of each value, with the integer FMA (`soft`) or the device's.
pub fn ggml_expf_on(device: &Device, x: &[f32], soft: bool) -> Vec<f32> {
    let (client, _) = client(device);
    let n = x.len();
    let out = client.empty(n.max(1) * 4);
    // SAFETY: units below n read one value and write one output (n of each).
    unsafe {
        expf_kernel::launch_unchecked(
            &client,
            count(n),
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(upload_f32(&client, x), n),
            BufferArg::from_raw_parts(out.clone(), n),
            n,
            soft,
        );
    }
    read(&client, out)[..n].to_vec()
}

/// For each row of `len` non-negative terms, `f32(S / divisor)` and `f32(divisor / S)`, S their
/// f64 sum ([`wide_add`], [`wide_div`]).
pub fn wide_on(device: &Device, terms: &[f32], len: usize, divisor: f32) -> Vec<(f32, f32)> {
    let (client, _) = client(device);
    let rows = terms.len() / len;
    let out = client.empty(rows.max(1) * 8);
    // SAFETY: units below `rows` read their row's `len` terms and write two outputs.
    unsafe {
        wide_kernel::launch_unchecked(
            &client,
            count(rows),
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(upload_f32(&client, terms), terms.len()),
            BufferArg::from_raw_parts(out.clone(), rows * 2),
            rows,
            len,
            divisor,
        );
    }
    read(&client, out)[..2 * rows]
        .chunks_exact(2)
        .map(|p| (p[0], p[1]))
        .collect()
}
