//! CPU reference: kiln-quant's scalar codecs on the Flex backend's bytes.

use burn::backend::Flex;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;
use kiln_quant::GgmlType;

use super::DequantOps;

impl DequantOps for Flex {
    fn dequantize_blocks(
        words: IntTensor<Self>,
        ty: GgmlType,
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
        kiln_quant::blocks::dequantize(ty, &words.bytes()[..n_bytes], &mut out)
            .expect("dequantize_blocks: caller checked the type and the block count");
        FlexTensor::from_data(TensorData::new(out, [n_elements]))
    }
}
