//! `kiln embed`: the batch embedding job over a catalog file.
//!
//! The input is read in windows of [`JobConfig::chunk_rows`] records. A reader thread parses
//! and tokenizes the next window while the model embeds the current one (length-sorted batches
//! within a token budget). Each finished window is committed to `<output>.partial/` as
//! `chunk-NNNNNN.f32` (vectors) + `chunk-NNNNNN.json` (lines, ids, bad records), the JSON renamed
//! into place last, so a killed job restarted with the same arguments skips every committed
//! window. At the end the chunks are merged, in input order, into the output (Parquet, or
//! `.npy` and `.ids.jsonl`) under a temporary name that is renamed when complete; bad records go
//! to `<output>.errors.jsonl` with their line and reason.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::input::{Fields, Reader, Row, count_rows};
use super::{Embedder, Prepared, plan_batches};
use crate::{Result, RuntimeError};

/// Records per committed chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 4096;
/// Records per chunk when records carry images (a window of decoded 8-frame clips is
/// ~4.8 MB of floats per record).
pub const DEFAULT_CHUNK_ROWS_IMAGES: usize = 64;

/// What to embed, and where to.
#[derive(Clone, Debug)]
pub struct JobConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    pub fields: Fields,
    /// Replace an existing output.
    pub overwrite: bool,
    /// Records per committed chunk (a kill loses at most one chunk of work).
    pub chunk_rows: usize,
}

/// Output formats, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Parquet,
    /// `.npy` matrix plus `<stem>.ids.jsonl`, one JSON string per row.
    Npy,
}

impl OutputFormat {
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => Ok(Self::Parquet),
            Some("npy") => Ok(Self::Npy),
            _ => Err(RuntimeError::Usage(format!(
                "{}: unknown output format (expected .parquet or .npy)",
                path.display()
            ))),
        }
    }
}

/// Where a job keeps its state and writes its results.
#[derive(Clone, Debug)]
pub struct JobPaths {
    pub output: PathBuf,
    /// `.npy` output only: the ids, one JSON string per line.
    pub ids: Option<PathBuf>,
    pub errors: PathBuf,
    pub partial: PathBuf,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl JobPaths {
    pub fn for_output(output: &Path) -> Result<Self> {
        let format = OutputFormat::of(output)?;
        Ok(Self {
            output: output.to_path_buf(),
            ids: (format == OutputFormat::Npy).then(|| output.with_extension("ids.jsonl")),
            errors: with_suffix(output, ".errors.jsonl"),
            partial: with_suffix(output, ".partial"),
        })
    }
}

/// What the job did.
#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub rows: u64,
    pub embedded: u64,
    pub failed: u64,
    /// Records skipped because an earlier run had committed them.
    pub resumed_rows: u64,
    pub tokens: u64,
    pub padded_tokens: u64,
    pub seconds: f64,
    pub output: PathBuf,
    pub errors: Option<PathBuf>,
}

impl JobSummary {
    /// Share of computed positions that were padding.
    pub fn padding_waste(&self) -> f64 {
        if self.padded_tokens == 0 {
            0.0
        } else {
            (self.padded_tokens - self.tokens) as f64 / self.padded_tokens as f64
        }
    }
}

/// Progress as the job reports it.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What identifies a run: a partial directory is only resumed by the same job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    version: u32,
    input: String,
    input_bytes: u64,
    input_modified_ns: u128,
    id_field: String,
    text_field: String,
    #[serde(default)]
    image_field: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    model: String,
    dim: usize,
    normalized: bool,
    chunk_rows: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BadRecord {
    line: u64,
    id: Option<String>,
    reason: String,
}

/// The JSON half of a committed chunk (the vectors are in the `.f32` file beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChunkMeta {
    records: u64,
    lines: Vec<u64>,
    ids: Vec<String>,
    bad: Vec<BadRecord>,
    tokens: u64,
    padded_tokens: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn chunk_paths(dir: &Path, k: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("chunk-{k:06}.json")),
        dir.join(format!("chunk-{k:06}.f32")),
    )
}

/// Writes `path` through a temporary file, synced, then renamed into place.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let tmp = with_suffix(path, &format!(".tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w)?;
    let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// One window of input records, prepared (tokenized; images decoded) by the reader thread.
struct Window {
    index: usize,
    records: u64,
    rows: Vec<Row>,
    /// Per row: an `Ok` row ready for the model, or why it failed.
    encoded: Vec<Option<std::result::Result<Prepared, String>>>,
}

fn fingerprint(embedder: &Embedder, cfg: &JobConfig) -> Result<Fingerprint> {
    let meta = fs::metadata(&cfg.input).map_err(io(&cfg.input))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(Fingerprint {
        version: 1,
        input: fs::canonicalize(&cfg.input)
            .map_err(io(&cfg.input))?
            .display()
            .to_string(),
        input_bytes: meta.len(),
        input_modified_ns: modified,
        id_field: cfg.fields.id.clone().unwrap_or_default(),
        text_field: cfg.fields.text.clone(),
        image_field: cfg.fields.images.clone(),
        domain: embedder.domain().map(|d| d.name().to_string()),
        model: fs::canonicalize(embedder.dir())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| embedder.name().to_string()),
        dim: embedder.dim(),
        normalized: embedder.normalized(),
        chunk_rows: cfg.chunk_rows,
    })
}

/// Committed chunks in `dir`, counting from 0 until the first missing one.
fn committed_chunks(dir: &Path, dim: usize) -> Result<Vec<ChunkMeta>> {
    let mut chunks = Vec::new();
    loop {
        let (json, f32s) = chunk_paths(dir, chunks.len());
        if !json.exists() {
            return Ok(chunks);
        }
        let meta: ChunkMeta = serde_json::from_slice(&fs::read(&json).map_err(io(&json))?)
            .map_err(|e| RuntimeError::Usage(format!("{}: damaged chunk: {e}", json.display())))?;
        let len = fs::metadata(&f32s).map_err(io(&f32s))?.len();
        if len != (meta.ids.len() * dim * 4) as u64 || meta.ids.len() != meta.lines.len() {
            return Err(RuntimeError::Usage(format!(
                "{}: damaged chunk (remove {} to start over)",
                f32s.display(),
                dir.display()
            )));
        }
        chunks.push(meta);
    }
}

/// Runs the job. `progress` is called after every batch.
pub fn run(
    embedder: &Arc<Embedder>,
    cfg: &JobConfig,
    mut progress: impl FnMut(Progress),
    mut log: impl FnMut(&str),
) -> Result<JobSummary> {
    let start = Instant::now();
    let paths = JobPaths::for_output(&cfg.output)?;
    if cfg.chunk_rows == 0 {
        return Err(RuntimeError::Usage("chunk rows must be at least 1".into()));
    }
    let dim = embedder.dim();
    let print = fingerprint(embedder, cfg)?;
    let job_file = paths.partial.join("job.json");

    // Resume, or start clean.
    let chunks = if paths.partial.exists() {
        let found: Option<Fingerprint> = fs::read(&job_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if found.as_ref() != Some(&print) {
            return Err(RuntimeError::Usage(format!(
                "{} holds an unfinished run with other arguments or another input \
                 (remove it to start over)",
                paths.partial.display()
            )));
        }
        committed_chunks(&paths.partial, dim)?
    } else {
        let existing: Vec<&PathBuf> = [Some(&paths.output), paths.ids.as_ref()]
            .into_iter()
            .flatten()
            .filter(|p| p.exists())
            .collect();
        if let Some(p) = existing.first()
            && !cfg.overwrite
        {
            return Err(RuntimeError::Usage(format!(
                "{} exists (pass --overwrite to replace it)",
                p.display()
            )));
        }
        fs::create_dir_all(&paths.partial).map_err(io(&paths.partial))?;
        write_atomically(&job_file, |w| {
            w.write_all(&serde_json::to_vec_pretty(&print).expect("fingerprint serializes"))
                .map_err(io(&job_file))
        })?;
        Vec::new()
    };

    let total = count_rows(&cfg.input)?;
    let resumed: u64 = chunks.iter().map(|c| c.records).sum();
    let mut seen: HashSet<String> = chunks.iter().flat_map(|c| c.ids.iter().cloned()).collect();
    if resumed > 0 {
        log(&format!(
            "resuming: {} chunks ({resumed} of {total} records) already committed in {}",
            chunks.len(),
            paths.partial.display()
        ));
    }
    progress(Progress {
        done: resumed,
        total,
    });

    // Reader thread: parse and tokenize the next window while the model runs.
    let (tx, rx) = sync_channel::<Result<Window>>(1);
    let reader_embedder = Arc::clone(embedder);
    let reader_cfg = cfg.clone();
    let skip_windows = chunks.len();
    let reader = std::thread::spawn(move || {
        let result = read_windows(&reader_embedder, &reader_cfg, skip_windows, &tx);
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });

    let mut done = resumed;
    let outcome = embed_windows(embedder, &rx, &paths.partial, &mut seen, |n| {
        done += n;
        progress(Progress { done, total });
    });
    drop(rx);
    let _ = reader.join();
    outcome?;

    // Merge every chunk, in input order, into the output.
    let chunks = committed_chunks(&paths.partial, dim)?;
    let summary = merge(embedder, &chunks, &paths, start, resumed)?;
    fs::remove_dir_all(&paths.partial).map_err(io(&paths.partial))?;
    Ok(summary)
}

fn read_windows(
    embedder: &Embedder,
    cfg: &JobConfig,
    skip_windows: usize,
    tx: &std::sync::mpsc::SyncSender<Result<Window>>,
) -> Result<()> {
    let mut reader = Reader::open(&cfg.input, cfg.fields.clone())?;
    let mut index = 0usize;
    loop {
        let mut rows = Vec::with_capacity(cfg.chunk_rows);
        while rows.len() < cfg.chunk_rows {
            match reader.next_row()? {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        if index < skip_windows {
            index += 1;
            continue;
        }
        let records = rows.len() as u64;
        // Relative image paths are under the input file's directory.
        let base = cfg.input.parent();
        let encoded = {
            use rayon::prelude::*;
            rows.par_iter()
                .map(|row| match row {
                    Row::Ok { text, images, .. } => Some(
                        embedder
                            .prepare(text, images, base)
                            .map_err(|e| e.to_string()),
                    ),
                    Row::Bad { .. } => None,
                })
                .collect()
        };
        let window = Window {
            index,
            records,
            rows,
            encoded,
        };
        if tx.send(Ok(window)).is_err() {
            return Ok(()); // the consumer stopped
        }
        index += 1;
    }
}

fn embed_windows(
    embedder: &Embedder,
    rx: &Receiver<Result<Window>>,
    dir: &Path,
    seen: &mut HashSet<String>,
    mut advance: impl FnMut(u64),
) -> Result<()> {
    let dim = embedder.dim();
    for window in rx {
        let window = window?;
        let mut lines = Vec::new();
        let mut ids = Vec::new();
        let mut good: Vec<&Prepared> = Vec::new();
        let mut bad = Vec::new();
        for (row, enc) in window.rows.iter().zip(&window.encoded) {
            match (row, enc) {
                (Row::Bad { line, id, reason }, _) => bad.push(BadRecord {
                    line: *line,
                    id: id.clone(),
                    reason: reason.clone(),
                }),
                (Row::Ok { line, id, .. }, Some(Err(e))) => bad.push(BadRecord {
                    line: *line,
                    id: Some(id.clone()),
                    reason: if embedder.takes_images() {
                        e.clone()
                    } else {
                        format!("tokenizer: {e}")
                    },
                }),
                (Row::Ok { line, id, .. }, Some(Ok(enc))) => {
                    if !seen.insert(id.clone()) {
                        bad.push(BadRecord {
                            line: *line,
                            id: Some(id.clone()),
                            reason: "duplicate id (the first occurrence is kept)".into(),
                        });
                        continue;
                    }
                    lines.push(*line);
                    ids.push(id.clone());
                    good.push(enc);
                }
                (Row::Ok { .. }, None) => unreachable!("ok rows are prepared"),
            }
        }
        advance(bad.len() as u64);

        let lengths: Vec<usize> = good.iter().map(|e| e.len()).collect();
        let mut vectors = vec![0f32; good.len() * dim];
        let (mut tokens, mut padded) = (0u64, 0u64);
        for batch in plan_batches(&lengths, embedder.batch_tokens()) {
            let members: Vec<&Prepared> = batch.iter().map(|&i| good[i]).collect();
            let out = embedder.embed_prepared(&members)?;
            for (k, &i) in batch.iter().enumerate() {
                vectors[i * dim..(i + 1) * dim].copy_from_slice(out.row(k));
            }
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            tokens += batch.iter().map(|&i| lengths[i] as u64).sum::<u64>();
            padded += (batch.len() * longest) as u64;
            advance(batch.len() as u64);
        }

        // Commit: vectors first, then the JSON that makes the chunk count.
        let (json, f32s) = chunk_paths(dir, window.index);
        write_atomically(&f32s, |w| {
            for v in &vectors {
                w.write_all(&v.to_le_bytes()).map_err(io(&f32s))?;
            }
            Ok(())
        })?;
        let meta = ChunkMeta {
            records: window.records,
            lines,
            ids,
            bad,
            tokens,
            padded_tokens: padded,
        };
        write_atomically(&json, |w| {
            w.write_all(&serde_json::to_vec(&meta).expect("chunk serializes"))
                .map_err(io(&json))
        })?;
    }
    Ok(())
}

fn read_vectors(dir: &Path, k: usize) -> Result<Vec<f32>> {
    let (_, path) = chunk_paths(dir, k);
    let bytes = fs::read(&path).map_err(io(&path))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn merge(
    embedder: &Embedder,
    chunks: &[ChunkMeta],
    paths: &JobPaths,
    start: Instant,
    resumed: u64,
) -> Result<JobSummary> {
    let dim = embedder.dim();
    let rows: u64 = chunks.iter().map(|c| c.records).sum();
    let embedded: u64 = chunks.iter().map(|c| c.ids.len() as u64).sum();
    let failed: u64 = chunks.iter().map(|c| c.bad.len() as u64).sum();
    match OutputFormat::of(&paths.output)? {
        OutputFormat::Parquet => write_parquet(embedder, chunks, &paths.partial, &paths.output)?,
        OutputFormat::Npy => {
            let ids = paths.ids.as_ref().expect("npy output has an ids file");
            write_atomically(ids, |w| {
                for c in chunks {
                    for id in &c.ids {
                        serde_json::to_writer(&mut *w, id).map_err(|e| io(ids)(e.into()))?;
                        w.write_all(b"\n").map_err(io(ids))?;
                    }
                }
                Ok(())
            })?;
            write_atomically(&paths.output, |w| {
                w.write_all(&npy_header(embedded as usize, dim))
                    .map_err(io(&paths.output))?;
                for k in 0..chunks.len() {
                    for x in read_vectors(&paths.partial, k)? {
                        w.write_all(&x.to_le_bytes()).map_err(io(&paths.output))?;
                    }
                }
                Ok(())
            })?;
        }
    }
    let errors = if failed > 0 {
        write_atomically(&paths.errors, |w| {
            for c in chunks {
                for b in &c.bad {
                    serde_json::to_writer(&mut *w, b).map_err(|e| io(&paths.errors)(e.into()))?;
                    w.write_all(b"\n").map_err(io(&paths.errors))?;
                }
            }
            Ok(())
        })?;
        Some(paths.errors.clone())
    } else {
        if paths.errors.exists() {
            fs::remove_file(&paths.errors).map_err(io(&paths.errors))?;
        }
        None
    };
    Ok(JobSummary {
        rows,
        embedded,
        failed,
        resumed_rows: resumed,
        tokens: chunks.iter().map(|c| c.tokens).sum(),
        padded_tokens: chunks.iter().map(|c| c.padded_tokens).sum(),
        seconds: start.elapsed().as_secs_f64(),
        output: paths.output.clone(),
        errors,
    })
}

/// NumPy format 1.0 header for a C-order little-endian float32 matrix.
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic(6) + version(2) + header length(2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let mut h = Vec::with_capacity(unpadded + pad);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

/// Parquet metadata keys Kiln writes.
pub const META_MODEL: &str = "kiln.model";
pub const META_DIM: &str = "kiln.dim";
pub const META_NORMALIZED: &str = "kiln.normalized";
pub const META_POOLING: &str = "kiln.pooling";

fn write_parquet(
    embedder: &Embedder,
    chunks: &[ChunkMeta],
    dir: &Path,
    output: &Path,
) -> Result<()> {
    let dim = embedder.dim();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let meta = [
        (META_MODEL, embedder.name().to_string()),
        (META_DIM, dim.to_string()),
        (META_NORMALIZED, embedder.normalized().to_string()),
        (META_POOLING, embedder.pooling_name()),
    ];
    // In the Arrow schema (what pyarrow / polars show) and in the Parquet footer.
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "embedding",
                DataType::FixedSizeList(item.clone(), dim as i32),
                false,
            ),
        ],
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<std::collections::HashMap<_, _>>(),
    ));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(
            meta.iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.clone()))
                .collect(),
        ))
        .build();
    let tmp = with_suffix(output, &format!(".tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let pq_err =
        |e: parquet::errors::ParquetError| RuntimeError::Usage(format!("{}: {e}", tmp.display()));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq_err)?;
    for (k, c) in chunks.iter().enumerate() {
        let vectors = read_vectors(dir, k)?;
        let mut ids = StringBuilder::new();
        let mut emb =
            FixedSizeListBuilder::new(Float32Builder::with_capacity(vectors.len()), dim as i32)
                .with_field(item.clone());
        for (r, id) in c.ids.iter().enumerate() {
            ids.append_value(id);
            emb.values().append_slice(&vectors[r * dim..(r + 1) * dim]);
            emb.append(true);
        }
        let columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(emb.finish())];
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| RuntimeError::Usage(format!("building output rows: {e}")))?;
        writer.write(&batch).map_err(pq_err)?;
    }
    let file = writer.into_inner().map_err(pq_err)?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, output).map_err(io(output))
}
