//! Measuring one (device, format) cell in this process.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use kiln_models::llama::Output;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::metrics::{TextAccumulator, intent_agreement, log_softmax};
use super::{CellSpec, CellStatus, ClassifyMeasure, LlmCell, Speed};
use crate::llm::classify::{Classifier, DEFAULT_TEMPLATE};
use crate::llm::{Llm, bench, floats};
use crate::{Result, RuntimeError};

/// The reference's next-token log-probs over the text (f32, little-endian, row after row).
const REFERENCE_LOGPROBS: &str = "reference-logprobs.f32";

/// Resets the process's resident-set peak (Linux: `/proc/self/clear_refs`, value 5), so that
/// `VmHWM` covers what follows. Elsewhere the peak is the process's since it started.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Resident memory now (Linux `VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory since the last [`reset_peak_rss`] (Linux `VmHWM`).
pub use crate::embed::bench::peak_rss_bytes;

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Measures `spec` in this process. Errors are the cell's failure, not the run's.
pub fn measure(spec: &CellSpec, progress: &mut dyn FnMut(&str)) -> Result<LlmCell> {
    let t_cell = Instant::now();
    reset_peak_rss();
    let devices = if spec.device == "cpu" {
        crate::Devices::cpu_only()
    } else {
        crate::probe_devices()
    };
    progress("loading");
    let t = Instant::now();
    let loaded = crate::llm::load_planned(&spec.model, &spec.device, &devices, None)?;
    let llm = loaded.llm;
    let device = llm.model.device().clone();
    let sync = || {
        device
            .sync()
            .map_err(|e| RuntimeError::Readback(format!("{e:?}")))
    };
    sync()?;
    let load_seconds = t.elapsed().as_secs_f64();
    let host_rss_after_load_bytes = rss_bytes();
    let device_mem = || kiln_kernels::device_memory(&device);
    let device_in_use_after_load_bytes = device_mem().map(|m| m.0);
    let mut reserved_peak = device_mem().map(|m| m.1);
    let mut sample_device = || {
        if let Some((_, r)) = device_mem() {
            reserved_peak = Some(reserved_peak.unwrap_or(0).max(r));
        }
    };
    let kernels = match &loaded.tuned {
        Some(t) => format!(
            "GPU (CubeCL), {} arithmetic, mat-vec {:?}",
            llm.model.kernel.arithmetic.name(),
            t.reduction
        ),
        None => format!("CPU ({})", kiln_kernels::cpu::active_isa().name()),
    };

    // Speed: llama-bench's pp and tg, one warm-up run each.
    let vocab = llm.model.config.vocab_size;
    let mut rng = StdRng::seed_from_u64(spec.settings.seed);
    let mut random =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab as u32)).collect() };
    let s = &spec.settings;
    let mut speed = |test: &str,
                     n: usize,
                     warm: usize,
                     time: fn(&Llm, &[u32]) -> Result<f64>,
                     progress: &mut dyn FnMut(&str)|
     -> Result<Option<Speed>> {
        if n == 0 {
            return Ok(None);
        }
        progress(&format!("{test}{n} warm-up"));
        time(&llm, &random(warm))?;
        let mut secs = Vec::new();
        for r in 0..s.repetitions {
            progress(&format!("{test}{n} {}/{}", r + 1, s.repetitions));
            secs.push(time(&llm, &random(n))?);
        }
        Ok(Some(Speed::from_samples(&format!("{test}{n}"), n, secs)))
    };
    let pp = speed(
        "pp",
        s.prompt_tokens,
        s.prompt_tokens,
        bench::time_prompt,
        progress,
    )?;
    let tg = speed(
        "tg",
        s.generate_tokens,
        s.generate_tokens.min(16),
        bench::time_decode,
        progress,
    )?;
    sample_device();

    // Classification: single-query latency, then batched throughput.
    let classify = if spec.eval.is_empty() {
        None
    } else {
        let c = Classifier::generative(&llm, spec.labels.clone(), DEFAULT_TEMPLATE, s.chat)?;
        progress("classify warm-up");
        c.classify(&spec.eval[0].query)?;
        let mut latencies = Vec::new();
        let mut predictions = Vec::new();
        for (i, q) in spec.eval.iter().enumerate() {
            if i % 8 == 0 {
                progress(&format!("classify {}/{}", i + 1, spec.eval.len()));
            }
            let r = c.classify(&q.query)?;
            latencies.push(r.latency_ms);
            predictions.push(r.label);
        }
        let queries: Vec<&str> = spec.eval.iter().map(|q| q.query.as_str()).collect();
        progress(&format!("classify in batches of {}", s.batch.max(1)));
        let t = Instant::now();
        for chunk in queries.chunks(s.batch.max(1)) {
            for r in c.classify_batch(chunk)? {
                r?;
            }
        }
        let batched_qps = queries.len() as f64 / t.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let expected: Vec<String> = spec.eval.iter().map(|q| q.label.clone()).collect();
        let reference = match &spec.reference {
            Some(dir) => Some(reference_predictions(dir)?),
            None => None,
        };
        let a = intent_agreement(&predictions, &expected, reference.as_deref());
        Some(ClassifyMeasure {
            queries: spec.eval.len(),
            batch: s.batch.max(1),
            batched_queries_per_second: batched_qps,
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p95_ms: percentile(&latencies, 0.95),
            accuracy: a.accuracy,
            agreement: a.agreement,
            predictions,
        })
    };
    sample_device();

    // Accuracy over the text.
    progress("text");
    let text = text_metrics(&llm, spec, progress)?;
    sample_device();

    Ok(LlmCell {
        device: spec.device.clone(),
        device_name: loaded.device.name.clone(),
        format: spec.format.clone(),
        status: CellStatus::Ok,
        note: None,
        is_reference: spec.reference.is_none(),
        file_bytes: spec.file_bytes,
        weight_rmse: spec.weight_rmse,
        kernels,
        threads: s.threads,
        load_seconds,
        host_rss_after_load_bytes,
        host_peak_rss_bytes: peak_rss_bytes(),
        device_in_use_after_load_bytes,
        device_reserved_peak_bytes: reserved_peak,
        pp,
        tg,
        classify,
        text: Some(text),
        seconds: t_cell.elapsed().as_secs_f64(),
    })
}

fn reference_predictions(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("cell.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let rec: super::CellRecord = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))?;
    rec.cell.classify.map(|c| c.predictions).ok_or_else(|| {
        RuntimeError::Usage(format!(
            "{}: the reference has no predictions",
            path.display()
        ))
    })
}

/// Tokens of the evaluation text, cut to whole windows of `context` (at most `text_tokens`).
pub fn text_windows(
    llm: &Llm,
    text: &str,
    text_tokens: usize,
    context: usize,
) -> Result<Vec<Vec<u32>>> {
    let ids = llm.tokenizer.encode(text, false, false)?;
    let ctx = context.min(llm.model.config.context_length).max(4);
    let take = ids.len().min(text_tokens);
    let windows: Vec<Vec<u32>> = ids[..take].chunks_exact(ctx).map(<[u32]>::to_vec).collect();
    if windows.is_empty() {
        return Err(RuntimeError::Usage(format!(
            "the evaluation text has {} tokens; one window needs {ctx}",
            ids.len()
        )));
    }
    Ok(windows)
}

/// Perplexity, and KL / top-1 agreement against the reference's log-probs (which the
/// reference cell writes).
fn text_metrics(
    llm: &Llm,
    spec: &CellSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<super::metrics::TextMetrics> {
    let s = &spec.settings;
    let windows = text_windows(llm, &spec.text, s.text_tokens, s.context)?;
    let vocab = llm.model.config.vocab_size;
    let mut acc = TextAccumulator::default();
    let ref_path = spec.reference.as_ref().map(|d| d.join(REFERENCE_LOGPROBS));
    let mut reader = match &ref_path {
        Some(p) => Some(std::io::BufReader::new(
            std::fs::File::open(p).map_err(io(p))?,
        )),
        None => None,
    };
    let own_path = spec.dir.join(REFERENCE_LOGPROBS);
    let mut writer = if reader.is_none() {
        std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
        Some(std::io::BufWriter::new(
            std::fs::File::create(&own_path).map_err(io(&own_path))?,
        ))
    } else {
        None
    };
    let mut ref_row = vec![0f32; vocab];
    let mut bytes = vec![0u8; vocab * 4];
    let mut tokens = 0;
    for (w, win) in windows.iter().enumerate() {
        progress(&format!("text window {}/{}", w + 1, windows.len()));
        let n = win.len();
        tokens += n;
        let first = n / 2;
        let rows: Vec<usize> = (first..n - 1).collect();
        let mut cache = llm.model.new_cache(n);
        let pos: Vec<u32> = (0..n as u32).collect();
        let logits = floats(llm.model.forward(
            win,
            &pos,
            &vec![0; n],
            &mut cache,
            &Output::Logits(rows.clone()),
        )?)?;
        for (r, &row) in rows.iter().enumerate() {
            let lp = log_softmax(&logits[r * vocab..(r + 1) * vocab]);
            let next = win[row + 1];
            if let Some(rd) = reader.as_mut() {
                rd.read_exact(&mut bytes).map_err(|e| {
                    RuntimeError::Usage(format!(
                        "the reference's log-probs ({}) are shorter than this text: {e}",
                        ref_path
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string())
                    ))
                })?;
                for (v, b) in ref_row.iter_mut().zip(bytes.chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                acc.add(&lp, next, Some(&ref_row));
            } else if let Some(wr) = writer.as_mut() {
                for (b, v) in bytes.chunks_exact_mut(4).zip(&lp) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
                wr.write_all(&bytes).map_err(io(&own_path))?;
                acc.add(&lp, next, None);
            }
        }
    }
    if let Some(mut wr) = writer {
        wr.flush().map_err(io(&own_path))?;
    }
    Ok(acc.finish(tokens))
}
