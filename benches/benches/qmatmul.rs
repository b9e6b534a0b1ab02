//! Kiln's CPU quantized matrix products per weight type, at the shapes the LLM runs: decode
//! (m = 1) and a prompt batch (m = 128), SmolLM2-135M's FFN up projection (1536 × 576) and
//! Llama-3.2-1B's (8192 × 2048). Throughput in weights per second. Threads: the kernel pool's
//! default (all cores; `KILN_THREADS` to change).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_kernels::cpu;
use kiln_quant::GgmlType;

fn data(n: usize) -> Vec<f32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn qmatmul(c: &mut Criterion) {
    let isa = cpu::active_isa();
    for (model, n, k) in [("smollm2-135m", 1536, 576), ("llama-3.2-1b", 8192, 2048)] {
        let wf = data(n * k);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::F16,
        ] {
            if k % ty.block_size() != 0 {
                continue;
            }
            let w = kiln_quant::blocks::quantize_to_vec(ty, &wf).unwrap();
            let mut g = c.benchmark_group(format!("qmatmul/{model}/{ty}/{}", isa.name()));
            for m in [1usize, 128] {
                let x = data(m * k);
                g.throughput(Throughput::Elements((n * k * m) as u64));
                g.bench_with_input(BenchmarkId::new("m", m), &m, |b, &m| {
                    b.iter(|| cpu::qmatmul(isa, ty, &w, n, k, &x, m))
                });
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = qmatmul
}
criterion_main!(benches);
