//! The `kiln` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_runtime::devices::{DeviceInfo, Devices};
use kiln_runtime::inspect::{GgufSummary, human_bytes};
use kiln_runtime::quantize::{QuantizeRequest, QuantizeSummary, parse_target, quantize_file};
use kiln_runtime::{RuntimeError, probe_devices};

/// Every tensor of a forward pass is a fresh allocation (megabytes for a prompt). glibc's
/// malloc hands such blocks back to the system and faults them in again, zeroed, a few
/// operations later; mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli_cope;
mod cli_embed;
mod cli_images;
mod cli_interbert;
mod cli_llm;
mod cli_mambarec;
mod cli_tradeoffs;

/// Kiln: an inference runtime for e-commerce search and recommendation models.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every device Kiln can use: the CPU with its SIMD features, wgpu adapters, CUDA GPUs.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer, tensors, sizes.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List every tensor (text output shows the first and last few by default).
        #[arg(long)]
        all: bool,
    },
    /// Convert a GGUF model to another weight format, with llama.cpp's conventions for which
    /// tensors keep higher precision; reports size and error per tensor.
    Quantize {
        /// The input GGUF file.
        input: PathBuf,
        /// The output GGUF file (written under a temporary name, renamed when complete).
        output: PathBuf,
        /// f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_k, q5_k, q4_k, q3_k or q2_k.
        #[arg(long = "type", value_name = "TYPE")]
        target: String,
        /// Convert tensors that are already quantized (dequantized first, then quantized).
        #[arg(long)]
        allow_requantize: bool,
        /// Every weight to the target type, the output projection included (llama-quantize --pure).
        #[arg(long)]
        pure: bool,
        /// Replace an existing output file.
        #[arg(long)]
        overwrite: bool,
    },
    /// Show how Kiln would run a model here: device, kernels, weight format, memory, and why
    /// (with the alternatives rejected).
    Plan {
        /// The GGUF model file.
        #[arg(long, short = 'm')]
        model: PathBuf,
        /// auto, cpu, wgpu[:N] or cuda[:N].
        #[arg(long, default_value = "auto")]
        device: String,
        /// Plan for this weight format instead of the file's (f16, q8_0, q4_0, …).
        #[arg(long)]
        format: Option<String>,
        /// The GPU kernels' arithmetic: cpu (bit-identical to the CPU path) or fast.
        #[arg(long)]
        arithmetic: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate text with a Llama-family GGUF model, streamed to stdout.
    Generate(cli_llm::GenerateArgs),
    /// Classify queries into intents with a Llama-family GGUF model (label log-likelihoods, or a
    /// fine-tuned `score` head).
    Classify(cli_llm::ClassifyArgs),
    /// Embed the texts of a JSONL, CSV or Parquet file into Parquet or .npy: resumable after a
    /// kill, bad records to an errors file, a progress bar.
    Embed(cli_embed::EmbedArgs),
    /// Top-k item recommendations per user from a MambaRec model (training items left out),
    /// as JSONL.
    Recommend(cli_mambarec::RecommendArgs),
    /// Which weight format to deploy on which device: every format measured on every device for
    /// speed, memory and accuracy, with a report (JSON, Markdown, SVG plots) and a
    /// recommendation per device that `kiln plan` then follows.
    Tradeoffs(cli_tradeoffs::TradeoffsArgs),
    /// One cell of `kiln tradeoffs`, run in a child process.
    #[command(hide = true)]
    TradeoffsCell(cli_tradeoffs::CellArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// llama-bench's pp/tg tests: prompt processing and token generation speed.
    Llm(cli_llm::BenchLlmArgs),
    /// Embedding speed: texts/s and tokens/s over a file of texts, peak memory.
    Embed(cli_embed::BenchEmbedArgs),
    /// InterBERT image–text matching: ITM pairs/s on synthetic (caption, regions) pairs.
    Interbert(cli_interbert::BenchInterbertArgs),
    /// COPE: product-page embeddings (title + image) per second.
    Cope(cli_cope::BenchCopeArgs),
    /// MambaRec: load time (weights, graphs) and full-forward time.
    Mambarec(cli_mambarec::BenchMambaRecArgs),
    /// Image preprocessing (decode, orient, resize, crop, normalize): images/s per thread count.
    Images(cli_images::BenchImagesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with status 2
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e}");
            let usage = matches!(e.downcast_ref(), Some(RuntimeError::Usage(_)));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Generate(args) => cli_llm::generate(args)?,
        Command::Classify(args) => cli_llm::classify(args)?,
        Command::Bench {
            what: BenchCommand::Llm(args),
        } => cli_llm::bench(args)?,
        Command::Bench {
            what: BenchCommand::Embed(args),
        } => cli_embed::bench(args)?,
        Command::Bench {
            what: BenchCommand::Interbert(args),
        } => cli_interbert::bench(args)?,
        Command::Bench {
            what: BenchCommand::Mambarec(args),
        } => cli_mambarec::bench(args)?,
        Command::Bench {
            what: BenchCommand::Cope(args),
        } => cli_cope::bench(args)?,
        Command::Bench {
            what: BenchCommand::Images(args),
        } => cli_images::bench(args)?,
        Command::Recommend(args) => cli_mambarec::recommend(args)?,
        Command::Embed(args) => cli_embed::embed(args)?,
        Command::Tradeoffs(args) => cli_tradeoffs::tradeoffs(args)?,
        Command::TradeoffsCell(args) => cli_tradeoffs::cell(args)?,
        Command::Plan {
            model,
            device,
            format,
            arithmetic,
            json,
        } => {
            if !model.is_file() {
                return Err(
                    RuntimeError::Usage(format!("{}: no such file", model.display())).into(),
                );
            }
            let arithmetic = arithmetic
                .as_deref()
                .map(kiln_runtime::plan::parse_arithmetic)
                .transpose()?;
            let plan =
                kiln_runtime::plan::plan_for_file(&model, &device, format.as_deref(), arithmetic)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{plan}");
            }
        }
        Command::Devices { json } => {
            let devices = probe_devices();
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print!("{}", render_devices(&devices));
            }
        }
        Command::Inspect { file, json, all } => {
            let summary = GgufSummary::of_file(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.render(all));
            }
        }
        Command::Quantize {
            input,
            output,
            target,
            allow_requantize,
            pure,
            overwrite,
        } => {
            let request = QuantizeRequest {
                input,
                output,
                options: kiln_quant::convert::ConvertOptions {
                    target: parse_target(&target)?,
                    allow_requantize,
                    pure,
                },
                overwrite,
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:32}] {percent:>3}% eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            let summary = quantize_file(&request, |done, total, tensor| {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(tensor.to_string());
            });
            bar.finish_and_clear();
            let summary = summary?;
            print!("{}", render_quantize(&request, &summary));
        }
    }
    Ok(())
}

fn render_quantize(req: &QuantizeRequest, s: &QuantizeSummary) -> String {
    let mut out = format!(
        "{:<34} {:>6} -> {:<6} {:>11} {:>11} {:>10} {:>8}\n",
        "tensor", "from", "to", "bytes in", "bytes out", "rmse", "rel"
    );
    for t in &s.tensors {
        let rms_in = (t.sum_sq_input / t.n_elements.max(1) as f64).sqrt();
        let rel = if t.from == t.to || rms_in == 0.0 {
            "-".to_string()
        } else {
            format!("{:.3}%", 100.0 * t.rmse / rms_in)
        };
        out.push_str(&format!(
            "{:<34} {:>6} -> {:<6} {:>11} {:>11} {:>10.3e} {:>8}\n",
            t.name,
            t.from.to_string(),
            t.to.to_string(),
            t.bytes_before,
            t.bytes_after,
            t.rmse,
            rel
        ));
    }
    out.push_str(&format!(
        "\n{} ({}) -> {} ({}, {:.3}x the input); rmse over all converted weights {:.4e}\n",
        req.input.display(),
        human_bytes(s.input_bytes),
        req.output.display(),
        human_bytes(s.output_bytes),
        s.output_bytes as f64 / s.input_bytes.max(1) as f64,
        s.total_rmse()
    ));
    out
}

fn render_devices(devices: &Devices) -> String {
    let mut s = String::new();
    for d in &devices.devices {
        s.push_str(&render_device(d));
    }
    for note in &devices.notes {
        s.push_str(&format!("note: {note}\n"));
    }
    s
}

fn render_device(d: &DeviceInfo) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!("{:<8} {}\n", d.id.to_string(), d.name);
    if let Some(cpu) = &d.cpu {
        s.push_str(&format!(
            "         {} · {} logical cores{} · {} RAM\n",
            cpu.arch,
            cpu.logical_cores,
            cpu.physical_cores
                .map_or(String::new(), |p| format!(" ({p} physical)")),
            human_bytes(cpu.memory_bytes)
        ));
        let simd = cpu.simd.names();
        s.push_str(&format!(
            "         SIMD: {}\n",
            if simd.is_empty() {
                "none detected".to_string()
            } else {
                simd.join(" ")
            }
        ));
        return s;
    }
    s.push_str(&format!(
        "         {} · {}{}{}\n",
        d.api,
        d.class,
        d.driver
            .as_ref()
            .map_or(String::new(), |v| format!(" · driver {v}")),
        d.memory_bytes
            .map_or(String::new(), |m| format!(" · {} memory", human_bytes(m)))
    ));
    if let Some(l) = &d.limits {
        s.push_str(&format!(
            "         max buffer {} · storage binding {} · shared memory {} · workgroup {} invocations\n",
            human_bytes(l.max_buffer_size),
            human_bytes(l.max_storage_binding_size),
            human_bytes(l.max_shared_memory),
            l.max_workgroup_invocations
        ));
    }
    s.push_str(&format!(
        "         f16 {} · subgroups {}{}\n",
        yes_no(d.f16),
        yes_no(d.subgroups),
        d.subgroup_size
            .map_or(String::new(), |(a, b)| format!(" (size {a}..{b})"))
    ));
    s
}
