//! GGUF, llama.cpp's model file format (spec: ggml `docs/gguf.md`; reference reader:
//! `ggml/src/gguf.cpp`).
//!
//! Layout: header (magic, version, tensor count, metadata count) · metadata key/value pairs ·
//! tensor infos · padding to `general.alignment` · the data section.

mod metadata;
mod reader;
mod writer;

pub use metadata::{Array, Metadata, Value, ValueType};
pub use reader::{GgufFile, TensorInfo};
pub use writer::{TensorToWrite, write_gguf, write_gguf_file};

/// `"GGUF"` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// How deep arrays of arrays may nest before the reader refuses the file.
pub const MAX_ARRAY_NESTING: usize = 8;
