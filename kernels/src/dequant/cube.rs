//! CubeCL dequantization kernel (wgpu, CUDA: one source).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};
use kiln_quant::GgmlType;

use super::DequantOps;
use crate::cube_blocks::{code, decode8};

/// One unit per 8 values: `out[j] = dequant(block(j))[j % block]`, ggml's arithmetic.
#[cube(launch_unchecked)]
fn dequantize_kernel(words: &[u32], out: &mut [f32], n: usize, #[comptime] ty: u32) {
    let j0 = ABSOLUTE_POS * 8;
    if j0 >= n {
        terminate!();
    }
    let mut vals = Array::<f32>::new(8usize);
    decode8(words, 0, j0, n, &mut vals, ty, true);
    #[unroll]
    for i in 0..8usize {
        if j0 + i < n {
            out[j0 + i] = vals[i];
        }
    }
}

impl DequantOps for CubeBackend {
    fn dequantize_blocks(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: crate::Layout,
        n_elements: usize,
    ) -> FloatTensor<Self> {
        assert_eq!(
            layout,
            crate::Layout::Gguf,
            "Cube weights are never repacked"
        );
        let ty_code = code(ty).expect("dequantize_blocks: caller checked the type");
        let words = into_contiguous(words);
        let client = words.client.clone();
        let out = empty_device_dtype(
            client.clone(),
            words.device.clone(),
            Shape::new([n_elements]),
            DType::F32,
        );
        let units = n_elements.div_ceil(8);
        let cube_dim = CubeDim::new(&client, units);
        let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
        // SAFETY: units past `n_elements / 8` return at once; the others read the blocks of
        // values below `n_elements` (inside `words`: a QTensor holds whole blocks) and write
        // `out[j]` only for `j < n_elements`.
        unsafe {
            dequantize_kernel::launch_unchecked(
                &client,
                cube_count,
                cube_dim,
                words.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n_elements,
                ty_code,
            );
        }
        out
    }
}
