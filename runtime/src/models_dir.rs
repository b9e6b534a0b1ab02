//! Where Kiln keeps model files: `$KILN_MODELS`, else `~/.cache/kiln/models`.
//! `scripts/fetch-models.sh` fills it with the test fixtures.

use std::path::PathBuf;

/// The model cache directory.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("kiln").join("models")
}

/// Where Kiln keeps what it measures and makes (tuning results, model variants, trade-off
/// records): `$KILN_CACHE`, else the parent of [`models_dir`] (`~/.cache/kiln`).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    models_dir()
        .parent()
        .map_or_else(|| PathBuf::from(".kiln-cache"), PathBuf::from)
}

/// The fixture models that `scripts/fetch-models.sh` installs, by short name.
pub const FIXTURES: &[(&str, &str)] = &[
    (
        "smollm2-q4_1",
        "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    ("minilm", "all-minilm-l6-v2"),
];

/// Path of a fixture model by short name, if the name is known (it may not exist yet).
pub fn fixture_path(name: &str) -> Option<PathBuf> {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, rel)| models_dir().join(rel))
}
