//! The GGUF reader and writer on the real SmolLM2-135M-Instruct Q4_1 fixture.

use kiln_quant::GgmlType;
use kiln_quant::gguf::{GgufFile, write_gguf};
use kiln_tests::fixture;

#[test]
fn reads_the_smollm2_fixture_as_llama_cpp_describes_it() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let md = &f.metadata;
    assert_eq!(f.version, 3);
    assert_eq!(md.str("general.architecture").unwrap(), "llama");
    assert_eq!(md.u32("llama.block_count").unwrap(), 30);
    assert_eq!(md.u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(md.u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(md.u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(md.f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        md.f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(md.u32("llama.context_length").unwrap(), 8192);
    assert_eq!(md.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(md.str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        md.string_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        md.string_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(md.u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(md.u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert!(!md.bool("tokenizer.ggml.add_bos_token").unwrap());

    let count = |ty| f.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.shape(), vec![49152, 576]);
    let down = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        down.shape(),
        vec![576, 1536],
        "GGUF dims reversed to row-major"
    );
}

#[test]
fn read_write_read_of_the_fixture_is_byte_identical() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let mut out = Vec::with_capacity(f.bytes().len());
    let n = write_gguf(&mut out, &f.metadata, &f.tensors_to_write()).unwrap();
    assert_eq!(n as usize, out.len());
    assert_eq!(out.len(), f.bytes().len());
    assert!(out == f.bytes(), "rewritten file differs from the original");
    let again = GgufFile::from_bytes(out).unwrap();
    assert_eq!(again.tensors, f.tensors);
}

#[test]
fn every_fixture_tensor_dequantizes() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    for t in &f.tensors {
        let v = kiln_quant::blocks::dequantize_to_vec(t.ty, f.tensor_data(t)).unwrap();
        assert_eq!(v.len() as u64, t.n_elements, "{}", t.name);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{}: non-finite value",
            t.name
        );
    }
}
