//! The encoder's f32 GEMM (packed weights, register tiles, bias fused) against Burn's Flex
//! matmul + bias (the `gemm` crate) on all-MiniLM-L6-v2's dense shapes, for a short batch
//! (m = 32 tokens), a typical one (512) and the default token budget (2048). Throughput in
//! multiply-adds per second. Threads: all cores (`KILN_THREADS` / `RAYON_NUM_THREADS`).

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_kernels::cpu::{self, gemm};

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

fn encoder_gemm(c: &mut Criterion) {
    let isa = cpu::active_isa();
    let device = Device::flex();
    for (name, k, n) in [
        ("qkv", 384, 1152),
        ("ffn_up", 384, 1536),
        ("ffn_down", 1536, 384),
    ] {
        let b = data(k * n);
        let bias = data(n);
        let packed = gemm::pack_b(&b, k, n);
        let bt = Tensor::<2>::from_data(TensorData::new(b.clone(), [k, n]), &device);
        let biast = Tensor::<1>::from_data(TensorData::new(bias.clone(), [n]), &device);
        let mut g = c.benchmark_group(format!("encoder_gemm/{name}_{k}x{n}"));
        for m in [32usize, 512, 2048] {
            let x = data(m * k);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            g.throughput(Throughput::Elements((m * k * n) as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("kiln-{}", isa.name()), m),
                &m,
                |bch, &m| {
                    bch.iter(|| gemm::gemm(isa, &x, m, k, &packed, n, &bias, gemm::Act::None))
                },
            );
            g.bench_with_input(BenchmarkId::new("burn-flex", m), &m, |bch, _| {
                bch.iter(|| {
                    let y = xt.clone().matmul(bt.clone()) + biast.clone().unsqueeze();
                    y.into_data()
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = encoder_gemm
}
criterion_main!(benches);
