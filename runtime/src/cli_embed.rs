//! `kiln embed` and `kiln bench embed`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use kiln_models::cope::Domain;
use kiln_runtime::embed::input::{Fields, Reader, Row};
use kiln_runtime::embed::job::{
    self, DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_ROWS_IMAGES, JobConfig, Progress,
};
use kiln_runtime::embed::{Embedder, bench};
use kiln_runtime::{Result, RuntimeError, probe_devices};

#[derive(Args)]
pub struct EmbedModelArgs {
    /// The model directory (sentence-transformers layout: config.json, model.safetensors,
    /// tokenizer.json, modules.json, 1_Pooling/; or a COPE directory from
    /// scripts/convert/cope.py).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where to run: cpu, wgpu[:N] or cuda[:N] (`kiln devices` lists them).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Padded tokens per batch (rows × longest row) [default: 2048]; for COPE, frames per
    /// batch [default: 16].
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// CPU worker threads (default: every core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

impl EmbedModelArgs {
    fn load(&self) -> Result<Embedder> {
        crate::cli_llm::set_threads(self.threads)?;
        if self.batch_tokens == Some(0) {
            return Err(RuntimeError::Usage(
                "--batch-tokens must be at least 1".into(),
            ));
        }
        if !self.model.is_dir() {
            return Err(RuntimeError::Usage(format!(
                "{}: not a model directory",
                self.model.display()
            )));
        }
        let device = device_named(&self.device)?;
        let embedder = Embedder::load(&self.model, &device)?;
        Ok(match self.batch_tokens {
            Some(n) => embedder.with_batch_tokens(n),
            None => embedder,
        })
    }

    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(rayon::current_num_threads)
    }
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: EmbedModelArgs,
    /// Input file: JSONL, CSV (with a header) or Parquet.
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output: FILE.parquet (id + embedding) or FILE.npy (+ FILE.ids.jsonl).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// The field holding the text (for COPE product pages, the title).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Multimodal models: the field holding image paths — one for a product page; a clip's
    /// frames as a JSON array or one string of `|`-separated paths (sampled to the model's
    /// clip length at segment centres). Relative paths are under the input file's directory.
    /// Default for COPE: "image" (product) or "frames" (video, live).
    #[arg(long)]
    image_field: Option<String>,
    /// Multimodal models: what the records are (COPE: product, video or live).
    #[arg(long)]
    domain: Option<String>,
    /// The field holding the row id (unique).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
    /// Exit with status 1 when any record failed.
    #[arg(long)]
    strict: bool,
    /// Records per committed chunk (what a kill can lose) [default: 4096; 64 with images].
    #[arg(long, hide = true)]
    chunk_rows: Option<usize>,
}

/// A progress bar on a terminal; otherwise a log line every 10 seconds.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    start: Instant,
    first: Option<u64>,
}

impl Reporter {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:32}] {pos}/{len} rows {per_sec} eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            last_log: Instant::now(),
            start: Instant::now(),
            first: None,
        }
    }

    fn update(&mut self, p: Progress) {
        let first = *self.first.get_or_insert(p.done);
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            if bar.position() == 0 && p.done > 0 {
                bar.reset_eta();
            }
            bar.set_position(p.done);
        } else if self.last_log.elapsed() >= Duration::from_secs(10) || p.done == p.total {
            self.last_log = Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            let rate = (p.done - first) as f64 / secs;
            let eta = if rate > 0.0 {
                format!("{:.0} s", (p.total.saturating_sub(p.done)) as f64 / rate)
            } else {
                "?".into()
            };
            eprintln!(
                "kiln embed: {}/{} rows ({:.1}%), {rate:.1} rows/s, eta {eta}",
                p.done,
                p.total,
                100.0 * p.done as f64 / p.total.max(1) as f64
            );
        }
    }

    fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("kiln embed: {line}")),
            None => eprintln!("kiln embed: {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    if !args.input.is_file() {
        return Err(RuntimeError::Usage(format!(
            "{}: no such file",
            args.input.display()
        )));
    }
    // Check the output name before loading the model.
    job::JobPaths::for_output(&args.output)?;
    let mut embedder = args.model.load()?;
    if let Some(d) = &args.domain {
        let domain = Domain::parse(d).map_err(|e| RuntimeError::Usage(e.to_string()))?;
        embedder = embedder.with_domain(domain)?;
    }
    let images = match (&args.image_field, embedder.domain()) {
        (Some(_), None) => {
            return Err(RuntimeError::Usage(format!(
                "--image-field: {} is a text model",
                embedder.name()
            )));
        }
        (field, Some(domain)) => Some(field.clone().unwrap_or_else(|| {
            match domain {
                Domain::Product => "image",
                Domain::Video | Domain::Live => "frames",
            }
            .to_string()
        })),
        (None, None) => None,
    };
    let chunk_rows = args.chunk_rows.unwrap_or(if images.is_some() {
        DEFAULT_CHUNK_ROWS_IMAGES
    } else {
        DEFAULT_CHUNK_ROWS
    });
    let fields = Fields {
        id: Some(args.id_field.clone()),
        text: args.text_field.clone(),
        images,
        text_required: embedder.takes_text(),
    };
    let embedder = Arc::new(embedder);
    let cfg = JobConfig {
        input: args.input.clone(),
        output: args.output.clone(),
        fields,
        overwrite: args.overwrite,
        chunk_rows,
    };
    let reporter = std::cell::RefCell::new(Reporter::new());
    let summary = job::run(
        &embedder,
        &cfg,
        |p| reporter.borrow_mut().update(p),
        |line| reporter.borrow().log(line),
    );
    reporter.borrow().finish();
    let summary = summary?;
    eprintln!(
        "kiln embed: {} rows: {} embedded, {} failed{}; {:.1} s, {:.1} rows/s; padding {:.1}% of {} computed positions{}",
        summary.rows,
        summary.embedded,
        summary.failed,
        if summary.resumed_rows > 0 {
            format!(" ({} resumed from an earlier run)", summary.resumed_rows)
        } else {
            String::new()
        },
        summary.seconds,
        (summary.rows - summary.resumed_rows) as f64 / summary.seconds.max(1e-9),
        100.0 * summary.padding_waste(),
        summary.padded_tokens,
        summary
            .errors
            .as_ref()
            .map(|p| format!("; failed records in {}", p.display()))
            .unwrap_or_default(),
    );
    eprintln!("kiln embed: wrote {}", summary.output.display());
    if args.strict && summary.failed > 0 {
        return Err(RuntimeError::Usage(format!(
            "{} records failed (--strict)",
            summary.failed
        )));
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchEmbedArgs {
    #[command(flatten)]
    model: EmbedModelArgs,
    /// Texts: JSONL, CSV or Parquet (the text field), or plain text with one text per line.
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// The field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn read_texts(path: &std::path::Path, text_field: &str) -> Result<Vec<String>> {
    if path.extension().and_then(|e| e.to_str()) == Some("txt") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))?;
        return Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect());
    }
    let mut reader = Reader::open(path, Fields::text(None, text_field.to_string()))?;
    let mut texts = Vec::new();
    while let Some(row) = reader.next_row()? {
        match row {
            Row::Ok { text, .. } => texts.push(text),
            Row::Bad { line, reason, .. } => {
                return Err(RuntimeError::Usage(format!(
                    "{} line {line}: {reason}",
                    path.display()
                )));
            }
        }
    }
    Ok(texts)
}

pub fn bench(args: BenchEmbedArgs) -> Result<()> {
    let embedder = args.model.load()?;
    let texts = read_texts(&args.input, &args.text_field)?;
    if texts.is_empty() {
        return Err(RuntimeError::Usage(format!(
            "{}: no texts",
            args.input.display()
        )));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let report = bench::run(&embedder, &refs, &args.model.device, args.model.threads())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// The Burn device for a `--device` flag; the CPU needs no probing (probing wgpu can print
/// driver noise).
pub(crate) fn device_named(name: &str) -> Result<burn::tensor::Device> {
    if name == "cpu" {
        Ok(burn::tensor::Device::flex())
    } else {
        probe_devices().find(name)?.burn_device()
    }
}
