//! Block codec throughput on the CPU: dequantize (GB/s of f32 produced) and quantize (GB/s of
//! f32 consumed) per format, on a SmolLM2-135M FFN weight (576 × 1536) and a Llama-3.2-1B FFN
//! weight (2048 × 8192); and the whole SmolLM2 fixture dequantized to f32 (target: < 1 s).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_benches::synthetic_blocks;
use kiln_quant::blocks::{DEQUANTIZE_TYPES, QUANTIZE_TYPES, dequantize, quantize};
use kiln_quant::gguf::GgufFile;

const SHAPES: [(&str, usize); 2] = [("smollm2_ffn", 576 * 1536), ("llama1b_ffn", 2048 * 8192)];

fn bench_dequantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("dequantize_cpu");
    for (label, n) in SHAPES {
        for &ty in DEQUANTIZE_TYPES {
            let bytes = synthetic_blocks(ty, n / ty.block_size());
            let mut out = vec![0.0f32; n];
            group.throughput(Throughput::Bytes((n * 4) as u64));
            group.bench_with_input(BenchmarkId::new(ty.name(), label), &bytes, |b, bytes| {
                b.iter(|| dequantize(ty, bytes, &mut out).unwrap())
            });
        }
    }
    group.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantize_cpu");
    // The K-quant searches take about a second per Llama-1B FFN weight.
    group.sample_size(10);
    for (label, n) in SHAPES {
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        for &ty in QUANTIZE_TYPES {
            let mut out = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
            group.throughput(Throughput::Bytes((n * 4) as u64));
            group.bench_with_input(BenchmarkId::new(ty.name(), label), &x, |b, x| {
                b.iter(|| quantize(ty, x, &mut out).unwrap())
            });
        }
    }
    group.finish();
}

/// Every tensor of the SmolLM2 Q4_1 fixture to f32, one after another (skipped when the
/// fixture has not been fetched).
fn bench_whole_fixture(c: &mut Criterion) {
    let Some(path) = kiln_runtime::models_dir::fixture_path("smollm2-q4_1").filter(|p| p.exists())
    else {
        eprintln!("dequantize_fixture: skipped, run scripts/fetch-models.sh");
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let total: u64 = file.tensors.iter().map(|t| t.n_elements).sum();
    let mut out = vec![0.0f32; file.tensors.iter().map(|t| t.n_elements).max().unwrap() as usize];
    let mut group = c.benchmark_group("dequantize_fixture");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total * 4));
    group.bench_function("smollm2_q4_1_all_tensors", |b| {
        b.iter(|| {
            for t in &file.tensors {
                let n = t.n_elements as usize;
                dequantize(t.ty, file.tensor_data(t), &mut out[..n]).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_dequantize,
    bench_quantize,
    bench_whole_fixture
);
criterion_main!(benches);
