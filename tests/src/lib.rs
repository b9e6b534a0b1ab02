//! Helpers for Kiln's cross-crate tests: finding the fixture models and the wgpu device.
//!
//! Locally a missing fixture or GPU skips the test with a message naming the fix; in CI
//! (`CI=true`) it fails the test, so CI can never go green by skipping.

use std::path::PathBuf;

use kiln_runtime::{DeviceId, DeviceInfo};

/// True when running under CI (`CI` set to anything but `false`/`0`/empty).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn missing(what: &str, fix: &str) {
    if in_ci() {
        panic!("{what}; CI must not skip this test ({fix})");
    }
    eprintln!("SKIPPED: {what} ({fix})");
}

/// The path of a fixture model (`smollm2-q4_1`, `minilm`), or `None` (locally) when it has not
/// been fetched. Panics in CI when it is missing.
pub fn fixture(name: &str) -> Option<PathBuf> {
    match locate_fixture(&kiln_runtime::models_dir::models_dir(), name, in_ci()) {
        Ok(found) => found,
        Err(message) => panic!("{message}"),
    }
}

/// The decision behind [`fixture`], without the environment: `Ok(Some(path))` when present,
/// `Ok(None)` (after printing why) when missing locally, `Err` when missing in CI or unknown.
pub fn locate_fixture(
    models_dir: &std::path::Path,
    name: &str,
    ci: bool,
) -> Result<Option<PathBuf>, String> {
    let (_, rel) = kiln_runtime::models_dir::FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("no fixture named {name:?}"))?;
    let path = models_dir.join(rel);
    if path.exists() {
        return Ok(Some(path));
    }
    let what = format!("fixture {name} not found at {}", path.display());
    if ci {
        return Err(format!(
            "{what}; CI must not skip this test (run scripts/fetch-models.sh)"
        ));
    }
    eprintln!("SKIPPED: {what} (run scripts/fetch-models.sh)");
    Ok(None)
}

/// The first wgpu device, or `None` (locally) when there is none. Panics in CI when missing.
pub fn wgpu_device() -> Option<(DeviceInfo, burn::tensor::Device)> {
    let devices = kiln_runtime::probe_devices();
    let found = devices
        .devices
        .iter()
        .find(|d| matches!(d.id, DeviceId::Wgpu(_)))
        .cloned();
    match found {
        Some(info) => {
            let device = info.burn_device().expect("wgpu device opens");
            Some((info, device))
        }
        None => {
            missing(
                &format!("no wgpu adapter ({})", devices.notes.join("; ")),
                "install a Vulkan driver: apt-get install mesa-vulkan-drivers",
            );
            None
        }
    }
}

/// `n` reproducible pseudo-random values in [-0.5, 0.5) (xorshift64), different per `seed`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
