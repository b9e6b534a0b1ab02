//! `kiln tradeoffs`: which weight format to deploy on which device, measured.
//!
//! For every (device, format) cell of the matrix, the model is converted to the format (once,
//! kept under the source file's content hash: [`variants`]) and measured on the device: file
//! size, load time, peak resident host memory and device memory, llama-bench's pp/tg speeds
//! (median and spread of several repetitions after a warm-up), batched classification
//! throughput and single-query latency, and accuracy against the highest-precision variant on
//! the same device — perplexity, KL divergence and top-1 agreement of next-token distributions
//! over a text ([`metrics`]), intent accuracy and agreement on a labeled set. Each cell's result
//! is kept on disk as soon as it is measured, so an interrupted run resumes where it stopped.
//! The recommendation per device comes from [`crate::plan::recommend`], and is kept where
//! `kiln plan` reads it: both commands give the same answer.
//!
//! Embedding models (a BERT-family directory) are compared the same way in [`embed`].

pub mod embed;
pub mod llm_cell;
pub mod metrics;
pub mod report;
pub mod variants;

use std::path::{Path, PathBuf};

use kiln_quant::GgmlType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::{DeviceInfo, Devices};
use crate::plan::{Candidate, DeviceFacts, Measured, Recommendation};
use crate::{Result, RuntimeError};
use metrics::TextMetrics;

/// The formats compared when none are named, highest precision first.
pub const DEFAULT_FORMATS: &[&str] = &["f16", "q8_0", "q6_k", "q5_k", "q4_k", "q4_1", "q4_0"];

/// The labeled intent set used when `--eval` is not given (`data/eval/intents-dev.tsv`).
pub const DEFAULT_EVAL: &str = include_str!("../../../data/eval/intents-dev.tsv");

/// The labels of the built-in set, in the order `kiln classify` lists them
/// (`data/eval/intent-labels.txt`).
pub const DEFAULT_LABELS: &str = include_str!("../../../data/eval/intent-labels.txt");

/// The text used when `--text` is not given: the product texts of the sample catalog
/// (`data/catalog/products-sample.jsonl`), one per line.
pub const DEFAULT_CORPUS: &str = include_str!("../../../data/catalog/products-sample.jsonl");

/// Formats ordered by precision, highest first: the first one measured on a device is that
/// device's reference.
pub fn precision_order(t: GgmlType) -> u32 {
    // Bits per weight, scaled: F32 32, F16/BF16 16, Q8_0 8.5, …, Q4_0 4.5.
    (t.bits_per_weight() * 1000.0) as u32
}

/// A labeled query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabeledQuery {
    pub query: String,
    pub label: String,
}

/// Reads a labeled set: TSV with a header naming `query` (or `text`) and `label` columns, or
/// JSONL rows with `query`/`text` and `label`.
pub fn parse_labeled(text: &str, name: &str) -> Result<Vec<LabeledQuery>> {
    let bad = |line: usize, why: &str| RuntimeError::Usage(format!("{name}:{line}: {why}"));
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let first = lines.next();
    let jsonl = first.is_some_and(|(_, l)| l.trim_start().starts_with('{'));
    if jsonl {
        for (i, l) in first.into_iter().chain(lines) {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| bad(i + 1, &format!("not JSON: {e}")))?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            out.push(LabeledQuery {
                query: s("query")
                    .or_else(|| s("text"))
                    .ok_or_else(|| bad(i + 1, "no \"query\" field"))?,
                label: s("label").ok_or_else(|| bad(i + 1, "no \"label\" field"))?,
            });
        }
    } else if let Some((_, header)) = first {
        let cols: Vec<String> = header
            .split('\t')
            .map(|c| c.trim().to_lowercase())
            .collect();
        let q = cols
            .iter()
            .position(|c| c == "query" || c == "text")
            .ok_or_else(|| bad(1, "the header names no `query` column"))?;
        let l = cols
            .iter()
            .position(|c| c == "label")
            .ok_or_else(|| bad(1, "the header names no `label` column"))?;
        for (i, line) in lines {
            let cells: Vec<&str> = line.split('\t').collect();
            let get = |k: usize| cells.get(k).map(|s| s.trim().to_string());
            out.push(LabeledQuery {
                query: get(q).ok_or_else(|| bad(i + 1, "no query cell"))?,
                label: get(l).ok_or_else(|| bad(i + 1, "no label cell"))?,
            });
        }
    }
    if out.len() < 2 {
        return Err(RuntimeError::Usage(format!(
            "{name}: a labeled set needs at least two queries, found {}",
            out.len()
        )));
    }
    Ok(out)
}

/// `n` items evenly spaced through `set` (all of them when `n >= set.len()`).
pub fn spread<T: Clone>(set: &[T], n: usize) -> Vec<T> {
    if n >= set.len() {
        return set.to_vec();
    }
    (0..n).map(|i| set[i * set.len() / n].clone()).collect()
}

/// The labels of a labeled set, in order of first appearance.
pub fn labels_of(set: &[LabeledQuery]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for q in set {
        if !labels.contains(&q.label) {
            labels.push(q.label.clone());
        }
    }
    labels
}

/// Text from a `.txt` file as it is, or from JSONL/CSV rows' `text` fields one per line.
pub fn corpus_text(raw: &str, name: &str) -> Result<String> {
    if name.ends_with(".jsonl") || (name == "(built-in catalog)") {
        let mut out = String::new();
        for (i, l) in raw
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| RuntimeError::Usage(format!("{name}:{}: not JSON: {e}", i + 1)))?;
            if let Some(t) = v.get("text").and_then(|x| x.as_str()) {
                out.push_str(t);
                out.push('\n');
            }
        }
        return Ok(out);
    }
    Ok(raw.to_string())
}

/// What a run measures, beyond the matrix itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmSettings {
    /// pp test: prompt tokens (llama-bench `-p`).
    pub prompt_tokens: usize,
    /// tg test: generated tokens (llama-bench `-n`).
    pub generate_tokens: usize,
    /// Repetitions of each speed test, after one warm-up run that is not counted.
    pub repetitions: usize,
    /// Tokens of the text read for accuracy, in windows of `context`.
    pub text_tokens: usize,
    pub context: usize,
    /// Queries per batch in the throughput measurement.
    pub batch: usize,
    /// Classify with the model's chat template (the filled prompt as the user's turn).
    pub chat: bool,
    /// Kernel threads (the CPU device; also Burn's own CPU ops).
    pub threads: usize,
    /// Seed of the random tokens of the speed tests.
    pub seed: u64,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            prompt_tokens: 512,
            generate_tokens: 128,
            repetitions: 5,
            text_tokens: 1024,
            context: 256,
            batch: 8,
            chat: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seed: 42,
        }
    }
}

/// One cell to measure: a variant on a device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellSpec {
    pub model: PathBuf,
    /// `cpu`, `wgpu:0`, …
    pub device: String,
    pub format: String,
    pub file_bytes: u64,
    pub weight_rmse: Option<f64>,
    pub settings: LlmSettings,
    pub eval: Vec<LabeledQuery>,
    pub labels: Vec<String>,
    pub text: String,
    /// The reference cell's directory (its log-probs and predictions); `None`: this cell is
    /// the reference.
    pub reference: Option<PathBuf>,
    /// Where the cell keeps its files (`cell.json`, and the reference's log-probs).
    pub dir: PathBuf,
}

/// How a cell ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Ok,
    /// Not measured, by design (no kernel for the format on the device).
    Skipped,
    /// The measurement failed; `note` says why.
    Failed,
}

/// Median and spread of a speed test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub test: String,
    pub tokens: usize,
    pub median_tps: f64,
    pub min_tps: f64,
    pub max_tps: f64,
    pub stddev_tps: f64,
    pub warmup_runs: usize,
    pub samples_seconds: Vec<f64>,
}

impl Speed {
    pub fn from_samples(test: &str, tokens: usize, samples_seconds: Vec<f64>) -> Self {
        let mut rates: Vec<f64> = samples_seconds.iter().map(|s| tokens as f64 / s).collect();
        rates.sort_by(f64::total_cmp);
        let n = rates.len().max(1);
        let median = if rates.is_empty() {
            0.0
        } else if n % 2 == 1 {
            rates[n / 2]
        } else {
            (rates[n / 2 - 1] + rates[n / 2]) / 2.0
        };
        let mean = rates.iter().sum::<f64>() / n as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
        Speed {
            test: test.to_string(),
            tokens,
            median_tps: median,
            min_tps: rates.first().copied().unwrap_or(0.0),
            max_tps: rates.last().copied().unwrap_or(0.0),
            stddev_tps: var.sqrt(),
            warmup_runs: 1,
            samples_seconds,
        }
    }
}

/// Classification measured on the labeled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyMeasure {
    pub queries: usize,
    pub batch: usize,
    /// Queries per second classifying the set in batches of `batch`.
    pub batched_queries_per_second: f64,
    /// Single-query latency (one query at a time).
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub accuracy: f64,
    /// Share of queries given the reference variant's label.
    pub agreement: f64,
    pub predictions: Vec<String>,
}

/// Everything measured for one (device, format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmCell {
    pub device: String,
    pub device_name: String,
    pub format: String,
    pub status: CellStatus,
    pub note: Option<String>,
    pub is_reference: bool,
    pub file_bytes: u64,
    pub weight_rmse: Option<f64>,
    /// How the device runs it (CPU SIMD level, or the GPU mat-vec variant).
    pub kernels: String,
    pub threads: usize,
    pub load_seconds: f64,
    /// Resident host memory after loading, and the peak over the whole cell (Linux
    /// `VmRSS` / `VmHWM`, the peak reset when the cell starts).
    pub host_rss_after_load_bytes: Option<u64>,
    pub host_peak_rss_bytes: Option<u64>,
    /// Device allocator (GPUs): bytes in use after loading, and the most reserved seen after
    /// each workload.
    pub device_in_use_after_load_bytes: Option<u64>,
    pub device_reserved_peak_bytes: Option<u64>,
    pub pp: Option<Speed>,
    pub tg: Option<Speed>,
    pub classify: Option<ClassifyMeasure>,
    pub text: Option<TextMetrics>,
    pub seconds: f64,
}

impl LlmCell {
    /// A cell that was not measured.
    pub fn unmeasured(spec: &CellSpec, status: CellStatus, note: String) -> Self {
        LlmCell {
            device: spec.device.clone(),
            device_name: String::new(),
            format: spec.format.clone(),
            status,
            note: Some(note),
            is_reference: spec.reference.is_none(),
            file_bytes: spec.file_bytes,
            weight_rmse: spec.weight_rmse,
            kernels: String::new(),
            threads: spec.settings.threads,
            load_seconds: 0.0,
            host_rss_after_load_bytes: None,
            host_peak_rss_bytes: None,
            device_in_use_after_load_bytes: None,
            device_reserved_peak_bytes: None,
            pp: None,
            tg: None,
            classify: None,
            text: None,
            seconds: 0.0,
        }
    }

    /// Memory the variant holds while it serves: device memory in use after loading on a GPU,
    /// resident host memory after loading on the CPU (the peak, which includes the file's
    /// map while loading, is in the table beside it).
    pub fn memory_bytes(&self) -> u64 {
        self.device_in_use_after_load_bytes
            .or(self.host_rss_after_load_bytes)
            .or(self.host_peak_rss_bytes)
            .unwrap_or(self.file_bytes)
    }

    pub fn candidate(&self) -> Option<Candidate> {
        let (tg, text) = (self.tg.as_ref()?, self.text.as_ref()?);
        (self.status == CellStatus::Ok).then(|| Candidate {
            format: self.format.clone(),
            speed: tg.median_tps,
            loss: 1.0 - text.top1_agreement,
            memory_bytes: self.memory_bytes(),
        })
    }
}

/// What a cell file holds: the result and the spec it answers (a changed setting re-measures).
#[derive(Serialize, Deserialize)]
pub struct CellRecord {
    pub spec_hash: String,
    pub cell: LlmCell,
}

/// SHA-256 of what decides a cell's numbers (everything but where its files go).
pub fn spec_hash(spec: &CellSpec) -> String {
    hash_spec(&CellSpec {
        dir: PathBuf::new(),
        ..spec.clone()
    })
}

/// SHA-256 (hex) of a cell spec, with Kiln's version: a kept result answers only the same
/// spec measured by the same Kiln.
pub(crate) fn hash_spec(spec: &impl Serialize) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).expect("a cell spec serializes"));
    h.update(env!("CARGO_PKG_VERSION"));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A kept cell result for `spec`, if one was measured with the same spec.
pub fn read_cell(spec: &CellSpec) -> Option<LlmCell> {
    let text = std::fs::read_to_string(spec.dir.join("cell.json")).ok()?;
    let rec: CellRecord = serde_json::from_str(&text).ok()?;
    (rec.spec_hash == spec_hash(spec) && rec.cell.status == CellStatus::Ok).then_some(rec.cell)
}

/// Keeps a cell's result (written whole, then renamed: a killed run leaves no half file).
pub fn write_cell(spec: &CellSpec, cell: &LlmCell) -> Result<()> {
    let path = spec.dir.join("cell.json");
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&spec.dir).map_err(io)?;
    let rec = CellRecord {
        spec_hash: spec_hash(spec),
        cell: cell.clone(),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&rec).expect("a cell serializes"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// A trade-off run over a GGUF model.
#[derive(Clone, Debug)]
pub struct LlmRun {
    pub model: PathBuf,
    pub formats: Vec<GgmlType>,
    /// Device names (`cpu`, `wgpu:0`); empty: every device found.
    pub devices: Vec<String>,
    pub eval: Vec<LabeledQuery>,
    pub eval_name: String,
    /// The labels scored, in prompt order; empty: the eval set's, in order of appearance.
    pub labels: Vec<String>,
    pub text: String,
    pub text_name: String,
    /// Largest top-1 disagreement accepted (0.01 = 1%).
    pub max_loss: f64,
    pub settings: LlmSettings,
    pub out: PathBuf,
    /// Where variants, cell results and recommendations are kept ([`cache_dir`]; `kiln plan`
    /// reads recommendations from there).
    pub cache: PathBuf,
    /// Measure every cell again instead of reading kept results.
    pub fresh: bool,
}

/// What a run reports as it goes (`C`: the kind of cell, [`LlmCell`] or
/// [`embed::EmbedCell`]).
pub enum Event<'a, C = LlmCell> {
    /// Converting the model: (format, done elements, total elements).
    Convert(&'a str, u64, u64),
    /// Starting cell `index` of `total`.
    Cell {
        index: usize,
        total: usize,
        device: &'a str,
        format: &'a str,
    },
    /// A cell's result (`resumed`: read from an earlier run).
    Done { cell: &'a C, resumed: bool },
}

/// Measures one cell; the CLI runs each in a child process (clean memory numbers, a crash
/// stays in its cell), tests in this one ([`llm_cell::measure`]).
pub type CellRunner<'a> = dyn Fn(&CellSpec) -> Result<LlmCell> + 'a;

/// Per device: its description, cells and recommendation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSection {
    pub device: String,
    pub info: serde_json::Value,
    pub reference: Option<String>,
    pub cells: Vec<LlmCell>,
    pub recommendation: Option<Recommendation>,
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LlmReport {
    pub kind: String,
    pub kiln_version: String,
    pub created_unix: u64,
    pub command: Vec<String>,
    pub model: String,
    pub model_sha256: String,
    pub model_format: String,
    pub model_params: u64,
    pub machine: serde_json::Value,
    pub settings: LlmSettings,
    pub eval: String,
    pub eval_queries: usize,
    pub text: String,
    pub max_loss: f64,
    pub method: Vec<String>,
    pub devices: Vec<DeviceSection>,
}

/// The device names a run covers: the ones asked for, or every device found.
pub fn resolve_devices<'a>(devices: &'a Devices, names: &[String]) -> Result<Vec<&'a DeviceInfo>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(devices.devices.iter().collect());
    }
    names.iter().map(|n| devices.find(n)).collect()
}

/// Machine description for the report.
pub fn machine_json(devices: &Devices) -> serde_json::Value {
    let cpu = devices.devices.iter().find_map(|d| d.cpu.clone());
    serde_json::json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu": cpu,
        "backends_built": devices.backends_built,
    })
}

/// How the numbers are taken, for the report.
pub fn method_notes(settings: &LlmSettings) -> Vec<String> {
    vec![
        format!(
            "Speed: llama-bench's tests, pp{} (one batch of random tokens into an empty cache) and tg{} (tokens decoded one at a time); one warm-up run of each is excluded; median, min–max and standard deviation over {} repetitions; timed with a monotonic clock (std::time::Instant) around work that is read back from the device.",
            settings.prompt_tokens, settings.generate_tokens, settings.repetitions
        ),
        format!(
            "Threads: {} kernel threads on the CPU (Kiln's pool and Burn's); GPU cells use the CPU only to drive the device.",
            settings.threads
        ),
        "Memory: each cell runs in its own process; host memory is the OS's resident-set peak (Linux VmHWM) over load and every measurement; device memory is the CubeCL allocator's bytes in use after loading and the most it reserved after each workload.".into(),
        format!(
            "Accuracy: against the highest-precision variant measured on the same device. Text: the first {} tokens in windows of {}; the second half of each window is scored (as llama-perplexity does): perplexity, KL(P_ref ‖ P) of next-token distributions (mean, median, p99, max), and top-1 agreement. Intents: accuracy on the labeled set and agreement with the reference's labels (generative scoring, Kiln's default template).",
            settings.text_tokens, settings.context
        ),
        format!(
            "Classification: Kiln's default template{}; single-query latency over the labeled set one query at a time (p50, p95), after one warm-up query; throughput classifying the set in batches of {} (each prompt a sequence group, every label continuation of every query in one pass).",
            if settings.chat { " inside the model's chat template (--chat)" } else { ", plain prompt" },
            settings.batch
        ),
        "Recommendation: the fastest decoder (median tg) whose top-1 disagreement is within --max-loss; `kiln plan` follows it for this file on this device.".into(),
    ]
}

/// Runs the matrix; writes nothing under `out` (see [`report::write`]).
pub fn run_llm(
    run: &LlmRun,
    devices: &Devices,
    runner: &CellRunner,
    on: &mut dyn FnMut(Event),
) -> Result<LlmReport> {
    if !run.model.is_file() {
        return Err(RuntimeError::Usage(format!(
            "{}: no such file",
            run.model.display()
        )));
    }
    if run.formats.is_empty() {
        return Err(RuntimeError::Usage("--formats names no format".into()));
    }
    let facts = crate::plan::ModelFacts::from_gguf(&run.model)?;
    let hash = variants::content_hash(&run.model, &crate::models_dir::cache_root())?;
    let targets = resolve_devices(devices, &run.devices)?;
    let mut formats = run.formats.clone();
    formats.sort_by_key(|&t| std::cmp::Reverse(precision_order(t)));
    formats.dedup();

    // Variants first (each made once, whatever the devices).
    let mut made = Vec::new();
    for &f in &formats {
        let v = variants::make_variant(
            &run.model,
            &hash,
            facts.main_format,
            f,
            &run.cache.join("variants"),
            |done, total, _| on(Event::Convert(f.name(), done, total)),
        )?;
        // Every weight format the variant holds: conversion keeps some tensors in another
        // format (rows that do not fit the target's blocks fall back, as in llama.cpp).
        let held: Vec<GgmlType> = crate::plan::ModelFacts::from_gguf(&v.path)?
            .formats
            .iter()
            .map(|&(t, _)| t)
            .collect();
        made.push((f, v, held));
    }

    let labels = if run.labels.is_empty() {
        labels_of(&run.eval)
    } else {
        run.labels.clone()
    };
    if let Some(q) = run.eval.iter().find(|q| !labels.contains(&q.label)) {
        return Err(RuntimeError::Usage(format!(
            "{}: label {:?} is not among the labels ({})",
            run.eval_name,
            q.label,
            labels.join(", ")
        )));
    }
    let total = targets.len() * made.len();
    let mut index = 0;
    let mut sections = Vec::new();
    for info in targets {
        let facts_d = DeviceFacts::from(info);
        let key = crate::tune::device_key(info);
        let mut cells = Vec::new();
        let mut reference: Option<(String, PathBuf)> = None;
        for (f, v, held) in &made {
            index += 1;
            let dir = run
                .cache
                .join("cells")
                .join(&hash[..16])
                .join(&key)
                .join(f.name());
            let spec = CellSpec {
                model: v.path.clone(),
                device: info.id.to_string(),
                format: f.name().to_string(),
                file_bytes: v.bytes,
                weight_rmse: v.rmse,
                settings: run.settings.clone(),
                eval: run.eval.clone(),
                labels: labels.clone(),
                text: run.text.clone(),
                reference: reference.as_ref().map(|r| r.1.clone()),
                dir,
            };
            on(Event::Cell {
                index,
                total,
                device: &spec.device,
                format: &spec.format,
            });
            let missing: Vec<&str> = held
                .iter()
                .filter(|&&t| !crate::plan::runs_on(&facts_d, t))
                .map(|t| t.name())
                .collect();
            let (cell, resumed) = if !missing.is_empty() {
                let why = if missing == [f.name()] {
                    format!("Kiln has no {} kernel for {}", f.name(), info.name)
                } else {
                    format!(
                        "the {} variant also holds {} tensors (rows that do not fit {}'s blocks fall back, as in llama.cpp), and Kiln has no kernel for {} on {}",
                        f.name(),
                        missing.join(", "),
                        f.name(),
                        missing.join(", "),
                        info.name
                    )
                };
                (LlmCell::unmeasured(&spec, CellStatus::Skipped, why), false)
            } else if let Some(c) = read_cell(&spec).filter(|_| !run.fresh) {
                (c, true)
            } else {
                let c = runner(&spec).unwrap_or_else(|e| {
                    LlmCell::unmeasured(&spec, CellStatus::Failed, e.to_string())
                });
                write_cell(&spec, &c)?;
                (c, false)
            };
            on(Event::Done {
                cell: &cell,
                resumed,
            });
            if reference.is_none() && cell.status == CellStatus::Ok {
                reference = Some((cell.format.clone(), spec.dir.clone()));
            }
            cells.push(cell);
        }
        let ref_name = reference.map(|r| r.0);
        let candidates: Vec<Candidate> = cells.iter().filter_map(LlmCell::candidate).collect();
        let recommendation = ref_name.as_deref().and_then(|r| {
            crate::plan::recommend(&candidates, r, run.max_loss, &crate::plan::LLM_WORDING)
        });
        sections.push(DeviceSection {
            device: info.id.to_string(),
            info: serde_json::to_value(info).unwrap_or_default(),
            reference: ref_name,
            cells,
            recommendation,
        });
    }

    // Kept where `kiln plan` reads it.
    let report_path = run.out.join("report.json");
    let report_path = std::path::absolute(&report_path).unwrap_or(report_path);
    let measured: Vec<Measured> = sections
        .iter()
        .filter_map(|s| {
            let r = s.recommendation.as_ref()?;
            let info = devices.find(&s.device).ok()?;
            Some(Measured {
                device_key: crate::tune::device_key(info),
                device_name: info.name.clone(),
                format: r.format.clone(),
                reason: r.reason.clone(),
                rejected: r.rejected.clone(),
                report: report_path.display().to_string(),
            })
        })
        .collect();
    if !measured.is_empty() {
        crate::plan::write_measured(&run.cache.join("recommended"), &hash, &measured)?;
    }

    Ok(LlmReport {
        kind: "llm".into(),
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: std::env::args().collect(),
        model: run.model.display().to_string(),
        model_sha256: hash,
        model_format: facts.main_format.name().into(),
        model_params: facts.params,
        machine: machine_json(devices),
        settings: run.settings.clone(),
        eval: format!("{} ({} queries)", run.eval_name, run.eval.len()),
        eval_queries: run.eval.len(),
        text: run.text_name.clone(),
        max_loss: run.max_loss,
        method: method_notes(&run.settings),
        devices: sections,
    })
}

/// Reads a `--max-loss` value: `1%` or `0.01`.
pub fn parse_loss(s: &str) -> Result<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| {
        RuntimeError::Usage(format!(
            "--max-loss {s:?}: expected a share like 1% or 0.01"
        ))
    })?;
    if !(0.0..=1.0).contains(&v) {
        return Err(RuntimeError::Usage(format!(
            "--max-loss {s:?}: must be between 0% and 100%"
        )));
    }
    Ok(v)
}

/// Reads `--formats`: comma-separated ggml type names `kiln quantize` can write.
pub fn parse_formats(s: &str) -> Result<Vec<GgmlType>> {
    s.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            crate::quantize::parse_target(f).map_err(|_| {
                RuntimeError::Usage(format!(
                    "--formats: {f:?} is not a format kiln quantize writes (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_k, q5_k, q4_k, q3_k, q2_k)"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(RuntimeError::Usage("--formats names no format".into()))
            } else {
                Ok(v)
            }
        })
}

/// The cache directory for a run: `$KILN_CACHE/tradeoffs` (default `~/.cache/kiln/tradeoffs`).
pub fn cache_dir() -> PathBuf {
    crate::models_dir::cache_root().join("tradeoffs")
}

/// Reads a text or labeled-set file for the run.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_formats_parse() {
        assert_eq!(parse_loss("1%").unwrap(), 0.01);
        assert_eq!(parse_loss("0.02").unwrap(), 0.02);
        assert!(parse_loss("150%").is_err() && parse_loss("abc").is_err());
        assert_eq!(
            parse_formats("q8_0, q4_0").unwrap(),
            vec![GgmlType::Q8_0, GgmlType::Q4_0]
        );
        assert!(parse_formats("q9_9").is_err() && parse_formats(",").is_err());
    }

    #[test]
    fn the_default_labeled_set_parses_with_its_labels() {
        let set = parse_labeled(DEFAULT_EVAL, "intents-dev.tsv").unwrap();
        assert_eq!(set.len(), 50);
        assert_eq!(labels_of(&set).len(), 10);
        assert!(parse_labeled("query\nx\n", "f").is_err());
    }

    #[test]
    fn spread_takes_every_label_of_a_sorted_set() {
        let set = parse_labeled(DEFAULT_EVAL, "intents-dev.tsv").unwrap();
        let ten = spread(&set, 10);
        assert_eq!(labels_of(&ten).len(), 10);
        assert_eq!(spread(&[1, 2, 3], 5), [1, 2, 3]);
    }

    #[test]
    fn speeds_take_the_median_of_the_samples() {
        let s = Speed::from_samples("tg4", 4, vec![1.0, 2.0, 0.5]);
        assert_eq!((s.median_tps, s.min_tps, s.max_tps), (4.0, 2.0, 8.0));
    }
}
