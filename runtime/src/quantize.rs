//! `kiln quantize`: convert a GGUF model to another weight format (see
//! `kiln_quant::convert` for the rules), with a progress bar and a per-tensor error report.

use std::path::{Path, PathBuf};

use kiln_quant::GgmlType;
use kiln_quant::convert::{ConvertOptions, TensorReport, convert_tensor, converted_metadata, plan};
use kiln_quant::gguf::{GgufFile, TensorToWrite, write_gguf_file};

use crate::{Result, RuntimeError};

/// What `kiln quantize` was asked to do.
#[derive(Clone, Debug)]
pub struct QuantizeRequest {
    pub input: PathBuf,
    pub output: PathBuf,
    pub options: ConvertOptions,
    pub overwrite: bool,
}

/// The outcome: one report per tensor, in file order, and the file sizes.
#[derive(Clone, Debug)]
pub struct QuantizeSummary {
    pub tensors: Vec<TensorReport>,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

impl QuantizeSummary {
    /// Root-mean-square error over every element whose type changed.
    pub fn total_rmse(&self) -> f64 {
        let converted = self.tensors.iter().filter(|t| t.from != t.to);
        let (err, n) = converted.fold((0.0, 0u64), |(e, n), t| {
            (e + t.rmse * t.rmse * t.n_elements as f64, n + t.n_elements)
        });
        (err / n.max(1) as f64).sqrt()
    }
}

/// Parses a `--type` value: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_k … q2_k.
pub fn parse_target(name: &str) -> Result<GgmlType> {
    GgmlType::from_name(name)
        .filter(|t| kiln_quant::blocks::QUANTIZE_TYPES.contains(t))
        .ok_or_else(|| RuntimeError::Usage(format!(
            "--type {name:?}: expected one of f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_k, q5_k, q4_k, q3_k, q2_k"
        )))
}

/// Converts `req.input` into `req.output`. `progress(done_elements, total_elements, tensor)` is
/// called before each tensor and once at the end.
pub fn quantize_file(
    req: &QuantizeRequest,
    mut progress: impl FnMut(u64, u64, &str),
) -> Result<QuantizeSummary> {
    if same_file(&req.input, &req.output) {
        return Err(RuntimeError::Usage(
            "the output would overwrite the input: choose another output path".into(),
        ));
    }
    if req.output.exists() && !req.overwrite {
        return Err(RuntimeError::Usage(format!(
            "{} exists: pass --overwrite to replace it",
            req.output.display()
        )));
    }
    let file = GgufFile::open(&req.input)?;
    let plans = plan(&file, &req.options)?;
    let total: u64 = file.tensors.iter().map(|t| t.n_elements).sum();
    let mut done = 0u64;
    let mut buffers = Vec::with_capacity(plans.len());
    let mut reports = Vec::with_capacity(plans.len());
    for (info, p) in file.tensors.iter().zip(&plans) {
        progress(done, total, &info.name);
        let (bytes, report) = convert_tensor(
            &info.name,
            p.from,
            p.to,
            file.tensor_data(info),
            info.n_elements,
        )?;
        buffers.push(bytes);
        reports.push(report);
        done += info.n_elements;
    }
    progress(done, total, "");
    let tensors: Vec<TensorToWrite<'_>> = file
        .tensors
        .iter()
        .zip(&plans)
        .zip(&buffers)
        .map(|((info, p), data)| TensorToWrite {
            name: &info.name,
            dims: &info.dims,
            ty: p.to,
            data,
        })
        .collect();
    let metadata = converted_metadata(&file.metadata, req.options.target);
    let output_bytes = write_gguf_file(&req.output, &metadata, &tensors)?;
    Ok(QuantizeSummary {
        tensors: reports,
        input_bytes: file.bytes().len() as u64,
        output_bytes,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
