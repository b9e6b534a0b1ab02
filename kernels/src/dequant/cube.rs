//! CubeCL dequantization kernels (wgpu, CUDA: one source).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};
use kiln_quant::GgmlType;

use super::DequantOps;
use crate::cube_util::{byte_at, f16_bits_to_f32, u16_at};

/// Q8_0, one unit per element: `y[i] = d(block) * qs[i % 32]` (ggml `dequantize_row_q8_0`).
/// Block `b` starts at byte `34 b`: the f16 scale, then 32 signed bytes.
#[cube(launch_unchecked)]
fn dequantize_q8_0_kernel<F: Float>(
    words: &[u32],
    out: &mut [F],
    n: usize,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let base = (i / 32) * 34;
    let d = f16_bits_to_f32(u16_at(words, base));
    let raw = byte_at(words, base + 2 + i % 32);
    let q = i32::cast_from(raw) - i32::cast_from(raw >= 128u32) * 256;
    out[i] = F::cast_from(d * f32::cast_from(q));
}

impl DequantOps for CubeBackend {
    fn dequantize_blocks(
        words: IntTensor<Self>,
        ty: GgmlType,
        n_elements: usize,
    ) -> FloatTensor<Self> {
        assert_eq!(
            ty,
            GgmlType::Q8_0,
            "dequantize_blocks: caller checked the type"
        );
        let words = into_contiguous(words);
        let client = words.client.clone();
        let out = empty_device_dtype(
            client.clone(),
            words.device.clone(),
            Shape::new([n_elements]),
            DType::F32,
        );
        let cube_dim = CubeDim::new(&client, n_elements);
        let cube_count = calculate_cube_count_elemwise(&client, n_elements, cube_dim);
        // SAFETY: the kernel returns for positions past `n_elements`; every other position
        // reads bytes below `34 * n_elements / 32`, inside `words` (a QTensor holds whole
        // blocks), and writes `out[i]` with `i < n_elements`.
        unsafe {
            dequantize_q8_0_kernel::launch_unchecked(
                &client,
                cube_count,
                cube_dim,
                words.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n_elements,
                dtype_to_storage_type(DType::F32),
            );
        }
        out
    }
}
