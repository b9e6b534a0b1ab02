//! Dequantization throughput on the CPU, in GB/s of f32 produced, for the block formats Kiln
//! decodes. Sizes: one SmolLM2-135M FFN weight (576 × 1536) and one Llama-3.2-1B FFN weight
//! (2048 × 8192).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_benches::synthetic_blocks;
use kiln_quant::GgmlType;
use kiln_quant::blocks::dequantize;

fn bench_dequantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("dequantize_cpu");
    for (label, n) in [("smollm2_ffn", 576 * 1536), ("llama1b_ffn", 2048 * 8192)] {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
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

criterion_group!(benches, bench_dequantize);
criterion_main!(benches);
