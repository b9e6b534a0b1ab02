//! `kiln generate`, `kiln classify` and `kiln bench llm`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_runtime::llm::bench::{self, BenchConfig};
use kiln_runtime::llm::classify::{self, Classifier};
use kiln_runtime::llm::sampling::SamplerConfig;
use kiln_runtime::llm::{GenerateOptions, Llm};
use kiln_runtime::{Result, RuntimeError};

#[derive(Args)]
pub struct ModelArgs {
    /// The GGUF model file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where to run: auto (the dispatch plan's choice: `kiln plan`), cpu, wgpu[:N], cuda[:N].
    #[arg(long, default_value = "auto")]
    device: String,
    /// Worker threads (default: every core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// On a GPU: `cpu` (the default where the format allows: the CPU path's arithmetic, logits
    /// bit-identical to the CPU's) or `fast` (the kernels' own parallel sums).
    #[arg(long)]
    arithmetic: Option<String>,
}

/// Applies `--threads` to Kiln's kernel pool and to rayon (Burn's CPU ops, tokenization).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            return Err(RuntimeError::Usage("--threads must be at least 1".into()));
        }
        kiln_kernels::cpu::pool::set_threads(t);
        // Fails only when rayon's pool already exists.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    Ok(())
}

impl ModelArgs {
    fn load(&self) -> Result<Llm> {
        set_threads(self.threads)?;
        let devices = if self.device == "cpu" {
            kiln_runtime::Devices::cpu_only()
        } else {
            kiln_runtime::probe_devices()
        };
        let arithmetic = self
            .arithmetic
            .as_deref()
            .map(kiln_runtime::plan::parse_arithmetic)
            .transpose()?;
        let loaded =
            kiln_runtime::llm::load_planned(&self.model, &self.device, &devices, arithmetic)?;
        if let Some(tuned) = &loaded.tuned {
            eprintln!(
                "kiln: {} ({}): {:?} arithmetic, mat-vec variant {:?} ({})",
                loaded.plan.device,
                loaded.device.name,
                loaded.llm.model.kernel.arithmetic,
                tuned.reduction,
                if tuned.from_cache {
                    format!("tuned earlier: {}", tuned.path.display())
                } else {
                    "tuned now".to_string()
                }
            );
        }
        Ok(loaded.llm)
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Wrap the prompt in the model's chat template as the user's turn.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let llm = args.model.load()?;
    let prompt = llm.prompt_tokens(&args.prompt, args.chat, args.system.as_deref())?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplerConfig::default()
        },
        stop: args.stop.clone(),
        context: 0,
    };
    let mut out = std::io::stdout().lock();
    let g = llm.generate(&prompt, &opts, |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    eprintln!(
        "kiln: {} prompt tokens in {:.1} ms ({:.1} t/s), {} generated in {:.1} ms ({:.1} t/s), stop: {:?}",
        g.prompt_tokens,
        g.prompt_seconds * 1e3,
        g.prompt_tokens as f64 / g.prompt_seconds,
        g.tokens.len(),
        g.generate_seconds * 1e3,
        g.tokens.len() as f64 / g.generate_seconds.max(1e-9),
        g.stop
    );
    Ok(())
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The labels, one per line.
    #[arg(long)]
    labels: PathBuf,
    /// A prompt template file with {query} (and optionally {labels}) placeholders.
    #[arg(long)]
    template: Option<PathBuf>,
    /// The filled template is the user's turn of the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A fine-tuned sequence-classification head: safetensors with score.weight [labels, n_embd].
    #[arg(long)]
    head: Option<PathBuf>,
    /// Queries from a file: JSONL ({"query": ..., "id"?, "label"?}) or TSV with a header naming
    /// `query` (and optionally `label`, `id`) columns.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write the JSONL results here instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Queries on the command line.
    queries: Vec<String>,
}

struct Query {
    id: Option<String>,
    text: String,
    expected: Option<String>,
    line: usize,
}

fn read_queries(path: &Path) -> Result<Vec<Query>> {
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let lines = std::io::BufReader::new(file).lines();
    let mut out = Vec::new();
    let bad =
        |line: usize, why: String| RuntimeError::Usage(format!("{}:{line}: {why}", path.display()));
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut columns: Vec<String> = Vec::new();
    let mut n = 0;
    for line in lines {
        n += 1;
        let line = line.map_err(|e| bad(n, format!("not UTF-8 text ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        if tsv {
            let cells: Vec<&str> = line.split('\t').collect();
            if columns.is_empty() {
                columns = cells.iter().map(|c| c.trim().to_lowercase()).collect();
                if !columns.iter().any(|c| c == "query" || c == "text") {
                    return Err(bad(n, "the header names no `query` column".into()));
                }
                continue;
            }
            let get = |name: &str| {
                columns
                    .iter()
                    .position(|c| c == name)
                    .and_then(|i| cells.get(i))
                    .map(|s| s.to_string())
            };
            let text = get("query")
                .or_else(|| get("text"))
                .ok_or_else(|| bad(n, "no query cell".into()))?;
            out.push(Query {
                id: get("id"),
                text,
                expected: get("label"),
                line: n,
            });
        } else {
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let text = s("query")
                .or_else(|| s("text"))
                .ok_or_else(|| bad(n, "no \"query\" field".into()))?;
            let id = v.get("id").map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            });
            out.push(Query {
                id,
                text,
                expected: s("label"),
                line: n,
            });
        }
    }
    Ok(out)
}

pub fn classify(args: ClassifyArgs) -> Result<()> {
    let labels = classify::read_labels(&args.labels)?;
    let template = match &args.template {
        Some(p) => std::fs::read_to_string(p).map_err(|source| RuntimeError::Io {
            path: p.display().to_string(),
            source,
        })?,
        None => classify::DEFAULT_TEMPLATE.to_string(),
    };
    let mut queries: Vec<Query> = args
        .queries
        .iter()
        .enumerate()
        .map(|(i, q)| Query {
            id: None,
            text: q.clone(),
            expected: None,
            line: i + 1,
        })
        .collect();
    if let Some(p) = &args.input {
        queries.extend(read_queries(p)?);
    }
    if queries.is_empty() {
        return Err(RuntimeError::Usage(
            "no queries: give QUERY arguments or --input FILE".into(),
        ));
    }
    let llm = args.model.load()?;
    let classifier = match &args.head {
        Some(h) => Classifier::with_head(&llm, labels.clone(), h, &template)?,
        None => Classifier::generative(&llm, labels.clone(), &template, args.chat)?,
    };
    let mut sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |source| RuntimeError::Io {
                path: p.display().to_string(),
                source,
            },
        )?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = if queries.len() > 1 && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(queries.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:32}] {pos}/{len} {per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let (mut correct, mut with_label, mut failed) = (0usize, 0usize, 0usize);
    let mut latencies = Vec::new();
    for q in &queries {
        let row = match classifier.classify(&q.text) {
            Ok(c) => {
                latencies.push(c.latency_ms);
                if let Some(e) = &q.expected {
                    with_label += 1;
                    correct += usize::from(*e == c.label);
                }
                let probs: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .zip(&c.probabilities)
                    .map(|(l, p)| (l.clone(), (*p).into()))
                    .collect();
                serde_json::json!({
                    "id": q.id, "query": q.text, "label": c.label, "probabilities": probs,
                    "latency_ms": c.latency_ms, "expected": q.expected,
                })
            }
            Err(e) => {
                failed += 1;
                serde_json::json!({"id": q.id, "query": q.text, "line": q.line, "error": e.to_string()})
            }
        };
        writeln!(sink, "{row}").map_err(|source| RuntimeError::Io {
            path: "output".into(),
            source,
        })?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    sink.flush().map_err(|source| RuntimeError::Io {
        path: "output".into(),
        source,
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    eprintln!(
        "kiln: {} queries, {failed} failed; latency p50 {:.1} ms, p95 {:.1} ms",
        queries.len(),
        pct(0.5),
        pct(0.95)
    );
    if with_label > 0 {
        eprintln!(
            "kiln: accuracy {correct}/{with_label} = {:.1}%",
            100.0 * correct as f64 / with_label as f64
        );
    }
    if failed > 0 {
        return Err(RuntimeError::Usage(format!(
            "{failed} of {} queries failed (see the error rows)",
            queries.len()
        )));
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchLlmArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens (pp test); 0 skips it.
    #[arg(short = 'p', default_value_t = 512)]
    prompt: usize,
    /// Generated tokens (tg test); 0 skips it.
    #[arg(short = 'n', default_value_t = 128)]
    generate: usize,
    /// Repetitions (after one warm-up run).
    #[arg(short = 'r', default_value_t = 5)]
    repetitions: usize,
    /// Print JSON rows.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: BenchLlmArgs) -> Result<()> {
    if args.repetitions == 0 {
        return Err(RuntimeError::Usage("-r must be at least 1".into()));
    }
    let llm = args.model.load()?;
    let cfg = BenchConfig {
        prompt: args.prompt,
        generate: args.generate,
        repetitions: args.repetitions,
        seed: 42,
    };
    let rows = bench::run(&llm, &cfg, |test, rep| {
        eprint!("\r{test} {rep}/{}   ", cfg.repetitions)
    })?;
    eprintln!();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        );
    } else {
        print!("{}", bench::render(&rows));
    }
    Ok(())
}
