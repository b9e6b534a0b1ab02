//! CPU reference: kiln-quant's scalar codecs on the Flex backend's bytes.

use burn::backend::Flex;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;
use kiln_quant::GgmlType;

use super::DequantOps;
use crate::Layout;

impl DequantOps for Flex {
    fn dequantize_blocks(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        n_elements: usize,
    ) -> FloatTensor<Self> {
        assert_eq!(
            words.dtype(),
            DType::U32,
            "dequantize_blocks: words must be u32"
        );
        let words = words.to_contiguous();
        let n_bytes = n_elements / ty.block_size() * ty.block_bytes();
        let mut out = vec![0.0f32; n_elements];
        let unpacked;
        let bytes = match layout {
            Layout::Gguf => &words.bytes()[..n_bytes],
            Layout::CpuX8 { k } => {
                let rows = n_elements / k;
                let packed = &words.bytes()[..crate::cpu::x8::packed_bytes(ty, rows, k)];
                let mut gguf = Vec::with_capacity(n_bytes);
                crate::cpu::x8::unpack_rows(ty, packed, k, 0..rows, &mut gguf);
                unpacked = gguf;
                &unpacked[..]
            }
        };
        kiln_quant::blocks::dequantize(ty, bytes, &mut out)
            .expect("dequantize_blocks: caller checked the type and the block count");
        FlexTensor::from_data(TensorData::new(out, [n_elements]))
    }
}
