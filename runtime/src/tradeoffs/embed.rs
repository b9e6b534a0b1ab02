//! `kiln tradeoffs --model DIR`: the same question for a BERT-family embedding model. Kiln
//! converts the encoder's weights (dense layers and the word-embedding table) to each format as
//! it loads them, then measures on each device: texts/s over a corpus (median of repetitions
//! after a warm-up), memory, and accuracy against the f32 embeddings — cosine per text (mean,
//! min) and retrieval overlap@10 (each text's ten nearest neighbours in the corpus).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_quant::GgmlType;
use serde::{Deserialize, Serialize};

use super::llm_cell::{peak_rss_bytes, reset_peak_rss, rss_bytes};
use super::report::{Point, file_safe, plot};
use super::{CellStatus, machine_json, resolve_devices};
use crate::devices::Devices;
use crate::embed::Embedder;
use crate::plan::{Candidate, Recommendation, Wording};
use crate::{Result, RuntimeError};

/// The formats compared when none are named.
pub const DEFAULT_FORMATS: &[&str] = &["f32", "f16", "q8_0"];

/// Neighbours compared for retrieval overlap.
pub const K: usize = 10;

const REFERENCE_EMBEDDINGS: &str = "reference-embeddings.f32";

/// Encoders: texts/s, 1 − mean cosine.
pub const EMBED_WORDING: Wording = Wording {
    speed: "speed",
    unit: "texts/s",
    loss: "cosine loss (1 − mean cosine to the reference)",
};

/// Reads `--formats` for an encoder: f32, f16, q8_0.
pub fn parse_formats(s: &str) -> Result<Vec<GgmlType>> {
    let v: Vec<GgmlType> = s
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            GgmlType::from_name(f)
                .filter(|t| kiln_models::bert::WEIGHT_FORMATS.contains(t))
                .ok_or_else(|| {
                    RuntimeError::Usage(format!(
                        "--formats {f:?}: an embedding model runs as f32, f16 or q8_0"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    if v.is_empty() {
        return Err(RuntimeError::Usage("--formats names no format".into()));
    }
    Ok(v)
}

#[derive(Clone, Debug)]
pub struct EmbedRun {
    pub model: PathBuf,
    pub formats: Vec<GgmlType>,
    pub devices: Vec<String>,
    pub texts: Vec<String>,
    pub corpus_name: String,
    pub max_loss: f64,
    pub threads: usize,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// Measure every cell again instead of reading kept results.
    pub fresh: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedCellSpec {
    pub model: PathBuf,
    pub device: String,
    pub format: String,
    pub texts: Vec<String>,
    pub threads: usize,
    pub repetitions: usize,
    pub reference: Option<PathBuf>,
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedCell {
    pub device: String,
    pub device_name: String,
    pub format: String,
    pub status: CellStatus,
    pub note: Option<String>,
    pub is_reference: bool,
    pub threads: usize,
    pub load_seconds: f64,
    pub host_rss_after_load_bytes: Option<u64>,
    pub host_peak_rss_bytes: Option<u64>,
    pub device_in_use_after_load_bytes: Option<u64>,
    pub device_reserved_peak_bytes: Option<u64>,
    pub texts: usize,
    pub warmup_texts: usize,
    /// Seconds per pass over the corpus, one per repetition.
    pub samples_seconds: Vec<f64>,
    pub texts_per_second_median: f64,
    pub texts_per_second_min: f64,
    pub texts_per_second_max: f64,
    pub cosine_mean: f64,
    pub cosine_min: f64,
    /// Mean share of each text's ten nearest neighbours that the reference's has too.
    pub overlap_at_10: f64,
}

impl EmbedCell {
    fn unmeasured(spec: &EmbedCellSpec, status: CellStatus, note: String) -> Self {
        EmbedCell {
            device: spec.device.clone(),
            device_name: String::new(),
            format: spec.format.clone(),
            status,
            note: Some(note),
            is_reference: spec.reference.is_none(),
            threads: spec.threads,
            load_seconds: 0.0,
            host_rss_after_load_bytes: None,
            host_peak_rss_bytes: None,
            device_in_use_after_load_bytes: None,
            device_reserved_peak_bytes: None,
            texts: spec.texts.len(),
            warmup_texts: 0,
            samples_seconds: vec![],
            texts_per_second_median: 0.0,
            texts_per_second_min: 0.0,
            texts_per_second_max: 0.0,
            cosine_mean: 0.0,
            cosine_min: 0.0,
            overlap_at_10: 0.0,
        }
    }

    /// Memory held while serving (see [`super::LlmCell::memory_bytes`]).
    pub fn memory_bytes(&self) -> u64 {
        self.device_in_use_after_load_bytes
            .or(self.host_rss_after_load_bytes)
            .or(self.host_peak_rss_bytes)
            .unwrap_or(0)
    }

    fn candidate(&self) -> Option<Candidate> {
        (self.status == CellStatus::Ok).then(|| Candidate {
            format: self.format.clone(),
            speed: self.texts_per_second_median,
            loss: (1.0 - self.cosine_mean).max(0.0),
            memory_bytes: self.memory_bytes(),
        })
    }
}

/// One line about a finished cell.
pub fn summary(c: &EmbedCell) -> String {
    match c.status {
        CellStatus::Ok => format!(
            "{:.1} texts/s, cosine {:.6} (min {:.6}), overlap@10 {:.3}",
            c.texts_per_second_median, c.cosine_mean, c.cosine_min, c.overlap_at_10
        ),
        CellStatus::Skipped => format!("skipped: {}", c.note.as_deref().unwrap_or("")),
        CellStatus::Failed => format!("FAILED: {}", c.note.as_deref().unwrap_or("")),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Cosine of two vectors (f64 sums).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Each row's `k` nearest other rows by cosine (`rows` of width `dim`).
pub fn neighbours(rows: &[f32], dim: usize, k: usize) -> Vec<Vec<usize>> {
    let n = rows.len() / dim;
    let norms: Vec<f64> = rows
        .chunks_exact(dim)
        .map(|r| {
            r.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    (0..n)
        .map(|i| {
            let a = &rows[i * dim..(i + 1) * dim];
            let mut scored: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let b = &rows[j * dim..(j + 1) * dim];
                    let dot: f64 = a
                        .iter()
                        .zip(b)
                        .map(|(&x, &y)| f64::from(x) * f64::from(y))
                        .sum();
                    (dot / (norms[i] * norms[j]).max(1e-30), j)
                })
                .collect();
            scored.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            scored.truncate(k);
            scored.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// Mean share of each row's neighbours that the reference's neighbours include.
pub fn overlap(got: &[Vec<usize>], want: &[Vec<usize>]) -> f64 {
    if got.is_empty() {
        return 1.0;
    }
    let mut total = 0.0;
    for (g, w) in got.iter().zip(want) {
        let hits = g.iter().filter(|j| w.contains(j)).count();
        total += hits as f64 / w.len().max(1) as f64;
    }
    total / got.len() as f64
}

/// Measures one cell in this process.
pub fn measure(spec: &EmbedCellSpec, progress: &mut dyn FnMut(&str)) -> Result<EmbedCell> {
    reset_peak_rss();
    let format = GgmlType::from_name(&spec.format)
        .ok_or_else(|| RuntimeError::Usage(format!("format {:?}", spec.format)))?;
    let devices = if spec.device == "cpu" {
        Devices::cpu_only()
    } else {
        crate::probe_devices()
    };
    let info = devices.find(&spec.device)?;
    let device = info.burn_device()?;
    progress("loading");
    let t = Instant::now();
    let embedder = Embedder::load_as(&spec.model, &device, format)?;
    device
        .sync()
        .map_err(|e| RuntimeError::Readback(format!("{e:?}")))?;
    let load_seconds = t.elapsed().as_secs_f64();
    let host_rss_after_load_bytes = rss_bytes();
    let mem = || kiln_kernels::device_memory(&device);
    let device_in_use_after_load_bytes = mem().map(|m| m.0);
    let mut reserved = mem().map(|m| m.1);

    let texts: Vec<&str> = spec.texts.iter().map(String::as_str).collect();
    if texts.len() <= K {
        return Err(RuntimeError::Usage(format!(
            "the corpus has {} texts; overlap@{K} needs more than {K}",
            texts.len()
        )));
    }
    let warm = &texts[..texts.len().min(64)];
    progress("warm-up");
    embedder.embed(warm)?;
    let mut samples = Vec::new();
    let mut out = None;
    for r in 0..spec.repetitions.max(1) {
        progress(&format!("pass {}/{}", r + 1, spec.repetitions.max(1)));
        let t = Instant::now();
        let e = embedder.embed(&texts)?;
        samples.push(t.elapsed().as_secs_f64());
        out = Some(e);
        if let Some((_, res)) = mem() {
            reserved = Some(reserved.unwrap_or(0).max(res));
        }
    }
    let emb = out.expect("at least one pass").into_vec();
    let dim = embedder.dim();
    let mut rates: Vec<f64> = samples.iter().map(|s| texts.len() as f64 / s).collect();
    rates.sort_by(f64::total_cmp);
    let median = if rates.len() % 2 == 1 {
        rates[rates.len() / 2]
    } else {
        (rates[rates.len() / 2 - 1] + rates[rates.len() / 2]) / 2.0
    };

    progress("accuracy");
    let (cos_mean, cos_min, ov) = match &spec.reference {
        None => {
            std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
            let path = spec.dir.join(REFERENCE_EMBEDDINGS);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
            for v in &emb {
                f.write_all(&v.to_le_bytes()).map_err(io(&path))?;
            }
            f.flush().map_err(io(&path))?;
            (1.0, 1.0, 1.0)
        }
        Some(dir) => {
            let path = dir.join(REFERENCE_EMBEDDINGS);
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io(&path))?;
            if bytes.len() != emb.len() * 4 {
                return Err(RuntimeError::Usage(format!(
                    "{}: {} values, this corpus gives {}",
                    path.display(),
                    bytes.len() / 4,
                    emb.len()
                )));
            }
            let reference: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let cos: Vec<f64> = emb
                .chunks_exact(dim)
                .zip(reference.chunks_exact(dim))
                .map(|(a, b)| cosine(a, b))
                .collect();
            let mean = cos.iter().sum::<f64>() / cos.len() as f64;
            let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
            let ov = overlap(&neighbours(&emb, dim, K), &neighbours(&reference, dim, K));
            (mean, min, ov)
        }
    };
    Ok(EmbedCell {
        device: spec.device.clone(),
        device_name: info.name.clone(),
        format: spec.format.clone(),
        status: CellStatus::Ok,
        note: None,
        is_reference: spec.reference.is_none(),
        threads: spec.threads,
        load_seconds,
        host_rss_after_load_bytes,
        host_peak_rss_bytes: peak_rss_bytes(),
        device_in_use_after_load_bytes,
        device_reserved_peak_bytes: reserved,
        texts: texts.len(),
        warmup_texts: warm.len(),
        samples_seconds: samples,
        texts_per_second_median: median,
        texts_per_second_min: rates[0],
        texts_per_second_max: rates[rates.len() - 1],
        cosine_mean: cos_mean,
        cosine_min: cos_min,
        overlap_at_10: ov,
    })
}

/// What the run reports as it goes.
pub type EmbedEvent<'a> = super::Event<'a, EmbedCell>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedDeviceSection {
    pub device: String,
    pub info: serde_json::Value,
    pub reference: Option<String>,
    pub cells: Vec<EmbedCell>,
    pub recommendation: Option<Recommendation>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedReport {
    pub kind: String,
    pub kiln_version: String,
    pub created_unix: u64,
    pub command: Vec<String>,
    pub model: String,
    pub model_sha256: String,
    pub machine: serde_json::Value,
    pub corpus: String,
    pub texts: usize,
    pub threads: usize,
    pub repetitions: usize,
    pub max_loss: f64,
    pub method: Vec<String>,
    pub devices: Vec<EmbedDeviceSection>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    spec_hash: String,
    cell: EmbedCell,
}

fn spec_hash(spec: &EmbedCellSpec) -> String {
    super::hash_spec(&EmbedCellSpec {
        dir: PathBuf::new(),
        ..spec.clone()
    })
}

/// Repetitions of the corpus pass per cell.
pub const REPETITIONS: usize = 3;

/// Runs the matrix (cells kept on disk as they finish; a second run resumes).
pub fn run(
    run: &EmbedRun,
    devices: &Devices,
    runner: &dyn Fn(&EmbedCellSpec) -> Result<EmbedCell>,
    on: &mut dyn FnMut(EmbedEvent),
) -> Result<EmbedReport> {
    let weights = run.model.join("model.safetensors");
    if !weights.is_file() {
        return Err(RuntimeError::Usage(format!(
            "{}: not a BERT model directory (no model.safetensors)",
            run.model.display()
        )));
    }
    let hash = super::variants::content_hash(&weights, &crate::models_dir::cache_root())?;
    let targets = resolve_devices(devices, &run.devices)?;
    let mut formats = run.formats.clone();
    formats.sort_by_key(|&t| std::cmp::Reverse(super::precision_order(t)));
    formats.dedup();
    let total = targets.len() * formats.len();
    let mut index = 0;
    let mut sections = Vec::new();
    for info in targets {
        let key = crate::tune::device_key(info);
        let mut cells = Vec::new();
        let mut reference: Option<(String, PathBuf)> = None;
        for f in &formats {
            index += 1;
            let spec = EmbedCellSpec {
                model: run.model.clone(),
                device: info.id.to_string(),
                format: f.name().to_string(),
                texts: run.texts.clone(),
                threads: run.threads,
                repetitions: REPETITIONS,
                reference: reference.as_ref().map(|r| r.1.clone()),
                dir: run
                    .cache
                    .join("embed-cells")
                    .join(&hash[..16])
                    .join(&key)
                    .join(f.name()),
            };
            on(super::Event::Cell {
                index,
                total,
                device: &spec.device,
                format: &spec.format,
            });
            let path = spec.dir.join("cell.json");
            let kept = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Record>(&t).ok())
                .filter(|r| {
                    !run.fresh && r.spec_hash == spec_hash(&spec) && r.cell.status == CellStatus::Ok
                });
            let (cell, resumed) = match kept {
                Some(r) => (r.cell, true),
                None => {
                    let c = runner(&spec).unwrap_or_else(|e| {
                        EmbedCell::unmeasured(&spec, CellStatus::Failed, e.to_string())
                    });
                    std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
                    let tmp = path.with_extension("json.tmp");
                    let rec = Record {
                        spec_hash: spec_hash(&spec),
                        cell: c.clone(),
                    };
                    std::fs::write(
                        &tmp,
                        serde_json::to_string_pretty(&rec).expect("serializes"),
                    )
                    .map_err(io(&tmp))?;
                    std::fs::rename(&tmp, &path).map_err(io(&path))?;
                    (c, false)
                }
            };
            on(super::Event::Done {
                cell: &cell,
                resumed,
            });
            if reference.is_none() && cell.status == CellStatus::Ok {
                reference = Some((cell.format.clone(), spec.dir.clone()));
            }
            cells.push(cell);
        }
        let ref_name = reference.map(|r| r.0);
        let cands: Vec<Candidate> = cells.iter().filter_map(EmbedCell::candidate).collect();
        let recommendation = ref_name
            .as_deref()
            .and_then(|r| crate::plan::recommend(&cands, r, run.max_loss, &EMBED_WORDING));
        sections.push(EmbedDeviceSection {
            device: info.id.to_string(),
            info: serde_json::to_value(info).unwrap_or_default(),
            reference: ref_name,
            cells,
            recommendation,
        });
    }
    Ok(EmbedReport {
        kind: "embedding".into(),
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: std::env::args().collect(),
        model: run.model.display().to_string(),
        model_sha256: hash,
        machine: machine_json(devices),
        corpus: run.corpus_name.clone(),
        texts: run.texts.len(),
        threads: run.threads,
        repetitions: REPETITIONS,
        max_loss: run.max_loss,
        method: vec![
            format!(
                "Speed: texts/s embedding the whole corpus ({} texts, Kiln's length-sorted batches, tokenization included); one warm-up pass over the first 64 texts is excluded; median and min–max of {REPETITIONS} passes; monotonic clock.",
                run.texts.len()
            ),
            format!("Threads: {} on the CPU.", run.threads),
            "Memory: each cell in its own process; host resident-set peak (Linux VmHWM); device memory from the CubeCL allocator (in use after loading).".into(),
            format!(
                "Accuracy: against the highest-precision variant on the same device: cosine per text (mean, min) and overlap@{K} (each text's {K} nearest other texts by cosine, the share also among the reference's)."
            ),
            "Formats: Kiln converts the dense weights and the word-embedding table as it loads (f16, q8_0 blocks as GGUF lays them out; activations rounded to the weights' dot format, as llama.cpp does); position and token-type tables, LayerNorms and biases stay f32.".into(),
            "Recommendation: the fastest variant whose cosine loss (1 − mean cosine) is within --max-loss.".into(),
        ],
        devices: sections,
    })
}

/// Writes `report.json`, `report.md` and one plot per device under `out`.
pub fn write(r: &EmbedReport, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(r).expect("serializes"))
        .map_err(io(&json))?;
    files.push(json);
    let name = Path::new(&r.model)
        .file_name()
        .map_or_else(|| r.model.clone(), |f| f.to_string_lossy().into_owned());
    let mut md = format!("# Embedding trade-offs: {name}\n\n");
    md.push_str(&format!(
        "Kiln {} · model `{}` (model.safetensors sha256 `{}`) · corpus: {} ({} texts) · max loss {:.2}% cosine\n\nCommand: `{}`\n\nHow it was measured:\n\n",
        r.kiln_version,
        r.model,
        &r.model_sha256[..16.min(r.model_sha256.len())],
        r.corpus,
        r.texts,
        100.0 * r.max_loss,
        r.command.join(" ")
    ));
    for m in &r.method {
        md.push_str(&format!("- {m}\n"));
    }
    md.push('\n');
    for d in &r.devices {
        let dev_name = d
            .cells
            .iter()
            .find(|c| !c.device_name.is_empty())
            .map_or("", |c| c.device_name.as_str());
        md.push_str(&format!("## {} — {dev_name}\n\n", d.device));
        match &d.recommendation {
            Some(rec) => md.push_str(&format!(
                "**Recommended: {}** — {}\n\n",
                rec.format, rec.reason
            )),
            None => md.push_str("No recommendation: nothing was measured on this device.\n\n"),
        }
        md.push_str("| format | load s | host RSS after load / peak MiB | device MiB | texts/s (min–max) | cosine mean | cosine min | overlap@10 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let chosen = d.recommendation.as_ref().map(|x| x.format.as_str());
        for c in &d.cells {
            let mark = if chosen == Some(c.format.as_str()) {
                format!("**{} ★**", c.format)
            } else if c.is_reference && c.status == CellStatus::Ok {
                format!("{} (ref)", c.format)
            } else {
                c.format.clone()
            };
            if c.status != CellStatus::Ok {
                md.push_str(&format!(
                    "| {mark} | {} | | | | | | |\n",
                    c.note.as_deref().unwrap_or("").replace('|', "/")
                ));
                continue;
            }
            let mib = |b: Option<u64>| {
                b.map_or_else(
                    || "–".into(),
                    |b| format!("{:.1}", b as f64 / (1u64 << 20) as f64),
                )
            };
            md.push_str(&format!(
                "| {mark} | {:.2} | {} / {} | {} | {:.1} ({:.1}–{:.1}) | {:.6} | {:.6} | {:.3} |\n",
                c.load_seconds,
                mib(c.host_rss_after_load_bytes),
                mib(c.host_peak_rss_bytes),
                mib(c.device_in_use_after_load_bytes),
                c.texts_per_second_median,
                c.texts_per_second_min,
                c.texts_per_second_max,
                c.cosine_mean,
                c.cosine_min,
                c.overlap_at_10
            ));
        }
        md.push('\n');
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
                    chosen: chosen == Some(c.format.as_str()),
                })
            })
            .collect();
        if !points.is_empty() {
            let file = format!("plot-{}.svg", file_safe(&d.device));
            let path = out.join(&file);
            plot(
                &path,
                &format!("{name} on {} ({dev_name})", d.device),
                "texts/s (median)",
                "cosine loss vs the reference, %",
                &points,
                Some(100.0 * r.max_loss),
            )?;
            md.push_str(&format!(
                "![cosine loss vs speed on {}]({file})\n\n",
                d.device
            ));
            files.push(path);
        }
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(io(&path))?;
    files.push(path);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_overlap_is_one_for_equal_embeddings_and_drops_when_broken() {
        let mut seed = 12345u64;
        let rows: Vec<f32> = (0..80)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let a = neighbours(&rows, 4, 3);
        assert_eq!(overlap(&a, &a), 1.0);
        // Rows in reverse order: each text gets another's vector.
        let broken: Vec<f32> = rows.chunks_exact(4).rev().flatten().copied().collect();
        assert!(overlap(&neighbours(&broken, 4, 3), &a) < 0.5);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
    }
}
