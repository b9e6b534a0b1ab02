//! `kiln bench images`: image preprocessing throughput (decode, EXIF orientation, resize, crop,
//! normalize) per worker-thread count, as the embed job runs it (`image::preprocess_batch`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_models::image::{self, ImageSpec, Limits};
use kiln_runtime::RuntimeError;

type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(clap::Args, Debug)]
pub struct BenchImagesArgs {
    /// Image files, or directories whose JPEG/PNG/WebP files are read (not recursively).
    #[arg(long, short = 'i', required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// The preprocessing: `cope` (224 × 224 bilinear, ImageNet) or `clip:SIZE` (shorter side,
    /// bicubic, centre crop).
    #[arg(long, default_value = "cope")]
    spec: String,
    /// Thread counts to measure, comma-separated (default: 1 up to every core).
    #[arg(long, short = 't', value_delimiter = ',')]
    threads: Vec<usize>,
    /// Passes over the images per thread count (after one warm-up pass).
    #[arg(long, short = 'r', default_value_t = 3)]
    reps: usize,
    /// Each pass preprocesses the images this many times over (a larger batch).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    threads: usize,
    images: usize,
    failed: usize,
    images_per_second: Vec<f64>,
    median_images_per_second: f64,
    /// Decoded source pixels per second, in millions.
    median_megapixels_per_second: f64,
}

fn parse_spec(s: &str) -> Result<ImageSpec> {
    if s == "cope" {
        return Ok(ImageSpec::cope());
    }
    if let Some(size) = s.strip_prefix("clip:")
        && let Ok(n) = size.parse::<u32>()
        && n > 0
    {
        return Ok(ImageSpec::clip(n));
    }
    Err(RuntimeError::Usage(format!(
        "--spec {s}: `cope` or `clip:SIZE` (e.g. clip:224)"
    )))
}

fn is_image(p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png" | "webp"))
}

fn read_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let io = |p: &Path, e: std::io::Error| RuntimeError::Usage(format!("{}: {e}", p.display()));
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_image(f))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(RuntimeError::Usage(
            "no JPEG, PNG or WebP files in --input".into(),
        ));
    }
    files
        .into_iter()
        .map(|f| {
            std::fs::read(&f)
                .map(|b| (f.clone(), b))
                .map_err(|e| io(&f, e))
        })
        .collect()
}

pub fn bench(args: BenchImagesArgs) -> Result<()> {
    if args.reps == 0 || args.repeat == 0 {
        return Err(RuntimeError::Usage(
            "--reps and --repeat must be at least 1".into(),
        ));
    }
    let spec = parse_spec(&args.spec)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if args.threads.is_empty() {
        (1..=cores).collect()
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        return Err(RuntimeError::Usage("--threads must be at least 1".into()));
    }
    let files = read_inputs(&args.input)?;
    let limits = Limits::default();
    let items: Vec<&[u8]> = (0..args.repeat)
        .flat_map(|_| files.iter().map(|(_, b)| b.as_slice()))
        .collect();
    // The first pass (untimed) names the bad files, which stay in the batch: they cost what it
    // takes to reject them. Pixels are counted from the good files' headers.
    let first = image::preprocess_batch(&items[..files.len()], &spec, &limits);
    let mut pixels = 0u64;
    let mut failed = 0;
    for ((path, bytes), result) in files.iter().zip(&first) {
        match result {
            Ok(_) => {
                let (w, h) = image::dimensions(bytes).unwrap_or((0, 0));
                pixels += u64::from(w) * u64::from(h);
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", path.display());
            }
        }
    }
    let mut rows = Vec::with_capacity(threads.len());
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|e| RuntimeError::Usage(format!("cannot start {t} threads: {e}")))?;
        let pass = || pool.install(|| image::preprocess_batch(&items, &spec, &limits));
        std::hint::black_box(pass());
        let mut rates = Vec::with_capacity(args.reps);
        for _ in 0..args.reps {
            let start = Instant::now();
            std::hint::black_box(pass());
            rates.push(items.len() as f64 / start.elapsed().as_secs_f64());
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        rows.push(Row {
            threads: t,
            images: items.len(),
            failed: failed * args.repeat,
            median_megapixels_per_second: median / items.len() as f64
                * (pixels * args.repeat as u64) as f64
                / 1e6,
            median_images_per_second: median,
            images_per_second: rates,
        });
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("row serializes"));
        }
        return Ok(());
    }
    println!(
        "| spec | threads | images | failed | images/s | per thread | decoded Mpx/s |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &rows {
        let min = r.images_per_second.iter().copied().fold(f64::MAX, f64::min);
        let max = r.images_per_second.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {} | {} | {} | {:.1} (min {min:.1}, max {max:.1}) | {:.1} | {:.1} |",
            args.spec,
            r.threads,
            r.images,
            r.failed,
            r.median_images_per_second,
            r.median_images_per_second / r.threads as f64,
            r.median_megapixels_per_second,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse_spec("cope").unwrap(), ImageSpec::cope());
        assert_eq!(parse_spec("clip:64").unwrap(), ImageSpec::clip(64));
        for bad in ["clip", "clip:0", "clip:x", "vit"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
