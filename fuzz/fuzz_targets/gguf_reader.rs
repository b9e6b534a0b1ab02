//! Fuzz the GGUF reader: any input must parse or fail with an error — no panic, no hang, no
//! out-of-memory. Whatever parses is read back through every accessor and the writer.
//!
//!     cargo +nightly fuzz run gguf_reader -- -max_len=65536 -rss_limit_mb=2048
#![no_main]

use kiln_quant::blocks::{DEQUANTIZE_TYPES, dequantize_to_vec};
use kiln_quant::gguf::{GgufFile, write_gguf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata.iter() {
        let _ = (value.to_string(), file.metadata.u64(key), file.metadata.f32(key));
    }
    for t in &file.tensors {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        if DEQUANTIZE_TYPES.contains(&t.ty) && t.n_bytes <= 1 << 20 {
            let v = dequantize_to_vec(t.ty, bytes).expect("whole blocks");
            assert_eq!(v.len() as u64, t.n_elements);
        }
    }
    // What Kiln reads, Kiln writes, and reads back the same (skipping absurd alignments, whose
    // padding alone would be gigabytes).
    let mut out = Vec::new();
    if file.alignment <= 1 << 16 && write_gguf(&mut out, &file.metadata, &file.tensors_to_write()).is_ok() {
        let again = GgufFile::from_bytes(out).expect("re-read of a written file");
        assert_eq!(again.tensors.len(), file.tensors.len());
        assert_eq!(again.metadata.len(), file.metadata.len());
    }
});
