//! Converting a GGUF model to another weight format, with llama.cpp's conventions for what to
//! quantize (`src/llama-quant.cpp`):
//!
//! - only tensors of 2 or more dimensions whose name ends in `weight` and is not a norm
//!   (`*_norm.weight`) are converted; the rest are copied unchanged;
//! - for a quantized target, the output projection (`output.weight`, or `token_embd.weight` when
//!   the embeddings are tied) becomes Q6_K, or Q8_0 when its rows do not fit Q6_K's 256-element
//!   blocks, or stays Q8_0 for a Q8_0 target (`llama_tensor_get_type_impl`);
//! - a row length that does not fit the target's block falls back as llama.cpp does
//!   (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16);
//! - an already quantized tensor is converted only with `allow_requantize`.
//!
//! Kiln does not reproduce llama.cpp's K-quant *mixes* (`Q4_K_M` and friends giving some
//! `attn_v`/`ffn_down` layers more bits): `--type q4_k` is Q4_K everywhere but the output.
//! `pure` turns the output rule off too, like `llama-quantize --pure`.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::blocks::{QUANTIZE_TYPES, dequantize, quantize};
use crate::gguf::{GgufFile, Metadata, TensorInfo, Value};
use crate::{Error, GgmlType, Result};

/// What to convert to, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    pub target: GgmlType,
    pub allow_requantize: bool,
    pub pure: bool,
}

/// The type chosen for one tensor, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub from: GgmlType,
    pub to: GgmlType,
    pub reason: &'static str,
}

/// One converted tensor: sizes and the root-mean-square error of its values against the input.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    pub name: String,
    pub from: GgmlType,
    pub to: GgmlType,
    pub n_elements: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub rmse: f64,
    /// Sum of squared input values, so that relative errors can be aggregated.
    pub sum_sq_input: f64,
}

/// llama.cpp's `general.file_type` for a target type (the `_S` variant for the K-quants).
pub fn llama_ftype(target: GgmlType) -> Option<u32> {
    Some(match target {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 14,
        GgmlType::Q5_K => 16,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

fn is_convertible(t: &TensorInfo) -> bool {
    t.dims.len() >= 2 && t.name.ends_with("weight") && !t.name.contains("_norm.weight")
}

/// llama.cpp `tensor_type_fallback`: a type whose block fits `ncols`.
fn fallback(ty: GgmlType, ncols: u64) -> GgmlType {
    if ncols.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(next.block_size() as u64) {
        next
    } else {
        GgmlType::F16
    }
}

/// The type each tensor of `file` gets.
pub fn plan(file: &GgufFile, opts: &ConvertOptions) -> Result<Vec<TensorPlan>> {
    if !QUANTIZE_TYPES.contains(&opts.target) {
        return Err(Error::Unsupported {
            ty: opts.target,
            op: "quantize",
        });
    }
    let tied = file.tensors.iter().all(|t| t.name != "output.weight");
    let mut out = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let ncols = t.dims.first().copied().unwrap_or(1);
        let (to, reason) = if !is_convertible(t) {
            (t.ty, "kept: 1-D, norm or non-weight tensor")
        } else if !opts.pure
            && opts.target.is_quantized()
            && (t.name == "output.weight" || (tied && t.name == "token_embd.weight"))
        {
            if !ncols.is_multiple_of(256) || opts.target == GgmlType::Q8_0 {
                (GgmlType::Q8_0, "output projection: Q8_0")
            } else {
                (GgmlType::Q6_K, "output projection: Q6_K")
            }
        } else {
            let ty = fallback(opts.target, ncols);
            let reason = if ty == opts.target {
                "target type"
            } else {
                "row length does not fit the target's blocks: fallback"
            };
            (ty, reason)
        };
        if to != t.ty && t.ty.is_quantized() && !opts.allow_requantize {
            return Err(Error::RequantizeDisallowed {
                tensor: t.name.clone(),
                from: t.ty,
                to,
            });
        }
        out.push(TensorPlan {
            name: t.name.clone(),
            from: t.ty,
            to,
            reason,
        });
    }
    Ok(out)
}

/// Elements per parallel work item (a multiple of every block size).
const CHUNK: usize = 256 * 64;

/// Converts one tensor's bytes from `from` to `to`, and measures the error it introduced.
/// A tensor whose type does not change is borrowed, not copied.
pub fn convert_tensor<'a>(
    name: &str,
    from: GgmlType,
    to: GgmlType,
    bytes: &'a [u8],
    n_elements: u64,
) -> Result<(Cow<'a, [u8]>, TensorReport)> {
    let mut report = TensorReport {
        name: name.to_string(),
        from,
        to,
        n_elements,
        bytes_before: bytes.len() as u64,
        bytes_after: bytes.len() as u64,
        rmse: 0.0,
        sum_sq_input: 0.0,
    };
    if from == to {
        return Ok((Cow::Borrowed(bytes), report));
    }
    let n = usize::try_from(n_elements).map_err(|_| Error::ShapeOverflow {
        tensor: name.to_string(),
        dims: vec![n_elements],
    })?;
    let mut x = vec![0.0f32; n];
    dequantize(from, bytes, &mut x)?;
    let out_len = to
        .bytes_for(n_elements)
        .ok_or_else(|| Error::PartialBlock {
            what: format!("tensor {name:?}"),
            ty: to,
            len: n,
            block_bytes: to.block_bytes(),
        })? as usize;
    let mut out = vec![0u8; out_len];
    let out_chunk = CHUNK / to.block_size() * to.block_bytes();
    // Each chunk: quantize, dequantize again, and sum the squared error and input.
    let sums: Vec<Result<(f64, f64)>> = x
        .par_chunks(CHUNK)
        .zip(out.par_chunks_mut(out_chunk))
        .map(|(xs, os)| {
            quantize(to, xs, os)?;
            let mut back = vec![0.0f32; xs.len()];
            dequantize(to, os, &mut back)?;
            let err = xs
                .iter()
                .zip(&back)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let sq = xs.iter().map(|a| f64::from(*a).powi(2)).sum();
            Ok((err, sq))
        })
        .collect();
    let (mut err, mut sq) = (0.0, 0.0);
    for s in sums {
        let (e, q) = s?;
        err += e;
        sq += q;
    }
    report.bytes_after = out_len as u64;
    report.rmse = (err / n.max(1) as f64).sqrt();
    report.sum_sq_input = sq;
    Ok((Cow::Owned(out), report))
}

/// The metadata of the converted file: the input's, with llama.cpp's file type and quantization
/// version set.
pub fn converted_metadata(input: &Metadata, target: GgmlType) -> Metadata {
    let mut md = input.clone();
    if let Some(ftype) = llama_ftype(target) {
        md.set("general.file_type", Value::U32(ftype));
    }
    md.set("general.quantization_version", Value::U32(2));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_follows_llama_cpp() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q2_K, 576), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q5_K, 1536), GgmlType::Q5_K);
        assert_eq!(fallback(GgmlType::Q4_K, 40), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q8_0, 40), GgmlType::F16);
    }

    #[test]
    fn same_type_is_a_byte_copy() {
        let bytes = vec![1u8; 34];
        let (out, r) = convert_tensor("w", GgmlType::Q8_0, GgmlType::Q8_0, &bytes, 32).unwrap();
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(&out[..], &bytes[..]);
        assert_eq!(r.rmse, 0.0);
    }
}
