//! `kiln bench cope`: COPE product-page embeddings per second. The pages are a fixed formula
//! that `scripts/bench/cope_torch.py` (the PyTorch reference's side) repeats, so both sides
//! run the same work: page `i` has title `TITLES[i mod 6]` and a synthetic image whose
//! normalized value at `(c, y, x)` is `((i + 3c + 5y + 7x) mod 256) / 255 · 4 − 2`. Titles
//! are tokenized inside the timing; image decoding and resizing are not (on either side).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kiln_models::cope::Cope;
use kiln_quant::GgmlType;

use kiln_runtime::embed::bench::peak_rss_bytes;
use kiln_runtime::{Result, RuntimeError};

/// The titles of `scripts/fixtures/cope.py` (`TITLES`), which the PyTorch side reads.
const TITLES: [&str; 6] = [
    "2023新款女士防水跑步鞋 透气轻便 黑色 38码",
    "Apple iPhone 15 Pro Max 256GB 原色钛金属",
    "空",
    "儿童益智积木玩具3-6岁男孩女孩拼装大颗粒早教礼物套装生日礼物超值大礼包包邮送收纳盒",
    "ＵＮＩＱＬＯ 优衣库 男装 圆领T恤(短袖) 💯 正品",
    "Laufschuhe Damen wasserdicht – GORE-TEX®",
];

#[derive(Args)]
pub struct BenchCopeArgs {
    /// The model directory (config.json, model.safetensors, tokenizer.json from
    /// scripts/convert/cope.py).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where to run: cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight format of the dense layers: f32, f16 or q8_0.
    #[arg(long, default_value = "f32")]
    format: String,
    /// Product pages embedded per repetition.
    #[arg(long, default_value_t = 32)]
    pages: usize,
    /// Pages per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
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
    pages: usize,
    batch: usize,
    reps: usize,
    /// Product pages per second, per repetition.
    pages_per_second: Vec<f64>,
    median_pages_per_second: f64,
    peak_rss_mb: Option<f64>,
}

/// Page `i`'s synthetic image (`[3, size, size]`, already normalized).
fn image(i: usize, size: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let q = (i + 3 * c + 5 * y + 7 * x) % 256;
                v.push(q as f32 / 255.0 * 4.0 - 2.0);
            }
        }
    }
    v
}

pub fn bench(args: BenchCopeArgs) -> Result<()> {
    crate::cli_llm::set_threads(args.threads)?;
    if args.pages == 0 || args.batch == 0 || args.reps == 0 {
        return Err(RuntimeError::Usage(
            "--pages, --batch and --reps must be at least 1".into(),
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
    let model = Cope::load_as(&args.model, &device, format)?;
    let size = model.config().vision.image_size;
    let titles: Vec<&str> = (0..args.pages).map(|i| TITLES[i % TITLES.len()]).collect();
    let images: Vec<Vec<f32>> = (0..args.pages).map(|i| image(i, size)).collect();
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let run =
        |range: std::ops::Range<usize>| model.embed_products(&titles[range.clone()], &refs[range]);
    run(0..args.batch.min(args.pages))?;
    let mut rates = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let t = Instant::now();
        for s in (0..args.pages).step_by(args.batch) {
            std::hint::black_box(run(s..(s + args.batch).min(args.pages))?);
        }
        rates.push(args.pages as f64 / t.elapsed().as_secs_f64());
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let report = Report {
        model: args.model.display().to_string(),
        device: args.device.clone(),
        format: format.name().to_string(),
        threads: args.threads.unwrap_or_else(rayon::current_num_threads),
        pages: args.pages,
        batch: args.batch,
        reps: args.reps,
        median_pages_per_second: sorted[sorted.len() / 2],
        pages_per_second: rates,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        let min = report
            .pages_per_second
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = report.pages_per_second.iter().copied().fold(0.0, f64::max);
        println!(
            "| model | device | format | threads | pages | batch | product pages/s |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {} | {} | {} | {:.2} (min {min:.2}, max {max:.2}) |",
            report.model,
            report.device,
            report.format,
            report.threads,
            report.pages,
            report.batch,
            report.median_pages_per_second,
        );
    }
    Ok(())
}
