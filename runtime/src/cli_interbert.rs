//! `kiln bench interbert`: InterBERT ITM pairs per second on synthetic (caption, regions)
//! pairs. The pair shapes are a fixed formula that `scripts/bench/interbert_torch.py` (the
//! PyTorch reference's side) repeats, so both sides run the same work: pair `i` has `regions`
//! detected regions (plus the global one) and a caption of `8 + (7·i mod 23)` tokens.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kiln_models::interbert::{InterBert, Pair, Regions};
use kiln_quant::GgmlType;

use kiln_runtime::embed::bench::peak_rss_bytes;
use kiln_runtime::{Result, RuntimeError};

#[derive(Args)]
pub struct BenchInterbertArgs {
    /// The model directory (config.json, model.safetensors from scripts/convert/interbert.py).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where to run: cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight format of the layers: f32, f16 or q8_0.
    #[arg(long, default_value = "f32")]
    format: String,
    /// Pairs scored per repetition.
    #[arg(long, default_value_t = 64)]
    pairs: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Detected regions per image (the global region comes on top).
    #[arg(long, default_value_t = 36)]
    regions: usize,
    /// Timed repetitions (after one warm-up batch).
    #[arg(long, short = 'r', default_value_t = 3)]
    reps: usize,
    /// CPU worker threads (default: every core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    model: String,
    device: String,
    format: String,
    threads: usize,
    pairs: usize,
    batch: usize,
    regions: usize,
    caption_tokens: usize,
    reps: usize,
    /// Pairs per second, per repetition.
    pairs_per_second: Vec<f64>,
    median_pairs_per_second: f64,
    peak_rss_mb: Option<f64>,
}

/// Caption length of synthetic pair `i` (also in scripts/bench/interbert_torch.py).
fn caption_len(i: usize) -> usize {
    8 + (7 * i) % 23
}

/// Deterministic synthetic pairs: non-negative sparse features, boxes in a 640 × 480 image.
fn synthetic(
    n: usize,
    regions: usize,
    feature: usize,
    vocab: usize,
) -> Result<Vec<(Vec<u32>, Regions)>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| {
            let t = caption_len(i);
            let mut text = vec![101u32.min(vocab as u32 - 1)];
            text.extend((1..t - 1).map(|_| (next() * (vocab - 1) as f32) as u32 + 1));
            text.push(102u32.min(vocab as u32 - 1));
            let features = (0..regions * feature)
                .map(|_| (next() - 0.5).max(0.0) * 4.0)
                .collect();
            let boxes = (0..regions)
                .map(|_| {
                    let (x, y) = (next() * 400.0, next() * 300.0);
                    [x, y, x + 16.0 + next() * 224.0, y + 16.0 + next() * 164.0]
                })
                .collect();
            Ok((text, Regions::new(features, boxes, 640.0, 480.0)?))
        })
        .collect()
}

pub fn bench(args: BenchInterbertArgs) -> Result<()> {
    crate::cli_llm::set_threads(args.threads)?;
    if args.pairs == 0 || args.batch == 0 || args.reps == 0 || args.regions == 0 {
        return Err(RuntimeError::Usage(
            "--pairs, --batch, --reps and --regions must be at least 1".into(),
        ));
    }
    let format = GgmlType::from_name(&args.format).ok_or_else(|| {
        RuntimeError::Usage(format!("--format {}: f32, f16 or q8_0", args.format))
    })?;
    if !args.model.is_dir() {
        return Err(RuntimeError::Usage(format!(
            "{}: not a model directory",
            args.model.display()
        )));
    }
    let device = crate::cli_embed::device_named(&args.device)?;
    let model = InterBert::load_as(&args.model, &device, format)?;
    let c = model.config();
    let data = synthetic(args.pairs, args.regions, c.v_feature_size, c.vocab_size)?;
    let pairs: Vec<Pair> = data
        .iter()
        .map(|(text, image)| Pair { text, image })
        .collect();
    model.itm_scores(&pairs[..args.batch.min(pairs.len())], args.batch)?;
    let mut rates = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let t = Instant::now();
        std::hint::black_box(model.itm_scores(&pairs, args.batch)?);
        rates.push(pairs.len() as f64 / t.elapsed().as_secs_f64());
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let report = Report {
        model: args.model.display().to_string(),
        device: args.device.clone(),
        format: format.name().to_string(),
        threads: args.threads.unwrap_or_else(rayon::current_num_threads),
        pairs: args.pairs,
        batch: args.batch,
        regions: args.regions,
        caption_tokens: (0..args.pairs).map(caption_len).sum(),
        reps: args.reps,
        median_pairs_per_second: sorted[sorted.len() / 2],
        pairs_per_second: rates,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        let spread = |f: fn(&[f64]) -> f64| f(&report.pairs_per_second);
        println!(
            "| model | device | format | threads | pairs | batch | regions | ITM pairs/s |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {} | {} | {} | {}+1 | {:.2} (min {:.2}, max {:.2}) |",
            report.model,
            report.device,
            report.format,
            report.threads,
            report.pairs,
            report.batch,
            report.regions,
            report.median_pairs_per_second,
            spread(|v| v.iter().copied().fold(f64::INFINITY, f64::min)),
            spread(|v| v.iter().copied().fold(0.0, f64::max)),
        );
    }
    Ok(())
}
