use burn::backend::Flex;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use kiln_quant::GgmlType;

use super::{CubeKernel, QMatmulOps};
use crate::{Layout, cpu};

impl QMatmulOps for Flex {
    fn qmatmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        n: usize,
        k: usize,
        _kernel: CubeKernel,
    ) -> FloatTensor<Self> {
        let x = x.to_contiguous();
        let x: &[f32] = x.as_slice().expect("qmatmul: f32 activations");
        let m = x.len() / k;
        let row = ty.block_bytes() * (k / ty.block_size());
        let words = words.to_contiguous();
        let (isa, bytes) = (cpu::active_isa(), words.bytes());
        let y = match layout {
            Layout::Gguf => cpu::qmatmul(isa, ty, &bytes[..n * row], n, k, x, m),
            Layout::CpuX8 { .. } => {
                let w = &bytes[..cpu::x8::packed_bytes(ty, n, k)];
                cpu::x8::qmatmul(isa, ty, w, n, k, x, m)
            }
        };
        FlexTensor::from_data(TensorData::new(y, [m, n]))
    }

    fn qrows(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        k: usize,
        ids: Vec<u32>,
    ) -> FloatTensor<Self> {
        let words = words.to_contiguous();
        let row = ty.block_bytes() * (k / ty.block_size());
        let bytes = words.bytes();
        let mut out = vec![0.0f32; ids.len() * k];
        let mut unpacked = Vec::with_capacity(row);
        for (o, &id) in out.chunks_exact_mut(k).zip(&ids) {
            let id = id as usize;
            let blocks = match layout {
                Layout::Gguf => &bytes[id * row..(id + 1) * row],
                Layout::CpuX8 { .. } => {
                    unpacked.clear();
                    cpu::x8::unpack_rows(ty, bytes, k, id..id + 1, &mut unpacked);
                    &unpacked[..]
                }
            };
            kiln_quant::blocks::dequantize(ty, blocks, o).expect("qrows: caller checked the type");
        }
        FlexTensor::from_data(TensorData::new(out, [ids.len(), k]))
    }
}
