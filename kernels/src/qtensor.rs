//! A quantized weight on a device: its GGUF blocks, untouched.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use kiln_quant::GgmlType;

use crate::{KernelError, Result};

/// A tensor stored as ggml blocks of `ty`, `shape` row-major (outermost first).
///
/// The blocks live on the device as little-endian u32 words (WGSL has no byte type), padded with
/// zero bytes to a whole word. Kernels address bytes inside the words.
#[derive(Clone, Debug)]
pub struct QTensor {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    /// `[ceil(n_bytes / 4)]` u32 words.
    pub words: Tensor<1, Int>,
    pub n_bytes: usize,
}

impl QTensor {
    /// Uploads `bytes` (whole blocks of `ty` holding `shape`) to `device`.
    pub fn from_blocks(
        what: &str,
        ty: GgmlType,
        shape: &[usize],
        bytes: &[u8],
        device: &Device,
    ) -> Result<Self> {
        let n_elements: u64 = shape.iter().map(|&d| d as u64).product();
        let expected = ty.bytes_for(n_elements);
        if expected != Some(bytes.len() as u64) {
            return Err(KernelError::BadBlocks {
                what: what.to_string(),
                ty,
                shape: shape.to_vec(),
                len: bytes.len(),
                expected: expected.unwrap_or(0),
            });
        }
        let mut padded = Vec::with_capacity(bytes.len().div_ceil(4) * 4);
        padded.extend_from_slice(bytes);
        padded.resize(bytes.len().div_ceil(4) * 4, 0);
        let n_words = padded.len() / 4;
        let data = TensorData::from_bytes_vec(padded, [n_words], DType::U32);
        let words = Tensor::<1, Int>::from_data(data, (device, DType::U32));
        Ok(QTensor {
            ty,
            shape: shape.to_vec(),
            words,
            n_bytes: bytes.len(),
        })
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn device(&self) -> Device {
        self.words.device()
    }
}
