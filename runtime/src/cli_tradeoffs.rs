//! `kiln tradeoffs`: the per-device quantization trade-off report.
//!
//! Each cell runs in a child process (`kiln tradeoffs-cell`, hidden): its peak memory is its
//! own, the device allocator starts empty, and a crash stays in its cell. The child reports
//! progress on stderr lines starting with `kiln-progress: `, which the parent shows in its
//! progress bar.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_runtime::tradeoffs::{
    self, CellSpec, CellStatus, Event, LlmCell, LlmRun, LlmSettings, embed, report,
};
use kiln_runtime::{Result, RuntimeError};

const PROGRESS: &str = "kiln-progress: ";

#[derive(Args)]
pub struct TradeoffsArgs {
    /// A GGUF model (LLM), or a BERT-family model directory (embeddings).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Formats to compare, comma-separated. LLM default: f16,q8_0,q6_k,q5_k,q4_k,q4_1,q4_0;
    /// embeddings: f32,f16,q8_0.
    #[arg(long)]
    formats: Option<String>,
    /// `all`, or devices comma-separated (cpu,wgpu:0,…).
    #[arg(long, default_value = "all")]
    devices: String,
    /// Labeled queries (TSV with `label` and `query` columns, or JSONL); default: Kiln's
    /// built-in e-commerce set (data/eval/intents-dev.tsv).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Text for perplexity/KL (LLM), or the corpus to embed (embeddings): .txt, or JSONL with
    /// a `text` field; default: the built-in 500-product sample catalog.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Use N of the labeled queries, evenly spaced through the set (slow devices).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Use the first N texts of the corpus (embeddings, slow devices).
    #[arg(long)]
    corpus_limit: Option<usize>,
    /// Largest accuracy loss accepted for the recommendation: top-1 disagreement (LLM) or
    /// 1 − mean cosine (embeddings); `1%` or `0.01`.
    #[arg(long, default_value = "1%")]
    max_loss: String,
    /// Where report.json, report.md and the plots go.
    #[arg(long)]
    out: PathBuf,
    /// pp test: prompt tokens.
    #[arg(short = 'p', default_value_t = 512)]
    prompt: usize,
    /// tg test: generated tokens.
    #[arg(short = 'n', default_value_t = 128)]
    generate: usize,
    /// Repetitions of each LLM speed test, after one warm-up run (embeddings: three passes over
    /// the corpus after a warm-up).
    #[arg(short = 'r', default_value_t = 5)]
    repetitions: usize,
    /// Tokens of the text read for accuracy.
    #[arg(long, default_value_t = 1024)]
    text_tokens: usize,
    /// Context window for the text (the second half of each window is scored).
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Queries per batch for classification throughput.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Labels, one per line (default: the built-in set's labels, or the eval set's in order of
    /// appearance).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Classify with the model's chat template (the prompt as the user's turn).
    #[arg(long)]
    chat: bool,
    /// Measure every cell again instead of reusing results kept from an earlier run.
    #[arg(long)]
    fresh: bool,
    /// CPU threads (default: every core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Measure every cell in this process (memory numbers then include earlier cells).
    #[arg(long, hide = true)]
    in_process: bool,
}

/// `kiln tradeoffs-cell KIND SPEC`: one cell, in a child process.
#[derive(Args)]
pub struct CellArgs {
    kind: String,
    spec: PathBuf,
}

fn progress_bar(total: usize) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:28}] {pos}/{len} cells · {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(250));
        b
    })
}

/// Runs `kiln tradeoffs-cell` on a spec file; relays its progress lines to `on_progress`.
fn run_child(kind: &str, spec_path: &Path, on_progress: &dyn Fn(&str)) -> Result<()> {
    let exe = std::env::current_exe().map_err(|source| RuntimeError::Io {
        path: "current executable".into(),
        source,
    })?;
    let mut child = Command::new(exe)
        .arg("tradeoffs-cell")
        .arg(kind)
        .arg(spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Io {
            path: "kiln tradeoffs-cell".into(),
            source,
        })?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if let Some(p) = line.strip_prefix(PROGRESS) {
                on_progress(p);
            } else if !line.contains("XDG_RUNTIME_DIR") {
                tail.push(line);
                if tail.len() > 12 {
                    tail.remove(0);
                }
            }
        }
    }
    let status = child.wait().map_err(|source| RuntimeError::Io {
        path: "kiln tradeoffs-cell".into(),
        source,
    })?;
    if !status.success() {
        return Err(RuntimeError::Usage(format!(
            "the cell's process ended with {status}: {}",
            tail.join(" / ")
        )));
    }
    Ok(())
}

fn result_path(dir: &Path) -> PathBuf {
    dir.join("child-result.json")
}

/// The hidden child command.
pub fn cell(args: CellArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec).map_err(|source| RuntimeError::Io {
        path: args.spec.display().to_string(),
        source,
    })?;
    let bad = |e: serde_json::Error| RuntimeError::Usage(format!("{}: {e}", args.spec.display()));
    let mut progress = |m: &str| eprintln!("{PROGRESS}{m}");
    match args.kind.as_str() {
        "llm" => {
            let spec: CellSpec = serde_json::from_str(&text).map_err(bad)?;
            crate::cli_llm::set_threads(Some(spec.settings.threads))?;
            let cell = tradeoffs::llm_cell::measure(&spec, &mut progress)?;
            write_json(&result_path(&spec.dir), &cell)
        }
        "embed" => {
            let spec: embed::EmbedCellSpec = serde_json::from_str(&text).map_err(bad)?;
            crate::cli_llm::set_threads(Some(spec.threads))?;
            let cell = embed::measure(&spec, &mut progress)?;
            write_json(&result_path(&spec.dir), &cell)
        }
        other => Err(RuntimeError::Usage(format!("unknown cell kind {other:?}"))),
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|source| RuntimeError::Io {
            path: d.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, serde_json::to_string_pretty(v).expect("serializes")).map_err(|source| {
        RuntimeError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))
}

/// Spawns a child for a spec and reads back its result.
fn child_runner<S: serde::Serialize, C: serde::de::DeserializeOwned>(
    kind: &str,
    spec: &S,
    dir: &Path,
    on_progress: &dyn Fn(&str),
) -> Result<C> {
    let spec_path = dir.join("spec.json");
    write_json(&spec_path, spec)?;
    let result = result_path(dir);
    let _ = std::fs::remove_file(&result);
    run_child(kind, &spec_path, on_progress)?;
    let cell = read_json(&result)?;
    let _ = std::fs::remove_file(&result);
    Ok(cell)
}

/// Shows what a cell is doing: on the bar, or without a terminal as a line at most every 30 s
/// (a slow device's cell can take many minutes).
fn status(bar: Option<&ProgressBar>, label: &str, m: &str, last: &std::cell::Cell<Instant>) {
    match bar {
        Some(b) => b.set_message(format!("{label} {m}")),
        None if last.get().elapsed().as_secs() >= 30 => {
            last.set(Instant::now());
            eprintln!("kiln:   {label} {m}");
        }
        None => {}
    }
}

/// The recommendations on stdout, the files written on stderr.
fn announce<'a>(
    recs: impl Iterator<Item = (&'a str, Option<&'a kiln_runtime::plan::Recommendation>)>,
    files: &[PathBuf],
    cells: usize,
    started: Instant,
) {
    for (device, rec) in recs {
        match rec {
            Some(r) => println!("{device}: {}", r.reason),
            None => println!("{device}: no recommendation (nothing measured)"),
        }
    }
    eprintln!(
        "kiln: {cells} cells in {:.0} s; wrote {}",
        started.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Who cells belong to and how they are summed up, for [`reporter`].
trait CellLine {
    fn device(&self) -> &str;
    fn format(&self) -> &str;
}

impl CellLine for LlmCell {
    fn device(&self) -> &str {
        &self.device
    }
    fn format(&self) -> &str {
        &self.format
    }
}

impl CellLine for embed::EmbedCell {
    fn device(&self) -> &str {
        &self.device
    }
    fn format(&self) -> &str {
        &self.format
    }
}

/// The run's events on the progress bar (or as lines without a terminal).
fn reporter<'a, C: CellLine + 'a>(
    bar: Option<&'a ProgressBar>,
    label: &'a std::cell::RefCell<String>,
    say: &'a dyn Fn(&str),
    summary: fn(&C) -> String,
) -> impl FnMut(Event<C>) + 'a {
    move |e: Event<C>| match e {
        Event::Convert(f, done, total) => say(&format!(
            "converting to {f}: {:.0}%",
            100.0 * done as f64 / total.max(1) as f64
        )),
        Event::Cell {
            index,
            total,
            device,
            format,
        } => {
            *label.borrow_mut() = format!("{device} {format}:");
            if bar.is_none() {
                eprintln!("kiln: [{index}/{total}] {device} {format} …");
            }
        }
        Event::Done { cell, resumed } => {
            let line = format!(
                "{} {}: {}{}",
                cell.device(),
                cell.format(),
                summary(cell),
                if resumed {
                    " (kept from an earlier run)"
                } else {
                    ""
                }
            );
            match bar {
                Some(b) => {
                    b.println(line);
                    b.inc(1);
                }
                None => eprintln!("kiln: {line}"),
            }
        }
    }
}

fn summary(c: &LlmCell) -> String {
    match c.status {
        CellStatus::Ok => format!(
            "tg {:.1} t/s, pp {:.1} t/s, top-1 {:.2}%",
            c.tg.as_ref().map_or(0.0, |s| s.median_tps),
            c.pp.as_ref().map_or(0.0, |s| s.median_tps),
            c.text.as_ref().map_or(0.0, |t| 100.0 * t.top1_agreement)
        ),
        CellStatus::Skipped => format!("skipped: {}", c.note.as_deref().unwrap_or("")),
        CellStatus::Failed => format!("FAILED: {}", c.note.as_deref().unwrap_or("")),
    }
}

pub fn tradeoffs(args: TradeoffsArgs) -> Result<()> {
    let threads = match args.threads {
        Some(0) => return Err(RuntimeError::Usage("--threads must be at least 1".into())),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    crate::cli_llm::set_threads(Some(threads))?;
    let max_loss = tradeoffs::parse_loss(&args.max_loss)?;
    let devices_arg: Vec<String> = args
        .devices
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !args.model.exists() {
        return Err(RuntimeError::Usage(format!(
            "{}: no such file or directory",
            args.model.display()
        )));
    }
    // Flags are checked before the (slow) device probe.
    let formats = if args.model.is_dir() {
        None
    } else {
        Some(tradeoffs::parse_formats(
            args.formats
                .as_deref()
                .unwrap_or(&tradeoffs::DEFAULT_FORMATS.join(",")),
        )?)
    };
    if args.repetitions == 0 {
        return Err(RuntimeError::Usage("-r must be at least 1".into()));
    }
    if args.eval_limit.is_some_and(|n| n < 2) || args.corpus_limit.is_some_and(|n| n <= embed::K) {
        return Err(RuntimeError::Usage(format!(
            "--eval-limit needs at least 2 queries, --corpus-limit more than {} texts",
            embed::K
        )));
    }
    let devices = if devices_arg == ["cpu"] {
        kiln_runtime::Devices::cpu_only()
    } else {
        kiln_runtime::probe_devices()
    };
    let (text, text_name) = match &args.text {
        Some(p) => {
            let name = p.display().to_string();
            (
                tradeoffs::corpus_text(&tradeoffs::read_text(p)?, &name)?,
                name,
            )
        }
        None => (
            tradeoffs::corpus_text(tradeoffs::DEFAULT_CORPUS, "(built-in catalog)")?,
            "the built-in sample catalog (data/catalog/products-sample.jsonl)".to_string(),
        ),
    };
    if args.model.is_dir() {
        return embed_tradeoffs(
            args,
            devices,
            devices_arg,
            max_loss,
            threads,
            text,
            text_name,
        );
    }
    let labels = match (&args.labels, &args.eval) {
        (Some(p), _) => kiln_runtime::llm::classify::read_labels(p)?,
        (None, None) => kiln_runtime::llm::classify::parse_labels(tradeoffs::DEFAULT_LABELS)?,
        (None, Some(_)) => Vec::new(),
    };
    let (eval, eval_name) = match &args.eval {
        Some(p) => (
            tradeoffs::parse_labeled(&tradeoffs::read_text(p)?, &p.display().to_string())?,
            p.display().to_string(),
        ),
        None => (
            tradeoffs::parse_labeled(tradeoffs::DEFAULT_EVAL, "intents-dev.tsv")?,
            "data/eval/intents-dev.tsv (built in)".to_string(),
        ),
    };
    let (eval, eval_name) = match args.eval_limit {
        Some(n) if n < eval.len() => (
            tradeoffs::spread(&eval, n),
            format!("{eval_name}, {n} of {} queries evenly spaced", eval.len()),
        ),
        _ => (eval, eval_name),
    };
    let run = LlmRun {
        model: args.model.clone(),
        formats: formats.unwrap_or_default(),
        devices: devices_arg,
        eval,
        eval_name,
        labels,
        text,
        text_name,
        max_loss,
        settings: LlmSettings {
            prompt_tokens: args.prompt,
            generate_tokens: args.generate,
            repetitions: args.repetitions,
            text_tokens: args.text_tokens,
            context: args.ctx,
            batch: args.batch.max(1),
            chat: args.chat,
            threads,
            seed: 42,
        },
        out: args.out.clone(),
        cache: tradeoffs::cache_dir(),
        fresh: args.fresh,
    };
    let total = tradeoffs::resolve_devices(&devices, &run.devices)?.len() * run.formats.len();
    let bar = progress_bar(total);
    let started = Instant::now();
    let cell_label = std::cell::RefCell::new(String::new());
    let last_line = std::cell::Cell::new(Instant::now());
    let say = |m: &str| status(bar.as_ref(), &cell_label.borrow(), m, &last_line);
    let in_process = args.in_process;
    let runner = |spec: &CellSpec| -> Result<LlmCell> {
        if in_process {
            tradeoffs::llm_cell::measure(spec, &mut |m| say(m))
        } else {
            child_runner("llm", spec, &spec.dir, &say)
        }
    };
    let mut on = reporter(bar.as_ref(), &cell_label, &say, summary);
    let report = tradeoffs::run_llm(&run, &devices, &runner, &mut on)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let files = report::write(&report, &args.out)?;
    let recs = report
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.recommendation.as_ref()));
    announce(recs, &files, total, started);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn embed_tradeoffs(
    args: TradeoffsArgs,
    devices: kiln_runtime::Devices,
    devices_arg: Vec<String>,
    max_loss: f64,
    threads: usize,
    text: String,
    text_name: String,
) -> Result<()> {
    let run = embed::EmbedRun {
        model: args.model.clone(),
        formats: embed::parse_formats(
            args.formats
                .as_deref()
                .unwrap_or(&embed::DEFAULT_FORMATS.join(",")),
        )?,
        devices: devices_arg,
        texts: text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(args.corpus_limit.unwrap_or(usize::MAX))
            .map(str::to_string)
            .collect(),
        corpus_name: match args.corpus_limit {
            Some(n) => format!("{text_name}, its first {n} texts"),
            None => text_name,
        },
        max_loss,
        threads,
        out: args.out.clone(),
        cache: tradeoffs::cache_dir(),
        fresh: args.fresh,
    };
    let total = tradeoffs::resolve_devices(&devices, &run.devices)?.len() * run.formats.len();
    let started = Instant::now();
    let bar = progress_bar(total);
    let label = std::cell::RefCell::new(String::new());
    let last_line = std::cell::Cell::new(Instant::now());
    let say = |m: &str| status(bar.as_ref(), &label.borrow(), m, &last_line);
    let in_process = args.in_process;
    let runner = |spec: &embed::EmbedCellSpec| -> Result<embed::EmbedCell> {
        if in_process {
            embed::measure(spec, &mut |m| say(m))
        } else {
            child_runner("embed", spec, &spec.dir, &say)
        }
    };
    let mut on = reporter(bar.as_ref(), &label, &say, embed::summary);
    let report = embed::run(&run, &devices, &runner, &mut on)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let files = embed::write(&report, &args.out)?;
    let recs = report
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.recommendation.as_ref()));
    announce(recs, &files, total, started);
    Ok(())
}
