//! The `kiln` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_runtime::devices::{DeviceInfo, Devices};
use kiln_runtime::inspect::{GgufSummary, human_bytes};
use kiln_runtime::probe_devices;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with status 2
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
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
    }
    Ok(())
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
