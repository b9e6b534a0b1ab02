//! Block codecs for the ggml formats. Each format's block struct mirrors llama.cpp's
//! `ggml/src/ggml-common.h`; dequantization follows `ggml/src/ggml-quants.c` and is bit-exact
//! against gguf-py's `gguf.quants`.

mod float;
mod k_quantize;
mod k_quants;
mod q4;
mod q5;
mod q8_0;

pub use k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
pub use q4::{BlockQ4_0, BlockQ4_1};
pub use q5::{BlockQ5_0, BlockQ5_1};
pub use q8_0::BlockQ8_0;

use crate::{Error, GgmlType, Result};

/// The types [`dequantize`] handles.
pub const DEQUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// The types [`quantize`] handles: bit-exact with gguf-py's `gguf.quants.quantize` for the
/// plain and 32-element formats; the K-quants port llama.cpp's reference quantizers.
pub const QUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
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
        GgmlType::Q5_0 => q5::dequantize_q5_0(bytes, out),
        GgmlType::Q5_1 => q5::dequantize_q5_1(bytes, out),
        GgmlType::Q8_0 => q8_0::dequantize(bytes, out),
        GgmlType::Q2_K => k_quants::dequantize_q2_k(bytes, out),
        GgmlType::Q3_K => k_quants::dequantize_q3_k(bytes, out),
        GgmlType::Q4_K => k_quants::dequantize_q4_k(bytes, out),
        GgmlType::Q5_K => k_quants::dequantize_q5_k(bytes, out),
        GgmlType::Q6_K => k_quants::dequantize_q6_k(bytes, out),
        GgmlType::Q8_K => k_quants::dequantize_q8_k(bytes, out),
        ty => {
            return Err(Error::Unsupported {
                ty,
                op: "dequantize",
            });
        }
    }
    Ok(())
}

/// Packs `x` into blocks of `ty` in `out`, which must hold exactly the bytes for `x.len()`
/// elements (a whole number of blocks).
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    if ty.bytes_for(x.len() as u64) != Some(out.len() as u64) {
        return Err(Error::PartialBlock {
            what: format!("quantize {} values", x.len()),
            ty,
            len: out.len(),
            block_bytes: ty.block_bytes(),
        });
    }
    match ty {
        GgmlType::F32 => float::f32_from_f32(x, out),
        GgmlType::F16 => float::f16_from_f32(x, out),
        GgmlType::BF16 => float::bf16_from_f32(x, out),
        GgmlType::Q4_0 => q4::quantize_q4_0(x, out),
        GgmlType::Q4_1 => q4::quantize_q4_1(x, out),
        GgmlType::Q5_0 => q5::quantize_q5_0(x, out),
        GgmlType::Q5_1 => q5::quantize_q5_1(x, out),
        GgmlType::Q8_0 => q8_0::quantize(x, out),
        GgmlType::Q2_K => k_quantize::quantize_q2_k(x, out),
        GgmlType::Q3_K => k_quantize::quantize_q3_k(x, out),
        GgmlType::Q4_K => k_quantize::quantize_q4_k(x, out),
        GgmlType::Q5_K => k_quantize::quantize_q5_k(x, out),
        GgmlType::Q6_K => k_quantize::quantize_q6_k(x, out),
        ty => return Err(Error::Unsupported { ty, op: "quantize" }),
    }
    Ok(())
}

/// Convenience: quantize into a new vector.
pub fn quantize_to_vec(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    // A length that is not a whole number of blocks leaves `out` empty and `quantize` says so.
    let mut out = vec![0u8; ty.bytes_for(x.len() as u64).unwrap_or(0) as usize];
    quantize(ty, x, &mut out)?;
    Ok(out)
}

/// The value of largest magnitude (the first, if several tie), with its sign.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
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
