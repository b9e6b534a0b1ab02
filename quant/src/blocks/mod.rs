//! Block codecs for the ggml formats. Each format's block struct mirrors llama.cpp's
//! `ggml/src/ggml-common.h`; dequantization follows `ggml/src/ggml-quants.c` and is bit-exact
//! against gguf-py's `gguf.quants`.

mod float;
mod q4;
mod q8_0;

pub use q4::{BlockQ4_0, BlockQ4_1};
pub use q8_0::BlockQ8_0;

use crate::{Error, GgmlType, Result};

/// The types [`dequantize`] handles.
pub const DEQUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
];

/// Expands `bytes` (whole blocks of `ty`) into `out`, one f32 per element.
///
/// `out.len()` must be the number of elements the blocks hold.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let block_bytes = ty.block_bytes();
    if !bytes.len().is_multiple_of(block_bytes)
        || bytes.len() / block_bytes * ty.block_size() != out.len()
    {
        return Err(Error::PartialBlock {
            what: format!("dequantize into {} values", out.len()),
            ty,
            len: bytes.len(),
            block_bytes,
        });
    }
    match ty {
        GgmlType::F32 => float::f32_to_f32(bytes, out),
        GgmlType::F16 => float::f16_to_f32(bytes, out),
        GgmlType::BF16 => float::bf16_to_f32(bytes, out),
        GgmlType::Q4_0 => q4::dequantize_q4_0(bytes, out),
        GgmlType::Q4_1 => q4::dequantize_q4_1(bytes, out),
        GgmlType::Q8_0 => q8_0::dequantize(bytes, out),
        ty => {
            return Err(Error::Unsupported {
                ty,
                op: "dequantize",
            });
        }
    }
    Ok(())
}

/// Convenience: dequantize into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let n = bytes.len() / ty.block_bytes() * ty.block_size();
    let mut out = vec![0.0; n];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}
