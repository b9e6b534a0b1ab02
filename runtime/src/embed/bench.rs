//! `kiln bench embed`: texts/s and tokens/s over a file of texts, with the same batching as the
//! batch job (length-sorted, token budget). Tokenization is counted; reading the file is not.
//! One warm-up pass over the first 256 texts is not counted.

use std::time::Instant;

use super::{Embedder, plan_batches};
use crate::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct EmbedBenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub texts: usize,
    /// Real tokens (special tokens included, padding not).
    pub tokens: usize,
    /// Padded positions the model computed.
    pub padded_tokens: usize,
    pub batches: usize,
    pub batch_tokens: usize,
    pub warmup_texts: usize,
    pub seconds: f64,
    pub texts_per_second: f64,
    pub tokens_per_second: f64,
    /// Peak resident memory of the process (VmHWM), when the OS reports it.
    pub peak_rss_mb: Option<f64>,
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Embeds `texts` once after a warm-up and reports the rates.
pub fn run(
    embedder: &Embedder,
    texts: &[&str],
    device: &str,
    threads: usize,
) -> Result<EmbedBenchReport> {
    let warm = &texts[..texts.len().min(256)];
    embedder.embed(warm)?;

    let t = Instant::now();
    let out = embedder.embed(texts)?;
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(out);

    let lengths: Vec<usize> = texts
        .iter()
        .map(|t| embedder.tokenize(t).map(|e| e.len()))
        .collect::<Result<_>>()?;
    let batches = plan_batches(&lengths, embedder.batch_tokens());
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum();
    let tokens: usize = lengths.iter().sum();
    Ok(EmbedBenchReport {
        model: embedder.name().to_string(),
        device: device.to_string(),
        threads,
        texts: texts.len(),
        tokens,
        padded_tokens: padded,
        batches: batches.len(),
        batch_tokens: embedder.batch_tokens(),
        warmup_texts: warm.len(),
        seconds,
        texts_per_second: texts.len() as f64 / seconds,
        tokens_per_second: tokens as f64 / seconds,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    })
}

impl EmbedBenchReport {
    pub fn render(&self) -> String {
        format!(
            "model {} on {} ({} threads)\n\
             {} texts, {} tokens ({:.1}% padding in {} batches of ≤ {} tokens), warm-up {} texts not counted\n\
             {:.2} s: {:.1} texts/s, {:.0} tokens/s, peak RSS {}\n",
            self.model,
            self.device,
            self.threads,
            self.texts,
            self.tokens,
            100.0 * (self.padded_tokens - self.tokens) as f64 / self.padded_tokens.max(1) as f64,
            self.batches,
            self.batch_tokens,
            self.warmup_texts,
            self.seconds,
            self.texts_per_second,
            self.tokens_per_second,
            self.peak_rss_mb
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "unknown".into()),
        )
    }
}
