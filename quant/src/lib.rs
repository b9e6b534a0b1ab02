//! kiln-quant: the file formats and number formats Kiln reads and writes.
//!
//! - [`gguf`]: GGUF files (llama.cpp's format), read over a memory map with every count, size and
//!   offset checked against the file before use.
//! - [`GgmlType`]: the ggml tensor types with their block geometry.
//! - [`blocks`]: block codecs (dequantize / quantize) for the ggml block formats.
//!
//! No Burn here: this crate is pure, deterministic Rust so that it can be fuzzed and tested
//! against gguf-py bit for bit.

pub mod blocks;
pub mod convert;
mod error;
mod ggml_type;
pub mod gguf;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
