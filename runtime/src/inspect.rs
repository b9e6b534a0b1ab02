//! `kiln inspect`: what a GGUF file holds — architecture, hyperparameters, tokenizer, tensors,
//! totals per type and the effective bits per weight.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kiln_quant::gguf::{Array, GgufFile, Value};
use serde::Serialize;

use crate::Result;

#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Row-major (outermost first).
    pub shape: Vec<usize>,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeTotal {
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenizerSummary {
    pub model: Option<String>,
    pub pre: Option<String>,
    pub vocab_size: Option<usize>,
    pub merges: Option<usize>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub padding_token_id: Option<u64>,
    pub add_bos_token: Option<bool>,
    pub chat_template: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct GgufSummary {
    pub path: String,
    pub file_bytes: u64,
    pub gguf_version: u32,
    pub alignment: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    /// `{architecture}.*` keys with scalar values, in file order.
    pub hyperparameters: Vec<(String, String)>,
    pub tokenizer: TokenizerSummary,
    pub tensors: Vec<TensorRow>,
    pub totals_by_type: BTreeMap<String, TypeTotal>,
    pub total_elements: u64,
    pub total_tensor_bytes: u64,
    /// Tensor bytes * 8 / elements.
    pub bits_per_weight: f64,
}

impl GgufSummary {
    pub fn of_file(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Ok(Self::of(&file, path))
    }

    pub fn of(file: &GgufFile, path: &Path) -> Self {
        let md = &file.metadata;
        let architecture = md.str("general.architecture").ok().map(str::to_string);
        let prefix = architecture.as_deref().map(|a| format!("{a}."));
        let hyperparameters = md
            .iter()
            .filter(|(k, v)| {
                prefix.as_deref().is_some_and(|p| k.starts_with(p)) && !matches!(v, Value::Array(_))
            })
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let array_len = |key: &str| md.array(key).ok().map(Array::len);
        let tokenizer = TokenizerSummary {
            model: md.str("tokenizer.ggml.model").ok().map(str::to_string),
            pre: md.str("tokenizer.ggml.pre").ok().map(str::to_string),
            vocab_size: array_len("tokenizer.ggml.tokens"),
            merges: array_len("tokenizer.ggml.merges"),
            bos_token_id: md.u64("tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: md.u64("tokenizer.ggml.eos_token_id").ok(),
            padding_token_id: md.u64("tokenizer.ggml.padding_token_id").ok(),
            add_bos_token: md.bool("tokenizer.ggml.add_bos_token").ok(),
            chat_template: md.contains("tokenizer.chat_template"),
        };
        let mut totals_by_type: BTreeMap<String, TypeTotal> = BTreeMap::new();
        let tensors: Vec<TensorRow> = file
            .tensors
            .iter()
            .map(|t| {
                let total = totals_by_type.entry(t.ty.to_string()).or_default();
                total.tensors += 1;
                total.elements += t.n_elements;
                total.bytes += t.n_bytes;
                TensorRow {
                    name: t.name.clone(),
                    ty: t.ty.to_string(),
                    shape: t.shape(),
                    bytes: t.n_bytes,
                }
            })
            .collect();
        let total_elements = file.tensors.iter().map(|t| t.n_elements).sum::<u64>();
        let total_tensor_bytes = file.tensors.iter().map(|t| t.n_bytes).sum::<u64>();
        GgufSummary {
            path: path.display().to_string(),
            file_bytes: file.bytes().len() as u64,
            gguf_version: file.version,
            alignment: file.alignment,
            architecture,
            name: md.str("general.name").ok().map(str::to_string),
            hyperparameters,
            tokenizer,
            tensors,
            totals_by_type,
            total_elements,
            total_tensor_bytes,
            bits_per_weight: if total_elements == 0 {
                0.0
            } else {
                total_tensor_bytes as f64 * 8.0 / total_elements as f64
            },
        }
    }

    /// The human report; `all_tensors` lists every tensor instead of the first and last few.
    pub fn render(&self, all_tensors: bool) -> String {
        let mut s = String::new();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "{}", self.path);
        let _ = writeln!(
            s,
            "  GGUF v{} · {} · alignment {} · {} tensors · {} parameters",
            self.gguf_version,
            human_bytes(self.file_bytes),
            self.alignment,
            self.tensors.len(),
            human_count(self.total_elements)
        );
        let _ = writeln!(
            s,
            "  architecture {} · name {}",
            opt(&self.architecture),
            opt(&self.name)
        );
        if !self.hyperparameters.is_empty() {
            let _ = writeln!(s, "\nhyperparameters");
            for (k, v) in &self.hyperparameters {
                let _ = writeln!(s, "  {k:<44} {v}");
            }
        }
        let t = &self.tokenizer;
        let num = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let _ = writeln!(s, "\ntokenizer");
        let _ = writeln!(
            s,
            "  model {} · pre {} · vocab {} · merges {}",
            opt(&t.model),
            opt(&t.pre),
            num(t.vocab_size.map(|v| v as u64)),
            num(t.merges.map(|v| v as u64))
        );
        let _ = writeln!(
            s,
            "  bos {} · eos {} · pad {} · add_bos {} · chat template {}",
            num(t.bos_token_id),
            num(t.eos_token_id),
            num(t.padding_token_id),
            t.add_bos_token.map_or("-".into(), |b| b.to_string()),
            if t.chat_template { "yes" } else { "no" }
        );

        let _ = writeln!(s, "\ntensors");
        let _ = writeln!(
            s,
            "  {:<36} {:<6} {:<18} {:>12}",
            "name", "type", "shape", "bytes"
        );
        let n = self.tensors.len();
        for (i, row) in self.tensors.iter().enumerate() {
            if !all_tensors && n > 16 && (8..n - 4).contains(&i) {
                if i == 8 {
                    let _ = writeln!(s, "  … {} more (--all lists every tensor)", n - 12);
                }
                continue;
            }
            let _ = writeln!(
                s,
                "  {:<36} {:<6} {:<18} {:>12}",
                row.name,
                row.ty,
                format!("{:?}", row.shape),
                row.bytes
            );
        }
        let _ = writeln!(s, "\ntotals by type");
        let _ = writeln!(
            s,
            "  {:<6} {:>7} {:>14} {:>12} {:>6}",
            "type", "tensors", "elements", "size", "bpw"
        );
        for (ty, total) in &self.totals_by_type {
            let _ = writeln!(
                s,
                "  {:<6} {:>7} {:>14} {:>12} {:>6.2}",
                ty,
                total.tensors,
                total.elements,
                human_bytes(total.bytes),
                total.bytes as f64 * 8.0 / total.elements.max(1) as f64
            );
        }
        let _ = writeln!(
            s,
            "  {:<6} {:>7} {:>14} {:>12} {:>6.2}   (effective bits per weight)",
            "all",
            n,
            self.total_elements,
            human_bytes(self.total_tensor_bytes),
            self.bits_per_weight
        );
        s
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
