//! kiln-models: Burn modules for the models Kiln serves (Llama-family LLMs, BERT encoders,
//! DREAM, COPE, InterBERT), their weight loading (GGUF, safetensors), tokenizers and image
//! preprocessing. No CLI and no I/O beyond reading model files.
//!
pub mod bert;
pub mod cope;
mod error;
pub mod image;
pub mod interbert;
pub mod llama;
pub mod mambarec;
pub mod sentence;
pub mod tokenizer;

pub use error::{ModelError, Result};
