//! `kiln recommend` (top-k items per user from a MambaRec model) and `kiln bench mambarec`
//! (load and full-forward time, the side Kiln runs of `scripts/bench/mambarec_torch.py`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kiln_models::mambarec::MambaRec;

use kiln_runtime::embed::bench::peak_rss_bytes;
use kiln_runtime::{Result, RuntimeError};

#[derive(Args)]
pub struct RecommendArgs {
    /// The model directory (config.json, model.safetensors, interactions.tsv from
    /// scripts/convert/mambarec.py).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Users to recommend for: ids and ranges, comma-separated (`3,10-19`); default every user.
    #[arg(long)]
    users: Option<String>,
    /// A file of user ids, one per line (instead of --users).
    #[arg(long, conflicts_with = "users")]
    users_file: Option<PathBuf>,
    /// Items per user.
    #[arg(long, short = 'k', default_value_t = 20)]
    k: usize,
    /// Where to run the dense parts: cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write JSONL here (one line per user: user, items, scores) instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// CPU worker threads (default: every core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

/// `3,10-19` → [3, 10, …, 19].
fn parse_users(spec: &str) -> Result<Vec<usize>> {
    let bad =
        |s: &str| RuntimeError::Usage(format!("--users: {s:?} is not a user id or a range a-b"));
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (
                a.trim().parse().map_err(|_| bad(part))?,
                b.trim().parse().map_err(|_| bad(part))?,
            );
            if a > b {
                return Err(bad(part));
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().map_err(|_| bad(part))?);
        }
    }
    if out.is_empty() {
        return Err(RuntimeError::Usage("--users: no user ids".into()));
    }
    Ok(out)
}

fn load(
    model: &std::path::Path,
    device: &str,
) -> Result<(MambaRec, kiln_models::mambarec::LoadTimes)> {
    if !model.is_dir() {
        return Err(RuntimeError::Usage(format!(
            "{}: not a model directory",
            model.display()
        )));
    }
    let device = crate::cli_embed::device_named(device)?;
    Ok(MambaRec::load_timed(model, &device)?)
}

pub fn recommend(args: RecommendArgs) -> Result<()> {
    crate::cli_llm::set_threads(args.threads)?;
    if args.k == 0 {
        return Err(RuntimeError::Usage("-k must be at least 1".into()));
    }
    let users = match (&args.users, &args.users_file) {
        (Some(spec), _) => Some(parse_users(spec)?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Some(parse_users(&text.lines().collect::<Vec<_>>().join(","))?)
        }
        (None, None) => None,
    };
    let (model, _) = load(&args.model, &args.device)?;
    let n_users = model.config().n_users;
    let users = users.unwrap_or_else(|| (0..n_users).collect());
    if let Some(u) = users.iter().find(|&&u| u >= n_users) {
        return Err(RuntimeError::Usage(format!(
            "user {u}: the model has users 0..{n_users}"
        )));
    }
    let emb = model.forward()?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |source| RuntimeError::Io {
                path: p.display().to_string(),
                source,
            },
        )?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let bar = (args.output.is_some() && users.len() > 1024).then(|| {
        let b = indicatif::ProgressBar::new(users.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} users {eta}")
                .expect("a valid template"),
        );
        b
    });
    let io = |e: std::io::Error| RuntimeError::Io {
        path: args
            .output
            .as_ref()
            .map_or("stdout".into(), |p| p.display().to_string()),
        source: e,
    };
    for chunk in users.chunks(1024) {
        let recs = model.recommend(&emb, chunk, args.k)?;
        for (&u, rec) in chunk.iter().zip(recs) {
            let line = serde_json::json!({
                "user": u,
                "items": rec.iter().map(|r| r.0).collect::<Vec<_>>(),
                "scores": rec.iter().map(|r| r.1).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}").map_err(io)?;
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    out.flush().map_err(io)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchMambaRecArgs {
    /// The model directory.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where to run the dense parts: cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed forward passes (after one warm-up).
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
    threads: usize,
    users: usize,
    items: usize,
    /// Reading and checking the weights, seconds.
    load_read_s: f64,
    /// Building the user–item and kNN graphs, seconds.
    load_graphs_s: f64,
    /// Full forward (every user's and item's final embedding), seconds per repetition.
    forward_s: Vec<f64>,
    median_forward_s: f64,
    peak_rss_mb: Option<f64>,
}

pub fn bench(args: BenchMambaRecArgs) -> Result<()> {
    crate::cli_llm::set_threads(args.threads)?;
    if args.reps == 0 {
        return Err(RuntimeError::Usage("--reps must be at least 1".into()));
    }
    let (model, times) = load(&args.model, &args.device)?;
    std::hint::black_box(model.forward()?);
    let mut forward_s = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let t = Instant::now();
        std::hint::black_box(model.forward()?);
        forward_s.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = forward_s.clone();
    sorted.sort_by(f64::total_cmp);
    let c = model.config();
    let report = Report {
        model: args.model.display().to_string(),
        device: args.device.clone(),
        threads: args.threads.unwrap_or_else(rayon::current_num_threads),
        users: c.n_users,
        items: c.n_items,
        load_read_s: times.read,
        load_graphs_s: times.graphs,
        median_forward_s: sorted[sorted.len() / 2],
        forward_s,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        let min = sorted[0];
        let max = sorted[sorted.len() - 1];
        println!(
            "| model | device | threads | users | items | load (read + graphs) s | forward s |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {} | {} | {:.2} + {:.2} | {:.4} (min {:.4}, max {:.4}) |",
            report.model,
            report.device,
            report.threads,
            report.users,
            report.items,
            report.load_read_s,
            report.load_graphs_s,
            report.median_forward_s,
            min,
            max,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_users;

    #[test]
    fn user_lists_and_ranges() {
        assert_eq!(parse_users("3, 10-12,0").unwrap(), vec![3, 10, 11, 12, 0]);
        assert!(parse_users("5-2").is_err());
        assert!(parse_users("x").is_err());
        assert!(parse_users(" , ").is_err());
    }
}
