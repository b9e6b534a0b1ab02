//! The variants a trade-off run compares: the model converted to each format by
//! `kiln quantize`'s code, kept under the source file's content hash so that a second run (or
//! an interrupted one) converts nothing again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use kiln_quant::GgmlType;
use kiln_quant::convert::ConvertOptions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::quantize::{QuantizeRequest, quantize_file};
use crate::{Result, RuntimeError};

fn io(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HashMemo {
    /// `path|size|mtime` → sha256.
    entries: std::collections::BTreeMap<String, String>,
}

/// SHA-256 of a file's bytes (hex). Remembered in `memo_dir/hashes.json` by path, size and
/// modification time, so a large model is hashed once, not at every start.
pub fn content_hash(path: &Path, memo_dir: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).map_err(io(path))?;
    let key = format!("{}|{}|{mtime}", canonical.display(), meta.len());
    let memo_path = memo_dir.join("hashes.json");
    let mut memo: HashMemo = std::fs::read_to_string(&memo_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(h) = memo.entries.get(&key) {
        return Ok(h.clone());
    }
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    memo.entries.insert(key, hash.clone());
    // The memo is a convenience: failing to write it costs a re-hash next time, nothing else.
    if std::fs::create_dir_all(memo_dir).is_ok() {
        let tmp = memo_path.with_extension(format!("json.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, serde_json::to_string(&memo).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &memo_path);
        }
    }
    Ok(hash)
}

/// A variant file ready to load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Variant {
    pub format: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// The source file itself (it already is this format).
    pub is_source: bool,
    /// Root-mean-square error of the converted weights against the source's values.
    pub rmse: Option<f64>,
}

/// The variant of `source` (content hash `hash`, main format `main`) in `format`: the source
/// itself when it already is that format, else a converted copy under
/// `dir/<hash prefix>/`, made once.
pub fn make_variant(
    source: &Path,
    hash: &str,
    main: GgmlType,
    format: GgmlType,
    dir: &Path,
    progress: impl FnMut(u64, u64, &str),
) -> Result<Variant> {
    if format == main {
        let bytes = std::fs::metadata(source).map_err(io(source))?.len();
        return Ok(Variant {
            format: format.name().to_string(),
            path: source.to_path_buf(),
            bytes,
            is_source: true,
            rmse: Some(0.0),
        });
    }
    let stem = source
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let sub = dir.join(&hash[..16.min(hash.len())]);
    let path = sub.join(format!("{stem}.{}.gguf", format.name()));
    let meta_path = path.with_extension("gguf.json");
    if path.exists()
        && let Ok(text) = std::fs::read_to_string(&meta_path)
        && let Ok(v) = serde_json::from_str::<Variant>(&text)
    {
        return Ok(v);
    }
    std::fs::create_dir_all(&sub).map_err(io(&sub))?;
    let summary = quantize_file(
        &QuantizeRequest {
            input: source.to_path_buf(),
            output: path.clone(),
            options: ConvertOptions {
                target: format,
                allow_requantize: true,
                pure: false,
            },
            overwrite: true,
        },
        progress,
    )?;
    let v = Variant {
        format: format.name().to_string(),
        path: path.clone(),
        bytes: summary.output_bytes,
        is_source: false,
        rmse: Some(summary.total_rmse()),
    };
    // Written after the file is complete: a variant without its record is made again.
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&v).expect("a variant serializes"),
    )
    .map_err(io(&meta_path))?;
    Ok(v)
}
