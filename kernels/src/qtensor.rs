//! A quantized weight on a device: its GGUF blocks, untouched, or on the CPU repacked for
//! Kiln's kernels ([`Layout`]).

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use kiln_quant::GgmlType;

use crate::{KernelError, Result};

/// How a [`QTensor`]'s blocks are arranged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// As in the GGUF file: row after row of blocks.
    #[default]
    Gguf,
    /// The CPU's x8 layout (eight rows interleaved per block, [`crate::cpu::x8`]) of a matrix
    /// with rows of `k` values: the matrices of the types [`crate::cpu::x8::supported`] lists on
    /// the CPU whose row count is a multiple of 8, unless `KILN_CPU_REPACK=0`. Same size as the GGUF blocks (Q4_K: 2.8%
    /// more, [`crate::cpu::x8::packed_bytes`]).
    CpuX8 { k: usize },
}

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
    pub layout: Layout,
}

impl QTensor {
    /// Uploads `bytes` (whole blocks of `ty` holding `shape`) to `device`, repacked into
    /// [`Layout::CpuX8`] where that applies.
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
        let layout = match shape {
            [n, k]
                if crate::cpu::x8::applies(ty, *n, *k)
                    && crate::BackendKind::of(device)? == crate::BackendKind::Flex
                    && std::env::var("KILN_CPU_REPACK").as_deref() != Ok("0") =>
            {
                Layout::CpuX8 { k: *k }
            }
            _ => Layout::Gguf,
        };
        let mut padded = match layout {
            Layout::CpuX8 { k } => crate::cpu::x8::repack(ty, bytes, shape[0], k),
            Layout::Gguf => bytes.to_vec(),
        };
        let n_bytes = padded.len();
        padded.resize(n_bytes.div_ceil(4) * 4, 0);
        let n_words = padded.len() / 4;
        let data = TensorData::from_bytes_vec(padded, [n_words], DType::U32);
        let words = Tensor::<1, Int>::from_data(data, (device, DType::U32));
        Ok(QTensor {
            ty,
            shape: shape.to_vec(),
            words,
            n_bytes,
            layout,
        })
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn device(&self) -> Device {
        self.words.device()
    }
}
