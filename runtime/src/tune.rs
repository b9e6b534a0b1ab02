//! Measured kernel variants per device, kept on disk so that a second start measures nothing.
//!
//! The Cube mat-vec kernel (decode) has variants that split output rows among units
//! ([`Reduction`]); which is fastest depends on the device (a software GPU wants one row per
//! unit; a GPU with subgroups, plane sums). [`tune_matvec`] times every variant the device can
//! run on one decode-sized product (SmolLM2's FFN up projection in Q4_0: 1536 × 576) and keeps the
//! winner in `$KILN_CACHE/tune/<device key>.json` (default `~/.cache/kiln/tune`), keyed by the
//! graphics API, adapter name and driver — not by device index, which changes when adapters
//! come and go. A later call finds the entry and measures nothing.
//!
//! (CubeCL's own autotune cache is keyed by device index and runtime, and tunes CubeCL's
//! kernels, not Kiln's comptime variants; this is the Kiln-level equivalent.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::QTensor;
use kiln_kernels::qmatmul::{self, CubeKernel, Reduction, Tiling};
use kiln_quant::GgmlType;
use serde::{Deserialize, Serialize};

use crate::devices::DeviceInfo;
use crate::{Result, RuntimeError};

/// Where tuning results live: `$KILN_CACHE/tune`, else `~/.cache/kiln/tune`.
pub fn cache_dir() -> PathBuf {
    crate::models_dir::cache_root().join("tune")
}

/// The file name a device's results are kept under.
pub fn device_key(info: &DeviceInfo) -> String {
    let raw = format!(
        "{}-{}-{}",
        info.api,
        info.name,
        info.driver.as_deref().unwrap_or("")
    );
    let mut key: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while key.contains("--") {
        key = key.replace("--", "-");
    }
    key.trim_matches('-').chars().take(120).collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kiln_version: String,
    device: String,
    /// The winner, as `Reduction`'s Debug form (`Shared(8)`, `PerUnit`, `Plane`).
    matvec: String,
    /// Median microseconds per call, per variant.
    timings_us: Vec<(String, f64)>,
}

/// The outcome of [`tune_matvec`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    pub reduction: Reduction,
    /// Read from the cache: nothing was measured.
    pub from_cache: bool,
    /// Median seconds per call for each variant measured now (empty from the cache).
    pub timings: Vec<(Reduction, f64)>,
    pub path: PathBuf,
}

fn parse(name: &str, planes: bool) -> Option<Reduction> {
    Reduction::variants(planes)
        .into_iter()
        .find(|r| format!("{r:?}") == name)
}

/// The fastest mat-vec variant on `device` (described by `info`), measured once and then read
/// from `dir`.
pub fn tune_matvec(info: &DeviceInfo, device: &Device, dir: &Path) -> Result<Tuned> {
    let planes = kiln_kernels::device_has_planes(device);
    let path = dir.join(format!("{}.json", device_key(info)));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(entry) = serde_json::from_str::<Entry>(&text)
        && entry.kiln_version == env!("CARGO_PKG_VERSION")
        && let Some(reduction) = parse(&entry.matvec, planes)
    {
        return Ok(Tuned {
            reduction,
            from_cache: true,
            timings: vec![],
            path,
        });
    }

    let (n, k) = (1536, 576);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let bytes = kiln_quant::blocks::quantize_to_vec(GgmlType::Q4_0, &w)?;
    let q = QTensor::from_blocks("tune", GgmlType::Q4_0, &[n, k], &bytes, device)?;
    let x = Tensor::<2>::from_data(TensorData::new(w[..k].to_vec(), [1, k]), device);
    let sync = || {
        device
            .sync()
            .map_err(|e| RuntimeError::Usage(format!("tuning on {}: {e:?}", info.id)))
    };
    let mut timings = Vec::new();
    for red in Reduction::variants(planes) {
        // Two warm-up calls (the first compiles the kernel), then the median of seven.
        let mut samples = Vec::new();
        for i in 0..9 {
            let t = Instant::now();
            let _y = qmatmul::qmatmul_with(x.clone(), &q, CubeKernel::fast(red, Tiling::Auto))?;
            sync()?;
            if i >= 2 {
                samples.push(t.elapsed().as_secs_f64());
            }
        }
        samples.sort_by(f64::total_cmp);
        timings.push((red, samples[samples.len() / 2]));
    }
    let &(reduction, _) = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one variant");
    let entry = Entry {
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        device: format!("{} ({})", info.name, info.api),
        matvec: format!("{reduction:?}"),
        timings_us: timings
            .iter()
            .map(|(r, s)| (format!("{r:?}"), s * 1e6))
            .collect(),
    };
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(&entry).expect("a tuning entry serializes");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(Tuned {
        reduction,
        from_cache: false,
        timings,
        path,
    })
}
