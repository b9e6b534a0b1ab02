//! `kiln bench llm`: llama-bench's two tests on Kiln. `pp N`: one batch of N random tokens into an
//! empty cache; `tg N`: N tokens decoded one at a time from an empty cache. A warm-up run of each
//! is not counted; the rows report the mean and standard deviation of tokens/s over repetitions.

use std::time::Instant;

use kiln_models::llama::Output;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Llm;
use crate::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub model: String,
    pub size_bytes: u64,
    pub params: u64,
    pub backend: String,
    pub threads: usize,
    pub test: String,
    pub tokens_per_second: f64,
    pub stddev: f64,
    pub samples_seconds: Vec<f64>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub prompt: usize,
    pub generate: usize,
    pub repetitions: usize,
    pub seed: u64,
}

fn random_tokens(rng: &mut StdRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// Time of one prompt-processing run of `n` tokens.
pub fn time_prompt(llm: &Llm, tokens: &[u32]) -> Result<f64> {
    let n = tokens.len();
    let mut cache = llm.model.new_cache(n);
    let pos: Vec<u32> = (0..n as u32).collect();
    let t = Instant::now();
    let out = llm.model.forward(
        tokens,
        &pos,
        &vec![0; n],
        &mut cache,
        &Output::Logits(vec![n - 1]),
    )?;
    let _ = out.into_data(); // synchronizes
    Ok(t.elapsed().as_secs_f64())
}

/// Time of decoding `tokens` one at a time from an empty cache.
pub fn time_decode(llm: &Llm, tokens: &[u32]) -> Result<f64> {
    let mut cache = llm.model.new_cache(tokens.len());
    let t = Instant::now();
    for (i, &tok) in tokens.iter().enumerate() {
        let out = llm.model.forward(
            &[tok],
            &[i as u32],
            &[0],
            &mut cache,
            &Output::Logits(vec![0]),
        )?;
        let _ = out.into_data();
    }
    Ok(t.elapsed().as_secs_f64())
}

fn stats(n: usize, secs: &[f64]) -> (f64, f64) {
    let rates: Vec<f64> = secs.iter().map(|s| n as f64 / s).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var =
        rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

/// Runs the configured tests; `progress` hears each finished repetition.
pub fn run(
    llm: &Llm,
    cfg: &BenchConfig,
    mut progress: impl FnMut(&str, usize),
) -> Result<Vec<BenchRow>> {
    let vocab = llm.model.config.vocab_size;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let threads = kiln_kernels::cpu::pool::pool().threads();
    let params = llm.model.config.n_params;
    let backend = match kiln_kernels::BackendKind::of(llm.model.device())? {
        kiln_kernels::BackendKind::Flex => {
            format!("CPU ({})", kiln_kernels::cpu::active_isa().name())
        }
        kiln_kernels::BackendKind::Cube => {
            let k = llm.model.kernel;
            format!(
                "GPU (CubeCL, {} arithmetic, mat-vec {:?})",
                k.arithmetic.name(),
                k.reduction
            )
        }
    };
    let model = llm
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut row = |test: String, n: usize, secs: Vec<f64>| {
        let (mean, sd) = stats(n, &secs);
        rows.push(BenchRow {
            model: model.clone(),
            size_bytes: llm.file_bytes,
            params,
            backend: backend.clone(),
            threads,
            test,
            tokens_per_second: mean,
            stddev: sd,
            samples_seconds: secs,
        });
    };
    type Timer = fn(&Llm, &[u32]) -> Result<f64>;
    let tests: [(&str, usize, usize, Timer); 2] = [
        ("pp", cfg.prompt, cfg.prompt, time_prompt),
        // The decode warm-up is short: it only has to touch every weight once.
        ("tg", cfg.generate, cfg.generate.min(16), time_decode),
    ];
    for (kind, n, warm_up, time) in tests {
        if n == 0 {
            continue;
        }
        let name = format!("{kind}{n}");
        time(llm, &random_tokens(&mut rng, warm_up, vocab))?;
        let mut secs = Vec::new();
        for r in 0..cfg.repetitions {
            secs.push(time(llm, &random_tokens(&mut rng, n, vocab))?);
            progress(&name, r + 1);
        }
        row(name, n, secs);
    }
    Ok(rows)
}

/// llama-bench's markdown table.
pub fn render(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} MiB | {:.2} M | {} | {} | {} | {:.2} ± {:.2} |\n",
            r.model,
            r.size_bytes as f64 / (1 << 20) as f64,
            r.params as f64 / 1e6,
            r.backend,
            r.threads,
            r.test,
            r.tokens_per_second,
            r.stddev
        ));
    }
    out
}
