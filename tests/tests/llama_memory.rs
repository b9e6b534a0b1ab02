//! Resident memory after loading the SmolLM2 fixture: the weights stay in their GGUF blocks, so
//! the model's growth is at most file size + KV cache + 10%. The tokenizer (~10 MiB for a 49k
//! vocabulary in the `tokenizers` crate) and the allocator's share of the parsed metadata are
//! measured and printed beside it. Alone in its test binary so that no other test
//! allocates while it measures.

use burn::tensor::Device;
use kiln_models::llama::Llama;
use kiln_models::tokenizer::Tokenizer;
use kiln_quant::gguf::GgufFile;
use kiln_tests::fixture;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn resident_memory_after_load_is_the_weights() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    let file = std::fs::metadata(&path).unwrap().len();
    // Process-level start-up (Burn's device, the kernel thread pool) is not the model's.
    let device = Device::flex();
    let warm = burn::tensor::Tensor::<2>::ones([4, 4], &device);
    let _ = warm.clone().matmul(warm).into_data();
    let _ = kiln_kernels::cpu::pool::pool();

    let r0 = rss_bytes();
    let gguf = GgufFile::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let r1 = rss_bytes();
    let model = Llama::from_gguf(&gguf, &device).unwrap();
    drop(gguf); // the file's map: only Kiln's copy of the blocks stays
    let ctx = 512;
    let cache = model.new_cache(ctx);
    let r2 = rss_bytes();
    let kv = model.config.kv_cache_bytes(ctx) as u64;
    let weights = r2.saturating_sub(r1);
    eprintln!(
        "resident memory after load: model {:.1} MiB (file {:.1} MiB, KV cache of {ctx} {:.1} MiB), \
         tokenizer and parsed metadata {:.1} MiB, total {:.1} MiB",
        mib(weights),
        mib(file),
        mib(kv),
        mib(r1.saturating_sub(r0)),
        mib(r2.saturating_sub(r0))
    );
    assert!(
        weights as f64 <= (file + kv) as f64 * 1.10,
        "the model grew {weights} bytes for a {file}-byte file"
    );
    drop((cache, model, tokenizer));
}
