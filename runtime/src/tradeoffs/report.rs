//! The report files: `report.json` (every measurement), `report.md` (one table per device, the
//! choice marked) and one SVG plot per device (accuracy loss against decode speed, marker area
//! proportional to memory).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::{CellStatus, LlmCell, LlmReport};
use crate::{Result, RuntimeError};

const MIB: f64 = (1u64 << 20) as f64;

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A device name usable in a file name.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Writes `report.json`, `report.md` and the plots under `out`; returns the files written.
pub fn write(report: &LlmReport, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    let json = out.join("report.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(report).expect("a report serializes"),
    )
    .map_err(io(&json))?;
    files.push(json);
    let mut plots = Vec::new();
    for d in &report.devices {
        let points: Vec<Point> = d
            .cells
            .iter()
            .filter_map(|c| {
                let cand = c.candidate()?;
                Some(Point {
                    label: c.format.clone(),
                    x: cand.speed,
                    y: 100.0 * cand.loss,
                    memory: cand.memory_bytes as f64,
                    chosen: d
                        .recommendation
                        .as_ref()
                        .is_some_and(|r| r.format == c.format),
                })
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let name = format!("plot-{}.svg", file_safe(&d.device));
        let path = out.join(&name);
        let title = format!(
            "{} on {} ({})",
            Path::new(&report.model).file_name().map_or_else(
                || report.model.clone(),
                |f| f.to_string_lossy().into_owned()
            ),
            d.device,
            d.cells
                .iter()
                .find(|c| !c.device_name.is_empty())
                .map_or("", |c| c.device_name.as_str())
        );
        plot(
            &path,
            &title,
            "decode tokens/s (median tg)",
            "top-1 disagreement with the reference, %",
            &points,
            Some(100.0 * report.max_loss),
        )?;
        plots.push((d.device.clone(), name));
        files.push(path);
    }
    let md = out.join("report.md");
    std::fs::write(&md, render_markdown(report, &plots)).map_err(io(&md))?;
    files.push(md);
    Ok(files)
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "–".into(), |b| format!("{:.1}", b as f64 / MIB))
}

fn speed(s: &Option<super::Speed>) -> String {
    s.as_ref().map_or_else(
        || "–".into(),
        |s| format!("{:.1} ({:.1}–{:.1})", s.median_tps, s.min_tps, s.max_tps),
    )
}

/// `report.md`.
pub fn render_markdown(r: &LlmReport, plots: &[(String, String)]) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "# Quantization trade-offs: {}\n\n",
        Path::new(&r.model)
            .file_name()
            .map_or_else(|| r.model.clone(), |f| f.to_string_lossy().into_owned())
    ));
    o.push_str(&format!(
        "Kiln {} · model `{}` ({}, {:.1} M parameters, sha256 `{}`) · {} · text: {} · max loss {:.2}% top-1 disagreement\n\n",
        r.kiln_version,
        r.model,
        r.model_format,
        r.model_params as f64 / 1e6,
        &r.model_sha256[..16.min(r.model_sha256.len())],
        r.eval,
        r.text,
        100.0 * r.max_loss
    ));
    o.push_str(&format!("Command: `{}`\n\n", r.command.join(" ")));
    o.push_str("How it was measured:\n\n");
    for m in &r.method {
        o.push_str(&format!("- {m}\n"));
    }
    o.push('\n');
    let s = &r.settings;
    for d in &r.devices {
        let name = d
            .cells
            .iter()
            .find(|c| !c.device_name.is_empty())
            .map_or("", |c| c.device_name.as_str());
        o.push_str(&format!("## {} — {}\n\n", d.device, name));
        if let Some(rec) = &d.recommendation {
            o.push_str(&format!(
                "**Recommended: {}** — {}\n\n",
                rec.format, rec.reason
            ));
        } else {
            o.push_str("No recommendation: no variant was measured on this device.\n\n");
        }
        if let Some(refr) = &d.reference {
            o.push_str(&format!("Reference for accuracy: {refr}.\n\n"));
        }
        o.push_str(&format!(
            "| format | file MiB | load s | host RSS after load / peak MiB | device MiB | pp{} t/s | tg{} t/s | queries/s (batch {}) | latency p50 / p95 ms | PPL | KL mean | KL p99 | top-1 agree | intent acc | intent agree |\n",
            s.prompt_tokens, s.generate_tokens, s.batch
        ));
        o.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for c in &d.cells {
            o.push_str(&row(
                c,
                d.recommendation.as_ref().map(|r| r.format.as_str()),
            ));
        }
        o.push('\n');
        if let Some((_, file)) = plots.iter().find(|(dev, _)| *dev == d.device) {
            o.push_str(&format!(
                "![accuracy loss vs decode speed on {}]({file})\n\n",
                d.device
            ));
        }
    }
    o
}

fn row(c: &LlmCell, chosen: Option<&str>) -> String {
    let mark = if chosen == Some(c.format.as_str()) {
        format!("**{} ★**", c.format)
    } else if c.is_reference && c.status == CellStatus::Ok {
        format!("{} (ref)", c.format)
    } else {
        c.format.clone()
    };
    if c.status != CellStatus::Ok {
        return format!(
            "| {mark} | {:.1} | {} |{}\n",
            c.file_bytes as f64 / MIB,
            match c.status {
                CellStatus::Skipped => "skipped",
                _ => "failed",
            },
            format!(
                " {} |",
                c.note
                    .as_deref()
                    .unwrap_or("")
                    .replace('|', "/")
                    .replace('\n', " ")
            ) + &" |".repeat(12)
        );
    }
    let (qps, lat, acc, agree) = c.classify.as_ref().map_or_else(
        || ("–".into(), "–".into(), "–".into(), "–".into()),
        |k| {
            (
                format!("{:.2}", k.batched_queries_per_second),
                format!("{:.1} / {:.1}", k.latency_p50_ms, k.latency_p95_ms),
                format!("{:.1}%", 100.0 * k.accuracy),
                format!("{:.1}%", 100.0 * k.agreement),
            )
        },
    );
    let (ppl, kl, klp, top) = c.text.as_ref().map_or_else(
        || ("–".into(), "–".into(), "–".into(), "–".into()),
        |t| {
            (
                format!("{:.3}", t.perplexity),
                format!("{:.5}", t.kl_mean),
                format!("{:.4}", t.kl_p99),
                format!("{:.2}%", 100.0 * t.top1_agreement),
            )
        },
    );
    format!(
        "| {mark} | {:.1} | {:.2} | {} / {} | {} | {} | {} | {qps} | {lat} | {ppl} | {kl} | {klp} | {top} | {acc} | {agree} |\n",
        c.file_bytes as f64 / MIB,
        c.load_seconds,
        mib(c.host_rss_after_load_bytes),
        mib(c.host_peak_rss_bytes),
        mib(c.device_in_use_after_load_bytes),
        speed(&c.pp),
        speed(&c.tg),
    )
}

/// One variant in a plot.
pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Bytes: the marker's area grows with it.
    pub memory: f64,
    pub chosen: bool,
}

/// Accuracy loss (y) against speed (x), marker area proportional to the memory held while
/// serving (device memory on a GPU, resident host memory on the CPU), the loss budget
/// as a dashed line, the chosen variant filled.
pub fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[Point],
    budget: Option<f64>,
) -> Result<()> {
    let err = |e: String| RuntimeError::Usage(format!("{}: drawing the plot: {e}", path.display()));
    let xmax = points.iter().map(|p| p.x).fold(0.0, f64::max).max(1e-9) * 1.25;
    let ymax = points
        .iter()
        .map(|p| p.y)
        .chain(budget)
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.25;
    let mem_max = points.iter().map(|p| p.memory).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    if let Some(b) = budget {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, b), (xmax, b)],
                6,
                4,
                RED.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(format!("--max-loss {b:.2}%"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    }
    for p in points {
        // Area ∝ memory: radius ∝ √memory, 4–28 px.
        let r = (4.0 + 24.0 * (p.memory / mem_max).sqrt()) as i32;
        let style = if p.chosen {
            BLUE.mix(0.55).filled()
        } else {
            BLUE.mix(0.9).stroke_width(2)
        };
        chart
            .draw_series(std::iter::once(Circle::new((p.x, p.y), r, style)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(
                    "{}{} ({:.0} MiB held)",
                    p.label,
                    if p.chosen { " ★" } else { "" },
                    p.memory / MIB
                ),
                (p.x, p.y),
                ("sans-serif", 14).into_font().color(&BLACK),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    if budget.is_some() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
